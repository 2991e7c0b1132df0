"""Mini study on CPU: the long-tailed AT methods side by side on CIFAR-10-LT IR 50 under one short budget.

Trains pgd_at, at_bsl, robal, reat, taet and self_distill with the library's Trainer (each method's own
preset for its options, attack and weight decay), with a small ResNet-18 (``--width 16``) and one
budget for all: ``--epochs`` epochs of at most ``--steps-per-epoch`` batches of ``--batch-size``, lr 0.1
decayed x0.1 at 75% and 90% of the epochs (TAET's clean stage: 40% of the epochs; the self-distillation
teacher gets Cho et al.'s (ICLR 2025) share of training images). Each run is then evaluated on its last checkpoint with
``ltrobust.evaluation.runs.evaluate_run`` on class-balanced subsets of the test set, eps 8/255, step 2/255:
clean and PGD-20 on ``--n-eval`` images (1000), and the AutoAttack column (cascade clean -> PGD-20 ->
APGD-CE + APGD-T, AutoAttack's first two attacks, attack name ``apgd``) on ``--n-aa`` images (100):
APGD-T alone costs about 900 forward-backward passes per still-robust image, so 1000 images would take
about a quarter of an hour per method on 2 CPU cores. One table is printed (overall and tail-third
accuracy, wall time per run) and the results are written to ``benchmarks/results/mini_study-cpu-<date>-<epochs>x<steps>.json``.

The budget is far below the papers' (100 epochs on a GPU): the numbers compare the methods at equal,
tiny compute, they do not reproduce SPEC 5. Runs live in ``--out`` (default ``runs/mini_study``) and
resume: a finished run is not retrained and finished evaluation chunks are reused.

Usage (from the project root)::

    .venv/bin/python benchmarks/mini_study.py                       # 10 x 40 steps: ~45-60 min on 2 cores
    .venv/bin/python benchmarks/mini_study.py --epochs 3 --steps-per-epoch 15   # quick: 9 min, near chance
    .venv/bin/python benchmarks/mini_study.py --epochs 1 --steps-per-epoch 2 --n-eval 50 --n-aa 20   # smoke

The data set is the shared JPEG copy of CIFAR-10 (``--data-dir``, default ``.data/cifar10``); when that
folder is missing it is extracted from ``../shared/data/cifar10-jpeg.tar.gz`` (JPEG re-encoding: numbers
are close to, not equal to, those on the official pickles).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from ltrobust import io  # noqa: E402
from ltrobust.config import resolve_config  # noqa: E402
from ltrobust.evaluation.runs import evaluate_run  # noqa: E402
from ltrobust.experiments import train  # noqa: E402

#: method -> the preset its options come from (pgd_at: plain Madry AT with CE, no preset)
METHOD_PRESETS: dict[str, list[str]] = {
    "pgd_at": ["method=pgd_at", "loss=ce", "train.weight_decay=5e-4"],
    "at_bsl": ["preset=at-bsl-cifar10lt-resnet18"],
    "robal": ["preset=robal-n-cifar10lt-resnet18"],
    "reat": ["preset=reat-cifar10lt-resnet18"],
    "taet": ["preset=taet-cifar10lt-ir10-resnet18"],
    "self_distill": ["preset=self-distill-cifar10lt-resnet18"],
}
ATTACKS = "clean,pgd20,apgd"
#: the teacher / student image ratio of Cho et al. (ICLR 2025): 30 epochs x 25,000 balanced images vs 100 epochs x
#: 13,996 (IR 50)
TEACHER_IMAGE_RATIO = 30 * 25_000 / (100 * 13_996)


def ensure_data(data_dir: Path) -> Path:
    """The CIFAR-10 image folder; extracts the shared archive when the default folder is missing."""
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        return data_dir
    if not SHARED_TAR.is_file():
        sys.exit(f"{data_dir} holds no CIFAR-10 (train/ and test/) and {SHARED_TAR} is absent: "
                 f"pass --data-dir PATH to a CIFAR-10 image folder or the official python release.")
    print(f"extracting {SHARED_TAR} -> {data_dir} ...", flush=True)
    return io.extract_tar(SHARED_TAR, data_dir)


def milestones(epochs: int) -> str:
    ms = sorted({m for m in (int(0.75 * epochs), int(0.9 * epochs)) if 0 < m < epochs})
    return ",".join(str(m) for m in ms) if ms else "none"


def teacher_epochs(args: argparse.Namespace, n_train: int = 13_996, n_teacher: int = 25_000) -> int:
    """Teacher epochs giving the teacher the share of the student's training images of Cho et al. (ICLR 2025) at this
    budget."""
    steps = math.ceil(n_train / args.batch_size)
    student_images = args.epochs * min(args.steps_per_epoch or steps, steps) * args.batch_size
    t_steps = math.ceil(n_teacher / 32)
    teacher_epoch_images = min(args.steps_per_epoch or t_steps, t_steps) * 32
    return max(1, round(TEACHER_IMAGE_RATIO * student_images / teacher_epoch_images))


def run_config(method: str, args: argparse.Namespace) -> list[str]:
    over = list(METHOD_PRESETS[method]) + [
        "dataset=cifar10-lt", f"data_dir={args.data_dir}", "data.imbalance=50", "data.test_profile=full",
        "data.val_per_class=0", f"model={args.model}", f"model.width={args.width}", f"epochs={args.epochs}",
        f"train.batch_size={args.batch_size}", "train.lr=0.1", "train.schedule=step",
        f"train.milestones={milestones(args.epochs)}", f"train.max_steps_per_epoch={args.steps_per_epoch}",
        "train.val_every=0", f"train.precision={args.precision}", "train.progress=false", f"train.seed={args.seed}",
        "train.device=cpu", f"out={args.out}", f"name={method}",
    ]
    if method == "self_distill":
        over += [f"method.teacher_epochs={teacher_epochs(args)}"]
    if method == "taet":
        over += ["method.stage1_epochs=-1"]  # the preset's 40 of 100 epochs -> 40% of this budget
    return over


def finished(run_dir: Path, epochs: int) -> bool:
    last = run_dir / "checkpoints" / "last.pt"
    return last.exists() and int(io.load_checkpoint(last).get("epoch", -1)) >= epochs - 1


def recorded_seconds(run_dir: Path) -> float:
    """Training seconds recorded in metrics.jsonl (student and teacher), for a run reused from disk."""
    total = 0.0
    for path in (run_dir / "metrics.jsonl", run_dir / "teacher" / "metrics.jsonl"):
        if path.exists():
            total += sum(float(r.get("seconds", 0.0)) for r in io.read_jsonl(path))
    return total


def evaluate(run_dir: Path, args: argparse.Namespace, attacks: str, n: int, checkpoint: str) -> dict[str, Any]:
    return evaluate_run(run_dir, [f"eval.n_samples={n}", f"eval.attacks={attacks}", f"eval.checkpoint={checkpoint}",
                                  "eval.step_size=2/255", "eval.eps=8/255", "eval.mode=cascade", "eval.tail_group=0",
                                  f"eval.seed={args.seed}"], device="cpu", progress=False)


def same_weights(run_dir: Path) -> bool:
    """best.pt holds the last epoch's weights when no validation ran (train.val_every=0)."""
    a = io.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    b = io.load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = resolve_config(run_config(method, args))
    run_dir = Path(args.out) / method
    reused = finished(run_dir, args.epochs)
    t0 = time.perf_counter()
    train(cfg, run_dir=run_dir)
    train_s = recorded_seconds(run_dir) if reused else time.perf_counter() - t0
    row: dict[str, Any] = {"method": method, "preset": METHOD_PRESETS[method][0], "run_dir": str(run_dir),
                           "reused": reused, "train_seconds": train_s}
    if method == "self_distill":
        row["teacher_epochs"] = cfg.method.args.get("teacher_epochs")
    # clean and PGD-20 on n_eval images (eval/last.json)
    t1 = time.perf_counter()
    res = evaluate(run_dir, args, "clean,pgd20", args.n_eval, "last")
    row.update(n_eval=res["n"], tail_classes=res["results"]["clean"]["groups"]["tail"])
    for name in ("clean", "pgd20"):
        r = res["results"][name]
        row.update({name: r["accuracy"], f"{name}_tail": r.get("tail"), f"{name}_balanced": r["balanced_accuracy"]})
    # AutoAttack's first two attacks on a smaller subset (eval/best.json: the same weights, see same_weights)
    row.update(apgd=None, apgd_tail=None, apgd_balanced=None, n_aa=0)
    if args.n_aa > 0:
        if not same_weights(run_dir):
            raise RuntimeError(f"{run_dir}: best.pt differs from last.pt; run with train.val_every=0 only")
        aa = evaluate(run_dir, args, ATTACKS, args.n_aa, "best")["results"]["apgd"]
        row.update(apgd=aa["accuracy"], apgd_tail=aa.get("tail"), apgd_balanced=aa["balanced_accuracy"],
                   n_aa=aa["n"])
    row["eval_seconds"] = time.perf_counter() - t1
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (f"CIFAR-10-LT IR 50, {args.model} width {args.width}, {args.epochs} epochs x <= "
            f"{args.steps_per_epoch or 'all'} steps x batch {args.batch_size}, CPU ({args.threads} threads, "
            f"precision {args.precision}); last checkpoint; clean and PGD-20 on a class-balanced subset of "
            f"{rows[0]['n_eval']} test images, AA (APGD-CE + APGD-T after PGD-20, worst case) on a class-balanced "
            f"subset of {rows[0]['n_aa']}; tail = third of classes {rows[0]['tail_classes']}")
    cols = ["method", "clean", "clean tail", "PGD-20", "PGD-20 tail", "AA", "AA tail", "train s", "eval s"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [r["method"] + (" (reused)" if r["reused"] else "")]
        for k in ("clean", "clean_tail", "pgd20", "pgd20_tail", "apgd", "apgd_tail"):
            vals.append("-" if r[k] is None else f"{r[k]:.1f}")
        vals += [f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=".data/cifar10", help="CIFAR-10 folder (relative to the project root)")
    p.add_argument("--out", default="runs/mini_study", help="parent folder of the run folders")
    p.add_argument("--methods", default=",".join(METHOD_PRESETS), help="comma-separated subset of the methods")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=40, help="batches per epoch (0: the whole epoch)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--model", default="resnet18", choices=["resnet18", "preact_resnet18"])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--n-eval", type=int, default=1000, help="class-balanced test images for clean and PGD-20")
    p.add_argument("--n-aa", type=int, default=100,
                   help="class-balanced test images for the AutoAttack column (cascade clean, PGD-20, "
                        "APGD-CE + APGD-T; about 1000 forward-backward passes per robust image); 0: skip")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="training precision (auto: bf16 autocast where the CPU has it); evaluation is fp32")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.chdir(ROOT)
    torch.set_num_threads(args.threads)
    args.data_dir = str(ensure_data(Path(args.data_dir)))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_PRESETS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHOD_PRESETS)}")
    rows = []
    t_all = time.perf_counter()
    for m in methods:
        print(f"[{time.strftime('%H:%M:%S')}] {m} ...", flush=True)
        rows.append(run_method(m, args))
        r = rows[-1]
        aa = "-" if r["apgd"] is None else f"{r['apgd']:.1f}"
        print(f"    clean {r['clean']:.1f}  PGD-20 {r['pgd20']:.1f}  AA {aa}  "
              f"(train {r['train_seconds']:.0f} s, eval {r['eval_seconds']:.0f} s)", flush=True)
    total = time.perf_counter() - t_all
    text = table(rows, args)
    print("\n" + text + f"\n\ntotal wall time {total / 60:.1f} min")
    date = datetime.date.today().isoformat()
    out = {"study": "mini_study", "date": date, "device": "cpu", "cpu": platform.processor() or platform.machine(),
           "threads": args.threads, "torch": torch.__version__, "total_seconds": total,
           "settings": {k: v for k, v in vars(args).items()}, "attacks": ATTACKS.split(","),
           "milestones": milestones(args.epochs), "rows": rows, "table": text}
    path = Path(args.results) / f"mini_study-cpu-{date}-{args.epochs}x{args.steps_per_epoch or 'all'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    io.atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
