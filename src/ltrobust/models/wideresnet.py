"""WideResNet (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016,
https://arxiv.org/abs/1605.07146) in the form used by TRADES (Zhang et al., ICML 2019,
https://arxiv.org/abs/1901.08573), RoBal and REAT for CIFAR adversarial training.

WRN-d-k: a 3x3 stem of w channels (16 in the paper), three stages of (d - 4) / 6 pre-activation
BasicBlocks at widths (w k, 2 w k, 4 w k) with strides (1, 2, 2), 1x1 projection shortcuts taken
after the block's first BN-ReLU, a final BN-ReLU and global average pooling. WRN-34-10 has 46,160,474
parameters and WRN-28-10 36,479,194 at 10 classes. (TRADES' file also builds an unused
``sub_block1``; it is left out, so the count is that of the network that actually runs.)
Initialisation as in the reference code: Kaiming-normal (fan-out) convolutions, BN (1, 0), zero bias.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from .base import LTModel, check_image_size, resolve_width
from .heads import LinearHead


class WideBasicBlock(nn.Module):
    """Pre-activation block; a projection shortcut, when present, reads the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen backbone: (B, C_in, H, W) -> (B, 4 w k, H/4, W/4), after the final BN-ReLU.

    Args:
        depth: total depth d, with (d - 4) divisible by 6 (34, 28, 16, 10, ...).
        widen: widening factor k.
        width: stem channels w (16 in the paper); the stages have (w k, 2 w k, 4 w k).
        in_channels: image channels.
    """

    def __init__(self, depth: int = 34, widen: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0 or widen < 1:
            raise ConfigError(f"WideResNet depth={depth}, widen={widen}: depth must be 6n + 4 with n >= 1 "
                              "(e.g. 34 or 28) and widen >= 1 (e.g. 10).")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        in_planes = width
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            planes = width * widen * 2**i
            layers = []
            for j in range(n):
                layers.append(WideBasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.out_channels = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)  # (B, w, H, W)
        out = self.block1(out)  # (B, w k, H, W)
        out = self.block2(out)  # (B, 2 w k, H/2, W/2)
        out = self.block3(out)  # (B, 4 w k, H/4, W/4)
        return F.relu(self.bn(out))


@MODELS.register("wideresnet")
def wideresnet(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
               depth: int = 34, widen: int = 10, **kw: Any) -> LTModel:
    """WideResNet-depth-widen as in TRADES / RoBal (default WRN-34-10, 46.16M parameters).

    Args:
        num_classes: C.
        in_channels: image channels (1 or 3). Default: 3.
        width: stem channels w; stages have (w k, 2 w k, 4 w k); feature_dim = 4 w k. Default: -1 (16).
        image_size: checked to be >= 8 px; any size works (adaptive pooling). Default: None.
        depth: 6n + 4 (34, 28, ...); -1: 34. Default: 34.
        widen: widening factor k; -1: 10. Default: 10.
        **kw: :class:`~ltrobust.models.base.LTModel` options: ``head``, ``mean``, ``std``,
            ``cosine_scale``, ``cosine_gamma``.

    Example::

        model = MODELS.build("wideresnet", num_classes=100, depth=28, widen=10, head="cosine")
    """
    check_image_size("wideresnet", image_size, 8)
    depth = 34 if depth == -1 else depth
    widen = 10 if widen == -1 else widen
    backbone = WideResNet(depth, widen, resolve_width("wideresnet", width, 16), in_channels)
    model = LTModel(backbone, backbone.out_channels, num_classes, in_channels=in_channels, **kw)
    if isinstance(model.head, LinearHead):
        nn.init.zeros_(model.head.bias)
    return model


@MODELS.register("wrn34_10")
def wrn34_10(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
             **kw: Any) -> LTModel:
    """WRN-34-10 (RoBal, AT-BSL, self-distillation on CIFAR-LT). Arguments as :func:`wideresnet`."""
    return wideresnet(num_classes, in_channels, width, image_size, depth=34, widen=10, **kw)


@MODELS.register("wrn28_10")
def wrn28_10(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
             **kw: Any) -> LTModel:
    """WRN-28-10 (REAT's second architecture). Arguments as :func:`wideresnet`."""
    return wideresnet(num_classes, in_channels, width, image_size, depth=28, widen=10, **kw)
