"""Every shipped preset and every row of every shipped grid trains one tiny step (issue 26).

A preset or grid row that loads and validates can still fail when training starts: a method may refuse a
setting the preset gives it (``fgsm_at`` refused ``attack.random_start=false`` until issue 26), a head may
not fit, a schedule may not build. Each case here keeps the method, its options, the loss, the attack and
the schedule of the preset or row, and swaps only what makes a run expensive: the data (digits-LT), the
architecture (a 4-channel ``smallcnn``, the head and its settings kept), one epoch of one step of 16
images, fp32 on the CPU. Then it evaluates the row's deployed model (inference adjustments included) with
clean and FGSM on 16 test images. The cases are parametrised over :func:`ltrobust.config.list_presets` and
the grid files, so presets and grids added later are covered without editing this file.
"""

from __future__ import annotations

import math

import pytest

from ltrobust import io
from ltrobust.config import from_flat, list_presets, resolve_config, to_flat
from ltrobust.experiments.sweep import GRID_DIR, load_grid

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: what every case trains on: digits-LT, a tiny BatchNorm CNN, one step of 16 images
TINY = {
    "data.dataset": "digits-lt", "data.data_dir": None, "data.image_size": -1, "data.class_counts": "",
    "data.indices_file": None, "data.download": False, "data.crop_padding": -1, "data.val_per_class": 2,
    "model.name": "smallcnn", "model.width": 4, "model.depth": -1, "model.widen": -1, "model.pretrained": None,
    "train.epochs": 1, "train.max_steps_per_epoch": 1, "train.batch_size": 16, "train.precision": "fp32",
    "train.device": "cpu", "train.progress": False, "train.compile": False, "train.warmup_epochs": 0,
    "train.val_samples": 16, "train.val_attack_steps": 1, "train.drop_last": None,
    "eval.attacks": ("clean", "fgsm"), "eval.n_samples": 16, "eval.batch_size": 16, "eval.chunk_size": 16,
    "eval.norm": "linf", "eval.tail_group": 0,
}
#: method options that stretch a run over many epochs or steps, shrunk (the option is still exercised)
TINY_METHOD_ARGS = {"teacher_epochs": 1, "teacher_batch_size": 16}


def tiny(cfg, out, name):
    """``cfg`` with the data, architecture and length swapped for the tiny ones (method, loss, attack kept)."""
    flat = to_flat(cfg)
    flat.update(TINY)
    if flat["data.augment"] not in ("none", "crop", "crop_flip"):
        flat["data.augment"] = "crop_flip"  # AutoAugment / RandAugment need 3-channel images
    if flat["data.imbalance"] > 50:
        flat["data.imbalance"] = 50  # digits-LT's n_max is 124 (with validation): keep two tail images
    for k, v in TINY_METHOD_ARGS.items():
        if f"method.args.{k}" in flat:
            flat[f"method.args.{k}"] = v
    flat.update({"out": str(out), "name": name})
    return from_flat(flat)


def train_and_evaluate(cfg):
    from ltrobust.evaluation.runs import evaluate_run
    from ltrobust.experiments import train

    trainer = train(cfg)
    losses = [r["loss"] for r in io.read_jsonl(trainer.run_dir / "metrics.jsonl") if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses), losses
    result = evaluate_run(trainer.run_dir, ["eval.checkpoint=last"], device="cpu", progress=False)
    assert set(result["results"]) >= {"clean", "fgsm"}


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_trains_one_tiny_step(name, tmp_path):
    train_and_evaluate(tiny(resolve_config([f"preset={name}"]), tmp_path, name))


def _grid_rows():
    """(grid, row index) for every `runs:` entry of every shipped grid."""
    import yaml

    rows = []
    for path in sorted(GRID_DIR.glob("*.yaml")):
        entries = (yaml.safe_load(path.read_text()) or {}).get("runs") or [{}]
        rows += [(path.stem, i) for i in range(len(entries))]
    return rows


@pytest.mark.parametrize("grid,row", _grid_rows(), ids=lambda v: str(v))
def test_every_grid_row_trains_one_tiny_step(grid, row, tmp_path):
    import yaml

    path = GRID_DIR / f"{grid}.yaml"
    raw = yaml.safe_load(path.read_text())
    combos = 1
    for values in (raw.get("grid") or {}).values():
        combos *= len(values)
    spec = load_grid(path, [f"out={tmp_path}"])
    point = spec.points[row * combos]  # the row's first grid point
    cfg = tiny(point.cfg, tmp_path, f"{grid}-{row}")
    # the row's method, loss and attack are what runs (only data, model size and length were swapped)
    assert (cfg.attack, cfg.method.name, cfg.method.loss, cfg.method.loss_args) == \
        (point.cfg.attack, point.cfg.method.name, point.cfg.method.loss, point.cfg.method.loss_args)
    train_and_evaluate(cfg)
