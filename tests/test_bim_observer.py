"""BIM (iterative FGSM without random start) as a configuration of the one PGD loop, and the loop's observer hook."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust.attacks import L2, Linf, parse_attack, pgd, run_attack
from ltrobust.errors import ConfigError
from ltrobust.evaluation.evaluator import column_title

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))


def _batch(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_bim_names_and_settings():
    spec = parse_attack("bim20", eps=8 / 255, step_size=1 / 255)
    assert (spec.family, spec.steps, spec.random_start, spec.step_size, spec.momentum) == ("bim", 20, False, 1 / 255, 0.0)
    assert parse_attack("bim").steps == 10  # torchattacks' default
    assert parse_attack("bim0").steps == 0
    l2 = parse_attack("bim10-l2")
    assert l2.norm == "l2" and l2.eps == 0.5 and not l2.random_start
    assert column_title("bim10") == "BIM-10" and column_title("bim20-l2") == "BIM-20-l2"


@pytest.mark.parametrize("name", ["bim5", "bim5-l2"])
def test_bim_is_pgd_without_random_start_and_needs_no_seed(name):
    model = _net()
    x, y = _batch()
    spec = parse_attack(name, eps=8 / 255, step_size=2 / 255)
    a = run_attack(spec, model, x, y, seed=0)
    b = run_attack(spec, model, x, y, seed=123)  # no randomness at all: the seed does not matter
    assert torch.equal(a, b)
    threat = Linf(spec.eps) if spec.norm == "linf" else L2(spec.eps)
    ref = pgd(model, x, y, threat, steps=5, step_size=spec.step_size, random_start=False)
    assert torch.equal(a, ref)
    # and unlike PGD, whose uniform start depends on the seed
    p = parse_attack("pgd5" + ("-l2" if spec.norm == "l2" else ""), eps=8 / 255, step_size=2 / 255)
    assert not torch.equal(run_attack(p, model, x, y, seed=0), run_attack(p, model, x, y, seed=1))


def test_bim_one_step_of_eps_is_fgsm_and_invariants_hold():
    model = _net()
    model.train()
    running = model[1].running_mean.clone()
    x, y = _batch()
    x[:3] = 0.0
    x[3:6] = 1.0
    eps = 8 / 255
    one = run_attack(parse_attack("bim1", eps=eps, step_size=eps), model, x, y)
    assert torch.equal(one, run_attack(parse_attack("fgsm", eps=eps), model, x, y))
    x_adv = run_attack(parse_attack("bim10", eps=eps, step_size=2 / 255), model, x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and torch.equal(model[1].running_mean, running)
    assert all(p.grad is None for p in model.parameters())


def test_bim_reaches_the_closed_form_optimum_of_a_linear_model():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 12, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.zero_()
    x = 0.3 + 0.4 * torch.rand(8, 1, 1, 12, generator=g)
    y = torch.zeros(8, dtype=torch.long)
    x_adv = run_attack(parse_attack("bim10", eps=0.1, step_size=0.025), model, x, y)
    # the CE of a 2-class linear model grows with (w1 - w0) . x; four steps of 0.025 reach eps = 0.1 exactly
    assert torch.allclose(x_adv, x + 0.1 * (w[1] - w[0]).view(1, 1, 1, -1).sign(), atol=1e-6)


def test_observer_sees_every_step_with_the_true_gradient_and_changes_nothing():
    model = _net()
    x, y = _batch()
    spec = parse_attack("bim3", eps=8 / 255, step_size=2 / 255)
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    out = run_attack(spec, model, x, y, observer=lambda step, xa, grad: seen.append((step, xa.clone(), grad.clone())))
    assert torch.equal(out, run_attack(spec, model, x, y))  # watching does not change the attack
    assert [s for s, _, _ in seen] == [0, 1, 2]
    assert torch.equal(seen[0][1], x)  # BIM starts at the clean image
    model.eval()
    xa = seen[1][1].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
    assert torch.allclose(seen[1][2], g)
    # each step moves by step_size * sign(grad) and is clipped to the ball
    assert torch.allclose(seen[1][1], (x + (2 / 255) * seen[0][2].sign()).clamp(0, 1), atol=1e-7)


def test_observer_refused_for_attacks_outside_the_loop():
    model = _net()
    x, y = _batch(4)
    with pytest.raises(ConfigError, match="not a configuration of the PGD loop"):
        run_attack(parse_attack("aa"), model, x, y, observer=lambda *a: None)
