"""ResNet-18 / ResNet-34 with the CIFAR stem (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385).

The CIFAR variant used by RoBal, REAT and AT-BSL (the widely copied kuangliu/pytorch-cifar model): a
3x3 stride-1 stem without max-pool, four stages of post-activation BasicBlocks at widths
(w, 2w, 4w, 8w) with strides (1, 2, 2, 2), BatchNorm'd 1x1 projection shortcuts, global average pooling.
At w = 64 and 10 classes ResNet-18 has 11,173,962 parameters. Weights keep PyTorch's default
initialisation (Kaiming-uniform convolutions), as the reference code does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import LTModel, check_image_size, resolve_width


class BasicBlock(nn.Module):
    """Post-activation residual block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet backbone with the CIFAR stem: (B, C_in, H, W) -> (B, 8w, H/8, W/8).

    Args:
        blocks: BasicBlocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        width: channels of the stem and first stage (64 in the reference model).
        in_channels: image channels.
    """

    def __init__(self, blocks: Sequence[int], width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages = []
        for i, n in enumerate(blocks):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, w, H, W)
        out = self.layer1(out)  # (B, w, H, W)
        out = self.layer2(out)  # (B, 2w, H/2, W/2)
        out = self.layer3(out)  # (B, 4w, H/4, W/4)
        return self.layer4(out)  # (B, 8w, H/8, W/8)


def _cifar_resnet(name: str, blocks: Sequence[int], num_classes: int, in_channels: int, width: int | None,
                  image_size: int | None, **kw: Any) -> LTModel:
    check_image_size(name, image_size, 8)
    backbone = CifarResNet(blocks, resolve_width(name, width, 64), in_channels)
    return LTModel(backbone, backbone.out_channels, num_classes, in_channels=in_channels, **kw)


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
             **kw: Any) -> LTModel:
    """ResNet-18 with the CIFAR stem, as in RoBal / REAT / AT-BSL (11.17M parameters at width 64).

    Args:
        num_classes: C.
        in_channels: image channels (1 or 3). Default: 3.
        width: channels of the first stage; stages have (w, 2w, 4w, 8w); feature_dim = 8w.
            Default: -1 (64).
        image_size: checked to be >= 8 px; any size works (adaptive pooling). Default: None.
        **kw: :class:`~ltrobust.models.base.LTModel` options: ``head`` ("linear" | "cosine"),
            ``mean``, ``std``, ``cosine_scale``, ``cosine_gamma``.

    Example::

        model = MODELS.build("resnet18", num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
        logits = model(torch.rand(8, 3, 32, 32))   # (8, 10)
    """
    return _cifar_resnet("resnet18", (2, 2, 2, 2), num_classes, in_channels, width, image_size, **kw)


@MODELS.register("resnet34")
def resnet34(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
             **kw: Any) -> LTModel:
    """ResNet-34 with the CIFAR stem (BasicBlocks (3, 4, 6, 3); 21.28M parameters at width 64, 10 classes).

    Arguments as :func:`resnet18`.
    """
    return _cifar_resnet("resnet34", (3, 4, 6, 3), num_classes, in_channels, width, image_size, **kw)
