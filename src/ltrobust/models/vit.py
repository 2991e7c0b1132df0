"""ViT-B/16 (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021,
https://arxiv.org/abs/2010.11929) through timm, for the DermaMNIST setting. Optional: needs
the ``vit`` extra (``pip install -e '.[vit]'``).

The backbone is timm's :class:`~timm.models.vision_transformer.VisionTransformer` with ViT-B/16's
hyper-parameters (the configuration of timm's ``vit_base_patch16_224``: embed_dim 768, depth 12,
12 heads, patch 16, class-token pooling, final LayerNorm) and no classifier (``num_classes=0``); the
(B, 768) class-token features go to our head. Random initialisation (timm's), or the weights of a local
file (``model.pretrained=PATH``: any timm ViT-B/16 checkpoint, ``.pth`` / ``.bin`` / ``.safetensors`` / the
original ``.npz``) read by timm's loader, whose filter resamples the positional embeddings to
``image_size`` (TAET Table 3: DermaMNIST at 224 px from ImageNet weights); weights are never downloaded.
The width knob sets ``embed_dim`` (with one head per 64 channels, at least one) and ``depth`` /
``patch_size`` shrink the model further, so a tiny ViT runs on 32 px images on a CPU.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, install_hint
from ..registry import MODELS
from .base import LTModel, resolve_width


@MODELS.register("vit_b16")
def vit_b16(num_classes: int, in_channels: int = 3, width: int | None = -1, image_size: int | None = None,
            depth: int = 12, patch_size: int = 16, pretrained: str | None = None, **kw: Any) -> LTModel:
    """ViT-B/16 with a replaceable head (86.6M parameters at 224 px and 1000 classes).

    Args:
        num_classes: C.
        in_channels: image channels (1 or 3). Default: 3.
        width: embedding dimension D = feature_dim, with max(1, D // 64) heads. Default: -1 (768).
        image_size: input side in px, fixed at build time (positional embeddings); a multiple of
            ``patch_size``. Default: None (224).
        depth: transformer blocks; -1: 12. Default: 12.
        patch_size: side of the square patches. Default: 16.
        pretrained: a local checkpoint file of the backbone (timm's ViT format); its classifier is dropped.
        **kw: :class:`~ltrobust.models.base.LTModel` options: ``head``, ``mean``, ``std``,
            ``cosine_scale``, ``cosine_gamma``.

    Raises:
        ConfigError: timm is not installed, or the sizes do not fit together.

    Example::

        model = MODELS.build("vit_b16", num_classes=7, image_size=224)
        tiny = MODELS.build("vit_b16", num_classes=7, image_size=32, width=32, depth=2, patch_size=8)
    """
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise ConfigError(f"model vit_b16 needs timm, which is not installed: {install_hint('vit')}.") from None
    embed_dim = resolve_width("vit_b16", width, 768)
    depth = 12 if depth == -1 else depth
    image_size = 224 if image_size is None else image_size
    num_heads = max(1, embed_dim // 64)
    if depth < 1 or embed_dim % num_heads != 0:
        raise ConfigError(f"vit_b16: depth={depth} must be >= 1 and width={embed_dim} a multiple of its "
                          f"{num_heads} heads (one per 64 channels), e.g. width=768, 384, 192 or <= 127.")
    if patch_size < 1 or image_size % patch_size != 0:
        raise ConfigError(f"vit_b16: image_size={image_size} must be a multiple of patch_size={patch_size}: "
                          "resize the data (data.image_size=224) or pick another patch_size.")
    backbone = VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_channels,
                                 num_classes=0, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    if pretrained:
        load_pretrained_vit(backbone, pretrained)
    return LTModel(backbone, embed_dim, num_classes, in_channels=in_channels, global_pool=False, **kw)


def load_pretrained_vit(backbone: Any, path: str) -> None:
    """Load a local ViT checkpoint into ``backbone`` with timm's loader (no download).

    ``.npz`` files (the original JAX checkpoints) go through timm's ``_load_weights``; other files through
    ``timm.models.load_state_dict`` (``weights_only``) and ``checkpoint_filter_fn``, which resamples the
    positional embeddings to this model's grid. The checkpoint's classifier (``head.*``) is dropped; any
    other missing or unexpected key is an error naming it.
    """
    from pathlib import Path

    from timm.models import load_state_dict
    from timm.models.vision_transformer import _load_weights, checkpoint_filter_fn

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.pretrained={path} does not exist: give a local ViT-B/16 checkpoint file "
                          "(ltrobust never downloads weights).")
    if file.suffix == ".npz":
        _load_weights(backbone, str(file))
        return
    try:
        state = load_state_dict(str(file), weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file gets the same one-line error
        raise ConfigError(f"model.pretrained={path} could not be read as a checkpoint: {exc}") from None
    state = {k: v for k, v in checkpoint_filter_fn(state, backbone).items() if not k.startswith("head.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"model.pretrained={path} does not fit this ViT (missing {list(missing)[:4]}, unexpected "
                          f"{list(unexpected)[:4]}): use a ViT-B/16 checkpoint with model.width / depth at their "
                          "defaults.")
