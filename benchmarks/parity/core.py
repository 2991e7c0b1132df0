"""The shared machinery of the parity harness: result rows, comparisons, key mappings, the report.

A check returns :class:`Row` objects; each compares one quantity between the authors' code ("theirs") and
ltrobust ("ours") at one level (``data``, ``schedule``, ``step``, ``eval``) and carries a verdict:

- tensors: ``max_abs = max |theirs - ours|`` and ``max_rel = max_abs / max |theirs|`` (relative to the
  tensor's scale, so entries near zero do not blow it up); ``equal`` when ``max_rel`` is within the
  tolerance of the dtype both sides ran in (:data:`TOLERANCE`: 1e-5 in float32, the issue's bound, and
  1e-10 in float64);
- scalars, schedules, counts, index sets, settings: ``equal`` only when identical.

A row that ``differs`` carries ``reason`` (why: a bug or leak in their code we do not copy, a choice of
ours), ``effect`` (measured, on one step or on the evaluation) and ``option`` (the ltrobust setting that
reproduces their behaviour, where one makes sense). A method module gives these for the differences it
knows (:class:`Known`); a difference it does not know stays ``unexplained``, and the CLI exits non-zero.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

#: max relative difference (``max |a - b| / max |a|``) accepted as equal, per dtype both sides ran in
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 1e-3}
LEVELS = ("data", "schedule", "step", "eval")


class ParityError(Exception):
    """A problem the user can fix (no checkout, unknown method, a checkout of another layout): the CLI
    prints ``error: <message>`` on one line and exits 2."""


@dataclass(frozen=True)
class Known:
    """Why a quantity differs, its effect and the ltrobust option that reproduces their behaviour.

    ``where``: a regex on the row's setting and dtype (``"<setting> <dtype>"``) that limits the explanation,
    e.g. ``"fp32"`` for float32 rounding, so that the same quantity differing in float64 stays unexplained.
    """

    reason: str
    effect: str = ""
    option: str = ""
    where: str = ""


@dataclass
class Row:
    """One compared quantity (see the module docstring)."""

    level: str
    quantity: str
    verdict: str  #: equal | differs
    setting: str = ""  #: the preset / variant / architecture the row is about
    dtype: str = ""  #: fp32 | fp64 for tensors; "" for exact comparisons
    max_abs: float | None = None
    max_rel: float | None = None
    theirs: Any = None  #: their value (scalars, settings; short)
    ours: Any = None
    detail: str = ""  #: what was compared, where the worst entry is, counts
    reason: str = ""
    effect: str = ""
    option: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level {self.level!r} is not one of {LEVELS}")
        if self.verdict not in ("equal", "differs"):
            raise ValueError(f"verdict {self.verdict!r}: use equal or differs")

    @property
    def equal(self) -> bool:
        return self.verdict == "equal"

    def explain(self, known: Known | None) -> "Row":
        """Attach the reason, effect and option of a known difference (only to a row that differs)."""
        if not self.equal and known is not None:
            self.reason = self.reason or known.reason
            self.effect = self.effect or known.effect
            self.option = self.option or known.option
        return self


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dtype, str(dtype).replace("torch.", ""))


def tensor_diff(theirs: torch.Tensor, ours: torch.Tensor) -> tuple[float, float]:
    """``(max_abs, max_rel)`` of two tensors of one shape (computed in float64, on the CPU)."""
    a = theirs.detach().to("cpu", torch.float64)
    b = ours.detach().to("cpu", torch.float64)
    if a.numel() == 0:
        return 0.0, 0.0
    max_abs = float((a - b).abs().max())
    scale = float(a.abs().max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, max_rel


def compare_tensor(level: str, quantity: str, theirs: torch.Tensor, ours: torch.Tensor, setting: str = "",
                   detail: str = "") -> Row:
    """One tensor pair: exact for integer / bool tensors, within :data:`TOLERANCE` for floats."""
    if tuple(theirs.shape) != tuple(ours.shape):
        return Row(level, quantity, "differs", setting, detail=f"shapes differ: theirs {tuple(theirs.shape)}, "
                   f"ours {tuple(ours.shape)}. {detail}".strip())
    max_abs, max_rel = tensor_diff(theirs, ours)
    if theirs.is_floating_point():
        tol = TOLERANCE.get(theirs.dtype, 1e-5)
        return Row(level, quantity, "equal" if max_rel <= tol else "differs", setting, _dtype_name(theirs.dtype),
                   max_abs, max_rel, detail=detail)
    return Row(level, quantity, "equal" if max_abs == 0 else "differs", setting, "", max_abs, max_rel,
               detail=detail)


def compare_tensors(level: str, quantity: str, theirs: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor],
                    setting: str = "", detail: str = "") -> Row:
    """Many tensors under the same keys (a state dict, mapped): one row, the worst key named."""
    if set(theirs) != set(ours):
        only_t, only_o = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        return Row(level, quantity, "differs", setting, detail=f"keys differ: only theirs {only_t[:3]}, only ours "
                   f"{only_o[:3]}")
    worst, worst_key, rows = None, "", []
    for k in theirs:
        r = compare_tensor(level, quantity, theirs[k], ours[k], setting)
        rows.append(r)
        if worst is None or (r.max_rel or 0) > (worst.max_rel or 0) or (not r.equal and worst.equal):
            worst, worst_key = r, k
    if worst is None:
        return Row(level, quantity, "equal", setting, detail="no tensors")
    n_diff = sum(not r.equal for r in rows)
    dtypes = sorted({r.dtype for r in rows if r.dtype})
    text = f"{len(rows)} tensors, worst {worst_key}" + (f"; {n_diff} differ" if n_diff else "")
    return Row(level, quantity, "differs" if n_diff else "equal", setting, ",".join(dtypes),
               max(r.max_abs or 0.0 for r in rows), worst.max_rel, detail=f"{text}. {detail}".strip(". ").strip())


def compare_exact(level: str, quantity: str, theirs: Any, ours: Any, setting: str = "", detail: str = "") -> Row:
    """Scalars, schedules, counts, settings: equal only when identical (lists: the first differences named)."""
    t, o = _plain(theirs), _plain(ours)
    if t == o:
        return Row(level, quantity, "equal", setting, theirs=_short(t), ours=_short(o), detail=detail)
    diff = ""
    if isinstance(t, list) and isinstance(o, list):
        where = [i for i in range(max(len(t), len(o))) if i >= len(t) or i >= len(o) or t[i] != o[i]]
        diff = f"{len(where)} of {max(len(t), len(o))} entries differ, first at index {where[0]}: theirs " \
               f"{t[where[0]] if where[0] < len(t) else '-'}, ours {o[where[0]] if where[0] < len(o) else '-'}"
        if len(t) != len(o):
            diff += f"; lengths {len(t)} and {len(o)}"
    return Row(level, quantity, "differs", setting, theirs=_short(t), ours=_short(o),
               detail="; ".join(x for x in (diff, detail) if x))


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return v.tolist()
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _short(v: Any, limit: int = 12) -> Any:
    """A value small enough for the JSON row (long lists cut, with their length)."""
    if isinstance(v, list) and len(v) > limit:
        return {"first": v[:limit], "len": len(v)}
    return v


def predictions_agree(level: str, quantity: str, theirs: torch.Tensor, ours: torch.Tensor, setting: str = "",
                      detail: str = "") -> Row:
    """Per-image correctness (bool (N,)) of two evaluations: equal when every image agrees."""
    t, o = theirs.bool().cpu(), ours.bool().cpu()
    n_diff = int((t != o).sum())
    text = (f"{len(t)} images: theirs {int(t.sum())} correct, ours {int(o.sum())}; {n_diff} disagree "
            f"({int((t & ~o).sum())} correct only in theirs, {int((o & ~t).sum())} only in ours)")
    return Row(level, quantity, "equal" if n_diff == 0 else "differs", setting, theirs=int(t.sum()),
               ours=int(o.sum()), detail=f"{text}. {detail}".strip(". ").strip())


# --------------------------------------------------------------------------------------- mapping
@dataclass(frozen=True)
class KeyMap:
    """How their state-dict keys become ours: regex substitutions applied in order, each to the result of the
    previous one (``(r"^linear\\.", "head."), (r"^(?!head\\.)", "backbone.")``).

    ``unused``: their keys (regex) with no counterpart because their forward never reads them (a check should
    verify they receive no gradient); ``ours_only``: our keys (regex) without a counterpart, each with the value
    it must hold for the two models to compute the same function (e.g. the identity normalisation).
    """

    rules: tuple[tuple[str, str], ...]
    unused: tuple[str, ...] = ()
    ours_only: Mapping[str, float] = field(default_factory=dict)

    def ours_key(self, key: str) -> str:
        for pattern, repl in self.rules:
            key = re.sub(pattern, repl, key)
        return key


def map_state(theirs: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor], keymap: KeyMap) -> dict[str, str]:
    """Their key -> our key for every tensor, checked: every key of theirs is mapped (or declared unused),
    every key of ours is hit once (or declared ours-only and holding its declared value), shapes equal.
    Raises :class:`ParityError` naming the first problem."""
    mapping: dict[str, str] = {}
    for k, v in theirs.items():
        if any(re.search(p, k) for p in keymap.unused):
            continue
        o = keymap.ours_key(k)
        if o not in ours:
            raise ParityError(f"their key {k} maps to {o}, which our model does not have")
        if tuple(ours[o].shape) != tuple(v.shape):
            raise ParityError(f"{k} {tuple(v.shape)} and our {o} {tuple(ours[o].shape)} differ in shape")
        if o in mapping.values():
            raise ParityError(f"two of their keys map to our {o}")
        mapping[k] = o
    hit = set(mapping.values())
    for o, t in ours.items():
        if o in hit:
            continue
        value = next((val for p, val in keymap.ours_only.items() if re.search(p, o)), None)
        if value is None:
            raise ParityError(f"our key {o} has no counterpart in theirs and is not declared ours-only")
        if not torch.all(t == value):
            raise ParityError(f"our {o} must be {value} for the models to match, it holds {t.flatten()[:3].tolist()}")
    return mapping


def load_mapped(model: nn.Module, theirs: Mapping[str, torch.Tensor], mapping: Mapping[str, str]) -> None:
    """Copy their tensors into ``model`` under the mapped keys (dtype and memory format of ours kept)."""
    state = model.state_dict()
    with torch.no_grad():
        for k, o in mapping.items():
            state[o].copy_(theirs[k])


def mapped(theirs: Mapping[str, torch.Tensor], mapping: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Their tensors under our keys (for :func:`compare_tensors`)."""
    return {o: theirs[k] for k, o in mapping.items()}


def snapshot(model: nn.Module, which: str) -> dict[str, torch.Tensor]:
    """Detached copies of a model's ``weights`` (parameters), ``grads`` (parameters' .grad), ``buffers``."""
    if which == "weights":
        return {k: p.detach().clone() for k, p in model.named_parameters()}
    if which == "grads":
        return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    if which == "buffers":
        return {k: b.detach().clone() for k, b in model.named_buffers()}
    raise ValueError(which)


# ---------------------------------------------------------------------------------------- report
@dataclass
class Report:
    """All rows of one method's run, with what was compared; written as JSON."""

    method: str
    repository: str
    commit: str
    expected_commit: str
    command: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: the run's options (levels, sizes, checkpoint, images, seed): a result is replaced only by one with these
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, rows: Row | Iterable[Row]) -> None:
        self.rows.extend([rows] if isinstance(rows, Row) else list(rows))

    @property
    def unexplained(self) -> list[Row]:
        return [r for r in self.rows if not r.equal and not r.reason]

    def level_summary(self, level: str) -> str:
        """``equal`` or ``differs: <quantity> (<reason>; effect ...; option ...)``, for the docs table."""
        rows = [r for r in self.rows if r.level == level]
        if not rows:
            return "not run"
        bad = [r for r in rows if not r.equal]
        if not bad:
            return f"equal ({len(rows)} rows)"
        seen: dict[str, list[str]] = {}
        for r in bad:
            seen.setdefault(r.reason or "unexplained", []).append(r.quantity)
        parts = []
        for reason, qs in seen.items():
            r = next(x for x in bad if (x.reason or "unexplained") == reason)
            extra = "; ".join(x for x in (f"effect: {r.effect}" if r.effect else "",
                                          f"option: `{r.option}`" if r.option else "") if x)
            more = f" (+{len(qs) - 1})" if len(qs) > 1 else ""
            parts.append(f"{qs[0]}{more}: {reason}" + (f" [{extra}]" if extra else ""))
        return f"differs in {len(bad)} of {len(rows)} rows: " + " / ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method, "repository": self.repository, "official_commit": self.commit,
            "expected_commit": self.expected_commit, "command": self.command, "date": date.today().isoformat(),
            "written": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "settings": self.settings,
            "seconds": round(self.seconds, 1), "machine": _machine(), "stand_ins": self.stand_ins,
            "notes": self.notes,
            "summary": {lvl: self.level_summary(lvl) for lvl in LEVELS},
            "rows": [_row_json(r) for r in self.rows],
        }

    def write(self, out_dir: str | Path) -> Path:
        """Atomically, as ``parity-<method>-<date>.json``; a result of the same day computed with other settings
        (or without recorded settings) is kept, and this one goes to the next free ``...-<date>-<k>.json``."""
        stem = f"parity-{self.method}-{date.today().isoformat()}"
        out, k = Path(out_dir) / f"{stem}.json", 1
        while out.exists() and json.loads(out.read_text()).get("settings") != self.settings:
            k += 1
            out = Path(out_dir) / f"{stem}-{k}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, default=_json_default) + "\n")
        tmp.replace(out)
        return out


def _row_json(r: Row) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    for k in ("max_abs", "max_rel"):
        if d[k] is not None:
            d[k] = float(f"{d[k]:.3e}") if math.isfinite(d[k]) else str(d[k])
    return {k: v for k, v in d.items() if v not in (None, "")}


def _json_default(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def _machine() -> dict[str, Any]:
    import numpy
    import torchvision

    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "native_bf16": any(f in flags for f in ("avx512_bf16", "amx_bf16")),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__}


def docs_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table of docs/parity.md from result JSONs (one row per method, one column per level)."""
    lines = ["| method (official commit) | " + " | ".join(LEVELS) + " |", "|---" * (len(LEVELS) + 1) + "|"]
    for res in results:
        head = f"{res['method']} ({res['repository']}@{str(res['official_commit'])[:7]})"
        cells = [str(res["summary"].get(lvl, "not run")).replace("|", "/") for lvl in LEVELS]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
