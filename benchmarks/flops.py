"""FLOPs and peaks for ``speed.py``: the measured matmul peak of the device per precision, and FLOPs per
image counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls and their
backward; BatchNorm and element-wise work are not counted) for the model and for one real training step
of each side."""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import reference_loop as ref
from harness import sync

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


def measure_peaks(device: torch.device, n: int = 0) -> dict[str, float]:
    n, reps = (n or 8192, 20) if device.type == "cuda" else (n or 2048, 5)
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

