"""Reports from stored results alone: rebuilt after the checkpoints are deleted (and with checkpoint
loading made impossible), the HTML references PNGs that exist, every table number equals the eval
JSON (mean ± std over seeds computed here by hand), audits and analyses are embedded when present and
tolerated when absent or odd, and the page renders in headless Chromium when it is installed."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ltrobust import io
from ltrobust.config import resolve_config
from ltrobust.evaluation.runs import evaluate_run
from ltrobust.training.trainer import Trainer
from ltrobust.errors import ConfigError
from ltrobust.report import build_report
from ltrobust.report.plots import audit_curves, audit_flags

TINY = ["dataset=digits-lt", "imbalance=10", "model=mlp", "method=pgd_at", "epochs=2", "train.max_steps_per_epoch=2",
        "train.batch_size=64", "train.precision=fp32", "attack.steps=2", "train.val_samples=50",
        "train.val_attack_steps=2", "train.progress=false"]
EVAL = ["eval.attacks=clean,fgsm,pgd5", "eval.n_samples=50"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# an audit in the layout `ltrobust audit` writes (evaluation/audit.py): the re-scaling sweep, checks, flags
AUDIT = {
    "n": 50, "flags": ["logit_rescaling"],
    "rescaling": [{"kappa": float(k), "factor": 10.0 ** -k, "clean": 40.0, "pgd": 20.0 + 5 * abs(k), "aa": 18.0,
                   "pgd_balanced": 20.0, "aa_balanced": 18.0, "zero_grad": 0.0} for k in (-2, -1, 0, 1, 2)],
    "robust": {"clean": 40.0, "pgd": 20.0, "aa": 18.0, "adaptive": 19.0, "whitebox": 18.0, "worst_case": 18.0},
    "zero_grad": {"percent": 0.0, "count": 0},
    "attacks": {"pgd": {"title": "PGD-20"}, "sweep": {"title": "APGD-CE + APGD-T"}},
    "checks": {"logit_rescaling": {"value": 10.0, "threshold": 2.0, "flagged": True,
                                   "message": "PGD-20 robust accuracy depends on the logit scale"},
               "zero_gradients": {"value": 0.0, "threshold": 1.0, "flagged": False,
                                  "message": "0.00% of the images have an exactly zero input gradient."}},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny evaluated runs: PGD-AT + CE with seeds 0 and 1, PGD-AT + BSL with seed 0; the BSL run
    carries an audit and an analysis figure of the shapes the audit / analysis commands write."""
    root = tmp_path_factory.mktemp("runs")
    dirs = {}
    for loss, seed in (("ce", 0), ("ce", 1), ("bsl", 0)):
        summary = Trainer(resolve_config(TINY + [f"loss={loss}", f"seed={seed}", f"out={root}"])).fit()
        evaluate_run(summary["run_dir"], EVAL, device="cpu", progress=False)
        dirs[(loss, seed)] = Path(summary["run_dir"])
    bsl = dirs[("bsl", 0)]
    io.write_json(bsl / "eval" / "audit.json", AUDIT)
    _tiny_png(bsl / "analysis" / "feature-norm.png")
    return root, dirs


def _tiny_png(path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5))
    FigureCanvasAgg(fig)
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=50)


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    """The report, built after every checkpoint was deleted and with checkpoint loading disabled."""
    root, dirs = runs
    for d in dirs.values():
        shutil.rmtree(d / "checkpoints")
    out = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()

    def no_loading(*a, **k):
        raise AssertionError("the report loaded a checkpoint or model")

    import torch

    mp.setattr(io, "load_checkpoint", no_loading)
    mp.setattr(torch, "load", no_loading)
    try:
        result = build_report([root], out=out)
    finally:
        mp.undo()
    return out, result, dirs


def _results(path: Path) -> dict:
    return json.loads((path / "eval" / "best.json").read_text())


def _mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[:1] + lines[2:]]


def test_report_is_rebuilt_from_stored_results_alone(report):
    out, result, dirs = report
    assert not any((d / "checkpoints").exists() for d in dirs.values())
    assert result["n_runs"] == 3 and result["n_groups"] == 2 and result["robust"] == "worst_case"
    for name in ("index.html", "report.md", "report.json"):
        assert (out / name).is_file()


def test_html_references_existing_pngs_and_embeds_audit_and_analysis(report):
    out, result, _ = report
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all(not s.startswith(("/", "http")) for s in srcs)  # relative: the folder is portable
    for src in srcs:
        assert (out / src).read_bytes()[:8] == PNG_MAGIC, src
    names = {Path(s).name for s in srcs}
    ids = {g["label"]: g["id"] for g in json.loads((out / "report.json").read_text())["groups"]}
    ce, bsl = ids["pgd_at + ce"], ids["pgd_at + bsl"]
    assert {"tradeoff.png", f"{ce}_per_class.png", f"{bsl}_per_class.png", f"{ce}_ae_distribution.png",
            f"{bsl}_ae_distribution.png", f"{ce}_curves.png", f"{bsl}_curves.png", f"{bsl}_audit.png",
            "feature-norm.png"} <= names
    assert f"{ce}_audit.png" not in names  # no audit.json in the CE runs: nothing shown, nothing broken
    assert "Audit flags: logit_rescaling." in page and "depends on the logit scale" in page
    assert "zero_gradients" in page and "robust.adaptive" in page
    md = (out / "report.md").read_text()
    assert all(f"]({s})" in md for s in srcs)  # the Markdown shows the same figures
    assert sorted(result["figures"]) == sorted(str(out / s) for s in set(srcs))


def test_markdown_table_numbers_equal_the_json(report):
    out, result, dirs = report
    rows = _rows(result["markdown_table"])
    header, body = rows[0], {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert header[:2] == ["Method", "Seeds"]
    assert header[2:6] == ["Clean", "FGSM", "PGD-5", "Worst case"]
    ce = [_results(dirs[("ce", 0)]), _results(dirs[("ce", 1)])]
    bsl = _results(dirs[("bsl", 0)])
    titles = {"Clean": "clean", "FGSM": "fgsm", "PGD-5": "pgd5", "Worst case": "worst_case"}
    for title, attack in titles.items():
        m, s = _mean_std([r["results"][attack]["accuracy"] for r in ce])
        assert body["pgd_at + ce"][title] == f"{m:.2f} ± {s:.2f}"
        assert body["pgd_at + bsl"][title] == f"{bsl['results'][attack]['accuracy']:.2f}"
    assert body["pgd_at + ce"]["Seeds"] == "2" and body["pgd_at + bsl"]["Seeds"] == "1"
    gap = [c for c in header if c.startswith("Gap")][0]
    assert body["pgd_at + bsl"][gap] == f"{bsl['results']['worst_case']['boundary_error']:.2f}"

    # head / body / tail table and per-class table of the single-run variant, straight from its JSON
    md = (out / "report.md").read_text()
    group_table = md.split("## Head / body / tail and tail group", 1)[1].split("##", 1)[0]
    grows = _rows(group_table)
    g = {(r[0], r[1]): dict(zip(grows[0], r)) for r in grows[1:]}
    for attack, title in (("clean", "Clean"), ("worst_case", "Worst case")):
        res = bsl["results"][attack]
        row = g[("pgd_at + bsl", title)]
        for key, col in (("accuracy", "Overall"), ("balanced_accuracy", "Balanced"), ("head", "Head"),
                         ("body", "Body"), ("tail", "Tail"), ("tail_group", "Tail group")):
            assert row[col] == f"{res[key]:.2f}", (attack, col)
        assert row["Worst class"] == f"class {res['worst_class']['class']}: {res['worst_class']['recall']:.2f}"
        m, s = _mean_std([r["results"][attack]["tail"] for r in ce])
        assert g[("pgd_at + ce", title)]["Tail"] == f"{m:.2f} ± {s:.2f}"
    per_class = md.split("per-class recall (%) of pgd_at + bsl", 1)[1]
    prow = {r[0]: r for r in _rows(per_class.split("\n\n", 2)[1])}
    for c, count in enumerate(bsl["class_counts"]):
        assert prow[str(c)][1] == str(count)
        assert prow[str(c)][2] == f"{bsl['results']['clean']['per_class'][c]:.2f}"

    summary = json.loads((out / "report.json").read_text())
    agg = {g["label"]: g for g in summary["groups"]}["pgd_at + ce"]["results"]
    m, s = _mean_std([r["results"]["pgd5"]["balanced_accuracy"] for r in ce])
    assert agg["pgd5"]["balanced_accuracy"] == {"mean": pytest.approx(m, abs=1e-12),
                                                 "std": pytest.approx(s, abs=1e-12), "n": 2}


def test_report_options_tags_and_errors(runs, tmp_path):
    root, dirs = runs
    ce0 = dirs[("ce", 0)]
    res = build_report([ce0 / "eval" / "best.json"], out=tmp_path / "one", metric="balanced_accuracy", robust="pgd5",
                       tags="best", title="one run")
    assert res["n_runs"] == 1 and res["robust"] == "pgd5" and "PGD-5" in res["markdown_table"]
    assert "<title>one run</title>" in (tmp_path / "one" / "index.html").read_text()
    with pytest.raises(ConfigError, match="metric"):
        build_report([root], out=tmp_path / "x", metric="top5")
    with pytest.raises(ConfigError, match="valid"):
        build_report([root], out=tmp_path / "x", colour="red")
    with pytest.raises(ConfigError, match="aa"):
        build_report([root], out=tmp_path / "x", robust="aa")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no run folders"):
        build_report([empty])
    from ltrobust.cli import main

    assert main(["report", str(empty)]) == 2
    assert main(["report", str(ce0), f"out={tmp_path / 'cli'}"]) == 0
    assert (tmp_path / "cli" / "index.html").is_file()


def test_rows_are_labelled_by_the_loss_actually_used(tmp_path):
    """An at_bsl run configured with loss=ce trained BSL: its row says so (the eval JSON's loss_label);
    results written before loss_label existed keep the configured loss."""
    from ltrobust.report.collect import Entry, Group, _label

    def group(gid, result, method):
        flat = {"method.name": method, "method.loss": "ce"}
        return Group(gid=gid, key=(("method.name", method),), entries=[Entry(tmp_path / gid, "", result, flat)])

    groups = [group("g1", {"loss_label": "bsl"}, "at_bsl"), group("g2", {}, "pgd_at"),
              group("g3", {"loss_label": "margin-bias ce + kl"}, "robal")]
    _label(groups)
    assert [g.label for g in groups] == ["at_bsl + bsl", "pgd_at + ce", "robal + margin-bias ce + kl"]


def test_audit_shapes_are_read_tolerantly():
    from ltrobust.report.plots import audit_series_title

    kappas, series = audit_curves(AUDIT)  # the layout ltrobust audit writes
    assert kappas == [-2.0, -1.0, 0.0, 1.0, 2.0] and sorted(series) == ["aa", "clean", "pgd"]
    assert series["pgd"] == [30.0, 25.0, 20.0, 25.0, 30.0]
    assert audit_series_title(AUDIT, "aa") == "APGD-CE + APGD-T" and audit_series_title(AUDIT, "pgd") == "PGD-20"
    assert [(n, s) for n, s, _ in audit_flags(AUDIT)] == [("logit_rescaling", "flagged"), ("zero_gradients", "ok")]
    rows = {"logit_rescaling": [{"kappa": -1, "pgd20": {"accuracy": 30.0}, "aa": 20.0},
                                {"kappa": 1, "pgd20": {"accuracy": 35.0}, "aa": 20.5}]}
    cols = {"rescaling": {"kappa": [-1, 1], "accuracy": {"pgd20": [30.0, 35.0], "aa": [20.0, 20.5]}}}
    keyed = {"rescaling": {"-1": {"pgd20": 30.0, "aa": 20.0}, "1": {"pgd20": 35.0, "aa": 20.5}}}
    for audit in (rows, cols, keyed):
        kappas, series = audit_curves(audit)
        assert kappas == [-1.0, 1.0] and series["pgd20"] == [30.0, 35.0] and series["aa"] == [20.0, 20.5]
    assert audit_curves({"flags": []}) is None and audit_curves(None) is None
    assert audit_flags({"flags": ["pgd_aa_gap"]}) == [("pgd_aa_gap", "flagged", "")]
    assert audit_flags({"flags": {"zero_gradients": False}}) == [("zero_gradients", "ok", "")]
    assert audit_flags({"flags": [{"name": "square", "flagged": True, "detail": "d"}]}) == [("square", "flagged", "d")]
    assert audit_flags({"flags": "odd"}) == [] and audit_flags({}) == []


def test_odd_or_missing_audit_does_not_stop_the_report(runs, tmp_path):
    root, dirs = runs
    run = tmp_path / "run"
    shutil.copytree(dirs[("ce", 0)], run)
    io.write_json(run / "eval" / "audit.json", {"flags": "odd", "rescaling": "not a table"})
    res = build_report([run], out=tmp_path / "rep")
    page = Path(res["index"]).read_text()
    assert "Gradient-masking audit" in page and "audit.png" not in page
    (run / "eval" / "audit.json").write_text("{ torn")
    assert build_report([run], out=tmp_path / "rep2")["n_runs"] == 1


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    out, _, _ = report
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--screenshot={shot}",
                    "--window-size=1280,2000", (out / "index.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=90)
    import numpy as np

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    pixels = np.asarray(img.resize((128, 200))).reshape(-1, 3)
    non_white = float((pixels.min(axis=1) < 230).mean())
    assert non_white > 0.05 and len(np.unique(pixels, axis=0)) > 100  # text, tables and figures were drawn
