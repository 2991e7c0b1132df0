"""Load a trained run (a run folder or a checkpoint file) back into its deployed model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch import nn

from .. import io
from ..config import RunConfig, from_flat, load_run_config, loss_options, method_options, resolve_config, to_flat
from ..errors import CheckpointError, ConfigError
from ..registry import ADJUSTMENTS, LOSSES, METHODS


@dataclass
class LoadedRun:
    cfg: RunConfig
    run_dir: Path
    checkpoint: Path
    model: nn.Module  #: the trained network (weights loaded, eval mode)
    deployed: nn.Module  #: what is served and attacked: method inference rule + eval.adjust wrapper
    method: Any
    class_counts: list[int]
    epoch: int
    val: dict[str, Any]


def _config_from_checkpoint(state: dict[str, Any], path: Path) -> RunConfig:
    text = state.get("config")
    if text:
        raw = yaml.safe_load(text)
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    if key == "method" and sub in ("args", "loss_args"):
                        for k2, v2 in (v or {}).items():
                            flat[f"method.{sub}.{k2}"] = v2
                    else:
                        flat[f"{key}.{sub}"] = v
            else:
                flat[key] = value
        return from_flat(flat)
    cfg_path = path.parent.parent / "config.yaml"
    if cfg_path.exists():
        return load_run_config(cfg_path)
    raise CheckpointError(f"{path} carries no run config and no config.yaml was found next to it; evaluate "
                          f"the run folder instead, or a checkpoint written by ltrobust train.")


def resolve_run_path(path: str | Path, checkpoint: str = "best") -> tuple[Path, Path]:
    """``(run_dir, checkpoint_file)`` for a run folder or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        ckpt = p / "checkpoints" / f"{checkpoint}.pt"
        if not ckpt.exists():
            raise CheckpointError(f"{p} has no checkpoints/{checkpoint}.pt; is it a finished ltrobust run folder? "
                                  f"(train it with `ltrobust train ... name={p.name}`)")
        return p, ckpt
    if p.exists():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return run_dir, p
    raise CheckpointError(f"{p} does not exist: pass a run folder (runs/NAME) or a checkpoint file (.pt).")


def build_deployed(cfg: RunConfig, model: nn.Module, class_counts: Sequence[int],
                   method_state: dict[str, Any] | None = None) -> tuple[Any, nn.Module]:
    """The method object and the deployed model: the method's inference rule, then ``eval.adjust``."""
    loss = LOSSES.get(cfg.method.loss)(list(class_counts), options=loss_options(cfg), total_epochs=cfg.train.epochs)
    method = METHODS.get(cfg.method.name)(list(class_counts), cfg.attack, loss, method_options(cfg),
                                          total_epochs=cfg.train.epochs)
    if method_state:
        method.load_state_dict(method_state)
    deployed = method.deployed(model)
    if cfg.eval.adjust != "none":
        deployed = ADJUSTMENTS.get(cfg.eval.adjust)(deployed, list(class_counts), tau=cfg.eval.adjust_tau)
    return method, deployed


def load_run(path: str | Path, overrides: Sequence[str] = (), device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run folder or checkpoint; ``overrides`` (``checkpoint=last``, ``attacks=...``, ``data_dir=...``)
    change the evaluation settings of the stored config, never the trained weights."""
    flat_over = [o for o in overrides]
    which = "best"
    for o in flat_over:
        k, _, v = o.partition("=")
        if k in ("checkpoint", "eval.checkpoint"):
            which = v
    if which not in ("best", "last"):
        raise ConfigError(f"checkpoint={which!r}: use best or last.")
    run_dir, ckpt = resolve_run_path(path, which)
    state = io.load_checkpoint(ckpt, map_location="cpu")
    if "model" not in state:
        raise CheckpointError(f"{ckpt} holds no model weights ('model' key); is it an ltrobust checkpoint?")
    base_cfg = _config_from_checkpoint(state, ckpt)
    cfg = resolve_config(flat_over, base=base_cfg) if flat_over else base_cfg
    from ..models import build_model

    counts = [int(c) for c in state.get("class_counts") or []]
    num_classes = int(state.get("num_classes", len(counts)))
    in_ch, mean, std = _input_spec(cfg, state)
    method_cls = METHODS.get(cfg.method.name)
    model = build_model(replace(cfg.model, head=method_cls.required_head or cfg.model.head), num_classes=num_classes,
                        in_channels=in_ch, mean=mean, std=std, image_size=_image_size(cfg, state))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt} does not match the model of its config ({str(exc)[:300]}); was it trained "
                              f"with another model or class count?") from None
    model = model.to(device).eval()
    method, deployed = build_deployed(cfg, model, counts, state.get("method_state"))
    return LoadedRun(cfg=cfg, run_dir=run_dir, checkpoint=ckpt, model=model, deployed=deployed.eval(),
                     method=method, class_counts=counts, epoch=int(state.get("epoch", -1)),
                     val=dict(state.get("val") or {}))


def _input_spec(cfg: RunConfig, state: dict[str, Any]) -> tuple[int, Any, Any]:
    """Input channels and normalisation stored in the model's buffers."""
    model_state = state["model"]
    mean = next((v for k, v in model_state.items() if k.endswith("normalize.mean")), None)
    std = next((v for k, v in model_state.items() if k.endswith("normalize.std")), None)
    if mean is not None:
        return int(mean.numel()), mean.flatten().tolist(), std.flatten().tolist()
    from ..registry import DATASETS

    meta = DATASETS.get(cfg.data.dataset)
    return int(getattr(meta, "channels", 3)), getattr(meta, "mean", None), getattr(meta, "std", None)


def _image_size(cfg: RunConfig, state: dict[str, Any]) -> int:
    if state.get("image_size"):
        return int(state["image_size"])
    from ..data import get_spec

    spec = get_spec(cfg.data.dataset)
    return int(cfg.data.image_size if cfg.data.image_size > 0 else spec.image_size)


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    return to_flat(cfg)


def evaluate_run(path: str | Path, overrides: Sequence[str] = (), device: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """``ltrobust eval``: the attack suite of ``eval.attacks`` on the run's test set; writes
    ``<run>/eval/<checkpoint>[-<adjust>].json`` and ``.md`` and returns the result dict."""
    from ..config import to_dict
    from ..data import build_data
    from .evaluator import Evaluation
    from .trainer import resolve_device

    dev = resolve_device(device or "auto")
    run = load_run(path, overrides, device=dev)
    cfg = run.cfg
    data = build_data(cfg.data, dev)
    if data.num_classes != len(run.class_counts):
        raise CheckpointError(f"{run.checkpoint} was trained with {len(run.class_counts)} classes but data set "
                              f"{cfg.data.dataset} has {data.num_classes}; evaluate it on the data set it was "
                              f"trained on.")
    tag = cfg.eval.checkpoint + ("" if cfg.eval.adjust == "none" else f"-{cfg.eval.adjust}{cfg.eval.adjust_tau:g}")
    meta = {"run": str(run.run_dir), "checkpoint": str(run.checkpoint), "checkpoint_epoch": run.epoch,
            "val": run.val, "config": to_dict(cfg), "method": cfg.method.name, "loss": cfg.method.loss,
            "dataset": cfg.data.dataset, "imbalance": cfg.data.imbalance, "train_seed": cfg.train.seed}
    ev = Evaluation(run.deployed, data.test, run.class_counts, cfg.eval.attacks, run.run_dir / "eval", tag=tag,
                    eps=cfg.eval.eps, step_size=cfg.eval.step_size, norm=cfg.eval.norm,
                    batch_size=cfg.eval.batch_size, chunk_size=cfg.eval.chunk_size, n_samples=cfg.eval.n_samples,
                    seed=cfg.eval.seed, mode=cfg.eval.mode, tail_group=cfg.eval.tail_group or None, meta=meta,
                    progress=progress)
    return ev.run()
