"""``epoch-choice``: clean and robust accuracy per epoch, and how the choice of checkpoint moves the result.

REAT (Li, Xu and Zhang, 2023) Sec. 5: "We save the model with the highest robustness on the test set", a
checkpoint chosen on the data it is scored on. ltrobust chooses ``best.pt`` on a validation split and
keeps ``last.pt``; this figure shows what each rule would report.

Reads stored records only (no model, no attack):

- every epoch's validation (``val`` in ``metrics.jsonl``: clean and PGD-``train.val_attack_steps`` accuracy
  on a balanced sample of the validation split, what ``best.pt`` is chosen by), always kept;
- when the run was trained with ``train.epoch_test=true``, the same evaluation on a balanced sample of the
  *test* split (``test``, marked ``split: test``; never used by the trainer). Its curves are drawn dashed and
  labelled "test split"; the JSON marks every test number the same way.

Per run it marks the epoch of ``best.pt`` (best validation robust balanced accuracy, the trainer's rule),
the last epoch, and, with test records, the epoch a test-set choice (REAT's rule) would pick; ``selection``
gives each rule's validation and test numbers, and ``test_selection_gain`` how many points the test-set choice
adds on the test split over the validation choice (the optimism of choosing on the test set).

Example::

    ltrobust train preset=reat-digits train.epoch_test=true name=reat
    ltrobust analyze epoch-choice runs/reat
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError
from ..registry import ANALYSES
from .base import Analysis, CommonOptions, RunContext, new_figure
from .stored import StoredRun, find_runs

TEST_NOTE = "test split: for this figure only, never used to choose a checkpoint"


@dataclass(frozen=True)
class EpochChoiceOptions(CommonOptions):
    dpi: int = 200  #: resolution of the PNG (a PDF is written too)
    balanced: bool = True  #: balanced accuracy (mean per-class recall, what best.pt is chosen by) | overall


def _curve(rows: list[dict[str, Any]], key: str, balanced: bool) -> dict[str, list[Any]] | None:
    suffix = "_balanced" if balanced else ""
    pts = [(int(r["epoch"]), r[key]) for r in rows if isinstance(r.get(key), dict) and "epoch" in r]
    if not pts:
        return None
    return {"epoch": [e for e, _ in pts], "clean": [v.get(f"clean{suffix}") for _, v in pts],
            "robust": [v.get(f"rob{suffix}") for _, v in pts], "n": [v.get("n") for _, v in pts],
            "pgd_steps": [v.get("steps") for _, v in pts]}


def _at(curve: dict[str, list[Any]] | None, epoch: int | None) -> dict[str, Any] | None:
    if curve is None or epoch is None or epoch not in curve["epoch"]:
        return None
    i = curve["epoch"].index(epoch)
    return {"clean": curve["clean"][i], "robust": curve["robust"][i]}


def _argmax(curve: dict[str, list[Any]]) -> int:
    """The first epoch with the highest robust accuracy (the trainer's rule: a later tie does not replace it)."""
    best, epoch = -1.0, curve["epoch"][0]
    for e, v in zip(curve["epoch"], curve["robust"]):
        if v is not None and v > best:
            best, epoch = v, e
    return epoch


def run_epochs(run: StoredRun, balanced: bool) -> dict[str, Any]:
    rows = [r for r in run.metrics if "stage" not in r]
    val, test = _curve(rows, "val", balanced), _curve(rows, "test", balanced)
    if val is None and test is None:
        raise ConfigError(f"{run.run_dir} has no per-epoch evaluation in metrics.jsonl (validation was off: "
                          f"train.val_every=0 or no validation split): train with train.val_every=1.")
    last = max(int(r["epoch"]) for r in rows if "epoch" in r)
    best = (run.summary.get("best") or {}).get("epoch")
    chosen = {"best_val": best if isinstance(best, int) and best >= 0 else (_argmax(val) if val else None),
              "last": last}
    if test is not None:
        chosen["best_test"] = _argmax(test)
    selection = {rule: {"epoch": e, "val": _at(val, e), "test": _at(test, e)} for rule, e in chosen.items()}
    gain = None
    if test is not None and selection["best_val"]["test"] and selection["best_test"]["test"]:
        gain = {k: selection["best_test"]["test"][k] - selection["best_val"]["test"][k] for k in ("clean", "robust")}
    finals = {}
    for tag in ("best", "last"):
        res = run.result(tag)
        if res is not None:
            r = res["results"]
            robust = next((a for a in ("aa", "worst_case") if a in r), None) or next(
                (a for a in r if a != "clean"), None)
            key = "balanced_accuracy" if balanced else "accuracy"
            finals[tag] = {"epoch": res.get("checkpoint_epoch", chosen["best_val"] if tag == "best" else last),
                           "clean": (r.get("clean") or {}).get(key), "robust_attack": robust,
                           "robust": (r.get(robust) or {}).get(key) if robust else None, "split": "test"}
    return {"name": run.name, "label": run.label or f"{run.config.get('method.name')} ({run.name})",
            "val": val, "test": test, "test_note": TEST_NOTE if test is not None else None,
            "selection": selection, "test_selection_gain": gain, "final_evaluations": finals}


@ANALYSES.register("epoch-choice")
class EpochChoice(Analysis):
    """Clean / robust accuracy per epoch and what each checkpoint rule reports (REAT's test-set choice)."""

    name = "epoch-choice"
    Options = EpochChoiceOptions
    runs = "many"
    formats = ("png", "pdf")

    def compute(self, runs: Sequence[RunContext], opts: EpochChoiceOptions) -> dict[str, Any]:
        return {"balanced": opts.balanced, "runs_epochs": [run_epochs(r, opts.balanced)
                                                           for r in find_runs([c.path for c in runs])]}

    def plot(self, result: dict[str, Any], opts: EpochChoiceOptions):
        import matplotlib
        from matplotlib.ticker import MaxNLocator

        runs = result["runs_epochs"]
        fig = new_figure(9.5, 3.4 * len(runs))
        axes = fig.subplots(len(runs), 2, squeeze=False)
        tab = matplotlib.colormaps["tab10"]
        what = "balanced accuracy" if result["balanced"] else "accuracy"
        marks = {"best_val": ("best.pt (best validation robust)", "v", "black"),
                 "last": ("last.pt", "s", "grey"), "best_test": ("chosen on the test split (REAT's rule)", "*", "red")}
        for row, r in zip(axes, runs):
            for ax, part in zip(row, ("clean", "robust")):
                for j, (key, style, name) in enumerate((("val", "-", "validation split"),
                                                       ("test", "--", "test split (not used for selection)"))):
                    c = r[key]
                    if c is None:
                        continue
                    ax.plot(c["epoch"], c[part], style, color=tab(0 if part == "clean" else 3), lw=1.3,
                            alpha=1.0 if key == "val" else 0.8, label=name)
                for rule, (name, marker, color) in marks.items():
                    sel = r["selection"].get(rule)
                    if not sel:
                        continue
                    src = sel["test"] or sel["val"]
                    if src and src[part] is not None:
                        ax.plot([sel["epoch"]], [src[part]], marker, color=color, ms=8 if marker == "*" else 6,
                                ls="none", label=f"{name}: epoch {sel['epoch']}")
                steps = next((s for s in (r["val"] or r["test"])["pgd_steps"] if s is not None), None)
                title = "clean" if part == "clean" else f"PGD-{steps}" if steps else "robust"
                ax.set_title(f"{r['label']}: {title}", fontsize=9)
                ax.set_xlabel("epoch (from 0, as metrics.jsonl)")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel(f"{what} (%)")
                ax.set_ylim(0, 100)
                ax.grid(alpha=0.3)
            row[1].legend(fontsize=6, loc="lower right")
            gain = r["test_selection_gain"]
            if gain is not None:
                row[1].text(0.02, 0.96, f"choosing on the test split adds {gain['robust']:+.1f} robust, "
                            f"{gain['clean']:+.1f} clean points", transform=row[1].transAxes, fontsize=7, va="top")
        return fig
