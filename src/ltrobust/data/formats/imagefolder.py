"""Image-folder tree: ``train/<class>/*.jpg|png``, ``test/<class>/...`` (optionally ``val/<class>/``).

Classes are the sub-folders of ``train/`` sorted alphabetically (torchvision ImageFolder's rule; for
CIFAR-10 / CIFAR-100 this is the official label order), files within a class sorted by name. Images
are decoded with PIL once and cached as ``.npz`` (see :func:`~.base.decode_images`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from .base import RawSplit, cache_dirs_for, decode_images, list_images

LAYOUT = "  train/<class>/*.jpg|png   (one sub-folder per class)\n  test/<class>/*.jpg|png"


def is_image_folder(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def read_image_folder(root: Path, mode: str = "RGB") -> tuple[dict[str, RawSplit], list[str]]:
    """Read ``train`` / ``test`` (and ``val`` if present) of an image-folder tree.

    Returns:
        ({"train": RawSplit, "test": RawSplit[, "val": RawSplit]}, class names).
    """
    root = Path(root)
    train_dir = root / "train"
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{train_dir} holds no class sub-folders. Expected layout:\n{LAYOUT}")
    splits = {}
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise DataError(f"{folder} has class folders {extra[:5]} that train/ lacks: every split must use "
                            "the class names of train/.")
        paths, labels = [], []
        for c, name in enumerate(classes):
            files = list_images(folder / name) if (folder / name).is_dir() else []
            if not files and split == "train":
                raise DataError(f"class folder {folder / name} holds no images (.jpg, .png, ...).")
            paths += files
            labels += [c] * len(files)
        if not paths:
            raise DataError(f"{folder} holds no images. Expected layout:\n{LAYOUT}")
        images = decode_images(paths, mode, f"imagefolder-{split}-{mode}", cache_dirs_for(root), root)
        splits[split] = RawSplit(np.array(labels, dtype=np.int64), images)
    return splits, classes
