"""The analyses of issue 27: zero-grad (RoBal Fig. 2), sensitivity (002 Fig. 6-7, TAET Fig. 7), cost (TAET Fig. 6a),
epoch-choice (REAT's test-set checkpoint); each from the CLI on digits-sized runs, numbers recomputed here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ltrobust import io
from ltrobust.analysis import run_analysis
from ltrobust.cli import main
from ltrobust.config import resolve_config
from ltrobust.data import build_data
from ltrobust.errors import ConfigError
from ltrobust.evaluation.runs import load_run
from ltrobust.experiments.sweep import run_sweep
from ltrobust.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["dataset=digits-lt", "model=smallcnn", "model.width=8", "epochs=3", "train.batch_size=64", "attack.steps=2",
        "train.val_samples=50", "train.val_attack_steps=2", "train.progress=false", "train.precision=fp32"]
SWEEP = ["epochs=1", "method.teacher_epochs=1", "train.max_steps_per_epoch=2", "train.val_samples=20",
         "train.val_attack_steps=1", "eval.attacks=clean,pgd3", "eval.n_samples=30", "train.seed=0"]


def _files(paths: dict) -> dict:
    for key in ("png", "pdf"):
        data = Path(paths[key]).read_bytes()
        assert data[:4] in (b"\x89PNG", b"%PDF") and len(data) > 2000
    return io.read_json(paths["json"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    Trainer(resolve_config(TINY + [f"out={out}", "name=r", "train.epoch_test=true"])).fit()
    return out / "r"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")  # the real grid, tiny; no report (the taet test runs the CLI's)
    assert run_sweep("self-distill-sensitivity-digits", [f"out={out}", *SWEEP])["n_failed"] == 0
    return out


# ------------------------------------------------------------------------------------------ zero-grad
def test_zero_grad_ratio_matches_the_gradient_by_hand(run_dir, tmp_path):
    res = _files(run_analysis("zero-grad", [run_dir], ["attack=bim3", "kappa=0", "n_per_class=4", f"out={tmp_path}"]))
    row = res["by_kappa"][0]
    assert row["iterations"] == [1, 2, 3] and res["n"] == 40
    run = load_run(run_dir)
    data = build_data(run.cfg.data, "cpu")
    from ltrobust.analysis.base import per_class_subset

    idx = per_class_subset(data.test.labels, 4, 0)
    x = (data.test.images[idx].float() / 255).requires_grad_(True)
    y = data.test.labels[idx]
    (g,) = torch.autograd.grad(F.cross_entropy(run.deployed(x), y, reduction="sum"), x)  # BIM's first point: x
    ratio = 100.0 * (g.flatten(1) == 0).float().mean(1)
    assert row["overall"][0] == pytest.approx(float(ratio.mean()), abs=1e-4)
    for c in range(10):
        assert row["per_class"][c][0] == pytest.approx(float(ratio[y == c].mean()), abs=1e-4)


def test_stretched_logits_zero_the_gradient_of_every_correct_image(run_dir, tmp_path):
    """RoBal Sec. 3.3: with logits x 10^30 the softmax of a correct image is one-hot and its CE gradient is 0."""
    res = run_analysis("zero-grad", [run_dir], ["attack=pgd2", "kappa=-30,0", "n_per_class=5", f"out={tmp_path}"])
    stretched, plain = io.read_json(res["json"])["by_kappa"]
    assert stretched["kappa"] == -30 and plain["kappa"] == 0
    assert stretched["n_clean_correct"] > 0 and stretched["clean_correct"] == [100.0, 100.0]
    share = 100.0 * stretched["n_clean_correct"] / 50
    assert stretched["overall"][0] >= share - 1e-9  # at least the clean-correct images, all pixels zero
    assert stretched["all_zero_images"][0] >= share - 1e-9
    assert stretched["clean_accuracy"] == pytest.approx(share) == plain["clean_accuracy"]
    assert plain["clean_correct"][0] < 100.0


def test_zero_grad_refuses_attacks_outside_the_loop(run_dir, tmp_path, capsys):
    assert main(["analyze", "zero-grad", str(run_dir), "attack=aa", f"out={tmp_path}"]) == 2
    assert "inside the PGD loop" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- sensitivity
def test_sensitivity_from_a_real_tiny_sweep(sweep_dir, tmp_path, capsys):
    assert main(["analyze", "sensitivity", str(sweep_dir), "key=alpha", f"out={tmp_path}"]) == 0
    assert "sensitivity.pdf" in capsys.readouterr().out
    res = _files({k: tmp_path / f"sensitivity.{k}" for k in ("png", "pdf", "json")})
    assert res["key"] == "method.args.alpha" and res["attacks"] == ["clean", "pgd3"]
    (line,) = res["lines"]
    assert [p["x"] for p in line["points"]] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert {s["method.args.alpha"] for s in res["skipped"]} == {1.0}  # the gamma runs: one alpha each
    for p in line["points"]:  # the numbers are the stored evaluations' (one seed: std 0)
        (run,) = p["runs"]
        stored = io.read_json(Path(run) / "eval" / "best.json")["results"]
        assert p["pgd3"]["overall"] == {"mean": stored["pgd3"]["accuracy"], "std": 0.0, "n": 1}
        assert p["clean"]["tail"]["mean"] == stored["clean"]["tail_group"]
    gamma = run_analysis("sensitivity", [sweep_dir], ["key=resample_gamma", f"out={tmp_path / 'g'}"])
    (gl,) = io.read_json(gamma["json"])["lines"]
    assert [p["x"] for p in gl["points"]] == [1.0, 2.5, 5.0] and gl["setting"] == {"method.args.alpha": 1.0}


def test_sensitivity_key_errors(sweep_dir, tmp_path):
    with pytest.raises(ConfigError, match="key= is needed"):
        run_analysis("sensitivity", [sweep_dir], [f"out={tmp_path}"])
    with pytest.raises(ConfigError, match="not a setting"):
        run_analysis("sensitivity", [sweep_dir], ["key=temperature", f"out={tmp_path}"])
    with pytest.raises(ConfigError, match="tagged 'last'"):
        run_analysis("sensitivity", [sweep_dir], ["key=alpha", "tag=last", f"out={tmp_path}"])


def test_taet_stage1_sweep_and_its_plot_from_the_cli(tmp_path):
    over = ["epochs=2", "train.max_steps_per_epoch=2", "train.val_samples=20", "train.val_attack_steps=1",
            "eval.attacks=clean,pgd3", "eval.n_samples=0", "train.seed=0"]
    assert main(["sweep", "taet-stage1-digits", f"out={tmp_path / 's'}", *over]) == 0
    assert main(["analyze", "sensitivity", str(tmp_path / "s"), "key=stage1_epochs", "metric=balanced_accuracy",
                 "tag=last", f"out={tmp_path}"]) == 0
    res = io.read_json(tmp_path / "sensitivity.json")
    (line,) = res["lines"]
    assert [p["x"] for p in line["points"]] == [0, 2, 4, 6, 8] and res["metric"] == "balanced_accuracy"
    # stage 1 covers every epoch from 2 on: those runs train on clean images only, so they are the same run
    p2, p4 = line["points"][1], line["points"][2]
    assert p2["clean"]["overall"]["mean"] == p4["clean"]["overall"]["mean"]


# ----------------------------------------------------------------------------------------------- cost
def test_cost_reads_the_runs_own_records(sweep_dir, tmp_path):
    res = _files(run_analysis("cost", [sweep_dir], [f"out={tmp_path}", "memory=rss"]))
    assert res["memory"] == "rss" and len(res["methods"]) == 7
    row = res["methods"][2]  # alpha 1 (grid order)
    (run,) = row["runs"]
    rows = [r for r in io.read_jsonl(Path(run) / "metrics.jsonl") if "seconds" in r]
    assert row["seconds_per_epoch"]["mean"] == pytest.approx(sum(r["seconds"] for r in rows) / len(rows))
    assert row["peak_memory_mb"]["mean"] == max(r["peak_rss_mb"] for r in rows)
    teacher = io.read_jsonl(Path(run) / "teacher" / "metrics.jsonl")
    assert row["stage_seconds"][0]["teacher"]["seconds"] == pytest.approx(sum(r["seconds"] for r in teacher))
    assert res["methods"][0]["stage_seconds"] == [None]  # alpha 0 trains no teacher
    with pytest.raises(ConfigError, match="memory="):
        run_analysis("cost", [sweep_dir], [f"out={tmp_path}", "memory=gpu"])


# --------------------------------------------------------------------------------------- epoch-choice
def test_epoch_test_records_are_marked_and_change_no_training(run_dir, tmp_path):
    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    assert all(r["test"]["split"] == "test" and r["test"]["used_for_selection"] is False for r in rows)
    plain = Trainer(resolve_config(TINY + [f"out={tmp_path}", "name=plain"])).fit()
    assert "test" not in io.read_jsonl(tmp_path / "plain" / "metrics.jsonl")[0]
    wa = io.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    wb = io.load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # evaluating the test split moved nothing
    assert plain["best"] == io.read_json(run_dir / "train_summary.json")["best"]


def test_epoch_test_keeps_resume_exact(tmp_path, die_after_checkpoint):
    over = TINY + ["train.epoch_test=true", "train.deterministic=true", f"out={tmp_path}"]
    Trainer(resolve_config(over + ["name=straight"])).fit()
    with die_after_checkpoint(0, run_name="killed"):
        Trainer(resolve_config(over + ["name=killed"])).fit()
    Trainer(resolve_config(over + ["name=killed"])).fit()
    a, b = (io.read_jsonl(tmp_path / n / "metrics.jsonl") for n in ("straight", "killed"))
    assert [(r["val"], r["test"]) for r in a] == [(r["val"], r["test"]) for r in b]
    with pytest.raises(ConfigError, match="epoch_test"):  # another setting never extends the stored records
        Trainer(resolve_config(TINY + ["train.deterministic=true", f"out={tmp_path}", "name=killed", "epochs=4"])).fit()


def test_epoch_choice_marks_each_checkpoint_rule(run_dir, tmp_path, capsys):
    assert main(["analyze", "epoch-choice", str(run_dir), f"out={tmp_path}"]) == 0
    res = _files({k: tmp_path / f"epoch-choice.{k}" for k in ("png", "pdf", "json")})
    (r,) = res["runs_epochs"]
    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    assert r["val"]["robust"] == [row["val"]["rob_balanced"] for row in rows]
    assert r["test"]["clean"] == [row["test"]["clean_balanced"] for row in rows] and r["test_note"]
    sel = r["selection"]
    assert sel["best_val"]["epoch"] == io.read_json(run_dir / "train_summary.json")["best"]["epoch"]
    assert sel["last"]["epoch"] == 2
    best_test = max(range(3), key=lambda e: (rows[e]["test"]["rob_balanced"], -e))
    assert sel["best_test"]["epoch"] == best_test
    assert r["test_selection_gain"]["robust"] == pytest.approx(
        rows[best_test]["test"]["rob_balanced"] - rows[sel["best_val"]["epoch"]]["test"]["rob_balanced"])
    assert r["test_selection_gain"]["robust"] >= 0


def test_stored_analyses_need_runs(tmp_path):
    with pytest.raises(ConfigError, match="no run folders"):
        run_analysis("cost", [tmp_path], [f"out={tmp_path}"])
