"""Evaluation metrics for long-tailed robustness (SPEC 4 "Metrics"), pure functions of label arrays.

Every function takes NumPy arrays or torch tensors (any device) and returns plain Python numbers and
lists, so a result goes straight into JSON. Accuracies are percentages in [0, 100]; a quantity that is
undefined (the recall of a class with no test image, a group with no class) is ``None`` in a list or
left out of a dict, never NaN. Exact definitions and references: ``docs/evaluation_metrics.md``.

- :func:`confusion_matrix`, :func:`per_class_recall`
- :func:`summarize`: overall accuracy, per-class recall, balanced accuracy (TAET Eq. 10-11), head /
  body / tail thirds by training count, many / medium / few shot, the tail group (Cho et al.'s (ICLR 2025) T-Clean /
  T-PGD), the worst class
- :func:`boundary_error` (``A_nat - A_rob``, RoBal), :func:`predicted_distribution`
- :func:`aggregate_seeds`: mean and standard deviation over runs
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError

#: Many / medium / few shot by training images per class (Liu et al., "Large-Scale Long-Tailed
#: Recognition in an Open World", CVPR 2019): many > 100, medium 20-100, few < 20.
MANY_SHOT_MIN = 100  # a class is "many" when n_c > 100
FEW_SHOT_MAX = 20  # a class is "few" when n_c < 20


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _labels(a: Any, num_classes: int, what: str) -> np.ndarray:
    arr = _np(a).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise DataError(f"{what} must be integer class indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(f"{what} has a value outside [0, {num_classes - 1}] for {num_classes} classes "
                        f"(min {arr.min()}, max {arr.max()}).")
    return arr


def _check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must be a positive integer.")
    return int(num_classes)


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return math.fsum(vals) / len(vals)


def confusion_matrix(pred: Any, y: Any, num_classes: int) -> np.ndarray:
    """Counts ``M[i, j]`` of test images of true class ``i`` predicted as class ``j``: (C, C) int64.

    Args:
        pred: predicted classes (N,).
        y: true classes (N,).
        num_classes: C.

    Example::

        confusion_matrix([0, 1, 1], [0, 0, 1], 2)   # array([[1, 1], [0, 1]])
    """
    num_classes = _check_num_classes(num_classes)
    p, t = _labels(pred, num_classes, "pred"), _labels(y, num_classes, "y")
    if p.shape != t.shape:
        raise DataError(f"pred has {p.size} entries but y has {t.size}.")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _recalls(correct: np.ndarray, y: np.ndarray, num_classes: int) -> list[float | None]:
    n = np.bincount(y, minlength=num_classes)
    k = np.bincount(y, weights=correct.astype(np.float64), minlength=num_classes)
    return [100.0 * float(k[c]) / int(n[c]) if n[c] else None for c in range(num_classes)]


def per_class_recall(pred: Any, y: Any, num_classes: int) -> list[float | None]:
    """Recall of each class in percent, ``100 * M[c, c] / sum_j M[c, j]``; ``None`` for a class with no
    test image.

    Example::

        per_class_recall([0, 1, 1, 1], [0, 0, 1, 1], 3)   # [50.0, 100.0, None]
    """
    m = confusion_matrix(pred, y, num_classes)
    support = m.sum(axis=1)
    return [100.0 * int(m[c, c]) / int(support[c]) if support[c] else None for c in range(m.shape[0])]


def class_order(class_counts: Sequence[int]) -> list[int]:
    """Classes sorted by training count, largest first (ties keep the lower class index first)."""
    counts = [int(c) for c in class_counts]
    return sorted(range(len(counts)), key=lambda c: (-counts[c], c))


def class_groups(class_counts: Sequence[int], tail_group: int | None = None) -> dict[str, list[int]]:
    """Class indices of every group :func:`summarize` reports (empty groups included here).

    - ``head`` / ``body`` / ``tail``: classes sorted by training count, largest first; head = the first
      ``floor(C/3)``, tail = the last ``floor(C/3)``, body = the rest.
    - ``many`` / ``medium`` / ``few``: ``n_c > 100``, ``20 <= n_c <= 100``, ``n_c < 20``.
    - ``tail_group``: the last ``tail_group`` classes of that order; default ``max(1, C // 10)`` (Cho et al., ICLR 2025:
      the last class of 10, the last 10 of 100, the last 20 of 200).

    Each list is in ascending class index.
    """
    num_classes = len(class_counts)
    if num_classes < 1:
        raise ConfigError("class_counts is empty: give the training count of every class.")
    counts = [int(c) for c in class_counts]
    if min(counts) < 0:
        raise ConfigError(f"class_counts has a negative count: {counts}.")
    order = class_order(counts)
    third = num_classes // 3
    k = max(1, num_classes // 10) if tail_group is None else int(tail_group)
    if not 1 <= k <= num_classes:
        raise ConfigError(f"tail_group={tail_group} must lie in [1, {num_classes}] (classes in the tail group).")
    return {
        "head": sorted(order[:third]),
        "body": sorted(order[third:num_classes - third]),
        "tail": sorted(order[num_classes - third:]) if third else [],
        "many": [c for c in range(num_classes) if counts[c] > MANY_SHOT_MIN],
        "medium": [c for c in range(num_classes) if FEW_SHOT_MAX <= counts[c] <= MANY_SHOT_MIN],
        "few": [c for c in range(num_classes) if counts[c] < FEW_SHOT_MAX],
        "tail_group": sorted(order[num_classes - k:]),
    }


def summarize(correct: Any, y: Any, class_counts: Sequence[int] | None, num_classes: int | None = None,
              tail_group: int | None = None) -> dict[str, Any]:
    """Every SPEC 4 metric of one evaluation (clean or one attack) from per-sample correctness.

    Group accuracies are the mean per-class recall over the group's classes that have test images (on a
    balanced test set this equals the pooled accuracy of the group's images). Groups without such a
    class are left out.

    Args:
        correct: (N,) bool, True where the prediction (clean, or under attack) is right.
        y: (N,) true classes.
        class_counts: training images per class (length C); they define the groups. ``None``: unknown,
            so the count-based groups (head / body / tail, many / medium / few, tail group) are left
            out and ``num_classes`` is required.
        num_classes: C; default ``len(class_counts)`` (must agree).
        tail_group: classes in the tail group; default ``max(1, C // 10)``.

    Returns:
        ``{"n", "accuracy", "balanced_accuracy", "per_class" (list, None for a class without test
        images), "head", "body", "tail", "many", "medium", "few" (each only when non-empty),
        "tail_group", "worst_class": {"class", "recall"}, "groups": {name: [class indices]}}``.

    Example::

        m = summarize(pred == y, y, class_counts=[500, 100, 10])
        m["accuracy"], m["balanced_accuracy"], m["tail"]
    """
    if class_counts is None and num_classes is None:
        raise ConfigError("summarize needs class_counts or num_classes.")
    counts = None if class_counts is None else [int(c) for c in class_counts]
    num_classes = len(counts) if num_classes is None else _check_num_classes(num_classes)  # type: ignore[arg-type]
    if counts is not None and len(counts) != num_classes:
        raise ConfigError(f"class_counts has {len(counts)} entries for {num_classes} classes.")
    t = _labels(y, num_classes, "y")
    ok = _np(correct).reshape(-1).astype(bool)
    if ok.shape != t.shape:
        raise DataError(f"correct has {ok.size} entries but y has {t.size}.")
    if t.size == 0:
        raise DataError("summarize got no test images.")
    recall = _recalls(ok, t, num_classes)
    present = [c for c in range(num_classes) if recall[c] is not None]
    groups = class_groups(counts, tail_group) if counts is not None else {}
    out: dict[str, Any] = {
        "n": int(t.size),
        "accuracy": 100.0 * int(ok.sum()) / int(t.size),
        "balanced_accuracy": _mean(recall[c] for c in present),  # type: ignore[misc]
        "per_class": recall,
    }
    for name in groups:
        members = [c for c in groups[name] if recall[c] is not None]
        if members:
            out[name] = _mean(recall[c] for c in members)  # type: ignore[misc]
    worst = min(present, key=lambda c: (recall[c], c))
    out["worst_class"] = {"class": int(worst), "recall": recall[worst]}
    if counts is not None:
        out["groups"] = groups
    return out


def class_spread(per_class: Sequence[float | None]) -> dict[str, float] | None:
    """Robust fairness of per-class recalls (%): their population standard deviation over the classes,
    ``max - min`` and the worst class's recall; classes without test images (None) are skipped.

    Example::

        class_spread([80.0, 60.0, 40.0])   # {'std': 16.33, 'range': 40.0, 'worst': 40.0} (std rounded here)
    """
    vals = [float(v) for v in per_class if v is not None]
    if not vals:
        return None
    mean = _mean(vals)
    return {"std": math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / len(vals)), "range": max(vals) - min(vals),
            "worst": min(vals)}


def _percent(a: Any) -> float:
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return float(a)
    arr = _np(a).reshape(-1)
    if arr.size == 0:
        raise DataError("boundary_error got an empty array.")
    return 100.0 * float(arr.astype(bool).sum()) / arr.size


def boundary_error(clean_correct: Any, robust_correct: Any) -> float:
    """Boundary error ``A_nat - A_rob`` in percentage points (RoBal, Wu et al. CVPR 2021, Sec. 3).

    Args:
        clean_correct: (N,) bool correctness on clean images, or the clean accuracy in percent.
        robust_correct: (N,) bool correctness under attack, or the robust accuracy in percent.

    Example::

        boundary_error([1, 1, 1, 0], [1, 0, 0, 0])   # 75.0 - 25.0 = 50.0
    """
    return _percent(clean_correct) - _percent(robust_correct)


def predicted_distribution(pred_adv: Any, num_classes: int, y: Any | None = None) -> dict[str, Any]:
    """Where adversarial examples are sent: histogram of predicted classes, in percent.

    Args:
        pred_adv: (N,) predicted classes of the adversarial examples.
        num_classes: C.
        y: (N,) true classes; when given, also the row-normalised C x C matrix.

    Returns:
        ``{"overall": [C floats summing to 100]}`` and, with ``y``, ``"by_true_class"``: row ``i`` is the
        distribution (percent) of predictions for the adversarial examples of true class ``i`` (``None``
        for a class without test images).

    Example::

        predicted_distribution([0, 0, 1, 0], 2)   # {'overall': [75.0, 25.0]}
    """
    num_classes = _check_num_classes(num_classes)
    p = _labels(pred_adv, num_classes, "pred_adv")
    if p.size == 0:
        raise DataError("predicted_distribution got no predictions.")
    hist = np.bincount(p, minlength=num_classes)
    out: dict[str, Any] = {"overall": [100.0 * int(h) / int(p.size) for h in hist]}
    if y is not None:
        m = confusion_matrix(p, y, num_classes)
        rows = m.sum(axis=1)
        out["by_true_class"] = [[100.0 * int(v) / int(rows[i]) for v in m[i]] if rows[i] else None
                                for i in range(num_classes)]
    return out


def aggregate_seeds(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of every number across runs (e.g. seeds) of the same evaluation.

    Dicts and lists are walked in parallel; each number (``bool`` excluded) becomes
    ``{"mean", "std", "n"}`` with the sample standard deviation (``ddof=1``; 0.0 for a single run).
    ``None`` entries and missing keys are skipped (``n`` counts the runs that had the value; a value no
    run had becomes ``None``); other values are kept when every run agrees, else listed.

    Example::

        aggregate_seeds([{"accuracy": 50.0}, {"accuracy": 54.0}])
        # {'accuracy': {'mean': 52.0, 'std': 2.8284271247461903, 'n': 2}}
    """
    if not results:
        raise ConfigError("aggregate_seeds needs at least one result.")
    return _aggregate(list(results))


def _aggregate(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(isinstance(v, Mapping) for v in vals):
        keys: list[str] = []
        for v in vals:
            keys += [k for k in v if k not in keys]
        return {k: _aggregate([v[k] for v in vals if k in v]) for k in keys}
    if all(isinstance(v, (list, tuple)) for v in vals) and len({len(v) for v in vals}) == 1:
        return [_aggregate([v[i] for v in vals]) for i in range(len(vals[0]))]
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
           for v in vals):
        xs = [float(v) for v in vals]
        mean = _mean(xs)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return {"mean": mean, "std": std, "n": len(xs)}
    first = vals[0]
    return first if all(v == first for v in vals) else vals
