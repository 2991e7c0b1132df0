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

Example (the issue's CPU target)::

    python benchmarks/speed.py --device cpu --model resnet18 --width 16 --batch-size 128 --steps 10 \\
        --methods pgd_at --batches 2 --warmup 1

Every figure, the library versions, the device and the command line go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import reference_loop as ref  # noqa: E402

log = logging.getLogger("speed")

DATA_CANDIDATES = (".data/cifar10", "data/cifar10", ".data", "data")


# ============================================================================ environment and data
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})"


def versions() -> dict[str, str]:
    from ltrobust.evaluation.evaluator import library_versions

    out = library_versions()
    out["cuda"] = str(torch.version.cuda)
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def find_data_dir() -> Path | None:
    for cand in DATA_CANDIDATES:
        p = ROOT / cand
        if (p / "train").is_dir() and (p / "test").is_dir() or (p / "cifar-10-batches-py").is_dir():
            return p
    return None


def synthetic_data(dataset: str, imbalance: float, device: torch.device, seed: int = 0) -> Any:
    """An LTData of random uint8 images with the shapes and LT class counts of ``dataset``."""
    from ltrobust.config import DataConfig
    from ltrobust.data.lt import LTData, get_spec
    from ltrobust.data.profiles import class_counts, class_groups
    from ltrobust.data.splits import ArraySplit

    spec = get_spec(dataset)
    counts = class_counts("exp", spec.n_max, spec.num_classes, imbalance)
    g = torch.Generator().manual_seed(seed)

    def split(per_class: list[int]) -> ArraySplit:
        labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(per_class)])
        images = torch.randint(0, 256, (len(labels), spec.channels, spec.image_size, spec.image_size),
                               generator=g, dtype=torch.uint8)
        return ArraySplit(images.to(device), labels.to(device))

    test_per_class = 1000 if spec.num_classes <= 10 else 100
    return LTData(train=split(counts), val=split([max(spec.val_per_class, 10)] * spec.num_classes),
                  test=split([test_per_class] * spec.num_classes), class_counts=counts,
                  class_names=[str(c) for c in range(spec.num_classes)], num_classes=spec.num_classes,
                  channels=spec.channels, image_size=spec.image_size, mean=tuple(spec.mean), std=tuple(spec.std),
                  groups=class_groups(counts), manifest={"synthetic": True, "seed": seed},
                  crop_padding=spec.crop_padding, flip=spec.flip, augment="crop_flip",
                  config=DataConfig(dataset=dataset, imbalance=imbalance))


def load_data(args: argparse.Namespace, device: torch.device) -> tuple[Any, dict[str, Any]]:
    from ltrobust.config import DataConfig
    from ltrobust.data import build_data
    from ltrobust.errors import LtrobustError

    why = "--synthetic given"
    if not args.synthetic:
        data_dir = Path(args.data_dir) if args.data_dir else find_data_dir()
        needs_dir = args.dataset != "digits-lt"
        if needs_dir and data_dir is None:
            why = f"no data folder found (looked in {', '.join(DATA_CANDIDATES)}; pass --data-dir)"
        else:
            try:
                t = time.perf_counter()
                data = build_data(DataConfig(dataset=args.dataset, data_dir=str(data_dir) if needs_dir else None,
                                             imbalance=args.imbalance), device)
                return data, {"source": "real", "data_dir": str(data_dir) if needs_dir else None,
                              "dataset": args.dataset, "imbalance": args.imbalance,
                              "train_images": len(data.train), "test_images": len(data.test),
                              "class_counts": data.class_counts, "build_seconds": time.perf_counter() - t}
            except LtrobustError as exc:
                why = f"reading {data_dir} failed: {exc}"
    data = synthetic_data(args.dataset, args.imbalance, device, args.seed)
    return data, {"source": "synthetic", "why": why, "dataset": args.dataset, "imbalance": args.imbalance,
                  "train_images": len(data.train), "test_images": len(data.test),
                  "class_counts": data.class_counts}


# ============================================================================= peak and FLOPs
def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int, tf32: bool = False) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) matmul in ``dtype`` over ``reps`` runs."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        sync(device)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t)
        return 2.0 * n ** 3 / best
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measure_peaks(device: torch.device) -> dict[str, float]:
    n, reps = (8192, 20) if device.type == "cuda" else (2048, 5)
    peaks = {"fp32": matmul_peak(device, torch.float32, n, reps), "bf16": matmul_peak(device, torch.bfloat16, n, reps)}
    if device.type == "cuda":
        peaks["tf32"] = matmul_peak(device, torch.float32, n, reps, tf32=True)
    peaks["matmul_n"] = n
    return peaks


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker, whose backward hooks raise under
    ``torch.autograd.grad`` ("A leaf node was passed to _will_engine_execute_node"): count globally only."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (convolutions, matmuls and their backward) that ``fn`` executes, by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


def model_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per-image FLOPs of one forward, one forward + full backward, one attack step (input grads only)."""
    b = x.shape[0]
    m = copy.deepcopy(model).float()

    def forward() -> None:
        with torch.no_grad():
            m.eval()(x)

    def train_fb() -> None:
        m.train()
        F.cross_entropy(m(x), y).backward()

    def attack_step() -> None:
        m.eval()
        d = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(m(d), y), d)

    fwd, fb, atk = count_flops(forward) / b, count_flops(train_fb) / b, count_flops(attack_step) / b
    return {"forward": fwd, "forward_backward": fb, "attack_step": atk,
            "attack_backward_over_forward": (atk - fwd) / fwd, "train_backward_over_forward": (fb - fwd) / fwd}


# ========================================================================= ltrobust training
def make_config(args: argparse.Namespace, method: str, device: torch.device) -> Any:
    from ltrobust.config import resolve_config

    over = [f"method={method}", f"model={args.model}", f"train.batch_size={args.batch_size}",
            f"attack.steps={args.steps}", f"train.precision={args.precision}", f"train.compile={args.compile}",
            f"train.device={device}", "train.progress=false", "train.val_every=0", f"train.seed={args.seed}",
            f"dataset={args.dataset}", f"imbalance={args.imbalance}", f"train.channels_last={not args.no_channels_last}"]
    if args.width > 0:
        over.append(f"model.width={args.width}")
    return resolve_config(over)


def build_trainer(args: argparse.Namespace, method: str, data: Any, device: torch.device, run_dir: Path) -> Any:
    from ltrobust.training.trainer import Trainer

    trainer = Trainer(make_config(args, method, device), run_dir=run_dir / method, data=data, resume=False)
    trainer.build()
    if hasattr(trainer.method, "set_teacher"):  # cost only: an untrained copy stands in for the teacher
        trainer.method.set_teacher(copy.deepcopy(trainer.model))
    else:
        trainer.method.setup(trainer)
    return trainer


def ltrobust_step_flops(trainer: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs per image of one real ltrobust training step (attack + loss + backward) of ``trainer``."""
    from ltrobust.training.trainer import unwrap

    model = unwrap(trainer.model)
    method = trainer.method

    def step() -> None:
        x_adv = method.train_attack(model, x, y) if method.adversarial else x
        out = method.compute_loss(model, x, x_adv, y)
        out["loss"].backward()
        method.after_step(model)

    flops = count_flops(step) / x.shape[0]
    trainer.optimizer.zero_grad(set_to_none=True)
    return flops


def reference_step_flops(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                         class_counts: list[int]) -> float:
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    counts = torch.as_tensor(class_counts, dtype=torch.float32, device=x.device)
    log_prior = (counts / counts.sum()).log()
    return count_flops(lambda: ref.train_step(method, m, opt, x, y, log_prior, steps=args.steps)) / x.shape[0]


class LtrobustTrainRunner:
    """ltrobust's real ``Trainer.train_epoch``, ``n`` batches per call (each call a new epoch; 0: a full one)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.epoch = trainer, 0

    def run(self, n: int) -> dict[str, Any]:
        tr, cfg = self.trainer, self.trainer.cfg
        tr.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps_per_epoch=n))
        try:
            rec = tr.train_epoch(self.epoch)
        finally:
            tr.cfg = cfg
        self.epoch += 1
        self.last_loss = rec.get("loss")
        return {"seconds": rec["seconds"], "images": int(round(rec["images_per_s"] * rec["seconds"]))}


def interleave(runners: dict[str, Callable[[int], dict[str, Any]]], warmup: int, batches: int,
               rounds: int) -> dict[str, dict[str, Any]]:
    """Warm each runner up, then alternate them for ``rounds`` rounds of ``batches`` batches each, so that
    both sides see the same machine load; images/s is the median over rounds (best and all kept)."""
    for run in runners.values():
        if warmup:
            run(warmup)
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            per[name].append(run(batches))
    out = {}
    for name, rs in per.items():
        ips = sorted(r["images"] / max(r["seconds"], 1e-9) for r in rs)
        out[name] = {"images_per_s": ips[len(ips) // 2] if len(ips) % 2 else (ips[len(ips) // 2 - 1] + ips[len(ips) // 2]) / 2,
                     "best_images_per_s": ips[-1], "rounds_images_per_s": [r["images"] / r["seconds"] for r in rs],
                     "seconds": sum(r["seconds"] for r in rs), "images": sum(r["images"] for r in rs),
                     "batches_per_round": batches, "rounds": rounds}
    return out


# ===================================================================================== evaluation
def eval_model(args: argparse.Namespace, data: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The model the evaluation benchmark attacks: ``--checkpoint``'s deployed model (a run folder or a
    checkpoint file, loaded by ``ltrobust.evaluation.runs.load_run``), else the initial weights of ``--model``."""
    if args.checkpoint:
        from ltrobust.evaluation.runs import load_run

        run = load_run(args.checkpoint, device=device)
        return run.deployed.eval(), {"weights": str(run.checkpoint), "model": run.cfg.model.name,
                                     "width": run.cfg.model.width, "epoch": run.epoch}
    from ltrobust.models import build_model

    cfg = make_config(args, "pgd_at", device)
    torch.manual_seed(args.seed)
    model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.channels, mean=data.mean,
                        std=data.std, image_size=data.image_size).to(device)
    return model.eval(), {"weights": "untrained (initialisation)", "model": args.model, "width": args.width}


def _test_batch(data: Any, start: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(start, min(start + size, len(data.test)))
    x = data.test.images[idx.to(data.test.images.device)].to(device).float() / 255.0
    return x, data.test.labels[idx.to(data.test.labels.device)].to(device)


class LtrobustPGDEval:
    """PGD-k on every image of consecutive test batches, as ``Evaluation._run_chunk`` runs it (fp32)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int,
                 batch_size: int, device: torch.device) -> None:
        from ltrobust.attacks.suite import parse_attack

        self.model, self.bs, self.device = model, batch_size, device
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.spec = parse_attack(f"pgd{steps}")
        self.batch, self.seen = 0, 0
        self.clean_ok = self.rob_ok = 0

    def run(self, n: int) -> dict[str, Any]:
        from ltrobust.attacks.suite import run_attack
        from ltrobust.evaluation.evaluator import _check_ball, predict

        sync(self.device)
        t0 = time.perf_counter()
        images = 0
        for _ in range(n):
            start = (self.batch * self.bs) % max(len(self.labels) - self.bs + 1, 1)
            x = self.images[start:start + self.bs].to(self.device).float() / 255.0  # as evaluator._images
            y = self.labels[start:start + self.bs].to(self.device)
            clean = predict(self.model, x, self.bs)
            x_adv = run_attack(self.spec, self.model, x, y, seed=self.batch, num_classes=self.num_classes)
            _check_ball(self.spec, x_adv, x)
            pred = predict(self.model, x_adv, self.bs)
            self.clean_ok, self.rob_ok = self.clean_ok + (clean == y).sum(), self.rob_ok + (pred == y).sum()
            images += len(y)
            self.batch += 1
        sync(self.device)
        self.seen += images
        return {"seconds": time.perf_counter() - t0, "images": images}

    def accuracy(self) -> dict[str, float]:
        n = max(self.seen, 1)
        return {"clean": 100.0 * float(self.clean_ok) / n, "robust": 100.0 * float(self.rob_ok) / n}


def time_ltrobust_aa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> dict[str, Any]:
    from ltrobust.attacks.autoattack import run_autoattack

    device = x.device
    sync(device)
    t0 = time.perf_counter()
    _, robust = run_autoattack(model, x, y, eps=8 / 255, version="standard", batch_size=bs, seed=0)
    sync(device)
    seconds = time.perf_counter() - t0
    from ltrobust.evaluation.evaluator import predict

    clean = float((predict(model, x, bs) == y).float().mean()) * 100
    return {"seconds": seconds, "images": int(len(y)), "images_per_s": len(y) / seconds, "clean": clean,
            "robust": 100.0 * float(robust.float().mean())}


# ================================================================================= fast-path checks
class ForwardProbe:
    """Records, for every forward of ``model``: autocast on / dtype, channels_last input, train mode."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device, self.calls = model, device, []
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        dt = self.device.type
        on = torch.is_autocast_enabled(dt)
        self.calls.append({"autocast": str(torch.get_autocast_dtype(dt)) if on else "off",
                           "channels_last": bool(x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                                                 and not x.is_contiguous()),
                           "train_mode": module.training, "batch": int(x.shape[0])})

    def take(self) -> dict[str, Any]:
        calls, self.calls = self.calls, []
        keys = ("autocast", "channels_last", "train_mode")
        return {k: sorted({str(c[k]) for c in calls}) for k in keys} | {"forwards": len(calls),
                                                                        "batches": sorted({c["batch"] for c in calls})}

    def close(self) -> None:
        self.handle.remove()


def _cuda_syncs(fn: Callable[[], Any]) -> dict[str, Any]:
    """Count synchronising CUDA calls in ``fn`` (sync debug mode ``warn``); locate the first (``error``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    n = sum("synchroniz" in str(w.message) for w in caught)
    where = None
    if n:
        import traceback

        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
        except RuntimeError as exc:
            frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)
                      if "ltrobust" in f.filename or "benchmarks" in f.filename]
            where = frames[-3:]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {"syncs": n, "first_sync_at": where}


def _profile(fn: Callable[[], Any], device: torch.device, top: int = 12) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
    sync(device)
    avg = prof.key_averages()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(avg, key=lambda e: getattr(e, key, 0) or 0, reverse=True)
    total = sum(getattr(e, key, 0) or 0 for e in avg) or 1
    table = [{"op": e.key, "calls": e.count, "self_ms": (getattr(e, key, 0) or 0) / 1e3,
              "share": (getattr(e, key, 0) or 0) / total} for e in rows[:top]]
    sync_ops = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "cudaStreamSynchronize",
                "cudaDeviceSynchronize", "aten::is_nonzero")
    counts = {e.key: e.count for e in avg if e.key in sync_ops}
    copies = {e.key: e.count for e in avg if e.key in ("aten::copy_", "aten::to", "aten::_to_copy",
                                                       "aten::contiguous", "aten::clone")}
    return {"top_ops": table, "sync_like_ops": counts, "copy_ops": copies}


def fast_path_checks(trainer: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Inspect a built ltrobust Trainer for the fast path of issue 9 (cheap; --profile adds profiles)."""
    from ltrobust.attacks.suite import parse_attack, run_attack
    from ltrobust.evaluation.evaluator import quick_robustness
    from ltrobust.training.trainer import unwrap

    out: dict[str, Any] = {}
    loader, method = trainer.loader, trainer.method
    model = unwrap(trainer.model)
    n, b = loader.num_samples, loader.batch_size
    out["data"] = {"train_images_device": str(loader.split.images.device), "dtype": str(loader.split.images.dtype),
                   "augment": loader.augment, "streamed": loader.streamed}
    out["static_shapes"] = {"train_images": n, "batch_size": b, "last_batch": n % b or b,
                            "pad_last": loader.pad_last, "drop_last": loader.drop_last,
                            "static": loader.pad_last or loader.drop_last or n % b == 0}
    # time of the loader alone (batched crop + flip on the device)
    it = iter(loader)
    next(it)
    sync(device)
    t = time.perf_counter()
    for _ in range(3):
        next(it)
    sync(device)
    out["data"]["loader_ms_per_batch"] = (time.perf_counter() - t) / 3 * 1e3
    x, y = next(iter(loader))
    if trainer.cfg.train.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)

    probe = ForwardProbe(model, device)
    trainer.optimizer.zero_grad(set_to_none=True)
    x_adv = method.train_attack(model, x, y) if method.adversarial else x
    out["attack"] = probe.take()
    out["attack"]["param_grads_untouched"] = all(p.grad is None for p in model.parameters())
    out_loss = method.compute_loss(model, x, x_adv, y)
    out["step"] = probe.take()
    out_loss["loss"].backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    method.after_step(model)
    val_n = min(trainer.cfg.train.val_samples, 2 * b) if data_has_val(trainer) else 0
    if val_n:
        quick_robustness(trainer.eval_model(), trainer.data.val, trainer.num_classes, trainer.cfg.attack, steps=2,
                         n_samples=val_n, seed=0, batch_size=b)
        out["validation"] = probe.take() | {"val_samples_per_epoch": trainer.cfg.train.val_samples,
                                            "val_attack_steps": trainer.cfg.train.val_attack_steps}
    xt, yt = _test_batch(trainer.data, 0, min(b, 64), device)
    run_attack(parse_attack("pgd2"), trainer.eval_model(), xt, yt)
    out["final_eval"] = probe.take()
    probe.close()

    if device.type == "cuda":
        out["cuda_syncs"] = {
            "train_attack": _cuda_syncs(lambda: method.train_attack(model, x, y)),
            "loader_next_batch": _cuda_syncs(lambda: next(iter(loader))),
            "train_epoch_1_step": _cuda_syncs(lambda: _one_step(trainer, 1)),
            "train_epoch_3_steps": _cuda_syncs(lambda: _one_step(trainer, 3)),
        }
        c = out["cuda_syncs"]
        c["per_step"] = (c["train_epoch_3_steps"]["syncs"] - c["train_epoch_1_step"]["syncs"]) / 2
        c["note"] = ("train_epoch syncs at its end (NaN check, counters) and every 25 steps by design; per_step "
                     "= (syncs of 3 steps - syncs of 1 step) / 2 counts what each further step adds (target 0).")
    else:
        out["cuda_syncs"] = "no CUDA device: host syncs checked by reading the code and by counting sync-like ops"
    if args.profile:
        out["profile_train_attack"] = _profile(lambda: method.train_attack(model, x, y), device)
        out["profile_train_step"] = _profile(lambda: _one_step(trainer), device)
    return out


def data_has_val(trainer: Any) -> bool:
    return trainer.data.val is not None and len(trainer.data.val) > 0


def _one_step(trainer: Any, steps: int = 1) -> None:
    cfg = trainer.cfg
    trainer.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps_per_epoch=steps))
    try:
        trainer.train_epoch(99)
    finally:
        trainer.cfg = cfg


# =========================================================================================== main
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
    p.add_argument("--batches", type=int, default=2, help="timed training batches per round (0: one full epoch)")
    p.add_argument("--rounds", type=int, default=-1,
                   help="alternating ltrobust / reference rounds; median reported (-1: 3 on CPU, 1 on CUDA)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches before each measurement")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="ltrobust's train.precision")
    p.add_argument("--compile", action="store_true", help="ltrobust's train.compile=true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--methods", default="natural,pgd_at,trades,at_bsl",
                   help="comma-separated METHODS names, or 'all'")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loop")
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
    p.add_argument("--flops-batch", type=int, default=16, help="batch for FlopCounterMode (FLOPs scale with it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--under-load", action="store_true", help="mark the results as measured on a shared machine")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/speed-<device>-<date>.json)")
    return p.parse_args(argv)


def fmt(v: Any, d: int = 1) -> str:
    return f"{v:.{d}f}" if isinstance(v, (int, float)) else "-"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ltrobust.training.trainer import resolve_amp, resolve_device
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
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name] + [os.path.relpath(__file__, Path.cwd())] + sys.argv[1:]),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": str(device),
        "device_name": device_name(device), "versions": versions(), "under_load": args.under_load,
        "settings": {k: v for k, v in vars(args).items()}, "ltrobust_amp_dtype": str(amp),
        "reference": {"precision": "fp32", "memory_format": "NCHW", "loader": "DataLoader, 2 workers, PIL "
                      "RandomCrop(padding=4)+RandomHorizontalFlip+ToTensor", "pin_memory": device.type == "cuda"},
    }
    if device.type == "cpu":
        try:
            load = os.getloadavg()
            result["load_average"] = load
            if load[0] > 0.75 * (os.cpu_count() or 1):
                print(f"NOTE: load average {load[0]:.1f} on {os.cpu_count()} CPUs: figures are measured under load.")
                result["under_load"] = True
        except OSError:
            pass

    print(f"device: {result['device_name']} | torch {torch.__version__} | ltrobust autocast {amp}")
    data, data_info = load_data(args, device)
    result["data"] = data_info
    if data_info["source"] == "synthetic":
        print(f"DATA: SYNTHETIC uint8 images with the shapes and class counts of {args.dataset} IR "
              f"{args.imbalance:g} ({data_info['why']})")
    else:
        print(f"DATA: {args.dataset} IR {args.imbalance:g} from {data_info['data_dir']} "
              f"({data_info['train_images']} training images)")

    peaks = measure_peaks(device)
    result["peak_flops"] = peaks
    print("measured matmul peak: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in peaks.items() if k != "matmul_n")
          + f" (n={peaks['matmul_n']})")
    # fp32 convolutions on CUDA run as TF32 unless cudnn.allow_tf32 is off: compare them with the TF32 peak
    fp32_peak = peaks["tf32"] if "tf32" in peaks and torch.backends.cudnn.allow_tf32 else peaks["fp32"]
    peak_ltr = peaks["bf16"] if amp == torch.bfloat16 else fp32_peak
    peak_ref = fp32_peak
    result["peak_used"] = {"ltrobust": peak_ltr, "reference": peak_ref,
                           "note": "CUDA fp32 convolutions use TF32 (cudnn.allow_tf32) unless disabled"}

    out = Path(args.out) if args.out else HERE / "results" / (
        f"speed-{device.type}-{_dt.date.today().isoformat()}.json")

    def save() -> None:  # after every measurement, so that an interrupted run keeps what it measured
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    tmp = Path(tempfile.mkdtemp(prefix="ltrobust-speed-"))
    result["train"] = {}
    fb = min(args.flops_batch, args.batch_size)
    first_trainer = check_trainer = None
    if not args.skip_train:
        for method in methods:
            if method not in METHODS:
                print(f"skip {method}: not in METHODS ({', '.join(METHODS.names())})")
                continue
            row: dict[str, Any] = {}
            try:
                trainer = build_trainer(args, method, data, device, tmp)
            except Exception as exc:  # a method that cannot be built here is reported, not fatal
                row["error"] = f"{type(exc).__name__}: {exc}"
                result["train"][method] = row
                print(f"{method}: cannot build ({row['error']})")
                continue
            xf, yf = next(iter(trainer.loader))
            xf, yf = xf[:fb], yf[:fb]
            if trainer.cfg.train.channels_last:
                xf = xf.contiguous(memory_format=torch.channels_last)
            if first_trainer is None:
                first_trainer = trainer
                result["model_flops_per_image"] = model_flops(trainer.model, xf.contiguous(), yf) \
                    if not args.no_flops else None
                result["parameters"] = sum(p.numel() for p in trainer.model.parameters())
            if not args.no_flops:
                row["flops_per_image"] = ltrobust_step_flops(trainer, xf, yf)
                mf = result["model_flops_per_image"]
                row["flops_rough_formula"] = (args.steps + 1 if trainer.method.adversarial else 1) * mf["forward_backward"]
            runners: dict[str, Callable[[int], dict[str, Any]]] = {"ltrobust": LtrobustTrainRunner(trainer).run}
            loader = None
            if method in ref.REFERENCE_METHODS and not args.no_reference:
                torch.manual_seed(args.seed)
                ref_model = build_reference_model(trainer, data, device)
                if not args.no_flops:
                    row["reference_flops_per_image"] = reference_step_flops(method, ref_model, xf.contiguous(), yf,
                                                                            args, data.class_counts)
                loader = ref.make_loader(data.train.images, data.train.labels, args.batch_size, device, train=True,
                                         padding=data.crop_padding, flip=data.flip, seed=args.seed)
                ref_runner = ref.ReferenceTrainer(method, ref_model, loader, data.class_counts, steps=args.steps,
                                                  recompute_clean=args.trades_recompute_clean)
                # a full epoch: ltrobust's train_epoch(max_steps=0) against len(loader) reference batches
                runners["reference"] = (lambda n, r=ref_runner, k=len(loader): r.run(n or k))
            rounds = 1 if args.batches == 0 else args.rounds
            print(f"[{method}] {' and '.join(runners)}: warm-up {args.warmup} batches, then {rounds} alternating "
                  f"round(s) of {args.batches or 'one epoch of'} batches ...", flush=True)
            timed = interleave(runners, args.warmup, args.batches, rounds)
            row.update(timed)
            row["ltrobust"] |= {"amp_dtype": str(trainer.amp_dtype), "channels_last": trainer.cfg.train.channels_last,
                                "compile": trainer.cfg.train.compile}
            for side, fl, peak in (("ltrobust", row.get("flops_per_image"), peak_ltr),
                                   ("reference", row.get("reference_flops_per_image"), peak_ref)):
                if side in row and fl:
                    row[side]["achieved_flops"] = fl * row[side]["images_per_s"]
                    row[side]["share_of_peak"] = row[side]["achieved_flops"] / peak
            if "reference" in row:
                row["speedup"] = row["ltrobust"]["images_per_s"] / row["reference"]["images_per_s"]
                row["speedup_best"] = row["ltrobust"]["best_images_per_s"] / row["reference"]["best_images_per_s"]
            del loader
            result["train"][method] = row
            save()
            _print_train_row(method, row)
            if check_trainer is None and trainer.method.adversarial:
                check_trainer = trainer
        if not args.no_checks:
            if check_trainer is None:  # the checks need a training-time attack
                check_trainer = build_trainer(args, "pgd_at", data, device, tmp)
            print(f"fast-path checks on {check_trainer.method.name} ...", flush=True)
            result["fast_path"] = fast_path_checks(check_trainer, args, device)
            save()

    if not args.skip_eval:
        result["eval"] = {}
        run_eval(args, data, device, result["eval"], save)

    print_summary(result, args)
    save()
    print(f"wrote {out}")
    return result


def build_reference_model(trainer: Any, data: Any, device: torch.device) -> nn.Module:
    """The same architecture with the same initial weights as the ltrobust run, fp32, NCHW."""
    from ltrobust.models import build_model

    cfg = trainer.cfg
    torch.manual_seed(cfg.train.seed)
    head = getattr(trainer.method, "required_head", None) or cfg.model.head
    return build_model(dataclasses.replace(cfg.model, head=head), num_classes=data.num_classes,
                       in_channels=data.channels, mean=data.mean, std=data.std,
                       image_size=data.image_size).to(device)


def run_eval(args: argparse.Namespace, data: Any, device: torch.device, out: dict[str, Any],
             save: Callable[[], None]) -> None:
    model, info = eval_model(args, data, device)
    out["model"] = info
    ltr_model = model.to(memory_format=torch.channels_last) if not args.no_channels_last else model
    ref_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    # the test split is stored class by class: both sides read it in one seeded random order
    perm = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(args.seed))
    images = data.test.images[perm.to(data.test.images.device)]
    labels = data.test.labels[perm.to(data.test.labels.device)]
    ltr = LtrobustPGDEval(ltr_model, images, labels, data.num_classes, args.eval_steps, args.eval_batch_size, device)
    runners: dict[str, Any] = {"ltrobust": ltr}
    if not args.no_reference:
        loader = ref.make_loader(images, labels, args.eval_batch_size, device, train=False)
        runners["reference"] = ref.ReferencePGDEval(ref_model, loader, steps=args.eval_steps)
    print(f"[eval] PGD-{args.eval_steps} fp32 ({' and '.join(runners)}): warm-up {args.warmup}, then {args.rounds} "
          f"alternating round(s) of {args.eval_batches} batches of {args.eval_batch_size} ...", flush=True)
    timed = interleave({k: r.run for k, r in runners.items()}, args.warmup, args.eval_batches, args.rounds)
    out["pgd"] = {"steps": args.eval_steps}
    for k, r in runners.items():
        out["pgd"][k] = timed[k] | r.accuracy()
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
        out["aa"] = {"n": n, "batch_size": bs, "ltrobust": time_ltrobust_aa(ltr_model, x, y, bs)}
        out["aa"]["projected_seconds_10000"] = 10000 / out["aa"]["ltrobust"]["images_per_s"]
        save()
        if not args.no_reference:
            out["aa"]["reference"] = ref.time_autoattack(ref_model, x, y, batch_size=bs)
            out["aa"]["speedup"] = out["aa"]["ltrobust"]["images_per_s"] / out["aa"]["reference"]["images_per_s"]
        out["aa"]["note"] = "AutoAttack runs each attack on the points still robust: its time depends on the weights. " + (
            "Untrained weights are nearly constant, a few points never break and FAB-T and Square (5000 queries) "
            "run on them: pass --checkpoint for a trained model." if not args.checkpoint else
            "The projection to 10,000 images assumes the same robust fraction.")
        save()


def _print_train_row(method: str, row: dict[str, Any]) -> None:
    l, r = row["ltrobust"], row.get("reference")
    rounds = lambda d: ", ".join(f"{v:.1f}" for v in d["rounds_images_per_s"])  # noqa: E731
    msg = f"[{method}] ltrobust {l['images_per_s']:.1f} img/s (rounds {rounds(l)})"
    if r:
        msg += f" | reference {r['images_per_s']:.1f} img/s (rounds {rounds(r)}) | speedup x{row['speedup']:.2f}"
    print(msg, flush=True)


def print_summary(result: dict[str, Any], args: argparse.Namespace) -> None:
    load = " (MEASURED UNDER LOAD: noisy)" if result.get("under_load") else ""
    src = "SYNTHETIC data" if result["data"]["source"] == "synthetic" else f"{args.dataset} IR {args.imbalance:g}"
    print()
    print(f"== {result['device_name']}: {args.model} width {args.width}, batch {args.batch_size}, "
          f"PGD-{args.steps} training, {src}{load}")
    mf = result.get("model_flops_per_image")
    if mf:
        print(f"FLOPs/image: forward {mf['forward'] / 1e6:.1f} M, forward+backward {mf['forward_backward'] / 1e6:.1f} M, "
              f"attack step (input grad only) {mf['attack_step'] / 1e6:.1f} M "
              f"(its backward = {mf['attack_backward_over_forward']:.2f} x forward; a full backward = "
              f"{mf['train_backward_over_forward']:.2f} x)")
    if result.get("train"):
        n_train = result["data"]["train_images"]
        print(f"images/s: median of {args.rounds if args.batches else 1} alternating round(s); 'best' = fastest "
              f"round of each side; s/epoch = {n_train} training images / median images/s")
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


if __name__ == "__main__":
    main()
