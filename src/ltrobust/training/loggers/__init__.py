"""Experiment trackers: every scalar the trainer logs to ``metrics.jsonl`` also goes to ``train.logger``.

A tracker is a class registered in :data:`ltrobust.registry.LOGGERS` that follows :class:`Logger`: it is
built once per run (main process only) as ``cls(run_dir, start_step=..., config=...)``, receives
``log_scalars(step, scalars)`` once per epoch row of ``metrics.jsonl`` (``step`` is the 0-based epoch, as
in that file; the fine-tuning stage's row comes under the ``finetune/`` prefix) and ``close()`` at the end.
``scalars`` is the row flattened by :func:`scalars_of`: ``loss``, ``lr``, ``seconds``, ``val/clean``,
``val/per_class_rob/3``, ``ae_pred_counts/3``, ...

Another tracker is one file in this package, imported below like ``tensorboard.py`` (or, outside
ltrobust, any module imported before training)::

    @LOGGERS.register("wandb")
    class WandbLogger:
        def __init__(self, run_dir, start_step=0, config=None):
            import wandb
            self.run = wandb.init(dir=str(run_dir), config=config, resume="allow", id=Path(run_dir).name)
        def log_scalars(self, step, scalars):
            self.run.log(dict(scalars), step=step)
        def close(self):
            self.run.finish()
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from ...errors import LtrobustError
from ...registry import LOGGERS

log = logging.getLogger(__name__)

__all__ = ["Guarded", "Logger", "build_logger", "scalars_of"]

#: per-sample lists of a metrics row (AE drift of each sampled image): not scalars of the epoch
PER_SAMPLE = ("ae_drift/l2", "ae_drift/labels")


@runtime_checkable
class Logger(Protocol):
    """What the trainer calls on a tracker."""

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``{name: value}`` at ``step`` (the 0-based epoch)."""

    def close(self) -> None:
        """Flush and release the tracker (called once, also when the training fails)."""


def scalars_of(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` row as flat ``{"a/b/3": value}`` scalars.

    Nested dicts join their keys with ``/``, lists (per-class values) add the class index; ``None``,
    strings, booleans and the per-sample lists of :data:`PER_SAMPLE` are left out.

    Example::

        scalars_of({"loss": 0.5, "val": {"clean": 60.0, "per_class_rob": [50.0, None]}})
        # {"loss": 0.5, "val/clean": 60.0, "val/per_class_rob/0": 50.0}
    """
    out: dict[str, float] = {}

    def walk(value: Any, name: str) -> None:
        if name in PER_SAMPLE:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{name}/{k}" if name else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}/{i}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)

    walk(row, prefix.rstrip("/"))
    return out


def build_logger(name: str, run_dir: str | Path, start_step: int = 0,
                 config: Mapping[str, Any] | None = None) -> Logger | None:
    """The tracker ``name`` for ``run_dir`` (``None`` for ``none``), wrapped in :class:`Guarded`; an unknown name
    or a missing package raises :class:`ConfigError` naming the fix."""
    if name in ("", "none"):
        return None
    cls = LOGGERS.get(name)
    try:
        return Guarded(name, cls(Path(run_dir), start_step=start_step, config=dict(config or {})))
    except LtrobustError:
        raise
    except Exception as exc:  # noqa: BLE001 - a tracker that cannot start (read-only folder, full disk, ...)
        log.warning("train.logger=%s is off for this run: %s: %s. Training goes on; metrics.jsonl keeps every "
                    "number.", name, type(exc).__name__, exc)
        return None


class Guarded:
    """A tracker whose failures never stop training: the first exception of ``log_scalars`` or ``close`` (a
    read-only or full disk under ``<run>/tensorboard``, a lost connection) is logged as one warning and the
    tracker is switched off; ``metrics.jsonl`` keeps every number."""

    def __init__(self, name: str, tracker: Logger) -> None:
        self.name, self.tracker = name, tracker
        self.failed = False

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._call("log_scalars", step, scalars)

    def close(self) -> None:
        self._call("close")

    def _call(self, method: str, *args: Any) -> None:
        if self.failed:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - any tracker failure, once
            self.failed = True
            log.warning("train.logger=%s stopped: %s: %s. Training goes on; metrics.jsonl keeps every number.",
                        self.name, type(exc).__name__, exc)
            if method != "close":
                with contextlib.suppress(Exception):
                    self.tracker.close()


from . import tensorboard  # noqa: E402,F401 (registers the built-in trackers)
