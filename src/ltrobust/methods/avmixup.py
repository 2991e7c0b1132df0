"""AVmixup (Lee et al., "Adversarial Vertex Mixup: Toward Better Adversarially Robust Generalization", CVPR 2020).

Algorithm 1 of the paper, as in the authors' ``pgd_attack.py`` (``perturb_avmixup``):

1. ``delta = x' - x`` from the training PGD (``attack.*``). BatchNorm as the authors' TensorFlow code attacks:
   ``is_training=True`` (batch statistics) with the moving averages updated only by the training step, i.e.
   ``attack.bn_mode=batch``, this method's default (``eval``: running statistics, the project's SPEC 3 rule);
2. the adversarial vertex ``x_av = clip(x + gamma * delta, 0, 1)``;
3. per sample ``alpha ~ U(0, 1)`` (the code's Beta(1, 1)), ``x~ = alpha x + (1 - alpha) x_av`` and
   ``y~ = alpha phi(y, lambda1) + (1 - alpha) phi(y, lambda2)`` with the label smoothing
   ``phi(y, lambda)_c = lambda`` for ``c = y`` and ``(1 - lambda) / (C - 1)`` otherwise;
4. loss: the soft-label cross-entropy ``-sum_c y~_c log softmax(g(z(x~)))_c``, mean over the batch.

``g`` is the long-tailed loss's logit transform (``loss.adjust_logits``: ``z + tau log pi`` for ``bsl``,
the class temperatures for ``cat``), so ``method=avmixup loss=bsl`` is the soft-label balanced softmax.
Losses that are not a CE of label-free logits (class weights, margins, focal) have no soft-label form
and are refused. CIFAR-10 defaults: gamma 2, lambda1 1, lambda2 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import LongTailLoss
from ..registry import METHODS
from .base import Method, forward_train


@dataclass(frozen=True)
class AVmixupOptions:
    """Defaults: the authors' CIFAR-10 ``config.json`` (gamma 2.0, lambda1 1.0, lambda2 0.1)."""

    gamma: float = 2.0  #: vertex scale: x_av = x + gamma * delta
    lambda1: float = 1.0  #: label smoothing of the clean end, phi(y, lambda1)
    lambda2: float = 0.1  #: label smoothing of the vertex end, phi(y, lambda2)

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ConfigError(f"avmixup gamma={self.gamma} must be >= 0 (the paper uses 2.0).")
        for k in ("lambda1", "lambda2"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"avmixup {k}={v} must lie in [0, 1] (1: no smoothing).")


def label_smoothing(y: torch.Tensor, num_classes: int, factor: float) -> torch.Tensor:
    """``phi(y, lambda)``: ``lambda`` on the label, ``(1 - lambda) / (C - 1)`` on every other class, (B, C)."""
    onehot = F.one_hot(y, num_classes).float()
    return onehot * factor + (1.0 - onehot) * ((1.0 - factor) / (num_classes - 1))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i -sum_c t_ic log softmax(z_i)_c`` for soft targets (B, C)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def _has_soft_label_form(loss: Any) -> bool:
    """CE, or a loss that is the CE of transformed logits (it overrides ``adjust_logits``)."""
    return getattr(loss, "name", "ce") == "ce" or (
        isinstance(loss, LongTailLoss) and type(loss).adjust_logits is not LongTailLoss.adjust_logits)


@METHODS.register("avmixup")
class AVmixup(Method):
    """PGD AEs scaled to the adversarial vertex, mixed with the clean image and with smoothed labels.

    Options:
        gamma (float): 2.0. lambda1 (float): 1.0. lambda2 (float): 0.1.

    With gamma 1 and lambda1 = lambda2 = 1 it is PGD-AT on ``alpha x + (1 - alpha) x'``, hence exactly
    ``pgd_at`` when every mixing weight is 0.
    """

    name = "avmixup"
    #: the authors' attack runs with ``is_training=True``, the moving averages updated by the train op only
    attack_bn_mode = "batch"
    Options = AVmixupOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.attack_cfg.loss_mode != "inner" and not _has_soft_label_form(self.loss):
            raise ConfigError(f"method 'avmixup' trains on soft (mixed, smoothed) labels, which loss="
                              f"{self.loss.name!r} has no form for: use loss=ce, bsl or cat, or "
                              f"attack.loss_mode=inner to use {self.loss.name} only inside the attack.")
        self._alpha: torch.Tensor | None = None

    def mix_weights(self, n: int, device: torch.device) -> torch.Tensor:
        """The per-sample mixing weights alpha ~ U(0, 1), (n,)."""
        return torch.rand(n, device=device)

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The AVmixup training input ``alpha x + (1 - alpha) clip(x + gamma (x' - x))`` (B, ...)."""
        x_adv = super().train_attack(model, x, y)
        vertex = (x + self.options.gamma * (x_adv - x)).clamp(0.0, 1.0)
        alpha = self.mix_weights(x.shape[0], x.device)
        self._alpha = alpha
        a = alpha.view(-1, *([1] * (x.dim() - 1)))
        return (a * x + (1.0 - a) * vertex).detach()

    def soft_targets(self, y: torch.Tensor) -> torch.Tensor:
        """``alpha phi(y, lambda1) + (1 - alpha) phi(y, lambda2)`` (B, C) for this batch's alpha."""
        if self._alpha is None or self._alpha.shape[0] != y.shape[0]:
            raise RuntimeError("avmixup.compute_loss needs this batch's mixing weights: call train_attack first.")
        a = self._alpha.view(-1, 1)
        o = self.options
        return (a * label_smoothing(y, self.num_classes, o.lambda1)
                + (1.0 - a) * label_smoothing(y, self.num_classes, o.lambda2))

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_mix = forward_train(model, x_adv, self.amp_dtype)  # (B, C)
        z = logits_mix if self.attack_cfg.loss_mode == "inner" else self.loss.adjust_logits(logits_mix)
        loss = soft_cross_entropy(z, self.soft_targets(y))
        return {"loss": loss, "loss_rob": loss.detach(), "logits_adv": logits_mix.detach()}
