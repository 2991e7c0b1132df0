"""Gradient-masking audit of a deployed model (SPEC 4): is its PGD robust accuracy trustworthy?

Five checks, each on the same class-balanced sample of test images and the deployed logits (inference
adjustments included); every attack runs *standalone* on the clean-correct images:

(a) **Logit re-scaling** (RoBal, Wu et al. CVPR 2021, Sec. 3.3 and Fig. 2): the deployed logits are
    multiplied by ``10^-kappa`` for ``kappa in {-2, -1, 0, 1, 2}`` (for a linear head without bias this is
    exactly ``W / 10^kappa``). Predictions, hence clean accuracy, are unchanged, and so is the true
    robustness; AutoAttack's DLR losses are scale invariant and stay flat, while PGD on cross-entropy
    does not: with logits x100 the softmax saturates in float32 (``p_y = 1`` exactly, every other
    probability underflows) so the input gradient is exactly zero and PGD cannot move; with logits
    x0.01 the softmax is almost uniform and the CE gradient points at the mean logit rather than at the
    closest wrong class. Flag ``logit_rescaling`` when PGD-20's robust accuracy at some kappa differs
    from kappa 0 by more than ``rescale`` points (PGD-20 numbers of this model depend on the logit
    scale); ``rescaled_pgd_stronger`` when a rescaled PGD is lower than the deployed one by more than
    ``rescale`` points (the deployed scale hides gradients: PGD-20 overestimates robustness);
    ``rescaling_aa`` when even AutoAttack's accuracy spans more than ``aa_range`` points.
    The sweep's AutoAttack is APGD-CE + APGD-T (``sweep=apgd``, RoBal's subset) by default.
(b) **Zero gradients**: the percentage of images whose input gradient of CE (deployed scale) is exactly
    zero in every pixel; flag ``zero_gradients`` above ``zero_grad`` percent.
(c) **PGD vs AutoAttack**: PGD-20 minus AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) robust
    accuracy; flag ``pgd_aa_gap`` above ``pgd_aa_gap`` points.
(d) **Adaptive x10** (REAT, Li et al. ICCV 2023, Sec. 5.2; AT-BSL's LSA): PGD-20 minus PGD-20 on CE of
    the logits x10; flag ``adaptive_gap`` above ``adaptive_gap`` points.
(e) **Square vs white-box** (Croce & Hein 2020's black-box check): Square (5000 queries) on the images
    that every white-box attack of the audit (PGD-20 and the sweep's AutoAttack at every kappa, adaptive
    x10, the AutoAttack of (c); an AutoAttack version containing Square does not count) left robust; flag ``square_gain`` when it breaks more than ``square_gain`` percent of the sample.

Thresholds, their reasons and the JSON layout: ``docs/evaluation.md``. :func:`audit_model` works on any
model and tensors; :func:`audit_run` (``ltrobust audit RUN``) loads a run, audits its deployed model and
writes ``<run>/eval/audit.json`` and ``audit.md`` (``audit-<tag>.json`` for a deployed model other than
``best``); :func:`~ltrobust.evaluation.runs.evaluate_run` embeds the flags in every later result of the same
deployed model, and :func:`audit_run` adds them to the results already there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import io
from ..attacks.pgd import eval_mode
from ..attacks.suite import AttackSpec, parse_attack
from ..errors import ConfigError
from ..run_folder import RunFolder
from .evaluator import _spec_dict, attack_flags, derive_seed, library_versions, predict

log = logging.getLogger(__name__)

__all__ = ["AuditOptions", "LogitScaled", "audit_checks", "audit_markdown", "audit_model", "audit_run",
           "zero_gradient_mask"]


@dataclass(frozen=True)
class AuditOptions:
    """Settings of the audit (``audit.<key>=value`` on the command line). Thresholds are in percentage
    points of robust accuracy on the audited sample, except ``zero_grad`` and ``square_gain`` (percent
    of the sample)."""

    n_samples: int = 1000  #: class-balanced sample of the test set (0: all)
    kappas: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)  #: logits x 10^-kappa (0 is always added)
    pgd_steps: int = 20  #: PGD-k on CE (step eval.step_size, uniform start) and the adaptive x10 attack
    sweep: str = "apgd"  #: AutoAttack of the sweep: apgd (APGD-CE + APGD-T) | aa (standard)
    aa: str = "aa"  #: AutoAttack of check (c): aa (standard) | apgd
    square: bool = True  #: run check (e)
    rescale: float = 2.0  #: (a) PGD change under re-scaling, points
    aa_range: float = 1.0  #: (a) AutoAttack spread across kappas, points
    aa_flat: float = 0.5  #: (a) AutoAttack counts as flat within this spread (reported, not a flag)
    zero_grad: float = 1.0  #: (b) images with an exactly zero input gradient, percent
    pgd_aa_gap: float = 5.0  #: (c) PGD-20 minus AutoAttack, points
    adaptive_gap: float = 2.0  #: (d) PGD-20 minus adaptive x10, points
    square_gain: float = 1.0  #: (e) images Square breaks that white-box attacks missed, percent

    def __post_init__(self) -> None:
        if self.sweep not in ("apgd", "aa") or self.aa not in ("apgd", "aa"):
            raise ConfigError(f"audit.sweep={self.sweep!r}, audit.aa={self.aa!r}: use apgd (APGD-CE + APGD-T) "
                              "or aa (AutoAttack standard).")
        if self.pgd_steps < 1:
            raise ConfigError(f"audit.pgd_steps={self.pgd_steps} must be >= 1.")
        if not self.kappas or not all(math.isfinite(k) for k in self.kappas):
            raise ConfigError(f"audit.kappas={self.kappas}: give finite exponents, e.g. audit.kappas=-2,-1,0,1,2.")

    @classmethod
    def from_overrides(cls, overrides: Sequence[str]) -> "AuditOptions":
        """Options from ``audit.<key>=value`` strings (``audit.kappas=-2,0,2``, ``audit.aa=apgd``)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for item in overrides:
            key, _, value = item.partition("=")
            name = key.removeprefix("audit.")
            if name not in fields:
                raise ConfigError(f"unknown audit option {key!r}; audit options: "
                                  f"{', '.join('audit.' + f for f in fields)}.")
            kw[name] = _parse(fields[name], value, key)
        return cls(**kw)


def _parse(f: dataclasses.Field, value: str, key: str) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("tuple"):
            return tuple(float(v) for v in value.replace("[", "").replace("]", "").split(",") if v.strip())
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not a valid {kind}.") from None
    return value


class LogitScaled(nn.Module):
    """``factor * model(x)``: the deployed logits re-scaled (``factor = 10^-kappa``); argmax unchanged."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model = model
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.factor  # (B, C)

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


def zero_gradient_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool: True where the input gradient of CE(model(x), y) is exactly zero in every pixel.

    Computed in eval mode and float32, per sample (BatchNorm uses running statistics, so summing the
    batch's losses gives each image its own gradient); the model's mode is restored.
    """
    out = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].detach().float().requires_grad_(True)
            loss = F.cross_entropy(model(xb).float(), y[i:i + batch_size], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
            out.append((grad.flatten(1) == 0).all(1))
    return torch.cat(out)


def _pct(mask: torch.Tensor, n: int) -> float:
    return 100.0 * int(mask.sum()) / n


# --------------------------------------------------------------------------------------- the audit
def audit_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_counts: Sequence[int],
                eps: float = 8 / 255, step_size: float = 2 / 255, norm: str = "linf",
                options: AuditOptions | None = None, seed: int = 0, batch_size: int = 256,
                progress: bool = False) -> dict[str, Any]:
    """Run the gradient-masking audit (checks (a) to (e), module docstring) on a deployed model.

    Args:
        model: the deployed model, images (N, C_in, H, W) in [0, 1] -> logits (N, C); attacked in float32
            and eval mode.
        x: test images (N, C_in, H, W) in [0, 1] (e.g. a class-balanced sample).
        y: labels (N,).
        class_counts: training images per class (C,); balanced robust accuracies use the classes.
        eps, step_size, norm: the threat model and PGD step (pixel units). Defaults: 8/255, 2/255, linf.
        options: :class:`AuditOptions` (kappas, attacks, thresholds). Default: ``AuditOptions()``.
        seed: seed of every attack (the same random start at every kappa). Default: 0.
        batch_size: images per attack call. Default: 256.
        progress: show a progress bar.

    Returns:
        A JSON-ready dict: ``rescaling`` (one row per kappa: ``clean``, ``pgd``, ``aa`` and their balanced
        versions, ``zero_grad``), ``robust`` (PGD-20, AA, adaptive, white-box, worst case), ``zero_grad``,
        ``square``, ``checks`` (per check: value, threshold, flagged, message), ``flags`` (names of the
        flagged checks), ``options``, ``attacks``, ``versions``. Layout: ``docs/evaluation.md``.

    Example::

        res = audit_model(deployed, x, y, class_counts, options=AuditOptions(aa="apgd"))
        res["flags"]        # e.g. ['logit_rescaling']
        [(r["kappa"], r["pgd"], r["aa"]) for r in res["rescaling"]]
    """
    from tqdm.auto import tqdm

    from .metrics import summarize

    opts = options or AuditOptions()
    t0 = time.perf_counter()
    x = x.detach().float()
    n, num_classes = len(y), len(class_counts)
    if n == 0:
        raise ConfigError("audit_model got no images.")
    kappas = sorted(set(float(k) for k in opts.kappas) | {0.0})
    adaptive = "adaptive" if opts.pgd_steps == 20 else f"adaptive{opts.pgd_steps}"  # same attack as in eval
    specs = {"pgd": parse_attack(f"pgd{opts.pgd_steps}", eps=eps, step_size=step_size, norm=norm),
             "sweep": parse_attack(opts.sweep, eps=eps, step_size=step_size, norm=norm),
             "aa": parse_attack(opts.aa, eps=eps, step_size=step_size, norm=norm),
             "adaptive": parse_attack(adaptive, eps=eps, step_size=step_size, norm=norm),
             "square": parse_attack("square", eps=eps, step_size=step_size, norm=norm)}

    def balanced(mask: torch.Tensor) -> float:
        return summarize(mask.cpu().numpy(), y.cpu().numpy(), class_counts, num_classes)["balanced_accuracy"]

    def run(key: str, net: nn.Module, todo: torch.Tensor) -> torch.Tensor:
        ok, _ = attack_flags(specs[key], net, x, y, todo, seed=derive_seed(seed, "audit", key),
                             batch_size=batch_size, num_classes=num_classes)
        return ok

    # Square is black-box: an AutoAttack version that contains it does not count as a white-box attack in (e)
    sweep_has_square = "square" in _aa_plan(specs["sweep"], num_classes)
    aa_has_square = "square" in _aa_plan(specs["aa"], num_classes)
    bar = tqdm(total=len(kappas) + 3, desc="audit", disable=not progress, leave=False, dynamic_ncols=True)
    rows, whitebox, every, clean_ok = [], None, None, None  # every: robust to every attack so far
    zero0 = None
    try:
        for kappa in kappas:
            bar.set_postfix_str(f"kappa {kappa:g}", refresh=False)
            net = LogitScaled(model, 10.0 ** -kappa)
            ok_k = predict(net, x, batch_size) == y
            pgd_ok, aa_ok = run("pgd", net, ok_k), run("sweep", net, ok_k)
            zero = zero_gradient_mask(net, x, y, batch_size)
            if kappa == 0.0:
                clean_ok, pgd0, sweep0, zero0 = ok_k, pgd_ok, aa_ok, zero
            whitebox = (ok_k if whitebox is None else whitebox) & pgd_ok & (aa_ok | sweep_has_square)
            every = (ok_k if every is None else every) & pgd_ok & aa_ok  # AEs of a rescaled model fool it too
            rows.append({"kappa": kappa, "factor": 10.0 ** -kappa, "clean": _pct(ok_k, n), "pgd": _pct(pgd_ok, n),
                         "aa": _pct(aa_ok, n), "pgd_balanced": balanced(pgd_ok), "aa_balanced": balanced(aa_ok),
                         "zero_grad": _pct(zero, n)})
            log.info("audit kappa=%g: clean %.2f, PGD-%d %.2f, %s %.2f, zero gradients %.2f%%", kappa,
                     rows[-1]["clean"], opts.pgd_steps, rows[-1]["pgd"], specs["sweep"].name, rows[-1]["aa"],
                     rows[-1]["zero_grad"])
            bar.update(1)
        assert clean_ok is not None and whitebox is not None and every is not None and zero0 is not None
        bar.set_postfix_str("adaptive", refresh=False)
        adaptive_ok = run("adaptive", model, clean_ok)
        whitebox &= adaptive_ok
        bar.update(1)
        bar.set_postfix_str(specs["aa"].name, refresh=False)
        aa_ok = sweep0 if opts.aa == opts.sweep else run("aa", model, clean_ok)
        if not aa_has_square:
            whitebox &= aa_ok
        bar.update(1)
        square_ok = None
        if opts.square:
            bar.set_postfix_str("square", refresh=False)
            square_ok = run("square", model, whitebox)
        bar.update(1)
    finally:
        bar.close()

    worst = every & adaptive_ok & aa_ok & whitebox
    if square_ok is not None:
        worst &= square_ok
    robust = {"clean": _pct(clean_ok, n), "pgd": _pct(pgd0, n), "aa": _pct(aa_ok, n),
              "adaptive": _pct(adaptive_ok, n), "whitebox": _pct(whitebox, n), "worst_case": _pct(worst, n)}
    robust_balanced = {k: balanced(v) for k, v in (("clean", clean_ok), ("pgd", pgd0), ("aa", aa_ok),
                                                   ("adaptive", adaptive_ok), ("whitebox", whitebox),
                                                   ("worst_case", worst))}
    square = None
    if square_ok is not None:
        broken = whitebox & ~square_ok
        square = {"whitebox_robust": int(whitebox.sum()), "broken": int(broken.sum()), "gain": _pct(broken, n),
                  "positions": broken.nonzero().squeeze(1).tolist()}  # rows of x
    summary = {"rescaling": rows, "robust": robust,
               "zero_grad": {"percent": _pct(zero0, n), "count": int(zero0.sum())}, "square": square,
               "aa_is_whitebox": not aa_has_square}
    checks = audit_checks(summary, opts, names={k: _title(s) for k, s in specs.items()})
    from ..attacks.autoattack import autoattack_plan, autoattack_version

    return {
        "n": n, "eps": eps, "norm": norm, "step_size": step_size, "seed": seed, "class_counts": list(class_counts),
        "test_counts": np.bincount(y.cpu().numpy(), minlength=num_classes).tolist(),
        "attacks": {k: {**_spec_dict(s), "title": _title(s),
                        **({"plan": autoattack_plan(num_classes, s.aa_version)} if s.aa_version else {})}
                    for k, s in specs.items()},
        **summary, "robust_balanced": robust_balanced,
        "checks": checks, "flags": [k for k, c in checks.items() if c["flagged"]],
        "options": dataclasses.asdict(opts), "versions": library_versions(), "autoattack": autoattack_version(),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _aa_plan(spec: AttackSpec, num_classes: int) -> list[str]:
    from ..attacks.autoattack import autoattack_plan

    return list(autoattack_plan(num_classes, spec.aa_version)["attacks"]) if spec.aa_version else []


def _title(spec: AttackSpec) -> str:
    from .evaluator import column_title

    return {"aa": "AutoAttack (standard)", "apgd": "APGD-CE + APGD-T"}.get(spec.name, column_title(spec.name))


# ------------------------------------------------------------------------------------------ checks
def audit_checks(summary: dict[str, Any], options: AuditOptions | None = None,
                 names: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The five checks from the audit's numbers: ``{name: {"value", "threshold", "flagged", "message"}}``.

    ``summary`` holds ``rescaling`` (rows with ``kappa``, ``clean``, ``pgd``, ``aa``), ``robust``
    (``pgd``, ``aa``, ``adaptive``), ``zero_grad`` (``percent``) and ``square`` (``gain``, ``broken``,
    ``whitebox_robust``; None when Square did not run). Pure function (tested with hand-made numbers).
    """
    o = options or AuditOptions()
    nm = {"pgd": "PGD-20", "sweep": "AutoAttack", "aa": "AutoAttack", "adaptive": "adaptive x10"} | (names or {})
    rows = sorted(summary["rescaling"], key=lambda r: r["kappa"])
    base = next(r for r in rows if r["kappa"] == 0.0)
    others = [r for r in rows if r["kappa"] != 0.0]
    checks: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, threshold: float, flagged: bool, message: str, **extra: Any) -> None:
        checks[name] = {"value": value, "threshold": threshold, "flagged": bool(flagged), "message": message, **extra}

    def at(r: dict[str, Any]) -> str:
        return f"kappa={r['kappa']:g} (logits x{r['factor'] if 'factor' in r else 10 ** -r['kappa']:g})"

    # (a) logit re-scaling
    aa_vals = [r["aa"] for r in rows]
    aa_spread = max(aa_vals) - min(aa_vals)
    rise = max(others, key=lambda r: r["pgd"], default=base)
    drop = min(others, key=lambda r: r["pgd"], default=base)
    change = max(rise["pgd"] - base["pgd"], base["pgd"] - drop["pgd"], 0.0)
    stronger = max(base["pgd"] - drop["pgd"], 0.0)
    aa_note = (f"{nm['sweep']} stays flat ({min(aa_vals):.2f}-{max(aa_vals):.2f}%)" if aa_spread <= o.aa_flat
               else f"{nm['sweep']} spans {min(aa_vals):.2f}-{max(aa_vals):.2f}%")
    if rise["pgd"] - base["pgd"] >= base["pgd"] - drop["pgd"]:
        detail = f"rises from {base['pgd']:.2f}% at kappa=0 to {rise['pgd']:.2f}% at {at(rise)}"
    else:
        detail = f"falls from {base['pgd']:.2f}% at kappa=0 to {drop['pgd']:.2f}% at {at(drop)}"
    add("logit_rescaling", change, o.rescale, change > o.rescale,
        f"{nm['pgd']} robust accuracy depends on the logit scale: it {detail}, while {aa_note}; "
        f"{nm['pgd']} numbers of this model are not a reliable robustness estimate, report AutoAttack."
        if change > o.rescale else f"{nm['pgd']} within {change:.2f} points across kappa; {aa_note}.",
        pgd_rise=max(rise["pgd"] - base["pgd"], 0.0), pgd_drop=stronger, aa_spread=aa_spread,
        aa_flat=aa_spread <= o.aa_flat)
    add("rescaled_pgd_stronger", stronger, o.rescale, stronger > o.rescale,
        f"{nm['pgd']} on rescaled logits ({at(drop)}: {drop['pgd']:.2f}%) beats {nm['pgd']} on the deployed "
        f"logits ({base['pgd']:.2f}%): the deployed logit scale hides gradients, {nm['pgd']} overestimates "
        "robustness." if stronger > o.rescale else
        f"no rescaled {nm['pgd']} is more than {o.rescale:g} points below the deployed one.")
    add("rescaling_aa", aa_spread, o.aa_range, aa_spread > o.aa_range,
        f"{nm['sweep']} robust accuracy spans {aa_spread:.2f} points across kappa although its losses are scale "
        "invariant: even it depends on the logit scale here (check for float saturation / non-finite logits)."
        if aa_spread > o.aa_range else f"{nm['sweep']} spans {aa_spread:.2f} points across kappa.")
    clean_spread = max(r["clean"] for r in rows) - min(r["clean"] for r in rows)
    checks["logit_rescaling"]["clean_spread"] = clean_spread
    # (b) zero gradients
    zg = summary["zero_grad"]["percent"]
    add("zero_gradients", zg, o.zero_grad, zg > o.zero_grad,
        f"{zg:.2f}% of the images have an exactly zero input gradient of CE at the deployed scale: gradient-based "
        "attacks cannot move them (saturated softmax or non-differentiable layers)." if zg > o.zero_grad
        else f"{zg:.2f}% of the images have an exactly zero input gradient.")
    # (c) PGD vs AutoAttack
    rob = summary["robust"]
    gap = rob["pgd"] - rob["aa"]
    add("pgd_aa_gap", gap, o.pgd_aa_gap, gap > o.pgd_aa_gap,
        f"{nm['aa']} ({rob['aa']:.2f}%) is {gap:.2f} points below {nm['pgd']} ({rob['pgd']:.2f}%): "
        f"{nm['pgd']} overestimates robustness." if gap > o.pgd_aa_gap
        else f"{nm['pgd']} {rob['pgd']:.2f}% vs {nm['aa']} {rob['aa']:.2f}% (gap {gap:.2f} points).")
    # (d) adaptive x10
    agap = rob["pgd"] - rob["adaptive"]
    add("adaptive_gap", agap, o.adaptive_gap, agap > o.adaptive_gap,
        f"{nm['adaptive']} ({rob['adaptive']:.2f}%) is {agap:.2f} points below {nm['pgd']} ({rob['pgd']:.2f}%): "
        "the logit scale of this model weakens PGD (a scale-sensitive head)." if agap > o.adaptive_gap
        else f"{nm['pgd']} {rob['pgd']:.2f}% vs {nm['adaptive']} {rob['adaptive']:.2f}% (gap {agap:.2f} points).")
    # (e) Square after the white-box attacks
    sq = summary.get("square")
    if sq is not None:
        add("square_gain", sq["gain"], o.square_gain, sq["gain"] > o.square_gain,
            f"Square breaks {sq['broken']} of the {sq['whitebox_robust']} images every white-box attack left robust "
            f"({sq['gain']:.2f}% of the sample): the gradients of this model mislead white-box attacks."
            if sq["gain"] > o.square_gain else
            f"Square breaks {sq['broken']} of the {sq['whitebox_robust']} white-box-robust images "
            f"({sq['gain']:.2f}% of the sample).", broken=sq["broken"])
    return checks


# ------------------------------------------------------------------------------------- reporting
def audit_markdown(result: dict[str, Any]) -> str:
    """The audit as markdown: the re-scaling sweep, the checks with thresholds, the flags."""
    atk = result.get("attacks", {})
    pgd_t = atk.get("pgd", {}).get("title", "PGD-20")
    sweep_t = atk.get("sweep", {}).get("title", "AutoAttack")
    title = f"# Gradient-masking audit `{result.get('tag', '')}`: {result['n']} test images"
    lines = [title, "",
             f"eps {result['eps']:.6g} ({result['norm']}), step {result['step_size']:.6g}; every attack standalone on "
             "the clean-correct images; accuracies in %.", "",
             f"Logit re-scaling (logits x 10^-kappa; RoBal Fig. 2). AutoAttack column: {sweep_t}.", "",
             f"| kappa | logit factor | clean | {pgd_t} | {sweep_t} | {pgd_t} bal. | {sweep_t} bal. | zero grad. |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rescaling"]:
        lines.append(f"| {r['kappa']:g} | {r['factor']:g} | {r['clean']:.2f} | {r['pgd']:.2f} | {r['aa']:.2f} | "
                     f"{r['pgd_balanced']:.2f} | {r['aa_balanced']:.2f} | {r['zero_grad']:.2f} |")
    rob, bal = result["robust"], result.get("robust_balanced", {})
    aa_t = atk.get("aa", {}).get("title", "AutoAttack")
    ad_t = atk.get("adaptive", {}).get("title", "Adaptive x10")
    lines += ["", "Robust accuracy at the deployed scale (overall / balanced):", "",
              "| clean | " + f"{pgd_t} | {aa_t} | {ad_t} | white-box worst case | worst case (with Square) |",
              "|---|---|---|---|---|---|",
              "| " + " | ".join(f"{rob[k]:.2f} / {bal.get(k, float('nan')):.2f}"
                               for k in ("clean", "pgd", "aa", "adaptive", "whitebox", "worst_case")) + " |",
              "", "| check | value | threshold | flagged |", "|---|---|---|---|"]
    for name, c in result["checks"].items():
        v = c["value"]
        lines.append(f"| {name} | {v:.2f} | {c['threshold']:g} | {'**yes**' if c['flagged'] else 'no'} |"
                     if isinstance(v, (int, float)) else f"| {name} | - | {c['threshold']:g} | no |")
    flags = result.get("flags", [])
    lines += ["", "Flags: " + (", ".join(flags) if flags else "none")]
    for name in flags:
        lines.append(f"- {name}: {result['checks'][name]['message']}")
    return "\n".join(lines) + "\n"


def audit_run(path: str | Path, overrides: Sequence[str] = (), device: str | None = None,
              progress: bool = True) -> dict[str, Any]:
    """``ltrobust audit RUN_OR_CHECKPOINT``: audit a run's deployed model and write the result.

    Args:
        path: a run folder or a checkpoint file.
        overrides: run settings as for ``ltrobust eval`` (``checkpoint=last``, ``eval.adjust=...``,
            ``eval.eps``, ``eval.step_size``, ``eval.norm``, ``eval.seed``, ``eval.batch_size``) and audit
            options ``audit.<key>=value`` (:class:`AuditOptions`: ``audit.n_samples=1000``,
            ``audit.kappas=-2,-1,0,1,2``, ``audit.sweep=apgd``, ``audit.aa=aa``, thresholds).
        device: ``cpu``, ``cuda``, ... Default: auto.
        progress: show a progress bar.

    Writes ``<run>/eval/audit.json`` and ``audit.md`` (``audit-<tag>.json`` / ``.md`` when the deployed model
    is not the default ``best``: another checkpoint or an ``eval.adjust``), adds the flags to the eval
    results of the same deployed model already in ``<run>/eval/``, and returns the result dict.

    Example::

        res = audit_run("runs/robal", ["audit.n_samples=500"])
        res["flags"], [(r["kappa"], r["pgd"], r["aa"]) for r in res["rescaling"]]
    """
    from ..config import to_dict
    from ..data import build_data
    from .evaluator import balanced_subset, images_of, markdown_table
    from .runs import audit_path, audit_summary, deployed_description, load_run
    from ..device import resolve_device

    audit_over = [o for o in overrides if o.startswith("audit.")]
    run_over = [o for o in overrides if not o.startswith("audit.")]
    opts = AuditOptions.from_overrides(audit_over)
    dev = resolve_device(device or "auto")
    run = load_run(path, run_over, device=dev)
    cfg = run.cfg
    data = run.data if run.data is not None else build_data(cfg.data, dev)
    idx = balanced_subset(data.test.labels, opts.n_samples, cfg.eval.seed)
    x, y = images_of(data.test, idx, dev)
    result = audit_model(run.deployed, x, y, run.class_counts, eps=cfg.eval.eps, step_size=cfg.eval.step_size,
                         norm=cfg.eval.norm, options=opts, seed=cfg.eval.seed, batch_size=cfg.eval.batch_size,
                         progress=progress)
    tag = run.tag
    result = {"tag": tag, **result, "run": str(run.run_dir), "checkpoint": str(run.checkpoint),
              "checkpoint_epoch": run.epoch, "method": cfg.method.name, "loss": cfg.method.loss,
              "dataset": cfg.data.dataset, "deployed": deployed_description(run.deployed),
              "indices_sha256": _sha(idx), "config": to_dict(cfg), "device": str(dev)}
    if result["square"] is not None:  # the test-set indices of the images only Square broke
        result["square"]["test_indices"] = idx[result["square"]["positions"]].tolist()
    io.write_json(audit_path(run.run_dir, tag), result)
    io.atomic_write_text(audit_path(run.run_dir, tag, ".md"), audit_markdown(result))
    log.info("audit of %s: flags %s", tag, ", ".join(result["flags"]) or "none")
    eval_json = RunFolder(run.run_dir).eval_result(tag)
    if eval_json.exists():  # flags appear in the eval reports already written
        try:
            ev = io.read_json(eval_json)
        except Exception as exc:  # noqa: BLE001 - a corrupt eval result is redone by ltrobust eval
            log.warning("not adding the audit flags to %s: %s", eval_json, exc)
        else:
            ev["audit"] = audit_summary(run.run_dir, tag)
            io.write_json(eval_json, ev)
            io.atomic_write_text(eval_json.with_suffix(".md"), markdown_table(ev))
    return result


def _sha(idx: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(idx.cpu().numpy().astype(np.int64).tobytes()).hexdigest()
