"""AT-BSL (Yue et al., "Revisiting Adversarial Training under Long-Tailed Distributions", CVPR 2024).

PGD adversarial training whose outer loss is the balanced softmax (logit-adjusted CE): the training AEs
come from 10-step PGD on plain CE, and the model minimises ``CE(z(x') + tau * log pi, y)``. Cho et al.
(ICLR 2025, Sec. 2, Table 1) and Wang et al. (CVPR 2025, Sec. 3.1, Eq. 2-3) describe it too, and SPEC 3
fixes its schedule (100 epochs, lr 0.1 decayed x0.1 at 75 and 90, weight decay 5e-4, batch 128).

It is ``method=pgd_at loss=bsl`` under its own name, with the two pieces fixed by the paper: the attack
objective is always CE and the outer loss always the balanced softmax of ``tau`` (an option of the
method, not of ``loss=``). ``loss=`` may stay ``ce`` (ignored) or be ``bsl`` with the same tau; any other
loss, or ``attack.loss_mode`` other than ``outer``, raises :class:`~ltrobust.errors.ConfigError`
rather than being ignored silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import AttackConfig
from ..errors import ConfigError
from ..losses import BalancedSoftmaxLoss
from ..registry import METHODS
from .base import Method, forward_train


def require_outer_loss_mode(attack: AttackConfig, method: str, objective: str) -> None:
    """Methods whose attack objective is fixed by their paper reject ``attack.loss_mode`` inner / both."""
    if attack.loss_mode != "outer":
        raise ConfigError(f"method {method!r} crafts its training AEs with {objective} (its paper's choice), so "
                          f"attack.loss_mode={attack.loss_mode!r} does not apply: leave attack.loss_mode=outer, "
                          f"or use method=pgd_at to put a long-tailed loss inside the attack.")
    if attack.loss:
        raise ConfigError(f"method {method!r} crafts its training AEs with {objective} (its paper's choice), so "
                          f"attack.loss={attack.loss!r} does not apply: drop attack.loss, or use method=pgd_at.")


@dataclass(frozen=True)
class ATBSLOptions:
    tau: float = 1.0  #: balanced-softmax strength of the outer loss CE(z + tau log pi, y)


@METHODS.register("at_bsl")
class ATBSL(Method):
    """AT-BSL: PGD-10 AEs on CE, outer loss ``BSL(z(x'), y) = CE(z(x') + tau * log pi, y)``.

    Options:
        tau (float): prior-bias strength, 1.0 (balanced softmax).

    Example::

        cfg = resolve_config(["preset=at-bsl-cifar10lt-resnet18", "data_dir=.data/cifar10"])
        Trainer(cfg).fit()
    """

    name = "at_bsl"
    Options = ATBSLOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_outer_loss_mode(self.attack_cfg, self.name, "PGD on CE")
        self._check_loss_name()
        self.bsl = BalancedSoftmaxLoss(self.class_counts, tau=self.options.tau)

    def _check_loss_name(self) -> None:
        loss_name = getattr(self.loss, "name", "ce")
        if loss_name not in ("ce", "bsl"):
            raise ConfigError(f"method {self.name!r} always trains with the balanced softmax (its tau is the "
                              f"method option tau); loss={loss_name!r} would be ignored: drop loss= (or use "
                              f"loss=bsl), or use method=pgd_at loss={loss_name} for another outer loss.")
        if loss_name == "bsl" and abs(float(self.loss.options.tau) - float(self.options.tau)) > 1e-12:
            raise ConfigError(f"method {self.name!r}: loss=bsl has tau={self.loss.options.tau} but the method "
                              f"option tau={self.options.tau}; set the method's tau (e.g. method.tau=0.5) and "
                              f"leave loss.tau at its default.")

    @property
    def loss_label(self) -> str:
        return "bsl"

    def attack_objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        return "ce", {}

    def balanced_softmax(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``CE(z + tau * log pi, y)``, mean over the batch (float32)."""
        return self.bsl(logits, y)

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # (B, C)
        loss = self.balanced_softmax(logits_adv, y)
        return {"loss": loss, "loss_rob": loss.detach(), "logits_adv": logits_adv.detach()}
