"""ImageNet-LT (Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019).

The split files ``ImageNet_LT_train.txt`` (115,846 images, 1,280 to 5 per class), ``ImageNet_LT_val.txt``
(20 per class) and ``ImageNet_LT_test.txt`` (50 per class) list ``<relative path> <label>`` per line
(https://github.com/zhmiao/OpenLongTailRecognition-OLTR). Paths are relative to ``data_dir``; the
lists sit in ``data_dir`` or ``data_dir/ImageNet_LT/``. The set is already long-tailed: no further
selection. Images are not loaded here: the splits are streamed (decoded and resized per batch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from .base import RawData, RawSplit, require_dir

LAYOUT = ("  ImageNet_LT_train.txt, ImageNet_LT_val.txt, ImageNet_LT_test.txt  (in data_dir or data_dir/ImageNet_LT/)\n"
          "  the ImageNet images at the relative paths those lists name, e.g. train/n01440764/n01440764_10026.JPEG")
HOW = ("Get the lists from https://github.com/zhmiao/OpenLongTailRecognition-OLTR and the images from "
       "https://image-net.org (ILSVRC2012, val images sorted into val/<wnid>/ as the lists expect).")


def _find_list(root: Path, split: str) -> Path:
    for folder in (root, root / "ImageNet_LT"):
        f = folder / f"ImageNet_LT_{split}.txt"
        if f.is_file():
            return f
    raise DataError(f"imagenet-lt: ImageNet_LT_{split}.txt is missing from {root} (and {root / 'ImageNet_LT'}). "
                    f"Expected layout:\n{LAYOUT}\n{HOW}")


def read_list(path: Path, root: Path) -> tuple[list[str], np.ndarray]:
    """Parse one ``<path> <label>`` list into absolute paths and int64 labels."""
    paths, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path} line {n}: expected '<relative path> <label>', got {line!r}.")
        paths.append(str(root / parts[0]))
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"{path} lists no images.")
    return paths, np.array(labels, dtype=np.int64)


def read_imagenet_lt(cfg: DataConfig) -> RawData:
    """Read the three lists; check that the first image of each exists."""
    root = require_dir(cfg.data_dir, "imagenet-lt", LAYOUT, HOW)
    splits = {}
    for split in ("train", "val", "test"):
        paths, labels = read_list(_find_list(root, split), root)
        if not Path(paths[0]).is_file():
            raise DataError(f"imagenet-lt: image {paths[0]} (first entry of ImageNet_LT_{split}.txt) does not "
                            f"exist: the list paths must be relative to data_dir={root}. {HOW}")
        splits[split] = RawSplit(labels, paths=paths)
    num_classes = int(splits["train"].labels.max()) + 1
    names = [str(c) for c in range(num_classes)]
    for p, y in zip(splits["train"].paths, splits["train"].labels):  # the wnid folder of each class
        names[y] = Path(p).parent.name
    return RawData(train=splits["train"], val=splits["val"], test=splits["test"], class_names=names,
                   source={"format": "imagenet-lt-lists", "path": str(root)})
