"""ResNet-50 with the ImageNet stem, built from torchvision's own blocks (TAET's ImageNet-LT setting).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385,
in torchvision's "v1.5" form (stride on the 3x3 convolution of the bottleneck). The backbone is
torchvision's ``resnet50`` up to (not including) ``avgpool``: a 7x7 stride-2 stem with max-pool and
four stages of :class:`torchvision.models.resnet.Bottleneck` blocks (3, 4, 6, 3). Our head replaces
``fc``. Module names and shapes equal torchvision's, so at the default width a torchvision ResNet-50
state dict (minus ``fc``) loads into ``model.backbone``; every channel count scales with ``width / 64``
for tiny test models. Initialisation as torchvision's: Kaiming-normal (fan-out) convolutions, BN (1, 0).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from torch import nn

from ..registry import MODELS
from .base import LTModel, check_image_size, resolve_width


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One torchvision ResNet stage (mirrors ``torchvision.models.resnet.ResNet._make_layer``)."""
    from torchvision.models.resnet import Bottleneck, conv1x1  # imported here: torchvision is slow to import

    out_planes = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    layers = [Bottleneck(in_planes, planes, stride, downsample)]
    layers += [Bottleneck(out_planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def imagenet_resnet(blocks: Sequence[int], width: int = 64, in_channels: int = 3) -> nn.Sequential:
    """torchvision's bottleneck ResNet without ``avgpool`` / ``fc``: (B, C_in, H, W) -> (B, 32w, H/32, W/32).

    Args:
        blocks: Bottleneck blocks per stage, (3, 4, 6, 3) for ResNet-50.
        width: stem channels (64 in torchvision); stage outputs are (4w, 8w, 16w, 32w).
        in_channels: image channels.
    """
    from torchvision.models.resnet import Bottleneck

    modules: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),  # (B, w, H/2, W/2)
        bn1=nn.BatchNorm2d(width),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, stride=2, padding=1),  # (B, w, H/4, W/4)
    )
    in_planes = width
    for i, n in enumerate(blocks):
        modules[f"layer{i + 1}"] = _stage(in_planes, width * 2**i, n, 1 if i == 0 else 2)
        in_planes = width * 2**i * Bottleneck.expansion
    backbone = nn.Sequential(modules)
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return backbone


@MODELS.register("resnet50")
def resnet50(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
             **kw: Any) -> LTModel:
    """torchvision's ResNet-50 (ImageNet stem) for ImageNet-LT at 224 px (25.56M parameters at 1000 classes).

    Args:
        num_classes: C.
        in_channels: image channels (1 or 3). Default: 3.
        width: stem channels w; stage outputs (4w, 8w, 16w, 32w); feature_dim = 32w. Default: -1 (64).
        image_size: checked to be >= 32 px (the network downsamples 32x). Default: None.
        **kw: :class:`~ltrobust.models.base.LTModel` options: ``head``, ``mean``, ``std``,
            ``cosine_scale``, ``cosine_gamma``.

    Example::

        model = MODELS.build("resnet50", num_classes=1000, image_size=224)
        model.backbone.load_state_dict(torchvision_state_dict_without_fc)   # same names and shapes
    """
    check_image_size("resnet50", image_size, 32)
    w = resolve_width("resnet50", width, 64)
    backbone = imagenet_resnet((3, 4, 6, 3), w, in_channels)
    return LTModel(backbone, 32 * w, num_classes, in_channels=in_channels, **kw)
