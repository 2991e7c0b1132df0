"""The seeds' other defenses and settings (issue 17, second half): adt, las_at, fgsm_at, the C&W-l2 attack,
``attack.loss``, the ``linear`` profile and ``data.indices_file``.

Each method's AE rule or loss is checked against a hand computation from its paper on a linear model,
whose input gradient is ``W^T (softmax(z) - e_y)``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust import io
from ltrobust.attacks import Linf, parse_attack, pgd, run_attack
from ltrobust.attacks.cw_l2 import cw_l2_minimal
from ltrobust.cli import main
from ltrobust.config import AttackConfig, DataConfig, resolve_config
from ltrobust.data import build_data
from ltrobust.data.profiles import class_counts
from ltrobust.errors import ConfigError, DataError
from ltrobust.methods.adt import tanh_gaussian_neg_log_prob
from ltrobust.methods.las_at import smoothed_cross_entropy
from ltrobust.registry import LOSSES, METHODS

COUNTS = [40, 20, 10]
C = len(COUNTS)
TINY = ["dataset=digits-lt", "model=mlp", "model.width=16", "train.batch_size=32", "train.progress=false",
        "train.val_every=0", "train.precision=fp32", "attack.steps=2", "train.max_steps_per_epoch=2", "epochs=1"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(name: str, loss: str = "ce", attack: AttackConfig | None = None, **options):
    cls = METHODS.get(name)
    return cls(COUNTS, attack or AttackConfig(), LOSSES.get(loss)(COUNTS), cls.Options(**options), total_epochs=2)


def linear_model(seed: int = 0, d: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, C))


def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.8 * torch.rand(n, 1, 4, 4, generator=g)  # away from the [0, 1] box
    y = torch.arange(n) % C
    return x, y


def input_grad_by_hand(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE / d x of a linear model: W^T (softmax(Wx + b) - e_y), per image."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    z = x.flatten(1) @ w.t() + b
    return ((z.softmax(1) - F.one_hot(y, C)) @ w).view_as(x)


# ------------------------------------------------------------------------------------------ FGSM-AT
def test_fgsm_at_is_one_eps_step_from_the_clean_image():
    model, (x, y) = linear_model(), batch()
    eps = 8 / 255
    x_adv = make("fgsm_at", attack=AttackConfig(eps=eps)).train_attack(model, x, y)
    assert torch.allclose(x_adv, x + eps * input_grad_by_hand(model, x, y).sign(), atol=1e-7)
    # step_factor scales the step, the ball still bounds it; fgsm_rs starts at random instead
    big = make("fgsm_at", attack=AttackConfig(eps=eps), step_factor=1.25).train_attack(model, x, y)
    assert torch.allclose(big, x_adv, atol=1e-7)
    torch.manual_seed(0)
    rs = make("fgsm_rs", attack=AttackConfig(eps=eps)).train_attack(model, x, y)
    assert not torch.allclose(rs, x_adv)


def test_fgsm_at_and_fgsm_rs_starts_and_batchnorm_modes():
    """fgsm_at takes random_start=false (its presets' setting; issue 26: it inherited fgsm_rs' refusal) and the
    default, refuses the ignored normal start; fgsm_rs refuses none / normal. fgsm_rs attacks in train mode by
    default (Wong et al.'s code: batch statistics, running statistics updated by the attack), fgsm_at in eval."""
    for start in ("none", "uniform"):
        assert make("fgsm_at", attack=AttackConfig(random_start=start)).start == "none"
    for name, bad in (("fgsm_at", "normal"), ("fgsm_rs", "none"), ("fgsm_rs", "normal")):
        with pytest.raises(ConfigError, match="would be ignored"):
            make(name, attack=AttackConfig(random_start=bad))
    assert make("fgsm_rs").bn_mode == "train" and make("fgsm_at").bn_mode == "eval"
    assert make("fgsm_rs", attack=AttackConfig(bn_mode="eval")).bn_mode == "eval"

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, C)).train()
    x, y = batch()
    for name, changed in (("fgsm_rs", True), ("fgsm_at", False)):
        before = net[2].running_mean.clone()
        make(name).train_attack(net, x, y)
        assert (not torch.equal(net[2].running_mean, before)) is changed, name
        assert net.training
    # in train mode the step follows the gradient of the batch-statistics forward pass
    m = make("fgsm_at", attack=AttackConfig(bn_mode="train"))
    xr = x.clone().requires_grad_(True)
    probe = __import__("copy").deepcopy(net)
    (g,) = torch.autograd.grad(F.cross_entropy(probe(xr), y, reduction="sum"), xr)
    assert torch.allclose(m.train_attack(net, x, y), (x + 8 / 255 * g.sign()).clamp(0, 1), atol=1e-7)


# --------------------------------------------------------------------------------------- attack.loss
def test_attack_loss_is_chosen_apart_from_the_outer_loss():
    model, (x, y) = linear_model(), batch()
    m = make("pgd_at", loss="bsl", attack=AttackConfig(loss="rw", loss_args={"power": 0.5}))
    objective, kw = m.attack_objective(x, y)
    z = model(x).detach()
    w = torch.tensor(COUNTS, dtype=torch.float64) ** -0.5
    w = (w * C / w.sum()).float()  # RWS weights, summing to C (Li et al., arXiv 2023, Table 2)
    ce = -z.log_softmax(1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(objective(z, y, **kw), w[y] * ce, atol=1e-6)
    # the outer loss stays the balanced softmax
    log_pi = torch.log(torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS))
    assert torch.allclose(m.outer_loss(z, y), F.cross_entropy(z + log_pi, y), atol=1e-6)
    # the AEs maximise the attack loss: PGD on rw equals PGD on the weighted_ce objective with those weights
    torch.manual_seed(3)
    a = m.train_attack(model, x, y)
    torch.manual_seed(3)
    b = pgd(model, x, y, Linf(8 / 255), steps=10, step_size=2 / 255, objective="weighted_ce",
            objective_kwargs={"weights": w})
    assert torch.allclose(a, b, atol=1e-6)


def test_class_weights_in_the_attack_leave_linf_pgd_unchanged():
    """RW / RWS / ENR in the attack (REAT Table 2) multiply each image's loss by a positive per-class constant,
    which l_inf PGD's sign step cannot see: the AEs equal those of the CE attack (BRW, a logit shift, differs)."""
    model, (x, y) = linear_model(), batch()
    advs = {}
    for name, args in (("", {}), ("rw", {}), ("rw", {"power": 0.5}), ("cb", {"beta": 0.9}), ("bsl", {})):
        torch.manual_seed(4)
        m = make("pgd_at", loss="bsl", attack=AttackConfig(loss=name, loss_args=args))
        advs[(name, tuple(args.items()))] = m.train_attack(model, x, y)
    ce = advs[("", ())]
    for key, adv in advs.items():
        assert torch.equal(adv, ce) is (key[0] != "bsl"), key


def test_attack_loss_config_and_methods_with_their_own_objective():
    cfg = resolve_config(["method=pgd_at", "loss=bsl", "attack.loss=cb", "attack.loss_args={beta: 0.99}"])
    assert cfg.attack.loss == "cb" and dict(cfg.attack.loss_args) == {"beta": 0.99}
    with pytest.raises(ConfigError, match="attack loss 'rw' has no option 'pwr'"):
        resolve_config(["attack.loss=rw", "attack.loss_args={pwr: 0.5}"])
    with pytest.raises(ConfigError, match="attack.loss is empty"):
        resolve_config(["attack.loss_args={power: 0.5}"])
    for name in ("trades", "at_bsl", "robal", "reat"):
        with pytest.raises(ConfigError, match="attack.loss='rw' does not apply"):
            make(name, attack=AttackConfig(loss="rw"))


# -------------------------------------------------------------------------------- profile and indices
def test_linear_profile_decays_linearly_to_n_max_over_ir():
    assert class_counts("linear", 500, 10, 100) == [500, 445, 390, 335, 280, 225, 170, 115, 60, 5]
    assert class_counts("linear", 500, 200, 100)[-1] == 5 and class_counts("linear", 124, 10, 1) == [124] * 10
    cfg = resolve_config(["data.profile=linear", "imbalance=10"])
    assert build_data(cfg.data).class_counts == class_counts("linear", 124, 10, 10)
    assert "linear-ir10" in cfg.run_name()


def test_indices_file_reads_a_published_split_exactly(tmp_path):
    ref = build_data(DataConfig(imbalance=10, selection_seed=3))
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(ref.manifest))
    again = build_data(DataConfig(imbalance=50, indices_file=str(path)))  # profile / IR / seed are not used
    assert again.manifest["indices"]["train"] == ref.manifest["indices"]["train"]
    assert again.manifest["indices"]["test"] == ref.manifest["indices"]["test"]
    assert again.class_counts == ref.class_counts and again.manifest["profile"] == "indices_file"
    # a text file of training indices: exactly those images, grouped by class
    chosen = list(range(0, 1200, 7))
    txt = tmp_path / "split.txt"
    txt.write_text("# unseeded split\n" + "\n".join(map(str, chosen)))
    d = build_data(DataConfig(indices_file=str(txt), val_per_class=0))
    got = sorted(i for idx in d.manifest["indices"]["train"].values() for i in idx)
    assert got == chosen
    np.save(tmp_path / "split.npy", np.array(chosen))
    npy = build_data(DataConfig(indices_file=str(tmp_path / "split.npy"), val_per_class=0))
    assert npy.class_counts == d.class_counts
    txt.write_text("5\n5\n")
    with pytest.raises(DataError, match="lists train index 5 2 times"):
        build_data(DataConfig(indices_file=str(txt)))
    txt.write_text("999999\n")
    with pytest.raises(DataError, match=r"train index 999999 is outside 0\.\.\d+"):
        build_data(DataConfig(indices_file=str(txt)))


def _published(tmp_path, test, train=None):
    ref = build_data(DataConfig(imbalance=10))
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ref.manifest["indices"]["train"] if train is None else train, "test": test}))
    return path, ref


@pytest.mark.parametrize("case, match", [
    ("test duplicates", r"lists test index 0 2 times: each image once"),
    ("test missing a class", r"selects no test image of class 3 \(3\): every class needs test images"),
    ("test empty", r"'test' lists no index; list the test images, or leave 'test' out"),
    ("train empty", r"'train' lists no index"),
    ("negative", r"'test' holds the negative index -1"),
    ("class keys not numbers", r"its keys must be class numbers and its values lists, got keys \['cat'\]"),
    ("ragged", r"'train' must be a flat list of integer indices"),
])
def test_indices_file_test_lists_must_be_complete_and_distinct(tmp_path, case, match):
    """Issue 29 items 5 and 11: duplicates, a missing class or no entry in a published split's test list were
    accepted (per-class accuracies then counted an image twice or had no image of a class); a JSON of the wrong
    shape gave a traceback. Each is a DataError naming the file, before any image is decoded."""
    labels = build_data(DataConfig()).test.labels.numpy()
    tests = {"test duplicates": [0, 0] + list(range(1, 60)), "test missing a class": np.flatnonzero(labels != 3).tolist(),
             "test empty": [], "negative": [-1, 2]}
    trains = {"train empty": [], "class keys not numbers": {"cat": [1, 2]}, "ragged": [[1, 2], [3]]}
    path, _ = _published(tmp_path, tests.get(case, list(range(60))), trains.get(case))
    with pytest.raises(DataError, match=str(path) + ".*" + match):
        build_data(DataConfig(indices_file=str(path)))


def test_indices_file_is_read_before_any_image(tmp_path, monkeypatch):
    """Issue 30 item 4: a bad indices file fails before the data set's reader decodes anything."""
    from ltrobust.data import lt

    path, _ = _published(tmp_path, [0, 0, 1])
    monkeypatch.setattr(lt, "get_spec", lambda name, real=lt.get_spec: _no_reader(real(name)))
    with pytest.raises(DataError, match="lists test index 0 2 times"):
        build_data(DataConfig(indices_file=str(path)))


def _no_reader(spec):
    from dataclasses import replace

    def reader(cfg):
        raise AssertionError("the data set was read before the indices file was checked")

    return replace(spec, reader=reader)


# -------------------------------------------------------------------------------------------- C&W-l2
def test_cw_l2_finds_the_closed_form_minimal_perturbation_of_a_linear_model():
    model, (x, _) = linear_model(d=16), batch(n=8)
    with torch.no_grad():
        z = model(x)
        y = z.argmax(1)
        w = model[1].weight
        # the distance to the nearest decision boundary: min_{j != y} (z_y - z_j) / ||w_y - w_j||
        dist = torch.stack([(z.gather(1, y[:, None]).squeeze(1) - z[:, j]) / (w[y] - w[j]).norm(dim=1)
                            for j in range(C)], 1).masked_fill(F.one_hot(y, C).bool(), float("inf")).amin(1)
    before = [p.grad for p in model.parameters()]
    x_adv, norm = cw_l2_minimal(model, x, y, steps=300, binary_steps=9)
    assert all(p.grad is None for p in model.parameters()) and before == [None, None]
    assert torch.isfinite(norm).all()
    assert ((norm - dist).abs() / dist).max() < 0.05
    assert torch.allclose((x_adv - x).flatten(1).norm(dim=1), norm, atol=1e-5)
    assert (model(x_adv).argmax(1) != y).all()
    # as a bounded attack of the suite: broken exactly where the minimal perturbation fits in eps
    eps = float(dist.median())
    spec = parse_attack("cw_l2-300", l2_eps=eps)
    assert (spec.family, spec.norm, spec.steps, spec.eps) == ("cw_l2", "l2", 300, eps)
    adv = run_attack(spec, model, x, y)
    broken = model(adv).argmax(1) != y
    far = (dist - eps).abs() > 0.05 * dist
    assert torch.equal(broken[far], (dist <= eps)[far])
    assert torch.equal(adv[~broken], x[~broken])


def test_cw_l2_names():
    """cw_l2 is the authors' setting (up to 10,000 Adam iterations per round); cw_l2-100 the fast one (issue 26)."""
    assert parse_attack("cw_l2").steps == 10_000 and parse_attack("cw_l2").norm == "l2"
    assert parse_attack("cw_l2-100").steps == 100 and parse_attack("cw_l2-100").family == "cw_l2"
    assert parse_attack("cw100-l2").family == "cw" and parse_attack("pgd20").norm == "linf"
    with pytest.raises(ConfigError):
        parse_attack("cw_l3")


def test_cw_l2_aborts_a_round_as_the_authors_code():
    """The authors' check runs at iterations 0, k, 2k, ... (``iteration % (MAX // 10) == 0``), before the iterate is
    recorded: a round whose loss never falls ends after k + 1 forward passes (the old ``(it + 1) % k`` took 2k)."""

    class Stuck(nn.Module):  # constant logits: the loss c * margin never falls, no point is ever broken
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return torch.tensor([[2.0, 0.0, 0.0]]).expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]

    model, (x, _) = Stuck(), batch(n=4)
    y = torch.zeros(4, dtype=torch.long)
    _, norm = cw_l2_minimal(model, x, y, steps=100, binary_steps=1)
    assert model.calls == 10 + 1 and torch.isinf(norm).all()
    model.calls = 0
    cw_l2_minimal(model, x, y, steps=100, binary_steps=2, abort_early=False)
    assert model.calls == 200


# ---------------------------------------------------------------------------------------------- ADT
def test_adt_entropy_term_is_the_tanh_gaussian_log_density():
    torch.manual_seed(0)
    mu, sigma = 0.5 * torch.randn(50), 0.5 * F.softplus(torch.randn(50))  # away from tanh saturation
    noise = torch.randn(50)
    v = torch.tanh(mu + sigma * noise)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mu, sigma), [torch.distributions.TanhTransform()])
    assert torch.allclose(tanh_gaussian_neg_log_prob(noise, sigma, v), -dist.log_prob(v), atol=1e-3)


def test_adt_inner_loop_is_the_authors_adam_on_never_zeroed_gradients():
    """The authors' adt_exp.py, written out: Adam(betas=(0, 0)) on mu and rho, one backward per draw of the
    batch-mean objective, the .grad never zeroed between steps, rho from 0 (issue 26). The method's default
    (inner_grad=cumulative, init_rho=0) gives the same distribution; per_step does not."""
    model, (x, y) = linear_model(), batch()
    eps, lr, lam, steps, draws = 8 / 255, 0.3, 0.01, 3, 2
    attack = AttackConfig(eps=eps, steps=steps)
    m = make("adt", attack=attack, samples=draws, inner_lr=lr, entropy_weight=lam)
    torch.manual_seed(5)
    mu, rho = m.distribution(model, x, y)

    torch.manual_seed(5)
    mean = torch.zeros_like(x, requires_grad=True)
    var = torch.zeros_like(x, requires_grad=True)
    adam = torch.optim.Adam([mean, var], lr=lr, betas=(0.0, 0.0))
    for _ in range(steps):
        for _ in range(draws):
            std = F.softplus(var)
            noise = torch.randn_like(x)
            v = torch.tanh(mean + noise * std)
            neg_logp = noise ** 2 / 2 + (std + 1e-8).log() + (1 - v ** 2 + 1e-8).log()
            (-F.cross_entropy(model((x + eps * v).clamp(0, 1)), y) - lam * neg_logp.mean()).backward()
        adam.step()  # no zero_grad: the gradients of every draw so far
    assert torch.allclose(mu, mean.detach(), atol=1e-5) and torch.allclose(rho, var.detach(), atol=1e-5)
    torch.manual_seed(5)
    mu2, _ = make("adt", attack=attack, samples=draws, inner_lr=lr, entropy_weight=lam,
                  inner_grad="per_step").distribution(model, x, y)
    assert not torch.allclose(mu2, mu, atol=1e-3)
    with pytest.raises(ConfigError, match="inner_grad"):
        make("adt", inner_grad="momentum")


def test_adt_per_step_inner_step_is_a_signed_ascent_on_mu_and_rho():
    model, (x, y) = linear_model(), batch()
    eps, lr = 8 / 255, 0.3
    m = make("adt", attack=AttackConfig(eps=eps, steps=1), samples=1, inner_lr=lr, entropy_weight=0.0,
             inner_grad="per_step", init_rho=-5.0)
    torch.manual_seed(5)
    mu, rho = m.distribution(model, x, y)
    torch.manual_seed(5)
    noise = torch.randn_like(x)  # the one draw the step used
    sigma = F.softplus(torch.tensor(-5.0))
    v = torch.tanh(sigma * noise)
    g = input_grad_by_hand(model, x + eps * v, y)  # dL/du = eps (1 - v^2) g, dL/drho = dL/du * noise * sigma'
    assert torch.equal(mu, lr * g.sign())
    assert torch.allclose(rho, -5.0 + lr * (g * noise).sign())
    # with the entropy term, a flat loss lets only the entropy move sigma: up, towards the uniform box
    flat = nn.Sequential(nn.Flatten(), nn.Linear(16, C))
    nn.init.zeros_(flat[1].weight)
    m2 = make("adt", attack=AttackConfig(eps=eps, steps=3), samples=2, inner_lr=lr, entropy_weight=0.01,
              inner_grad="per_step", init_rho=-5.0)
    _, rho2 = m2.distribution(flat, x, y)
    assert torch.allclose(rho2, torch.full_like(x, -5.0 + 3 * lr))


def test_adt_aes_stay_in_the_ball():
    model, (x, y) = linear_model(), batch()
    x_adv = make("adt", attack=AttackConfig(eps=8 / 255, steps=3)).train_attack(model, x, y)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(x_adv, x)
    with pytest.raises(ConfigError, match="l_inf"):
        make("adt", attack=AttackConfig(norm="l2", eps=0.5))


# ------------------------------------------------------------------------------------------- LAS-AT
class Ctx:
    """The parts of the trainer that las_at's setup reads."""

    def __init__(self) -> None:
        self.cfg = resolve_config(["model=mlp", "model.width=8"])
        self.data = type("D", (), {"channels": 1, "mean": (0.5,), "std": (0.5,), "image_size": 4})()
        self.device = torch.device("cpu")
        self.optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05)


def test_las_at_label_smoothing_by_hand():
    z, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    lp = z - torch.log(torch.exp(z).sum())
    by_hand = -(0.7 * lp[0, 0] + 0.15 * lp[0, 1] + 0.15 * lp[0, 2])
    assert torch.allclose(smoothed_cross_entropy(z, y, 0.7), by_hand)
    assert torch.allclose(smoothed_cross_entropy(z, y, 1.0), F.cross_entropy(z, y))


def test_las_at_strategy_attack_is_pgd_with_each_images_budget():
    model, (x, y) = linear_model(), batch()
    m = make("las_at")
    unit = 1 / 255
    # one strategy for every image: the same as pgd on that (eps, iterations, step)
    acts = [torch.full((6,), 5), torch.full((6,), 2), torch.full((6,), 1)]  # eps 8/255, 5 iterations, step 2/255
    torch.manual_seed(0)
    a = m.strategy_attack(model, x, y, acts)
    torch.manual_seed(0)
    b = pgd(model, x, y, Linf(8 * unit), steps=5, step_size=2 * unit)
    assert torch.allclose(a, b, atol=1e-7)
    # per-image budgets: each AE inside its own ball
    eps_idx = torch.tensor([0, 11, 3, 0, 11, 7])
    acts = [eps_idx, torch.tensor([0, 10, 4, 2, 0, 1]), torch.tensor([3, 0, 1, 2, 3, 0])]
    adv = m.strategy_attack(model, x, y, acts)
    eps = (torch.tensor(m.options.eps_choices)[eps_idx] * unit).view(-1, 1, 1, 1)
    assert ((adv - x).abs() <= eps + 1e-6).all() and ((adv - x).abs().amax((1, 2, 3)) > 0.5 * eps.flatten()).all()


def test_las_at_policy_update_is_reinforce_on_the_reward():
    model, (x, y) = linear_model(), batch()
    m = make("las_at", reward_b=0.0, reward_c=0.0, clip_grad_norm=1e9, policy_lr=0.1, strategy_model="target")
    m.setup(Ctx())
    before = {k: v.clone() for k, v in m.strategy.state_dict().items()}
    torch.manual_seed(7)
    m.policy_step(model, x, y)
    # by hand: the same draws, R1 = clamp(CE(f(x_adv), y), 0, 10), loss = -R1 * sum_heads mean_i log pi(a_i|x_i)
    ref = make("las_at", reward_b=0.0, reward_c=0.0, strategy_model="target")
    ref.setup(Ctx())
    ref.strategy.load_state_dict(before)
    torch.manual_seed(7)
    ref.strategy.train()
    dists = ref.policy(x)
    acts = [d.sample() for d in dists]
    x_adv = ref.strategy_attack(model, x, y, acts)
    r1 = F.cross_entropy(model(x_adv), y).clamp(0, 10).detach()
    assert torch.allclose(m.last_reward, r1)
    log_pi = sum(d.log_prob(a).mean() for d, a in zip(dists, acts))
    grads = torch.autograd.grad(-r1 * log_pi, list(ref.strategy.parameters()))
    for (name, p), g in zip(m.strategy.named_parameters(), grads):
        assert torch.allclose(p.detach(), before[name] - 0.1 * g, atol=1e-6), name


def test_las_at_reward_r2_r3_are_the_updated_copys_accuracies():
    import copy

    model, (x, y) = linear_model(), batch()
    x_adv = (x + 8 / 255 * torch.randn_like(x).sign()).clamp(0, 1)
    m = make("las_at", reward_a=0.5, strategy_model="target")
    ctx = Ctx()
    m.setup(ctx)
    torch.manual_seed(2)
    r = m.reward(model, x, x_adv, y)
    # by hand: R1 on the model; a copy takes one SGD step (the target's lr, momentum 0.9, weight decay) on the
    # smoothed CE of the AEs; R2 = 4 x its PGD-10 accuracy (2 restarts), R3 = 2 x its clean accuracy
    r1 = F.cross_entropy(model(x_adv), y).clamp(0, 10)
    proxy = copy.deepcopy(model)
    opt = torch.optim.SGD(proxy.parameters(), lr=0.05, momentum=0.9, weight_decay=ctx.cfg.train.weight_decay)
    smoothed_cross_entropy(proxy(x_adv), y, 0.7).backward()
    opt.step()
    torch.manual_seed(2)
    x_pgd = pgd(proxy, x, y, Linf(8 / 255), steps=10, step_size=2 / 255, restarts=2, bn_mode="train")
    r2 = 4 * (proxy(x_pgd).argmax(1) == y).float().mean()
    r3 = 2 * (proxy(x).argmax(1) == y).float().mean()
    assert torch.allclose(r, 0.5 * r1 + r2 + r3, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), linear_model().parameters()))  # untouched


def test_las_at_strategy_network_and_reward_batchnorm_follow_the_authors_code():
    """The authors' strategy network is a fixed ResNet-18 (ResNet18_Strategy) whatever the target; their R2 PGD
    runs on the updated copy left in train mode, whose running statistics then serve R2 / R3 (issue 26)."""
    import copy

    ctx = Ctx()
    ctx.cfg = resolve_config(["model=smallcnn", "model.width=4"])
    ctx.data = type("D", (), {"channels": 1, "mean": (0.5,), "std": (0.5,), "image_size": 8})()
    official, target = make("las_at"), make("las_at", strategy_model="target")
    official.setup(ctx)
    target.setup(ctx)
    assert official.strategy.feature_dim == 512 and target.strategy.feature_dim == 16  # ResNet-18 at width 64
    assert official.strategy(torch.rand(2, 1, 8, 8)).shape == (2, sum(official.sizes))
    with pytest.raises(ConfigError, match="reward_bn_mode"):
        make("las_at", reward_bn_mode="frozen")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, C)).train()
    x, y = batch(n=12)
    x_adv = (x + 8 / 255 * torch.randn_like(x).sign()).clamp(0, 1)
    rewards = {}
    for mode in ("train", "eval"):
        m = make("las_at", reward_a=0.0, reward_c=0.0, strategy_model="target", reward_bn_mode=mode)
        m.setup(Ctx())
        torch.manual_seed(3)
        rewards[mode] = m.reward(model, x, x_adv, y)
        proxy = copy.deepcopy(model).train()  # by hand: one SGD step, PGD-10 x 2 restarts in `mode`, R2 in eval
        opt = torch.optim.SGD(proxy.parameters(), lr=0.05, momentum=0.9, weight_decay=Ctx().cfg.train.weight_decay)
        smoothed_cross_entropy(proxy(x_adv), y, 0.7).backward()
        opt.step()
        torch.manual_seed(3)
        x_pgd = pgd(proxy, x, y, Linf(8 / 255), steps=10, step_size=2 / 255, restarts=2, bn_mode=mode)
        proxy.eval()
        with torch.no_grad():
            assert torch.allclose(rewards[mode], 4 * (proxy(x_pgd).argmax(1) == y).float().mean()), mode
    assert model.training


# --------------------------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("method", ["fgsm_at", "adt", "las_at"])
def test_new_method_trains_one_tiny_step_through_the_cli(method, tmp_path):
    extra = ["method.interval=1"] if method == "las_at" else []
    assert main(["train", f"method={method}", *TINY, *extra, f"out={tmp_path}", "name=run"]) == 0
    row = io.read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(row["loss"])
    if method == "las_at":
        state = io.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["method"]
        assert state["step_count"] == 2 and "strategy" in state


def test_attack_loss_and_cw_l2_through_the_cli(tmp_path):
    assert main(["train", "method=pgd_at", "loss=bsl", "attack.loss=rw", *TINY, f"out={tmp_path}", "name=run"]) == 0
    assert main(["eval", str(tmp_path / "run"), "attacks=clean,cw_l2-20", "eval.n_samples=20",
                 "eval.chunk_size=20"]) == 0


# -------------------------------------------------------------------------- TAET Table 3: ViT weights
def test_vit_loads_a_local_pretrained_file_with_timms_loader(tmp_path):
    pytest.importorskip("timm")
    from ltrobust.models.base import build_model
    from ltrobust.registry import MODELS

    small = dict(num_classes=7, width=32, depth=2, patch_size=8)
    src = MODELS.build("vit_b16", image_size=32, **small)
    path = tmp_path / "vit.pth"  # a timm-style checkpoint: its own classifier is dropped
    torch.save({"state_dict": {**src.backbone.state_dict(), "head.weight": torch.zeros(5, 32)}}, path)
    same = MODELS.build("vit_b16", image_size=32, pretrained=str(path), **small)
    pairs = zip(src.backbone.state_dict().values(), same.backbone.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    bigger = MODELS.build("vit_b16", image_size=64, pretrained=str(path), **small)  # positional grid resampled
    assert bigger.backbone.pos_embed.shape == (1, 65, 32)
    assert torch.equal(bigger.backbone.blocks[1].mlp.fc1.weight, src.backbone.blocks[1].mlp.fc1.weight)
    with pytest.raises(ConfigError, match="does not exist"):
        MODELS.build("vit_b16", image_size=32, pretrained=str(tmp_path / "none.pth"), **small)
    with pytest.raises(ConfigError, match="does not apply to 'mlp'"):
        build_model(resolve_config(["model=mlp", f"model.pretrained={path}"]).model, 10, 1, None, None, 8)


def test_las_at_resumes_exactly_with_its_strategy_network(tmp_path, die_after_checkpoint):
    from ltrobust.experiments import train

    over = TINY + ["method=las_at", "method.interval=1", "epochs=3", "train.deterministic=true", f"out={tmp_path}"]
    straight = train(resolve_config(over + ["name=straight"]))
    with die_after_checkpoint(1, run_name="killed"):
        train(resolve_config(over + ["name=killed"]))
    resumed = train(resolve_config(over + ["name=killed"]))
    assert resumed.method.step_count == straight.method.step_count == 6
    a, b = (io.load_checkpoint(tmp_path / n / "checkpoints" / "last.pt") for n in ("straight", "killed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["method"]["strategy"][k], b["method"]["strategy"][k]) for k in a["method"]["strategy"])


@pytest.mark.parametrize("name", ["adt", "las_at", "fgsm_at"])
@pytest.mark.parametrize("training", [True, False])
def test_new_method_keeps_the_model_mode_the_ball_and_parameter_grads(name, training):
    model, (x, y) = linear_model(), batch()
    m = make(name, **({"strategy_model": "target"} if name == "las_at" else {}))
    if name == "las_at":
        m.setup(Ctx())
    model.train(training)
    x_adv = m.train_attack(model, x, y)
    assert model.training is training
    eps = 14 / 255 if name == "las_at" else 8 / 255  # LAS-AT's strategy picks eps up to 14/255 (its space)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x) and all(p.grad is None for p in model.parameters())


def test_the_digits_sweep_covers_every_registered_method():
    from ltrobust.experiments.sweep import load_grid, plan_runs

    plans = plan_runs(load_grid("digits-all-methods", ["out=/tmp/unused"]))
    assert {p.cfg.method.name for p in plans} == set(METHODS.names())
