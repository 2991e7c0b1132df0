"""The plain adversarial-training loop as the papers' public code writes it: the baseline of speed.py.

What users run today when they clone AT-BSL (github.com/NISPLab/AT-BSL, ``at_bsl_loss.py``,
``train_at_bsl_cifar10.py``) or TRADES (github.com/yaodongyu/TRADES, ``trades.py``):

- float32 throughout, the model in its default (NCHW) memory format, no autocast, no compile;
- a ``torch.utils.data.DataLoader`` with 2 worker processes that turn each uint8 image into a PIL image
  and apply ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()`` and ``ToTensor()`` per image;
  ``shuffle=True``, ``drop_last=True`` (AT-BSL's ``build_dataloader``);
- the inner maximisation with the model in eval mode and ``torch.autograd.grad`` on the input (no
  parameter gradients), sign step, projection with ``min`` / ``max`` / ``clamp``;
- ``model.train()``, one SGD step on the adversarial batch.

It is kept honest, not a straw man: ``pin_memory`` and ``non_blocking`` copies on CUDA, no ``loss.item()``
per step (the papers' code syncs for its progress print), the TRADES clean target computed once per batch
(TRADES' public code recomputes ``model(x_natural)`` inside every attack step; ``recompute_clean=True``
reproduces that), and PGD evaluation with ``torch.autograd.grad`` (AT-BSL's ``pgd_attack.py`` calls
``loss.backward()``, which also computes every parameter gradient).

Only the methods whose public code is this loop have a reference: ``natural``, ``pgd_at``, ``trades``,
``at_bsl`` (:data:`REFERENCE_METHODS`). The model is any ``nn.Module`` mapping images in [0, 1] to logits
(speed.py passes an ltrobust model with the same initial weights as the ltrobust run).

Example::

    loader = make_loader(images_uint8_nchw, labels, 128, torch.device("cpu"), train=True)
    stats = time_training("pgd_at", model, loader, class_counts, steps=10, warmup=1, batches=3)
    stats["images_per_s"]

    runner = ReferenceTrainer("pgd_at", model, loader, class_counts)   # or a few batches at a time
    runner.run(2)["seconds"]
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

#: ltrobust method name -> the reference training step below.
REFERENCE_METHODS = ("natural", "pgd_at", "trades", "at_bsl")


# ------------------------------------------------------------------------------------------ data
class UInt8ImageDataset(Dataset):
    """uint8 images (N, H, W, C) as torchvision's CIFAR10 holds them; PIL conversion per item."""

    def __init__(self, images_hwc: np.ndarray, labels: Sequence[int], transform: Any) -> None:
        self.images = images_hwc
        self.labels = [int(v) for v in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = self.images[i]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(img), self.labels[i]


def make_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device,
                train: bool = True, num_workers: int = 2, padding: int = 4, flip: bool = True,
                seed: int = 0) -> DataLoader:
    """The papers' DataLoader over uint8 images (N, C, H, W): per-image PIL crop / flip / ToTensor."""
    from torchvision import transforms

    size = int(images.shape[-1])
    ops: list[Any] = []
    if train:
        ops.append(transforms.RandomCrop(size, padding=padding))
        if flip:
            ops.append(transforms.RandomHorizontalFlip())
    ops.append(transforms.ToTensor())
    ds = UInt8ImageDataset(images.cpu().permute(0, 2, 3, 1).contiguous().numpy(), labels.cpu().tolist(),
                           transforms.Compose(ops))
    return DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=num_workers,
                      pin_memory=device.type == "cuda", drop_last=train,
                      generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------- attacks
def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
               steps: int) -> torch.Tensor:
    """AT-BSL's ``pgd_loss`` inner loop (TRADES' start ``x + 0.001 * N(0, 1)``), model in eval mode."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return x_adv.detach()


def trades_attack(model: nn.Module, x: torch.Tensor, eps: float, step_size: float, steps: int,
                  recompute_clean: bool = False) -> torch.Tensor:
    """TRADES' inner loop: maximise KL(p(x) || p(x')) (``reduction="sum"``), model in eval mode."""
    model.eval()
    kl = nn.KLDivLoss(reduction="sum")
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            target = F.softmax(model(x), dim=1) if recompute_clean else p_nat
            loss = kl(F.log_softmax(model(x_adv), dim=1), target)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return x_adv.detach()


def pgd_whitebox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255,
                 step_size: float = 2 / 255, steps: int = 20) -> torch.Tensor:
    """PGD-k evaluation (AT-BSL's ``_pgd_whitebox``: uniform start), input gradients only."""
    x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0.0, 1.0)
    return x_adv.detach()


# ------------------------------------------------------------------------------------ train step
def train_step(method: str, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, log_prior: torch.Tensor, eps: float = 8 / 255, step_size: float = 2 / 255,
               steps: int = 10, beta: float = 6.0, recompute_clean: bool = False) -> torch.Tensor:
    """One step of ``method`` as the public code writes it; returns the detached loss (no sync)."""
    if method == "natural":
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
    elif method in ("pgd_at", "at_bsl"):
        x_adv = pgd_attack(model, x, y, eps, step_size, steps)  # leaves the model in train mode
        optimizer.zero_grad()
        logits = model(x_adv)
        loss = F.cross_entropy(logits + log_prior if method == "at_bsl" else logits, y)
    elif method == "trades":
        x_adv = trades_attack(model, x, eps, step_size, steps, recompute_clean)
        optimizer.zero_grad()
        logits_nat = model(x)
        logits_adv = model(x_adv)
        kl = nn.KLDivLoss(reduction="sum")(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1))
        loss = F.cross_entropy(logits_nat, y) + beta * kl / x.shape[0]
    else:
        raise ValueError(f"no reference loop for method {method!r}; reference methods: {REFERENCE_METHODS}")
    loss.backward()
    optimizer.step()
    return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Batches:
    """An endless stream of a DataLoader's batches (a new epoch, with its new workers, when one ends)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.it = loader, iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


class ReferenceTrainer:
    """The papers' training loop, runnable a few batches at a time (speed.py interleaves it with ltrobust)."""

    def __init__(self, method: str, model: nn.Module, loader: DataLoader, class_counts: Sequence[int],
                 steps: int = 10, lr: float = 0.1, eps: float = 8 / 255, step_size: float = 2 / 255,
                 recompute_clean: bool = False) -> None:
        if method not in REFERENCE_METHODS:
            raise ValueError(f"no reference loop for method {method!r}; reference methods: {REFERENCE_METHODS}")
        self.method, self.model, self.batches = method, model, _Batches(loader)
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        counts = torch.as_tensor(list(class_counts), dtype=torch.float32, device=self.device)
        self.log_prior = (counts / counts.sum()).log()
        self.kw = {"eps": eps, "step_size": step_size, "steps": steps, "recompute_clean": recompute_clean}
        self.losses: list[torch.Tensor] = []

    def run(self, n: int) -> dict[str, Any]:
        """Train on the next ``n`` batches; seconds (data waits included) and images."""
        self.model.train()
        _sync(self.device)
        t0 = time.perf_counter()
        images = 0
        for _ in range(n):
            x, y = self.batches.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.losses.append(train_step(self.method, self.model, self.optimizer, x, y, self.log_prior, **self.kw))
            images += y.shape[0]
        _sync(self.device)
        return {"seconds": time.perf_counter() - t0, "images": images}


class ReferencePGDEval:
    """The papers' PGD evaluation loop (fp32, eval mode, every image attacked), a few batches at a time."""

    def __init__(self, model: nn.Module, loader: DataLoader, steps: int = 20, eps: float = 8 / 255,
                 step_size: float = 2 / 255) -> None:
        self.model, self.batches = model, _Batches(loader)
        self.device = next(model.parameters()).device
        self.kw = {"eps": eps, "step_size": step_size, "steps": steps}
        self.clean_ok = torch.zeros((), device=self.device)
        self.rob_ok = torch.zeros((), device=self.device)
        self.seen = 0

    def run(self, n: int) -> dict[str, Any]:
        self.model.eval()
        _sync(self.device)
        t0 = time.perf_counter()
        images = 0
        for _ in range(n):
            x, y = self.batches.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            x_adv = pgd_whitebox(self.model, x, y, **self.kw)
            with torch.no_grad():
                self.clean_ok += (self.model(x).argmax(1) == y).sum()
                self.rob_ok += (self.model(x_adv).argmax(1) == y).sum()
            images += y.shape[0]
        _sync(self.device)
        self.seen += images
        return {"seconds": time.perf_counter() - t0, "images": images}

    def accuracy(self) -> dict[str, float]:
        n = max(self.seen, 1)
        return {"clean": 100.0 * float(self.clean_ok) / n, "robust": 100.0 * float(self.rob_ok) / n}


def time_training(method: str, model: nn.Module, loader: DataLoader, class_counts: Sequence[int],
                  steps: int = 10, warmup: int = 1, batches: int = 3, **kw: Any) -> dict[str, Any]:
    """``warmup`` untimed batches, then images/s over ``batches`` timed ones (standalone use)."""
    runner = ReferenceTrainer(method, model, loader, class_counts, steps=steps, **kw)
    runner.run(warmup)
    r = runner.run(batches)
    return r | {"images_per_s": r["images"] / max(r["seconds"], 1e-9)}


def time_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255,
                    batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
    """AutoAttack standard called directly, as the papers' ``eval.py`` does (fra31's interface)."""
    from pyautoattack import AutoAttack

    device = x.device
    model.eval()
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device, seed=seed)
    _sync(device)
    t0 = time.perf_counter()
    x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    _sync(device)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    clean = float((pred == y).float().mean()) * 100.0
    return {"seconds": seconds, "images": int(len(y)), "images_per_s": len(y) / max(seconds, 1e-9),
            "clean": clean, "robust": 100.0 * float((y_adv == y).float().mean())}
