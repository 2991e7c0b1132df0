"""The timing harness of ``speed.py``: the machine, the data, the two sides' runners and the alternation.

- the machine: device name, library versions, load average, whether bf16 is native on this CPU;
- the data: CIFAR-10-LT (or any registered data set) read by ltrobust's own ``build_data``, else synthetic
  uint8 images of the same shapes and class counts;
- the runners: ``LtrobustTrainRunner`` (ltrobust's real ``Trainer.train_epoch``), ``LtrobustPGDEval``
  (``run_attack`` + ``predict`` as the evaluator calls them); the reference side's runners live in
  ``reference_loop.py``;
- ``interleave``: untimed warm-up batches, then timed rounds, alternating the sides throughout, so that
  the figures are sustained throughput under the same machine load.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
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



def machine_state(device: torch.device) -> dict[str, Any]:
    """Load average (1, 5, 15 min), logical CPUs, whether bf16 is native on this CPU, and ``busy``: the
    1-minute load average above 0.75 per CPU (the figures are then noisy: other jobs share the cores)."""
    from ltrobust.device import cpu_has_native_bf16

    cpus = os.cpu_count() or 1
    try:
        load = list(os.getloadavg())
    except OSError:  # not on this platform
        load = None
    return {"load_average": load, "cpus": cpus, "busy": bool(load and load[0] > 0.75 * cpus),
            "cpu_native_bf16": cpu_has_native_bf16(), "device": str(device)}


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
    """Sustained throughput of each runner, side by side.

    The sides alternate throughout: first untimed warm-up chunks of ``batches`` batches each until every
    side has run ``warmup`` batches, then ``rounds`` timed rounds of ``batches`` batches. With the default
    ``--warmup 16 --batches 8`` the first timed round is steps 17-24 of each side: after the first steps'
    one-off costs and after the slow-down that subnormal floats cause within a few dozen steps, which
    timing the first batches never sees. images/s is the median over rounds (the best round, every
    round and the 1-minute load average after each round are kept). On CPU each round also records
    this process's CPU seconds (``time.process_time``: every thread of it, not the reference's loader
    workers, whose PIL crop / flip is under 1% of a PGD-10 step): images per CPU-second is the figure
    that other jobs on a busy machine disturb least."""
    chunk = batches or warmup
    done = 0
    while done < warmup:
        n = min(chunk, warmup - done)
        for run in runners.values():
            run(n)
        done += n
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in runners}
    loads: list[float] = []
    for i in range(rounds):
        for name, run in runners.items():
            cpu = time.process_time()
            per[name].append(run(batches))
            per[name][-1]["cpu_seconds"] = time.process_time() - cpu
        loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
        print(f"  round {i + 1}/{rounds}: " + ", ".join(
            f"{k} {v[-1]['images'] / max(v[-1]['seconds'], 1e-9):.1f} img/s "
            f"({v[-1]['images'] / max(v[-1]['cpu_seconds'], 1e-9):.1f} per CPU-s)" for k, v in per.items())
            + f" (load {loads[-1]:.1f})", flush=True)
    out = {}
    for name, rs in per.items():
        ips = sorted(r["images"] / max(r["seconds"], 1e-9) for r in rs)
        cps = sorted(r["images"] / max(r["cpu_seconds"], 1e-9) for r in rs)
        out[name] = {"images_per_s": _median(ips), "images_per_cpu_s": _median(cps),
                     "rounds_images_per_cpu_s": [r["images"] / max(r["cpu_seconds"], 1e-9) for r in rs],
                     "best_images_per_s": ips[-1], "rounds_images_per_s": [r["images"] / r["seconds"] for r in rs],
                     "seconds": sum(r["seconds"] for r in rs), "images": sum(r["images"] for r in rs),
                     "warmup_batches": warmup, "batches_per_round": batches, "rounds": rounds,
                     "load_average_after_rounds": loads}
    return out


def _median(v: list[float]) -> float:
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def build_reference_model(trainer: Any, data: Any, device: torch.device) -> nn.Module:
    """The same architecture with the same initial weights as the ltrobust run, fp32, NCHW."""
    from ltrobust.models import build_model

    cfg = trainer.cfg
    torch.manual_seed(cfg.train.seed)
    head = getattr(trainer.method, "required_head", None) or cfg.model.head
    return build_model(dataclasses.replace(cfg.model, head=head), num_classes=data.num_classes,
                       in_channels=data.channels, mean=data.mean, std=data.std,
                       image_size=data.image_size).to(device)



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


def time_ltrobust_aa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int,
                     square_queries: int | None = None, n_target_classes: int | None = None) -> dict[str, Any]:
    """AutoAttack standard through ltrobust's adapter (``square_queries`` / ``n_target_classes``: a smaller
    attack, for dry runs only)."""
    from ltrobust.attacks.autoattack import run_autoattack

    device = x.device
    sync(device)
    t0 = time.perf_counter()
    _, robust = run_autoattack(model, x, y, eps=8 / 255, version="standard", batch_size=bs, seed=0,
                                 square_queries=square_queries, n_target_classes=n_target_classes)
    sync(device)
    seconds = time.perf_counter() - t0
    from ltrobust.evaluation.evaluator import predict

    clean = float((predict(model, x, bs) == y).float().mean()) * 100
    return {"seconds": seconds, "images": int(len(y)), "images_per_s": len(y) / seconds, "clean": clean,
            "robust": 100.0 * float(robust.float().mean())}

