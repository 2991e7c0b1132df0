"""ResNet-50 and ResNet-18 with the ImageNet stem, built from torchvision's own blocks (TAET's settings).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385,
in torchvision's "v1.5" form (stride on the 3x3 convolution of the bottleneck). The backbone is
torchvision's ``resnet50`` up to (not including) ``avgpool``: a 7x7 stride-2 stem with max-pool and
four stages of :class:`torchvision.models.resnet.Bottleneck` blocks (3, 4, 6, 3). Our head replaces
``fc``. Module names and shapes equal torchvision's, so at the default width a torchvision ResNet-50
state dict (minus ``fc``) loads into ``model.backbone``; every channel count scales with ``width / 64``
for tiny test models. Initialisation as torchvision's: Kaiming-normal (fan-out) convolutions, BN (1, 0).
``resnet18_imagenet`` is torchvision's ``resnet18`` the same way (:class:`~torchvision.models.resnet.BasicBlock`,
(2, 2, 2, 2)): the network of TAET's code (Wang et al., CVPR 2025), which trains it on CIFAR images resized
to 224 px.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from torch import nn

from ..registry import MODELS
from .base import LTModel, check_image_size, resolve_width


def _stage(in_planes: int, planes: int, blocks: int, stride: int, block: Any) -> nn.Sequential:
    """One torchvision ResNet stage (mirrors ``torchvision.models.resnet.ResNet._make_layer``); ``block``:
    torchvision's ``Bottleneck`` or ``BasicBlock``."""
    from torchvision.models.resnet import conv1x1  # imported here: torchvision is slow to import

    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    layers = [block(in_planes, planes, stride, downsample)]
    layers += [block(out_planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def imagenet_resnet(blocks: Sequence[int], width: int = 64, in_channels: int = 3, block: Any = None) -> nn.Sequential:
    """torchvision's ResNet without ``avgpool`` / ``fc``: (B, C_in, H, W) -> (B, 32w, H/32, W/32) with
    bottleneck blocks (8w channels with basic blocks).

    Args:
        blocks: blocks per stage, (3, 4, 6, 3) for ResNet-50, (2, 2, 2, 2) for ResNet-18.
        width: stem channels (64 in torchvision); stage outputs are (4w, 8w, 16w, 32w) with bottleneck blocks,
            (w, 2w, 4w, 8w) with basic blocks.
        in_channels: image channels.
        block: torchvision's ``Bottleneck`` (default) or ``BasicBlock``.
    """
    from torchvision.models.resnet import Bottleneck

    block = Bottleneck if block is None else block

    modules: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),  # (B, w, H/2, W/2)
        bn1=nn.BatchNorm2d(width),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, stride=2, padding=1),  # (B, w, H/4, W/4)
    )
    in_planes = width
    for i, n in enumerate(blocks):
        modules[f"layer{i + 1}"] = _stage(in_planes, width * 2**i, n, 1 if i == 0 else 2, block)
        in_planes = width * 2**i * block.expansion
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


@MODELS.register("resnet18_imagenet")
def resnet18_imagenet(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
                      **kw: Any) -> LTModel:
    """torchvision's ResNet-18 (ImageNet stem: 7x7 stride-2 convolution and max-pool), as TAET's code trains it
    on CIFAR-10-LT resized to 224 px (Wang et al., CVPR 2025; 11,181,642 parameters at 10 classes).

    Not the CIFAR ResNet-18 of ``resnet18`` (3x3 stem, no max-pool): on 32-px images this one sees a 1x1 map
    after its last stage. Module names and shapes equal torchvision's ``resnet18`` (``fc`` is our ``head``).

    Args:
        num_classes: C.
        in_channels: image channels (1 or 3). Default: 3.
        width: stem channels w; stage outputs (w, 2w, 4w, 8w); feature_dim = 8w. Default: -1 (64).
        image_size: checked to be >= 32 px (the network downsamples 32x). Default: None.
        **kw: :class:`~ltrobust.models.base.LTModel` options: ``head``, ``mean``, ``std``,
            ``cosine_scale``, ``cosine_gamma``.

    Example::

        model = MODELS.build("resnet18_imagenet", num_classes=10, image_size=224)
        model.backbone.load_state_dict(torchvision_resnet18_state_dict_without_fc)   # same names and shapes
    """
    from torchvision.models.resnet import BasicBlock

    check_image_size("resnet18_imagenet", image_size, 32)
    w = resolve_width("resnet18_imagenet", width, 64)
    backbone = imagenet_resnet((2, 2, 2, 2), w, in_channels, BasicBlock)
    return LTModel(backbone, 8 * w, num_classes, in_channels=in_channels, **kw)
