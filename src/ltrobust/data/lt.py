"""Registered long-tailed data sets and :func:`build_data`, the one entry point of the data stage.

Example::

    from ltrobust.config import DataConfig
    from ltrobust.data import build_data, DeviceLoader

    data = build_data(DataConfig(dataset="cifar10-lt", data_dir="data", imbalance=50))
    data.class_counts        # [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    loader = DeviceLoader(data.train, 128, shuffle=True, augment="crop_flip", padding=data.crop_padding,
                          flip=data.flip, seed=0)

Rules (SPEC 1):

- training set: exactly the LT selection of :func:`~.profiles.select_lt_indices` (LDAM-DRW procedure)
  with ``n_max`` = the smallest class of the source's training split (5000 for CIFAR-10);
- validation (never the test set): ``val_per_class`` images per class taken from the same per-class
  shuffled order right after the selected ones (images the LT subset did not select). A class with too
  few spare images (class 0 at ``n_0 = n_max`` has none) is topped up with its last selected images:
  ``val_overlap`` in the manifest counts them and a warning is logged; ``val_from=holdout`` removes them
  from the training set instead. Data sets with their own val split (DermaMNIST, ImageNet-LT) use it;
- test: the full test set, or with ``test_profile=lt`` the same profile and seed applied to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .formats import read_cifar, read_digits, read_imagenet_lt, read_medmnist, read_own_folder, read_tinyimagenet
from .formats.base import RawData, RawSplit
from .profiles import (balanced_order, balanced_resample_indices, class_counts, class_groups, class_orders,
                       imbalance_ratio, select_lt_indices)
from .splits import ArraySplit, StreamSplit

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  #: warnings already given in this process

Split = ArraySplit | StreamSplit

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: its reader and metadata. Calling it builds the data set."""

    name: str
    reader: Callable[[DataConfig], RawData]
    num_classes: int  #: 0: read from the data (``imagefolder``)
    n_max: int  #: largest class of the official training split (the LT profile's n_max)
    channels: int
    image_size: int  #: native side length in pixels
    val_per_class: int  #: default validation images per class (-1: all of the data set's own val split)
    crop_padding: int  #: default random-crop zero padding at the native size
    flip: bool  #: whether horizontal flips preserve the label (not for digits)
    mean: tuple[float, ...]  #: per-channel mean for the model's normalisation
    std: tuple[float, ...]
    natural: bool = False  #: already long-tailed with its own val split: used as is
    streamed: bool = False  #: too large for memory: StreamSplit
    summary: str = ""

    def __call__(self, cfg: DataConfig | None = None, device: torch.device | str = "cpu", **kw: Any) -> "LTData":
        """``build_data`` for this data set; ``kw`` overrides DataConfig fields."""
        return build_data(replace(cfg or DataConfig(), dataset=self.name, **kw), device)


SPECS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    SPECS[spec.name] = spec
    return DATASETS.register(spec.name)(spec)


register(DatasetSpec("digits-lt", read_digits, 10, 124, 1, 8, 10, 1, False, (0.3061,), (0.3765,),
                     summary="scikit-learn 8x8 digits, fixed 50-per-class test split, no download"))
register(DatasetSpec("cifar10-lt", lambda cfg: read_cifar(cfg, 10), 10, 5000, 3, 32, 100, 4, True,
                     CIFAR10_MEAN, CIFAR10_STD, summary="CIFAR-10 pickles or image folder"))
register(DatasetSpec("cifar100-lt", lambda cfg: read_cifar(cfg, 100), 100, 500, 3, 32, 10, 4, True,
                     CIFAR100_MEAN, CIFAR100_STD, summary="CIFAR-100 pickles or image folder"))
register(DatasetSpec("tinyimagenet-lt", read_tinyimagenet, 200, 500, 3, 64, 10, 4, True, TINY_MEAN, TINY_STD,
                     summary="tiny-imagenet-200; its val split is the test set"))
register(DatasetSpec("imagenet-lt", read_imagenet_lt, 1000, 1280, 3, 224, -1, 0, True, IMAGENET_MEAN,
                     IMAGENET_STD, natural=True, streamed=True, summary="ImageNet-LT lists, streamed"))
register(DatasetSpec("dermamnist", read_medmnist, 7, 4693, 3, 28, -1, 3, True, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                     natural=True, summary="MedMNIST DermaMNIST npz, naturally imbalanced"))
register(DatasetSpec("imagefolder", read_own_folder, 0, 0, 3, 0, -1, 0, True, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                     natural=True, summary="your own data: test/<class>/ (+ optional train/, val/), used as is; "
                                           "class counts from train/ or class_counts="))


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name`` (ConfigError naming close matches)."""
    return SPECS[name] if name in SPECS else DATASETS.get(name)


@dataclass
class LTData:
    """A built long-tailed data set (see :func:`build_data`)."""

    train: Split
    val: Split | None  #: None when val_per_class=0
    test: Split
    class_counts: list[int]  #: training images per class
    class_names: list[str]
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    groups: dict[str, list[int]]  #: head / body / tail, many / medium / few (profiles.class_groups)
    manifest: dict  #: JSON-serialisable record of the selection
    crop_padding: int = 4  #: resolved random-crop padding for DeviceLoader
    flip: bool = True  #: whether DeviceLoader may flip horizontally
    augment: str = "crop_flip"  #: cfg.augment
    config: DataConfig = field(default_factory=DataConfig)

    @property
    def spec(self) -> DatasetSpec:
        return get_spec(self.config.dataset)


@dataclass
class _Selection:
    train: dict[int, np.ndarray]  #: class -> indices into raw.train
    val: dict[int, np.ndarray]  #: class -> indices into raw.train (LT) or raw.val (natural)
    test: np.ndarray  #: indices into raw.test
    n_max: int
    val_overlap: list[int] | None = None
    holdout_removed: list[int] | None = None
    order_by_class: bool = True  #: training images grouped by class (LDAM order) or dataset order


def build_data(cfg: DataConfig, device: torch.device | str = torch.device("cpu")) -> LTData:
    """Build the long-tailed data set that ``cfg`` describes.

    Args:
        cfg: the :class:`~ltrobust.config.DataConfig` (dataset, data_dir, profile, imbalance,
            selection_seed, test_profile, val_per_class, val_from, ...).
        device: where the uint8 image tensors are put (streamed splits stay on the CPU).

    Returns:
        :class:`LTData`. ``manifest["indices"]`` holds the chosen indices (train and val per class,
        into the source's training split or, for DermaMNIST / ImageNet-LT, val into its val split;
        test into its test split) and ``manifest["indices_sha256"]`` their digest.

    Raises:
        DataError: missing / unreadable files (the message names the folder, layout and fix).
        ConfigError: an option that does not apply to the data set.
    """
    spec = get_spec(cfg.dataset)
    if cfg.download and spec.name not in ("cifar10-lt", "cifar100-lt"):
        log.warning("data.download=true only fetches CIFAR-10 / CIFAR-100; %s must be prepared by hand "
                    "(docs/data.md)", cfg.dataset)
    if cfg.class_counts and spec.num_classes:
        raise ConfigError(f"class_counts= applies to dataset=imagefolder; {cfg.dataset} counts its own training "
                          "split (leave class_counts empty).")
    if cfg.indices_file and spec.natural:
        raise ConfigError(f"{cfg.dataset} is naturally long-tailed and used as is: data.indices_file does not apply.")
    # the files named by options are read before any image is decoded, so a typo costs no decoding
    listed = read_indices_file(cfg.indices_file) if cfg.indices_file else None
    given_counts = parse_class_counts(cfg.class_counts) if cfg.class_counts else None
    raw = spec.reader(cfg)
    num_classes = len(raw.class_names) or spec.num_classes
    if spec.num_classes and num_classes != spec.num_classes:
        raise DataError(f"{cfg.dataset} has {spec.num_classes} classes but the data in {cfg.data_dir} has "
                        f"{num_classes} ({', '.join(raw.class_names[:5])}, ...): point data_dir at the right data set.")
    for name, split in (("train", raw.train), ("test", raw.test), ("val", raw.val)):
        if split is not None and len(split) and (split.labels.min() < 0 or split.labels.max() >= num_classes):
            raise DataError(f"{cfg.dataset}: {name} labels outside 0..{num_classes - 1}.")
    _check_test_split(cfg, raw, num_classes)
    sel = _select_natural(cfg, spec, raw) if spec.natural else _select_lt(cfg, spec, raw, num_classes, listed)
    train_idx = np.concatenate([sel.train[c] for c in range(num_classes)])
    if not sel.order_by_class:
        train_idx = np.sort(train_idx)
    val_src = raw.val if spec.natural else raw.train
    val_idx = np.concatenate([sel.val[c] for c in range(num_classes)]) if sel.val else np.zeros(0, np.int64)
    val_idx = val_idx[balanced_order(val_src.labels[val_idx])] if len(val_idx) else val_idx
    size = cfg.image_size if cfg.image_size > 0 else spec.image_size
    make = _stream_split if spec.streamed else _array_split
    train = make(raw.train, train_idx, size, device)
    val = make(val_src, val_idx, size, device) if len(val_idx) else None
    test = make(raw.test, sel.test, size, device)
    counts = [len(sel.train[c]) for c in range(num_classes)]
    if given_counts is not None:
        counts = class_counts_per_class(given_counts, cfg.class_counts, raw.class_names)
    native = raw.train.images.shape[1] if raw.train.images is not None else spec.image_size
    image_size = int(train.images.shape[-1]) if isinstance(train, ArraySplit) else size
    padding = cfg.crop_padding if cfg.crop_padding >= 0 else int(round(spec.crop_padding * image_size / native))
    channels = int(train.images.shape[1]) if isinstance(train, ArraySplit) else spec.channels
    names = list(raw.class_names)
    manifest = _manifest(cfg, spec, raw, sel, counts, val_src, names)
    return LTData(train=train, val=val, test=test, class_counts=counts, class_names=names,
                  num_classes=num_classes, channels=channels, image_size=image_size, mean=tuple(spec.mean),
                  std=tuple(spec.std), groups=class_groups(counts), manifest=manifest, crop_padding=padding,
                  flip=spec.flip, augment=cfg.augment, config=cfg)


def _check_test_split(cfg: DataConfig, raw: RawData, num_classes: int) -> None:
    """The test split must match the training images' size and hold every class (else per-class and
    balanced accuracies are undefined or measured on other inputs than the model was trained on)."""
    where = f" in {cfg.data_dir}" if cfg.data_dir else ""
    if raw.train.images is not None and raw.test.images is not None and len(raw.test):
        a, b = raw.train.images.shape[1:], raw.test.images.shape[1:]
        if a != b:
            raise DataError(f"{cfg.dataset}: the test images{where} are {'x'.join(map(str, b))} (H x W x C) but the "
                            f"training images are {'x'.join(map(str, a))}: use a test split of the same image size "
                            "and channels as the training split.")
    missing = np.flatnonzero(np.bincount(raw.test.labels, minlength=num_classes) == 0)
    if len(missing):
        names = ", ".join(f"{c} ({raw.class_names[c]})" if c < len(raw.class_names) else str(c) for c in missing[:10])
        raise DataError(f"{cfg.dataset}: the test split{where} has no image of class {names}: every class needs "
                        "test images (per-class and balanced accuracies); use the complete test split.")


def _val_per_class(cfg: DataConfig, spec: DatasetSpec) -> int:
    return spec.val_per_class if cfg.val_per_class < 0 else cfg.val_per_class


def _select_lt(cfg: DataConfig, spec: DatasetSpec, raw: RawData, num_classes: int,
               listed: dict[str, np.ndarray | None] | None = None) -> _Selection:
    labels = raw.train.labels
    avail = np.bincount(labels, minlength=num_classes)
    if (avail == 0).any():
        raise DataError(f"{cfg.dataset}: classes {np.where(avail == 0)[0][:10].tolist()} have no training images.")
    n_max = int(avail.min())
    if n_max != spec.n_max:
        log.warning("%s: the smallest class has %d training images, not the official %d: n_max=%d (counts "
                    "differ from the published ones)", cfg.dataset, n_max, spec.n_max, n_max)
    orders = class_orders(labels, cfg.selection_seed)
    if listed is not None:  # a published split: its images in the file's order, then the unselected ones
        check_listed_indices(listed, cfg.indices_file, labels, raw.test.labels, raw.class_names)
        chosen = {c: listed["train"][labels[listed["train"]] == c] for c in range(num_classes)}
        counts = [len(chosen[c]) for c in range(num_classes)]
        orders = {c: np.concatenate([chosen[c], orders[c][~np.isin(orders[c], chosen[c])]]) for c in orders}
    else:
        counts = class_counts(cfg.profile, n_max, num_classes, cfg.imbalance)
    if min(counts) < 1:
        raise ConfigError(f"imbalance={cfg.imbalance:g} with n_max={n_max} leaves class {counts.index(0)} with no "
                          f"training image (n_max / IR < 1): use imbalance <= {n_max}.")
    v = _val_per_class(cfg, spec)
    train, val, overlap, removed = {}, {}, [], []
    for c in range(num_classes):
        order, n = orders[c], counts[c]
        if v > len(order):
            raise DataError(f"val_per_class={v} but class {c} ({raw.class_names[c]}) has only {len(order)} training "
                            "images: lower val_per_class.")
        k = max(0, v - (len(order) - n))  # selected images the validation set needs
        if cfg.val_from == "holdout" and n - k < 1:
            raise DataError(f"val_from=holdout leaves class {c} with no training image ({n} selected, {v} for "
                            "validation): lower val_per_class or use val_from=unselected.")
        val[c] = order[n - k: n - k + v]
        train[c] = order[: n - k] if cfg.val_from == "holdout" else order[:n]
        overlap.append(0 if cfg.val_from == "holdout" else k)
        removed.append(k if cfg.val_from == "holdout" else 0)
    if any(overlap):
        which = ", ".join(f"{c} ({raw.class_names[c]}): {k}" for c, k in enumerate(overlap) if k)
        msg = (f"{cfg.dataset}: too few unselected training images for {v} validation images per class; "
               f"validation images that are also training images, per class: {which} (manifest val_overlap; "
               f"val_from=holdout removes them from training instead)")
        # once per process: a demo or sweep builds the same data set for every run and evaluation
        log.log(logging.DEBUG if msg in _WARNED else logging.WARNING, msg)
        _WARNED.add(msg)
    if listed is not None and listed.get("test") is not None:
        test = listed["test"]
    elif cfg.test_profile == "lt":
        test_avail = np.bincount(raw.test.labels, minlength=num_classes)
        test_counts = class_counts(cfg.profile, int(test_avail.min()), num_classes, cfg.imbalance)
        test = np.sort(select_lt_indices(raw.test.labels, test_counts, cfg.selection_seed))
    else:
        test = np.arange(len(raw.test), dtype=np.int64)
    return _Selection(train, val if v else {}, test, n_max, overlap,
                      removed if cfg.val_from == "holdout" else None)


def read_indices_file(path: str) -> dict[str, np.ndarray | None]:
    """The training (and optional test) indices of a published long-tailed split, checked as far as the file
    alone allows (:func:`check_listed_indices` checks them against the data).

    Accepted forms: a ``.npy`` array or a text file (one index per line, ``#`` comments) of training
    indices; JSON holding a list of training indices, or a mapping with ``train`` (a list, or
    ``{class: list}`` as ltrobust's manifest) and optionally ``test`` (a list); a run's ``manifest.json``
    (its ``indices`` section) works as is. Indices point into the source's full training (test) split.

    Returns:
        ``{"train": int64 (N,), "test": int64 (M,) or None}``.

    Raises:
        DataError: an unreadable file, or indices that are not a non-empty list of distinct integers >= 0.
    """
    file = Path(path).expanduser()
    try:
        if file.suffix == ".npy":
            raw: Any = np.load(file, allow_pickle=False)
        elif file.suffix == ".json":
            raw = json.loads(file.read_text())
        else:
            raw = [line.split("#")[0].strip() for line in file.read_text().splitlines()]
            raw = [int(v) for v in raw if v]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read data.indices_file={path}: {exc}. Give a .json, .npy or text file of "
                        "indices into the training split.") from None
    if isinstance(raw, dict):
        raw = raw.get("indices", raw)
    train_raw, test_raw = (raw.get("train"), raw.get("test")) if isinstance(raw, dict) else (raw, None)
    if train_raw is None:
        raise DataError(f"data.indices_file={path} has no 'train' indices.")
    return {"train": _index_list(train_raw, path, "train"),
            "test": None if test_raw is None else _index_list(test_raw, path, "test")}


def _index_list(value: Any, path: str, part: str) -> np.ndarray:
    """One part (``train`` / ``test``) of an indices file as int64 (N,): a list, or ``{class: list}``."""
    shape = (f"data.indices_file={path}: '{part}' must be a flat list of integer indices (or {{class: list}} as "
             "in a run's manifest.json)")
    if isinstance(value, dict):
        if not all(str(k).lstrip("-").isdigit() for k in value) or not all(isinstance(v, list) for v in value.values()):
            raise DataError(f"{shape}; its keys must be class numbers and its values lists, got keys "
                            f"{list(value)[:4]}.")
        value = [i for k in sorted(value, key=int) for i in value[k]]
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nesting
        arr = np.zeros((0, 0))
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{shape}.")
    arr = arr.astype(np.int64)
    if not len(arr):
        raise DataError(f"data.indices_file={path}: '{part}' lists no index; "
                        + ("list the selected training images." if part == "train" else
                           "list the test images, or leave 'test' out to use the whole test split."))
    if arr.min() < 0:
        raise DataError(f"data.indices_file={path}: '{part}' holds the negative index {int(arr.min())}; indices "
                        "are positions 0, 1, ... in the source's split.")
    values, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"data.indices_file={path} lists {part} index {int(values[counts > 1][0])} "
                        f"{int(counts.max())} times: each image once (duplicates would weigh it more).")
    return arr


def check_listed_indices(listed: dict[str, np.ndarray | None], path: str | None, train_labels: np.ndarray,
                         test_labels: np.ndarray, class_names: list[str]) -> None:
    """The indices of :func:`read_indices_file` against the data: inside its splits, every class present."""
    num_classes = len(class_names) or int(train_labels.max()) + 1
    for part, labels in (("train", train_labels), ("test", test_labels)):
        idx = listed.get(part)
        if idx is None:
            continue
        if idx.max() >= len(labels):
            raise DataError(f"data.indices_file={path}: {part} index {int(idx.max())} is outside 0..{len(labels) - 1} "
                            f"(positions in the source's {'training' if part == 'train' else 'test'} split).")
        missing = np.flatnonzero(np.bincount(labels[idx], minlength=num_classes) == 0)
        if len(missing):
            c = int(missing[0])
            name = f" ({class_names[c]})" if c < len(class_names) else ""
            raise DataError(f"data.indices_file={path} selects no {'training' if part == 'train' else 'test'} image "
                            f"of class {c}{name}: every class needs "
                            + ("at least one." if part == "train" else
                               "test images (per-class and balanced accuracies); list some, or leave 'test' out."))


def _select_natural(cfg: DataConfig, spec: DatasetSpec, raw: RawData) -> _Selection:
    if cfg.profile not in ("exp", "full"):
        raise ConfigError(f"{cfg.dataset} is naturally long-tailed and used as is: profile={cfg.profile} does not "
                          "apply (leave profile at its default).")
    if cfg.test_profile != "full":
        raise ConfigError(f"{cfg.dataset} has its own test split: test_profile={cfg.test_profile} does not apply.")
    if raw.val is None:
        raise DataError(f"{cfg.dataset}: the files hold no validation split.")
    num_classes = spec.num_classes or len(raw.class_names)
    train = {c: np.where(raw.train.labels == c)[0] for c in range(num_classes)}
    v = _val_per_class(cfg, spec)
    val = {c: np.where(raw.val.labels == c)[0] for c in range(num_classes)}
    if v > 0:
        val = {c: idx[:v] for c, idx in val.items()}
    empty = [c for c, idx in train.items() if len(idx) == 0]
    if empty and (len(raw.train) or not cfg.class_counts):  # no train/ at all: class_counts= gives the counts
        raise DataError(f"{cfg.dataset}: classes {empty[:10]} have no training images: the files are incomplete.")
    n_max = max(len(i) for i in train.values())
    return _Selection(train, val if v else {}, np.arange(len(raw.test), dtype=np.int64), n_max,
                      order_by_class=False)


def _array_split(raw: RawSplit, idx: np.ndarray, size: int, device: torch.device | str) -> ArraySplit:
    images = torch.from_numpy(np.ascontiguousarray(raw.images[idx])).permute(0, 3, 1, 2).contiguous()  # (N,C,H,W)
    if size > 0 and images.shape[-1] != size:
        images = resize_uint8(images, size)
    return ArraySplit(images, torch.from_numpy(raw.labels[idx].copy())).to(device)


def _stream_split(raw: RawSplit, idx: np.ndarray, size: int, device: torch.device | str) -> StreamSplit:
    return StreamSplit([raw.paths[i] for i in idx], torch.from_numpy(raw.labels[idx].copy()), image_size=size)


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 (N, C, H, W) to (N, C, size, size), in chunks."""
    out = torch.empty(images.shape[:2] + (size, size), dtype=torch.uint8, device=images.device)
    for s in range(0, len(images), chunk):
        x = images[s: s + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s: s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _manifest(cfg: DataConfig, spec: DatasetSpec, raw: RawData, sel: _Selection, counts: list[int],
              val_src: RawSplit, names: list[str]) -> dict:
    num_classes = len(counts)
    val_counts = [len(sel.val.get(c, ())) for c in range(num_classes)]
    test_counts = np.bincount(raw.test.labels[sel.test], minlength=num_classes).tolist()
    indices = {
        "train": {str(c): sel.train[c].tolist() for c in range(num_classes)},
        "val": {str(c): sel.val[c].tolist() for c in range(num_classes)} if sel.val else {},
        "test": sel.test.tolist(),
    }
    digest = hashlib.sha256(json.dumps(indices, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    m = {
        "dataset": cfg.dataset,
        "source": raw.source,
        "profile": "natural" if spec.natural else ("indices_file" if cfg.indices_file else cfg.profile),
        "imbalance": imbalance_ratio(counts) if spec.natural or cfg.indices_file else cfg.imbalance,
        "measured_imbalance": imbalance_ratio(counts),
        "selection_seed": cfg.selection_seed,
        "indices_file": cfg.indices_file,
        "n_max": sel.n_max,
        "test_profile": cfg.test_profile,
        "val_per_class": _val_per_class(cfg, spec),
        "val_from": "own_val_split" if spec.natural else cfg.val_from,
        "num_classes": num_classes,
        "class_names": names,
        "counts": {"train": counts, "val": val_counts, "test": test_counts},
        "totals": {"train": sum(counts), "val": sum(val_counts), "test": int(sum(test_counts))},
        "index_base": ("train and val: positions in the source's training split" if not spec.natural else
                       "train: positions in the training split; val: in the data set's own val split")
        + "; test: positions in the test split",
        "indices": indices,
        "indices_sha256": digest,
    }
    if sel.val_overlap is not None:
        m["val_overlap"] = sel.val_overlap
    if sel.holdout_removed is not None:
        m["holdout_removed"] = sel.holdout_removed
    return m


def parse_class_counts(value: str) -> list[int] | dict[str, int]:
    """``class_counts=``: training images per class, a list (``500,120,30``, ``[500, 120, 30]``) or a JSON file
    holding such a list or a ``{class name: count}`` mapping; every count an integer >= 1. Read before any image
    is decoded (:func:`class_counts_per_class` matches it to the class folders)."""
    text = str(value).strip()
    example = "class_counts=500,120,30 (or [500, 120, 30]), or a JSON file holding such a list"
    if not text.startswith("[") and "," not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"class_counts={text}: no such file; give a list ({example}).")
        try:
            loaded: Any = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"class_counts file {path} is not valid JSON ({exc}); write a list of counts, e.g. "
                              "[500, 120, 30], or {\"cat\": 500, \"dog\": 120}.") from None
    else:
        import yaml

        try:
            loaded = yaml.safe_load(text if text.startswith("[") else f"[{text}]")
        except yaml.YAMLError:
            raise ConfigError(f"class_counts={text} is not a list of numbers (a bracket left open?): write "
                              f"{example}.") from None
    values = list(loaded.values()) if isinstance(loaded, dict) else loaded
    if not isinstance(values, list) or not values or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in values):
        raise ConfigError(f"class_counts={text} must list integers, one per class in folder order: write {example}.")
    low = [i for i, c in enumerate(values) if c < 1]
    if low:
        which = list(loaded)[low[0]] if isinstance(loaded, dict) else f"class {low[0]}"
        raise ConfigError(f"class_counts={text}: {which} has {values[low[0]]} training images; every class needs a "
                          "count >= 1 (the counts define head / body / tail and the imbalance ratio n_max / n_min).")
    return {str(k): int(v) for k, v in loaded.items()} if isinstance(loaded, dict) else [int(c) for c in values]


def class_counts_per_class(counts: list[int] | dict[str, int], text: str, class_names: list[str]) -> list[int]:
    """The counts of :func:`parse_class_counts` in the order of ``class_names`` (the class folders)."""
    if isinstance(counts, dict):
        missing = [n for n in class_names if n not in counts]
        unknown = [n for n in counts if n not in class_names]
        if missing or unknown:
            what = (f"no count for classes {missing[:5]}" if missing else
                    f"counts of classes {unknown[:5]} that have no folder")
            raise ConfigError(f"class_counts={text} has {what}: its keys must be the class folder names "
                              f"({', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''}).")
        return [counts[n] for n in class_names]
    if len(counts) != len(class_names):
        raise ConfigError(f"class_counts={text!r} lists {len(counts)} counts but there are {len(class_names)} classes: "
                          f"give one per class in folder order ({', '.join(class_names[:5])}"
                          f"{', ...' if len(class_names) > 5 else ''}).")
    return list(counts)


def resample_gamma(cfg: DataConfig, counts: list[int]) -> float:
    """gamma of the balanced teacher set: ``cfg.resample_gamma``, or IR / 2 (IR nominal for the
    exp / step profiles, measured n_max / n_min otherwise)."""
    if cfg.resample_gamma > 0:
        return float(cfg.resample_gamma)
    natural = get_spec(cfg.dataset).natural
    ir = cfg.imbalance if cfg.profile in ("exp", "step", "linear") and not natural else imbalance_ratio(counts)
    return ir / 2.0


def balanced_resample(train: Split, class_counts: list[int], gamma: float, seed: int = 0,
                      tail: str = "tile") -> Split:
    """The balanced self-teacher set D_B of Cho et al. (ICLR 2025): ``int(gamma * n_min)`` images per class.

    Head classes are down-sampled without replacement, tail classes up-sampled with replacement
    (see :func:`~.profiles.balanced_resample_indices`; ``tail="iid"`` for i.i.d. draws).

    Example::

        teacher_set = balanced_resample(data.train, data.class_counts, resample_gamma(cfg, data.class_counts))
    """
    labels = train.labels.cpu().numpy()
    have = np.bincount(labels, minlength=len(class_counts)).tolist()
    if have != [int(n) for n in class_counts]:
        raise DataError(f"class_counts {list(class_counts)[:5]}... do not match the split's labels {have[:5]}...")
    return train.subset(balanced_resample_indices(labels, gamma, seed, tail))


def data_info(cfg: DataConfig) -> str:
    """A plain-text report of the built data set: per-class counts and groups, totals, validation rule."""
    d = build_data(cfg)
    m = d.manifest
    c = m["counts"]
    third = {k: g for g in ("head", "body", "tail") for k in d.groups[g]}
    shot = {k: g for g in ("many", "medium", "few") for k in d.groups[g]}
    src = m["source"]
    lines = [
        f"{cfg.dataset}: profile {m['profile']}, imbalance {_num(m['imbalance'])}, selection_seed "
        f"{cfg.selection_seed}, source {src.get('format', '?')} {src.get('path', '')}".rstrip(),
        f"{d.num_classes} classes, {d.channels}x{d.image_size}x{d.image_size} images, n_max {m['n_max']}, "
        f"train counts {max(d.class_counts)}..{min(d.class_counts)} (measured IR {_num(m['measured_imbalance'])})",
        "",
    ]
    w = max(4, min(40, max(len(n) for n in d.class_names)))
    header = f"{'class':>5}  {'name':<{w}}  {'train':>7}  {'val':>6}  {'test':>6}  {'group':<5}  shot"
    lines += [header, "-" * len(header)]
    for k in range(d.num_classes):
        name = d.class_names[k][:w]
        lines.append(f"{k:>5}  {name:<{w}}  {c['train'][k]:>7,}  {c['val'][k]:>6,}  {c['test'][k]:>6,}  "
                     f"{third[k]:<5}  {shot[k]}")
    lines += ["-" * len(header),
              f"{'':>5}  {'total':<{w}}  {sum(c['train']):>7,}  {sum(c['val']):>6,}  {sum(c['test']):>6,}", ""]
    total = sum(d.class_counts)
    for g in ("head", "body", "tail", "many", "medium", "few"):
        members = d.groups[g]
        n = sum(d.class_counts[k] for k in members)
        noun = "class  " if len(members) == 1 else "classes"
        lines.append(f"{g:<6} {len(members):>4} {noun}  {n:>9,} train images ({100.0 * n / total:5.1f}%)  "
                     f"classes {_ranges(members) or '-'}")
    lines.append("")
    if d.val is None:
        lines.append("validation: none (val_per_class=0)")
    elif m["val_from"] == "own_val_split":
        lines.append(f"validation: the data set's own val split, {sum(c['val']):,} images")
    else:
        lines.append(f"validation: {m['val_per_class']} per class from training images the LT subset did not "
                     f"select (val_from={m['val_from']})")
        for key, what in (("val_overlap", "also in the training set"), ("holdout_removed", "removed from training")):
            bad = [(k, v) for k, v in enumerate(m.get(key) or []) if v]
            if bad:
                lines.append(f"  {what}: " + ", ".join(f"class {k} ({d.class_names[k]}) {v}" for k, v in bad))
    lines.append(f"test: {'full test split' if cfg.test_profile == 'full' else 'LT-subsampled with the training profile'}"
                 f", {sum(c['test']):,} images")
    lines.append(f"indices sha256: {m['indices_sha256']}")
    return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:g}" if np.isfinite(x) else "inf"


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out, start = [], None
    for i, k in enumerate(ids):
        if start is None:
            start = k
        if i + 1 == len(ids) or ids[i + 1] != k + 1:
            out.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(out)
