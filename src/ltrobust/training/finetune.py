"""Fine-tuning stage with the backbone frozen (RoBal Table 1 / Table S5, "fine-tuning" rows).

After the main training, only the classifier is trained for ``train.finetune_epochs`` epochs on
adversarial examples of the whole (frozen) network, with BatchNorm statistics frozen:

- ``crt``: classifier re-training (Kang et al. 2020): the head (linear or cosine) is re-initialised and
  trained with CE on class-balanced re-sampled batches;
- ``rw``: re-weighted fine-tuning: the head keeps its weights and is trained with CB-focal on uniformly
  sampled batches, Table S5's setting (beta 0.9999, gamma 2, the sigmoid form of RoBal's code);
- ``lws``: learnable weight scaling (Kang et al. 2020): a per-class scale of the logits is learnt on
  class-balanced batches and folded into the linear head's weights and bias afterwards (linear heads only).

The fine-tuned model is the run's ``last.pt`` (marked ``finetuned``; evaluate it with
``checkpoint=last``, as RoBal's Table 1 does); ``best.pt`` stays the best-validation epoch of the main
training, the checkpoint its name promises.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .. import io
from ..errors import ConfigError
from ..registry import LOSSES

log = logging.getLogger(__name__)

#: the ``rw`` stage's loss: CB-focal of RoBal's Table S5 (its code: sigmoid focal, ``use_sigmoid=True``)
RW_LOSS = ("cb", {"beta": 0.9999, "gamma": 2.0, "form": "sigmoid"})


def _head_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.head.parameters())


def finetune(trainer: Any) -> dict[str, Any]:
    """Run the fine-tuning stage of ``trainer`` (a :class:`~ltrobust.training.trainer.Trainer`)."""
    from ..data import train_loader
    from ..device import unwrap

    t = trainer.cfg.train
    model = unwrap(trainer.model)
    last = trainer.folder.checkpoint("last")
    if last.exists() and io.load_checkpoint(last).get("finetuned"):
        log.info("fine-tuning already done in %s", trainer.run_dir)
        return {}
    kind = t.finetune
    head = model.head
    scales = None
    if kind == "crt":
        if not callable(getattr(head, "reset_parameters", None)):
            raise ConfigError(f"train.finetune=crt re-initialises the head, and {type(head).__name__} has no "
                              "reset_parameters(); use model.head=linear or cosine.")
        head.reset_parameters()  # re-initialise the classifier (cRT)
        params = _head_params(model)
    elif kind == "rw":
        params = _head_params(model)
    elif kind == "lws":
        if not hasattr(head, "weight") or getattr(head, "scale", None) is not None:
            raise ConfigError("train.finetune=lws needs a linear head (model.head=linear).")
        scales = nn.Parameter(torch.ones(trainer.num_classes, device=trainer.device))
        params = [scales]
    else:
        raise ConfigError(f"train.finetune={kind!r}: use crt, rw or lws.")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    name, options = RW_LOSS if kind == "rw" else ("ce", {})
    criterion = LOSSES.build(name, trainer.class_counts, **options)
    sampler = "uniform" if kind == "rw" else "class_balanced"
    loader = train_loader(trainer.data, batch_size=t.batch_size, device=trainer.device, seed=t.seed + 1,
                          sampler=sampler)
    opt = torch.optim.SGD(params, lr=t.finetune_lr, momentum=t.momentum, weight_decay=t.weight_decay)
    model.eval()  # frozen backbone: BatchNorm statistics stay fixed
    steps = 0
    for epoch in range(t.finetune_epochs):
        loader.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            if t.max_steps_per_epoch and step >= t.max_steps_per_epoch:
                break
            x_adv = trainer.method.train_attack(model, x, y) if trainer.method.adversarial else x
            logits = model(x_adv).float()
            if scales is not None:
                logits = logits * scales
            loss = criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    if scales is not None:  # fold the learnt scales into the linear head
        with torch.no_grad():
            head.weight.mul_(scales.detach()[:, None])
            if getattr(head, "bias", None) is not None:
                head.bias.mul_(scales.detach())
    for p in model.parameters():
        p.requires_grad_(True)
    epoch = t.epochs - 1
    val = trainer.validate(epoch) if trainer.data.val is not None and len(trainer.data.val.labels) else None
    if trainer.dist.main:
        metrics = trainer.folder.metrics
        # a run killed after this row but before last.pt below redoes the stage: keep one row, not two
        rows = [r for r in io.read_jsonl(metrics) if not str(r.get("stage", "")).startswith("finetune")]
        rows.append({"epoch": epoch, "stage": f"finetune-{kind}", "steps": steps, "val": val})
        io.write_jsonl(metrics, rows)
        trainer.track(rows[-1], epoch, prefix="finetune")
        state = trainer.state(epoch)  # last.pt: the fine-tuned model; best.pt keeps the selected epoch
        state["finetuned"] = True
        io.save_checkpoint(last, state)
    return {"steps": steps, "val": val}
