"""MedMNIST v2 (Yang et al., Scientific Data 2023, https://medmnist.com) 2D sets as the ``medmnist`` package
stores them: DermaMNIST here; OrganAMNIST, BloodMNIST, PathMNIST and the others in
:mod:`ltrobust.data.medmnist_sets`.

One ``.npz`` per set with the keys ``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images``, ``test_labels``; images uint8 (N, H, W, 3) or, for the greyscale sets, (N, H, W); labels
(N, 1). Files: ``<name>.npz`` (28x28) and the MedMNIST+ sizes ``<name>_64.npz``, ``_128``, ``_224``.
``data_dir`` is the folder holding them (or the ``.npz`` itself). DermaMNIST is naturally imbalanced
(7,007 training images, 4,693 to 80 per class, IR 58.7) and is used as is, with its own val split.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from .base import RawData, RawSplit

DERMAMNIST_CLASSES = [
    "actinic keratoses and intraepithelial carcinoma",
    "basal cell carcinoma",
    "benign keratosis-like lesions",
    "dermatofibroma",
    "melanoma",
    "melanocytic nevi",
    "vascular lesions",
]
KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def layout(name: str = "dermamnist") -> str:
    return f"  {name}.npz  (or {name}_64.npz / _128 / _224) with keys " + ", ".join(KEYS)


def how(name: str = "dermamnist") -> str:
    return ("Download it from https://medmnist.com (Zenodo links there; or `pip install medmnist` and "
            f"`python -m medmnist download`) and pass data_dir=<folder holding {name}.npz>.")


LAYOUT = layout()
HOW = how()


def npz_path(cfg: DataConfig, name: str = "dermamnist") -> Path:
    """The npz to read: ``<name>_<image_size>.npz`` when asked for and present, else ``<name>.npz``."""
    if cfg.data_dir is None:
        raise DataError(f"{name} needs data_dir=PATH, the folder holding\n{layout(name)}\n{how(name)}")
    root = Path(cfg.data_dir).expanduser()
    if root.suffix == ".npz":
        if not root.is_file():
            raise DataError(f"{name}: file {root} does not exist. {how(name)}")
        return root
    if not root.is_dir():
        raise DataError(f"{name}: data folder {root} does not exist. Expected in it:\n{layout(name)}\n{how(name)}")
    if cfg.image_size > 0 and (root / f"{name}_{cfg.image_size}.npz").is_file():
        return root / f"{name}_{cfg.image_size}.npz"
    if (root / f"{name}.npz").is_file():
        return root / f"{name}.npz"
    raise DataError(f"{name}: {root / (name + '.npz')} does not exist. Expected in {root}:\n{layout(name)}\n{how(name)}")


def read_medmnist(cfg: DataConfig, name: str = "dermamnist") -> RawData:
    """Read a MedMNIST npz as uint8 (N, H, W, C) train / val / test."""
    path = npz_path(cfg, name)
    try:
        with np.load(path) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path} lacks the keys {missing}: expected a MedMNIST npz with {', '.join(KEYS)}.")
            arrays = {k: z[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}. Download it again. {how(name)}") from None
    splits = {}
    for split in ("train", "val", "test"):
        images = arrays[f"{split}_images"]
        if images.ndim == 3:  # greyscale MedMNIST sets store (N, H, W)
            images = images[..., None]
        if images.dtype != np.uint8:
            raise DataError(f"{path}: {split}_images has dtype {images.dtype}, expected uint8.")
        splits[split] = RawSplit(arrays[f"{split}_labels"].reshape(-1), images)
    return RawData(train=splits["train"], val=splits["val"], test=splits["test"],
                   class_names=list(DERMAMNIST_CLASSES) if name == "dermamnist" else [],
                   source={"format": "medmnist-npz", "path": str(path)})
