"""The seeds' baseline defenses (he, mma, avmixup, gairat) against their papers' equations.

Each method's loss or AE rule is recomputed here by hand on a tiny model with fixed weights; then the
identities with PGD-AT (GAIRAT with equal weights, AVmixup with gamma 1 and no smoothing, MMA with a fixed
eps, HE with margin 0), the refused option combinations, and one tiny training step of each through the CLI.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust import io
from ltrobust.attacks import pgd
from ltrobust.attacks.threat import Linf
from ltrobust.config import AttackConfig, resolve_config
from ltrobust.errors import ConfigError
from ltrobust.registry import LOSSES, METHODS
from ltrobust.training.trainer import Trainer

from lt_fixtures import COUNTS, C, batch, tiny_model  # tests/lt_fixtures.py (tests/ is on sys.path)

NEW_METHODS = ["he", "mma", "avmixup", "gairat"]
TINY = ["dataset=digits-lt", "model=smallcnn", "model.width=4", "train.batch_size=32", "train.progress=false",
        "train.val_every=0", "train.precision=fp32", "train.deterministic=true", "attack.steps=2",
        "train.max_steps_per_epoch=2", "epochs=1"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(name: str, loss: str = "ce", attack: AttackConfig | None = None, total_epochs: int = 10,
         loss_args: dict | None = None, **options):
    cls = METHODS.get(name)
    loss_obj = LOSSES.get(loss)(list(COUNTS), options=loss_args or {}, total_epochs=total_epochs)
    return cls(list(COUNTS), attack or AttackConfig(), loss_obj, cls.Options(**options), total_epochs=total_epochs)


def ce_rows(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample -log softmax(z_i)_{y_i}, written out."""
    return torch.stack([-(z[i, y[i]] - torch.log(torch.exp(z[i]).sum())) for i in range(len(y))])


def train_weights(over: list[str], tmp_path, name: str) -> dict[str, torch.Tensor]:
    cfg = resolve_config(TINY + [f"out={tmp_path}", f"name={name}"] + over)
    Trainer(cfg).fit()
    return io.load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), k


# ------------------------------------------------------------------------------------------ GAIRAT
def test_gairat_kappa_counts_correct_iterates_and_weights_follow_sec_3_3():
    from ltrobust.methods.gairat import gair_weights

    model, (x, _, y) = tiny_model(), batch()
    m = make("gairat", attack=AttackConfig(steps=4), begin_epoch=1)
    torch.manual_seed(3)
    x_adv = m.train_attack(model, x, y)
    # kappa by hand: replay the same PGD, counting the iterates x^(0..K-1) classified as y.
    torch.manual_seed(3)
    kappa = torch.zeros(len(y))

    def counting_ce(logits, yy):
        kappa.add_((logits.detach().argmax(1) == yy).float())
        return F.cross_entropy(logits, yy, reduction="none")

    replay = pgd(model, x, y, Linf(8 / 255), steps=4, step_size=2 / 255, objective=counting_ce)
    assert torch.equal(replay, x_adv) and torch.equal(m._kappa, kappa)

    # the paper's weight (1 + tanh(lam + 5 (1 - 2 kappa / K))) / 2 for even K, normalised to mean 1
    k = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([(1 + math.tanh(-1.0 + 5 * (1 - 2 * ki / 4))) / 2 for ki in k.tolist()])
    assert torch.allclose(gair_weights(k, 4, -1.0), w * 5 / w.sum(), atol=1e-6)
    s = torch.sigmoid(-1.0 + 5 * (1 - 2 * k / 4))
    assert torch.allclose(gair_weights(k, 4, -1.0, "sigmoid"), s * 5 / s.sum(), atol=1e-6)
    d = (5 - k) / 5
    assert torch.allclose(gair_weights(k, 4, 0.0, "discrete"), d * 5 / d.sum(), atol=1e-6)

    # the loss: mean_i w_i CE_i on the AEs
    out = m.compute_loss(model, x, x_adv, y)
    wts = gair_weights(kappa, 4, -1.0)
    expected = (ce_rows(model(x_adv).detach(), y) * wts).mean()
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-6)


def test_gairat_under_ddp_normalises_over_the_whole_batch_so_the_averaged_gradient_is_one_processs():
    """Two processes, each with half of the batch: with the sums all-reduced, each half's weights are the
    whole batch's weights, and the average of the two processes' gradients (what DDP applies) equals the
    gradient of one process on the whole batch. Normalised per half, it would not."""
    from ltrobust.methods.gairat import gair_weights

    model, (_, x_adv, y) = tiny_model(), batch(n=6)
    kappa = torch.tensor([0.0, 1.0, 4.0, 4.0, 4.0, 3.0])  # the halves' raw weight sums differ
    whole = gair_weights(kappa, 4, -1.0)
    halves = [slice(0, 3), slice(3, 6)]
    raw = [(torch.tanh(-1.0 + (2 - kappa[h]) * 5.0 / 2) + 1) / 2 for h in halves]  # Sec. 3.3, K = 4, h = 2
    weights = []
    for r, h in enumerate(halves):  # all_reduce: add the other process's (sum of raw weights, count)
        other = torch.stack([raw[1 - r].sum(), torch.tensor(3.0)])
        weights.append(gair_weights(kappa[h], 4, -1.0, all_reduce=lambda t, o=other: t.add_(o)))
        assert torch.allclose(weights[r], whole[h], atol=1e-6)

    def grads(xa, ya, w):
        model.zero_grad()
        (ce_rows(model(xa), ya) * w).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    single = grads(x_adv, y, whole)
    ddp = [grads(x_adv[h], y[h], weights[r]) for r, h in enumerate(halves)]
    per_half = [grads(x_adv[h], y[h], gair_weights(kappa[h], 4, -1.0)) for h in halves]
    assert all(torch.allclose((a + b) / 2, g, atol=1e-6) for a, b, g in zip(*ddp, single))
    assert not all(torch.allclose((a + b) / 2, g, atol=1e-6) for a, b, g in zip(*per_half, single))


def test_gairat_with_all_weights_equal_is_pgd_at(tmp_path):
    model, (x, x_adv, y) = tiny_model(), batch()
    for loss in ("ce", "bsl"):
        g, p = make("gairat", loss=loss, begin_epoch=1), make("pgd_at", loss=loss)
        g._kappa = torch.full((len(y),), 3.0)  # equal geometry values: every weight is 1
        assert torch.allclose(g.compute_loss(model, x, x_adv, y)["loss"], p.compute_loss(model, x, x_adv, y)["loss"],
                              atol=1e-7)
    # the burn-in (lam = +inf: all weights 1) trains exactly like pgd_at, through the trainer
    a = train_weights(["method=gairat", "method.begin_epoch=2", "loss=bsl"], tmp_path, "gairat")
    b = train_weights(["method=pgd_at", "loss=bsl"], tmp_path, "pgd_at")
    assert_same_weights(a, b)


def test_gairat_schedule_and_refusals():
    m = make("gairat", lam_schedule="linear", lam=-1.0, lam_max=1.0, begin_epoch=3, total_epochs=10)
    m.on_epoch_start(1)
    assert m.lam() == math.inf  # burn-in: 1-based epoch 2 < 3
    m.on_epoch_start(4)
    assert m.lam() == pytest.approx(1.0 - 5 / 10 * 2.0)
    assert make("gairat", total_epochs=120).begin_epoch == 60
    with pytest.raises(ConfigError, match="lam_max"):
        make("gairat", lam_schedule="linear")
    with pytest.raises(ConfigError, match="lam_max"):
        make("gairat", lam_max=2.0)
    with pytest.raises(ConfigError, match="steps"):
        make("gairat", attack=AttackConfig(steps=1))
    with pytest.raises(ConfigError, match="weight_fn"):
        make("gairat", weight_fn="exp")
    with pytest.raises(ConfigError, match="no lambda"):
        make("gairat", weight_fn="discrete", lam=-1.0)
    make("gairat", weight_fn="discrete", attack=AttackConfig(steps=1))  # discrete weights work for K = 1


# ----------------------------------------------------------------------------------------- AVmixup
def test_avmixup_vertex_mixup_and_smoothed_labels_follow_algorithm_1():
    model, (x, _, y) = tiny_model(), batch()
    m = make("avmixup", gamma=2.0, lambda1=0.9, lambda2=0.1)
    torch.manual_seed(5)
    x_mix = m.train_attack(model, x, y)
    torch.manual_seed(5)  # replay: PGD, then alpha ~ U(0, 1) per sample
    x_pgd = pgd(model, x, y, Linf(8 / 255), steps=10, step_size=2 / 255)
    alpha = torch.rand(len(y))
    vertex = (x + 2.0 * (x_pgd - x)).clamp(0, 1)
    a = alpha.view(-1, 1, 1, 1)
    assert torch.allclose(x_mix, a * x + (1 - a) * vertex, atol=1e-7)
    assert (vertex - x).abs().max() > 8 / 255 + 1e-4  # the vertex leaves the eps-ball (gamma 2)

    out = m.compute_loss(model, x, x_mix, y)
    z = model(x_mix).detach()
    total = 0.0
    for i in range(len(y)):
        for c in range(C):
            phi1 = 0.9 if c == y[i] else 0.1 / (C - 1)
            phi2 = 0.1 if c == y[i] else 0.9 / (C - 1)
            t = alpha[i] * phi1 + (1 - alpha[i]) * phi2
            total = total - t * (z[i, c] - torch.log(torch.exp(z[i]).sum()))
    assert torch.allclose(out["loss"].detach(), total / len(y), atol=1e-6)

    # with loss=bsl the soft labels meet the balanced-softmax logits z + tau log pi
    b = make("avmixup", loss="bsl", gamma=1.0, lambda1=1.0, lambda2=1.0)
    b._alpha = torch.zeros(len(y))
    log_pi = torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)).float()
    assert torch.allclose(b.compute_loss(model, x, x_mix, y)["loss"].detach(), ce_rows(z + log_pi, y).mean(),
                          atol=1e-6)


def test_avmixup_with_gamma_one_and_no_smoothing_is_pgd_at(tmp_path, monkeypatch):
    from ltrobust.methods.avmixup import AVmixup

    model, (x, x_adv, y) = tiny_model(), batch()
    m = make("avmixup", gamma=1.0, lambda1=1.0, lambda2=1.0)
    m._alpha = torch.rand(len(y))  # any mixing weights: the labels stay one-hot, the loss is CE
    assert torch.allclose(m.compute_loss(model, x, x_adv, y)["loss"],
                          make("pgd_at").compute_loss(model, x, x_adv, y)["loss"], atol=1e-7)
    # with every alpha 0 the training input is the PGD AE itself: the run is pgd_at's, weight for weight
    monkeypatch.setattr(AVmixup, "mix_weights", lambda self, n, device: torch.zeros(n, device=device))
    a = train_weights(["method=avmixup", "method.gamma=1", "method.lambda1=1", "method.lambda2=1"], tmp_path, "av")
    b = train_weights(["method=pgd_at", "attack.bn_mode=batch"], tmp_path, "pgd_at")  # avmixup's (the authors')
    assert_same_weights(a, b)
    assert make("avmixup").bn_mode == "batch" and make("avmixup", attack=AttackConfig(bn_mode="eval")).bn_mode == "eval"


def test_avmixup_refuses_losses_without_a_soft_label_form():
    for loss in ("ldam", "rw", "focal", "cb"):
        with pytest.raises(ConfigError, match="soft"):
            make("avmixup", loss=loss)
    make("avmixup", loss="cat")
    make("avmixup", loss="ldam", attack=AttackConfig(loss_mode="inner"))  # LDAM only inside the attack: fine
    with pytest.raises(ConfigError, match="lambda2"):
        make("avmixup", lambda2=1.5)


# ---------------------------------------------------------------------------------------------- HE
def he_model(seed: int = 0) -> nn.Module:
    return tiny_model("cosine", seed=seed, cosine_scale=15.0, cosine_gamma=0.0)


def normalised_cosines(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """<f/||f||, W_c/||W_c||> written out (FN and WN)."""
    f = model.features(x).detach()
    w = model.head.weight.detach()
    return torch.stack([torch.stack([f[i] @ w[c] / (f[i].norm() * w[c].norm()) for c in range(C)])
                        for i in range(f.shape[0])])


def he_loss_by_hand(cos: torch.Tensor, y: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """The HE loss: -log(e^{s(cos_y - m)} / (e^{s(cos_y - m)} + sum_{j != y} e^{s cos_j})), batch mean."""
    rows = []
    for i in range(len(y)):
        num = s * (cos[i, y[i]] - m)
        others = sum(torch.exp(s * cos[i, j]) for j in range(C) if j != y[i])
        rows.append(-(num - torch.log(torch.exp(num) + others)))
    return torch.stack(rows).mean()


def test_he_outer_loss_is_the_margin_loss_on_normalised_cosines():
    model, (x, x_adv, y) = he_model(), batch()
    out = make("he", m=0.2).compute_loss(model, x, x_adv, y)
    cos_adv = normalised_cosines(model, x_adv)
    assert torch.allclose(model(x_adv).detach(), 15.0 * cos_adv, atol=1e-5)  # served logits: s cos
    assert torch.allclose(out["loss"].detach(), he_loss_by_hand(cos_adv, y, 15.0, 0.2), atol=1e-5)

    # TRADES-HE: margin loss on the clean cosines + beta KL(softmax(s cos(x)) || softmax(s cos(x')))
    out = make("he", m=0.3, base="trades", beta=2.0).compute_loss(model, x, x_adv, y)
    cos_nat = normalised_cosines(model, x)
    p, q = F.softmax(15 * cos_nat, 1), F.softmax(15 * cos_adv, 1)
    kl = sum((p[i] * (p[i].log() - q[i].log())).sum() for i in range(len(y))) / len(y)
    assert torch.allclose(out["loss"].detach(), he_loss_by_hand(cos_nat, y, 15.0, 0.3) + 2.0 * kl, atol=1e-5)


def test_he_attacks_ce_of_scaled_cosines_without_margin():
    model, (x, _, y) = he_model(), batch()
    torch.manual_seed(2)
    x_adv = make("he", m=0.5).train_attack(model, x, y)
    torch.manual_seed(2)
    assert torch.equal(x_adv, pgd(model, x, y, Linf(8 / 255), steps=10, step_size=2 / 255, objective="ce"))


@pytest.mark.parametrize("base", ["pgd_at", "trades"])
def test_he_with_margin_zero_is_its_base_on_a_scaled_cosine_head(base, tmp_path):
    head = ["model.cosine_scale=15", "model.cosine_gamma=0"]
    a = train_weights(head + ["method=he", "method.m=0", f"method.base={base}"], tmp_path, "he")
    b = train_weights(head + [f"method={base}", "model.head=cosine"], tmp_path, base)
    assert_same_weights(a, b)
    # and the margin changes the training
    c = train_weights(head + ["method=he", "method.m=0.2", f"method.base={base}"], tmp_path, "he_m")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_he_serves_the_raw_cosines_as_the_authors_code_or_s_cos():
    """The authors' network outputs cos (s lives in the loss) and their evaluation attacks it: serve=cosine
    (default) deploys cos, serve=scaled deploys s cos; same predictions, another temperature for CE attacks."""
    model, (x, _, y) = he_model(), batch()
    served = make("he").deployed(model)
    assert torch.allclose(served(x).detach(), normalised_cosines(model, x), atol=1e-5)
    assert torch.equal(served(x).argmax(1), model(x).argmax(1)) and served.head is model.head
    assert torch.allclose(served.logits_from_head(model(x)), served(x)) and served.describe()["serve"] == "cosine"
    assert make("he", serve="scaled").deployed(model) is model
    torch.manual_seed(0)
    on_cos = pgd(served, x, y, Linf(0.3), steps=3, step_size=0.1)
    torch.manual_seed(0)
    assert not torch.equal(on_cos, pgd(model, x, y, Linf(0.3), steps=3, step_size=0.1))  # CE sees another softmax
    with pytest.raises(ConfigError, match="serve"):
        make("he", serve="logits")


def test_he_refuses_what_it_would_ignore_or_change(tmp_path):
    with pytest.raises(ConfigError, match="beta"):
        make("he", beta=3.0)
    with pytest.raises(ConfigError, match="base"):
        make("he", base="mart")
    with pytest.raises(ConfigError, match="cosine_gamma=0"):  # RoBal's W/(||W|| + gamma) is not HE's WN
        Trainer(resolve_config(TINY + ["method=he", f"out={tmp_path}", "name=g"])).fit()
    model, (x, x_adv, y) = tiny_model("linear"), batch()
    with pytest.raises(ConfigError, match="cosine head"):
        make("he").train_attack(model, x, y)
    with pytest.raises(ConfigError, match="cosine head"):
        make("he").compute_loss(model, x, x_adv, y)
    assert METHODS.get("he").required_head == "cosine"


# --------------------------------------------------------------------------------------------- MMA
def slm_by_hand(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log sum_{j != y} e^{z_j} - z_y per row."""
    return torch.stack([torch.log(sum(torch.exp(z[i, j]) for j in range(C) if j != y[i])) - z[i, y[i]]
                        for i in range(len(y))])


def confident_model() -> nn.Module:
    """A tiny model with three of batch()'s points correct with a negative soft logit margin."""
    model = tiny_model(seed=1)
    with torch.no_grad():
        model.head.weight.mul_(2)
        model.head.bias.mul_(2)
    return model


def test_mma_an_pgd_and_bisection_follow_algorithm_1_by_hand():
    model, (x, _, y) = confident_model(), batch(n=7)
    model.eval()
    eps0, d_max, steps, halvings = 0.1, 0.2, 3, 6
    m = make("mma", attack=AttackConfig(steps=steps), d_max=d_max, eps_min=eps0, search_steps=halvings)
    torch.manual_seed(4)
    x_adv = m.train_attack(model, x, y)

    torch.manual_seed(4)  # replay: PGD on the soft logit margin in the eps0-ball, step 2.5 eps0 / steps,
    with torch.no_grad():  # on the correct points only (the authors' trainer)
        correct = slm_by_hand(model(x), y) < 0
    assert 0 < int(correct.sum()) < len(y)  # both kinds of point in the batch
    xc, yc = x[correct], y[correct]
    xa = (xc + (torch.rand(xc.shape) * 2 - 1) * eps0).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(slm_by_hand(model(xa), yc).sum(), xa)
        xa = torch.min(torch.max(xa.detach() + 2.5 * eps0 / steps * g.sign(), xc - eps0), xc + eps0).clamp(0, 1)
    unit = torch.zeros_like(x)
    unit[correct] = (xa - xc) / eps0

    def margin(i: int, e: float) -> float:
        with torch.no_grad():
            return float(slm_by_hand(model((x[i:i + 1] + e * unit[i:i + 1]).clamp(0, 1)), y[i:i + 1])[0])

    eps = []
    for i in range(len(y)):  # bisection in [0, 1.05 d_max] from eps0
        lo, hi, e = 0.0, 1.05 * d_max, eps0
        mg = margin(i, e)
        for _ in range(halvings):
            lo, hi = (max(e, lo), hi) if mg < 0 else (lo, min(e, hi))
            e = (lo + hi) / 2
            mg = margin(i, e)
        eps.append(e if correct[i] else 0.0)
    eps = torch.tensor(eps)
    assert torch.allclose(m._eps, eps, atol=1e-6)
    assert torch.allclose(x_adv, (x + eps.view(-1, 1, 1, 1) * unit).clamp(0, 1), atol=1e-6)
    assert torch.equal(x_adv[~correct], x[~correct])  # misclassified points train on the clean image
    found = eps[correct]
    assert (found < d_max).any() and (found >= d_max).any()  # margins found inside and beyond d_max

    # loss: (1 - c) (1/B) sum_i [eps_i < d_max or wrong] CE(z(x'_i)) + c mean CE(z(x)), c = 1/3
    keep = (~correct) | (eps < d_max)
    out = m.compute_loss(model, x, x_adv, y)
    expected = (2 / 3) * (ce_rows(model(x_adv).detach(), y) * keep).mean() + (1 / 3) * ce_rows(model(x).detach(),
                                                                                                 y).mean()
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-6)
    assert not keep.all()  # the hinge dropped the point whose margin reached d_max
    m2 = make("mma", clean_coeff=0.0)
    m2._eps, m2._keep = eps, torch.tensor([True, False, True, True, False, True, True])
    assert torch.allclose(m2.compute_loss(model, x, x_adv, y)["loss"].detach(),
                          (ce_rows(model(x_adv).detach(), y) * m2._keep).mean(), atol=1e-6)


def bn_model(seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, C))


def test_mma_batchnorm_follows_the_authors_code():
    """The authors' trainer runs in train mode and only AN-PGD's PGD switches to eval (issue 26): the running
    statistics are updated by the 1 + search_steps bisection passes (and, for OMMA, by the correctness check,
    which is there the clean pass), never by the PGD unless pgd_bn_mode=train; attack.bn_mode=eval searches with
    the running statistics. The radii differ between the modes, and the search runs on the correct points only."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 4, 4, generator=g)
    net = bn_model().train()
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:6] = (y[:6] + 1) % C  # six misclassified points
    tracked = net[2].num_batches_tracked

    def run(attack=AttackConfig(steps=2), **opts):
        m = make("mma", attack=attack, search_steps=4, d_max=0.3, eps_min=0.05, **opts)
        before = int(tracked)
        torch.manual_seed(5)
        m.train_attack(net, x, y)
        return int(tracked) - before, m._eps

    updates, eps_train = run()
    assert updates == 1 + 4 and net.training
    assert run(clean_coeff=0.0)[0] == 2 + 4  # OMMA: the check is the clean pass
    assert run(pgd_bn_mode="train")[0] == 1 + 4 + 2
    updates, eps_eval = run(AttackConfig(steps=2, bn_mode="eval"))
    assert updates == 0 and net.training
    correct = eps_train > 0
    assert (eps_eval[~correct] == 0).all() and not torch.equal(eps_train, eps_eval)
    with pytest.raises(ConfigError, match="pgd_bn_mode"):
        make("mma", pgd_bn_mode="frozen")


def test_mma_with_a_fixed_eps_is_pgd_at_on_that_eps(tmp_path):
    over = ["attack.eps=0.1", "attack.step_size=0.03"]
    a = train_weights(over + ["method=mma", "method.adaptive=false", "method.clean_coeff=0", "method.attack_loss=ce"],
                      tmp_path, "mma")
    b = train_weights(over + ["method=pgd_at"], tmp_path, "pgd_at")
    assert_same_weights(a, b)


def _context(n: int):
    from types import SimpleNamespace

    return SimpleNamespace(data=SimpleNamespace(train=[None] * n), device=torch.device("cpu"))


def test_mma_starts_each_point_from_its_own_last_margin(monkeypatch):
    """The authors' dct_eps: a point's next search starts at its last margin, never below eps_min (eps_min
    before its first visit, and after a visit where it was misclassified: margin 0)."""
    import ltrobust.methods.mma as mma_module

    balls = []

    def spy(model, x, y, threat, **kw):
        balls.append(threat.eps.flatten().clone())
        return pgd(model, x, y, threat, **kw)

    monkeypatch.setattr(mma_module, "pgd", spy)
    model, (x, _, y) = confident_model(), batch(n=7)
    model.eval()
    m = make("mma", attack=AttackConfig(steps=2), d_max=0.2, eps_min=0.01, search_steps=6)
    m.setup(_context(20))
    assert torch.equal(m._margins, torch.full((20,), 0.01))
    first = torch.tensor([3, 4, 5, 6, 7, 8, 9])
    m.on_batch(first)
    m.train_attack(model, x, y)
    with torch.no_grad():
        correct = slm_by_hand(model(x), y) < 0  # AN-PGD attacks these only
    assert torch.equal(balls[0], torch.full((int(correct.sum()),), 0.01))  # first visit: eps_min
    assert torch.equal(m._margins[first], m._eps.float()) and (m._eps == 0).any() and (m._eps > 0.01).any()
    assert torch.equal(m._margins[:3], torch.full((3,), 0.01)) and m._seen[first].all() and not m._seen[:3].any()

    found = m._eps.clone()  # margins of dataset points 3..9
    second = torch.tensor([9, 8, 7, 0, 1, 2, 3])  # four points seen before, in another order, three new ones
    m.on_batch(second)
    m.train_attack(model, x, y)
    last = torch.stack([found[6], found[5], found[4], torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0),
                        found[0]])
    assert torch.equal(balls[1], last.clamp_min(0.01)[correct])  # a 0 margin (misclassified last time): eps_min
    assert (found[[6, 5, 4, 0]] > 0.01).any() and torch.equal(m._margins[second], m._eps.float())
    m.train_attack(model, x, y)  # without indices (no on_batch): every point from eps_min
    assert torch.equal(balls[2], torch.full((int(correct.sum()),), 0.01))


def test_mma_margin_tables_of_two_processes_merge_into_each_points_last_margin():
    from ltrobust.methods.mma import merge_margins

    old = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1])
    ranks = [(torch.tensor([0.3, 0.1, 0.0, 0.1, 0.1]), torch.tensor([True, False, True, False, False])),
             (torch.tensor([0.1, 0.2, 0.1, 0.5, 0.1]), torch.tensor([False, True, False, True, False]))]
    for r, (margins, seen) in enumerate(ranks):  # all_reduce: sum over both processes' tensors, in call order
        other_m, other_s = ranks[1 - r]
        queue = [torch.where(other_s, other_m, 0.0), other_s.float()]
        merge_margins(margins, seen, all_reduce=lambda t: t.add_(queue.pop(0)))
    for margins, _ in ranks:
        assert torch.allclose(margins, torch.tensor([0.3, 0.2, 0.0, 0.5, 0.1]))
    both_m, both_s = torch.tensor([0.2, 0.1]), torch.tensor([True, False])  # one point seen by both: the mean
    queue = [torch.tensor([0.4, 0.0]), torch.tensor([1.0, 0.0])]
    merge_margins(both_m, both_s, all_reduce=lambda t: t.add_(queue.pop(0)))
    assert torch.allclose(both_m, torch.tensor([0.3, 0.1])) and old.eq(0.1).all()


def test_mma_trainer_hands_over_each_batchs_indices_and_resumes_the_margins(tmp_path):
    from ltrobust.data import build_data, train_loader
    from ltrobust.errors import CheckpointError

    cfg = resolve_config(TINY + [f"out={tmp_path}", "name=mma", "method=mma"])
    Trainer(cfg).fit()
    margins = io.load_checkpoint(tmp_path / "mma" / "checkpoints" / "last.pt")["method"]["margins"]
    data = build_data(cfg.data)
    assert margins.shape == (len(data.train),)
    loader = train_loader(data, batch_size=32, seed=cfg.train.seed)
    seen = torch.zeros(len(data.train), dtype=torch.bool)
    seen[loader.epoch_order(0)[:2 * 32]] = True  # max_steps_per_epoch=2 batches of 32
    assert (margins[~seen] == 0.005).all() and (margins[seen] != 0.005).all()
    m = make("mma")
    m.load_state_dict({"margins": margins})
    m.setup(_context(len(margins)))
    assert torch.equal(m._margins, margins)
    with pytest.raises(CheckpointError, match="training set has 10"):
        make("mma").__class__.setup(m, _context(10))


def test_mma_killed_after_an_epoch_resumes_to_the_weights_and_margins_of_a_straight_run(tmp_path,
                                                                                        die_after_checkpoint):
    over = ["method=mma", "epochs=3"]
    a = train_weights(over, tmp_path, "straight")
    with die_after_checkpoint(1, run_name="killed"):
        train_weights(over, tmp_path, "killed")
    b = train_weights(over, tmp_path, "killed")
    assert_same_weights(a, b)
    margins = [io.load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")["method"]["margins"]
               for n in ("straight", "killed")]
    assert torch.equal(*margins)


def test_mma_refuses_what_it_would_ignore():
    m = make("mma")
    assert m.d_max == pytest.approx(32 / 255) and m.eps_min == 0.005
    l2 = make("mma", attack=AttackConfig(norm="l2", eps=0.5, step_size=0.1))
    assert l2.d_max == 2.0 and l2.eps_min == 0.5
    with pytest.raises(ConfigError, match="d_max"):
        make("mma", adaptive=False, d_max=0.1)
    with pytest.raises(ConfigError, match="loss_mode"):
        make("mma", attack=AttackConfig(loss_mode="both"))
    with pytest.raises(ConfigError, match="eps_min"):
        make("mma", d_max=0.01, eps_min=0.1)
    with pytest.raises(ConfigError, match="attack_loss"):
        make("mma", attack_loss="cw")


# ------------------------------------------------------------------------------------ all four methods
@pytest.mark.parametrize("name", NEW_METHODS)
def test_new_method_trains_one_tiny_step_through_the_cli_from_its_preset(name, tmp_path):
    from ltrobust.cli import main

    assert name in METHODS.names()
    rc = main(["train", f"preset={name}-digits", "model.width=4", "epochs=1", "train.max_steps_per_epoch=1",
               "train.batch_size=16", "train.val_samples=20", "train.val_attack_steps=1", "attack.steps=2",
               "train.progress=false", f"out={tmp_path}", "name=run"])
    assert rc == 0
    row = io.read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(row["loss"]) and (tmp_path / "run" / "checkpoints" / "best.pt").exists()


@pytest.mark.parametrize("name", NEW_METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_new_method_keeps_the_model_mode_and_the_box(name, training):
    model = {"he": he_model, "mma": confident_model}.get(name, tiny_model)()
    x, _, y = batch()
    model.train(training)
    x_adv = make(name).train_attack(model, x, y)
    assert model.training is training and all(mod.training is training for mod in model.modules())
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and not torch.equal(x_adv, x)
    assert not any(p.grad is not None for p in model.parameters())  # the attack never touches parameter grads


@pytest.mark.parametrize("name", NEW_METHODS)
def test_new_method_refuses_an_unknown_option_in_one_line(name, tmp_path):
    from ltrobust.cli import main

    with pytest.raises(ConfigError, match="has no option"):
        Trainer(resolve_config(TINY + [f"preset={name}-digits", "method.nonsense=1", f"out={tmp_path}"])).fit()
    assert main(["train", f"preset={name}-digits", "method.nonsense=1", f"out={tmp_path}"]) == 2
