"""``ae-drift``: how far the training AEs of the same image move between consecutive epochs (REAT Fig. 3).

REAT (Li et al., ICCV 2023, https://arxiv.org/abs/2307.08467) Sec. 4.1 and Fig. 3: the Euclidean distance
between the adversarial examples of the same clean training image in consecutive epochs, per class; a
small distance means the new AEs overlap last epoch's and teach the model little, and REAT's
re-balancing loss increases the distance for the tail classes.

The numbers are recorded *during training* (``train.record_ae_drift=true``): at the end of every epoch the
trainer re-crafts the AEs of a fixed balanced sample of training images with the method's own training
attack, from the same random start, and stores per-class mean l_2 / l_inf distances to last epoch's AEs
(plus the per-sample l_2 distances) in ``metrics.jsonl`` (:meth:`ltrobust.training.trainer.Trainer.ae_drift`).
This analysis reads them (no model is loaded) and plots, per run: the per-class mean over the chosen
epochs, the distribution of per-sample distances of the head and tail classes, and the group means per
epoch. Epochs are the 0-based ``epoch`` of ``metrics.jsonl``; the drift at epoch ``k`` compares the AEs of
the end of epoch ``k`` with those of epoch ``k - 1``.

Example::

    ltrobust train method=pgd_at loss=bsl train.record_ae_drift=true name=bsl
    ltrobust train method=reat train.record_ae_drift=true name=reat
    ltrobust analyze ae-drift runs/bsl runs/reat out=figures
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import io
from ..config import load_run_config
from ..evaluation.metrics import class_groups
from ..errors import ConfigError
from ..registry import ANALYSES
from ..run_folder import RunFolder
from .base import Analysis, CommonOptions, RunContext, new_figure

GROUPS = ("head", "body", "tail")


@dataclass(frozen=True)
class AEDriftOptions(CommonOptions):
    epochs: str = "all"  #: epochs pooled in the per-class summary: all | last | a list such as 5,10,20
    metric: str = "l2"  #: l2 | linf, the distance the per-class and per-epoch panels show


@ANALYSES.register("ae-drift")
class AEDrift(Analysis):
    """Per-class distance between consecutive epochs' AEs of the same training image (REAT Fig. 3)."""

    name = "ae-drift"
    Options = AEDriftOptions
    runs = "many"

    def compute(self, runs: Sequence[RunContext], opts: AEDriftOptions) -> dict[str, Any]:
        if opts.metric not in ("l2", "linf"):
            raise ConfigError(f"metric={opts.metric!r}: use l2 or linf.")
        return {"metric": opts.metric, "runs_drift": [self._one(ctx, opts) for ctx in runs]}

    def _one(self, ctx: RunContext, opts: AEDriftOptions) -> dict[str, Any]:
        run_dir = ctx.run_dir
        folder = RunFolder(run_dir)
        cfg = load_run_config(folder.config)
        rows = [r for r in io.read_jsonl(folder.metrics)
                if isinstance(r.get("ae_drift"), dict) and r["ae_drift"].get("per_class_l2") is not None]
        if not rows:
            if not cfg.train.record_ae_drift:
                raise ConfigError(
                    f"run {run_dir} did not record AE drift (it was trained with train.record_ae_drift=false). The "
                    f"drift is measured during training: re-train it with the same settings plus "
                    f"train.record_ae_drift=true (e.g. `ltrobust train ... name={run_dir.name} "
                    f"train.record_ae_drift=true`; train.ae_drift_samples=N sets the sample size).")
            raise ConfigError(f"run {run_dir} recorded AE drift but has no epoch with a drift yet: the first "
                              f"epoch has no previous AEs, so train at least 2 epochs.")
        manifest = io.read_json(folder.manifest)
        counts = [int(c) for c in manifest["counts"]["train"]]
        names = list(manifest.get("class_names") or [str(c) for c in range(len(counts))])
        C = len(counts)
        epochs = [int(r["epoch"]) for r in rows]
        chosen = _choose_epochs(opts.epochs, epochs)
        l2 = _matrix([r["ae_drift"]["per_class_l2"] for r in rows], C)  # (E, C), NaN where undefined
        linf = _matrix([r["ae_drift"]["per_class_linf"] for r in rows], C)
        sel = np.isin(epochs, chosen)
        groups = class_groups(counts, cfg.eval.tail_group or None)
        samples = _pooled_samples([r["ae_drift"] for r in rows if r["epoch"] in chosen])
        return {
            "name": run_dir.name,
            "run_dir": str(run_dir),
            "label": f"{cfg.method.name}{'' if cfg.method.loss == 'ce' else '+' + cfg.method.loss} ({run_dir.name})",
            "class_counts": counts,
            "class_names": names,
            "samples_per_class": rows[-1]["ae_drift"].get("n_per_class"),
            "groups": {g: groups[g] for g in GROUPS},
            "epochs": epochs,
            "epochs_pooled": chosen,
            "per_class_l2": _nan_to_none(l2),
            "per_class_linf": _nan_to_none(linf),
            "mean_l2": _nan_to_none(_nanmean(l2[sel], axis=0)),
            "std_l2": _nan_to_none(_nanstd(l2[sel], axis=0)),
            "mean_linf": _nan_to_none(_nanmean(linf[sel], axis=0)),
            "std_linf": _nan_to_none(_nanstd(linf[sel], axis=0)),
            "group_l2": {g: _nan_to_none(_nanmean(l2[:, groups[g]], axis=1)) for g in GROUPS if groups[g]},
            "group_linf": {g: _nan_to_none(_nanmean(linf[:, groups[g]], axis=1)) for g in GROUPS if groups[g]},
            "samples_l2": samples,
        }

    def plot(self, result: dict[str, Any], opts: AEDriftOptions):
        import matplotlib
        from matplotlib.ticker import MaxNLocator

        metric = result["metric"]
        runs = result["runs_drift"]
        colors = matplotlib.colormaps["tab10"]
        fig = new_figure(12.0, 3.5)
        ax_c, ax_d, ax_e = fig.subplots(1, 3)
        counts = np.asarray(runs[0]["class_counts"])
        order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))  # head -> tail
        width = 0.8 / len(runs)
        for k, r in enumerate(runs):
            mean = _arr(r[f"mean_{metric}"])[order]
            std = _arr(r[f"std_{metric}"])[order]
            ax_c.bar(np.arange(len(order)) + (k - (len(runs) - 1) / 2) * width, mean, width, yerr=std,
                     color=colors(k), label=r["label"], capsize=2 if len(order) <= 20 else 0)
        if len(order) <= 20:
            names = runs[0]["class_names"]
            ax_c.set_xticks(np.arange(len(order)), [names[c] for c in order], fontsize=7)
        ax_c.set_xlabel("class (sorted by training count)")
        ax_c.set_ylabel(f"{_metric_name(metric)} distance")
        ax_c.set_title(f"Per-class AE drift, mean over epochs {_epochs_text(runs[0]['epochs_pooled'])}", fontsize=9)
        ax_c.legend(fontsize=7)

        drew = False
        for k, r in enumerate(runs):
            s = r["samples_l2"]
            if not s or not s["l2"]:
                continue
            d, y = np.asarray(s["l2"]), np.asarray(s["labels"])
            for g, ls in (("head", "--"), ("tail", "-")):
                vals = d[np.isin(y, r["groups"][g])]
                if vals.size:
                    ax_d.hist(vals, bins=25, histtype="step", density=True, ls=ls, color=colors(k),
                              label=f"{g}: {r['name']}")
                    drew = True
        if drew:
            ax_d.legend(fontsize=7)
            ax_d.set_xlabel(r"$\ell_2$ distance between consecutive epochs' AEs")
            ax_d.set_ylabel("density")
        else:
            ax_d.text(0.5, 0.5, "per-sample distances not recorded\n(trained before they were logged)",
                      ha="center", va="center", transform=ax_d.transAxes, fontsize=8)
        ax_d.set_title("Distribution (pooled epochs): head vs tail", fontsize=9)

        for k, r in enumerate(runs):
            for g, ls in zip(GROUPS, ("--", ":", "-")):
                vals = r[f"group_{metric}"].get(g)
                if vals:
                    ax_e.plot(r["epochs"], _arr(vals), ls=ls, marker="o", ms=3, color=colors(k), label=f"{g}: {r['name']}")
        ax_e.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_e.set_xlabel("epoch")
        ax_e.set_ylabel(f"{_metric_name(metric)} distance")
        ax_e.set_title("Group mean per epoch", fontsize=9)
        ax_e.legend(fontsize=6)
        return fig


def _choose_epochs(spec: str, epochs: list[int]) -> list[int]:
    spec = spec.strip().lower()
    if spec == "all":
        return list(epochs)
    if spec == "last":
        return [epochs[-1]]
    try:
        wanted = [int(e) for e in spec.split(",") if e.strip()]
    except ValueError:
        raise ConfigError(f"epochs={spec!r}: use all, last or epoch indices such as 5,10,20.") from None
    missing = [e for e in wanted if e not in epochs]
    if missing or not wanted:
        raise ConfigError(f"epochs={spec!r}: epochs {missing} have no recorded drift; recorded: {epochs}.")
    return wanted


def _matrix(rows: list[list[float | None]], C: int) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64).reshape(-1, C)


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(all="ignore"):
        ok = np.isfinite(a)
        n = ok.sum(axis=axis)
        return np.where(n > 0, np.where(ok, a, 0.0).sum(axis=axis) / np.maximum(n, 1), np.nan)


def _nanstd(a: np.ndarray, axis: int) -> np.ndarray:
    mean = _nanmean(a, axis)
    dev = (a - np.expand_dims(mean, axis)) ** 2
    return np.sqrt(_nanmean(dev, axis))


def _nan_to_none(a: np.ndarray) -> list[Any]:
    return [_nan_to_none(v) if isinstance(v, np.ndarray) else (None if not np.isfinite(v) else float(v)) for v in a]


def _arr(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _pooled_samples(drifts: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """Per-sample l_2 distances and labels pooled over epochs (None when training did not log them)."""
    with_samples = [d for d in drifts if d.get("l2") is not None]
    if not with_samples:
        return None
    return {"l2": [v for d in with_samples for v in d["l2"]], "labels": [c for d in with_samples for c in d["labels"]]}


def _metric_name(metric: str) -> str:
    return r"$\ell_2$" if metric == "l2" else r"$\ell_\infty$"


def _epochs_text(epochs: list[int]) -> str:
    return f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 and epochs == list(range(epochs[0], epochs[-1] + 1)) \
        else ",".join(map(str, epochs))
