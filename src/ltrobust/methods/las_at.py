"""LAS-AT: learnable attack strategy (Jia, Zhang, Wu, Wei, Wang & Cao, CVPR 2022).

A *strategy network* g_phi (an image classifier with one softmax head per attack hyper-parameter) picks,
for every training image, the perturbation budget eps, the step size and the number of iterations of the
PGD attack that crafts its training AE. The target model and the strategy network play a game:

- target model (every step): the strategy network (eval mode) *samples* a strategy per image, PGD with
  those settings (from a uniform start) gives the AEs, and the target model minimises its loss on them
  (the authors' code: CE against labels smoothed to ``smooth_factor`` on the true class);
- strategy network (every ``interval`` target steps): REINFORCE on the reward
  ``R = a * R1 + b * R2 + c * R3`` of the sampled strategies, where R1 is the target model's CE on the AEs
  (clamped to [0, 10]), and R2 / R3 are the PGD-10 / clean accuracies (x ``r2_scale`` / ``r3_scale``) of a
  copy of the target model after one SGD step on those AEs: the strategy must make AEs that are strong
  *and* that the target model learns robustness from. The policy loss is
  ``-R * sum_heads mean_i log pi(a_i | x_i)``, plain SGD (lr 1e-4), gradient norm clipped to 1.

BatchNorm as in the authors' code: the strategy attack in eval mode (``attack.bn_mode``, default eval), the
reward's PGD-10 on the updated copy in train mode (``reward_bn_mode``), R2 / R3 in eval mode with the copy's
running statistics as that PGD left them. The strategy network is the authors' fixed ResNet-18
(``strategy_model=resnet18``, at width 64 whatever the target); ``strategy_model=target`` uses the target's
architecture and width.

The defaults are the authors' CIFAR-10 settings (eps in {3..14}/255, iterations in {3..13}, step in
{1..4}/255, interval 20, a = b = c = 1, R2 x 4, R3 x 2, smoothing 0.7); the choices are in units of ``unit``
(1/255) so that data sets with another eps scale (digits) keep the same shape. docs/methods.md, "LAS-AT",
lists what was settled. Each image's PGD runs through :func:`ltrobust.attacks.pgd` with a per-image ball
(``ThreatModel.per_sample``) and step; images with the same number of iterations share one call.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

from ..attacks import pgd
from ..attacks.pgd import BN_MODES, eval_mode
from ..device import world_size
from ..errors import ConfigError
from ..registry import METHODS
from .base import Method, forward_train


@dataclass(frozen=True)
class LASATOptions:
    eps_choices: tuple[int, ...] = tuple(range(3, 15))  #: eps candidates, in units of ``unit``
    iter_choices: tuple[int, ...] = tuple(range(3, 14))  #: PGD iteration candidates
    step_choices: tuple[int, ...] = tuple(range(1, 5))  #: step-size candidates, in units of ``unit``
    unit: float = 1 / 255  #: pixel value of one eps / step unit
    interval: int = 20  #: target-model steps between two strategy-network updates
    policy_lr: float = 1e-4  #: SGD (no momentum) learning rate of the strategy network
    clip_grad_norm: float = 1.0
    reward_a: float = 1.0  #: weight of R1 (the target model's CE on the AEs)
    reward_b: float = 1.0  #: weight of R2 (robust accuracy of the one-step-updated copy)
    reward_c: float = 1.0  #: weight of R3 (clean accuracy of the one-step-updated copy)
    r2_scale: float = 4.0
    r3_scale: float = 2.0
    smooth_factor: float = 0.7  #: target probability of the true class in the target loss; 1: plain labels
    #: MODELS name of the strategy network at its default width: resnet18 (the authors' fixed ResNet18_Strategy,
    #: a CIFAR ResNet-18 with one linear head per hyper-parameter); ``target``: the target model's architecture
    #: and width (cheaper for tiny problems)
    strategy_model: str = "resnet18"
    #: BatchNorm of the reward's PGD-10 on the one-step-updated copy: train (the authors' ``attack_pgd`` runs on
    #: the copy left in train mode, whose running statistics then serve R2 and R3), eval or batch
    reward_bn_mode: str = "train"

    def __post_init__(self) -> None:
        for name in ("eps_choices", "iter_choices", "step_choices"):
            values = getattr(self, name)
            if not values or min(values) < (1 if name == "iter_choices" else 0):
                raise ConfigError(f"las_at {name}={values}: give a non-empty list of positive integers.")
        if self.interval < 1 or self.unit <= 0:
            raise ConfigError("las_at needs interval >= 1 and unit > 0.")
        if not 0.0 < self.smooth_factor <= 1.0:
            raise ConfigError(f"las_at smooth_factor={self.smooth_factor} must be in (0, 1] (1: no smoothing).")
        if self.reward_bn_mode not in BN_MODES:
            raise ConfigError(f"las_at reward_bn_mode={self.reward_bn_mode!r}: use one of {', '.join(BN_MODES)}.")
        if not self.strategy_model:
            raise ConfigError("las_at strategy_model is empty: name an architecture (resnet18, the authors') or "
                              "`target` for the target model's own.")


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
    """CE against ``factor`` on the true class and ``(1 - factor) / (C - 1)`` on each other class (mean)."""
    z = logits.float()
    num_classes = z.shape[1]
    one_hot = F.one_hot(y, num_classes).to(z.dtype)
    target = factor * one_hot + (1.0 - factor) / (num_classes - 1) * (1.0 - one_hot)
    return -(target * F.log_softmax(z, dim=1)).sum(1).mean()


@METHODS.register("las_at")
class LASAT(Method):
    """PGD-AT whose per-image eps, step and iterations a REINFORCE-trained strategy network chooses."""

    name = "las_at"
    Options = LASATOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.attack_cfg.norm != "linf":
            raise ConfigError("las_at chooses l_inf budgets (the paper's setting): use attack.norm=linf.")
        loss_name = getattr(self.loss, "name", "ce")
        smoothing = self.options.smooth_factor < 1 and self.attack_cfg.loss_mode != "inner"
        if smoothing and loss_name not in ("ce", "bsl", "cat"):
            raise ConfigError(f"las_at smooths the labels of its target loss (smooth_factor="
                              f"{self.options.smooth_factor}), which needs a CE of adjusted logits: use loss ce, bsl or "
                              f"cat, or method.smooth_factor=1 to train with loss={loss_name}.")
        o = self.options
        self.sizes = (len(o.eps_choices), len(o.iter_choices), len(o.step_choices))
        self.strategy: nn.Module | None = None
        self.policy_opt: torch.optim.Optimizer | None = None
        self._context: Any = None
        self._proxy: nn.Module | None = None
        self._pending: dict[str, Any] | None = None
        self.step_count = 0
        self.last_reward: torch.Tensor | None = None

    # ------------------------------------------------------------------------------ strategy net
    def setup(self, context: Any) -> None:
        """Build the strategy network next to the target model (same data, device and normalisation)."""
        from ..models import build_model

        cfg, data = context.cfg, context.data
        name = self.options.strategy_model
        if name == "target":  # the target's architecture and width
            model_cfg = replace(cfg.model, head="linear", pretrained=None)
        else:  # the architecture at its own default size (the authors' ResNet18_Strategy: ResNet-18, width 64)
            model_cfg = replace(cfg.model, head="linear", name=name, width=-1, depth=-1, widen=-1, pretrained=None)
        # its own seed and a forked RNG: the run's random stream (restored on resume) is left untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed + 1)
            self.strategy = build_model(model_cfg, num_classes=sum(self.sizes), in_channels=data.channels,
                                        mean=data.mean, std=data.std, image_size=data.image_size)
        self.strategy.to(context.device)
        self.policy_opt = torch.optim.SGD(self.strategy.parameters(), lr=self.options.policy_lr)
        self._context = context
        if self._pending is not None:
            self._load_strategy(self._pending)
            self._pending = None

    def _require_strategy(self) -> None:
        if self.strategy is None or self.policy_opt is None:
            raise ConfigError("las_at needs its strategy network, which setup(trainer) builds beside the target "
                              "model: train through ltrobust.experiments.train (or the Trainer), or call "
                              "method.setup(context) with a context holding .cfg, .data and .device.")

    def choices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        o = self.options
        return (torch.tensor(o.eps_choices, device=device, dtype=torch.float32) * o.unit,
                torch.tensor(o.iter_choices, device=device),
                torch.tensor(o.step_choices, device=device, dtype=torch.float32) * o.unit)

    def policy(self, x: torch.Tensor) -> list[Categorical]:
        """One categorical distribution per hyper-parameter (eps, iterations, step), each over the batch."""
        self._require_strategy()
        logits = self.strategy(x).float()  # (B, sum(sizes))
        return [Categorical(logits=part) for part in logits.split(self.sizes, dim=1)]

    def strategy_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        actions: list[torch.Tensor]) -> torch.Tensor:
        """PGD with each image's sampled (eps, iterations, step); one :func:`pgd` call per iteration count."""
        eps_c, iter_c, step_c = self.choices(x.device)
        eps, iters, step = eps_c[actions[0]], iter_c[actions[1]], step_c[actions[2]]
        objective, kwargs = self.attack_objective(x, y)
        shape = (-1,) + (1,) * (x.dim() - 1)
        x_adv = torch.empty_like(x)
        for k in iters.unique().tolist():  # one host sync per batch
            idx = (iters == k).nonzero().squeeze(1)
            x_adv[idx] = pgd(model, x[idx], y[idx], self.threat.per_sample(eps[idx], x.dim()), steps=int(k),
                             step_size=step[idx].view(shape), objective=objective, objective_kwargs=kwargs,
                             random_start=self.attack_cfg.random_start, bn_mode=self.bn_mode,
                             amp_dtype=self.amp_dtype)
        return x_adv

    # --------------------------------------------------------------------------------- the game
    def target_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The outer loss; with label smoothing, the smoothed CE of the loss's adjusted logits."""
        if self.options.smooth_factor >= 1:
            return self.outer_loss(logits, y)
        z = logits if self.attack_cfg.loss_mode == "inner" else self.loss.adjust_logits(logits)
        return smoothed_cross_entropy(z, y, self.options.smooth_factor)

    def reward(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``a * R1 + b * R2 + c * R3`` (a scalar tensor, no gradient)."""
        o, a = self.options, self.attack_cfg
        with torch.no_grad(), eval_mode(model):
            r1 = F.cross_entropy(model(x_adv).float(), y).clamp(0.0, 10.0)
        if self._proxy is None:
            self._proxy = copy.deepcopy(model)
        proxy = self._proxy
        proxy.load_state_dict(model.state_dict())
        proxy.train()
        lr = self._context.optimizer.param_groups[0]["lr"] if self._context is not None else 0.1
        wd = self._context.cfg.train.weight_decay if self._context is not None else 5e-4
        opt = torch.optim.SGD(proxy.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
        loss = self.target_loss(proxy(x_adv).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        x_pgd = pgd(proxy, x, y, self.threat, steps=a.steps, step_size=a.step_size, restarts=2,
                    bn_mode=o.reward_bn_mode)
        with torch.no_grad(), eval_mode(proxy):
            r2 = (proxy(x_pgd).argmax(1) == y).float().mean() * o.r2_scale
            r3 = (proxy(x).argmax(1) == y).float().mean() * o.r3_scale
        return o.reward_a * r1 + o.reward_b * r2 + o.reward_c * r3

    def policy_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One REINFORCE update of the strategy network; returns the policy loss."""
        self._require_strategy()
        self.strategy.train()
        dists = self.policy(x)
        actions = [d.sample() for d in dists]
        x_adv = self.strategy_attack(model, x, y, actions)
        r = self.reward(model, x, x_adv, y)
        world = world_size()
        if world > 1:  # DDP: the reward of the global batch (each process holds a slice of it)
            dist.all_reduce(r)
            r = r / world
        loss = -r * sum(d.log_prob(act).mean() for d, act in zip(dists, actions))
        self.policy_opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            self._sync_strategy(world)
        nn.utils.clip_grad_norm_(self.strategy.parameters(), self.options.clip_grad_norm)
        self.policy_opt.step()
        self.last_reward = r.detach()
        return loss.detach()

    def _sync_strategy(self, world: int) -> None:
        """DDP: average the policy gradients and the BatchNorm statistics of the processes, so that every
        process keeps the same strategy network (one REINFORCE step on the global batch)."""
        for p in self.strategy.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)
        for b in self.strategy.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(world)

    def train_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.step_count += 1
        if self.step_count % self.options.interval == 0:
            self.policy_step(model, x, y)
        self._require_strategy()
        with torch.no_grad(), eval_mode(self.strategy):
            actions = [d.sample() for d in self.policy(x)]
        return self.strategy_attack(model, x, y, actions)

    def compute_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_adv = forward_train(model, x_adv, self.amp_dtype)  # (B, C)
        loss = self.target_loss(logits_adv, y)
        out = {"loss": loss, "loss_rob": loss.detach(), "logits_adv": logits_adv.detach()}
        if self.last_reward is not None:
            out["reward"] = self.last_reward
        return out

    # ----------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["step_count"] = self.step_count
        if self.strategy is not None and self.policy_opt is not None:
            state["strategy"] = self.strategy.state_dict()
            state["policy_opt"] = self.policy_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.step_count = int(state.get("step_count", 0))
        if "strategy" in state:
            if self.strategy is None:
                self._pending = state  # the strategy network is built by setup, after the resume
            else:
                self._load_strategy(state)

    def _load_strategy(self, state: dict[str, Any]) -> None:
        self._require_strategy()
        self.strategy.load_state_dict(state["strategy"])
        self.policy_opt.load_state_dict(state["policy_opt"])
