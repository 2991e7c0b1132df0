"""The two kinds of split a data set yields: in-memory uint8 arrays or streamed image files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .stream import decode_stream_image


@dataclass
class ArraySplit:
    """A split held in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,), same device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"ArraySplit images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}.")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(f"ArraySplit labels must be int64 ({self.images.shape[0]},), got "
                            f"{self.labels.dtype} {tuple(self.labels.shape)}.")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "ArraySplit":
        return ArraySplit(self.images.to(device), self.labels.to(device))

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> "ArraySplit":
        """The images at ``index`` (repeats allowed), on the same device."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64), device=self.images.device)
        return ArraySplit(self.images[idx], self.labels[idx])

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=num_classes).tolist()


@dataclass
class StreamSplit:
    """A split too large for memory (ImageNet-LT): image paths, decoded and resized per batch.

    :class:`~ltrobust.data.loader.DeviceLoader` streams it through a ``torch.utils.data.DataLoader``
    with ``num_workers`` worker processes: training batches use RandomResizedCrop(``image_size``) +
    horizontal flip, evaluation batches resize the shorter side to ``image_size / 0.875`` and center
    crop (the standard ImageNet protocol). Decoded batches are uint8 (B, 3, image_size, image_size).
    """

    paths: list[str]
    labels: torch.Tensor  #: int64 (N,), on the CPU
    image_size: int = 224
    num_workers: int = field(default_factory=lambda: min(8, torch.get_num_threads()))

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).cpu()
        if len(self.paths) != len(self.labels):
            raise DataError(f"StreamSplit: {len(self.paths)} paths but {len(self.labels)} labels.")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "StreamSplit":
        return self  # decoded per batch; the loader moves batches to its device

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> "StreamSplit":
        idx = np.asarray(index, dtype=np.int64)
        return StreamSplit([self.paths[i] for i in idx], self.labels[torch.as_tensor(idx)], self.image_size,
                           self.num_workers)

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def get_batch(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at ``index`` with the evaluation transform: float (B, 3, S, S) in [0, 1] and int64 (B,),
        on the CPU; decoded by ``num_workers`` threads (random access for evaluation)."""
        from concurrent.futures import ThreadPoolExecutor

        idx = torch.as_tensor(index).cpu().tolist()
        paths = [self.paths[i] for i in idx]

        def one(p: str) -> torch.Tensor:
            return decode_stream_image(p, self.image_size, train=False)

        if self.num_workers > 1 and len(paths) > 1:
            with ThreadPoolExecutor(self.num_workers) as pool:
                images = list(pool.map(one, paths))
        else:
            images = [one(p) for p in paths]
        return torch.stack(images).float().div_(255.0), self.labels[torch.as_tensor(idx, dtype=torch.int64)]
