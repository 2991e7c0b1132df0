"""Models: an :class:`LTModel` (normalise -> backbone -> global pool -> head) per architecture.

Importing this package registers every architecture in :data:`ltrobust.registry.MODELS`:
``resnet18``, ``resnet34``, ``preact_resnet18``, ``wideresnet`` (``wrn34_10``, ``wrn28_10``),
``resnet50``, ``vit_b16`` (needs timm), ``smallcnn`` and ``mlp``. See ``docs/models.md``.

Example::

    from ltrobust.registry import MODELS
    model = MODELS.build("resnet18", num_classes=10, head="cosine", mean=mean, std=std)
"""

from . import preact_resnet, resnet, small, torchvision_models, vit, wideresnet
from .base import LTModel, Normalize, build_model, replace_head
from .heads import CosineHead, LinearHead, make_head

__all__ = [
    "CosineHead",
    "LTModel",
    "LinearHead",
    "Normalize",
    "build_model",
    "make_head",
    "preact_resnet",
    "replace_head",
    "resnet",
    "small",
    "torchvision_models",
    "vit",
    "wideresnet",
]
