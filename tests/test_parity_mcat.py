"""The MCAT parity module's own logic (benchmarks/parity/mcat.py), without the authors' checkout (CI has none):
the key maps from the release's models (torchvision's ResNet-18 with the CIFAR stem, ``--arch resnet18_cifar``) and
its class-conditional generators (``G.{c}.net.``) to ltrobust's, checked by function, and the code variant's preset
settings that follow the release."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from benchmarks.parity.core import load_mapped, map_state
from benchmarks.parity.mcat import GENERATORS, RESNET18
from ltrobust.config import resolve_config
from ltrobust.losses.mcat import class_groups
from ltrobust.methods.mcat import ClassGenerators
from ltrobust.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


class _TheirResNet(nn.Module):
    """A stand-in with the release's FeatClassifier(ResNet18Encoder(cifar_stem=True)) names: encoder.* from
    torchvision's resnet18 (3x3 stem, no max-pool), classifier = Linear; forward -> (logits, features)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        m = torchvision.models.resnet18(weights=None)
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.encoder = nn.Sequential()
        for name in ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            self.encoder.add_module(name, getattr(m, name))
        self.classifier = nn.Linear(512, classes)

    def forward(self, x):
        f = torch.flatten(self.encoder(x), 1)
        return self.classifier(f), f


class _TheirGenerators(nn.Module):
    """The release's ClassConditionalGenerators names: G[c].net = Linear, ReLU, ..., Linear."""

    def __init__(self, classes: int, z: int, d: int, hidden: list[int]) -> None:
        super().__init__()

        def gen():
            g = nn.Module()
            layers, w = [], z
            for h in hidden:
                layers += [nn.Linear(w, h), nn.ReLU()]
                w = h
            g.net = nn.Sequential(*layers, nn.Linear(w, d))
            return g

        self.G = nn.ModuleList(gen() for _ in range(classes))


def test_resnet18_map_gives_the_same_function():
    torch.manual_seed(0)
    theirs = _TheirResNet(10).eval()
    cfg = resolve_config(["preset=mcat-code-cifar100lt-resnet18"])
    mine = build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, 32).eval()
    m = map_state(theirs.state_dict(), mine.state_dict(), RESNET18)
    assert m["encoder.layer2.0.downsample.0.weight"] == "backbone.layer2.0.shortcut.0.weight"
    assert m["classifier.weight"] == "head.weight"
    load_mapped(mine, theirs.state_dict(), m)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), theirs(x)[0], rtol=1e-5, atol=1e-5)


def test_generator_map_gives_the_same_function():
    torch.manual_seed(0)
    theirs = _TheirGenerators(3, 4, 6, [5, 5])
    mine = ClassGenerators(3, 4, 6, [5, 5])
    m = map_state(theirs.state_dict(), mine.state_dict(), GENERATORS)
    assert m["G.2.net.4.bias"] == "generators.2.4.bias"
    load_mapped(mine, theirs.state_dict(), m)
    y = torch.tensor([2, 0, 2, 1])
    z = torch.randn(4, 4)
    with torch.no_grad():
        expected = torch.stack([theirs.G[int(c)].net(z[i]) for i, c in enumerate(y)])
        torch.testing.assert_close(mine(z, class_groups(y)), expected)


def test_code_preset_follows_the_release():
    cfg = resolve_config(["preset=mcat-code-cifar100lt-resnet18"])
    assert cfg.model.normalize is False  # ToTensor only (mcat/data.py)
    assert cfg.train.drop_last is True  # their DataLoader(drop_last=True)
    assert cfg.train.precision == "fp32" and cfg.train.schedule == "constant"
    assert cfg.attack.random_start == "none" and cfg.method.args["variant"] == "code"
