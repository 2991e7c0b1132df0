"""What ``speed.py`` prints: the machine line, one line per measured method, and the summary tables."""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch


def busy_warning(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    if not load:
        return ""
    return (f"WARNING: the machine is busy (load average {load[0]:.1f} on {machine['cpus']} CPUs): other jobs "
            "share the cores and the figures are noisy; both sides alternate, so their ratio is the fairer figure."
            if machine["busy"] else "")


def print_machine(result: dict[str, Any], amp: torch.dtype | None) -> None:
    """The device, whether bf16 is native on this CPU, what precision each side runs in, the load."""
    m = result["machine_at_start"]
    load = m["load_average"]
    print(f"device: {result['device_name']} | torch {torch.__version__}")
    print(f"bf16 native on this CPU (AVX512-BF16 / AMX): {'yes' if m['cpu_native_bf16'] else 'no'} | ltrobust "
          f"precision: {'bf16 autocast' if amp == torch.bfloat16 else 'fp32'} (train.precision="
          f"{result['settings']['precision']}) | reference: fp32 | load average "
          + (" ".join(f"{v:.2f}" for v in load) if load else "unknown") + f" on {m['cpus']} CPUs")
    if busy_warning(m):
        print(busy_warning(m))


def describe_subnormal_penalty(penalty: dict[str, float]) -> str:
    """One line: how much slower this CPU runs on unflushed subnormal operands, and what that means here."""
    worst = max(penalty.values())
    verdict = ("this CPU handles subnormals at full speed: the flush changes no speed here, and a reference "
               "that keeps subnormals is not slowed by them" if worst < 1.3 else
               "this CPU slows down on subnormals: a loop that keeps them (the papers' code) loses speed as "
               "training produces them; ltrobust flushes them")
    return (f"subnormal operands, unflushed / flushed time: conv x{penalty['conv_unflushed_over_flushed']:.2f}, "
            f"element-wise x{penalty['elementwise_unflushed_over_flushed']:.2f}: {verdict}")


def fmt(v: Any, d: int = 1) -> str:
    return f"{v:.{d}f}" if isinstance(v, (int, float)) else "-"



def print_train_row(method: str, row: dict[str, Any]) -> None:
    l, r = row["ltrobust"], row.get("reference")
    rounds = lambda d: ", ".join(f"{v:.1f}" for v in d["rounds_images_per_s"])  # noqa: E731
    msg = f"[{method}] ltrobust {l['images_per_s']:.1f} img/s (rounds {rounds(l)})"
    if r:
        msg += (f" | reference {r['images_per_s']:.1f} img/s (rounds {rounds(r)}) | speedup x{row['speedup']:.2f}; "
                f"per CPU-second: ltrobust {l['images_per_cpu_s']:.1f}, reference {r['images_per_cpu_s']:.1f} "
                f"images, x{row['speedup_per_cpu_s']:.2f}")
    print(msg, flush=True)


def print_summary(result: dict[str, Any], args: argparse.Namespace) -> None:
    load = " (MEASURED UNDER LOAD: noisy)" if result.get("under_load") else ""
    m0, m1 = result["machine_at_start"], result.get("machine_at_end", result["machine_at_start"])
    fmt_load = lambda m: " ".join(f"{v:.2f}" for v in m["load_average"]) if m["load_average"] else "unknown"  # noqa: E731
    src = "SYNTHETIC data" if result["data"]["source"] == "synthetic" else f"{args.dataset} IR {args.imbalance:g}"
    print()
    print(f"== {result['device_name']}: {args.model} width {args.width}, batch {args.batch_size}, "
          f"PGD-{args.steps} training, {src}{load}")
    print(f"bf16 native on this CPU: {'yes' if m0['cpu_native_bf16'] else 'no'}; ltrobust {result['ltrobust_amp_dtype']} "
          f"(None = fp32), reference fp32; subnormals flushed on CPU: ltrobust yes, reference "
          f"{'yes' if result['reference']['flush_denormal'] else 'no (as the papers code)'}; load average at start "
          f"{fmt_load(m0)}, at end {fmt_load(m1)} ({os.cpu_count()} CPUs)")
    for m in (m0, m1):
        if busy_warning(m):
            print(busy_warning(m))
            break
    mf = result.get("model_flops_per_image")
    if mf:
        print(f"FLOPs/image: forward {mf['forward'] / 1e6:.1f} M, forward+backward {mf['forward_backward'] / 1e6:.1f} M, "
              f"attack step (input grad only) {mf['attack_step'] / 1e6:.1f} M "
              f"(its backward = {mf['attack_backward_over_forward']:.2f} x forward; a full backward = "
              f"{mf['train_backward_over_forward']:.2f} x)")
    if result.get("train"):
        n_train = result["data"]["train_images"]
        if args.batches:
            print(f"images/s: sustained, median of {args.rounds} timed rounds of {args.batches} batches after "
                  f"{args.warmup} untimed batches per side, the sides alternating throughout (first timed round = "
                  f"steps {args.warmup + 1}-{args.warmup + args.batches}); 'best' = fastest round of each side; "
                  f"s/epoch = {n_train} training images / median images/s")
        else:
            print("images/s: one full epoch of each side, alternating")
        print(f"{'method':<13}{'ltrobust img/s':>15}{'reference img/s':>16}{'speedup':>8}{'best':>7}{'s/epoch':>9}"
              f"{'GFLOP/img':>10}{'(k+1)(F+B)':>11}{'TFLOP/s':>9}{'ltr %peak':>10}{'ref %peak':>10}")
        for m, row in result["train"].items():
            if "error" in row:
                print(f"{m:<13} cannot build: {row['error']}")
                continue
            l, r = row["ltrobust"], row.get("reference", {})
            gf = row.get("flops_per_image")
            print(f"{m:<13}{fmt(l['images_per_s']):>15}{fmt(r.get('images_per_s')):>16}"
                  f"{('x' + fmt(row['speedup'], 2)) if 'speedup' in row else '-':>8}"
                  f"{('x' + fmt(row['speedup_best'], 2)) if 'speedup_best' in row else '-':>7}"
                  f"{fmt(n_train / l['images_per_s'], 0):>9}"
                  f"{fmt(gf / 1e9 if gf else None, 3):>10}{fmt(row['flops_rough_formula'] / 1e9 if gf else None, 3):>11}"
                  f"{fmt(l.get('achieved_flops', 0) / 1e12, 4):>9}{fmt(100 * l['share_of_peak'] if gf else None, 2):>10}"
                  f"{fmt(100 * r['share_of_peak'] if r.get('share_of_peak') else None, 2):>10}")
    ev = result.get("eval")
    if ev:
        p = ev["pgd"]
        print(f"PGD-{p['steps']} eval (fp32, weights: {ev['model']['weights']}): ltrobust "
              f"{p['ltrobust']['images_per_s']:.1f} img/s"
              + (f" | reference {p['reference']['images_per_s']:.1f} img/s | x{p['speedup']:.2f}" if "reference" in p else ""))
        if "aa" in ev:
            a = ev["aa"]
            print(f"AutoAttack standard, n={a['n']}: ltrobust {a['ltrobust']['seconds']:.1f} s "
                  f"(clean {a['ltrobust']['clean']:.1f}%, robust {a['ltrobust']['robust']:.1f}%)"
                  + (f" | direct pyautoattack {a['reference']['seconds']:.1f} s (robust {a['reference']['robust']:.1f}%)"
                     if "reference" in a else "")
                  + f" | projected 10,000 images: {a['projected_seconds_10000']:.0f} s")
            print(f"  {a['note']}")
    fp = result.get("fast_path")
    if fp:
        print("fast path:")
        print(f"  data on {fp['data']['train_images_device']} as {fp['data']['dtype']}, augment {fp['data']['augment']} "
              f"on device, loader {fp['data']['loader_ms_per_batch']:.2f} ms/batch")
        print(f"  attack: autocast {fp['attack']['autocast']}, channels_last {fp['attack']['channels_last']}, "
              f"train_mode {fp['attack']['train_mode']}, parameter grads untouched: "
              f"{fp['attack']['param_grads_untouched']}")
        print(f"  step: autocast {fp['step']['autocast']}, channels_last {fp['step']['channels_last']}, "
              f"train_mode {fp['step']['train_mode']}")
        if "validation" in fp:
            print(f"  validation: autocast {fp['validation']['autocast']} on a sample of "
                  f"{fp['validation']['val_samples_per_epoch']} images, PGD-{fp['validation']['val_attack_steps']}")
        print(f"  final evaluation: autocast {fp['final_eval']['autocast']}")
        s = fp["static_shapes"]
        print(f"  static shapes: {s['train_images']} images / batch {s['batch_size']} -> last batch {s['last_batch']}, "
              f"pad_last={s['pad_last']} drop_last={s['drop_last']} -> static: {s['static']}")
        print(f"  host syncs: {fp['cuda_syncs']}")
        for key in ("profile_train_attack", "profile_train_step"):
            if key in fp:
                pr = fp[key]
                print(f"  {key}: sync-like ops {pr['sync_like_ops'] or 'none'}; copies {pr['copy_ops']}")
                for row in pr["top_ops"][:8]:
                    print(f"    {row['op']:<40}{row['calls']:>6} calls {row['self_ms']:>10.1f} ms {100 * row['share']:>5.1f}%")


