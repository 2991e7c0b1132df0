"""Tiny-ImageNet (``tiny-imagenet-200``, 64x64, 200 classes, 500 training images per class).

Layout (the official zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip, unpacked)::

    tiny-imagenet-200/wnids.txt                       200 WordNet ids
    tiny-imagenet-200/words.txt                       (optional) wnid -> names
    tiny-imagenet-200/train/<wnid>/images/*.JPEG      500 per class
    tiny-imagenet-200/val/images/val_<i>.JPEG         10,000 images
    tiny-imagenet-200/val/val_annotations.txt         val_<i>.JPEG <tab> wnid <tab> box

Class index = position of the wnid in the *sorted* list of ``wnids.txt`` (torchvision ImageFolder's
rule, which the long-tailed Tiny-ImageNet code bases use on ``train/``). Training files are sorted by
name within a class; the official val split (50 per class, order of ``val_annotations.txt``) is the
test set. Some files are greyscale JPEGs: every image is converted to RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from .base import RawData, RawSplit, cache_dirs_for, decode_images, list_images, require_dir

LAYOUT = ("  tiny-imagenet-200/wnids.txt\n  tiny-imagenet-200/train/<wnid>/images/*.JPEG\n"
          "  tiny-imagenet-200/val/images/*.JPEG and val/val_annotations.txt")
HOW = ("Download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and pass "
       "data_dir=<folder>/tiny-imagenet-200 (or its parent).")


def read_tinyimagenet(cfg: DataConfig) -> RawData:
    """Read train and the official val split (used as the test set) as uint8 (N, 64, 64, 3)."""
    root = require_dir(cfg.data_dir, "tinyimagenet-lt", LAYOUT, HOW)
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    for need in ("wnids.txt", "train", "val/val_annotations.txt", "val/images"):
        if not (root / need).exists():
            raise DataError(f"tinyimagenet-lt: {root / need} is missing. Expected layout:\n{LAYOUT}\n{HOW}")
    wnids = sorted(w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip())
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for c, w in enumerate(wnids):
        folder = root / "train" / w / "images"
        files = list_images(folder) if folder.is_dir() else []
        if not files:
            raise DataError(f"tinyimagenet-lt: no training images in {folder}. Expected layout:\n{LAYOUT}")
        train_paths += files
        train_labels += [c] * len(files)
    test_paths, test_labels = [], []
    ann = root / "val" / "val_annotations.txt"
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"{ann} line {n}: expected '<file> <wnid> ...' with a wnid of wnids.txt, got {line!r}.")
        test_paths.append(root / "val" / "images" / parts[0])
        test_labels.append(index[parts[1]])
    caches = cache_dirs_for(root)
    train = RawSplit(np.array(train_labels), decode_images(train_paths, "RGB", "tinyimagenet-train", caches, root))
    test = RawSplit(np.array(test_labels), decode_images(test_paths, "RGB", "tinyimagenet-val", caches, root))
    return RawData(train=train, test=test, class_names=_names(root, wnids),
                   source={"format": "tiny-imagenet-200", "path": str(root), "wnids": wnids})


def _names(root: Path, wnids: list[str]) -> list[str]:
    """Short human names from ``words.txt`` (first synonym) when present, else the wnids."""
    words = root / "words.txt"
    names = {}
    if words.is_file():
        for line in words.read_text(errors="replace").splitlines():
            if "\t" in line:
                w, text = line.split("\t", 1)
                names[w.strip()] = text.split(",")[0].strip()
    return [names.get(w, w) for w in wnids]
