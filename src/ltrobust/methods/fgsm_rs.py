"""FGSM with a random start ("fast is better than free", Wong et al., ICLR 2020).

As the authors' code (``locuslab/fast_adversarial``, ``CIFAR10/train_fgsm.py`` and ``ImageNet/main_fast.py``):
a uniform start in the eps-ball (clipped to the image box), one signed-gradient step of ``1.25 eps``
(``--alpha 10`` for eps 8), projection back onto the ball, and the attack's forward pass made with the model in
train mode: BatchNorm normalises with the batch statistics and its running statistics are updated by the attack
(``attack.bn_mode=train``, this method's default; ``attack.bn_mode=eval`` attacks with the running statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attacks import pgd
from ..errors import ConfigError
from ..registry import METHODS
from .pgd_at import PGDAT


@dataclass(frozen=True)
class FGSMRSOptions:
    step_factor: float = 1.25  #: step = step_factor * eps


@METHODS.register("fgsm_rs")
class FGSMRS(PGDAT):
    """One signed-gradient step of 1.25 eps from a uniform random start, then the outer loss."""

    name = "fgsm_rs"
    Options = FGSMRSOptions
    attack_bn_mode = "train"  #: Wong et al.'s code attacks after ``model.train()``
    start: str = "uniform"  #: where the single step starts (``fgsm_at``: the clean image)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        given = self.attack_cfg.random_start
        if given != self.start and given in self.refused_starts():
            raise ConfigError(self.start_message(given))

    def refused_starts(self) -> tuple[str, ...]:
        """``attack.random_start`` values this method would ignore, so refuses."""
        return ("none", "normal")

    def start_message(self, given: str) -> str:
        return (f"method 'fgsm_rs' always starts from a uniform random point in the eps-ball (the RS of its name, "
                f"Wong et al.), so attack.random_start={given} would be ignored: drop it, or use method=fgsm_at "
                f"for FGSM from the clean image.")

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        objective, kwargs = self.attack_objective(x, y)
        return pgd(model, x, y, self.threat, steps=1, step_size=self.options.step_factor * self.threat.eps,
                   objective=objective, random_start=self.start, objective_kwargs=kwargs, bn_mode=self.bn_mode,
                   amp_dtype=self.amp_dtype)
