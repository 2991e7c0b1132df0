"""The model contract every architecture follows: normalise -> backbone -> global pool -> head.

A model is an :class:`LTModel`. Inputs are images in [0, 1]; the per-channel normalisation lives
inside the model (so attacks work in pixel space and ``eps`` is in pixel units), the penultimate
features are exposed for analyses (REAT's tail term, feature norms) and the head is a replaceable
module (:class:`~ltrobust.models.heads.LinearHead` or :class:`~ltrobust.models.heads.CosineHead`)::

    model = MODELS.build("resnet18", num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD, head="cosine")
    f = model.features(x)        # (B, D) with D = model.feature_dim
    logits = model(x)            # (B, C) == model.head(f)
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from .heads import make_head

if TYPE_CHECKING:
    from ..config import ModelConfig


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` for images in [0, 1], stored as buffers of shape (1, C, 1, 1).

    Args:
        mean: per-channel means (length C); ``None``: zeros (no shift).
        std: per-channel standard deviations (length C, all > 0); ``None``: ones (no scaling).
        in_channels: C, the number of image channels.
    """

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, in_channels: int) -> None:
        super().__init__()
        mean_v = _channel_values("mean", mean, 0.0, in_channels)
        std_v = _channel_values("std", std, 1.0, in_channels)
        if min(std_v) <= 0:
            raise ConfigError(f"std={std_v} has a value <= 0: every channel's standard deviation must be "
                              "positive.")
        self.register_buffer("mean", torch.tensor(mean_v).view(1, in_channels, 1, 1))  # (1, C, 1, 1)
        self.register_buffer("std", torch.tensor(std_v).view(1, in_channels, 1, 1))  # (1, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _channel_values(name: str, values: Sequence[float] | None, default: float, channels: int) -> list[float]:
    if values is None:
        return [default] * channels
    vals = values.flatten().tolist() if isinstance(values, torch.Tensor) else [float(v) for v in values]
    if len(vals) != channels:
        raise ConfigError(f"{name} has {len(vals)} values but the images have {channels} channels: "
                          f"give one {name} per channel (or none).")
    return vals


class LTModel(nn.Module):
    """An image classifier split into normalisation, backbone, global pooling and a replaceable head.

    ``features(x) = pool(backbone(normalize(x)))`` is (B, D); ``forward(x) = head(features(x))`` is
    (B, C). Architectures build one through their registered factory (``MODELS.build(name, ...)``).

    Args:
        backbone: maps normalised images (B, C_in, H, W) to a feature map (B, D, h, w), or directly to
            (B, D) when ``global_pool=False`` (e.g. a ViT's class token).
        feature_dim: D, the penultimate feature dimension.
        num_classes: C, the number of classes.
        in_channels: C_in, the number of image channels (1 or 3). Default: 3.
        mean, std: per-channel normalisation of the [0, 1] inputs; ``None``: identity. Default: None.
        head: ``"linear"`` or ``"cosine"`` (RoBal's scale-invariant classifier). Default: ``"linear"``.
        cosine_scale: s of the cosine head. Default: 10.0.
        cosine_gamma: gamma added to the cosine head's weight norms. Default: 1/32.
        global_pool: average-pool and flatten the backbone output. Default: True.

    Attributes:
        num_classes (int), feature_dim (int), in_channels (int), normalize (:class:`Normalize`),
        backbone (nn.Module), head (nn.Module mapping (B, D) -> (B, C)).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        head: str = "linear",
        cosine_scale: float = 10.0,
        cosine_gamma: float = 1.0 / 32,
        global_pool: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes={num_classes}: a classifier needs at least one class.")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.in_channels = in_channels
        self.normalize = Normalize(mean, std, in_channels)
        self.backbone = backbone
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)) if global_pool else nn.Identity()
        head_kw = {"scale": cosine_scale, "gamma": cosine_gamma} if head == "cosine" else {}
        self.head = make_head(head, feature_dim, num_classes, **head_kw)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images ``x`` (B, C_in, H, W) in [0, 1] -> (B, D)."""
        return self.pool(self.backbone(self.normalize(x)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits (B, C) of images ``x`` (B, C_in, H, W) in [0, 1].

        With ``return_features=True`` returns ``(logits, features (B, D))`` from one pass (REAT's TAIL
        and feature distillation need both, and under DDP the pass must go through ``forward``).
        """
        f = self.features(x)
        logits = self.head(f)
        return (logits, f) if return_features else logits


def replace_head(model: LTModel, head: nn.Module) -> LTModel:
    """Swap ``model.head`` for ``head`` (in place) and return ``model``.

    ``head`` must map (B, model.feature_dim) -> (B, C); when it exposes ``in_features`` /
    ``num_classes`` (as :class:`LinearHead` and :class:`CosineHead` do) they are checked and
    ``model.num_classes`` follows the new head.
    """
    in_features = getattr(head, "in_features", model.feature_dim)
    if in_features != model.feature_dim:
        raise ConfigError(f"the new head takes {in_features} features but the model produces "
                          f"{model.feature_dim}: build the head with in_features=model.feature_dim.")
    model.head = head
    model.num_classes = getattr(head, "num_classes", model.num_classes)
    return model


def resolve_width(name: str, width: int | None, default: int) -> int:
    """The channel width to build: ``default`` for ``None`` / -1, else ``width`` (must be >= 1)."""
    if width is None or width == -1:
        return default
    if width < 1:
        raise ConfigError(f"{name}: width={width} must be a positive channel count (or -1 for the "
                          f"default, {default}).")
    return int(width)


def check_image_size(name: str, image_size: int | None, minimum: int) -> None:
    """Raise :class:`ConfigError` when ``image_size`` (if given) is below what ``name`` can take."""
    if image_size is not None and image_size < minimum:
        raise ConfigError(f"{name} needs images of at least {minimum} px, got image_size={image_size}: "
                          "pick a smaller-stem model (smallcnn, resnet18) or resize the data.")


def build_model(
    cfg_model: ModelConfig,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    image_size: int | None,
) -> LTModel:
    """Build the model a :class:`~ltrobust.config.ModelConfig` describes for a data set.

    ``width``, ``depth`` and ``widen`` equal to -1 mean "the architecture's default"; a depth or
    widen factor given to an architecture that has none raises :class:`ConfigError`. With
    ``cfg_model.normalize`` false, ``mean`` and ``std`` are ignored: the network sees [0, 1] pixels.

    Example::

        model = build_model(cfg.model, data.num_classes, 3, data.mean, data.std, image_size=32)
    """
    factory = MODELS.get(cfg_model.name)
    if not cfg_model.normalize:  # the network sees [0, 1] pixels (the official codes of the seed papers)
        mean = std = None
    accepted = inspect.signature(factory).parameters
    kw: dict[str, int | str] = {}
    for key in ("depth", "widen"):
        value = getattr(cfg_model, key)
        if value == -1:
            continue
        if key not in accepted:
            raise ConfigError(f"model.{key}={value} does not apply to {cfg_model.name!r}: leave it at -1 "
                              "or pick an architecture that has it (e.g. wideresnet, vit_b16 for depth).")
        kw[key] = value
    if cfg_model.pretrained:
        if "pretrained" not in accepted:
            raise ConfigError(f"model.pretrained does not apply to {cfg_model.name!r}: only vit_b16 loads pretrained "
                              "weights; leave model.pretrained empty.")
        kw["pretrained"] = cfg_model.pretrained
    return MODELS.build(
        cfg_model.name,
        num_classes=num_classes,
        in_channels=in_channels,
        width=cfg_model.width,
        image_size=image_size,
        head=cfg_model.head,
        mean=mean,
        std=std,
        cosine_scale=cfg_model.cosine_scale,
        cosine_gamma=cfg_model.cosine_gamma,
        **kw,
    )
