"""GAIRAT (Zhang et al., "Geometry-aware Instance-reweighted Adversarial Training", ICLR 2021).

PGD-AT whose per-sample outer losses are re-weighted by the sample's geometry value kappa: the number of
PGD iterates (the random start and the next K - 1 points) still classified as ``y``. Samples close to the
decision boundary (small kappa) get large weights. Following the authors' ``GAIRAT.py`` / ``GAIR.py``:

- kappa counts the iterates ``x^(0), ..., x^(K-1)`` whose prediction is ``y`` (the prediction made at the
  start of each of the K steps), not only the first crossing; BatchNorm is in eval mode while attacking;
- weights (Sec. 3.3; ``h = floor(K / 2)``): ``tanh``: ``(1 + tanh(lam + 5 (h - kappa) / h)) / 2`` (the
  paper's ``(1 + tanh(lam + 5 (1 - 2 kappa / K))) / 2`` for even K); ``sigmoid``:
  ``sigmoid(lam + 5 (h - kappa) / h)``; ``discrete``: ``(K + 1 - kappa) / (K + 1)``; then normalised to
  mean 1 over the batch, ``w_i * B / sum_j w_j``;
- loss ``mean_i w_i * l_i`` with ``l_i`` the per-sample outer loss (CE, or any long-tailed loss);
- burn-in: before the (1-based) epoch ``begin_epoch`` the weights are all 1 (lam = +inf in the official
  code), i.e. plain PGD-AT; ``lam_schedule=linear`` moves lam from ``lam_max`` towards ``lam`` as
  ``lam_max - (e / E) (lam_max - lam)`` for the 1-based epoch e from ``begin_epoch`` on.

docs/methods.md ("gairat") lists the choices made where the paper and the code differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..attacks import pgd
from ..attacks.objectives import Objective, get_objective
from ..device import world_size
from ..errors import ConfigError
from ..registry import METHODS
from .base import Method, forward_train

WEIGHT_FUNCTIONS = ("tanh", "sigmoid", "discrete")


@dataclass(frozen=True)
class GAIRATOptions:
    """Defaults: the authors' CIFAR-10 settings (``--Lambda -1 --Lambda_schedule fixed --begin_epoch 60``
    of 120 epochs, ``--weight_assignment_function Tanh``)."""

    lam: float | None = None  #: lambda of tanh / sigmoid once re-weighting is on; None: -1.0
    lam_schedule: str = "fixed"  #: fixed | linear (from lam_max towards lam)
    lam_max: float | None = None  #: start of the linear schedule (required by, and only used with, linear)
    weight_fn: str = "tanh"  #: tanh | sigmoid | discrete
    begin_epoch: int = -1  #: 1-based epoch from which the weights apply; -1: half of the epochs (60 of 120)

    def __post_init__(self) -> None:
        if self.weight_fn not in WEIGHT_FUNCTIONS:
            raise ConfigError(f"gairat weight_fn={self.weight_fn!r}: use one of {', '.join(WEIGHT_FUNCTIONS)}.")
        if self.lam_schedule not in ("fixed", "linear"):
            raise ConfigError(f"gairat lam_schedule={self.lam_schedule!r}: use fixed or linear.")
        if self.lam_schedule == "linear" and (self.lam_max is None or not math.isfinite(self.lam_max)):
            raise ConfigError("gairat lam_schedule=linear needs a finite lam_max (e.g. method.lam_max=0).")
        if self.weight_fn == "discrete" and (self.lam is not None or self.lam_schedule != "fixed"):
            raise ConfigError("gairat weight_fn=discrete, (K + 1 - kappa) / (K + 1), has no lambda: drop lam / "
                              "lam_schedule, or use weight_fn=tanh or sigmoid.")
        if self.lam_schedule == "fixed" and self.lam_max is not None:
            raise ConfigError(f"gairat lam_max={self.lam_max} is only used by lam_schedule=linear: drop lam_max "
                              f"or set lam_schedule=linear.")


class CountCorrect:
    """An attack objective that also counts, per sample, the PGD iterates classified as ``y`` (kappa).

    :func:`~ltrobust.attacks.pgd` evaluates its objective once per step on the current iterate, so this
    wrapper sees exactly the iterates ``x^(0), ..., x^(K-1)`` that the GAIRAT code counts.
    """

    def __init__(self, objective: str | Objective, batch_size: int, device: torch.device) -> None:
        self.objective = get_objective(objective)
        self.kappa = torch.zeros(batch_size, device=device)  # (B,)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.kappa += (logits.detach().argmax(1) == y).float()
        return self.objective(logits, y, **kwargs)


def gair_weights(kappa: torch.Tensor, steps: int, lam: float, weight_fn: str = "tanh",
                 all_reduce: Callable[[torch.Tensor], Any] | None = None) -> torch.Tensor:
    """GAIRAT's instance weights from the geometry values ``kappa`` (B,), normalised to mean 1.

    Args:
        kappa: iterates still correctly classified, in [0, K] (B,).
        steps: K, the number of PGD steps (at least 2 for tanh and sigmoid).
        lam: lambda; +inf gives all-equal weights.
        weight_fn: tanh | sigmoid | discrete.
        all_reduce: under DDP, a sum over the processes (``torch.distributed.all_reduce``): each process
            holds a slice of the batch, and the weights are normalised over the whole batch, so that the
            averaged gradients equal a single process's on the whole batch.

    Returns:
        (B,) float32, ``w_i * B / sum_j w_j`` (B and the sum over the whole batch).
    """
    kappa = kappa.float()
    if weight_fn == "discrete":
        w = (steps + 1 - kappa) / (steps + 1)
    else:
        h = steps // 2
        t = lam + (h - kappa) * 5.0 / h
        w = (torch.tanh(t) + 1) / 2 if weight_fn == "tanh" else torch.sigmoid(t)
    total, count = w.sum(), kappa.numel()
    if all_reduce is not None:  # (sum, count) over the processes; no host copy on the hot path
        sums = torch.stack([total, torch.full_like(total, count)])
        all_reduce(sums)
        total, count = sums[0], sums[1]
    return w * count / total


@METHODS.register("gairat")
class GAIRAT(Method):
    """PGD-AT with geometry-aware instance weights; the per-sample loss is the long-tailed outer loss.

    Options:
        lam, lam_schedule, lam_max, weight_fn, begin_epoch (see :class:`GAIRATOptions`).

    Before ``begin_epoch`` it trains exactly like ``pgd_at``; with all kappa equal the weights are all 1
    and the loss is PGD-AT's (for losses without class weights, see docs/methods.md).
    """

    name = "gairat"
    Options = GAIRATOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options.weight_fn != "discrete" and self.attack_cfg.steps < 2:
            raise ConfigError(f"gairat weight_fn={self.options.weight_fn} needs at least 2 PGD steps "
                              f"(attack.steps={self.attack_cfg.steps}); use more steps or weight_fn=discrete.")
        self._kappa: torch.Tensor | None = None

    def run_length_terms(self) -> list[str]:
        o = self.options
        return ((["gairat's burn-in is half of train.epochs (set begin_epoch=N to fix it)"] if o.begin_epoch < 0 else [])
                + (["gairat's linear lambda schedule spans train.epochs"] if o.lam_schedule == "linear" else []))

    @property
    def begin_epoch(self) -> int:
        """1-based epoch from which the weights apply."""
        b = self.options.begin_epoch
        return max(self.total_epochs // 2, 1) if b < 0 else b

    def active(self) -> bool:
        """Whether this epoch re-weights (the official ``epoch + 1 >= begin_epoch``; epochs count from 0)."""
        return self.epoch + 1 >= self.begin_epoch

    def lam(self) -> float:
        """lambda of this epoch (+inf during the burn-in)."""
        if not self.active():
            return math.inf
        o = self.options
        lam = -1.0 if o.lam is None else o.lam
        if o.lam_schedule == "linear":
            return o.lam_max - (self.epoch + 1) / self.total_epochs * (o.lam_max - lam)
        return lam

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = self.attack_cfg
        objective, kwargs = self.attack_objective(x, y)
        counter = CountCorrect(objective, x.shape[0], x.device)
        x_adv = pgd(model, x, y, self.threat, steps=a.steps, step_size=a.step_size, objective=counter,
                    random_start=a.random_start, objective_kwargs=kwargs, bn_mode=self.bn_mode,
                    amp_dtype=self.amp_dtype)
        self._kappa = counter.kappa
        return x_adv

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # (B, C)
        out: dict[str, torch.Tensor] = {"logits_adv": logits_adv.detach()}
        if not self.active():
            loss = self.outer_loss(logits_adv, y)
        else:
            if self._kappa is None or self._kappa.shape[0] != y.shape[0]:
                raise RuntimeError("gairat.compute_loss needs the kappa of this batch: call train_attack first.")
            w = gair_weights(self._kappa, self.attack_cfg.steps, self.lam(), self.options.weight_fn,
                             all_reduce=dist.all_reduce if world_size() > 1 else None)
            loss = (self.outer_loss(logits_adv, y, reduction="none") * w).mean()
            out["weight_max"] = w.max().detach()
        if self._kappa is not None:
            out["kappa"] = self._kappa.mean()
        out["loss"] = loss
        out["loss_rob"] = loss.detach()
        return out
