"""Metrics against hand-built confusion matrices with every expected value written out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ltrobust.evaluation.metrics import (
    aggregate_seeds,
    boundary_error,
    class_groups,
    confusion_matrix,
    per_class_recall,
    predicted_distribution,
    summarize,
)
from ltrobust.errors import ConfigError, DataError

# A long-tailed test set (6 / 3 / 1 images) and its predictions; confusion matrix (rows: true class)
#   [[5, 1, 0],
#    [1, 2, 0],
#    [1, 0, 0]]
Y3 = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
P3 = [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
COUNTS3 = [500, 100, 10]  # many / medium / few; head / body / tail


def _summary3(**kw):
    correct = np.array(P3) == np.array(Y3)
    return summarize(correct, Y3, COUNTS3, **kw)


def test_confusion_matrix_and_recall():
    m = confusion_matrix(P3, Y3, 3)
    assert m.dtype == np.int64
    assert m.tolist() == [[5, 1, 0], [1, 2, 0], [1, 0, 0]]
    assert per_class_recall(P3, Y3, 3) == pytest.approx([500 / 6, 200 / 3, 0.0], abs=1e-12)
    # torch tensors on any device give the same
    assert confusion_matrix(torch.tensor(P3), torch.tensor(Y3), 3).tolist() == m.tolist()
    # a class without test images has no recall (None, never NaN)
    assert per_class_recall([0, 1, 1, 1], [0, 0, 1, 1], 3) == [50.0, 100.0, None]


def test_long_tailed_test_set_overall_differs_from_balanced():
    s = _summary3()
    assert s["n"] == 10
    assert s["accuracy"] == 70.0  # 7 / 10 images
    assert s["per_class"] == pytest.approx([83.33333333333333, 66.66666666666667, 0.0], abs=1e-12)
    assert s["balanced_accuracy"] == pytest.approx(50.0, abs=1e-12)  # (5/6 + 2/3 + 0) / 3
    assert s["head"] == pytest.approx(500 / 6) and s["body"] == pytest.approx(200 / 3) and s["tail"] == 0.0
    assert s["many"] == pytest.approx(500 / 6) and s["medium"] == pytest.approx(200 / 3) and s["few"] == 0.0
    assert s["tail_group"] == 0.0  # max(1, 3 // 10) = 1 class: class 2
    assert s["worst_class"] == {"class": 2, "recall": 0.0}
    assert s["groups"] == {"head": [0], "body": [1], "tail": [2], "many": [0], "medium": [1], "few": [2],
                           "tail_group": [2]}
    json.dumps(s, allow_nan=False)  # JSON-ready, no NaN
    assert all(type(v) is float for k, v in s.items() if k in ("accuracy", "balanced_accuracy", "head"))


# CIFAR-10-LT IR 100 training counts: int(5000 * 0.01 ** (c / 9))
COUNTS10 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CORRECT_PER_CLASS = [4, 4, 3, 3, 2, 2, 2, 1, 1, 0]  # of 4 test images per class


def _balanced10():
    y = np.repeat(np.arange(10), 4)
    correct = np.concatenate([[True] * k + [False] * (4 - k) for k in CORRECT_PER_CLASS])
    return correct, y


def test_c10_groups_and_values():
    correct, y = _balanced10()
    s = summarize(correct, y, COUNTS10, num_classes=10)
    assert s["per_class"] == [100.0, 100.0, 75.0, 75.0, 50.0, 50.0, 50.0, 25.0, 25.0, 0.0]
    assert s["accuracy"] == 55.0  # 22 / 40
    assert s["balanced_accuracy"] == 55.0  # balanced test set: the two agree
    assert s["groups"]["head"] == [0, 1, 2] and s["groups"]["body"] == [3, 4, 5, 6]
    assert s["groups"]["tail"] == [7, 8, 9]
    assert s["head"] == pytest.approx(275 / 3, abs=1e-12)  # (100 + 100 + 75) / 3
    assert s["body"] == 56.25  # (75 + 50 + 50 + 50) / 4
    assert s["tail"] == pytest.approx(50 / 3, abs=1e-12)  # (25 + 25 + 0) / 3
    assert s["groups"]["many"] == [0, 1, 2, 3, 4, 5, 6, 7]  # n_c > 100 (139 included)
    assert s["many"] == 65.625  # 525 / 8
    assert s["groups"]["medium"] == [8, 9] and s["medium"] == 12.5
    assert "few" not in s and s["groups"]["few"] == []  # empty group omitted
    assert s["groups"]["tail_group"] == [9] and s["tail_group"] == 0.0  # Cho et al., ICLR 2025: last class of 10
    assert s["worst_class"] == {"class": 9, "recall": 0.0}


def test_groups_follow_training_counts_not_indices():
    counts = COUNTS10[::-1]  # class 0 is now the rarest
    correct, y = _balanced10()
    s = summarize(correct, y, counts)
    assert s["groups"]["head"] == [7, 8, 9] and s["groups"]["tail"] == [0, 1, 2]
    assert s["head"] == pytest.approx(50 / 3) and s["tail"] == pytest.approx(275 / 3)
    assert s["groups"]["tail_group"] == [0] and s["tail_group"] == 100.0
    # ties keep class-index order: a balanced training set
    g = class_groups([50] * 10)
    assert g["head"] == [0, 1, 2] and g["body"] == [3, 4, 5, 6] and g["tail"] == [7, 8, 9]
    assert g["many"] == [] and g["medium"] == list(range(10)) and g["few"] == []


@pytest.mark.parametrize("num_classes, third, body, tail_k", [(100, 33, 34, 10), (200, 66, 68, 20),
                                                             (7, 2, 3, 1), (3, 1, 1, 1), (2, 0, 2, 1)])
def test_thirds_and_tail_group_sizes(num_classes, third, body, tail_k):
    counts = [int(500 * 0.1 ** (c / (num_classes - 1))) for c in range(num_classes)]  # IR 10
    g = class_groups(counts)
    assert len(g["head"]) == third and len(g["tail"]) == third and len(g["body"]) == body
    assert g["head"] == list(range(third))
    assert g["tail"] == list(range(num_classes - third, num_classes))
    assert g["tail_group"] == list(range(num_classes - tail_k, num_classes))  # Cho et al.: 10 of 100, 20 of 200
    if num_classes >= 5:  # a configured count
        assert class_groups(counts, tail_group=5)["tail_group"] == list(range(num_classes - 5, num_classes))


def test_c100_summary_tail_group():
    counts = [int(500 * 0.1 ** (c / 99)) for c in range(100)]  # CIFAR-100-LT IR 10: 500 ... 50
    y = np.repeat(np.arange(100), 2)
    correct = np.ones(200, dtype=bool)
    correct[180:] = False  # classes 90..99 all wrong
    correct[0] = False  # class 0 half right
    s = summarize(correct, y, counts)
    assert s["accuracy"] == 89.5  # 179 / 200
    assert s["tail_group"] == 0.0 and s["groups"]["tail_group"] == list(range(90, 100))
    assert s["head"] == pytest.approx((50 + 32 * 100) / 33)
    assert s["body"] == 100.0 and s["tail"] == pytest.approx(23 * 100 / 33)
    assert s["worst_class"] == {"class": 90, "recall": 0.0}  # lowest index among ties
    assert "few" not in s and set(s["groups"]["many"]) | set(s["groups"]["medium"]) == set(range(100))


def test_absent_classes_never_nan():
    # class 2 has no test image; it is in the tail, tail group and "few" group, which become empty
    y = [0, 0, 1, 1]
    correct = [True, False, True, True]
    s = summarize(correct, y, COUNTS3)
    assert s["per_class"] == [50.0, 100.0, None]
    assert s["balanced_accuracy"] == 75.0  # over the classes with test images
    assert "tail" not in s and "few" not in s and "tail_group" not in s
    assert s["worst_class"] == {"class": 0, "recall": 50.0}
    json.dumps(s, allow_nan=False)


def test_boundary_error():
    assert boundary_error([1, 1, 1, 0], [1, 0, 0, 0]) == 50.0
    assert boundary_error(torch.tensor([True, True]), np.array([False, True])) == 50.0
    assert boundary_error(66.1, 31.1) == pytest.approx(35.0)  # RoBal-style, from two accuracies


def test_predicted_distribution():
    d = predicted_distribution(P3, 3, y=Y3)
    assert d["overall"] == [70.0, 30.0, 0.0]
    expected = [[500 / 6, 100 / 6, 0.0], [100 / 3, 200 / 3, 0.0], [100.0, 0.0, 0.0]]
    for row, want in zip(d["by_true_class"], expected):
        assert row == pytest.approx(want, abs=1e-12)
    assert predicted_distribution([0, 0, 1, 0], 2) == {"overall": [75.0, 25.0]}
    d = predicted_distribution([0, 1], 3, y=[0, 0])
    assert d["by_true_class"] == [[50.0, 50.0, 0.0], None, None]


def test_aggregate_seeds():
    a = {"accuracy": 50.0, "per_class": [100.0, None], "worst_class": {"class": 1, "recall": 0.0},
         "attack": "pgd20", "few": 10.0}
    b = {"accuracy": 54.0, "per_class": [90.0, 20.0], "worst_class": {"class": 1, "recall": 20.0},
         "attack": "pgd20"}
    agg = aggregate_seeds([a, b])
    assert agg["accuracy"] == {"mean": 52.0, "std": pytest.approx(8 ** 0.5), "n": 2}
    assert agg["per_class"] == [{"mean": 95.0, "std": pytest.approx(50 ** 0.5), "n": 2},
                                {"mean": 20.0, "std": 0.0, "n": 1}]
    assert agg["worst_class"]["recall"] == {"mean": 10.0, "std": pytest.approx(200 ** 0.5), "n": 2}
    assert agg["attack"] == "pgd20" and agg["few"] == {"mean": 10.0, "std": 0.0, "n": 1}
    json.dumps(agg, allow_nan=False)


def test_errors():
    with pytest.raises(DataError, match=r"outside \[0, 2\]"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(DataError, match="entries"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(ConfigError, match="3 classes"):
        summarize([True], [0], [10, 10], num_classes=3)
    with pytest.raises(ConfigError, match="tail_group"):
        class_groups([10, 10], tail_group=3)
    with pytest.raises(ConfigError):
        aggregate_seeds([])


def test_class_spread_is_population_std_range_and_worst():
    from ltrobust.evaluation.metrics import class_spread

    got = class_spread([80.0, None, 60.0, 40.0])  # a class without test images is skipped
    assert got["std"] == pytest.approx((800.0 / 3) ** 0.5) and got["range"] == 40.0 and got["worst"] == 40.0
    assert class_spread([50.0, 50.0]) == {"std": 0.0, "range": 0.0, "worst": 50.0}
    assert class_spread([None]) is None
