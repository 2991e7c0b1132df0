"""Fine-tuning stage with the backbone frozen (RoBal Table 1 / Table S5, "fine-tuning" rows).

After the main training, only the classifier is trained for ``train.finetune_epochs`` epochs on
adversarial examples of the whole (frozen) network, with BatchNorm statistics frozen:

- ``crt``: classifier re-training (Kang et al. 2020): the head is re-initialised and trained with CE on
  class-balanced re-sampled batches;
- ``rw``: re-weighted fine-tuning: the head keeps its weights and is trained with class-balanced
  (effective-number, beta 0.9999) weighted CE on uniformly sampled batches;
- ``lws``: learnable weight scaling (Kang et al. 2020): a per-class scale of the logits is learnt on
  class-balanced batches and folded into the linear head's weights and bias afterwards (linear heads only).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import io
from ..errors import ConfigError

log = logging.getLogger(__name__)


def _head_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.head.parameters())


def finetune(trainer: Any) -> dict[str, Any]:
    """Run the fine-tuning stage of ``trainer`` (a :class:`~ltrobust.training.trainer.Trainer`)."""
    from ..data import train_loader
    from ..losses import class_balanced_weights
    from ..device import unwrap

    t = trainer.cfg.train
    model = unwrap(trainer.model)
    last = trainer.ckpt_dir / "last.pt"
    if last.exists() and io.load_checkpoint(last).get("finetuned"):
        log.info("fine-tuning already done in %s", trainer.run_dir)
        return {}
    kind = t.finetune
    head = model.head
    scales = None
    if kind == "crt":
        for m in head.modules():  # re-initialise the classifier (cRT)
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
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
    weights = None
    if kind == "rw":
        weights = torch.as_tensor(class_balanced_weights(trainer.class_counts, 0.9999), dtype=torch.float32,
                                  device=trainer.device)
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
            loss = F.cross_entropy(logits, y, weight=weights)
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
        metrics = trainer.run_dir / "metrics.jsonl"
        # a run killed after this row but before last.pt below redoes the stage: keep one row, not two
        rows = [r for r in io.read_jsonl(metrics) if not str(r.get("stage", "")).startswith("finetune")]
        rows.append({"epoch": epoch, "stage": f"finetune-{kind}", "steps": steps, "val": val})
        io.write_jsonl(metrics, rows)
        trainer.track(rows[-1], epoch, prefix="finetune")
        trainer.save_weights(trainer.ckpt_dir / "best.pt", epoch, val)
        state = trainer.state(epoch)
        state["finetuned"] = True
        io.save_checkpoint(last, state)
    return {"steps": steps, "val": val}
