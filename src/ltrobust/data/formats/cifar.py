"""CIFAR-10 / CIFAR-100: the official python pickles (read by a restricted unpickler) or an image-folder tree.

``data_dir`` is searched in this order:

1. the official python release: ``<data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch,
   batches.meta}`` (CIFAR-100: ``<data_dir>/cifar-100-python/{train, test, meta}``); ``data_dir`` may
   also be that folder itself;
2. an image-folder tree ``<data_dir>/train/<class>/*.png``, ``<data_dir>/test/<class>/...``;
3. with ``download=true``, the official release is downloaded into ``data_dir`` (torchvision's download
   helper, checked against the official md5 sums) and read as in 1.

The release is a set of pickles, and a pickle can ask to call any Python function while it loads. They
are therefore read by :class:`CifarUnpickler`, which builds only what the official files hold (dicts,
lists, strings / bytes, numbers and numpy arrays) and refuses any other global by name: a tampered file
gives a :class:`~ltrobust.errors.DataError` naming it, and nothing runs. Files that differ from the
official release (md5) are still read, with a warning: numbers measured on them are not comparable to
published ones.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from .base import RawData, RawSplit
from .imagefolder import LAYOUT as FOLDER_LAYOUT
from .imagefolder import is_image_folder, read_image_folder

log = logging.getLogger(__name__)

_FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
_FILES = {10: "data_batch_1..5, test_batch, batches.meta", 100: "train, test, meta"}
_TRAIN = {10: [f"data_batch_{i}" for i in range(1, 6)], 100: ["train"]}
_TEST = {10: ["test_batch"], 100: ["test"]}
_META = {10: ("batches.meta", "label_names"), 100: ("meta", "fine_label_names")}
_LABELS = {10: "labels", 100: "fine_labels"}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that :class:`CifarUnpickler` does not admit (its ``module.name``)."""


class CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR files contain; any other global is refused.

    Containers, strings, bytes and numbers need no global at all; a numpy array needs the three below
    (numpy 1 and numpy 2 spell the module differently). ``_codecs.encode`` is how protocol-2 pickles
    written by Python 3 store ``bytes``; it only turns a string into bytes.
    """

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """One file of the official release as a dict with ``str`` keys (the files were written by Python 2).

    Raises:
        DataError: the file asks for anything but dicts, lists, strings and numpy arrays (named, and
            nothing runs), or it is truncated / not a pickle of a dict.
    """
    how = "Delete it and unpack the official archive from https://www.cs.toronto.edu/~kriz/cifar.html again."
    try:
        with open(path, "rb") as fh:
            obj = CifarUnpickler(fh, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise DataError(f"CIFAR file {path} was refused: it asks to build Python objects ({exc}), which could "
                        f"run code, and the official files hold only dicts, lists, strings and numpy arrays. "
                        f"{how}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as exc:
        raise DataError(f"cannot read the CIFAR file {path} (truncated or not a CIFAR pickle: {exc}). {how}") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {path} holds a {type(obj).__name__}, not the dict of the official release. {how}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int64 (N,))`` of one batch file, checked."""
    d = load_cifar_pickle(path)
    data, labels = d.get("data"), d.get(label_key)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR file {path}: 'data' is {what}, not uint8 (N, 3072) as in the official release.")
    labels = np.asarray(labels if isinstance(labels, (list, np.ndarray)) else [], dtype=np.int64)
    if len(labels) != len(data):
        raise DataError(f"CIFAR file {path}: {len(labels)} labels ('{label_key}') for {len(data)} images.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _split(folder: Path, names: list[str], label_key: str) -> RawSplit:
    parts = [_batch(folder / n, label_key) for n in names]
    return RawSplit(np.concatenate([p[1] for p in parts]), np.ascontiguousarray(np.concatenate([p[0] for p in parts])))


def _official(num_classes: int) -> Any:
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if num_classes == 10 else CIFAR100


def _is_official(folder: Path, num_classes: int) -> bool:
    """Every file matches the md5 of the official release (torchvision's list)."""
    from torchvision.datasets.utils import check_integrity

    ref = _official(num_classes)
    files = ref.train_list + ref.test_list + [(ref.meta["filename"], ref.meta["md5"])]
    return all(check_integrity(str(folder / f), md5) for f, md5 in files)


def layout_text(num_classes: int) -> str:
    folder = _FOLDERS[num_classes]
    return (f"  {folder}/{{{_FILES[num_classes]}}}   (the official python release), or\n{FOLDER_LAYOUT}")


def read_cifar(cfg: DataConfig, num_classes: int) -> RawData:
    """Read CIFAR-10 (``num_classes=10``) or CIFAR-100 as uint8 (N, 32, 32, 3)."""
    name = f"cifar{num_classes}-lt"
    folder = _FOLDERS[num_classes]
    how = (f"Get it with data.download=true (the official python release is fetched into data_dir), "
           f"or unpack cifar-{num_classes}-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
           "into data_dir.")
    if cfg.data_dir is None:
        raise DataError(f"{name} needs data_dir=PATH, a folder holding\n{layout_text(num_classes)}\n{how}")
    root = Path(cfg.data_dir).expanduser()
    if root.name == folder:
        root = root.parent
    if (root / folder).is_dir():
        return _read_pickles(root, num_classes, cfg.download)
    if is_image_folder(root):
        splits, classes = read_image_folder(root, "RGB")
        return RawData(train=splits["train"], test=splits["test"], val=None, class_names=classes,
                       source={"format": "image-folder", "path": str(root)})
    if cfg.download:
        return _read_pickles(root, num_classes, True)
    what = (("is a file, not a folder" if root.exists() else "does not exist") if not root.is_dir()
            else f"holds neither {folder}/ nor train/ + test/")
    raise DataError(f"{name}: data folder {root} {what}. Expected layout under data_dir:\n"
                    f"{layout_text(num_classes)}\n{how}")


def _download(root: Path, num_classes: int) -> None:
    """Fetch and unpack the official archive (md5-checked) unless every file is already there and official."""
    from torchvision.datasets.utils import download_and_extract_archive

    if _is_official(root / _FOLDERS[num_classes], num_classes):
        return
    ref = _official(num_classes)
    try:
        download_and_extract_archive(ref.url, str(root), filename=ref.filename, md5=ref.tgz_md5)
    except Exception as exc:  # network errors, disk full, a bad archive
        raise DataError(f"downloading CIFAR-{num_classes} into {root} failed: {exc}. Download "
                        f"cifar-{num_classes}-python.tar.gz by hand and unpack it into {root}.") from None


def _read_pickles(root: Path, num_classes: int, download: bool) -> RawData:
    folder = root / _FOLDERS[num_classes]
    if download:
        _download(root, num_classes)
    meta_file, names_key = _META[num_classes]
    missing = [n for n in _TRAIN[num_classes] + _TEST[num_classes] + [meta_file] if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder} is incomplete: expected the files {_FILES[num_classes]} of the official "
                        f"python release, missing {', '.join(missing)}. Unpack cifar-{num_classes}-python.tar.gz "
                        "again or pass data.download=true.")
    label_key = _LABELS[num_classes]
    train = _split(folder, _TRAIN[num_classes], label_key)
    test = _split(folder, _TEST[num_classes], label_key)
    names = load_cifar_pickle(folder / meta_file).get(names_key)
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"CIFAR file {folder / meta_file}: no list of class names under '{names_key}'.")
    if not _is_official(folder, num_classes):
        log.warning("the files in %s differ from the official CIFAR-%d release (md5): numbers are not "
                    "comparable to published ones", folder, num_classes)
    return RawData(train=train, test=test,
                   class_names=[n.decode("latin1") if isinstance(n, bytes) else n for n in names],
                   source={"format": "cifar-pickle", "path": str(folder)})
