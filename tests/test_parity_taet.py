"""The TAET parity module's own logic (benchmarks/parity/taet.py) on stand-ins: the real checkout is not in CI.

What the module adds to the shared harness: notebook cells run unchanged (``Checkout.cells``), the stage switch and
epochs read off their loop's cell, the split of a recorder's forwards into steps (the clean train-mode forward of
their loop counted apart from the attack), the key map between torchvision's ResNets and ltrobust's, and CIFAR
files with Python 2 string keys for their ``pickle.load(encoding='bytes')``.
"""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.parity import ours
from benchmarks.parity.core import ParityError, load_mapped, map_state
from benchmarks.parity.official import Checkout
from benchmarks.parity.taet import (STUBS, TORCHVISION, _EpochBatches, _records, _stage_switch, _their_epochs,
                                    patched_item)

pytestmark = pytest.mark.usefixtures("one_thread")


def _notebook(path, cells):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = {"cells": [{"cell_type": "markdown", "source": ["# title"]}] +
                   [{"cell_type": "code", "source": c.splitlines(keepends=True)} for c in cells]}
    path.write_text(json.dumps(nb))


def _standin(tmp_path, switch: int = 40, epochs: int = 100):
    cells = ["x = 1"] * 9
    cells[2] = "y = x + 1\nz = y * 10"
    cells[3] = "!pip install nothing"
    cells[7] = (f"def train_model(model, num_epochs=100):\n    for epoch in range(num_epochs):\n"
                f"        if epoch < {switch}:\n            pass\n")
    cells[8] = f"train_model(None, num_epochs={epochs})"
    _notebook(tmp_path / "repo" / "code" / "TAET" / "TAET.ipynb", cells)
    return Checkout(tmp_path / "repo")


def test_cells_run_unchanged_in_one_namespace_and_refuse_magics(tmp_path):
    with _standin(tmp_path) as ck:
        ns = ck.cells("code/TAET/TAET.ipynb", [0, 2], {"x": 5})
        assert ns["z"] == 20  # cell 0 sets x = 1 over the given 5, cell 2 reads it
        with pytest.raises(ParityError, match="shell or magic"):
            ck.cells("code/TAET/TAET.ipynb", [3])
        with pytest.raises(ParityError, match="no cell 12"):
            ck.cells("code/TAET/TAET.ipynb", [12])


@pytest.mark.parametrize(("switch", "epochs"), [(40, 100), (7, 12)])
def test_stage_switch_and_epochs_are_read_off_their_loop(tmp_path, switch, epochs):
    with _standin(tmp_path, switch, epochs) as ck:
        ctx = SimpleNamespace(checkout=ck)
        assert _stage_switch(ctx) == switch and _their_epochs(ctx) == epochs


def _call(training: bool, value: float):
    return (training, torch.full((1,), value), torch.full((1, 2), value))


def test_records_split_steps_and_count_the_clean_forward():
    # step 1 (stage 1): clean forward + CE forward; step 2 (stage 2): clean, 3 eval-mode attack forwards, loss
    calls = [_call(True, 0), _call(True, 1), _call(True, 2), _call(False, 3), _call(False, 4), _call(False, 5),
             _call(True, 6)]
    snap = {"grads": {}, "weights": {}, "buffers": {}}
    steps, clean = _records(calls, [2, 7], [torch.tensor(1.0), torch.tensor(2.0)], [snap, snap])
    assert clean == [1, 1]
    assert steps[0].attack_inputs == [] and float(steps[0].x_adv) == 1
    assert [float(v) for v in steps[1].attack_inputs] == [3, 4, 5] and steps[1].attack_training == [False] * 3
    assert float(steps[1].x_adv) == 6 and float(steps[1].loss) == 2
    # without the clean forward (ltrobust's clean_forward=false) the count says so
    steps, clean = _records(calls[1:2] + calls[3:], [1, 5], [torch.tensor(1.0)] * 2, [snap, snap])
    assert clean == [0, 0] and len(steps[1].attack_inputs) == 3


def test_epoch_batches_give_one_batch_per_epoch():
    batches = [(torch.full((2, 1), float(i)), torch.tensor([i, i])) for i in range(3)]
    loader = _EpochBatches(batches, 50)
    seen = [float(next(iter(loader))[0][0, 0]) for _ in range(3)]
    assert seen == [0.0, 1.0, 2.0] and len(loader.dataset) == 50


def test_torchvision_keymap_maps_resnet18_onto_resnet18_imagenet():
    torchvision = pytest.importorskip("torchvision")
    from ltrobust.registry import MODELS

    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(weights=None)
    theirs.fc = torch.nn.Linear(512, 10)  # their model cell
    mine = MODELS.build("resnet18_imagenet", num_classes=10, image_size=32)
    m = map_state(theirs.state_dict(), mine.state_dict(), TORCHVISION)
    assert m["fc.weight"] == "head.weight" and m["layer4.1.bn2.running_var"] == "backbone.layer4.1.bn2.running_var"
    load_mapped(mine, theirs.state_dict(), m)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(theirs.eval()(x), mine.eval()(x))
    theirs.fc = torch.nn.Linear(512, 7)  # a changed head no longer maps
    with pytest.raises(ParityError):
        map_state(theirs.state_dict(), mine.state_dict(), TORCHVISION)


def test_py2_key_cifar_files_read_by_their_bytes_reader_and_ltrobust(tmp_path):
    from ltrobust.config import DataConfig
    from ltrobust.data.formats.cifar import read_cifar

    y = np.arange(50) % 10
    x = np.random.RandomState(0).randint(0, 256, (50, 32, 32, 3)).astype(np.uint8)
    root = ours.write_cifar(tmp_path, 10, (x, y), (x[:10], y[:10]), py2_keys=True)
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")  # their _load_data
    assert batch[b"labels"] == [int(v) for v in y[:10]]
    assert np.array_equal(batch[b"data"][0], x[0].transpose(2, 0, 1).reshape(-1))
    raw = read_cifar(DataConfig(dataset="cifar10-lt", data_dir=str(root)), 10)  # ltrobust's latin1 reader
    assert np.array_equal(np.asarray(raw.train.images), x) and np.array_equal(np.asarray(raw.train.labels), y)


def test_pytz_stand_in_and_patched_item():
    tz = STUBS["pytz"]["timezone"]("Asia/Shanghai")
    assert tz.utcoffset(None).total_seconds() == 8 * 3600
    ns = {"a": 1}
    with patched_item(ns, "a", 2), patched_item(ns, "b", 3):
        assert ns == {"a": 2, "b": 3}
    assert ns == {"a": 1}
