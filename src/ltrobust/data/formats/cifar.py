"""CIFAR-10 / CIFAR-100: the official python pickles (through torchvision) or an image-folder tree.

``data_dir`` is searched in this order:

1. the official python release: ``<data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch,
   batches.meta}`` (CIFAR-100: ``<data_dir>/cifar-100-python/{train, test, meta}``), read by
   ``torchvision.datasets.CIFAR10 / CIFAR100``; ``data_dir`` may also be that folder itself;
2. an image-folder tree ``<data_dir>/train/<class>/*.png``, ``<data_dir>/test/<class>/...``;
3. with ``download=true``, torchvision downloads the official release into ``data_dir``.

Files that differ from the official release (checked by torchvision's md5 list) are still read, with
a warning: numbers measured on them are not comparable to published ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...config import DataConfig
from ...errors import DataError
from .base import RawData, RawSplit
from .imagefolder import LAYOUT as FOLDER_LAYOUT
from .imagefolder import is_image_folder, read_image_folder

log = logging.getLogger(__name__)

_FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
_FILES = {10: "data_batch_1..5, test_batch, batches.meta", 100: "train, test, meta"}


def _torchvision_class(num_classes: int, verify: bool):
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import check_integrity

    base = CIFAR10 if num_classes == 10 else CIFAR100

    class _Reader(base):  # type: ignore[misc, valid-type]
        """torchvision's reader; unless ``verify``, files only need to exist (md5 checked apart)."""

        def _check_integrity(self) -> bool:
            if verify:
                return super()._check_integrity()
            return all((Path(self.root) / self.base_folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            import pickle

            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if verify and not check_integrity(str(path), self.meta["md5"]):
                raise RuntimeError(f"{path} is missing or corrupted")
            with open(path, "rb") as fh:
                self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return _Reader


def _is_official(ds) -> bool:
    from torchvision.datasets.utils import check_integrity

    files = ds.train_list + ds.test_list + [(ds.meta["filename"], ds.meta["md5"])]
    return all(check_integrity(str(Path(ds.root) / ds.base_folder / f), md5) for f, md5 in files)


def layout_text(num_classes: int) -> str:
    folder = _FOLDERS[num_classes]
    return (f"  {folder}/{{{_FILES[num_classes]}}}   (the official python release), or\n{FOLDER_LAYOUT}")


def read_cifar(cfg: DataConfig, num_classes: int) -> RawData:
    """Read CIFAR-10 (``num_classes=10``) or CIFAR-100 as uint8 (N, 32, 32, 3)."""
    name = f"cifar{num_classes}-lt"
    folder = _FOLDERS[num_classes]
    how = (f"Get it with data.download=true (torchvision fetches the official python release into data_dir), "
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
    what = "does not exist" if not root.is_dir() else f"holds neither {folder}/ nor train/ + test/"
    raise DataError(f"{name}: data folder {root} {what}. Expected layout under data_dir:\n"
                    f"{layout_text(num_classes)}\n{how}")


def _read_pickles(root: Path, num_classes: int, download: bool) -> RawData:
    folder = root / _FOLDERS[num_classes]
    if download:
        try:
            _torchvision_class(num_classes, verify=True)(str(root), train=True, download=True)
        except Exception as exc:  # network errors, disk full
            raise DataError(f"downloading CIFAR-{num_classes} into {root} failed: {exc}. Download "
                            f"cifar-{num_classes}-python.tar.gz by hand and unpack it into {root}.") from None
    reader = _torchvision_class(num_classes, verify=False)
    try:
        train = reader(str(root), train=True, download=False)
        test = reader(str(root), train=False, download=False)
    except RuntimeError:
        raise DataError(f"{folder} is incomplete: expected the files {_FILES[num_classes]} of the official "
                        f"python release. Unpack cifar-{num_classes}-python.tar.gz again or pass "
                        "data.download=true.") from None
    except Exception as exc:  # truncated / foreign pickles
        raise DataError(f"cannot read the CIFAR-{num_classes} pickles in {folder}: {exc}. Unpack "
                        f"cifar-{num_classes}-python.tar.gz again or pass data.download=true.") from None
    if not _is_official(train):
        log.warning("the files in %s differ from the official CIFAR-%d release (md5): numbers are not "
                    "comparable to published ones", folder, num_classes)
    return RawData(
        train=RawSplit(train.targets, train.data),
        test=RawSplit(test.targets, test.data),
        class_names=list(train.classes),
        source={"format": "cifar-pickle", "path": str(folder)},
    )
