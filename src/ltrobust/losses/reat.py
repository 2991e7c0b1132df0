"""REAT (Li, Xu and Zhang, arXiv:2307.10205, 2023): the Re-Balancing Loss (RBL) for training AEs and TAIL.

- :func:`rbl_weights` (Li et al., arXiv 2023, Eq. 1): class weights from last epoch's predicted classes of the training
  AEs; the AEs of this epoch maximise the weighted CE :func:`rbl_loss` (Eq. 2)
  (``attacks.objectives.weighted_ce`` with these weights is the same objective per sample).
- :func:`tail_loss` (Eq. 3, Algorithm 1): tail-sample-mining feature regulariser on the softmax of the
  penultimate features, added to a long-tailed loss (BSL by default): ``L = L_lt + TAIL``.
- :func:`reat_tail_classes`: the tail classes TAIL anchors on (Li et al., arXiv 2023, Sec. 4, "Preliminaries").
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..device import widen
from ..errors import ConfigError
from .longtail import _weighted_ce, as_counts

_TAIL_REDUCTIONS = ("paper", "official")


def rbl_weights(ae_pred_counts: Sequence[float] | torch.Tensor,
                class_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """RBL class weights (Li et al., arXiv 2023, Eq. 1): ``w_c = C * (1/E_c) / sum_j (1/E_j)``.

    ``E_c = (1 - beta_c^{a_c}) / (1 - beta_c)`` is the effective number of the ``a_c`` training AEs that
    the model predicted as class c in the previous epoch (first epoch: ``a_c = n_c``, Li et al., arXiv 2023, footnote
    2), with the class-wise ``beta_c = (n_c - 1) / n_c`` from the training counts ``n_c``.

    Edge cases, taken as the exact limits of the formula:

    - ``n_c = 1``: ``beta_c = 0``, so ``E_c = 1`` for any ``a_c >= 1`` (one image: one effective sample).
    - ``a_c = 0``: ``E_c = 0`` and ``1/E_c`` is infinite; as a_c -> 0 the weights tend to C shared
      equally among the classes with ``a_c = 0`` and 0 for the others (Li et al., arXiv 2023, Sec. 4.1: "when n_i -> 0,
      E -> 0 and w_i -> C"). The authors' code gets the same up to about 1e-5 by using ``1/(E + 1e-5)``.

    Args:
        ae_pred_counts: (C,) how many training AEs were predicted as each class last epoch (>= 0).
        class_counts: (C,) training images per class.

    Returns:
        (C,) float32 CPU tensor summing to C. Equal class counts and equal AE counts give all ones.

    Example::

        w = rbl_weights(stats["ae_pred_counts"], counts)
        x_adv = pgd(model, x, y, Linf(8/255), objective="weighted_ce", objective_kwargs={"weights": w})
    """
    n = as_counts(class_counts, dtype=torch.float64)  # (C,)
    a = torch.as_tensor(ae_pred_counts, dtype=torch.float64).flatten()
    if a.numel() != n.numel():
        raise ConfigError(f"ae_pred_counts has {a.numel()} entries but there are {n.numel()} classes.")
    if bool((a < 0).any()) or not bool(torch.isfinite(a).all()):
        raise ConfigError("ae_pred_counts must be finite counts >= 0 (predicted classes of last epoch's AEs).")
    beta = (n - 1.0) / n  # (C,) in [0, 1)
    eff = (1.0 - torch.pow(beta, a)) / (1.0 - beta)  # (C,) E_c; 0 exactly where a_c = 0
    zero = eff <= 0
    if bool(zero.any()):
        w = zero.to(torch.float64) / zero.sum()
    else:
        inv = 1.0 / eff
        w = inv / inv.sum()
    return (w * n.numel()).to(torch.float32)


def rbl_loss(logits: torch.Tensor, targets: torch.Tensor, weights: Sequence[float] | torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """Re-Balancing Loss (Li et al., arXiv 2023, Eq. 2): ``-w_y * log softmax(z)_y``, maximised to craft the training
    AEs.

    "mean" is the weighted mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` of the authors' code
    (``F.cross_entropy(weight=w)``); for sign-gradient PGD the normalisation does not matter.

    Args:
        logits: (B, C). targets: (B,). weights: (C,) from :func:`rbl_weights`.
        reduction: "mean" | "none" (B,) | "sum".
    """
    w = torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
    return _weighted_ce(logits.float(), targets, w, reduction)


def reat_tail_classes(class_counts: Sequence[float] | torch.Tensor, convention: str = "paper") -> list[int]:
    """The tail classes (TC) of Li et al., arXiv 2023, Sec. 4, ranked by training count (largest first, ties by index).

    - ``"paper"``: with classes sorted by decreasing count and numbered 1..C, class i is a tail class
      when ``ceil(2C/3) <= i <= C``: the last ``C - ceil(2C/3) + 1`` classes (4 of 10, 34 of 100).
    - ``"official"``: the authors' code, ``range(C // 3 * 2 + 1, C)`` (0-based): the last
      ``C - 2 * (C // 3) - 1`` classes (3 of 10, 33 of 100).

    On CIFAR-LT the counts decrease with the class index, so both are the highest indices.

    Returns:
        Sorted list of class indices.
    """
    n = as_counts(class_counts, dtype=torch.float64)
    c = n.numel()
    if convention == "paper":
        k = c - math.ceil(2 * c / 3) + 1
    elif convention == "official":
        k = c - (c // 3 * 2 + 1)
    else:
        raise ConfigError(f"convention={convention!r}: use paper or official.")
    order = sorted(range(c), key=lambda i: (-float(n[i]), i))  # head first
    return sorted(order[c - max(k, 0):]) if k > 0 else []


def tail_class_weights(class_counts: Sequence[float] | torch.Tensor,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """TAIL class weights ``omega_c = sqrt(N / n_c)``, N = sum_j n_j (Li et al., arXiv 2023, Sec. 4.2). (C,) CPU,
    computed in float64 and returned as ``dtype`` (float32 by default; a float64 run gets every digit)."""
    n = as_counts(class_counts, dtype=torch.float64)
    return torch.sqrt(n.sum() / n).to(dtype)


def tail_loss(features: torch.Tensor, targets: torch.Tensor, class_counts: Sequence[float] | torch.Tensor,
              tail_classes: Sequence[int] | torch.Tensor, reduction: str = "paper",
              margin: float | None = None) -> torch.Tensor:
    """TAIL, the tail-sample-mining feature-margin regulariser (Li et al., arXiv 2023, Eq. 3, Algorithm 1).

    With ``f^p_i = softmax(f_i)`` over the D penultimate features of sample i, ``omega`` from
    :func:`tail_class_weights` and T the batch samples whose label is a tail class (S = |T|):

    ``"paper"`` (default), Eq. 3 accumulated over the tail anchors i and divided by S (Algorithm 1)::

        TAIL = (1/S) sum_{i in T} (1/B) sum_{j=1..B} sgn_ij (omega_{y_i} + omega_{y_j}) KL(f^p_j || f^p_i)

        sgn_ij = -(-1)^{1[y_i = y_j]} = +1 for same-class pairs (pulled together when TAIL is minimised)
                                          -1 for other pairs (pushed apart)

    where ``KL(f^p_j || f^p_i) = sum_k f^p_{j,k} log(f^p_{j,k} / f^p_{i,k})`` (j = i contributes 0).
    Gradients flow through both samples of each pair.

    As written, Eq. 3 has no lower bound: the penultimate features are unbounded, so the KL of a pushed
    pair grows without limit (one feature of the anchor large where the other sample's is small), and
    minimising ``L_lt + TAIL`` can lower TAIL forever instead of fitting the labels (on digits-LT the
    literal term fell from -0.1 to -391 in 15 epochs while clean accuracy collapsed to 30.6%).
    ``margin`` (the "feature margin" of TAIL's name) caps each pushed KL: a pushed pair contributes
    ``-min(KL, margin)``, so a pair already ``margin`` nats apart stops being pushed and::

        TAIL >= -2 * max_c(omega_c) * margin

    Same-class pairs are pulled with the uncapped KL. ``margin=None`` is the literal, unbounded Eq. 3.

    ``"official"``, the authors' ``loss_functions.py`` line for line: for each tail anchor i the KL is
    first reduced to one scalar, ``KLDivLoss(reduction='mean')`` over all B x D entries of
    ``f^p_i log(f^p_i / f^p_j)`` with the anchor detached, then multiplied by the mean pair weight::

        TAIL = (1/S) sum_{i in T} kl_i * (1/B) sum_j s_ij (omega_{y_i} + omega_{y_j})

        kl_i = (1/(B D)) sum_j KL(sg(f^p_i) || f^p_j)      (sg: stop-gradient)

        s_ij = -1 for same-class pairs, +1 otherwise

    Note that besides the reduction, this differs from Eq. 3 in the KL direction, in the detached anchor
    and in the pair sign (the code's sign is the opposite of Eq. 3's). As the anchor's coefficient
    ``(1/B) sum_j s_ij (omega_{y_i} + omega_{y_j})`` is positive unless most of the batch shares the anchor's
    class, the code mostly pulls every sample towards the tail anchors; ``kl_i`` is an average over B x D
    entries, so the term is small (about 0.02 on digits-LT, where it changes nothing measurable).

    Returns 0 when no sample of the batch belongs to a tail class.

    Args:
        features: penultimate features (B, D) (before the classifier; softmax is applied here).
        targets: (B,) int64. class_counts: (C,) training images per class.
        tail_classes: the tail class indices (:func:`reat_tail_classes`).
        reduction: "paper" | "official" (SPEC ``tail_reduction``).
        margin: cap (nats, > 0) on every KL that minimising TAIL pushes up: each other-class pair's KL for
            ``"paper"``; ``kl_i`` of an anchor whose coefficient is negative for ``"official"`` (the code
            as is whenever those stay below the margin). None: uncapped (the literal equation / code).

    Returns:
        Scalar float32 tensor.
    """
    omega, tails = tail_terms(class_counts, tail_classes, features.device, widen(features).dtype)
    return tail_loss_from_terms(features, targets, omega, tails, reduction, margin)


def tail_terms(class_counts: Sequence[float] | torch.Tensor, tail_classes: Sequence[int] | torch.Tensor,
               device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-class inputs of TAIL on ``device``: ``omega`` (C,) in ``dtype`` (computed in float64, so a float64
    run gets every digit) and the tail-class mask (C,) bool.

    Build them once per run (a training step then copies nothing from the host) and pass them to
    :func:`tail_loss_from_terms`.
    """
    omega = tail_class_weights(class_counts, dtype).to(device)  # (C,)
    tails = torch.zeros(omega.numel(), dtype=torch.bool)  # (C,)
    idx = tail_classes.cpu() if isinstance(tail_classes, torch.Tensor) else list(tail_classes)
    tails[torch.as_tensor(idx, dtype=torch.long)] = True
    return omega, tails.to(device)


def tail_loss_from_terms(features: torch.Tensor, targets: torch.Tensor, omega: torch.Tensor, tails: torch.Tensor,
                         reduction: str = "paper", margin: float | None = None) -> torch.Tensor:
    """:func:`tail_loss` with ``omega`` and the tail mask from :func:`tail_terms` (on the features' device)."""
    if reduction not in _TAIL_REDUCTIONS:
        raise ConfigError(f"tail reduction {reduction!r}: use paper or official.")
    if margin is not None and not (margin > 0 and math.isfinite(margin)):
        raise ConfigError(f"tail margin={margin}: use a finite number of nats > 0, or None for the literal Eq. 3.")
    device = features.device
    with torch.autocast(device_type=device.type, enabled=False):
        f = widen(features)  # (B, D) float32 at least (float64 stays float64)
        log_p = F.log_softmax(f, dim=1)  # (B, D)
        p = log_p.exp()
        anchor = tails[targets].to(f.dtype)  # (B,) 1 for tail anchors
        n_anchor = anchor.sum()
        same = targets[:, None] == targets[None, :]  # (B, B)
        omega = omega.to(f.dtype)
        pair_w = omega[targets][:, None] + omega[targets][None, :]  # (B, B) omega_i + omega_j
        b = f.shape[0]
        if reduction == "paper":
            # kl[i, j] = KL(p_j || p_i) = sum_k p_jk log p_jk - sum_k p_jk log p_ik
            neg_ent = (p * log_p).sum(dim=1)  # (B,)
            kl = neg_ent[None, :] - log_p @ p.t()  # (B, B)
            kl = kl.masked_fill(torch.eye(b, dtype=torch.bool, device=device), 0.0)
            if margin is not None:  # pushed pairs (other class) stop at the margin; pulled pairs uncapped
                kl = torch.where(same, kl, kl.clamp(max=margin))
            sign = same.to(f.dtype) * 2.0 - 1.0  # +1 same class, -1 otherwise
            per_anchor = (sign * pair_w * kl).sum(dim=1) / b  # (B,)
        else:
            # scalar_i = mean over (j, k) of sg(p_ik) (log sg(p_ik) - log p_jk)
            p_a, log_p_a = p.detach(), log_p.detach()
            neg_ent = (p_a * log_p_a).sum(dim=1)  # (B,)
            kl_mean = (neg_ent[:, None] - p_a @ log_p.t()).sum(dim=1) / (b * f.shape[1])  # (B,)
            sign = 1.0 - same.to(f.dtype) * 2.0  # -1 same class, +1 otherwise
            coef = (sign * pair_w).sum(dim=1) / b  # (B,)
            if margin is not None:  # pushed only where the anchor's coefficient is negative
                kl_mean = torch.where(coef < 0, kl_mean.clamp(max=margin), kl_mean)
            per_anchor = kl_mean * coef  # (B,)
        return (anchor * per_anchor).sum() / n_anchor.clamp_min(1.0)  # 0 without tail anchors
