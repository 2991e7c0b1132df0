"""The tiny three-class problem the method tests share (test_methods_lt.py, test_methods_baselines.py):
class counts 100 / 20 / 5, an MLP on 1 x 4 x 4 inputs, and one seeded batch of clean images and AEs."""

from __future__ import annotations

import torch
from torch import nn

from ltrobust.registry import MODELS

COUNTS = [100, 20, 5]  # head, body, tail
C = len(COUNTS)


def tiny_model(head: str = "linear", seed: int = 0, width: int = 8, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS.build("mlp", num_classes=C, in_channels=1, width=width, image_size=4, head=head, **kw)


def batch(seed: int = 1, n: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, x_adv, y): x in [0, 1], x_adv inside the 8/255 l_inf ball of x, labels 0 0 0 1 1 2 2 (first n)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2][:n])
    return x, x_adv, y
