"""Training: one trainer for every method, its learning-rate schedules, the fine-tuning stage, and the
checkpoint / random-state logic that makes a killed run resume bit-exactly."""

from .schedules import lr_at
from .trainer import Trainer

__all__ = ["Trainer", "lr_at"]
