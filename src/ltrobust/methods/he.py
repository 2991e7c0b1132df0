"""HE (Pang et al., "Boosting Adversarial Training with Hypersphere Embedding", NeurIPS 2020).

Hypersphere embedding on top of PGD-AT or TRADES: feature normalisation (FN) and weight normalisation
(WN) give the cosine logits ``cos_c = <f/||f||, W_c/||W_c||>``, served as ``s * cos`` (the model's
:class:`~ltrobust.models.heads.CosineHead` with ``model.cosine_gamma=0`` and ``model.cosine_scale=s``);
the angular margin (AM) ``m`` enters the training objective only. As in the authors' ``losses.py``
(``pgd_he`` / ``trades_he`` with ``HELoss``):

- ``base=pgd_at``: AEs maximise ``CE(s cos(x'), y)`` (no margin); outer loss
  ``L(s (cos(x') - m 1_y), y)`` (the HE loss ``L^m_CE``);
- ``base=trades``: AEs maximise ``KL(softmax(s cos(x)) || softmax(s cos(x')))``; outer loss
  ``L(s (cos(x) - m 1_y), y) + beta * KL(softmax(s cos(x)) || softmax(s cos(x')))``.

``L`` is CE or any long-tailed loss (``loss=bsl``: ``CE(s (cos - m 1_y) + tau log pi, y)``). With
``m = 0`` HE is exactly its base method on the scaled cosine head. The authors' CIFAR-10 commands: PGD-AT-HE
s 10, m 0.2, weight decay 5e-4; TRADES-HE s 15, m 0.2, beta 6 (``s`` is ``model.cosine_scale``).

Served logits (``serve``): the authors' network outputs the raw cosines (their ``WideResNet(use_FNandWN=True)``;
``s`` lives in the loss), and their evaluation attacks those; so does RoBal's HE baseline (its ``Cos``
classifier at scale 1). ``serve=cosine`` (default) deploys ``cos``, ``serve=scaled`` deploys ``s * cos``, the
training temperature. The argmax is the same; CE-based attacks (PGD, APGD-CE) see another temperature, margin
and DLR attacks (CW, APGD-T, FAB, Square) are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..device import unwrap
from ..errors import ConfigError
from ..losses import trades_loss_terms
from ..registry import METHODS
from .base import Method, forward_train
from .robal import cosine_head

BASES = ("pgd_at", "trades")
SERVES = ("cosine", "scaled")


class HEDeployed(nn.Module):
    """HE's served logits: the raw cosines ``cos = (s * cos) / s`` of a cosine-head model (the authors' output).

    Exposes ``features`` and ``head`` of the wrapped model and ``logits_from_head`` (``z / s``), so inference
    adjustments (``eval.adjust``) compose with it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def head(self) -> nn.Module:
        return self.model.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_head(self.model(x))

    def logits_from_head(self, z: torch.Tensor) -> torch.Tensor:
        """Served logits from the head's ``z = s * cos`` (B, C): ``cos``."""
        return z / cosine_head(self.model, "HE").scale

    def describe(self) -> dict[str, Any]:
        return {"wrapper": "HEDeployed", "serve": "cosine"}


@dataclass(frozen=True)
class HEOptions:
    """Defaults: the authors' CIFAR-10 commands (``--m 0.2``; TRADES-HE ``--beta 6``; s is the model's scale)."""

    m: float = 0.2  #: angular (cosine) margin subtracted from the target cosine in the outer loss
    base: str = "pgd_at"  #: pgd_at | trades
    beta: float | None = None  #: TRADES beta (base=trades only; default 6.0)
    serve: str = "cosine"  #: logits served and attacked: cosine (the authors' output) | scaled (s * cos)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ConfigError(f"he base={self.base!r}: use pgd_at or trades.")
        if self.base == "pgd_at" and self.beta is not None:
            raise ConfigError(f"he beta={self.beta} is TRADES' weight and base=pgd_at has none: drop beta, "
                              f"or set base=trades.")
        if self.m < 0:
            raise ConfigError(f"he m={self.m} must be >= 0 (the paper uses 0.2).")
        if self.serve not in SERVES:
            raise ConfigError(f"he serve={self.serve!r}: use cosine (the authors' served logits) or scaled (s * cos).")


@METHODS.register("he")
class HE(Method):
    """PGD-AT or TRADES on a normalised cosine head with an angular margin in the outer loss.

    The scale ``s`` is the head's (``model.cosine_scale``); the head must normalise W exactly
    (``model.cosine_gamma=0``), which :meth:`setup` checks. Presets: ``he-digits``.
    """

    name = "he"
    Options = HEOptions
    required_head = "cosine"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        base_cls = METHODS.get(o.base)
        base_opts = base_cls.Options(beta=6.0 if o.beta is None else o.beta) if o.base == "trades" else None
        self.base: Method = base_cls(self.class_counts.tolist(), self.attack_cfg, self.loss, base_opts,
                                     self.total_epochs, self.amp_dtype)

    @property
    def beta(self) -> float:
        return self.base.options.beta

    def run_length_terms(self) -> list[str]:
        return self.base.run_length_terms()

    def setup(self, context: Any) -> None:
        head = cosine_head(unwrap(context.model), "HE")
        if head.gamma != 0:
            raise ConfigError(f"HE normalises the class weights exactly (W/||W||) but the cosine head has "
                              f"gamma={head.gamma}: set model.cosine_gamma=0 (and model.cosine_scale to HE's s, "
                              f"e.g. 15), or use preset=he-digits.")

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cosine_head(model, "HE")
        return self.base.train_attack(model, x, y)

    def margin_logits(self, logits: torch.Tensor, y: torch.Tensor, s: float) -> torch.Tensor:
        """``s (cos - m 1_y)`` from the served logits ``s cos`` (B, C)."""
        return logits - (s * self.options.m) * F.one_hot(y, logits.shape[1]).to(logits.dtype)

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        s = cosine_head(model, "HE").scale
        if self.options.base == "pgd_at":
            logits_adv = forward_train(model, x_adv, self.amp_dtype)  # s cos(x'), (B, C)
            loss = self.outer_loss(self.margin_logits(logits_adv, y, s), y)
            return {"loss": loss, "loss_rob": loss.detach(), "logits_adv": logits_adv.detach()}
        logits_nat = forward_train(model, x, self.amp_dtype)  # s cos(x)
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # s cos(x')
        loss_nat, kl = trades_loss_terms(logits_nat, logits_adv, y,
                                         base_loss=lambda z, t: self.outer_loss(self.margin_logits(z, t, s), t))
        loss = loss_nat + self.beta * kl
        return {"loss": loss, "loss_nat": loss_nat.detach(), "kl": kl.detach(), "logits_adv": logits_adv.detach()}

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.base.epoch = epoch

    def deployed(self, model: nn.Module) -> nn.Module:
        """The raw cosines (``serve=cosine``, the authors') or ``s * cos`` (``serve=scaled``)."""
        cosine_head(model, "HE")
        return HEDeployed(model).train(model.training) if self.options.serve == "cosine" else model
