"""TAET ("Two-Stage Adversarial Equalization Training on Long-Tailed Distributions", CVPR 2025).

Wang et al. (CVPR 2025, arXiv:2503.01924), Sec. 4. Two stages:

1. Initial stabilisation (Sec. 4.2, Eq. 9; Sec. 6.3): the first ``stage1_epochs`` epochs (40 of 100) train
   on clean images with plain CE; no AEs are crafted (``adversarial`` is False, ``train_attack`` returns x).
2. Adversarial equalisation (Sec. 4.1, Eq. 4-8): PGD-10 AEs on CE (the AT-BSL attack, Eq. 3) and the
   Hierarchical Equalization Loss on them::

       L_HEL = alpha * L_BCL + beta * L_HDL + gamma * L_RCEL          (Eq. 5; 0.1 each, Table 4)

   from the class-wise mean per-sample losses ``L_c`` (:func:`ltrobust.losses.harl_loss`, Eq. 6-8). The
   per-sample loss is CE (Eq. 9's form; ``per_sample_loss=bsl`` uses the balanced softmax instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..losses import balanced_softmax_loss, cross_entropy, harl_loss
from ..registry import METHODS
from .at_bsl import require_outer_loss_mode
from .base import Method, forward_train

#: stage 1 covers this fraction of training when stage1_epochs is not set (Wang et al., CVPR 2025: 40 of 100 epochs)
STAGE1_FRACTION = 0.4


@dataclass(frozen=True)
class TAETOptions:
    stage1_epochs: int = -1  #: clean-CE epochs before HARL; -1: round(0.4 * epochs) (40 of 100)
    alpha: float = 0.1  #: weight of BCL (Eq. 5)
    beta: float = 0.1  #: weight of HDL
    gamma: float = 0.1  #: weight of RCEL
    per_sample_loss: str = "ce"  #: ce | bsl (balanced softmax CE(z + tau log pi, y))
    tau: float = 1.0  #: balanced-softmax tau when per_sample_loss=bsl
    absent_as_zero: bool = False  #: the authors' HARL.py: classes absent from the batch count as L_c = 0
    #: the authors' training loop: one more train-mode forward of the clean batch at the start of every step
    #: (its output unused), which moves the BatchNorm running statistics toward the clean batch's before the
    #: eval-mode attack (stage 2) and before the CE forward (stage 1); no effect on the gradients
    clean_forward: bool = False

    def __post_init__(self) -> None:
        if self.per_sample_loss not in ("ce", "bsl"):
            raise ConfigError(f"per_sample_loss={self.per_sample_loss!r}: use ce or bsl.")
        if self.stage1_epochs < -1:
            raise ConfigError(f"stage1_epochs={self.stage1_epochs}: use -1 (40% of the epochs) or a count >= 0.")


@METHODS.register("taet")
class TAET(Method):
    """TAET: clean CE for ``stage1_epochs``, then HARL (Eq. 5-8) on PGD-10 AEs.

    ``adversarial`` is an instance attribute set in :meth:`on_epoch_start`, so the trainer crafts AEs only
    in stage 2. ``loss=`` must stay ``ce`` (the per-sample loss is the option ``per_sample_loss``).

    Example::

        cfg = resolve_config(["preset=taet-cifar10lt-ir10-resnet18", "data_dir=.data/cifar10"])
    """

    name = "taet"
    Options = TAETOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_outer_loss_mode(self.attack_cfg, self.name, "PGD on CE")
        loss_name = getattr(self.loss, "name", "ce")
        if loss_name != "ce":
            raise ConfigError(f"method 'taet' combines per-sample losses with HARL; loss={loss_name!r} would be "
                              f"ignored: drop loss= and set per_sample_loss=ce or bsl.")
        s1 = self.options.stage1_epochs
        self.stage1_epochs = int(round(STAGE1_FRACTION * self.total_epochs)) if s1 < 0 else int(s1)
        self.adversarial = self.stage1_epochs <= 0

    def run_length_terms(self) -> list[str]:
        if self.options.stage1_epochs < 0:
            return ["taet's stage 1 is a fraction of train.epochs (set stage1_epochs=N to fix its length)"]
        return []

    @property
    def loss_label(self) -> str:
        return f"harl ({self.options.per_sample_loss})"

    def in_stage1(self, epoch: int | None = None) -> bool:
        return (self.epoch if epoch is None else epoch) < self.stage1_epochs

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.adversarial = not self.in_stage1(epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.adversarial = not self.in_stage1()

    def clean_pass(self, model: nn.Module, x: torch.Tensor) -> None:
        """With ``clean_forward``: a train-mode forward of the clean batch whose output is dropped (the authors'
        loop), so only the BatchNorm running statistics move; without it, nothing."""
        if not self.options.clean_forward:
            return
        was = model.training
        model.train()
        with torch.no_grad():
            forward_train(model, x, self.amp_dtype)
        model.train(was)

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.in_stage1():
            return x  # stage 1 trains on clean images only
        self.clean_pass(model, x)
        return super().train_attack(model, x, y)

    def attack_objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        return "ce", {}

    def per_sample(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """l_i (B,): CE, or balanced softmax with ``per_sample_loss=bsl``."""
        if self.options.per_sample_loss == "bsl":
            return balanced_softmax_loss(logits, y, self.class_counts, tau=self.options.tau, reduction="none")
        return cross_entropy(logits, y, reduction="none")

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.in_stage1():
            self.clean_pass(model, x)
            logits = forward_train(model, x, self.amp_dtype)  # (B, C), clean images
            loss = cross_entropy(logits, y)
            return {"loss": loss, "loss_nat": loss.detach(), "logits_adv": None}
        o = self.options
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # (B, C)
        total, parts = harl_loss(self.per_sample(logits_adv, y), y, self.num_classes, alpha=o.alpha, beta=o.beta,
                                 gamma=o.gamma, absent_as_zero=o.absent_as_zero)
        out: dict[str, Any] = {k: v.detach() for k, v in parts.items()}
        out.update({"loss": total, "logits_adv": logits_adv.detach()})
        return out
