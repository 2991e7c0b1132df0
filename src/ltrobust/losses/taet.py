"""TAET's Hierarchical Equalization Loss (HARL; Wang et al., CVPR 2025, Sec. 4.1, Eq. 5-8).

Stage 2 of TAET minimises, on PGD-10 AEs, a combination of class-wise mean losses instead of the
sample mean, so every class present in the batch weighs the same whatever its size.
"""

from __future__ import annotations

import torch

from ..device import widen
from ..errors import ConfigError


def harl_loss(per_sample_loss: torch.Tensor, targets: torch.Tensor, num_classes: int, alpha: float = 0.1,
              beta: float = 0.1, gamma: float = 0.1,
              absent_as_zero: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HARL (Wang et al., CVPR 2025, Eq. 5): ``L = alpha * L_BCL + beta * L_HDL + gamma * L_RCEL`` from per-sample
    losses.

    With ``L_c`` the mean of ``l_i`` over the batch samples of class c and P the classes present in the
    batch (|P| = S)::

        L_BCL  = (1/S) sum_{c in P} L_c                          (Eq. 6, balanced cross-class loss)
        L_HDL  = (1/S) sum_{c in P} (L_c - L_BCL)^2              (Eq. 7, hierarchical deviation loss)
        L_RCEL = sum_{c in P} (L_c / sum_{k in P} L_k)^2         (Eq. 8, rare-class emphasis loss)

    The paper's sums run over "the classes" with S "the total number of classes"; a class without a
    sample in the batch has no loss, so by default only present classes count (SPEC taet).
    ``absent_as_zero=True`` is the authors' ``HARL.py``: every class counts, an absent one as
    ``L_c = 0`` (S = num_classes), which shrinks BCL and inflates HDL on batches missing tail classes.

    Args:
        per_sample_loss: (B,) per-sample loss on the AEs (CE by default; balanced softmax as an option).
        targets: (B,) int64 labels.
        num_classes: C.
        alpha, beta, gamma: weights of BCL, HDL, RCEL (Wang et al., CVPR 2025: 0.1 each).
        absent_as_zero: average absent classes in as zeros (the authors' code).

    Returns:
        ``(total, {"bcl": L_BCL, "hdl": L_HDL, "rcel": L_RCEL})``: the weighted total and the three
        unweighted parts (scalars). beta = gamma = 0 with one class present gives ``alpha * mean(l)``.

    Example::

        l = F.cross_entropy(model(x_adv), y, reduction="none")
        loss, parts = harl_loss(l, y, num_classes=10)
    """
    if per_sample_loss.ndim != 1 or per_sample_loss.shape != targets.shape:
        raise ConfigError(f"harl_loss needs per-sample losses (B,) matching targets (B,), got "
                          f"{tuple(per_sample_loss.shape)} and {tuple(targets.shape)}: use reduction='none'.")
    loss = widen(per_sample_loss)  # float32 at least; float64 kept
    sums = loss.new_zeros(num_classes).index_add(0, targets, loss)  # (C,)
    counts = torch.bincount(targets, minlength=num_classes).to(loss.dtype)  # (C,)
    class_loss = sums / counts.clamp_min(1.0)  # (C,) L_c, 0 for absent classes
    present = torch.ones_like(counts) if absent_as_zero else (counts > 0).to(loss.dtype)  # (C,)
    n_present = present.sum().clamp_min(1.0)

    bcl = (class_loss * present).sum() / n_present
    hdl = (((class_loss - bcl) ** 2) * present).sum() / n_present
    share = class_loss / (class_loss * present).sum().clamp_min(1e-12)  # (C,) L_c / sum_k L_k
    rcel = ((share ** 2) * present).sum()
    total = alpha * bcl + beta * hdl + gamma * rcel
    return total, {"bcl": bcl, "hdl": hdl, "rcel": rcel}
