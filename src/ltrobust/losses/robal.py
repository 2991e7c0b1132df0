"""RoBal (Wu et al., CVPR 2021, and its supplementary material, arXiv:2104.02703): loss pieces on a cosine head.

Inputs are the *unscaled* cosines ``cos (B, C) = <f/||f||, W_c/(||W_c|| + gamma)>`` that
``CosineHead.cosine(features)`` returns. The training objective (Wu et al., CVPR 2021, Eq. 12) is::

    L = L_1(x', y) + alpha * KL(p(cos(x)) || p(cos(x')))

with ``L_1`` the margin-and-bias CE of Eq. 9-10 (:func:`robal_loss`) and the KL between the scale-1
cosine outputs (:func:`robal_kl`); x' comes from 5-step PGD on plain CE of the scale-1 cosines.
Inference uses ``s * cos - tau_p * log pi`` (Eq. 11, :func:`robal_inference_logits`).
The formulas match the authors' ``MultiMarginLoss`` and ``add_reg_train(reg_opt='trades')``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..device import widen
from .at import kl_div_logits
from .longtail import _check_reduction, _reduce, as_counts, log_prior


def robal_margins(class_counts: Sequence[float] | torch.Tensor, m0: float = 0.1, tau_m: float = 0.0,
                  s: float = 10.0) -> torch.Tensor:
    """Per-class cosine margins (Wu et al., CVPR 2021, Eq. 8): ``m_c = m0 + (tau_m / s) * log(n_c / n_min)``.

    The class-aware term is 0 for the rarest class and grows with the class size (head classes get the
    larger margin, compensating the negative pair margin the bias gives them, Eq. 10).

    Rounded as the authors' code rounds it (their ``MultiMarginLoss``, ``tau_m * torch.log(n / n_min).float()``):
    ``log(n_c / n_min)`` in float64, rounded to float32, then multiplied by tau_m, divided by s and added to m0 in
    float32 (the values of other orders differ by one float32 ulp at most).

    Returns:
        (C,) float32 tensor on the CPU.
    """
    n = as_counts(class_counts, dtype=torch.float64)
    return tau_m * torch.log(n / n.min()).to(torch.float32) / s + m0


def robal_loss(cos_adv: torch.Tensor, targets: torch.Tensor, class_counts: Sequence[float] | torch.Tensor,
               s: float = 10.0, m0: float = 0.1, tau_b: float = 1.2, tau_m: float = 0.0,
               reduction: str = "mean") -> torch.Tensor:
    """RoBal's L_1 (Wu et al., CVPR 2021, Eq. 9-10): ``CE(s * (cos - m_y * onehot(y)) + tau_b * log pi, y)``.

    Eq. 9 writes the bias as ``b_i = tau_b * log n_i``; ``tau_b * log pi_i`` differs by a constant
    shared by all classes, so the loss is identical (the authors' code uses ``log pi``). Expanded, the
    margin between the true class y and a class i is Eq. 10:
    ``m_yi = (tau_b / s) log(n_i / n_y) + (tau_m / s) log(n_y / n_min) + m0``.
    Defaults are the CIFAR-10-LT RoBal-N setting (m0 0.1, tau_b 1.2, tau_m 0; Wu et al., CVPR 2021, supplement A.1).
    m0 = tau_b = tau_m = 0 gives ``CE(s * cos, y)``.

    Args:
        cos_adv: unscaled cosines of the adversarial images (B, C).
        targets: (B,) int64. class_counts: (C,) training images per class.
        s: scale (temperature) of the cosines (10).
        m0: uniform margin. tau_b: prior-bias strength. tau_m: class-aware margin strength.
        reduction: "mean" | "none" | "sum".

    Example::

        cos = model.head.cosine(model.features(x_adv))        # (B, C)
        loss = robal_loss(cos, y, counts, s=10, m0=0.1, tau_b=1.2, tau_m=0.0)
    """
    _check_reduction(reduction)
    cos = widen(cos_adv)  # (B, C), float32 at least (float64 stays float64)
    m = robal_margins(class_counts, m0, tau_m, s).to(cos.device)[targets]  # (B,)
    z = s * (cos - F.one_hot(targets, cos.shape[1]).to(cos.dtype) * m[:, None])
    if tau_b:
        z = z + tau_b * log_prior(class_counts, cos.device, dtype=cos.dtype)
    return _reduce(F.cross_entropy(z, targets, reduction="none"), reduction)


def robal_kl(cos_nat: torch.Tensor, cos_adv: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """RoBal's regulariser (Wu et al., CVPR 2021, Eq. 12): ``KL(softmax(cos(x)) || softmax(cos(x')))`` on scale-1
    cosines.

    The TRADES direction and reduction, as the authors' ``add_reg_train(reg_opt='trades')`` with a
    scale-1 classifier: summed over classes, averaged over the batch ("mean"). Eq. 12 writes the two
    arguments in the other order; the code (and SPEC) put the clean distribution first. The code's
    ``log(p' + 1e-12)`` is replaced by ``log_softmax`` (equal to within 1e-12 relative).

    Args:
        cos_nat: unscaled cosines of the clean images (B, C). cos_adv: of the adversarial images (B, C).
        reduction: "mean" (sum over classes / B) | "none" (B,) | "sum".
    """
    return _reduce(kl_div_logits(cos_nat, cos_adv), reduction)


def robal_inference_logits(cos: torch.Tensor, class_counts: Sequence[float] | torch.Tensor, s: float = 10.0,
                           tau_p: float = 0.1) -> torch.Tensor:
    """Deployed RoBal logits (Wu et al., CVPR 2021, Eq. 11): ``s * cos - tau_p * log pi``, (B, C) -> (B, C) float32
    (float64 for float64 cosines).

    Attacks at evaluation must target these logits (the deployed model). Wu et al., CVPR 2021, supplement A.1: tau_p
    0.1 (C10 N), 1.5 / 1.7 (C100 N / R).
    """
    cos = widen(cos)
    # log pi in float64, rounded to float32, then times tau_p in float32: the authors' PostProc classifier holds
    # ``tau_p * torch.log(prior).float()`` (float64 cosines stay float64)
    prior = tau_p * log_prior(class_counts, cos.device, dtype=torch.float64).to(torch.float32)
    return s * cos - prior.to(cos.dtype)
