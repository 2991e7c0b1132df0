"""Training a run with every stage its method declares: ``ltrobust train`` in Python.

A method that needs another run before its own (the self-distillation teacher) says so as data,
:meth:`ltrobust.methods.base.Method.stages`. This module runs each stage into ``<run_dir>/<stage name>``
with its own :class:`~ltrobust.training.trainer.Trainer` (so a stage resumes like any run, and a finished one
is not retrained), loads the stage's deployed model, and hands it to the method before the method's own
training. Methods never import the trainer.

Example::

    from ltrobust.config import resolve_config
    from ltrobust.experiments import train

    trainer = train(resolve_config(["preset=self-distill-digits"]))   # <run>/teacher, then the student
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..config import method_options
from ..errors import ConfigError
from ..evaluation.runs import load_run
from ..methods.base import Stage
from ..registry import METHODS
from ..training.state import rng_state, set_rng_state
from ..training.trainer import Trainer

log = logging.getLogger(__name__)


def train(cfg: Any, run_dir: str | Path | None = None, data: Any = None) -> Trainer:
    """Train ``cfg`` (resuming when its run folder holds a checkpoint) after its method's stages.

    Returns the finished :class:`Trainer` (``trainer.run_dir``, ``trainer.method``, ``trainer.summary``)."""
    trainer = Trainer(cfg, run_dir=run_dir, data=data)
    stages = METHODS.get(cfg.method.name).stages(cfg, method_options(cfg))
    if stages:
        trainer.build()
        for stage in stages:
            trainer.method.use_stage(stage.name, run_stage(stage, trainer))
    trainer.summary = trainer.fit()
    return trainer


def run_stage(stage: Stage, trainer: Trainer) -> nn.Module:
    """Train (or resume, or load from ``stage.path``) one stage; returns its deployed model, frozen by the method.

    The random streams are saved and restored around it, so the main run's stream does not depend on whether
    the stage was trained now, earlier, or loaded (exact resume)."""
    state = rng_state()
    try:
        path: str | Path | None = stage.path
        if not path:
            path = trainer.folder.stage(stage.name).root
            log.info("%s: stage %r -> %s (%d epochs, batch %d)", trainer.cfg.method.name, stage.name, path,
                     stage.config.train.epochs, stage.config.train.batch_size)
            data = stage.data(trainer.data) if stage.data is not None else trainer.data
            Trainer(stage.config, run_dir=path, data=data).fit()
        run = load_run(path, [f"checkpoint={stage.checkpoint}"], device=trainer.device)
    finally:
        set_rng_state(state)
    if len(run.class_counts) != trainer.num_classes:
        raise ConfigError(f"the {stage.name} run {path} has {len(run.class_counts)} classes but this run has "
                          f"{trainer.num_classes}: use a {stage.name} trained on the same data set.")
    return run.deployed.to(trainer.device)
