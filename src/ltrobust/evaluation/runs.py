"""Load a trained run (a run folder or a checkpoint file) back into its deployed model, and evaluate it.

The *deployed* model is what is served and therefore what every attack targets: the trained network,
then the method's inference rule (``method.deployed``, e.g. RoBal's ``s * cos - tau_p * log pi``), then the
inference-stage adjustment of ``eval.adjust`` (``logit_adjust``, ``tau_norm``, ``cdt``, ``tde``;
``evaluation/adjust.py``), each a module wrapper, so attacks differentiate through all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch import nn

from .. import io
from ..config import EvalConfig, RunConfig, from_dict, load_run_config, loss_options, method_options, resolve_config
from ..errors import CheckpointError, ConfigError
from ..registry import ADJUSTMENTS, LOSSES, METHODS
from ..run_folder import RunFolder

log = logging.getLogger(__name__)


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
    data: Any = None  #: the built data set when loading needed it (``eval.adjust=tde``), else None

    @property
    def tag(self) -> str:
        """Result name: the checkpoint file's stem, then the adjustment and its strength (``best``,
        ``last-cdt0.3``; a checkpoint file ``epoch10.pt`` gives ``epoch10``)."""
        return result_tag(self.cfg, self.checkpoint)


def _config_from_checkpoint(state: dict[str, Any], path: Path) -> RunConfig:
    text = state.get("config")
    if text:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            msg = " ".join(str(exc).split())
            raise CheckpointError(f"the run config embedded in {path} was refused ({msg}). ltrobust reads YAML with "
                                  f"yaml.safe_load, which never builds Python objects; use a checkpoint written "
                                  f"by ltrobust train, or pass the run folder with its config.yaml.") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"the run config embedded in {path} is not a mapping; use a checkpoint written "
                                  f"by ltrobust train.")
        return from_dict(raw)
    cfg_path = RunFolder.of_checkpoint(path).config
    if cfg_path.exists():
        return load_run_config(cfg_path)
    raise CheckpointError(f"{path} carries no run config and no config.yaml was found next to it; evaluate "
                          f"the run folder instead, or a checkpoint written by ltrobust train.")


def eval_overrides(overrides: Sequence[str]) -> list[str]:
    """Overrides of an evaluation: a bare key that names an ``eval.`` setting means that setting
    (``eps=4/255`` is ``eval.eps``, ``seed=1`` is ``eval.seed``), never the training attack's or the
    training seed, which an evaluation does not use."""
    keys = {f.name for f in fields(EvalConfig)}
    out = []
    for o in overrides:
        k, sep, v = o.partition("=")
        out.append(f"eval.{k.strip()}={v}" if sep and k.strip() in keys else o)
    return out


def _with_data_location(cfg: RunConfig, run_dir: Path, ckpt: Path, overrides: Sequence[str]) -> RunConfig:
    """``cfg`` with its data location from the command line or the run's ``config.yaml``, never from the
    config embedded in the checkpoint (a file handed around can point anywhere); logs which was used.

    Without either, ``data_dir`` is unset: data sets that need one say so."""
    given = [o.partition("=")[2] for o in overrides if o.partition("=")[0] in ("data_dir", "data.data_dir")]
    folder = RunFolder(run_dir)
    cfg_path = folder.config
    if given:
        where, data_dir = "the command line", given[-1] or None
    elif ckpt.parent == folder.checkpoints and cfg_path.is_file():
        where, data_dir = str(cfg_path), load_run_config(cfg_path).data.data_dir
    else:
        where, data_dir = "nowhere (pass data_dir=PATH if the data set needs one)", None
    if data_dir is not None or cfg.data.data_dir is not None:
        log.info("data location %s: from %s", data_dir, where)
    return replace(cfg, data=replace(cfg.data, data_dir=data_dir))


def resolve_run_path(path: str | Path, checkpoint: str = "best") -> tuple[Path, Path]:
    """``(run_dir, checkpoint_file)`` for a run folder or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        ckpt = RunFolder(p).checkpoint(checkpoint)
        if not ckpt.exists():
            raise CheckpointError(f"{p} has no checkpoints/{checkpoint}.pt; is it a finished ltrobust run folder? "
                                  f"(train it with `ltrobust train ... name={p.name}`)")
        return p, ckpt
    if p.exists():
        return RunFolder.of_checkpoint(p).root, p
    raise CheckpointError(f"{p} does not exist: pass a run folder (runs/NAME) or a checkpoint file (.pt).")


def result_tag(cfg: RunConfig, checkpoint: str | Path | None = None) -> str:
    """``<checkpoint>[-<adjust><tau>]``: the name of a deployed model's result files (``checkpoint``: the
    checkpoint file, whose stem names it; default ``eval.checkpoint``)."""
    name = Path(checkpoint).stem if checkpoint is not None else cfg.eval.checkpoint
    name += "" if cfg.eval.adjust == "none" else f"-{cfg.eval.adjust}{cfg.eval.adjust_tau:g}"
    return name + (f"-{cfg.eval.tag}" if cfg.eval.tag else "")


def build_deployed(cfg: RunConfig, model: nn.Module, class_counts: Sequence[int],
                   method_state: dict[str, Any] | None = None,
                   adjust_options: dict[str, Any] | None = None) -> tuple[Any, nn.Module]:
    """The method object and the deployed model: the method's inference rule, then ``eval.adjust``.

    ``adjust_options`` go to the adjustment (``tde`` needs ``mean_feature``, see :func:`load_run`).
    """
    loss = LOSSES.get(cfg.method.loss)(list(class_counts), options=loss_options(cfg), total_epochs=cfg.train.epochs)
    method = METHODS.get(cfg.method.name)(list(class_counts), cfg.attack, loss, method_options(cfg),
                                          total_epochs=cfg.train.epochs)
    if method_state:
        method.load_state_dict(method_state)
    deployed = method.deployed(model)
    if cfg.eval.adjust != "none":
        deployed = ADJUSTMENTS.get(cfg.eval.adjust)(deployed, list(class_counts), tau=cfg.eval.adjust_tau,
                                                    **(adjust_options or {}))
    return method, deployed


def _train_mean_feature(model: nn.Module, data: Any, batch_size: int) -> torch.Tensor:
    """Mean penultimate feature of the (unaugmented) training images, for ``eval.adjust=tde``."""
    from ..data.loader import DeviceLoader
    from .adjust import mean_feature

    device = next(model.parameters()).device
    return mean_feature(model, DeviceLoader(data.train, batch_size, shuffle=False, augment="none", device=device))


def load_run(path: str | Path, overrides: Sequence[str] = (), device: str | torch.device = "cpu",
             data: Any = None) -> LoadedRun:
    """Load a run folder or checkpoint into its deployed model.

    Args:
        path: a run folder (``runs/NAME``, loads ``checkpoints/<eval.checkpoint>.pt``) or a checkpoint file.
        overrides: ``key=value`` settings (``checkpoint=last``, ``attacks=...``, ``eval.adjust=logit_adjust``,
            ``data_dir=...``); they change the evaluation settings of the stored config, never the weights.
        device: where the model lives. Default: cpu.
        data: the built data set, when the caller has it; only ``eval.adjust=tde`` needs it (the mean
            training feature) and builds it otherwise (then returned as ``run.data``).

    Example::

        run = load_run("runs/at_bsl", ["eval.adjust=logit_adjust", "eval.adjust_tau=1"])
        run.deployed(x)   # z - log pi: the logits every attack of ltrobust eval targets
    """
    flat_over = eval_overrides(overrides)
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
        raise CheckpointError(f"{ckpt} is not an ltrobust checkpoint (no 'model' key); to evaluate weights that "
                              f"ltrobust did not write: ltrobust eval weights={ckpt} model=ARCH dataset=... (see "
                              f"ltrobust eval --help).")
    base_cfg = _with_data_location(_config_from_checkpoint(state, ckpt), run_dir, ckpt, flat_over)
    cfg = resolve_config(flat_over, base=base_cfg) if flat_over else base_cfg
    from ..models import build_model

    counts = [int(c) for c in state.get("class_counts") or []]
    num_classes = int(state.get("num_classes", len(counts)))
    in_ch, mean, std = _input_spec(cfg, state)
    method_cls = METHODS.get(cfg.method.name)
    head = method_cls.head_for(method_options(cfg)) or cfg.model.head
    model = build_model(replace(cfg.model, head=head), num_classes=num_classes, in_channels=in_ch, mean=mean,
                        std=std, image_size=_image_size(cfg, state))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt} does not match the model of its config ({str(exc)[:300]}); was it trained "
                              f"with another model or class count?") from None
    model = model.to(device).eval()
    adjust_options: dict[str, Any] = {}
    if cfg.eval.adjust == "tde":
        if data is None:
            from ..data import build_data

            data = build_data(cfg.data, device)
        adjust_options["mean_feature"] = _train_mean_feature(model, data, cfg.eval.batch_size)
    method, deployed = build_deployed(cfg, model, counts, state.get("method_state"), adjust_options)
    return LoadedRun(cfg=cfg, run_dir=run_dir, checkpoint=ckpt, model=model, deployed=deployed.eval(),
                     method=method, class_counts=counts, epoch=int(state.get("epoch", -1)),
                     val=dict(state.get("val") or {}), data=data)


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



def audit_path(run_dir: str | Path, tag: str, suffix: str = ".json") -> Path:
    """Where the gradient-masking audit of a deployed model lives: ``<run>/eval/audit.json`` for the
    default deployed model (tag ``best``), ``<run>/eval/audit-<tag>.json`` for any other."""
    return RunFolder(run_dir).audit(tag, suffix)


def audit_summary(run_dir: str | Path, tag: str) -> dict[str, Any] | None:
    """``{"flags", "messages", "tag", "file", "n"}`` of the stored audit of ``tag``, or None when there is none."""
    path = audit_path(run_dir, tag)
    if not path.exists():
        return None
    try:
        audit = io.read_json(path)
    except CheckpointError as exc:
        log.warning("ignoring the audit %s: %s", path, exc)
        return None
    checks = audit.get("checks", {})
    flags = list(audit.get("flags", []))
    return {"flags": flags, "messages": {f: checks.get(f, {}).get("message", "") for f in flags},
            "tag": audit.get("tag", tag), "file": str(path), "n": audit.get("n")}


def training_collapse(run_dir: str | Path) -> dict[str, Any] | None:
    """The collapse verdict of the run's training (``train_summary.json``) when it collapsed, else None."""
    path = RunFolder(run_dir).summary
    try:
        verdict = io.read_json(path).get("collapse") if path.is_file() else None
    except CheckpointError as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    return verdict if isinstance(verdict, dict) and verdict.get("collapsed") else None


def training_state(run_dir: str | Path, epochs: Any = None) -> dict[str, Any] | None:
    """How far the run's training got: ``{"finished", "epochs_done", "epochs"}``; None for a folder that is
    not a run. Finished means ``train_summary.json`` exists (the trainer writes it after the last epoch and
    any fine-tuning); ``epochs_done`` counts the training epochs in ``metrics.jsonl``; ``epochs`` is
    ``train.epochs`` (given, or from ``config.yaml``)."""
    folder = RunFolder(run_dir)
    if not folder.summary.is_file() and not folder.metrics.is_file() and not folder.checkpoints.is_dir():
        return None
    try:
        rows = io.read_jsonl(folder.metrics) if folder.metrics.is_file() else []
    except CheckpointError as exc:
        log.warning("ignoring %s: %s", folder.metrics, exc)
        rows = []
    done = {r["epoch"] for r in rows if isinstance(r.get("epoch"), int) and not r.get("stage")}
    if epochs is None and folder.config.is_file():
        try:
            epochs = load_run_config(folder.config).train.epochs
        except (ConfigError, OSError, yaml.YAMLError):
            epochs = None
    return {"finished": folder.summary.is_file(), "epochs_done": len(done),
            "epochs": int(epochs) if isinstance(epochs, (int, float)) else None}


def evaluate_run(path: str | Path, overrides: Sequence[str] = (), device: str | None = None,
                 progress: bool = True, replace: bool = False) -> dict[str, Any]:
    """``ltrobust eval``: the attack suite of ``eval.attacks`` on the run's test set.

    Attacks target the deployed logits (:func:`load_run`). Writes ``<run>/eval/<tag>.json``, ``.md`` and
    ``_samples.npz`` (tag: ``<checkpoint>[-<adjust><tau>]``), resuming from finished chunks, and returns
    the result dict; when the run has an audit of the same deployed model (``ltrobust audit``), its flags
    are embedded as ``result["audit"]`` and printed in the table.

    Example::

        res = evaluate_run("runs/r", ["attacks=clean,pgd20,aa", "eval.n_samples=1000"])
        res["results"]["aa"]["balanced_accuracy"]
    """
    from ..config import to_dict
    from ..data import build_data
    from .evaluator import Evaluation
    from ..device import resolve_device

    dev = resolve_device(device or "auto")
    run = load_run(path, overrides, device=dev)
    cfg = run.cfg
    data = run.data if run.data is not None else build_data(cfg.data, dev)
    if data.num_classes != len(run.class_counts):
        raise CheckpointError(f"{run.checkpoint} was trained with {len(run.class_counts)} classes but data set "
                              f"{cfg.data.dataset} has {data.num_classes}; evaluate it on the data set it was "
                              f"trained on.")
    tag = run.tag
    meta = {"run": str(run.run_dir), "checkpoint": str(run.checkpoint), "checkpoint_epoch": run.epoch,
            "val": run.val, "config": to_dict(cfg), "method": cfg.method.name, "loss": cfg.method.loss,
            "loss_label": run.method.loss_label,
            "dataset": cfg.data.dataset, "imbalance": cfg.data.imbalance, "train_seed": cfg.train.seed,
            "eps": cfg.eval.eps, "norm": cfg.eval.norm, "step_size": cfg.eval.step_size,
            "deployed": deployed_description(run.deployed), "device": str(dev)}
    audit = audit_summary(run.run_dir, tag)
    if audit is not None:
        meta["audit"] = audit
    collapse = training_collapse(run.run_dir)
    if collapse is not None:
        meta["collapse"] = collapse
    training = training_state(run.run_dir, cfg.train.epochs)
    if training is not None:
        meta["training"] = training
        if not training["finished"]:
            log.warning("%s: training stopped after %d of %d epochs (no train_summary.json); evaluating %s of epoch "
                        "%d: the result is marked unfinished", run.run_dir, training["epochs_done"], cfg.train.epochs,
                        run.checkpoint.name, run.epoch)
    ev = Evaluation(run.deployed, data.test, run.class_counts, cfg.eval.attacks, RunFolder(run.run_dir).eval_dir, tag=tag,
                    eps=cfg.eval.eps, step_size=cfg.eval.step_size, norm=cfg.eval.norm,
                    batch_size=cfg.eval.batch_size, chunk_size=cfg.eval.chunk_size, n_samples=cfg.eval.n_samples,
                    seed=cfg.eval.seed, mode=cfg.eval.mode, tail_group=cfg.eval.tail_group or None, meta=meta,
                    progress=progress, data_source={"dataset": cfg.data.dataset, **data.manifest.get("source", {})})
    refuse_overwrite(ev, replace)
    return ev.run()


def refuse_other_model(path: Path, new: dict[str, Any], fix: str) -> None:
    """Refuse to replace the result ``path`` holds when it is another model's (its ``model_fingerprint``, the
    hash of weights, buffers and wrappers, differs from ``new["model_fingerprint"]``): a result computed
    from other weights is never overwritten. ``fix`` says what to do instead."""
    if not path.is_file() or not new.get("model_fingerprint"):
        return
    try:
        old = io.read_json(path)
    except CheckpointError:
        return
    before = old.get("model_fingerprint")
    if before and before != new["model_fingerprint"]:
        raise ConfigError(f"{path} holds the evaluation of another model ({old.get('model_name') or '?'}, "
                          f"fingerprint {before[:8]}; this one: {new.get('model_name') or '?'}, fingerprint "
                          f"{new['model_fingerprint'][:8]}); it is kept: {fix}.")


def refuse_overwrite(ev: Any, replace: bool = False, same_model: str | None = None) -> None:
    """Refuse to replace ``<tag>.json`` by a result computed with other settings (attacks, threat model,
    mode, seed, sample or test data; see ``Evaluation.settings``). In a run folder, the same settings with
    new weights (a re-trained checkpoint) replace it; a result that fails its checksum is replaced.
    ``replace=True`` (a sweep, whose grid defines what each tag holds) replaces it with a warning instead.
    ``same_model`` (the fix to name; ``ltrobust.evaluate(out_dir=)`` and ``ltrobust eval weights=``): a result
    of another model (other weights) is refused too."""
    path = ev.out_dir / f"{ev.tag}.json"
    if not path.exists():
        return
    if same_model is not None:
        refuse_other_model(path, ev.meta, same_model)
    try:
        old = io.read_json(path)
    except CheckpointError:
        return
    new = ev.settings()
    before = old.get("settings") or {"attacks": old.get("attacks"), "mode": old.get("mode"), "seed": old.get("seed"),
                                     "n": old.get("n")}
    diffs = [k for k in new if k in before and before[k] != new[k]]
    if not diffs:
        return
    names = "-".join(s.name for s in ev.specs if s.name != "clean") or "clean"
    shown = {"attacks": lambda v: ",".join(a.get("name", "?") for a in v or []) + _threat(v),
             "data": lambda v: (v or {}).get("source", {}).get("path") or (v or {}).get("sha256", "?")[:12]}
    what = "; ".join(f"{k} {shown.get(k, str)(before[k])} -> {shown.get(k, str)(new[k])}" for k in diffs)
    if replace:
        log.warning("replacing %s, computed with other settings (%s)", path, what)
        return
    raise ConfigError(f"{path} holds a result computed with other settings ({what}); it is kept. Give this "
                      f"evaluation its own name with eval.tag=NAME (e.g. eval.tag={names}), or delete {path} "
                      f"to replace it.")


def _threat(attacks: Any) -> str:
    first = next((a for a in attacks or [] if a.get("name") != "clean"), None)
    return f" (eps {first.get('eps', 0):.4g}, {first.get('norm', '?')})" if first else ""


def deployed_description(deployed: nn.Module) -> list[dict[str, Any]]:
    """The chain of wrappers of a deployed model, outermost first (``[{"adjust": "logit_adjust", "tau": 1.0},
    {"wrapper": "RoBalDeployed"}, {"model": "LTModel"}]``)."""
    chain: list[dict[str, Any]] = []
    m: Any = deployed
    while True:
        if callable(getattr(m, "describe", None)):
            chain.append(dict(m.describe()))
        elif isinstance(getattr(m, "model", None), nn.Module):
            chain.append({"wrapper": type(m).__name__})
        else:
            chain.append({"model": type(m).__name__})
            break
        m = getattr(m, "model", None)
        if not isinstance(m, nn.Module):
            break
    return chain
