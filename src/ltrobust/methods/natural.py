"""Natural (standard) training: the outer loss on clean images, no adversarial examples."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import METHODS
from .base import Method, forward_train


@METHODS.register("natural")
class Natural(Method):
    """Standard training on clean images with the chosen (long-tailed) loss."""

    name = "natural"
    adversarial = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.attack_cfg.loss_mode != "outer":
            raise ConfigError(f"method 'natural' crafts no adversarial examples, so attack.loss_mode="
                              f"{self.attack_cfg.loss_mode} would only replace loss={getattr(self.loss, 'name', '?')} "
                              "by CE: leave attack.loss_mode=outer.")

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = forward_train(model, x, self.amp_dtype)
        loss = self.outer_loss(logits, y)
        return {"loss": loss, "loss_nat": loss.detach(), "logits_adv": logits.detach()}
