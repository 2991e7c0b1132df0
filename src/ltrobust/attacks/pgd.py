"""The one projected-gradient loop; FGSM, PGD-k, MIM, CW_inf and the l_2 attacks configure it.

Signature in adv-lib's manner: a plain function ``(model, inputs, labels, **options) -> adv_inputs``.
Every training method's inner maximisation and every white-box attack of the evaluation suite call
:func:`pgd`, so no PGD loop is written twice.

Guarantees (tested): gradients are taken with respect to the input only (``torch.autograd.grad``; no
``.grad`` of any parameter is touched), the model's train / eval mode is restored, every adversarial
example lies inside the threat model's ball and inside [0, 1], and there is no host synchronisation
inside the step loop (restarts synchronise once between restarts, only when there are several).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .objectives import Objective, get_objective
from .threat import ThreatModel

#: Objective options whose first dimension is the batch (indexed when restarts attack a subset).
PER_SAMPLE_OPTIONS = frozenset({"target_logits"})

#: Where the attack starts (``random_start``). ``uniform``: uniform in the ball, clipped to [0, 1] (Madry et
#: al.); ``normal``: ``x + 0.001 * N(0, I)``, the start of the TRADES code that AT-BSL, RoBal and TAET's code
#: copy, unclipped before the first gradient as there; ``one_sided``: ``x + eps * U[0, 1)`` per coordinate, the
#: start of RoBal's training code (Wu et al., CVPR 2021: ``x + epsilon * torch.rand``; only the positive half of the
#: l_inf box), unclipped before the first gradient as there; ``uniform_unclipped``: ``x + U(-eps, eps)`` left
#: outside [0, 1] until the first step clips it (l_inf; REAT's code); ``none``: the clean image.
START_KINDS = ("uniform", "normal", "one_sided", "uniform_unclipped", "none")
#: The standard deviation of the ``normal`` start (the official codes' 0.001, in pixel units).
NORMAL_START_STD = 0.001

#: BatchNorm while the attack runs (``bn_mode``). ``eval``: running statistics (SPEC 3); ``train``: batch
#: statistics, the running statistics updated by every attack step, as a loop that attacks after
#: ``model.train()`` does (Wong et al.'s Fast-AT code); ``batch``: batch statistics with the running
#: statistics left untouched (``track_running_stats`` off, as RobustLT's code attacks).
BN_MODES = ("eval", "train", "batch")


def start_kind(random_start: bool | str) -> str:
    """The start kind of ``random_start``: ``True`` is ``uniform``, ``False`` / ``None`` is ``none``."""
    if random_start is True:
        return "uniform"
    if random_start is False or random_start is None:
        return "none"
    if random_start not in START_KINDS:
        raise ConfigError(f"random_start={random_start!r}: use one of {', '.join(START_KINDS)} (or True / False).")
    return random_start


def initial_delta(threat: ThreatModel, x: torch.Tensor, random_start: bool | str,
                  generator: torch.Generator | None = None, start_eps: float | None = None) -> torch.Tensor:
    """The perturbation the attack starts from (see :data:`START_KINDS`); a ``uniform`` start lies in the ball
    of radius ``start_eps`` when given (kept there and in [0, 1], not projected onto ``threat``), else in
    ``threat``'s own."""
    kind = start_kind(random_start)
    if kind == "uniform":
        return (threat if start_eps is None else threat.with_eps(float(start_eps))).random_start(x, generator)
    if kind == "normal":
        return NORMAL_START_STD * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "one_sided":
        eps = threat.eps if start_eps is None else start_eps
        return eps * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "uniform_unclipped":
        eps = threat.eps if start_eps is None else start_eps
        if threat.norm != "linf":
            raise ConfigError("random_start='uniform_unclipped' is an l_inf start (REAT's code): use uniform for "
                              f"the {threat.norm} ball.")
        if isinstance(eps, torch.Tensor):  # per-sample radii (B, 1, ..., 1)
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return (2.0 * u - 1.0) * eps
        # uniform_(-eps, eps): the same draws and rounding as torch.FloatTensor(shape).uniform_(-eps, eps)
        return torch.empty_like(x, memory_format=torch.contiguous_format).uniform_(-float(eps), float(eps),
                                                                                   generator=generator)
    return torch.zeros_like(x)

#: ``observer(step, x_adv, grad)``: called at every step of the loop, before the update, with the point the
#: gradient was taken at (B, C, H, W) and the raw input gradient of the objective there (before momentum
#: or the sign). It must not synchronise with the host if the caller cares about speed (keep its numbers
#: on the device, e.g. append ``(grad == 0).flatten(1).float().mean(1)`` to a list).
Observer = Callable[[int, torch.Tensor, torch.Tensor], None]


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True):
    """Put ``model`` in eval mode (BatchNorm uses running statistics) and restore its mode after."""
    was_training = model.training
    if enabled:
        model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def attack_mode(model: nn.Module, bn_mode: str = "eval"):
    """The model's mode while an attack runs (see :data:`BN_MODES`); mode and BatchNorm flags restored after."""
    if bn_mode not in BN_MODES:
        raise ConfigError(f"bn_mode={bn_mode!r}: use one of {', '.join(BN_MODES)}.")
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in norms]
    model.train(bn_mode != "eval")
    if bn_mode == "batch":
        for m in norms:  # batch statistics, running buffers neither used nor updated
            m.track_running_stats = False
    try:
        yield model
    finally:
        for m, t in zip(norms, tracked):
            m.track_running_stats = t
        model.train(was_training)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 / fp16 autocast on ``device`` when ``dtype`` is given, a no-op otherwise."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int,
         step_size: float, objective: Objective, kwargs: Mapping[str, Any], random_start: str,
         momentum: float, targeted: bool, amp_dtype: torch.dtype | None,
         generator: torch.Generator | None, observer: Observer | None = None,
         start_eps: float | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
    if start is None:
        delta = initial_delta(threat, x, random_start, generator, start_eps)
    else:
        delta = start.detach().clone()
    velocity = torch.zeros_like(x) if momentum else None
    sign = -1.0 if targeted else 1.0
    for step in range(steps):
        delta.requires_grad_(True)
        with autocast(x.device, amp_dtype):
            logits = model(x + delta)  # (B, C)
        loss = sign * objective(logits, y, **kwargs)  # (B,)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        if observer is not None:  # only when asked: an analysis watching the loop (no cost otherwise)
            observer(step, x + delta.detach(), grad)
        with torch.no_grad():
            if velocity is not None:  # MIM (Dong et al. 2018): accumulate l_1-normalised gradients
                grad = grad / grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                velocity.mul_(momentum).add_(grad)
                grad = velocity
            delta = threat.clip(x, delta + threat.step(grad, step_size))
    if steps == 0 and (random_start in ("normal", "one_sided", "uniform_unclipped") or start_eps is not None
                       or start is not None):
        delta = threat.clip(x, delta)  # a start outside the ball (normal; a start ball of its own; a given
        # start) is projected at the end
    return (x + delta).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int = 10,
        step_size: float | torch.Tensor = 2 / 255, objective: str | Objective = "ce",
        random_start: bool | str = True, momentum: float = 0.0, restarts: int = 1, targeted: bool = False,
        objective_kwargs: Mapping[str, Any] | None = None, bn_mode: str = "eval",
        amp_dtype: torch.dtype | None = None, generator: torch.Generator | None = None,
        observer: Observer | None = None, start_eps: float | None = None,
        start: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient ascent on ``objective`` inside ``threat`` (Madry et al. 2018).

    Args:
        model: maps images (B, C, H, W) in [0, 1] to logits (B, K); attacked as deployed.
        x: clean images (B, C, H, W) in [0, 1].
        y: labels (B,), or target labels when ``targeted``.
        threat: :class:`~ltrobust.attacks.threat.Linf` or :class:`~ltrobust.attacks.threat.L2`.
        steps: number of gradient steps (0 returns ``x`` or the random start, inside the ball).
        step_size: step length in the threat model's norm (pixel units): a float, or a tensor (B, 1, ..., 1)
            of per-sample steps (with a per-sample ball, :meth:`~ltrobust.attacks.threat.ThreatModel.per_sample`).
        objective: name in :data:`~ltrobust.attacks.objectives.OBJECTIVES` or a callable
            ``(logits, y, **kw) -> (B,)`` to maximise.
        random_start: where to start (:data:`START_KINDS`): ``True`` / ``"uniform"`` uniformly inside the
            ball, ``"normal"`` at ``x + 0.001 * N(0, I)`` (the TRADES code's start), ``"one_sided"`` at
            ``x + eps * U[0, 1)`` (RoBal's training code), ``"uniform_unclipped"`` at ``x + U(-eps, eps)`` not
            clipped to [0, 1] before the first gradient (REAT's code), ``False`` / ``"none"`` at ``x``.
        momentum: MIM decay factor (0: plain PGD).
        restarts: further runs from new random starts, each only on points not yet misclassified.
        targeted: minimise the objective towards ``y`` instead.
        objective_kwargs: options of the objective (``kappa``, ``weights``, ``target_logits``, ...).
        bn_mode: BatchNorm while attacking (:data:`BN_MODES`): ``"eval"`` running statistics, ``"train"``
            batch statistics with the running ones updated, ``"batch"`` batch statistics with the running
            ones untouched. The model's mode is restored afterwards.
        amp_dtype: e.g. ``torch.bfloat16`` for autocast during the attack (training-time attacks).
        generator: random generator for the random start (default: the global one).
        observer: ``observer(step, x_adv, grad)`` called at each step (see :data:`Observer`; restarts call
            it again from step 0 on the subset they attack); None, the default, adds nothing to the loop.
        start_eps: radius of the ``uniform`` start when it differs from the projection radius (None: the
            threat model's own). RobustLT's code starts every sample uniformly in the global eps ball and
            projects each onto its class radius from the first step on.
        start: a given starting perturbation ``delta`` (B, C, H, W) instead of a random one (the first
            run; restarts draw ``random_start``). It is used as given, not clipped before the first
            gradient, so another code's start is reproduced exactly (``benchmarks/parity``).

    Returns:
        Adversarial images (B, C, H, W), detached, inside the ball and inside [0, 1].

    Example::

        x_adv = pgd(model, x, y, Linf(8 / 255), steps=20, step_size=2 / 255)
    """
    obj = get_objective(objective)
    kwargs = dict(objective_kwargs or {})
    kind = start_kind(random_start)
    x = x.detach()
    if start is not None and start.shape != x.shape:
        raise ConfigError(f"start has shape {tuple(start.shape)} but the images have {tuple(x.shape)}: give one "
                          "starting perturbation per image.")
    with attack_mode(model, bn_mode):
        x_adv = _run(model, x, y, threat, steps, step_size, obj, kwargs, kind, momentum,
                     targeted, amp_dtype, generator, observer, start_eps, start)
        for _ in range(restarts - 1):
            with torch.no_grad(), autocast(x.device, amp_dtype):
                pred = model(x_adv).argmax(1)
            todo = (pred != y) if targeted else (pred == y)
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            sub_kw = {k: (v[idx] if k in PER_SAMPLE_OPTIONS else v) for k, v in kwargs.items()}
            x_adv[idx] = _run(model, x[idx], y[idx], threat, steps, step_size, obj, sub_kw,
                              kind if kind != "none" else "uniform", momentum, targeted, amp_dtype, generator,
                              observer, start_eps)
    return x_adv


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, **kw: Any) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2015): one step of size eps from the clean image."""
    return pgd(model, x, y, threat, steps=1, step_size=threat.eps, random_start=False, **kw)
