"""The optimisation-based Carlini-Wagner l_2 attack (Carlini & Wagner, IEEE S&P 2017, Sec. V-A).

It searches the *smallest* l_2 perturbation that changes the prediction: in the tanh variables
``x' = (tanh(w) + 1) / 2`` (so x' stays in [0, 1], their Sec. V-A "change of variables"), Adam minimises

    ||x' - x||_2^2 + c * f(x'),   f(x') = max(z_y(x') - max_{i != y} z_i(x'), -kappa)     (their Eq. f_6)

for up to ``steps`` iterations, and a per-sample binary search over c (``binary_steps`` rounds, from
``initial_const``) keeps the smallest successful perturbation. Settings of the authors' l_2 code
(``carlini/nn_robust_attacks@c6b8f6a``, ``l2_attack.py``): up to 10,000 Adam iterations (lr 0.01) per round,
9 binary-search rounds, c from 1e-3, kappa 0, and a round aborted when the total loss has not fallen by 0.01%
since the last check, checked at iterations 0, k, 2k, ... with k = steps // 10 (their
``iteration % (MAX_ITERATIONS // 10) == 0``, before the iteration's result is recorded). The evaluation suite's
``cw_l2`` is this reference setting; ``cw_l2-K`` runs K iterations per round (``cw_l2-100``: the fast setting).

As a *bounded* attack of the evaluation suite (``cw_l2``, REAT's l_2 table) a point counts as broken only
when the perturbation found is at most eps long: :func:`cw_l2` returns the clean image otherwise, so the
robust accuracy at eps is read like that of every other attack. torchattacks' ``CW`` was not used: it
runs one fixed c without the binary search, so it does not return the minimal perturbation.
"""

from __future__ import annotations

import torch
from torch import nn

from .objectives import logit_margin
from .pgd import eval_mode


#: Adam iterations per binary-search round of the authors' code (``MAX_ITERATIONS``)
REFERENCE_STEPS = 10_000


def cw_l2_minimal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = REFERENCE_STEPS,
                  binary_steps: int = 9,
                  lr: float = 0.01, initial_const: float = 1e-3, kappa: float = 0.0,
                  abort_early: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest-l_2 adversarial example C&W finds for each image.

    Args:
        model: maps images (B, C, H, W) in [0, 1] to logits (B, K); attacked in eval mode.
        x: clean images in [0, 1]; y: labels (B,).
        steps: Adam iterations per binary-search round (the authors': 10,000, with early abort).
        binary_steps: rounds of the per-sample binary search over c.
        lr: Adam learning rate on w. initial_const: c of the first round. kappa: confidence margin.
        abort_early: end a round once the total loss has not fallen by 0.01% since the previous check (checks at
            iterations 0, k, 2k, ... with k = ``steps // 10``, as the authors' code).

    Returns:
        ``(x_adv, norm)``: the best adversarial images (the clean image where none was found) and their
        l_2 distances to x (``inf`` where none was found).
    """
    x = x.detach()
    b = x.shape[0]
    shape = (b,) + (1,) * (x.dim() - 1)
    w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))  # x = (tanh(w0) + 1) / 2
    lower = torch.zeros(b, device=x.device)
    upper = torch.full((b,), 1e10, device=x.device)
    const = torch.full((b,), float(initial_const), device=x.device)
    best_norm = torch.full((b,), float("inf"), device=x.device)
    best_adv = x.clone()
    check_every = max(1, steps // 10)
    with eval_mode(model):
        for _ in range(binary_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=lr)
            success = torch.zeros(b, dtype=torch.bool, device=x.device)
            prev = float("inf")
            for it in range(steps):
                x_adv = (torch.tanh(w) + 1) / 2
                logits = model(x_adv)
                margin = logit_margin(logits, y)  # (B,)
                dist = (x_adv - x).flatten(1).pow(2).sum(1)  # (B,) squared l_2
                loss = dist + const * margin.clamp_min(-kappa)
                (w.grad,) = torch.autograd.grad(loss.sum(), w)  # the input only: no parameter's .grad is touched
                opt.step()
                if abort_early and it % check_every == 0:  # the authors' check: before this iterate is recorded
                    total = float(loss.detach().sum())  # one sync per check_every iterations
                    if total > prev * 0.9999:
                        break
                    prev = total
                with torch.no_grad():  # x_adv, margin belong to w before this step: keep the best of them
                    hit = margin < 0 if kappa == 0 else margin <= -kappa
                    norm = dist.sqrt()
                    better = hit & (norm < best_norm)
                    best_norm = torch.where(better, norm, best_norm)
                    best_adv = torch.where(better.view(shape), x_adv.detach(), best_adv)
                    success |= hit
            with torch.no_grad():  # per-sample binary search on c (the authors' rule)
                upper = torch.where(success, torch.minimum(upper, const), upper)
                lower = torch.where(success, lower, torch.maximum(lower, const))
                const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
    return best_adv.detach(), best_norm


def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **options: float) -> torch.Tensor:
    """C&W-l_2 as a bounded attack: the minimal adversarial example where it is at most ``eps`` long, else ``x``."""
    x_adv, norm = cw_l2_minimal(model, x, y, **options)
    keep = (norm <= eps).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, x_adv, x.detach())
