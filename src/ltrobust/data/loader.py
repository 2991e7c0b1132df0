"""Device-resident batching with on-device augmentation, deterministic per (seed, epoch).

:class:`DeviceLoader` keeps the uint8 images of an :class:`~.splits.ArraySplit` on the target device,
permutes them each epoch with its own seeded ``torch.Generator`` and augments whole batches on the
device (vectorised random crop with zero padding, per-sample horizontal flip). A
:class:`~.splits.StreamSplit` (ImageNet-LT) is decoded by DataLoader workers instead, with the same
ordering and seeding rules.

Example::

    loader = DeviceLoader(data.train, 128, shuffle=True, augment="crop_flip", padding=4, flip=True,
                          device=torch.device("cuda"), seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:            # x float (B, C, H, W) in [0, 1], y int64 (B,)
            ...
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .augment import _policy_transform, policy_augment, random_crop, random_flip, to_device
from .splits import ArraySplit, StreamSplit
from .stream import StreamDataset, collate

AUGMENTS = ("none", "crop", "crop_flip", "autoaugment", "randaugment")
SAMPLERS = ("uniform", "class_balanced")


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (``np.random.SeedSequence`` hashing)."""
    state = np.random.SeedSequence([int(v) % (1 << 64) for v in values]).generate_state(2, dtype=np.uint32)
    return int(state[0]) | (int(state[1]) & 0x7FFFFFFF) << 32


class DeviceLoader:
    """Batches of a split as float (B, C, H, W) in [0, 1] and int64 labels (B,), augmented on the device.

    Args:
        split: :class:`ArraySplit` (held on ``device``) or :class:`StreamSplit` (decoded by workers).
        batch_size: B.
        shuffle: permute each epoch (order of epoch e is a pure function of ``(seed, e)``).
        augment: ``none`` | ``crop`` | ``crop_flip`` | ``autoaugment`` | ``randaugment`` (the policies
            run per image on uint8, then crop and flip; slower).
        padding: zero padding of the random crop (4 for 32-pixel images).
        flip: allow horizontal flips (False for digits).
        device: where batches live (default: the split's device).
        seed: seed of the order and of the augmentation.
        drop_last: drop the last incomplete batch.
        pad_last: pad the last batch to ``batch_size`` by repeating its samples and yield
            ``(x, y, mask)`` with ``mask`` bool (B,) True for real samples (static shapes).
        sampler: ``uniform`` or ``class_balanced`` (each epoch draws N samples with replacement,
            probability proportional to 1 / n_y: every class equally likely, for cRT fine-tuning).
        class_counts: counts for the class-balanced sampler (default: from the labels).

    ``batch_indices`` holds the training-set indices (int64 (B,), CPU) of the batch last yielded, for
    methods that keep state per sample (MMA). ``len(loader)`` is the number of batches per epoch.
    ``state_dict()`` / ``load_state_dict()`` record (epoch, next batch) for exact resume; iteration
    continues where it stopped, and a completed pass moves to the next epoch. Call ``set_epoch(e)`` at
    each epoch start to make the order independent of how many passes came before.
    """

    def __init__(self, split: ArraySplit | StreamSplit, batch_size: int, shuffle: bool = False,
                 augment: str = "none", padding: int = 4, flip: bool = True,
                 device: torch.device | str | None = None, seed: int = 0, drop_last: bool = False,
                 pad_last: bool = False, sampler: str = "uniform", class_counts: Sequence[int] | None = None) -> None:
        if augment not in AUGMENTS:
            raise ConfigError(f"augment={augment!r} is not one of {AUGMENTS}.")
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler={sampler!r}: use uniform or class_balanced.")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1.")
        if drop_last and pad_last:
            raise ConfigError("drop_last and pad_last exclude each other: choose one.")
        if len(split) == 0:
            raise DataError("DeviceLoader got an empty split.")
        self.streamed = isinstance(split, StreamSplit)
        self.device = torch.device(device) if device is not None else split.device
        self.split = split if self.streamed else split.to(self.device)
        self.batch_size, self.shuffle, self.augment = int(batch_size), bool(shuffle), augment
        self.padding, self.flip, self.seed = int(padding), bool(flip), int(seed)
        self.drop_last, self.pad_last, self.sampler = bool(drop_last), bool(pad_last), sampler
        self.num_samples = len(split)
        self._labels_cpu = split.labels.cpu()
        self._weights = None
        if sampler == "class_balanced":
            counts = torch.as_tensor(list(class_counts) if class_counts is not None else
                                     torch.bincount(self._labels_cpu).tolist(), dtype=torch.float64)
            if (counts[self._labels_cpu] <= 0).any():
                raise DataError("class_counts gives 0 for a class that has samples: pass the split's own counts.")
            self._weights = 1.0 / counts[self._labels_cpu]
        self._policy = None
        if augment in ("autoaugment", "randaugment"):
            size = split.image_size if self.streamed else int(split.images.shape[-1])
            self._policy = _policy_transform(augment, size)
        self.epoch, self._batch = 0, 0
        self.batch_indices: torch.Tensor | None = None

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    # ------------------------------------------------------------------ state
    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (from its first batch, unless already inside it)."""
        if int(epoch) != self.epoch:
            self.epoch, self._batch = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self._batch, "seed": self.seed,
                "num_samples": self.num_samples, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("num_samples", self.num_samples) != self.num_samples or \
                state.get("batch_size", self.batch_size) != self.batch_size:
            raise DataError(f"loader state for {state.get('num_samples')} samples in batches of "
                            f"{state.get('batch_size')} does not match this loader ({self.num_samples}, "
                            f"{self.batch_size}): the data or batch size changed since the checkpoint.")
        self.seed, self.epoch, self._batch = int(state["seed"]), int(state["epoch"]), int(state["batch"])

    # ------------------------------------------------------------------ order
    def epoch_order(self, epoch: int) -> torch.Tensor:
        """int64 (N,) sample indices of epoch ``epoch`` (CPU), a pure function of (seed, epoch)."""
        n = self.num_samples
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0))
        if self._weights is not None:
            return torch.multinomial(self._weights, n, replacement=True, generator=g)
        return torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        order, b = self.epoch_order(epoch), self.batch_size
        return [order[s: s + b] for s in range(0, len(self) * b, b)]

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self._batch >= len(self):
            self.epoch, self._batch = self.epoch + 1, 0
        epoch, start = self.epoch, self._batch
        batches = self._batches(epoch)
        stream = self._stream(epoch, batches, start) if self.streamed else None
        for b in range(start, len(batches)):
            idx = batches[b]
            real = len(idx)
            if self.pad_last and real < self.batch_size:
                idx = idx.repeat(math.ceil(self.batch_size / real))[: self.batch_size]
            if stream is not None:
                x, y = next(stream)
                if len(y) < len(idx):  # pad_last on a stream: repeat the decoded samples
                    rep = torch.arange(len(idx)) % len(y)
                    x, y = x[to_device(rep, x.device)], y[to_device(rep, y.device)]
            else:
                x, y = self._array_batch(idx, mix_seed(self.seed, epoch, b + 1))
            self._batch, self.batch_indices = b + 1, idx
            if self.pad_last:
                mask = torch.arange(len(idx), device=self.device) < real
                yield x, y, mask
            else:
                yield x, y
        self.epoch, self._batch = epoch + 1, 0

    def _array_batch(self, idx: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.split
        dev_idx = to_device(idx, self.device)
        x = split.images[dev_idx]  # uint8 (B, C, H, W)
        y = split.labels[dev_idx]
        if self.augment != "none":
            g = torch.Generator().manual_seed(seed)
            if self._policy is not None:
                x = policy_augment(x, self._policy, int(torch.randint(1 << 62, (1,), generator=g)))
            offsets = torch.randint(0, 2 * self.padding + 1, (len(idx), 2), generator=g)
            flips = torch.rand(len(idx), generator=g) < 0.5
            x = random_crop(x, self.padding, offsets)
            if self.flip and self.augment != "crop":
                x = random_flip(x, flips)
        return x.float().div_(255.0), y

    def _stream(self, epoch: int, batches: list[torch.Tensor], start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decode batches ``start..`` of a StreamSplit with DataLoader workers, moved to the device."""
        from torch.utils.data import DataLoader

        split: StreamSplit = self.split  # type: ignore[assignment]
        keys = []
        for b in range(start, len(batches)):
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, b + 1))
            seeds = torch.randint(1 << 62, (len(batches[b]),), generator=g).tolist()
            keys.append(list(zip(batches[b].tolist(), seeds)))
        ds = StreamDataset(split.paths, split.labels.tolist(), split.image_size, train=self.augment != "none",
                           flip=self.flip and self.augment != "crop", policy=self._policy)
        dl = DataLoader(ds, batch_sampler=keys, num_workers=split.num_workers, collate_fn=collate,
                        pin_memory=self.device.type == "cuda")
        for x, y in dl:
            yield x.to(self.device, non_blocking=True).float().div_(255.0), y.to(self.device, non_blocking=True)


def train_loader(data: Any, batch_size: int, device: torch.device | str | None = None, seed: int = 0,
                 sampler: str = "uniform", **kw: Any) -> DeviceLoader:
    """The shuffled, augmented training loader of an :class:`~.lt.LTData` (its augment, padding, flip)."""
    return DeviceLoader(data.train, batch_size, shuffle=True, augment=data.augment, padding=data.crop_padding,
                        flip=data.flip, device=device, seed=seed, sampler=sampler,
                        class_counts=data.class_counts, **kw)


def eval_loader(split: ArraySplit | StreamSplit, batch_size: int, device: torch.device | str | None = None,
                **kw: Any) -> DeviceLoader:
    """An unshuffled, unaugmented loader over ``split`` (validation, test)."""
    return DeviceLoader(split, batch_size, shuffle=False, augment="none", device=device, **kw)
