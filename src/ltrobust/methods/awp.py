"""Adversarial weight perturbation (Wu et al., NeurIPS 2020) as a wrapper over pgd_at or trades.

Before each step a proxy copy of the model takes one ascent step on the base method's loss; the
layer-wise normalised weight difference, times gamma, is added to the model's weights for the forward
and backward pass, and removed after the optimiser step (:meth:`AWP.after_step`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import METHODS
from .base import WrappedMethod

_EPS = 1e-20


@dataclass(frozen=True)
class AWPOptions:
    base: str = "pgd_at"  #: pgd_at | trades
    gamma: float = -1.0  #: weight perturbation size; -1: 0.01 for pgd_at, 0.005 for trades
    proxy_lr: float = 0.01
    warmup_epochs: int = 0  #: epochs before AWP switches on
    beta: float = 6.0  #: TRADES beta when base=trades

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and (self.gamma >= 0 or self.gamma == -1)):
            raise ConfigError(f"awp gamma={self.gamma}: use a weight perturbation size >= 0 (e.g. gamma=0.01), "
                              "or -1 for the paper's default.")
        if not (math.isfinite(self.proxy_lr) and self.proxy_lr > 0):
            raise ConfigError(f"awp proxy_lr={self.proxy_lr} must be > 0, e.g. proxy_lr=0.01.")
        if self.warmup_epochs < 0:
            raise ConfigError(f"awp warmup_epochs={self.warmup_epochs} is negative: use 0 or more.")
        if self.base == "pgd_at" and self.beta != AWPOptions.beta:
            raise ConfigError(f"awp beta={self.beta} is TRADES' weight and base=pgd_at has none: drop beta=, or "
                              "use base=trades.")


def _weight_diff(model: nn.Module, proxy: nn.Module) -> dict[str, torch.Tensor]:
    """Layer-wise ``(w_proxy - w) / ||w_proxy - w|| * ||w||`` for weights with more than one dim."""
    diff = {}
    model_state, proxy_state = model.state_dict(), proxy.state_dict()
    for name, w in model_state.items():
        if w.dim() <= 1 or "weight" not in name:
            continue
        d = proxy_state[name] - w
        diff[name] = w.norm() / (d.norm() + _EPS) * d
    return diff


def _add_into_weights(model: nn.Module, diff: dict[str, torch.Tensor], coeff: float) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in diff.items():
            params[name].add_(coeff * d)


@METHODS.register("awp")
class AWP(WrappedMethod):
    """AWP over ``base`` (pgd_at or trades); with gamma 0 it leaves the base method's parameters."""

    name = "awp"
    Options = AWPOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gamma = self.options.gamma if self.options.gamma >= 0 else (0.01 if self.options.base == "pgd_at" else 0.005)
        self._proxy: nn.Module | None = None
        self._diff: dict[str, torch.Tensor] | None = None

    @classmethod
    def base_spec(cls, options: AWPOptions) -> tuple[str, Any]:
        if options.base not in ("pgd_at", "trades"):
            raise ConfigError(f"awp base={options.base!r}: use pgd_at or trades.")
        if options.base == "trades":
            return "trades", METHODS.get("trades").Options(beta=options.beta)
        return "pgd_at", None

    def _calc_diff(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor):
        if self._proxy is None:
            self._proxy = copy.deepcopy(model)
        proxy = self._proxy
        proxy.load_state_dict(model.state_dict())
        proxy.train()
        opt = torch.optim.SGD(proxy.parameters(), lr=self.options.proxy_lr)
        loss = -self.base.compute_loss(proxy, x, x_adv, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return _weight_diff(model, proxy)

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        self._diff = None
        if self.epoch >= self.options.warmup_epochs:
            self._diff = self._calc_diff(model, x, x_adv, y)
            _add_into_weights(model, self._diff, self.gamma)
        return self.base.compute_loss(model, x, x_adv, y)

    def after_step(self, model: nn.Module) -> None:
        if self._diff is not None:
            _add_into_weights(model, self._diff, -self.gamma)
            self._diff = None
        super().after_step(model)
