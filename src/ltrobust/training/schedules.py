"""Learning-rate schedules as pure functions of the (fractional) epoch, so a resumed run continues exactly."""

from __future__ import annotations

import math

from ..config import RunConfig


def schedule_length_terms(cfg: RunConfig) -> list[str]:
    """What in the learning-rate schedule depends on ``train.epochs`` (the cosine curve); [] for step,
    constant and warm-up, which are functions of the epoch alone (so a run of them can be extended)."""
    return ["the cosine learning-rate schedule spans train.epochs"] if cfg.train.schedule == "cosine" else []


def piecewise_linear(epoch: float, epochs: tuple[float, ...], values: tuple[float, ...]) -> float:
    """``values`` linearly interpolated at ``epoch`` between the knots ``epochs`` (non-decreasing; a repeated knot
    is a jump, the value on its right applying from it on), held at the ends: ``np.interp`` with jumps."""
    if epoch < epochs[0]:
        return values[0]
    for i in range(len(epochs) - 1):
        if epochs[i] <= epoch < epochs[i + 1]:
            w = (epoch - epochs[i]) / (epochs[i + 1] - epochs[i])
            return values[i] + w * (values[i + 1] - values[i])
    return values[-1]


def lr_at(cfg: RunConfig, epoch: float) -> float:
    """Learning rate at (fractional) epoch: warmup, then step / cosine / constant / piecewise (a pure function)."""
    t = cfg.train
    if t.schedule == "piecewise":
        return t.lr * piecewise_linear(epoch, t.lr_epochs, t.lr_factors)
    if t.warmup_epochs and epoch < t.warmup_epochs:
        return t.lr * (epoch + 1e-8) / t.warmup_epochs
    if t.schedule == "cosine":
        total = max(t.epochs - t.warmup_epochs, 1)
        return 0.5 * t.lr * (1 + math.cos(math.pi * min(epoch - t.warmup_epochs, total) / total))
    if t.schedule == "step":  # epoch counts from 0; with milestone_base 1 the milestones count from 1
        return t.lr * t.lr_decay ** sum(1 for m in t.milestones if int(epoch) + t.milestone_base >= m)
    return t.lr
