"""Subnormal floats are flushed to zero on CPU by every entry point that computes: training (each
epoch), evaluation, validation and ``run_attack`` (docs/speed.md, "Subnormal floats": without it fp32
adversarial training on x86 loses about half its speed within a few dozen steps)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltrobust.attacks import parse_attack, run_attack
from ltrobust.config import resolve_config
from ltrobust.data.splits import ArraySplit
from ltrobust.evaluation.evaluator import Evaluation, quick_robustness
from ltrobust.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SUBNORMAL = 1e-40  # below float32's smallest normal number, 1.18e-38


def flushing() -> bool:
    """True when the calling thread flushes subnormals (an arithmetic result that is subnormal becomes 0)."""
    x = torch.tensor([1e-30], dtype=torch.float32)
    return bool((x * 1e-10 == 0).all())


@pytest.fixture
def denormals_kept():
    """Starts with flushing off (PyTorch's default) and leaves it off, so no test depends on another."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals (no SSE3)")
    torch.set_flush_denormal(False)
    assert not flushing() and torch.tensor([SUBNORMAL]).item() != 0
    yield
    torch.set_flush_denormal(False)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()


def _split(n: int = 12) -> ArraySplit:
    g = torch.Generator().manual_seed(0)
    return ArraySplit(torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8),
                      torch.arange(n, dtype=torch.int64) % 3)


def test_training_epoch_flushes_subnormals(denormals_kept, tmp_path):
    cfg = resolve_config(["dataset=digits-lt", "model=smallcnn", "model.width=4", "train.batch_size=32",
                          "train.progress=false", "train.val_every=0", "attack.steps=1", "method=pgd_at",
                          "train.max_steps_per_epoch=1", "train.precision=fp32", "train.device=cpu", f"out={tmp_path}"])
    tr = Trainer(cfg, run_dir=tmp_path / "run", resume=False)
    tr.build()
    assert not flushing()  # building alone computes nothing
    tr.train_epoch(0)
    assert flushing()
    torch.set_flush_denormal(False)  # switched off between epochs: the next epoch switches it on again
    tr.train_epoch(1)
    assert flushing()


def test_run_attack_flushes_subnormals(denormals_kept):
    x = torch.rand(4, 3, 4, 4)
    run_attack(parse_attack("clean"), _model(), x, torch.zeros(4, dtype=torch.long))
    assert not flushing()  # nothing computed, nothing changed
    run_attack(parse_attack("pgd1"), _model(), x, torch.zeros(4, dtype=torch.long))
    assert flushing()


def test_evaluation_run_flushes_subnormals(denormals_kept, tmp_path):
    Evaluation(_model(), _split(), [4, 4, 4], ["clean"], tmp_path, progress=False).run()
    assert flushing()


def test_validation_flushes_subnormals(denormals_kept):
    cfg = resolve_config(["attack.steps=1"])
    quick_robustness(_model(), _split(), 3, cfg.attack, steps=1, n_samples=6)
    assert flushing()


@pytest.mark.parametrize("flush_before", [False, True])
def test_speed_benchmark_subnormal_probe_restores_the_flush_setting(denormals_kept, monkeypatch, flush_before):
    """benchmarks/flops.py ``subnormal_penalty`` (printed and stored by speed.py on CPU) times subnormal
    operands unflushed against flushed and leaves the caller's setting as it found it, either way."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import flops
    from report import describe_subnormal_penalty

    torch.set_flush_denormal(flush_before)
    penalty = flops.subnormal_penalty(reps=2, size=8)
    assert flushing() is flush_before
    assert set(penalty) == {"conv_unflushed_over_flushed", "elementwise_unflushed_over_flushed"}
    assert all(0 < v < float("inf") for v in penalty.values())
    assert "full speed" in describe_subnormal_penalty({k: 1.0 for k in penalty})
    assert "slows down" in describe_subnormal_penalty({k: 3.0 for k in penalty})
