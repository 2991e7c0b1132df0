"""Long-tailed classification losses (SPEC 3, "Long-tailed losses"), as pure functions and as LOSSES entries.

Every loss is a function ``loss(logits (B, C), targets (B,) int64, class_counts (C,), ..., reduction)``
computed in float32 (``widen(logits)``; float64 logits stay float64), so it gives the same value under bf16
autocast; the device comes from ``logits``. The general form is RoBal's (Wu et al., CVPR 2021, Eq. 3)::

    L'(x, y) = -r_w(y) * log softmax(g(z))_y

with a class re-weighting ``r_w`` (CB, RW, DRW) and / or a logit transform ``g`` (bias: balanced softmax;
margin: LDAM; temperature: CAT); Wu et al., CVPR 2021, Table 1 and Table S5 list each one with the settings RoBal's
study used.

Reductions. ``"none"`` returns the per-sample loss ``r_w(y_i) * l_i`` (B,); ``"sum"`` its sum;
``"mean"`` is the *weighted* mean ``sum_i r_w(y_i) l_i / sum_i r_w(y_i)`` whenever class weights are in
play, i.e. exactly what ``F.cross_entropy(..., weight=w)`` returns. That is the reduction of the
LDAM-DRW code (Cao et al. 2019), whose DRW stage the published numbers come from, and of the REAT code;
without weights it is the plain mean.

Registered losses (``method=pgd_at loss=bsl tau=1.0`` on the command line)::

    ce      cross-entropy
    bsl     balanced softmax CE(z + tau log pi, y)
    ldam    LDAM margins ∝ n_c^(-1/4), optional deferred re-weighting (DRW)
    focal   focal loss -(1 - p_y)^gamma log p_y
    cb      class-balanced effective-number weights (CB-focal with gamma > 0)
    cat     class-aware temperature CE(z_c (n_c / n_max)^gamma, y)
    rw      inverse-frequency re-weighting

Each is a class ``Loss(class_counts, options=None, total_epochs=1, **option_overrides)`` with a frozen
``Options`` dataclass, ``__call__(logits, targets, reduction="mean")``, ``attack_loss(logits, targets)``
(per-sample loss to maximise, for ``attack.loss_mode=inner|both``), ``adjust_logits(logits)`` and
``on_epoch_start(epoch)``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..device import widen
from ..errors import ConfigError
from ..registry import LOSSES

_REDUCTIONS = ("mean", "none", "sum")
#: the two forms of the focal loss (:func:`focal_loss`)
FOCAL_FORMS = ("softmax", "sigmoid")


# ------------------------------------------------------------------------------------------ helpers
def as_counts(class_counts: Sequence[float] | torch.Tensor, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Training images per class as a 1-D tensor (C,) on ``device``; checks that every count is > 0.

    The check runs on host values only (lists, arrays, CPU tensors): a tensor already on an accelerator
    is taken as is, so that a training step never waits for the device.
    """
    if isinstance(class_counts, torch.Tensor) and class_counts.device.type != "cpu":
        counts = class_counts.to(dtype=dtype)
    else:
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if counts.ndim != 1 or counts.numel() == 0:
            raise ConfigError(f"class_counts must be a non-empty 1-D sequence (one count per class), "
                              f"got shape {tuple(counts.shape)}.")
        bad = (counts <= 0) | ~torch.isfinite(counts)
        if bool(bad.any()):
            cls = bad.nonzero().flatten().tolist()
            raise ConfigError(f"class_counts must be positive and finite; classes {cls} have "
                              f"{counts[bad].tolist()} training images. Drop empty classes from the data "
                              "set or merge them before training a long-tailed loss.")
        counts = counts.to(dtype=dtype)
    return counts if device is None else counts.to(device)


def log_prior(class_counts: Sequence[float] | torch.Tensor,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``log pi_c = log(n_c / sum_j n_j)``, (C,), computed in float64 and returned as ``dtype``."""
    counts = as_counts(class_counts, dtype=torch.float64)
    return torch.log(counts / counts.sum()).to(dtype=dtype, device=device)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction={reduction!r}: use one of {', '.join(_REDUCTIONS)}.")


def _reduce(per_sample: torch.Tensor, reduction: str, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a per-sample loss (B,) that already includes ``sample_weights`` (weighted mean for "mean")."""
    _check_reduction(reduction)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if sample_weights is None:
        return per_sample.mean()
    return per_sample.sum() / sample_weights.sum()


def _class_weights(weight: Sequence[float] | torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=widen(like).dtype, device=like.device)
    if w.ndim != 1 or w.numel() != like.shape[1]:
        raise ConfigError(f"weight must hold one value per class ({like.shape[1]}), got shape {tuple(w.shape)}.")
    return w


def _weighted_ce(z: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                 reduction: str) -> torch.Tensor:
    """``w_y * CE(z, y)`` per sample (B,), reduced; ``z`` is float32 (B, C)."""
    _check_reduction(reduction)
    loss = F.cross_entropy(z, targets, reduction="none")  # (B,)
    if weight is None:
        return _reduce(loss, reduction)
    w = weight[targets]  # (B,)
    return _reduce(w * loss, reduction, w)


# ---------------------------------------------------------------------------------------- weights
def class_balanced_weights(class_counts: Sequence[float] | torch.Tensor, beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019), normalised to sum to C.

    ``w_c = (1 - beta) / (1 - beta^{n_c})`` (the inverse effective number ``E_c = (1 - beta^{n_c}) / (1 - beta)``),
    then ``w <- C * w / sum(w)`` as in the authors' code (and LDAM-DRW's, RoBal's). beta = 0 gives all
    ones; beta -> 1 gives inverse class frequency (used for beta = 1). Wu et al., CVPR 2021, Table S5: beta = 0.9999.

    Args:
        class_counts: training images per class (C,).
        beta: in [0, 1].

    Returns:
        (C,) float32 tensor on the CPU, summing to C.

    Example::

        w = class_balanced_weights([5000, 500, 50])   # tail class gets the largest weight
    """
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"beta={beta} must lie in [0, 1] (e.g. 0.9999).")
    n = as_counts(class_counts, dtype=torch.float64)  # (C,)
    if beta == 1.0:
        w = 1.0 / n
    else:
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * n.numel()).to(torch.float32)


def inverse_frequency_weights(class_counts: Sequence[float] | torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Re-weighting ``w_c ∝ n_c^{-power}`` normalised to sum to C (power 1: RW; 0.5: "RW smooth").

    Returns:
        (C,) float32 tensor on the CPU.
    """
    n = as_counts(class_counts, dtype=torch.float64)
    w = n.pow(-float(power))
    return (w / w.sum() * n.numel()).to(torch.float32)


def drw_weights(epoch: int, class_counts: Sequence[float] | torch.Tensor, start_epoch: int,
                beta: float = 0.9999) -> torch.Tensor:
    """Deferred re-weighting (Cao et al. 2019, LDAM-DRW): ones before ``start_epoch``, CB weights after.

    Epochs count from 0; the weights switch on at ``epoch >= start_epoch`` (LDAM-DRW: 160 of 200).

    Returns:
        (C,) float32 tensor on the CPU.
    """
    if epoch < start_epoch:
        return torch.ones(len(as_counts(class_counts)), dtype=torch.float32)
    return class_balanced_weights(class_counts, beta)


def ldam_margins(class_counts: Sequence[float] | torch.Tensor, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM per-class margins ``m_c ∝ n_c^{-1/4}`` scaled so that the largest is ``max_margin``.

    Returns:
        (C,) float32 tensor on the CPU.
    """
    m = as_counts(class_counts, dtype=torch.float64).pow(-0.25)
    return (m * (max_margin / m.max())).to(torch.float32)


# ----------------------------------------------------------------------------------- loss functions
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in float32. logits (B, C), targets (B,) -> scalar, or (B,) for ``"none"``."""
    return _weighted_ce(widen(logits), targets, None, reduction)


def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, class_counts: Sequence[float] | torch.Tensor,
                          tau: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Balanced softmax / logit-adjusted CE: ``CE(z + tau * log pi, y)``.

    Ren et al. (NeurIPS 2020), Menon et al. (ICLR 2021); AT-BSL's outer loss (Cho et al., ICLR 2025, Eq. 1, with
    ``b_i = tau log n_i``, the same up to a constant shift); RoBal's bias term (Wu et al., CVPR 2021, Eq. 7, tau_b).
    With equal class counts it is CE.

    Args:
        logits: (B, C). targets: (B,) int64. class_counts: (C,) training images per class.
        tau: strength of the prior bias (1.0 = balanced softmax).
        reduction: "mean" | "none" | "sum".

    Example::

        loss = balanced_softmax_loss(model(x_adv), y, counts, tau=1.0)
    """
    z = widen(logits)
    z = z + tau * log_prior(class_counts, z.device, z.dtype)  # (B, C)
    return _weighted_ce(z, targets, None, reduction)


def ldam_loss(logits: torch.Tensor, targets: torch.Tensor, class_counts: Sequence[float] | torch.Tensor,
              max_margin: float = 0.5, s: float = 30.0, weight: Sequence[float] | torch.Tensor | None = None,
              reduction: str = "mean") -> torch.Tensor:
    """LDAM (Cao et al., NeurIPS 2019): ``w_y * CE(s * (z - m_y * onehot(y)), y)``, ``m_c ∝ n_c^{-1/4}``.

    As in the LDAM-DRW code: margins scaled so that the largest (the rarest class) is ``max_margin``,
    subtracted from the target logit only, the result multiplied by ``s``. Wu et al., CVPR 2021, Table 1 "class-aware
    margin"; Wu et al., CVPR 2021, Table S5: delta_max = 0.5. Cao et al. use s = 30 with a normalised (cosine) last
    layer; RoBal's study used s = 1 with a linear head.

    Args:
        logits: (B, C). targets: (B,). class_counts: (C,).
        max_margin: the largest margin. s: logit scale.
        weight: optional (C,) class weights (DRW: :func:`drw_weights`); "mean" is then the weighted mean.
        reduction: "mean" | "none" | "sum".
    """
    z = widen(logits)  # (B, C)
    m = ldam_margins(class_counts, max_margin).to(z.device)[targets]  # (B,)
    z = z - F.one_hot(targets, z.shape[1]).to(z.dtype) * m[:, None]
    return _weighted_ce(s * z, targets, _class_weights(weight, logits), reduction)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               weight: Sequence[float] | torch.Tensor | None = None, reduction: str = "mean",
               form: str = "softmax") -> torch.Tensor:
    """Focal loss (Lin et al., ICCV 2017), softmax or sigmoid (BCE) form.

    ``form="softmax"``: ``-w_y * (1 - p_y)^gamma * log p_y`` with the softmax probability ``p_y`` (the
    multi-class form of the LDAM-DRW code). ``form="sigmoid"``: one binary problem per class, summed over
    the classes, ``-w_y * sum_c (1 - q_c)^gamma * log q_c`` with ``q_c = sigmoid(z_c)`` for ``c = y`` and
    ``1 - sigmoid(z_c)`` otherwise: Lin et al.'s own form and the one RoBal's study applied (Wu et al., CVPR 2021,
    Table 1, Table S5 "applied with BCE loss", gamma = 2). gamma = 0 gives CE (softmax) or
    summed BCE (sigmoid).

    Args:
        logits: (B, C). targets: (B,). gamma: focusing parameter >= 0.
        weight: optional (C,) class weights (CB-focal: :func:`class_balanced_weights`).
        reduction: "mean" (weighted mean with ``weight``) | "none" | "sum".
        form: "softmax" | "sigmoid".
    """
    _check_reduction(reduction)
    if form not in FOCAL_FORMS:
        raise ConfigError(f"focal form={form!r}: use one of {', '.join(FOCAL_FORMS)}.")
    z = widen(logits)  # (B, C)
    if form == "softmax":
        nll = -F.log_softmax(z, dim=1).gather(1, targets[:, None])  # -log p_y, (B, 1)
    else:
        nll = F.binary_cross_entropy_with_logits(z, F.one_hot(targets, z.shape[1]).to(z.dtype),
                                                 reduction="none")  # -log q_c, (B, C)
    if gamma:
        nll = (-torch.expm1(-nll)).clamp_min(0.0) ** gamma * nll  # (1 - p)^gamma * (-log p)
    loss = nll.sum(1)  # (B,)
    w = _class_weights(weight, logits)
    if w is None:
        return _reduce(loss, reduction)
    w = w[targets]
    return _reduce(w * loss, reduction, w)


def class_balanced_loss(logits: torch.Tensor, targets: torch.Tensor, class_counts: Sequence[float] | torch.Tensor,
                        beta: float = 0.9999, gamma: float = 0.0, reduction: str = "mean",
                        form: str = "softmax") -> torch.Tensor:
    """Class-balanced loss (Cui et al., CVPR 2019): ``(1 - beta)/(1 - beta^{n_y})``-weighted CE (gamma 0)
    or focal loss (gamma > 0, "CB-focal", Wu et al., CVPR 2021, Table S5 uses beta 0.9999, gamma 2).

    Weights normalised to sum C (:func:`class_balanced_weights`); "mean" is the weighted mean.
    beta = 0 gives CE. ``form``: the focal form (:func:`focal_loss`; Cui et al.'s code offers both).
    """
    w = class_balanced_weights(class_counts, beta)
    return focal_loss(logits, targets, gamma=gamma, weight=w, reduction=reduction, form=form)


def class_aware_temperature_loss(logits: torch.Tensor, targets: torch.Tensor,
                                 class_counts: Sequence[float] | torch.Tensor, gamma: float = 0.3,
                                 reduction: str = "mean") -> torch.Tensor:
    """Class-aware temperature (CDT, Ye et al. 2020): ``CE(z_c * (n_c / n_max)^gamma, y)``.

    Wu et al., CVPR 2021, Table 1 "class-aware temperature" ``g_i = W_i^T f(x) * (n_i / n_max)^gamma``; Wu et al.,
    CVPR 2021, Table S5:
    gamma = 0.3. Head classes keep their logits, tail logits shrink during training (so the tail is
    favoured when the plain logits are used at test time). gamma = 0 is CE.
    """
    z = widen(logits) * class_temperatures(class_counts, gamma).to(logits.device)  # (B, C)
    return _weighted_ce(z, targets, None, reduction)


def class_temperatures(class_counts: Sequence[float] | torch.Tensor, gamma: float = 0.3) -> torch.Tensor:
    """``(n_c / n_max)^gamma``, (C,) float32 on the CPU (the CAT logit multipliers)."""
    n = as_counts(class_counts, dtype=torch.float64)
    return (n / n.max()).pow(gamma).to(torch.float32)


def reweighted_loss(logits: torch.Tensor, targets: torch.Tensor, class_counts: Sequence[float] | torch.Tensor,
                    power: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Inverse-frequency re-weighted CE: ``w_y * CE(z, y)``, ``w_c ∝ n_c^{-power}`` summing to C.

    power 1 is re-weighting (RW), 0.5 its smoothed form (RWS, compared in Li et al., arXiv 2023, Table 2).
    "mean" is the weighted mean.
    """
    w = inverse_frequency_weights(class_counts, power).to(logits.device)
    return _weighted_ce(widen(logits), targets, w, reduction)


# ------------------------------------------------------------------------------- registered classes
def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


class LongTailLoss:
    """Base of the registered losses: holds the class counts, the options and the epoch.

    Args:
        class_counts: training images per class (C,).
        options: an instance of the class's ``Options`` (or a mapping of its fields); None: defaults.
        total_epochs: length of training (for epoch-dependent behaviour such as DRW).
        **overrides: single option fields, e.g. ``LOSSES.build("bsl", counts, tau=0.5)``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type]

    def __init__(self, class_counts: Sequence[float] | torch.Tensor, options: Any = None,
                 total_epochs: int = 1, **overrides: Any) -> None:
        self.class_counts = as_counts(class_counts, dtype=torch.float64)  # (C,) on the CPU
        self.num_classes = int(self.class_counts.numel())
        self.options = _make_options(self.Options, options, overrides, self.name)
        self.total_epochs = int(total_epochs)
        self.epoch = 0
        self._host: dict[str, torch.Tensor] = {}  # (C,) float32 CPU tensors the loss uses
        self._device: dict[tuple[str, torch.device], torch.Tensor] = {}

    def _set(self, key: str, value: torch.Tensor) -> None:
        """Store a per-class tensor (C,) (kept in float64); its device copies are made again on next use."""
        self._host[key] = value.to(torch.float64)
        self._device = {k: v for k, v in self._device.items() if k[0] != key}

    def _on(self, key: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The stored tensor ``key`` on ``device`` as ``dtype``, copied once per device and dtype (not every step)."""
        t = self._device.get((key, device, dtype))
        if t is None:
            t = self._device[(key, device, dtype)] = self._host[key].to(device=device, dtype=dtype)
        return t

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError

    def attack_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B,) for an attack to maximise (``attack.loss_mode=inner|both``)."""
        return self(logits, targets, reduction="none")

    def adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits whose plain CE is this loss, where the loss is a CE of label-free logits
        (bsl: ``z + tau log pi``; cat: ``z * (n/n_max)^gamma``); the logits unchanged otherwise."""
        return logits

    def on_epoch_start(self, epoch: int, total_epochs: int | None = None) -> None:
        """Called by the method at the start of every epoch (epochs count from 0)."""
        self.epoch = int(epoch)
        if total_epochs is not None:
            self.total_epochs = int(total_epochs)

    def run_length_terms(self) -> list[str]:
        """What in this loss depends on the length of training (``train.epochs``); none by default."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Epoch state for exact resume (everything else follows from the counts and options)."""
        return {"epoch": self.epoch, "total_epochs": self.total_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.on_epoch_start(int(state.get("epoch", 0)), state.get("total_epochs"))

    def __repr__(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self.options, f.name)!r}" for f in fields(self.options))
        return f"{type(self).__name__}({opts})"


def _make_options(opts_cls: type, options: Any, overrides: Mapping[str, Any], owner: str) -> Any:
    names = [f.name for f in fields(opts_cls)]
    if options is None:
        values: dict[str, Any] = {}
    elif isinstance(options, opts_cls):
        values = {n: getattr(options, n) for n in names}
    elif isinstance(options, Mapping):
        values = dict(options)
    elif is_dataclass(options):
        raise ConfigError(f"loss {owner!r} expects {opts_cls.__name__}, got {type(options).__name__}.")
    else:
        raise ConfigError(f"loss {owner!r}: options must be a {opts_cls.__name__} or a mapping, "
                          f"got {type(options).__name__}.")
    values.update(overrides)
    for k in values:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            valid = ", ".join(names) if names else "none"
            raise ConfigError(f"loss {owner!r} has no option {k!r}.{hint} Its options: {valid}.")
    return opts_cls(**values)


@dataclass(frozen=True)
class CEOptions:
    """Cross-entropy has no options."""


@dataclass(frozen=True)
class BSLOptions:
    tau: float = 1.0  #: prior-bias strength (1: balanced softmax)


@dataclass(frozen=True)
class LDAMOptions:
    max_margin: float = 0.5  #: largest per-class margin (rarest class)
    s: float = 30.0  #: logit scale
    drw: bool = True  #: deferred re-weighting: CB weights from drw_start on
    drw_start: float = 0.8  #: fraction of epochs after which DRW switches on
    beta: float = 0.9999  #: effective-number beta of the DRW weights

    def __post_init__(self) -> None:
        _check(self.max_margin >= 0, f"max_margin={self.max_margin} must be >= 0.")
        _check(self.s > 0, f"s={self.s} must be > 0 (30 with a cosine head, 1 with a linear head).")
        _check(0.0 <= self.drw_start <= 1.0,
               f"drw_start={self.drw_start} is a fraction of the epochs: use a value in [0, 1], e.g. 0.8.")
        _check(0.0 <= self.beta <= 1.0, f"beta={self.beta} must lie in [0, 1], e.g. 0.9999.")


@dataclass(frozen=True)
class FocalOptions:
    gamma: float = 2.0  #: focusing parameter (0: CE)
    form: str = "softmax"  #: softmax | sigmoid (BCE, RoBal Table 1 / S5)

    def __post_init__(self) -> None:
        _check(self.gamma >= 0, f"gamma={self.gamma} must be >= 0 (e.g. 2).")
        _check(self.form in FOCAL_FORMS, f"form={self.form!r}: use one of {', '.join(FOCAL_FORMS)}.")


@dataclass(frozen=True)
class CBOptions:
    beta: float = 0.9999  #: effective-number beta (0: CE)
    gamma: float = 0.0  #: > 0 gives CB-focal
    form: str = "softmax"  #: focal form with gamma > 0: softmax | sigmoid

    def __post_init__(self) -> None:
        _check(0.0 <= self.beta <= 1.0, f"beta={self.beta} must lie in [0, 1], e.g. 0.9999.")
        _check(self.gamma >= 0, f"gamma={self.gamma} must be >= 0.")
        _check(self.form in FOCAL_FORMS, f"form={self.form!r}: use one of {', '.join(FOCAL_FORMS)}.")


@dataclass(frozen=True)
class CATOptions:
    gamma: float = 0.3  #: temperature exponent of (n_c / n_max)


@dataclass(frozen=True)
class RWOptions:
    power: float = 1.0  #: w_c ∝ n_c^-power (1: RW, 0.5: RW smooth)


@LOSSES.register("ce")
class CELoss(LongTailLoss):
    """Plain cross-entropy (the baseline every long-tailed loss replaces)."""

    name = "ce"
    Options = CEOptions

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return cross_entropy(logits, targets, reduction)


@LOSSES.register("bsl")
class BalancedSoftmaxLoss(LongTailLoss):
    """Balanced softmax ``CE(z + tau log pi, y)`` (:func:`balanced_softmax_loss`)."""

    name = "bsl"
    Options = BSLOptions

    def __init__(self, class_counts: Sequence[float] | torch.Tensor, options: Any = None,
                 total_epochs: int = 1, **overrides: Any) -> None:
        super().__init__(class_counts, options, total_epochs, **overrides)
        self._set("bias", self.options.tau * log_prior(self.class_counts, dtype=torch.float64))

    def adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        z = widen(logits)
        return z + self._on("bias", z.device, z.dtype)  # (B, C)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return _weighted_ce(self.adjust_logits(logits), targets, None, reduction)


@LOSSES.register("ldam")
class LDAMLoss(LongTailLoss):
    """LDAM with optional deferred re-weighting (LDAM-DRW): :func:`ldam_loss` with :func:`drw_weights`."""

    name = "ldam"
    Options = LDAMOptions

    def __init__(self, class_counts: Sequence[float] | torch.Tensor, options: Any = None,
                 total_epochs: int = 1, **overrides: Any) -> None:
        super().__init__(class_counts, options, total_epochs, **overrides)
        self._set("margins", ldam_margins(self.class_counts, self.options.max_margin))
        self.drw_active = False
        self.on_epoch_start(0)

    @property
    def drw_start_epoch(self) -> int:
        """First epoch (counting from 0) with DRW weights: ``floor(drw_start * total_epochs)``."""
        return int(math.floor(self.options.drw_start * self.total_epochs + 1e-9))

    def run_length_terms(self) -> list[str]:
        if not self.options.drw:
            return []
        return [f"loss ldam's DRW starts at drw_start={self.options.drw_start:g} of train.epochs"]

    def on_epoch_start(self, epoch: int, total_epochs: int | None = None) -> None:
        super().on_epoch_start(epoch, total_epochs)
        start = self.drw_start_epoch
        self.drw_active = bool(self.options.drw) and self.epoch >= start
        if self.drw_active:
            self._set("weights", drw_weights(self.epoch, self.class_counts, start, self.options.beta))

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        z = widen(logits)  # (B, C)
        m = self._on("margins", z.device, z.dtype)[targets]  # (B,)
        z = z - F.one_hot(targets, z.shape[1]).to(z.dtype) * m[:, None]
        w = self._on("weights", z.device, z.dtype) if self.drw_active else None
        return _weighted_ce(self.options.s * z, targets, w, reduction)


@LOSSES.register("focal")
class FocalLoss(LongTailLoss):
    """Focal loss, softmax or sigmoid (BCE) form (:func:`focal_loss`)."""

    name = "focal"
    Options = FocalOptions

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return focal_loss(logits, targets, self.options.gamma, None, reduction, self.options.form)


@LOSSES.register("cb")
class ClassBalancedLoss(LongTailLoss):
    """Class-balanced (effective-number) weighted CE, or CB-focal with gamma > 0 (:func:`class_balanced_loss`)."""

    name = "cb"
    Options = CBOptions

    def __init__(self, class_counts: Sequence[float] | torch.Tensor, options: Any = None,
                 total_epochs: int = 1, **overrides: Any) -> None:
        super().__init__(class_counts, options, total_epochs, **overrides)
        self._set("weights", class_balanced_weights(self.class_counts, self.options.beta))

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return focal_loss(logits, targets, self.options.gamma, self._on("weights", logits.device), reduction,
                          self.options.form)


@LOSSES.register("cat")
class ClassAwareTemperatureLoss(LongTailLoss):
    """Class-aware temperature ``CE(z * (n/n_max)^gamma, y)`` (:func:`class_aware_temperature_loss`)."""

    name = "cat"
    Options = CATOptions

    def __init__(self, class_counts: Sequence[float] | torch.Tensor, options: Any = None,
                 total_epochs: int = 1, **overrides: Any) -> None:
        super().__init__(class_counts, options, total_epochs, **overrides)
        self._set("temperatures", class_temperatures(self.class_counts, self.options.gamma))

    def adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        z = widen(logits)
        return z * self._on("temperatures", z.device, z.dtype)  # (B, C)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return _weighted_ce(self.adjust_logits(logits), targets, None, reduction)


@LOSSES.register("rw")
class ReweightedLoss(LongTailLoss):
    """Inverse-frequency re-weighted CE (:func:`reweighted_loss`)."""

    name = "rw"
    Options = RWOptions

    def __init__(self, class_counts: Sequence[float] | torch.Tensor, options: Any = None,
                 total_epochs: int = 1, **overrides: Any) -> None:
        super().__init__(class_counts, options, total_epochs, **overrides)
        self._set("weights", inverse_frequency_weights(self.class_counts, self.options.power))

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        z = widen(logits)
        return _weighted_ce(z, targets, self._on("weights", z.device, z.dtype), reduction)
