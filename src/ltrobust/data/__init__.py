"""Long-tailed data sets: profiles, on-disk formats, :func:`build_data` and the device loader.

Importing this package registers the data sets in :data:`ltrobust.registry.DATASETS`
(``digits-lt``, ``cifar10-lt``, ``cifar100-lt``, ``tinyimagenet-lt``, ``imagenet-lt``, ``dermamnist``, and the
other long-tailed 2D MedMNIST sets of :mod:`.medmnist_sets`: ``organamnist``, ``bloodmnist``, ``pathmnist``, ...).
"""

from .augment import random_crop, random_flip
from .loader import DeviceLoader, eval_loader, train_loader
from .lt import (SPECS, DatasetSpec, LTData, balanced_resample, build_data, data_info, get_spec, resample_gamma,
                 resize_uint8)
from . import medmnist_sets  # noqa: F401,E402 (registers organamnist, bloodmnist, pathmnist, ...)
from .profiles import (balanced_order, balanced_resample_indices, class_counts, class_groups, class_orders,
                       select_lt_indices)
from .splits import ArraySplit, StreamSplit

__all__ = [
    "ArraySplit", "DatasetSpec", "DeviceLoader", "LTData", "SPECS", "StreamSplit", "balanced_order",
    "balanced_resample", "balanced_resample_indices", "build_data", "class_counts", "class_groups",
    "class_orders", "data_info", "eval_loader", "get_spec", "random_crop", "random_flip", "resample_gamma",
    "resize_uint8", "select_lt_indices", "train_loader",
]
