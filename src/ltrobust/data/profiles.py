"""Long-tailed class-count profiles, the LDAM-DRW subset selection and class groups.

Pure NumPy functions (no I/O, no torch):

- :func:`class_counts` gives the per-class training counts of a profile (Cao et al., "Learning
  Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019,
  https://github.com/kaidic/LDAM-DRW), e.g. CIFAR-10 at imbalance 50 -> 5000, 2589, ..., 100 (13,996).
- :func:`select_lt_indices` picks which images: one seeded ``np.random.RandomState``, and for each class
  in index order the class's indices (dataset order) are shuffled and the first ``n_c`` kept. With
  seed 0 this draws exactly what the official ``np.random.seed(0)`` + ``np.random.shuffle`` code
  draws, so the subsets of the LDAM-DRW / RoBal / REAT / AT-BSL code bases are reproduced.
- :func:`class_groups` splits classes into head / body / tail thirds and many / medium / few shot.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError

PROFILES = ("exp", "step", "linear", "full", "balanced-small")

#: many-shot: more than this many training images; few-shot: fewer than ``FEW_SHOT_MAX``.
MANY_SHOT_MIN = 100
FEW_SHOT_MAX = 20


def class_counts(profile: str, n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class training counts of a long-tailed profile.

    Args:
        profile: ``exp`` (exponential decay, ``n_c = int(n_max * (1/IR) ** (c / (C - 1)))``),
            ``step`` (the first ``C // 2`` classes ``n_max``, the others ``int(n_max * (1/IR))``),
            ``linear`` (linear decay from ``n_max`` to ``n_max / IR``:
            ``n_c = int(n_max * (1 - (1 - 1/IR) * c / (C - 1)))``, REAT's supplementary Table 6),
            ``full`` (``n_max`` for every class) or ``balanced-small`` (the total of the ``exp`` set
            spread uniformly: ``total // C`` per class, so the total is at most ``C - 1`` images less).
        n_max: images of the largest class (class 0).
        num_classes: C.
        imbalance: IR = n_max / n_min (>= 1).

    Returns:
        ``list[int]`` of length C, class 0 first.

    Example::

        >>> sum(class_counts("exp", 5000, 10, 50))
        13996
    """
    if profile not in PROFILES:
        raise ConfigError(f"data.profile={profile!r} is not one of {PROFILES}.")
    if imbalance < 1:
        raise ConfigError(f"imbalance={imbalance} is below 1: use a value >= 1 (1 means balanced).")
    if num_classes < 1 or n_max < 1:
        raise ConfigError(f"need num_classes >= 1 and n_max >= 1, got {num_classes} and {n_max}.")
    factor = 1.0 / imbalance  # as the official code: imb_factor = 1 / IR, then n_max * imb_factor ** x
    if profile == "full":
        return [int(n_max)] * num_classes
    if profile == "step":
        head = num_classes // 2
        return [int(n_max)] * head + [int(n_max * factor)] * (num_classes - head)
    if profile == "linear":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * (1.0 - (1.0 - factor) * c / (num_classes - 1.0)) + 1e-9) for c in range(num_classes)]
    if num_classes == 1:
        exp = [int(n_max)]
    else:
        exp = [int(n_max * factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    if profile == "exp":
        return exp
    return [sum(exp) // num_classes] * num_classes  # balanced-small


def class_orders(labels: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """Each class's indices (dataset order) after the seeded LDAM-DRW shuffle.

    One ``np.random.RandomState(seed)``; classes are visited in ``np.unique(labels)`` order and each
    class's index array is shuffled in place, so the order of class c does not depend on any count.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    orders: dict[int, np.ndarray] = {}
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        orders[int(c)] = idx
    return orders


def select_lt_indices(labels: np.ndarray, counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices of the long-tailed subset (the LDAM-DRW ``gen_imbalanced_data`` procedure).

    Args:
        labels: int labels (N,) of the full training set, classes ``0..C-1`` all present.
        counts: ``n_c`` per class (e.g. from :func:`class_counts`).
        seed: the ``np.random.RandomState`` seed (the official code calls ``np.random.seed(0)``).

    Returns:
        int64 indices, class 0's chosen indices first (in shuffled order), then class 1's, ...;
        the same order as the official code's ``new_data``.
    """
    orders = class_orders(labels, seed)
    _check_counts(orders, counts)
    return np.concatenate([orders[c][: int(counts[c])] for c in sorted(orders)]).astype(np.int64)


def _check_counts(orders: dict[int, np.ndarray], counts: Sequence[int]) -> None:
    if sorted(orders) != list(range(len(counts))):
        raise DataError(f"labels hold classes {sorted(orders)[:12]}... but {len(counts)} counts were given: "
                        "every class 0..C-1 needs at least one training image.")
    for c, n in enumerate(counts):
        if int(n) > len(orders[c]):
            raise DataError(f"class {c} has {len(orders[c])} images, fewer than the {int(n)} the profile asks "
                            "for: lower n_max or check the data set.")


def class_groups(counts: Sequence[int]) -> dict[str, list[int]]:
    """Class groups by training count.

    ``head`` / ``body`` / ``tail``: classes sorted by training count (largest first, ties by index);
    the first ``floor(C / 3)`` are head, the last ``floor(C / 3)`` tail, the rest body.
    ``many`` / ``medium`` / ``few``: more than 100, 20 to 100, fewer than 20 training images
    (Liu et al., OLTR). Groups may be empty (e.g. no few-shot class in CIFAR-10-LT IR 50).
    Every list is sorted by class index.

    Example::

        >>> class_groups([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])["tail"]
        [7, 8, 9]
    """
    counts = [int(n) for n in counts]
    num = len(counts)
    by_count = sorted(range(num), key=lambda c: (-counts[c], c))
    third = num // 3
    head = by_count[:third]
    tail = by_count[num - third:] if third else []
    body = by_count[third: num - third]
    return {
        "head": sorted(head),
        "body": sorted(body),
        "tail": sorted(tail),
        "many": [c for c in range(num) if counts[c] > MANY_SHOT_MIN],
        "medium": [c for c in range(num) if FEW_SHOT_MAX <= counts[c] <= MANY_SHOT_MIN],
        "few": [c for c in range(num) if counts[c] < FEW_SHOT_MAX],
    }


def balanced_order(labels: np.ndarray) -> np.ndarray:
    """Round-robin order over classes (first image of each class, then the second, ...).

    Any prefix of ``labels[balanced_order(labels)]`` is as balanced as the class sizes allow, so the
    first ``k * C`` images of a balanced split hold ``k`` per class.
    """
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        rank[idx] = np.arange(len(idx))
    return np.lexsort((labels, rank)).astype(np.int64)


def balanced_resample_indices(labels: np.ndarray, gamma: float, seed: int = 0, tail: str = "tile") -> np.ndarray:
    """Indices of a class-balanced resampled set with ``int(gamma * n_min)`` images per class.

    The balanced self-teacher set D_B of "long-tailed AT with a balanced self-teacher" (ICLR 2025
    submission, SPEC 3): classes with more images than the target are down-sampled without
    replacement; classes with fewer are up-sampled with replacement. ``tail="tile"`` (default) takes
    every image of such a class ``target // n_c`` times and draws the remaining ``target % n_c``
    without replacement, so no tail image is left out; ``tail="iid"`` draws all ``target`` i.i.d.
    with replacement.

    Returns:
        int64 indices into ``labels``, grouped by class (class 0 first).
    """
    if tail not in ("tile", "iid"):
        raise ConfigError(f"tail={tail!r}: use tile or iid.")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    n_min = min(int((labels == c).sum()) for c in classes)
    target = int(gamma * n_min)
    if target < 1:
        raise ConfigError(f"resample_gamma={gamma} gives {target} images per class (n_min={n_min}): "
                          "use a larger gamma, e.g. resample_gamma=-1 for IR / 2.")
    rng = np.random.RandomState(seed)
    out = []
    for c in classes:
        idx = np.where(labels == c)[0]
        n = len(idx)
        if n >= target:
            out.append(rng.choice(idx, target, replace=False))
        elif tail == "iid":
            out.append(rng.choice(idx, target, replace=True))
        else:
            out.append(np.concatenate([np.tile(idx, target // n), rng.choice(idx, target % n, replace=False)]))
    return np.concatenate(out).astype(np.int64)


def imbalance_ratio(counts: Sequence[int]) -> float:
    """n_max / n_min of a list of class counts (inf when a class is empty)."""
    lo = min(counts)
    return math.inf if lo == 0 else max(counts) / lo
