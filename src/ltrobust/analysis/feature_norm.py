"""``feature-norm``: feature scaling under attack and classifier weight norms (RoBal Fig. 3).

Wu et al., "Adversarial Robustness under Long-Tailed Distribution", CVPR 2021
(https://arxiv.org/abs/2104.02703), Sec. 4.1 and Fig. 3:

- **left**: for every test image the deployed model classifies correctly, the scaling ratio
  ``||f(x + delta)||_2 / ||f(x)||_2`` of the penultimate features ``f`` (``model.features``) between the
  adversarial example (PGD-20 on the deployed logits by default) and the clean image, as two
  distributions: images the attack fooled ("attacked") and images that stayed correct ("robust").
  RoBal observes that successful attacks tend to have the larger ratio.
- **right**: the per-class classifier weight norms ``||W_c||_2`` (``model.head.weight.norm(dim=1)``, the
  trained head before any inference adjustment) against the training counts ``n_c``; RoBal observes that
  they roughly decrease towards the tail. The Spearman rank correlation between the two is reported.

Example::

    ltrobust analyze feature-norm runs/NAME n_per_class=100 attack=pgd20
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..registry import ANALYSES
from .base import (Analysis, CommonOptions, RunContext, adversarial, attack_spec, batch_seed, features, iter_test_batches,
                   logits, new_figure, per_class_subset, summary_stats)


@dataclass(frozen=True)
class FeatureNormOptions(CommonOptions):
    n_per_class: int = 0  #: test images per class (0: the whole test split)
    attack: str = "pgd20"  #: suite attack name (pgd20, cw20, mim20, ...), in the run's eval threat model
    bins: int = 30  #: histogram bins of the left panel


@ANALYSES.register("feature-norm")
class FeatureNorm(Analysis):
    """Feature-norm scaling ratio of attacked vs robust images, and classifier weight norms (RoBal Fig. 3)."""

    name = "feature-norm"
    Options = FeatureNormOptions
    runs = "one"

    def compute(self, runs: Sequence[RunContext], opts: FeatureNormOptions) -> dict[str, Any]:
        ctx = runs[0]
        run, bs = ctx.loaded, opts.batch_size
        idx = per_class_subset(ctx.data.test.labels, opts.n_per_class, opts.seed)
        spec = attack_spec(ctx, opts.attack)
        keep, ys, fooled, n_clean, n_adv = [], [], [], [], []
        for k, x, y in iter_test_batches(ctx, idx, bs):
            correct = logits(run.deployed, x, bs).argmax(1) == y  # (B,)
            xc, yc = x[correct], y[correct]
            x_adv = adversarial(run.deployed, xc, yc, spec, len(x), batch_seed(opts.seed, k))  # one attack batch
            fooled.append((logits(run.deployed, x_adv, bs).argmax(1) != yc).cpu())
            n_clean.append(features(run.model, xc, bs).norm(dim=1).double().cpu())
            n_adv.append(features(run.model, x_adv, bs).norm(dim=1).double().cpu())
            keep.append(correct.cpu())
            ys.append(yc.cpu())
        correct, attacked = torch.cat(keep), torch.cat(fooled).numpy()
        norm_clean, norm_adv = torch.cat(n_clean), torch.cat(n_adv)  # (n,) each
        ratio = (norm_adv / norm_clean).numpy()  # inf / nan where ||f(x)|| = 0, stored as null
        labels = torch.cat(ys).numpy()
        num_classes = len(ctx.class_counts)
        weight_norm = run.model.head.weight.detach().double().norm(dim=1).cpu().numpy()  # (C,)
        return {
            "attack": {"name": spec.name, "norm": spec.norm, "eps": spec.eps, "steps": spec.steps,
                       "step_size": spec.step_size},
            "n_images": int(len(idx)),
            "n_correct": int(correct.sum()),
            "n_attacked": int(attacked.sum()),
            "n_robust": int((~attacked).sum()),
            "test_index": idx[correct].tolist(),
            "labels": labels.tolist(),
            "attacked": attacked.tolist(),
            "feature_norm_clean": norm_clean.tolist(),
            "feature_norm_adv": norm_adv.tolist(),
            "ratio": ratio.tolist(),
            "ratio_stats": {"attacked": summary_stats(ratio[attacked]), "robust": summary_stats(ratio[~attacked])},
            "ratio_per_class": {name: [_mean_or_none(ratio[(labels == c) & mask]) for c in range(num_classes)]
                                for name, mask in (("attacked", attacked), ("robust", ~attacked))},
            "head": type(run.model.head).__name__,
            "weight_norm": weight_norm.tolist(),
            "class_counts": ctx.class_counts,
            "class_names": list(ctx.data.class_names),
            "weight_norm_count_spearman": _spearman(weight_norm, np.asarray(ctx.class_counts, dtype=np.float64)),
        }

    def plot(self, result: dict[str, Any], opts: FeatureNormOptions):
        fig = new_figure(9.0, 3.4)
        ax_l, ax_r = fig.subplots(1, 2)
        ratio = np.array([np.nan if r is None else r for r in result["ratio"]], dtype=np.float64)
        attacked = np.asarray(result["attacked"], dtype=bool)
        finite = np.isfinite(ratio)
        attack = result["attack"]["name"].upper()
        if finite.any():
            edges = np.histogram_bin_edges(ratio[finite], bins=opts.bins)
            for mask, label, color in ((attacked, "successfully attacked", "tab:red"),
                                       (~attacked, "robust", "tab:blue")):
                vals = ratio[mask & finite]
                if vals.size:
                    ax_l.hist(vals, bins=edges, density=True, alpha=0.5, color=color,
                              label=f"{label} (n={vals.size}, mean {vals.mean():.2f})")
                    ax_l.axvline(vals.mean(), color=color, ls="--", lw=1)
            ax_l.legend(fontsize=7)
        else:
            ax_l.text(0.5, 0.5, "no correctly classified test image", ha="center", va="center",
                      transform=ax_l.transAxes)
        ax_l.set_xlabel(r"scaling ratio $\|f(x+\delta)\| \,/\, \|f(x)\|$")
        ax_l.set_ylabel("density")
        ax_l.set_title(f"Feature norm under {attack} (clean-correct images)", fontsize=9)

        counts = np.asarray(result["class_counts"])
        order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))  # head -> tail
        names = result.get("class_names") or [str(c) for c in range(len(counts))]
        wn = np.asarray(result["weight_norm"])[order]
        pos = np.arange(len(order))
        ax_r.bar(pos, wn, color="tab:gray", label=r"$\|W_c\|$")
        ax_r.set_ylabel(r"classifier weight norm $\|W_c\|$")
        ax_r.set_xlabel("class (sorted by training count)")
        if len(order) <= 20:
            ax_r.set_xticks(pos, [names[c] for c in order], fontsize=7)
        twin = ax_r.twinx()
        twin.plot(pos, counts[order], "o-", color="tab:orange", ms=3, label="training count")
        twin.set_ylabel("training images", color="tab:orange")
        rho = result.get("weight_norm_count_spearman")
        rho_txt = f"{rho:.2f}" if isinstance(rho, float) else "n/a"
        ax_r.set_title(f"Weight norm vs count (Spearman rho {rho_txt}; {result['head']})", fontsize=9)
        return fig


def _mean_or_none(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])
