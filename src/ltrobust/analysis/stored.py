"""What the stored-result analyses (``sensitivity``, ``cost``, ``epoch-choice``) read: run folders and their files.

These analyses load no model and run no attack. They take run folders, sweep folders (``sweep.json`` gives
the runs in grid order and their labels) or any parent folder of runs, and read ``eval/<tag>.json``,
``metrics.jsonl``, ``train_summary.json`` and ``config.yaml`` through :class:`~ltrobust.run_folder.RunFolder`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import yaml

from .. import io
from ..config import flatten_dict
from ..errors import CheckpointError, ConfigError
from ..run_folder import RunFolder

log = logging.getLogger(__name__)

#: config keys that never make two runs different settings (paths, logging, throughput knobs, seeds apart)
BOOKKEEPING_KEYS = ("name", "out", "preset", "reference", "data.data_dir", "data.download", "train.progress",
                    "train.device", "train.compile", "train.record_ae_drift", "train.ae_drift_samples",
                    "train.logger", "train.epoch_test", "eval.batch_size", "eval.chunk_size")


def read_optional(path: Path, verify: bool = True) -> Any:
    """A JSON file's content, or None when it is absent or unreadable (a warning is logged)."""
    if not path.is_file():
        return None
    try:
        return io.read_json(path, verify=verify)
    except CheckpointError as exc:
        log.warning("skipping %s: %s", path, exc)
        return None


@dataclass
class StoredRun:
    """One run folder as its stored files (read lazily)."""

    run_dir: Path
    label: str | None = None  #: a sweep's label
    _results: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's resolved config, flattened (``section.key``; method options as ``method.args.KEY``)."""
        try:
            raw = yaml.safe_load(self.folder.config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            raw = {}
        return flatten_dict(raw) if isinstance(raw, dict) else {}

    def result(self, tag: str) -> dict[str, Any] | None:
        """``eval/<tag>.json`` (None when absent)."""
        if tag not in self._results:
            data = read_optional(self.folder.eval_result(tag))
            self._results[tag] = data if isinstance(data, dict) and isinstance(data.get("results"), dict) else None
        return self._results[tag]

    def tags(self) -> list[str]:
        folder = self.folder.eval_dir
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("audit"))

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        path = self.folder.metrics
        return io.read_jsonl(path) if path.is_file() else []

    @cached_property
    def summary(self) -> dict[str, Any]:
        data = read_optional(self.folder.summary)
        return data if isinstance(data, dict) else {}


def find_runs(inputs: Sequence[str | Path]) -> list[StoredRun]:
    """The run folders at or below ``inputs`` (sweep folders in their grid order, with labels), once each."""
    out: list[StoredRun] = []
    seen: set[str] = set()

    def add(run_dir: Path, label: str | None = None) -> None:
        key = str(run_dir.resolve())
        if key not in seen and RunFolder(run_dir).is_run():
            seen.add(key)
            out.append(StoredRun(run_dir, label))

    for raw in inputs:
        path = Path(raw)
        if path.is_file() and path.parent.name == "checkpoints":
            path = RunFolder.of_checkpoint(path).root
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder: pass run folders, sweep folders or a folder holding runs.")
        sweep = read_optional(path / "sweep.json")
        if isinstance(sweep, dict) and isinstance(sweep.get("entries"), list):
            for item in sweep["entries"]:
                add(path / item["run"] if not Path(item["run"]).is_absolute() else Path(item["run"]), item.get("label"))
            continue
        if RunFolder(path).is_run():
            add(path)
            continue
        for cfg in sorted(path.rglob("config.yaml")):
            parts = cfg.relative_to(path).parts[:-1]
            if any(p in ("report", "analysis") or p.endswith("_chunks") for p in parts):
                continue
            if len(parts) >= 1 and RunFolder(cfg.parent.parent).is_run():
                continue  # a stage of a run (the self-distillation teacher), not a run of its own
            add(cfg.parent)
    if not out:
        raise ConfigError(f"no run folders (config.yaml + metrics.jsonl) found in {', '.join(map(str, inputs))}: "
                          f"pass run folders or the folder of a sweep.")
    return out


def hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varying_keys(configs: Sequence[dict[str, Any]], ignore: Sequence[str] = ()) -> list[str]:
    """Keys whose value differs between the flat configs (in first-seen order), bookkeeping and ``ignore``
    left out."""
    skip = set(BOOKKEEPING_KEYS) | set(ignore)
    keys: list[str] = []
    for cfg in configs:
        keys += [k for k in cfg if k not in keys and k not in skip]
    return [k for k in keys if len({hashable(c.get(k, "<unset>")) for c in configs}) > 1]


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std" (sample std, ddof 1; 0 for one value), "n"}`` of finite numbers (mean None when none)."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    m = sum(vals) / len(vals)
    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
    return {"mean": m, "std": sd, "n": len(vals)}
