"""Named attacks of the evaluation suite (SPEC 4), each a configuration of :func:`~.pgd.pgd` or of AutoAttack.

Names: ``clean``, ``fgsm``, ``bim<k>`` (iterative FGSM from the clean image, no random start; Kurakin et al.,
ICLR 2017 workshop), ``pgd<k>`` (CE, uniform start), ``mim<k>`` (momentum 1.0), ``cw<k>``
(CW_inf margin, kappa 50), ``adaptive`` / ``adaptive<k>`` (PGD on CE of logits x10, REAT Sec. 5.2;
AT-BSL's LSA), ``aa`` (AutoAttack standard), ``apgd`` (APGD-CE + APGD-T, RoBal's subset), ``square``
(Square alone, the black-box check of the audit), ``cw_l2`` (the optimisation-based Carlini-Wagner l_2
attack at the authors' setting: up to 10,000 Adam iterations per binary-search round, early abort) /
``cw_l2-<k>`` (k iterations per round; ``cw_l2-100`` is the fast setting; always l_2). A ``-l2`` suffix switches
to the l_2 threat model (``pgd20-l2``, ``cw100-l2``: PGD on the CW margin in the l_2 ball). Families are registered in
:data:`~ltrobust.registry.ATTACKS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..device import flush_denormals
from ..errors import ConfigError
from ..registry import ATTACKS
from .pgd import pgd
from .threat import threat_model

_NAME = re.compile(r"^(?P<family>[a-z]+?(?:_l2)?)-?(?P<steps>\d+)?(?P<l2>-l2)?$")


@dataclass(frozen=True)
class AttackSpec:
    """A fully resolved attack: what :func:`run_attack` executes."""

    name: str
    family: str
    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 0
    step_size: float = 2 / 255
    objective: str = "ce"
    objective_kwargs: tuple[tuple[str, Any], ...] = ()
    random_start: bool = True
    momentum: float = 0.0
    restarts: int = 1
    aa_version: str = ""


@ATTACKS.register("clean")
def _clean(**base: Any) -> AttackSpec:
    return AttackSpec(family="clean", **base)


@ATTACKS.register("fgsm")
def _fgsm(steps: int | None = None, **base: Any) -> AttackSpec:
    return AttackSpec(family="fgsm", steps=1, random_start=False, **{**base, "step_size": base["eps"]})


@ATTACKS.register("bim")
def _bim(steps: int | None = None, **base: Any) -> AttackSpec:
    # BIM / I-FGSM (Kurakin, Goodfellow and Bengio, "Adversarial examples in the physical world", ICLR 2017
    # workshop): PGD on CE started at the clean image; 10 steps by default (torchattacks' BIM).
    return AttackSpec(family="bim", steps=10 if steps is None else steps, random_start=False, **base)


@ATTACKS.register("pgd")
def _pgd(steps: int | None = None, **base: Any) -> AttackSpec:
    return AttackSpec(family="pgd", steps=steps or 20, **base)


@ATTACKS.register("mim")
def _mim(steps: int | None = None, **base: Any) -> AttackSpec:
    return AttackSpec(family="mim", steps=steps or 20, momentum=1.0, **base)


@ATTACKS.register("cw")
def _cw(steps: int | None = None, **base: Any) -> AttackSpec:
    return AttackSpec(family="cw", steps=steps or 20, objective="cw", objective_kwargs=(("kappa", 50.0),), **base)


@ATTACKS.register("adaptive")
def _adaptive(steps: int | None = None, **base: Any) -> AttackSpec:
    return AttackSpec(family="adaptive", steps=steps or 20, objective="ce", objective_kwargs=(("scale", 10.0),), **base)


@ATTACKS.register("cw_l2")
def _cw_l2(steps: int | None = None, **base: Any) -> AttackSpec:
    # the authors' l_2 settings (attacks.cw_l2: up to 10,000 iterations per round); cw_l2-K: K iterations (the
    # fast cw_l2-100); eps bounds the minimal perturbation found
    from .cw_l2 import REFERENCE_STEPS

    return AttackSpec(family="cw_l2", steps=steps or REFERENCE_STEPS, random_start=False,
                      objective_kwargs=(("binary_steps", 9), ("lr", 0.01), ("initial_const", 1e-3), ("kappa", 0.0)),
                      **base)


@ATTACKS.register("aa")
def _aa(steps: int | None = None, **base: Any) -> AttackSpec:
    return AttackSpec(family="aa", aa_version="standard", **base)


@ATTACKS.register("apgd")
def _apgd(steps: int | None = None, **base: Any) -> AttackSpec:
    return AttackSpec(family="apgd", aa_version="apgd-ce-t", **base)


@ATTACKS.register("square")
def _square(steps: int | None = None, **base: Any) -> AttackSpec:
    return AttackSpec(family="square", aa_version="square", **base)


def parse_attack(name: str, eps: float = 8 / 255, step_size: float = 2 / 255, norm: str = "linf",
                 l2_eps: float = 0.5, l2_step_size: float | None = None) -> AttackSpec:
    """Resolve an attack name such as ``pgd20``, ``cw100``, ``mim20``, ``aa`` or ``pgd20-l2``."""
    m = _NAME.match(name.strip().lower())
    if not m or m.group("family") not in ATTACKS:
        raise ConfigError(ATTACKS.unknown_message(name) + " Attack names take a step count, e.g. pgd20, cw100.")
    family = m.group("family")
    l2 = bool(m.group("l2")) or norm == "l2" or family.endswith("_l2")
    steps = int(m.group("steps")) if m.group("steps") else None
    if steps is not None and steps < 0:
        raise ConfigError(f"attack {name!r}: the step count must be >= 0.")
    if l2:
        eps_ = eps if norm == "l2" else l2_eps
        step = l2_step_size if l2_step_size is not None else (step_size if norm == "l2" else eps_ / 4)
        base = dict(name=name, norm="l2", eps=eps_, step_size=step)
    else:
        base = dict(name=name, norm="linf", eps=eps, step_size=step_size)
    return ATTACKS.get(family)(steps=steps, **base)


def parse_attacks(names: Sequence[str], **kw: Any) -> list[AttackSpec]:
    return [parse_attack(n, **kw) for n in names]


def check_attacks(eval_cfg: Any) -> list[AttackSpec]:
    """Resolve every attack of an ``EvalConfig`` (``attacks``, ``eps``, ``step_size``, ``norm``): an unknown
    name fails with a close match before hours of training, not at the evaluation after them."""
    return parse_attacks(eval_cfg.attacks, eps=eval_cfg.eps, step_size=eval_cfg.step_size, norm=eval_cfg.norm)


def run_attack(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
               num_classes: int | None = None, observer: Any = None, aa_events: Any = None) -> torch.Tensor:
    """Run one resolved attack on a batch; returns adversarial images (clean images for ``clean``).

    ``observer``: passed to the PGD loop (:data:`ltrobust.attacks.pgd.Observer`); only attacks that are a
    configuration of :func:`~.pgd.pgd` (fgsm, bim, pgd, mim, cw, adaptive) accept one. ``aa_events``: passed
    to AutoAttack (``aa``, ``apgd``, ``square``), which reports the start and end of each of its attacks to it
    (:func:`~.autoattack.run_autoattack`'s ``observer``, a progress bar's hook); the other attacks ignore it."""
    if observer is not None and (spec.aa_version or spec.family in ("clean", "cw_l2")):
        raise ConfigError(f"attack {spec.name!r} is not a configuration of the PGD loop, so it cannot be observed "
                          f"step by step: use fgsm, bimK, pgdK, mimK, cwK or adaptiveK.")
    if spec.family == "clean":
        return x
    flush_denormals(x.device)
    if spec.aa_version:
        from .autoattack import run_autoattack

        x_adv, _ = run_autoattack(model, x, y, eps=spec.eps, norm="Linf" if spec.norm == "linf" else "L2",
                                  version=spec.aa_version, batch_size=x.shape[0], seed=seed, observer=aa_events)
        return x_adv
    if spec.family == "cw_l2":
        from .cw_l2 import cw_l2

        return cw_l2(model, x, y, spec.eps, steps=spec.steps, **dict(spec.objective_kwargs))
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return pgd(model, x, y, threat_model(spec.norm, spec.eps), steps=spec.steps, step_size=spec.step_size,
               objective=spec.objective, random_start=spec.random_start, momentum=spec.momentum,
               restarts=spec.restarts, objective_kwargs=dict(spec.objective_kwargs), generator=gen,
               observer=observer)


COLUMN_TITLES = {"clean": "Clean", "fgsm": "FGSM", "worst_case": "Worst case", "aa": "AA", "apgd": "APGD-CE+T",
                 "adaptive": "Adaptive x10", "square": "Square"}


def column_title(name: str) -> str:
    """Table title of an attack name: ``pgd20`` -> ``PGD-20``, ``aa`` -> ``AA``, ``cw100-l2`` -> ``CW-100-l2``,
    ``adaptive`` -> ``Adaptive x10``, ``adaptive50`` -> ``Adaptive x10 PGD-50``."""
    if name in COLUMN_TITLES:
        return COLUMN_TITLES[name]
    if name.startswith("adaptive"):
        return f"Adaptive x10 PGD-{name[len('adaptive'):]}".replace("--", "-")
    for fam, title in (("pgd", "PGD"), ("mim", "MIM"), ("cw", "CW"), ("bim", "BIM")):
        if name.startswith(fam):
            return f"{title}-{name[len(fam):]}".replace("--", "-")
    return name
