"""Long-tailed adversarial training with a balanced self-teacher and self-distillation (Cho, Lee and Kim, ICLR 2025,
arXiv:2503.06461 submission "Long-tailed adversarial training with self-distillation", Sec. 4.2 and 5.1).

Two phases, both recorded in the run folder:

1. Teacher (:meth:`SelfDistill.setup`): the same architecture, adversarially trained with PGD-AT (PGD-10 on
   CE, CE outer loss) for ``teacher_epochs`` (30) epochs with batch ``teacher_batch_size`` (32) and lr
   ``teacher_lr`` (0.1) on the balanced set D_B, resampled from the long-tailed training set with
   ``gamma * n_min`` images per class, ``gamma = IR / 2`` (tail classes up-sampled, head classes
   down-sampled; :func:`ltrobust.data.balanced_resample`, ``data.resample_gamma``). The method declares it
   as a :class:`~ltrobust.methods.base.Stage` (:meth:`SelfDistill.stages`); the orchestration
   (:func:`ltrobust.experiments.train`) trains it into ``<run_dir>/teacher`` (config, metrics, checkpoints),
   so it resumes like any run. ``method.teacher=PATH`` (a run folder or checkpoint) skips this phase.
2. Student: AEs from PGD-10 on CE (as AT-BSL), loss (SPEC self_distill)::

       L = BSL(z_s(x'), y) + alpha * [ KL(p_t(x') || p_s(x')) + lambda_e * IGDM ]

   with IGDM (Lee et al. 2023) ``KL(softmax(t(x + d) - t(x - d)) || softmax(s(x + d) - s(x - d)))``,
   ``d = x' - x`` (so ``x + d = x'``), and ``lambda_e`` ramped linearly to ``igdm_max`` over training
   (:func:`ltrobust.losses.linear_ramp`). The teacher is frozen (eval mode, no gradient).

Cho et al.'s (ICLR 2025) algorithm box is not in its text: alpha, the ramp and its maximum are options (SPEC defaults
alpha 1, IGDM maximum 10). With alpha = 0 no teacher is trained and the method is exactly AT-BSL.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attacks.pgd import autocast
from ..config import RunConfig, with_updates
from ..device import widen
from ..errors import ConfigError
from ..losses import igdm_loss, kd_kl, linear_ramp
from ..registry import METHODS
from .at_bsl import ATBSL, ATBSLOptions
from .base import Stage, forward_train

log = logging.getLogger(__name__)


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.75,0.9"`` (or ``"[0.75, 0.9]"``) -> (0.75, 0.9); empty -> ()."""
    parts = [p.strip() for p in str(text).strip().strip("[]()").split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"teacher_decay_at={text!r}: give fractions of the teacher's epochs, e.g. 0.75,0.9.") from None
    if any(not 0.0 < v < 1.0 for v in values):
        raise ConfigError(f"teacher_decay_at={text!r}: every fraction must lie in (0, 1), e.g. 0.75,0.9.")
    return values


@dataclass(frozen=True)
class SelfDistillOptions(ATBSLOptions):
    alpha: float = 1.0  #: weight of the distillation term (KD + IGDM)
    igdm_max: float = 10.0  #: final weight of IGDM inside KD
    ramp: str = "linear"  #: linear (igdm_max * (epoch + 1) / epochs) | none (igdm_max throughout)
    teacher_epochs: int = 30  #: epochs of the balanced self-teacher
    teacher_batch_size: int = 32
    teacher_lr: float = 0.1
    teacher_decay_at: str = "0.75,0.9"  #: teacher lr x0.1 at these fractions of teacher_epochs ("" constant)
    teacher_checkpoint: str = "last"  #: last | best (by validation robustness) teacher weights

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.igdm_max < 0:
            raise ConfigError(f"alpha={self.alpha} and igdm_max={self.igdm_max} must be >= 0.")
        if self.ramp not in ("linear", "none"):
            raise ConfigError(f"ramp={self.ramp!r}: use linear or none.")
        if self.teacher_epochs < 1 or self.teacher_batch_size < 1 or self.teacher_lr <= 0:
            raise ConfigError("teacher_epochs and teacher_batch_size must be >= 1 and teacher_lr > 0.")
        if self.teacher_checkpoint not in ("last", "best"):
            raise ConfigError(f"teacher_checkpoint={self.teacher_checkpoint!r}: use last or best.")
        parse_fractions(self.teacher_decay_at)


def teacher_config(cfg: RunConfig, options: SelfDistillOptions) -> RunConfig:
    """The teacher's run config: PGD-AT with CE on the student's data, model, attack and evaluation threat model.

    Everything that belongs to the student alone is reset to its default: the method (pgd_at, loss ce,
    no options, ``attack.loss_mode``), the schedule (epochs, batch size, lr, a step schedule at
    ``teacher_decay_at``, no warm-up), uniform sampling (D_B is already balanced), no fine-tuning stage,
    no weight EMA (Cho et al. (ICLR 2025) train the teacher with plain PGD-AT), no AE-drift record, and the student's
    inference settings (``eval.adjust``, ``eval.adjust_tau``, ``eval.tag``): the distillation targets
    are the teacher's own logits, never an adjusted version of them."""
    epochs = options.teacher_epochs
    milestones = tuple(sorted({int(f * epochs) for f in parse_fractions(options.teacher_decay_at)} - {0}))
    plain = RunConfig()
    return with_updates(
        cfg,
        method={"name": "pgd_at", "loss": "ce", "args": {}, "loss_args": {}, "teacher": None},
        attack={"loss_mode": plain.attack.loss_mode},
        train={"epochs": epochs, "batch_size": options.teacher_batch_size, "lr": options.teacher_lr,
               "schedule": "step", "milestones": milestones, "warmup_epochs": 0, "sampler": "uniform",
               "finetune": "none", "ema": 0.0, "record_ae_drift": False},
        eval={k: getattr(plain.eval, k) for k in STUDENT_EVAL_KEYS},
    )


#: evaluation settings of the student alone, reset in the teacher's config
STUDENT_EVAL_KEYS = ("adjust", "adjust_tau", "tag")


def teacher_data(data: Any, cfg: RunConfig) -> Any:
    """The balanced set D_B (Cho et al., ICLR 2025, Sec. 4.2): ``int(gamma * n_min)`` images per class,
    gamma = IR / 2."""
    from ..data import balanced_resample, resample_gamma
    from ..data.profiles import class_groups

    counts = [int(c) for c in data.class_counts]
    gamma = resample_gamma(cfg.data, counts)
    train = balanced_resample(data.train, counts, gamma, seed=cfg.data.selection_seed)
    new_counts = [int(c) for c in train.class_counts(data.num_classes)]
    manifest = dict(data.manifest)
    manifest["teacher_resample"] = {"gamma": gamma, "per_class": new_counts, "seed": cfg.data.selection_seed,
                                    "source_class_counts": counts,
                                    "rule": "int(gamma * n_min) per class; head down-sampled, tail tiled"}
    return dataclasses.replace(data, train=train, class_counts=new_counts, groups=class_groups(new_counts),
                               manifest=manifest)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients (the frozen teacher)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@METHODS.register("self_distill")
class SelfDistill(ATBSL):
    """AT-BSL student distilled from a balanced, adversarially trained self-teacher (Cho et al., ICLR 2025).

    Options (besides AT-BSL's ``tau``): alpha 1.0, igdm_max 10.0, ramp linear, teacher_epochs 30,
    teacher_batch_size 32, teacher_lr 0.1, teacher_decay_at "0.75,0.9", teacher_checkpoint last.

    Example::

        cfg = resolve_config(["preset=self-distill-cifar10lt-resnet18", "data_dir=.data/cifar10"])
        ltrobust.experiments.train(cfg)   # trains <run>/teacher first, then the student
    """

    name = "self_distill"
    Options = SelfDistillOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher: nn.Module | None = None

    # ------------------------------------------------------------------------------ teacher
    def set_teacher(self, teacher: nn.Module) -> None:
        """Use ``teacher`` (frozen here) for distillation."""
        self.teacher = freeze(teacher)

    @classmethod
    def stages(cls, cfg: RunConfig, options: SelfDistillOptions) -> list[Stage]:
        """The balanced self-teacher, trained into ``<run_dir>/teacher`` unless ``method.teacher=PATH`` names
        one; none with ``alpha=0`` (the student then trains exactly as AT-BSL)."""
        if options.alpha == 0:
            return []
        return [Stage(name="teacher", config=teacher_config(cfg, options),
                      data=lambda data: teacher_data(data, cfg), checkpoint=options.teacher_checkpoint,
                      path=cfg.method.teacher or None)]

    def use_stage(self, name: str, model: nn.Module) -> None:
        if name != "teacher":
            super().use_stage(name, model)
        self.set_teacher(model)

    @property
    def loss_label(self) -> str:
        return "bsl + kd" if self.options.alpha > 0 else "bsl"

    def missing_stages(self) -> list[str]:
        return ["teacher"] if self.options.alpha > 0 and self.teacher is None else []

    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(x.device, self.amp_dtype):
            return widen(self.teacher(x))  # float32 at least; a float64 teacher's logits kept

    # --------------------------------------------------------------------------------- loss
    def run_length_terms(self) -> list[str]:
        if self.options.ramp == "linear" and self.options.alpha > 0 and self.options.igdm_max > 0:
            return ["self_distill's IGDM weight ramps over train.epochs (ramp=none holds it constant)"]
        return []

    def igdm_weight(self) -> float:
        """lambda_e: linear ramp to igdm_max (or igdm_max throughout with ramp=none)."""
        if self.options.ramp == "none":
            return float(self.options.igdm_max)
        return linear_ramp(self.epoch, max(self.total_epochs, 1), self.options.igdm_max)

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.options
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # (B, C) = s(x + d)
        loss_bsl = self.balanced_softmax(logits_adv, y)
        out: dict[str, Any] = {"loss_bsl": loss_bsl.detach(), "logits_adv": logits_adv.detach()}
        loss = loss_bsl
        if o.alpha > 0:
            if self.teacher is None:
                raise ConfigError("self_distill has no teacher: train with ltrobust.experiments.train (it runs the "
                                  "teacher stage), give method.teacher=PATH, or call set_teacher(model).")
            t_adv = self._teacher_logits(x_adv)  # (B, C) = t(x + d)
            kd = kd_kl(logits_adv, t_adv)
            distill = kd
            out["kd"] = kd.detach()
            lam = self.igdm_weight()
            if lam > 0:
                x_minus = x - (x_adv - x)  # x - d (not clipped to [0, 1], as the IGDM code)
                s_minus = forward_train(model, x_minus, self.amp_dtype)
                igdm = igdm_loss(logits_adv, s_minus, t_adv, self._teacher_logits(x_minus))
                distill = distill + lam * igdm
                out["igdm"] = igdm.detach()
            loss = loss + o.alpha * distill
        out["loss"] = loss
        return out
