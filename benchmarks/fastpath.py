"""The fast-path checks of ``speed.py`` (issue 9): where the data lives, what precision, memory format and
mode every forward of the training-time attack, the step, validation and the final evaluation runs in,
whether the attack touches parameter gradients, static shapes, host synchronisations (CUDA) and, with
``--profile``, torch.profiler tables of one attack and one training step."""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from harness import sync

def _test_batch(data: Any, start: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(start, min(start + size, len(data.test)))
    x = data.test.images[idx.to(data.test.images.device)].to(device).float() / 255.0
    return x, data.test.labels[idx.to(data.test.labels.device)].to(device)



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


