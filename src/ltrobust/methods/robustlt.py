"""RobustLT (Zhang, Guo, Li, Shi and Liu, "Taming the Long Tail: Rebalancing Adversarial Training via Adaptive
Perturbation", CVPR 2026, arXiv:2605.13395; code zhang-lilin/RobustLT at 2d63979).

A plug-in over a base AT method (``base=pgd_at|trades|awp|at_bsl|robal|reat|taet``) that changes only the radius
and the step of the base's training attack, per class and per epoch; the base's attack objective, outer loss,
stages and deployed logits are untouched (:class:`~ltrobust.methods.base.WrappedMethod`). Evaluation stays at
the threat model's one eps.

- **Class-wise Perturbation Balancing** (CPB, :func:`cpb_budgets`): with n_c the training images of class c,
  N = sum_c n_c and n_max = max_c n_c::

      tau   = alpha / sum_c (n_c / N) sqrt(log(n_max / n_c))
      eps_c = (1 - alpha) eps + tau sqrt(log(n_max / n_c)) eps,      step_c = (eps_c / eps) step

  so the count-weighted mean of eps_c is eps and the head class gets (1 - alpha) eps.
- **Adversarial Iteration Weighting** (AIW, :func:`aiw_intensity`): every eps_c (and step_c) is multiplied by
  ``min(t / (beta T), 1)``; t counts the epochs from 0 (the code's ``(epoch - 1)`` with epochs from 1), T is the
  number of epochs, so the first epoch trains on clean images (``warmup=epoch``). ``warmup=iteration`` counts
  optimiser steps instead (the reading of third-party notes on the paper). beta = 0: no warm-up.
- The random start is uniform in the global eps ball (``start=global``, the code's), each sample projected onto
  its own eps_c from the first step on; ``start=class`` starts inside eps_c.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import METHODS
from .base import ClassBudget, WrappedMethod

log = logging.getLogger(__name__)

#: base methods RobustLT wraps (the release's six and TRADES): those whose AEs come from ``Method.attack_pgd``
BASES = ("pgd_at", "trades", "awp", "at_bsl", "robal", "reat", "taet")
#: beta of the release's CIFAR-10-LT configs: 0.8 for every base but TAET (1.0)
DEFAULT_BETA = {"taet": 1.0}
DEFAULT_BETA_OTHERS = 0.8


def cpb_budgets(class_counts: Sequence[float] | torch.Tensor, eps: float, alpha: float) -> tuple[torch.Tensor, float]:
    """Class-wise Perturbation Balancing: the radius of each class and the scale tau (float64).

    ``eps_c = (1 - alpha) eps + tau sqrt(log(n_max / n_c)) eps`` with
    ``tau = alpha / sum_c (n_c / N) sqrt(log(n_max / n_c))``, as ``core/methods/robustlt.py:15-17`` of the release.
    The count-weighted mean ``sum_c (n_c / N) eps_c`` is ``eps``; the largest class gets ``(1 - alpha) eps``;
    nothing is clipped. When every class has ``n_max`` images the sum is 0 and tau undefined (the release divides
    by zero): every class then keeps ``eps`` (tau reported as 0).

    Args:
        class_counts: training images per class (C,), each > 0.
        eps: the global radius (pixel units).
        alpha: the share of eps moved from the head to the tail classes, in [0, 1].

    Returns:
        (eps_c (C,) float64, tau).

    Example::

        eps_c, tau = cpb_budgets([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 8 / 255, 0.3)
    """
    n = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if n.numel() == 0 or bool((n <= 0).any()):
        raise ConfigError(f"RobustLT needs a positive training count for every class, got {n.tolist()}.")
    r = torch.sqrt(torch.log(n.max() / n))  # (C,) sqrt(log(n_max / n_c)), 0 for the head class
    denom = float(((n / n.sum()) * r).sum())
    if denom == 0.0:
        return torch.full_like(n, float(eps)), 0.0
    tau = alpha / denom
    return (1.0 - alpha) * eps + tau * r * eps, tau


def aiw_intensity(t: float, total: float, beta: float) -> float:
    """Adversarial Iteration Weighting: ``min(t / (beta * total), 1)``, or 1 when ``beta == 0``.

    ``t`` counts from 0: the epoch index of ltrobust's trainer (the release writes ``(epoch - 1)`` with epochs
    counted from 1, ``core/methods/robustlt.py:23``), or the optimiser step for the per-iteration reading;
    ``total`` is the number of epochs (steps). The first epoch (step) has intensity 0.
    """
    if beta <= 0:
        return 1.0
    return min(t / (beta * total), 1.0)


@dataclass(frozen=True)
class RobustLTOptions:
    """Defaults: the release's CIFAR-10-LT configs (``configs/cifar10lf/robustlt_*``): alpha 0.3, beta 0.8
    (1.0 over TAET). CIFAR-100-LT: alpha 0.4, beta 0.6; Tiny-ImageNet-LT: alpha 0.4, beta 0.2-0.8 by base
    (docs/methods.md)."""

    base: str = "pgd_at"  #: the AT method whose attack budgets RobustLT rebalances (BASES)
    base_args: Mapping[str, Any] = field(default_factory=dict)  #: the base's own options, e.g. {m0: 0.1}
    alpha: float = 0.3  #: CPB: share of eps moved from head to tail classes (0: every class at eps)
    beta: float | None = None  #: AIW: warm-up over this fraction of training (0: none); None: 0.8, 1.0 over taet
    warmup: str = "epoch"  #: epoch (the release) | iteration (warm-up per optimiser step)
    start: str = "global"  #: global (uniform start in the attack.eps ball, the release) | class (in eps_c)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ConfigError(f"robustlt base={self.base!r}: use one of {', '.join(BASES)}.")
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ConfigError(f"robustlt alpha={self.alpha} must lie in [0, 1] (0.3 on CIFAR-10-LT, 0.4 on "
                              "CIFAR-100-LT): above 1 the head class's radius (1 - alpha) eps is negative.")
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"robustlt beta={self.beta} must be >= 0 (0: no warm-up; 0.8 on CIFAR-10-LT).")
        if self.warmup not in ("epoch", "iteration"):
            raise ConfigError(f"robustlt warmup={self.warmup!r}: use epoch (the release) or iteration.")
        if self.start not in ("global", "class"):
            raise ConfigError(f"robustlt start={self.start!r}: use global (the release) or class.")
        if not isinstance(self.base_args, Mapping):
            raise ConfigError(f"robustlt base_args={self.base_args!r} must map the base's options to values, e.g. "
                              "base_args={m0: 0.1}.")
        base_options(self)  # the base's options are checked now, with the base's own messages

    @property
    def warmup_beta(self) -> float:
        """beta, with None resolved to the release's CIFAR-10-LT value for the base."""
        return DEFAULT_BETA.get(self.base, DEFAULT_BETA_OTHERS) if self.beta is None else float(self.beta)


def base_options(options: RobustLTOptions) -> Any:
    """The base method's ``Options`` built from ``base_args`` (validated like ``method.X=`` keys)."""
    from ..config import build_options

    cls = METHODS.get(options.base)
    return build_options(getattr(cls, "Options", None), dict(options.base_args), f"robustlt base {options.base!r}")


@METHODS.register("robustlt")
class RobustLT(WrappedMethod):
    """RobustLT over ``base``: class-wise radii and steps (CPB), warmed up linearly over ``beta`` of training (AIW).

    Options:
        base, base_args, alpha, beta, warmup, start (:class:`RobustLTOptions`).

    With ``alpha=0`` and ``beta=0`` every class keeps ``attack.eps`` from the first epoch and RobustLT is its
    base exactly (tested). The radii in force are ``method.class_budget`` (``eps * scale`` per class).

    Example::

        cfg = resolve_config(["method=robustlt", "method.base=at_bsl", "alpha=0.3", "beta=0.8"])
    """

    name = "robustlt"
    Options = RobustLTOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        a = self.attack_cfg
        if a.eps <= 0:
            raise ConfigError(f"robustlt rebalances the training radius attack.eps={a.eps}: use attack.eps > 0.")
        o = self.options
        eps_c, self.tau = cpb_budgets(self.class_counts, a.eps, o.alpha)
        if o.alpha > 0 and self.tau == 0.0:
            log.warning("robustlt: every class has %d training images, so CPB has nothing to balance (the release "
                        "divides by zero here): every class keeps attack.eps", int(self.class_counts.max()))
        self.eps_max = eps_c.to(torch.float32)  # (C,) the radii after the warm-up (the release: float32)
        self.beta = o.warmup_beta
        self.start_eps = a.eps if o.start == "global" else None
        #: optimiser steps per epoch (``warmup=iteration``), from the trainer's loader in :meth:`setup`
        self.steps_per_epoch: int | None = None
        self._step = 0  # optimiser steps done in this epoch (after_step)
        self._apply(aiw_intensity(0, 1, self.beta))  # the first step's radii until the trainer starts an epoch

    @classmethod
    def base_spec(cls, options: RobustLTOptions) -> tuple[str, Any]:
        return options.base, base_options(options)

    # ------------------------------------------------------------------------------------- budgets
    def intensity(self) -> float:
        """The AIW factor of the coming step: the epoch's (``warmup=epoch``), or the optimiser step's."""
        if self.options.warmup == "epoch" or self.beta <= 0:
            return aiw_intensity(self.epoch, self.total_epochs, self.beta)
        if self.steps_per_epoch is None:
            raise ConfigError("robustlt warmup=iteration needs the optimiser steps per epoch: train through the "
                              "Trainer (its setup sets them), or set `method.steps_per_epoch = N` in Python first.")
        n = self.steps_per_epoch
        return aiw_intensity(self.epoch * n + self._step, self.total_epochs * n, self.beta)

    def class_radii(self) -> torch.Tensor:
        """The radii (C,) in force: ``eps_c * intensity``."""
        b = self.class_budget
        return self.eps_max * (b.scale if b is not None else 1.0)

    def _apply(self, scale: float) -> None:
        self.set_class_budget(ClassBudget(eps=self.eps_max, scale=float(scale), start_eps=self.start_eps))

    def setup(self, context: Any) -> None:
        """The base's setup; the optimiser steps per epoch (the trainer's loader, capped by
        ``train.max_steps_per_epoch``) for ``warmup=iteration``."""
        super().setup(context)
        loader, cfg = getattr(context, "loader", None), getattr(context, "cfg", None)
        if loader is not None:
            cap = cfg.train.max_steps_per_epoch if cfg is not None else 0
            self.steps_per_epoch = min(len(loader), cap) if cap else len(loader)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._step = 0
        self._apply(self.intensity())

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.options.warmup == "iteration":
            self._apply(self.intensity())
        return self.base.train_attack(model, x, y)

    def after_step(self, model: nn.Module) -> None:
        super().after_step(model)
        self._step += 1

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.base.compute_loss(model, x, x_adv, y)
        b = self.class_budget
        out["aiw"] = torch.full((), b.scale if b is not None else 1.0, device=out["loss"].device)
        return out

    def run_length_terms(self) -> list[str]:
        terms = super().run_length_terms()
        if self.beta > 0:
            terms.append(f"robustlt's warm-up spans beta={self.beta:g} of train.epochs")
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "eps_max": self.eps_max.tolist(), "tau": self.tau}
