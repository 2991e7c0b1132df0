"""Models: every registered architecture at a tiny width, the heads, normalisation, reference sizes."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltrobust.config import ModelConfig
from ltrobust.errors import ConfigError
from ltrobust.models import CosineHead, LinearHead, LTModel, build_model, make_head, replace_head
from ltrobust.registry import MODELS

HAS_TIMM = importlib.util.find_spec("timm") is not None
NUM_CLASSES = 5

# Tiny configurations (factory kwargs, input side in px); a newly registered model gets width 4 at 32 px.
TINY: dict[str, tuple[dict, int]] = {
    "wideresnet": ({"width": 2, "depth": 10, "widen": 2}, 32),
    "wrn34_10": ({"width": 1}, 16),
    "wrn28_10": ({"width": 1}, 16),
    "vit_b16": ({"width": 16, "depth": 2, "patch_size": 8}, 32),
    "smallcnn": ({"width": 4}, 8),
    "mlp": ({"width": 8}, 8),
}
FIXED_INPUT_SIZE = {"mlp", "vit_b16"}  # input size fixed at build time
MIN_INPUT_SIZE = {"resnet50": 32, "resnet18_imagenet": 32}  # ImageNet stem; the CIFAR-stem models take 8 px


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_model(name: str, in_channels: int = 3, **kw) -> tuple[LTModel, int]:
    if name == "vit_b16" and not HAS_TIMM:
        pytest.skip("timm is not installed (pip install -e '.[vit]')")
    factory_kw, size = TINY.get(name, ({"width": 4}, 32))
    torch.manual_seed(0)
    model = MODELS.build(name, num_classes=NUM_CLASSES, in_channels=in_channels, image_size=size,
                         **factory_kw, **kw)
    return model, size


def first_layer(model: LTModel) -> nn.Module:
    return next(m for m in model.backbone.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize(("head", "in_channels"), [("linear", 3), ("cosine", 1)])
def test_model_forward_backward(name, head, in_channels):
    model, size = tiny_model(name, in_channels, head=head, mean=[0.4] * in_channels, std=[0.2] * in_channels)
    assert isinstance(model, LTModel)
    assert isinstance(model.head, CosineHead if head == "cosine" else LinearHead)
    assert model.num_classes == NUM_CLASSES
    x = torch.rand(2, in_channels, size, size, requires_grad=True)
    y = torch.tensor([0, NUM_CLASSES - 1])

    model.train()
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert model.features(x).shape == (2, model.feature_dim)
    F.cross_entropy(logits, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert first_layer(model).weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0  # attacks need input gradients

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.features(x)))


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n not in FIXED_INPUT_SIZE])
def test_model_accepts_other_input_sizes(name):
    model, _ = tiny_model(name)
    side = MIN_INPUT_SIZE.get(name, 8)
    model.eval()
    with torch.no_grad():
        for shape in [(side, side), (side + 8, side + 4)]:
            assert model(torch.rand(1, 3, *shape)).shape == (1, NUM_CLASSES)


# --- heads -------------------------------------------------------------------------------------------


def test_cosine_head_matches_formula_by_hand():
    head = CosineHead(3, 2, scale=10.0, gamma=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]))  # norms 5 and 2
    f = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]])  # norms 1 and 5
    # <f/||f||, W_c/(||W_c|| + gamma)>: gamma is added to the weight norm only.
    expected = torch.tensor([[3.0 / 5.5, 0.0], [(4.0 * 3 / 5) / 5.5, (2.0 * 4 / 5) / 2.5]])
    torch.testing.assert_close(head.cosine(f), expected)
    torch.testing.assert_close(head(f), 10.0 * expected)


def test_cosine_head_is_invariant_to_feature_scale_and_bounded():
    torch.manual_seed(0)
    head = CosineHead(16, 4)
    f = torch.randn(8, 16)
    torch.testing.assert_close(head(f), head(3.7 * f))
    assert head.cosine(f).abs().max() < 1.0  # gamma > 0 keeps |cos| strictly below 1
    assert torch.isfinite(head(torch.zeros(2, 16))).all()


def test_heads_expose_what_adjustments_need():
    linear = make_head("linear", 8, 3)
    assert isinstance(linear, LinearHead) and linear.weight.shape == (3, 8) and linear.bias.shape == (3,)
    assert (linear.in_features, linear.num_classes) == (8, 3)
    assert LinearHead(8, 3, bias=False).bias is None
    cosine = make_head("cosine", 8, 3, scale=16.0, gamma=0.0)
    assert (cosine.scale, cosine.gamma, cosine.weight.shape) == (16.0, 0.0, (3, 8))
    with pytest.raises(ConfigError, match="model.head=cosine"):
        make_head("arcface", 8, 3)


def test_model_head_options_reach_the_cosine_head():
    model, _ = tiny_model("smallcnn", head="cosine", cosine_scale=16.0, cosine_gamma=0.0)
    assert (model.head.scale, model.head.gamma) == (16.0, 0.0)


def test_replace_head():
    model, size = tiny_model("smallcnn")
    replace_head(model, CosineHead(model.feature_dim, 7))
    assert model(torch.rand(2, 3, size, size)).shape == (2, 7) and model.num_classes == 7
    with pytest.raises(ConfigError, match="feature_dim"):
        replace_head(model, LinearHead(model.feature_dim + 1, 7))


# --- normalisation ---------------------------------------------------------------------------------


def test_normalisation_happens_inside_the_model():
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    model, size = tiny_model("smallcnn", mean=mean, std=std)
    plain, _ = tiny_model("smallcnn")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")},
                          strict=False)
    model.eval()
    plain.eval()
    x = torch.rand(4, 3, size, size)
    by_hand = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(by_hand))
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())  # checkpoints carry it


def test_normalisation_errors():
    with pytest.raises(ConfigError, match="one mean per channel"):
        tiny_model("smallcnn", in_channels=1, mean=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="positive"):
        tiny_model("smallcnn", mean=[0.5] * 3, std=[0.2, 0.0, 0.2])


# --- reference architectures -----------------------------------------------------------------------


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "num_classes", "expected"),
    [
        ("resnet18", 10, 11_173_962),  # kuangliu / RoBal / REAT / AT-BSL ResNet-18
        ("resnet34", 10, 21_282_122),
        ("preact_resnet18", 10, 11_172_170),  # Rice et al.: kuangliu's 11,171,146 + final BN(512)
        ("wrn34_10", 10, 46_160_474),  # TRADES WRN-34-10 (without the unused sub_block1)
        ("wrn28_10", 10, 36_479_194),
    ],
)
def test_reference_parameter_counts(name, num_classes, expected):
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        model = MODELS.build(name, num_classes=num_classes)
    assert num_params(model) == expected


def test_resnet50_is_torchvisions_resnet50():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        model = MODELS.build("resnet50", num_classes=1000)
        reference = torchvision.models.resnet50(weights=None)
    assert num_params(model) == num_params(reference) == 25_557_032
    ours = {k: v.shape for k, v in model.backbone.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert ours == theirs  # torchvision checkpoints load into model.backbone


def test_resnet18_imagenet_computes_torchvisions_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    model = MODELS.build("resnet18_imagenet", num_classes=10, image_size=64).eval()
    assert num_params(model) == num_params(reference) == 11_181_642
    state = {("head." + k[3:] if k.startswith("fc.") else "backbone." + k): v for k, v in reference.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and sorted(missing) == ["normalize.mean", "normalize.std"]  # identity by default
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))  # the same network, operation for operation
    assert model.backbone.conv1.kernel_size == (7, 7) and isinstance(model.backbone.maxpool, nn.MaxPool2d)


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install -e '.[vit]')")
def test_vit_b16_is_timms_vit_base_patch16_224():
    import timm

    with torch.device("meta"):
        model = MODELS.build("vit_b16", num_classes=1000)
        reference = timm.create_model("vit_base_patch16_224", pretrained=False)
    assert model.feature_dim == 768
    assert num_params(model) == num_params(reference) == 86_567_656


def test_vit_without_timm_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)  # import now fails
    with pytest.raises(ConfigError, match=r"pip install 'timm>=0\.9' \(or, in the ltrobust source folder, pip install -e "
                                          r"'\.\[vit\]'\)"):
        MODELS.build("vit_b16", num_classes=3)


# --- building from the config ------------------------------------------------------------------------


def test_build_model_from_config():
    cfg = ModelConfig(name="wideresnet", width=2, depth=10, widen=2, head="cosine", cosine_scale=16.0)
    model = build_model(cfg, num_classes=4, in_channels=1, mean=[0.5], std=[0.25], image_size=8)
    assert isinstance(model.head, CosineHead) and model.head.scale == 16.0
    assert model.feature_dim == 4 * 2 * 2 and model.in_channels == 1
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    default = build_model(ModelConfig(), num_classes=10, in_channels=3, mean=None, std=None, image_size=8)
    assert default.feature_dim == 4 * 32  # smallcnn at its default width


def test_build_model_rejects_options_the_architecture_lacks():
    with pytest.raises(ConfigError, match="model.depth=28 does not apply to 'resnet18'"):
        build_model(ModelConfig(name="resnet18", depth=28), 10, 3, None, None, 32)


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("resnet18", {"width": 0}, "width=0"),
        ("wideresnet", {"depth": 30}, "6n \\+ 4"),
        ("mlp", {}, "image_size"),
        ("resnet50", {"image_size": 16}, "at least 32 px"),
        ("not_a_model", {}, "unknown model"),
    ],
)
def test_bad_model_options_raise_config_errors(name, kw, match):
    with pytest.raises(ConfigError, match=match):
        MODELS.build(name, num_classes=3, **kw)


def test_model_normalize_false_feeds_pixels_to_the_network():
    """model.normalize=false (the official codes of the seed papers): the data set's mean / std are not used."""
    from ltrobust.config import ModelConfig
    from ltrobust.models import build_model

    on = build_model(ModelConfig(name="smallcnn", width=4), 10, 3, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 8)
    off = build_model(ModelConfig(name="smallcnn", width=4, normalize=False), 10, 3, (0.5, 0.4, 0.3),
                      (0.2, 0.2, 0.2), 8)
    assert torch.equal(off.normalize.mean, torch.zeros(1, 3, 1, 1)) and torch.equal(off.normalize.std, torch.ones(1, 3, 1, 1))
    assert torch.allclose(on.normalize.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(off.normalize(x), x)
