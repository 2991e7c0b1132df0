"""The step level's shared part: k optimiser steps recorded on both sides and compared quantity by quantity.

Their side runs their own training loop (a method module calls it with the harness's observers: a
:class:`~.official.Recorder` around their model, a hook on their optimiser's step, a wrapper around their loss
function that keeps its value); ltrobust's side is :func:`ours_steps`, the real
:meth:`~ltrobust.training.trainer.Trainer.train_step`. Both become a list of :class:`StepRecord`, and
:func:`compare_steps` yields the rows: the attack's start, its iterates, the AEs, the logits on them, the loss,
the gradients, the weights and every BatchNorm buffer after each step, and the BatchNorm mode while attacking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .core import Row, compare_exact, compare_tensor, compare_tensors, mapped, snapshot
from .official import Recorder


@dataclass
class StepRecord:
    """What one optimiser step computed (tensors detached; dict keys in that side's own names)."""

    attack_inputs: list[torch.Tensor]  #: the input of every forward the attack made, in order
    attack_training: list[bool]  #: the model's train flag in each of those forwards (False: BatchNorm in eval mode)
    x_adv: torch.Tensor  #: the training inputs the loss saw
    logits: torch.Tensor  #: the logits on them (train mode)
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]  #: after the step
    buffers: dict[str, torch.Tensor]  #: after the step


def after_each_step(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Register a hook on their optimiser that snapshots ``model``'s gradients, weights and buffers after every
    ``step()``; returns the list the snapshots are appended to."""
    snaps: list[dict[str, dict[str, torch.Tensor]]] = []
    optimizer.register_step_post_hook(
        lambda opt, args, kwargs: snaps.append({w: snapshot(model, w) for w in ("weights", "grads", "buffers")}))
    return snaps


def split_calls(recorder: Recorder, attack_steps: int, losses: Sequence[torch.Tensor],
                snaps: Sequence[Mapping[str, dict[str, torch.Tensor]]]) -> list[StepRecord]:
    """Their steps from what the observers saw, for a loop whose every step makes ``attack_steps`` attack
    forwards and then one forward for the loss (PGD-AT's shape): the calls are cut per step."""
    per = attack_steps + 1
    out = []
    for i, (loss, snap) in enumerate(zip(losses, snaps)):
        calls = recorder.calls[i * per:(i + 1) * per]
        out.append(StepRecord([c[1] for c in calls[:-1]], [c[0] for c in calls[:-1]], calls[-1][1], calls[-1][2],
                              loss, snap["grads"], snap["weights"], snap["buffers"]))
    return out


def ours_steps(trainer: Any, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], seeds: Sequence[int],
               epoch: int = 0) -> list[StepRecord]:
    """ltrobust's :meth:`Trainer.train_step` on each batch after ``torch.manual_seed(seed)`` (the seed their
    loop got before the same step), at the trainer's learning rate of step i of ``epoch``; the attack's forwards
    are observed through a :class:`~.official.Recorder` set as the trainer's attack model."""
    recorder, saved = Recorder(trainer.model), trainer.attack_model
    trainer.attack_model = recorder
    out = []
    try:
        trainer.start_epoch(epoch)
        for i, ((x, y), seed) in enumerate(zip(batches, seeds)):
            recorder.calls.clear()
            torch.manual_seed(seed)
            res = trainer.train_step(x, y, trainer.lr(epoch, i, len(trainer.loader)))
            out.append(StepRecord([c[1] for c in recorder.calls], [c[0] for c in recorder.calls], res["x_adv"],
                                  res["logits_adv"], res["loss"].detach(), snapshot(trainer.model, "grads"),
                                  snapshot(trainer.model, "weights"), snapshot(trainer.model, "buffers")))
    finally:
        trainer.attack_model = saved
    return out


def ours_steps_observed(trainer: Any, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], seeds: Sequence[int],
                        module: nn.Module, epoch: int = 0, logits_scale: float = 1.0,
                        attack_forwards: int | None = None) -> tuple[list[StepRecord], int]:
    """:func:`ours_steps` for methods whose attack does not call the model's forward (RoBal's reads
    ``features`` and the head's cosines): every forward of ``module`` (the backbone, or the input normalisation
    when it is not the identity) is observed. The attack's forwards are the eval-mode ones, or, for an attack in
    train mode (``attack.bn_mode=batch``), the first ``attack_forwards`` of the step. The logits are divided by
    ``logits_scale`` (RoBal: the scale-1 cosines their CosPlus(scale 1) returns). Also returns the number of the
    other (training) forwards of the last step."""
    calls: list[tuple[bool, torch.Tensor]] = []
    handle = module.register_forward_pre_hook(
        lambda mod, args: calls.append((mod.training, args[0].detach().clone().contiguous())))
    out, train_forwards = [], 0
    try:
        trainer.start_epoch(epoch)
        for i, ((x, y), seed) in enumerate(zip(batches, seeds)):
            calls.clear()
            torch.manual_seed(seed)
            res = trainer.train_step(x, y, trainer.lr(epoch, i, len(trainer.loader)))
            attack = [c for c in calls if not c[0]] if attack_forwards is None else calls[:attack_forwards]
            train_forwards = len(calls) - len(attack)
            out.append(StepRecord([c[1] for c in attack], [c[0] for c in attack], res["x_adv"],
                                  res["logits_adv"] / logits_scale, res["loss"].detach(),
                                  snapshot(trainer.model, "grads"), snapshot(trainer.model, "weights"),
                                  snapshot(trainer.model, "buffers")))
    finally:
        handle.remove()
    return out, train_forwards


def model_rows(theirs: nn.Module, ours: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype,
               setting: str, what: str = "logits", ours_fn: Any = None, detail: str = "") -> Iterator[Row]:
    """Both models on the same images in eval mode, then in train mode: their outputs (``what``: logits, or
    ``ours_fn(model, x)`` for another output of ours, e.g. RoBal's scale-1 cosines) and the input gradients of
    the summed CE, rows "model: <what>, <mode> mode" and "model: input gradients, <mode> mode"."""
    for mode in ("eval", "train"):
        theirs.train(mode == "train")
        ours.train(mode == "train")
        xt, xo = x.to(dtype).requires_grad_(True), x.to(dtype).requires_grad_(True)
        zt, zo = theirs(xt), (ours(xo) if ours_fn is None else ours_fn(ours, xo))
        yield compare_tensor("step", f"model: {what}, {mode} mode", zt, zo, setting, detail=detail)
        gt, = torch.autograd.grad(F.cross_entropy(zt, y, reduction="sum"), xt)
        go, = torch.autograd.grad(F.cross_entropy(zo, y, reduction="sum"), xo)
        yield compare_tensor("step", f"model: input gradients, {mode} mode", gt, go, setting)


def flips(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> str:
    """How many values of two image tensors differ by more than ``tol`` (a flipped sign step moves a pixel by
    twice the step size)."""
    d = (a.double() - b.double()).abs()
    big = int((d > tol).sum())
    return f"{big} of {d.numel()} pixel values differ by more than {tol:g}" if big else \
        f"no pixel value differs by more than {tol:g}"


def compare_steps(theirs: Sequence[StepRecord], ours: Sequence[StepRecord], mapping: Mapping[str, str],
                  batches: Sequence[tuple[torch.Tensor, torch.Tensor]], setting: str,
                  start: str = "their start and ltrobust's, same seed",
                  numbers: Sequence[int] | None = None) -> Iterator[Row]:
    """The rows of the step level: per step, the attack start and iterates, AEs, logits, loss, gradients,
    weights and BatchNorm buffers after the step (``mapping``: their state-dict key -> ours), and once the
    BatchNorm mode of every attack forward. ``numbers``: the steps' numbers in the rows (default 1, 2, ...);
    a step without attack forwards on both sides (a clean stage) has no attack rows."""
    yield compare_exact("step", "BatchNorm mode while attacking",
                        sorted({"train" if t else "eval" for s in theirs for t in s.attack_training}),
                        sorted({"train" if t else "eval" for s in ours for t in s.attack_training}), setting,
                        detail="the mode of every attack forward")
    for i, (t, o) in enumerate(zip(theirs, ours)):
        x, tag = batches[i][0], f"step {numbers[i] if numbers is not None else i + 1}"
        if t.attack_inputs and o.attack_inputs:
            yield compare_tensor("step", f"attack start, {tag}", t.attack_inputs[0] - x, o.attack_inputs[0] - x,
                                 setting, detail=start)
        if len(t.attack_inputs) != len(o.attack_inputs):
            yield compare_exact("step", f"attack iterates, {tag}", len(t.attack_inputs), len(o.attack_inputs),
                                setting, detail="number of attack forwards")
        elif t.attack_inputs:  # (none on either side: a step without an attack)
            ta, oa = torch.stack(t.attack_inputs), torch.stack(o.attack_inputs)
            yield compare_tensor("step", f"attack iterates, {tag}", ta, oa, setting,
                                 detail=f"the inputs of all {len(ta)} attack forwards; {flips(ta, oa)}")
        yield compare_tensor("step", f"adversarial examples, {tag}", t.x_adv, o.x_adv, setting,
                             detail=flips(t.x_adv, o.x_adv))
        yield compare_tensor("step", f"logits on the AEs (train mode), {tag}", t.logits, o.logits, setting)
        yield compare_tensor("step", f"loss, {tag}", t.loss, o.loss, setting,
                             detail=f"theirs {float(t.loss):.9g}, ours {float(o.loss):.9g}")
        w_map = {a: b for a, b in mapping.items() if a in t.weights}
        b_map = {a: b for a, b in mapping.items() if a in t.buffers}
        yield compare_tensors("step", f"gradients, {tag}", mapped(t.grads, {a: b for a, b in w_map.items()
                                                                            if a in t.grads}),
                              {b: o.grads[b] for a, b in w_map.items() if a in t.grads and b in o.grads}, setting)
        yield compare_tensors("step", f"weights after {tag}", mapped(t.weights, w_map),
                              {b: o.weights[b] for b in w_map.values()}, setting)
        yield compare_tensors("step", f"BatchNorm buffers after {tag}", mapped(t.buffers, b_map),
                              {b: o.buffers[b] for b in b_map.values()}, setting,
                              detail="running_mean, running_var, num_batches_tracked of every BatchNorm")
