"""Free adversarial training (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor and Goldstein,
"Adversarial Training for Free!", NeurIPS 2019, arXiv:1904.12843), the "Free" defense RoBal (Wu et al.,
CVPR 2021) cites in its Sec. A.2.

Each minibatch is *replayed* ``m`` times. One backward pass per replay gives both the gradient of the
parameters (one SGD step) and the gradient of the input perturbation ``delta`` (one signed ascent step),
so the adversarial examples cost nothing beyond natural training's backward pass (Algorithm 1)::

    for each minibatch (x, y), m times:
        g_theta, g_delta = grad of L(f(clip01(x + delta)), y) w.r.t. theta and delta   (one backward)
        theta <- SGD step with g_theta
        delta <- clip_eps(delta + eps * sign(g_delta))

As in the authors' code (mahyarnajibi/FreeAdversarialTraining, and ashafahi/free_adv_train for CIFAR):

- ``delta`` is one buffer of a batch's shape, zero at the start, **carried across replays, batches and
  epochs** (a smaller last batch uses its first rows); it is clipped to the eps-ball, and the model sees
  ``clamp(x + delta, 0, 1)``;
- the step is ``step_factor * eps`` with ``step_factor`` 1 (their ``fgsm_step = clip_eps``);
- the forward pass runs in **train mode** (BatchNorm with batch statistics, its running statistics updated
  at every replay): there is no separate attack pass with BatchNorm in eval mode;
- the loss is the outer loss (CE; any ``loss=`` of ltrobust), ascended by delta and descended by theta.

``train.epochs`` counts passes over the data, each batch stepped ``m`` times (``replays``): a run of
``train.epochs = E`` costs ``E * m`` natural-training epochs of gradient computations. The paper (Sec. 4)
trains ``N_ep / m`` passes so that Free-m costs about what ``N_ep`` epochs of natural training cost, and the
authors' code divides the epochs (``ceil(epochs / m)``) and the learning-rate milestones the same way; here
the preset sets the divided numbers itself (``free-at-cifar10-wrn34``: 26 passes of m = 8, the CIFAR code's
80,000 replay steps of batch 128; milestones at its steps 40,000 and 60,000, passes 13 and 19).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import METHODS
from .at_bsl import require_outer_loss_mode
from .base import Method, forward_train


@dataclass(frozen=True)
class FreeATOptions:
    m: int = 8  #: replays of each minibatch (the paper's m; CIFAR-10 Table 1: 2, 4, 8, 10)
    step_factor: float = 1.0  #: ascent step on delta = step_factor * eps (the authors': 1)

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ConfigError(f"m={self.m}: Free-AT replays each minibatch m >= 1 times (the paper's CIFAR-10 "
                              f"setting is m=8).")
        if self.step_factor <= 0:
            raise ConfigError(f"step_factor={self.step_factor} must be > 0 (the authors' step is eps: 1).")


@METHODS.register("free_at")
class FreeAT(Method):
    """Free-m: ``m`` replays of each batch; one backward per replay updates the weights and the carried
    perturbation (Shafahi et al., NeurIPS 2019, Algorithm 1).

    Example::

        cfg = resolve_config(["method=free_at", "m=4", "dataset=digits-lt", "model=smallcnn"])
    """

    name = "free_at"
    Options = FreeATOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # one backward serves the weights and the perturbation: the perturbation ascends the training loss itself
        require_outer_loss_mode(self.attack_cfg, self.name, "its own training loss (one backward per replay)")
        self.replays = int(self.options.m)
        self.step = float(self.options.step_factor) * float(self.threat.eps)
        self.delta: torch.Tensor | None = None  #: the carried perturbation buffer (rows, C, H, W)
        self._live: torch.Tensor | None = None  #: this replay's leaf perturbation, whose .grad the step fills

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """No attack pass: the perturbation is the carried buffer, applied in :meth:`compute_loss`."""
        return x

    def perturbation(self, x: torch.Tensor) -> torch.Tensor:
        """The carried perturbation for a batch like ``x`` (its first ``len(x)`` rows; zeros the first time)."""
        if self.delta is None or self.delta.shape[1:] != x.shape[1:] or self.delta.device != x.device:
            self.delta = torch.zeros_like(x, dtype=torch.float32)
        elif len(self.delta) < len(x):  # a batch larger than any before: new rows start at zero
            extra = torch.zeros((len(x) - len(self.delta), *x.shape[1:]), dtype=self.delta.dtype, device=x.device)
            self.delta = torch.cat([self.delta, extra])
        return self.delta[: len(x)]

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        delta = self.perturbation(x).clone().requires_grad_(True)  # a leaf: the step's backward fills .grad
        self._live = delta
        x_in = (x + delta.to(x.dtype)).clamp(0.0, 1.0)
        logits = forward_train(model, x_in, self.amp_dtype)  # (B, C), train mode as the authors' code
        loss = self.outer_loss(logits, y)
        return {"loss": loss, "loss_rob": loss.detach(), "logits_adv": logits.detach()}

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """``delta <- clip_eps(delta + step * sign(grad_delta))`` with the gradient of the step just taken."""
        live, self._live = self._live, None
        if live is None or live.grad is None:
            return
        rows = len(live)
        self.delta[:rows] = self.threat.project(live.detach() + self.threat.step(live.grad.float(), self.step))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "delta": None if self.delta is None else self.delta.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        delta = state.get("delta")
        self.delta = None if delta is None else delta.detach().clone().float()
