"""MMA (Ding et al., "MMA Training: Direct Input Space Margin Maximization through Adversarial Training", ICLR 2020).

Each correctly classified training point is trained at its own "shortest successful perturbation", found
by AN-PGD (the paper's Algorithm 1; the authors' ``anpgd.py``), and its loss is dropped once that margin
reaches ``d_max`` (the hinge of the MMA objective). As in the authors' ``trainer.py`` / ``config.py``:

1. clean prediction: a point is correct when its soft logit margin ``SLM = logsumexp_{j != y} z_j - z_y``
   is negative;
2. AN-PGD on the correct points only: PGD on SLM inside a per-sample ball of radius ``eps0`` (``attack.steps``
   steps of ``step_scale * eps0 / steps``, random start), then a bisection (``search_steps`` halvings in
   ``[0, 1.05 d_max]``) along the unit direction ``(x_pgd - x) / eps0`` for the radius where SLM turns
   non-negative; the AE is ``clip(x + eps * unit, 0, 1)``. Misclassified points keep ``eps = 0`` (x' = x).
   BatchNorm as the authors' code runs it: the check and the bisection in train mode (``attack.bn_mode``, the
   method's default ``train``: batch statistics of the correct points, running statistics updated by every
   search pass), the PGD in eval mode (``pgd_bn_mode``);
3. loss (Algorithm 2): ``(1 - c) * L_MMA + c * mean_i L(z(x_i), y_i)`` with
   ``L_MMA = (1/B) sum_i [eps_i < d_max or x_i misclassified] * L(z(x'_i), y_i)`` and c = 1/3
   (``clean_coeff=0`` is the paper's OMMA).

``L`` is CE or any long-tailed loss (its per-sample form). As in the authors' ``trainer.py`` (``dct_eps``), each
training point starts its search from its own last margin, never below ``eps_min`` (``eps_min`` before its first
visit; 0, hence ``eps_min``, after a visit where it was misclassified): the trainer hands the method each batch's
training-set indices (:meth:`on_batch`), the margins live in a table of the training set's size, saved in the
checkpoint, and under DDP the processes merge their tables at the end of every epoch. Called without indices
(``train_attack`` alone), every point starts at ``eps_min``. With ``adaptive=false`` every point is attacked at
``attack.eps`` with ``attack.step_size`` (no search, no hinge, no correctness split): with ``clean_coeff=0`` and
``attack_loss=ce`` that is exactly ``pgd_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd
from ..attacks.pgd import BN_MODES, attack_mode, autocast
from ..data.augment import to_device
from ..device import world_size
from ..errors import CheckpointError, ConfigError
from ..registry import METHODS
from .at_bsl import require_outer_loss_mode
from .base import Method, forward_train

#: The authors' defaults per norm (config.py and run_cifar10_training.sh): d_max of MMA-32 / MMA-2.0.
D_MAX = {"linf": 32 / 255, "l2": 2.0}
EPS_MIN = {"linf": 0.005, "l2": 0.5}
MAX_EPS_FACTOR = 1.05  #: the search's upper bound is 1.05 d_max (``attack_maxeps`` of the authors' train.py)


def soft_logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logsumexp_{j != y} z_j - z_y`` (B,): negative iff the point is classified as ``y`` (up to ties)."""
    z = logits.float()
    others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf"))
    return torch.logsumexp(others, dim=1) - z.gather(1, y[:, None]).squeeze(1)


def merge_margins(margins: torch.Tensor, seen: torch.Tensor,
                  all_reduce: Callable[[torch.Tensor], Any] = dist.all_reduce) -> None:
    """Merge the processes' margin tables after an epoch under DDP, in place (``all_reduce`` sums over them).

    Each process attacked its own slice of every batch, so it holds this epoch's margins of its own samples
    only (``seen``, (N,) bool). Afterwards every process holds, per sample, the mean of the margins found for
    it this epoch (the one margin, when each sample went to one process, as with the uniform sampler), or
    the margin it had before when no process saw it.
    """
    total = torch.where(seen, margins, torch.zeros_like(margins))
    count = seen.to(margins.dtype)
    all_reduce(total)
    all_reduce(count)
    margins.copy_(torch.where(count > 0, total / count.clamp_min(1), margins))


@dataclass(frozen=True)
class MMAOptions:
    """Defaults: the authors' CIFAR-10 settings (``config.py``); d_max and eps_min depend on attack.norm."""

    d_max: float | None = None  #: hinge threshold on the margin; None: 32/255 (linf, MMA-32), 2.0 (l2)
    eps_min: float | None = None  #: smallest starting radius eps0; None: 0.005 (linf), 0.5 (l2)
    search_steps: int | None = None  #: bisection halvings; None: 10
    step_scale: float | None = None  #: PGD step = step_scale * eps0 / attack.steps; None: 2.5
    clean_coeff: float = 1.0 / 3  #: weight c of the clean loss (0: OMMA)
    attack_loss: str = "slm"  #: slm (soft logit margin, the authors') | ce
    adaptive: bool = True  #: false: every point at attack.eps, no search (MMA with a fixed eps = PGD-AT)
    #: BatchNorm during AN-PGD's PGD (the authors' advertorch ``ctx_noparamgrad_and_eval``: eval); the correctness
    #: check and the bisection follow ``attack.bn_mode`` (the method's default: train, as the authors' trainer)
    pgd_bn_mode: str = "eval"

    def __post_init__(self) -> None:
        if not 0.0 <= self.clean_coeff <= 1.0:
            raise ConfigError(f"mma clean_coeff={self.clean_coeff} must lie in [0, 1] (1/3; 0 for OMMA).")
        if self.attack_loss not in ("slm", "ce"):
            raise ConfigError(f"mma attack_loss={self.attack_loss!r}: use slm or ce.")
        if self.pgd_bn_mode not in BN_MODES:
            raise ConfigError(f"mma pgd_bn_mode={self.pgd_bn_mode!r}: use one of {', '.join(BN_MODES)}.")
        search = {k: getattr(self, k) for k in ("d_max", "eps_min", "search_steps", "step_scale")}
        if not self.adaptive:
            given = [k for k, v in search.items() if v is not None]
            if given:
                raise ConfigError(f"mma adaptive=false attacks at attack.eps without a search, so {', '.join(given)} "
                                  f"would be ignored: drop them, or keep adaptive=true.")
        for k, v in search.items():
            if v is not None and v < (1 if k == "search_steps" else 0):
                raise ConfigError(f"mma {k}={v} is out of range (search_steps >= 1, the others >= 0).")


@METHODS.register("mma")
class MMA(Method):
    """Max-margin adversarial training: per-sample shortest successful perturbations up to d_max.

    Options:
        d_max, eps_min, search_steps, step_scale, clean_coeff, attack_loss, adaptive (:class:`MMAOptions`).
    """

    name = "mma"
    Options = MMAOptions
    uses_sample_indices = True
    #: the correctness check and the bisection in train mode (the authors' trainer calls ``model.train()`` and
    #: only AN-PGD's PGD switches to eval); ``attack.bn_mode=eval`` searches with the running statistics
    attack_bn_mode = "train"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_outer_loss_mode(self.attack_cfg, self.name, "PGD on its own attack_loss (slm)")
        o, norm = self.options, self.attack_cfg.norm
        self.d_max = D_MAX[norm] if o.d_max is None else o.d_max
        self.eps_min = EPS_MIN[norm] if o.eps_min is None else o.eps_min
        self.search_steps = 10 if o.search_steps is None else o.search_steps
        self.step_scale = 2.5 if o.step_scale is None else o.step_scale
        if o.adaptive and self.eps_min > MAX_EPS_FACTOR * self.d_max:
            raise ConfigError(f"mma eps_min={self.eps_min} exceeds the search range 1.05 * d_max = "
                              f"{MAX_EPS_FACTOR * self.d_max}: lower eps_min or raise d_max.")
        if o.adaptive and self.attack_cfg.steps < 1:
            raise ConfigError("mma needs attack.steps >= 1 for AN-PGD (the authors use 10).")
        self._margins: torch.Tensor | None = None  # (N,) each training point's last margin (the authors' dct_eps)
        self._seen: torch.Tensor | None = None  # (N,) bool: margins this process updated this epoch (DDP merge)
        self._indices: torch.Tensor | None = None  # this batch's training-set indices (on_batch)
        self._eps: torch.Tensor | None = None  # (B,) this batch's margins (0 for misclassified points)
        self._keep: torch.Tensor | None = None  # (B,) which AE losses count (hinge)

    # ------------------------------------------------------------------------ per-sample margins
    def setup(self, context: Any) -> None:
        """A margin per training point (``eps_min`` until its first visit), unless resumed from a checkpoint."""
        n, device = len(context.data.train), context.device
        if self._margins is None:
            self._margins = torch.full((n,), self.eps_min, device=device)
        elif len(self._margins) != n:
            raise CheckpointError(f"mma: the checkpoint holds margins of {len(self._margins)} training points, this "
                                  f"run's training set has {n}: the data changed; start a new run (another out= "
                                  f"or name=).")
        self._margins = self._margins.to(device)
        self._seen = torch.zeros(n, dtype=torch.bool, device=device)

    def on_batch(self, indices: torch.Tensor) -> None:
        self._indices = indices

    def _batch_indices(self, batch: int) -> torch.Tensor | None:
        """This batch's indices into the margin table (consumed), or None without a table or indices."""
        idx, self._indices = self._indices, None
        if idx is None or self._margins is None or len(idx) != batch:
            return None
        return to_device(idx, self._margins.device)

    def on_epoch_end(self, epoch: int, stats: dict[str, Any]) -> None:
        if self._margins is None:
            return
        if world_size() > 1:
            merge_margins(self._margins, self._seen)
        self._seen.zero_()

    # ------------------------------------------------------------------------------------- attack
    def attack_objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        return (soft_logit_margin if self.options.attack_loss == "slm" else "ce"), {}

    def _margin(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(x.device, self.amp_dtype):
            return soft_logit_margin(model(x), y)

    def bisection(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, unit: torch.Tensor,
                  eps0: torch.Tensor) -> torch.Tensor:
        """The authors' ``bisection_search``: radii (B,) in [0, 1.05 d_max] where SLM changes sign along ``unit``."""
        shape = (-1, *([1] * (x.dim() - 1)))
        max_eps = torch.full_like(eps0, MAX_EPS_FACTOR * self.d_max)
        lo, hi, eps = torch.zeros_like(eps0), max_eps.clone(), eps0
        margin = self._margin(model, (x + eps.view(shape) * unit).clamp(0.0, 1.0), y)
        for _ in range(self.search_steps):
            correct = margin < 0
            lo = torch.maximum(torch.where(correct, eps, torch.zeros_like(eps)), lo)
            hi = torch.minimum(torch.where(correct, max_eps, eps), hi)
            eps = (lo + hi) / 2
            margin = self._margin(model, (x + eps.view(shape) * unit).clamp(0.0, 1.0), y)
        return eps

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = self.attack_cfg
        objective, _ = self.attack_objective(x, y)
        if not self.options.adaptive:
            self._eps, self._keep = torch.full((x.shape[0],), a.eps, device=x.device), None
            return pgd(model, x, y, self.threat, steps=a.steps, step_size=a.step_size, objective=objective,
                       random_start=a.random_start, bn_mode=self.options.pgd_bn_mode, amp_dtype=self.amp_dtype)
        shape = (-1, *([1] * (x.dim() - 1)))
        idx = self._batch_indices(x.shape[0])
        if idx is None:
            eps0 = torch.full((x.shape[0],), self.eps_min, device=x.device)
        else:  # each point's last margin, never below eps_min (the authors' get_eps)
            eps0 = self._margins[idx].clamp(self.eps_min, MAX_EPS_FACTOR * self.d_max).to(x.device)
        # The authors' trainer: one train-mode clean pass gives both the correctness and the clean loss. Here the
        # loss's clean pass (compute_loss) updates the running statistics, so the check uses the batch statistics
        # without updating them; without a clean loss (OMMA) the check is the pass that updates them.
        check_mode = "batch" if self.bn_mode == "train" and self.options.clean_coeff > 0 else self.bn_mode
        with attack_mode(model, check_mode):
            correct = self._margin(model, x, y) < 0  # (B,)
        eps, unit = torch.zeros_like(eps0), torch.zeros_like(x)
        sub = correct.nonzero().squeeze(1)  # one host sync per batch: AN-PGD runs on the correct points only
        if sub.numel():  # as the authors', so that batch statistics (bn_mode train / batch) are theirs
            xs, ys, e0 = x[sub], y[sub], eps0[sub]
            x_pgd = pgd(model, xs, ys, self.threat.per_sample(e0, x.dim()), steps=a.steps,
                        step_size=(self.step_scale * e0 / a.steps).view(shape), objective=objective,
                        random_start=a.random_start, bn_mode=self.options.pgd_bn_mode, amp_dtype=self.amp_dtype)
            unit[sub] = (x_pgd - xs) / (e0.view(shape) + 1e-12)
            with attack_mode(model, self.bn_mode):  # the authors' search: in the trainer's mode (train)
                eps[sub] = self.bisection(model, xs, ys, unit[sub], e0)
        if idx is not None:  # the authors' update_eps: every point of the batch, 0 for misclassified ones
            self._margins[idx] = eps.to(self._margins.device, self._margins.dtype)
            self._seen[idx] = True
        self._eps, self._keep = eps, ~correct | (eps < self.d_max)
        return (x + eps.view(shape) * unit).clamp(0.0, 1.0).detach()

    # --------------------------------------------------------------------------------------- loss
    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._eps is None or self._eps.shape[0] != y.shape[0]:
            raise RuntimeError("mma.compute_loss needs this batch's margins: call train_attack first.")
        c = self.options.clean_coeff
        out: dict[str, torch.Tensor] = {}
        if c > 0:  # the clean pass first, as in the authors' trainer (BatchNorm statistics order)
            loss_clean = self.outer_loss(forward_train(model, x, self.amp_dtype), y)
            out["loss_clean"] = loss_clean.detach()
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # (B, C)
        per_sample = self.outer_loss(logits_adv, y, reduction="none")  # (B,)
        if self._keep is not None:
            per_sample = per_sample * self._keep.float()
        loss_mma = per_sample.mean()
        loss = (1 - c) * loss_mma + c * loss_clean if c > 0 else loss_mma
        out.update({"loss": loss, "loss_mma": loss_mma.detach(), "eps": self._eps.mean(),
                    "logits_adv": logits_adv.detach()})
        return out

    # ------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._margins is not None:
            state["margins"] = self._margins.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "margins" in state:
            self._margins = torch.as_tensor(state["margins"], dtype=torch.float32).clone()
