"""MART (Wang et al., ICLR 2020): boosted CE on AEs + beta * KL weighted by (1 - p_y(x))."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses.at import mart_loss_terms
from ..registry import METHODS
from .base import Method, forward_train


@dataclass(frozen=True)
class MartOptions:
    beta: float = 6.0  #: weight of the misclassification-aware KL term


@METHODS.register("mart")
class Mart(Method):
    """PGD-10 AEs on CE; outer loss as in the MART authors' code (a long-tailed loss replaces its CE part)."""

    name = "mart"
    Options = MartOptions

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_nat = forward_train(model, x, self.amp_dtype)
        logits_adv = forward_train(model, x_adv, self.amp_dtype)
        bce, kl = mart_loss_terms(logits_nat, logits_adv, y, base_loss=self.outer_loss)
        loss = bce + self.options.beta * kl
        return {"loss": loss, "loss_bce": bce.detach(), "kl": kl.detach(), "logits_adv": logits_adv.detach()}
