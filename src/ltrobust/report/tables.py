"""The report's tables, built once and rendered as Markdown and HTML.

- :func:`paper_table`: one row per variant, one column per attack (Clean, FGSM, PGD-20, PGD-100, MIM,
  CW, AA, adaptive, whichever were run), ``mean ± std`` over seeds, plus RoBal's gap (boundary error
  ``A_nat - A_rob`` of the robust column);
- :func:`group_table`: head / body / tail thirds, many / medium / few shot, the tail group (002's
  T-Clean / T-PGD) and the worst class, for clean and the robust column;
- :func:`per_class_table`: per-class recall of one variant with the training counts.

Numbers are percentages with two decimals; ``mean ± std`` uses the sample standard deviation (ddof 1)
of :func:`ltrobust.evaluation.metrics.aggregate_seeds`; a single run shows its value alone.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..evaluation.evaluator import column_title
from ..evaluation.metrics import class_order
from .collect import COLLAPSED, Group, data_label, fmt_value, ordered_attacks

DASH = "-"
GROUP_COLUMNS = (("head", "Head"), ("body", "Body"), ("tail", "Tail"), ("many", "Many"), ("medium", "Medium"),
                 ("few", "Few"), ("tail_group", "Tail group"))
METRIC_TITLES = {"accuracy": "overall accuracy", "balanced_accuracy": "balanced accuracy (mean per-class recall)"}


@dataclass
class Table:
    """A table of strings with numeric-column flags; rendered by :meth:`markdown` and :meth:`html`."""

    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    caption: str = ""
    anchors: list[str] = field(default_factory=list)  #: per row: HTML anchor of the variant ("" for none)

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
                if j == 0 and anchor:
                    text = f'<a href="#{anchor}">{text}</a>'
                cells.append(f'<td class="{c}">{text}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)


def fmt_stat(v: dict[str, Any] | None, digits: int = 2) -> str:
    """``{"mean", "std", "n"}`` -> ``"67.33 ± 0.45"`` (n > 1) or ``"67.33"``; None -> ``"-"``."""
    if not v or v.get("mean") is None:
        return DASH
    if v.get("n", 1) > 1:
        return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"
    return f"{v['mean']:.{digits}f}"


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
    header = ["Variant" if labelled else "Method"]
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
        method = f"{g.config.get('method.name', '?')} + {g.config.get('method.loss', '?')}"
        row = [g.label if labelled else method + (COLLAPSED if g.collapsed else "")]
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


def paper_table(groups: Sequence[Group], metric: str = "accuracy", robust: str | None = None) -> Table:
    """The paper-style table: a column per attack, ``mean ± std`` over seeds, and RoBal's gap
    (clean minus the robust column, i.e. the boundary error) when there is a robust column."""
    attacks = table_attacks(groups)
    header, rows = _id_columns(groups)
    n_id = len(header)
    header += [attack_title(a) for a in attacks]
    if robust:
        header.append(f"Gap (Clean - {attack_title(robust)})")
    for g, row in zip(groups, rows):
        row += [fmt_stat(g.value(a, metric)) for a in attacks]
        if robust:
            row.append(fmt_stat(g.value(robust, "boundary_error")) if metric == "accuracy" else _gap(g, robust, metric))
    caption = (f"{METRIC_TITLES.get(metric, metric)} (%) under each attack; mean ± sample std over seeds"
               f" when a variant has several; {common_settings(groups)}")
    return Table(header, rows, [False] * (n_id - 1) + [True] * (len(header) - n_id + 1), caption,
                 anchors=[g.gid for g in groups])


def _gap(g: Group, robust: str, metric: str) -> str:
    """Clean minus robust of ``metric`` per run, then mean ± std (for balanced accuracy)."""
    from ..evaluation.metrics import aggregate_seeds

    diffs = []
    for e in g.entries:
        res = e.result["results"]
        if robust in res and metric in res[robust] and metric in res.get("clean", {}):
            diffs.append(res["clean"][metric] - res[robust][metric])
    return fmt_stat(aggregate_seeds([{"gap": d} for d in diffs])["gap"]) if diffs else DASH


def group_table(groups: Sequence[Group], robust: str | None) -> Table:
    """Head / body / tail, many / medium / few, tail group and worst class for clean and ``robust``."""
    present = [(k, t) for k, t in GROUP_COLUMNS if any(g.value("clean", k) for g in groups)]
    header = ["Variant", "Attack", "Overall", "Balanced"] + [t for _, t in present] + ["Worst class"]
    rows, anchors = [], []
    for g in groups:
        for attack in ["clean"] + ([robust] if robust and robust in g.attacks else []):
            row = [g.label, attack_title(attack), fmt_stat(g.value(attack, "accuracy")),
                   fmt_stat(g.value(attack, "balanced_accuracy"))]
            row += [fmt_stat(g.value(attack, k)) for k, _ in present]
            row.append(_worst(g, attack))
            rows.append(row)
            anchors.append(g.gid)
    groups_note = ("head / body / tail: thirds of the classes by training count; many / medium / few: > 100, "
                   "20-100, < 20 training images; tail group: the last max(1, C // 10) classes (002's T-Clean / "
                   "T-PGD); values are mean per-class recall (%) of the group, mean ± std over seeds")
    return Table(header, rows, [False, False] + [True] * (len(header) - 2), groups_note, anchors=anchors)


def _worst(g: Group, attack: str) -> str:
    """``"class 9: 12.00 ± 1.00"`` (the class when every seed agrees)."""
    classes = [e.result["results"][attack]["worst_class"]["class"] for e in g.entries
               if "worst_class" in e.result["results"].get(attack, {})]
    recall = (g.aggregate.get(attack) or {}).get("worst_class", {})
    recall = recall.get("recall") if isinstance(recall, dict) else None
    stat = fmt_stat(recall if isinstance(recall, dict) else None)
    if classes and len(set(classes)) == 1:
        return f"class {classes[0]}: {stat}"
    return f"classes {','.join(str(c) for c in classes)}: {stat}" if classes else DASH


def per_class_table(g: Group, attacks: Sequence[str] | None = None, class_names: Sequence[str] | None = None) -> Table:
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
            row.append(fmt_stat(v if isinstance(v, dict) else None))
        rows.append(row)
    return Table(header, rows, [False, True] + [True] * len(attacks),
                 f"per-class recall (%) of {g.label}, classes by training count")


def config_table(groups: Sequence[Group]) -> Table:
    """The runs behind each variant: folder, tag, seed, checkpoint epoch, evaluated images."""
    header = ["Variant", "Run folder", "Eval tag", "Seed", "Checkpoint epoch", "Test images"]
    rows, anchors = [], []
    for g in groups:
        for e in g.entries:
            epoch = e.result.get("checkpoint_epoch")
            rows.append([g.label, str(e.run_dir), e.tag, fmt_value(e.seed),
                         str(epoch + 1) if isinstance(epoch, int) and epoch >= 0 else DASH, str(e.result.get("n", DASH))])
            anchors.append(g.gid)
    return Table(header, rows, [False, False, False, True, True, True], "runs and evaluations behind each variant",
                 anchors=anchors)


__all__ = ["Table", "fmt_stat", "paper_table", "group_table", "per_class_table", "config_table", "table_attacks",
           "attack_title", "common_settings"]
