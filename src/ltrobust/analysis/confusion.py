"""``confusion``: clean and adversarial confusion matrices, and where the tail's adversarial examples land.

Under long-tailed training the adversarial examples of the tail classes are mostly sent to the head
classes (REAT Fig. 1, 5; SPEC 4 "the distribution of predicted classes of adversarial examples"). This
analysis attacks every selected test image (PGD-20 on the deployed logits by default, whether or not the
clean prediction was right, so both matrices count every image) and reports

- ``clean`` and ``adversarial``: ``M[i, j]`` = test images of true class ``i`` predicted as ``j``
  (:func:`ltrobust.evaluation.metrics.confusion_matrix`; rows sum to the test counts),
- per-class recall for both,
- ``tail_destinations``: for the tail classes (``tail=tail``: the rarest third by training count,
  ``tail=tail_group``: Cho et al.'s (ICLR 2025) tail group, or indices such as ``tail=7,8,9``), the percentage of their
  adversarial examples predicted as each class, and, for the *misclassified* ones, the percentage that
  lands in each class and in the head, body and tail groups (the figure's right panel).

Example::

    ltrobust analyze confusion runs/NAME attack=pgd20
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..evaluation.metrics import confusion_matrix, per_class_recall
from ..registry import ANALYSES
from .base import (Analysis, CommonOptions, RunContext, adversarial, attack_spec, batch_seed, iter_test_batches, logits,
                   new_figure, parse_classes, per_class_subset)

GROUPS = ("head", "body", "tail")


@dataclass(frozen=True)
class ConfusionOptions(CommonOptions):
    attack: str = "pgd20"  #: suite attack name (pgd20, cw20, aa, ...), in the run's eval threat model
    n_per_class: int = 0  #: test images per class (0: the whole test split)
    tail: str = "tail"  #: the classes whose AEs are followed: tail | tail_group | indices such as 7,8,9


@ANALYSES.register("confusion")
class Confusion(Analysis):
    """Clean and adversarial confusion matrices; the predicted classes of the tail's AEs."""

    name = "confusion"
    Options = ConfusionOptions
    runs = "one"

    def compute(self, runs: Sequence[RunContext], opts: ConfusionOptions) -> dict[str, Any]:
        ctx = runs[0]
        run, bs = ctx.loaded, opts.batch_size
        C = len(ctx.class_counts)
        idx = per_class_subset(ctx.data.test.labels, opts.n_per_class, opts.seed)
        spec = attack_spec(ctx, opts.attack)
        clean_p, adv_p, ys = [], [], []
        for k, x, y in iter_test_batches(ctx, idx, bs):  # every image is attacked, clean-correct or not
            x_adv = adversarial(run.deployed, x, y, spec, len(x), batch_seed(opts.seed, k))
            clean_p.append(logits(run.deployed, x, bs).argmax(1).cpu())
            adv_p.append(logits(run.deployed, x_adv, bs).argmax(1).cpu())
            ys.append(y.cpu())
        pred_clean, pred_adv, labels = (torch.cat(v).numpy() for v in (clean_p, adv_p, ys))
        clean, adv = confusion_matrix(pred_clean, labels, C), confusion_matrix(pred_adv, labels, C)
        tail = parse_classes(opts.tail, C, ctx.groups)
        return {
            "attack": {"name": spec.name, "norm": spec.norm, "eps": spec.eps, "steps": spec.steps},
            "n": int(len(labels)),
            "class_names": list(ctx.data.class_names),
            "class_counts": ctx.class_counts,
            "test_counts": np.bincount(labels, minlength=C).tolist(),
            "groups": {g: ctx.groups[g] for g in GROUPS},
            "clean": clean.tolist(),
            "adversarial": adv.tolist(),
            "recall_clean": per_class_recall(pred_clean, labels, C),
            "recall_adversarial": per_class_recall(pred_adv, labels, C),
            "accuracy_clean": 100.0 * int((pred_clean == labels).sum()) / len(labels),
            "accuracy_adversarial": 100.0 * int((pred_adv == labels).sum()) / len(labels),
            "tail_classes": tail,
            "tail_destinations": _destinations(adv, tail, ctx.groups),
            "test_index": idx.tolist(),
            "pred_clean": pred_clean.tolist(),
            "pred_adversarial": pred_adv.tolist(),
        }

    def plot(self, result: dict[str, Any], opts: ConfusionOptions):
        from matplotlib.patches import Patch

        fig = new_figure(13.0, 3.9)
        ax_c, ax_a, ax_t = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 1.1])
        names = result["class_names"]
        C = len(names)
        for ax, key, title in ((ax_c, "clean", f"clean (acc {result['accuracy_clean']:.1f}%)"),
                               (ax_a, "adversarial", f"{result['attack']['name'].upper()} "
                                                     f"(acc {result['accuracy_adversarial']:.1f}%)")):
            m = np.asarray(result[key], dtype=np.float64)
            rows = np.maximum(m.sum(axis=1, keepdims=True), 1)
            pct = 100 * m / rows
            im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
            if C <= 12:
                for i in range(C):
                    for j in range(C):
                        if m[i, j]:
                            ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=6,
                                    color="white" if pct[i, j] > 60 else "black")
                ax.set_xticks(range(C), names, fontsize=7)
                ax.set_yticks(range(C), names, fontsize=7)
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
            ax.set_title(title + ", row %", fontsize=9)
        fig.colorbar(im, ax=ax_a, shrink=0.8)
        dest = result["tail_destinations"]
        share = np.asarray(dest["percent_of_misclassified_by_class"])
        groups = result["groups"]
        color_of = {c: col for g, col in zip(GROUPS, ("tab:blue", "tab:green", "tab:red")) for c in groups[g]}
        ax_t.bar(range(C), share, color=[color_of.get(c, "tab:gray") for c in range(C)])
        handles = [Patch(color=col, label=f"{g}: {dest['misclassified_into_group'][g]:.0f}%")
                   for g, col in zip(GROUPS, ("tab:blue", "tab:green", "tab:red"))
                   if groups[g] and dest["misclassified_into_group"].get(g) is not None]
        if C <= 20:
            ax_t.set_xticks(range(C), names, fontsize=7)
        ax_t.set_xlabel("predicted class of the misclassified AE")
        ax_t.set_ylabel("% of the tail's misclassified AEs")
        tail_txt = ",".join(names[c] for c in result["tail_classes"]) if len(result["tail_classes"]) <= 10 \
            else f"{len(result['tail_classes'])} classes"
        ax_t.set_title(f"Where misclassified AEs of tail classes {tail_txt} land\n({dest['n_misclassified']} of "
                       f"{dest['n']} AEs)", fontsize=9)
        if handles:
            ax_t.legend(handles=handles, fontsize=7, title="destination group", title_fontsize=7)
        return fig


def _destinations(adv: np.ndarray, tail: Sequence[int], groups: dict[str, list[int]]) -> dict[str, Any]:
    """Predicted-class distribution of the tail classes' AEs (rows of the adversarial confusion matrix)."""
    rows = adv[list(tail)]  # (T, C)
    total = int(rows.sum())
    by_class = rows.sum(axis=0)  # (C,)
    wrong = rows.copy()
    for k, c in enumerate(tail):
        wrong[k, c] = 0
    wrong_total = int(wrong.sum())
    wrong_by_class = wrong.sum(axis=0)
    return {
        "n": total,
        "counts_by_class": by_class.tolist(),
        "percent_by_class": (100.0 * by_class / max(total, 1)).tolist(),
        "percent_kept": 100.0 * sum(int(adv[c, c]) for c in tail) / max(total, 1),
        "n_misclassified": wrong_total,
        "misclassified_counts_by_class": wrong_by_class.tolist(),
        "percent_of_misclassified_by_class": (100.0 * wrong_by_class / max(wrong_total, 1)).tolist(),
        "misclassified_into_group": {g: (100.0 * int(wrong_by_class[groups[g]].sum()) / wrong_total
                                         if wrong_total and groups[g] else None) for g in GROUPS},
        "per_tail_class": {str(c): (100.0 * adv[c] / max(int(adv[c].sum()), 1)).tolist() for c in tail},
    }
