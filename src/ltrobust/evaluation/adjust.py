"""Inference-stage long-tailed adjustments as model wrappers (SPEC 3 "Inference stage").

Each adjustment returns an ``nn.Module`` whose ``forward(x)`` gives the *deployed* logits, so every
attack of the evaluation suite differentiates through the adjustment and targets exactly the logits
that are served (an attack on the unadjusted logits would evaluate a different classifier). The wrapper
keeps ``features(x)`` (the wrapped model's penultimate features, unchanged) and ``head``.

Registered in :data:`~ltrobust.registry.ADJUSTMENTS`; RoBal (Wu et al., CVPR 2021) supplementary
Table S5 gives each formulation and the default strength used here:

============  ==========================================================  =========  ================
name          deployed logits ``h_c``                                     default    reference
============  ==========================================================  =========  ================
none          ``z_c``                                                     -          -
logit_adjust  ``z_c - tau * log pi_c``                                    tau = 1    Menon et al. 2021
tau_norm      ``(W_c / ||W_c||^tau)^T f`` (bias dropped)                  tau = 2    Kang et al. 2020
cdt           ``z_c / n_c^tau`` (= ``(W_c / n_c^tau)^T f`` without bias)  tau = 0.3  Ye et al. 2020
tde           ``W_c^T (f - alpha cos(f, d) ||f|| d) + b_c``               alpha 0.1  Tang et al. 2020
============  ==========================================================  =========  ================

``z = model(x)``, ``f = model.features(x)`` (B, D), ``n_c`` the training count of class c,
``pi_c = n_c / sum_j n_j``, ``d`` the unit direction of the mean training feature. Every function has
the signature ``(model, class_counts, tau=..., **options) -> nn.Module``; ``tau = 0`` of
``logit_adjust`` / ``tau_norm`` / ``cdt`` returns the original logits exactly (for ``tau_norm``: of a
head without bias, or with ``keep_bias=True``); for ``tde`` ``tau`` is Tang's alpha.

Adjustments compose with the method's deployed model (``Method.deployed``): ``logit_adjust`` and ``cdt``
act on its served logits; ``tau_norm`` and ``tde`` recompute the head's logits from the features and
then apply the deployed model's own rule, ``model.logits_from_head(z)`` when it has one (RoBal's Eq. 11,
``z - tau_p log pi``), so at the identity setting every adjustment serves exactly the deployed logits.

Model assumptions: ``logit_adjust`` and ``cdt`` work on any model's logits. ``tau_norm`` and ``tde``
need ``model.features(x) -> (B, D)`` and ``model.head`` with ``head(f) = f W^T + b``, ``head.weight``
(C, D) and an optional ``head.bias`` (C,) (:class:`~ltrobust.models.heads.LinearHead`); ``tde`` also
accepts a cosine head exposing ``head.cosine(f)`` and ``head.scale``
(:class:`~ltrobust.models.heads.CosineHead`).

Example::

    from ltrobust.registry import ADJUSTMENTS
    deployed = ADJUSTMENTS.build("logit_adjust", model, class_counts, tau=1.0)
    x_adv = pgd(deployed, x, y, Linf(8 / 255), steps=20, step_size=2 / 255)   # attacks h, not z
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import ADJUSTMENTS

__all__ = ["Adjusted", "served_from_head", "none", "logit_adjust", "tau_norm", "cdt", "tde", "mean_feature"]


def _counts(class_counts: Sequence[int], name: str) -> torch.Tensor:
    counts = torch.as_tensor([float(c) for c in class_counts], dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 1:
        raise ConfigError(f"{name}: class_counts must list the training count of every class.")
    if (counts <= 0).any():
        raise ConfigError(f"{name}: every class needs at least one training image (class_counts has "
                          f"{int((counts <= 0).sum())} zero counts); log pi_c and n_c^tau are undefined.")
    return counts


def _num_classes_of(model: nn.Module) -> int | None:
    head = getattr(model, "head", None)
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[0])
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else None


def _check_len(model: nn.Module, counts: torch.Tensor, name: str) -> None:
    c = _num_classes_of(model)
    if c is not None and c != counts.numel():
        raise ConfigError(f"{name}: class_counts has {counts.numel()} entries but the model has {c} classes.")


def _linear_head(model: nn.Module, name: str) -> nn.Module:
    head = getattr(model, "head", None)
    if not callable(getattr(model, "features", None)) or head is None:
        raise ConfigError(f"{name} needs a model exposing features(x) -> (B, D) and a head "
                          "(ltrobust's LTModel does).")
    if hasattr(head, "cosine"):
        raise ConfigError(f"{name} needs a linear head (head.weight (C, D), optional head.bias); a cosine "
                          "head normalises its class weights already. Use model.head=linear.")
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ConfigError(f"{name} needs head.weight of shape (C, D) (a linear head).")
    return head


def served_from_head(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``model``'s served logits from its head's logits ``z`` (B, C): ``model.logits_from_head(z)`` when the
    model defines one (a method's deployed rule, e.g. RoBal's Eq. 11), else ``z``."""
    rule = getattr(model, "logits_from_head", None)
    return rule(z) if callable(rule) else z


class Adjusted(nn.Module):
    """A model whose served logits are an inference-stage adjustment of ``model``'s.

    Subclasses define :meth:`adjust_logits` (logit-level adjustments, applied to ``model(x)``) or
    override :meth:`logits_from_features` (adjustments that need the features and the head).

    Attributes:
        model: the wrapped model (a submodule: ``train()`` / ``eval()`` reach it).
        name: the registered name of the adjustment.
        tau: its strength.
    """

    name = "none"

    def __init__(self, model: nn.Module, tau: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.tau = float(tau)

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def num_classes(self) -> int | None:
        return _num_classes_of(self.model)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's penultimate features (B, D), unchanged by the adjustment."""
        return self.model.features(x)

    def adjust_logits(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """Deployed logits (B, C) from penultimate features (B, D)."""
        return self.adjust_logits(served_from_head(self.model, self.model.head(f)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Deployed logits (B, C) of images ``x``; with ``return_features=True`` also the features (B, D)."""
        if return_features:
            f = self.features(x)
            return self.logits_from_features(f), f
        return self.adjust_logits(self.model(x))

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for result files."""
        return {"adjust": self.name, "tau": self.tau}

    def extra_repr(self) -> str:
        return f"adjust={self.name}, tau={self.tau}"


class LogitAdjusted(Adjusted):
    """``h = z - tau * log pi`` (post-hoc logit adjustment)."""

    name = "logit_adjust"

    def __init__(self, model: nn.Module, counts: torch.Tensor, tau: float) -> None:
        super().__init__(model, tau)
        log_prior = torch.log(counts / counts.sum())  # (C,), float64
        self.register_buffer("offset", (self.tau * log_prior).float(), persistent=False)  # (C,)

    def adjust_logits(self, z: torch.Tensor) -> torch.Tensor:
        return z - self.offset.to(z.dtype)


class CDTAdjusted(Adjusted):
    """``h_c = z_c / n_c^tau`` (CDT-post: class-dependent temperatures at inference)."""

    name = "cdt"

    def __init__(self, model: nn.Module, counts: torch.Tensor, tau: float) -> None:
        super().__init__(model, tau)
        self.register_buffer("scale", counts.pow(-self.tau).float(), persistent=False)  # (C,)

    def adjust_logits(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale.to(z.dtype)


class TauNormalized(Adjusted):
    """``h_c = (W_c / ||W_c||^tau)^T f`` (+ ``b_c`` only with ``keep_bias``)."""

    name = "tau_norm"

    def __init__(self, model: nn.Module, tau: float, keep_bias: bool = False) -> None:
        super().__init__(model, tau)
        self.keep_bias = bool(keep_bias)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        w = self.head.weight  # (C, D)
        w = w / w.norm(dim=1, keepdim=True).pow(self.tau)
        b = getattr(self.head, "bias", None) if self.keep_bias else None
        return served_from_head(self.model, F.linear(f, w, b))  # (B, C)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        z = self.logits_from_features(f)
        return (z, f) if return_features else z

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "keep_bias": self.keep_bias}


class TDEAdjusted(Adjusted):
    """Causal TDE: remove the projection of the feature on the mean-feature direction ``d``.

    Linear head: ``h = head(f - alpha * cos(f, d) * ||f|| * d)``; ``cos(f, d) ||f|| = <f, d>`` is computed
    as the inner product (no division by ``||f||``). Cosine head (Tang et al.'s own classifier):
    ``h = scale * <f/||f|| - alpha * cos(f, d) * d, W_c / (||W_c|| + gamma)>``, the de-confounded unit
    feature not renormalised, as in the authors' code.
    """

    name = "tde"

    def __init__(self, model: nn.Module, direction: torch.Tensor, alpha: float) -> None:
        super().__init__(model, alpha)
        self.register_buffer("direction", direction, persistent=False)  # (D,), unit norm

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        d = self.direction.to(f.dtype)
        head = self.head
        if hasattr(head, "cosine"):
            u = F.normalize(f, dim=1)  # (B, D)
            v = u - self.tau * (u @ d).unsqueeze(1) * d  # (B, D)
            z = head.scale * v.norm(dim=1, keepdim=True) * head.cosine(v)  # scale * <v, W~>
        else:
            z = head(f - self.tau * (f @ d).unsqueeze(1) * d)
        return served_from_head(self.model, z)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "alpha": self.tau}

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        z = self.logits_from_features(f)
        return (z, f) if return_features else z


@ADJUSTMENTS.register("none")
def none(model: nn.Module, class_counts: Sequence[int] | None = None, tau: float = 0.0,
         **_: Any) -> Adjusted:
    """No adjustment: the wrapper serves ``model(x)`` unchanged (uniform interface for the evaluator)."""
    return Adjusted(model, 0.0)


@ADJUSTMENTS.register("logit_adjust")
def logit_adjust(model: nn.Module, class_counts: Sequence[int], tau: float = 1.0) -> Adjusted:
    """Post-hoc logit adjustment ``h_c = z_c - tau * log pi_c``.

    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, https://arxiv.org/abs/2007.07314,
    Eq. 2 (post-hoc form); RoBal Table S5 "class-aware bias" at inference, tau = 1. RoBal's own
    inference (``s * cos - tau_p * log pi``) is this adjustment on a cosine-head model.

    Args:
        model: any classifier ``x -> z`` (B, C).
        class_counts: training images per class (C,), all > 0.
        tau: strength. Default: 1.0. ``tau = 0`` serves ``z`` exactly.
    """
    counts = _counts(class_counts, "logit_adjust")
    _check_len(model, counts, "logit_adjust")
    return LogitAdjusted(model, counts, tau)


@ADJUSTMENTS.register("tau_norm")
def tau_norm(model: nn.Module, class_counts: Sequence[int] | None = None, tau: float = 2.0,
             keep_bias: bool = False) -> Adjusted:
    """tau-normalised classifier ``h_c = (W_c / ||W_c||^tau)^T f``.

    Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020,
    https://arxiv.org/abs/1910.09217, Sec. 4.2 (the bias is left out, as there); RoBal Table S5,
    tau = 2. Needs ``model.features`` and a linear ``model.head`` (``weight`` (C, D), optional ``bias``).

    Args:
        model: a model with ``features(x) -> (B, D)`` and a linear ``head``.
        class_counts: unused (the norms, not the counts, rescale the classes); checked for length.
        tau: strength. Default: 2.0. ``tau = 0`` gives ``f W^T`` exactly (the original logits of a head
            without bias, or with ``keep_bias=True``).
        keep_bias: add the head's bias ``b_c`` back (a departure from Kang et al.). Default: False.
    """
    _linear_head(model, "tau_norm")
    if class_counts is not None:
        _check_len(model, _counts(class_counts, "tau_norm"), "tau_norm")
    return TauNormalized(model, tau, keep_bias)


@ADJUSTMENTS.register("cdt")
def cdt(model: nn.Module, class_counts: Sequence[int], tau: float = 0.3) -> Adjusted:
    """CDT-post: class-dependent temperatures at inference, ``h_c = z_c / n_c^tau``.

    Ye et al., "Identifying and Compensating for Feature Deviation in Imbalanced Deep Learning", 2020,
    https://arxiv.org/abs/2001.01385 (class-dependent temperatures); RoBal Table S5 "classifier
    re-scaling" ``(W_c / n_c^tau)^T f``, tau = 0.3. Dividing the whole logit also divides a bias, so for a
    head without bias this is exactly the re-scaled classifier. Works on any model's logits.

    Args:
        model: any classifier ``x -> z`` (B, C).
        class_counts: training images per class (C,), all > 0.
        tau: strength. Default: 0.3. ``tau = 0`` serves ``z`` exactly.
    """
    counts = _counts(class_counts, "cdt")
    _check_len(model, counts, "cdt")
    return CDTAdjusted(model, counts, tau)


@ADJUSTMENTS.register("tde")
def tde(model: nn.Module, class_counts: Sequence[int] | None = None, tau: float = 0.1,
        mean_feature: torch.Tensor | None = None) -> Adjusted:
    """Causal TDE feature de-confounding: ``h = W (f - alpha cos(f, d) ||f|| d) + b``.

    Tang et al., "Long-Tailed Classification by Keeping the Good and Removing the Bad Momentum Causal
    Effect", NeurIPS 2020, https://arxiv.org/abs/2009.12991, Eq. 7 (the total direct effect with the
    moving-average feature as the head direction ``d``); RoBal Table S5, alpha = 0.1. One head
    (the authors' multi-head split is not used). For a cosine head see :class:`TDEAdjusted`.

    Args:
        model: a model with ``features(x) -> (B, D)`` and a linear or cosine ``head``.
        class_counts: unused; checked for length when given.
        tau: alpha, the strength of the removal. Default: 0.1. ``0`` serves the unadjusted head.
        mean_feature: (D,) mean training feature (its direction is used); compute it with
            :func:`mean_feature`. Required.
    """
    head = getattr(model, "head", None)
    if not callable(getattr(model, "features", None)) or head is None:
        raise ConfigError("tde needs a model exposing features(x) -> (B, D) and a head.")
    if not hasattr(head, "cosine"):
        _linear_head(model, "tde")
    if mean_feature is None:
        raise ConfigError("tde needs mean_feature=(D,) tensor, the mean training feature: compute it with "
                          "ltrobust.evaluation.adjust.mean_feature(model, train_images).")
    m = torch.as_tensor(mean_feature).detach().reshape(-1).float()
    norm = float(m.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ConfigError("tde: mean_feature is zero or not finite; it has no direction.")
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[1] != m.numel():
        raise ConfigError(f"tde: mean_feature has {m.numel()} entries but the head takes {weight.shape[1]} "
                          "features.")
    if class_counts is not None:
        _check_len(model, _counts(class_counts, "tde"), "tde")
    return TDEAdjusted(model, (m / norm).to(_param_device(model)), tau)


def _param_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def mean_feature(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor],
                 batch_size: int = 256) -> torch.Tensor:
    """Mean penultimate feature (D,) of training images, for :func:`tde`.

    Computed in eval mode (the model's mode is restored) over every image given. Tang et al. keep an
    un-normalised moving average of batch means during training; only its direction is used, which
    the plain mean over the training set estimates.

    Args:
        model: a model with ``features(x)``.
        images: a tensor (N, C_in, H, W) in [0, 1], or an iterable of such batches (or of
            ``(images, labels)`` pairs, e.g. a ``DeviceLoader``).
        batch_size: batch size when ``images`` is one tensor. Default: 256.
    """
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        total, n = None, 0
        for batch in batches:
            xb = batch[0] if isinstance(batch, (tuple, list)) else batch
            f = model.features(xb).double()  # (B, D)
            total = f.sum(0) if total is None else total + f.sum(0)
            n += f.shape[0]
    finally:
        for m, training in modes:
            m.training = training
    if total is None or n == 0:
        raise ConfigError("mean_feature got no images.")
    return (total / n).float()
