"""PreActResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016,
https://arxiv.org/abs/1603.05027) as used for adversarial training by Rice et al. ("Overfitting in
adversarially robust deep learning", ICML 2020, https://arxiv.org/abs/2002.11569) and by AT-BSL and
the self-distillation method on Tiny-ImageNet-LT.

CIFAR stem (3x3 stride-1 conv, no BatchNorm, no max-pool), pre-activation BasicBlocks at widths
(w, 2w, 4w, 8w) with strides (1, 2, 2, 2), plain 1x1 projection shortcuts taken after the block's first
BN-ReLU, and a final BN-ReLU before global average pooling. At w = 64 and 10 classes it has 11,172,170
parameters. Weights keep PyTorch's default initialisation, as the reference code does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import LTModel, check_image_size, resolve_width


class PreActBlock(nn.Module):
    """Pre-activation residual block: ``conv(relu(bn(conv(relu(bn(x)))))) + shortcut``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet backbone: (B, C_in, H, W) -> (B, 8w, H/8, W/8), after the final BN-ReLU.

    Args:
        blocks: PreActBlocks per stage, e.g. (2, 2, 2, 2) for PreActResNet-18.
        width: channels of the stem and first stage (64 in the reference model).
        in_channels: image channels.
    """

    def __init__(self, blocks: Sequence[int], width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        in_planes = width
        stages = []
        for i, n in enumerate(blocks):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(PreActBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.out_channels = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)  # (B, w, H, W)
        out = self.layer1(out)  # (B, w, H, W)
        out = self.layer2(out)  # (B, 2w, H/2, W/2)
        out = self.layer3(out)  # (B, 4w, H/4, W/4)
        out = self.layer4(out)  # (B, 8w, H/8, W/8)
        return F.relu(self.bn(out))


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int, in_channels: int = 3, width: int | None = -1,
                    image_size: int | None = None, **kw: Any) -> LTModel:
    """PreActResNet-18 as in Rice et al. (2020) / AT-BSL (11.17M parameters at width 64).

    Args:
        num_classes: C.
        in_channels: image channels (1 or 3). Default: 3.
        width: channels of the first stage; stages have (w, 2w, 4w, 8w); feature_dim = 8w.
            Default: -1 (64).
        image_size: checked to be >= 8 px; any size works (adaptive pooling). Default: None.
        **kw: :class:`~ltrobust.models.base.LTModel` options: ``head``, ``mean``, ``std``,
            ``cosine_scale``, ``cosine_gamma``.

    Example::

        model = MODELS.build("preact_resnet18", num_classes=200, image_size=64)
        logits = model(torch.rand(8, 3, 64, 64))   # (8, 200)
    """
    check_image_size("preact_resnet18", image_size, 8)
    backbone = PreActResNet((2, 2, 2, 2), resolve_width("preact_resnet18", width, 64), in_channels)
    return LTModel(backbone, backbone.out_channels, num_classes, in_channels=in_channels, **kw)
