"""Batch augmentation on the device: vectorised random crop and flip, AutoAugment / RandAugment per image.

The lowest module of the data package's batching (``augment`` <- ``stream`` <- ``splits`` <- ``loader``):
it imports none of them, so the per-image decoder of streamed splits and the device loader share it
without an import circle.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor (indices, crop offsets, flip masks) to ``device`` without stalling CUDA.

    A copy from pageable memory waits for the GPU queue to drain; from pinned memory with
    ``non_blocking=True`` it is queued behind the work already issued (the caching host allocator keeps
    the pinned buffer alive until the copy ran). On the CPU, or when the tensor is already there, plain
    ``.to``.
    """
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_crop(x: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Per-sample crop of ``x`` (B, C, H, W) zero-padded by ``padding``, top-left corners ``offsets``.

    ``offsets`` is int64 (B, 2) of (row, col) in ``[0, 2 * padding]``; the output has ``x``'s shape
    and dtype. Vectorised: pad once, then two ``gather`` calls (no loop over images).
    """
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    offsets = to_device(offsets, x.device)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))  # (B, C, H, W+2p)
    return xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # (B, C, H, W)


def random_flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the samples of ``x`` (B, C, H, W) where ``mask`` (B,) is True, left to right."""
    return torch.where(to_device(mask, x.device)[:, None, None, None], x.flip(3), x)


#: RandAugment's (num_ops, magnitude): the AT-BSL code's ``v2.RandAugment(2, 8)`` (AT-BSL-RA, Cho et al.,
#: ICLR 2025, Table 4), not torchvision's default magnitude 9
RANDAUGMENT = (2, 8)


def _policy_transform(augment: str, image_size: int) -> Any:
    from torchvision.transforms import v2

    if augment == "autoaugment":
        policy = v2.AutoAugmentPolicy.CIFAR10 if image_size <= 64 else v2.AutoAugmentPolicy.IMAGENET
        return v2.AutoAugment(policy)
    return v2.RandAugment(*RANDAUGMENT)


def policy_augment(x: torch.Tensor, transform: Any, seed: int) -> torch.Tensor:
    """AutoAugment / RandAugment per sample of uint8 ``x`` (B, C, H, W), reproducible from ``seed``.

    torchvision's v2 policies draw one operation per call, so each image is transformed on its own
    (a Python loop: slower than crop / flip). The global torch RNG is forked, not disturbed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(img) for img in x])
