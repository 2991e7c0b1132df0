"""``cost``: training time per epoch and peak memory per method, from the runs' own records.

TAET (Wang et al., CVPR 2025) Fig. 6a (memory usage and time per epoch of each method) and REAT (Li, Xu and
Zhang, 2023) Table 14 (seconds per training epoch). Every epoch the trainer writes to ``metrics.jsonl`` its
``seconds`` (the training steps, without validation), ``peak_rss_mb`` (the process' peak resident memory in
the epoch) and ``peak_cuda_mb`` (``torch.cuda.max_memory_allocated``, on a GPU); see
:mod:`ltrobust.training.cost`. This analysis reads them, loads no model and runs nothing.

Runs are grouped into methods by their sweep label, or else by method + loss and the settings in which
they differ (seeds aggregated: mean ± sample std). Per run: the mean seconds over its epochs, the largest
peak of each memory kind, the images per second; a stage run first (the self-distillation teacher,
``<run>/teacher``) is reported apart (``stage_seconds``), since its epochs are not the method's epochs.
Memory is plotted as CUDA memory when every run has it, else as CPU resident memory (the whole process:
Python, the data set and the model included), and the JSON says which. Compare runs made on one machine.

Example::

    ltrobust analyze cost runs/sweeps/digits-all-methods
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..registry import ANALYSES
from .base import Analysis, CommonOptions, RunContext, new_figure
from .stored import StoredRun, find_runs, hashable, mean_std, varying_keys


@dataclass(frozen=True)
class CostOptions(CommonOptions):
    dpi: int = 200  #: resolution of the PNG (a PDF is written too)
    memory: str = "auto"  #: auto (CUDA when every run has it, else CPU RSS) | cuda | rss
    seed_keys: str = "train.seed"  #: keys aggregated over (comma-separated)


def run_cost(run: StoredRun) -> dict[str, Any] | None:
    """Seconds per epoch (mean), peak memories (max), images per second (mean) of one run's own epochs."""
    rows = [r for r in run.metrics if "stage" not in r and isinstance(r.get("seconds"), (int, float))]
    if not rows:
        return None

    def peak(key: str) -> float | None:
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        return max(vals) if vals else None

    out = {"epochs": len(rows), "seconds_per_epoch": sum(r["seconds"] for r in rows) / len(rows),
           "seconds": float(sum(r["seconds"] for r in rows)), "peak_rss_mb": peak("peak_rss_mb"),
           "peak_cuda_mb": peak("peak_cuda_mb"),
           "images_per_s": mean_std([r.get("images_per_s") for r in rows])["mean"]}
    stages = {}
    for sub in sorted(p for p in run.run_dir.iterdir() if p.is_dir() and (p / "metrics.jsonl").is_file()
                      and (p / "config.yaml").is_file()):
        srows = [r for r in StoredRun(sub).metrics if isinstance(r.get("seconds"), (int, float))]
        if srows:
            stages[sub.name] = {"epochs": len(srows), "seconds": float(sum(r["seconds"] for r in srows))}
    if stages:
        out["stage_seconds"] = stages
    return out


@ANALYSES.register("cost")
class Cost(Analysis):
    """Training time per epoch and peak memory per method, from metrics.jsonl (TAET Fig. 6a)."""

    name = "cost"
    Options = CostOptions
    runs = "many"
    formats = ("png", "pdf")

    def compute(self, runs: Sequence[RunContext], opts: CostOptions) -> dict[str, Any]:
        from ..errors import ConfigError

        if opts.memory not in ("auto", "cuda", "rss"):
            raise ConfigError(f"memory={opts.memory!r}: use auto, cuda or rss.")
        stored = [(r, run_cost(r)) for r in find_runs([c.path for c in runs])]
        timed = [(r, c) for r, c in stored if c is not None]
        if not timed:
            raise ConfigError("no run has a timed epoch in its metrics.jsonl: train runs first (`ltrobust train`).")
        seed_keys = [k for k in opts.seed_keys.split(",") if k]
        configs = [r.config for r, _ in timed]
        differ = [k for k in varying_keys(configs, seed_keys) if not k.startswith("eval.")]
        groups: dict[str, list[tuple[StoredRun, dict[str, Any]]]] = {}
        labels: dict[str, str] = {}
        for (r, c), cfg in zip(timed, configs):
            method = str(cfg.get("method.name")) + ("" if cfg.get("method.loss") in (None, "ce") else
                                                    f" + {cfg.get('method.loss')}")
            extra = [f"{k.rsplit('.', 1)[-1]}={cfg.get(k)}" for k in differ if k not in ("method.name", "method.loss")]
            label = r.label or (method + (f" [{', '.join(extra)}]" if extra else ""))
            gid = r.label or hashable({k: cfg.get(k) for k in differ})
            groups.setdefault(gid, []).append((r, c))
            labels[gid] = label
        memory = opts.memory
        if memory == "auto":
            memory = "cuda" if all(c.get("peak_cuda_mb") is not None for _, c in timed) else "rss"
        rows = []
        for gid, members in groups.items():
            cs = [c for _, c in members]
            rows.append({"label": labels[gid], "runs": [str(r.run_dir) for r, _ in members],
                         "seconds_per_epoch": mean_std([c["seconds_per_epoch"] for c in cs]),
                         "peak_memory_mb": mean_std([c[f"peak_{memory}_mb"] for c in cs]),
                         "peak_rss_mb": mean_std([c["peak_rss_mb"] for c in cs]),
                         "peak_cuda_mb": mean_std([c["peak_cuda_mb"] for c in cs]),
                         "images_per_s": mean_std([c["images_per_s"] for c in cs]),
                         "epochs": [c["epochs"] for c in cs],
                         "stage_seconds": [c.get("stage_seconds") for c in cs]})
        return {"memory": memory, "memory_label": ("peak CUDA memory allocated" if memory == "cuda" else
                                                   "peak resident memory of the process (CPU)"),
                "methods": rows}

    def plot(self, result: dict[str, Any], opts: CostOptions):
        import numpy as np

        rows = result["methods"]
        fig = new_figure(10.0, 1.4 + 0.32 * len(rows))
        ax_t, ax_m = fig.subplots(1, 2, sharey=True)
        y = np.arange(len(rows))
        for ax, key, color, xlabel in ((ax_t, "seconds_per_epoch", "#4C72B0", "training time per epoch (s)"),
                                       (ax_m, "peak_memory_mb", "#C44E52", f"{result['memory_label']} (MiB)")):
            m = np.array([r[key]["mean"] if r[key]["mean"] is not None else np.nan for r in rows], dtype=float)
            s = np.array([r[key]["std"] or 0.0 for r in rows], dtype=float)
            ax.barh(y, m, 0.6, xerr=s if (s > 0).any() else None, color=color, capsize=2)
            top = max(float(np.nanmax(m + s)), 1e-9) if np.isfinite(m).any() else 1.0
            for yi, v in zip(y, m):
                if np.isfinite(v):
                    ax.text(v + 0.01 * top, yi, f"{v:,.0f}" if v >= 100 else f"{v:.3g}", va="center", fontsize=7)
            ax.set_xlim(0, top * 1.18)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.grid(axis="x", alpha=0.3)
        ax_t.set_yticks(y)
        ax_t.set_yticklabels([r["label"] for r in rows], fontsize=7)
        ax_t.invert_yaxis()  # the first method on top, as the grid lists them
        ax_t.set_title("time per epoch (mean ± std over seeds)", fontsize=9)
        ax_m.set_title("peak memory", fontsize=9)
        return fig
