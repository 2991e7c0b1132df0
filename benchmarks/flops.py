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


def subnormal_penalty(reps: int = 15, size: int = 32) -> dict[str, float]:
    """What flushing subnormal floats buys on this CPU: time on subnormal operands unflushed / flushed.

    A 3x3 convolution (16 -> 16 channels, batch 16) and an element-wise multiply-add run on inputs that are
    all subnormal fp32 (below 1.2e-38), alternately with ``torch.set_flush_denormal`` off and on (the same
    tensors and kernels; flushed, the operands read as zero); each ratio is the median time unflushed over
    the median time flushed. Near 1: this CPU handles subnormals at full speed and the flush changes no
    speed here. Several times 1: the CPU takes a slow assist per subnormal operand, the slow-down issue 19
    measured (89 -> 49 images/s over three epochs). The caller's flush setting is restored.
    """
    import statistics

    gen = torch.Generator().manual_seed(0)
    xs = 1e-39 * torch.randn(16, 16, size, size, generator=gen)   # every entry subnormal
    w = 0.1 * torch.randn(16, 16, 3, 3, generator=gen)
    g = torch.randn(16, 16, size, size, generator=gen)
    cases = {"conv": lambda: F.conv2d(xs, w, padding=1), "elementwise": lambda: torch.addcmul(xs, xs, g)}
    was = bool(torch.tensor([1e-39]).mul(1.0).item() == 0.0)  # torch has no getter: flushed, a subnormal reads 0
    times: dict[str, list[list[float]]] = {k: [[], []] for k in cases}
    try:
        for _ in range(reps):
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                for name, fn in cases.items():
                    fn()
                    t = time.perf_counter()
                    fn()
                    times[name][int(flush)].append(time.perf_counter() - t)
    finally:
        torch.set_flush_denormal(was)
    return {f"{name}_unflushed_over_flushed": statistics.median(t[0]) / statistics.median(t[1])
            for name, t in times.items()}


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

