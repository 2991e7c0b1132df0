"""FGSM with a random start ("fast is better than free", Wong et al., ICLR 2020)."""

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
    random_start: str = "uniform"  #: the uniform start in the eps-ball (``fgsm_at``: none)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.attack_cfg.random_start == "none":
            raise ConfigError("method 'fgsm_rs' always starts from a uniform random point (the RS of its name), so "
                              "attack.random_start=false would be ignored: drop it, or use method=pgd_at "
                              "attack.steps=1 for FGSM without a random start.")

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        objective, kwargs = self.attack_objective(x, y)
        return pgd(model, x, y, self.threat, steps=1, step_size=self.options.step_factor * self.threat.eps,
                   objective=objective, random_start=self.random_start, objective_kwargs=kwargs, bn_mode=self.bn_mode,
                   amp_dtype=self.amp_dtype)
