"""Outer-loss pieces of the balanced-data adversarial training methods: TRADES and MART.

Both return their two terms *unweighted*, ``LossTerms(main, kl)``; the method adds them as
``loss = main + beta * kl`` (``terms.total(beta)``), so each part can be logged on its own scale.
The CE part is replaceable by any long-tailed loss through ``base_loss`` (``method=trades loss=bsl``).
Everything is computed in float32 from the given logits (same value under bf16 autocast).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ..device import widen

BaseLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LossTerms(NamedTuple):
    """The two terms of a TRADES / MART objective (scalars)."""

    main: torch.Tensor  #: TRADES: L(z(x), y); MART: boosted BCE on z(x')
    kl: torch.Tensor  #: the (weighted, for MART) KL regulariser, before multiplying by beta

    def total(self, beta: float) -> torch.Tensor:
        """``main + beta * kl``."""
        return self.main + beta * self.kl


def kl_div_logits(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(softmax(logits_p) || softmax(logits_q))`` summed over classes: (B, C), (B, C) -> (B,)."""
    log_q = F.log_softmax(widen(logits_q), dim=1)
    p = F.softmax(widen(logits_p), dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(dim=1)


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


def trades_loss_terms(logits_nat: torch.Tensor, logits_adv: torch.Tensor, targets: torch.Tensor,
                      base_loss: BaseLoss | None = None) -> LossTerms:
    """TRADES (Zhang et al., ICML 2019; the official code): ``CE(z(x), y)`` and ``KL(p(x) || p(x'))``.

    As in the official ``trades.py``: ``criterion_kl = KLDivLoss(size_average=False)`` on
    ``(log_softmax(z(x')), softmax(z(x)))`` divided by the batch size (a sum over classes, a mean over
    the batch), with gradients through both the clean and the adversarial branch.
    SPEC 3: ``loss = CE(z(x), y) + beta * KL``, beta 6.

    Args:
        logits_nat: clean logits z(x) (B, C). logits_adv: adversarial logits z(x') (B, C).
        targets: (B,) int64.
        base_loss: replaces the natural CE, called ``base_loss(logits_nat, targets) -> scalar``
            (e.g. a LOSSES entry such as balanced softmax).

    Returns:
        ``LossTerms(main=CE(z(x), y), kl=mean_i KL_i)``; beta 0 leaves the clean CE.

    Example::

        nat, kl = trades_loss_terms(model(x), model(x_adv), y)
        loss = nat + 6.0 * kl
    """
    main = (base_loss or _ce)(logits_nat, targets)
    kl = kl_div_logits(logits_nat, logits_adv).mean()
    return LossTerms(main, kl)


def mart_loss_terms(logits_nat: torch.Tensor, logits_adv: torch.Tensor, targets: torch.Tensor,
                    base_loss: BaseLoss | None = None) -> LossTerms:
    """MART (Wang et al., ICLR 2020; the official ``mart.py``): boosted BCE and weighted KL.

    Exactly the official code, constants included::

        p' = softmax(z(x')), p = softmax(z(x))
        y' = the largest wrong class of p'            (argmax over i != y)
        BCE = CE(z(x'), y) + mean_i -log(1.0001 - p'_{i, y'_i} + 1e-12)
        KL  = (1/B) sum_i [sum_c p_c (log p_c - log(p'_c + 1e-12))] * (1.0000001 - p_{i, y_i})

    Gradients flow through every factor (including ``1 - p_y(x)``), as in the official code. SPEC 3:
    ``loss = BCE + beta * KL``, beta 6.

    Args:
        logits_nat: z(x) (B, C). logits_adv: z(x') (B, C). targets: (B,).
        base_loss: replaces the ``CE(z(x'), y)`` part of BCE: ``base_loss(logits_adv, targets) -> scalar``.

    Returns:
        ``LossTerms(main=BCE, kl=weighted KL)``.
    """
    z_adv = logits_adv.float()
    adv_probs = F.softmax(z_adv, dim=1)  # (B, C)
    wrong = adv_probs.masked_fill(F.one_hot(targets, z_adv.shape[1]).bool(), float("-inf"))
    new_y = wrong.argmax(dim=1)  # (B,) largest wrong class
    boost = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    main = (base_loss or _ce)(logits_adv, targets) + boost

    nat_probs = F.softmax(logits_nat.float(), dim=1)  # (B, C)
    true_probs = nat_probs.gather(1, targets[:, None]).squeeze(1)  # (B,)
    kl_per_sample = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)  # (B,)
    kl = (kl_per_sample * (1.0000001 - true_probs)).sum() / targets.shape[0]
    return LossTerms(main, kl)
