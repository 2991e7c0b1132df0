"""Small, fast models for CPU runs: the 8x8 digits demo, smoke tests and tiny sweeps.

- ``smallcnn``: three 3x3 conv-BN-ReLU layers at widths (w, 2w, 4w) with a 2x2 max-pool after the
  second, then global average pooling (feature_dim = 4w; w = 32 by default). Works on any input of
  at least 2 px; about 0.1M parameters at the default width.
- ``mlp``: flatten and two ReLU hidden layers of w units (feature_dim = w; w = 256 by default). Needs
  the image size at build time.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from .base import LTModel, check_image_size, resolve_width


def _conv_bn_relu(in_planes: int, planes: int) -> list[nn.Module]:
    return [nn.Conv2d(in_planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True)]


@MODELS.register("smallcnn")
def smallcnn(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
             **kw: Any) -> LTModel:
    """A small BatchNorm CNN: conv(w)-conv(2w)-maxpool-conv(4w)-global pool.

    Args:
        num_classes: C.
        in_channels: image channels (1 or 3). Default: 3.
        width: w; feature_dim = 4w. Default: -1 (32).
        image_size: checked to be >= 2 px; any size works (adaptive pooling). Default: None.
        **kw: :class:`~ltrobust.models.base.LTModel` options: ``head``, ``mean``, ``std``,
            ``cosine_scale``, ``cosine_gamma``.

    Example::

        model = MODELS.build("smallcnn", num_classes=10, in_channels=1, image_size=8)
        logits = model(torch.rand(64, 1, 8, 8))   # (64, 10)
    """
    check_image_size("smallcnn", image_size, 2)
    w = resolve_width("smallcnn", width, 32)
    backbone = nn.Sequential(
        *_conv_bn_relu(in_channels, w),  # (B, w, H, W)
        *_conv_bn_relu(w, 2 * w),  # (B, 2w, H, W)
        nn.MaxPool2d(2),  # (B, 2w, H/2, W/2)
        *_conv_bn_relu(2 * w, 4 * w),  # (B, 4w, H/2, W/2)
    )
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return LTModel(backbone, 4 * w, num_classes, in_channels=in_channels, **kw)


@MODELS.register("mlp")
def mlp(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
        **kw: Any) -> LTModel:
    """A two-hidden-layer ReLU perceptron on flattened (square) images.

    Args:
        num_classes: C.
        in_channels: image channels (1 or 3). Default: 3.
        width: hidden units w; feature_dim = w. Default: -1 (256).
        image_size: side of the square input images (required: it sets the input dimension).
        **kw: :class:`~ltrobust.models.base.LTModel` options: ``head``, ``mean``, ``std``,
            ``cosine_scale``, ``cosine_gamma``.

    Example::

        model = MODELS.build("mlp", num_classes=10, in_channels=1, image_size=8)
    """
    if image_size is None:
        raise ConfigError("model mlp needs the image size to size its input layer: pass image_size "
                          "(build_model does so from the data set).")
    check_image_size("mlp", image_size, 1)
    w = resolve_width("mlp", width, 256)
    backbone = nn.Sequential(
        nn.Flatten(1),  # (B, C_in * H * W)
        nn.Linear(in_channels * image_size * image_size, w),
        nn.ReLU(inplace=True),
        nn.Linear(w, w),
        nn.ReLU(inplace=True),  # (B, w)
    )
    return LTModel(backbone, w, num_classes, in_channels=in_channels, global_pool=False, **kw)
