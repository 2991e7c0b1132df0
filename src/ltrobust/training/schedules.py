"""Learning-rate schedules as pure functions of the (fractional) epoch, so a resumed run continues exactly."""

from __future__ import annotations

import math

from ..config import RunConfig


def lr_at(cfg: RunConfig, epoch: float) -> float:
    """Learning rate at (fractional) epoch: warmup, then step / cosine / constant (a pure function)."""
    t = cfg.train
    if t.warmup_epochs and epoch < t.warmup_epochs:
        return t.lr * (epoch + 1e-8) / t.warmup_epochs
    if t.schedule == "cosine":
        total = max(t.epochs - t.warmup_epochs, 1)
        return 0.5 * t.lr * (1 + math.cos(math.pi * min(epoch - t.warmup_epochs, total) / total))
    if t.schedule == "step":  # epoch counts from 0; with milestone_base 1 the milestones count from 1
        return t.lr * t.lr_decay ** sum(1 for m in t.milestones if int(epoch) + t.milestone_base >= m)
    return t.lr
