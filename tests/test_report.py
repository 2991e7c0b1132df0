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
import yaml

from ltrobust import io
from ltrobust.config import load_preset, resolve_config
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


#: the paper numbers of the two AT-BSL presets (002 Table 1 at 100 epochs, REAT Table 1 at 80)
AT_BSL_REFERENCE = (load_preset("at-bsl-cifar10lt-resnet18")["reference"]
                    + load_preset("at-bsl-cifar10lt-resnet18-reat-table1")["reference"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny evaluated runs: PGD-AT + CE with seeds 0 and 1, PGD-AT + BSL with seed 0; the BSL run
    carries an audit and an analysis figure of the shapes the audit / analysis commands write, and is made
    with a preset that holds the AT-BSL preset's paper reference numbers."""
    root = tmp_path_factory.mktemp("runs")
    preset = root / "with-reference.yaml"
    preset.write_text(yaml.safe_dump({"reference": AT_BSL_REFERENCE}))
    dirs = {}
    for loss, seed in (("ce", 0), ("ce", 1), ("bsl", 0)):
        extra = [f"preset={preset}"] if loss == "bsl" else []
        summary = Trainer(resolve_config(TINY + extra + [f"loss={loss}", f"seed={seed}", f"out={root}"])).fit()
        evaluate_run(summary["run_dir"], EVAL, device="cpu", progress=False)
        dirs[(loss, seed)] = Path(summary["run_dir"])
        _with_cost_and_per_class_clean(Path(summary["run_dir"]), seed)
    bsl = dirs[("bsl", 0)]
    io.write_json(bsl / "eval" / "audit.json", AUDIT)
    _tiny_png(bsl / "analysis" / "feature-norm.png")
    return root, dirs


def _with_cost_and_per_class_clean(run: Path, seed: int) -> None:
    """metrics.jsonl rows carry ``seconds``, ``peak_rss_mb``, ``peak_cuda_mb`` and ``val.per_class_clean`` /
    ``val.per_class_rob`` (the trainer's cost and per-class logging); where a field is not logged by this
    trainer, known values are filled in under the same names, so the report's reading of them is checked."""
    rows = io.read_jsonl(run / "metrics.jsonl")
    for i, r in enumerate(rows):
        r.setdefault("peak_rss_mb", 1000.0 + 10 * i + seed)
        r.setdefault("peak_cuda_mb", 0.0)
        val = r.setdefault("val", {})
        val.setdefault("per_class_rob", [float(10 * c % 100) for c in range(10)])
        val.setdefault("per_class_clean", [float((10 * c + 20 * i) % 100) for c in range(10)])
    io.write_jsonl(run / "metrics.jsonl", rows)


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
                       tags="best", title="one run", formats="png")
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
    assert main(["report", str(ce0), f"out={tmp_path / 'cli'}", "formats=png"]) == 0
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
    from ltrobust.report.tables import _id_columns

    _, rows = _id_columns(groups)  # the Method column of every table (HTML, Markdown, LaTeX) says the same
    assert [r[0] for r in rows] == ["at_bsl + bsl", "pgd_at + ce", "robal + margin-bias ce + kl"]
    from ltrobust.report.export import entry_rows

    header, csv_rows = entry_rows(groups)  # report.csv: one truth with the tables
    assert [r["loss"] for r in csv_rows] == ["bsl", "ce", "margin-bias ce + kl"]


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
    res = build_report([run], out=tmp_path / "rep", formats="png")
    page = Path(res["index"]).read_text()
    assert "Gradient-masking audit" in page and "audit.png" not in page
    (run / "eval" / "audit.json").write_text("{ torn")
    assert build_report([run], out=tmp_path / "rep2", formats="png")["n_runs"] == 1


def _latex_rows(tex: str, label: str) -> list[list[str]]:
    """Header and body cells of the LaTeX table ``label``, bold and ``$\\pm$`` turned back into text."""
    body = tex.split(f"\\label{{{label}}}", 1)[1].split("\\bottomrule", 1)[0]
    lines = [ln for ln in body.splitlines() if ln.endswith("\\\\")]
    clean = [re.sub(r"\\textbf\{(.*?)\}( &|$| \\\\)", r"\1\2", ln).replace("$\\pm$", "±").replace("\\_", "_")
             for ln in lines]
    return [[c.strip() for c in ln[:-2].split("&")] for ln in clean]


def test_csv_and_latex_numbers_equal_the_json(report):
    """report.csv holds every number of every evaluation exactly as stored; report.tex's main table the same
    mean ± std as computed here by hand, the best of each column in bold."""
    import csv

    out, result, dirs = report
    rows = list(csv.DictReader((out / "report.csv").open()))
    by_run = {(r["run"], r["tag"]): r for r in rows}
    assert len(rows) == 3
    for d in dirs.values():
        stored = _results(d)
        row = by_run[(str(d), "best")]
        assert row["n"] == str(stored["n"]) and row["checkpoint_epoch"] == str(stored["checkpoint_epoch"])
        checked = 0
        for attack, res in stored["results"].items():
            for key, value in res.items():
                if isinstance(value, float):
                    assert float(row[f"{attack}.{key}"]) == value, (attack, key)  # exact, full precision
                    checked += 1
            for c, v in enumerate(res["per_class"]):
                assert float(row[f"{attack}.per_class.{c}"]) == v
            assert row[f"{attack}.worst_class.class"] == str(res["worst_class"]["class"])
        assert checked >= 4 * 8
        assert not any(k.endswith((".groups.head.0", "by_true_class.0.0")) for k in row)

    tex = (out / "report.tex").read_text()
    assert "\\usepackage{booktabs}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    for label in ("tab:main", "tab:groups", "tab:fairness", "tab:cost", "tab:reference", "tab:per-class-g01"):
        assert f"\\label{{{label}}}" in tex
    assert result["latex_table"] in tex
    lrows = _latex_rows(tex, "tab:main")
    body = {r[0]: dict(zip(lrows[0], r)) for r in lrows[1:]}
    ce = [_results(dirs[("ce", 0)]), _results(dirs[("ce", 1)])]
    bsl = _results(dirs[("bsl", 0)])
    for title, attack in (("Clean", "clean"), ("FGSM", "fgsm"), ("PGD-5", "pgd5"), ("Worst case", "worst_case")):
        m, s = _mean_std([r["results"][attack]["accuracy"] for r in ce])
        assert body["pgd_at + ce"][title] == f"{m:.2f} ± {s:.2f}"
        b = bsl["results"][attack]["accuracy"]
        assert body["pgd_at + bsl"][title] == f"{b:.2f}"
        best = f"\\textbf{{{b:.2f}}}" if round(b, 2) >= round(m, 2) else f"\\textbf{{{m:.2f} $\\pm$ {s:.2f}}}"
        assert best in result["latex_table"]


def test_standard_error_option_and_latex_escaping(runs):
    """error=se writes mean ± std / sqrt(n); LaTeX special characters are escaped."""
    from ltrobust.report.collect import collect, group_entries
    from ltrobust.report.tables import Table, fmt_stat, latex_escape, paper_table

    assert fmt_stat({"mean": 50.0, "std": 2.0, "n": 4}, error="se") == "50.00 ± 1.00"
    assert fmt_stat({"mean": 50.0, "std": 2.0, "n": 4}) == "50.00 ± 2.00"
    root, dirs = runs
    groups = group_entries(collect([root])[0])
    ce = [_results(dirs[("ce", 0)]), _results(dirs[("ce", 1)])]
    m, s = _mean_std([r["results"]["clean"]["accuracy"] for r in ce])
    row = {r[0]: r for r in _rows(paper_table(groups, error="se").markdown())}["pgd_at + ce"]
    assert f"{m:.2f} ± {s / math.sqrt(2):.2f}" in row
    assert latex_escape("a_b & 50% ± #1 {x}") == "a\\_b \\& 50\\% $\\pm$ \\#1 \\{x\\}"
    t = Table(["A", "B"], [["x", "1.00"], ["y", "2.00"]], [False, True], bold={(1, 1)})
    assert "y & \\textbf{2.00} \\\\" in t.latex() and "<strong>2.00</strong>" in t.html()
    with pytest.raises(ConfigError, match="error='sem'"):
        build_report([root], error="sem")
    with pytest.raises(ConfigError, match="formats"):
        build_report([root], formats="jpg")


PDFLATEX = shutil.which("pdflatex")


@pytest.mark.skipif(PDFLATEX is None, reason="no TeX engine installed (apt-get install texlive-latex-recommended "
                                             "for pdflatex with booktabs)")
def test_latex_document_compiles(report, tmp_path):
    out, _, _ = report
    shutil.copy(out / "report.tex", tmp_path / "report.tex")
    proc = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "report.pdf").read_bytes()[:5] == b"%PDF-"


def _long_table():
    """A per-class table of CIFAR-100's size (100 rows): one row per class, a best cell in bold."""
    from ltrobust.report.tables import LONG_TABLE_ROWS, Table

    rows = [[f"class_{i}", str(500 - 4 * i), f"{90 - 0.5 * i:.2f}", f"{40 - 0.3 * i:.2f}"] for i in range(100)]
    assert len(rows) > LONG_TABLE_ROWS
    return Table(["class", "train images", "clean", "PGD-20"], rows, [False, True, True, True],
                 caption="Per-class recall", bold={(0, 2)})


def test_a_table_longer_than_a_page_is_a_longtable_with_every_row_and_a_repeated_header():
    from ltrobust.report.export import latex_document
    from ltrobust.report.tables import Table

    tex = _long_table().latex("tab:per-class-x")
    assert tex.startswith("\\begingroup") and "\\begin{longtable}{lrrr}" in tex and "\\begin{table}" not in tex
    assert "\\caption{Per-class recall}\\label{tab:per-class-x}" in tex
    first, rest = tex.split("\\endfirsthead", 1)
    header = "class & train images & clean & PGD-20 \\\\"
    assert header in first and header in rest.split("\\endhead", 1)[0]        # repeated on every page
    assert "class\\_0 & 500 & \\textbf{90.00} & 40.00 \\\\" in tex
    assert all(f"class\\_{i} & " in tex for i in range(100))
    short = Table(["A"], [["x"]] * 40, [False]).latex()
    assert short.startswith("\\begin{table}") and "longtable" not in short
    assert "\\usepackage{longtable}" in latex_document("t", [("x", _long_table())])


@pytest.mark.skipif(PDFLATEX is None, reason="no TeX engine installed (apt-get install texlive-latex-recommended "
                                             "for pdflatex with booktabs)")
def test_a_100_class_table_compiles_over_several_pages_without_an_oversized_float(tmp_path):
    from ltrobust.report.export import latex_document

    (tmp_path / "t.tex").write_text(latex_document("long", [("per-class-x", _long_table())]))
    proc = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    log = (tmp_path / "t.log").read_text(errors="replace")
    assert "Float too large" not in log and "Overfull \\vbox" not in log
    pages = re.search(r"Output written on t.pdf \((\d+) pages?", log)
    assert pages and int(pages.group(1)) >= 2, log[-1500:]


def test_figures_are_also_pdf_and_svg_at_the_dpi_setting(report, tmp_path):
    from matplotlib.figure import Figure
    from PIL import Image

    from ltrobust.report.plots import save_figure

    out, result, _ = report
    drawn = [Path(f) for f in result["figures"] if "/analysis/" not in f]
    assert drawn
    for png in drawn:
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-", png
        assert b"<svg" in png.with_suffix(".svg").read_bytes()[:2000], png
    fig = Figure(figsize=(2.0, 1.0))
    fig.add_subplot(1, 1, 1).plot([0, 1])
    for dpi in (50, 200):
        paths = save_figure(fig, tmp_path / f"f{dpi}.png", dpi=dpi)
        assert [p.suffix for p in paths] == [".png", ".pdf", ".svg"]
        assert Image.open(paths[0]).size == (2 * dpi, dpi)


def test_new_figures_and_tables_are_drawn_from_stored_results(report):
    """Tail trade-off (Cho et al., ICLR 2025, Fig. 1b), class groups (Cho et al., ICLR 2025, Fig. 8), per-class
    comparison, per-class curves over epochs (TAET Fig. 2); the cost and robust-fairness tables equal metrics.jsonl
    and the eval JSON."""
    import statistics

    from ltrobust.report.plots import class_group_bounds

    out, result, dirs = report
    names = {Path(f).name for f in result["figures"]}
    ids = {g["label"]: g["id"] for g in json.loads((out / "report.json").read_text())["groups"]}
    ce, bsl = ids["pgd_at + ce"], ids["pgd_at + bsl"]
    assert {"tail_tradeoff.png", "class_groups.png", "per_class_comparison.png", f"{ce}_class_curves.png",
            f"{bsl}_class_curves.png"} <= names
    assert class_group_bounds(10) == [(0, 3), (3, 7), (7, 10)]
    assert class_group_bounds(100) == [(10 * i, 10 * i + 10) for i in range(10)]

    md = (out / "report.md").read_text()
    cost = {r[0]: dict(zip(_rows(md.split("## Training cost", 1)[1].split("##", 1)[0])[0], r))
            for r in _rows(md.split("## Training cost", 1)[1].split("##", 1)[0])[1:]}
    rows = io.read_jsonl(dirs[("bsl", 0)] / "metrics.jsonl")
    assert cost["pgd_at + bsl"]["s / epoch"] == f"{sum(r['seconds'] for r in rows) / len(rows):.1f}"
    assert cost["pgd_at + bsl"]["Peak RSS (MB)"] == f"{max(r['peak_rss_mb'] for r in rows):.1f}"
    per_run = [max(r["peak_rss_mb"] for r in io.read_jsonl(dirs[("ce", s)] / "metrics.jsonl")) for s in (0, 1)]
    m, s = _mean_std(per_run)
    assert cost["pgd_at + ce"]["Peak RSS (MB)"] == f"{m:.1f} ± {s:.1f}"

    fair = _rows(md.split("## Robust fairness", 1)[1].split("##", 1)[0])
    fair = {(r[0], r[1]): dict(zip(fair[0], r)) for r in fair[1:]}
    res = _results(dirs[("bsl", 0)])["results"]["worst_case"]
    per = [v for v in res["per_class"] if v is not None]
    row = fair[("pgd_at + bsl", "Worst case")]
    assert row["Std over classes"] == f"{statistics.pstdev(per):.2f}"
    assert row["Max - min"] == f"{max(per) - min(per):.2f}" and row["Worst class"] == f"{min(per):.2f}"
    spreads = [max(p) - min(p) for p in ([v for v in _results(dirs[("ce", s)])["results"]["worst_case"]["per_class"]
                                          if v is not None] for s in (0, 1))]
    m, s = _mean_std(spreads)
    assert fair[("pgd_at + ce", "Worst case")]["Max - min"] == f"{m:.2f} ± {s:.2f}"


def test_class_figures_plot_the_stored_means(runs):
    """The bars of the class-group figure and the lines of the per-class curves are the stored numbers."""
    import numpy as np

    from ltrobust.evaluation.metrics import class_order
    from ltrobust.report.collect import RunFiles, collect, group_entries
    from ltrobust.report.plots import class_curves_figure, class_groups_figure, tradeoff_figure

    root, dirs = runs
    groups = group_entries(collect([root])[0])
    bsl = next(g for g in groups if g.label == "pgd_at + bsl")
    fig = class_groups_figure(groups, "worst_case")
    clean_ax = fig.axes[0]
    per = _results(dirs[("bsl", 0)])["results"]["clean"]["per_class"]
    order = class_order(bsl.class_counts)
    want = [np.mean([per[c] for c in order[a:b]]) for a, b in ((0, 3), (3, 7), (7, 10))]
    i = groups.index(bsl)
    heights = [p.get_height() for p in clean_ax.patches][3 * i: 3 * i + 3]
    assert heights == pytest.approx(want)

    run = RunFiles(dirs[("bsl", 0)])
    fig = class_curves_figure(bsl, [run])
    rows = run.metrics
    lines = fig.axes[0].get_lines()
    assert len(lines) == 10 and len(fig.axes) >= 2
    c0 = order[0]
    assert list(lines[0].get_ydata()) == [r["val"]["per_class_clean"][c0] for r in rows]

    # the trade-off plot names every variant once, by its table label, in a legend beside the axes
    fig = tradeoff_figure(groups, "worst_case")
    ax = fig.axes[0]
    legend = fig.legends[0]  # the figure's legend, outside the axes (labels wrapped when long)
    assert not ax.texts and sorted(t.get_text().replace("\n", " ") for t in legend.get_texts()) == sorted(
        g.label for g in groups)


def test_reference_numbers_of_a_preset_appear_beside_the_run(report):
    out, _, dirs = report
    md = (out / "report.md").read_text()
    table = _rows(md.split("## Paper reference numbers", 1)[1].split("##", 1)[0])
    rows = [dict(zip(table[0], r)) for r in table[1:]]
    assert {r["Variant"] for r in rows} == {"pgd_at + bsl"}  # the CE runs carry no reference
    ref = AT_BSL_REFERENCE
    assert len(rows) == sum(len(r["values"]) for r in ref)
    res = _results(dirs[("bsl", 0)])["results"]
    clean = next(r for r in rows if r["Paper"] == "REAT Table 1" and r["Metric"] == "Clean")
    assert clean["Paper value"] == "66.99" and clean["Ours"] == f"{res['clean']['accuracy']:.2f}"
    assert clean["Ours - paper"] == f"{res['clean']['accuracy'] - 66.99:+.2f}"
    assert clean["Settings that differ"] == ("epochs 2 (paper 80); data sklearn-digits (paper cifar-pickle); "
                                             "checkpoint best-val (paper best-test)")
    tail = next(r for r in rows if r["Paper"] == "self-distill Table 1" and r["Metric"] == "Clean tail group")
    assert tail["Ours"] == f"{res['clean']['tail_group']:.2f}" and tail["Paper value"] == "63.20"
    aa = next(r for r in rows if r["Metric"] == "AA")
    assert aa["Ours"] == "-" and aa["Ours - paper"] == "not evaluated"


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

    # no table is wider than the page at 1280 px: a script in a copy of the page measures every table
    probe = out / "overflow-probe.html"
    script = ("<script>window.addEventListener('load', () => { const body = document.body.clientWidth; "
              "const wide = [...document.querySelectorAll('table')].filter(t => t.getBoundingClientRect().right > "
              "body + 1 || t.scrollWidth > t.parentElement.clientWidth + 1).map(t => "
              "(t.caption ? t.caption.textContent : t.rows[0].textContent).slice(0, 60)); "
              "document.title = 'OVERFLOW:' + JSON.stringify({tables: document.querySelectorAll('table').length, "
              "wide}); });</script>")
    probe.write_text((out / "index.html").read_text().replace("</body>", script + "</body>"))
    try:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              "--no-first-run", "--window-size=1280,2000", "--virtual-time-budget=5000", "--dump-dom",
                              probe.resolve().as_uri()],
                             check=True, capture_output=True, text=True, timeout=90).stdout
    finally:
        probe.unlink()
    found = json.loads(re.search(r"<title>OVERFLOW:(.*?)</title>", dom).group(1).replace("&quot;", '"'))
    assert found["tables"] >= 6 and found["wide"] == [], found


# ------------------------------------------------------------------------------------ report polish (issue 30)
LONG = ("robal + margin-bias ce + kl [tau_b=1.2, tau_m=0.3, alpha=6, tau_p=0.1, m0=0.1, attack_steps=5, "
        "cosine_scale=10, cosine_gamma=0.03125]")


def _groups(runs, labels):
    from ltrobust.report.collect import collect, group_entries

    root, _ = runs
    groups = group_entries(collect([root])[0])
    for g, label in zip(groups, labels):
        g.label = label
    return groups


def test_latex_text_is_escaped_everywhere_and_the_report_compiles(report, tmp_path):
    """``> 100, 20-100, < 20`` printed raw renders as inverted marks in LaTeX's default font encoding: every
    text of report.tex is escaped, and the document (with every special character) compiles."""
    from ltrobust.report.export import latex_document
    from ltrobust.report.tables import Table, latex_escape

    assert latex_escape("> 100, 20-100, < 20 | \"q\"") == \
        "\\textgreater{} 100, 20-100, \\textless{} 20 \\textbar{} \\textquotedbl{}q\\textquotedbl{}"
    assert latex_escape("⚠ collapsed · 5 → 3, café 中") == "(!) collapsed $\\cdot$ 5 $\\rightarrow$ 3, café ?"
    out, _, _ = report
    body = [ln for ln in (out / "report.tex").read_text().splitlines() if not ln.lstrip().startswith("%")]
    text = [ln for ln in body if " & " in ln or "\\caption{" in ln or "\\title{" in ln]  # cells, captions, title
    assert text and not [ln for ln in text if "<" in ln or ">" in ln or "|" in ln], "raw < > | in report.tex"
    assert any("\\textgreater{} 100" in ln for ln in body)  # the many / medium / few caption
    weird = Table(["Variant & more", "n_c < 20"], [[LONG + " ⚠ collapsed", "50%"], ["a_b#c$d~e^f{g}h\\i", "1.00"]],
                  [False, True], caption="many > 100, few < 20; x | y; \"quoted\" ± 1 · café")
    doc = latex_document("title with _ & %", [("weird", weird)])
    if PDFLATEX is None:
        pytest.skip("no TeX engine installed: escaping checked, compiling skipped")
    (tmp_path / "w.tex").write_text(doc)
    proc = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "w.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_figures_with_long_labels_fit_with_no_matplotlib_warning(runs, tmp_path):
    """RoBal-length labels: the axes keep most of the width, the legend lies inside the figure, and drawing and
    saving raise no warning (warnings are errors here)."""
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ltrobust.report import plots

    groups = _groups(runs, [LONG, LONG.replace("robal", "robal-r"), "pgd_at + ce"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs = {"tradeoff": plots.tradeoff_figure(groups, "pgd5"),
                "tail": plots.tradeoff_figure(groups, "pgd5", "tail_group"),
                "class_groups": plots.class_groups_figure(groups, "pgd5"),
                "comparison": plots.per_class_comparison_figure(groups, "pgd5")}
        for name, fig in figs.items():
            assert fig is not None, name
            plots.save_figure(fig, tmp_path / f"{name}.png")
            FigureCanvasAgg(fig).draw()
            renderer = fig.canvas.get_renderer()
            box = fig.bbox
            for legend in fig.legends:
                lb = legend.get_window_extent(renderer)
                assert lb.x0 >= box.x0 - 1 and lb.x1 <= box.x1 + 1 and lb.y0 >= box.y0 - 1, name  # not clipped
            axes_width = sum(ax.get_position().width for ax in fig.axes if ax.get_label() != "<colorbar>")
            assert axes_width >= 0.3, (name, axes_width)  # not squeezed to a sliver


def test_accuracy_axes_run_from_0_to_100_even_when_every_value_is_0(runs):
    from ltrobust.report import plots

    groups = _groups(runs, ["a", "b", "c"])
    for g in groups:  # every tail value 0: the axes used to reach below 0
        for attack in ("clean", "pgd5"):
            g.aggregate[attack]["tail_group"] = {"mean": 0.0, "std": 0.0, "n": g.n}
    fig = plots.tradeoff_figure(groups, "pgd5", "tail_group")
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 100.0) and ax.get_ylim() == (0.0, 100.0)


def test_png_figures_have_print_resolution_and_pdf_svg_stay_vector(report):
    from PIL import Image

    out, result, _ = report
    drawn = [Path(f) for f in result["figures"] if "/analysis/" not in f]
    assert drawn
    for png in drawn:
        dpi = Image.open(png).info.get("dpi")
        assert dpi and round(dpi[0]) >= 200, (png, dpi)
        assert b"/Subtype /Image" not in png.with_suffix(".pdf").read_bytes(), png  # no raster inside
        assert b"<image" not in png.with_suffix(".svg").read_bytes(), png


def test_captions_docs_and_docstrings_cite_papers_by_authors_and_venue():
    """No internal paper code ("002 Fig. 1b", "001 T1", "(000 A.1)") and no pointer to a local papers folder
    anywhere users read: source, configs, docs, README."""
    root = Path(__file__).resolve().parents[1]
    code = re.compile(r"\b00[0-4] (?:T\d|Tables?|Fig|Sec|Eq|Alg|Theorem|A\.\d)|\(00[0-4][),;:]|\b00[0-4]'s"
                      r"|papers/|`papers`|00[0-4]_[0-9a-f]{16}")
    bad = []
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "src").rglob("*.py")),
             *sorted((root / "src").rglob("*.yaml"))]
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if code.search(line):
                bad.append(f"{path.relative_to(root)}:{n}: {line.strip()[:120]}")
    assert not bad, "\n".join(bad)
