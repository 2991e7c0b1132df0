#!/usr/bin/env python
"""Does bf16 training cost robustness? The same small model trained with bf16 and with fp32, both
evaluated in fp32 PGD-20.

For each seed the same configuration (same initial weights, data order, augmentation and random starts,
since autocast draws no random numbers) is trained twice through ltrobust's Trainer: once with
``train.precision=bf16`` (the training-time attack and the step under bf16 autocast) and once with
``train.precision=fp32``. The final weights of both are evaluated by ltrobust's Evaluation (always fp32)
with clean and PGD-20 on the test split. The target of issue 9: the robust accuracies agree within
1 point. Seed-to-seed spread of the fp32 runs (with two or more seeds) is printed as the noise floor,
since two trainings that differ only in rounding drift apart like two seeds do.

Defaults: on CPU digits-lt (IR 10, 8x8, scikit-learn's digits, no download), ResNet-18 width 8, a few
epochs; on CUDA CIFAR-10-LT IR 50 (``--data-dir``, else digits-lt), ResNet-18 width 16.

Example::

    python benchmarks/bf16_check.py --device cpu --epochs 6 --seeds 0 1
    python benchmarks/bf16_check.py --device cuda --dataset cifar10-lt --data-dir .data/cifar10 --epochs 15
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import device_name, find_data_dir, versions  # noqa: E402

TARGET_POINTS = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", default=None, help="digits-lt (CPU default) | cifar10-lt (CUDA default)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--imbalance", type=float, default=None, help="default: 10 for digits-lt, 50 otherwise")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=int, default=None, help="default: 8 on CPU, 16 on CUDA")
    p.add_argument("--epochs", type=int, default=None, help="default: 30 on CPU (digits-lt), 15 on CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 for digits-lt, 128 otherwise")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=None, help="training PGD steps (default 5 digits-lt, 10 otherwise)")
    p.add_argument("--method", default="pgd_at")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0..4 on CPU, 0 1 2 on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--eval-n", type=int, default=0, help="test images (balanced subset); 0: all")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help=">0 caps steps per epoch (smoke runs)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def resolve_defaults(args: argparse.Namespace, device: torch.device) -> None:
    cuda = device.type == "cuda"
    if args.dataset is None:
        args.dataset = "cifar10-lt" if cuda and (args.data_dir or find_data_dir()) else "digits-lt"
    digits = args.dataset == "digits-lt"
    if args.dataset != "digits-lt" and args.data_dir is None:
        found = find_data_dir()
        if found is None:
            raise SystemExit(f"{args.dataset} needs --data-dir (a folder with train/ and test/ or the CIFAR pickles).")
        args.data_dir = str(found)
    args.imbalance = args.imbalance or (10.0 if digits else 50.0)
    args.width = args.width or (16 if cuda else 8)
    args.epochs = args.epochs or (15 if cuda else 30)
    args.seeds = args.seeds if args.seeds is not None else ([0, 1, 2] if cuda else [0, 1, 2, 3, 4])
    args.batch_size = args.batch_size or (64 if digits else 128)
    args.steps = args.steps or (5 if digits else 10)


def verdict(diff: float, se: float | None) -> str:
    """PASS / FAIL only when the 95% interval (mean +- 2 SE) settles it; otherwise say it is not resolved."""
    if se is None:
        return ("mean within target (one seed: noise unknown)" if abs(diff) <= TARGET_POINTS
                else "mean outside target (one seed: noise unknown)")
    if abs(diff) + 2 * se <= TARGET_POINTS:
        return "PASS"
    if abs(diff) - 2 * se > TARGET_POINTS:
        return "FAIL"
    where = "within" if abs(diff) <= TARGET_POINTS else "outside"
    return (f"NOT RESOLVED: mean {where} the target, but the 95% interval (+-{2 * se:.1f}) is wider than it "
            "(more seeds or a larger test set needed)")


def train_and_eval(args: argparse.Namespace, precision: str, seed: int, data: Any, device: torch.device,
                   work: Path) -> dict[str, Any]:
    from ltrobust.config import resolve_config
    from ltrobust.evaluation.evaluator import Evaluation
    from ltrobust.training.trainer import Trainer

    milestones = f"{max(int(args.epochs * 0.75), 1)},{max(int(args.epochs * 0.9), 1)}"
    over = [f"method={args.method}", f"model={args.model}", f"model.width={args.width}", f"dataset={args.dataset}",
            f"imbalance={args.imbalance}", f"epochs={args.epochs}", f"train.batch_size={args.batch_size}",
            f"train.lr={args.lr}", f"train.milestones={milestones}", f"attack.steps={args.steps}",
            f"train.precision={precision}", f"seed={seed}", f"train.device={device}", "train.progress=false",
            "train.val_every=0", f"train.max_steps_per_epoch={args.max_steps_per_epoch}"]
    if args.data_dir:
        over.append(f"data.data_dir={args.data_dir}")
    cfg = resolve_config(over)
    run_dir = work / f"{precision}-s{seed}"
    trainer = Trainer(cfg, run_dir=run_dir, data=data, resume=False)
    t = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t
    model = trainer.eval_model().eval()
    ev = Evaluation(model, data.test, data.class_counts, ["pgd20"], out_dir=run_dir / "eval", tag="bf16check",
                    batch_size=256, n_samples=args.eval_n, seed=0, mode="cascade", progress=False)
    t = time.perf_counter()
    res = ev.run()
    r = res["results"]
    return {"precision": precision, "seed": seed, "amp_dtype": str(trainer.amp_dtype), "train_seconds": train_s,
            "eval_seconds": time.perf_counter() - t, "n_test": res["n"],
            "clean": r["clean"]["accuracy"], "clean_balanced": r["clean"]["balanced_accuracy"],
            "pgd20": r["pgd20"]["accuracy"], "pgd20_balanced": r["pgd20"]["balanced_accuracy"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ltrobust.config import DataConfig
    from ltrobust.data import build_data
    from ltrobust.training.trainer import cpu_has_native_bf16, resolve_device

    device = resolve_device(args.device)
    resolve_defaults(args, device)
    native = device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_has_native_bf16()
    print(f"device: {device_name(device)} (native bf16: {native})")
    print(f"{args.method}, {args.model} width {args.width}, {args.dataset} IR {args.imbalance:g}, {args.epochs} epochs, "
          f"batch {args.batch_size}, PGD-{args.steps} training, seeds {args.seeds}")
    data = build_data(DataConfig(dataset=args.dataset, data_dir=args.data_dir, imbalance=args.imbalance), device)
    work = Path(tempfile.mkdtemp(prefix="ltrobust-bf16-"))
    runs = []
    for seed in args.seeds:
        for precision in ("bf16", "fp32"):
            row = train_and_eval(args, precision, seed, data, device, work)
            runs.append(row)
            print(f"  seed {seed} {precision:>4}: clean {row['clean']:.2f}  PGD-20 {row['pgd20']:.2f} "
                  f"(balanced {row['pgd20_balanced']:.2f})  train {row['train_seconds']:.0f} s", flush=True)
    by = {(r["seed"], r["precision"]): r for r in runs}
    diffs = [by[(s, "bf16")]["pgd20"] - by[(s, "fp32")]["pgd20"] for s in args.seeds]
    diffs_bal = [by[(s, "bf16")]["pgd20_balanced"] - by[(s, "fp32")]["pgd20_balanced"] for s in args.seeds]
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    fp32 = [by[(s, "fp32")]["pgd20"] for s in args.seeds]
    bf16 = [by[(s, "bf16")]["pgd20"] for s in args.seeds]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    summary = {"pgd20_bf16_mean": mean(bf16), "pgd20_fp32_mean": mean(fp32), "diff_mean": mean(diffs),
               "diff_standard_error": se, "diff_balanced_mean": mean(diffs_bal), "diff_per_seed": diffs,
               "clean_bf16_mean": mean([by[(s, "bf16")]["clean"] for s in args.seeds]),
               "clean_fp32_mean": mean([by[(s, "fp32")]["clean"] for s in args.seeds]),
               "fp32_seed_std": statistics.stdev(fp32) if len(fp32) > 1 else None,
               "one_test_image_points": 100.0 / by[(args.seeds[0], "fp32")]["n_test"],
               "target_points": TARGET_POINTS, "mean_within_target": abs(mean(diffs)) <= TARGET_POINTS,
               "verdict": verdict(mean(diffs), se)}
    print(f"PGD-20 robust accuracy (fp32 evaluation): bf16-trained {summary['pgd20_bf16_mean']:.2f}, fp32-trained "
          f"{summary['pgd20_fp32_mean']:.2f}, difference {summary['diff_mean']:+.2f} points (balanced "
          f"{summary['diff_balanced_mean']:+.2f}); target |diff| <= {TARGET_POINTS:g}: {summary['verdict']}")
    print(f"clean accuracy: bf16-trained {summary['clean_bf16_mean']:.2f}, fp32-trained {summary['clean_fp32_mean']:.2f}")
    if se is not None:
        print(f"noise: per-seed differences {', '.join(f'{d:+.1f}' for d in diffs)}; standard error of the mean "
              f"difference {se:.2f} points (95% interval {summary['diff_mean'] - 2 * se:+.2f} .. "
              f"{summary['diff_mean'] + 2 * se:+.2f}); fp32 seed-to-seed std {summary['fp32_seed_std']:.2f}; "
              f"one test image = {summary['one_test_image_points']:.2f} points")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"command": " ".join([Path(sys.executable).name, os.path.relpath(__file__, Path.cwd())] + sys.argv[1:]),
              "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": str(device),
              "device_name": device_name(device), "native_bf16": native, "versions": versions(),
              "load_average": load, "settings": vars(args), "runs": runs, "summary": summary}
    out = Path(args.out) if args.out else HERE / "results" / (
        f"bf16-check-{device.type}-{_dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
