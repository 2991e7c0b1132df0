"""Image-folder tree: ``train/<class>/*.jpg|png``, ``test/<class>/...`` (optionally ``val/<class>/``).

Classes are the sub-folders of ``train/`` sorted alphabetically (torchvision ImageFolder's rule; for
CIFAR-10 / CIFAR-100 this is the official label order), files within a class sorted by name. Images
are decoded with PIL once and cached as ``.npz`` (see :func:`~.base.decode_images`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from .base import RawData, RawSplit, cache_dirs_for, decode_images, list_images, require_dir

LAYOUT = "  train/<class>/*.jpg|png   (one sub-folder per class)\n  test/<class>/*.jpg|png"


def is_image_folder(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def read_image_folder(root: Path, mode: str = "RGB", size: int | None = None,
                      require_train: bool = True) -> tuple[dict[str, RawSplit], list[str]]:
    """Read ``train`` / ``test`` (and ``val`` if present) of an image-folder tree.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        mode: PIL mode, ``RGB`` or ``L``.
        size: resize every image (shorter side, then centre crop) to ``size`` x ``size``; ``None``: every
            image of a split must share one size.
        require_train: ``False``: ``train/`` may be absent (its split is then empty, the classes are the
            sub-folders of ``test/``).

    Returns:
        ({"train": RawSplit, "test": RawSplit[, "val": RawSplit]}, class names).
    """
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir() and require_train:
        raise DataError(f"{root} has no train/ folder. Expected layout:\n{LAYOUT}")
    if not (root / "test").is_dir():
        raise DataError(f"{root} has no test/ folder. Expected layout:\n{LAYOUT}")
    class_dir = train_dir if train_dir.is_dir() else root / "test"
    classes = sorted(p.name for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{class_dir} holds no class sub-folders. Expected layout:\n{LAYOUT}")
    splits = {}
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes
                       and not p.name.startswith("."))
        if extra:
            raise DataError(f"{folder} has class folders {extra[:5]} that {class_dir.name}/ lacks: every split must "
                            f"use the class names of {class_dir.name}/.")
        paths, labels = [], []
        for c, name in enumerate(classes):
            files = list_images(folder / name) if (folder / name).is_dir() else []
            if not files and split == "train":
                raise DataError(f"class folder {folder / name} holds no images (.jpg, .png, ...).")
            paths += files
            labels += [c] * len(files)
        if not paths:
            raise DataError(f"{folder} holds no images. Expected layout:\n{LAYOUT}")
        cache = f"imagefolder-{split}-{mode}" + (f"-{size}" if size else "")
        images = decode_images(paths, mode, cache, cache_dirs_for(root), root, size=size)
        splits[split] = RawSplit(np.array(labels, dtype=np.int64), images)
    return splits, classes


OWN_LAYOUT = ("  test/<class>/*.jpg|png    (required; one sub-folder per class, any image size)\n"
              "  train/<class>/*.jpg|png   (optional: its images per class give the class counts)\n"
              "  val/<class>/*.jpg|png     (optional)")


def read_own_folder(cfg: DataConfig) -> RawData:
    """``dataset=imagefolder``: the user's own data, ``test/<class>/`` and optionally ``train/``, ``val/``.

    Images keep their size when all of a split share it, else ``image_size=N`` resizes them (shorter side,
    then centre crop). A missing ``train/`` or ``val/`` is an empty split.
    """
    root = require_dir(cfg.data_dir, "imagefolder", OWN_LAYOUT,
                       "Give class_counts= (a list or a JSON file) when there is no train/ folder.")
    size = cfg.image_size if cfg.image_size > 0 else None
    if not (root / "train").is_dir() and not cfg.class_counts:
        raise DataError(f"{root} has no train/ folder, so the training images per class (head / body / tail) are "
                        "unknown: give class_counts=n_0,n_1,... (one per test/ class folder, in name order) or "
                        "class_counts=counts.json.")
    try:
        splits, classes = read_image_folder(root, "RGB", size=size, require_train=False)
    except DataError as exc:
        if size is None and "one size" in str(exc):
            raise DataError(f"{exc} Set image_size=N to resize every image (shorter side to N, centre crop).") from None
        raise
    test = splits["test"]
    empty = RawSplit(np.zeros(0, np.int64), np.zeros((0,) + test.images.shape[1:], np.uint8))
    return RawData(train=splits.get("train", empty), test=test, class_names=classes, val=splits.get("val", empty),
                   source={"format": "imagefolder", "path": str(root)})
