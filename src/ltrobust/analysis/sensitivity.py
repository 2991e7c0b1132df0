"""``sensitivity``: clean and robust accuracy against one swept setting, overall and for the tail.

The self-distillation paper (Cho, Lee and Kim, ICLR 2025) App. B.3, Fig. 6 (overall) and Fig. 7 (tail class):
clean, PGD and AutoAttack accuracy against the distillation weight alpha and the teacher's sampling rate
gamma; TAET (Wang et al., CVPR 2025) Fig. 7: accuracy against the length of its clean-CE first stage. Any
config key swept in a grid gives this figure: ``key=alpha`` (a method option, ``method.args.alpha``),
``key=resample_gamma`` (``data.resample_gamma``), ``key=stage1_epochs``, ``key=imbalance``, ...

Reads stored results only (``eval/<tag>.json`` and the runs' configs; no model, no attack). Runs are
grouped by every other setting (seeds and bookkeeping keys aside); a group whose runs take at least two
values of ``key`` is one set of lines, a point is the mean over seeds (error bars: sample std). One line per
evaluated attack (``clean``, ``pgd20``, ``aa``, ...), in the left panel the overall ``metric``, in the right
one the tail (``tail=tail_group``: Cho et al.'s tail class / group, T-Clean and T-PGD; ``tail=tail``: the rarest third).

Example::

    ltrobust sweep self-distill-sensitivity-digits
    ltrobust analyze sensitivity runs/sweeps/self-distill-sensitivity-digits key=alpha
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Sequence

from ..errors import ConfigError
from ..registry import ANALYSES
from .base import Analysis, CommonOptions, RunContext, new_figure
from .stored import BOOKKEEPING_KEYS, StoredRun, find_runs, hashable, mean_std, varying_keys

METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}
TAIL_LABELS = {"tail_group": "tail group", "tail": "tail third"}


@dataclass(frozen=True)
class SensitivityOptions(CommonOptions):
    dpi: int = 200  #: resolution of the PNG (a PDF is written too)
    key: str = ""  #: the swept config key (alpha, method.args.alpha, data.resample_gamma); "": the one that varies
    tag: str = "best"  #: eval tag read from each run (best, last, best-logit_adjust1, ...)
    attacks: tuple[str, ...] = ()  #: attacks drawn (default: every attack of the evaluations, worst case aside)
    metric: str = "accuracy"  #: accuracy | balanced_accuracy (TAET's balanced accuracy / robustness)
    tail: str = "tail_group"  #: tail_group (Cho et al.'s T-Clean / T-PGD) | tail (the rarest third)
    seed_keys: str = "train.seed"  #: keys aggregated over (comma-separated)


def full_config(run: StoredRun) -> dict[str, Any]:
    """The run's flat config with the method's and the loss's option defaults filled in (a key left at its
    default is stored nowhere else)."""
    from .. import losses, methods  # noqa: F401 (register)
    from ..registry import LOSSES, METHODS

    flat = dict(run.config)
    for prefix, registry, name in (("method.args.", METHODS, flat.get("method.name")),
                                   ("method.loss_args.", LOSSES, flat.get("method.loss"))):
        try:
            options = getattr(registry.get(str(name)), "Options", None)
        except ConfigError:
            continue
        for f in fields(options) if options is not None else ():
            if f.default is not MISSING:
                flat.setdefault(prefix + f.name, f.default)
    return flat


def resolve_key(key: str, configs: Sequence[dict[str, Any]], ignore: Sequence[str]) -> str:
    """The dotted config key meant by ``key`` (a dotted key, or a leaf name such as ``alpha``); with ``key``
    empty, the one key that varies among the runs."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    if not key:
        vary = varying_keys(configs, ignore)
        if len(vary) != 1:
            raise ConfigError(f"key= is needed: the runs differ in {', '.join(vary) or 'nothing'} (seeds aside); "
                              f"e.g. key={vary[0] if vary else 'alpha'}.")
        return vary[0]
    if key in keys:
        return key
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"key={key!r} is ambiguous ({', '.join(matches)}): give the dotted key.")
    vary = varying_keys(configs, ignore)
    raise ConfigError(f"key={key!r} is not a setting of these runs; the runs differ in {', '.join(vary) or 'nothing'}.")


def _number(value: Any, key: str, run: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} of run {run} is not a number: sensitivity plots need a numeric "
                              f"setting.") from None
    return float(value)


@ANALYSES.register("sensitivity")
class Sensitivity(Analysis):
    """Clean / robust accuracy against one swept setting, overall and tail (Cho et al., ICLR 2025, Fig. 6-7, TAET Fig. 7)."""

    name = "sensitivity"
    Options = SensitivityOptions
    runs = "many"
    formats = ("png", "pdf")

    def compute(self, runs: Sequence[RunContext], opts: SensitivityOptions) -> dict[str, Any]:
        if opts.metric not in METRIC_LABELS:
            raise ConfigError(f"metric={opts.metric!r}: use accuracy or balanced_accuracy.")
        if opts.tail not in TAIL_LABELS:
            raise ConfigError(f"tail={opts.tail!r}: use tail_group or tail.")
        stored = [r for r in find_runs([c.path for c in runs])]
        evaluated = [r for r in stored if r.result(opts.tag) is not None]
        if not evaluated:
            tags = sorted({t for r in stored for t in r.tags()})
            raise ConfigError(f"no run has an evaluation tagged {opts.tag!r} (tags found: {', '.join(tags) or 'none'}): "
                              f"run `ltrobust eval RUN` or pass tag=...")
        seed_keys = [k for k in opts.seed_keys.split(",") if k]
        configs = [full_config(r) for r in evaluated]
        key = resolve_key(opts.key, configs, seed_keys)
        ignore = set(BOOKKEEPING_KEYS) | set(seed_keys) | {key}
        groups: dict[str, list[tuple[StoredRun, dict[str, Any]]]] = {}
        for r, cfg in zip(evaluated, configs):
            rest = hashable({k: v for k, v in cfg.items() if k not in ignore and not k.startswith("eval.")})
            groups.setdefault(rest, []).append((r, cfg))
        attacks = list(opts.attacks) or _attacks([r.result(opts.tag) for r in evaluated])
        lines, skipped = [], []
        all_cfgs = [g[0][1] for g in groups.values()]
        differ = [k for k in varying_keys(all_cfgs, list(ignore)) if not k.startswith("eval.")]
        for members in groups.values():
            xs = {hashable(cfg.get(key)) for _, cfg in members}
            if len(xs) < 2:
                skipped += [{"run": r.name, key: cfg.get(key), "why": f"no other run of its setting varies {key}"}
                            for r, cfg in members]
                continue
            lines.append(self._line(members, key, attacks, differ, opts))
        if not lines:
            raise ConfigError(f"no setting has runs at two or more values of {key}: sweep it in a grid "
                              f"(e.g. grid: {{{key}: [0.5, 1, 2]}}).")
        return {"key": key, "tag": opts.tag, "metric": opts.metric, "tail": opts.tail, "attacks": attacks,
                "lines": lines, "skipped": skipped}

    def _line(self, members: list[tuple[StoredRun, dict[str, Any]]], key: str, attacks: list[str],
              differ: list[str], opts: SensitivityOptions) -> dict[str, Any]:
        by_x: dict[float, list[StoredRun]] = {}
        for r, cfg in members:
            by_x.setdefault(_number(cfg.get(key), key, r.name), []).append(r)
        points = []
        for x in sorted(by_x):
            res = [r.result(opts.tag)["results"] for r in by_x[x]]
            point: dict[str, Any] = {"x": x, "runs": [str(r.run_dir) for r in by_x[x]], "n": len(by_x[x])}
            for a in attacks:
                point[a] = {"overall": mean_std([(r.get(a) or {}).get(opts.metric) for r in res]),
                            "tail": mean_std([(r.get(a) or {}).get(opts.tail) for r in res])}
            points.append(point)
        cfg = members[0][1]
        setting = {k: cfg.get(k) for k in differ}
        label = next((r.label for r, _ in members if r.label), None)
        method = f"{cfg.get('method.name')}" + ("" if cfg.get("method.loss") in (None, "ce") else f" + {cfg.get('method.loss')}")
        return {"label": ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in setting.items()) or method,
                "method": method, "sweep_label": label, "setting": setting, "points": points}

    def plot(self, result: dict[str, Any], opts: SensitivityOptions):
        import matplotlib
        import numpy as np

        from ..evaluation.evaluator import column_title

        fig = new_figure(9.5, 3.6)
        ax_o, ax_t = fig.subplots(1, 2, sharex=True)
        colors = matplotlib.colormaps["tab10"]
        styles = ["-", "--", ":", "-."]
        xs_all = [p["x"] for line in result["lines"] for p in line["points"]]
        positive = all(x > 0 for x in xs_all)
        log_x = positive and max(xs_all) / min(xs_all) >= 100
        for j, line in enumerate(result["lines"]):
            for i, a in enumerate(result["attacks"]):
                for ax, part in ((ax_o, "overall"), (ax_t, "tail")):
                    pts = [(p["x"], p[a][part]) for p in line["points"] if p[a][part]["mean"] is not None]
                    if not pts:
                        continue
                    x = np.array([v[0] for v in pts])
                    m = np.array([v[1]["mean"] for v in pts])
                    s = np.array([v[1]["std"] or 0.0 for v in pts])
                    name = column_title(a) + (f" ({line['label']})" if len(result["lines"]) > 1 else "")
                    ax.errorbar(x, m, yerr=s if (s > 0).any() else None, fmt="o" + styles[j % 4], ms=3.5,
                                color=colors(i), capsize=2, label=name)
        key = result["key"]
        leaf = key.rsplit(".", 1)[-1]
        metric = METRIC_LABELS[result["metric"]]
        for ax, title in ((ax_o, f"all classes ({metric})"), (ax_t, TAIL_LABELS[result["tail"]])):
            ax.set_xlabel(f"{leaf}" + (f" ({key})" if leaf != key else ""))
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.set_title(title, fontsize=9)
            if log_x:
                ax.set_xscale("log")
        ax_o.set_ylabel(f"{metric} (%)")
        ax_t.set_ylabel(f"{TAIL_LABELS[result['tail']]} accuracy (%)")
        ax_o.legend(fontsize=7)
        fig.suptitle(f"sensitivity to {leaf} (eval tag {result['tag']}; mean ± std over seeds)", fontsize=10)
        return fig


def _attacks(results: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [a for a in r["results"] if a not in names]
    robust = [a for a in names if a not in ("clean", "worst_case")]
    return [a for a in names if a != "worst_case" or len(robust) >= 2]
