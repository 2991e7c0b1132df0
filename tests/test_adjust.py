"""Inference-stage adjustments: exact values on hand-computed tensors, tau = 0 identities, gradients.

The tiny model has identity features (f = x, D = 2) and a linear head
    W = [[3, 4], [1, 0], [0, 2]],  b = [0.5, -1, 0],
so for x = [1, 2] the logits are z = W x + b = [11.5, 0, 4] and ||W_c|| = [5, 1, 2].
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust.evaluation.adjust import cdt, logit_adjust, mean_feature, none, tau_norm, tde
from ltrobust.errors import ConfigError
from ltrobust.registry import ADJUSTMENTS

W = [[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]
B = [0.5, -1.0, 0.0]
X = [[1.0, 2.0]]


class Tiny(nn.Module):
    """features(x) = x (through a BatchNorm-free identity layer); head: linear (C=3, D=2)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.body = nn.Identity()
        self.head = nn.Linear(2, 3, bias=bias)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(W, dtype=torch.float64).float())
            if bias:
                self.head.bias.copy_(torch.tensor(B))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyCosineHead(nn.Module):
    """``scale * <f/||f||, W_c/(||W_c|| + gamma)>`` with W = [[3, 4], [0, 2]], gamma = 0, scale = 10."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        self.gamma = 0.0
        self.scale = 10.0

    def cosine(self, f: torch.Tensor) -> torch.Tensor:
        w = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.gamma)
        return F.normalize(f, dim=1) @ w.t()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(f)


class TinyCosine(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.head = TinyCosineHead()


def _x(requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(X, requires_grad=requires_grad)


def test_model_logits():
    assert Tiny()(_x()).tolist() == [[11.5, 0.0, 4.0]]


def test_logit_adjust_values():
    counts = [6, 3, 1]  # pi = [0.6, 0.3, 0.1]
    h = logit_adjust(Tiny(), counts, tau=1.0)(_x())
    want = [11.5 - math.log(0.6), 0.0 - math.log(0.3), 4.0 - math.log(0.1)]
    assert h[0].tolist() == pytest.approx(want, abs=1e-6)
    h2 = logit_adjust(Tiny(), counts, tau=2.0)(_x())
    assert h2[0].tolist() == pytest.approx([11.5 - 2 * math.log(0.6), -2 * math.log(0.3), 4 - 2 * math.log(0.1)],
                                           abs=1e-6)


def test_tau_norm_values():
    # W / ||W||   = [[0.6, 0.8], [1, 0], [0, 1]]     -> h = [2.2, 1, 2]
    # W / ||W||^2 = [[0.12, 0.16], [1, 0], [0, 0.5]] -> h = [0.44, 1, 1]
    assert tau_norm(Tiny(), [6, 3, 1], tau=1.0)(_x())[0].tolist() == pytest.approx([2.2, 1.0, 2.0], abs=1e-6)
    assert tau_norm(Tiny(), None, tau=2.0)(_x())[0].tolist() == pytest.approx([0.44, 1.0, 1.0], abs=1e-6)
    # the bias is dropped (Kang et al.) unless kept
    kept = tau_norm(Tiny(), None, tau=1.0, keep_bias=True)(_x())[0]
    assert kept.tolist() == pytest.approx([2.7, 0.0, 2.0], abs=1e-6)
    assert tau_norm(Tiny(), None, tau=0.0)(_x())[0].tolist() == [11.0, 1.0, 4.0]  # W x, no bias


def test_cdt_values():
    counts = [4, 2, 1]
    assert cdt(Tiny(), counts, tau=1.0)(_x())[0].tolist() == [2.875, 0.0, 4.0]  # z / n
    assert cdt(Tiny(), counts, tau=0.5)(_x())[0].tolist() == pytest.approx([5.75, 0.0, 4.0], abs=1e-6)


def test_tde_linear_values():
    # d = [0, 1]; <f, d> = 2 = cos(f, d) ||f||; alpha 0.5: f' = [1, 2 - 0.5 * 2] = [1, 1]
    # h = W f' + b = [7.5, 0, 2]
    h = tde(Tiny(), [6, 3, 1], tau=0.5, mean_feature=torch.tensor([0.0, 3.0]))(_x())
    assert h[0].tolist() == pytest.approx([7.5, 0.0, 2.0], abs=1e-6)
    # a direction not on an axis: d = [0.6, 0.8], <f, d> = 2.2, alpha 1: f' = f - 2.2 d = [-0.32, 0.24]
    h = tde(Tiny(), None, tau=1.0, mean_feature=torch.tensor([3.0, 4.0]))(_x())
    f2 = [1 - 2.2 * 0.6, 2 - 2.2 * 0.8]
    assert h[0].tolist() == pytest.approx([3 * f2[0] + 4 * f2[1] + 0.5, f2[0] - 1.0, 2 * f2[1]], abs=1e-6)


def test_tde_cosine_values():
    # f = [3, 4]: u = [0.6, 0.8]; d = [0, 1]; cos = 0.8; alpha 0.5: v = [0.6, 0.4] (not renormalised)
    # W~ = [[0.6, 0.8], [0, 1]]; h = 10 * [0.36 + 0.32, 0.4] = [6.8, 4.0]
    x = torch.tensor([[3.0, 4.0]])
    model = TinyCosine()
    h = tde(model, None, tau=0.5, mean_feature=torch.tensor([0.0, 2.0]))(x)
    assert h[0].tolist() == pytest.approx([6.8, 4.0], abs=1e-5)
    h0 = tde(model, None, tau=0.0, mean_feature=torch.tensor([0.0, 2.0]))(x)
    assert h0[0].tolist() == pytest.approx(model(x)[0].tolist(), abs=1e-5)  # [10, 8]


def _random_models():
    torch.manual_seed(0)
    for bias in (True, False):
        m = Tiny(bias=bias)
        with torch.no_grad():
            m.head.weight.copy_(torch.randn(3, 2))
            if bias:
                m.head.bias.copy_(torch.randn(3))
        yield m


@pytest.mark.parametrize("name", ["none", "logit_adjust", "cdt", "tau_norm"])
def test_tau_zero_is_the_original_model_exactly(name):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    for model in _random_models():
        kw = {"keep_bias": True} if name == "tau_norm" else {}
        wrapped = ADJUSTMENTS.build(name, model, [500, 50, 5], tau=0.0, **kw)
        assert torch.equal(wrapped(x), model(x))
        if name == "tau_norm" and model.head.bias is None:  # the default drops a bias: none here
            assert torch.equal(tau_norm(model, None, tau=0.0)(x), model(x))


def _grad(wrapper: nn.Module) -> list[float]:
    x = _x(requires_grad=True)
    wrapper(x).sum().backward()
    return x.grad[0].tolist()


def test_gradients_reach_the_input_through_the_wrapper():
    # d(sum_c h_c)/dx with f = x:
    assert _grad(logit_adjust(Tiny(), [6, 3, 1])) == pytest.approx([4.0, 6.0])  # sum_c W_c
    assert _grad(tau_norm(Tiny(), None, tau=1.0)) == pytest.approx([1.6, 1.8])  # sum_c W_c / ||W_c||
    assert _grad(cdt(Tiny(), [4, 2, 1], tau=1.0)) == pytest.approx([1.25, 3.0])  # sum_c W_c / n_c
    # (I - alpha d d^T) sum_c W_c with d = [0, 1], alpha = 0.5
    assert _grad(tde(Tiny(), None, tau=0.5, mean_feature=torch.tensor([0.0, 1.0]))) == pytest.approx([4.0, 3.0])


def test_attack_gradient_is_that_of_the_deployed_logits():
    """CE gradient through logit adjustment is sum_c (softmax(h)_c - 1[c = y]) W_c, not that of z."""
    counts = [6, 3, 1]
    wrapped = logit_adjust(Tiny(), counts, tau=1.0)
    x = _x(requires_grad=True)
    y = torch.tensor([2])
    (g,) = torch.autograd.grad(F.cross_entropy(wrapped(x), y), x)
    h = torch.tensor([[11.5 - math.log(0.6), -math.log(0.3), 4 - math.log(0.1)]])
    coef = torch.softmax(h, 1)[0] - torch.tensor([0.0, 0.0, 1.0])
    want = coef @ torch.tensor(W)
    assert torch.allclose(g[0], want, atol=1e-6)
    (g_raw,) = torch.autograd.grad(F.cross_entropy(Tiny()(x), y), x)
    assert not torch.allclose(g, g_raw, atol=1e-3)


def test_wrapper_keeps_features_head_and_mode():
    model = Tiny()
    wrapped = logit_adjust(model, [6, 3, 1])
    x = _x()
    assert torch.equal(wrapped.features(x), model.features(x))
    assert wrapped.head is model.head
    z, f = wrapped(x, return_features=True)
    assert torch.equal(z, wrapped(x)) and torch.equal(f, x)
    wrapped.eval()
    assert not model.training
    wrapped.train()
    assert model.training
    assert wrapped.describe() == {"adjust": "logit_adjust", "tau": 1.0}
    assert none(model)(x).tolist() == model(x).tolist()


def test_registry():
    assert {"none", "logit_adjust", "tau_norm", "cdt", "tde"} <= set(ADJUSTMENTS.names())
    assert ADJUSTMENTS.get("tde") is tde


def test_mean_feature():
    model = Tiny()
    model.train()
    images = torch.tensor([[1.0, 2.0], [3.0, 6.0], [2.0, 1.0]])
    assert mean_feature(model, images, batch_size=2).tolist() == [2.0, 3.0]
    assert mean_feature(model, [(images[:1], None), (images[1:], None)]).tolist() == [2.0, 3.0]
    assert model.training


def test_errors():
    with pytest.raises(ConfigError, match="zero counts"):
        logit_adjust(Tiny(), [6, 0, 1])
    with pytest.raises(ConfigError, match="3 classes"):
        cdt(Tiny(), [6, 3])
    with pytest.raises(ConfigError, match="linear head"):
        tau_norm(TinyCosine(), None)
    with pytest.raises(ConfigError, match="mean_feature"):
        tde(Tiny(), None)
    with pytest.raises(ConfigError, match="features"):
        tau_norm(nn.Linear(2, 3), None)


# ------------------------------------------------------------------ composition with the deployed model
def _method_names() -> list[str]:
    import ltrobust.methods  # noqa: F401  (registers every method)
    from ltrobust.registry import METHODS

    return METHODS.names()


@pytest.mark.parametrize("method", _method_names())
def test_every_adjustment_at_identity_serves_the_deployed_logits(method):
    """Each adjustment at its identity setting (tau 0; tau_norm keeping the bias; tde alpha 0) serves the
    method's deployed logits exactly: an adjustment composes with the deployed rule (RoBal's Eq. 11 with
    -tau_p log pi), never with the bare head."""
    from dataclasses import replace

    from ltrobust.config import resolve_config
    from ltrobust.evaluation.runs import build_deployed
    from ltrobust.models import build_model
    from ltrobust.registry import METHODS

    extra = ["tau_p=1.5"] if method == "robal" else []
    cfg = resolve_config([f"method={method}", "dataset=digits-lt", "model=smallcnn", "model.width=4", *extra])
    head = METHODS.get(method).required_head or cfg.model.head
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, head=head), num_classes=3, in_channels=1, mean=None, std=None,
                        image_size=8).eval()
    counts, x = [6, 3, 1], torch.rand(4, 1, 8, 8)
    _, deployed = build_deployed(cfg, model, counts)
    with torch.no_grad():
        expected = deployed(x)
        identities = {"logit_adjust": {}, "cdt": {}, "tau_norm": {"keep_bias": True},
                      "tde": {"mean_feature": model.features(torch.rand(8, 1, 8, 8)).mean(0)}}
        for name, options in identities.items():
            adj = resolve_config(["eval.adjust=" + name, "eval.adjust_tau=0"], base=cfg)
            if name == "tau_norm" and head == "cosine":
                with pytest.raises(ConfigError, match="linear head"):
                    build_deployed(adj, model, counts, adjust_options=options)
                continue
            served = build_deployed(adj, model, counts, adjust_options=options)[1]
            assert torch.allclose(served(x), expected, atol=1e-5), (method, name)
            f = served.features(x)
            assert torch.allclose(served.logits_from_features(f), expected, atol=1e-5), (method, name)
