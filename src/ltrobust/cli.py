"""The ``ltrobust`` command line: data, train, eval, audit, analyze, report, sweep, demo.

Every command takes ``key=value`` overrides (``ltrobust train method=pgd_at loss=bsl imbalance=50``);
``ltrobust train --help`` lists every key, method, loss and preset. Errors in the input print one line
that names the problem and the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import logging
import re
import sys
from typing import Any, Sequence

from .errors import ConfigError, LtrobustError

IMPORT_FLAG = ("--import",)
IMPORT_OPTIONS = dict(dest="imports", action="append", metavar="MODULE",
                      help="import MODULE first (repeatable), so its @MODELS / @DATASETS / @METHODS.register "
                           "entries exist; also $LTROBUST_PLUGINS=mod1,mod2")

CACHE_FLAG = ("--cache-dir",)
CACHE_OPTIONS = dict(dest="cache_dir", metavar="DIR",
                     help="ltrobust's cache folder (decoded image folders; never written into your data): "
                          "default the user cache folder, ~/.cache/ltrobust on Linux; also $LTROBUST_CACHE_DIR")
#: flags that take a value and are not settings (dashed_options leaves them and their value alone)
VALUE_FLAGS = IMPORT_FLAG + CACHE_FLAG

EPILOG_EVAL = """\
attacks: clean, fgsm, bimK, pgdK, mimK, cwK, adaptive[K], aa, apgd, square; suffix -l2 for the l_2 ball.

a run or checkpoint written by ltrobust train:
  ltrobust eval runs/NAME attacks=clean,fgsm,pgd20,pgd100,mim20,cw20,cw100,aa,adaptive checkpoint=best

weights ltrobust did not write (results in out=, default runs/eval/<name>):
  ltrobust eval weights=PATH model=ARCH [name=NAME] [model.OPTION=v] [model.mean=..,..,.. model.std=..,..,..] dataset=... data_dir=...
  NAME: the model's name in results and reports (default: the file's stem and a short hash, model-3f2a9c1b);
        eps=, attacks=, seed=, ... are the evaluation's settings, as for a run
  ARCH: an ltrobust model (ltrobust list), torchvision.<name>, timm.<name>,
        robustbench.<dataset>.<threat>.<name> (pip install -e '.[robustbench]'), or module:callable
  e.g. ltrobust eval weights=r18.pt model=torchvision.resnet18 dataset=imagefolder data_dir=data/mine attacks=clean,pgd20,aa
"""

#: the README section that explains the keys (``train --help`` names it; a test checks that it exists)
README_CONFIG_SECTION = "Configuration"

EPILOG_TRAIN = """\
keys (section.key=value, or the bare key when unique; see README "{readme}"):
{keys}

methods (method=NAME; their options as NAME=value, e.g. beta=6):
{methods}

losses (loss=NAME; outer loss of any method, also the attack loss with attack.loss_mode=inner|both;
attack.loss=NAME sets the attack loss alone):
{losses}

presets (preset=NAME): {presets}

examples:
  ltrobust train method=pgd_at loss=bsl dataset=digits-lt epochs=10
  ltrobust train preset=at-bsl-cifar10lt-resnet18 data_dir=/data/cifar10
  torchrun --nproc_per_node=2 -m ltrobust.cli train preset=reat-cifar10lt-resnet18
"""


def _first_doc_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""


def _default_text(value: Any) -> str:
    """A default as it is written on the command line: ``8/255``, ``clean,pgd20``, ``true``, ``none``."""
    from .config import fmt_fraction

    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return fmt_fraction(value)


def _options(cls: Any, skip: Sequence[str] = ()) -> str:
    """``name=default, ...`` of an Options dataclass (fields named in ``skip`` left out)."""
    if cls is None:
        return ""
    return ", ".join(f"{f.name}={_default_text(f.default)}" for f in dataclasses.fields(cls) if f.name not in skip)


def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comment of each field of a dataclass (on the field's line or the line above it)."""
    docs: dict[str, str] = {}
    above = ""
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s*#:\s*(.*)", line)
        if m:
            above = m.group(1)
            continue
        m = re.match(r"\s*(\w+)\s*:[^=]*=.*?(?:#:\s*(.*))?$", line)
        if m and not line.lstrip().startswith(("def ", "return", "@")):
            docs.setdefault(m.group(1), m.group(2) or above)
        above = ""
    return docs


def _key_lines(cls: type, prefix: str = "", names: Sequence[str] | None = None) -> list[str]:
    """One help line per field of ``cls``: ``prefix.name=default  comment``."""
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        key = f"{prefix}{f.name}={_default_text(f.default)}"
        out.append(f"  {key:<30} {docs.get(f.name, '')}".rstrip())
    return out


def _train_epilog() -> str:
    from .config import SECTIONS, list_presets
    from .registry import LOSSES, METHODS

    keys = []
    for sec, cls in SECTIONS.items():
        keys.append(f"  {sec}: " + ", ".join(f.name for f in dataclasses.fields(cls)))
    methods = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        fields = _options(getattr(cls, "Options", None))
        methods.append(f"  {name:<13} {_first_doc_line(cls)}" + (f"\n  {'':<13} options: {fields}" if fields else ""))
    losses = []
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        fields = _options(getattr(cls, "Options", None))
        losses.append(f"  {name:<6} {_first_doc_line(cls)}" + (f" [{fields}]" if fields else ""))
    return EPILOG_TRAIN.format(readme=README_CONFIG_SECTION, keys="\n".join(keys), methods="\n".join(methods),
                               losses="\n".join(losses), presets=", ".join(list_presets()) or "(none)")


#: run keys that ``eval``, ``audit`` and ``analyze`` take besides the eval section (load_run)
_RUN_KEYS = ["  checkpoint=best                best | last: the checkpoint of a run folder",
             "  data.data_dir=DIR              where the data set lives now, when it moved since training"]


def _eval_epilog() -> str:
    from .config import EvalConfig

    return "\n".join([
        "keys (key=value; eval.KEY or the bare KEY when unique; a run's config.yaml may set other defaults):",
        *_RUN_KEYS, *_key_lines(EvalConfig, "eval.", [f.name for f in dataclasses.fields(EvalConfig)
                                                        if f.name != "checkpoint"]),
        "", EPILOG_EVAL])


_THREAT_KEYS = ("eps", "step_size", "norm", "adjust", "adjust_tau", "seed", "batch_size")


def _audit_epilog() -> str:
    from .config import EvalConfig
    from .evaluation.audit import AuditOptions

    return "\n".join([
        "run keys (the deployed model and threat model audited, as for ltrobust eval):", *_RUN_KEYS,
        *_key_lines(EvalConfig, "eval.", _THREAT_KEYS),
        "audit keys (audit.KEY=value; thresholds in points of robust accuracy; docs/evaluation.md):",
        *_key_lines(AuditOptions, "audit."),
        "example: ltrobust audit runs/NAME audit.n_samples=500 audit.kappas=-2,0,2"])


def _report_epilog() -> str:
    from .report import OPTIONS, build_report

    params = inspect.signature(build_report).parameters
    docs: dict[str, str] = {}
    for m in re.finditer(r"^\s{8}([\w /]+): (.+(?:\n\s{12}.+)*)", build_report.__doc__ or "", re.M):
        for name in m.group(1).split(" / "):
            docs[name.strip()] = " ".join(m.group(2).replace("``", "").split()).rstrip(".")
    lines = ["keys (key=value; docs/reports.md):"]
    for name in OPTIONS:
        default = params[name].default if name in params else None
        lines.append(f"  {name + '=' + _default_text(default):<30} {docs.get(name, '')}".rstrip())
    lines.append("example: ltrobust report runs/A runs/B out=reports/ab metric=balanced_accuracy")
    return "\n".join(lines)


def _analyze_epilog() -> str:
    from .analysis.base import CommonOptions
    from .config import EvalConfig
    from .registry import ANALYSES

    common = [f.name for f in dataclasses.fields(CommonOptions)]
    lines = ["analyses (KIND; its options as key=value, see docs/analysis.md):"]
    for name in ANALYSES.names():
        cls = ANALYSES.get(name)
        fields = _options(getattr(cls, "Options", None), skip=common)
        lines.append(f"  {name:<16} {_first_doc_line(cls)}" + (f"\n  {'':<16} options: {fields}" if fields else ""))
    lines += ["options of every analysis:", *_key_lines(CommonOptions),
              "run keys (the run's deployed model and threat model, as for ltrobust eval):", *_RUN_KEYS,
              *_key_lines(EvalConfig, "eval.", _THREAT_KEYS),
              "example: ltrobust analyze feature-norm runs/NAME; ltrobust analyze gaussian-theory out=figures"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltrobust", description="Adversarial robustness under long-tailed data.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(*IMPORT_FLAG, **IMPORT_OPTIONS, default=[])
    p.add_argument(*CACHE_FLAG, **CACHE_OPTIONS, default=None)
    plugins = argparse.ArgumentParser(add_help=False)  # --import and --cache-dir also after the command
    plugins.add_argument(*IMPORT_FLAG, **IMPORT_OPTIONS, default=argparse.SUPPRESS)
    plugins.add_argument(*CACHE_FLAG, **CACHE_OPTIONS, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    sub.add_parser = functools.partial(sub.add_parser, parents=[plugins])  # type: ignore[method-assign]

    data = sub.add_parser("data", help="data set tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    info = dsub.add_parser("info", help="per-class counts, head/body/tail and many/medium/few groups",
                           parents=[plugins])
    info.add_argument("dataset")
    info.add_argument("overrides", nargs="*", metavar="key=value")

    train = sub.add_parser("train", help="train a model with any method and loss", formatter_class=raw,
                           epilog=_train_epilog())
    train.add_argument("overrides", nargs="*", metavar="key=value")

    ev = sub.add_parser("eval", help="evaluate a run, a checkpoint, or any weights with an attack suite",
                        formatter_class=raw, epilog=_eval_epilog())
    ev.add_argument("run", metavar="RUN_OR_CHECKPOINT", nargs="?")
    ev.add_argument("overrides", nargs="*", metavar="key=value")

    au = sub.add_parser("audit", help="gradient-masking audit (logit re-scaling, zero gradients, PGD-AA gap, ...)",
                        formatter_class=raw, epilog=_audit_epilog())
    au.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    au.add_argument("overrides", nargs="*", metavar="key=value")

    an = sub.add_parser("analyze", help="the papers' analyses: feature-norm, embedding, ae-drift, attack-budget, "
                                        "gaussian-theory, confusion, zero-grad, sensitivity, cost, epoch-choice",
                        formatter_class=raw,
                        epilog=_analyze_epilog())
    an.add_argument("kind")
    an.add_argument("runs", nargs="*", metavar="RUN_OR_CHECKPOINT / key=value")

    rep = sub.add_parser("report", help="tables, plots and HTML from stored results (no retraining)",
                         formatter_class=raw, epilog=_report_epilog())
    rep.add_argument("inputs", nargs="+", metavar="RUN_OR_SWEEP / out=DIR")

    sw = sub.add_parser("sweep", help="run a grid of runs (methods x data sets x IR x seeds x any key)")
    sw.add_argument("grid", metavar="GRID.yaml")
    sw.add_argument("overrides", nargs="*", metavar="key=value")

    demo = sub.add_parser("demo", help="the whole toolkit on digits-LT in minutes (no download)")
    demo.add_argument("overrides", nargs="*", metavar="key=value")

    sub.add_parser("list", help="every registered data set, model, attack, loss, method and preset")
    return p


def _cmd_data(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .data import data_info

    cfg = resolve_config([f"data.dataset={args.dataset}", *args.overrides])
    print(data_info(cfg.data))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .experiments import train

    cfg = resolve_config(args.overrides)
    summary = train(cfg).summary
    print(f"run folder: {summary['run_dir']}")
    best = summary["best"]
    if best.get("epoch", -1) >= 0:
        print(f"best epoch by validation robust accuracy: {best['epoch']} (numbered from 0, as in metrics.jsonl; "
              f"val PGD {best['val_rob']:.2f}%)")
    print(f"next: ltrobust eval {summary['run_dir']} attacks=clean,pgd20,aa")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.evaluator import markdown_table, model_title

    overrides = list(args.overrides)
    if args.run and "=" in args.run:  # `ltrobust eval weights=PATH model=ARCH ...`
        args.run, overrides = None, [args.run, *overrides]
    if any(o.startswith("weights=") for o in overrides):
        from .evaluation.weights import evaluate_weights

        if args.run:
            raise ConfigError(f"give either a run ({args.run}) or weights=PATH, not both.")
        result = evaluate_weights(overrides)
        print(markdown_table(result))
        print(f"evaluated: {model_title(result)} ({result.get('weights')})")
        print(f"results: {result['out']}/{result['tag']}.json")
        return 0
    if not args.run:
        raise ConfigError("ltrobust eval needs a run folder, a checkpoint, or weights=PATH model=ARCH (see "
                          "ltrobust eval --help).")
    from .evaluation.runs import evaluate_run

    result = evaluate_run(args.run, overrides)
    print(markdown_table(result))
    print(f"evaluated: {model_title(result)}")  # which checkpoint, of which epoch of how many
    print(f"results: {result['run']}/eval/{result['tag']}.json")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from .evaluation.audit import audit_run, audit_markdown

    result = audit_run(args.run, args.overrides)
    print(audit_markdown(result))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import run_analysis

    runs = [r for r in args.runs if "=" not in r]
    overrides = [r for r in args.runs if "=" in r]
    out = run_analysis(args.kind, runs, overrides)
    print("wrote " + ", ".join(str(p) for p in out.values()))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    inputs = [r for r in args.inputs if "=" not in r]
    opts = dict(r.split("=", 1) for r in args.inputs if "=" in r)
    out = build_report(inputs, **opts)
    print(out["markdown_table"])
    print(f"report: {out['index']}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.sweep import run_sweep
    from .report import OPTIONS, build_report

    out = run_sweep(args.grid, args.overrides, report=build_report, report_options=OPTIONS)
    print(f"sweep finished: {out['n_runs']} runs ({out['n_skipped']} already done); report: {out['report']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo
    from .report import build_report

    run_demo(args.overrides, report=build_report)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .config import list_presets
    from .registry import ANALYSES, ATTACKS, DATASETS, LOGGERS, LOSSES, METHODS, MODELS, ADJUSTMENTS

    for title, reg in (("data sets", DATASETS), ("models", MODELS), ("attacks", ATTACKS), ("losses", LOSSES),
                       ("methods", METHODS), ("inference adjustments", ADJUSTMENTS), ("analyses", ANALYSES),
                       ("experiment trackers (train.logger)", LOGGERS)):
        print(f"{title}: {', '.join(reg.names())}")
    print(f"presets: {', '.join(list_presets())}")
    return 0


def one_line(message: str) -> str:
    """An error message on one line (data layouts and YAML error marks span several): lines joined by
    ``; `` (or a space after ``:`` / ``,`` / ``or``), runs of spaces collapsed."""
    out = ""
    for part in (" ".join(line.split()) for line in message.splitlines()):
        if part:
            out = part if not out else out + (" " if out.endswith((":", ",", " or")) else "; ") + part
    return out


COMMANDS = {"data": _cmd_data, "train": _cmd_train, "eval": _cmd_eval, "audit": _cmd_audit,
            "analyze": _cmd_analyze, "report": _cmd_report, "sweep": _cmd_sweep, "demo": _cmd_demo,
            "list": _cmd_list}


def dashed_options(argv: Sequence[str]) -> list[str]:
    """The ``key=value`` form of the ``--key value`` / ``--key=value`` / ``--flag`` arguments in ``argv``
    (``--batch-size 64`` -> ``batch_size=64``); empty when there is none."""
    out: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if not arg.startswith("--") or arg in ("--", "--help", "--verbose") or arg.split("=")[0] in VALUE_FLAGS:
            continue
        if i > 0 and args[i - 1] in VALUE_FLAGS:  # a module name after --import, a folder after --cache-dir
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            nxt = args[i + 1] if i + 1 < len(args) else None
            takes = nxt is not None and not nxt.startswith("--") and nxt not in ("-h", "-v") and "=" not in nxt
            value = nxt if takes else "true"
        out.append(f"{key.replace('-', '_')}={value}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    dashed = dashed_options(argv)
    if dashed:
        print(f"error: settings are written key=value, not --key value: write {' '.join(dashed)} instead.",
              file=sys.stderr)
        return 2
    try:
        from .registry import load_plugins

        # the help lists every registered name, so building the parser imports the built-in entries and the
        # plug-ins of $LTROBUST_PLUGINS: a broken one fails here, before any work, with one error line
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        if args.cache_dir:  # also seen by the processes a sweep starts
            import os

            from .data.formats.base import CACHE_ENV

            os.environ[CACHE_ENV] = args.cache_dir
        load_plugins(args.imports)
        return COMMANDS[args.command](args)
    except LtrobustError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full or read-only disk hit by a write outside ltrobust.io (e.g. mkdir)
        from .io import storage_error

        err = storage_error(exc)
        if err is None:
            raise
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished epochs and evaluation chunks are saved, re-run the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
