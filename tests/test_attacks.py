"""The PGD loop and the named attack suite: closed-form optima, invariants, restarts, a cross-check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust.attacks import L2, Linf, parse_attack, pgd, run_attack
from ltrobust.attacks.pgd import initial_delta
from ltrobust.attacks.objectives import OBJECTIVES, cw, dlr
from ltrobust.attacks.pgd import initial_delta as pgd_initial_delta
from ltrobust.errors import ConfigError


class Linear(nn.Module):
    """f(x) = W flatten(x) + b with fixed weights (the optimal perturbation is known in closed form)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)
        self.bn = nn.BatchNorm1d(w.shape[1])  # to see whether the attack ran in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _binary_linear(d: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, d, generator=g)
    return Linear(w, torch.zeros(2)), w


def _x_interior(n: int, d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 1, 1, d, generator=g)  # far enough from 0 and 1 for eps <= 0.25


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_linf_reaches_closed_form_optimum_on_linear_model(random_start):
    model, w = _binary_linear()
    x = _x_interior(8, 12)
    y = torch.zeros(8, dtype=torch.long)
    eps = 0.1
    x_adv = pgd(model, x, y, Linf(eps), steps=20, step_size=0.025, random_start=random_start)
    # CE of a 2-class linear model grows with the margin (w1 - w0) . x: optimum delta = eps * sign(w1 - w0).
    direction = (w[1] - w[0]).view(1, 1, 1, -1)
    optimum = x + eps * direction.sign()
    assert torch.allclose(x_adv, optimum, atol=1e-6)


def test_pgd_linf_optimum_with_box_constraint():
    model, w = _binary_linear()
    x = torch.rand(6, 1, 1, 12, generator=torch.Generator().manual_seed(3))
    x[:, :, :, :3] = 0.0  # pixels on the box boundary
    x[:, :, :, 3:6] = 1.0
    y = torch.zeros(6, dtype=torch.long)
    eps = 0.2
    x_adv = pgd(model, x, y, Linf(eps), steps=30, step_size=0.05, random_start=False)
    optimum = (x + eps * (w[1] - w[0]).view(1, 1, 1, -1).sign()).clamp(0, 1)
    assert torch.allclose(x_adv, optimum, atol=1e-6)


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_l2_reaches_closed_form_optimum_on_linear_model(random_start):
    model, w = _binary_linear()
    x = _x_interior(8, 12)
    y = torch.zeros(8, dtype=torch.long)
    eps = 0.25
    x_adv = pgd(model, x, y, L2(eps), steps=100, step_size=0.05, random_start=random_start)
    direction = (w[1] - w[0]).view(1, 1, 1, -1)
    optimum = x + eps * direction / direction.norm()
    # from a zero start every step is along the optimum; from a random start the orthogonal part of the
    # start shrinks geometrically once on the sphere
    assert torch.allclose(x_adv, optimum, atol=1e-6 if not random_start else 1e-5)
    # the achieved margin gain is eps * ||w1 - w0||_2
    gain = ((x_adv - x).flatten(1) @ (w[1] - w[0]))
    assert torch.allclose(gain, torch.full_like(gain, eps * (w[1] - w[0]).norm()), rtol=1e-6)


SUITE = ["fgsm", "pgd5", "mim5", "cw5", "adaptive5", "pgd5-l2", "cw5-l2"]


@pytest.mark.parametrize("name", SUITE)
@pytest.mark.parametrize("was_training", [True, False])
def test_every_attack_stays_in_ball_and_box_restores_mode_and_touches_no_weight_grad(name, was_training):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5))
    model.train(was_training)
    running_mean = model[1].running_mean.clone()
    x = torch.rand(16, 3, 8, 8)
    x[:4] = 0.0
    x[4:8] = 1.0
    y = torch.randint(0, 5, (16,))
    spec = parse_attack(name, eps=8 / 255, step_size=2 / 255)
    x_adv = run_attack(spec, model, x, y, seed=0)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if spec.norm == "linf" else d.norm(dim=1)
    assert (size <= spec.eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training == was_training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, running_mean)  # BatchNorm in eval mode while attacking
    assert not x_adv.requires_grad


def test_attack_changes_prediction_of_a_trained_model_and_pgd_beats_fgsm():
    torch.manual_seed(0)
    x = torch.rand(256, 1, 4, 4)
    y = (x.flatten(1).mean(1) > 0.5).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    acc = lambda xx: (model(xx).argmax(1) == y).float().mean().item()  # noqa: E731
    clean = acc(x)
    fg = acc(run_attack(parse_attack("fgsm", eps=0.05), model, x, y))
    pg = acc(run_attack(parse_attack("pgd20", eps=0.05, step_size=0.01), model, x, y))
    assert clean > 0.9
    assert pg <= fg < clean


def test_restarts_only_attack_points_not_yet_broken():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.batch_sizes = []

        def forward(self, x):
            self.batch_sizes.append(x.shape[0])
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    model = Counting()
    x = torch.rand(10, 1, 2, 2)
    y = model(x).argmax(1)
    model.batch_sizes.clear()
    pgd(model, x, y, Linf(1.0), steps=2, step_size=0.5, restarts=3)
    # first run: 2 steps on all 10; later runs: only on points still classified correctly
    assert model.batch_sizes[:2] == [10, 10]
    later = model.batch_sizes[3:]
    assert all(b < 10 for b in later)


def test_mim_momentum_differs_from_pgd_and_stays_valid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    a = pgd(model, x, y, Linf(0.1), steps=5, step_size=0.02, random_start=False)
    b = pgd(model, x, y, Linf(0.1), steps=5, step_size=0.02, random_start=False, momentum=1.0)
    assert (b - x).abs().max() <= 0.1 + 1e-6
    assert not torch.equal(a, b)


def test_objectives_by_hand():
    z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    # CW: -relu(z_y - max_other + kappa)
    assert torch.allclose(cw(z, y, kappa=0.0), torch.tensor([-1.0, 0.0]))
    assert torch.allclose(cw(z, y, kappa=50.0), torch.tensor([-51.0, -48.0]))
    # DLR: -(z_y - max_other) / (z_(1) - z_(3))
    assert torch.allclose(dlr(z, y), torch.tensor([-(2 - 1) / (2 - -1 + 1e-12), -(1 - 3) / (3 - 0 + 1e-12)]))
    ce = OBJECTIVES["ce"](z, y)
    assert math.isclose(ce[0].item(), -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(-1))), rel_tol=1e-6)
    scaled = OBJECTIVES["ce"](z, y, scale=10.0)
    assert torch.allclose(scaled, F.cross_entropy(10 * z, y, reduction="none"))
    counts = torch.tensor([100.0, 10.0, 1.0])
    bal = OBJECTIVES["balanced_ce"](z, y, class_counts=counts)
    assert torch.allclose(bal, F.cross_entropy(z + torch.log(counts / counts.sum()), y, reduction="none"))
    w = torch.tensor([0.5, 1.0, 2.0])
    assert torch.allclose(OBJECTIVES["weighted_ce"](z, y, weights=w), w[y] * F.cross_entropy(z, y, reduction="none"))


def test_attack_names_parse_and_errors_name_the_fix():
    assert parse_attack("pgd100").steps == 100
    assert parse_attack("cw20").objective == "cw"
    assert parse_attack("mim20").momentum == 1.0
    assert parse_attack("fgsm").random_start is False
    assert parse_attack("pgd20-l2").norm == "l2"
    assert dict(parse_attack("adaptive").objective_kwargs)["scale"] == 10.0
    with pytest.raises(ConfigError, match="Did you mean 'pgd'"):
        parse_attack("pgdd20")
    with pytest.raises(ConfigError, match="outside \\[0, 1\\]"):
        from ltrobust.attacks import threat_model

        threat_model("linf", 8.0)


def test_pgd20_not_weaker_than_torchattacks():
    """Our PGD-20 robust accuracy is not above torchattacks' PGD-20 by more than 0.5 points."""
    torchattacks = pytest.importorskip("torchattacks")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    xt, yt = x[:600], y[:600]
    eps, alpha = 0.1, 0.02
    ours = run_attack(parse_attack("pgd20", eps=eps, step_size=alpha), model, xt, yt, seed=0)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=20, random_start=True)(xt, yt)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == yt).float().mean().item() * 100
        acc_theirs = (model(theirs).argmax(1) == yt).float().mean().item() * 100
        clean = (model(xt).argmax(1) == yt).float().mean().item() * 100
    assert clean > 90 and acc_theirs < clean
    assert acc_ours <= acc_theirs + 0.5, (acc_ours, acc_theirs)


def _trades_style_loop(model, x, y, eps, step, steps, start):
    """The inner loop of the TRADES code (also AT-BSL's, RoBal's and TAET's), written in its own form:
    it carries ``x_adv`` itself, starts at ``x + start`` unclipped, and projects after every step."""
    x_adv = x + start
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv


def test_normal_start_is_the_trades_codes_start_and_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.rand(10, 1, 1, 12, dtype=torch.float64)
    x[:, :, :, :4] = 0.0  # on the box boundary: the official start leaves [0, 1] there
    y = torch.randint(0, 3, (10,))
    start = 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = pgd(model, x, y, Linf(8 / 255), steps=7, step_size=2 / 255, random_start="normal",
               generator=torch.Generator().manual_seed(5))
    theirs = _trades_style_loop(model, x, y, 8 / 255, 2 / 255, 7, start)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    # steps=0: the start itself, clipped into [0, 1] (every returned example lies in the box)
    zero = pgd(model, x, y, Linf(8 / 255), steps=0, random_start="normal", generator=torch.Generator().manual_seed(5))
    assert torch.equal(zero, (x + start).clamp(0, 1))
    assert zero.min() >= 0 and (zero - x).abs().max() <= 0.01


def test_given_start_is_used_as_is_and_reproduces_another_codes_start():
    """``start=`` replaces the random start, unclipped before the first gradient: with the TRADES loop's own
    uniform start (x + U(-eps, eps), not clipped, as the AT-BSL evaluation code draws it) the attack equals it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.rand(10, 1, 1, 12, dtype=torch.float64)
    x[:, :, :, :4] = 1.0  # on the box boundary: the start leaves [0, 1] there
    y = torch.randint(0, 3, (10,))
    start = torch.empty_like(x).uniform_(-8 / 255, 8 / 255)
    theirs = _trades_style_loop(model, x, y, 8 / 255, 2 / 255, 5, start)
    ours = pgd(model, x, y, Linf(8 / 255), steps=5, step_size=2 / 255, random_start=True, start=start)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    assert torch.equal(pgd(model, x, y, Linf(8 / 255), steps=0, start=start), (x + start).clamp(0, 1))
    with pytest.raises(ConfigError, match="one starting perturbation per image"):
        pgd(model, x, y, Linf(8 / 255), steps=1, start=start[:3])


def test_uniform_unclipped_start_is_reats_start_and_loop():
    """``uniform_unclipped``: x + U(-eps, eps) drawn as REAT's code draws it (``torch.FloatTensor(shape).uniform_``:
    the same numbers from the same seed), left outside [0, 1] before the first gradient, then its loop."""
    x = torch.tensor([[[[0.0, 1.0, 0.5, 0.0]]]])  # (1, 1, 1, 4): two pixels on the box boundary
    torch.manual_seed(3)
    theirs_start = torch.FloatTensor(*x.shape).uniform_(-0.25, 0.25)
    torch.manual_seed(3)
    start = pgd_initial_delta(Linf(0.25), x, "uniform_unclipped")
    assert torch.equal(start, theirs_start)
    # by hand: the draws u = torch.rand(4) after seed 3 are 0.0042635, 0.1055694, 0.2858425, 0.0269548, so
    # delta = 0.5 u - 0.25 and x + delta = (-0.2478682, 0.8027847, 0.3929212, -0.2365226): two pixels below 0
    assert torch.allclose(x + start, torch.tensor([[[[-0.2478682, 0.8027847, 0.3929212, -0.2365226]]]]), rtol=0,
                          atol=1e-6)
    torch.manual_seed(3)
    clipped = pgd_initial_delta(Linf(0.25), x, "uniform")  # the Madry et al. start: clipped into [0, 1]
    assert torch.allclose(x + clipped, torch.tensor([[[[0.0, 0.8027847, 0.3929212, 0.0]]]]), rtol=0, atol=1e-6)
    # the loop from that start is REAT's loop (the TRADES loop from x + start)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    xb = torch.rand(10, 1, 1, 12, dtype=torch.float64)
    xb[:, :, :, :4] = 0.0
    y = torch.randint(0, 3, (10,))
    ours = pgd(model, xb, y, Linf(8 / 255), steps=4, step_size=2 / 255, random_start="uniform_unclipped",
               generator=torch.Generator().manual_seed(9))
    s = torch.empty_like(xb).uniform_(-8 / 255, 8 / 255, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(ours, _trades_style_loop(model, xb, y, 8 / 255, 2 / 255, 4, s), rtol=0, atol=1e-12)
    assert torch.equal(pgd(model, xb, y, Linf(8 / 255), steps=0, random_start="uniform_unclipped",
                           generator=torch.Generator().manual_seed(9)), (xb + s).clamp(0, 1))
    with pytest.raises(ConfigError, match="l_inf start"):
        pgd(model, xb, y, L2(0.5), steps=1, step_size=0.1, random_start="uniform_unclipped")


def test_random_start_kinds_and_bad_kind():
    model, _ = _binary_linear()
    x = _x_interior(4, 12)
    y = torch.zeros(4, dtype=torch.long)
    for off in (False, "none"):
        assert torch.equal(pgd(model, x, y, Linf(0.1), steps=0, random_start=off), x)
    uniform = pgd(model, x, y, Linf(0.1), steps=0, random_start="uniform", generator=torch.Generator().manual_seed(1))
    assert torch.equal(uniform, pgd(model, x, y, Linf(0.1), steps=0, random_start=True,
                                    generator=torch.Generator().manual_seed(1)))
    assert (uniform - x).abs().max() > 0.05  # spread over the ball, not 0.001 around x
    with pytest.raises(ConfigError, match="random_start='gauss'"):
        pgd(model, x, y, Linf(0.1), steps=1, random_start="gauss")


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x.flatten(1)))


@pytest.mark.parametrize("was_training", [True, False])
def test_bn_modes_while_attacking(was_training):
    torch.manual_seed(0)
    x = torch.rand(16, 1, 1, 12)
    y = torch.randint(0, 3, (16,))

    def attack(mode):
        torch.manual_seed(1)
        model = _BNNet()
        model.bn.running_mean.fill_(0.5)
        model.train(was_training)
        x_adv = pgd(model, x, y, Linf(0.05), steps=3, step_size=0.01, random_start=False, bn_mode=mode)
        assert model.training is was_training and model.bn.track_running_stats  # mode and flag restored
        return model, x_adv

    model, x_eval = attack("eval")  # running statistics used, none updated
    assert torch.equal(model.bn.running_mean, torch.full((12,), 0.5)) and int(model.bn.num_batches_tracked) == 0
    model, x_train = attack("train")  # batch statistics; every step's forward updates the running ones
    assert int(model.bn.num_batches_tracked) == 3 and not torch.equal(model.bn.running_mean, torch.full((12,), 0.5))
    model, x_batch = attack("batch")  # batch statistics, running ones untouched
    assert torch.equal(model.bn.running_mean, torch.full((12,), 0.5)) and int(model.bn.num_batches_tracked) == 0
    assert torch.equal(x_train, x_batch)  # the same batch statistics, so the same examples
    assert not torch.equal(x_eval, x_batch)
    with pytest.raises(ConfigError, match="bn_mode='frozen'"):
        pgd(_BNNet(), x, y, Linf(0.05), steps=1, bn_mode="frozen")


def test_attack_config_start_and_bn_mode():
    from ltrobust.config import AttackConfig, resolve_config

    assert AttackConfig(random_start=True).random_start == "uniform"
    assert AttackConfig(random_start=False).random_start == "none"
    assert resolve_config(["attack.random_start=normal"]).attack.random_start == "normal"
    assert resolve_config(["attack.random_start=false"]).attack.random_start == "none"
    assert resolve_config(["attack.random_start=uniform_unclipped"]).attack.random_start == "uniform_unclipped"
    with pytest.raises(ConfigError, match="uniform_unclipped is an l_inf start"):
        resolve_config(["attack.random_start=uniform_unclipped", "attack.norm=l2", "attack.eps=0.5"])
    assert resolve_config(["attack.bn_mode=batch"]).attack.bn_mode == "batch"
    with pytest.raises(ConfigError, match="attack.random_start='gaussian': use uniform"):
        resolve_config(["attack.random_start=gaussian"])
    with pytest.raises(ConfigError, match="attack.bn_mode='running': use eval, train or batch"):
        resolve_config(["attack.bn_mode=running"])


def test_method_bn_mode_default_and_override():
    from ltrobust.config import AttackConfig
    from ltrobust.registry import LOSSES, METHODS

    counts = [20, 10, 5]
    ce = LOSSES.get("ce")(counts)
    assert METHODS.get("pgd_at")(counts, AttackConfig(), ce).bn_mode == "eval"
    assert METHODS.get("pgd_at")(counts, AttackConfig(bn_mode="train"), ce).bn_mode == "train"


def test_one_sided_start_is_robal_codes_start_and_loop():
    """``random_start="one_sided"``: x + eps * U[0, 1) per coordinate, not clipped before the first gradient, as
    RoBal's training code starts (``x_natural + epsilon * torch.rand(shape)``), then the TRADES-style loop."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.rand(10, 1, 1, 12, dtype=torch.float64)
    x[:, :, :, :4] = 1.0  # on the box boundary: the official start leaves [0, 1] there
    y = torch.randint(0, 3, (10,))
    # hand-computed start: every coordinate in [0, eps), from the same generator draw
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    start = initial_delta(Linf(8 / 255), x, "one_sided", torch.Generator().manual_seed(5))
    assert torch.equal(start, (8 / 255) * u)
    assert start.min() >= 0 and start.max() < 8 / 255
    ours = pgd(model, x, y, Linf(8 / 255), steps=5, step_size=2 / 255, random_start="one_sided",
               generator=torch.Generator().manual_seed(5))
    theirs = _trades_style_loop(model, x, y, 8 / 255, 2 / 255, 5, (8 / 255) * u)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    # steps=0: the start itself, clipped into [0, 1]
    zero = pgd(model, x, y, Linf(8 / 255), steps=0, random_start="one_sided",
               generator=torch.Generator().manual_seed(5))
    assert torch.equal(zero, (x + (8 / 255) * u).clamp(0, 1))
    from ltrobust.config import resolve_config

    assert resolve_config(["attack.random_start=one_sided"]).attack.random_start == "one_sided"
