"""CUDA correctness (issue 19): run on a GPU machine with ``pytest -m cuda`` (``benchmarks/device_check.py``
runs them first); every test skips, saying why, where no CUDA GPU is visible.

- a bf16 autocast training step is finite and close to the fp32 step;
- the ``train.compile`` path trains;
- the device loader and the training-time attack make no host synchronisation;
- the final evaluation runs in true fp32 (TF32 off for convolutions and matmuls);
- a 1-process nccl process group trains;
- PGD-20 and AutoAttack on CUDA agree with CPU, and with the exact answer, on a linear model.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust.attacks import parse_attack, run_attack
from ltrobust.config import resolve_config
from ltrobust.data.splits import ArraySplit
from ltrobust.evaluation.evaluator import Evaluation
from ltrobust.training.trainer import Trainer, unwrap

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible (CUDA-only check)")]

TINY = ["dataset=cifar10-lt", "imbalance=50", "model=resnet18", "model.width=8", "train.batch_size=64",
        "train.progress=false", "train.val_every=0", "attack.steps=3", "method=pgd_at", "train.device=cuda",
        "train.seed=0"]
_DATA = {}


def _data():
    """Random uint8 images with CIFAR-10-LT IR 50's shapes and class counts, on the GPU (no download, no
    scikit-learn: the GPU machine has a stock PyTorch image)."""
    if not _DATA:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
        try:
            from harness import synthetic_data
        finally:
            sys.path.pop(0)
        _DATA["d"] = synthetic_data("cifar10-lt", 50.0, torch.device("cuda"))
    return _DATA["d"]


def _trainer(tmp_path, name, over=()):
    tr = Trainer(resolve_config(TINY + [f"out={tmp_path}", f"name={name}"] + list(over)), data=_data(), resume=False)
    tr.build()
    tr.method.setup(tr)
    return tr


def _params(tr):
    return torch.cat([p.detach().float().flatten() for p in unwrap(tr.model).parameters()])


def test_bf16_autocast_step_is_finite_and_close_to_fp32(tmp_path):
    steps = {}
    for precision in ("bf16", "fp32"):
        tr = _trainer(tmp_path, precision, ["train.precision=" + precision, "train.max_steps_per_epoch=1",
                                            "train.lr=0.01"])
        before = _params(tr)
        rec = tr.train_epoch(0)
        assert torch.isfinite(torch.tensor(rec["loss"])), rec
        steps[precision] = (rec["loss"], _params(tr) - before)
    (loss_b, upd_b), (loss_f, upd_f) = steps["bf16"], steps["fp32"]
    assert abs(loss_b - loss_f) <= 0.05 * abs(loss_f) + 0.02, (loss_b, loss_f)
    # same initial weights, batch and random start: the two updates point the same way
    assert F.cosine_similarity(upd_b, upd_f, dim=0) > 0.9


def test_compiled_training_trains(tmp_path):
    tr = _trainer(tmp_path, "compiled", ["train.compile=true", "train.max_steps_per_epoch=3"])
    before = _params(tr)
    losses = [tr.train_epoch(e)["loss"] for e in range(2)]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert not torch.equal(before, _params(tr))
    assert tr.loader.drop_last  # static shapes for the compiled graphs


def test_loader_and_attack_make_no_host_sync(tmp_path):
    tr = _trainer(tmp_path, "sync", ["train.max_steps_per_epoch=2"])
    tr.train_epoch(0)  # warm-up: cudnn autotuning and first allocations
    it = iter(tr.loader)
    x, y = next(it)
    model = unwrap(tr.model)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        x, y = next(it)
        x = x.contiguous(memory_format=torch.channels_last)
        x_adv = tr.method.train_attack(model, x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x_adv.shape == x.shape and bool(torch.isfinite(x_adv).all())


class _TF32Probe(nn.Module):
    """A tiny conv net that records the TF32 switches at every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.seen = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3), []

    def forward(self, x):
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return self.fc(F.relu(self.conv(x)).flatten(1))


def test_final_evaluation_is_true_fp32(tmp_path):
    torch.manual_seed(0)
    model = _TF32Probe().cuda().eval()
    split = ArraySplit(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8),
                       torch.arange(12, dtype=torch.int64) % 3)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    Evaluation(model, split, [4, 4, 4], ["pgd2"], tmp_path, progress=False).run()
    assert model.seen and set(model.seen) == {(False, False)}
    assert torch.backends.cudnn.allow_tf32  # restored after the evaluation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_nccl_group_trains(tmp_path, monkeypatch):
    """The DistributedDataParallel step over an nccl group (the path torchrun takes), with one process."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        tr = _trainer(tmp_path, "nccl", ["train.max_steps_per_epoch=2"])
        tr.train_model = nn.parallel.DistributedDataParallel(tr.model, device_ids=[0])
        before = _params(tr)
        rec = tr.train_epoch(0)
        assert dist.get_backend() == "nccl"
        assert torch.isfinite(torch.tensor(rec["loss"])) and not torch.equal(before, _params(tr))
    finally:
        dist.destroy_process_group()


def _linear_case(n: int = 48):
    """A 10-class linear model on 3x4x4 inputs and images whose margins straddle the eps-ball: the exact L-inf
    worst case of a linear model is known in closed form (margin - eps * ||w_y - w_j||_1 over j)."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 48, generator=g))
        model[1].bias.zero_()
    x = 0.1 + 0.8 * torch.rand(n, 3, 4, 4, generator=g)  # inside [0, 1] by more than eps: no clipping
    logits = model(x)
    y = logits.argmax(1)  # every image clean-correct
    eps = 8 / 255
    w = model[1].weight
    worst = torch.stack([logits[i, y[i]] - logits[i] - eps * (w[y[i]] - w).abs().sum(1) for i in range(n)])
    worst[torch.arange(n), y] = float("inf")
    robust = worst.min(1).values > 0
    return model.eval(), x, y, robust


@pytest.mark.parametrize("attack", ["pgd20", "aa"])
def test_attacks_on_cuda_agree_with_cpu(attack):
    model, x, y, exact = _linear_case()
    assert 0 < int(exact.sum()) < len(y)  # the case has both robust and breakable images
    spec = parse_attack(attack)
    flags = {}
    for dev in ("cpu", "cuda"):
        m = model.to(dev)
        x_adv = run_attack(spec, m, x.to(dev), y.to(dev), seed=0, num_classes=10)
        assert float((x_adv - x.to(dev)).abs().max()) <= spec.eps + 1e-6
        flags[dev] = (m(x_adv).argmax(1) == y.to(dev)).cpu()
    if attack == "aa":  # AutoAttack finds every breakable image, on either device
        assert torch.equal(flags["cpu"], exact) and torch.equal(flags["cuda"], exact)
    else:  # untargeted CE PGD may miss the worst class of an image near the boundary (2 of 48 here, on CPU)
        for dev in ("cpu", "cuda"):
            assert not (exact & ~flags[dev]).any()  # never "breaks" an image that cannot be broken
        assert (flags["cpu"] ^ flags["cuda"]).sum() <= 2, (flags["cpu"] ^ flags["cuda"]).nonzero().flatten()
