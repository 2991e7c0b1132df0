"""The trainer: exact resume after a kill, DDP with gloo, method identities, BSL helps the tail."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ltrobust import io
from ltrobust.config import resolve_config
from ltrobust.evaluation.evaluator import predict
from ltrobust.training.trainer import Trainer, lr_at
from ltrobust.errors import ConfigError, TrainingDiverged

TINY = ["dataset=digits-lt", "model=smallcnn", "model.width=8", "train.batch_size=64", "train.progress=false",
        "train.val_samples=50", "train.val_attack_steps=2", "attack.steps=2"]


def _weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return io.load_checkpoint(run_dir / "checkpoints" / f"{which}.pt")["model"]


def test_resume_after_kill_gives_identical_weights(tmp_path, die_after_checkpoint):
    over = TINY + ["epochs=4", "train.deterministic=true", "train.precision=fp32", "train.milestones=3",
                   f"out={tmp_path}"]
    straight = Trainer(resolve_config(over + ["name=straight"]))
    straight.fit()

    # Kill (in-process) right after the checkpoint of epoch 2 is on disk, then resume in a new trainer.
    with die_after_checkpoint(1):
        Trainer(resolve_config(over + ["name=killed"])).fit()
    assert io.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = Trainer(resolve_config(over + ["name=killed"]))
    resumed.fit()
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = io.read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # no duplicate epochs after the resume


def test_resume_refuses_a_different_config(tmp_path):
    over = TINY + ["epochs=1", f"out={tmp_path}", "name=r", "train.max_steps_per_epoch=1"]
    Trainer(resolve_config(over)).fit()
    with pytest.raises(ConfigError, match="different config.*train.lr"):
        Trainer(resolve_config(over + ["train.lr=0.01"])).fit()


def test_bsl_gives_higher_tail_third_clean_recall_than_ce(tmp_path):
    tails = {}
    for loss in ("ce", "bsl"):
        cfg = resolve_config(["dataset=digits-lt", "method=pgd_at", f"loss={loss}", "model=smallcnn",
                              "model.width=16", "epochs=15", "train.batch_size=64", "train.lr=0.05",
                              "train.milestones=12", "train.val_every=0", "train.progress=false",
                              f"out={tmp_path}", "train.seed=0"])
        tr = Trainer(cfg)
        tr.fit()
        x, y = tr.data.test.images.float() / 255, tr.data.test.labels
        pred = predict(tr.eval_model(), x)
        tail = tr.data.groups["tail"]
        tails[loss] = np.mean([(pred[y == c] == c).float().mean().item() for c in tail])
    assert tails["bsl"] > tails["ce"] + 0.1, tails


def _one_step(method_over, tmp_path, name):
    cfg = resolve_config(TINY + ["epochs=1", "train.max_steps_per_epoch=2", "train.val_every=0",
                                 "train.precision=fp32", "train.deterministic=true", f"out={tmp_path}",
                                 f"name={name}"] + method_over)
    tr = Trainer(cfg)
    tr.fit()
    return _weights(tmp_path / name)


@pytest.mark.parametrize("base", ["pgd_at", "trades"])
def test_awp_with_gamma_zero_leaves_the_base_method_parameters(tmp_path, base):
    a = _one_step([f"method={base}"], tmp_path, f"{base}")
    b = _one_step(["method=awp", f"method.base={base}", "method.gamma=0"], tmp_path, f"awp-{base}")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = _one_step(["method=awp", f"method.base={base}", "method.gamma=0.01"], tmp_path, f"awp1-{base}")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_trades_beta_zero_equals_natural_training(tmp_path):
    """TRADES with beta 0 is clean CE: the same parameters as natural training after two steps
    (BatchNorm running statistics differ, since TRADES also forwards the AEs in train mode)."""
    a = _one_step(["method=natural"], tmp_path, "natural")
    b = _one_step(["method=trades", "beta=0"], tmp_path, "trades0")
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    for k in params:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_checkpoint(tmp_path):
    # epoch 0 trains normally; the step schedule then multiplies lr by 1e30 and the loss diverges in epoch 1
    # (epochs are numbered from 0 everywhere: log, messages, metrics.jsonl, checkpoints)
    cfg = resolve_config(TINY + ["epochs=2", f"out={tmp_path}", "name=nan", "train.val_every=0",
                                 "train.lr=0.05", "train.milestones=1", "train.lr_decay=1e30"])
    with pytest.raises(TrainingDiverged, match=r"non-finite at epoch 1, step \d+; the last good checkpoint"):
        Trainer(cfg).fit()
    last = io.load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_train_step_from_outside_equals_train_epoch(tmp_path):
    """start_epoch + train_step on the loader's batches (the public hook of benchmarks/parity) trains exactly
    like train_epoch."""
    over = TINY + ["epochs=1", "train.precision=fp32", "train.max_steps_per_epoch=2", "method=at_bsl",
                   "attack.random_start=normal"]
    a = Trainer(resolve_config(over + [f"out={tmp_path}", "name=a"]))
    b = Trainer(resolve_config(over + [f"out={tmp_path}", "name=b"]))
    a.build()
    b.build()
    torch.manual_seed(3)
    a.train_epoch(0)
    torch.manual_seed(3)
    b.start_epoch(0)
    for step, (x, y) in zip(range(2), b.loader):
        out = b.train_step(x, y, b.lr(0, step, len(b.loader)))
    assert set(out) >= {"loss", "logits_adv", "x_adv"} and out["x_adv"].shape == x.shape
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_lr_schedules():
    cfg = resolve_config(["train.lr=0.1", "epochs=100", "train.milestones=75,90"])
    assert lr_at(cfg, 0) == 0.1 and lr_at(cfg, 74.9) == 0.1
    assert lr_at(cfg, 75) == pytest.approx(0.01) and lr_at(cfg, 95) == pytest.approx(0.001)
    # the AT-BSL / RoBal authors' convention counts epochs from 1: the 75th epoch (index 74) already decays
    one = resolve_config(["train.lr=0.1", "epochs=100", "train.milestones=75,90", "train.milestone_base=1"])
    assert lr_at(one, 73.9) == 0.1 and lr_at(one, 74) == pytest.approx(0.01) and lr_at(one, 89) == pytest.approx(0.001)
    assert resolve_config(["preset=at-bsl-cifar10lt-resnet18"]).train.milestone_base == 1
    assert resolve_config(["preset=robal-r-cifar100lt-resnet18"]).train.milestone_base == 1
    with pytest.raises(ConfigError, match="milestone_base"):
        resolve_config(["train.milestone_base=2"])
    cos = resolve_config(["train.lr=0.1", "epochs=10", "train.schedule=cosine"])
    assert lr_at(cos, 0) == pytest.approx(0.1) and lr_at(cos, 5) == pytest.approx(0.05) and lr_at(cos, 10) == pytest.approx(0)


def test_piecewise_lr_schedule_interpolates_the_knots_with_jumps():
    """Wong et al.'s Fast-AT cycle (np.interp over [0, 7.5, 15] -> [0, 0.2, 0], per step) and a step schedule with
    unequal factors (GAIRAT's 0.1 -> 0.01 -> 0.001 -> 0.0005 at its 60th, 90th, 110th epochs) as knots."""
    import numpy as np

    cyc = resolve_config(["train.lr=0.2", "epochs=15", "train.schedule=piecewise", "train.lr_epochs=0,7.5,15",
                          "train.lr_factors=0,1,0"])
    for t in (0.0, 0.3, 3.75, 7.5, 9.1, 14.99, 15.0, 16.0):
        assert lr_at(cyc, t) == pytest.approx(float(np.interp(t, [0, 7.5, 15], [0, 0.2, 0])))
    gair = resolve_config(["train.lr=0.1", "epochs=120", "train.schedule=piecewise",
                           "train.lr_epochs=0,59,59,89,89,109,109", "train.lr_factors=1,1,0.1,0.1,0.01,0.01,0.005"])
    official = [0.1 if (e + 1) / 120 < 0.5 else 0.01 if (e + 1) / 120 < 0.75 else 0.001 if (e + 1) / 120 < 11 / 12
                else 0.0005 for e in range(120)]  # GAIRAT.py's piecewise rule, evaluated at epoch + 1
    assert [lr_at(gair, e + 0.5) for e in range(120)] == pytest.approx(official)
    assert lr_at(gair, 59) == pytest.approx(0.01) and lr_at(gair, 58.99) == pytest.approx(0.1)
    for bad, match in ((["train.lr_epochs=0,2"], "as many"), (["train.lr_epochs=2,1", "train.lr_factors=1,1"],
                       "non-decreasing"), (["train.lr_epochs=0", "train.lr_factors=1", "train.warmup_epochs=1"],
                       "warm-up")):
        with pytest.raises(ConfigError, match=match):
            resolve_config(["train.schedule=piecewise", *bad])
    with pytest.raises(ConfigError, match="only used by"):
        resolve_config(["train.lr_epochs=0,2", "train.lr_factors=1,0"])


def test_metrics_log_every_loss_part_and_ae_distribution(tmp_path):
    cfg = resolve_config(TINY + ["method=trades", "epochs=1", f"out={tmp_path}", "name=m"])
    Trainer(cfg).fit()
    row = io.read_jsonl(tmp_path / "m" / "metrics.jsonl")[0]
    assert {"loss", "loss_nat", "kl", "ae_pred_counts", "val", "images_per_s", "lr"} <= set(row)
    assert sum(row["ae_pred_counts"]) == 503  # every training image's AE counted once
    assert 0 <= row["val"]["rob"] <= row["val"]["clean"] + 1e-9 or row["val"]["rob"] <= 100


DDP_SCRIPT = """
import sys, torch
from ltrobust.config import resolve_config
from ltrobust.training.trainer import Trainer
import torch.distributed as dist
cfg = resolve_config(sys.argv[2:])
tr = Trainer(cfg)
tr.fit()
torch.save(tr.model.state_dict(), f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
torch.save(tr.method.state_dict(), f"{sys.argv[1]}/method{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


@pytest.mark.parametrize("method", [[], ["method=gairat", "method.begin_epoch=1"]], ids=["pgd_at", "gairat"])
def test_two_torchrun_processes_with_gloo_end_with_identical_weights(tmp_path, method):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(script), str(tmp_path)] + TINY + ["epochs=2", f"out={tmp_path}", "name=ddp",
                                                 "train.precision=fp32"] + method
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert (tmp_path / "ddp" / "checkpoints" / "last.pt").exists()


def test_mma_under_two_gloo_processes_ends_each_epoch_with_one_margin_table(tmp_path):
    """Each process attacks its slice of every batch and keeps its points' margins; the epoch-end merge
    gives both processes (and the checkpoint) the same table, every point's margin from its last visit."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518",
           str(script), str(tmp_path)] + TINY + ["epochs=2", f"out={tmp_path}", "name=ddp", "train.precision=fp32",
                                                 "method=mma", "train.val_every=0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m0 = torch.load(tmp_path / "method0.pt", weights_only=True)["margins"]
    m1 = torch.load(tmp_path / "method1.pt", weights_only=True)["margins"]
    assert torch.equal(m0, m1)
    assert torch.equal(io.load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["method"]["margins"], m0)
    assert (m0 != 0.005).all()  # every point visited (one pass per epoch): none left at eps_min


def test_las_at_under_two_gloo_processes_keeps_one_strategy_network(tmp_path):
    """REINFORCE on each process's slice, with the rewards and policy gradients averaged over the processes
    and the strategy network's BatchNorm statistics too: both processes end with the same network."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
           str(script), str(tmp_path)] + TINY + ["epochs=1", f"out={tmp_path}", "name=ddp", "train.precision=fp32",
                                                 "method=las_at", "method.interval=1", "method.strategy_model=target",
                                                 "train.val_every=0",
                                                 "train.max_steps_per_epoch=3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0 = torch.load(tmp_path / "method0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "method1.pt", weights_only=True)
    assert s0["step_count"] == s1["step_count"] == 3
    assert s0["strategy"].keys() == s1["strategy"].keys()
    for k in s0["strategy"]:
        assert torch.equal(s0["strategy"][k], s1["strategy"][k]), k


@pytest.mark.parametrize("kind", ["crt", "rw", "lws"])
def test_finetune_stage_trains_only_the_head(tmp_path, kind):
    """The fine-tuning stage leaves the backbone and BatchNorm statistics exactly as training left them."""
    base = TINY + ["epochs=1", "train.max_steps_per_epoch=2", "train.val_every=0", "train.precision=fp32",
                   "train.deterministic=true", f"out={tmp_path}"]
    Trainer(resolve_config(base + ["name=plain"])).fit()
    tr = Trainer(resolve_config(base + [f"name={kind}", f"train.finetune={kind}", "train.finetune_lr=0.05"]))
    tr.fit()
    a, b = _weights(tmp_path / "plain", "best"), _weights(tmp_path / kind, "last")
    head = [k for k in a if k.startswith("head.")]
    assert head and all(not torch.equal(a[k], b[k]) for k in head if a[k].is_floating_point())
    for k in a:
        if not k.startswith("head."):
            assert torch.equal(a[k], b[k]), k
    assert io.load_checkpoint(tmp_path / kind / "checkpoints" / "last.pt")["finetuned"] is True
    rows = io.read_jsonl(tmp_path / kind / "metrics.jsonl")
    assert rows[-1]["stage"] == f"finetune-{kind}"
    best = _weights(tmp_path / kind, "best")  # best.pt: still the selected epoch, before fine-tuning
    assert all(torch.equal(a[k], best[k]) for k in a)


def test_finetune_keeps_best_pt_the_selected_epoch_and_crt_resets_a_cosine_head(tmp_path):
    """best.pt after fine-tuning is the best-validation epoch's checkpoint of the main training (same
    weights, epoch and validation as without the stage); cRT re-initialises a cosine head (with lr 0 the
    fine-tuned head is the fresh initialisation, not the trained one)."""
    base = TINY + ["epochs=2", "train.max_steps_per_epoch=2", "train.precision=fp32", "model.head=cosine",
                   "train.deterministic=true", f"out={tmp_path}"]
    Trainer(resolve_config(base + ["name=plain"])).fit()
    Trainer(resolve_config(base + ["name=crt", "train.finetune=crt", "train.finetune_lr=0"])).fit()
    plain, tuned = (io.load_checkpoint(tmp_path / n / "checkpoints" / "best.pt") for n in ("plain", "crt"))
    assert (tuned["epoch"], tuned["val"]) == (plain["epoch"], plain["val"])
    assert all(torch.equal(plain["model"][k], tuned["model"][k]) for k in plain["model"])
    trained, reset = _weights(tmp_path / "plain")["head.weight"], _weights(tmp_path / "crt")["head.weight"]
    assert not torch.equal(trained, reset)
    bound = 1 / reset.shape[1] ** 0.5
    assert float(reset.abs().max()) <= bound  # U(-1/sqrt(D), 1/sqrt(D)), the head's initialisation


def test_finetune_killed_before_its_checkpoint_is_redone_with_one_metrics_row(tmp_path, monkeypatch):
    base = TINY + ["epochs=1", "train.max_steps_per_epoch=2", "train.val_every=0", "train.precision=fp32",
                   "train.deterministic=true", f"out={tmp_path}", "train.finetune=rw", "train.finetune_lr=0.05"]
    Trainer(resolve_config(base + ["name=straight"])).fit()

    real_save = io.save_checkpoint

    def killed(path, state, *args, **kwargs):  # the process dies after the metrics row, before last.pt
        if state.get("finetuned"):
            raise KeyboardInterrupt
        return real_save(path, state, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(io, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            Trainer(resolve_config(base + ["name=killed"])).fit()
    assert not io.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt").get("finetuned")
    Trainer(resolve_config(base + ["name=killed"])).fit()  # resumes and redoes the stage
    stages = [r.get("stage") for r in io.read_jsonl(tmp_path / "killed" / "metrics.jsonl")]
    assert stages.count("finetune-rw") == 1
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_trainer_on_the_same_run_folder_is_refused(tmp_path):
    from ltrobust.errors import RunInUse

    cfg = resolve_config(TINY + ["epochs=1", f"out={tmp_path}", "name=busy", "train.max_steps_per_epoch=1",
                                 "train.val_every=0"])
    with io.run_lock(tmp_path / "busy" / ".lock", "training"):  # as a concurrent `ltrobust train` would
        with pytest.raises(RunInUse, match="busy is in use by another ltrobust process"):
            Trainer(cfg).fit()
        assert not (tmp_path / "busy" / "checkpoints").exists()  # nothing written by the refused run
    Trainer(cfg).fit()  # free again
    assert (tmp_path / "busy" / "checkpoints" / "last.pt").exists()
    from ltrobust.evaluation.runs import evaluate_run

    with io.run_lock(tmp_path / "busy" / "eval" / ".best.lock", "eval best"):  # a concurrent eval of one tag
        with pytest.raises(RunInUse, match="eval is in use by another ltrobust process"):
            evaluate_run(tmp_path / "busy", ["eval.attacks=clean", "eval.n_samples=20"], progress=False)
    assert evaluate_run(tmp_path / "busy", ["eval.attacks=clean", "eval.n_samples=20"], progress=False)["n"] == 20


def test_drop_last_follows_compile_unless_set(tmp_path):
    def loader(*extra):
        tr = Trainer(resolve_config(TINY + ["epochs=1", f"out={tmp_path}", "name=d", *extra]))
        tr.build()
        return tr, len(tr.data.train.labels)

    tr, n = loader()
    assert len(tr.loader) == -(-n // 64) and not tr.loader.drop_last  # ceil: the last batch is smaller
    tr, n = loader("train.drop_last=true")
    assert len(tr.loader) == n // 64 and tr.loader.drop_last
    assert loader("train.compile=true")[0].loader.drop_last  # auto: static shapes for the compiled step
    assert not loader("train.compile=true", "train.drop_last=false")[0].loader.drop_last
    with pytest.raises(ConfigError, match="larger than the .* training images .* train.drop_last=false"):
        loader("train.drop_last=true", "train.batch_size=100000")


class _Recorder:
    """A tracker that keeps what it is sent: the whole LOGGERS plug-in contract in a few lines."""

    made: list["_Recorder"] = []

    def __init__(self, run_dir, start_step=0, config=None):
        self.run_dir, self.start, self.config = run_dir, start_step, config
        self.steps: dict[int, dict[str, float]] = {}
        self.closed = False
        _Recorder.made.append(self)

    def log_scalars(self, step, scalars):
        self.steps.setdefault(step, {}).update(scalars)

    def close(self):
        self.closed = True


def test_metrics_rows_carry_cost_clean_numbers_and_go_to_the_tracker(tmp_path, caplog):
    import json
    import logging
    import math

    from ltrobust.registry import LOGGERS
    from ltrobust.training.loggers import Logger, scalars_of

    if "test-recorder" not in LOGGERS:
        LOGGERS.register("test-recorder")(_Recorder)
    cfg = resolve_config(TINY + ["epochs=2", "train.max_steps_per_epoch=2", "train.val_samples=30", "train.lr=0.1",
                                 "train.milestones=1", "train.logger=test-recorder", f"out={tmp_path}", "name=m"])
    with caplog.at_level(logging.INFO, logger="ltrobust.training.trainer"):
        summary = Trainer(cfg).fit()
    rows = io.read_jsonl(tmp_path / "m" / "metrics.jsonl")
    # epochs are numbered from 0 in the log ("epoch 1/1" is the last of two) and in metrics.jsonl alike
    logged = [tuple(map(int, m.groups())) for m in
              (re.match(r"epoch (\d+)/(\d+) ", r.getMessage()) for r in caplog.records) if m]
    assert logged == [(0, 1), (1, 1)] and [r["epoch"] for r in rows] == [0, 1]

    # cost: seconds and peak memory per epoch (CPU: no CUDA peak); the summary's mean and maximum
    for r in rows:
        assert r["seconds"] > 0 and r["seconds"] == round(r["seconds"], 3)
        assert 100 < r["peak_rss_mb"] < 10 ** 6 and r["peak_cuda_mb"] is None  # a process with torch: > 100 MiB
    stored = io.read_json(tmp_path / "m" / "train_summary.json")
    mean = round((rows[0]["seconds"] + rows[1]["seconds"]) / 2, 3)
    assert stored["seconds_per_epoch"] == summary["seconds_per_epoch"] == mean
    assert stored["peak_rss_mb"] == max(r["peak_rss_mb"] for r in rows) and stored["peak_cuda_mb"] is None

    # no float noise: lr 0.1 * 0.1 is 0.01, float32 losses carry float32's digits, accuracies are counts
    assert rows[0]["lr"] == 0.1 and rows[1]["lr"] == 0.01
    for r in rows:
        assert repr(r["loss"]) == str(np.float32(r["loss"]))
        val = r["val"]
        assert len(val["per_class_clean"]) == len(val["per_class_rob"]) == 10
        for v in val["per_class_clean"] + val["per_class_rob"] + [val["clean"], val["rob"]]:
            k = v * 3 / 100  # 3 validation images per class, 30 in all: every accuracy is a multiple of 100/3 or 10/3
            assert abs(k * 10 - round(k * 10)) < 1e-9
        assert val["clean"] == 100.0 * sum(round(v * 3 / 100) for v in val["per_class_clean"]) / 30
    assert "000000" not in json.dumps(rows) and "99999" not in json.dumps(rows)

    # the tracker got every scalar of every row at step = epoch, and was closed
    rec = _Recorder.made[-1]
    assert isinstance(rec, Logger) and rec.closed and rec.start == 0
    assert rec.config["train"]["logger"] == "test-recorder"
    assert rec.steps == {r["epoch"]: scalars_of(r) for r in rows}
    assert rec.steps[1]["val/per_class_clean/0"] == rows[1]["val"]["per_class_clean"][0]
    assert math.isclose(rec.steps[1]["lr"], 0.01)


def test_scalars_of_flattens_a_row():
    from ltrobust.training.loggers import scalars_of

    row = {"epoch": 2, "loss": 0.5, "peak_cuda_mb": None, "stage": "x", "ok": True,
           "val": {"clean": 60.0, "per_class_rob": [50.0, None]}, "ae_drift": {"l2": [1.0, 2.0], "per_class_l2": [3.0]}}
    assert scalars_of(row) == {"epoch": 2.0, "loss": 0.5, "val/clean": 60.0, "val/per_class_rob/0": 50.0,
                               "ae_drift/per_class_l2/0": 3.0}
    assert scalars_of({"val": {"rob": 1.0}}, prefix="finetune") == {"finetune/val/rob": 1.0}


def test_tensorboard_logger_writes_every_scalar(tmp_path):
    pytest.importorskip("tensorboard", reason="train.logger=tensorboard needs the optional tensorboard package "
                                              "(pip install -e '.[tensorboard]'; the test extra installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ltrobust.training.loggers import scalars_of

    cfg = resolve_config(TINY + ["epochs=1", "train.max_steps_per_epoch=1", "train.val_samples=20",
                                 "train.logger=tensorboard", f"out={tmp_path}", "name=tb"])
    Trainer(cfg).fit()
    row = io.read_jsonl(tmp_path / "tb" / "metrics.jsonl")[0]
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    want = scalars_of(row)
    assert set(acc.Tags()["scalars"]) == set(want) and "val/per_class_clean/9" in want
    for tag, value in want.items():
        (event,) = acc.Scalars(tag)
        assert event.step == 0 and event.value == pytest.approx(value, rel=1e-6), tag


def test_unknown_logger_names_the_choices():
    with pytest.raises(ConfigError, match="train.logger: unknown logger 'tensorbord'. Did you mean 'tensorboard'.*none"):
        resolve_config(["train.logger=tensorbord"])


def test_peak_rss_is_the_peak_since_the_reset():
    import mmap

    from ltrobust.training.cost import peak_memory_mb, peak_rss_mb, reset_peaks

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("the peak RSS can be reset only on Linux (/proc/self/clear_refs); elsewhere it is the process peak")
    cpu = torch.device("cpu")
    size = 64 * 2 ** 20

    def attempt() -> tuple[float, float, float]:
        reset_peaks(cpu)
        before = peak_rss_mb()
        # 64 MiB of fresh anonymous pages, every page touched (not np.ones: after a long test session malloc
        # may serve it from freed heap memory that is already resident, and the RSS would not grow)
        buf = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            buf[offset] = 1
        during = peak_memory_mb(cpu)
        assert during["peak_cuda_mb"] is None
        buf.close()
        reset_peaks(cpu)
        return before, during["peak_rss_mb"], peak_rss_mb()

    # The kernel may reclaim other pages of this process meanwhile (the RSS is shared with the whole OS), so
    # one of three attempts must show it; a broken reset or peak fails all three.
    tries = [attempt() for _ in range(3)]
    assert any(during >= before + 60 and after <= during - 50 for before, during, after in tries), tries


def test_tensorboard_shows_a_redone_epoch_once_after_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="train.logger=tensorboard needs the optional tensorboard package "
                                              "(pip install -e '.[tensorboard]'; the test extra installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import Killed

    over = TINY + ["epochs=2", "train.max_steps_per_epoch=1", "train.val_every=0", "train.logger=tensorboard",
                   "train.deterministic=true", "train.precision=fp32", f"out={tmp_path}", "name=tb"]
    real_save = io.save_checkpoint

    def die_before_last_of_epoch_1(path, state):  # epoch 1 is logged, then the run dies before its checkpoint
        if Path(path).name == "last.pt" and state["epoch"] == 1:
            raise Killed
        real_save(path, state)

    with monkeypatch.context() as m:
        m.setattr(io, "save_checkpoint", die_before_last_of_epoch_1)
        with pytest.raises(Killed):
            Trainer(resolve_config(over)).fit()
    Trainer(resolve_config(over)).fit()  # resumes at epoch 1 and redoes it
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    rows = io.read_jsonl(tmp_path / "tb" / "metrics.jsonl")
    events = acc.Scalars("loss")
    assert [e.step for e in events] == [r["epoch"] for r in rows] == [0, 1]
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


def test_tensorboard_without_the_package_names_the_extra(tmp_path, monkeypatch):
    from ltrobust.training.loggers import build_logger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if it were not installed
    with pytest.raises(ConfigError, match=r"needs the tensorboard package: pip install 'tensorboard>=2\.10' \(or, in "
                                          r"the ltrobust source folder, pip install -e '\.\[tensorboard\]'\)"):
        build_logger("tensorboard", tmp_path)
    assert build_logger("none", tmp_path) is None and not any(tmp_path.iterdir())
