"""RoBal (Wu et al., "Adversarial Robustness under Long-Tailed Distribution", CVPR 2021).

Sec. 4 (Eq. 7-12) and the supplementary material, A.1 (hyper-parameters; arXiv:2104.02703). The model has the
scale-invariant cosine head ``z_c = s * cos_c`` with ``cos_c = <f/||f||, W_c/(||W_c|| + gamma)>``
(:class:`~ltrobust.models.heads.CosineHead`, Sec. 4.1-4.2). Per step:

1. AEs: 5-step l_inf PGD on plain CE of the *scale-1* cosines ``cos(x')`` (no margin, no bias; Eq. 12
   "performed on the direct outputs of the cosine operation without margins"; the authors' configs use
   ``train_num_steps: 5`` with a scale-1 ``CosPlus`` classifier).
2. Outer loss (Eq. 12)::

       L = L_1(x', y) + alpha * KL(softmax(cos(x)) || softmax(cos(x')))

   with ``L_1`` Eq. 9-10: ``CE(s * (cos - m_y onehot(y)) + tau_b log pi, y)`` and the per-class margin
   ``m_c = m0 + (tau_m / s) log(n_c / n_min)`` (Eq. 8) (:func:`ltrobust.losses.robal_loss`,
   :func:`ltrobust.losses.robal_kl`).
3. Inference (Eq. 11): ``s * cos - tau_p * log pi``. :meth:`RoBal.deployed` returns that module, so
   validation and evaluation attack the logits actually served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attacks.pgd import autocast
from ..device import widen
from ..errors import ConfigError
from ..losses import robal_inference_logits, robal_kl, robal_loss
from ..models.heads import CosineHead
from ..registry import METHODS
from .at_bsl import require_outer_loss_mode
from .base import Method


@dataclass(frozen=True)
class RoBalOptions:
    """Defaults: CIFAR-10-LT RoBal-N (Wu et al., CVPR 2021, supplement A.1; the authors'
    ``cifar10_LT0.02_pgdat_robal_N_*.yaml``)."""

    m0: float = 0.1  #: uniform cosine margin (Eq. 8)
    tau_b: float = 1.2  #: prior-bias strength b_c = tau_b log pi_c (Eq. 7, 9)
    tau_m: float = 0.0  #: class-aware margin strength (Eq. 8)
    alpha: float = 6.0  #: weight of the KL regulariser (Eq. 12)
    tau_p: float = 0.1  #: inference-time boundary adjustment (Eq. 11)
    #: PGD steps of the training attack (Wu et al., CVPR 2021, supplement A.1, B.2); replaces attack.steps
    attack_steps: int = 5
    #: train-mode forwards of the loss per step: 2 (x' for L_1 and the KL, x for the KL); 4 as the authors'
    #: ``add_reg_train``: x' (L_1), x (its clean CE of weight beta_nat = 0, here without gradient), x and x' (the
    #: KL). The same loss and gradients; BatchNorm's running statistics then follow the batches x', x, x, x'
    forwards: int = 2

    def __post_init__(self) -> None:
        if self.attack_steps < 0:
            raise ConfigError(f"attack_steps={self.attack_steps} must be >= 0 (RoBal uses 5).")
        if self.alpha < 0:
            raise ConfigError(f"alpha={self.alpha} must be >= 0 (RoBal: 6 on CIFAR-10-LT, 3 or 6 on CIFAR-100-LT).")
        if self.forwards not in (2, 4):
            raise ConfigError(f"forwards={self.forwards!r}: use 2 (x', x) or 4 (x', x, x, x' as the authors' "
                              "add_reg_train, for their BatchNorm statistics).")


def cosine_head(model: nn.Module, method: str = "RoBal") -> CosineHead:
    """The model's :class:`CosineHead` (RoBal and HE need one; the trainer builds it from ``required_head``)."""
    inner = model
    while not hasattr(inner, "head"):
        if hasattr(inner, "module"):
            inner = inner.module
        elif hasattr(inner, "_orig_mod"):
            inner = inner._orig_mod
        else:
            break
    head = getattr(inner, "head", None)
    no_features = method == "RoBal" and not callable(getattr(inner, "features", None))  # its AEs attack features
    if not isinstance(head, CosineHead) or no_features:
        found = (f"its head is a {type(head).__name__}" if head is not None else "it has no `head` attribute")
        if no_features:
            found += " and no `features(x)` method"
        raise ConfigError(
            f"{method} needs a cosine head (model.head=cosine), but {type(inner).__name__} does not have one: "
            f"{found}. Build an ltrobust model with head='cosine' (MODELS.build('resnet18', num_classes=C, "
            "head='cosine')), or give your network a `features(x)` method returning "
            "(B, D) and `self.head = ltrobust.models.CosineHead(D, C)` with `forward(x) = self.head(self.features(x))`.")
    return head


class ScaleOneCosine(nn.Module):
    """The attack target of RoBal's training AEs: ``cos(x) = model.head.cosine(model.features(x))`` (B, C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head.cosine(self.model.features(x))


class RoBalDeployed(nn.Module):
    """RoBal's served logits (Wu et al., CVPR 2021, Eq. 11): ``s * cos(x) - tau_p * log pi``, (B, C_in, H, W) -> (B, C).

    Exposes ``features`` and ``head`` of the wrapped model (feature analyses, fine-tuning) and keeps the
    class counts as a non-persistent buffer, so ``.to(device)`` moves everything.

    Args:
        model: an :class:`~ltrobust.models.base.LTModel` with a cosine head.
        class_counts: training images per class (C,).
        tau_p: strength of the boundary adjustment (0: plain ``s * cos``).
    """

    def __init__(self, model: nn.Module, class_counts: Any, tau_p: float) -> None:
        super().__init__()
        self.model = model
        self.tau_p = float(tau_p)
        self.register_buffer("class_counts", torch.as_tensor(class_counts, dtype=torch.float32).clone(),
                             persistent=False)

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.model.head
        return robal_inference_logits(head.cosine(self.model.features(x)), self.class_counts, s=head.scale,
                                      tau_p=self.tau_p)

    def logits_from_head(self, z: torch.Tensor) -> torch.Tensor:
        """Served logits from head logits ``z = s * cos`` (B, C): ``z - tau_p * log pi``. Inference
        adjustments that recompute the head's logits (``eval.adjust=tde``) compose with Eq. 11 through it."""
        return robal_inference_logits(z, self.class_counts, s=1.0, tau_p=self.tau_p)

    def extra_repr(self) -> str:
        return f"tau_p={self.tau_p}"


@METHODS.register("robal")
class RoBal(Method):
    """RoBal: cosine head, margin-and-bias CE on 5-step AEs + alpha * KL (Wu et al., CVPR 2021, Eq. 8-12), Eq. 11 at
    inference.

    ``loss=`` must stay ``ce`` (RoBal's loss is its own, Eq. 9-10), ``attack.loss_mode`` ``outer``; the
    attack runs ``attack_steps`` steps (5) of ``attack.step_size`` inside ``attack.eps``.
    m0 = tau_b = tau_m = 0 and alpha = 0 give PGD-AT on ``CE(s * cos(x'), y)``.

    Example::

        cfg = resolve_config(["preset=robal-n-cifar10lt-resnet18", "data_dir=.data/cifar10"])
    """

    name = "robal"
    Options = RoBalOptions
    required_head = "cosine"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_outer_loss_mode(self.attack_cfg, self.name, "PGD on CE of the scale-1 cosines")
        loss_name = getattr(self.loss, "name", "ce")
        if loss_name != "ce":
            raise ConfigError(f"method 'robal' trains with its own margin loss (Wu et al., CVPR 2021, Eq. 9-10: options "
                              f"m0, tau_b, tau_m); loss={loss_name!r} would be ignored: drop loss=.")

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cosine_head(model)
        target = ScaleOneCosine(model).train(model.training)  # pgd restores the wrapper's mode onto the model
        return self.attack_pgd(target, x, y, "ce", steps=self.options.attack_steps)

    def _cosines(self, model: nn.Module, x: torch.Tensor, s: float) -> torch.Tensor:
        """Unscaled cosines (B, C) in train mode through the model's forward (DDP-safe): ``z / s``."""
        with autocast(x.device, self.amp_dtype):
            logits = model(x)
        return widen(logits) / s

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.options
        s = cosine_head(model).scale
        cos_adv = self._cosines(model, x_adv, s)  # (B, C)
        loss_margin = robal_loss(cos_adv, y, self.class_counts, s=s, m0=o.m0, tau_b=o.tau_b, tau_m=o.tau_m)
        out = {"loss_margin": loss_margin.detach(), "logits_adv": (s * cos_adv).detach()}
        loss = loss_margin
        if o.forwards == 4:  # the authors' zero-weight clean CE: a forward that only moves BatchNorm's statistics
            with torch.no_grad():
                self._cosines(model, x, s)
        if o.alpha > 0 or o.forwards == 4:
            cos_nat = self._cosines(model, x, s)  # (B, C)
            cos_adv_kl = self._cosines(model, x_adv, s) if o.forwards == 4 else cos_adv
            kl = robal_kl(cos_nat, cos_adv_kl)
            if o.alpha > 0:
                loss = loss + o.alpha * kl
                out["kl"] = kl.detach()
        out["loss"] = loss
        return out

    @property
    def loss_label(self) -> str:
        """Eq. 10's margin-and-bias CE, plus the KL term when alpha > 0."""
        return "margin-bias ce + kl" if self.options.alpha > 0 else "margin-bias ce"

    def deployed(self, model: nn.Module) -> nn.Module:
        """``s * cos - tau_p * log pi`` (Wu et al., CVPR 2021, Eq. 11), attacked as served at validation and
        evaluation."""
        cosine_head(model)
        return RoBalDeployed(model, self.class_counts, self.options.tau_p).train(model.training)
