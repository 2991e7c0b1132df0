"""Self-distillation from a balanced self-teacher (Cho et al., ICLR 2025, Sec. 4.2, SPEC self_distill).

The student minimises ``BSL(z_s(x'), y) + alpha * KD`` with
``KD = kd_kl(z_s(x'), z_t(x')) + lambda(epoch) * igdm_loss(...)``: the teacher's adversarial prediction
plus Lee et al.'s (2023) indirect gradient matching (IGDM), whose weight ``lambda`` ramps up linearly
(:func:`linear_ramp`). Cho et al. (ICLR 2025) give no algorithm box in its text, so alpha, the ramp and its maximum are
options of the method (defaults alpha 1, IGDM maximum 10, SPEC).
The teacher's logits are always detached here: distillation never trains the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..device import widen
from ..errors import ConfigError


def _kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` summed over classes, mean over the batch."""
    log_s = F.log_softmax(widen(student_logits), dim=1)  # float32 at least; float64 kept
    p_t = F.softmax(widen(teacher_logits.detach()), dim=1)
    return F.kl_div(log_s, p_t, reduction="batchmean")


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Knowledge-distillation KL (Hinton et al. 2015): ``T^2 * KL(p_t^T || p_s^T)``, batchmean.

    ``p^T = softmax(z / T)``; the ``T^2`` factor keeps the gradient scale independent of T (Hinton's,
    ARD's and RSLAD's convention) and is 1 at the default T = 1, where this is the ``KL(p_t(x') || p_s(x'))``
    of SPEC self_distill (Cho et al., ICLR 2025, Sec. 4.2: adversarial distillation from the balanced self-teacher).

    Args:
        student_logits: (B, C). teacher_logits: (B, C), detached here.
        T: temperature (> 0).

    Returns:
        Scalar: sum over classes, mean over the batch.
    """
    if T <= 0:
        raise ConfigError(f"T={T} must be > 0.")
    return (T * T) * _kl_batchmean(widen(student_logits) / T, widen(teacher_logits) / T)


def igdm_loss(s_plus: torch.Tensor, s_minus: torch.Tensor, t_plus: torch.Tensor,
              t_minus: torch.Tensor) -> torch.Tensor:
    """Indirect gradient matching (Lee, Cho & Kim 2023, IGDM; used by Cho et al., ICLR 2025, Sec. 4.2).

    ``KL(softmax(t(x + d) - t(x - d)) || softmax(s(x + d) - s(x - d)))``, batchmean, ``d = x' - x``:
    the logit difference ``z(x + d) - z(x - d) ≈ 2 J d`` carries the input gradient along d, so matching
    its distribution matches the student's gradient to the teacher's without double back-propagation.
    As the IGDM code: ``KLDivLoss(reduction="batchmean")(log_softmax(s+ - s-), softmax(t+ - t-))``.

    Args:
        s_plus, s_minus: student logits on x + d and x - d (B, C).
        t_plus, t_minus: teacher logits on x + d and x - d (B, C), detached here.

    Returns:
        Scalar.
    """
    return _kl_batchmean(widen(s_plus) - widen(s_minus), widen(t_plus) - widen(t_minus))


def linear_ramp(epoch: int, total_epochs: int, maximum: float) -> float:
    """Weight rising linearly to ``maximum``: ``maximum * min(1, (epoch + 1) / total_epochs)``.

    Epochs count from 0, so the first epoch gets ``maximum / total_epochs`` and the last ``maximum``:
    the ``alpha * epoch / epochs`` schedule of the IGDM code, whose epochs count from 1.
    """
    if total_epochs <= 0:
        raise ConfigError(f"total_epochs={total_epochs} must be > 0.")
    return float(maximum) * min(1.0, max(0.0, (epoch + 1) / total_epochs))
