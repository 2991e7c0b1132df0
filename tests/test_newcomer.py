"""Evaluation that a newcomer enjoys (issue 30): progress with an honest time left, named models, a readable
result, a discoverable API, caches outside the user's data, and a ``pgd_at-digits`` preset.

The report polish of the same issue (LaTeX escaping, figure layout, axes, resolution, the loss in
``report.csv``, citations) is tested in ``tests/test_report.py``; the naming of foreign models in reports and
the refusal to overwrite another model's result in ``tests/test_eval_reliability.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ltrobust
from ltrobust.config import DataConfig, resolve_config
from ltrobust.data import build_data
from ltrobust.errors import ConfigError, DataError
from ltrobust.evaluation import progress as progress_mod
from ltrobust.evaluation.evaluator import Evaluation, model_fingerprint
from ltrobust.evaluation.progress import EvalProgress, attack_stages

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------- 1. progress
class Clock:
    """A hand-set ``time.perf_counter`` for the progress module."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_time_left_is_hand_computable_from_budgets_and_measured_rates(monkeypatch):
    """The estimate is remaining image passes x seconds per pass: the running attack's own measured rate,
    the average rate for attacks not yet started, the cascade's robust images as their upper bound."""
    from ltrobust.attacks.suite import parse_attack

    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", clock)
    specs = [parse_attack(a) for a in ("clean", "pgd10", "aa")]
    per_image = {k: u for s in specs for k, u in attack_stages(s, 10)}
    # the budgets: PGD-10 = 10 gradient passes (3 units each) + the prediction; AutoAttack's four attacks
    assert per_image == {"clean": 1.0, "pgd10": 31.0, "aa/apgd-ce": 3 * 101 + 2 + 6 + 1,
                         "aa/apgd-t": 9 * (3 * 101 + 1) + 2, "aa/fab-t": 9 * (3 * 100 + 103), "aa/square": 5004.0}
    aa_units = sum(u for k, u in per_image.items() if k.startswith("aa/"))
    p = EvalProgress(nn.Identity(), specs, 10, [100], 100, enabled=False)
    with p:
        p.begin_chunk(100)
        p.begin_attack(specs[0], 100)
        p.units += 100  # 100 plain passes (the forward hook counts them when the bar is on)
        clock.t = 1.0
        p.end_attack(90)  # 90 clean-correct images
        p.begin_attack(specs[1], 90)  # 90 x 31 = 2790 units predicted
        p.units += 1395
        clock.t = 2.0
        mean_rate = 2.0 / (100 + 1395)
        # PGD-10: half its work in 1 s -> 1 s left; AA on at most 90 images, at the mean rate
        assert p.remaining() == pytest.approx(1.0 + 90 * aa_units * mean_rate)
        p.units += 1395
        clock.t = 3.0
        p.end_attack(60)  # 60 images still robust
        p.begin_attack(specs[2], 60)
        p.autoattack("start", attacks=["apgd-ce", "apgd-t", "fab-t", "square"], n=60, robust=1.0)
        p.autoattack("stage", name="apgd-ce")
        p.units += 60 * per_image["aa/apgd-ce"]
        clock.t = 4.0
        p.autoattack("after", name="apgd-ce", robust=0.5)  # APGD-CE broke half: the rest runs on 30 images
        p.autoattack("stage", name="apgd-t")
        mean_rate = 4.0 / (100 + 2790 + 60 * per_image["aa/apgd-ce"])
        rest = per_image["aa/apgd-t"] + per_image["aa/fab-t"] + per_image["aa/square"]
        assert p.remaining() == pytest.approx(30 * rest * mean_rate)
        p.units += 10 * per_image["aa/apgd-t"]  # a third of APGD-T in 2 s: its own rate from now on
        clock.t = 6.0
        t_rate = 2.0 / (10 * per_image["aa/apgd-t"])
        mean_rate = 6.0 / (100 + 2790 + 60 * per_image["aa/apgd-ce"] + 10 * per_image["aa/apgd-t"])
        expect = 20 * per_image["aa/apgd-t"] * t_rate + 30 * (per_image["aa/fab-t"] + per_image["aa/square"]) * mean_rate
        assert p.remaining() == pytest.approx(expect)
        for name in ("fab-t", "square"):
            p.autoattack("stage", name=name)
            p.units += 30 * per_image[f"aa/{name}"]
            clock.t += 1.0
        p.autoattack("end")  # the call's 60 images are done: nothing is left
        assert p.attack_images_done() == 60 and p.remaining() == 0.0
        p.batch_done(60)  # attack_flags reports the same batch: not counted twice
        assert p.attack_images_done() == 60 and p.remaining() == 0.0


@pytest.mark.slow  # AutoAttack on 200 digits images: about 20 s on 2 shared cores
def test_progress_counts_images_and_its_time_left_after_a_fifth_is_within_2x_of_the_real_total(digits, mlp, tmp_path,
                                                                                               capsys):
    """Clean, PGD-10 and AutoAttack (APGD-CE, APGD-T with 9 targets, FAB-T, Square) on 200 images: the
    estimate of the total time, read at the first redraw after 20% of the measured wall time, is within
    2x of that wall time (the former estimate, from the time per finished attack, was 4-8x too low)."""
    _, _, counts = digits
    d = build_data(DataConfig(dataset="digits-lt"))
    ev = Evaluation(mlp, d.test, counts, ["clean", "pgd10", "aa"], tmp_path, eps=0.1, n_samples=200, progress=True)
    t0 = time.perf_counter()
    res = ev.run()
    total = time.perf_counter() - t0
    assert 0 < res["results"]["aa"]["accuracy"] < res["results"]["pgd10"]["accuracy"]  # the cascade shrinks
    elapsed, left = next((e, left) for e, left in ev.progress_log if e >= 0.2 * total and left is not None)
    ratio = (elapsed + left) / total
    assert 0.5 <= ratio <= 2.0, f"estimated total {elapsed + left:.1f} s at {elapsed:.1f} s, real {total:.1f} s"
    err = capsys.readouterr().err
    n_pgd = round(res["results"]["clean"]["accuracy"] * 2)  # the clean-correct images PGD-10 runs on
    assert f"PGD-10 {n_pgd}/{n_pgd} img" in err or f"/{n_pgd} img" in err  # images, not attacks, are counted
    assert "AA" in err and "fab-t (3/4)" in err and "square (4/4)" in err
    assert "eval eval: 100%" in err and "200 img · Clean, PGD-10, AA ·" in err


def test_progress_false_draws_nothing_and_leaves_the_model_untouched(digits, mlp, capsys):
    x, y, counts = digits
    ltrobust.evaluate(mlp, (x[:50], y[:50]), attacks="clean,fgsm", progress=False)
    assert capsys.readouterr().err == "" and not mlp._forward_hooks
    ltrobust.evaluate(mlp, (x[:50], y[:50]), attacks="clean,fgsm", name="shown")
    err = capsys.readouterr().err
    assert "eval shown: 100%|" in err and "50 img · Clean, FGSM" in err and not mlp._forward_hooks


def test_a_three_line_script_shows_progress_and_ends_with_a_table_naming_the_model(tmp_path, digits, mlp):
    x, y, _ = digits
    torch.save(mlp, tmp_path / "model.pt")
    torch.save((x, y), tmp_path / "test.pt")
    script = ("import torch, ltrobust\n"
              "model = torch.load('model.pt', weights_only=False)\n"
              "print(ltrobust.evaluate(model, torch.load('test.pt'), attacks='clean,pgd5', name='my-mlp'))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eval my-mlp: 100%|" in proc.stderr and "500 img · Clean, PGD-5 ·" in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("my-mlp: 500 test images, cascade, linf eps 8/255")
    assert lines[1].split() == ["attack", "accuracy", "balanced", "tail", "worst", "class"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["Clean", "PGD-5", "Worst"]


# ---------------------------------------------------------------------------------------- 2. names
def test_a_model_is_named_by_name_or_by_its_class_and_weights_hash(digits, mlp):
    x, y, _ = digits
    res = ltrobust.evaluate(mlp, (x[:20], y[:20]), attacks="clean", progress=False)
    assert res.name == f"Sequential-{model_fingerprint(mlp)[:8]}" == res.result["model_name"]
    assert res.result["model_fingerprint"] == model_fingerprint(mlp)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    assert ltrobust.evaluate(other, (x[:20], y[:20]), attacks="clean", progress=False).name != res.name
    named = ltrobust.evaluate(mlp, (x[:20], y[:20]), attacks="clean", progress=False, name="wrn-34-10")
    assert named.name == "wrn-34-10" and repr(named).startswith("wrn-34-10: 20 test images")
    with pytest.raises(ConfigError, match=r"name='a/b' is not a name.*e\.g\. name=wrn-34-10"):
        ltrobust.evaluate(mlp, (x[:20], y[:20]), progress=False, name="a/b")


# --------------------------------------------------------------------------------- 6. discoverable
def test_dir_and_help_show_the_public_api_without_importing_torch():
    code = ("import sys, pydoc, ltrobust\n"
            "names = dir(ltrobust)\n"
            "assert 'torch' not in sys.modules, 'dir() imported torch'\n"
            "assert {'evaluate', 'EvalResult', 'load_run', 'build_report'} <= set(names), names\n"
            "assert set(ltrobust.__all__) <= set(names)\n"
            "text = pydoc.render_doc(ltrobust, renderer=pydoc.plaintext)\n"
            "assert 'evaluate(model: ' in text and 'class EvalResult' in text, text[:2000]\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ----------------------------------------------------------------------------------- 7. the result
def test_the_result_prints_as_the_short_table_with_the_full_result_one_attribute_away(digits, mlp, tmp_path,
                                                                                      monkeypatch):
    x, y, counts = digits
    res = ltrobust.evaluate(mlp, (x, y), class_counts=counts, attacks="clean,fgsm", eps=0.1, progress=False,
                            name="mine")
    text = repr(res)
    assert text == str(res) and len(text) < 800  # not the ~3,000-character dict
    lines = text.splitlines()
    assert lines[0] == "mine: 500 test images, cascade, linf eps 0.1"
    r = res.result["results"]
    for line, attack in zip(lines[2:5], ("clean", "fgsm", "worst_case")):
        cells = line.split()
        worst = r[attack]["worst_class"]
        assert [float(c) for c in cells[-5:-2]] == [round(r[attack][k], 2) for k in ("accuracy", "balanced_accuracy",
                                                                                   "tail")]
        assert cells[-2:] == [str(worst["class"]), f"({worst['recall']:.1f})"]
    assert ".result" in lines[-1] and res.result["results"]["fgsm"]["per_class"] == res.per_class["fgsm"]
    # CSV without pandas, at full precision
    import csv

    rows = list(csv.DictReader(res.to_csv(tmp_path / "mine.csv").splitlines()))
    assert (tmp_path / "mine.csv").read_text() == res.to_csv()
    assert [row["attack"] for row in rows] == ["clean", "fgsm", "worst_case"]
    assert float(rows[1]["tail_group"]) == r["fgsm"]["tail_group"] and rows[1]["model"] == "mine"
    df = res.to_pandas()
    assert list(df.index) == ["clean", "fgsm", "worst_case"] and df.loc["fgsm", "accuracy"] == r["fgsm"]["accuracy"]
    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas not installed
    with pytest.raises(DataError, match="needs pandas.*pip install pandas.*to_csv"):
        res.to_pandas()


def test_without_class_counts_the_table_says_tail_needs_them(digits, mlp):
    x, y, _ = digits
    text = repr(ltrobust.evaluate(mlp, (x[:40], y[:40]), attacks="clean", progress=False))
    assert "tail: needs class_counts" in text and np.all([" - " in ln or ln.rstrip().endswith(")") for ln in
                                                          text.splitlines()[2:3]])


# --------------------------------------------------------------------------- 5. ltrobust's own cache
def _png_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (8, 8, 3)).astype(np.uint8)).save(root / split / c / f"{i}.png")


def test_image_folder_caches_go_to_ltrobusts_cache_folder_never_into_the_data(tmp_path, monkeypatch):
    from ltrobust import cli
    from ltrobust.data.formats.base import cache_dir

    data = tmp_path / "my data"
    _png_folder(data)
    listing = sorted(p.relative_to(data) for p in data.rglob("*"))
    # default: the platform's user cache folder (XDG_CACHE_HOME on Linux), overridable by the environment
    monkeypatch.delenv("LTROBUST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache_dir() == tmp_path / "xdg" / "ltrobust"
    monkeypatch.setenv("LTROBUST_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    build_data(DataConfig(dataset="imagefolder", data_dir=str(data)))
    assert len(list((tmp_path / "env").glob("my data-*/imagefolder-*.npz"))) == 2  # train and test
    # the CLI option, before or after the command
    for argv in (["--cache-dir", str(tmp_path / "opt1"), "data", "info", "imagefolder", f"data_dir={data}"],
                 ["data", "info", "imagefolder", f"data_dir={data}", "--cache-dir", str(tmp_path / "opt2")]):
        assert cli.main(argv) == 0
    for folder in ("opt1", "opt2"):
        assert len(list((tmp_path / folder).glob("my data-*/imagefolder-*.npz"))) == 2, folder
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == listing  # the data folder is untouched


# ------------------------------------------------------------------------------ 8. pgd_at-digits
def test_pgd_at_digits_preset_has_the_threat_model_and_budget_of_the_other_digits_presets():
    from dataclasses import replace

    from ltrobust.config import list_presets

    pgd = resolve_config(["preset=pgd_at-digits"])
    assert pgd == resolve_config(["preset=pgd-at-digits"]) and "pgd-at-digits" in list_presets()
    assert (pgd.method.name, pgd.method.loss) == ("pgd_at", "ce")
    for name in ("at-bsl-digits", "reat-digits", "robal-digits", "fgsm-at-digits", "taet-digits"):
        other = resolve_config([f"preset={name}"])
        # everything but the method (and the model head a method needs) is the same: data, attack, budget, eval
        assert replace(pgd, method=other.method, model=other.model, preset=other.preset) == other, name
    assert resolve_config(["preset=at_bsl-digits"]) == resolve_config(["preset=at-bsl-digits"])
