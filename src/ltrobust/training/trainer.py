"""One trainer for every method (natural, AT baselines, the long-tailed AT methods).

Per step: the method crafts its training AEs on the unwrapped model (BatchNorm in eval mode), then its
loss is computed on the (possibly DDP-wrapped) model in train mode, the trainer steps SGD and calls
the method's ``after_step`` hook. Per epoch: validation (clean and PGD on a balanced sample of the
validation split, never the test set), the distribution of predicted classes of training AEs, the mean
of every named loss part, the cost (seconds, peak memory: :mod:`.cost`), then ``metrics.jsonl`` (and the
``train.logger`` tracker: :mod:`.loggers`) and the checkpoints, written atomically. Epochs are numbered
from 0 everywhere: the log, the progress bar, ``metrics.jsonl``, the checkpoints and ``train_summary.json``.

Resume is exact: the last checkpoint holds the model, optimiser, EMA, method state and every RNG
stream, and each epoch's data order is a pure function of (seed, epoch), so training 2 epochs, being
killed and resuming to 4 gives the same weights as 4 epochs straight (deterministic mode, CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import io
from ..attacks import check_attacks
from ..config import RunConfig, dump_yaml, load_run_config, loss_options, method_options, to_dict, with_updates
from ..errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from ..device import flush_denormals, resolve_amp, resolve_device, unwrap  # noqa: F401 (re-exported)
from ..registry import LOSSES, METHODS
from ..run_folder import RunFolder
from .cost import peak_memory_mb, reset_peaks
from .loggers import Logger, build_logger, scalars_of
from .schedules import lr_at, schedule_length_terms
from .state import rng_state, set_determinism, set_rng_state  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

#: config keys that may differ when resuming a run folder
_RESUMABLE_DIFFS = ("train.epochs", "train.progress", "train.device", "train.max_steps_per_epoch", "train.logger",
                    "eval.", "name", "out", "reference")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``cfg`` into the run folder ``run_dir`` (created, or resumed when it holds a checkpoint).

    Example::

        cfg = resolve_config(["method=pgd_at", "loss=bsl", "epochs=5"])
        summary = Trainer(cfg).fit()
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None, data: Any = None,
                 resume: bool = True) -> None:
        check_attacks(cfg.eval)  # an unknown evaluation attack fails now, not after the training
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.out) / cfg.run_name()
        self.device = resolve_device(cfg.train.device)
        self.dist = init_distributed(self.device)
        if self.dist.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.amp_dtype = resolve_amp(cfg.train.precision, self.device)
        self.resume = resume
        set_determinism(cfg.train.seed, cfg.train.deterministic)
        self._data = data
        self._built = False
        self.tracker: Logger | None = None  # the train.logger tracker, open during fit (main process)

    # ----------------------------------------------------------------------------------- building
    def build(self) -> None:
        """Data, model, method, optimiser (called by :meth:`fit`; separate for tests)."""
        if self._built:
            return
        from ..data import build_data
        from ..models import build_model

        cfg = self.cfg
        self.data = self._data if self._data is not None else build_data(cfg.data, self.device)
        _check_training_split(self.data, cfg)
        self.class_counts = list(self.data.class_counts)
        self.num_classes = self.data.num_classes
        method_cls = METHODS.get(cfg.method.name)
        head = method_cls.head_for(method_options(cfg)) or cfg.model.head
        torch.manual_seed(cfg.train.seed)  # model init is a function of the seed alone
        self.model = build_model(replace(cfg.model, head=head), num_classes=self.num_classes,
                                 in_channels=self.data.channels, mean=self.data.mean, std=self.data.std,
                                 image_size=self.data.image_size).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        loss_cls = LOSSES.get(cfg.method.loss)
        self.loss = loss_cls(self.class_counts, options=loss_options(cfg), total_epochs=cfg.train.epochs)
        self.method = method_cls(self.class_counts, cfg.attack, self.loss, method_options(cfg),
                                 total_epochs=cfg.train.epochs, amp_dtype=self.amp_dtype)
        self.train_model: nn.Module = self.model
        if self.dist.world_size > 1:
            if self.device.type == "cuda":  # BatchNorm statistics over the global batch (CUDA only)
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.attack_model: nn.Module = self.model  # attacks run on the plain module, never through DDP
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)
            self.attack_model = torch.compile(self.model)  # the attack is most of the FLOPs of AT
        params = list(self.model.parameters()) + list(self.method.parameters())
        self.optimizer = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                         weight_decay=cfg.train.weight_decay, nesterov=cfg.train.nesterov)
        self.ema = None
        if cfg.train.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
        self.loader = self._make_loader()
        self._built = True

    def _make_loader(self):
        from ..data import train_loader

        cfg = self.cfg
        drop_last = cfg.train.compile if cfg.train.drop_last is None else cfg.train.drop_last
        loader = train_loader(self.data, batch_size=cfg.train.batch_size, device=self.device,
                              seed=cfg.train.seed, sampler=cfg.train.sampler, drop_last=drop_last)
        if len(loader) == 0:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the "
                              f"{len(self.data.train.labels)} training images and the last batch is dropped "
                              f"(train.drop_last): lower train.batch_size or set train.drop_last=false.")
        return loader

    # ------------------------------------------------------------------------------------- paths
    @property
    def folder(self) -> RunFolder:
        """The paths of this run's folder (:mod:`ltrobust.run_folder`)."""
        return RunFolder(self.run_dir)

    @property
    def ckpt_dir(self) -> Path:
        return self.folder.checkpoints

    def _prepare_run_dir(self) -> int:
        """Write config and manifest, or check them against a run being resumed; returns start epoch."""
        cfg_path = self.folder.config
        last = self.folder.checkpoint("last")
        if self.resume and not last.exists() and self.folder.checkpoint("best").exists():
            # nothing to resume, but a result to keep: start over only for the same run (a kill between best.pt
            # and last.pt of the first epoch leaves this), never over a run of other settings
            old_cfg = load_run_config(cfg_path) if cfg_path.exists() else None
            diffs = config_diffs(to_dict(old_cfg), to_dict(self.cfg)) if old_cfg is not None else ["no config.yaml"]
            if diffs:
                raise ConfigError(f"run folder {self.run_dir} holds checkpoints/best.pt of a run with a different "
                                  f"config ({'; '.join(diffs[:5])}) and no last.pt to resume; its result is kept. "
                                  f"Choose another name=..., or delete the folder to start over.")
        if self.resume and last.exists():
            old = load_run_config(cfg_path)
            diffs = config_diffs(to_dict(old), to_dict(self.cfg))
            if diffs:
                raise ConfigError(f"run folder {self.run_dir} holds a run with a different config ({'; '.join(diffs[:5])}). "
                                  f"Choose another name=..., or delete the folder to start over.")
            state = io.load_checkpoint(last, map_location=self.device)
            start = int(state["epoch"]) + 1
            if old.train.epochs != self.cfg.train.epochs:
                self._check_new_length(old, start)
            self._load_state(state, last)
            log.info("resuming %s from epoch %d", self.run_dir, start)
            if old.train.epochs != self.cfg.train.epochs and self.dist.main:  # config.yaml says what was run
                io.atomic_write_text(cfg_path, dump_yaml(with_updates(old, train={"epochs": self.cfg.train.epochs})))
                log.info("%s: train.epochs %d -> %d (extended: the finished epochs are those of a straight run "
                         "of %d)", self.run_dir, old.train.epochs, self.cfg.train.epochs, self.cfg.train.epochs)
            if self.dist.main:  # drop metrics of epochs that were not checkpointed
                rows = [r for r in io.read_jsonl(self.folder.metrics) if r.get("epoch", -1) < start]
                io.write_jsonl(self.folder.metrics, rows)
            return start
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            io.atomic_write_text(cfg_path, dump_yaml(self.cfg))
            io.write_json(self.folder.manifest, self.data.manifest)
            if self.folder.metrics.exists():
                self.folder.metrics.unlink()
        return 0

    # -------------------------------------------------------------------------------- checkpoints
    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "loss": self.loss.state_dict() if hasattr(self.loss, "state_dict") else {},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best": self.best,
            "rng": rng_state(),
            "drift_prev": self._drift_prev,
            "num_classes": self.num_classes,
            "class_counts": self.class_counts,
            "ltrobust_version": _version(),
        }

    def _check_new_length(self, old: RunConfig, done: int) -> None:
        """Resuming with another ``train.epochs`` extends (or shortens) the run, allowed only when its
        ``done`` finished epochs are exactly those of a straight run of the new length (docs/reliability.md)."""
        new = self.cfg.train.epochs
        fix = (f"Resume with train.epochs={old.train.epochs}, or train a new run of {new} epochs (another name=..., "
               f"or delete {self.run_dir}).")
        if done > new:
            raise ConfigError(f"run folder {self.run_dir} already holds {done} trained epochs, more than "
                              f"train.epochs={new}: evaluate checkpoints/last.pt as it is, or train a new run of "
                              f"{new} epochs (another name=...).")
        terms = schedule_length_terms(old) + self.method.run_length_terms()
        t = old.train
        if t.finetune != "none":
            terms.append(f"train.finetune={t.finetune} ran after the last epoch")
        if t.val_every > 1 and done == t.epochs and t.epochs % t.val_every:
            terms.append(f"epoch {t.epochs} was validated as the last one (train.val_every={t.val_every})")
        if terms:
            raise ConfigError(f"run folder {self.run_dir} was trained for train.epochs={old.train.epochs}; continuing "
                              f"it to {new} would not match a straight run of {new} epochs ({'; '.join(terms)}). {fix}")

    def _load_state(self, state: dict[str, Any], path: Path | None = None) -> None:
        if int(state.get("num_classes", self.num_classes)) != self.num_classes:
            raise CheckpointError(f"checkpoint has {state.get('num_classes')} classes but the data set has "
                                  f"{self.num_classes}; use a checkpoint trained on this data set.")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            where = path or "the checkpoint"
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            first = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:300]
            raise CheckpointError(f"{where} does not fit this run's model {self.cfg.model.name} (width "
                                  f"{self.cfg.model.width}): it holds another architecture or width ({first}). "
                                  f"Delete {where} to start the run over, or train under another name=...") from None
        self.method.load_state_dict(state.get("method", {}))
        if hasattr(self.loss, "load_state_dict") and state.get("loss"):
            self.loss.load_state_dict(state["loss"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.best = state.get("best", self.best)
        self._drift_prev = state.get("drift_prev")
        set_rng_state(state["rng"])

    def save_weights(self, path: Path, epoch: int, val: dict[str, Any] | None) -> None:
        model = self.ema.module if self.ema is not None else self.model
        io.save_checkpoint(path, {"epoch": epoch, "model": model.state_dict(), "val": val or {},
                                  "num_classes": self.num_classes, "class_counts": self.class_counts,
                                  "method_state": self.method.state_dict(), "config": dump_yaml(self.cfg),
                                  "image_size": int(self.data.image_size),
                                  "ltrobust_version": _version()})

    # ---------------------------------------------------------------------------------- training
    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs`` (resuming when possible); returns the summary dict.

        The main process holds ``<run_dir>/.lock`` meanwhile: a second process training into the same
        folder fails at once with :class:`~ltrobust.errors.RunInUse` instead of interleaving checkpoints.
        """
        self.build()
        lock = io.run_lock(self.folder.lock, "training") if self.dist.main else contextlib.nullcontext()
        with lock:
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        self.best: dict[str, Any] = {"epoch": -1, "val_rob": -1.0}
        self._drift_prev = None
        missing = self.method.missing_stages()
        if missing:
            raise ConfigError(f"method {self.cfg.method.name!r} needs its {', '.join(missing)} stage first: train with "
                              f"ltrobust.experiments.train(cfg) (what `ltrobust train` runs), which trains or loads it "
                              f"into {self.run_dir}/{missing[0]}.")
        start = self._prepare_run_dir()
        self.method.setup(self)
        if self.dist.main:
            self.tracker = build_logger(self.cfg.train.logger, self.run_dir, start, to_dict(self.cfg))
        try:
            return self._epochs(start)
        finally:
            if self.tracker is not None:
                self.tracker.close()
                self.tracker = None

    def _epochs(self, start: int) -> dict[str, Any]:
        epochs = self.cfg.train.epochs
        for epoch in range(start, epochs):
            record = self.train_epoch(epoch)
            val = self.validate(epoch) if self._val_due(epoch) else None
            if val is not None:
                record["val"] = val
                if self.cfg.train.epoch_test:  # asked for explicitly; never read by the checkpoint choice below
                    record["test"] = self.test_split_epoch()
            if self.cfg.train.record_ae_drift and self.dist.main:  # forked RNG: other ranks need not run it
                record["ae_drift"] = self.ae_drift()
            self.method.on_epoch_end(epoch, record)
            if self.dist.main:
                io.append_jsonl(self.folder.metrics, record)
                self.track(record, epoch)
                if val is not None and val["rob_balanced"] > self.best["val_rob"]:
                    self.best = {"epoch": epoch, "val_rob": val["rob_balanced"], "val_clean": val["clean_balanced"]}
                    self.save_weights(self.folder.checkpoint("best"), epoch, val)
                io.save_checkpoint(self.folder.checkpoint("last"), self.state(epoch))
            log.info("epoch %d/%d %s", epoch, epochs - 1, _fmt_record(record))
        if self.dist.main and epochs > 0 and not self.folder.checkpoint("best").exists():
            # no validation ran: "best" is the last epoch (before any fine-tuning), said so in the summary
            self.save_weights(self.folder.checkpoint("best"), epochs - 1, None)
        if self.cfg.train.finetune != "none" and start <= epochs:
            from .finetune import finetune

            finetune(self)  # the fine-tuned model goes to last.pt; best.pt stays the selected epoch's
        summary = {"run_dir": str(self.run_dir), "epochs": epochs, "best": self.best,
                   "method": self.cfg.method.name, "loss": self.cfg.method.loss}
        if self.dist.main:
            rows = io.read_jsonl(self.folder.metrics)
            summary.update(cost_summary(rows))
            summary["collapse"] = collapse_verdict(rows, self.num_classes, self.cfg)
            if summary["collapse"]["collapsed"]:
                log.warning("%s: %s", self.run_dir, summary["collapse"]["message"])
            io.write_json(self.folder.summary, summary)
        return summary

    def track(self, row: dict[str, Any], step: int, prefix: str = "") -> None:
        """Send the scalars of a ``metrics.jsonl`` row to the ``train.logger`` tracker (main process; no-op
        without one)."""
        if self.tracker is not None:
            self.tracker.log_scalars(step, scalars_of(row, prefix))

    def _val_due(self, epoch: int) -> bool:
        t = self.cfg.train
        return t.val_every > 0 and self.data.val is not None and len(self.data.val.labels) > 0 and (
            (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs)

    def start_epoch(self, epoch: int) -> None:
        """Prepare epoch ``epoch`` (from 0): subnormal flushing on CPU, the method's epoch hook, the loader's
        order, the model in train mode. :meth:`train_epoch` calls it; call it yourself before driving
        :meth:`train_step` from outside."""
        flush_denormals(self.device)  # every epoch: code run between epochs may have switched it off
        self.method.on_epoch_start(epoch)
        self.loader.set_epoch(epoch)
        self.train_model.train()

    def lr(self, epoch: int, step: int = 0, steps: int = 1) -> float:
        """The learning rate of step ``step`` of ``steps`` in epoch ``epoch`` (``train.schedule``, a pure function)."""
        return lr_at(self.cfg, epoch + step / max(steps, 1))

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
        """One optimiser step on the batch ``(x, y)`` at learning rate ``lr``: the method's training AEs (on the
        plain model), its loss (model in train mode), ``zero_grad``, ``backward``, the SGD step, the method's
        ``after_step`` and the EMA update, exactly as :meth:`train_epoch` runs each batch.

        Public so that training can be driven batch by batch from outside (a notebook, the parity harness of
        ``benchmarks/parity``): call :meth:`build` and :meth:`start_epoch` first. Parameters' ``.grad`` keep
        this step's gradients until the next step.

        Args:
            x: images (B, C, H, W) in [0, 1], on the trainer's device (this process's share under DDP).
            y: labels (B,) int64.
            lr: the learning rate of this step (e.g. :meth:`lr`).

        Returns:
            The method's output (``loss``, its named parts, detached ``logits_adv``) plus ``x_adv``, the
            detached training inputs the loss saw (the AEs; ``x`` for a method without them).
        """
        method = self.method
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x_adv = method.train_attack(self.attack_model, x, y) if method.adversarial else x
        out = method.compute_loss(self.train_model, x, x_adv, y)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        method.after_step(unwrap(self.model))
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return {**out, "x_adv": x_adv.detach()}

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, method = self.cfg, self.method
        self.start_epoch(epoch)
        C = self.num_classes
        sums: dict[str, torch.Tensor] = {}
        ae_counts = torch.zeros(C, dtype=torch.long, device=self.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        n_steps = len(self.loader)
        replays = int(method.replays)
        if cfg.train.max_steps_per_epoch:
            n_steps = min(n_steps, cfg.train.max_steps_per_epoch)
        reset_peaks(self.device)
        t0 = time.perf_counter()
        n_seen = 0
        bar = _progress(n_steps, f"epoch {epoch}/{cfg.train.epochs - 1}", cfg.train.progress and self.dist.main)
        for step, (x, y) in enumerate(self.loader):
            if step >= n_steps:
                break
            ranks = slice(self.dist.rank, None, self.dist.world_size)
            if self.dist.world_size > 1:  # every rank draws the same global batch; each takes its slice
                x, y = x[ranks], y[ranks]
            if method.uses_sample_indices:
                method.on_batch(self.loader.batch_indices[ranks])
            lr = self.lr(epoch, step, n_steps)
            for _ in range(replays):  # 1, or Free-AT's m: the same batch, m optimiser steps
                out = self.train_step(x, y, lr)
                with torch.no_grad():  # bookkeeping on the device: no host sync per step
                    bad = ~torch.isfinite(out["loss"].detach())
                    first_bad = torch.where((first_bad < 0) & bad, torch.full_like(first_bad, step), first_bad)
                    for k, v in out.items():
                        if k not in ("logits_adv", "x_adv") and torch.is_tensor(v) and v.dim() == 0:
                            sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v.detach().float()
                    if out.get("logits_adv") is not None:
                        ae_counts += torch.bincount(out["logits_adv"].argmax(1), minlength=C)
            n_seen += y.shape[0]
            if step % 25 == 24 or step == n_steps - 1:
                self._check_finite(first_bad, epoch)
            bar.update(1)
        bar.close()
        self._check_finite(first_bad, epoch)
        if self.dist.world_size > 1:
            dist.all_reduce(ae_counts)
            for buf in self.model.buffers():  # every rank ends the epoch with rank 0's BatchNorm statistics
                dist.broadcast(buf, src=0)
        seconds = time.perf_counter() - t0
        denom = max(min(n_steps, len(self.loader)), 1) * replays  # loss parts: the mean over optimiser steps
        # rounded at the source: no float noise in the JSON (0.01, not 0.010000000000000002)
        record: dict[str, Any] = {"epoch": epoch, "lr": float(f"{lr_at(self.cfg, epoch):.12g}"),
                                  "seconds": round(seconds, 3),
                                  "images_per_s": round(n_seen * self.dist.world_size / max(seconds, 1e-9), 2),
                                  **peak_memory_mb(self.device)}
        record.update({k: _float32_value(v / denom) for k, v in sums.items()})
        record["ae_pred_counts"] = ae_counts.tolist()
        return record

    def _check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        bad_step = int(first_bad)
        if bad_step >= 0:
            last = self.folder.checkpoint("last")
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(f"the training loss became non-finite at epoch {epoch}, step {bad_step}; "
                                   f"{kept}. Lower train.lr, use train.precision=fp32, or check the data.")

    # -------------------------------------------------------------------------------- validation
    def eval_model(self) -> nn.Module:
        """The deployed model (EMA weights when enabled, the method's inference adjustment applied)."""
        base = self.ema.module if self.ema is not None else unwrap(self.model)
        return self.method.deployed(base)

    def validate(self, epoch: int) -> dict[str, Any]:
        """Clean and PGD accuracy on a balanced sample of the validation split (fp32)."""
        from ..evaluation.evaluator import quick_robustness

        t = self.cfg.train
        return quick_robustness(self.eval_model(), self.data.val, self.num_classes, self.cfg.attack,
                                steps=t.val_attack_steps, n_samples=t.val_samples, seed=t.seed,
                                batch_size=max(self.cfg.train.batch_size, 256))

    def test_split_epoch(self) -> dict[str, Any]:
        """``train.epoch_test``: the same per-epoch evaluation as :meth:`validate` on a balanced sample of the
        *test* split, for the epoch-choice figure (how the choice of checkpoint moves the result; REAT picks
        its checkpoint on the test set). Marked ``"split": "test"``; the trainer never chooses a checkpoint
        with it. Run in a forked RNG, so the training streams (CPU and CUDA) are untouched and resume stays
        exact."""
        from ..evaluation.evaluator import quick_robustness

        t = self.cfg.train
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            out = quick_robustness(self.eval_model(), self.data.test, self.num_classes, self.cfg.attack,
                                   steps=t.val_attack_steps, n_samples=t.val_samples, seed=t.seed,
                                   batch_size=max(t.batch_size, 256))
        return {"split": "test", "used_for_selection": False, **out}

    # ------------------------------------------------------------------------------- AE drift
    def ae_drift(self) -> dict[str, Any]:
        """How far this epoch's training AEs moved from last epoch's, for a fixed sample of training images.

        REAT (Li et al., ICCV 2023) Fig. 3: the Euclidean distance between the AEs of the same clean image
        in consecutive epochs (small: the new AEs overlap the old ones and teach little). The images are a
        fixed balanced sample (``train.ae_drift_samples``, seeded by ``train.seed``); their AEs come from
        the method's own training attack (``method.train_attack``, BatchNorm in eval mode) on the
        end-of-epoch model, from the same random start every epoch (drawn inside a forked RNG, so the
        training RNG streams, CPU and CUDA, are untouched), so the drift measures the model and the
        method's attack weights, not the start noise. Distances are in pixel units of [0, 1] images.

        Returns ``{"per_class_l2", "per_class_linf"}`` (per-class means; ``None`` for a class without a
        sampled image, and both ``None`` in the first epoch), ``"n_per_class"``, and the per-sample
        ``"l2"`` distances with their ``"labels"`` (the distribution REAT plots).
        """
        from ..evaluation.evaluator import balanced_subset, images_of

        idx = balanced_subset(self.data.train.labels, self.cfg.train.ae_drift_samples, seed=self.cfg.train.seed)
        x, y = images_of(self.data.train, idx, self.device)  # works for array and streaming splits
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.cfg.train.seed + 7919)  # the same start every epoch
            x_adv = self.method.train_attack(unwrap(self.model), x, y).detach().float().cpu()
        prev, self._drift_prev = self._drift_prev, x_adv
        yc = y.cpu()
        C = self.num_classes
        n = torch.bincount(yc, minlength=C)
        out: dict[str, Any] = {"per_class_l2": None, "per_class_linf": None, "n_per_class": n.tolist()}
        if prev is None or prev.shape != x_adv.shape:  # first epoch (or a changed sample): nothing to compare
            return out
        d = (x_adv - prev.float()).flatten(1).double()  # (n, C*H*W)
        l2, linf = d.norm(dim=1), d.abs().amax(dim=1)

        def per_class(v: torch.Tensor) -> list[float | None]:
            return [float(v[yc == c].mean()) if n[c] else None for c in range(C)]

        out.update({"per_class_l2": per_class(l2), "per_class_linf": per_class(linf),
                    "l2": [round(float(v), 6) for v in l2], "labels": yc.tolist()})
        return out


# ----------------------------------------------------------------------------------------- helpers
#: a run is collapsed when no validation's clean balanced accuracy beats chance (100 / C %) by more than this factor
COLLAPSE_FACTOR = 1.25


def collapse_verdict(rows: list[dict[str, Any]], num_classes: int, cfg: RunConfig) -> dict[str, Any]:
    """Whether training collapsed: every validation's clean balanced accuracy at chance level (at most
    ``COLLAPSE_FACTOR x 100 / C`` %), i.e. the model predicts (about) one class whatever the input, so its
    "robust" accuracy and clean-robust gap mean nothing. Stored in ``train_summary.json`` as
    ``{"collapsed", "best_val_clean_balanced", "chance", "message"}`` for reports to mark the run."""
    vals = [float(r["val"]["clean_balanced"]) for r in rows if isinstance(r.get("val"), dict)]
    chance = 100.0 / max(num_classes, 1)
    best = max(vals) if vals else None
    collapsed = best is not None and best <= COLLAPSE_FACTOR * chance
    message = ""
    if collapsed:
        losses = [float(r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
        if cfg.method.loss == "ldam":
            s = dict(cfg.method.loss_args).get("s", 30.0)
            cause = (f"loss=ldam scales the logits by s={s:g}, tuned for a cosine head; on a linear head that makes "
                     "the loss huge (try loss.s=1 or model.head=cosine)")
        elif len(losses) > 1 and losses[-1] >= losses[0]:
            cause = (f"the training loss did not fall ({losses[0]:.3g} -> {losses[-1]:.3g}): train.lr={cfg.train.lr:g} "
                     "is likely too high")
        else:
            cause = (f"train.lr={cfg.train.lr:g} too high, too few training steps, or a loss too large for the "
                     "model")
        message = (f"training collapsed: validation clean balanced accuracy never beat chance ({best:.1f}% vs "
                   f"{chance:.1f}% for {num_classes} classes), so the model predicts about one class and its "
                   f"robust accuracy and gap are meaningless. Likely cause: {cause}.")
    return {"collapsed": bool(collapsed), "best_val_clean_balanced": best, "chance": chance, "message": message}


def config_diffs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs between two nested run configs (``to_dict``),
    leaving out what may change when a run is resumed (``train.epochs`` within its rules, progress, device,
    eval settings, names). A non-empty list means the folder holds another run."""
    diffs = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and k not in ("args", "loss_args"):
            diffs += config_diffs(a, b, key + ".")
        elif a != b and not any(key == d or (d.endswith(".") and key.startswith(d)) for d in _RESUMABLE_DIFFS):
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


def cost_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"seconds_per_epoch", "peak_rss_mb", "peak_cuda_mb"}`` of ``metrics.jsonl`` rows (every trained epoch,
    resumed ones included): the mean training seconds per epoch and the largest peaks (``None`` when no epoch
    recorded them, e.g. ``peak_cuda_mb`` on CPU)."""
    epochs = [r for r in rows if "stage" not in r and "seconds" in r]

    def peak(key: str) -> float | None:
        vals = [r[key] for r in epochs if r.get(key) is not None]
        return max(vals) if vals else None

    seconds = round(math.fsum(r["seconds"] for r in epochs) / len(epochs), 3) if epochs else None
    return {"seconds_per_epoch": seconds, "peak_rss_mb": peak("peak_rss_mb"), "peak_cuda_mb": peak("peak_cuda_mb")}


def _float32_value(t: torch.Tensor) -> float:
    """A float32 scalar as the shortest decimal that reads back to it (2.3025851, not 2.302585124969482)."""
    return float(str(t.float().cpu().numpy()))


def _fmt_record(r: dict[str, Any]) -> str:
    parts = [f"loss {r.get('loss', float('nan')):.4f}", f"{r['images_per_s']:.0f} img/s"]
    if "val" in r:
        parts.append(f"val clean {r['val']['clean']:.1f} rob {r['val']['rob']:.1f}")
    return ", ".join(parts)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def _version() -> str:
    from .. import __version__

    return __version__


def _check_training_split(data: Any, cfg: RunConfig) -> None:
    """Training needs training images, and its class counts must be those of the images (the long-tailed losses
    and methods weigh classes by them): ``class_counts=`` describes an evaluation-only image folder."""
    labels = data.train.labels
    if len(labels) == 0:
        raise DataError(f"{cfg.data.dataset}: the data in {cfg.data.data_dir} has no training images (no train/ "
                        "folder): training needs train/<class>/ image folders; class_counts= only gives the counts "
                        "for evaluating such a folder.")
    if cfg.data.class_counts:
        have = torch.bincount(labels.cpu(), minlength=data.num_classes).tolist()
        if have != list(data.class_counts):
            raise ConfigError(f"class_counts={cfg.data.class_counts} differs from the training images per class in "
                              f"train/ ({have[:10]}{' ...' if len(have) > 10 else ''}): the losses would weigh classes "
                              "by counts the model does not see; leave class_counts out to train (train/ gives them).")
