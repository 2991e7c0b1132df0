"""The layout of a run folder, in one place: what training writes and what evaluation, reports, sweeps and
analyses read back.

::

    <run>/config.yaml            the resolved run config (YAML, read with safe_load)
    <run>/manifest.json          the data selection: indices and counts per split
    <run>/metrics.jsonl          one row per epoch (0-based ``epoch``)
    <run>/train_summary.json     written when training finishes (best epoch, cost, collapse verdict)
    <run>/checkpoints/last.pt    full training state (exact resume)
    <run>/checkpoints/best.pt    weights of the best validation epoch
    <run>/eval/<tag>.json, .md   evaluation results; <tag>_chunks/ while they are computed
    <run>/eval/audit[-<tag>].*   gradient-masking audit
    <run>/<stage>/               a stage the method declared (self-distillation: teacher/), itself a run folder
    <run>/method/<name>.pt       state a method builds once before training (MCAT's class generators)
    <run>/.lock                  held by the training process (``eval/.<tag>.lock`` by an evaluation)

Every file is written atomically through :mod:`ltrobust.io`. This module only names paths; it reads and
writes nothing, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder. ``RunFolder(path)``; ``RunFolder.of_checkpoint(file)`` for a checkpoint."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunFolder":
        """The run folder of a checkpoint file (``<run>/checkpoints/x.pt``, or a file directly in a folder)."""
        p = Path(checkpoint)
        return cls(p.parent.parent if p.parent.name == "checkpoints" else p.parent)

    # ------------------------------------------------------------------------------- training
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, name: str = "last") -> Path:
        """``checkpoints/<name>.pt`` (``last``, ``best``)."""
        return self.checkpoints / f"{name}.pt"

    def method_file(self, name: str) -> Path:
        """``method/<name>.pt``: state a method builds once before its first epoch and keeps beside the
        checkpoints rather than in each of them (MCAT's class generators; the checkpoints hold its sha256)."""
        return self.root / "method" / f"{name}.pt"

    def stage(self, name: str) -> "RunFolder":
        """The run folder of a stage the method declared (``teacher``)."""
        return RunFolder(self.root / name)

    # ----------------------------------------------------------------------------- evaluation
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def eval_result(self, tag: str, suffix: str = ".json") -> Path:
        return self.eval_dir / f"{tag}{suffix}"

    def eval_chunks(self, tag: str) -> Path:
        return self.eval_dir / f"{tag}_chunks"

    def audit(self, tag: str, suffix: str = ".json") -> Path:
        """``eval/audit.json`` for the ``best`` tag, ``eval/audit-<tag>.json`` otherwise."""
        return self.eval_dir / (("audit" if tag == "best" else f"audit-{tag}") + suffix)

    def is_run(self) -> bool:
        """A folder that ``ltrobust train`` wrote (its config and at least metrics, checkpoints or results)."""
        return self.config.is_file() and any(p.exists() for p in (self.metrics, self.eval_dir, self.checkpoints))
