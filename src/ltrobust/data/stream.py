"""Per-image decoding for streamed splits (ImageNet-LT): the standard ImageNet transforms, seeded.

Training: RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip, drawn from a
``random.Random(sample_seed)`` so a sample's augmentation does not depend on the worker that decodes
it. Evaluation: resize the shorter side to ``int(size / 0.875)`` (256 for 224), center crop ``size``.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from .augment import policy_augment
from .formats.base import open_image


def decode_stream_image(path: str, size: int, train: bool, flip: bool = True, seed: int = 0,
                        policy: Any = None) -> torch.Tensor:
    """Decode ``path`` to uint8 (3, size, size) with the train or eval transform."""
    from PIL import Image

    rng = random.Random(seed)
    im = open_image(path, "RGB")
    if train:
        top, left, h, w = rrc_params(im.height, im.width, rng)
        im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if flip and rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
    else:
        scale = int(size / 0.875) / min(im.width, im.height)
        im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, S, S)
    if train and policy is not None:
        x = policy_augment(x[None], policy, seed)[0]
    return x


def rrc_params(height: int, width: int, rng: random.Random, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` drawn from ``rng``: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class StreamDataset(torch.utils.data.Dataset):
    """``dataset[(index, sample_seed)] -> (uint8 (3, S, S), label)`` for a DataLoader's workers."""

    def __init__(self, paths: list[str], labels: list[int], size: int, train: bool, flip: bool = True,
                 policy: Any = None) -> None:
        self.paths, self.labels, self.size = paths, labels, size
        self.train, self.flip, self.policy = train, flip, policy

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = key
        return decode_stream_image(self.paths[i], self.size, self.train, self.flip, seed, self.policy), self.labels[i]


def collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)
