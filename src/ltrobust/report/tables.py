"""The report's tables, built once and rendered as Markdown and HTML.

- :func:`paper_table`: one row per variant, one column per attack (Clean, FGSM, PGD-20, PGD-100, MIM,
  CW, AA, adaptive, whichever were run), ``mean ± std`` over seeds, plus RoBal's gap (boundary error
  ``A_nat - A_rob`` of the robust column);
- :func:`group_table`: head / body / tail thirds, many / medium / few shot, the tail group (Cho et al.'s (ICLR 2025)
  T-Clean / T-PGD) and the worst class, for clean and the robust column;
- :func:`per_class_table`: per-class recall of one variant with the training counts.

Numbers are percentages with two decimals; ``mean ± std`` uses the sample standard deviation (ddof 1)
of :func:`ltrobust.evaluation.metrics.aggregate_seeds` (``error="se"``: the standard error std / sqrt(n));
a single run shows its value alone. Each table renders as Markdown, HTML and a booktabs LaTeX ``table``
(:meth:`Table.latex`), the best value of each comparable column in bold (HTML, LaTeX).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..evaluation.evaluator import column_title
from ..evaluation.metrics import aggregate_seeds, class_order, class_spread
from .collect import COLLAPSED, Group, data_label, fmt_value, method_loss, ordered_attacks, unfinished_mark

DASH = "-"
GROUP_COLUMNS = (("head", "Head"), ("body", "Body"), ("tail", "Tail"), ("many", "Many"), ("medium", "Medium"),
                 ("few", "Few"), ("tail_group", "Tail group"))
METRIC_TITLES = {"accuracy": "overall accuracy", "balanced_accuracy": "balanced accuracy (mean per-class recall)"}
ERRORS = {"std": "sample std", "se": "standard error"}


@dataclass
class Table:
    """A table of strings with numeric-column flags; rendered by :meth:`markdown` and :meth:`html`."""

    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    caption: str = ""
    anchors: list[str] = field(default_factory=list)  #: per row: HTML anchor of the variant ("" for none)
    bold: set[tuple[int, int]] = field(default_factory=set)  #: (row, column) cells holding a column's best value
    rules: list[int] = field(default_factory=list)  #: rows before which LaTeX draws a \midrule (row groups)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---:" if n else "---" for n in self.numeric) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        cls = ["num" if n else "" for n in self.numeric]
        out = ["<table>"]
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        out.append("<thead><tr>" + "".join(f'<th class="{c}">{html.escape(h)}</th>'
                                           for h, c in zip(self.header, cls)) + "</tr></thead><tbody>")
        for i, row in enumerate(self.rows):
            anchor = self.anchors[i] if i < len(self.anchors) else ""
            cells = []
            for j, (v, c) in enumerate(zip(row, cls)):
                text = html.escape(v)
                if c == "num" and " ± " in text:  # the error may wrap below the mean in a narrow column
                    mean, err = text.split(" ± ", 1)
                    text = f'<span class="m">{mean}</span> <span class="e">± {err}</span>'
                if j == 0 and anchor:
                    text = f'<a href="#{anchor}">{text}</a>'
                elif (i, j) in self.bold:
                    text = f"<strong>{text}</strong>"
                cells.append(f'<td class="{c}">{text}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)

    def latex(self, label: str = "") -> str:
        """Booktabs LaTeX (``\\toprule`` / ``\\midrule`` / ``\\bottomrule``, numeric columns right aligned,
        ``$\\pm$``, column bests in ``\\textbf``); needs ``\\usepackage{booktabs,graphicx,longtable}``.

        Up to :data:`LONG_TABLE_ROWS` rows: a ``table`` float, shrunk to ``\\linewidth`` when wider. Longer
        tables (the per-class table of CIFAR-100-LT has 100 rows) would run off the page as a float, so they
        are a ``longtable`` that breaks across pages and repeats its header on each."""
        spec = "".join("r" if n else "l" for n in self.numeric)
        header = " & ".join(latex_escape(h) for h in self.header) + " \\\\"
        body = []
        for i, row in enumerate(self.rows):
            if i in self.rules and i > 0:
                body.append("\\midrule")
            cells = [latex_escape(v) for v in row]
            cells = [f"\\textbf{{{c}}}" if (i, j) in self.bold else c for j, c in enumerate(cells)]
            body.append(" & ".join(cells) + " \\\\")
        if len(self.rows) > LONG_TABLE_ROWS:
            cols = len(self.header)
            out = ["\\begingroup\\small", f"\\begin{{longtable}}{{{spec}}}"]
            if self.caption or label:
                out.append(f"\\caption{{{latex_escape(self.caption)}}}" + (f"\\label{{{label}}}" if label else "")
                           + " \\\\")
            note = lambda align, text: f"\\multicolumn{{{cols}}}{{{align}}}{{\\emph{{({text})}}}} \\\\"  # noqa: E731
            out += ["\\toprule", header, "\\midrule", "\\endfirsthead",  # first page
                    note("l", "continued"), "\\toprule", header, "\\midrule", "\\endhead",  # later pages
                    "\\midrule", note("r", "continued on the next page"), "\\endfoot",
                    "\\bottomrule", "\\endlastfoot"]
            out += body + ["\\end{longtable}", "\\endgroup"]
            return "\n".join(out) + "\n"
        out = ["\\begin{table}[ht]", "\\centering", "\\small"]
        if self.caption:
            out.append(f"\\caption{{{latex_escape(self.caption)}}}")
        if label:
            out.append(f"\\label{{{label}}}")
        # shrunk to the text width only when wider (\\resizebox of graphicx)
        out += ["\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
                f"\\begin{{tabular}}{{{spec}}}", "\\toprule", header, "\\midrule"]
        out += body + ["\\bottomrule", "\\end{tabular}}", "\\end{table}"]
        return "\n".join(out) + "\n"


#: tables with more rows than this are written as a page-breaking ``longtable`` instead of a ``table`` float
LONG_TABLE_ROWS = 40

#: plain text -> LaTeX: the ten special characters, the characters the default OT1 font encoding draws as
#: other glyphs (``<`` and ``>`` print as inverted exclamation and question marks, ``|`` as an em dash, ``"``
#: as a closing double quote), and the non-ASCII characters the report writes
_LATEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                  "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
                  "<": "\\textless{}", ">": "\\textgreater{}", "|": "\\textbar{}", '"': "\\textquotedbl{}",
                  "±": "$\\pm$", "≥": "$\\geq$", "≤": "$\\leq$", "−": "$-$", "×": "$\\times$", "·": "$\\cdot$",
                  "–": "--", "—": "---", "‘": "`", "’": "'", "“": "``", "”": "''", "…": "\\ldots{}",
                  "→": "$\\rightarrow$", "⚠": "(!)", "°": "$^{\\circ}$", "α": "$\\alpha$", "β": "$\\beta$",
                  "γ": "$\\gamma$", "κ": "$\\kappa$", "λ": "$\\lambda$", "μ": "$\\mu$", "π": "$\\pi$",
                  "τ": "$\\tau$", "ε": "$\\varepsilon$", "√": "$\\surd$", "²": "$^2$"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX that prints as the text (special characters escaped, ``<`` as ``\\textless{}``,
    ``±`` as ``$\\pm$``, the report's other non-ASCII characters mapped; Latin letters with accents, e.g. in a
    class name, kept for ``\\usepackage[T1]{fontenc}`` and UTF-8 input; any other character becomes ``?``)."""
    out = _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group(0)], str(text))
    return "".join(c if ord(c) < 0x250 else "?" for c in out)


def best_cells(values: Sequence[Sequence[float | None]], columns: Sequence[int], higher: Sequence[bool],
               blocks: Sequence[Any] | None = None) -> set[tuple[int, int]]:
    """The (row, column) cells that hold the best value of their column (ties all marked), among rows of the
    same block (e.g. the same attack); a column with fewer than two values marks nothing."""
    out: set[tuple[int, int]] = set()
    keys = list(blocks) if blocks is not None else [None] * len(values)
    for col, hi in zip(columns, higher):
        for key in dict.fromkeys(keys):
            cand = [(i, values[i][col]) for i in range(len(values)) if keys[i] == key and values[i][col] is not None]
            if len(cand) < 2:
                continue
            best = max(v for _, v in cand) if hi else min(v for _, v in cand)
            out |= {(i, col) for i, v in cand if round(v, 2) == round(best, 2)}
    return out


def fmt_stat(v: dict[str, Any] | None, digits: int = 2, error: str = "std") -> str:
    """``{"mean", "std", "n"}`` -> ``"67.33 ± 0.45"`` (n > 1) or ``"67.33"``; None -> ``"-"``.
    ``error="se"`` writes the standard error ``std / sqrt(n)`` instead of the std."""
    if not v or v.get("mean") is None:
        return DASH
    n = v.get("n", 1)
    if n > 1:
        err = v["std"] / math.sqrt(n) if error == "se" else v["std"]
        return f"{v['mean']:.{digits}f} ± {err:.{digits}f}"
    return f"{v['mean']:.{digits}f}"


def _mean(v: dict[str, Any] | None) -> float | None:
    return float(v["mean"]) if v and v.get("mean") is not None else None


def attack_title(name: str) -> str:
    return "Worst case" if name == "worst_case" else column_title(name)


def table_attacks(groups: Sequence[Group]) -> list[str]:
    """Attack columns of the paper table: every attack run, the worst case only when it combines two or more."""
    names = ordered_attacks(groups)
    n_attacks = len([a for a in names if a not in ("clean", "worst_case")])
    return [a for a in names if a != "worst_case" or n_attacks >= 2]


def _id_columns(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Leading columns naming each variant: label (or method), data set / profile when they vary, seeds."""
    labelled = any(e.label for g in groups for e in g.entries)
    datasets = {g.config.get("data.dataset") for g in groups}
    profiles = {data_label(g.config) for g in groups}
    foreign = all(e.foreign for g in groups for e in g.entries)  # models ltrobust did not train: named, not method + loss
    header = ["Variant" if labelled else ("Model" if foreign else "Method")]
    if labelled:
        header.append("Method")
    if len(datasets) > 1:
        header.append("Data")
    if len(profiles) > 1:
        header.append("Train set")
    if any(g.setting for g in groups) and not labelled:
        header.append("Setting")
    header.append("Seeds")
    rows = []
    for g in groups:
        method = method_loss(g)  # by the loss actually trained with (loss_label), not the configured loss=
        row = [g.label if labelled else method + (COLLAPSED if g.collapsed else "") + unfinished_mark(g)]
        if labelled:
            row.append(method + (f" ({g.setting})" if g.setting else ""))
        if len(datasets) > 1:
            row.append(str(g.config.get("data.dataset", "?")))
        if len(profiles) > 1:
            row.append(data_label(g.config))
        if any(x.setting for x in groups) and not labelled:
            row.append(g.setting or DASH)
        row.append(str(g.n))
        rows.append(row)
    return header, rows


def common_settings(groups: Sequence[Group]) -> str:
    """What every variant shares (data set, profile, model), for the caption."""
    if not groups:
        return ""
    parts = []
    first = groups[0].config
    if len({g.config.get("data.dataset") for g in groups}) == 1:
        parts.append(str(first.get("data.dataset")))
    if len({data_label(g.config) for g in groups}) == 1:
        parts.append(data_label(first))
    if len({g.config.get("model.name") for g in groups}) == 1 and first.get("model.name"):
        parts.append(f"model {first.get('model.name')}")
    if len({g.config.get("eval.checkpoint") for g in groups}) == 1 and first.get("eval.checkpoint"):
        parts.append(f"{first.get('eval.checkpoint')} checkpoint")
    modes = {e.result.get("mode") for g in groups for e in g.entries}
    if modes == {"cascade"}:
        parts.append("attacks in cascade (a column counts the images robust to that attack and every "
                     "attack run before it)")
    elif modes == {"standalone"}:
        parts.append("each attack run alone on the clean-correct images")
    n_test = {e.result.get("n") for g in groups for e in g.entries}
    if len(n_test) == 1:
        parts.append(f"{n_test.pop()} test images")
    return ", ".join(parts)


def paper_table(groups: Sequence[Group], metric: str = "accuracy", robust: str | None = None,
                error: str = "std") -> Table:
    """The paper-style table: a column per attack, ``mean ± std`` (or ± standard error) over seeds, and
    RoBal's gap (clean minus the robust column, i.e. the boundary error) when there is a robust column.
    The best mean of each column is marked bold (the highest accuracy, the smallest gap)."""
    attacks = table_attacks(groups)
    header, rows = _id_columns(groups)
    n_id = len(header)
    header += [attack_title(a) for a in attacks]
    if robust:
        header.append(f"Gap (Clean - {attack_title(robust)})")
    means: list[list[float | None]] = []
    for g, row in zip(groups, rows):
        stats = [g.value(a, metric) for a in attacks]
        if robust:
            stats.append(g.value(robust, "boundary_error") if metric == "accuracy" else _gap(g, robust, metric))
        row += [fmt_stat(v, error=error) for v in stats]
        means.append([None] * n_id + [_mean(v) for v in stats])
    caption = (f"{METRIC_TITLES.get(metric, metric)} (%) under each attack; mean ± {ERRORS.get(error, error)} over "
               f"seeds when a variant has several, best of each column in bold; {common_settings(groups)}")
    cols = list(range(n_id, len(header)))
    bold = best_cells(means, cols, [not (robust and c == len(header) - 1) for c in cols])
    return Table(header, rows, [False] * (n_id - 1) + [True] * (len(header) - n_id + 1), caption,
                 anchors=[g.gid for g in groups], bold=bold)


def _gap(g: Group, robust: str, metric: str) -> dict[str, Any] | None:
    """Clean minus robust of ``metric`` per run, then ``{"mean", "std", "n"}`` (for balanced accuracy)."""
    diffs = []
    for e in g.entries:
        res = e.result["results"]
        if robust in res and metric in res[robust] and metric in res.get("clean", {}):
            diffs.append(res["clean"][metric] - res[robust][metric])
    return aggregate_seeds([{"gap": d} for d in diffs])["gap"] if diffs else None


def group_table(groups: Sequence[Group], robust: str | None, error: str = "std") -> Table:
    """Head / body / tail, many / medium / few, tail group and worst class for clean and ``robust``;
    the best mean of each column among the rows of the same attack in bold."""
    present = [(k, t) for k, t in GROUP_COLUMNS if any(g.value("clean", k) for g in groups)]
    header = ["Variant", "Attack", "Overall", "Balanced"] + [t for _, t in present] + ["Worst class"]
    rows, anchors, means, blocks = [], [], [], []
    for g in groups:
        for attack in ["clean"] + ([robust] if robust and robust in g.attacks else []):
            stats = [g.value(attack, k) for k in ["accuracy", "balanced_accuracy"] + [k for k, _ in present]]
            rows.append([g.label, attack_title(attack)] + [fmt_stat(v, error=error) for v in stats]
                        + [_worst(g, attack, error)])
            means.append([None, None] + [_mean(v) for v in stats] + [_mean(_worst_recall(g, attack))])
            anchors.append(g.gid)
            blocks.append(attack)
    groups_note = ("head / body / tail: thirds of the classes by training count; many / medium / few: > 100, "
                   "20-100, < 20 training images; tail group: the last max(1, C // 10) classes (T-Clean / T-PGD of "
                   f"Cho et al., ICLR 2025); values are mean per-class recall (%) of the group, mean ± {ERRORS.get(error, error)} "
                   "over seeds; best per column and attack in bold")
    cols = list(range(2, len(header)))
    return Table(header, rows, [False, False] + [True] * (len(header) - 2), groups_note, anchors=anchors,
                 bold=best_cells(means, cols, [True] * len(cols), blocks),
                 rules=[i for i in range(1, len(rows)) if anchors[i] != anchors[i - 1]])


def _worst_recall(g: Group, attack: str) -> dict[str, Any] | None:
    recall = (g.aggregate.get(attack) or {}).get("worst_class", {})
    recall = recall.get("recall") if isinstance(recall, dict) else None
    return recall if isinstance(recall, dict) else None


def _worst(g: Group, attack: str, error: str = "std") -> str:
    """``"class 9: 12.00 ± 1.00"`` (the class when every seed agrees)."""
    classes = [e.result["results"][attack]["worst_class"]["class"] for e in g.entries
               if "worst_class" in e.result["results"].get(attack, {})]
    stat = fmt_stat(_worst_recall(g, attack), error=error)
    if classes and len(set(classes)) == 1:
        return f"class {classes[0]}: {stat}"
    return f"classes {','.join(str(c) for c in classes)}: {stat}" if classes else DASH


def per_class_table(g: Group, attacks: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                    error: str = "std") -> Table:
    """Per-class recall (mean ± std over seeds), classes ordered by training count (largest first)."""
    counts = g.class_counts
    order = class_order(counts)
    attacks = list(attacks) if attacks else [a for a in table_attacks([g])]
    header = ["Class", "Train count"] + [attack_title(a) for a in attacks]
    rows = []
    for c in order:
        name = str(class_names[c]) if class_names and c < len(class_names) else str(c)
        row = [name if name == str(c) else f"{c} ({name})", str(counts[c])]
        for a in attacks:
            per = (g.aggregate.get(a) or {}).get("per_class")
            v = per[c] if isinstance(per, list) and c < len(per) else None
            row.append(fmt_stat(v if isinstance(v, dict) else None, error=error))
        rows.append(row)
    return Table(header, rows, [False, True] + [True] * len(attacks),
                 f"per-class recall (%) of {g.label}, classes by training count")


def fairness_table(groups: Sequence[Group], robust: str | None, error: str = "std") -> Table | None:
    """Robust fairness: the spread of per-class recall under ``robust`` (std over classes, max - min) beside
    the balanced accuracy and the worst class (:func:`ltrobust.evaluation.metrics.class_spread`, per run, then
    mean ± std over seeds); clean's spread too. Lower spread and a higher worst class are bold."""
    attacks = ["clean"] + ([robust] if robust else [])
    header = ["Variant", "Attack", "Balanced", "Std over classes", "Max - min", "Worst class"]
    rows, anchors, means, blocks = [], [], [], []
    for g in groups:
        for attack in attacks:
            spreads = [class_spread(e.result["results"][attack]["per_class"]) for e in g.entries
                       if isinstance(e.result["results"].get(attack, {}).get("per_class"), list)]
            spreads = [sp for sp in spreads if sp]
            if not spreads:
                continue
            agg = aggregate_seeds(spreads)
            stats = [g.value(attack, "balanced_accuracy"), agg["std"], agg["range"], agg["worst"]]
            rows.append([g.label, attack_title(attack)] + [fmt_stat(v, error=error) for v in stats])
            means.append([None, None] + [_mean(v) for v in stats])
            anchors.append(g.gid)
            blocks.append(attack)
    if not rows:
        return None
    caption = ("robust fairness: per-class recall (%) spread, population std over the classes and max - min, "
               f"beside the balanced accuracy and the worst class's recall; per run, then mean ± "
               f"{ERRORS.get(error, error)} over seeds; best per column and attack in bold")
    return Table(header, rows, [False, False, True, True, True, True], caption, anchors=anchors,
                 bold=best_cells(means, [2, 3, 4, 5], [True, False, False, True], blocks),
                 rules=[i for i in range(1, len(rows)) if anchors[i] != anchors[i - 1]])


def cost_table(groups: Sequence[Group], costs: dict[str, list[dict[str, float]]], error: str = "std") -> Table | None:
    """Training cost per variant (REAT Table 14, TAET Fig. 6a): seconds per epoch, total training time and
    peak memory (CPU RSS, CUDA max allocated) from ``metrics.jsonl``; ``costs``: group id -> one
    :meth:`RunFiles.cost` per run. Lowest in bold."""
    keys = [("epochs", "Epochs"), ("seconds_per_epoch", "s / epoch"), ("seconds", "Total (s)"),
            ("peak_rss_mb", "Peak RSS (MB)"), ("peak_cuda_mb", "Peak CUDA (MB)")]
    present = [(k, t) for k, t in keys if any(k in c for cs in costs.values() for c in cs)]
    if not any(costs.values()):
        return None
    header = ["Variant", "Method", "Runs"] + [t for _, t in present]
    rows, anchors, means = [], [], []
    for g in groups:
        cs = costs.get(g.gid) or []
        if not cs:
            continue
        agg = aggregate_seeds(cs)
        stats = [agg.get(k) for k, _ in present]
        rows.append([g.label, method_loss(g), str(len(cs))]
                    + [fmt_stat(v, digits=0 if k == "epochs" else 1, error=error) for v, (k, _) in zip(stats, present)])
        means.append([None, None, None] + [_mean(v) for v in stats])
        anchors.append(g.gid)
    devices = sorted({str(g.config.get("train.device", "?")) for g in groups})
    caption = (f"training cost per variant from metrics.jsonl: seconds per epoch (mean over epochs), total "
               f"training seconds, peak CPU resident memory and peak CUDA memory allocated (max over epochs), "
               f"mean ± {ERRORS.get(error, error)} over seeds; train.device {', '.join(devices)}; lowest in bold")
    cols = [3 + i for i, (k, _) in enumerate(present) if k != "epochs"]
    return Table(header, rows, [False, False, True] + [True] * len(present), caption, anchors=anchors,
                 bold=best_cells(means, cols, [False] * len(cols)))


def run_settings(g: Group, data_format: str | None) -> dict[str, Any]:
    """The run-side values of a reference's ``settings``: epochs, data format, checkpoint rule (ltrobust's
    ``best`` is chosen on held-out validation: ``best-val``), and every config key."""
    checkpoint = g.config.get("eval.checkpoint")
    return {"epochs": g.config.get("train.epochs"), "data": data_format,
            "checkpoint": {"best": "best-val", "last": "last"}.get(str(checkpoint), checkpoint)}


def setting_differences(g: Group, reference: dict[str, Any], data_format: str | None) -> list[str]:
    """``["epochs 2 (paper 80)", "checkpoint best-val (paper best-test)"]``: where the run departs from the
    paper's settings of ``reference``."""
    ours = run_settings(g, data_format)
    settings = reference.get("settings") or {}
    out = []
    for key in sorted(settings, key=lambda k: (list(ours).index(k) if k in ours else len(ours), k)):
        paper = settings[key]
        mine = ours[key] if key in ours else g.config.get(key)
        if fmt_value(mine) != fmt_value(paper):
            out.append(f"{key} {fmt_value(mine) if mine is not None else '?'} (paper {fmt_value(paper)})")
    return out


def reference_metric(key: str) -> tuple[str, str]:
    """``pgd20`` -> ``("pgd20", "accuracy")``; ``clean.tail_group`` -> ``("clean", "tail_group")``."""
    attack, _, metric = key.partition(".")
    return attack, metric or "accuracy"


def reference_table(groups: Sequence[Group], data_formats: dict[str, str | None], error: str = "std") -> Table | None:
    """The paper numbers each variant targets (its config's ``reference:`` list) beside ours: paper, table,
    metric, paper value, ours (mean ± error over seeds), ours - paper, and the run settings that differ from
    the paper's. ``data_formats``: group id -> the runs' data file format (``manifest.json``)."""
    header = ["Variant", "Paper", "Metric", "Paper value", "Ours", "Ours - paper", "Settings that differ"]
    rows, anchors = [], []
    for g in groups:
        for ref in g.config.get("reference") or []:
            if not isinstance(ref, dict):
                continue
            paper = f"{ref.get('paper') or ref.get('source')} {ref.get('table', '')}".strip()
            differs = "; ".join(setting_differences(g, ref, data_formats.get(g.gid))) or "none"
            for key, value in (ref.get("values") or {}).items():
                attack, metric = reference_metric(key)
                ours = g.value(attack, metric)
                title = attack_title(attack) + ("" if metric == "accuracy" else f" {metric.replace('_', ' ')}")
                rows.append([g.label, paper, title, f"{float(value):.2f}", fmt_stat(ours, error=error),
                             f"{ours['mean'] - float(value):+.2f}" if ours else "not evaluated", differs])
                anchors.append(g.gid)
    if not rows:
        return None
    caption = ("the paper numbers each variant's preset or grid targets (`reference:` in its config) beside ours "
               f"(mean ± {ERRORS.get(error, error)} over seeds), with the run settings that differ from the paper's "
               "(epochs, data file format, checkpoint rule: best-val is ltrobust's best on held-out validation)")
    return Table(header, rows, [False, False, False, True, True, True, False], caption, anchors=anchors,
                 rules=[i for i in range(1, len(rows)) if rows[i][:2] != rows[i - 1][:2]])


def config_table(groups: Sequence[Group]) -> Table:
    """The runs behind each variant: folder, tag, seed, checkpoint epoch, evaluated images."""
    header = ["Variant", "Run folder", "Eval tag", "Seed", "Checkpoint epoch", "Test images"]
    rows, anchors = [], []
    for g in groups:
        for e in g.entries:
            epoch = e.result.get("checkpoint_epoch")
            rows.append([g.label, str(e.run_dir), e.tag, fmt_value(e.seed),
                         str(epoch) if isinstance(epoch, int) and epoch >= 0 else DASH, str(e.result.get("n", DASH))])
            anchors.append(g.gid)
    return Table(header, rows, [False, False, False, True, True, True], "runs and evaluations behind each variant",
                 anchors=anchors)


__all__ = ["Table", "fmt_stat", "paper_table", "group_table", "per_class_table", "config_table", "table_attacks",
           "attack_title", "common_settings", "fairness_table", "cost_table", "reference_table", "latex_escape",
           "best_cells"]
