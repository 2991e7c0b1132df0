"""``ltrobust analyze``: every analysis on a tiny CPU run, its numbers recomputed independently here."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ltrobust import io
from ltrobust.analysis import run_analysis
from ltrobust.analysis.gaussian_theory import (adversarial_logistic_loss, fit_adversarial_logistic, fit_logistic,
                                               linear_tail_errors, sample_mixture, theorem1)
from ltrobust.attacks import parse_attack, run_attack
from ltrobust.cli import main
from ltrobust.config import resolve_config
from ltrobust.data import build_data
from ltrobust.evaluation.evaluator import predict
from ltrobust.evaluation.metrics import confusion_matrix
from ltrobust.evaluation.runs import load_run
from ltrobust.training.trainer import Trainer
from ltrobust.errors import ConfigError
from ltrobust.registry import ANALYSES

TINY = ["dataset=digits-lt", "model=smallcnn", "model.width=8", "epochs=3", "train.batch_size=64", "attack.steps=2",
        "train.val_samples=50", "train.val_attack_steps=2", "train.progress=false", "train.record_ae_drift=true",
        "train.ae_drift_samples=60", "train.precision=fp32"]
KINDS = ["ae-drift", "attack-budget", "confusion", "cost", "embedding", "epoch-choice", "feature-norm",
         "gaussian-theory", "sensitivity", "zero-grad"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    Trainer(resolve_config(TINY + [f"out={out}", "name=r"])).fit()
    return out / "r"


@pytest.fixture(scope="module")
def loaded(run_dir):
    run = load_run(run_dir)
    return run, build_data(run.cfg.data, "cpu")


def _outputs(paths: dict[str, Path]) -> dict:
    png = Path(paths["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    return io.read_json(paths["json"])  # checksum verified


def _images(data, idx) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.as_tensor(idx)
    return data.test.images[idx].float() / 255.0, data.test.labels[idx]


def test_every_analysis_is_registered():
    assert ANALYSES.names() == KINDS


# ------------------------------------------------------------------------------------ feature-norm
def test_feature_norm_ratios_and_weight_norms_match_direct_computation(run_dir, loaded, tmp_path):
    run, data = loaded
    # a larger ball than the run's 8/255 (a run setting passed through) so that the tiny model has both groups
    over = ["n_per_class=5", "batch_size=512", "eval.eps=32/255", "eval.step_size=4/255", f"out={tmp_path}"]
    res = _outputs(run_analysis("feature-norm", [run_dir], over))
    assert res["attack"]["eps"] == pytest.approx(32 / 255)
    x_all, y_all = _images(data, _subset_all(data, 5))
    correct = predict(run.deployed, x_all) == y_all
    assert res["n_images"] == len(y_all) == 50 and res["n_correct"] == int(correct.sum()) > 0
    x, y = _images(data, res["test_index"])
    assert torch.equal(y, y_all[correct]) and res["labels"] == y.tolist()
    with torch.no_grad():
        n_clean = run.model.features(x).norm(dim=1)
    # the same attack, re-run here: one batch, seeded 0 (seed * 100003 + batch number)
    spec = parse_attack("pgd20", eps=32 / 255, step_size=4 / 255)
    x_adv = run_attack(spec, run.deployed, x, y, seed=0)
    with torch.no_grad():
        n_adv = run.model.features(x_adv).norm(dim=1)
    np.testing.assert_allclose(res["feature_norm_clean"], n_clean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(res["feature_norm_adv"], n_adv.numpy(), rtol=1e-5)
    np.testing.assert_allclose(res["ratio"], (n_adv / n_clean).numpy(), rtol=1e-5)
    assert res["attacked"] == (predict(run.deployed, x_adv) != y).tolist()
    assert res["n_attacked"] + res["n_robust"] == res["n_correct"]
    np.testing.assert_allclose(res["weight_norm"], run.model.head.weight.detach().norm(dim=1).numpy(), rtol=1e-6)
    assert res["class_counts"] == run.class_counts


def _subset_all(data, n):
    from ltrobust.analysis.base import per_class_subset

    return per_class_subset(data.test.labels, n, 0)


# --------------------------------------------------------------------------------------- embedding
def test_embedding_tsne_of_a_class_subset(run_dir, loaded, tmp_path):
    run, data = loaded
    res = _outputs(run_analysis("embedding", [run_dir], ["classes=0,5,9", "n_per_class=12", f"out={tmp_path}"]))
    labels = np.asarray(res["labels"])
    assert res["classes"] == [0, 5, 9] and sorted(set(labels.tolist())) == [0, 5, 9]
    assert np.bincount(labels, minlength=10)[[0, 5, 9]].tolist() == [12, 12, 12]
    for key in ("coords_clean", "coords_adv"):
        xy = np.asarray(res[key])
        assert xy.shape == (36, 2) and np.isfinite(xy).all()
    x, y = _images(data, res["test_index"])
    assert torch.equal(y, torch.as_tensor(labels)) and res["pred_clean"] == predict(run.deployed, x).tolist()
    for which in ("clean", "adversarial"):
        assert 0.0 <= res["knn_purity"][which]["mean"] <= 1.0 and set(res["knn_purity"][which]["per_class"]) == {"0", "5", "9"}
    tail = _outputs(run_analysis("embedding", [run_dir], ["classes=tail", "space=logits", "n_per_class=4",
                                                          f"out={tmp_path / 'tail'}"]))
    assert tail["classes"] == [7, 8, 9] and tail["space"] == "logits"


# ---------------------------------------------------------------------------------------- ae-drift
def test_ae_drift_is_finite_and_per_class(run_dir, tmp_path):
    res = _outputs(run_analysis("ae-drift", [run_dir], [f"out={tmp_path}"]))
    (r,) = res["runs_drift"]
    assert r["epochs"] == [1, 2]  # epoch 0 has no previous AEs
    l2, linf = np.asarray(r["per_class_l2"], dtype=float), np.asarray(r["per_class_linf"], dtype=float)
    assert l2.shape == linf.shape == (2, 10) and np.isfinite(l2).all() and np.isfinite(linf).all()
    eps = 8 / 255
    assert (l2 >= 0).all() and (linf <= 2 * eps + 1e-6).all() and (l2 <= 2 * eps * 8 + 1e-6).all()  # 64 pixels
    np.testing.assert_allclose(r["mean_l2"], l2.mean(axis=0), rtol=1e-9)
    # the trainer's per-class means agree with its per-sample distances
    rows = [row["ae_drift"] for row in io.read_jsonl(run_dir / "metrics.jsonl") if row["epoch"] >= 1]
    for row in rows:
        d, y = np.asarray(row["l2"]), np.asarray(row["labels"])
        assert np.bincount(y, minlength=10).tolist() == row["n_per_class"] == [6] * 10
        np.testing.assert_allclose([d[y == c].mean() for c in range(10)], row["per_class_l2"], rtol=1e-5)
    assert len(r["samples_l2"]["l2"]) == 120


def test_ae_drift_fixed_start_and_untouched_rng(tmp_path):
    """Same model twice -> zero drift (the start noise is fixed); the training RNG stream is untouched."""
    t = Trainer(resolve_config(TINY + [f"out={tmp_path}", "name=d"]))
    t.build()
    t._drift_prev = None
    before = torch.get_rng_state()
    first = t.ae_drift()
    assert torch.equal(torch.get_rng_state(), before)
    assert first["per_class_l2"] is None and first["n_per_class"] == [6] * 10
    second = t.ae_drift()
    assert second["per_class_l2"] == [0.0] * 10 and second["per_class_linf"] == [0.0] * 10


def test_ae_drift_recording_keeps_resume_exact(tmp_path, die_after_checkpoint):
    """Killed after epoch 2 and resumed: same weights and same drift as training straight through."""
    over = TINY + ["epochs=3", "train.deterministic=true", "train.val_every=0", "train.max_steps_per_epoch=3",
                   f"out={tmp_path}"]
    Trainer(resolve_config(over + ["name=straight"])).fit()
    with die_after_checkpoint(1):
        Trainer(resolve_config(over + ["name=killed"])).fit()
    Trainer(resolve_config(over + ["name=killed"])).fit()
    a, b = (io.load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")["model"] for n in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    drift = [[row["ae_drift"] for row in io.read_jsonl(tmp_path / n / "metrics.jsonl")] for n in ("straight", "killed")]
    assert drift[0] == drift[1] and drift[0][2]["per_class_l2"] is not None


def test_ae_drift_without_recording_names_the_fix(run_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("analysis"))
    cfg = yaml.safe_load((bare / "config.yaml").read_text())
    cfg["train"]["record_ae_drift"] = False
    (bare / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{k: v for k, v in row.items() if k != "ae_drift"} for row in io.read_jsonl(bare / "metrics.jsonl")]
    (bare / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="train.record_ae_drift=true"):
        run_analysis("ae-drift", [bare], [])
    assert main(["analyze", "ae-drift", str(bare)]) == 2
    assert "record_ae_drift=true" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- attack-budget
def test_attack_budget_monotone_and_clean_at_zero(run_dir, loaded, tmp_path):
    run, data = loaded
    over = ["steps=0,1,3", "eps=0,8/255,32/255,64/255", "eps_steps=3", "n_per_class=5", "eval.eps=32/255",
            f"out={tmp_path}"]
    res = _outputs(run_analysis("attack-budget", [run_dir, run_dir / "checkpoints" / "last.pt"], over))
    assert [len(res["runs_budget"]), res["steps_sweep"]["steps"], res["eps_sweep"]["eps"][-1]] == [2, [0, 1, 3], 64 / 255]
    assert res["steps_sweep"]["eps"] == pytest.approx(32 / 255)
    x, y = _images(data, _subset_all(data, 5))
    clean = float((predict(run.deployed, x) == y).float().mean() * 100)  # best.pt
    for r in res["runs_budget"]:
        for key in ("by_steps", "by_eps"):
            worst = [row["worst_case"]["accuracy"] for row in r[key]]
            assert all(a >= b for a, b in zip(worst, worst[1:])), (key, worst)
            assert all(row["worst_case"]["accuracy"] <= row["pgd"]["accuracy"] for row in r[key])
            assert r[key][0]["budget"] == 0 and r[key][0]["pgd"]["accuracy"] == r["clean"]["accuracy"]
            assert "tail" in r[key][-1]["worst_case"] and len(r[key][-1]["worst_case"]["per_class"]) == 10
        assert r["by_eps"][-1]["worst_case"]["accuracy"] < r["clean"]["accuracy"]  # 64/255 breaks the tiny model
    assert res["runs_budget"][0]["clean"]["accuracy"] == pytest.approx(clean)


# ---------------------------------------------------------------------------------------- confusion
def test_confusion_counts_every_test_image(run_dir, loaded):
    run, data = loaded
    paths = run_analysis("confusion", [run_dir], ["attack=pgd5"])
    assert Path(paths["json"]) == run_dir / "analysis" / "confusion.json"  # default location
    res = _outputs(paths)
    n = len(data.test.labels)
    clean, adv = np.asarray(res["clean"]), np.asarray(res["adversarial"])
    assert clean.sum() == adv.sum() == res["n"] == n == 500
    assert adv.sum(axis=1).tolist() == np.bincount(data.test.labels.numpy(), minlength=10).tolist()
    x = data.test.images.float() / 255.0
    expected = confusion_matrix(predict(run.deployed, x), data.test.labels, 10)
    assert np.array_equal(clean, expected)
    dest = res["tail_destinations"]
    assert res["tail_classes"] == [7, 8, 9] and dest["n"] == int(adv[[7, 8, 9]].sum()) == 150
    assert sum(dest["percent_by_class"]) == pytest.approx(100.0)
    shares = [v for v in dest["misclassified_into_group"].values() if v is not None]
    assert not shares or sum(shares) == pytest.approx(100.0)


# ---------------------------------------------------------------------------------- gaussian-theory
def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _theorem1_by_hand(r: float, n: int, eta: float, eps: float) -> list[float]:
    """Cho et al., ICLR 2025, Eq. 4-5 written out again: [R_nat(f_nat), R_rob(f_nat), R_nat(f_rob), R_rob(f_rob)] for
    y = -1."""
    a, b = math.log(r) / (2 * math.sqrt(n) * eta), math.log(r) / (2 * math.sqrt(n) * (eta - eps))
    return [_phi(-math.sqrt(n) * eta + a), _phi(-math.sqrt(n) * (eta - eps) + a),
            _phi(-math.sqrt(n) * eta + b), _phi(-math.sqrt(n) * (eta - eps) + b)]


def test_gaussian_theory_closed_form_and_logistic_regression(tmp_path):
    over = [f"out={tmp_path}", "ir=1,4,16,64", "n_train=4000", "repeats=3", "boundary_ir=1,4"]
    res = _outputs(run_analysis("gaussian-theory", [], over))
    keys = ["natural_error_f_nat", "robust_error_f_nat", "natural_error_f_rob", "robust_error_f_rob"]
    for i, r in ((1, 4.0), (3, 64.0)):  # two points, against the formula written independently above
        assert res["ir"][i] == r
        np.testing.assert_allclose([res["closed_form"][k][i] for k in keys], _theorem1_by_hand(r, 2, 1.0, 0.5),
                                   rtol=1e-12)
    assert res["closed_form"]["robust_error_f_rob"][0] == res["closed_form"]["robust_error_f_nat"][0]  # IR 1
    assert res["corollary1"]["closed_form_holds"] and all(res["corollary1"]["logistic_regression_holds"])
    lr = res["logistic_regression"]
    for key in ("natural_error_lr_nat", "robust_error_lr_nat", "natural_error_lr_adv", "robust_error_lr_adv"):
        m = lr[key]["mean"]
        assert all(a < b for a, b in zip(m, m[1:])), (key, m)  # the tail error rises with IR
    # natural LR approaches the Bayes-optimal natural classifier of Theorem 1
    np.testing.assert_allclose(lr["natural_error_lr_nat"]["mean"][:3], res["closed_form"]["natural_error_f_nat"][:3],
                               atol=0.04)
    assert [b["ir"] for b in res["boundaries"]] == [1.0, 4.0]
    with pytest.raises(ConfigError, match="0 < eps < eta"):
        run_analysis("gaussian-theory", [], [f"out={tmp_path}", "eps=1.5"])


def test_theorem1_matches_monte_carlo_and_the_linear_error_formula():
    rng = np.random.default_rng(0)
    r, d, eta, eps = 10.0, 3, 1.0, 0.4
    w = np.full(d, 1 / math.sqrt(d))
    th = theorem1(r, d, eta, eps)
    x = -eta + rng.standard_normal((400_000, d))  # tail class y = -1
    for b, nat, rob in ((math.log(r) / (2 * math.sqrt(d) * eta), "natural_error_f_nat", "robust_error_f_nat"),
                        (math.log(r) / (2 * math.sqrt(d) * (eta - eps)), "natural_error_f_rob", "robust_error_f_rob")):
        score = x @ w + b
        assert np.mean(score > 0) == pytest.approx(th[nat], abs=3e-3)
        # the worst l_inf perturbation of a tail point moves every coordinate by +eps * sign(w)
        assert np.mean(score + eps * np.abs(w).sum() > 0) == pytest.approx(th[rob], abs=3e-3)
        exact = linear_tail_errors(w, b, eta, eps)
        assert (exact["natural_error"], exact["robust_error"]) == pytest.approx((th[nat], th[rob]), rel=1e-12)


def test_adversarial_logistic_regression_minimises_the_exact_adversarial_loss():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    x, y = sample_mixture(3000, 5.0, 2, 1.0, rng)
    w, b, info = fit_adversarial_logistic(x, y, 0.5)
    assert info["converged"]
    ours = adversarial_logistic_loss(w, b, x, y, 0.5)
    w0, b0 = fit_logistic(x, y)
    ref = minimize(lambda p: adversarial_logistic_loss(p[:2], p[2], x, y, 0.5), np.r_[w0, b0], method="Nelder-Mead",
                   options={"xatol": 1e-8, "fatol": 1e-12, "maxiter": 4000})
    assert ours <= ref.fun + 1e-7 and ours < adversarial_logistic_loss(w0, b0, x, y, 0.5)


# --------------------------------------------------------------------------------------- CLI, errors
def test_cli_and_option_errors(run_dir, tmp_path, capsys):
    assert main(["analyze", "gaussian-theory", f"out={tmp_path}", "n_train=300", "repeats=1", "ir=1,2",
                 "boundary_ir=2"]) == 0
    assert "gaussian-theory.png" in capsys.readouterr().out
    assert main(["analyze", "gaussian-theory", str(run_dir)]) == 2
    assert "needs no run" in capsys.readouterr().err
    assert main(["analyze", "feature-norm", str(run_dir), "n_per_clas=5"]) == 2
    assert "n_per_class=0" in capsys.readouterr().err  # the valid options are listed
    assert main(["analyze", "feature-norms", str(run_dir)]) == 2
    assert "feature-norm" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="takes one run"):
        run_analysis("confusion", [run_dir, run_dir], [])
