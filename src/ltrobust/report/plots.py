"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state).

- :func:`per_class_figure`: per-class clean and robust recall with the training counts (RoBal Fig. 1,
  REAT Fig. 4b);
- :func:`tradeoff_figure`: clean vs robust accuracy across variants (``metric="tail_group"``: tail clean vs
  tail robust, Cho et al., ICLR 2025, Fig. 1b);
- :func:`class_groups_figure`: accuracy over groups of classes sorted by training count (Cho et al., ICLR 2025,
  Fig. 8);
- :func:`per_class_comparison_figure`: per-class recall of several variants in one plot;
- :func:`class_curves_figure`: per-class clean and robust validation accuracy over epochs (TAET Fig. 2);
- :func:`ae_distribution_figure`: predicted classes of the training AEs over epochs, from
  ``metrics.jsonl`` ``ae_pred_counts`` (REAT Fig. 1, 5, 6);
- :func:`audit_figure`: accuracy under logit re-scaling ``W / 10^kappa`` from ``eval/audit.json``
  (RoBal Fig. 2);
- :func:`curves_figure`: loss parts, learning rate and validation clean / robust accuracy per epoch.

Each function returns a :class:`matplotlib.figure.Figure` (or None when the data it needs is absent);
:func:`save_figure` writes it atomically as PNG, PDF and SVG.
"""

from __future__ import annotations

import io as _io
import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .. import io
from ..evaluation.metrics import class_order
from .collect import Group, RunFiles
from .tables import attack_title

CLEAN_COLOR, ROBUST_COLOR, COUNT_COLOR = "#4C72B0", "#C44E52", "#7F7F7F"
#: metrics.jsonl keys that are not loss parts
NOT_LOSSES = ("epoch", "lr", "seconds", "images_per_s", "peak_rss_mb", "peak_cuda_mb")


#: the formats every report figure is written in (PNG for the page; PDF and SVG for papers and slides)
FORMATS = ("png", "pdf", "svg")


#: resolution of the PNG figures: print quality (the PDF and SVG copies are vector graphics, without rasters)
DPI = 200


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` once per format next to ``path`` (its suffix replaced), atomically; returns the paths. The
    PNG has ``dpi`` dots per inch; PDF and SVG are vector (no figure draws a raster image)."""
    FigureCanvasAgg(fig)
    out = []
    for i, fmt in enumerate(formats):
        target = Path(path).with_suffix(f".{fmt}")
        buf = _io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, **({"metadata": {"Date": None}} if fmt in ("svg", "pdf") else {}))
        io.atomic_write_bytes(target, buf.getvalue())
        out.append(target)
        if i == 0:  # the layout is solved by the first rendering; the other formats reuse it
            fig.set_layout_engine("none")
    return out


#: legend labels and titles are wrapped at this many characters: a long variant label (RoBal's
#: "robal + margin-bias ce + kl [...]") would otherwise squeeze the axes to a sliver or run off the figure
WRAP = 38


def _wrap(text: str, width: int = WRAP) -> str:
    return "\n".join(textwrap.wrap(str(text), width, break_on_hyphens=False)) or str(text)


def _legend_width(labels: Sequence[str], ncol: int = 1) -> float:
    """Inches a legend of fontsize 7 needs beside the axes: the longest wrapped line and the marker, per column."""
    longest = max((len(line) for lab in labels for line in _wrap(lab).splitlines()), default=0)
    return ncol * (0.06 * longest + 0.55)


def _side_legend(fig: Figure, ax: Any, title: str | None = None) -> None:
    """The figure's legend outside the axes on the right, labels wrapped, placed by the constrained layout
    (``loc="outside right upper"``) so it is never clipped and never covers the data."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = 1 if len(labels) <= 16 else 2
    fig.legend(handles, [_wrap(lab) for lab in labels], loc="outside right upper", fontsize=7, frameon=False,
               ncol=ncol, title=title, title_fontsize=7 if title else None)


def _percent_axis(ax: Any, axis: str = "y") -> None:
    """An accuracy axis: 0 to 100 (%), never below 0, whatever the values (all 0 included)."""
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, 100)


def _stat(v: Any) -> tuple[float, float]:
    if isinstance(v, dict) and v.get("mean") is not None:
        return float(v["mean"]), float(v.get("std") or 0.0)
    return math.nan, 0.0


def _class_ticks(ax: Any, order: Sequence[int], names: Sequence[str] | None) -> None:
    C = len(order)
    step = max(1, math.ceil(C / 25))
    pos = list(range(0, C, step))
    labels = [(str(names[order[p]]) if names and order[p] < len(names) else str(order[p])) for p in pos]
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=90 if max((len(s) for s in labels), default=0) > 3 else 0, fontsize=8)


# ----------------------------------------------------------------------------------------- per class
def per_class_figure(g: Group, robust: str | None, class_names: Sequence[str] | None = None) -> Figure | None:
    """Grouped bars of per-class clean and robust recall (mean over seeds, std as error bars), classes
    sorted by training count, the training count as a grey line on the right axis."""
    counts = g.class_counts
    per_clean = (g.aggregate.get("clean") or {}).get("per_class")
    if not counts or not isinstance(per_clean, list):
        return None
    order = class_order(counts)
    C = len(order)
    fig = Figure(figsize=(max(6.0, min(14.0, 0.45 * C + 3)), 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(C)
    series = [("clean", "Clean", CLEAN_COLOR)]
    if robust and isinstance((g.aggregate.get(robust) or {}).get("per_class"), list):
        series.append((robust, attack_title(robust), ROBUST_COLOR))
    width = 0.8 / len(series)
    for i, (attack, title, color) in enumerate(series):
        per = g.aggregate[attack]["per_class"]
        m, s = zip(*[_stat(per[c]) for c in order])
        ax.bar(x + (i - (len(series) - 1) / 2) * width, m, width, yerr=s if g.n > 1 else None, color=color,
               label=title, capsize=2 if C <= 30 else 0, error_kw={"elinewidth": 0.8})
    ax.set_ylim(0, 100)
    ax.set_ylabel("recall (%)")
    ax.set_xlabel("class (sorted by training count)")
    _class_ticks(ax, order, class_names)
    ax.set_xlim(-0.6, C - 0.4)
    ax2 = ax.twinx()
    ax2.plot(x, [counts[c] for c in order], "o-", color=COUNT_COLOR, ms=3, lw=1.2, label="training images")
    ax2.set_ylabel("training images", color=COUNT_COLOR)
    ax2.set_ylim(0, max(counts) * 1.1)
    handles = ax.get_legend_handles_labels()
    h2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + h2[0], handles[1] + h2[1], loc="upper right", fontsize=8, frameon=False)
    seeds = f", mean ± std of {g.n} seeds" if g.n > 1 else ""
    ax.set_title(_wrap(f"{g.label}: per-class recall{seeds}", 90), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


# ----------------------------------------------------------------------------------------- trade-off
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "tail_group": "tail-group accuracy"}
MARKERS = "osD^v<>pP*Xh"


def variant_styles(groups: Sequence[Group]) -> dict[str, tuple[str, str]]:
    """One (colour, marker) per variant, the same in every figure: colours cycle first, then markers, so up to
    120 variants look different."""
    return {g.gid: (f"C{i % 10}", MARKERS[(i // 10) % len(MARKERS)]) for i, g in enumerate(groups)}


def tradeoff_figure(groups: Sequence[Group], robust: str | None, metric: str = "accuracy") -> Figure | None:
    """Clean (x) vs robust (y) ``metric`` of each variant, mean ± std over seeds; each variant has its own
    colour and marker and is named (by its label, as in the tables) in a legend beside the axes, so labels
    never overlap the points or each other. ``metric="tail_group"``: tail clean vs tail robust (Cho et al., ICLR
    2025, Fig. 1b). Both axes run from 0 to 100 (%)."""
    pts = [(g, g.value("clean", metric), g.value(robust, metric)) for g in groups] if robust else []
    pts = [(g, c, r) for g, c, r in pts if c and r]
    if not pts:
        return None
    styles = variant_styles(groups)
    labels = [g.label for g, _, _ in pts]
    fig = Figure(figsize=(5.2 + _legend_width(labels, 1 if len(pts) <= 16 else 2), 4.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for g, c, r in pts:
        color, marker = styles[g.gid]
        ax.errorbar(c["mean"], r["mean"], xerr=c["std"] if g.n > 1 else None, yerr=r["std"] if g.n > 1 else None,
                    fmt=marker, color=color, ms=7, capsize=2, elinewidth=0.8, label=g.label, clip_on=False)
    _side_legend(fig, ax)
    label = METRIC_LABELS.get(metric, metric.replace("_", " "))
    ax.set_xlabel(f"clean {label} (%)")
    ax.set_ylabel(f"{attack_title(robust)} {label} (%)")
    what = ("tail-group clean vs robust (Cho et al., ICLR 2025, Fig. 1b)" if metric == "tail_group"
            else f"clean vs {attack_title(robust)}")
    ax.set_title(f"{what} trade-off", fontsize=10)
    _percent_axis(ax, "x")
    _percent_axis(ax, "y")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------------------ class groups / per class
def _per_class_means(g: Group, attack: str) -> list[float] | None:
    per = (g.aggregate.get(attack) or {}).get("per_class")
    if not isinstance(per, list) or len(per) != len(g.class_counts):
        return None
    return [_stat(v)[0] for v in per]


def class_group_bounds(n_classes: int) -> list[tuple[int, int]]:
    """Consecutive groups of the classes sorted by training count: 10 groups (Cho et al., ICLR 2025, Fig. 8 splits
    CIFAR-100 into 10) when there are at least 30 classes, else 3 (head / body / tail thirds, as the tables)."""
    k = 10 if n_classes >= 30 else min(3, n_classes)
    edges = [round(i * n_classes / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def class_groups_figure(groups: Sequence[Group], robust: str | None) -> Figure | None:
    """Mean per-class recall over consecutive groups of classes sorted by training count (head first), one bar
    per variant, clean (left) and robust (right) (Cho et al., ICLR 2025, Fig. 8); variants with the same classes
    only."""
    usable = [g for g in groups if g.class_counts and _per_class_means(g, "clean") is not None]
    if not usable:
        return None
    C = len(usable[0].class_counts)
    usable = [g for g in usable if len(g.class_counts) == C]
    bounds = class_group_bounds(C)
    attacks = ["clean"] + ([robust] if robust else [])
    styles = variant_styles(groups)
    fig = Figure(figsize=(5.2 * len(attacks) + _legend_width([g.label for g in usable], 1 if len(usable) <= 16 else 2),
                          3.6), layout="constrained")
    x = np.arange(len(bounds))
    width = 0.8 / len(usable)
    ticks = [f"{a + 1}" if b - a == 1 else f"{a + 1}-{b}" for a, b in bounds]
    for j, attack in enumerate(attacks):
        ax = fig.add_subplot(1, len(attacks), j + 1)
        for i, g in enumerate(usable):
            means = _per_class_means(g, attack)
            if means is None:
                continue
            order = class_order(g.class_counts)
            vals = [float(np.nanmean([means[c] for c in order[a:b]])) for a, b in bounds]
            ax.bar(x + (i - (len(usable) - 1) / 2) * width, vals, width, color=styles[g.gid][0],
                   label=g.label if j == len(attacks) - 1 else None)
        ax.set_xticks(x)
        ax.set_xticklabels(ticks, fontsize=8)
        ax.set_xlabel("classes by training count (rank, head first)")
        ax.set_ylabel("mean recall (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{attack_title(attack)}: accuracy over class groups", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    _side_legend(fig, ax)
    return fig


def per_class_comparison_figure(groups: Sequence[Group], robust: str | None,
                                class_names: Sequence[str] | None = None) -> Figure | None:
    """Per-class recall of every variant (mean over seeds), one line per variant, classes sorted by training
    count; clean (left) and robust (right). Drawn when at least two variants share the classes."""
    usable = [g for g in groups if g.class_counts and _per_class_means(g, "clean") is not None]
    if len(usable) < 2:
        return None
    counts = usable[0].class_counts
    usable = [g for g in usable if g.class_counts == counts]
    if len(usable) < 2:
        return None
    order = class_order(counts)
    C = len(order)
    attacks = ["clean"] + ([robust] if robust else [])
    styles = variant_styles(groups)
    fig = Figure(figsize=(max(5.0, min(9.0, 0.3 * C + 3)) * len(attacks)
                          + _legend_width([g.label for g in usable], 1 if len(usable) <= 16 else 2), 3.6),
                 layout="constrained")
    x = np.arange(C)
    for j, attack in enumerate(attacks):
        ax = fig.add_subplot(1, len(attacks), j + 1)
        for g in usable:
            means = _per_class_means(g, attack)
            if means is None:
                continue
            color, marker = styles[g.gid]
            ax.plot(x, [means[c] for c in order], marker=marker if C <= 30 else None, ms=4, lw=1.2, color=color,
                    label=g.label if j == len(attacks) - 1 else None)
        _class_ticks(ax, order, class_names)
        ax.set_xlim(-0.5, C - 0.5)
        ax.set_ylim(0, 100)
        ax.set_xlabel("class (sorted by training count)")
        ax.set_ylabel("recall (%)")
        ax.set_title(f"{attack_title(attack)}: per-class recall of each variant", fontsize=10)
        ax.grid(alpha=0.3)
    _side_legend(fig, ax)
    return fig


def per_class_epochs(runs: Sequence[RunFiles], key: str) -> tuple[list[int], np.ndarray] | None:
    """Epochs and the mean over ``runs`` of ``val[key]`` (per-class validation accuracy, %), (E, C); only
    epochs every run logged. ``key``: ``per_class_clean`` or ``per_class_rob`` (metrics.jsonl)."""
    per_run = []
    for r in runs:
        rows = {}
        for rec in r.metrics:
            v = (rec.get("val") or {}).get(key) if isinstance(rec.get("val"), dict) else None
            if isinstance(v, list) and v:
                rows[int(rec.get("epoch", len(rows)))] = np.asarray([math.nan if x is None else x for x in v], float)
        if rows:
            per_run.append(rows)
    if not per_run:
        return None
    epochs = sorted(set.intersection(*(set(r) for r in per_run)))
    if not epochs or len({len(r[e]) for r in per_run for e in epochs}) != 1:
        return None
    return epochs, np.stack([np.mean([r[e] for r in per_run], axis=0) for e in epochs])


def class_curves_figure(g: Group, runs: Sequence[RunFiles], class_names: Sequence[str] | None = None) -> Figure | None:
    """Per-class validation accuracy over training epochs, clean (left) and robust (right), one line per
    class coloured from head (dark) to tail (light) (TAET Fig. 2); mean over the variant's seeds; from
    ``metrics.jsonl`` ``val.per_class_clean`` / ``val.per_class_rob``."""
    panels = [(t, got) for t, got in (("clean", per_class_epochs(runs, "per_class_clean")),
                                       ("PGD", per_class_epochs(runs, "per_class_rob"))) if got is not None]
    counts = g.class_counts
    if not panels:
        return None
    names = [str(class_names[c]) if class_names and c < len(class_names) else str(c) for c in range(len(counts))]
    fig = Figure(figsize=(5.0 * len(panels) + (_legend_width(names) if len(counts) <= 20 else 0.2), 3.6),
                 layout="constrained")
    cmap = _viridis()
    for j, (title, (epochs, acc)) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        C = acc.shape[1]
        order = class_order(counts) if len(counts) == C else list(range(C))
        ep = list(epochs)  # numbered as in metrics.jsonl and the training log (from 0)
        for rank, c in enumerate(order):
            name = str(class_names[c]) if class_names and c < len(class_names) else str(c)
            ax.plot(ep, acc[:, c], color=cmap(0.9 * rank / max(C - 1, 1)), lw=1.1,
                    marker="." if len(ep) < 30 else None, label=name if j == len(panels) - 1 and C <= 20 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation recall (%)")
        _percent_axis(ax)
        ax.set_title(f"per-class {title} accuracy during training", fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(order) <= 20:
        _side_legend(fig, ax, title="class (head first)")
    n = len(runs)
    fig.suptitle(_wrap(g.label + (f" (mean of {n} seeds)" if n > 1 else ""), 100), fontsize=10)
    return fig


# ------------------------------------------------------------------------------- AE distribution
def ae_shares(runs: Sequence[RunFiles]) -> tuple[list[int], np.ndarray] | None:
    """Epochs and the mean over ``runs`` of the predicted-class shares (%) of training AEs, (E, C);
    only epochs that every run logged with a non-empty ``ae_pred_counts``."""
    per_run = []
    for r in runs:
        rows = {}
        for rec in r.metrics:
            counts = rec.get("ae_pred_counts")
            if isinstance(counts, list) and counts and sum(counts) > 0:
                rows[int(rec.get("epoch", len(rows)))] = 100.0 * np.asarray(counts, dtype=float) / float(sum(counts))
        if rows:
            per_run.append(rows)
    if not per_run:
        return None
    epochs = sorted(set.intersection(*(set(r) for r in per_run)))
    if not epochs:
        return None
    shares = np.stack([np.mean([r[e] for r in per_run], axis=0) for e in epochs])
    return epochs, shares


def ae_distribution_figure(g: Group, runs: Sequence[RunFiles], class_names: Sequence[str] | None = None) -> Figure | None:
    """Left: the share of training AEs predicted as each class at up to four epochs, with the training
    label distribution as grey bars (REAT Fig. 1); right: the same share for every epoch (heat map)."""
    got = ae_shares(runs)
    counts = g.class_counts
    if got is None or not counts:
        return None
    epochs, shares = got
    C = shares.shape[1]
    order = class_order(counts) if len(counts) == C else list(range(C))
    pick = sorted(set(epochs[int(round(i * (len(epochs) - 1) / 3))] for i in range(4))) if len(epochs) > 1 else epochs
    fig = Figure(figsize=(12.0, 3.8), layout="constrained")
    ax, axh = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = np.arange(C)
    train_share = 100.0 * np.asarray([counts[c] for c in order], dtype=float) / float(sum(counts))
    ax.bar(x, train_share, 0.9, color="#D0D0D0", label="training labels")
    width = 0.8 / len(pick)
    cmap = _viridis()
    for i, e in enumerate(pick):
        row = shares[epochs.index(e)][order]
        ax.bar(x + (i - (len(pick) - 1) / 2) * width, row, width, color=cmap(i / max(len(pick) - 1, 1)),
               label=f"epoch {e}")
    ax.set_ylabel("share of training AEs (%)")
    ax.set_xlabel("predicted class (sorted by training count)")
    _class_ticks(ax, order, class_names)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("predicted classes of training AEs", fontsize=10)
    # vector quads (pcolormesh), not a raster image (imshow): the PDF and SVG copies stay vector graphics
    im = axh.pcolormesh(np.arange(C + 1) - 0.5, np.arange(len(epochs) + 1) - 0.5, shares[:, order], cmap="viridis",
                        shading="flat")
    axh.set_xlabel("predicted class (sorted by training count)")
    axh.set_ylabel("epoch")
    rows = list(range(0, len(epochs), max(1, math.ceil(len(epochs) / 12))))
    axh.set_yticks(rows)
    axh.set_yticklabels([str(epochs[i]) for i in rows], fontsize=8)
    _class_ticks(axh, order, class_names)
    bar = fig.colorbar(im, ax=axh, label="share (%)")
    bar.solids.set_rasterized(False)  # matplotlib rasterises a colour bar of 50+ levels; keep it vector
    axh.set_title("share per epoch", fontsize=10)
    n = len(runs)
    fig.suptitle(_wrap(f"{g.label}" + (f" (mean of {n} seeds)" if n > 1 else ""), 100), fontsize=10)
    return fig


def _viridis() -> Any:
    from matplotlib import colormaps

    return colormaps["viridis"]


# ------------------------------------------------------------------------------------------- audit
def _num(v: Any) -> float | None:
    """A number, or the accuracy inside a result dict."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        for k in ("accuracy", "acc", "robust_accuracy", "mean", "value"):
            if isinstance(v.get(k), (int, float)) and not isinstance(v.get(k), bool):
                return float(v[k])
    return None


_KAPPA_KEYS = ("kappa", "kappas", "log10_scale")
_SWEEP_KEYS = ("rescaling", "logit_rescaling", "rescale", "logit_rescale", "logit_scaling", "scaling", "sweep",
               "kappa_sweep")


#: row keys of a re-scaling sweep that are not accuracies (or not worth a curve)
_NOT_SERIES = ("factor", "zero_grad", "scale", "log10_factor")


def _from_rows(rows: list[Any]) -> tuple[list[float], dict[str, list[float | None]]] | None:
    kk = next((k for k in _KAPPA_KEYS if rows and all(isinstance(r, dict) and k in r for r in rows)), None)
    if kk is None:
        return None
    rows = sorted(rows, key=lambda r: float(r[kk]))
    kappas = [float(r[kk]) for r in rows]
    names: list[str] = []
    flat_rows = []
    for r in rows:
        flat = {}
        for k, v in r.items():
            if k == kk or k in _NOT_SERIES or k.endswith("_balanced"):
                continue
            if isinstance(v, dict) and _num(v) is None:  # nested {"results": {"pgd20": ...}}
                flat.update({k2: _num(v2) for k2, v2 in v.items()})
            else:
                flat[k] = _num(v)
        flat_rows.append(flat)
        names += [k for k, v in flat.items() if v is not None and k not in names]
    return kappas, {n: [fr.get(n) for fr in flat_rows] for n in names}


def _from_columns(d: dict[str, Any]) -> tuple[list[float], dict[str, list[float | None]]] | None:
    kk = next((k for k in _KAPPA_KEYS if isinstance(d.get(k), list)), None)
    if kk is None:
        return None
    kappas = [float(k) for k in d[kk]]
    series: dict[str, list[float | None]] = {}
    for k, v in d.items():
        if k == kk or k in _NOT_SERIES or k.endswith("_balanced"):
            continue
        if isinstance(v, list) and len(v) == len(kappas):
            vals = [_num(x) for x in v]
            if any(x is not None for x in vals):
                series[k] = vals
        elif isinstance(v, dict):  # {"accuracy": {"pgd20": [...]}}
            for k2, v2 in v.items():
                if isinstance(v2, list) and len(v2) == len(kappas):
                    series[k2] = [_num(x) for x in v2]
    return (kappas, series) if series else None


def audit_curves(audit: dict[str, Any] | None) -> tuple[list[float], dict[str, list[float | None]]] | None:
    """``(kappas, {series: accuracies})`` of the logit re-scaling sweep in an audit file, or None.

    ``ltrobust audit`` writes ``rescaling``: one row per kappa with ``clean``, ``pgd``, ``aa`` (and
    ``factor``, ``zero_grad``, ``*_balanced``, not plotted). Also accepted, under ``rescaling`` (or
    ``logit_rescaling``, ``rescale``, ``logit_scaling``, ``scaling``, ``sweep``) or at the top level:
    columns ``{"kappa": [...], "pgd20": [...]}`` (optionally nested one level), or a mapping from kappa to
    a row ``{"-2": {"pgd20": 40.1}}``. Values are numbers or result dicts with ``accuracy``.
    """
    if not isinstance(audit, dict):
        return None
    candidates = [audit[k] for k in _SWEEP_KEYS if k in audit] + [audit]
    for c in candidates:
        if isinstance(c, list):
            got = _from_rows(c)
        elif isinstance(c, dict):
            got = _from_columns(c)
            if got is None and c is not audit:
                try:
                    rows = [{"kappa": float(k), **(v if isinstance(v, dict) else {"value": v})} for k, v in c.items()]
                except (TypeError, ValueError):
                    rows = []
                got = _from_rows(rows) if rows else None
            if got is None:
                for v in c.values():  # one level down: {"rescaling": {"rows": [...]}}
                    if isinstance(v, list) and v and isinstance(v[0], dict):
                        got = _from_rows(v)
                        if got:
                            break
        else:
            got = None
        if got and got[1]:
            return got
    return None


def audit_series_title(audit: dict[str, Any], key: str) -> str:
    """Display name of a re-scaling series: the audit's own attack titles (``pgd`` -> ``PGD-20``,
    ``aa`` -> its sweep attack, e.g. ``APGD-CE + APGD-T``), else the evaluation column title."""
    attacks = audit.get("attacks") if isinstance(audit.get("attacks"), dict) else {}
    spec = attacks.get("sweep" if key == "aa" and "sweep" in attacks else key)
    if isinstance(spec, dict) and spec.get("title"):
        return str(spec["title"])
    return attack_title(key) if key not in ("pgd",) else "PGD"


def audit_flags(audit: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """``[(check, status, message)]``: every check of ``audit["checks"]`` (``{name: {"flagged", "message",
    "value", "threshold"}}``, what ``ltrobust audit`` writes), else ``audit["flags"]`` (a list of names,
    a list of dicts, or a mapping from name to bool / text / dict). Status is ``flagged`` or ``ok``."""
    if not isinstance(audit, dict):
        return []
    checks = audit.get("checks")
    if isinstance(checks, dict) and checks:
        out = []
        for name, c in checks.items():
            if not isinstance(c, dict):
                continue
            value, thr = c.get("value"), c.get("threshold")
            num = f" (value {value:.2f}, threshold {thr:g})" if isinstance(value, (int, float)) and \
                isinstance(thr, (int, float)) else ""
            out.append((str(name), "flagged" if c.get("flagged") else "ok", str(c.get("message") or "") + num))
        return out
    flags = audit.get("flags")
    if isinstance(flags, dict):
        items = list(flags.items())
    elif isinstance(flags, list):
        items = [(None, f) for f in flags]
    else:
        return []
    out = []
    for name, f in items:
        if isinstance(f, str):
            out.append((name or f, "flagged", f if name else ""))
        elif isinstance(f, bool):
            out.append((str(name), "flagged" if f else "ok", ""))
        elif isinstance(f, dict):
            fname = str(name or f.get("name") or f.get("flag") or f.get("id") or f.get("check") or "flag")
            status = f.get("status")
            if status is None:
                for k, raised_if in (("flagged", True), ("raised", True), ("triggered", True), ("failed", True),
                                     ("passed", False), ("ok", False)):
                    if isinstance(f.get(k), bool):
                        status = "flagged" if f[k] == raised_if else "ok"
                        break
            msg = f.get("message") or f.get("detail") or f.get("reason") or f.get("description") or ""
            out.append((fname, str(status or "flagged"), str(msg)))
    return out


def audit_values(audit: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The audit's headline numbers as text: robust accuracies at the deployed scale (``robust``), the
    zero-gradient share, Square's gain, the sample size, and any other top-level scalar."""
    if not isinstance(audit, dict):
        return []
    out = []
    for k, v in audit.items():
        if k in ("checksum", "flags", "seconds", "seed") or isinstance(v, list):
            continue
        if isinstance(v, dict):
            if k in ("robust", "robust_balanced", "zero_grad", "square"):
                out += [(f"{k}.{k2}", _fmt_num(v2)) for k2, v2 in v.items()
                        if isinstance(v2, (int, float)) and not isinstance(v2, bool)]
            continue
        out.append((k, _fmt_num(v)))
    return out


def _fmt_num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def audit_figure(g: Group, audits: Sequence[tuple[str, dict[str, Any]]]) -> Figure | None:
    """Accuracy vs kappa (classifier ``W / 10^kappa``) for every series of every run's audit: PGD
    should not rise away from kappa 0 and AA should stay flat (RoBal Fig. 2)."""
    curves = [(name, audit_curves(a)) for name, a in audits]
    curves = [(n, c) for n, c in curves if c]
    if not curves:
        return None
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    names: list[str] = []
    for _, (_, series) in curves:
        names += [s for s in series if s not in names]
    styles = ["-", "--", ":", "-."]
    audit_of = dict(audits)
    for i, (run_name, (kappas, series)) in enumerate(curves):
        for s, vals in series.items():
            y = [math.nan if v is None else v for v in vals]
            ax.plot(kappas, y, styles[i % len(styles)], marker="o", ms=3, color=f"C{names.index(s) % 10}",
                    label=audit_series_title(audit_of[run_name], s) + (f" ({run_name})" if len(curves) > 1 else ""))
    ax.set_xlabel("kappa (deployed logits x 10^-kappa, i.e. classifier W / 10^kappa)")
    ax.set_ylabel("accuracy (%)")
    _percent_axis(ax)
    ax.set_title(_wrap(f"{g.label}: logit re-scaling audit", 70), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig


# ---------------------------------------------------------------------------------- training curves
def curves_figure(g: Group, runs: Sequence[tuple[str, RunFiles]]) -> Figure | None:
    """Per epoch: every logged loss part, the learning rate, and validation clean / robust accuracy
    (overall solid, class-balanced dashed); one line per seed."""
    logged = [(name, r.metrics) for name, r in runs if r.metrics]
    if not logged:
        return None
    parts: list[str] = []
    for _, rows in logged:
        for rec in rows:
            parts += [k for k, v in rec.items() if k not in NOT_LOSSES and k not in parts
                      and isinstance(v, (int, float)) and not isinstance(v, bool)]
    has_val = any("val" in rec for _, rows in logged for rec in rows)
    n_panels = 2 + int(has_val)
    fig = Figure(figsize=(4.2 * n_panels, 3.4), layout="constrained")
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    alpha = 1.0 if len(logged) == 1 else 0.75
    for j, (name, rows) in enumerate(logged):
        ep = [int(r.get("epoch", i)) for i, r in enumerate(rows)]  # from 0, as metrics.jsonl
        first = j == 0
        for i, p in enumerate(parts):
            y = [r.get(p) if isinstance(r.get(p), (int, float)) else math.nan for r in rows]
            axes[0].plot(ep, y, color=f"C{i % 10}", alpha=alpha, lw=1.2, marker="." if len(ep) < 30 else None,
                         label=p if first else None)
        axes[1].plot(ep, [r.get("lr", math.nan) for r in rows], color="k", alpha=alpha, lw=1.2,
                     label=f"seed {name}" if len(logged) > 1 else None)
        if has_val:
            ax = axes[2]
            vrows = [(e, r["val"]) for e, r in zip(ep, rows) if isinstance(r.get("val"), dict)]
            ve = [e for e, _ in vrows]
            for key, color, ls in (("clean", CLEAN_COLOR, "-"), ("rob", ROBUST_COLOR, "-"),
                                   ("clean_balanced", CLEAN_COLOR, "--"), ("rob_balanced", ROBUST_COLOR, "--")):
                y = [v.get(key, math.nan) for _, v in vrows]
                overall = [v.get(key.replace("_balanced", ""), math.nan) for _, v in vrows]
                if key.endswith("_balanced") and y == overall:
                    continue  # a balanced validation set: the balanced curve is the overall one
                if any(isinstance(v, (int, float)) for v in y):
                    ax.plot(ve, y, ls, color=color, alpha=alpha, lw=1.2, marker="." if len(ve) < 30 else None,
                            label=("val " + key.replace("rob", "PGD").replace("_", " ")) if first else None)
    axes[0].set_title("training loss parts", fontsize=10)
    axes[0].set_xlabel("epoch")
    axes[0].legend(fontsize=7, frameon=False)
    axes[1].set_title("learning rate", fontsize=10)
    axes[1].set_xlabel("epoch")
    if len(logged) > 1:
        axes[1].legend(fontsize=7, frameon=False)
    if has_val:
        axes[2].set_title("validation accuracy (%)", fontsize=10)
        axes[2].set_xlabel("epoch")
        _percent_axis(axes[2])
        axes[2].legend(fontsize=7, frameon=False)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(_wrap(g.label + (f" ({len(logged)} seeds)" if len(logged) > 1 else ""), 100), fontsize=10)
    return fig
