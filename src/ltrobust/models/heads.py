"""Classifier heads mapping penultimate features (B, D) to logits (B, C).

- :class:`LinearHead`: the usual ``W f + b``; exposes ``weight`` / ``bias`` so inference-stage
  adjustments (tau-normalisation, class-dependent temperatures) can rescale them.
- :class:`CosineHead`: RoBal's scale-invariant classifier (Wu et al., "Adversarial Robustness under
  Long-Tailed Distribution", CVPR 2021, https://arxiv.org/abs/2104.02703, Sec. 4.1-4.2, the
  ``W_i / (||W_i|| + gamma)`` form stated with Eq. 9-10):
  ``z_c = s * <f / ||f||, W_c / (||W_c|| + gamma)>``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class LinearHead(nn.Linear):
    """Linear classifier ``f W^T + b``: (B, D) -> (B, C).

    Args:
        in_features: D.
        num_classes: C.
        bias: learn a per-class bias. Default: True.

    Example::

        head = LinearHead(512, 10)
        logits = head(torch.randn(8, 512))   # (8, 10)
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(in_features, num_classes, bias=bias)

    @property
    def num_classes(self) -> int:
        return self.out_features


class CosineHead(nn.Module):
    """RoBal's cosine classifier: ``z_c = scale * <f/||f||, W_c/(||W_c|| + gamma)>``, (B, D) -> (B, C).

    The features are normalised to unit length and each class weight ``W_c`` is divided by
    ``||W_c|| + gamma``, so ``gamma`` (added to the weight norm only) lets the classifier encode a small
    per-class magnitude (Wu et al., CVPR 2021, https://arxiv.org/abs/2104.02703, Sec. 4.2). There is no
    bias; RoBal's class-aware margins and the inference-stage boundary adjustment act on the logits.
    Weights are initialised as in the authors' code, ``U(-1/sqrt(D), 1/sqrt(D))``.

    Args:
        in_features: D.
        num_classes: C.
        scale: s, the temperature applied to the cosine. Default: 10.0.
        gamma: added to each class weight's norm. Default: 1/32.

    Example::

        head = CosineHead(512, 10)
        cos = head.cosine(f)        # (B, 10), unscaled, |cos| < 1
        logits = head(f)            # 10 * cos
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 10.0, gamma: float = 1.0 / 32) -> None:
        super().__init__()
        if scale <= 0 or gamma < 0:
            raise ConfigError(f"cosine head: scale={scale} must be > 0 and gamma={gamma} >= 0.")
        self.in_features = in_features
        self.num_classes = num_classes
        self.scale = float(scale)
        self.gamma = float(gamma)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))  # (C, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re-)initialise the class weights ``U(-1/sqrt(D), 1/sqrt(D))`` (construction; cRT fine-tuning)."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def cosine(self, f: torch.Tensor) -> torch.Tensor:
        """Unscaled cosine ``<f/||f||, W_c/(||W_c|| + gamma)>`` of features (B, D) -> (B, C)."""
        w = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.gamma)  # (C, D)
        return F.normalize(f, dim=1) @ w.t()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(f)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale}, gamma={self.gamma}"


HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead, "cosine": CosineHead}


def make_head(kind: str, in_features: int, num_classes: int, **kw: Any) -> nn.Module:
    """Build the head called ``kind`` (``"linear"`` or ``"cosine"``); ``kw`` go to its constructor.

    Example::

        head = make_head("cosine", 512, 10, scale=10.0, gamma=1 / 32)
    """
    if kind not in HEADS:
        raise ConfigError(f"unknown head {kind!r}: use one of {', '.join(HEADS)} (e.g. model.head=cosine).")
    return HEADS[kind](in_features, num_classes, **kw)
