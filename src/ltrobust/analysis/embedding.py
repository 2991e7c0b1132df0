"""``embedding``: 2-D t-SNE of clean and adversarial test features, coloured by class.

- REAT (Li et al., ICCV 2023, https://arxiv.org/abs/2307.08467) Fig. 2, 7 and 10: t-SNE of the
  penultimate features of PGD-20 adversarial test images; on long-tailed data the head classes'
  regions expand and encroach on the tail's.
- TAET (CVPR 2025) Fig. 3: t-SNE of the *logits* of the tail classes (the last five of CIFAR-10):
  ``space=logits classes=tail``.

Clean and adversarial points are embedded by **one** t-SNE (scikit-learn, PCA initialisation), so the two
panels share coordinates and an adversarial point can be compared with its clean image. Because t-SNE
distances are not faithful, the JSON also reports a number computed in the original space: the k-nearest-
neighbour class purity of each class (mean fraction of a point's ``knn`` nearest neighbours, Euclidean, in
the same set, that share its class), for the clean and the adversarial set.

Example::

    ltrobust analyze embedding runs/NAME classes=0,5,9 n_per_class=200
    ltrobust analyze embedding runs/NAME space=logits classes=tail
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import ANALYSES
from .base import (Analysis, CommonOptions, RunContext, adversarial, attack_spec, class_colors, features, load_test_images,
                   logits, new_figure, parse_classes, per_class_subset)

EXACT_TSNE_MAX = 400  #: up to this many points the exact t-SNE gradient is both exact and faster


@dataclass(frozen=True)
class EmbeddingOptions(CommonOptions):
    classes: str = "all"  #: all | a group (head, body, tail, tail_group, many, medium, few) | indices 0,5,9
    n_per_class: int = 100  #: test images per class (0: all; t-SNE is quadratic-ish, keep it modest)
    space: str = "features"  #: features (penultimate, REAT) | logits (deployed logits, TAET Fig. 3)
    attack: str = "pgd20"  #: suite attack producing the adversarial points
    perplexity: float = 30.0  #: t-SNE perplexity (capped below the number of points)
    knn: int = 10  #: neighbours of the class-purity score
    tsne: str = "auto"  #: t-SNE gradient: auto (exact up to 400 points, Barnes-Hut beyond) | exact | barnes_hut


@ANALYSES.register("embedding")
class Embedding(Analysis):
    """t-SNE of clean and adversarial test features coloured by class (REAT Fig. 2, 7, 10; TAET Fig. 3)."""

    name = "embedding"
    Options = EmbeddingOptions
    runs = "one"

    def compute(self, runs: Sequence[RunContext], opts: EmbeddingOptions) -> dict[str, Any]:
        from sklearn.manifold import TSNE

        if opts.space not in ("features", "logits"):
            raise ConfigError(f"space={opts.space!r}: use features or logits.")
        if opts.tsne not in ("auto", "exact", "barnes_hut"):
            raise ConfigError(f"tsne={opts.tsne!r}: use auto, exact or barnes_hut.")
        ctx = runs[0]
        run, bs = ctx.loaded, opts.batch_size
        num_classes = len(ctx.class_counts)
        classes = parse_classes(opts.classes, num_classes, ctx.groups)
        idx = per_class_subset(ctx.data.test.labels, opts.n_per_class, opts.seed, classes)
        x, y = load_test_images(ctx, idx)
        spec = attack_spec(ctx, opts.attack)
        x_adv = adversarial(run.deployed, x, y, spec, bs, opts.seed)
        z_clean, z_adv = (self._embed_input(run, v, opts) for v in (x, x_adv))  # (n, D) each
        pred_clean = logits(run.deployed, x, bs).argmax(1).cpu().numpy()
        pred_adv = logits(run.deployed, x_adv, bs).argmax(1).cpu().numpy()
        both = torch.cat([z_clean, z_adv]).cpu().double().numpy()  # (2n, D)
        n = len(y)
        if n < 2:
            raise ConfigError("embedding needs at least two test images; raise n_per_class or add classes.")
        perplexity = float(min(opts.perplexity, max(1.0, (2 * n - 1) / 3)))
        method = ("exact" if len(both) <= EXACT_TSNE_MAX else "barnes_hut") if opts.tsne == "auto" else opts.tsne
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method=method,
                      random_state=opts.seed).fit_transform(both)
        labels = y.cpu().numpy()
        return {
            "space": opts.space,
            "attack": {"name": spec.name, "norm": spec.norm, "eps": spec.eps, "steps": spec.steps},
            "classes": classes,
            "class_names": list(ctx.data.class_names),
            "class_counts": ctx.class_counts,
            "n_points": n,
            "test_index": idx.tolist(),
            "labels": labels.tolist(),
            "pred_clean": pred_clean.tolist(),
            "pred_adv": pred_adv.tolist(),
            "accuracy_clean": 100.0 * int((pred_clean == labels).sum()) / len(labels),
            "accuracy_adv": 100.0 * int((pred_adv == labels).sum()) / len(labels),
            "perplexity": perplexity,
            "tsne_method": method,
            "coords_clean": coords[:n].tolist(),
            "coords_adv": coords[n:].tolist(),
            "knn": opts.knn,
            "knn_purity": {"clean": _knn_purity(both[:n], labels, classes, opts.knn),
                           "adversarial": _knn_purity(both[n:], labels, classes, opts.knn)},
        }

    @staticmethod
    def _embed_input(run: Any, x: torch.Tensor, opts: EmbeddingOptions) -> torch.Tensor:
        if opts.space == "logits":
            return logits(run.deployed, x, opts.batch_size)
        return features(run.model, x, opts.batch_size)

    def plot(self, result: dict[str, Any], opts: EmbeddingOptions):
        fig = new_figure(9.0, 4.0)
        axes = fig.subplots(1, 2, sharex=True, sharey=True)
        labels = np.asarray(result["labels"])
        names = result["class_names"]
        colors = class_colors(len(result["class_counts"]))
        purity = result["knn_purity"]
        for ax, key, title, pur in ((axes[0], "coords_clean", "clean", purity["clean"]),
                                    (axes[1], "coords_adv", f"adversarial ({result['attack']['name'].upper()})",
                                     purity["adversarial"])):
            xy = np.asarray(result[key], dtype=np.float64).reshape(-1, 2)
            for c in result["classes"]:
                m = labels == c
                ax.scatter(xy[m, 0], xy[m, 1], s=6, color=colors[c], label=names[c], alpha=0.8, linewidths=0)
            acc = result["accuracy_clean" if key == "coords_clean" else "accuracy_adv"]
            ax.set_title(f"{title}: acc {acc:.1f}%, {result['knn']}-NN purity {pur['mean']:.2f}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if len(result["classes"]) <= 20:
            axes[1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), title="class")
        fig.suptitle(f"t-SNE of {'penultimate features' if result['space'] == 'features' else 'logits'} "
                     f"({result['n_points']} test images per panel)", fontsize=10)
        return fig


def _knn_purity(z: np.ndarray, labels: np.ndarray, classes: Sequence[int], k: int) -> dict[str, Any]:
    """Mean fraction of each point's ``k`` nearest neighbours (excluding itself) sharing its class."""
    from sklearn.neighbors import NearestNeighbors

    n = len(z)
    k = max(1, min(k, n - 1))
    _, nbr = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)  # (n, k + 1)
    keep = nbr != np.arange(n)[:, None]  # drop the point itself (not always column 0 when points coincide)
    keep[keep.all(axis=1), -1] = False
    nbr = nbr[keep].reshape(n, k)
    same = (labels[nbr] == labels[:, None]).mean(axis=1)  # (n,)
    per_class = {str(c): float(same[labels == c].mean()) for c in classes if (labels == c).any()}
    return {"mean": float(same.mean()), "per_class": per_class}
