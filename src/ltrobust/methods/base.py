"""The training-method plug-in: how to craft training adversarial examples and what loss to minimise.

One trainer runs every method (timm's ``TrainingTask`` pattern). A method is an object whose
:meth:`Method.forward` returns a dict with ``loss`` and its named parts (logged every step), plus the
detached adversarial logits used for the per-epoch distribution of predicted classes of training AEs.
Epoch-dependent behaviour (TAET's stages, REAT's class statistics, LDAM's deferred re-weighting) goes
through :meth:`on_epoch_start` / :meth:`on_epoch_end`, never through attributes stuck on the model.
The trainer owns the optimiser; methods never call ``zero_grad``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from ..attacks import pgd, threat_model
from ..attacks.pgd import eval_mode
from ..attacks.threat import ThreatModel
from ..config import AttackConfig, RunConfig
from ..device import widen
from ..errors import ConfigError


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


@dataclass(frozen=True)
class Stage:
    """A training run that a method needs before its own, declared as data (the self-distillation teacher).

    The method never runs it: the orchestration (:func:`ltrobust.experiments.train`) trains ``config`` into
    ``<run_dir>/<name>`` (resumable like any run), or loads ``path`` when given, and hands the stage's
    deployed model to :meth:`Method.use_stage` before the method's own training.
    """

    name: str  #: sub-folder of the run folder, and the key passed to ``use_stage``
    config: RunConfig  #: the stage's own run config
    data: Callable[[Any], Any] | None = None  #: the stage's training data from the method's (None: the same)
    checkpoint: str = "last"  #: which checkpoint of the stage the method receives (last | best)
    path: str | None = None  #: an already trained run folder / checkpoint to use instead of training


@dataclass(frozen=True)
class ClassBudget:
    """Per-class radius and step of a method's training attack (RobustLT sets it on its base method).

    Sample i of class ``y_i`` is attacked inside the ball of radius ``scale * eps[y_i]`` with steps of
    ``scale * step[y_i]``, or, with ``step=None``, of ``radius_i / attack.eps * attack.step_size`` (the step
    scaled like the radius, as RobustLT's code computes it). A ``uniform`` random start lies in the ball of
    radius ``start_eps`` (RobustLT's code: the global ``attack.eps``), or in each sample's own ball when None.

    Attributes:
        eps: (C,) radii in pixel units (CPU; copied to the device once).
        step: (C,) step sizes, or None for steps proportional to the radius.
        scale: a multiplier of every radius and step (RobustLT's warm-up intensity), applied on the device.
        start_eps: radius of the uniform random start, or None.
    """

    eps: torch.Tensor
    step: torch.Tensor | None = None
    scale: float = 1.0
    start_eps: float | None = None


class Method:
    """Base class of every training method.

    Args:
        class_counts: training images per class (C,).
        attack: the training-time attack settings (threat model, eps, steps, step size, start).
        loss: the long-tailed loss object (``LOSSES`` entry) used as the outer loss; with
            ``attack.loss_mode`` ``inner`` or ``both`` it is also the attack objective.
        options: the method's own ``Options`` dataclass.
        total_epochs: length of training (for ramps and stage switches).
        amp_dtype: autocast dtype for the training-time attack and step (``torch.bfloat16``) or None.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: head the method needs ("linear" or "cosine"); the trainer builds the model accordingly.
    required_head: ClassVar[str | None] = None
    #: False for methods without adversarial examples (natural training).
    adversarial: ClassVar[bool] = True
    #: BatchNorm while crafting training AEs when ``attack.bn_mode`` is empty (``ltrobust.attacks.pgd.BN_MODES``)
    attack_bn_mode: ClassVar[str] = "eval"
    #: True for methods that keep state per training sample (MMA's margins): the trainer then calls
    #: :meth:`on_batch` with each batch's training-set indices before its attack.
    uses_sample_indices: ClassVar[bool] = False
    #: optimiser steps on each batch (Free-AT's replay count m): the trainer runs ``train_attack``,
    #: ``compute_loss``, the SGD step and ``after_step`` that many times on the same batch.
    replays: int = 1

    def __init__(self, class_counts: Sequence[int], attack: AttackConfig, loss: Any, options: Any = None,
                 total_epochs: int = 1, amp_dtype: torch.dtype | None = None) -> None:
        self.class_counts = torch.as_tensor(list(class_counts), dtype=torch.float32)
        self.num_classes = len(self.class_counts)
        self.attack_cfg = attack
        self.threat = threat_model(attack.norm, attack.eps)
        #: BatchNorm while attacking: ``attack.bn_mode``, else the method's own default
        self.bn_mode = attack.bn_mode or self.attack_bn_mode
        self.loss = loss
        self.options = options if options is not None else self.Options()
        self.total_epochs = total_epochs
        self.amp_dtype = amp_dtype
        self.epoch = 0
        #: per-class radii and steps of the training attack (None: ``attack.eps`` and ``attack.step_size``)
        self.class_budget: ClassBudget | None = None
        self._budget_dev: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}
        #: ``attack.loss``: the AE-generation loss chosen apart from the outer one (None: as loss_mode says)
        self.attack_loss = None
        if attack.loss:
            if type(self).attack_objective is not Method.attack_objective:
                raise ConfigError(f"method {self.name!r} crafts its training AEs with an objective of its own (its "
                                  f"paper's), so attack.loss={attack.loss!r} does not apply: drop attack.loss, or use "
                                  f"method=pgd_at attack.loss={attack.loss}.")
            from ..registry import LOSSES

            self.attack_loss = LOSSES.get(attack.loss)(self.class_counts, total_epochs=total_epochs,
                                                       **dict(attack.loss_args))

    # ------------------------------------------------------------------ the two things a method says
    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training AEs: PGD on the attack objective, BatchNorm as ``self.bn_mode`` says (SPEC 3: eval)."""
        objective, kwargs = self.attack_objective(x, y)
        return self.attack_pgd(model, x, y, objective, kwargs)

    def attack_pgd(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Any = "ce",
                   objective_kwargs: dict[str, Any] | None = None, steps: int | None = None) -> torch.Tensor:
        """The training attack's PGD call: ``attack.steps`` (or ``steps``) steps on ``objective`` inside
        :meth:`attack_ball`, from ``attack.random_start``, BatchNorm as ``self.bn_mode``, under the step's
        autocast. Every method whose AEs are plain PGD crafts them here, so a :class:`ClassBudget` reaches it."""
        a = self.attack_cfg
        threat, step_size, start_eps = self.attack_ball(x, y)
        return pgd(model, x, y, threat, steps=a.steps if steps is None else steps, step_size=step_size,
                   objective=objective, random_start=a.random_start, objective_kwargs=objective_kwargs,
                   bn_mode=self.bn_mode, amp_dtype=self.amp_dtype, start_eps=start_eps)

    def set_class_budget(self, budget: ClassBudget | None) -> None:
        """Attack each class inside its own ball from now on (:class:`ClassBudget`); None: ``attack.eps``."""
        if budget is not None and budget.eps.numel() != self.num_classes:
            raise ConfigError(f"a class budget of {budget.eps.numel()} radii for {self.num_classes} classes: give "
                              "one radius per class.")
        if self.class_budget is None or budget is None or budget.eps is not self.class_budget.eps \
                or budget.step is not self.class_budget.step:
            self._budget_dev = {}  # new radii: copied to the device again (a new scale alone is not)
        self.class_budget = budget

    def attack_ball(self, x: torch.Tensor, y: torch.Tensor) -> tuple[ThreatModel, float | torch.Tensor, float | None]:
        """The ball, step size and start radius of this batch's training attack: ``attack.eps``,
        ``attack.step_size`` and the ball's own start without a class budget; with one, each sample's class
        radius and step (tensors (B, 1, ..., 1)) and the budget's start radius (:class:`ClassBudget`)."""
        b = self.class_budget
        if b is None:
            return self.threat, self.attack_cfg.step_size, None
        dev = self._budget_dev.get(x.device)
        if dev is None:
            step = None if b.step is None else b.step.to(x.device, x.dtype)
            dev = self._budget_dev[x.device] = (b.eps.to(x.device, x.dtype), step)
        eps_c, step_c = dev
        eps = (eps_c * b.scale)[y]  # (B,)
        shape = (-1,) + (1,) * (x.dim() - 1)
        if step_c is None:
            a = self.attack_cfg
            step = eps / a.eps * a.step_size if a.eps > 0 else torch.zeros_like(eps)
        else:
            step = (step_c * b.scale)[y]
        return self.threat.per_sample(eps, x.dim()), step.view(shape), b.start_eps

    def attack_objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        """``attack.loss`` when set (REAT Table 2: RW / RWS / ENR in the attack, BSL outside); else CE, or the
        long-tailed loss when ``attack.loss_mode`` is ``inner`` or ``both``."""
        if self.attack_loss is not None:
            return self.attack_loss.attack_loss, {}
        if self.attack_cfg.loss_mode in ("inner", "both"):
            return self.loss.attack_loss, {}
        return "ce", {}

    def outer_loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The long-tailed loss as outer loss (``loss_mode`` outer / both), CE for ``inner``."""
        if self.attack_cfg.loss_mode == "inner":
            return nn.functional.cross_entropy(widen(logits), y, reduction=reduction)
        return self.loss(logits, y, reduction=reduction)

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Craft AEs and return ``{"loss": ..., <named parts>, "logits_adv": detached (B, C)}``."""
        x_adv = self.train_attack(model, x, y) if self.adversarial else x
        return self.compute_loss(model, x, x_adv, y)

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ stages
    @classmethod
    def head_for(cls, options: Any) -> str | None:
        """The head the model needs with these options (``required_head``; a wrapper asks its base)."""
        return cls.required_head

    @classmethod
    def stages(cls, cfg: RunConfig, options: Any) -> list[Stage]:
        """Runs this method needs before its own training (none by default); see :class:`Stage`."""
        return []

    def use_stage(self, name: str, model: nn.Module) -> None:
        """Receive the deployed model of the stage ``name`` (called before training)."""
        raise ConfigError(f"method {self.name!r} declares no stage {name!r}.")

    def missing_stages(self) -> list[str]:
        """Names of declared stages whose model has not been handed over yet (training refuses to start)."""
        return []

    # ------------------------------------------------------------------------------------- hooks
    def setup(self, context: Any) -> None:
        """Called once by the trainer before training (``context`` is the trainer)."""

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        for loss in (self.loss, self.attack_loss):
            if hasattr(loss, "on_epoch_start"):
                loss.on_epoch_start(epoch)

    def on_epoch_end(self, epoch: int, stats: dict[str, Any]) -> None:
        """``stats['ae_pred_counts']`` holds the predicted-class counts of this epoch's training AEs."""

    def on_batch(self, indices: torch.Tensor) -> None:
        """The training-set indices (int64 (B,), CPU) of the batch about to be attacked (called by the
        trainer only for methods with ``uses_sample_indices``; a padded batch repeats indices)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimiser step (AWP restores the weights here)."""

    def deployed(self, model: nn.Module) -> nn.Module:
        """The model whose logits are served and attacked at evaluation (default: the model itself)."""
        return model

    @property
    def loss_label(self) -> str:
        """The training loss actually used, for result rows (``at_bsl + bsl``, not the ignored ``loss=``).

        Default: the configured outer loss; methods with a loss of their own override it."""
        return str(getattr(self.loss, "name", "ce"))

    def parameters(self) -> list[nn.Parameter]:
        """Extra trainable parameters owned by the method (none by default)."""
        return []

    def run_length_terms(self) -> list[str]:
        """What in this method (and its loss) depends on ``train.epochs``: stage switches, ramps, DRW.

        A run is extended (resumed with another ``train.epochs``) only when this is empty, since only then
        are its finished epochs those of a straight run of the new length. Default: the loss's terms."""
        terms = getattr(self.loss, "run_length_terms", None)
        return list(terms()) if callable(terms) else []

    # ---------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))


class WrappedMethod(Method):
    """A method that changes one part of another, its *base* (AWP its weights, RobustLT its attack budgets).

    The base is built from :meth:`base_spec` with the wrapper's class counts, attack settings, loss, epochs and
    precision, and every hook goes to it unless the subclass overrides the hook: the AEs (``train_attack``),
    the loss, the stages, ``setup``, the epoch and batch hooks, ``after_step``, the deployed logits, the loss
    label, extra parameters, run-length terms and the class budget. Whether the step is adversarial, whether
    the trainer passes sample indices and which head the model needs are the base's. The wrapper's state holds
    the base's under ``"base"``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from ..registry import METHODS

        name, base_options = self.base_spec(self.options)
        self.base: Method = METHODS.get(name)(self.class_counts.tolist(), self.attack_cfg, self.loss, base_options,
                                              self.total_epochs, self.amp_dtype)

    @classmethod
    def base_spec(cls, options: Any) -> tuple[str, Any]:
        """(registered name of the base method, its ``Options`` instance or None) for these options."""
        raise NotImplementedError

    @classmethod
    def head_for(cls, options: Any) -> str | None:
        from ..registry import METHODS

        name, base_options = cls.base_spec(options)
        return METHODS.get(name).head_for(base_options if base_options is not None else METHODS.get(name).Options())

    @classmethod
    def stages(cls, cfg: RunConfig, options: Any) -> list[Stage]:
        from ..registry import METHODS

        name, base_options = cls.base_spec(options)
        base_cls = METHODS.get(name)
        return base_cls.stages(cfg, base_options if base_options is not None else base_cls.Options())

    @property
    def adversarial(self) -> bool:  # type: ignore[override]
        return self.base.adversarial

    @property
    def uses_sample_indices(self) -> bool:  # type: ignore[override]
        return self.base.uses_sample_indices

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.base.train_attack(model, x, y)

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.base.compute_loss(model, x, x_adv, y)

    def set_class_budget(self, budget: ClassBudget | None) -> None:
        super().set_class_budget(budget)
        self.base.set_class_budget(budget)

    def use_stage(self, name: str, model: nn.Module) -> None:
        self.base.use_stage(name, model)

    def missing_stages(self) -> list[str]:
        return self.base.missing_stages()

    def setup(self, context: Any) -> None:
        self.base.setup(context)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.on_epoch_start(epoch)  # the base starts the loss's epoch (the same loss object)

    def on_epoch_end(self, epoch: int, stats: dict[str, Any]) -> None:
        self.base.on_epoch_end(epoch, stats)

    def on_batch(self, indices: torch.Tensor) -> None:
        self.base.on_batch(indices)

    def after_step(self, model: nn.Module) -> None:
        self.base.after_step(model)

    def deployed(self, model: nn.Module) -> nn.Module:
        return self.base.deployed(model)

    @property
    def loss_label(self) -> str:
        return self.base.loss_label

    def parameters(self) -> list[nn.Parameter]:
        return self.base.parameters()

    def run_length_terms(self) -> list[str]:
        return self.base.run_length_terms()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base.load_state_dict(state.get("base", {"epoch": self.epoch}))


FEATURES_CONTRACT = (
    "the model's forward must accept return_features=True and then return (logits (B, C), penultimate features "
    "(B, D)), as ltrobust models (LTModel) do. For your own network: `def forward(self, x, return_features=False): "
    "f = self.body(x); z = self.fc(f); return (z, f) if return_features else z`")


def logits_and_features(model: nn.Module, x: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(x, return_features=True)``: logits (B, C) and penultimate features (B, D) from one pass (through
    the wrapper's forward, DDP-safe); a model without that contract raises :class:`ConfigError` saying what
    ``method`` needs."""
    from ..device import unwrap

    inner = unwrap(model)
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        params = {}
    if "return_features" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"method {method!r} needs the penultimate features of {type(inner).__name__}: "
                          f"{FEATURES_CONTRACT}.")
    out = model(x, return_features=True)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
            and out[0].dim() == 2 and out[1].dim() == 2):
        raise ConfigError(f"method {method!r}: {type(inner).__name__}(x, return_features=True) returned "
                          f"{type(out).__name__}, not (logits (B, C), features (B, D)): {FEATURES_CONTRACT}.")
    return out[0], out[1]


def forward_train(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """The model's forward pass in train mode under the step's autocast; logits returned in float32 (float64
    for a float64 model)."""
    from ..attacks.pgd import autocast

    with autocast(x.device, amp_dtype):
        return widen(model(x))


def clean_logits_eval(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Clean logits with BatchNorm in eval mode, no gradient (targets for KL attacks)."""
    from ..attacks.pgd import autocast

    with torch.no_grad(), eval_mode(model), autocast(x.device, amp_dtype):
        return widen(model(x))
