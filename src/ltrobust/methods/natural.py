"""Natural (standard) training: the outer loss on clean images, no adversarial examples."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import METHODS
from .base import Method, forward_train


@METHODS.register("natural")
class Natural(Method):
    """Standard training on clean images with the chosen (long-tailed) loss."""

    name = "natural"
    adversarial = False

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = forward_train(model, x, self.amp_dtype)
        loss = self.outer_loss(logits, y)
        return {"loss": loss, "loss_nat": loss.detach(), "logits_adv": logits.detach()}
