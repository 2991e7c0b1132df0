"""REAT (Li et al., "Alleviating the Effect of Data Imbalance on Adversarial Training", ICCV 2023).

Li, Xu and Zhang (arXiv:2307.10205, 2023), Sec. 4. Two pieces on top of PGD-AT with a long-tailed outer loss:

- RBL (Sec. 4.1, Eq. 1-2): the training AEs of epoch k maximise the class-weighted CE ``w_y * CE(z(x'), y)``
  with ``w_c = C * (1/E_c) / sum_j (1/E_j)``, ``E_c = (1 - beta_c^{a_c}) / (1 - beta_c)``,
  ``beta_c = (n_c - 1) / n_c``, where ``a_c`` counts the training AEs of epoch k-1 that the model
  predicted as class c (first epoch: ``a_c = n_c``, footnote 2). PGD-10, objective ``weighted_ce``.
- TAIL (Sec. 4.2, Eq. 3, Algorithm 1) on the softmax of the penultimate features of the AEs, added to the
  long-tailed loss: ``L = L_lt(z(x'), y) + lambda * TAIL`` (the paper: lambda = 1; BSL is its main L_lt,
  Table 1 also FL, EN, LDAM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attacks.pgd import autocast
from ..device import widen
from ..errors import ConfigError
from ..losses import rbl_weights, reat_tail_classes, tail_loss_from_terms, tail_terms
from ..registry import LOSSES, METHODS
from .at_bsl import require_outer_loss_mode
from .base import Method, logits_and_features

#: the paper's names for its Table 1 losses -> registered LOSSES names
_LOSS_ALIASES = {"en": "cb", "fl": "focal", "bsl": "bsl", "focal": "focal", "cb": "cb", "ldam": "ldam", "ce": "ce"}


@dataclass(frozen=True)
class REATOptions:
    base_loss: str = "bsl"  #: L_lt: bsl | focal (FL) | cb (EN, effective-number weights) | ldam | ce
    tail_weight: float = 1.0  #: lambda in L = L_lt + lambda * TAIL (the paper: 1)
    tail_reduction: str = "paper"  #: paper (Eq. 3, Algorithm 1) | official (the authors' code)
    #: cap (nats) on every KL that TAIL pushes up, which bounds TAIL below; none: the literal (unbounded) Eq. 3.
    #: Not in the paper: Eq. 3 as written diverges (docs/methods.md, "REAT's TAIL margin")
    tail_margin: float | None = 1.0
    tail_classes: str = "paper"  #: tail classes: paper (ceil(2C/3) <= i <= C) | official (code's range)
    rbl_smoothing: float = 1e-5  #: w_c ∝ 1/(E_c + rbl_smoothing) as the authors' code; 0: the exact limit

    def __post_init__(self) -> None:
        if self.base_loss.lower() not in _LOSS_ALIASES:
            raise ConfigError(f"base_loss={self.base_loss!r}: use bsl, focal (FL), cb (EN), ldam or ce.")
        if self.tail_reduction not in ("paper", "official"):
            raise ConfigError(f"tail_reduction={self.tail_reduction!r}: use paper or official.")
        if self.tail_margin is not None and not (self.tail_margin > 0 and math.isfinite(self.tail_margin)):
            raise ConfigError(f"tail_margin={self.tail_margin}: use a finite number of nats > 0, or none for the "
                              "literal (unbounded) Eq. 3.")
        if self.tail_classes not in ("paper", "official"):
            raise ConfigError(f"tail_classes={self.tail_classes!r}: use paper or official.")
        if self.rbl_smoothing < 0:
            raise ConfigError(f"rbl_smoothing={self.rbl_smoothing} must be >= 0 (the authors' code: 1e-5).")


def smoothed_rbl_weights(ae_pred_counts: Any, class_counts: Any, smoothing: float = 1e-5) -> torch.Tensor:
    """RBL weights (Li et al., arXiv 2023, Eq. 1) as the authors' ``RBL``: ``w_c = C * (1/(E_c + s)) / sum_j 1/(E_j +
    s)``.

    With ``s = 0`` this is :func:`ltrobust.losses.rbl_weights` (the exact formula and its limit). The
    smoothing matters in one case: a class that no AE was predicted as last epoch (``a_c = 0``, so
    ``E_c = 0``). The exact limit then gives every other class weight 0, and since l_inf PGD steps along
    the *sign* of each sample's own gradient, a zero weight means those samples are not attacked at all
    (they keep the random start); with ``s > 0`` their weights are tiny but positive, so they are attacked
    as usual. Whenever all ``a_c > 0`` the two agree to about ``s`` relative, and the per-sample attack is
    the same (a positive per-class factor does not change the sign of a sample's gradient).

    Returns:
        (C,) float32 CPU tensor summing to C.
    """
    exact = rbl_weights(ae_pred_counts, class_counts)  # also validates the counts
    if smoothing == 0:
        return exact
    n = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    a = torch.as_tensor(ae_pred_counts, dtype=torch.float64).flatten()
    beta = (n - 1.0) / n  # (C,)
    eff = (1.0 - torch.pow(beta, a)) / (1.0 - beta)  # (C,) E_c
    inv = 1.0 / (eff + smoothing)
    return (inv / inv.sum() * n.numel()).to(torch.float32)


@METHODS.register("reat")
class REAT(Method):
    """REAT: RBL-weighted PGD-10 AEs; outer ``L_lt(z(x'), y) + tail_weight * TAIL(f(x'), y)``.

    The long-tailed loss is the method option ``base_loss``. ``loss=`` may stay ``ce`` (the base loss is then
    built with its default options) or name the same loss, whose ``loss_args`` (e.g. ``loss.tau``) are
    then used; any other ``loss=`` raises :class:`ConfigError`. The RBL counts of the last epoch are part
    of :meth:`state_dict`, so a resumed run crafts the same AEs.

    Example::

        cfg = resolve_config(["preset=reat-cifar10lt-resnet18", "data_dir=.data/cifar10"])
    """

    name = "reat"
    Options = REATOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_outer_loss_mode(self.attack_cfg, self.name, "the re-balancing loss (RBL)")
        self.base_loss = self._build_base_loss()
        self.tail_classes = reat_tail_classes(self.class_counts, self.options.tail_classes)
        self.ae_counts: list[float] = self.class_counts.tolist()  # a_c; first epoch: n_c (footnote 2)
        self._weights = smoothed_rbl_weights(self.ae_counts, self.class_counts, self.options.rbl_smoothing)
        self._weights_dev: dict[torch.device, torch.Tensor] = {}
        self._tail_terms: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _build_base_loss(self) -> Any:
        wanted = _LOSS_ALIASES[self.options.base_loss.lower()]
        given = getattr(self.loss, "name", "ce")
        if given == wanted:
            return self.loss
        if given != "ce":
            raise ConfigError(f"method 'reat': loss={given!r} differs from its base_loss={self.options.base_loss!r}; "
                              f"set base_loss={given} (REAT's long-tailed loss is the method option base_loss).")
        return LOSSES.get(wanted)(self.class_counts.tolist(), total_epochs=self.total_epochs)

    def run_length_terms(self) -> list[str]:
        return self.base_loss.run_length_terms()

    # --------------------------------------------------------------------------------- RBL
    @property
    def attack_weights(self) -> torch.Tensor:
        """The current RBL class weights (C,) (Li et al., arXiv 2023, Eq. 1), CPU float32."""
        return self._weights

    def _set_counts(self, counts: Any) -> None:
        self.ae_counts = [float(c) for c in counts]
        self._weights = smoothed_rbl_weights(self.ae_counts, self.class_counts, self.options.rbl_smoothing)
        self._weights_dev = {}

    def _weights_on(self, device: torch.device) -> torch.Tensor:
        w = self._weights_dev.get(device)
        if w is None:
            w = self._weights_dev[device] = self._weights.to(device)
        return w

    @property
    def loss_label(self) -> str:
        base = str(getattr(self.base_loss, "name", "ce"))
        return f"{base} + tail" if self.options.tail_weight != 0 else base

    def attack_objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        return "weighted_ce", {"weights": self._weights_on(x.device)}

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.base_loss is not self.loss and hasattr(self.base_loss, "on_epoch_start"):
            self.base_loss.on_epoch_start(epoch)

    def on_epoch_end(self, epoch: int, stats: dict[str, Any]) -> None:
        """a_c of the next epoch: this epoch's predicted classes of the training AEs."""
        counts = stats.get("ae_pred_counts")
        if counts is not None and sum(counts) > 0:
            self._set_counts(counts)

    # --------------------------------------------------------------------------------- loss
    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(x_adv.device, self.amp_dtype):
            logits, feats = logits_and_features(model, x_adv, self.name)  # (B, C), (B, D)
        logits = widen(logits)  # float32 at least; a float64 model's logits stay float64
        loss_lt = self.base_loss(logits, y)
        out = {"loss_lt": loss_lt.detach(), "logits_adv": logits.detach()}
        loss = loss_lt
        if self.options.tail_weight != 0:
            key = (feats.device, widen(feats).dtype)
            terms = self._tail_terms.get(key)
            if terms is None:  # omega and the tail mask, copied to the device once
                terms = self._tail_terms[key] = tail_terms(self.class_counts, self.tail_classes, *key)
            tail = tail_loss_from_terms(feats, y, *terms, reduction=self.options.tail_reduction,
                                        margin=self.options.tail_margin)
            loss = loss + self.options.tail_weight * tail
            out["tail"] = tail.detach()
        out["loss"] = loss
        return out

    # ------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "ae_counts": list(self.ae_counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "ae_counts" in state:
            self._set_counts(state["ae_counts"])
