"""Adversarial distributional training, ADT_EXP (Deng, Dong, Pang, Su & Zhu, NeurIPS 2020).

ADT replaces the single worst-case perturbation of PGD-AT by a worst-case *distribution* over
perturbations, regularised by its entropy (their objective, Sec. 3)::

    min_theta E_(x,y) [ max_{p(delta|x)} E_{p(delta|x)} L(f_theta(x + delta), y) + lambda * H(p(delta|x)) ]

ADT_EXP (Sec. 3.1) gives every training image its own explicit distribution: ``delta = eps * tanh(u)``,
``u ~ N(mu, diag(sigma^2))`` with ``sigma = softplus(rho)``, so every draw lies in the l_inf ball. Its
entropy has a closed form up to a Monte-Carlo term (change of variables through tanh)::

    -log p(delta) = -log N(u; mu, sigma) + sum_d log(eps * (1 - tanh(u_d)^2))

The inner maximisation updates (mu, rho) from mu = 0, rho = ``init_rho`` by ``attack.steps`` ascent steps, each
on the gradient summed over ``samples`` reparameterised draws; the outer loss is taken on one fresh draw.

As the authors' released ``adt_exp.py`` (identical in ``dongyp13/Adversarial-Distributional-Training`` and
``thudzj/ADT``; docs/methods.md, "ADT"): Adam with ``betas=(0, 0)`` on the batch-mean loss, whose gradients of
mu and rho are never zeroed, so every step moves by ``inner_lr * G / (|G| + 1e-8)`` with G the sum of the
gradients of *all* draws of all steps so far (``inner_grad=cumulative``; ``per_step``: the signed gradient of
the step's own draws); rho starts at 0 (sigma = softplus(0) = 0.69; ``init_rho=-5``: the earlier
``distrib_loss`` of ``thudzj/ADT``, removed in its commit ff3c20a); lambda weighs the *per-coordinate mean* of
-log p against the batch-mean CE, i.e. per image ``E[L] + lambda * H / D``; the CIFAR-10 defaults are theirs
(7 steps, lr 0.3, 5 samples, lambda 0.01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import autocast, eval_mode
from ..errors import ConfigError
from ..registry import METHODS
from .base import Method, forward_train


#: Adam's epsilon in the authors' update (``torch.optim.Adam`` default), on their batch-mean loss scale
ADAM_EPS = 1e-8
INNER_GRADS = ("cumulative", "per_step")


@dataclass(frozen=True)
class ADTOptions:
    samples: int = 5  #: reparameterised draws per ascent step (the authors' code: 5)
    inner_lr: float = 0.3  #: step on mu and rho (the authors' Adam with betas (0, 0), lr 0.3)
    entropy_weight: float = 0.01  #: lambda, on the per-coordinate entropy (the authors' code: 0.01)
    init_rho: float = 0.0  #: rho at the start: 0 (the released adt_exp.py; sigma 0.69) or -5 (earlier code; 0.0067)
    #: cumulative: the authors' Adam(betas 0) on gradients never zeroed, ``G / (|G| + 1e-8)`` with G summed over
    #: every draw of every step so far; per_step: ``sign`` of each step's own gradient
    inner_grad: str = "cumulative"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"adt samples={self.samples} must be >= 1 (the authors: 5).")
        if self.inner_lr <= 0 or self.entropy_weight < 0:
            raise ConfigError("adt needs inner_lr > 0 and entropy_weight >= 0 (the authors: 0.3, entropy_weight 0.01).")
        if self.inner_grad not in INNER_GRADS:
            raise ConfigError(f"adt inner_grad={self.inner_grad!r}: use cumulative (the authors' code) or per_step.")


def tanh_gaussian_neg_log_prob(noise: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``-log p`` of ``v = tanh(mu + sigma * noise)`` per coordinate (the eps scale is a constant, dropped).

    ``log p(v) = log N(u; mu, sigma) - log(1 - v^2)`` with ``u = mu + sigma * noise``, so
    ``-log p = noise^2 / 2 + log sigma + log sqrt(2 pi) + log(1 - v^2)``; its mean over draws estimates the
    entropy of the tanh-Gaussian.
    """
    return noise.pow(2) / 2 + (sigma + 1e-8).log() + 0.5 * math.log(2 * math.pi) + (1 - v.pow(2) + 1e-8).log()


@METHODS.register("adt")
class ADT(Method):
    """ADT_EXP: a learned per-image tanh-Gaussian perturbation distribution with its entropy term."""

    name = "adt"
    Options = ADTOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.attack_cfg.norm != "linf":
            raise ConfigError("adt's distribution eps * tanh(u) lives in the l_inf ball: use attack.norm=linf.")

    def distribution(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inner maximisation: (mu, rho) of every image after ``attack.steps`` ascent steps (``inner_grad``)."""
        o, eps = self.options, self.threat.eps
        objective, kwargs = self.attack_objective(x, y)
        from ..attacks.objectives import get_objective

        objective = get_objective(objective)
        mu = torch.zeros_like(x)
        rho = torch.full_like(x, o.init_rho)
        d, b = x[0].numel(), x.shape[0]
        acc_mu, acc_rho = torch.zeros_like(x), torch.zeros_like(x)  # the authors' never-zeroed .grad (cumulative)
        with eval_mode(model):
            for _ in range(self.attack_cfg.steps):
                mu.requires_grad_(True)
                rho.requires_grad_(True)
                total = torch.zeros((), device=x.device)
                for _ in range(o.samples):
                    sigma = F.softplus(rho)
                    noise = torch.randn_like(x)
                    v = torch.tanh(mu + sigma * noise)
                    with autocast(x.device, self.amp_dtype):
                        logits = model((x + eps * v).clamp(0.0, 1.0))
                    entropy = tanh_gaussian_neg_log_prob(noise, sigma, v).flatten(1).sum(1) / d  # (B,) H / D
                    total = total + (objective(logits, y, **kwargs) + o.entropy_weight * entropy).sum()
                g_mu, g_rho = torch.autograd.grad(total, (mu, rho))
                with torch.no_grad():
                    if o.inner_grad == "cumulative":  # their loss is the batch mean: gradients / B
                        acc_mu += g_mu / b
                        acc_rho += g_rho / b
                        mu = mu + o.inner_lr * acc_mu / (acc_mu.abs() + ADAM_EPS)
                        rho = rho + o.inner_lr * acc_rho / (acc_rho.abs() + ADAM_EPS)
                    else:
                        mu = mu + o.inner_lr * g_mu.sign()
                        rho = rho + o.inner_lr * g_rho.sign()
        return mu.detach(), rho.detach()

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, rho = self.distribution(model, x.detach(), y)
        v = torch.tanh(mu + F.softplus(rho) * torch.randn_like(x))
        return (x + self.threat.eps * v).clamp(0.0, 1.0).detach()

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # (B, C)
        loss = self.outer_loss(logits_adv, y)
        return {"loss": loss, "loss_rob": loss.detach(), "logits_adv": logits_adv.detach()}
