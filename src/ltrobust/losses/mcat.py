"""MCAT's loss pieces (Xian, Yang and Yu, IJCAI 2026, arXiv:2605.02183; code yneversky/MCAT at f19c2af).

- The simplex-ETF regulariser on the classifier weights (:func:`etf_loss`, target :func:`etf_target_gram`).
- The manifold distance of a feature vector to its class's generator range (:func:`manifold_distance`):
  ``d(u, y) = ||u - G_y(z*)||^2`` with ``z*`` from ``steps`` gradient steps on the latent code from a Gaussian
  draw (:func:`latent_projection`). ``G`` is any callable ``G(z, groups) -> (B, D)`` that routes each row of
  ``z`` through the generator of its class (``ltrobust.methods.mcat.ClassGenerators``); ``groups`` are the
  batch's classes and their rows (:func:`class_groups`, one host synchronisation per batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..device import widen
from ..errors import ConfigError

#: how the latent steps weigh the batch's points: ``sample`` (each point descends its own squared distance) or
#: ``class_mean`` (the release's trainer: the mean over the points of a class, so a point's step shrinks with
#: the number of its class's points in the batch)
LATENT_REDUCTIONS = ("sample", "class_mean")


@dataclass(frozen=True)
class ClassGroups:
    """The classes present in a batch, ascending, with the rows of each (``classes[k]`` owns ``index[k]``), and
    ``inverse``, the permutation that puts rows concatenated class by class back in batch order."""

    classes: tuple[int, ...]
    index: tuple[torch.Tensor, ...]
    inverse: torch.Tensor
    weight: torch.Tensor  #: (B,) 1 / (rows of the point's class in the batch)


def class_groups(y: torch.Tensor) -> ClassGroups:
    """The class groups of labels ``y`` (B,) (one host synchronisation: call it once per batch)."""
    classes = torch.unique(y)  # sorted, as the release's torch.unique(y).tolist()
    index = tuple((y == c).nonzero().squeeze(1) for c in classes)
    order = torch.cat(index) if index else torch.zeros(0, dtype=torch.long, device=y.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=y.device)
    counts = torch.bincount(y, minlength=int(classes.max()) + 1 if classes.numel() else 0)
    return ClassGroups(tuple(int(c) for c in classes.tolist()), index, inverse, 1.0 / counts[y].float())


def etf_target_gram(num_classes: int, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Gram matrix of a simplex equiangular tight frame (C, C): 1 on the diagonal, ``-1/(C - 1)`` off it."""
    if num_classes < 2:
        raise ConfigError(f"the simplex-ETF target needs at least 2 classes, got {num_classes}.")
    m = torch.full((num_classes, num_classes), -1.0 / (num_classes - 1), device=device, dtype=dtype)
    return m.fill_diagonal_(1.0)


def etf_loss(weight: torch.Tensor) -> torch.Tensor:
    """``mean_{i,j} (W_hat W_hat^T - M)_{ij}^2`` with ``W_hat`` the row-normalised classifier weight (C, D) and
    ``M`` :func:`etf_target_gram` (the release's ``_geom_regularizer``, ``mcat/trainer.py:474-482``), in the
    weight's dtype (float32 for half-precision weights), so a float64 model gets a float64 term."""
    if weight.dim() != 2:
        raise ConfigError(f"the ETF regulariser needs a (classes, features) weight matrix, got shape "
                          f"{tuple(weight.shape)}.")
    w = F.normalize(widen(weight), dim=1)
    gram = w @ w.t()  # (C, C)
    return F.mse_loss(gram, etf_target_gram(weight.shape[0], weight.device, w.dtype))


def draw_latents(groups: ClassGroups, z_dim: int, device: torch.device, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian latent codes (B, z_dim), drawn class by class in ascending class order as the release does
    (``torch.randn((n_c, z_dim))`` per class present), returned in batch order."""
    parts = [torch.randn((len(idx), z_dim), device=device, dtype=dtype, generator=generator) for idx in groups.index]
    if not parts:
        return torch.zeros((0, z_dim), device=device, dtype=dtype)
    return torch.cat(parts)[groups.inverse]


def latent_projection(G: Callable[[torch.Tensor, ClassGroups], torch.Tensor], u: torch.Tensor, groups: ClassGroups,
                      z0: torch.Tensor, steps: int, lr: float, reduction: str = "sample") -> torch.Tensor:
    """``steps`` gradient steps ``z <- z - lr * d/dz sum_i w_i ||G_{y_i}(z_i) - u_i||^2`` from ``z0`` (B, z_dim),
    with ``u`` (B, D) held fixed (detached); ``w_i = 1`` (``sample``) or ``1 / n_{y_i}`` (``class_mean``,
    the release, ``mcat/trainer.py:459-465``). Returns the final codes, detached."""
    if reduction not in LATENT_REDUCTIONS:
        raise ConfigError(f"latent reduction {reduction!r}: use one of {', '.join(LATENT_REDUCTIONS)}.")
    target = u.detach().float()
    w = groups.weight if reduction == "class_mean" else None
    z = z0.detach().float()
    for _ in range(steps):
        with torch.enable_grad():
            z = z.requires_grad_(True)
            per = (G(z, groups) - target).pow(2).sum(1)  # (B,)
            loss = (per * w).sum() if w is not None else per.sum()
            (grad,) = torch.autograd.grad(loss, z)
        z = (z - lr * grad).detach()
    return z


def manifold_distance(G: Callable[[torch.Tensor, ClassGroups], torch.Tensor], u: torch.Tensor, groups: ClassGroups,
                      z_dim: int, steps: int = 5, lr: float = 0.1, reduction: str = "sample",
                      differentiable: bool = True, z0: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The squared distance (B,) of each feature vector ``u`` (B, D) to the range of its class's generator.

    ``d_i = ||u_i - G_{y_i}(z*_i)||^2`` with ``z*`` from :func:`latent_projection` (``steps`` steps of ``lr``
    from ``z0``, Gaussian draws of :func:`draw_latents` when None). ``differentiable``: ``z*`` is held fixed and
    ``d`` carries the gradient with respect to ``u`` (the paper's penalty; the release's unused
    ``mcat/manifold.py`` with ``detach_proj=True``); else ``d`` is computed without gradient, as the release's
    trainer does (``mcat/trainer.py:467-470``), so it cannot move an attack or a loss.

    Example::

        d = manifold_distance(generators, features, class_groups(y), z_dim=64)   # (B,)
    """
    if z0 is None:
        z0 = draw_latents(groups, z_dim, u.device, torch.float32, generator)
    z = latent_projection(G, u, groups, z0, steps, lr, reduction)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        g = G(z, groups)
        d = ((u.float() if differentiable else u.detach().float()) - g).pow(2).sum(1)
    return d if differentiable else d.detach()
