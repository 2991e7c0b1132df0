"""The long-tailed AT methods (at_bsl, robal, reat, self_distill, taet) against their papers' equations.

Each loss is recomputed here by hand (explicit loops over samples and classes, the papers' own form of
the equation) on a tiny model with fixed weights and compared with the method's ``compute_loss``; then
the identities (RoBal with every re-balancing term off is CE on ``s * cos``, TAET with beta = gamma = 0
on one class is ``alpha * mean CE``, self-distillation with alpha 0 is AT-BSL, ...) and, at the end,
every paper preset trains one tiny step on CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust import io
from ltrobust.attacks import pgd
from ltrobust.attacks.threat import Linf
from ltrobust.config import AttackConfig, list_presets, resolve_config
from ltrobust.experiments import train
from ltrobust.training.trainer import Trainer
from ltrobust.errors import ConfigError
from ltrobust.registry import LOSSES, METHODS

from lt_fixtures import COUNTS, C, batch, tiny_model  # tests/lt_fixtures.py (tests/ is on sys.path)

TINY = ["dataset=digits-lt", "model=mlp", "model.width=16", "train.batch_size=32", "train.progress=false",
        "train.val_every=0", "train.precision=fp32", "attack.steps=2", "train.max_steps_per_epoch=2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(name: str, loss: str = "ce", counts=COUNTS, attack: AttackConfig | None = None, total_epochs: int = 10,
         loss_args: dict | None = None, **options):
    cls = METHODS.get(name)
    loss_obj = LOSSES.get(loss)(list(counts), options=loss_args or {}, total_epochs=total_epochs)
    return cls(list(counts), attack or AttackConfig(), loss_obj, cls.Options(**options), total_epochs=total_epochs)


def log_softmax_row(z: torch.Tensor) -> torch.Tensor:
    return z - torch.log(torch.exp(z).sum())


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """mean_i sum_c p_ic (log p_ic - log q_ic), p = softmax(p_logits), by hand."""
    total = 0.0
    for i in range(p_logits.shape[0]):
        lp, lq = log_softmax_row(p_logits[i]), log_softmax_row(q_logits[i])
        total = total + (lp.exp() * (lp - lq)).sum()
    return total / p_logits.shape[0]


def ce_by_hand(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([-log_softmax_row(z[i])[y[i]] for i in range(len(y))])


def log_pi() -> torch.Tensor:
    n = torch.tensor(COUNTS, dtype=torch.float64)
    return torch.log(n / n.sum()).float()


# ----------------------------------------------------------------------------------------- AT-BSL
def test_at_bsl_loss_is_balanced_softmax_of_adversarial_logits():
    model, (x, x_adv, y) = tiny_model(), batch()
    m = make("at_bsl", tau=0.7)
    out = m.compute_loss(model, x, x_adv, y)
    z = model(x_adv).detach()
    expected = ce_by_hand(z + 0.7 * log_pi(), y).mean()  # CE(z + tau log pi, y)
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-6)
    assert m.attack_objective(x, y) == ("ce", {})


def test_at_bsl_refuses_settings_it_would_ignore():
    with pytest.raises(ConfigError, match="ldam"):
        make("at_bsl", loss="ldam")
    with pytest.raises(ConfigError, match="tau"):
        make("at_bsl", loss="bsl", loss_args={"tau": 0.5}, tau=1.0)
    with pytest.raises(ConfigError, match="loss_mode"):
        make("at_bsl", attack=AttackConfig(loss_mode="inner"))
    make("at_bsl", loss="bsl", loss_args={"tau": 0.5}, tau=0.5)  # consistent: fine


# ------------------------------------------------------------------------------------ all methods
@pytest.mark.parametrize("name", ["at_bsl", "robal", "reat", "self_distill", "taet"])
@pytest.mark.parametrize("training", [True, False])
def test_training_aes_stay_in_the_ball_and_leave_the_model_mode(name, training):
    model, (x, _, y) = tiny_model("cosine" if name == "robal" else "linear"), batch()
    m = make(name, total_epochs=10, **({"stage1_epochs": 0} if name == "taet" else {}))
    model.train(training)
    x_adv = m.train_attack(model, x, y)
    assert model.training is training and all(mod.training is training for mod in model.modules())
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)
    if name == "robal":
        assert m.deployed(model).training is training


# ------------------------------------------------------------------------------------------ RoBal
def cosines_by_hand(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    f = model.features(x).detach()
    w = model.head.weight.detach()
    w = w / (w.norm(dim=1, keepdim=True) + model.head.gamma)
    return (f / f.norm(dim=1, keepdim=True)) @ w.t()


def robal_l1_by_hand(cos: torch.Tensor, y: torch.Tensor, s: float, m0: float, tau_b: float, tau_m: float):
    """Wu et al., CVPR 2021, Eq. 9 (second line) with the pair margins of Eq. 10."""
    n, n_min = COUNTS, min(COUNTS)
    total = 0.0
    for i in range(len(y)):
        yi = int(y[i])
        acc = 1.0
        for c in range(C):
            if c == yi:
                continue
            m_yc = tau_b / s * math.log(n[c] / n[yi]) + tau_m / s * math.log(n[yi] / n_min) + m0
            acc = acc + torch.exp(s * (cos[i, c] - cos[i, yi] + m_yc))
        total = total + torch.log(acc)
    return total / len(y)


def test_robal_loss_is_eq_9_10_plus_alpha_kl_eq_12():
    model, (x, x_adv, y) = tiny_model("cosine"), batch()
    o = dict(m0=0.1, tau_b=1.5, tau_m=0.3, alpha=6.0)
    out = make("robal", **o).compute_loss(model, x, x_adv, y)
    cos_adv, cos_nat = cosines_by_hand(model, x_adv), cosines_by_hand(model, x)
    l1 = robal_l1_by_hand(cos_adv, y, 10.0, o["m0"], o["tau_b"], o["tau_m"])
    kl = kl_rows(cos_nat, cos_adv)  # KL(p(cos(x)) || p(cos(x'))), scale 1
    assert torch.allclose(out["loss_margin"], l1, atol=1e-5)
    assert torch.allclose(out["kl"], kl, atol=1e-6)
    assert torch.allclose(out["loss"].detach(), l1 + 6.0 * kl, atol=1e-5)


def test_robal_four_forwards_are_the_codes_batchnorm_statistics():
    """forwards=4: the authors' add_reg_train forwards x' (L_1), x (a clean CE of weight 0), x and x' (the KL): the
    same loss and gradients as 2 forwards, and BatchNorm's running statistics take the batches adv, clean, clean, adv."""

    class BNCos(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4, momentum=0.5)
            from ltrobust.models.heads import CosineHead

            self.head = CosineHead(4, C)

        def features(self, z):
            return self.bn(z.flatten(1)[:, :4])

        def forward(self, z):
            return self.head(self.features(z))

    torch.manual_seed(0)
    base, (x, x_adv, y) = BNCos(), batch()
    got = {}
    for forwards in (2, 4):
        model = BNCos()
        model.load_state_dict(base.state_dict())
        model.train()
        out = make("robal", forwards=forwards).compute_loss(model, x, x_adv, y)
        out["loss"].backward()
        got[forwards] = (out, model)
    (o_s, m_s), (o_o, m_o) = got[2], got[4]
    assert torch.allclose(o_s["loss"], o_o["loss"], rtol=0, atol=1e-12)
    assert torch.allclose(m_s.head.weight.grad, m_o.head.weight.grad, rtol=1e-5, atol=1e-6)
    assert int(m_s.bn.num_batches_tracked) == 2 and int(m_o.bn.num_batches_tracked) == 4
    # running mean by hand, momentum 0.5 from 0: r = 0.5 r + 0.5 mean(batch), batches adv, clean (, clean, adv)
    mean_adv, mean_nat = x_adv.flatten(1)[:, :4].mean(0), x.flatten(1)[:, :4].mean(0)
    r2 = 0.5 * (0.5 * mean_adv) + 0.5 * mean_nat
    assert torch.allclose(m_s.bn.running_mean, r2, atol=1e-6)
    assert torch.allclose(m_o.bn.running_mean, 0.5 * (0.5 * r2 + 0.5 * mean_nat) + 0.5 * mean_adv, atol=1e-6)
    with pytest.raises(ConfigError, match="forwards=3"):
        make("robal", forwards=3)


def test_robal_without_rebalancing_is_ce_on_scaled_cosine():
    model, (x, x_adv, y) = tiny_model("cosine"), batch()
    out = make("robal", m0=0.0, tau_b=0.0, tau_m=0.0, alpha=0.0).compute_loss(model, x, x_adv, y)
    expected = ce_by_hand(10.0 * cosines_by_hand(model, x_adv), y).mean()
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-5)
    assert "kl" not in out


def test_robal_training_aes_maximise_ce_of_scale_one_cosines():
    model, (x, _, y) = tiny_model("cosine"), batch()
    m = make("robal", attack_steps=3)

    class ByHand(nn.Module):
        def forward(self, z):
            f = model.features(z)
            w = model.head.weight / (model.head.weight.norm(dim=1, keepdim=True) + model.head.gamma)
            return F.normalize(f, dim=1) @ w.t()

    torch.manual_seed(5)
    got = m.train_attack(model, x, y)
    torch.manual_seed(5)
    want = pgd(ByHand(), x, y, Linf(8 / 255), steps=3, step_size=2 / 255, objective="ce")
    assert torch.equal(got, want)
    # attack_steps (not attack.steps) sets the number of steps: 0 steps without a random start is x itself
    m0 = make("robal", attack=AttackConfig(random_start=False, steps=10), attack_steps=0)
    assert torch.equal(m0.train_attack(model, x, y), x)


def test_robal_deployed_serves_and_is_attacked_through_the_adjusted_logits():
    model, (x, _, y) = tiny_model("cosine"), batch()
    m = make("robal", tau_p=1.5)
    deployed = m.deployed(model)
    expected = 10.0 * cosines_by_hand(model, x) - 1.5 * log_pi()  # Wu et al., CVPR 2021, Eq. 11
    assert torch.allclose(deployed(x).detach(), expected, atol=1e-5)
    assert deployed.head is model.head and torch.equal(deployed.features(x), model.features(x))

    def input_grad(fn):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(fn(xr), y), xr)
        return g

    by_hand = input_grad(lambda z: 10.0 * model.head.cosine(model.features(z)) - 1.5 * log_pi())
    assert torch.allclose(input_grad(deployed), by_hand, atol=1e-6)
    assert not torch.allclose(input_grad(model), by_hand, atol=1e-6)  # the adjustment changes the attack


def test_robal_needs_a_cosine_head_and_its_own_loss():
    model, (x, x_adv, y) = tiny_model("linear"), batch()
    with pytest.raises(ConfigError, match="cosine"):
        make("robal").compute_loss(model, x, x_adv, y)
    with pytest.raises(ConfigError, match="loss="):
        make("robal", loss="bsl")
    assert METHODS.get("robal").required_head == "cosine"


# ------------------------------------------------------------------------------------------- REAT
def test_reat_rbl_weights_follow_eq_1_from_last_epochs_ae_predictions():
    m = make("reat", rbl_smoothing=0.0)
    assert m.ae_counts == [float(c) for c in COUNTS]  # first epoch: a_c = n_c (Li et al., arXiv 2023, footnote 2)
    a = [40, 70, 15]
    m.on_epoch_end(0, {"ae_pred_counts": a})
    inv = []
    for n_c, a_c in zip(COUNTS, a):
        beta = (n_c - 1) / n_c
        inv.append(1.0 / ((1 - beta ** a_c) / (1 - beta)))  # 1 / E_c
    expected = torch.tensor([C * v / sum(inv) for v in inv])
    assert torch.allclose(m.attack_weights, expected, rtol=1e-6)
    name, kw = m.attack_objective(torch.zeros(1), torch.zeros(1, dtype=torch.long))
    assert name == "weighted_ce" and torch.allclose(kw["weights"], expected)
    smoothed = make("reat")  # the authors' 1 / (E + 1e-5): same weights to ~1e-5 when every a_c > 0
    smoothed.on_epoch_end(0, {"ae_pred_counts": a})
    assert torch.allclose(smoothed.attack_weights, expected, rtol=1e-4)


def test_reat_equal_class_and_ae_counts_give_uniform_weights():
    for smoothing in (0.0, 1e-5):
        m = make("reat", counts=[50, 50, 50, 50], rbl_smoothing=smoothing)
        assert torch.allclose(m.attack_weights, torch.ones(4))
        m.on_epoch_end(0, {"ae_pred_counts": [30, 30, 30, 30]})
        assert torch.allclose(m.attack_weights, torch.ones(4))


def test_reat_class_without_ae_predictions_keeps_every_sample_attacked():
    m = make("reat")
    m.on_epoch_end(0, {"ae_pred_counts": [120, 5, 0]})
    w = m.attack_weights
    assert (w > 0).all() and int(w.argmax()) == 2 and abs(float(w.sum()) - C) < 1e-5
    exact = make("reat", rbl_smoothing=0.0)
    exact.on_epoch_end(0, {"ae_pred_counts": [120, 5, 0]})
    assert torch.equal(exact.attack_weights, torch.tensor([0.0, 0.0, 3.0]))  # the exact limit (SPEC option)


def test_positive_class_weights_leave_linf_pgd_unchanged():
    """Why the smoothing matters: sign-gradient steps ignore any positive per-sample factor, so RBL
    changes l_inf AEs only through weights that are exactly zero."""
    model, (x, _, y) = tiny_model(), batch()
    torch.manual_seed(3)
    a = pgd(model, x, y, Linf(8 / 255), steps=3, step_size=2 / 255, objective="weighted_ce",
            objective_kwargs={"weights": torch.tensor([0.01, 1.0, 30.0])})
    torch.manual_seed(3)
    b = pgd(model, x, y, Linf(8 / 255), steps=3, step_size=2 / 255, objective="ce")
    assert torch.equal(a, b)


def tail_by_hand(f: torch.Tensor, y: torch.Tensor, tail: list[int], margin: float | None = None) -> torch.Tensor:
    """Li et al., arXiv 2023, Algorithm 1 with Eq. 3, literally; ``margin`` caps the KL of other-class (pushed)
    pairs."""
    p = F.softmax(f, dim=1)
    omega = [math.sqrt(sum(COUNTS) / n) for n in COUNTS]
    r, s, b = 0.0, 0, len(y)
    for i in range(b):
        if int(y[i]) not in tail:
            continue
        s += 1
        acc = 0.0
        for j in range(b):
            sgn = (-1.0) ** (1 if int(y[i]) == int(y[j]) else 0)
            kl = (p[j] * torch.log(p[j] / p[i])).sum()
            if margin is not None and int(y[i]) != int(y[j]):
                kl = kl.clamp(max=margin)
            acc = acc + sgn * (omega[int(y[i])] + omega[int(y[j])]) * kl
        r = r - acc / b
    return r / s


def test_reat_loss_is_bsl_plus_tail_eq_3():
    model, (x, x_adv, y) = tiny_model(), batch()
    z, f = model(x_adv).detach(), model.features(x_adv).detach()
    bsl = ce_by_hand(z + log_pi(), y).mean()
    tails = []
    for margin in (None, 1.0, 1e-3):  # literal Eq. 3, the default margin, a margin every pushed pair reaches
        out = make("reat", loss="bsl", tail_weight=0.5, tail_margin=margin).compute_loss(model, x, x_adv, y)
        tail = tail_by_hand(f, y, tail=[1, 2], margin=margin)  # paper: ceil(2C/3)..C of the count ranking
        assert torch.allclose(out["loss_lt"], bsl, atol=1e-6)
        assert torch.allclose(out["tail"], tail, atol=1e-5)
        assert torch.allclose(out["loss"].detach(), bsl + 0.5 * tail, atol=1e-5)
        tails.append(float(out["tail"]))
    assert tails[2] > tails[0]  # the small margin was reached and changed the term
    assert make("reat").options.tail_margin == 1.0


def test_reat_tail_class_conventions_and_official_reduction():
    ten = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT IR 100
    assert make("reat", counts=ten).tail_classes == [6, 7, 8, 9]  # ceil(2C/3) <= i <= C (1-based)
    assert make("reat", counts=ten, tail_classes="official").tail_classes == [7, 8, 9]  # range(C//3*2+1, C)
    model, (x, x_adv, y) = tiny_model(), batch()
    out = make("reat", loss="bsl", tail_reduction="official").compute_loss(model, x, x_adv, y)
    assert torch.isfinite(out["loss"]) and out["tail"].abs() > 0


def test_reat_base_loss_and_state_dict():
    assert make("reat", base_loss="en").base_loss.name == "cb"  # EN: effective-number weights
    assert make("reat", loss="ldam", base_loss="ldam").base_loss.name == "ldam"
    with pytest.raises(ConfigError, match="base_loss"):
        make("reat", loss="focal", base_loss="bsl")
    m = make("reat")
    m.on_epoch_end(3, {"ae_pred_counts": [10, 20, 30]})
    m2 = make("reat")
    m2.load_state_dict(m.state_dict())
    assert m2.ae_counts == [10.0, 20.0, 30.0] and torch.equal(m2.attack_weights, m.attack_weights)


# ------------------------------------------------------------------------------------------- TAET
def harl_by_hand(l: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, gamma: float):
    present = sorted({int(v) for v in y})
    lc = {c: torch.stack([l[i] for i in range(len(y)) if int(y[i]) == c]).mean() for c in present}
    bcl = sum(lc.values()) / len(present)  # Eq. 6
    hdl = sum((lc[c] - bcl) ** 2 for c in present) / len(present)  # Eq. 7
    total_l = sum(lc.values())
    rcel = sum((lc[c] / total_l) ** 2 for c in present)  # Eq. 8
    return alpha * bcl + beta * hdl + gamma * rcel, bcl, hdl, rcel


def test_taet_stage1_is_clean_ce_without_aes_then_harl():
    model, (x, x_adv, y) = tiny_model(), batch()
    m = make("taet", total_epochs=10)  # stage 1: 40% of 10 epochs = 4
    assert m.stage1_epochs == 4 and m.adversarial is False
    m.on_epoch_start(3)
    assert m.adversarial is False and m.train_attack(model, x, y) is x
    out = m.compute_loss(model, x, x_adv, y)
    assert torch.allclose(out["loss"].detach(), ce_by_hand(model(x).detach(), y).mean(), atol=1e-6)
    assert out["logits_adv"] is None
    m.on_epoch_start(4)
    assert m.adversarial is True
    assert make("taet", total_epochs=100).stage1_epochs == 40
    assert make("taet", total_epochs=100, stage1_epochs=0).adversarial is True


@pytest.mark.parametrize("per_sample", ["ce", "bsl"])
def test_taet_stage2_is_harl_eq_5_to_8(per_sample):
    model, (x, x_adv, y) = tiny_model(), batch()
    m = make("taet", total_epochs=10, alpha=0.3, beta=0.2, gamma=0.1, per_sample_loss=per_sample)
    m.on_epoch_start(5)
    out = m.compute_loss(model, x, x_adv, y)
    z = model(x_adv).detach()
    l = ce_by_hand(z + (log_pi() if per_sample == "bsl" else 0.0), y)
    total, bcl, hdl, rcel = harl_by_hand(l, y, 0.3, 0.2, 0.1)
    for got, want in ((out["loss"].detach(), total), (out["bcl"], bcl), (out["hdl"], hdl), (out["rcel"], rcel)):
        assert torch.allclose(got, want, atol=1e-6)


def test_taet_one_class_with_beta_gamma_zero_is_alpha_mean_ce():
    model, (x, x_adv, _) = tiny_model(), batch()
    y = torch.full((7,), 2)
    m = make("taet", total_epochs=10, stage1_epochs=0, alpha=0.1, beta=0.0, gamma=0.0)
    out = m.compute_loss(model, x, x_adv, y)
    assert torch.allclose(out["loss"].detach(), 0.1 * ce_by_hand(model(x_adv).detach(), y).mean(), atol=1e-7)


def test_taet_clean_forward_moves_only_the_batchnorm_statistics():
    """The authors' loop runs one unused train-mode forward of the clean batch per step: with momentum 0.1 from
    running_mean 0, stage 1 ends its step at 0.19 m (two forwards) and stage 2's eval-mode attack starts from
    0.1 m (m: the batch mean); the gradients are those without it."""
    x, _, y = batch()
    m_batch = x.flatten(1).mean(0)  # (16,) the batch mean BatchNorm1d sees

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16), nn.Linear(16, C))

    grads = {}
    for clean in (False, True):
        model = net().train()
        m = make("taet", total_epochs=10, stage1_epochs=1, clean_forward=clean)
        m.on_epoch_start(0)
        m.compute_loss(model, x, x, y)["loss"].backward()
        grads[clean] = [p.grad.clone() for p in model.parameters()]
        want = (0.19 if clean else 0.1) * m_batch
        assert torch.allclose(model[1].running_mean, want, atol=1e-7)
        assert int(model[1].num_batches_tracked) == (2 if clean else 1)
        model = net().train()
        m.on_epoch_start(1)  # stage 2: the clean forward, then the attack with BatchNorm in eval mode
        m.train_attack(model, x, y)
        assert torch.allclose(model[1].running_mean, (0.1 if clean else 0.0) * m_batch, atol=1e-7)
        assert model.training
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


# ----------------------------------------------------------------------------------- self-distill
def test_self_distill_loss_is_bsl_plus_alpha_kd_and_ramped_igdm():
    student, teacher, (x, x_adv, y) = tiny_model(seed=0), tiny_model(seed=7), batch()
    m = make("self_distill", total_epochs=4, alpha=2.0, igdm_max=10.0)
    m.set_teacher(teacher)
    m.on_epoch_start(1)
    out = m.compute_loss(student, x, x_adv, y)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training  # frozen teacher
    x_minus = 2 * x - x_adv  # x - d with d = x' - x
    s_plus, s_minus = student(x_adv).detach(), student(x_minus).detach()
    t_plus, t_minus = teacher(x_adv).detach(), teacher(x_minus).detach()
    bsl = ce_by_hand(s_plus + log_pi(), y).mean()
    kd = kl_rows(t_plus, s_plus)  # KL(p_t(x') || p_s(x'))
    igdm = kl_rows(t_plus - t_minus, s_plus - s_minus)
    lam = 10.0 * (1 + 1) / 4  # linear ramp at epoch 1 of 4
    assert abs(m.igdm_weight() - lam) < 1e-12
    assert torch.allclose(out["kd"], kd, atol=1e-6) and torch.allclose(out["igdm"], igdm, atol=1e-6)
    assert torch.allclose(out["loss"].detach(), bsl + 2.0 * (kd + lam * igdm), atol=1e-5)


def test_self_distill_needs_a_teacher_unless_alpha_is_zero():
    model, (x, x_adv, y) = tiny_model(), batch()
    with pytest.raises(ConfigError, match="teacher"):
        make("self_distill").compute_loss(model, x, x_adv, y)
    out = make("self_distill", alpha=0.0).compute_loss(model, x, x_adv, y)
    assert torch.allclose(out["loss"].detach(), make("at_bsl").compute_loss(model, x, x_adv, y)["loss"].detach())


def test_self_distill_teacher_config_drops_what_belongs_to_the_student():
    """The teacher inherits the data, model and threat model, never the student's inference adjustment
    (cdt would divide the teacher's logits by n_c^tau and flatten the distillation targets)."""
    from ltrobust.methods.self_distill import SelfDistillOptions, teacher_config

    student = resolve_config(["preset=self-distill-digits", "eval.adjust=cdt", "eval.adjust_tau=0.3",
                              "eval.tag=post", "attack.loss_mode=both", "train.record_ae_drift=true",
                              "train.ema=0.99", "train.sampler=class_balanced", "train.finetune=crt"])
    teacher = teacher_config(student, SelfDistillOptions(teacher_epochs=3, teacher_batch_size=32))
    assert (teacher.eval.adjust, teacher.eval.adjust_tau, teacher.eval.tag) == ("none", 1.0, "")
    assert teacher.attack.loss_mode == "outer" and not teacher.train.record_ae_drift
    assert (teacher.train.ema, teacher.train.sampler, teacher.train.finetune) == (0.0, "uniform", "none")
    assert (teacher.method.name, teacher.method.loss, dict(teacher.method.args)) == ("pgd_at", "ce", {})
    # shared with the student: data, model, threat model, evaluation attacks
    assert (teacher.data, teacher.model) == (student.data, student.model)
    assert (teacher.attack.eps, teacher.eval.eps, teacher.eval.attacks) == (
        student.attack.eps, student.eval.eps, student.eval.attacks)


def _run(tmp_path: Path, name: str, extra: list[str]) -> Trainer:
    return train(resolve_config(TINY + [f"out={tmp_path}", f"name={name}"] + extra))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return io.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_self_distill_with_alpha_zero_trains_exactly_like_at_bsl(tmp_path):
    a = _run(tmp_path, "bsl", ["method=at_bsl", "epochs=2"])
    b = _run(tmp_path, "sd0", ["method=self_distill", "method.alpha=0", "epochs=2"])
    assert not (tmp_path / "sd0" / "teacher").exists()  # no teacher needed
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_self_distill_trains_a_recorded_resumable_teacher_then_resumes_exactly(tmp_path, die_after_checkpoint):
    over = ["preset=self-distill-digits", "model=mlp", "model.width=16", "epochs=2", "method.teacher_epochs=2",
            "train.deterministic=true"]
    straight = _run(tmp_path, "straight", over)
    tdir = straight.run_dir / "teacher"
    teacher_cfg = (tdir / "config.yaml").read_text()
    assert "name: pgd_at" in teacher_cfg and "batch_size: 32" in teacher_cfg and "epochs: 2" in teacher_cfg
    resample = io.read_json(tdir / "manifest.json")["teacher_resample"]
    counts = straight.class_counts
    assert resample["gamma"] == 5.0 and resample["per_class"] == [int(5.0 * min(counts))] * len(counts)
    assert (tdir / "checkpoints" / "last.pt").exists()
    # killed after the student's first epoch, then resumed: the teacher is not retrained, weights match
    with die_after_checkpoint(0, run_name="killed"):
        _run(tmp_path, "killed", over)
    _run(tmp_path, "killed", over)
    assert len(io.read_jsonl(tmp_path / "killed" / "teacher" / "metrics.jsonl")) == 2
    wa, wb = _weights(straight.run_dir), _weights(tmp_path / "killed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # method.teacher=PATH reuses a trained teacher: no teacher phase, the same frozen weights
    reuse = _run(tmp_path, "reuse", ["preset=self-distill-digits", "model=mlp", "model.width=16", "epochs=1",
                                     f"teacher={tdir}"])
    assert not (reuse.run_dir / "teacher").exists()
    t1, t2 = _weights(tdir), reuse.method.teacher.state_dict()
    assert all(torch.equal(t1[k], t2[k]) for k in t1)


def test_self_distill_declares_its_teacher_as_a_stage_and_the_bare_trainer_refuses_without_it(tmp_path):
    from ltrobust.config import method_options

    cfg = resolve_config(TINY + ["preset=self-distill-digits", "model=mlp", "model.width=16", "epochs=1",
                                 "method.teacher_epochs=3", "eval.adjust=cdt", f"out={tmp_path}", "name=bare"])
    (stage,) = METHODS.get("self_distill").stages(cfg, method_options(cfg))
    assert stage.name == "teacher" and stage.path is None and stage.checkpoint == "last"
    assert stage.config.method.name == "pgd_at" and stage.config.train.epochs == 3
    assert METHODS.get("self_distill").stages(resolve_config(TINY + ["method=self_distill", "method.alpha=0"]),
                                               method_options(resolve_config(TINY + ["method=self_distill",
                                                                                     "method.alpha=0"]))) == []
    with pytest.raises(ConfigError, match=r"needs its teacher stage first.*ltrobust.experiments.train"):
        Trainer(cfg).fit()
    assert not (tmp_path / "bare" / "checkpoints").exists()  # refused before any epoch


def test_reat_resumes_exactly_with_its_rbl_counts(tmp_path, die_after_checkpoint):
    over = ["method=reat", "loss=bsl", "epochs=3", "train.deterministic=true"]
    straight = _run(tmp_path, "straight", over)
    with die_after_checkpoint(1, run_name="killed"):
        _run(tmp_path, "killed", over)
    resumed = _run(tmp_path, "killed", over)
    assert resumed.method.ae_counts == straight.method.ae_counts
    wa, wb = _weights(straight.run_dir), _weights(tmp_path / "killed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_robal_run_validates_and_evaluates_on_the_deployed_logits(tmp_path):
    from ltrobust.evaluation.runs import evaluate_run, load_run

    t = _run(tmp_path, "robal", ["preset=robal-digits", "model=mlp", "model.width=16", "epochs=1",
                                 "train.val_every=1", "train.val_samples=30", "train.val_attack_steps=2"])
    run = load_run(t.run_dir)
    assert type(run.deployed).__name__ == "RoBalDeployed" and run.deployed.tau_p == 0.1
    res = evaluate_run(t.run_dir, ["eval.n_samples=20", "eval.attacks=clean,pgd5"], device="cpu", progress=False)
    assert res is not None


# ----------------------------------------------------------------------------------------- presets
PAPER_PRESETS = [p for p in list_presets() if p.split("-")[0] in ("at", "robal", "reat", "self", "taet")]


def test_every_method_has_its_presets():
    names = set(PAPER_PRESETS)
    for p in ("at-bsl-cifar10lt-resnet18", "at-bsl-tinyimagenetlt-preact18", "robal-n-cifar10lt-resnet18",
              "robal-r-cifar10lt-resnet18", "robal-r-cifar10lt-wrn34", "robal-n-cifar100lt-resnet18",
              "robal-r-cifar100lt-resnet18", "reat-cifar10lt-resnet18", "reat-cifar100lt-resnet18",
              "self-distill-cifar10lt-resnet18", "self-distill-cifar100lt-resnet18", "taet-cifar10lt-ir10-resnet18",
              "at-bsl-digits", "robal-digits", "reat-digits", "self-distill-digits", "taet-digits"):
        assert p in names, p


def test_loss_label_names_the_loss_each_method_actually_trains_with():
    """Result rows say the loss used: at_bsl and self_distill train BSL whatever loss= says, RoBal its
    own margin-and-bias CE, REAT its base loss + TAIL, TAET HARL; the others their configured loss."""
    assert make("pgd_at", loss="bsl").loss_label == "bsl" and make("trades").loss_label == "ce"
    assert make("at_bsl").loss_label == "bsl"
    assert make("self_distill").loss_label == "bsl + kd" and make("self_distill", alpha=0.0).loss_label == "bsl"
    assert make("robal").loss_label == "margin-bias ce + kl" and make("robal", alpha=0.0).loss_label == "margin-bias ce"
    assert make("reat").loss_label == "bsl + tail"
    assert make("reat", base_loss="focal", tail_weight=0.0).loss_label == "focal"
    assert make("taet").loss_label == "harl (ce)"
    assert make("awp", base="pgd_at").loss_label == "ce"


def test_reat_paper_presets_use_the_authors_tail_reduction_without_margin():
    """Li et al.'s (arXiv 2023) numbers come from the authors' code: the official TAIL reduction, no margin; the paper
    form with the 1-nat margin stays the option default (and the digits smoke preset's)."""
    from ltrobust.config import method_options

    for p in ("reat-cifar10lt-resnet18", "reat-cifar100lt-resnet18"):
        opts = method_options(resolve_config([f"preset={p}"]))
        assert (opts.tail_reduction, opts.tail_margin) == ("official", None), p
    opts = method_options(resolve_config(["preset=reat-cifar10lt-resnet18", "tail_reduction=paper", "tail_margin=1"]))
    assert (opts.tail_reduction, opts.tail_margin) == ("paper", 1.0)
    opts = method_options(resolve_config(["preset=reat-digits"]))
    assert (opts.tail_reduction, opts.tail_margin) == ("paper", 1.0)


def test_reat_presets_follow_the_authors_code_and_target_their_tables():
    """REAT's presets as its code runs them (docs/parity.md, "REAT"), the Tiny-ImageNet preset on Table 6's
    ResNet-18 with Table 6's numbers, Table 12 as l_inf training evaluated under l_2, and the l_2-trained preset
    named as ours with no paper numbers (issue 26, items 12 and 13)."""
    from ltrobust.config import method_options

    cfg = resolve_config(["preset=reat-cifar10lt-resnet18"])
    assert (cfg.model.normalize, cfg.attack.random_start, cfg.attack.bn_mode) == (False, "uniform_unclipped", "eval")
    assert (cfg.train.precision, cfg.train.drop_last, cfg.train.seed) == ("fp32", False, 0)
    assert method_options(cfg).tail_classes == "official"
    table1 = resolve_config(["preset=at-bsl-cifar10lt-resnet18-reat-table1"])
    assert (table1.attack.random_start, table1.train.drop_last, table1.train.milestones) == (
        "uniform_unclipped", False, (60, 75))
    tiny = resolve_config(["preset=reat-tinyimagenetlt-linear-ur100"])
    assert tiny.model.name == "resnet18" and (tiny.data.profile, tiny.data.imbalance) == ("linear", 100)
    assert tiny.attack.eps == tiny.eval.eps == 2 / 255
    assert [(r["table"], r["values"]) for r in tiny.reference] == [
        ("Table 6", {"clean": 43.09, "pgd20": 33.0, "pgd100": 33.0, "cw100": 31.16, "aa": 30.74})]
    l2 = resolve_config(["preset=reat-cifar10lt-resnet18-l2eval"])
    assert (l2.attack.norm, l2.attack.eps) == ("linf", 8 / 255)  # trained as Table 1
    assert (l2.eval.norm, l2.eval.eps, l2.eval.step_size) == ("l2", 1.0, 0.2)
    assert l2.eval.attacks == ("clean", "pgd20", "pgd100", "cw_l2")
    assert [(r["table"], r["values"]) for r in l2.reference] == [
        ("Table 12", {"clean": 67.33, "pgd20": 27.45, "pgd100": 25.91, "cw_l2": 63.08})]
    ours = resolve_config(["preset=reat-cifar10lt-l2train-ours"])
    assert (ours.attack.norm, ours.attack.random_start, ours.reference) == ("l2", "uniform", ())
    assert "reat-cifar10lt-l2" not in list_presets()


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_preset_loads_validates_and_trains_one_tiny_step(preset, tmp_path):
    from ltrobust.attacks.suite import parse_attacks

    cfg = resolve_config([f"preset={preset}"])
    parse_attacks(cfg.eval.attacks, eps=cfg.eval.eps, step_size=cfg.eval.step_size)  # eval names are real
    paper = resolve_config([f"preset={preset}"])
    over = [f"preset={preset}", "dataset=digits-lt", "data.imbalance=10", "model=smallcnn", "model.width=4",
            "epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=16", "train.val_samples=20",
            "train.val_attack_steps=1", "train.progress=false", "eval.tail_group=0", f"out={tmp_path}", "name=run"]
    if paper.method.name == "self_distill":
        over += ["method.teacher_epochs=1", "method.teacher_batch_size=16"]
    train(resolve_config(over))
    row = io.read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(row["loss"]) and (tmp_path / "run" / "checkpoints" / "best.pt").exists()
