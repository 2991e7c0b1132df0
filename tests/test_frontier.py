"""The two 2026 methods beyond the seeds (issue 28): RobustLT (Zhang et al., CVPR 2026) and MCAT (Xian, Yang and
Yu, IJCAI 2026).

RobustLT: the class-wise radii (CPB) and the warm-up (AIW) by hand, epoch by epoch; every base attacked inside its
class balls from a start in the global ball; alpha = beta = 0 is each base exactly. MCAT: the ETF target Gram
matrix, the manifold distance of points on and off a known generator's range, MS-PGD through the one PGD loop,
the code variant as PGD-AT plus the ETF term. Both train and evaluate from the CLI and from Python.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust import io
from ltrobust.attacks import pgd
from ltrobust.attacks.pgd import initial_delta
from ltrobust.attacks.threat import Linf
from ltrobust.cli import main
from ltrobust.config import AttackConfig, list_presets, method_options, resolve_config
from ltrobust.errors import ConfigError
from ltrobust.experiments import train
from ltrobust.methods.robustlt import BASES, aiw_intensity, cpb_budgets
from ltrobust.models.heads import CosineHead
from ltrobust.registry import LOSSES, METHODS
from ltrobust.training.trainer import Trainer

from lt_fixtures import COUNTS, C, batch, tiny_model  # tests/lt_fixtures.py (tests/ is on sys.path)

TINY = ["dataset=digits-lt", "model=mlp", "model.width=16", "train.batch_size=32", "train.progress=false",
        "train.val_every=0", "train.precision=fp32", "attack.steps=2", "train.max_steps_per_epoch=2"]
#: CIFAR-10-LT IR 50 (LDAM-DRW exp profile): the counts of `ltrobust data info cifar10-lt imbalance=50`
CIFAR10_IR50 = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(name: str, loss: str = "ce", counts=COUNTS, attack: AttackConfig | None = None, total_epochs: int = 10,
         **options):
    cls = METHODS.get(name)
    return cls(list(counts), attack or AttackConfig(), LOSSES.get(loss)(list(counts), total_epochs=total_epochs),
               cls.Options(**options), total_epochs=total_epochs)


def linear_model(seed: int = 0, d: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, C))


def inner(x: torch.Tensor) -> torch.Tensor:
    """Images away from the [0, 1] box, so no clipping hides the ball."""
    return 0.2 + 0.6 * x


# ================================================================================================ RobustLT
def test_cpb_radii_by_hand_on_three_classes():
    n, eps, alpha = [100, 20, 5], 8 / 255, 0.3
    r = [math.sqrt(math.log(100 / c)) for c in n]  # [0, sqrt(log 5), sqrt(log 20)]
    tau = alpha / (100 / 125 * r[0] + 20 / 125 * r[1] + 5 / 125 * r[2])
    want = [(1 - alpha) * eps + tau * rc * eps for rc in r]
    got, got_tau = cpb_budgets(n, eps, alpha)
    assert got_tau == pytest.approx(tau, rel=1e-12)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert got[0].item() == pytest.approx(0.7 * eps, rel=1e-12)  # the head class: (1 - alpha) eps
    assert sum(c / 125 * e for c, e in zip(n, got.tolist())) == pytest.approx(eps, rel=1e-12)  # mean is eps


def test_cpb_radii_of_cifar10_lt_ir50_match_the_release_numbers():
    eps_c, tau = cpb_budgets(CIFAR10_IR50, 8 / 255, 0.3)
    assert tau == pytest.approx(0.4599, abs=5e-5)
    assert eps_c[0].item() * 255 == pytest.approx(5.600, abs=5e-4)  # head 5.600/255
    assert eps_c[-1].item() * 255 == pytest.approx(12.878, abs=5e-4)  # tail 12.878/255
    assert bool((eps_c[1:] > eps_c[:-1]).all())  # rarer class, larger radius
    w = torch.tensor(CIFAR10_IR50, dtype=torch.float64)
    assert float((w / w.sum() * eps_c).sum()) == pytest.approx(8 / 255, rel=1e-12)
    # alpha 0: every class at eps; a balanced set: CPB is undefined (the release divides by 0) and keeps eps
    assert cpb_budgets(CIFAR10_IR50, 8 / 255, 0.0)[0].tolist() == pytest.approx([8 / 255] * 10, rel=1e-15)
    assert cpb_budgets([50, 50, 50], 8 / 255, 0.3)[0].tolist() == [8 / 255] * 3


def test_aiw_intensity_per_epoch_counts_the_first_epoch_as_clean():
    # the release: min((e - 1) / (beta * E), 1) with e = 1..E; ltrobust's trainer: epoch = e - 1 = 0..E-1
    E, beta = 10, 0.8
    for epoch in range(E):
        e_release = epoch + 1
        assert aiw_intensity(epoch, E, beta) == min((e_release - 1) / (beta * E), 1)
    assert [aiw_intensity(e, E, beta) for e in range(E)] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    assert aiw_intensity(0, E, 0.0) == 1.0  # beta 0: no warm-up
    m = make("robustlt", base="at_bsl", total_epochs=E, alpha=0.3, beta=beta)
    eps_c, _ = cpb_budgets(COUNTS, 8 / 255, 0.3)
    for epoch in range(E):
        m.on_epoch_start(epoch)
        want = [e * min(epoch / 8, 1) for e in eps_c.tolist()]
        assert m.class_radii().tolist() == pytest.approx(want, rel=1e-6, abs=1e-12)
        assert m.base.class_budget.scale == min(epoch / 8, 1)  # the base attacks with these radii


def test_aiw_per_iteration_ramps_over_optimiser_steps():
    m = make("robustlt", base="pgd_at", total_epochs=2, beta=0.5, warmup="iteration")
    m.steps_per_epoch = 4  # beta * T = 0.5 * 8 = 4 steps
    seen = []
    model, (x, _, y) = tiny_model(), batch()
    for epoch in range(2):
        m.on_epoch_start(epoch)
        for _ in range(4):
            m.train_attack(model, x, y)
            seen.append(m.base.class_budget.scale)
            m.after_step(model)
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="steps per epoch"):
        fresh = make("robustlt", base="pgd_at", total_epochs=2, beta=0.5, warmup="iteration")
        fresh.on_epoch_start(1)


def test_first_epoch_aes_are_the_clean_images():
    m = make("robustlt", base="pgd_at", total_epochs=5, beta=0.8)
    m.on_epoch_start(0)
    model, (x, _, y) = tiny_model(), batch()
    assert torch.equal(m.train_attack(model, x, y), x)  # radius 0: the code's epoch 1 is clean training
    m.on_epoch_start(4)
    assert not torch.equal(m.train_attack(model, x, y), x)


def test_each_class_is_attacked_to_its_own_radius():
    """A linear model's input gradient has a constant sign: 10 steps of step_c = eps_c / 4 reach eps_c on every
    pixel from any start."""
    model = linear_model()
    g = torch.Generator().manual_seed(3)
    x = inner(torch.rand(6, 1, 4, 4, generator=g))
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    m = make("robustlt", base="pgd_at", attack=AttackConfig(steps=10), alpha=0.3, beta=0.0)
    eps_c = m.eps_max.tolist()
    d = (m.train_attack(model, x, y) - x).abs().flatten(1)
    for i, c in enumerate(y.tolist()):
        assert d[i].max().item() <= eps_c[c] + 1e-6
        assert d[i].min().item() == pytest.approx(eps_c[c], abs=1e-6)  # every pixel on the ball's face


def test_random_start_lies_in_the_global_ball_and_steps_in_the_class_ball():
    """The release draws the start uniformly in the global eps ball (not eps_c) and projects from step 1 on."""
    eps_c, _ = cpb_budgets(COUNTS, 8 / 255, 0.3)
    x, y = inner(torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))), torch.zeros(64, dtype=torch.long)
    threat = Linf(8 / 255).per_sample(eps_c.float()[y], 4)  # every sample in the head class: 5.6/255
    start = initial_delta(threat, x, "uniform", torch.Generator().manual_seed(1), start_eps=8 / 255)
    assert start.abs().max().item() > eps_c[0].item() + 1e-3 and start.abs().max().item() <= 8 / 255 + 1e-7
    seen = []

    class Spy(nn.Module):
        def forward(self, z):
            seen.append(z.detach().clone())
            return z.flatten(1)[:, :C] * 3.0

    for start_mode, bound in (("global", 8 / 255), ("class", eps_c[0].item())):
        seen.clear()
        m = make("robustlt", base="pgd_at", attack=AttackConfig(steps=1), alpha=0.3, beta=0.0, start=start_mode)
        x_adv = m.train_attack(Spy(), x, y)
        first = (seen[0] - x).abs().max().item()  # where the first gradient was taken
        assert first <= bound + 1e-6
        assert (first > eps_c[0].item() + 1e-3) is (start_mode == "global")
        assert (x_adv - x).abs().max().item() <= eps_c[0].item() + 1e-6  # projected onto eps_c by the first step


def _identity_case(base: str, **base_args):
    head = "cosine" if base == "robal" else "linear"
    extra = {"base_args": base_args} if base_args else {}
    wrapped = make("robustlt", base=base, alpha=0.0, beta=0.0, **extra)
    plain = make(base, **base_args)
    return head, wrapped, plain


@pytest.mark.parametrize("base", BASES)
def test_alpha_beta_zero_is_the_base_method_exactly(base):
    base_args = {"stage1_epochs": 1} if base == "taet" else {}
    head, wrapped, plain = _identity_case(base, **base_args)
    x, _, y = batch()
    results = []
    for m in (wrapped, plain):
        model = tiny_model(head=head)
        m.on_epoch_start(1)  # TAET: past its clean stage
        torch.manual_seed(5)
        x_adv = m.train_attack(model, x, y)
        out = m.compute_loss(model, x, x_adv, y)
        out["loss"].backward()
        m.after_step(model)
        results.append((x_adv, out["loss"].detach(), [p.grad.clone() for p in model.parameters()],
                        [p.detach().clone() for p in model.parameters()]))
    (a_adv, a_loss, a_grads, a_w), (b_adv, b_loss, b_grads, b_w) = results
    assert torch.equal(a_adv, b_adv) and torch.equal(a_loss, b_loss)
    assert all(torch.equal(g1, g2) for g1, g2 in zip(a_grads, b_grads))
    assert all(torch.equal(w1, w2) for w1, w2 in zip(a_w, b_w))  # AWP restored its weights in both
    assert wrapped.loss_label == plain.loss_label


@pytest.mark.parametrize("base", ["trades", "robal", "reat", "taet", "awp", "at_bsl"])
def test_every_base_attacks_inside_the_class_balls(base):
    base_args = {"stage1_epochs": 0} if base == "taet" else {}
    m = make("robustlt", base=base, alpha=0.5, beta=0.0, base_args=base_args)
    model = tiny_model(head="cosine" if base == "robal" else "linear")
    x, _, y = batch()
    x = inner(x)
    torch.manual_seed(0)
    d = (m.train_attack(model, x, y) - x).abs().flatten(1).amax(1)
    radii = m.eps_max[y]
    assert bool((d <= radii + 1e-6).all())
    assert d[y == 0].max().item() > 0 and d[y == 2].max().item() > radii[0].item()  # the tail beyond the head's ball


def test_robustlt_config_errors_and_base_options():
    cfg = resolve_config(["method=robustlt", "method.base=robal", "base_args={m0: 0.2, tau_p: 0.0}", "alpha=0.4"])
    m_opts = cfg.method.args
    assert m_opts["base"] == "robal" and m_opts["base_args"] == {"m0": 0.2, "tau_p": 0.0}
    assert METHODS.get("robustlt").head_for(METHODS.get("robustlt").Options(**m_opts)) == "cosine"
    with pytest.raises(ConfigError, match="use one of pgd_at, trades, awp"):
        resolve_config(["method=robustlt", "method.base=mma"])
    with pytest.raises(ConfigError, match=r"alpha=1.5 must lie in \[0, 1\]"):
        resolve_config(["method=robustlt", "alpha=1.5"])
    with pytest.raises(ConfigError, match="robustlt base 'robal' has no option 'm1'.*m0"):
        resolve_config(["method=robustlt", "method.base=robal", "base_args={m1: 0.2}"])
    with pytest.raises(ConfigError, match="attack.eps > 0"):
        make("robustlt", attack=AttackConfig(eps=0.0))
    assert make("robustlt", base="taet").beta == 1.0 and make("robustlt", base="reat").beta == 0.8


def test_robustlt_over_at_bsl_trains_like_at_bsl_with_alpha_beta_zero(tmp_path):
    over = TINY + ["epochs=2", "train.deterministic=true", f"out={tmp_path}"]
    Trainer(resolve_config(over + ["method=at_bsl", "name=a"])).fit()
    Trainer(resolve_config(over + ["method=robustlt", "method.base=at_bsl", "alpha=0", "beta=0", "name=b"])).fit()
    wa, wb = (io.load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")["model"] for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_robustlt_logs_the_warmup_per_epoch_and_resumes_exactly(tmp_path, die_after_checkpoint):
    over = TINY + ["method=robustlt", "method.base=reat", "beta=1", "epochs=3", "train.deterministic=true",
                   f"out={tmp_path}"]
    straight = train(resolve_config(over + ["name=straight"]))
    rows = io.read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [r["aiw"] for r in rows] == pytest.approx([0.0, 1 / 3, 2 / 3])
    with die_after_checkpoint(1, run_name="killed"):
        train(resolve_config(over + ["name=killed"]))
    train(resolve_config(over + ["name=killed"]))
    a, b = (io.load_checkpoint(tmp_path / n / "checkpoints" / "last.pt") for n in ("straight", "killed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["method"]["base"]["ae_counts"] == b["method"]["base"]["ae_counts"]  # REAT's state, nested
    assert straight.method.base.ae_counts == b["method"]["base"]["ae_counts"]


def test_robustlt_over_robal_builds_the_cosine_head_and_serves_robals_logits(tmp_path):
    t = Trainer(resolve_config(TINY + ["method=robustlt", "method.base=robal", "epochs=1", f"out={tmp_path}",
                                       "name=r"]))
    t.fit()
    assert isinstance(t.model.head, CosineHead)
    assert type(t.method.deployed(t.model)).__name__ == "RoBalDeployed"


def test_robustlt_trains_and_evaluates_from_the_cli(tmp_path):
    assert main(["train", "method=robustlt", "method.base=trades", *TINY, "epochs=2", f"out={tmp_path}",
                 "name=run"]) == 0
    rows = io.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["aiw"] for r in rows] == [0.0, pytest.approx(1 / 1.6)]  # beta 0.8 of 2 epochs
    assert main(["eval", str(tmp_path / "run"), "attacks=clean,pgd5", "eval.n_samples=20",
                 "eval.chunk_size=20"]) == 0
    result = io.read_json(tmp_path / "run" / "eval" / "best.json")
    assert result["eps"] == pytest.approx(8 / 255)  # evaluation at the threat model's one eps


# ==================================================================================================== MCAT
from ltrobust.losses import class_groups, etf_loss, etf_target_gram, latent_projection, manifold_distance  # noqa: E402
from ltrobust.methods.mcat import (ClassGenerators, fit_generators, generator_loss, generators_digest,  # noqa: E402
                                   ms_pgd)

MCAT_TINY = ["hidden=16,16", "z_dim=4", "gen_epochs=2"]


def linear_generators(feature_dim: int = 4, z_dim: int = 2, num_classes: int = C, seed: int = 0) -> ClassGenerators:
    """One linear generator per class, ``G_c(z) = A_c z + b_c`` with orthonormal columns A_c (D x z_dim): the
    latent loss ||A z + b - u||^2 has Hessian 2 I, so one step of lr 0.5 lands on its minimiser."""
    G = ClassGenerators(num_classes, z_dim, feature_dim, hidden=())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in G.generators:
            q, _ = torch.linalg.qr(torch.randn(feature_dim, feature_dim, generator=g))
            lin[0].weight.copy_(q[:, :z_dim])
            lin[0].bias.copy_(torch.randn(feature_dim, generator=g))
    for p in G.parameters():
        p.requires_grad_(False)
    return G


def test_etf_target_gram_and_loss_by_hand():
    assert etf_target_gram(3).tolist() == [[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5], [-0.5, -0.5, 1.0]]
    m4 = etf_target_gram(4)
    assert torch.allclose(m4, torch.eye(4) * (4 / 3) - torch.full((4, 4), 1 / 3))
    assert torch.allclose(m4.sum(1), torch.zeros(4), atol=1e-7)  # a simplex: the class means sum to 0
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    simplex = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[1.0], [3.0], [0.5]])  # any row norms
    assert etf_loss(simplex).item() == pytest.approx(0.0, abs=1e-12)
    assert etf_loss(torch.eye(3)).item() == pytest.approx(1 / 6, rel=1e-6)  # off-diagonal (0 + 1/2)^2 x 6 / 9
    # in the weight's dtype: float64 stays float64 (exact 1/6), half precision is computed in float32
    e64 = etf_loss(torch.eye(3, dtype=torch.float64))
    assert e64.dtype == torch.float64 and e64.item() == 1 / 6
    assert etf_loss(torch.eye(3, dtype=torch.bfloat16)).dtype == torch.float32
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    wh = w / w.norm(dim=1, keepdim=True)
    assert etf_loss(w).item() == pytest.approx(((wh @ wh.t() - etf_target_gram(3)) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        etf_target_gram(1)


def test_generators_route_each_row_through_its_class():
    G = ClassGenerators(3, 2, 5, hidden=(4,))
    y = torch.tensor([2, 0, 2, 1, 0])
    z = torch.randn(5, 2)
    out = G(z, class_groups(y))
    for i in range(5):
        assert torch.allclose(out[i], G.generators[int(y[i])](z[i:i + 1])[0])
    feats = torch.randn(5, 5)
    by_hand = sum(F.mse_loss(G.generators[c](z[y == c]), feats[y == c]) for c in (0, 1, 2))
    assert generator_loss(G, feats, class_groups(y), z).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_manifold_distance_on_and_off_a_known_generators_range():
    G = linear_generators()
    y = torch.tensor([0, 1, 2, 2])
    groups = class_groups(y)
    z_true = torch.randn(4, 2)
    on = G(z_true, groups)  # points on each class's range
    normal = torch.zeros(4, 4)
    for i, c in enumerate(y.tolist()):  # a unit vector orthogonal to A_c's columns, scaled by i + 1
        a = G.generators[c][0].weight
        v = torch.randn(4)
        v = v - a @ (a.t() @ v)
        normal[i] = (i + 1) * v / v.norm()
    off = on + normal
    z0 = torch.randn(4, 2)
    d_on = manifold_distance(G, on, groups, z_dim=2, steps=1, lr=0.5, z0=z0)
    d_off = manifold_distance(G, off, groups, z_dim=2, steps=1, lr=0.5, z0=z0)
    assert d_on.tolist() == pytest.approx([0.0] * 4, abs=1e-9)
    assert d_off.tolist() == pytest.approx([1.0, 4.0, 9.0, 16.0], rel=1e-5)  # the squared distance to the range
    # fewer steps stay above the minimum; the release's class_mean steps are 1/n_c of each point's own
    partial = manifold_distance(G, off, groups, z_dim=2, steps=1, lr=0.25, z0=z0)
    assert bool((partial >= d_off - 1e-6).all()) and bool((partial > d_off + 1e-6).any())
    class_mean = manifold_distance(G, off, groups, z_dim=2, steps=1, lr=1.0, z0=z0, reduction="class_mean")
    assert class_mean[2:].tolist() == pytest.approx([9.0, 16.0], rel=1e-5)  # class 2 has 2 points: lr 1 / 2
    z_half = latent_projection(G, off, groups, z0, steps=1, lr=0.5, reduction="class_mean")
    z_full = latent_projection(G, off, groups, z0, steps=1, lr=0.5)
    assert torch.allclose(z_half[:2], z_full[:2]) and not torch.allclose(z_half[2:], z_full[2:])
    # the paper's penalty: z* held, d differentiable in u with gradient 2 (u - G(z*)); the release's: no gradient
    u = off.clone().requires_grad_(True)
    manifold_distance(G, u, groups, z_dim=2, steps=1, lr=0.5, z0=z0).sum().backward()
    assert torch.allclose(u.grad, 2 * normal, atol=1e-5)
    assert not manifold_distance(G, u, groups, z_dim=2, steps=1, lr=0.5, z0=z0, differentiable=False).requires_grad


def test_fit_generators_learns_each_class_and_freezes():
    torch.manual_seed(0)
    G = ClassGenerators(3, 2, 4, hidden=(16,))
    centres = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, -1.0]])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    losses = fit_generators(G, lambda epoch: [(centres[y], y)] * 20, epochs=10, lr=1e-2)
    assert losses[-1] < 0.01 * losses[0]
    assert all(not p.requires_grad for p in G.parameters()) and not G.training
    d = manifold_distance(G, centres, class_groups(torch.arange(3)), z_dim=2, steps=5, lr=0.1)
    assert d.max().item() < 0.05


class FeatureNet(nn.Module):
    """logits = H f, f = P x (flattened): input gradients by hand."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.P = nn.Parameter(torch.randn(4, 16, generator=g) * 0.5)
        self.head = nn.Linear(4, C)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(C, 4, generator=g))
            self.head.bias.zero_()
        self.num_classes = C

    def forward(self, x, return_features=False):
        f = x.flatten(1) @ self.P.t()
        z = self.head(f)
        return (z, f) if return_features else z


def test_ms_pgd_step_by_hand_and_detached_distance_is_pgd_on_ce():
    model, G = FeatureNet(), linear_generators()
    x, y = inner(torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))), torch.tensor([0, 0, 1, 1, 2, 2])
    groups, lam, step = class_groups(y), 0.3, 2 / 255
    torch.manual_seed(7)
    z0 = torch.randn(6, 2)  # the draws ms_pgd makes after the same seed (one class at a time, ascending)
    z0 = torch.cat([z0[:2], z0[2:4], z0[4:]])
    f = x.flatten(1) @ model.P.detach().t()
    z = f @ model.head.weight.detach().t()
    g_ce = ((z.softmax(1) - F.one_hot(y, C)) @ model.head.weight.detach()) @ model.P.detach()
    zs = latent_projection(G, f, groups, z0, steps=1, lr=0.5)
    g_d = 2 * (f - G(zs, groups)) @ model.P.detach()
    want = (x + step * (g_ce + lam * g_d).sign().view_as(x)).clamp(0, 1)
    torch.manual_seed(7)
    got = ms_pgd(model, x, y, Linf(8 / 255), G, lam=lam, steps=1, step_size=step, latent_steps=1, latent_lr=0.5,
                 random_start="none")
    assert torch.allclose(got, want, atol=1e-6)
    # the release: the distance without gradient, so MS-PGD is PGD on CE whatever lambda and the sign
    plain = pgd(model, x, y, Linf(8 / 255), steps=3, step_size=step, random_start="none")
    released = ms_pgd(model, x, y, Linf(8 / 255), G, lam=0.2, sign=-1.0, steps=3, step_size=step,
                      latent_steps=5, latent_lr=0.1, reduction="class_mean", differentiable=False, random_start="none")
    assert torch.equal(released, plain)
    for training in (True, False):  # the model's mode is restored, no parameter gradient is touched
        model.train(training)
        ms_pgd(model, x, y, Linf(8 / 255), G, lam=lam, steps=2, step_size=step)
        assert model.training is training and all(p.grad is None for p in model.parameters())


def _mcat_pair(variant: str, **opts):
    m = make("mcat", variant=variant, **opts)
    return m, make("pgd_at")


def test_mcat_code_variant_is_pgd_at_plus_the_etf_term():
    x, _, y = batch()
    for lam in (0.0, 0.2):  # lambda 0: no generator at all; 0.2 (the release): a distance without gradient
        m, p = _mcat_pair("code", lambda_m=lam, hidden=(8,), z_dim=3)
        model = tiny_model()
        if lam:
            m.set_generators(ClassGenerators(C, 3, model.feature_dim, (8,)))
        torch.manual_seed(3)
        a = m.train_attack(model, x, y)
        torch.manual_seed(3)
        b = p.train_attack(model, x, y)
        assert torch.equal(a, b)
        out_m, out_p = m.compute_loss(model, x, a, y), p.compute_loss(model, x, a, y)
        etf = etf_loss(model.head.weight)
        assert out_m["loss"].item() == pytest.approx((out_p["loss"] + 1.0 * etf).item(), rel=1e-6)
        assert m.lam == lam and m.etf_weight == 1.0 and "manifold" not in out_m
    assert m.loss_label == "ce + etf"


def test_mcat_code_variant_keeps_a_float64_model_in_float64():
    """The parity harness's float64 run: the loss (CE + ETF) and MS-PGD's objective are not rounded to float32."""
    x, _, y = batch()
    m = make("mcat", variant="code", hidden=(8,), z_dim=3)
    model = tiny_model().double()
    m.set_generators(ClassGenerators(C, 3, model.feature_dim, (8,)))
    x = x.double()
    a = m.train_attack(model, x, y)
    out = m.compute_loss(model, x, a, y)
    assert out["loss"].dtype == torch.float64
    logits = model(a)
    w = F.normalize(model.head.weight, dim=1)
    etf = ((w @ w.t() - etf_target_gram(C, dtype=torch.float64)) ** 2).mean()
    assert out["loss"].item() == (F.cross_entropy(logits, y) + 1.0 * etf).item()


def test_mcat_paper_variant_without_its_terms_is_pgd_at_and_its_loss_by_hand():
    x, _, y = batch()
    m, p = _mcat_pair("paper", lambda_m=0.0, etf_weight=0.0)
    model = tiny_model()
    torch.manual_seed(3)
    a = m.train_attack(model, x, y)
    torch.manual_seed(3)
    assert torch.equal(a, p.train_attack(model, x, y))
    assert torch.equal(m.compute_loss(model, x, a, y)["loss"], p.compute_loss(model, x, a, y)["loss"])
    m = make("mcat", hidden=(8,), z_dim=3)  # the paper's weights: lambda 0.1, ETF 0.01, d in the outer loss
    G = ClassGenerators(C, 3, model.feature_dim, (8,))
    m.set_generators(G)
    assert (m.lam, m.etf_weight, m.differentiable, m.inner_sign, m.outer_manifold) == (0.1, 0.01, True, 1.0, True)
    torch.manual_seed(4)
    out = m.compute_loss(model, x, a, y)
    logits, feats = model(a, return_features=True)
    torch.manual_seed(4)
    d = manifold_distance(G, feats, class_groups(y), z_dim=3, steps=5, lr=0.1)
    want = F.cross_entropy(logits, y) + 0.1 * d.mean() + 0.01 * etf_loss(model.head.weight)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    out["loss"].backward()  # the manifold term reaches the backbone
    assert model.head.weight.grad is not None and all(p.grad is not None for p in model.parameters())
    assert m.loss_label == "ce + manifold + etf"


def test_mcat_config_variants_and_errors():
    opts = method_options(resolve_config(["method=mcat", "variant=code", "hidden=32,16"]))
    assert opts.hidden == (32, 16) and opts.value("z_dim") == 64 and opts.value("lambda_m") == 0.2
    assert METHODS.get("mcat").Options().value("hidden") == (1024, 1024)
    with pytest.raises(ConfigError, match="variant='other': use paper or code"):
        resolve_config(["method=mcat", "variant=other"])
    with pytest.raises(ConfigError, match="inner_sign=0"):
        resolve_config(["method=mcat", "inner_sign=0"])
    with pytest.raises(ConfigError, match="call method.set_generators"):
        make("mcat").train_attack(tiny_model(), *batch()[::2])
    with pytest.raises(ConfigError, match="crafts its training AEs with MS-PGD"):
        make("mcat", attack=AttackConfig(loss="rw"))
    assert make("mcat", loss="bsl").loss_label == "bsl + manifold + etf"  # any long-tailed loss outside


def test_mcat_fits_its_generators_once_and_resumes_exactly(tmp_path, die_after_checkpoint):
    over = TINY + ["method=mcat", *MCAT_TINY, "epochs=3", "train.deterministic=true", f"out={tmp_path}"]
    straight = train(resolve_config(over + ["name=straight"]))
    path = tmp_path / "straight" / "method" / "mcat-generators.pt"
    stored = io.load_checkpoint(path)
    assert len(stored["losses"]) == 2 and stored["hidden"] == [16, 16]
    assert straight.method.state_dict()["generators_sha256"] == generators_digest(straight.method.generators)
    rows = io.read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert all(r["manifold"] > 0 and r["etf"] > 0 for r in rows)
    with die_after_checkpoint(1, run_name="killed"):
        train(resolve_config(over + ["name=killed"]))
    train(resolve_config(over + ["name=killed"]))
    a, b = (io.load_checkpoint(tmp_path / n / "checkpoints" / "last.pt") for n in ("straight", "killed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    (tmp_path / "killed" / "method" / "mcat-generators.pt").unlink()  # a resumed run needs its own generators
    with pytest.raises(Exception, match="mcat-generators.pt, which is missing"):
        train(resolve_config(over + ["name=killed", "epochs=4"]))


def test_mcat_detached_distance_leaves_training_unchanged(tmp_path):
    """The release's MCAT trains exactly as with lambda 0 (no generator at all): PGD-AT plus the ETF term."""
    over = TINY + ["method=mcat", "variant=code", *MCAT_TINY, "epochs=2", "attack.random_start=none",
                   "train.deterministic=true", f"out={tmp_path}"]
    Trainer(resolve_config(over + ["name=a"])).fit()
    Trainer(resolve_config(over + ["lambda_m=0", "name=b"])).fit()
    wa, wb = (io.load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")["model"] for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "method" / "mcat-generators.pt").exists()
    assert not (tmp_path / "b" / "method").exists()


def test_mcat_trains_and_evaluates_from_the_cli(tmp_path):
    assert main(["train", "method=mcat", *TINY, *MCAT_TINY, "epochs=1", f"out={tmp_path}", "name=run"]) == 0
    assert main(["eval", str(tmp_path / "run"), "attacks=clean,pgd5", "eval.n_samples=20",
                 "eval.chunk_size=20"]) == 0
    result = io.read_json(tmp_path / "run" / "eval" / "best.json")
    assert result["eps"] == pytest.approx(8 / 255) and result["results"]["pgd5"]["accuracy"] >= 0


def test_mcat_clean_stage_starts_training_and_fits_the_generators(tmp_path):
    from ltrobust.methods.mcat import MCAT

    over = TINY + ["method=mcat", *MCAT_TINY, "clean_epochs=2", "epochs=1", f"out={tmp_path}", "name=run"]
    cfg = resolve_config(over)
    (stage,) = MCAT.stages(cfg, method_options(cfg))
    assert stage.name == "clean" and stage.config.method.name == "natural" and stage.config.train.epochs == 2
    with pytest.raises(ConfigError, match="needs its clean stage"):
        Trainer(cfg).fit()  # the stage first: ltrobust.experiments.train runs it
    t = train(cfg)
    clean = io.load_checkpoint(tmp_path / "run" / "clean" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(t.method._init_state[k], clean[k]) for k in clean)
    start = Trainer(resolve_config(over + ["train.lr=1e-12", "name=frozen"]))
    start.build()
    start.method.use_stage("clean", _model_with(start.model, clean))
    start.fit()  # a vanishing lr: the adversarial run ends where the clean stage ended
    last = io.load_checkpoint(tmp_path / "frozen" / "checkpoints" / "last.pt")["model"]
    assert all(torch.allclose(last[k].float(), clean[k].float(), atol=1e-6) for k in clean if "num_batches" not in k)


def _model_with(model: nn.Module, state: dict) -> nn.Module:
    import copy

    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m


# ================================================================================================= presets
FRONTIER_PRESETS = [p for p in list_presets() if p.startswith(("robustlt-", "mcat-"))]


def test_frontier_presets_and_their_reference_numbers():
    assert set(FRONTIER_PRESETS) >= {"robustlt-at-bsl-cifar10lt-wrn28", "robustlt-robal-cifar10lt-wrn28",
                                     "robustlt-cifar10lt-resnet18", "robustlt-digits", "mcat-cifar100lt-resnet18",
                                     "mcat-tinyimagenetlt-resnet18", "mcat-cifar10lt-resnet18",
                                     "mcat-code-cifar100lt-resnet18", "mcat-digits"}
    main_ = resolve_config(["preset=robustlt-at-bsl-cifar10lt-wrn28"])
    assert main_.reference[0]["values"] == {"clean": 77.61, "pgd20": 42.11, "aa": 37.49, "aa.tail_group": 30.7}
    assert (main_.attack.bn_mode, main_.eval.step_size, main_.eval.checkpoint) == ("batch", 1 / 255, "last")
    robal = resolve_config(["preset=robustlt-robal-cifar10lt-wrn28"])
    assert robal.reference[0]["values"]["aa"] == 31.03 and method_options(robal).base_args["tau_p"] == 0.0
    assert resolve_config(["preset=robustlt-cifar10lt-resnet18"]).reference == ()  # not AT-BSL's numbers
    assert resolve_config(["preset=mcat-cifar100lt-resnet18"]).reference[0]["values"] == {"aa": 31.5}
    tiny = resolve_config(["preset=mcat-tinyimagenetlt-resnet18"]).reference[0]["values"]
    assert tiny == {"clean.balanced_accuracy": 42.3, "aa.balanced_accuracy": 22.6, "pgd20.few": 18.9, "aa.few": 16.8}
    code = resolve_config(["preset=mcat-code-cifar100lt-resnet18"])
    assert (code.train.schedule, code.attack.random_start, method_options(code).variant) == ("constant", "none", "code")


@pytest.mark.parametrize("preset", FRONTIER_PRESETS)
def test_frontier_preset_trains_one_tiny_step(preset, tmp_path):
    from ltrobust.attacks.suite import parse_attacks

    cfg = resolve_config([f"preset={preset}"])
    parse_attacks(cfg.eval.attacks, eps=cfg.eval.eps, step_size=cfg.eval.step_size)  # eval names are real
    over = [f"preset={preset}", "dataset=digits-lt", "data.imbalance=10", "model=smallcnn", "model.width=4",
            "epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=16", "train.val_samples=20",
            "train.val_attack_steps=1", "train.progress=false", f"out={tmp_path}", "name=run"]
    if cfg.method.name == "mcat":
        over += ["hidden=8", "z_dim=4", "gen_epochs=1"]
    train(resolve_config(over))
    row = io.read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(row["loss"]) and (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_the_frontier_digits_grid_puts_both_methods_beside_the_seeds():
    from ltrobust.experiments.sweep import load_grid, plan_runs

    plans = plan_runs(load_grid("digits-frontier", ["out=/tmp/unused"]))
    names = [p.cfg.method.name for p in plans]
    assert {"natural", "pgd_at", "at_bsl", "robal", "reat", "taet", "self_distill"} <= set(names)
    assert {method_options(p.cfg).base for p in plans if p.cfg.method.name == "robustlt"} == {
        "pgd_at", "at_bsl", "robal", "reat", "taet"}
    assert sorted(method_options(p.cfg).variant for p in plans if p.cfg.method.name == "mcat") == ["code", "paper"]
