"""Long-tailed profiles, the LDAM-DRW selection, build_data's split rules and the device loader."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from ltrobust.config import DataConfig
from ltrobust.data import (ArraySplit, DeviceLoader, balanced_order, balanced_resample, balanced_resample_indices,
                           build_data, class_counts, class_groups, data_info, random_crop, resample_gamma,
                           select_lt_indices)
from ltrobust.data.formats.digits import digits_split
from ltrobust.errors import ConfigError, DataError


# ----------------------------------------------------------------------------------------- profiles
@pytest.mark.parametrize("n_max, num_classes, ir, total", [
    (5000, 10, 100, 12406), (5000, 10, 50, 13996), (5000, 10, 20, 17023), (5000, 10, 10, 20431),
    (500, 100, 10, 19573), (500, 200, 10, 39072),
])
def test_exp_profile_totals(n_max, num_classes, ir, total):
    assert sum(class_counts("exp", n_max, num_classes, ir)) == total


def test_exp_profile_per_class_cifar10():
    assert class_counts("exp", 5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert class_counts("exp", 5000, 10, 50) == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]


def test_other_profiles():
    assert class_counts("step", 5000, 10, 50) == [5000] * 5 + [100] * 5
    assert class_counts("step", 500, 7, 10) == [500] * 3 + [50] * 4
    assert class_counts("full", 5000, 10, 50) == [5000] * 10
    assert class_counts("balanced-small", 5000, 10, 100) == [1240] * 10  # 12,406 // 10
    assert class_counts("exp", 5000, 10, 1) == [5000] * 10
    with pytest.raises(ConfigError):
        class_counts("quadratic", 5000, 10, 10)  # "linear" is a profile since issue 17


def _ldam_drw_official(labels, img_num_per_cls, seed):
    """IMBALANCECIFAR10.gen_imbalanced_data of github.com/kaidic/LDAM-DRW (imbalance_cifar.py), verbatim
    apart from returning indices instead of images; ``np.random.seed(rand_number)`` as in its __init__."""
    np.random.seed(seed)
    new_idx = []
    targets_np = np.array(labels, dtype=np.int64)
    classes = np.unique(targets_np)
    for the_class, the_img_num in zip(classes, img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selec_idx = idx[:the_img_num]
        new_idx.append(selec_idx)
    return np.concatenate(new_idx)


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_selection_equals_ldam_drw_global_seed_code(seed):
    labels = np.random.RandomState(7).permutation(np.repeat(np.arange(10), 5000))  # CIFAR-10-sized, shuffled
    counts = class_counts("exp", 5000, 10, 50)
    state = np.random.get_state()
    try:
        expected = _ldam_drw_official(labels, counts, seed)
    finally:
        np.random.set_state(state)
    ours = select_lt_indices(labels, counts, seed)
    np.testing.assert_array_equal(ours, expected)
    assert np.bincount(labels[ours]).tolist() == counts


def test_selection_does_not_touch_global_rng():
    state = np.random.get_state()[1].copy()
    select_lt_indices(np.repeat(np.arange(3), 4), [4, 2, 1], 0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_class_groups():
    g = class_groups(class_counts("exp", 5000, 10, 100))
    assert (g["head"], g["body"], g["tail"]) == ([0, 1, 2], [3, 4, 5, 6], [7, 8, 9])
    assert g["many"] == list(range(8)) and g["medium"] == [8, 9] and g["few"] == []
    # boundaries: > 100 many, 20..100 medium, < 20 few; thirds follow the counts, not the index
    g = class_groups([101, 100, 20, 19, 500, 1])
    assert (g["many"], g["medium"], g["few"]) == ([0, 4], [1, 2], [3, 5])
    assert (g["head"], g["body"], g["tail"]) == ([0, 4], [1, 2], [3, 5])
    g = class_groups([5, 5])  # C < 3: no head or tail third
    assert g["head"] == [] and g["tail"] == [] and g["body"] == [0, 1]


def test_balanced_order_prefix_is_balanced():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 4)
    order = balanced_order(labels)
    assert sorted(order.tolist()) == list(range(12))
    assert labels[order[:9]].tolist() == [0, 1, 2] * 3


# ---------------------------------------------------------------------------------- build_data (digits)
@pytest.fixture(scope="module")
def digits():
    return build_data(DataConfig(dataset="digits-lt", imbalance=10))


def test_digits_split_is_fixed_and_stratified():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, test = digits_split(labels)
    assert np.bincount(labels[test]).tolist() == [50] * 10
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 1797
    assert np.bincount(labels[train]).min() == 124  # digits-lt's n_max
    np.testing.assert_array_equal(digits_split(labels)[1], test)


def test_digits_training_set_is_exactly_the_lt_selection(digits):
    from ltrobust.data.formats.digits import read_digits

    raw = read_digits(DataConfig())
    counts = class_counts("exp", 124, 10, 10)
    assert digits.class_counts == counts and len(digits.train) == sum(counts)
    chosen = select_lt_indices(raw.train.labels, counts, 0)
    np.testing.assert_array_equal(np.concatenate([digits.manifest["indices"]["train"][str(c)] for c in range(10)]),
                                  chosen)
    expected = torch.from_numpy(raw.train.images[chosen]).permute(0, 3, 1, 2)
    assert torch.equal(digits.train.images, expected)
    assert digits.train.labels.tolist() == raw.train.labels[chosen].tolist()
    assert digits.channels == 1 and digits.image_size == 8 and digits.flip is False


def test_validation_is_balanced_disjoint_from_test_and_records_overlap(digits):
    m = digits.manifest
    assert torch.bincount(digits.val.labels).tolist() == [10] * 10
    assert m["counts"]["val"] == [10] * 10
    # val comes from the training split: none of its images is a test image
    from sklearn.datasets import load_digits

    train_src, test_src = digits_split(load_digits().target)
    val_src = train_src[np.concatenate([m["indices"]["val"][str(c)] for c in range(10)])]
    assert len(np.intersect1d(val_src, test_src)) == 0
    # class 0 keeps 124 of its 128 training images: 6 of its 10 validation images are training images
    overlap = [len(set(m["indices"]["val"][str(c)]) & set(m["indices"]["train"][str(c)])) for c in range(10)]
    assert overlap == m["val_overlap"] == [6] + [0] * 9
    # the validation images are the next ones in the class's shuffled order
    from ltrobust.data.formats.digits import read_digits
    from ltrobust.data.profiles import class_orders

    order = class_orders(read_digits(DataConfig()).train.labels, 0)
    assert m["indices"]["val"]["5"] == order[5][34:44].tolist()
    assert digits.val.labels[:10].tolist() == list(range(10))  # balanced (round-robin) order


def test_overlap_is_logged_once_per_process(caplog, monkeypatch):
    from ltrobust.data import lt

    monkeypatch.setattr(lt, "_WARNED", set())
    with caplog.at_level(logging.DEBUG, logger="ltrobust.data"):
        build_data(DataConfig(dataset="digits-lt"))
        build_data(DataConfig(dataset="digits-lt"))  # the same data set again (a demo's next run)
    hits = [r for r in caplog.records if "val_overlap" in r.getMessage() and "0 (0): 6" in r.getMessage()]
    assert [r.levelno for r in hits] == [logging.WARNING, logging.DEBUG]


def test_val_from_holdout_removes_overlap_from_training():
    d = build_data(DataConfig(dataset="digits-lt", val_from="holdout"))
    m = d.manifest
    assert d.class_counts[0] == 124 - 6 and d.class_counts[1:] == class_counts("exp", 124, 10, 10)[1:]
    assert m["holdout_removed"] == [6] + [0] * 9 and m["val_overlap"] == [0] * 10
    for c in range(10):
        assert not set(m["indices"]["val"][str(c)]) & set(m["indices"]["train"][str(c)])


def test_test_profile_lt_changes_overall_but_not_balanced_accuracy(digits):
    lt = build_data(DataConfig(dataset="digits-lt", test_profile="lt"))
    assert digits.manifest["counts"]["test"] == [50] * 10
    assert lt.manifest["counts"]["test"] == class_counts("exp", 50, 10, 10) == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]

    def accuracies(split):  # a predictor that is right on class 0 only
        pred = torch.zeros_like(split.labels)
        correct = (pred == split.labels).float()
        per_class = [correct[split.labels == c].mean().item() for c in range(10)]
        return correct.mean().item(), float(np.mean(per_class))

    overall_full, balanced_full = accuracies(digits.test)
    overall_lt, balanced_lt = accuracies(lt.test)
    assert overall_full == pytest.approx(0.1) and overall_lt == pytest.approx(50 / 199)
    assert balanced_full == pytest.approx(0.1) == balanced_lt


def test_manifest_is_json_and_reproducible(digits):
    text = json.dumps(digits.manifest, allow_nan=False)
    again = build_data(DataConfig(dataset="digits-lt", imbalance=10))
    assert json.dumps(again.manifest, allow_nan=False) == text
    other = build_data(DataConfig(dataset="digits-lt", imbalance=10, selection_seed=1))
    assert other.manifest["indices_sha256"] != digits.manifest["indices_sha256"]
    m = digits.manifest
    assert (m["dataset"], m["profile"], m["imbalance"], m["selection_seed"]) == ("digits-lt", "exp", 10.0, 0)
    assert m["counts"]["train"] == digits.class_counts and m["totals"]["train"] == 503


def test_val_per_class_zero_and_other_profiles():
    d = build_data(DataConfig(dataset="digits-lt", val_per_class=0, profile="step", imbalance=4))
    assert d.val is None and d.class_counts == [124] * 5 + [31] * 5
    d = build_data(DataConfig(dataset="digits-lt", profile="balanced-small", imbalance=10))
    assert d.class_counts == [50] * 10
    with pytest.raises(DataError, match="val_per_class"):
        build_data(DataConfig(dataset="digits-lt", val_per_class=200))
    with pytest.raises(ConfigError, match="imbalance <= 124"):
        build_data(DataConfig(dataset="digits-lt", imbalance=200))


def test_balanced_resample_counts(digits):
    gamma = resample_gamma(digits.config, digits.class_counts)
    assert gamma == 5.0  # IR / 2
    teacher = balanced_resample(digits.train, digits.class_counts, gamma, seed=0)
    assert torch.bincount(teacher.labels).tolist() == [60] * 10  # int(5 * n_min 12)
    idx = balanced_resample_indices(digits.train.labels.numpy(), gamma, seed=0)
    labels = digits.train.labels.numpy()
    head = idx[labels[idx] == 0]
    assert len(np.unique(head)) == 60  # down-sampled without replacement
    tail = idx[labels[idx] == 9]
    assert set(tail.tolist()) == set(np.where(labels == 9)[0].tolist())  # every tail image kept (5 times)
    assert np.bincount(tail).max() == 5
    iid = balanced_resample_indices(labels, gamma, seed=0, tail="iid")
    assert np.bincount(labels[iid]).tolist() == [60] * 10
    assert torch.equal(teacher.images, digits.train.images[torch.from_numpy(idx)])


def test_data_info_table(digits):
    text = data_info(DataConfig(dataset="digits-lt", imbalance=10))
    assert "class  name" in text and "train" in text and "group" in text
    assert "total" in text and "503" in text
    assert "head      3 classes" in text and "few       2 classes" in text
    assert "also in the training set: class 0 (0) 6" in text


def test_registry_and_errors():
    from ltrobust.registry import DATASETS

    for name in ("digits-lt", "cifar10-lt", "cifar100-lt", "tinyimagenet-lt", "imagenet-lt", "dermamnist"):
        assert name in DATASETS
    spec = DATASETS.get("cifar10-lt")
    assert (spec.num_classes, spec.n_max, spec.channels, spec.image_size, spec.crop_padding, spec.flip) == \
        (10, 5000, 3, 32, 4, True)
    assert DATASETS.get("digits-lt").flip is False
    with pytest.raises(ConfigError, match="cifar10-lt"):
        build_data(DataConfig(dataset="cifar10_lt"))


# ------------------------------------------------------------------------------------------ loader
def _toy_split(n=37, c=3, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return ArraySplit(images, torch.arange(n, dtype=torch.int64) % 4)


def _epoch(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_loader_no_augment_returns_stored_images():
    split = _toy_split()
    loader = DeviceLoader(split, 8, shuffle=False, augment="none")
    assert len(loader) == 5
    xs, ys = zip(*_epoch(loader))
    assert torch.equal(torch.cat(xs), split.images.float() / 255) and torch.equal(torch.cat(ys), split.labels)
    assert xs[0].dtype == torch.float32 and ys[0].dtype == torch.int64
    # shuffled: a permutation, and each batch is exactly the stored images of its labels' rows
    shuffled = DeviceLoader(split, 8, shuffle=True, augment="none", seed=3)
    order = shuffled.epoch_order(0)
    xs, ys = zip(*_epoch(shuffled))
    assert sorted(order.tolist()) == list(range(37))
    assert torch.equal(torch.cat(xs), split.images[order].float() / 255)


def test_crop_flip_keeps_range_and_shape_and_matches_reference():
    split = _toy_split(n=16, h=8, w=8)
    loader = DeviceLoader(split, 16, shuffle=False, augment="crop_flip", padding=2, seed=1)
    (x, y), = _epoch(loader)
    assert x.shape == (16, 3, 8, 8) and x.min() >= 0 and x.max() <= 1
    # each output is a window of the zero-padded image, possibly flipped
    padded = torch.nn.functional.pad(split.images.float() / 255, (2, 2, 2, 2))
    for k in range(16):
        windows = [padded[k, :, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(x[k], win) or torch.equal(x[k], win.flip(2)) for win in windows)
    offsets = torch.tensor([[0, 4], [2, 2]])
    out = random_crop(split.images[:2], 2, offsets)
    pad_u8 = torch.nn.functional.pad(split.images[:2], (2, 2, 2, 2))
    assert torch.equal(out[0], pad_u8[0, :, 0:8, 4:12]) and torch.equal(out[1], split.images[1])


def test_loader_is_deterministic_per_seed_and_epoch():
    split = _toy_split()
    a = DeviceLoader(split, 8, shuffle=True, augment="crop_flip", padding=2, seed=5)
    b = DeviceLoader(split, 8, shuffle=True, augment="crop_flip", padding=2, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    ea, eb = _epoch(a), _epoch(b)
    assert all(torch.equal(u, v) for ba, bb in zip(ea, eb) for u, v in zip(ba, bb))
    # epoch 3 reached by iterating equals epoch 3 set directly
    c = DeviceLoader(split, 8, shuffle=True, augment="crop_flip", padding=2, seed=5)
    for _ in range(3):
        _epoch(c)
    assert c.epoch == 3 and all(torch.equal(u, v) for bc, ba in zip(_epoch(c), ea) for u, v in zip(bc, ba))
    other = DeviceLoader(split, 8, shuffle=True, augment="crop_flip", padding=2, seed=6)
    other.set_epoch(3)
    assert not torch.equal(_epoch(other)[0][1], ea[0][1])


def test_loader_state_dict_resumes_exactly():
    split = _toy_split()
    full = _epoch(DeviceLoader(split, 8, shuffle=True, augment="crop_flip", padding=2, seed=2))
    loader = DeviceLoader(split, 8, shuffle=True, augment="crop_flip", padding=2, seed=2)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 2
    fresh = DeviceLoader(split, 8, shuffle=True, augment="crop_flip", padding=2, seed=0)
    fresh.load_state_dict(state)
    rest = _epoch(fresh)
    assert len(rest) == 3 and all(torch.equal(u, v) for br, bf in zip(rest, full[2:]) for u, v in zip(br, bf))
    assert fresh.epoch == 1
    with pytest.raises(DataError):
        DeviceLoader(split, 4).load_state_dict(state)


def test_pad_last_and_drop_last():
    split = _toy_split(n=10)
    padded = _epoch(DeviceLoader(split, 4, pad_last=True))
    assert len(padded) == 3 and all(x.shape[0] == 4 for x, _, _ in padded)
    x, y, mask = padded[-1]
    assert mask.tolist() == [True, True, False, False] and y.tolist() == split.labels[[8, 9, 8, 9]].tolist()
    assert len(DeviceLoader(split, 4, drop_last=True)) == 2 and len(_epoch(DeviceLoader(split, 4, drop_last=True))) == 2


def test_class_balanced_sampler():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    split = ArraySplit(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), labels)
    loader = DeviceLoader(split, 100, sampler="class_balanced", seed=0)
    drawn = torch.cat([y for _, y in loader])
    freq = torch.bincount(drawn, minlength=3).float() / len(drawn)
    assert len(drawn) == 1000 and torch.all((freq - 1 / 3).abs() < 0.06)


@pytest.mark.parametrize("augment", ["autoaugment", "randaugment"])
def test_policy_augment(augment, digits):
    loader = DeviceLoader(digits.train, 32, shuffle=True, augment=augment, padding=1, flip=False, seed=0)
    (x1, y1), (x2, y2) = next(iter(loader)), next(iter(DeviceLoader(digits.train, 32, shuffle=True, augment=augment,
                                                                     padding=1, flip=False, seed=0)))
    assert x1.shape == (32, 1, 8, 8) and 0 <= x1.min() and x1.max() <= 1
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    policy = loader._policy  # the AT-BSL code's policies: AutoAugment's CIFAR-10 policy, RandAugment(2, 8)
    assert (str(policy.policy) == "AutoAugmentPolicy.CIFAR10" if augment == "autoaugment"
            else (policy.num_ops, policy.magnitude) == (2, 8))


def test_loader_rejects_bad_options():
    with pytest.raises(ConfigError):
        DeviceLoader(_toy_split(), 8, augment="mixup")
    with pytest.raises(ConfigError):
        DeviceLoader(_toy_split(), 8, drop_last=True, pad_last=True)


# ------------------------------------------------------------------------------- real CIFAR-10 copy
@pytest.mark.parametrize("ir, total", [(50, 13996), (100, 12406), (10, 20431)])
def test_shared_cifar10_copy(cifar10_jpeg_dir, ir, total):
    d = build_data(DataConfig(dataset="cifar10-lt", data_dir=str(cifar10_jpeg_dir), imbalance=ir))
    assert len(d.train) == total == sum(d.class_counts)
    assert d.class_counts == class_counts("exp", 5000, 10, ir)
    assert d.class_names[:3] == ["airplane", "automobile", "bird"] and d.class_names[9] == "truck"
    assert d.train.images.shape[1:] == (3, 32, 32) and d.train.images.dtype == torch.uint8
    assert len(d.test) == 10000 and torch.bincount(d.test.labels).tolist() == [1000] * 10
    assert torch.bincount(d.val.labels).tolist() == [100] * 10
    assert d.manifest["val_overlap"] == [100] + [0] * 9  # class 0 keeps all its 5000 images
    if ir == 50:
        assert d.class_counts[0] == 5000 and d.class_counts[-1] == 100
        assert torch.bincount(d.train.labels).tolist() == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
