#!/usr/bin/env python
"""Images per second of adversarial training and evaluation: ltrobust against the papers' plain loop.

For one model, data set and batch size this script measures, in one run and on identical model weights
and data:

- training images/s per method (``--methods``; every METHODS entry works on the ltrobust side, the
  reference loop of ``reference_loop.py`` exists for natural, pgd_at, trades, at_bsl), ltrobust through
  its real :class:`~ltrobust.training.trainer.Trainer` (``train_epoch``: device-resident loader, bf16
  autocast where native, channels_last, optional ``torch.compile``), warm-up batches excluded;
- evaluation images/s: PGD-20 on every image (ltrobust's ``run_attack`` + ``predict`` as the evaluator
  calls them, fp32) against the reference PGD-20 loop, and AutoAttack standard through ltrobust's adapter
  against pyautoattack called directly (small ``--aa-n`` on CPU: said in the output);
- FLOPs per image counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls)
  on one real training step of each method, next to the rough ``(k+1) x (forward + backward)`` figure,
  and the share of the device's measured matmul peak (bf16 / fp32, and TF32 on CUDA) that each side
  reaches;
- the fast-path checks of issue 9 (``--profile`` adds torch.profiler tables and, on CUDA, host-sync
  detection with ``torch.cuda.set_sync_debug_mode``).

Data: CIFAR-10-LT IR 50 read by ltrobust's own ``build_data`` from ``--data-dir`` (default: the first of
``.data/cifar10``, ``data/cifar10``, ``.data`` that holds CIFAR-10), else synthetic uint8 images of the
same shapes and class counts (said in the output and the JSON).

Example (the CPU target, fp32 forced, sustained: 16 untimed steps per side, then 3 rounds of 8, the sides
alternating)::

    python benchmarks/speed.py --device cpu --threads 1 --model resnet18 --width 16 --batch-size 128 \\
        --steps 10 --methods pgd_at --precision fp32 --warmup 16 --batches 8 --rounds 3 --skip-eval --no-checks

Layout: this file holds the options and the measurements of one run; ``harness.py`` the machine, the
data, the runners and the alternation; ``reference_loop.py`` the papers-style loop; ``report.py`` what is
printed; ``flops.py`` FLOP counting and peaks; ``fastpath.py`` the fast-path checks.

Every figure, the library versions, the device and the command line go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import reference_loop as ref  # noqa: E402
from fastpath import fast_path_checks  # noqa: E402
from flops import ltrobust_step_flops, measure_peaks, model_flops, reference_step_flops, subnormal_penalty  # noqa: E402
from report import describe_subnormal_penalty, print_machine, print_summary, print_train_row  # noqa: E402

log = logging.getLogger("speed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=int, default=16, help="base width (-1: the architecture's default)")
    p.add_argument("--dataset", default="cifar10-lt")
    p.add_argument("--imbalance", type=float, default=50.0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--synthetic", action="store_true", help="random uint8 data of the same shapes")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    p.add_argument("--batches", type=int, default=8, help="timed training batches per round (0: one full epoch)")
    p.add_argument("--rounds", type=int, default=-1,
                   help="alternating ltrobust / reference rounds; median reported (-1: 3 on CPU, 1 on CUDA)")
    p.add_argument("--warmup", type=int, default=16,
                   help="untimed batches of each side before the timed rounds (run alternating, in chunks of --batches)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="ltrobust's train.precision")
    p.add_argument("--compile", action="store_true", help="ltrobust's train.compile=true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--methods", default="natural,pgd_at,trades,at_bsl",
                   help="comma-separated METHODS names, or 'all'")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    p.add_argument("--reference-flush-denormal", action="store_true",
                   help="give the reference loop torch.set_flush_denormal(True) too (the papers' code does not set it)")
    p.add_argument("--trades-recompute-clean", action="store_true",
                   help="reference TRADES recomputes model(x) in every attack step, as its public code does")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-batch-size", type=int, default=0, help="0: --batch-size")
    p.add_argument("--eval-batches", type=int, default=1, help="PGD evaluation batches per round")
    p.add_argument("--aa-n", type=int, default=-1, help="AutoAttack images (-1: 4 on CPU, 1000 on CUDA; 0: skip)")
    p.add_argument("--checkpoint", default=None,
                   help="ltrobust run folder or checkpoint whose deployed model the evaluation attacks")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of one attack and one step")
    p.add_argument("--no-checks", action="store_true", help="skip the fast-path checks")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--peak-n", type=int, default=0, help="matmul size of the peak measurement (0: 8192 on CUDA, 2048 on CPU)")
    p.add_argument("--flops-batch", type=int, default=16, help="batch for FlopCounterMode (FLOPs scale with it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--under-load", action="store_true", help="mark the results as measured on a shared machine")
    p.add_argument("--tmp", default=None, help="folder for the Trainer's run folders (default: a new temp folder)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/speed-<device>-<date>.json)")
    return p.parse_args(argv)




def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ltrobust.device import resolve_amp, resolve_device
    from ltrobust.registry import METHODS

    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    if args.rounds < 0:
        args.rounds = 1 if device.type == "cuda" else 3
    if args.aa_n < 0:
        args.aa_n = 1000 if device.type == "cuda" else 4
    methods = METHODS.names() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    amp = resolve_amp(args.precision, device)
    machine = H.machine_state(device)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name] + [os.path.relpath(__file__, Path.cwd())] + sys.argv[1:]),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": str(device),
        "device_name": H.device_name(device), "versions": H.versions(), "machine_at_start": machine,
        "load_average": machine["load_average"], "under_load": args.under_load or machine["busy"],
        "settings": dict(vars(args)), "ltrobust_amp_dtype": str(amp),
        "reference": {"precision": "fp32", "memory_format": "NCHW", "loader": "DataLoader, 2 workers, PIL "
                      "RandomCrop(padding=4)+RandomHorizontalFlip+ToTensor", "pin_memory": device.type == "cuda",
                      "flush_denormal": args.reference_flush_denormal},
    }
    print_machine(result, amp)
    data, data_info = H.load_data(args, device)
    result["data"] = data_info
    if data_info["source"] == "synthetic":
        print(f"DATA: SYNTHETIC uint8 images with the shapes and class counts of {args.dataset} IR "
              f"{args.imbalance:g} ({data_info['why']})")
    else:
        print(f"DATA: {args.dataset} IR {args.imbalance:g} from {data_info['data_dir']} "
              f"({data_info['train_images']} training images)")

    peaks = measure_peaks(device, args.peak_n)
    result["peak_flops"] = peaks
    print("measured matmul peak: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in peaks.items() if k != "matmul_n")
          + f" (n={peaks['matmul_n']})")
    # fp32 convolutions on CUDA run as TF32 unless cudnn.allow_tf32 is off: compare them with the TF32 peak
    fp32_peak = peaks["tf32"] if "tf32" in peaks and torch.backends.cudnn.allow_tf32 else peaks["fp32"]
    peaks_used = {"ltrobust": peaks["bf16"] if amp == torch.bfloat16 else fp32_peak, "reference": fp32_peak}
    result["peak_used"] = peaks_used | {"note": "CUDA fp32 convolutions use TF32 (cudnn.allow_tf32) unless disabled"}
    if device.type == "cpu":
        penalty = subnormal_penalty()
        result["subnormal_penalty"] = penalty
        print(describe_subnormal_penalty(penalty))

    out = Path(args.out) if args.out else H.HERE / "results" / (
        f"speed-{device.type}-{_dt.date.today().isoformat()}.json")

    def save() -> None:  # after every measurement, so that an interrupted run keeps what it measured
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    tmp = Path(args.tmp) if args.tmp else Path(tempfile.mkdtemp(prefix="ltrobust-speed-"))
    if not args.skip_train:
        result["train"] = {}
        check_trainer = None
        for method in methods:
            if method not in METHODS:
                print(f"skip {method}: not in METHODS ({', '.join(METHODS.names())})")
                continue
            trainer = run_train(args, method, data, device, tmp, result, peaks_used)
            save()
            if check_trainer is None and trainer is not None and trainer.method.adversarial:
                check_trainer = trainer
        if not args.no_checks:
            if check_trainer is None:  # the checks need a training-time attack
                check_trainer = H.build_trainer(args, "pgd_at", data, device, tmp)
            print(f"fast-path checks on {check_trainer.method.name} ...", flush=True)
            result["fast_path"] = fast_path_checks(check_trainer, args, device)
            save()

    if not args.skip_eval:
        result["eval"] = {}
        run_eval(args, data, device, result["eval"], save)

    result["machine_at_end"] = H.machine_state(device)
    result["under_load"] = result["under_load"] or result["machine_at_end"]["busy"]
    print_summary(result, args)
    save()
    print(f"wrote {out}")
    return result


def reference_side(args: argparse.Namespace, run: Callable[[int], dict[str, Any]]) -> Callable[[int], dict[str, Any]]:
    """The reference runner as the papers' code runs: subnormal floats kept (PyTorch's default; ltrobust
    switches flushing on in the same thread), unless ``--reference-flush-denormal``."""

    def side(n: int) -> dict[str, Any]:
        torch.set_flush_denormal(args.reference_flush_denormal)
        return run(n)

    return side


def run_train(args: argparse.Namespace, method: str, data: Any, device: torch.device, tmp: Path,
              result: dict[str, Any], peaks: dict[str, float]) -> Any:
    """Training images/s of ``method``, ltrobust against the reference loop (when it has one), into
    ``result["train"][method]``; returns the ltrobust Trainer (None if it cannot be built here)."""
    row: dict[str, Any] = {}
    result["train"][method] = row
    try:
        trainer = H.build_trainer(args, method, data, device, tmp)
    except Exception as exc:  # a method that cannot be built here is reported, not fatal
        row["error"] = f"{type(exc).__name__}: {exc}"
        print(f"{method}: cannot build ({row['error']})")
        return None
    fb = min(args.flops_batch, args.batch_size)
    xf, yf = next(iter(trainer.loader))
    xf, yf = xf[:fb], yf[:fb]
    if trainer.cfg.train.channels_last:
        xf = xf.contiguous(memory_format=torch.channels_last)
    if "parameters" not in result:
        result["model_flops_per_image"] = None if args.no_flops else model_flops(trainer.model, xf.contiguous(), yf)
        result["parameters"] = sum(p.numel() for p in trainer.model.parameters())
    if not args.no_flops:
        row["flops_per_image"] = ltrobust_step_flops(trainer, xf, yf)
        mf = result["model_flops_per_image"]
        row["flops_rough_formula"] = (args.steps + 1 if trainer.method.adversarial else 1) * mf["forward_backward"]
    runners: dict[str, Callable[[int], dict[str, Any]]] = {"ltrobust": H.LtrobustTrainRunner(trainer).run}
    if method in ref.REFERENCE_METHODS and not args.no_reference:
        torch.manual_seed(args.seed)
        ref_model = H.build_reference_model(trainer, data, device)
        if not args.no_flops:
            row["reference_flops_per_image"] = reference_step_flops(method, ref_model, xf.contiguous(), yf,
                                                                    args, data.class_counts)
        loader = ref.make_loader(data.train.images, data.train.labels, args.batch_size, device, train=True,
                                 padding=data.crop_padding, flip=data.flip, seed=args.seed)
        ref_runner = ref.ReferenceTrainer(method, ref_model, loader, data.class_counts, steps=args.steps,
                                          recompute_clean=args.trades_recompute_clean)
        # a full epoch: ltrobust's train_epoch(max_steps=0) against len(loader) reference batches
        runners["reference"] = reference_side(args, lambda n, r=ref_runner, k=len(loader): r.run(n or k))
    rounds = 1 if args.batches == 0 else args.rounds
    warmup = args.warmup
    print(f"[{method}] {' and '.join(runners)}, alternating: {warmup} untimed batches each, then {rounds} "
          f"timed round(s) of {args.batches or 'one epoch of'} batches ...", flush=True)
    row.update(H.interleave(runners, warmup, args.batches, rounds))
    row["ltrobust"] |= {"amp_dtype": str(trainer.amp_dtype), "channels_last": trainer.cfg.train.channels_last,
                        "compile": trainer.cfg.train.compile}
    for side in ("ltrobust", "reference"):
        fl = row.get("flops_per_image" if side == "ltrobust" else "reference_flops_per_image")
        if side in row and fl:
            row[side]["achieved_flops"] = fl * row[side]["images_per_s"]
            row[side]["share_of_peak"] = row[side]["achieved_flops"] / peaks[side]
    if "reference" in row:
        row["speedup"] = row["ltrobust"]["images_per_s"] / row["reference"]["images_per_s"]
        row["speedup_per_cpu_s"] = row["ltrobust"]["images_per_cpu_s"] / row["reference"]["images_per_cpu_s"]
        row["speedup_best"] = row["ltrobust"]["best_images_per_s"] / row["reference"]["best_images_per_s"]
    print_train_row(method, row)
    return trainer


def run_eval(args: argparse.Namespace, data: Any, device: torch.device, out: dict[str, Any],
             save: Callable[[], None]) -> None:
    """PGD evaluation images/s (fp32 both sides) and AutoAttack standard, into ``out``."""
    model, info = H.eval_model(args, data, device)
    out["model"] = info
    ltr_model = model.to(memory_format=torch.channels_last) if not args.no_channels_last else model
    ref_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    # the test split is stored class by class: both sides read it in one seeded random order
    perm = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(args.seed))
    images = data.test.images[perm.to(data.test.images.device)]
    labels = data.test.labels[perm.to(data.test.labels.device)]
    ltr = H.LtrobustPGDEval(ltr_model, images, labels, data.num_classes, args.eval_steps, args.eval_batch_size, device)
    runners: dict[str, Any] = {"ltrobust": ltr.run}
    accuracy = {"ltrobust": ltr.accuracy}
    if not args.no_reference:
        loader = ref.make_loader(images, labels, args.eval_batch_size, device, train=False)
        ref_eval = ref.ReferencePGDEval(ref_model, loader, steps=args.eval_steps)
        runners["reference"], accuracy["reference"] = reference_side(args, ref_eval.run), ref_eval.accuracy
    warmup = min(args.warmup, 1)  # evaluation has no state that drifts: one batch warms it up
    print(f"[eval] PGD-{args.eval_steps} fp32 ({' and '.join(runners)}): warm-up {warmup}, then {args.rounds} "
          f"alternating round(s) of {args.eval_batches} batches of {args.eval_batch_size} ...", flush=True)
    timed = H.interleave(runners, warmup, args.eval_batches, args.rounds)
    out["pgd"] = {"steps": args.eval_steps}
    for k in runners:
        out["pgd"][k] = timed[k] | accuracy[k]()
    if "reference" in out["pgd"]:
        out["pgd"]["speedup"] = out["pgd"]["ltrobust"]["images_per_s"] / out["pgd"]["reference"]["images_per_s"]
    save()
    if args.aa_n:
        n = min(args.aa_n, len(data.test))
        from ltrobust.evaluation.evaluator import balanced_subset

        idx = balanced_subset(data.test.labels, n, args.seed)
        x = data.test.images[idx.to(data.test.images.device)].to(device).float() / 255.0
        y = data.test.labels[idx.to(data.test.labels.device)].to(device)
        bs = min(args.eval_batch_size if device.type == "cpu" else 1000, n)
        print(f"[eval] AutoAttack standard on {n} test images{' (small n on CPU)' if device.type == 'cpu' else ''} ...",
              flush=True)
        out["aa"] = {"n": n, "batch_size": bs, "ltrobust": H.time_ltrobust_aa(ltr_model, x, y, bs)}
        out["aa"]["projected_seconds_10000"] = 10000 / out["aa"]["ltrobust"]["images_per_s"]
        save()
        if not args.no_reference:
            out["aa"]["reference"] = reference_side(args, lambda _: ref.time_autoattack(ref_model, x, y, batch_size=bs))(0)
            out["aa"]["speedup"] = out["aa"]["ltrobust"]["images_per_s"] / out["aa"]["reference"]["images_per_s"]
        out["aa"]["note"] = "AutoAttack runs each attack on the points still robust: its time depends on the weights. " + (
            "Untrained weights are nearly constant, a few points never break and FAB-T and Square (5000 queries) "
            "run on them: pass --checkpoint for a trained model." if not args.checkpoint else
            "The projection to 10,000 images assumes the same robust fraction.")
        save()


if __name__ == "__main__":
    main()
