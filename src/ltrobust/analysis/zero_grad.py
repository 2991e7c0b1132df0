"""``zero-grad``: the share of input pixels whose gradient is exactly zero at each PGD step, per class.

RoBal (Wu et al., CVPR 2021) Sec. 3.3 and Fig. 2: with stretched logits (a classifier re-scaled to
``W / 10^kappa``, kappa < 0) the softmax of a correctly classified image saturates, ``p_y = 1``, and the CE
gradient of Eq. 5 vanishes, so PGD cannot move: "we calculate the ratio of zero in gradient at pixel level
during the PGD updating ... it converges to the same level as A_nat". This analysis measures that ratio.

For every selected test image and every PGD iteration ``t = 1..K`` of the chosen attack (a configuration of
the one PGD loop, watched through its observer hook: :data:`ltrobust.attacks.pgd.Observer`), the fraction of
input values (every channel of every pixel) whose gradient of the attack objective is exactly ``0.0``, at
the point where iteration ``t`` takes it. The deployed logits are multiplied by ``10^-kappa`` for each
``kappa`` (0: the model as deployed; the audit's ``LogitScaled``). Stored per kappa: the mean over images of
that fraction, overall, per class, for the clean-correct and the misclassified images, and the share of
images whose gradient is zero in every pixel; with the clean accuracy ``A_nat`` and the attack's robust
accuracy beside them (percent).

Example::

    ltrobust analyze zero-grad runs/NAME kappa=-2,-1,0 n_per_class=50
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..evaluation.audit import LogitScaled
from ..evaluation.metrics import class_order
from ..registry import ANALYSES
from .base import (Analysis, CommonOptions, RunContext, attack_spec, batch_seed, iter_test_batches, logits,
                   new_figure, per_class_subset)


@dataclass(frozen=True)
class ZeroGradOptions(CommonOptions):
    dpi: int = 200  #: resolution of the PNG (a PDF is written too)
    attack: str = "pgd20"  #: a PGD-loop attack of the suite (pgdK, bimK, mimK, cwK, adaptiveK, fgsm)
    kappa: tuple[float, ...] = (0.0,)  #: deployed logits x 10^-kappa (RoBal Fig. 2's W / 10^kappa); < 0 stretches
    n_per_class: int = 0  #: test images per class (0: the whole test split)


@ANALYSES.register("zero-grad")
class ZeroGrad(Analysis):
    """Share of input pixels with an exactly zero gradient at each PGD step, per class (RoBal Fig. 2)."""

    name = "zero-grad"
    Options = ZeroGradOptions
    runs = "one"
    formats = ("png", "pdf")

    def compute(self, runs: Sequence[RunContext], opts: ZeroGradOptions) -> dict[str, Any]:
        ctx = runs[0]
        if not opts.kappa or not all(np.isfinite(k) for k in opts.kappa):
            raise ConfigError(f"kappa={opts.kappa}: give finite exponents, e.g. kappa=-2,-1,0.")
        spec = attack_spec(ctx, opts.attack)
        if spec.aa_version or spec.family in ("clean", "cw_l2"):
            raise ConfigError(f"attack={opts.attack}: the zero-gradient ratio is read inside the PGD loop; use "
                              f"pgdK, bimK, mimK, cwK, adaptiveK or fgsm.")
        if spec.steps < 1:
            raise ConfigError(f"attack={opts.attack} takes no step: use at least one (e.g. pgd20).")
        idx = per_class_subset(ctx.data.test.labels, opts.n_per_class, opts.seed)
        C = len(ctx.class_counts)
        rows = [self._one(ctx, spec, float(k), idx, C, opts) for k in sorted(set(opts.kappa))]
        return {"attack": {"name": spec.name, "norm": spec.norm, "eps": spec.eps, "steps": spec.steps,
                           "step_size": spec.step_size, "random_start": spec.random_start},
                "n": int(len(idx)), "class_names": list(ctx.data.class_names), "class_counts": ctx.class_counts,
                "unit": "percent of input values (channels x pixels) whose gradient is exactly 0",
                "by_kappa": rows}

    def _one(self, ctx: RunContext, spec: Any, kappa: float, idx: torch.Tensor, C: int,
             opts: ZeroGradOptions) -> dict[str, Any]:
        from ..attacks import run_attack

        model = LogitScaled(ctx.loaded.deployed, 10.0 ** (-kappa))
        ratios, zero_all, ys, clean, robust = [], [], [], [], []
        for k, x, y in iter_test_batches(ctx, idx, opts.batch_size):
            per_step: list[torch.Tensor] = []
            all_zero: list[torch.Tensor] = []

            def observe(step: int, x_adv: torch.Tensor, grad: torch.Tensor) -> None:
                z = grad.flatten(1) == 0  # (B, D), kept on the device: no host sync inside the loop
                per_step.append(z.float().mean(1))
                all_zero.append(z.all(1))

            x_adv = run_attack(spec, model, x, y, seed=batch_seed(opts.seed, k), observer=observe)
            ratios.append(torch.stack(per_step).cpu())  # (K, B)
            zero_all.append(torch.stack(all_zero).cpu())
            ys.append(y.cpu())
            clean.append((logits(model, x, opts.batch_size).argmax(1) == y).cpu())
            robust.append((logits(model, x_adv, opts.batch_size).argmax(1) == y).cpu())
        r = torch.cat(ratios, 1).double().numpy() * 100.0  # (K, N) percent
        z = torch.cat(zero_all, 1).numpy()
        labels, ok, rob = torch.cat(ys).numpy(), torch.cat(clean).numpy(), torch.cat(robust).numpy()

        def mean_over(mask: np.ndarray) -> list[float | None]:
            return [float(v) for v in r[:, mask].mean(1)] if mask.any() else [None] * r.shape[0]

        return {"kappa": kappa, "iterations": list(range(1, r.shape[0] + 1)),
                "overall": mean_over(np.ones_like(ok)),
                "per_class": [mean_over(labels == c) for c in range(C)],
                "clean_correct": mean_over(ok), "clean_wrong": mean_over(~ok),
                "all_zero_images": [float(v) for v in 100.0 * z.mean(1)],
                "clean_accuracy": 100.0 * float(ok.mean()), "robust_accuracy": 100.0 * float((ok & rob).mean()),
                "n_clean_correct": int(ok.sum())}

    def plot(self, result: dict[str, Any], opts: ZeroGradOptions):
        import matplotlib
        from matplotlib.ticker import MaxNLocator

        from ..evaluation.evaluator import column_title

        rows = result["by_kappa"]
        fig = new_figure(4.2 * (1 + len(rows)), 3.6)
        axes = np.atleast_1d(fig.subplots(1, 1 + len(rows), sharey=True))
        tab = matplotlib.colormaps["tab10"]
        attack = result["attack"]
        for i, row in enumerate(rows):
            it = row["iterations"]
            axes[0].plot(it, row["overall"], "o-", ms=2.5, color=tab(i), label=f"kappa = {row['kappa']:g}")
            axes[0].axhline(row["clean_accuracy"], color=tab(i), ls=":", lw=1)
        axes[0].plot([], [], "k:", lw=1, label="clean accuracy A_nat")
        axes[0].set_title(f"all {result['n']} test images ({column_title(attack['name'])})", fontsize=9)
        axes[0].legend(fontsize=7)
        counts = result["class_counts"]
        order = class_order(counts)
        cmap = matplotlib.colormaps["viridis"]
        names = result["class_names"]
        for ax, row in zip(axes[1:], rows):
            for rank, c in enumerate(order):  # head (dark) to tail (light)
                ys = row["per_class"][c]
                if all(v is None for v in ys):
                    continue
                ax.plot(row["iterations"], ys, "-", lw=1.2, color=cmap(rank / max(len(order) - 1, 1) * 0.9),
                        label=f"{names[c] if c < len(names) else c} (n={counts[c]})")
            ax.set_title(f"per class, kappa = {row['kappa']:g} (A_nat {row['clean_accuracy']:.1f}%)", fontsize=9)
            if len(order) <= 12:
                ax.legend(fontsize=6, ncol=2, title="class (training images)", title_fontsize=6)
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("PGD iteration")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("input gradient exactly zero (% of pixels)")
        return fig
