"""``ltrobust demo``: the whole toolkit on digits-LT in a few minutes on a laptop CPU (no download).

Trains natural, pgd_at, at_bsl, robal, reat, taet, self_distill and robustlt (over at_bsl) with a small CNN on
the embedded long-tailed digits (scikit-learn's bundled 8x8 digits, IR 10) against l_inf eps 32/255 (step 8/255, the
``*-digits`` presets' threat model), evaluates each on the balanced test set (clean and PGD-20 on all 500
images; AutoAttack's APGD-CE + APGD-T on a balanced subset of 100), writes the report, and prints the table
(overall and tail third) plus the per-class comparison of PGD-AT with CE against PGD-AT with balanced softmax.

Every run is a normal run folder under ``out`` (default ``runs/demo``): re-running the demo skips
finished trainings and evaluations. Overrides apply to every run (``ltrobust demo epochs=30``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import io
from ..config import resolve_config
from ..run_folder import RunFolder

log = logging.getLogger(__name__)

#: (label, preset, extra overrides) of each demo run; presets live in configs/<name>.yaml. Natural training is
#: the reference without attacks: no validation, so its checkpoint is the last epoch (selection on robust
#: validation accuracy would pick an early, under-trained epoch of a model never trained against attacks)
DEMO_RUNS: list[tuple[str, str, list[str]]] = [
    ("natural", "at-bsl-digits", ["method=natural", "loss=ce", "train.val_every=0"]),
    ("pgd_at (CE)", "at-bsl-digits", ["method=pgd_at", "loss=ce"]),
    ("at_bsl", "at-bsl-digits", []),
    ("robal", "robal-digits", []),
    ("reat", "reat-digits", []),
    ("taet", "taet-digits", []),
    ("self_distill", "self-distill-digits", []),
    # RobustLT (Zhang et al., CVPR 2026) over at_bsl: its class radii beside the row above it. MCAT is left out: its
    # latent steps make one training cost more than the whole demo on 2 CPU cores (grid digits-frontier has it)
    ("robustlt (over at_bsl)", "robustlt-digits", []),
]
#: settings shared by every demo run (a budget that finishes in minutes on 2 CPU cores)
COMMON = ["dataset=digits-lt", "model=smallcnn", "model.width=16", "epochs=15", "train.batch_size=64",
          "train.lr=0.05", "train.milestones=12", "train.val_samples=100", "train.progress=false"]
#: clean and PGD-20 on the whole balanced test set (500 images); AutoAttack (APGD-CE + APGD-T) costs about
#: 1000 forward-backward passes per robust image, so it runs on a balanced subset of 100 (10 per class)
EVAL = ["attacks=clean,pgd20", "eval.n_samples=0"]
EVAL_AA = ["attacks=clean,pgd20,apgd", "eval.n_samples=100", "eval.tag=aa100"]


def _slug(label: str) -> str:
    return label.split(" ")[0]


def run_demo(overrides: Sequence[str] = (), out: str | None = None,
             report: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train, evaluate and report the demo runs; returns ``{"rows": [...], "report": path}``.

    ``report``: the report builder (``ltrobust.report.build_report``, which the CLI passes; None: no HTML
    report, the tables are printed all the same)."""
    from ..evaluation.runs import evaluate_run
    from .recipe import train

    overrides = list(overrides)
    out_dir = Path(out or next((o.split("=", 1)[1] for o in overrides if o.startswith("out=")), "runs/demo"))
    overrides = [o for o in overrides if not o.startswith("out=")]
    start = time.perf_counter()
    rows = []
    for label, preset, extra in DEMO_RUNS:
        cfg = resolve_config([f"preset={preset}", *COMMON, *extra, *overrides, f"out={out_dir}",
                              f"name={_slug(label)}"])
        run_dir = out_dir / _slug(label)
        t0 = time.perf_counter()
        if not RunFolder(run_dir).summary.exists():
            print(f"training {label:<14} (preset {preset}) ...", flush=True)
            train(cfg)
        train_s = round(time.perf_counter() - t0, 3)
        result = evaluate_run(run_dir, EVAL, progress=False)
        aa = evaluate_run(run_dir, EVAL_AA, progress=False)
        # the AA columns come with the PGD-20 of the same 100 images, never beside another image set's numbers
        result["results"]["pgd20_100"] = aa["results"]["pgd20"]
        result["results"]["apgd"] = aa["results"]["apgd"]
        result["aa_n"] = aa["n"]
        rows.append({"label": label, "run": str(run_dir), "result": result, "train_seconds": train_s,
                     "seconds": round(time.perf_counter() - t0, 3)})
    index = _report(report, out_dir, [r["run"] for r in rows]) if report else None
    print()
    print(demo_table(rows))
    print()
    print(per_class_table(rows, "pgd_at (CE)", "at_bsl"))
    print()
    print(f"total {time.perf_counter() - start:.0f} s; run folders under {out_dir}/")
    if index:
        print(f"report: {index}")
    io.write_json(out_dir / "demo.json", {"rows": [{k: v for k, v in r.items() if k != "result"} | {
        "results": {a: {"accuracy": x["accuracy"], "tail": x.get("tail")} for a, x in r["result"]["results"].items()}}
        for r in rows]})
    return {"rows": rows, "report": index}


def _report(build_report: Callable[..., dict[str, Any]], out_dir: Path, runs: list[str]) -> str:
    # one evaluation per run in the report: clean, PGD-20 and AA in one cascade on the same 100 images
    return str(build_report(runs, out=str(out_dir / "report"), tag="best-aa100",
                            title="ltrobust demo: digits-LT (IR 10), 100 balanced test images")["index"])


def demo_table(rows: list[dict[str, Any]]) -> str:
    """Method x (clean, PGD-20 on every test image; PGD-20 and AA on the AA subset), overall and tail third."""
    from ..evaluation.evaluator import column_title

    first = rows[0]["result"]
    cols = [(k, column_title(a)) for k, a in (("clean", "clean"), ("pgd20", "pgd20"), ("pgd20_100", "pgd20"),
                                              ("apgd", "apgd"))]
    aa = column_title("apgd")  # the report's name of the same column
    lines = [f"digits-LT (IR 10), smallcnn, accuracy in %: Clean and PGD-20 on all {first['n']} balanced test images; "
             f"PGD-20 and {aa} (AutoAttack's APGD-CE + APGD-T, in cascade after PGD-20) on a balanced subset of "
             f"{first['aa_n']}. tail = the 3 rarest classes.", "",
             f"| method | {' | '.join(t for _, t in cols)} | {' | '.join('tail ' + t for _, t in cols)} | time (s) |",
             f"|---|{'---|' * (2 * len(cols) + 1)}",
             f"| (test images) | {first['n']} | {first['n']} | {first['aa_n']} | {first['aa_n']} | "
             f"{first['n']} | {first['n']} | {first['aa_n']} | {first['aa_n']} | |"]
    for r in rows:
        res = r["result"]["results"]
        overall = " | ".join(f"{res[k]['accuracy']:.1f}" for k, _ in cols)
        tails = " | ".join(f"{res[k]['tail']:.1f}" for k, _ in cols)
        lines.append(f"| {r['label']} | {overall} | {tails} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def per_class_table(rows: list[dict[str, Any]], a: str, b: str) -> str:
    """Per-class clean and PGD-20 recall of two demo runs (the first demo: CE vs balanced softmax)."""
    by = {r["label"]: r["result"] for r in rows}
    if a not in by or b not in by:
        return ""
    counts = by[a]["class_counts"]
    lines = [f"per-class recall (%): {a} vs {b}", "",
             "| class | train count | " + f"{a} clean | {a} PGD-20 | {b} clean | {b} PGD-20 |", "|---" * 6 + "|"]
    for c, n in enumerate(counts):
        vals = [by[x]["results"][k]["per_class"][c] for x in (a, b) for k in ("clean", "pgd20")]
        lines.append(f"| {c} | {n} | " + " | ".join(f"{v:.0f}" for v in vals) + " |")
    return "\n".join(lines)
