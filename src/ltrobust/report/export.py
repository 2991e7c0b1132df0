"""Paper-ready exports of a report: every table as booktabs LaTeX in one compilable ``report.tex``, and every
number of every evaluation in ``report.csv``.

- :func:`latex_document`: a standalone ``article`` holding the given tables, each a ``table`` float with a
  ``\\label{tab:<name>}`` (a page-breaking ``longtable`` when it has more than 40 rows); copy a table into a
  paper as it is (``\\usepackage{booktabs,graphicx,longtable}``).
- :func:`results_csv`: one row per (run, evaluation) entry, identification columns, then one column per
  metric of the eval JSON (``clean.accuracy``, ``pgd20.tail_group``, ``clean.per_class.3``, ...) at full
  precision (Python's shortest round-trip form, so a cell reads back as the JSON's float exactly).
"""

from __future__ import annotations

import csv
import io as _io
from typing import Any, Sequence

from .collect import Group, data_label, ordered_attacks
from .tables import Table, latex_escape

#: per-attack result keys left out of the CSV: group memberships (class lists, not metrics) and the C x C
#: predicted distribution by true class (the overall distribution is kept)
CSV_SKIP = ("groups", "predicted_distribution.by_true_class")
ID_COLUMNS = ("variant", "label", "run", "tag", "seed", "method", "loss", "dataset", "train_set", "model",
              "fingerprint", "checkpoint", "checkpoint_epoch", "unfinished", "adjust", "mode", "n")


def latex_document(title: str, tables: Sequence[tuple[str, Table]], figures: Sequence[str] = ()) -> str:
    """A compilable LaTeX document with ``tables`` (``(name, table)``; ``\\label{tab:name}``)."""
    out = ["% Written by `ltrobust report`: the report's tables in booktabs form. Each table float can be",
           "% copied into a paper as it is (\\usepackage{booktabs,graphicx,longtable}, \\usepackage[T1]{fontenc});",
           "% best per column in bold. Every text is escaped for LaTeX (_ & % # $ { } ~ ^ \\ < > | and the unicode",
           "% marks the report writes).",
           "\\documentclass{article}", "\\usepackage[T1]{fontenc}", "\\usepackage[utf8]{inputenc}",
           "\\usepackage[margin=1.5cm,landscape]{geometry}",
           "\\usepackage{booktabs}", "\\usepackage{graphicx}", "\\usepackage{longtable}",
           f"\\title{{{latex_escape(title)}}}", "\\date{}", "\\begin{document}", "\\maketitle", ""]
    for name, table in tables:
        out += [table.latex(f"tab:{name}"), ""]
    if figures:
        out.append("% Figures (PDF copies for \\includegraphics, next to the PNGs):")
        out += [f"%   {f.rsplit('.', 1)[0]}.pdf" for f in figures if f.endswith(".png")]
    out.append("\\end{document}")
    return "\n".join(out) + "\n"


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if prefix.split(".", 1)[-1] in CSV_SKIP:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}", out)
    else:
        out[prefix] = value


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def entry_rows(groups: Sequence[Group]) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV's header and rows: one row per (run, eval tag), metrics flattened per attack."""
    rows: list[dict[str, Any]] = []
    metric_cols: list[str] = []
    attacks = ordered_attacks(groups)
    for g in groups:
        for e in g.entries:
            flat = e.flat
            row: dict[str, Any] = {
                "variant": g.gid, "label": g.label, "run": str(e.run_dir), "tag": e.tag, "seed": e.seed,
                # the loss actually trained with (at_bsl: bsl), as the tables name it; not the configured loss=
                "method": flat.get("method.name"), "loss": e.result.get("loss_label") or flat.get("method.loss"),
                "dataset": flat.get("data.dataset"), "train_set": data_label(flat),
                "model": e.foreign or flat.get("model.name"), "fingerprint": flat.get("model.fingerprint"),
                "unfinished": bool(e.unfinished),
                "checkpoint": flat.get("eval.checkpoint"), "checkpoint_epoch": e.result.get("checkpoint_epoch"),
                "adjust": flat.get("eval.adjust"), "mode": e.result.get("mode"), "n": e.result.get("n")}
            results = e.result.get("results", {})
            for attack in attacks:
                if attack in results:
                    metrics: dict[str, Any] = {}
                    _flatten(results[attack], attack, metrics)
                    metric_cols += [k for k in metrics if k not in metric_cols]
                    row.update(metrics)
            rows.append(row)
    return list(ID_COLUMNS) + metric_cols, rows


def results_csv(groups: Sequence[Group]) -> str:
    """``report.csv``: one row per run and evaluation, every metric of its eval JSON (see the module doc)."""
    header, rows = entry_rows(groups)
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(k)) for k in header])
    return buf.getvalue()


__all__ = ["latex_document", "results_csv", "entry_rows"]
