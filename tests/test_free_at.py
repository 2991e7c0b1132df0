"""Free-AT (Shafahi et al., NeurIPS 2019): the carried perturbation, the replay count, one step by hand, a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust import io
from ltrobust.cli import main
from ltrobust.config import AttackConfig, resolve_config
from ltrobust.errors import ConfigError
from ltrobust.experiments.recipe import train
import ltrobust.losses  # noqa: F401 (register)
from ltrobust.registry import LOSSES
from ltrobust.methods.free_at import FreeAT, FreeATOptions

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["dataset=digits-lt", "model=mlp", "model.width=16", "train.batch_size=32", "train.progress=false",
        "train.val_every=0", "train.precision=fp32", "train.max_steps_per_epoch=2", "method=free_at"]


def _method(m: int = 3, eps: float = 0.1, counts=(5, 5), loss: str = "ce") -> FreeAT:
    return FreeAT(list(counts), AttackConfig(eps=eps), LOSSES.get(loss)(list(counts)), FreeATOptions(m=m))


def _linear(d: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 2))


def _replay(method: FreeAT, model: nn.Module, opt: torch.optim.Optimizer, x, y) -> dict:
    """One replay exactly as the trainer runs it."""
    x_adv = method.train_attack(model, x, y)
    out = method.compute_loss(model, x, x_adv, y)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    method.after_step(model)
    return out


def test_one_replay_matches_a_manual_computation():
    model, method = _linear(), _method(eps=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 1, 1, 6, generator=g), torch.tensor([0, 1, 1, 0])
    w0, b0 = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    delta0 = torch.full_like(x, 0.03) * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    method.delta = delta0.clone()
    _replay(method, model, opt, x, y)
    # by hand: one backward of CE at clamp(x + delta) gives both gradients
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    d = delta0.clone().requires_grad_(True)
    loss = F.cross_entropy((x + d).clamp(0, 1).flatten(1) @ w.T + b, y)
    gw, gb, gd = torch.autograd.grad(loss, (w, b, d))
    assert torch.allclose(model[1].weight, w0 - 0.5 * gw, atol=1e-7)
    assert torch.allclose(model[1].bias, b0 - 0.5 * gb, atol=1e-7)
    assert torch.allclose(method.delta, (delta0 + 0.1 * gd.sign()).clamp(-0.1, 0.1), atol=1e-7)


def test_the_perturbation_is_carried_across_replays_and_batches_and_clipped_to_the_ball():
    model, method = _linear(), _method(eps=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights frozen: the perturbation alone moves
    g = torch.Generator().manual_seed(2)
    x, y = 0.3 + 0.4 * torch.rand(5, 1, 1, 6, generator=g), torch.tensor([0, 1, 0, 1, 0])
    assert method.perturbation(x).abs().sum() == 0  # zero at the start, as the authors' global noise
    _replay(method, model, opt, x, y)
    first = method.delta.clone()
    assert torch.allclose(first.abs(), torch.full_like(first, 0.1))  # a full step of eps from zero
    _replay(method, model, opt, x, y)
    # on a frozen linear model the gradient sign is constant: the second step pushes against the clip
    assert torch.equal(method.delta, first)
    # a smaller next batch starts from the first rows of the carried buffer, the rest is kept
    small = x[:2]
    seen = method.perturbation(small).clone()
    assert torch.equal(seen, first[:2])
    out = method.compute_loss(model, small, small, y[:2])
    out["loss"].backward()
    method.after_step(model)
    assert torch.equal(method.delta[2:], first[2:]) and method.delta.abs().max() <= 0.1


def test_the_trainer_replays_each_batch_m_times_and_logs_the_mean_over_steps(tmp_path, monkeypatch):
    calls = {"loss": 0, "after": 0}
    real_loss, real_after = FreeAT.compute_loss, FreeAT.after_step

    def count_loss(self, *a, **k):
        calls["loss"] += 1
        return real_loss(self, *a, **k)

    def count_after(self, *a, **k):
        calls["after"] += 1
        return real_after(self, *a, **k)

    monkeypatch.setattr(FreeAT, "compute_loss", count_loss)
    monkeypatch.setattr(FreeAT, "after_step", count_after)
    trainer = train(resolve_config(TINY + ["method.m=3", "epochs=2", f"out={tmp_path}", "name=r"]))
    assert trainer.method.replays == 3
    assert calls == {"loss": 2 * 2 * 3, "after": 2 * 2 * 3}  # 2 epochs x 2 batches x m
    rows = io.read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert sum(rows[0]["ae_pred_counts"]) == 2 * 32 * 3  # every replay's AEs counted
    assert all(0 < r["loss"] < 10 for r in rows)


def test_m_one_without_perturbation_is_natural_training(tmp_path):
    # eps 0: the carried perturbation stays zero, so Free-1 takes natural training's steps exactly
    a = train(resolve_config(TINY + ["method=natural", "epochs=2", f"out={tmp_path}", "name=nat"]))
    b = train(resolve_config(TINY + ["method.m=1", "attack.eps=0", "epochs=2", f"out={tmp_path}", "name=free"]))
    wa = io.load_checkpoint(a.run_dir / "checkpoints" / "last.pt")["model"]
    wb = io.load_checkpoint(b.run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_is_exact_with_the_carried_perturbation(tmp_path, die_after_checkpoint):
    over = TINY + ["method.m=2", "epochs=3", "train.deterministic=true", f"out={tmp_path}"]
    straight = train(resolve_config(over + ["name=straight"]))
    with die_after_checkpoint(0, run_name="killed"):
        train(resolve_config(over + ["name=killed"]))
    resumed = train(resolve_config(over + ["name=killed"]))
    assert torch.equal(straight.method.delta, resumed.method.delta)
    wa = io.load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    wb = io.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="m >= 1"):
        FreeATOptions(m=0)
    with pytest.raises(ConfigError, match="attack.loss"):
        FreeAT([5, 5], AttackConfig(loss="rw"), LOSSES.get("ce")([5, 5]), FreeATOptions())


def test_presets_and_a_tiny_cli_run(tmp_path, capsys):
    cfg = resolve_config(["preset=free-at-cifar10-wrn34"])
    assert (cfg.method.name, dict(cfg.method.args)["m"], cfg.train.epochs, cfg.train.milestones) == \
        ("free_at", 8, 26, (13, 19))
    assert cfg.reference[0]["values"]["pgd20"] == 46.82
    assert main(["train", "preset=free-at-digits", "epochs=1", "train.max_steps_per_epoch=2", "train.progress=false",
                 f"out={tmp_path}", "name=f"]) == 0
    assert main(["eval", str(Path(tmp_path) / "f"), "attacks=clean,bim5", "n_samples=20"]) == 0
    res = io.read_json(Path(tmp_path) / "f" / "eval" / "best.json")
    assert set(res["results"]) >= {"clean", "bim5"}
