"""MCAT: manifold-constrained adversarial training (Xian, Yang and Yu, IJCAI 2026, arXiv:2605.02183; code
yneversky/MCAT at f19c2af, a zip of the code and an appendix).

Class-conditional generators ``G_y`` (one MLP per class, latent ``z ~ N(0, I)`` -> penultimate features) model
each class's feature manifold; they are fitted once before adversarial training on the features of the model
(:func:`fit_generators`, in :meth:`MCAT.setup`) and frozen. The distance of a feature vector to its class's
generator range, ``d(u, y) = ||u - G_y(z*)||^2`` after ``latent_steps`` gradient steps on ``z``
(:func:`ltrobust.losses.manifold_distance`), enters the inner maximisation (MS-PGD, :func:`ms_pgd`) and, in the
paper's description, the outer loss; a simplex-ETF regulariser acts on the classifier weights
(:func:`ltrobust.losses.etf_loss`). Two variants (``variant=``):

- ``paper`` (default; appendix A.4, B, Table 8): MS-PGD maximises ``CE + lambda d`` with ``d`` differentiable
  (the appendix's sign), the outer loss is ``CE + lambda d + beta L_ETF`` on the AEs, lambda 0.1, beta 0.01
  (Table 8's "equivalent lambda_geom in implementation"; 3e-3 is its Eq. 3 weight), generators
  128 -> 1024 -> 1024 -> D, each point's own latent steps.
- ``code`` (the release's ``mcat/trainer.py``): ``d`` is computed without gradient, so MS-PGD is PGD on CE
  (``CE - 0.2 d`` with d detached) and the method is **PGD-AT plus an ETF term of weight 1.0**; generators
  64 -> 256 -> 256 -> D; latent steps on the mean over each class's points.

The run settings of each (cosine lr and class-uniform sampling for the paper; constant lr, no random start,
instance-uniform sampling for the release) are in the presets ``mcat-*`` and ``mcat-code-*``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd
from ..attacks.pgd import autocast, eval_mode
from ..attacks.threat import ThreatModel
from ..config import RunConfig, with_updates
from ..device import widen
from ..errors import CheckpointError, ConfigError
from ..losses.mcat import (LATENT_REDUCTIONS, ClassGroups, class_groups, draw_latents, etf_loss,
                           manifold_distance)
from ..registry import METHODS
from .at_bsl import require_outer_loss_mode
from .base import Method, Stage, logits_and_features

log = logging.getLogger(__name__)

#: each variant's values of the options left at None (docs/methods.md, "mcat")
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"lambda_m": 0.1, "etf_weight": 0.01, "distance": "differentiable", "inner_sign": 1,
              "outer_manifold": True, "z_dim": 128, "hidden": (1024, 1024), "latent_reduction": "sample"},
    "code": {"lambda_m": 0.2, "etf_weight": 1.0, "distance": "detached", "inner_sign": -1,
             "outer_manifold": False, "z_dim": 64, "hidden": (256, 256), "latent_reduction": "class_mean"},
}


# ------------------------------------------------------------------------------------------ generators
class ClassGenerators(nn.Module):
    """One MLP generator per class, ``z (z_dim) -> hidden... -> D`` with ReLU after each hidden layer and a linear
    output (appendix B; the release's ``MLPGenerator``).

    Args:
        num_classes: C.
        z_dim: latent dimension.
        feature_dim: D, the classifier's penultimate feature dimension.
        hidden: widths of the hidden layers.

    ``G(z, groups)`` maps latent codes (B, z_dim) to features (B, D), row i through the generator of its class
    (``groups`` from :func:`ltrobust.losses.class_groups`); ``G.generators[c](z)`` is class c's alone.
    """

    def __init__(self, num_classes: int, z_dim: int, feature_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.num_classes, self.z_dim, self.feature_dim, self.hidden = num_classes, z_dim, feature_dim, tuple(hidden)

        def mlp() -> nn.Sequential:
            layers: list[nn.Module] = []
            width = z_dim
            for h in self.hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            return nn.Sequential(*layers, nn.Linear(width, feature_dim))

        self.generators = nn.ModuleList(mlp() for _ in range(num_classes))

    def forward(self, z: torch.Tensor, groups: ClassGroups) -> torch.Tensor:
        parts = [self.generators[c](z[idx]) for c, idx in zip(groups.classes, groups.index)]
        if not parts:
            return z.new_zeros((0, self.feature_dim))
        return torch.cat(parts)[groups.inverse]

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, z_dim={self.z_dim}, hidden={self.hidden}, features={self.feature_dim}"


def generator_loss(G: ClassGenerators, features: torch.Tensor, groups: ClassGroups,
                   z: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_{c in batch} mean_{i: y_i = c} ||G_c(z_i) - f_i||^2 / D``: the release's per-class MSE between fresh
    generator samples and the class's features (``mcat/trainer.py:405-416``); ``z`` drawn when None."""
    if z is None:
        z = draw_latents(groups, G.z_dim, features.device)
    per = (G(z, groups) - features.detach().float()).pow(2).mean(1)  # (B,) mean over D
    return (per * groups.weight).sum()


def fit_generators(G: ClassGenerators, batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                   epochs: int = 10, lr: float = 1e-3,
                   sync: Callable[[ClassGenerators], None] | None = None) -> list[float]:
    """Fit the generators: Adam(``lr``), one step of :func:`generator_loss` per batch of ``batches(epoch)``
    (features (B, D), labels (B,)), ``epochs`` passes; then frozen (no gradient, eval mode).

    ``sync(G)`` runs after each backward pass (DDP: average the gradients over the processes). Returns the mean
    loss per epoch (weighted by batch size, as the release logs it)."""
    G.train()
    for p in G.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(G.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for feats, y in batches(epoch):
            groups = class_groups(y)
            loss = generator_loss(G, feats, groups)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sync is not None:
                sync(G)
            opt.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
        history.append(total / max(seen, 1))
    freeze_generators(G)
    return history


def freeze_generators(G: ClassGenerators) -> ClassGenerators:
    G.eval()
    for p in G.parameters():
        p.requires_grad_(False)
    return G


def generators_digest(G: ClassGenerators) -> str:
    """sha256 of the generators' weights (recorded in the method state, checked when a run resumes)."""
    h = hashlib.sha256()
    for name, t in G.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- MS-PGD
class LogitsAndFeatures(nn.Module):
    """``x -> [z(x), f(x)]`` (B, C + D) in one pass, so the one PGD loop can attack an objective of both."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, feats = logits_and_features(self.model, x, "mcat")
        return torch.cat([widen(logits), widen(feats)], dim=1)


def ms_objective(out: torch.Tensor, y: torch.Tensor, *, num_classes: int, generators: ClassGenerators,
                 groups: ClassGroups, lam: float, sign: float = 1.0, latent_steps: int = 5, latent_lr: float = 0.1,
                 reduction: str = "sample", differentiable: bool = True) -> torch.Tensor:
    """MS-PGD's per-sample objective ``CE(z, y) + sign * lam * d(f, y)`` (B,) of ``out = [z, f]`` (B, C + D)."""
    logits, feats = widen(out[:, :num_classes]), widen(out[:, num_classes:])
    ce = F.cross_entropy(logits, y, reduction="none")
    d = manifold_distance(generators, feats, groups, generators.z_dim, latent_steps, latent_lr, reduction,
                          differentiable)
    return ce + sign * lam * d


def ms_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, generators: ClassGenerators,
           lam: float, sign: float = 1.0, steps: int = 10, step_size: float | torch.Tensor = 2 / 255,
           latent_steps: int = 5, latent_lr: float = 0.1, reduction: str = "sample", differentiable: bool = True,
           random_start: bool | str = True, bn_mode: str = "eval", amp_dtype: torch.dtype | None = None,
           start_eps: float | None = None, groups: ClassGroups | None = None) -> torch.Tensor:
    """Manifold-constrained PGD: the one PGD loop (:func:`ltrobust.attacks.pgd`) on
    ``CE(z(x'), y) + sign * lam * d(f(x'), y)`` (:func:`ms_objective`). Every step projects each point's features
    onto its class's generator range afresh (``latent_steps`` steps from a new Gaussian draw). With ``lam=0`` it is
    PGD on CE; with ``differentiable=False`` the distance carries no gradient and it is PGD on CE too (the
    release), though the latent draws still use the random stream.

    Returns adversarial images (B, C, H, W), detached, inside ``threat`` and [0, 1]."""
    if lam == 0:
        return pgd(model, x, y, threat, steps=steps, step_size=step_size, objective="ce", random_start=random_start,
                   bn_mode=bn_mode, amp_dtype=amp_dtype, start_eps=start_eps)
    num_classes = _num_classes(model, x)
    kwargs = {"num_classes": num_classes, "generators": generators, "groups": groups or class_groups(y), "lam": lam,
              "sign": sign, "latent_steps": latent_steps, "latent_lr": latent_lr, "reduction": reduction,
              "differentiable": differentiable}
    target = LogitsAndFeatures(model).train(model.training)  # pgd restores the wrapper's mode onto the model
    return pgd(target, x, y, threat, steps=steps, step_size=step_size, objective=ms_objective,
               random_start=random_start, objective_kwargs=kwargs, bn_mode=bn_mode, amp_dtype=amp_dtype,
               start_eps=start_eps)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    n = getattr(model, "num_classes", None)
    if n is None:
        with torch.no_grad(), eval_mode(model):
            n = model(x[:1]).shape[1]
    return int(n)


# --------------------------------------------------------------------------------------------- method
@dataclass(frozen=True)
class MCATOptions:
    """None (or an empty ``hidden``) takes the variant's value (:data:`VARIANTS`)."""

    variant: str = "paper"  #: paper (the paper and appendix) | code (the release's trainer)
    lambda_m: float | None = None  #: manifold weight: paper 0.1 (Table 8 lambda_man), code 0.2
    etf_weight: float | None = None  #: ETF weight: paper 0.01 (Table 8, implementation-equivalent), code 1.0
    distance: str | None = None  #: differentiable (paper) | detached (code: no gradient)
    inner_sign: int | None = None  #: sign of lambda d in MS-PGD: paper +1 (appendix A.4), code -1
    outer_manifold: bool | None = None  #: lambda d in the outer loss too: paper true, code false
    z_dim: int | None = None  #: generator latent size: paper 128, code 64
    hidden: tuple[int, ...] = ()  #: generator hidden widths: paper 1024,1024; code 256,256
    latent_steps: int = 5  #: T_z, gradient steps on z per distance (both)
    latent_lr: float = 0.1  #: their step size (the release)
    latent_reduction: str | None = None  #: sample (paper: each point's own steps) | class_mean (the release)
    gen_epochs: int = 10  #: generator fitting passes over the training set (the release)
    gen_lr: float = 1e-3  #: Adam learning rate of the fitting (the release)
    #: epochs of a natural-training stage ``clean/`` whose weights start adversarial training and whose features
    #: the generators fit (the release's --clean_ckpt); 0: from the initialisation (the release's default)
    clean_epochs: int = 0
    clean_checkpoint: str = ""  #: an already trained run folder or checkpoint to use as that stage instead

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"mcat variant={self.variant!r}: use paper or code.")
        for name in ("lambda_m", "etf_weight"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"mcat {name}={v} must be a finite number >= 0.")
        if self.distance not in (None, "differentiable", "detached"):
            raise ConfigError(f"mcat distance={self.distance!r}: use differentiable (paper) or detached (code).")
        if self.inner_sign not in (None, 1, -1):
            raise ConfigError(f"mcat inner_sign={self.inner_sign}: use 1 (appendix A.4) or -1 (the release).")
        if self.latent_reduction not in (None, *LATENT_REDUCTIONS):
            raise ConfigError(f"mcat latent_reduction={self.latent_reduction!r}: use sample or class_mean.")
        if (self.z_dim is not None and self.z_dim < 1) or any(h < 1 for h in self.hidden):
            raise ConfigError("mcat z_dim and the hidden widths must be >= 1.")
        if self.latent_steps < 0 or self.gen_epochs < 0 or not self.latent_lr >= 0 or not self.gen_lr > 0:
            raise ConfigError("mcat needs latent_steps >= 0, gen_epochs >= 0, latent_lr >= 0 and gen_lr > 0.")
        if self.clean_epochs < 0:
            raise ConfigError(f"mcat clean_epochs={self.clean_epochs}: use 0 (no clean stage) or more.")

    @property
    def clean_stage(self) -> bool:
        """Whether adversarial training starts from a clean model (``clean_epochs`` or ``clean_checkpoint``)."""
        return self.clean_epochs > 0 or bool(self.clean_checkpoint)

    def value(self, name: str) -> Any:
        """The option, or the variant's value when it is left at None (``hidden``: empty)."""
        v = getattr(self, name)
        return VARIANTS[self.variant][name] if v is None or (name == "hidden" and not v) else v


@METHODS.register("mcat")
class MCAT(Method):
    """MCAT: MS-PGD AEs against class-conditional feature generators, outer CE (+ lambda d) + ETF weight term.

    The generators are fitted in :meth:`setup` (the trainer calls it before the first epoch) on the features of
    the model as training starts, stored once in ``<run>/method/mcat-generators.pt`` (its sha256 in the method
    state, so a resumed run uses the very same ones) and frozen. Without the manifold term (``lambda_m=0``) no
    generator is fitted: ``variant=paper lambda_m=0 etf_weight=0`` is PGD-AT exactly and ``variant=code
    lambda_m=0`` PGD-AT plus the ETF term (tested).

    Example::

        cfg = resolve_config(["preset=mcat-cifar100lt-resnet18", "data_dir=.data/cifar100"])
        ltrobust.experiments.train(cfg)
    """

    name = "mcat"
    Options = MCATOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_outer_loss_mode(self.attack_cfg, self.name, "MS-PGD on CE and the manifold distance")
        if self.num_classes < 2:
            raise ConfigError("mcat's ETF regulariser needs at least 2 classes.")
        o = self.options
        self.lam = float(o.value("lambda_m"))
        self.etf_weight = float(o.value("etf_weight"))
        self.differentiable = o.value("distance") == "differentiable"
        self.inner_sign = float(o.value("inner_sign"))
        self.outer_manifold = bool(o.value("outer_manifold"))
        self.z_dim, self.hidden = int(o.value("z_dim")), tuple(o.value("hidden"))
        self.latent_reduction = o.value("latent_reduction")
        self.generators: ClassGenerators | None = None
        self.generator_losses: list[float] = []
        self._digest: str | None = None  # sha256 of the generators in use
        self._state_digest: str | None = None  # the digest a resumed run's checkpoint records
        self._groups: tuple[torch.Tensor, ClassGroups] | None = None
        self._init_state: dict[str, torch.Tensor] | None = None  # the clean stage's weights (use_stage)
        self._resumed = False  # load_state_dict ran: the model and the generators come from the run itself

    @property
    def needs_generators(self) -> bool:
        return self.lam > 0

    # ------------------------------------------------------------------------------- clean stage
    @classmethod
    def stages(cls, cfg: RunConfig, options: MCATOptions) -> list[Stage]:
        """With ``clean_epochs`` (or ``clean_checkpoint``): natural training of the same model on the same data into
        ``<run>/clean`` (the run's optimiser settings, a cosine schedule over ``clean_epochs``, no fine-tuning, no
        EMA), whose last weights start adversarial training (the release's ``--clean_ckpt``)."""
        if not options.clean_stage:
            return []
        config = with_updates(
            cfg, method={"name": "natural", "loss": "ce", "args": {}, "loss_args": {}, "teacher": None},
            attack={"loss_mode": "outer", "loss": "", "loss_args": {}},
            train={"epochs": max(options.clean_epochs, 1), "schedule": "cosine", "milestones": (), "warmup_epochs": 0,
                   "finetune": "none", "ema": 0.0, "record_ae_drift": False, "val_every": 0})
        return [Stage(name="clean", config=config, checkpoint="last", path=options.clean_checkpoint or None)]

    def use_stage(self, name: str, model: nn.Module) -> None:
        if name != "clean":
            super().use_stage(name, model)
        from ..device import unwrap

        self._init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}

    def missing_stages(self) -> list[str]:
        return ["clean"] if self.options.clean_stage and self._init_state is None else []

    @property
    def loss_label(self) -> str:
        base = str(getattr(self.loss, "name", "ce"))
        parts = [base] + (["manifold"] if self.outer_manifold and self.lam > 0 else [])
        return " + ".join(parts + (["etf"] if self.etf_weight > 0 else []))

    # ---------------------------------------------------------------------------------- generators
    def set_generators(self, generators: ClassGenerators) -> None:
        """Use ``generators`` (frozen here) instead of fitting them in :meth:`setup`."""
        self.generators = freeze_generators(generators)
        self._digest = generators_digest(self.generators)

    def setup(self, context: Any) -> None:
        """Fit the generators on the features of ``context.model`` (a fresh run), or load the run's own (a resumed
        run: the digest in the method state must match); ``context`` is the trainer (``model``, ``data``, ``cfg``,
        ``device``, ``folder``, ``dist``)."""
        expected = self._state_digest  # set when the run resumes from a checkpoint
        if self._init_state is not None and not self._resumed:
            self._start_from_clean(context)
        if not self.needs_generators:
            return
        folder = getattr(context, "folder", None)
        path = folder.method_file("mcat-generators") if folder is not None else None
        if self.generators is None and expected is not None:
            self._load_generators(path, expected, context.device)
            return
        if self.generators is None:
            self._fit(context)
        elif expected is not None and self._digest != expected:
            raise CheckpointError("mcat: the generators given with set_generators are not those this run was "
                                  "trained with; give the same ones, or start the run over.")
        if path is not None and expected is None and getattr(getattr(context, "dist", None), "main", True):
            from .. import io

            io.save_checkpoint(path, {"generators": self.generators.state_dict(), "losses": self.generator_losses,
                                      "feature_dim": self.generators.feature_dim, "z_dim": self.z_dim,
                                      "hidden": list(self.hidden)})

    def _start_from_clean(self, context: Any) -> None:
        """A fresh run starts from the clean stage's weights (model and EMA); a resumed one keeps its checkpoint's."""
        from ..device import unwrap

        unwrap(context.model).load_state_dict(self._init_state)
        ema = getattr(context, "ema", None)
        if ema is not None:
            ema.module.load_state_dict(self._init_state)

    def _load_generators(self, path: Any, expected: str, device: Any) -> None:
        from .. import io

        if path is None or not path.exists():
            raise CheckpointError(f"mcat: this run was trained with the class generators stored in {path}, which "
                                  f"is missing; start the run over (delete its folder, or use another name=).")
        state = io.load_checkpoint(path, map_location=device)
        with torch.random.fork_rng(devices=[]):  # built on the CPU: its initialisation must not use the run's stream
            G = self._new_generators(int(state["feature_dim"]), device)
        G.load_state_dict(state["generators"])
        if generators_digest(G) != expected:
            raise CheckpointError(f"mcat: {path} holds other generators than this run's checkpoint; start the run "
                                  f"over (delete its folder, or use another name=).")
        self.generators, self._digest = freeze_generators(G), expected
        self.generator_losses = list(state.get("losses", []))

    def _new_generators(self, feature_dim: int, device: Any) -> ClassGenerators:
        """Initialised on the CPU (the CPU random stream), then moved to ``device``."""
        return ClassGenerators(self.num_classes, self.z_dim, feature_dim, self.hidden).to(device)

    def _fit(self, context: Any) -> None:
        """The release's generator training: the model's eval-mode features of augmented training batches (a
        loader of the run's batch size and sampler of its own), inside a random stream forked and seeded by
        ``train.seed``, so the run's own stream is the same whether the generators were fitted or loaded."""
        from ..data import train_loader
        from ..device import unwrap, world_size

        model, device, cfg = unwrap(context.model), context.device, context.cfg

        def new_loader() -> Any:
            return train_loader(context.data, batch_size=cfg.train.batch_size, device=device,
                                seed=cfg.train.seed + 2, sampler=cfg.train.sampler)

        loader = new_loader()
        cap = cfg.train.max_steps_per_epoch
        n_steps = min(len(loader), cap) if cap else len(loader)
        world = world_size()
        rank = torch.distributed.get_rank() if world > 1 else 0

        def features(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), eval_mode(model), autocast(x.device, self.amp_dtype):
                return logits_and_features(model, x, "mcat")[1].float()

        def batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
            loader.set_epoch(epoch)
            for step, (x, y) in enumerate(loader):
                if step >= n_steps:
                    break
                if world > 1:  # each process fits on its slice of the global batch, gradients averaged
                    x, y = x[rank::world], y[rank::world]
                yield features(x), y

        def sync(G: ClassGenerators) -> None:
            for p in G.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)

        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(cfg.train.seed + 2)
            feature_dim = getattr(model, "feature_dim", None)
            if feature_dim is None:  # a network of the user's own: its features of one training batch
                feature_dim = features(next(iter(new_loader()))[0]).shape[1]
            G = self._new_generators(int(feature_dim), device)
            self.generator_losses = fit_generators(G, batches, self.options.gen_epochs, self.options.gen_lr,
                                                   sync if world > 1 else None)
        self.generators, self._digest = G, generators_digest(G)
        log.info("mcat: fitted %d class generators (%s) in %d epochs; loss %s", self.num_classes, G.extra_repr(),
                 len(self.generator_losses), [round(v, 4) for v in self.generator_losses])

    def _require_generators(self) -> ClassGenerators:
        if self.generators is None:
            raise ConfigError("mcat has no class generators: train through ltrobust.experiments.train or the "
                              "Trainer (its setup fits them), or call method.set_generators(G) first.")
        return self.generators

    # ------------------------------------------------------------------------------------- the step
    def _batch_groups(self, y: torch.Tensor) -> ClassGroups:
        if self._groups is None or self._groups[0] is not y:
            self._groups = (y, class_groups(y))  # one host synchronisation per batch
        return self._groups[1]

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MS-PGD (:func:`ms_pgd`) inside :meth:`attack_ball`, ``attack.steps`` steps of ``attack.step_size``."""
        a = self.attack_cfg
        threat, step, start_eps = self.attack_ball(x, y)
        if not self.needs_generators:
            return pgd(model, x, y, threat, steps=a.steps, step_size=step, objective="ce",
                       random_start=a.random_start, bn_mode=self.bn_mode, amp_dtype=self.amp_dtype,
                       start_eps=start_eps)
        return ms_pgd(model, x, y, threat, self._require_generators(), lam=self.lam, sign=self.inner_sign,
                      steps=a.steps, step_size=step, latent_steps=self.options.latent_steps,
                      latent_lr=self.options.latent_lr, reduction=self.latent_reduction,
                      differentiable=self.differentiable, random_start=a.random_start, bn_mode=self.bn_mode,
                      amp_dtype=self.amp_dtype, start_eps=start_eps, groups=self._batch_groups(y))

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``L(z(x'), y) [+ lambda d(f(x'), y)] + etf_weight * L_ETF(W)``; L is the outer loss (``loss=``, CE)."""
        with autocast(x_adv.device, self.amp_dtype):
            logits, feats = logits_and_features(model, x_adv, self.name)
        logits = widen(logits)  # float32 under autocast; a float64 model's logits stay float64
        loss_ce = self.outer_loss(logits, y)
        out: dict[str, Any] = {"loss_ce": loss_ce.detach(), "logits_adv": logits.detach()}
        loss = loss_ce
        if self.outer_manifold and self.lam > 0:
            o = self.options
            G = self._require_generators()
            d = manifold_distance(G, feats.float(), self._batch_groups(y), G.z_dim, o.latent_steps, o.latent_lr,
                                  self.latent_reduction, differentiable=self.differentiable).mean()
            loss = loss + self.lam * d
            out["manifold"] = d.detach()
        if self.etf_weight > 0:
            etf = etf_loss(classifier_weight(model))
            loss = loss + self.etf_weight * etf
            out["etf"] = etf.detach()
        out["loss"] = loss
        return out

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generators_sha256": self._digest, "generator_losses": self.generator_losses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._resumed = True
        self._state_digest = state.get("generators_sha256")
        self.generator_losses = list(state.get("generator_losses", []))


def classifier_weight(model: nn.Module) -> torch.Tensor:
    """The last layer's weight (C, D): ``model.head.weight`` of an ltrobust model (DDP / compile unwrapped)."""
    from ..device import unwrap

    inner = unwrap(model)
    w = getattr(getattr(inner, "head", None), "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ConfigError(f"mcat's ETF regulariser acts on the classifier weight, but {type(inner).__name__} has no "
                          f"`head.weight` matrix: use an ltrobust model, or give your network a `head` nn.Linear.")
    return w

