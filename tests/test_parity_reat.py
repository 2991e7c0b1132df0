"""The REAT parity module (benchmarks/parity/reat.py): the pieces of logic of its own, without the official checkout.

- the key map from the REAT code's ResNet-18 names to ltrobust's (a wrong name must fail the check);
- the reading of their attack start off ``loss_functions.REAT`` (a stand-in file with and without a clip);
- the loaders that hand both codes the same batches epoch by epoch;
- ltrobust's side of the two-epoch step check on digits-LT: the second epoch's RBL weights come from the first
  epoch's predicted classes (the trainer's ``on_epoch_end``), and the injected starts are used in order.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def reat(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.parity.reat as reat

    return reat


def test_resnet18_key_map_by_hand(reat):
    km = reat.RESNET18
    pairs = {
        "conv1.0.weight": "backbone.conv1.weight",
        "conv1.1.running_var": "backbone.bn1.running_var",
        "layer1.0.residual_function.0.weight": "backbone.layer1.0.conv1.weight",
        "layer1.1.residual_function.1.bias": "backbone.layer1.1.bn1.bias",
        "layer3.0.residual_function.3.weight": "backbone.layer3.0.conv2.weight",
        "layer4.1.residual_function.4.num_batches_tracked": "backbone.layer4.1.bn2.num_batches_tracked",
        "layer2.0.shortcut.0.weight": "backbone.layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.running_mean": "backbone.layer2.0.shortcut.1.running_mean",
        "fc.weight": "head.weight",
        "fc.bias": "head.bias",
    }
    for theirs, ours in pairs.items():
        assert km.ours_key(theirs) == ours, theirs


def test_resnet18_key_map_covers_ltrobusts_model_and_rejects_a_wrong_name(reat):
    """Their names, built from ltrobust's ResNet-18 by the inverse of the map, all map back, every key of ours hit;
    one misnamed key (a residual_function index that does not exist) fails the check."""
    from benchmarks.parity.core import ParityError, map_state

    from ltrobust.config import resolve_config
    from ltrobust.models import build_model

    cfg = resolve_config(["preset=reat-cifar10lt-resnet18"])
    mine = build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, 32).state_dict()
    inverse = [("backbone.", ""), ("head.", "fc."), (".conv1.", ".residual_function.0."),
               (".bn1.", ".residual_function.1."), (".conv2.", ".residual_function.3."),
               (".bn2.", ".residual_function.4.")]
    theirs = {}
    for k, v in mine.items():
        if k.startswith("normalize."):
            continue
        t = k
        for a, b in inverse:
            t = t.replace(a, b, 1) if a in ("backbone.", "head.") else t.replace(a, b)
        t = t.replace("conv1.", "conv1.0.", 1) if t.startswith("conv1.") else t
        t = t.replace("bn1.", "conv1.1.", 1) if t.startswith("bn1.") else t
        theirs[t] = v
    m = map_state(theirs, mine, reat.RESNET18)
    assert len(m) == len(mine) - 2  # all but the identity normalisation (model.normalize=false: mean 0, std 1)
    bad = dict(theirs)
    bad["layer1.0.residual_function.2.weight"] = bad.pop("layer1.0.residual_function.3.weight")
    with pytest.raises(ParityError, match="residual_function.2"):
        map_state(bad, mine, reat.RESNET18)


def _their_start_of(reat, tmp_path: Path, body: str) -> str:
    from benchmarks.parity.official import Checkout

    (tmp_path / "loss_functions.py").write_text(body)
    with Checkout(tmp_path) as ck:
        return reat._their_start(SimpleNamespace(checkout=ck))


START = '''
import torch


def REAT(model, x, y, optimizer, sample_per_class, at_per_class, args):
    epsilon = args.eps
    x_adv = x.detach() + torch.FloatTensor(*x.shape).uniform_(-epsilon, epsilon)
{clip}    for _ in range(args.ns):
        x_adv = x_adv + 0.0
    return x_adv
'''


def test_their_start_read_off_the_code(reat, tmp_path):
    assert _their_start_of(reat, tmp_path, START.format(clip="")) == \
        "x + U(-eps, eps), not clipped before the first forward"
    clipped = START.format(clip="    x_adv = torch.clamp(x_adv, 0.0, 1.0)\n")
    assert _their_start_of(reat, tmp_path, clipped) == "x + U(-eps, eps), clipped before the first forward"
    ours = SimpleNamespace(attack=SimpleNamespace(random_start="uniform_unclipped"))
    assert reat._our_start(ours) == "x + U(-eps, eps), not clipped before the first forward"
    ours.attack.random_start = "uniform"
    assert reat._our_start(ours) == "x + U(-eps, eps), clipped before the first forward"


def test_loaders_give_each_epoch_its_batches(reat):
    b = [[(torch.full((2, 1), float(e * 10 + i)), torch.tensor([e, i])) for i in range(3)] for e in range(2)]
    theirs = reat._EpochLoader(b)
    assert len(theirs) == 3
    first, second = list(theirs), list(theirs)
    assert [float(x[0, 0]) for x, _, _ in first] == [0.0, 1.0, 2.0]
    assert [float(x[0, 0]) for x, _, _ in second] == [10.0, 11.0, 12.0]
    assert torch.equal(first[0][2], torch.arange(2))  # (input, target, index) as their IMBALANCECIFAR10
    ours = reat._OurLoader(b, drop_last=False)
    ours.set_epoch(1)
    assert [float(x[0, 0]) for x, _ in ours] == [10.0, 11.0, 12.0] and len(ours) == 3


def test_our_loop_updates_rbl_weights_between_epochs_and_injects_starts(reat, tmp_path):
    """ltrobust's side of the step check on digits-LT: epoch 0 attacks with the weights of n_c, epoch 1 with the
    weights of epoch 0's predicted classes (what the trainer's on_epoch_end sets), and given starts are used."""
    from benchmarks.parity import ours

    from ltrobust.data import build_data
    from ltrobust.methods.reat import smoothed_rbl_weights

    cfg = ours.preset("reat-digits", "model=smallcnn", "model.width=4", "train.batch_size=8", "train.progress=false",
                      f"out={tmp_path}", "name=run")
    data = build_data(cfg.data)
    tr = ours.trainer(cfg, data, tmp_path / "run")
    epochs = [ours.batches(data.train.subset(torch.arange(e * 16, e * 16 + 16)), 8, 2) for e in range(2)]
    starts = [torch.full_like(x, 0.01 * (i + 1)) for i, (x, _) in enumerate(b for ep in epochs for b in ep)]
    steps, records = reat._our_loop(tr, epochs, iter(range(4)), starts)
    assert len(steps) == 4 and len(records) == 2
    counts = data.class_counts
    assert torch.equal(steps[0][1]["weights"], smoothed_rbl_weights(counts, counts))
    assert steps[2][1]["at"] == [float(c) for c in records[0]["ae_pred_counts"]]
    assert torch.equal(steps[2][1]["weights"], smoothed_rbl_weights(records[0]["ae_pred_counts"], counts))
    assert sum(records[0]["ae_pred_counts"]) == 16
    for i, (rec, _) in enumerate(steps):  # the first attack forward is at x + the injected start
        x = epochs[i // 2][i % 2][0]
        assert torch.allclose(rec.attack_inputs[0] - x, starts[i], atol=1e-7)
    assert "train_step" not in vars(tr)  # the trainer's own step restored
