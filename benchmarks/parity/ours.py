"""ltrobust's side of a parity check: its real code paths, and data files in the official formats.

Everything here calls what ``ltrobust train`` / ``ltrobust eval`` call: :func:`preset` resolves a preset
through :func:`ltrobust.config.resolve_config`, :func:`trainer` builds the real
:class:`~ltrobust.training.trainer.Trainer` (model from the preset, the optimiser and schedule of the
trainer, the registered method) whose :meth:`~ltrobust.training.trainer.Trainer.train_step` is then driven
batch by batch, and the data come from :func:`ltrobust.data.build_data` reading files written here in the
official formats (:func:`write_cifar`), so both codes read the same bytes; batches come from ltrobust's
loader (:func:`batches`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ltrobust.config import RunConfig, resolve_config
from ltrobust.data import ArraySplit, LTData, class_groups
from ltrobust.training.trainer import Trainer


def preset(name: str, *overrides: str) -> RunConfig:
    """The resolved config of preset ``name`` with ``key=value`` overrides (as on the command line)."""
    return resolve_config([f"preset={name}", *overrides])


def config(*overrides: str) -> RunConfig:
    """A config from ``key=value`` settings alone (no preset), e.g. for a stand-in repository's settings."""
    return resolve_config(list(overrides))


def trainer(cfg: RunConfig, data: Any, run_dir: str | Path) -> Trainer:
    """ltrobust's trainer for ``cfg`` on ``data``, built (model, method, optimiser, loader), not yet trained."""
    tr = Trainer(cfg, run_dir=run_dir, data=data, resume=False)
    tr.build()
    return tr


# ------------------------------------------------------------------------------------ data files
CIFAR_FILES = {10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                    "batches.meta", "label_names", "labels"),
               100: ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels")}


def interleaved_labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` labels of each class in a seeded random order: a stand-in for the official files' label
    order, which the subset rule reads (the real order is not needed: see :func:`write_cifar`)."""
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.RandomState(seed).shuffle(labels)
    return labels


def synthetic_images(n: int, size: int, seed: int, chunk: int = 4096) -> np.ndarray:
    """``n`` seeded uint8 images (n, size, size, 3): smooth random fields with noise, so that gradients and
    BatchNorm statistics look like an image batch's rather than white noise's."""
    g = torch.Generator().manual_seed(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        low = torch.rand(m, 3, 4, 4, generator=g)
        x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        x = (x + 0.15 * torch.rand(m, 3, size, size, generator=g)).clamp(0, 1)
        out[s: s + m] = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


class _Py2Str(str):
    """A dict key pickled as Python 2's ``str`` (SHORT_BINSTRING), as in the official CIFAR files."""


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2str(self, obj: str) -> None:
        raw = obj.encode("latin1")
        self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)  # keys are short
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def write_cifar(root: str | Path, num_classes: int, train: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray], py2_keys: bool = False) -> Path:
    """Write CIFAR-10 / CIFAR-100 python pickles in the official layout under ``root`` and return ``root``.

    ``train`` and ``test`` are ``(images uint8 (N, 32, 32, 3), labels (N,))``; CIFAR-10's training images
    are split into the five ``data_batch_*`` files of 10,000 (torchvision and ltrobust concatenate them in
    order). Both readers (torchvision's ``CIFAR10`` under the authors' ``IMBALANCECIFAR10``, ltrobust's
    restricted unpickler) see the same bytes. ``py2_keys``: the dict keys as Python 2 strings, as in the
    official files, so that a reader with ``encoding='bytes'`` (TAET's) finds ``b'data'`` and one with
    ``encoding='latin1'`` (torchvision's, ltrobust's) finds ``'data'``.
    """
    key = _Py2Str if py2_keys else str
    folder, train_files, test_files, meta, names_key, label_key = CIFAR_FILES[num_classes]
    out = Path(root) / folder
    out.mkdir(parents=True, exist_ok=True)

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))  # (N, 3072)
        with open(out / name, "wb") as fh:
            _Py2Pickler(fh, protocol=2).dump({key("data"): data, key(label_key): [int(v) for v in labels],
                                              key("filenames"): []})

    x, y = train
    chunks = np.array_split(np.arange(len(y)), len(train_files))
    for name, idx in zip(train_files, chunks):
        dump(name, x[idx], y[idx])
    dump(test_files[0], *test)
    with open(out / meta, "wb") as fh:
        pickle.dump({names_key: [f"class{c}" for c in range(num_classes)]}, fh, protocol=2)
    return Path(root)


def real_cifar10(folder: str | Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The CIFAR-10 images of an image-folder copy (``train/<class>/``, ``test/<class>/``) read by ltrobust's own
    reader, training images interleaved in a seeded order (the official order is not in an image folder)."""
    from ltrobust.data.formats.imagefolder import read_image_folder

    splits, _ = read_image_folder(Path(folder), "RGB")
    tr, te = splits["train"], splits["test"]
    order = np.random.RandomState(1).permutation(len(tr.labels))
    return (tr.images[order], tr.labels[order]), (te.images, te.labels)


def lt_data(images: torch.Tensor, labels: torch.Tensor, counts: Sequence[int], cfg: RunConfig,
            mean: Sequence[float], std: Sequence[float]) -> LTData:
    """An :class:`~ltrobust.data.LTData` over given uint8 images (N, C, H, W) with the class counts of the
    profile (where building the data set from its files is too heavy for a parity run, e.g. the 100,000
    images of Tiny-ImageNet): the trainer reads the counts (the loss's prior) and the model's input spec."""
    split = ArraySplit(images, labels)
    counts = [int(c) for c in counts]
    return LTData(train=split, val=None, test=split, class_counts=counts,
                  class_names=[str(c) for c in range(len(counts))], num_classes=len(counts),
                  channels=int(images.shape[1]), image_size=int(images.shape[-1]), mean=tuple(mean), std=tuple(std),
                  groups=class_groups(counts), manifest={}, config=cfg.data)



def batches(split: Any, batch_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` batches of ``split`` in file order, unaugmented, from ltrobust's own loader
    (float (B, C, H, W) in [0, 1], labels (B,)): the same tensors are handed to both codes."""
    from ltrobust.data import eval_loader

    out = []
    for x, y in eval_loader(split, batch_size):
        out.append((x, y))
        if len(out) == count:
            break
    return out
