"""scikit-learn's bundled 8x8 handwritten digits (no download): the embedded default data set.

``sklearn.datasets.load_digits`` holds 1,797 grey 8x8 images with values 0..16, 174..183 per class.
They are scaled to uint8 0..255 (``round(v * 255 / 16)``) and split once, deterministically:
``np.random.RandomState(DIGITS_SPLIT_SEED)`` visits classes 0..9 and permutes each class's indices;
the first ``DIGITS_TEST_PER_CLASS`` (50) are the test set, the rest the training set. Both splits keep
the original order of ``load_digits``. The smallest class (8) keeps 124 training images, so digits-lt
uses ``n_max = 124``. The split does not depend on ``selection_seed``.
"""

from __future__ import annotations

import numpy as np

from ...config import DataConfig
from .base import RawData, RawSplit

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_PER_CLASS = 50


def digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into ``load_digits()``: 50 test images per class, fixed seed."""
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    test = []
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        test.append(rng.permutation(idx)[:DIGITS_TEST_PER_CLASS])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx.astype(np.int64), test_idx.astype(np.int64)


def read_digits(cfg: DataConfig) -> RawData:
    """Read the digits as uint8 (N, 8, 8, 1); ``cfg.data_dir`` is not used."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = digits_split(labels)
    return RawData(
        train=RawSplit(labels[train_idx], images[train_idx]),
        test=RawSplit(labels[test_idx], images[test_idx]),
        class_names=[str(c) for c in range(10)],
        source={"format": "sklearn-digits", "split_seed": DIGITS_SPLIT_SEED,
                "test_per_class": DIGITS_TEST_PER_CLASS},
    )
