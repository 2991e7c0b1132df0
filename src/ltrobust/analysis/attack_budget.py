"""``attack-budget``: robust accuracy against the number of PGD steps and against eps, per run.

REAT (Li et al., ICCV 2023) Fig. 4a (CIFAR-10-LT) and Fig. 8 (CIFAR-100-LT): robust accuracy of each
method under PGD with 1..100 steps; a method whose curve keeps falling with more steps (or flattens
far above AutoAttack) is suspect of gradient masking. The eps sweep shows the same for the radius.

For every run (several may be given, e.g. one per method) and every budget:

- ``steps`` sweep: PGD-k on CE, k in ``steps``, at the run's ``eval`` eps and step size; ``k = 0`` is the
  clean accuracy.
- ``eps`` sweep: PGD-``eps_steps`` at each eps in ``eps`` with step size ``step_ratio * eps`` (2/255 at
  8/255); ``eps = 0`` is the clean accuracy.

Only clean-correct images are attacked (an image counts as robust when it is classified correctly both
clean and under attack, as in ``ltrobust eval``), and every attack of a sweep starts from the same seeded
random start. Two numbers are stored per budget: ``pgd``, that attack alone, and ``worst_case``, the
per-sample worst case over that attack and every smaller budget of the sweep (an AE found with fewer
steps or inside a smaller ball is also an AE for the larger budget), the honest robust accuracy, which is
non-increasing by construction. The figure shows ``worst_case`` for all test images and for the tail
classes (``tail=tail``, the rarest third by training count; ``tail=tail_group`` for Cho et al.'s (ICLR 2025) T-PGD
group).

Example::

    ltrobust analyze attack-budget runs/at-bsl runs/reat runs/robal steps=1,2,5,10,20,50,100 out=figures
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..evaluation.metrics import summarize
from ..errors import ConfigError
from ..registry import ANALYSES
from .base import (Analysis, CommonOptions, RunContext, adversarial, attack_spec, batch_seed, iter_test_batches, logits,
                   new_figure, per_class_subset)

KEEP = ("accuracy", "balanced_accuracy", "head", "body", "tail", "tail_group", "per_class")


@dataclass(frozen=True)
class AttackBudgetOptions(CommonOptions):
    steps: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50, 100)  #: PGD step counts (0: clean)
    eps: tuple[float, ...] = (0.0, 2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255)  #: radii of the eps sweep
    eps_steps: int = 20  #: PGD steps of the eps sweep
    step_ratio: float = 0.25  #: step size of the eps sweep as a fraction of eps
    n_per_class: int = 0  #: test images per class (0: the whole test split)
    tail: str = "tail"  #: group drawn dashed: tail (rarest third) | tail_group (Cho et al.'s (ICLR 2025) T-PGD classes)


@ANALYSES.register("attack-budget")
class AttackBudget(Analysis):
    """Robust accuracy vs PGD steps and vs eps, per run and for the tail (REAT Fig. 4a, 8)."""

    name = "attack-budget"
    Options = AttackBudgetOptions
    runs = "many"

    def compute(self, runs: Sequence[RunContext], opts: AttackBudgetOptions) -> dict[str, Any]:
        if any(k < 0 for k in opts.steps) or any(e < 0 for e in opts.eps) or not opts.steps or not opts.eps:
            raise ConfigError("steps and eps must be non-empty lists of values >= 0, e.g. steps=0,1,10,100.")
        if opts.tail not in ("tail", "tail_group"):
            raise ConfigError(f"tail={opts.tail!r}: use tail or tail_group.")
        steps, eps = sorted(set(opts.steps)), sorted(set(opts.eps))
        out = [self._one(ctx, steps, eps, opts) for ctx in runs]
        first = attack_spec(runs[0], "pgd20")
        return {"norm": first.norm, "tail": opts.tail,
                "steps_sweep": {"steps": steps, "eps": first.eps, "step_size": first.step_size},
                "eps_sweep": {"eps": eps, "steps": opts.eps_steps, "step_size": f"{opts.step_ratio:g} * eps"},
                "runs_budget": out}

    def _one(self, ctx: RunContext, steps: list[int], eps: list[float], opts: AttackBudgetOptions) -> dict[str, Any]:
        run, bs = ctx.loaded, opts.batch_size
        idx = per_class_subset(ctx.data.test.labels, opts.n_per_class, opts.seed)
        specs = {"by_steps": [None if k == 0 else attack_spec(ctx, f"pgd{k}") for k in steps],
                 "by_eps": [None if e == 0 else attack_spec(ctx, f"pgd{opts.eps_steps}", eps=float(e),
                                                            step_size=opts.step_ratio * float(e)) for e in eps]}
        clean, ys = [], []
        ok: dict[str, list[list[torch.Tensor]]] = {key: [[] for _ in v] for key, v in specs.items()}
        for k, x, y in iter_test_batches(ctx, idx, bs):
            clean_ok = logits(run.deployed, x, bs).argmax(1) == y  # (B,)
            sel = clean_ok.nonzero().squeeze(1)  # only clean-correct images can be robust
            for key, budget_specs in specs.items():
                for j, spec in enumerate(budget_specs):
                    res = clean_ok.clone()
                    if spec is not None and len(sel):  # every budget starts from the same seeded random start
                        x_adv = adversarial(run.deployed, x[sel], y[sel], spec, len(x), batch_seed(opts.seed, k))
                        res[sel] = logits(run.deployed, x_adv, bs).argmax(1) == y[sel]
                    ok[key][j].append(res.cpu())
            clean.append(clean_ok.cpu())
            ys.append(y.cpu())
        labels, clean_ok = torch.cat(ys).numpy(), torch.cat(clean).numpy()
        counts, tail_group = ctx.class_counts, run.cfg.eval.tail_group or None

        def stats(correct: np.ndarray) -> dict[str, Any]:
            s = summarize(correct, labels, counts, len(counts), tail_group=tail_group)
            return {key: s[key] for key in KEEP if key in s}

        def rows(key: str, budgets: list[Any]) -> list[dict[str, Any]]:
            out, worst = [], clean_ok.copy()
            for b, parts in zip(budgets, ok[key]):
                flags = torch.cat(parts).numpy()
                worst &= flags  # per-sample worst case over this and every smaller budget
                out.append({"budget": b, "pgd": stats(flags), "worst_case": stats(worst)})
            return out

        return {"name": ctx.name, "label": ctx.label, "n": int(len(labels)), "clean": stats(clean_ok),
                "groups": {g: ctx.groups[g] for g in ("head", "body", "tail", "tail_group")},
                "by_steps": rows("by_steps", steps), "by_eps": rows("by_eps", eps)}

    def plot(self, result: dict[str, Any], opts: AttackBudgetOptions):
        import matplotlib

        colors = matplotlib.colormaps["tab10"]
        fig = new_figure(9.5, 3.6)
        ax_s, ax_e = fig.subplots(1, 2, sharey=True)
        linf = result["norm"] == "linf"
        tail = result["tail"]
        for k, r in enumerate(result["runs_budget"]):
            for ax, key in ((ax_s, "by_steps"), (ax_e, "by_eps")):
                xs = np.array([row["budget"] for row in r[key]], dtype=np.float64) * (255 if key == "by_eps" and linf else 1)
                all_ = [row["worst_case"]["accuracy"] for row in r[key]]
                ax.plot(xs, all_, "o-", ms=3, color=colors(k), label=f"{r['label']}: all")
                t = [row["worst_case"].get(tail) for row in r[key]]
                if all(v is not None for v in t):
                    ax.plot(xs, t, "s--", ms=3, color=colors(k), label=f"{r['label']}: {tail.replace('_', ' ')}")
        ax_s.set_xscale("symlog", linthresh=1)
        ax_s.set_xlabel("PGD steps (0 = clean)")
        ax_s.set_ylabel("robust accuracy (%)")
        e = result["steps_sweep"]["eps"]
        eps_txt = f"{e * 255:g}/255" if linf else f"{e:g}"
        ax_s.set_title(f"vs steps ({result['norm']}, eps {eps_txt})", fontsize=9)
        ax_e.set_xlabel("eps" + (" (x 1/255)" if linf else ""))
        sw = result["eps_sweep"]
        ax_e.set_title(f"vs eps (PGD-{sw['steps']}, step {sw['step_size']})", fontsize=9)
        ax_e.legend(fontsize=7)
        for ax in (ax_s, ax_e):
            ax.grid(alpha=0.3)
        return fig
