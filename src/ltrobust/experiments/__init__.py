"""Experiments: what strings training and evaluation together (the demo, sweeps over grids, and the
multi-stage recipes such as the self-distillation teacher). Sits above training and evaluation; the
report reads what they store."""

from .recipe import run_stage, train

__all__ = ["run_stage", "train"]
