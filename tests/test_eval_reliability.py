"""Reliability of evaluation and naming (issue 29, items 1, 2, 3, 4, 6, 14, 17, 19): a wrong number is never
shown as right, a result is never overwritten by another model's, bad API input fails like the CLI's.

Each test fails without its fix; docs/reliability.md ("Evaluation and naming") lists them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ltrobust
from ltrobust import cli
from ltrobust.config import resolve_config
from ltrobust.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
NETS = '''
from torch import nn


def mlp(num_classes=10, width=16):
    """A user's plain MLP on digits (1 x 8 x 8 images in [0, 1])."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))
'''
TINY = ["dataset=digits-lt", "model=smallcnn", "model.width=4", "train.batch_size=32", "train.max_steps_per_epoch=3",
        "train.progress=false", "train.val_samples=50", "train.val_attack_steps=1", "attack.steps=1",
        "data.val_from=holdout", "train.deterministic=true", "train.precision=fp32"]


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    """``user_nets_29`` importable (``model=user_nets_29:mlp``), and two different weight files with the same
    stem: ``a/model.pt`` (width 16) and ``b/model.pt`` (width 32)."""
    import importlib

    (tmp_path / "user_nets_29.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    nets = importlib.import_module("user_nets_29")
    for folder, width, seed in (("a", 16, 0), ("b", 32, 1)):
        torch.manual_seed(seed)
        (tmp_path / folder).mkdir()
        torch.save(nets.mlp(width=width).state_dict(), tmp_path / folder / "model.pt")
    yield tmp_path
    sys.modules.pop("user_nets_29", None)


def eval_weights(folder: str, width: int, *extra: str) -> int:
    return cli.main(["eval", f"weights={folder}/model.pt", "model=user_nets_29:mlp", f"model.width={width}",
                     "dataset=digits-lt", "attacks=clean,fgsm", "eval.n_samples=60", *extra])


# --------------------------------------------------------------------------- 1. one row per model
def test_two_different_foreign_models_are_two_report_rows_never_one_averaged(user_nets, capsys):
    from ltrobust.report import build_report

    assert eval_weights("a", 16, "name=small") == 0 and eval_weights("b", 32, "name=wide") == 0
    assert eval_weights("a", 16) == 0  # unnamed: the file's stem and a short hash
    capsys.readouterr()
    out = build_report(["runs/eval"], out="report")
    table = out["markdown_table"]
    assert out["n_groups"] == 3 and "? + ?" not in table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    unnamed = next(n for n in rows if n.startswith("model-"))
    assert set(rows) == {"small", "wide", unnamed} and table.splitlines()[0].startswith("| Model | Seeds")
    small = json.loads(Path("runs/eval/small/eval.json").read_text())
    assert rows["small"].split("|")[3].strip() == f"{small['results']['clean']['accuracy']:.2f}"
    assert all(line.split("|")[2].strip() == "1" for line in rows.values())  # never "2 seeds" of two models
    # the CSV names each model and its fingerprint
    csv_text = Path(out["csv"]).read_text()
    assert "small" in csv_text and small["model_fingerprint"] in csv_text


# --------------------------------------------------------------------------- 2. never overwritten
def test_same_stem_weights_get_their_own_folders_and_a_name_clash_is_refused(user_nets, capsys):
    assert eval_weights("a", 16) == 0 and eval_weights("b", 32) == 0
    folders = sorted(p.name for p in Path("runs/eval").iterdir())
    assert len(folders) == 2 and all(f.startswith("model-") for f in folders)
    a = json.loads(Path(f"runs/eval/{folders[0]}/eval.json").read_text())
    b = json.loads(Path(f"runs/eval/{folders[1]}/eval.json").read_text())
    assert a["weights_sha256"] != b["weights_sha256"]
    assert {a["model_name"], b["model_name"]} == set(folders)
    # both named alike: the second is refused before any work, the first result kept byte for byte
    assert eval_weights("a", 16, "name=mine") == 0
    before = Path("runs/eval/mine/eval.json").read_bytes()
    capsys.readouterr()
    assert eval_weights("b", 32, "name=mine") == 2
    err = capsys.readouterr().err
    assert "holds the evaluation of another model (mine" in err and "give it another name (name=NAME" in err
    assert Path("runs/eval/mine/eval.json").read_bytes() == before


def test_api_out_dir_and_save_never_overwrite_another_models_result(digits, mlp, tmp_path):
    x, y, _ = digits
    kw = dict(attacks="clean,fgsm", progress=False)
    first = ltrobust.evaluate(mlp, (x[:40], y[:40]), out_dir=tmp_path / "ev", **kw)
    before = (tmp_path / "ev" / "eval.json").read_bytes()
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(ConfigError, match=r"another model \(Sequential-\w{8}, fingerprint \w{8}; this one: "
                                          r"Sequential-\w{8}.*another out_dir"):
        ltrobust.evaluate(other, (x[:40], y[:40]), out_dir=tmp_path / "ev", **kw)
    assert (tmp_path / "ev" / "eval.json").read_bytes() == before
    again = ltrobust.evaluate(mlp, (x[:40], y[:40]), out_dir=tmp_path / "ev", **kw)  # the same model resumes
    assert again.result["chunks_reused"] == 1 and again.accuracy == first.accuracy
    before = (tmp_path / "ev" / "eval.json").read_bytes()
    second = ltrobust.evaluate(other, (x[:40], y[:40]), **kw)
    with pytest.raises(ConfigError, match="another model"):
        second.save(tmp_path / "ev")
    assert (tmp_path / "ev" / "eval.json").read_bytes() == before
    second.save(tmp_path / "ev", tag="other")
    assert json.loads((tmp_path / "ev" / "other.json").read_text())["model_name"] == second.name


# ------------------------------------------------------------------------------------- 3. NaN
def test_a_nan_or_inf_image_is_an_error_naming_the_first(digits, mlp):
    x, y, _ = digits
    bad = x[:30].clone()
    bad[7, 0, 3, 3] = float("nan")
    bad[12, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match=r"image 7 \(label \d\) holds NaN or infinite values, and 2 of 30 images do"):
        ltrobust.evaluate(mlp, (bad, y[:30]), progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(bad, y[:30]), batch_size=8)
    with pytest.raises(DataError, match="image 7"):
        ltrobust.evaluate(mlp, loader, progress=False)


class NaNOnMarked(nn.Module):
    """The user's model, returning NaN logits for images whose first pixel is above 0.9 (the marked ones)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        marked = x.flatten(1)[:, 0] > 0.9
        return torch.where(marked[:, None], torch.full_like(z, float("nan")), z)


def test_nan_logits_count_as_wrong_for_every_attack_with_a_warning(digits, mlp, caplog):
    x, y, counts = digits
    xm = x[:100].clone()
    marked = [3, 40, 77]
    xm[marked, 0, 0, 0] = 1.0  # digits' corner pixel is 0 everywhere else
    model = NaNOnMarked(mlp)
    with caplog.at_level(logging.WARNING, logger="ltrobust.evaluation.evaluator"):
        res = ltrobust.evaluate(model, (xm, y[:100]), class_counts=counts, attacks="clean,fgsm,pgd3", eps=0.05,
                                progress=False)
    for attack in ("clean", "fgsm", "pgd3", "worst_case"):
        assert not res.robust[attack][marked].any(), attack  # argmax of NaN would have named class 0
    assert res.result["nonfinite_logits"] == {"clean": 3}  # wrong on clean, so never attacked
    with torch.no_grad():
        direct = (mlp(xm).argmax(1) == y[:100]).numpy()
    direct[marked] = False
    np.testing.assert_array_equal(res.robust["clean"], direct)
    assert res.samples["preds"][0][marked].tolist() == [-1, -1, -1]
    dist = res.result["results"]["clean"]["predicted_distribution"]["overall"]
    assert sum(dist) == pytest.approx(100.0)  # over the 97 images that predicted a class
    msgs = [r.getMessage() for r in caplog.records]
    assert any("NaN or infinite logits for 3 (Clean) of 100 images; they count as misclassified" in m for m in msgs)
    assert "NaN / infinite logits counted as wrong: Clean 3" in repr(res)
    from ltrobust.evaluation.evaluator import markdown_table

    assert "**NaN or infinite logits** (counted as misclassified), images per attack: Clean 3." in \
        markdown_table(res.result)


# --------------------------------------------------------------------------- 4 and 17. API input
API_CASES = [  # (keyword arguments of evaluate, the same setting on the command line)
    ({"norm": "L2"}, "eval.norm=L2"),
    ({"norm": "l3"}, "eval.norm=l3"),
    ({"step_size": -0.01}, "eval.step_size=-0.01"),
    ({"n_samples": -5}, "eval.n_samples=-5"),
    ({"eps": 2.0}, "eval.eps=2"),
    ({"mode": "chained"}, "eval.mode=chained"),
    ({"batch_size": 0}, "eval.batch_size=0"),
    ({"chunk_size": 0}, "eval.chunk_size=0"),
    ({"tail_group": -1}, "eval.tail_group=-1"),
    ({"seed": "abc"}, "eval.seed=abc"),
    ({"tag": "../../x"}, "eval.tag=../../x"),
    ({"attacks": "clean,pgd2O"}, "eval.attacks=clean,pgd2O"),
]


@pytest.mark.parametrize("kwargs,cli_setting", API_CASES, ids=[c[1] for c in API_CASES])
def test_every_api_argument_is_checked_with_the_cli_message(digits, mlp, kwargs, cli_setting, tmp_path):
    x, y, _ = digits
    with pytest.raises(ConfigError) as api:
        ltrobust.evaluate(mlp, (x[:10], y[:10]), progress=False, out_dir=tmp_path / "ev", **kwargs)
    with pytest.raises(ConfigError) as cfg:
        from ltrobust.attacks.suite import check_attacks

        check_attacks(resolve_config([cli_setting]).eval)
    assert str(api.value) == str(cfg.value).replace("eval.", ""), (str(api.value), str(cfg.value))
    assert not (tmp_path / "ev").exists()  # refused before any work


def test_api_misuse_no_grad_float64_bf16_string_attacks(digits, mlp):
    x, y, counts = digits
    kw = dict(class_counts=counts, eps=0.1, progress=False)
    ref = ltrobust.evaluate(mlp, (x[:60], y[:60]), attacks=("clean", "pgd3"), **kw)
    with torch.no_grad():  # the attacks need gradients: evaluate switches them back on
        inside = ltrobust.evaluate(mlp, (x[:60], y[:60]), attacks=("clean", "pgd3"), **kw)
    with torch.inference_mode():
        inference = ltrobust.evaluate(mlp, (x[:60], y[:60]), attacks=("clean", "pgd3"), **kw)
    as_text = ltrobust.evaluate(mlp, (x[:60], y[:60]), attacks="pgd3", **kw)  # one name, not 4 characters
    for res in (inside, inference, as_text):
        assert res.accuracy == ref.accuracy and res.names == ["clean", "pgd3", "worst_case"]
    import copy

    for dtype, name in ((torch.float64, "float64"), (torch.bfloat16, "bfloat16")):
        with pytest.raises(DataError, match=f"Sequential has {name} parameters; ltrobust attacks float32 models.*"
                                            r"model\.float\(\)"):
            ltrobust.evaluate(copy.deepcopy(mlp).to(dtype), (x[:10], y[:10]), progress=False)
    with pytest.raises(ConfigError, match=r"attacks=\[\]: give attack names"):
        ltrobust.evaluate(mlp, (x[:10], y[:10]), attacks=[], progress=False)
    with pytest.raises(ConfigError, match="class_counts=.*whole numbers >= 0"):
        ltrobust.evaluate(mlp, (x[:10], y[:10]), class_counts=[1.5] * 10, progress=False)
    with pytest.raises(ConfigError, match="device='gpu7' is not a device"):
        ltrobust.evaluate(mlp, (x[:10], y[:10]), device="gpu7", progress=False)


# -------------------------------------------------------------------------------- 14. tag is a name
def test_eval_tag_is_a_name_not_a_path(user_nets):
    proc = subprocess.run([sys.executable, "-m", "ltrobust.cli", "eval", "weights=a/model.pt",
                           "model=user_nets_29:mlp", "dataset=digits-lt", "eval.tag=../../escaped"],
                          cwd=user_nets, env={**ENV, "PYTHONPATH": os.pathsep.join([str(user_nets), *sys.path])},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: eval.tag='../../escaped' is not a name: use letters, digits, '.', '_', '+' and '-' (no '/' or '..', "
        "at most 120 characters), e.g. eval.tag=pgd100.")
    assert not list(user_nets.parent.glob("escaped*")) and not (user_nets / "runs").exists()
    with pytest.raises(ConfigError, match="eval.tag='a/b' is not a name"):
        resolve_config(["eval.tag=a/b"])


# ---------------------------------------------------------------------------- 19. eps in weights=
def test_eps_in_eval_weights_is_the_evaluation_eps(user_nets):
    assert eval_weights("a", 16, "eps=4/255", "name=e4") == 0
    res = json.loads(Path("runs/eval/e4/eval.json").read_text())
    assert res["eps"] == pytest.approx(4 / 255)
    assert [a["eps"] for a in res["attacks"] if a["name"] == "fgsm"] == [pytest.approx(4 / 255)]


# ------------------------------------------------------------------------------ 6. unfinished runs
def test_an_unfinished_run_is_marked_in_eval_and_report(tmp_path, die_after_checkpoint, capsys):
    from ltrobust.report import build_report
    from ltrobust.training.trainer import Trainer

    was = torch.are_deterministic_algorithms_enabled()
    try:
        with die_after_checkpoint(0):  # killed after epoch 0 of 3
            Trainer(resolve_config(TINY + ["epochs=3", f"out={tmp_path}", "name=killed"])).fit()
        Trainer(resolve_config(TINY + ["epochs=1", f"out={tmp_path}", "name=done"])).fit()
    finally:
        torch.use_deterministic_algorithms(was)
    over = ["attacks=clean,fgsm", "eval.n_samples=20", "train.device=cpu"]
    assert cli.main(["eval", str(tmp_path / "killed"), *over]) == 0
    out = capsys.readouterr().out
    assert "evaluated: killed (best.pt, epoch 1 of 3) UNFINISHED: trained 1 of 3 epochs" in out
    assert "**UNFINISHED RUN**: training stopped after 1 of 3 epochs" in out
    killed = json.loads((tmp_path / "killed" / "eval" / "best.json").read_text())
    assert killed["training"] == {"finished": False, "epochs_done": 1, "epochs": 3}
    assert cli.main(["eval", str(tmp_path / "done"), *over]) == 0
    out = capsys.readouterr().out
    assert "evaluated: done (best.pt, epoch 1 of 1)\n" in out and "UNFINISHED" not in out
    report = build_report([str(tmp_path / "killed"), str(tmp_path / "done")], out=str(tmp_path / "report"))
    rows = report["markdown_table"].splitlines()[2:]
    assert len(rows) == 2 and sum("⚠ unfinished (1 of 3 epochs)" in r for r in rows) == 1
    csv_rows = Path(report["csv"]).read_text().splitlines()
    header = csv_rows[0].split(",")
    flags = {r.split(",")[header.index("run")]: r.split(",")[header.index("unfinished")] for r in csv_rows[1:]}
    assert flags == {str(tmp_path / "killed"): "true", str(tmp_path / "done"): "false"}
