"""AutoAttack adapter: same numbers as the package called directly, any class count, valid outputs.

Models are 2-layer MLPs trained in a second on scikit-learn's bundled 8x8 digits (fp32, fixed seeds),
shaped as (N, 1, 8, 8) images so Square runs too.
"""

from __future__ import annotations

import logging

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from ltrobust.attacks.autoattack import (
    UPSTREAM_COMMIT,
    autoattack_plan,
    autoattack_version,
    run_autoattack,
)
from ltrobust.errors import ConfigError, DataError

EPS = 0.08
N_TEST = 24
#: Square's budget in these tests (the standard is 5000); every other setting is AutoAttack standard's.
SQUARE_QUERIES = 1000


def _digits(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    keep = y < num_classes
    return x[keep], y[keep]


class MLP(nn.Module):
    """Flatten -> Linear -> BatchNorm -> ReLU -> Linear; BatchNorm makes the train / eval mode matter."""

    def __init__(self, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _trained(num_classes: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = _digits(num_classes)
    perm = torch.randperm(x.shape[0])
    x, y = x[perm], y[perm]
    x_train, y_train, x_test, y_test = x[N_TEST:], y[N_TEST:], x[:N_TEST], y[:N_TEST]
    model = MLP(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):  # full batch
        loss = nn.functional.cross_entropy(model(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    return model, x_test, y_test


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits10():
    return _trained(10)


@pytest.fixture(scope="module")
def standard_run(digits10):
    model, x, y = digits10
    model.train()  # the adapter must switch to eval and back
    x_adv, robust = run_autoattack(model, x, y, eps=EPS, version="standard", batch_size=16, seed=0,
                                   square_queries=SQUARE_QUERIES)
    return x_adv, robust


def test_standard_equals_package_called_directly(digits10, standard_run):
    from pyautoattack import AutoAttack

    model, x, y = digits10
    model.eval()
    x_adv, robust = standard_run
    adversary = AutoAttack(model, norm="Linf", eps=EPS, seed=0, version="standard", device="cpu")
    assert adversary.apgd_targeted.n_target_classes == 9 and adversary.fab.n_target_classes == 9
    adversary.square.n_queries = SQUARE_QUERIES  # the same settings on both sides
    x_ref, y_ref = adversary.run_standard_evaluation(x, y, batch_size=16)
    robust_ref = y_ref == y
    assert torch.equal(robust, robust_ref)
    assert torch.equal(x_adv, x_ref)
    # the evaluation is not vacuous: some points are broken, some survive
    clean = model(x).argmax(1) == y
    assert 0 < robust.sum() < clean.sum()


def test_robust_flags_are_the_models_predictions(digits10, standard_run):
    model, x, y = digits10
    model.eval()
    x_adv, robust = standard_run
    assert robust.dtype == torch.bool and robust.shape == (N_TEST,)
    with torch.no_grad():
        assert torch.equal(robust, model(x_adv).argmax(1) == y)


def test_adversarial_examples_in_ball_and_box(digits10, standard_run):
    _, x, _ = digits10
    x_adv, _ = standard_run
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_mode_grad_flags_and_rng_restored(digits10):
    model, x, y = digits10
    model.train()
    model.net[1].eval()  # a mixed state must come back as it was
    model.net[4].weight.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    run_autoattack(model, x[:8], y[:8], eps=EPS, version="apgd-ce-t")
    assert torch.equal(torch.rand(3), expected_next)  # the package's reseeding did not leak
    assert model.training and model.net[2].training and not model.net[1].training
    assert not model.net[4].weight.requires_grad and model.net[1].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())  # FAB's backward touched no parameter
    model.net[4].weight.requires_grad_(True)
    model.train()
    model.eval()


def test_apgd_ce_t_is_the_first_two_standard_attacks(digits10, standard_run):
    model, x, y = digits10
    _, robust_std = standard_run
    x_adv, robust = run_autoattack(model, x, y, eps=EPS, version="apgd-ce-t", batch_size=16)
    assert not (robust_std & ~robust).any()  # standard's robust set is inside the subset's
    assert (x_adv - x).abs().max() <= EPS + 1e-6


@pytest.mark.parametrize("num_classes, attacks", [
    (7, ["apgd-ce", "apgd-t", "fab-t", "square"]),
    (3, ["apgd-ce", "fab-t", "square"]),
])
def test_few_classes_run(num_classes, attacks, caplog, tmp_path):
    model, x, y = _trained(num_classes)
    plan = autoattack_plan(num_classes)
    assert plan["attacks"] == attacks and plan["n_target_classes"] == num_classes - 1
    with caplog.at_level(logging.WARNING, logger="ltrobust.attacks.autoattack"):
        x_adv, robust = run_autoattack(model, x[:12], y[:12], eps=EPS, log_path=tmp_path / "aa.log",
                                       square_queries=300)
    assert ("left out" in caplog.text) == (num_classes == 3)
    ran = (tmp_path / "aa.log").read_text()
    assert robust.any()  # points survived every attack, so every attack of the plan ran
    assert all(f"robust accuracy after {a.upper()}:" in ran for a in attacks)
    assert robust.shape == (12,) and (x_adv - x[:12]).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        assert torch.equal(robust, model(x_adv).argmax(1) == y[:12])


def test_plan():
    assert autoattack_plan(10)["n_target_classes"] == 9
    assert autoattack_plan(100)["n_target_classes"] == 9
    assert autoattack_plan(2)["attacks"] == ["apgd-ce", "fab-t", "square"]
    assert autoattack_plan(2, "rand")["attacks"] == ["apgd-ce"]
    assert autoattack_plan(10, "apgd-ce-t")["attacks"] == ["apgd-ce", "apgd-t"]
    assert autoattack_plan(10, n_target_classes=3)["n_target_classes"] == 3
    with pytest.raises(ConfigError, match=r"\[1, 6\]"):
        autoattack_plan(7, n_target_classes=7)


def test_errors(digits10):
    model, x, y = digits10
    with pytest.raises(ConfigError, match="norm 'L1'"):
        run_autoattack(model, x, y, eps=EPS, norm="L1")
    with pytest.raises(ConfigError, match="version 'fast'"):
        run_autoattack(model, x, y, eps=EPS, version="fast")
    with pytest.raises(ConfigError, match="eps"):
        run_autoattack(model, x, y, eps=0.0)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        run_autoattack(model, x * 2 - 1, y, eps=EPS)


def test_log_file_and_version(digits10, tmp_path):
    model, x, y = digits10
    path = tmp_path / "logs" / "aa.log"
    run_autoattack(model, x[:6], y[:6], eps=EPS, version="apgd-ce-t", log_path=path)
    text = path.read_text()
    assert "initial accuracy" in text and "robust accuracy" in text
    assert not logging.getLogger("auto-attack").handlers
    info = autoattack_version()
    assert info == {"package": "pyautoattack", "version": "0.2.0", "verified_version": "0.2.0",
                    "upstream": f"fra31/auto-attack@{UPSTREAM_COMMIT}"}
