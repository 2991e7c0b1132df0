"""``ltrobust report``: tables, figures and one HTML page from stored results alone.

Nothing is retrained, no model or checkpoint is loaded: the report reads ``eval/*.json``,
``metrics.jsonl``, ``manifest.json``, ``eval/audit.json`` and ``analysis/*.png`` of each run
(``docs/reports.md``) and writes into ``out``:

- ``index.html``: a single page (inline CSS, images referenced relatively),
- ``report.md``: the same content as Markdown,
- ``report.json``: every aggregated number (per variant: mean, std and n of every metric of every
  attack) and the runs behind it,
- ``report.tex``: the tables as booktabs LaTeX (main, head / body / tail, robust fairness, cost, paper
  references, per-class), best per column in bold; ``report.csv``: one row per run and evaluation with every
  metric at full precision,
- ``img/*.png`` (and ``.pdf``, ``.svg``): the figures; ``img/analysis/``: copies of the runs' analysis figures.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from .. import io
from ..errors import ConfigError
from . import export, plots
from .collect import (Group, RunFiles, _read_optional_json, collect, data_label, fmt_value, group_entries,
                      robust_column)
from .page import Block, Fold, Heading, Image, Items, TableBlock, Text, to_html, to_markdown
from .tables import (ERRORS, Table, attack_title, config_table, cost_table, fairness_table, fmt_stat, group_table,
                     paper_table, per_class_table, reference_table, table_attacks)

log = logging.getLogger(__name__)

OPTIONS = ("out", "tag", "tags", "metric", "robust", "title", "seed_keys", "dpi", "error", "formats")
AGGREGATION_NOTE = (
    "Runs whose evaluation-time configs differ only in `train.seed` (and bookkeeping keys: paths, "
    "progress bars, evaluation batch sizes) are one variant. Every number of a variant is the mean over "
    "its runs and the sample standard deviation (ddof 1), written mean ± std (with `error=se`: mean ± the "
    "standard error std / sqrt(n), as REAT reports); a variant with one run shows "
    "its value alone. Accuracies are percentages of the evaluated test images; group columns (head, body, "
    "tail, many, medium, few, tail group) are the mean per-class recall of the group's classes; Gap is the "
    "boundary error A_nat - A_rob (RoBal) of the robust column. Attacks run in cascade unless the "
    "evaluation says mode standalone, and Worst case is the per-sample worst case over the suite.")


def _split(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [s for s in str(v).split(",") if s]


def default_out(inputs: Sequence[str | Path]) -> Path:
    """``<input>/report`` for a single run or sweep folder, else ``./report``."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return Path(inputs[0]) / "report"
    return Path("report")


def build_report(inputs: Sequence[str | Path], out: str | Path | None = None, tag: Any = None, tags: Any = None,
                 metric: str = "accuracy", robust: str | None = None, title: str | None = None,
                 seed_keys: Any = "train.seed", dpi: Any = plots.DPI, error: str = "std",
                 formats: Any = plots.FORMATS, **unknown: Any) -> dict[str, Any]:
    """Build the report of the runs below ``inputs`` from their stored JSON.

    Args:
        inputs: run folders, sweep folders (their ``sweep.json`` gives order and labels), parent folders
            of runs, or ``<run>/eval/<tag>.json`` files.
        out: report folder (default ``<input>/report`` for one input folder, else ``./report``).
        tag / tags: eval tags to include, comma-separated (default: every tag found).
        metric: ``accuracy`` (overall, the papers' tables) or ``balanced_accuracy`` (TAET's balanced robustness).
        robust: the robust column of the trade-off plot, the group table and the gap (default ``aa`` when
            every variant has it, else the per-sample worst case over the suite).
        title: page title.
        seed_keys: config keys aggregated over, comma-separated (default ``train.seed``).
        dpi: resolution of the PNG figures (default 200, print quality; the PDF and SVG copies are vector).
        error: ``std`` (mean ± sample std over seeds) or ``se`` (mean ± standard error, as REAT reports).
        formats: figure files written, comma-separated (default ``png,pdf,svg``; the page shows the PNGs).

    Returns:
        ``{"index": index.html, "markdown": report.md, "json": report.json, "latex": report.tex, "csv":
        report.csv, "markdown_table": the paper-style table as Markdown, "latex_table": the same as LaTeX,
        "figures": [png paths], "n_runs", "n_entries", "n_groups", "unevaluated"}``.

    Example::

        build_report(["runs/sweeps/digits-smoke"], out="reports/smoke")
    """
    if unknown:
        raise ConfigError(f"unknown report option(s) {', '.join(sorted(unknown))}; valid: {', '.join(OPTIONS)} "
                          f"(e.g. `ltrobust report runs/A runs/B out=reports/ab metric=balanced_accuracy`).")
    if metric not in ("accuracy", "balanced_accuracy"):
        raise ConfigError(f"metric={metric!r}: use accuracy or balanced_accuracy.")
    if error not in ERRORS:
        raise ConfigError(f"error={error!r}: use std (mean ± sample std over seeds) or se (± standard error).")
    try:
        dpi = int(dpi)
    except (TypeError, ValueError):
        raise ConfigError(f"dpi={dpi!r} is not a whole number of dots per inch (e.g. dpi=300).") from None
    fmts = _split(formats)
    if "png" not in fmts or set(fmts) - set(plots.FORMATS):
        raise ConfigError(f"formats={formats!r}: list png (the page shows it) and any of pdf, svg, e.g. "
                          f"formats=png,pdf,svg.")
    if not 10 <= dpi <= 1200:
        raise ConfigError(f"dpi={dpi} is outside 10-1200; use e.g. dpi=200 (the default) or dpi=300 for print.")
    entries, unevaluated = collect(inputs, _split(tags if tags is not None else tag) or None)
    if not entries:
        hint = f" ({len(unevaluated)} trained runs have no evaluation: run `ltrobust eval RUN`)" if unevaluated else ""
        raise ConfigError(f"no evaluation results found in {', '.join(map(str, inputs))}{hint}.")
    groups = group_entries(entries, _split(seed_keys) or ["train.seed"])
    rob = robust_column(groups, robust)
    out_dir = Path(out) if out else default_out(inputs)
    img = out_dir / "img"
    img.mkdir(parents=True, exist_ok=True)
    ctx = _Context(out_dir=out_dir, dpi=dpi, error=error, formats=["png"] + [f for f in fmts if f != "png"])
    title = title or "ltrobust report"
    names = next((n for n in (ctx.run(e.run_dir).class_names for g in groups for e in g.entries) if n), None)

    main = paper_table(groups, metric, rob, error)
    hbt = group_table(groups, rob, error)
    fairness = fairness_table(groups, rob, error)
    costs = {g.gid: [c for c in (ctx.run(e.run_dir).cost() for e in _unique_by_run(g)) if c] for g in groups}
    cost = cost_table(groups, costs, error)
    formats = {g.gid: next((f for f in (ctx.run(e.run_dir).data_format for e in g.entries) if f), None)
               for g in groups}
    refs = reference_table(groups, formats, error)
    blocks: list[Block] = [Text(f"{len(entries)} evaluations of {len({e.run_dir for e in entries})} runs in "
                                f"{len(groups)} variant(s), read from stored results (no model was loaded). "
                                f"Inputs: {', '.join(str(p) for p in inputs)}. Also written: report.tex (LaTeX "
                                f"tables), report.csv (every number), each figure as PNG, PDF and SVG.", "meta")]
    toc = [("results", "Results")]
    blocks += [Heading("Results", 2, "results"), TableBlock(main)]
    if refs is not None:
        blocks += [Heading("Paper reference numbers", 2, "reference"), TableBlock(refs)]
        toc.append(("reference", "Paper references"))
    blocks += [Heading("Head / body / tail and tail group", 2, "groups"), TableBlock(hbt)]
    toc += [("groups", "Head / body / tail"), ("tradeoff", "Trade-off")]
    blocks += [Heading("Clean vs robust trade-off", 2, "tradeoff")]
    fig = plots.tradeoff_figure(groups, rob, metric)
    if fig is not None:
        blocks.append(Image(ctx.save(fig, "tradeoff.png"),
                            f"clean vs {attack_title(rob)} accuracy of each variant (mean ± std over seeds)"))
    else:
        blocks.append(Text("No robust column to plot (only clean accuracy was evaluated).", "note"))
    fig = plots.tradeoff_figure(groups, rob, "tail_group")
    if fig is not None:
        blocks.append(Image(ctx.save(fig, "tail_tradeoff.png"),
                            f"tail-group clean vs {attack_title(rob)} accuracy (the last max(1, C // 10) classes; "
                            f"Cho et al., ICLR 2025, Fig. 1b), mean ± std over seeds"))
    blocks += _comparison_blocks(groups, rob, names, ctx)
    toc.append(("classes", "Class groups and per class"))
    if fairness is not None:
        blocks += [Heading("Robust fairness", 2, "fairness"), TableBlock(fairness)]
        toc.append(("fairness", "Robust fairness"))
    if cost is not None:
        blocks += [Heading("Training cost", 2, "cost"), TableBlock(cost)]
        toc.append(("cost", "Training cost"))
    blocks.append(Heading("Variants", 2, "variants"))
    toc.append(("variants", "Variants"))
    for g in groups:
        blocks += _variant_blocks(g, rob, ctx)
        toc.append((g.gid, f"{g.gid}: {g.label}"))
    if unevaluated:
        blocks += [Heading("Runs without evaluation", 2, "unevaluated"),
                   Items([f"`{p}`: run `ltrobust eval {p}`" for p in unevaluated])]
    blocks += [Heading("Runs", 2, "runs"), TableBlock(config_table(groups)),
               Heading("How the numbers are aggregated", 2, "aggregation"), Text(AGGREGATION_NOTE)]
    toc += [("runs", "Runs"), ("aggregation", "Aggregation")]

    md_path, html_path, json_path = out_dir / "report.md", out_dir / "index.html", out_dir / "report.json"
    tex_path, csv_path = out_dir / "report.tex", out_dir / "report.csv"
    io.atomic_write_text(md_path, f"# {title}\n\n" + to_markdown(blocks))
    io.atomic_write_text(html_path, to_html(blocks, title, toc))
    io.write_json(json_path, _summary(groups, rob, metric, unevaluated, ctx.figures, out_dir))
    per_class = [per_class_table(g, table_attacks([g]), ctx.run(g.entries[0].run_dir).class_names, error)
                 for g in groups if g.class_counts]
    tables = [("main", main), ("reference", refs), ("groups", hbt), ("fairness", fairness), ("cost", cost)]
    tables += [(f"per-class-{g.gid}", t) for g, t in zip([g for g in groups if g.class_counts], per_class)]
    io.atomic_write_text(tex_path, export.latex_document(title, [(k, t) for k, t in tables if t is not None],
                                                         ctx.figures))
    io.atomic_write_text(csv_path, export.results_csv(groups))
    log.info("report: %s", html_path)
    return {"index": str(html_path), "markdown": str(md_path), "json": str(json_path), "latex": str(tex_path),
            "csv": str(csv_path), "markdown_table": main.markdown(), "latex_table": main.latex("tab:main"),
            "figures": [str(out_dir / f) for f in ctx.figures],
            "n_runs": len({e.run_dir for e in entries}), "n_entries": len(entries), "n_groups": len(groups),
            "unevaluated": [str(p) for p in unevaluated], "robust": rob}


class _Context:
    """Figure bookkeeping: where PNGs go, run files read once, figures shared by groups of the same runs."""

    def __init__(self, out_dir: Path, dpi: int, error: str = "std", formats: Sequence[str] = plots.FORMATS) -> None:
        self.out_dir = out_dir
        self.dpi = dpi
        self.error = error
        self.formats = list(formats)
        self.figures: list[str] = []
        self.runs: dict[Path, RunFiles] = {}
        self.shared: dict[tuple[str, ...], str | None] = {}

    def save(self, fig: Any, name: str) -> str:
        """Write ``img/<name>`` (PNG, shown in the page) and its PDF and SVG copies; returns the PNG's path."""
        rel = f"img/{name}"
        plots.save_figure(fig, self.out_dir / rel, dpi=self.dpi, formats=self.formats)
        self.figures.append(rel)
        return rel

    def run(self, path: Path) -> RunFiles:
        if path not in self.runs:
            self.runs[path] = RunFiles(path)
        return self.runs[path]

    def once(self, key: tuple[str, ...], make: Any) -> str | None:
        """A figure that depends on the runs only (not on the eval tag): drawn once per set of runs."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


def _variant_blocks(g: Group, rob: str | None, ctx: _Context) -> list[Block]:
    runs = [ctx.run(e.run_dir) for e in g.entries]
    unique_runs = list(dict.fromkeys(runs))
    names = next((r.class_names for r in unique_runs if r.class_names), None)
    seeds = ", ".join(fmt_value(s) for s in g.seeds)
    blocks: list[Block] = [Heading(f"{g.gid}: {g.label}", 3, g.gid)]
    desc = [f"method `{g.config.get('method.name')}`, loss `{g.config.get('method.loss')}`, data "
            f"`{g.config.get('data.dataset')}` ({data_label(g.config)}), model `{g.config.get('model.name')}`",
            f"{g.n} run(s), seeds {seeds}; eval tag(s) {', '.join(sorted({e.tag for e in g.entries}))}"]
    if g.setting:
        desc.append(f"differs from the other variants in: {g.setting}")
    blocks.append(Items(desc))

    fig = plots.per_class_figure(g, rob, names)
    if fig is not None:
        blocks.append(Image(ctx.save(fig, f"{g.gid}_per_class.png"),
                            "per-class clean and robust recall (bars) and training images per class (grey line)"))
    blocks.append(Fold("per-class recall table", [TableBlock(per_class_table(g, table_attacks([g]), names,
                                                                             ctx.error))]))

    key = tuple(str(r.run_dir) for r in unique_runs)
    ae = ctx.once(("ae",) + key, lambda: _save_opt(ctx, plots.ae_distribution_figure(g, unique_runs, names),
                                                   f"{g.gid}_ae_distribution.png"))
    if ae:
        blocks.append(Image(ae, "predicted classes of the training AEs over epochs (metrics.jsonl ae_pred_counts); "
                                "grey: training label distribution"))
    curves = ctx.once(("curves",) + key, lambda: _save_opt(
        ctx, plots.curves_figure(g, [(fmt_value(e.seed), ctx.run(e.run_dir)) for e in _unique_by_run(g)]),
        f"{g.gid}_curves.png"))
    if curves:
        blocks.append(Image(curves, "training curves: loss parts, learning rate, validation accuracy per epoch"))
    per_epoch = ctx.once(("class-curves",) + key, lambda: _save_opt(
        ctx, plots.class_curves_figure(g, unique_runs, names), f"{g.gid}_class_curves.png"))
    if per_epoch:
        blocks.append(Image(per_epoch, "per-class clean and PGD validation accuracy over training epochs, head "
                                       "classes dark, tail light (TAET Fig. 2; metrics.jsonl val.per_class_clean / "
                                       "val.per_class_rob)"))
    blocks += _audit_blocks(g, ctx)
    blocks += _analysis_blocks(g, unique_runs, ctx)
    return blocks


def _comparison_blocks(groups: Sequence[Group], rob: str | None, names: Sequence[str] | None,
                       ctx: _Context) -> list[Block]:
    """Accuracy over class groups (Cho et al., ICLR 2025, Fig. 8) and the per-class recall of every variant in one
    plot."""
    blocks: list[Block] = [Heading("Class groups and per-class comparison", 2, "classes")]
    fig = plots.class_groups_figure(groups, rob)
    if fig is not None:
        blocks.append(Image(ctx.save(fig, "class_groups.png"),
                            "mean per-class recall over consecutive groups of classes sorted by training count "
                            "(head first; Cho et al., ICLR 2025, Fig. 8), one bar per variant, mean over seeds"))
    fig = plots.per_class_comparison_figure(groups, rob, names)
    if fig is not None:
        blocks.append(Image(ctx.save(fig, "per_class_comparison.png"),
                            "per-class recall of every variant, classes sorted by training count, mean over seeds"))
    return blocks if len(blocks) > 1 else []


def _unique_by_run(g: Group) -> list[Any]:
    seen, out = set(), []
    for e in g.entries:
        if e.run_dir not in seen:
            seen.add(e.run_dir)
            out.append(e)
    return out


def _save_opt(ctx: _Context, fig: Any, name: str) -> str | None:
    return ctx.save(fig, name) if fig is not None else None


def _audit_blocks(g: Group, ctx: _Context) -> list[Block]:
    """The audits of the variant's deployed models: re-scaling curve, checks and headline numbers."""
    audits = []
    for e in g.entries:
        audit = ctx.run(e.run_dir).audit(e.tag)
        if audit:
            audits.append((f"{e.run_dir.name}" + ("" if e.tag == "best" else f" ({e.tag})"), audit))
    if not audits:
        return []
    blocks: list[Block] = [Heading("Gradient-masking audit (ltrobust audit)", 4, f"{g.gid}-audit")]
    try:
        src = _save_opt(ctx, plots.audit_figure(g, audits), f"{g.gid}_audit.png")
        if src:
            blocks.append(Image(src, "accuracy under logit re-scaling (deployed logits x 10^-kappa; RoBal Fig. 2): "
                                     "PGD moving away from its kappa = 0 value while AutoAttack stays flat signals "
                                     "gradient masking"))
        rows = [[name, f, status, msg or "-"] for name, a in audits for f, status, msg in plots.audit_flags(a)]
        flagged = sorted({r[1] for r in rows if r[2] not in ("ok",)})
        blocks.append(Text("Audit flags: " + (", ".join(flagged) if flagged else "none") + "."))
        if rows:
            blocks.append(TableBlock(Table(["Run", "Check", "Status", "Detail"], rows, [False] * 4, "audit checks")))
        values = [[name, k, v] for name, a in audits for k, v in plots.audit_values(a)]
        if values:
            blocks.append(Fold("audit numbers", [TableBlock(Table(["Run", "Quantity", "Value"], values,
                                                                  [False, False, True]))]))
    except Exception as exc:  # noqa: BLE001 - an audit in an unexpected shape must not stop the report
        log.warning("audit of %s not shown: %s", g.gid, exc)
        blocks.append(Text(f"The audit file could not be read ({type(exc).__name__}: {exc}).", "note"))
    return blocks


def _analysis_blocks(g: Group, runs: Sequence[RunFiles], ctx: _Context) -> list[Block]:
    blocks: list[Block] = []
    for r in runs:
        for png in r.analyses:
            key = ("analysis", str(png))
            src = ctx.once(key, lambda png=png, r=r: _copy(ctx, png, r))
            if src:
                record = _read_optional_json(png.with_suffix(".json")) or {}
                names = [str(x.get("name")) for x in record.get("runs", []) if isinstance(x, dict) and x.get("name")]
                of = ", ".join(names) if names else r.run_dir.name
                blocks.append(Image(src, f"analysis {png.stem} of {of} ({png})"))
    if blocks:
        blocks.insert(0, Heading("Analyses (ltrobust analyze, copied from each run's analysis/)", 4,
                                 f"{g.gid}-analyses"))
    return blocks


def _copy(ctx: _Context, png: Path, r: RunFiles) -> str | None:
    import hashlib

    tag = hashlib.sha1(str(r.run_dir.resolve()).encode()).hexdigest()[:6]
    rel = f"img/analysis/{r.run_dir.name}-{tag}/{png.name}"
    try:
        io.atomic_write_bytes(ctx.out_dir / rel, png.read_bytes())
    except OSError as exc:
        log.warning("analysis figure %s not copied: %s", png, exc)
        return None
    ctx.figures.append(rel)
    return rel


def _summary(groups: Sequence[Group], rob: str | None, metric: str, unevaluated: Sequence[Path],
             figures: Sequence[str], out_dir: Path) -> dict[str, Any]:
    return {
        "metric": metric,
        "robust": rob,
        "attacks": table_attacks(groups),
        "groups": [{
            "id": g.gid, "label": g.label, "setting": g.setting, "n": g.n, "seeds": g.seeds,
            "config": {k: v for k, v in g.config.items() if k not in ("train.seed", "name")},
            "runs": [{"run": str(e.run_dir), "tag": e.tag, "seed": e.seed} for e in g.entries],
            "results": g.aggregate,
            "table": {a: fmt_stat(g.value(a, metric)) for a in table_attacks([g])},
        } for g in groups],
        "unevaluated": [str(p) for p in unevaluated],
        "figures": list(figures),
        "out": str(out_dir),
    }


__all__ = ["build_report", "default_out"]
