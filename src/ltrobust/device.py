"""Devices, precision and module wrappers: where a model runs and in which dtype.

Shared by training, evaluation and the analyses, so it sits below all of them (it imports only torch and
``ltrobust.errors``).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu.")
    return device


def flush_denormals(device: torch.device) -> None:
    """On CPU, flush subnormal floats to zero (FTZ / DAZ) in the calling thread.

    Adversarial training drives some weights, gradients and momentum entries into the subnormal range
    within a few dozen steps, and x86 CPUs take a slow microcode assist on every subnormal operand:
    fp32 PGD-10 AT on CIFAR-10-LT loses about half its speed within three short epochs without this
    (docs/speed.md, "Subnormal floats"). Values below 1.2e-38 (fp32) become zero, far below any
    rounding error that matters to training or evaluation.
    Training (each epoch), evaluation and ``run_attack`` call it; it is a process setting of the calling
    thread that is not restored afterwards (``torch.set_flush_denormal(False)`` undoes it). No-op on CUDA
    (GPU kernels flush on their own) and on CPUs without SSE3, where torch refuses it.
    """
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def widen(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or unchanged when it is float64: losses and attack objectives compute in float32 at
    least (bf16 / fp16 logits under autocast are upcast) without rounding a float64 model's logits to float32.

    Example::

        F.cross_entropy(widen(logits), y)   # float32 for bf16 / fp32 logits, float64 for float64 ones
    """
    return t if t.dtype == torch.float64 else t.float()


def world_size() -> int:
    """Processes of the running torch.distributed group (1 outside torchrun / DDP): methods that keep state
    of their own (MMA's margins, LAS-AT's strategy network, GAIRAT's weight sum) combine it over them."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 autocast is fast."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch
        return False


def resolve_amp(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for the training-time attack and step where it is native; None (fp32) otherwise."""
    if precision == "fp32":
        return None
    native = device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_has_native_bf16()
    if precision == "bf16" or native:
        return torch.bfloat16
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (attacks run on it)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
