"""The RobustLT parity module's own logic (benchmarks/parity/robustlt.py), without the authors' checkout (CI has
none): the key maps from the release's ``Networks`` naming to ltrobust's WRN-28-10 and ResNet-18, the copy of their
normalisation constants into ltrobust's buffers, and the presets' settings that follow the release's code."""

from __future__ import annotations

import pytest
import torch

from benchmarks.parity.core import ParityError, map_state
from benchmarks.parity.robustlt import KEYMAPS, RESNET18, RESNET18_COS, WRN, _their_normalisation
from ltrobust.config import resolve_config
from ltrobust.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _ours(name: str) -> torch.nn.Module:
    cfg = resolve_config(["preset=robustlt-at-bsl-cifar10lt-wrn28", f"model.name={name}"])
    return build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, 32)


def _their_wrn_keys() -> list[str]:
    """The state-dict keys of the release's Networks(wrn-28-10, FC): backbone WideResNet (block{1,2,3}.layer.{0..3},
    convShortcut where the width changes, a final bn1) and classifier.fc."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["backbone.conv1.weight"]
    for b in (1, 2, 3):
        for i in range(4):
            p = f"backbone.block{b}.layer.{i}."
            keys += [p + f"bn1.{s}" for s in bn] + [p + "conv1.weight"] + [p + f"bn2.{s}" for s in bn]
            keys += [p + "conv2.weight"] + ([p + "convShortcut.weight"] if i == 0 else [])
    keys += [f"backbone.bn1.{s}" for s in bn] + ["classifier.fc.weight", "classifier.fc.bias"]
    return keys


def test_wrn_key_map_by_hand():
    assert WRN.ours_key("backbone.block2.layer.0.convShortcut.weight") == "backbone.block2.0.shortcut.weight"
    assert WRN.ours_key("backbone.block1.layer.3.bn1.weight") == "backbone.block1.3.bn1.weight"  # not the final bn
    assert WRN.ours_key("backbone.bn1.running_var") == "backbone.bn.running_var"
    assert WRN.ours_key("classifier.fc.bias") == "head.bias"
    assert RESNET18.ours_key("backbone.layer3.0.shortcut.1.weight") == "backbone.layer3.0.shortcut.1.weight"
    assert RESNET18.ours_key("classifier.fc.weight") == "head.weight"


def test_wrn_key_map_hits_every_key_of_ours():
    mine = _ours("wrn28_10")
    ms = {k: v for k, v in mine.state_dict().items() if not k.startswith("normalize.")}
    keys = _their_wrn_keys()
    theirs = {k: ms[WRN.ours_key(k)] for k in keys}  # shapes from ours: the check is about names
    m = map_state(theirs, ms, KEYMAPS["wrn28_10"])
    assert len(m) == len(ms) == len(keys)
    # a key of theirs the map does not know fails loudly
    with pytest.raises(ParityError):
        map_state({**theirs, "backbone.block1.layer.4.bn1.weight": torch.zeros(160)}, ms, WRN)


def test_cosine_key_map_for_the_robal_base():
    """Their Networks(resnet18, CosPlus) -> ltrobust's ResNet-18 with the RoBal preset's cosine head: the weight
    maps to head.weight, the zero bias and the TDE running mean (never read by the scale-1 forward) are declared
    unused; a key the map does not know fails loudly."""
    cfg = resolve_config(["preset=robustlt-robal-cifar10lt-wrn28", "model.name=resnet18"])
    mine = build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, 32)
    ms = {k: v for k, v in mine.state_dict().items() if not k.startswith("normalize.")}
    theirs = {k: v for k, v in ms.items() if k.startswith("backbone.")}
    theirs.update({"classifier.weight": ms["head.weight"], "classifier.bias": torch.zeros(10),
                   "classifier.moving_ed": torch.zeros(1, 512)})
    m = map_state(theirs, ms, KEYMAPS["resnet18+cos"])
    assert m["classifier.weight"] == "head.weight" and len(m) == len(ms) == len(theirs) - 2
    assert RESNET18_COS.ours_key("backbone.layer4.1.bn2.running_var") == "backbone.layer4.1.bn2.running_var"
    with pytest.raises(ParityError):
        map_state({**theirs, "classifier.fc.weight": ms["head.weight"]}, ms, RESNET18_COS)


def test_their_normalisation_into_our_buffers():
    mine = _ours("resnet18").eval()
    their_backbone = torch.nn.Module()
    their_backbone.mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    their_backbone.std = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)
    theirs = torch.nn.Module()
    theirs.backbone = their_backbone
    _their_normalisation(theirs, mine)
    x = torch.rand(2, 3, 32, 32)
    seen = []
    h = mine.backbone.conv1.register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
    with torch.no_grad():
        mine(x)
    h.remove()
    torch.testing.assert_close(seen[0], (x - their_backbone.mean) / their_backbone.std)


@pytest.mark.parametrize("preset", ["robustlt-at-bsl-cifar10lt-wrn28", "robustlt-robal-cifar10lt-wrn28"])
def test_presets_train_as_the_release(preset):
    cfg = resolve_config([f"preset={preset}"])
    assert cfg.train.precision == "fp32"  # the release has no autocast
    assert cfg.train.seed == 102  # the README's --seed 102
    assert cfg.attack.bn_mode == "batch" and cfg.method.args["start"] == "global"
    assert cfg.eval.checkpoint == "last"  # their eval.py reads state-last.pt


def test_resnet18_preset_is_the_at_bsl_preset_plus_robustlt():
    """robustlt-cifar10lt-resnet18 sits beside the seed methods: every setting but the method is
    at-bsl-cifar10lt-resnet18's (which follows the AT-BSL code), so a difference between the two is RobustLT's."""
    ours, base = resolve_config(["preset=robustlt-cifar10lt-resnet18"]), resolve_config(["preset=at-bsl-cifar10lt-resnet18"])
    for part in ("data", "model", "attack", "train", "eval"):
        assert getattr(ours, part) == getattr(base, part), part
    assert ours.method.name == "robustlt" and ours.method.args["base_args"] == dict(base.method.args)
