"""Find stored results and group them into variants (seeds aggregated), from JSON alone.

A report never loads a model or a checkpoint: everything it shows comes from files a run folder
already holds (``docs/reports.md``):

- ``eval/<tag>.json`` (``ltrobust eval``; one *entry* per run and tag: ``best``, ``last``,
  ``best-logit_adjust1``, ...), with the evaluation-time config;
- ``metrics.jsonl`` (loss parts, lr, validation and ``ae_pred_counts`` per epoch);
- ``manifest.json`` (class names), ``eval/audit.json`` (``ltrobust audit``), ``analysis/*.png``
  (``ltrobust analyze``), each when present;
- ``sweep.json`` of a sweep folder: which (run, tag) entries it made, in grid order, with labels.

Entries whose configs differ only in the seed (``train.seed``) and bookkeeping keys (paths, progress
bars, batch sizes of the evaluation) form one :class:`Group`; its numbers are the mean and sample
standard deviation over the entries (:func:`ltrobust.evaluation.metrics.aggregate_seeds`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import io
from ..config import fmt_value  # noqa: F401 (re-exported for the tables)
from ..evaluation.metrics import aggregate_seeds
from ..evaluation.runs import training_state
from ..errors import CheckpointError, ConfigError
from ..run_folder import RunFolder

log = logging.getLogger(__name__)

#: config keys that never make two entries different variants (paths, logging, throughput knobs)
BOOKKEEPING_KEYS = ("name", "out", "preset", "reference", "data.data_dir", "data.download", "train.progress",
                    "train.device", "train.compile", "train.record_ae_drift", "train.ae_drift_samples",
                    "eval.batch_size", "eval.chunk_size")
#: keys shown as their own table columns rather than in "Setting"
MAIN_KEYS = ("method.name", "method.loss", "data.dataset", "data.profile", "data.imbalance", "model.foreign",
             "model.fingerprint")
#: the identity of a model ltrobust did not train (``ltrobust eval weights=`` / ``ltrobust.evaluate``): its name
#: and the fingerprint of its weights; entries that differ in either are different rows, never seeds of one
FOREIGN_KEYS = ("model.foreign", "model.fingerprint")
#: the mark of a variant whose training collapsed to chance (train_summary.json): its numbers are meaningless
COLLAPSED = " ⚠ collapsed (validation at chance)"
#: the mark of a variant whose training stopped before its last epoch (killed; no train_summary.json)
UNFINISHED = " ⚠ unfinished"
#: files under ``eval/`` that are not evaluation results
NON_RESULT_FILES = ("audit.json",)  #: and audit-<tag>.json


@dataclass
class Entry:
    """One evaluated (run folder, eval tag): a table row before seeds are aggregated."""

    run_dir: Path
    tag: str
    result: dict[str, Any]  #: the eval JSON
    flat: dict[str, Any]  #: its evaluation-time config, flattened (``section.key``)
    label: str | None = None  #: a sweep's label for this entry

    @property
    def seed(self) -> Any:
        return self.flat.get("train.seed", self.result.get("train_seed"))

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def foreign(self) -> str | None:
        """The name of a model ltrobust did not train (``ltrobust eval weights=`` or ``ltrobust.evaluate``),
        else None."""
        return self.flat.get("model.foreign")

    @property
    def unfinished(self) -> dict[str, Any] | None:
        """``{"epochs_done", "epochs"}`` when the run's training stopped before its last epoch (killed), else
        None: from the eval JSON's ``training`` record, or the run folder (no ``train_summary.json``)."""
        if "_unfinished" not in self.__dict__:
            training = self.result.get("training")
            if not isinstance(training, dict) and not self.foreign:
                training = training_state(self.run_dir, self.flat.get("train.epochs"))
            done = isinstance(training, dict) and training.get("finished") is False
            self.__dict__["_unfinished"] = ({"epochs_done": training.get("epochs_done"),  # type: ignore[union-attr]
                                             "epochs": training.get("epochs")} if done else None)  # type: ignore[union-attr]
        return self.__dict__["_unfinished"]

    @property
    def collapsed(self) -> bool:
        """Training collapsed to chance (the verdict ``ltrobust eval`` copies from ``train_summary.json``)."""
        verdict = self.result.get("collapse")
        if verdict is None:
            verdict = (_read_optional_json(RunFolder(self.run_dir).summary) or {}).get("collapse")
        return bool((verdict or {}).get("collapsed"))


@dataclass(eq=False)
class RunFiles:
    """What a run folder holds besides its eval JSON (read lazily, cached)."""

    run_dir: Path
    _metrics: list[dict[str, Any]] | None = None
    _audits: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        if self._metrics is None:
            self._metrics = io.read_jsonl(RunFolder(self.run_dir).metrics)
        return self._metrics

    def audit_file(self, tag: str) -> Path:
        """``eval/audit.json`` for the deployed model of tag ``best``, ``eval/audit-<tag>.json`` for any
        other (where ``ltrobust audit`` writes it: :meth:`ltrobust.run_folder.RunFolder.audit`)."""
        return RunFolder(self.run_dir).audit(tag)

    def audit(self, tag: str) -> dict[str, Any] | None:
        """The gradient-masking audit of the deployed model ``tag``, or None when there is none (or it is
        unreadable: a warning is logged)."""
        if tag not in self._audits:
            self._audits[tag] = _read_optional_json(self.audit_file(tag))
        return self._audits[tag]

    @property
    def analyses(self) -> list[Path]:
        folder = self.run_dir / "analysis"
        return sorted(folder.glob("*.png")) if folder.is_dir() else []

    _manifest: dict[str, Any] | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self._manifest = _read_optional_json(RunFolder(self.run_dir).manifest, verify=False) or {}
        return self._manifest

    @property
    def class_names(self) -> list[str] | None:
        names = self.manifest.get("class_names")
        return [str(n) for n in names] if isinstance(names, list) else None

    @property
    def data_format(self) -> str | None:
        """The training data's file format (``cifar-pickle``, ``image-folder``, ...) from ``manifest.json``."""
        source = self.manifest.get("source")
        return str(source["format"]) if isinstance(source, dict) and source.get("format") else None

    def cost(self) -> dict[str, float] | None:
        """Training cost from ``metrics.jsonl``: epochs, mean ``seconds`` per epoch, total seconds, and the peak
        CPU RSS / CUDA memory (MB, max over epochs) where logged; None without a timed epoch."""
        rows = [r for r in self.metrics if isinstance(r.get("seconds"), (int, float))]
        if not rows:
            return None
        out = {"epochs": float(len(rows)), "seconds_per_epoch": sum(r["seconds"] for r in rows) / len(rows),
               "seconds": float(sum(r["seconds"] for r in rows))}
        for key in ("peak_rss_mb", "peak_cuda_mb"):
            vals = [float(r[key]) for r in rows
                    if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
            if vals:
                out[key] = max(vals)
        return out


@dataclass
class Group:
    """Entries that differ only in the seed: one row of the tables, one set of figures."""

    gid: str  #: short id used in file names and HTML anchors (``g01``)
    key: tuple[tuple[str, str], ...]  #: the config that defines the variant (seed and bookkeeping removed)
    entries: list[Entry]
    aggregate: dict[str, Any] = field(default_factory=dict)  #: aggregate_seeds over entries' ``results``
    label: str = ""  #: display name of the variant
    setting: str = ""  #: config keys in which this variant differs from the others

    @property
    def config(self) -> dict[str, Any]:
        return self.entries[0].flat

    @property
    def n(self) -> int:
        return len(self.entries)

    @property
    def seeds(self) -> list[Any]:
        return [e.seed for e in self.entries]

    @property
    def collapsed(self) -> bool:
        """Some seed's training collapsed to chance (its label carries :data:`COLLAPSED`)."""
        return any(e.collapsed for e in self.entries)

    @property
    def attacks(self) -> list[str]:
        names: list[str] = []
        for e in self.entries:
            names += [a for a in e.result.get("results", {}) if a not in names]
        return names

    @property
    def class_counts(self) -> list[int]:
        return [int(c) for c in self.entries[0].result.get("class_counts", [])]

    def value(self, attack: str, metric: str = "accuracy") -> dict[str, Any] | None:
        """``{"mean", "std", "n"}`` of ``results[attack][metric]`` over the entries, or None."""
        v = (self.aggregate.get(attack) or {}).get(metric)
        return v if isinstance(v, dict) and "mean" in v else None


# ------------------------------------------------------------------------------------------- reading
def _read_optional_json(path: Path, verify: bool = True) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = io.read_json(path, verify=verify)
    except CheckpointError as exc:
        log.warning("skipping %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def flatten_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Nested config dict (``to_dict`` form) -> ``{"section.key": value}`` (see :func:`ltrobust.config.flatten_dict`)."""
    from ..config import flatten_dict

    return flatten_dict(cfg)


def eval_results(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(tag, eval JSON)`` of every evaluation stored in ``<run_dir>/eval``, sorted by tag."""
    folder = RunFolder(run_dir).eval_dir
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        if path.name in NON_RESULT_FILES or path.name.startswith("audit-"):
            continue
        data = _read_optional_json(path)
        if data is not None and isinstance(data.get("results"), dict):
            out.append((path.stem, data))
    return out


def is_run_dir(path: Path) -> bool:
    return RunFolder(path).is_run()


def find_run_dirs(root: Path) -> list[Path]:
    """Run folders at or below ``root`` (a run folder, a sweep folder or any parent folder)."""
    if is_run_dir(root):
        return [root]
    found = []
    for cfg in sorted(root.rglob("config.yaml")):
        parts = cfg.relative_to(root).parts[:-1]
        if any(p == "report" or p.endswith("_chunks") for p in parts):
            continue
        if is_run_dir(cfg.parent):
            found.append(cfg.parent)
    return found


def is_foreign_result(result: dict[str, Any]) -> bool:
    """An evaluation of a model ltrobust did not train: no run config, a model name or weights hash."""
    return not result.get("config") and bool(result.get("model_name") or result.get("model_fingerprint")
                                              or result.get("weights_sha256"))


def find_foreign_results(root: Path, run_dirs: Sequence[Path] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, eval JSON)`` of the evaluations of models ltrobust did not train at or below ``root`` (the
    ``out=`` folders of ``ltrobust eval weights=...``, the ``out_dir`` of ``ltrobust.evaluate``), outside the
    run folders ``run_dirs``, report folders and chunk folders; sorted by path."""
    runs = {r.resolve() for r in run_dirs}
    found = []
    for path in sorted(root.rglob("*.json")):
        parts = path.relative_to(root).parts[:-1]
        if any(p == "report" or p.endswith("_chunks") for p in parts) or path.name.startswith("audit"):
            continue
        if runs and not runs.isdisjoint(path.resolve().parents):  # inside a run folder: read as a run
            continue
        data = _read_optional_json(path)
        if data is not None and isinstance(data.get("results"), dict) and is_foreign_result(data):
            found.append((path, data))
    return found


def _entry(run_dir: Path, tag: str, result: dict[str, Any], label: str | None = None) -> Entry:
    from ..config import check_reference

    flat = flatten_config(result.get("config") or {})
    if is_foreign_result(result):
        # what the model is: its name and weights; the evaluation settings that make numbers comparable
        fingerprint = str(result.get("model_fingerprint") or result.get("weights_sha256") or "")
        flat = {"model.foreign": str(result.get("model_name") or Path(str(result.get("weights", "?"))).stem),
                "model.fingerprint": fingerprint, "model.name": result.get("model"),
                "data.dataset": result.get("dataset"), "data.profile": (result.get("data") or {}).get("profile"),
                "data.imbalance": (result.get("data") or {}).get("imbalance")}
        flat = {k: v for k, v in flat.items() if v is not None}
        return Entry(run_dir=run_dir, tag=tag, result=result, flat=flat, label=label)
    if not flat:  # an eval JSON without its config: fall back to the run's config.yaml
        import yaml

        try:
            flat = flatten_config(yaml.safe_load(RunFolder(run_dir).config.read_text()) or {})
        except (OSError, yaml.YAMLError):
            flat = {}
        for k, meta in (("method.name", "method"), ("method.loss", "loss"), ("data.dataset", "dataset"),
                        ("data.imbalance", "imbalance"), ("train.seed", "train_seed")):
            if meta in result:
                flat[k] = result[meta]
    try:  # the paper numbers as stored (a NaN written before they were checked is null in JSON): checked again
        if flat.get("reference"):
            flat["reference"] = list(check_reference(flat["reference"]))
    except ConfigError as exc:
        log.warning("%s (%s): its paper reference numbers are left out of the report: %s", run_dir, tag, exc)
        flat["reference"] = []
    return Entry(run_dir=run_dir, tag=tag, result=result, flat=flat, label=label)


def collect(inputs: Sequence[str | Path], tags: Iterable[str] | None = None) -> tuple[list[Entry], list[Path]]:
    """Every evaluated entry below ``inputs`` and the run folders that hold no evaluation yet.

    Args:
        inputs: run folders, sweep folders (with ``sweep.json``), parent folders of runs, or eval JSON files.
        tags: keep only these eval tags (``best``, ``last``, ``best-logit_adjust1``); None keeps all.
    """
    if not inputs:
        raise ConfigError("ltrobust report needs at least one run or sweep folder, e.g. "
                          "`ltrobust report runs/NAME out=reports/NAME`.")
    keep = set(tags) if tags else None
    entries: list[Entry] = []
    unevaluated: list[Path] = []
    seen: set[tuple[str, str]] = set()

    def add(entry: Entry) -> None:
        k = (str(entry.run_dir.resolve()), entry.tag)
        if k in seen or (keep is not None and entry.tag not in keep):
            return
        seen.add(k)
        entries.append(entry)

    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"{path} does not exist: pass run folders, sweep folders or eval JSON files.")
        if path.is_file():
            if path.suffix != ".json":
                raise ConfigError(f"{path} is not an eval JSON: pass run folders, sweep folders or "
                                  f"<run>/eval/<tag>.json files.")
            data = io.read_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
                raise ConfigError(f"{path} holds no evaluation results (no 'results'); is it written by ltrobust eval?")
            run_dir = path.parent.parent if path.parent.name == "eval" else path.parent
            add(_entry(run_dir, path.stem, data))
            continue
        sweep = _read_optional_json(path / "sweep.json")
        if sweep is not None and isinstance(sweep.get("entries"), list):
            for item in sweep["entries"]:
                run_dir = (path / item["run"]) if not Path(item["run"]).is_absolute() else Path(item["run"])
                data = _read_optional_json(RunFolder(run_dir).eval_result(item["tag"]))
                if data is None:
                    if run_dir not in unevaluated:
                        unevaluated.append(run_dir)
                    continue
                add(_entry(run_dir, item["tag"], data, label=item.get("label")))
            continue
        runs = find_run_dirs(path)
        foreign = find_foreign_results(path, runs)
        if not runs and not foreign:
            raise ConfigError(f"no run folders (config.yaml + metrics.jsonl / eval/) and no evaluation results "
                              f"found in {path}; pass the folder of a run trained by `ltrobust train`, a sweep "
                              f"folder, or the out= folder of `ltrobust eval weights=...`.")
        for json_path, data in foreign:
            add(_entry(json_path.parent, json_path.stem, data))
        for run_dir in runs:
            stored = eval_results(run_dir)
            if not stored:
                unevaluated.append(run_dir)
            for tag, data in stored:
                add(_entry(run_dir, tag, data))
    return entries, unevaluated


# ------------------------------------------------------------------------------------------ grouping
def _hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def group_entries(entries: Sequence[Entry], seed_keys: Sequence[str] = ("train.seed",)) -> list[Group]:
    """Group entries whose configs agree on every key but ``seed_keys`` and :data:`BOOKKEEPING_KEYS`;
    groups keep the order of their first entry, entries within a group are sorted by seed."""
    ignore = set(BOOKKEEPING_KEYS) | set(seed_keys)
    order: list[tuple[tuple[str, str], ...]] = []
    members: dict[tuple[tuple[str, str], ...], list[Entry]] = {}
    for e in entries:
        key = tuple(sorted((k, _hashable(v)) for k, v in e.flat.items() if k not in ignore))
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(e)
    groups = []
    for i, key in enumerate(order, 1):
        ents = sorted(members[key], key=lambda e: (_hashable(e.seed), e.name, e.tag))
        g = Group(gid=f"g{i:02d}", key=key, entries=ents)
        g.aggregate = aggregate_seeds([_slim(e.result["results"]) for e in ents])
        groups.append(g)
    _label(groups)
    return groups


def _slim(results: dict[str, Any]) -> dict[str, Any]:
    """Per-attack results without what is not aggregated over seeds: class-group memberships, timings,
    and the C x C predicted distribution by true class (the overall distribution is kept)."""
    out = {}
    for attack, r in results.items():
        r = {k: v for k, v in r.items() if k not in ("groups", "seconds")}
        if isinstance(r.get("predicted_distribution"), dict):
            r["predicted_distribution"] = {k: v for k, v in r["predicted_distribution"].items() if k == "overall"}
        out[attack] = r
    return out


def short_key(key: str, all_keys: Iterable[str] = ()) -> str:
    """``train.finetune`` -> ``finetune`` (leaf name), ``method.args.tau_p`` -> ``tau_p``."""
    if key.startswith(("method.args.", "method.loss_args.")):
        return key.rsplit(".", 1)[1]
    leaf = key.rsplit(".", 1)[-1]
    clashes = [k for k in all_keys if k != key and k.rsplit(".", 1)[-1] == leaf]
    return key if clashes else leaf


def varying_keys(groups: Sequence[Group]) -> list[str]:
    """Config keys whose value differs between groups (in a stable order)."""
    keys: list[str] = []
    for g in groups:
        keys += [k for k, _ in g.key if k not in keys]
    out = []
    for k in keys:
        vals = {dict(g.key).get(k, "<unset>") for g in groups}
        if len(vals) > 1:
            out.append(k)
    return out


def data_label(flat: dict[str, Any]) -> str:
    """``exp IR 50``, ``full``, ``balanced-small (IR 50)``, ``step IR 10``."""
    profile = flat.get("data.profile", "exp")
    ir = flat.get("data.imbalance")
    ir_s = fmt_value(ir) if ir is not None else "?"
    if profile == "full":
        return "full"
    if profile == "balanced-small":
        return f"balanced-small (IR {ir_s})"
    return f"{profile} IR {ir_s}"


def _default_flat() -> dict[str, Any]:
    from ..config import RunConfig, to_dict

    return flatten_config(to_dict(RunConfig()))


def _label(groups: list[Group]) -> None:
    """``setting``: the keys in which variants differ, where this one is not at the default config;
    ``label``: the sweep's label, else method + loss + setting."""
    vary = [k for k in varying_keys(groups) if k not in MAIN_KEYS]
    all_keys = [k for g in groups for k, _ in g.key]
    default = _default_flat()
    for g in groups:
        flat = g.config
        parts = [f"{short_key(k, all_keys)}={fmt_value(flat[k])}" for k in vary
                 if k in flat and _hashable(flat[k]) != _hashable(default.get(k))]
        g.setting = ", ".join(parts)
        sweep_label = next((e.label for e in g.entries if e.label), None)
        g.label = sweep_label or " ".join(p for p in (method_loss(g), f"[{g.setting}]" if g.setting else "") if p)
        g.label += COLLAPSED if g.collapsed else ""
        g.label += unfinished_mark(g)
    # two different foreign models that share a name: the fingerprint tells them apart
    for g in groups:
        same = [o for o in groups if o.label == g.label]
        if g.entries[0].foreign and len(same) > 1:
            g.label += f" ({str(g.config.get('model.fingerprint', ''))[:8]})"


def unfinished_mark(g: Group) -> str:
    """`` ⚠ unfinished (4 of 10 epochs)`` when some run of the variant stopped before its last epoch, else ``""``."""
    marks = [e.unfinished for e in g.entries if e.unfinished]
    if not marks:
        return ""
    done = ", ".join(f"{m.get('epochs_done', '?')} of {m.get('epochs', '?')}" for m in marks)
    return f"{UNFINISHED} ({done} epochs)"


def method_loss(g: Group) -> str:
    """``method + loss`` of a variant, by the loss it actually trained with (``loss_label`` of the eval
    JSON: ``at_bsl + bsl``, ``robal + margin-bias ce + kl``), the configured ``loss=`` for older results;
    the model's name for a model ltrobust did not train."""
    if g.entries[0].foreign:
        return str(g.entries[0].foreign)
    flat = g.config
    loss = g.entries[0].result.get("loss_label") or flat.get("method.loss", "?")
    return f"{flat.get('method.name', '?')} + {loss}"


# ------------------------------------------------------------------------------------------- attacks
_ATTACK = re.compile(r"^(?P<family>[a-z_]+?)(?P<steps>\d+)?(?P<l2>-l2)?$")
_FAMILY_RANK = {"clean": 0, "fgsm": 1, "pgd": 2, "mim": 3, "cw": 4, "aa": 5, "apgd": 6, "square": 7, "adaptive": 8}


def attack_sort_key(name: str) -> tuple[Any, ...]:
    """Paper column order: Clean, FGSM, PGD-20, PGD-100, MIM, CW, AA, APGD, Square, adaptive, others,
    worst case; l_2 variants after their l_inf counterparts."""
    if name == "worst_case":
        return (99, 0, 0, name)
    m = _ATTACK.match(name)
    if not m:
        return (50, 0, 0, name)
    fam = m.group("family")
    return (_FAMILY_RANK.get(fam, 50), 1 if m.group("l2") else 0, int(m.group("steps") or 0), name)


def ordered_attacks(groups: Sequence[Group]) -> list[str]:
    """Attack columns: the paper order (:func:`attack_sort_key`) when every evaluation ran its attacks
    standalone; the order they ran in otherwise (in cascade, a column depends on the ones before it)."""
    names: list[str] = []
    for g in groups:
        names += [a for a in g.attacks if a not in names]
    if all(e.result.get("mode") == "standalone" for g in groups for e in g.entries):
        return sorted(names, key=attack_sort_key)
    return [a for a in names if a != "worst_case"] + (["worst_case"] if "worst_case" in names else [])


def robust_column(groups: Sequence[Group], requested: str | None = None) -> str | None:
    """The robust column of the trade-off plot and the group table: ``requested`` when given, else AA
    when every variant has it, else the per-sample worst case over the suite (None if only clean ran)."""
    if requested:
        if not any(requested in g.attacks for g in groups):
            raise ConfigError(f"robust={requested!r} was not run by any of the runs; attacks present: "
                              f"{', '.join(ordered_attacks(groups))}.")
        return requested
    def has(g: Group, cand: str) -> bool:
        attacked = any(a not in ("clean", "worst_case") for a in g.attacks)
        return cand in g.attacks and (cand != "worst_case" or attacked)

    for cand in ("aa", "worst_case"):
        if groups and all(has(g, cand) for g in groups):
            return cand
    for cand in ("aa", "worst_case"):
        if any(has(g, cand) for g in groups):
            return cand
    return None
