"""Attack objectives: per-sample losses (B,) that an attack *maximises*.

Each is ``objective(logits (B, C), y (B,), **options) -> (B,)`` computed in float32 (float64 logits stay
float64), so it is the same under bf16 autocast. The PGD loop, every training method's inner maximisation
and the evaluation suite pick one by name from :data:`OBJECTIVES`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..device import widen
from ..errors import ConfigError

Objective = Callable[..., torch.Tensor]


def _as_tensor(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=widen(like).dtype, device=like.device)


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{i != y} z_i, shape (B,)."""
    mask = F.one_hot(y, logits.shape[1]).bool()
    return logits.masked_fill(mask, float("-inf")).amax(dim=1)


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{i != y} z_i`` (B,): positive iff the point is classified as ``y`` (C&W's f_6 margin)."""
    z = widen(logits)
    return z.gather(1, y[:, None]).squeeze(1) - _other_max(z, y)


def ce(logits: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Cross-entropy. ``scale`` multiplies the logits first (the adaptive x10 attack, REAT Sec. 5.2)."""
    return F.cross_entropy(scale * widen(logits), y, reduction="none")


def cw(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """CW margin ``-relu(z_y - max_{i != y} z_i + kappa)`` (the CW_inf of the TRADES / RoBal code).

    It equals ``min(max_{i != y} z_i - z_y, kappa) - kappa``: the margin clamped at kappa.
    """
    return -F.relu(logit_margin(logits, y) + kappa)


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020, Eq. 6), untargeted."""
    z = widen(logits)
    z_sorted = z.sort(dim=1).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    return -(z_y - _other_max(z, y)) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def kl(logits: torch.Tensor, y: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(p(target) || p(x')) per sample: TRADES' inner maximisation (``target_logits`` = clean logits)."""
    log_p = F.log_softmax(widen(logits), dim=1)
    p_t = F.softmax(widen(target_logits), dim=1)
    return F.kl_div(log_p, p_t, reduction="none").sum(dim=1)


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy ``w_y * CE`` (REAT's re-balancing loss, Li et al., arXiv 2023, Eq. 1)."""
    w = _as_tensor(weights, logits)
    return w[y] * F.cross_entropy(widen(logits), y, reduction="none")


def balanced_ce(logits: torch.Tensor, y: torch.Tensor, class_counts: Sequence[float] | torch.Tensor,
                tau: float = 1.0) -> torch.Tensor:
    """Balanced-softmax cross-entropy ``CE(z + tau * log pi, y)``."""
    counts = _as_tensor(class_counts, logits)
    log_prior = torch.log(counts / counts.sum())
    return F.cross_entropy(widen(logits) + tau * log_prior, y, reduction="none")


OBJECTIVES: dict[str, Objective] = {
    "ce": ce,
    "cw": cw,
    "dlr": dlr,
    "kl": kl,
    "weighted_ce": weighted_ce,
    "balanced_ce": balanced_ce,
}


def get_objective(name: str | Objective) -> Objective:
    if callable(name):
        return name
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"unknown attack objective {name!r}; use one of {', '.join(OBJECTIVES)}.") from None
