"""TRADES (Zhang et al., ICML 2019): CE on clean images + beta * KL(p(x) || p(x'))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..losses.at import trades_loss_terms
from ..registry import METHODS
from .at_bsl import require_outer_loss_mode
from .base import Method, clean_logits_eval, forward_train


@dataclass(frozen=True)
class TradesOptions:
    beta: float = 6.0  #: weight of the robustness (KL) term


@METHODS.register("trades")
class Trades(Method):
    """Inner: maximise KL(p(x) || p(x')) from the clean prediction; outer: L(z(x), y) + beta * KL.

    The long-tailed loss replaces the natural CE term (``loss=bsl``). The attack always maximises the KL
    term, so ``attack.loss_mode`` inner / both (a long-tailed loss inside the attack) would be ignored and
    is refused.
    """

    name = "trades"
    Options = TradesOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_outer_loss_mode(self.attack_cfg, self.name, "PGD on KL(p(x) || p(x'))")

    def attack_objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        # The attack needs the model's clean logits; train_attack fills them in.
        return "kl", {}

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = clean_logits_eval(model, x, self.amp_dtype)  # (B, C)
        return self.attack_pgd(model, x, y, "kl", {"target_logits": target})

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_nat = forward_train(model, x, self.amp_dtype)
        logits_adv = forward_train(model, x_adv, self.amp_dtype)
        loss_nat, kl = trades_loss_terms(logits_nat, logits_adv, y, base_loss=self.outer_loss)
        loss = loss_nat + self.options.beta * kl
        return {"loss": loss, "loss_nat": loss_nat.detach(), "kl": kl.detach(), "logits_adv": logits_adv.detach()}
