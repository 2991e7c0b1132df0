"""PGD adversarial training (Madry et al., ICLR 2018), with any long-tailed loss as outer loss.

``method=pgd_at loss=bsl`` is AT-BSL's recipe; ``attack.loss_mode=both`` also makes the long-tailed
loss the attack objective (RoBal Table S6).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import METHODS
from .base import Method, forward_train


@METHODS.register("pgd_at")
class PGDAT(Method):
    """min_theta E[ max_{||delta|| <= eps} L(f(x + delta), y) ]: PGD-10 AEs, outer loss on them."""

    name = "pgd_at"

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # (B, C)
        loss = self.outer_loss(logits_adv, y)
        return {"loss": loss, "loss_rob": loss.detach(), "logits_adv": logits_adv.detach()}
