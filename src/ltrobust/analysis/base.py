"""The analysis plug-in contract, the shared helpers, and :func:`run_analysis`.

An analysis is a class registered in :data:`~ltrobust.registry.ANALYSES` under its command name::

    @ANALYSES.register("feature-norm")
    class FeatureNorm(Analysis):
        Options = FeatureNormOptions      # frozen dataclass; every field is a key=value option
        runs = "one"                      # none | one | many
        def compute(self, runs, opts) -> dict: ...   # the numbers (JSON-able), computed once
        def plot(self, result, opts) -> Figure: ...  # the figure, drawn from ``result`` alone

``run_analysis`` parses the options, loads the runs, calls ``compute``, then writes the result as
``<out>/<kind>.json`` (checksummed, atomic) and ``plot(result)`` as ``<out>/<kind>.png``. Because the
figure is drawn from the stored numbers only, every plotted value is in the JSON.

Attacks always go through :func:`ltrobust.attacks.run_attack` on the run's *deployed* model (the logits
that are served, inference adjustments included); features come from the trained network's
``features``. The threat model (norm, eps, step size) is the run's ``eval`` section, so ``eval.eps=4/255``
changes it like it does for ``ltrobust eval``.
"""

from __future__ import annotations

import dataclasses
import io as _io
import logging
import time
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from .. import io
from ..config import fmt_fraction, parse_value, resolve_config
from ..errors import CheckpointError, ConfigError
from ..registry import ANALYSES
from ..run_folder import RunFolder

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class CommonOptions:
    """Options every analysis takes (``key=value`` on the command line)."""

    out: str | None = None  #: output folder; default ``<first run>/analysis`` (``./analysis`` without a run)
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    seed: int = 0  #: seeds the test subset, the attacks' random starts, t-SNE and sampled data
    batch_size: int = 256  #: images per attack / forward batch
    dpi: int = 200  #: resolution of the PNG (print quality)
    palette: bool = True  #: store the PNG with a 256-colour palette (several times smaller); false: full colour


def option_help(cls: type) -> str:
    """``name=default`` for every option of an Options dataclass."""
    return ", ".join(f"{f.name}={fmt_fraction(f.default)}" for f in fields(cls))  # 2/255, not 0.00784313725490196


def _coerce(key: str, text: str, tp: str) -> Any:
    """Parse the command-line text of option ``key`` into the field type ``tp`` (a string annotation)."""
    tp = tp.replace(" ", "")
    try:
        if tp == "str":
            return text
        if tp == "str|None":
            return None if text.lower() in ("", "none", "null") else text
        value = parse_value(text)
        if tp == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if tp == "int":
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError
            return int(value)
        if tp == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if tp.startswith("tuple["):
            inner = tp[len("tuple["):].split(",")[0]
            seq = value if isinstance(value, (list, tuple)) else [value]
            conv = {"int": int, "float": float, "str": str}[inner]
            if inner == "int" and any(not float(v).is_integer() for v in seq):
                raise TypeError
            return tuple(conv(v) for v in seq)
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"{key}={text!r} is not a valid {tp} (e.g. {key}=1,2,5 for a list).") from None
    raise ConfigError(f"option {key} has an unsupported type {tp}.")  # pragma: no cover - a coding error


def parse_options(kind: str, cls: type, overrides: Sequence[str], takes_runs: bool) -> tuple[Any, list[str]]:
    """Split ``key=value`` strings into the analysis' options (typed) and overrides for the runs.

    Analysis options win over run-config keys of the same leaf name (``seed``, ``batch_size``); use the
    dotted key (``eval.batch_size=...``) to reach the run's config. A key that is neither raises
    :class:`ConfigError` naming the valid options.
    """
    names = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    run_overrides: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r} (e.g. n_per_class=50).")
        key, text = (s.strip() for s in item.split("=", 1))
        if key in names:
            values[key] = _coerce(key, text, str(names[key].type))
            continue
        if takes_runs:
            try:
                resolve_config([item])  # a run setting (checkpoint=last, data_dir=..., eval.eps=...)
            except ConfigError as exc:
                raise ConfigError(f"unknown option {key!r} for `ltrobust analyze {kind}`. Its options: "
                                  f"{option_help(cls)}; anything else must be a run setting such as "
                                  f"checkpoint=last or data_dir=DIR ({exc})") from None
            run_overrides.append(item)
            continue
        raise ConfigError(f"unknown option {key!r} for `ltrobust analyze {kind}`. Its options: {option_help(cls)}.")
    return cls(**values), run_overrides


# --------------------------------------------------------------------------------------------- runs
def run_dir_of(path: str | Path) -> Path:
    """The run folder of a run folder or of a checkpoint file inside ``<run>/checkpoints/``."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.is_file():
        return RunFolder.of_checkpoint(p).root
    raise CheckpointError(f"{p} does not exist: pass a run folder (runs/NAME) or a checkpoint file (.pt).")


@dataclass
class RunContext:
    """One run given on the command line; the model and the data are loaded on first use."""

    path: Path
    overrides: tuple[str, ...]
    device: torch.device
    _data_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def run_dir(self) -> Path:
        return run_dir_of(self.path)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @cached_property
    def loaded(self):
        """The :class:`~ltrobust.evaluation.runs.LoadedRun` (weights, deployed model, config)."""
        from ..evaluation.runs import load_run

        return load_run(self.path, self.overrides, device=self.device)

    @cached_property
    def data(self):
        """The run's data set (built once per distinct data config and shared between runs)."""
        from ..data import build_data

        cfg = self.loaded.cfg.data
        key = repr(cfg)
        if key not in self._data_cache:  # load_run may already have built it (eval.adjust=tde)
            built = getattr(self.loaded, "data", None)
            self._data_cache[key] = built if built is not None else build_data(cfg, self.device)
        data = self._data_cache[key]
        if data.num_classes != len(self.loaded.class_counts):
            raise CheckpointError(f"{self.loaded.checkpoint} was trained with {len(self.loaded.class_counts)} "
                                  f"classes but data set {cfg.dataset} has {data.num_classes}; analyse it on the "
                                  f"data set it was trained on.")
        return data

    @property
    def class_counts(self) -> list[int]:
        return list(self.loaded.class_counts)

    @cached_property
    def groups(self) -> dict[str, list[int]]:
        """head / body / tail thirds, many / medium / few and the tail group (``metrics.class_groups``)."""
        from ..evaluation.metrics import class_groups

        return class_groups(self.class_counts, self.loaded.cfg.eval.tail_group or None)

    @property
    def label(self) -> str:
        cfg = self.loaded.cfg
        loss = "" if cfg.method.loss == "ce" else f"+{cfg.method.loss}"
        return f"{cfg.method.name}{loss} ({self.name})"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_dir": str(self.run_dir), "name": self.name}
        if "loaded" in self.__dict__:
            r = self.loaded
            out.update({"checkpoint": str(r.checkpoint), "checkpoint_epoch": r.epoch, "method": r.cfg.method.name,
                        "loss": r.cfg.method.loss, "dataset": r.cfg.data.dataset, "imbalance": r.cfg.data.imbalance,
                        "eval_adjust": r.cfg.eval.adjust, "class_counts": r.class_counts})
        return out


# ------------------------------------------------------------------------------------------ plug-in
class Analysis:
    """Base class of an analysis (see the module docstring)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = CommonOptions
    runs: ClassVar[str] = "one"  #: none | one | many
    #: figure files written beside the JSON (``png`` always; ``pdf`` for the figures papers print)
    formats: ClassVar[tuple[str, ...]] = ("png",)

    def compute(self, runs: Sequence[RunContext], opts: Any) -> dict[str, Any]:
        raise NotImplementedError

    def plot(self, result: dict[str, Any], opts: Any):
        raise NotImplementedError


#: keys of every analysis JSON that run_analysis writes itself
RESERVED_KEYS = frozenset({"kind", "options", "runs", "seconds", "versions", "checksum"})


def run_analysis(kind: str, runs: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> dict[str, Path]:
    """``ltrobust analyze KIND RUN... key=value``: compute one analysis, write its JSON and PNG.

    Args:
        kind: a name registered in :data:`~ltrobust.registry.ANALYSES` (``feature-norm``, ``embedding``,
            ``ae-drift``, ``attack-budget``, ``gaussian-theory``, ``confusion``).
        runs: run folders or checkpoint files (none for ``gaussian-theory``; several for
            ``attack-budget`` and ``ae-drift``).
        overrides: ``key=value`` strings: the analysis' options (``n_per_class=50``, ``out=DIR``) and run
            settings passed to :func:`~ltrobust.evaluation.runs.load_run` (``checkpoint=last``, ``data_dir=...``).

    Returns:
        ``{"png": Path, "json": Path}``, by default ``<first run>/analysis/<kind>.{png,json}``.

    Example::

        run_analysis("feature-norm", ["runs/at-bsl"], ["n_per_class=100"])
    """
    from ..evaluation.evaluator import library_versions
    from ..device import resolve_device

    cls = ANALYSES.get(kind)
    analysis = cls()
    opts, run_overrides = parse_options(kind, cls.Options, overrides, takes_runs=cls.runs != "none")
    if cls.runs == "none" and runs:
        raise ConfigError(f"`ltrobust analyze {kind}` needs no run; remove {', '.join(map(str, runs))} "
                          f"(options: {option_help(cls.Options)}).")
    if cls.runs != "none" and not runs:
        raise ConfigError(f"`ltrobust analyze {kind}` needs a run folder or checkpoint, e.g. "
                          f"`ltrobust analyze {kind} runs/NAME`.")
    if cls.runs == "one" and len(runs) > 1:
        raise ConfigError(f"`ltrobust analyze {kind}` takes one run, got {len(runs)}; run it once per run.")
    device = resolve_device(opts.device)
    cache: dict[str, Any] = {}
    contexts = [RunContext(Path(r), tuple(run_overrides), device, cache) for r in runs]
    t0 = time.perf_counter()
    result = analysis.compute(contexts, opts)
    clash = set(result) & RESERVED_KEYS
    if clash:  # pragma: no cover - a coding error in an analysis
        raise RuntimeError(f"analysis {kind} returns reserved keys {sorted(clash)}")
    out_dir = Path(opts.out) if opts.out else (contexts[0].run_dir / "analysis" if contexts else Path("analysis"))
    record = {"kind": kind, "options": dataclasses.asdict(opts), "runs": [c.describe() for c in contexts],
              **result, "seconds": round(time.perf_counter() - t0, 3), "versions": library_versions()}
    json_path, png_path = out_dir / f"{kind}.json", out_dir / f"{kind}.png"
    io.write_json(json_path, record)
    fig = analysis.plot(io.read_json(json_path), opts)
    save_figure(fig, png_path, opts.dpi, opts.palette)
    paths = {"png": png_path, "json": json_path}
    for fmt in cls.formats:
        if fmt != "png":
            paths[fmt] = save_vector(fig, out_dir / f"{kind}.{fmt}", fmt, opts.dpi)
    log.info("analysis %s: wrote %s", kind, ", ".join(str(p) for p in paths.values()))
    return paths


def replot(json_path: str | Path, png_path: str | Path | None = None, dpi: int | None = None) -> Path:
    """Redraw the figure of a stored analysis JSON (no model, data or attack is touched).

    Example::

        replot("runs/NAME/analysis/confusion.json", "confusion-300dpi.png", dpi=300)
    """
    record = io.read_json(json_path)
    cls = ANALYSES.get(record["kind"])
    opts = cls.Options(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["options"].items()})
    png = Path(png_path) if png_path is not None else Path(json_path).with_suffix(".png")
    fig = cls().plot(record, opts)
    save_figure(fig, png, dpi or opts.dpi, opts.palette)
    for fmt in cls.formats:
        if fmt != "png":
            save_vector(fig, png.with_suffix(f".{fmt}"), fmt, dpi or opts.dpi)
    return png


# ------------------------------------------------------------------------------------------ figures
def new_figure(width: float, height: float):
    """A matplotlib Figure not tied to pyplot (no global backend state, safe in threads and tests)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, path: Path, dpi: int, palette: bool = True) -> None:
    """Render ``fig`` as PNG and write it atomically.

    With ``palette`` the image is stored with an adaptive 256-colour palette: for line plots, scatter
    plots and heatmaps it looks the same and the file is several times smaller.
    """
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    data = buf.getvalue()
    if palette:
        from PIL import Image

        small = _io.BytesIO()
        Image.open(_io.BytesIO(data)).convert("RGB").quantize(colors=256).save(small, format="PNG", optimize=True)
        data = small.getvalue()
    io.atomic_write_bytes(path, data)


def save_vector(fig: Any, path: Path, fmt: str, dpi: int) -> Path:
    """Write ``fig`` as ``fmt`` (``pdf``, ``svg``) atomically, without a creation date (same bytes each time)."""
    buf = _io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, facecolor="white", metadata={"Date": None} if fmt in ("pdf", "svg") else None)
    io.atomic_write_bytes(path, buf.getvalue())
    return path


def class_colors(num_classes: int) -> list[Any]:
    """One colour per class: tab10 / tab20 for up to 20 classes, a continuous map beyond."""
    import matplotlib

    if num_classes <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(num_classes)]
    if num_classes <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(num_classes)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(i / max(num_classes - 1, 1)) for i in range(num_classes)]


# ---------------------------------------------------------------------------------- data and models
def per_class_subset(labels: torch.Tensor, n_per_class: int, seed: int = 0,
                     classes: Sequence[int] | None = None) -> torch.Tensor:
    """Sorted indices of up to ``n_per_class`` images of each class in ``classes`` (default: all).

    ``n_per_class <= 0`` takes every image of those classes. Each class's images are drawn by a seeded
    permutation, so the subset is a pure function of (labels, n_per_class, seed, classes).
    """
    labels = torch.as_tensor(labels).cpu()
    wanted = sorted(set(int(c) for c in classes)) if classes is not None else torch.unique(labels).tolist()
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in wanted:
        idx = torch.nonzero(labels == c).squeeze(1)
        if n_per_class > 0:
            idx = idx[torch.randperm(len(idx), generator=gen)[:n_per_class]]
        picked.append(idx)
    if not picked or sum(len(p) for p in picked) == 0:
        raise ConfigError(f"no test image of classes {wanted}: choose classes that the test split holds.")
    return torch.cat(picked).sort().values


def load_test_images(ctx: RunContext, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float test images in [0, 1] (B, C, H, W) and labels (B,) of ``ctx``'s run, on its device."""
    from ..evaluation.evaluator import images_of  # handles array and streaming splits alike

    return images_of(ctx.data.test, idx, ctx.device)


def iter_test_batches(ctx: RunContext, idx: torch.Tensor, batch_size: int):
    """``(k, x, y)`` for consecutive batches of the test images at ``idx`` (only one batch in memory)."""
    for k, start in enumerate(range(0, len(idx), batch_size)):
        x, y = load_test_images(ctx, idx[start:start + batch_size])
        yield k, x, y


def batch_seed(seed: int, k: int) -> int:
    """The attack seed of batch ``k``: ``seed * 100003 + k`` (reproducible random starts)."""
    return seed * 100003 + k


def attack_spec(ctx: RunContext, name: str, **changes: Any):
    """The named suite attack (``pgd20``, ``cw20``, ``aa``, ...) in the run's ``eval`` threat model."""
    from ..attacks import parse_attack

    ev = ctx.loaded.cfg.eval
    spec = parse_attack(name, eps=ev.eps, step_size=ev.step_size, norm=ev.norm)
    return dataclasses.replace(spec, **changes) if changes else spec


def adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: Any, batch_size: int,
                seed: int) -> torch.Tensor:
    """``run_attack`` over batches of ``x``; batch ``k`` is seeded :func:`batch_seed` ``(seed, k)``."""
    from ..attacks import run_attack

    if spec.family == "clean" or len(x) == 0:
        return x.clone()
    out = [run_attack(spec, model, x[i:i + batch_size], y[i:i + batch_size], seed=batch_seed(seed, i // batch_size))
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def batched(fn: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` applied to ``x`` in batches (no gradients), concatenated."""
    if len(x) == 0:
        return fn(x[:1])[:0]
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def features(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Penultimate features (N, D) of the trained network (eval mode, restored after)."""
    from ..attacks.pgd import eval_mode

    with eval_mode(model):
        return batched(lambda b: model.features(b).float(), x, batch_size)


def logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits (N, C) of ``model`` (eval mode, restored after)."""
    from ..attacks.pgd import eval_mode

    with eval_mode(model):
        return batched(lambda b: model(b).float(), x, batch_size)


def parse_classes(text: str, num_classes: int, groups: dict[str, list[int]]) -> list[int]:
    """``all``, a group name (``head``, ``body``, ``tail``, ``tail_group``, ``many``, ``medium``, ``few``)
    or a comma-separated list of class indices (``0,5,9``)."""
    text = text.strip().lower()
    if text == "all":
        return list(range(num_classes))
    if text in groups:
        if not groups[text]:
            raise ConfigError(f"classes={text}: that group is empty for this run's class counts.")
        return list(groups[text])
    try:
        classes = [int(c) for c in text.split(",") if c.strip() != ""]
    except ValueError:
        raise ConfigError(f"classes={text!r}: use all, a group ({', '.join(groups)}) or indices such as "
                          f"classes=0,5,9.") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or not classes:
        raise ConfigError(f"classes={text!r}: class indices must lie in 0..{num_classes - 1}.")
    return sorted(set(classes))


def summary_stats(values: np.ndarray) -> dict[str, Any]:
    """n, mean, std, and the 10/25/50/75/90% quantiles of a 1-D array (empty: n only)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0}
    q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "q10": float(q[0]),
            "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "q90": float(q[4])}
