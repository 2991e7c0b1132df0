"""``ltrobust eval weights=PATH model=ARCH ...``: evaluate weights that ltrobust did not write.

The architecture is named by ``model=`` (:mod:`ltrobust.models.foreign`: an ltrobust model, ``torchvision.<name>``,
``timm.<name>``, ``robustbench.<dataset>.<threat>.<name>`` or ``module:callable``); its options are
``model.<option>=value`` (ltrobust models: ``width``, ``depth``, ...; others: keyword arguments of the
constructor). ``model.mean=`` / ``model.std=`` declare the input normalisation the weights were trained
with (applied inside the model, so attacks stay in pixel space); without them the model sees images in
[0, 1]. The data set, attacks and threat model are the usual keys (``dataset=``, ``data_dir=``,
``attacks=``, ``eps=`` (the evaluation's eps, as in ``ltrobust eval RUN``), ...). ``name=`` names the model in
results and reports (default: the weights file's stem and a short hash of the file, ``model-3f2a9c1b``).
Results go to ``out=`` (default ``runs/eval/<name>``) as ``eval.json``, ``eval.md`` and ``eval_samples.npz``,
chunked and resumable; a result of other weights already there is kept (the command fails, naming the fix).

Example::

    ltrobust eval weights=wrn.pt model=mypkg.nets:WideResNet model.depth=28 dataset=imagefolder \\
        data_dir=data/mine attacks=clean,pgd20,aa
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..config import check_name, model_config, parse_value, resolve_config, to_dict
from ..errors import ConfigError
from ..io import sha256_file

log = logging.getLogger(__name__)


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``({weights, model, mean, std, options, out, name}, the other key=value settings)``."""
    spec: dict[str, Any] = {"options": {}}
    rest: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r} (e.g. weights=model.pt model=torchvision.resnet18).")
        key, value = (s.strip() for s in item.split("=", 1))
        if key in ("weights", "out", "name"):
            spec[key] = value
        elif key in ("model", "model.name"):
            spec["model"] = value
        elif key in ("model.mean", "model.std", "mean", "std"):
            spec[key.rsplit(".", 1)[-1]] = channel_values(f"model.{key.rsplit('.', 1)[-1]}", value)
        elif key.startswith("model."):
            spec["options"][key[len("model."):]] = parse_value(value)
        else:
            rest.append(item)
    return spec, rest


def channel_values(key: str, text: str) -> list[float]:
    """``model.mean=0.485,0.456,0.406`` -> the per-channel floats, finite (and > 0 for a std)."""
    example = f"{key}=0.485,0.456,0.406" if key.endswith("mean") else f"{key}=0.229,0.224,0.225"
    if not text.strip():
        raise ConfigError(f"{key}= is empty: give one value per image channel, e.g. {example}, or leave {key} out "
                          "(no normalisation).")
    parsed = parse_value(text)
    items = parsed if isinstance(parsed, list) else [parsed]
    try:
        if any(isinstance(v, bool) or v is None for v in items):
            raise TypeError
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={text} is not a list of numbers: give one value per image channel, e.g. "
                          f"{example}.") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{key}={text} is not a list of finite numbers: give one value per image channel, e.g. "
                          f"{example}.")
    if key.endswith("std") and min(values) <= 0:
        raise ConfigError(f"{key}={text} has a value <= 0: a standard deviation is positive, e.g. {example}.")
    return values


def check_weights_spec(spec: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Everything about ``model=`` and ``weights=`` that can be checked before the data is read (issue: fail
    before the work): the architecture resolves (a ``module:callable`` imports, a torchvision / timm / RobustBench
    name exists), its options exist, and the weights file holds a state dict. Returns that state dict
    (``None`` for RobustBench, whose own loader reads the file)."""
    from ..models.foreign import check_foreign, is_foreign_name, read_state_dict
    from ..registry import MODELS

    arch = spec["model"]
    if is_foreign_name(arch):
        check_foreign(arch, spec["options"])
    else:
        MODELS.get(arch)
        model_config(arch, spec["options"])
    return None if arch.startswith("robustbench.") else read_state_dict(Path(spec["weights"]))


def build_weights_model(spec: dict[str, Any], num_classes: int, in_channels: int, image_size: int,
                        state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The model ``spec`` names, with the weights of ``spec["weights"]`` (or ``state``, already read) loaded, in
    eval mode, on the CPU; checked to run on images of ``in_channels`` x ``image_size`` x ``image_size``."""
    from ..models import build_model
    from ..models.foreign import (Normalized, build_foreign, check_forward, is_foreign_name, load_weights,
                                  read_state_dict)

    arch, weights = spec["model"], Path(spec["weights"])
    mean, std = spec.get("mean"), spec.get("std")
    if arch.startswith("robustbench."):
        if mean or std:
            log.warning("model.mean / model.std ignored: RobustBench models normalise their inputs themselves.")
        model = build_foreign(arch, num_classes, weights=weights).eval()
        check_forward(model, in_channels, image_size, f"model={arch}")
        return model
    state = read_state_dict(weights) if state is None else state
    if is_foreign_name(arch):
        net = build_foreign(arch, num_classes, in_channels=in_channels, options=spec["options"])
        load_weights(net, state, f"the weights in {weights}")
        model: nn.Module = Normalized(net, mean, std, in_channels) if (mean or std) else net
    else:
        # an ltrobust model's weights may carry its normalisation (normalize.mean / .std): the file's values are
        # used, and a given model.mean / model.std that they replace is said to be ignored (and not checked)
        stored = [k for k in ("mean", "std") if f"normalize.{k}" in state]
        given = [k for k in stored if spec.get(k)]
        if given:
            values = ", ".join(f"{k} {[round(v, 4) for v in state[f'normalize.{k}'].flatten().tolist()]}"
                               for k in stored)
            log.warning("%s ignored: %s carries its own normalisation (%s), which is used.",
                        " and ".join(f"model.{k}" for k in given), weights, values)
            mean, std = (None if "mean" in stored else mean), (None if "std" in stored else std)
        model = build_model(model_config(arch, spec["options"]), num_classes=num_classes, in_channels=in_channels,
                            mean=mean, std=std, image_size=image_size)
        load_weights(model, state, f"the weights in {weights}", optional=("normalize.mean", "normalize.std"))
    check_forward(model, in_channels, image_size, f"model={arch}")
    return model.eval()


def evaluate_weights(overrides: Sequence[str], device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """``ltrobust eval weights=PATH model=ARCH [model.option=v] dataset=... [key=value ...]``.

    Returns the result dict (also written to ``<out>/eval.json``, with ``.md`` and ``_samples.npz``).
    """
    from ..data import build_data
    from ..device import resolve_device
    from .api import evaluate
    from .evaluator import model_fingerprint
    from .runs import deployed_description, eval_overrides, refuse_other_model

    spec, rest = split_overrides(overrides)
    if not spec.get("weights"):
        raise ConfigError("give weights=PATH, the file of weights to evaluate.")
    if not spec.get("model"):
        raise ConfigError("weights=PATH needs model=ARCH: an ltrobust model name, torchvision.<name>, timm.<name>, "
                          "robustbench.<dataset>.<threat>.<name> or module:callable (ltrobust list shows the "
                          "ltrobust names).")
    if not Path(spec["weights"]).is_file():
        what = "is a folder, not a file" if Path(spec["weights"]).is_dir() else "does not exist"
        raise ConfigError(f"weights={spec['weights']} {what}: give the file of weights saved with torch.save.")
    if spec.get("name"):
        check_name("name", spec["name"], "wrn-34-10")
    # a bare key that names an eval. setting means it (eps=4/255 is eval.eps), as in `ltrobust eval RUN`
    cfg = resolve_config(eval_overrides(rest))
    dev = resolve_device(device or cfg.train.device)
    state = check_weights_spec(spec)  # model, options and weights file first: no image is decoded for a typo
    weights_sha256 = sha256_file(spec["weights"])
    name = spec.get("name") or default_name(spec["weights"], weights_sha256)
    out = Path(spec.get("out") or Path("runs") / "eval" / name)
    tag = "eval" + (f"-{cfg.eval.tag}" if cfg.eval.tag else "")
    data = build_data(cfg.data, "cpu")
    model = build_weights_model(spec, data.num_classes, data.channels, data.image_size, state=state).to(dev)
    meta = {"weights": str(spec["weights"]), "weights_sha256": weights_sha256, "model": spec["model"],
            "model_options": spec["options"], "mean": spec.get("mean"), "std": spec.get("std"),
            "dataset": cfg.data.dataset, "data": to_dict(cfg)["data"], "eps": cfg.eval.eps, "norm": cfg.eval.norm,
            "step_size": cfg.eval.step_size, "deployed": deployed_description(model), "device": str(dev)}
    fix = (f"evaluate it into another folder (out=DIR), or delete {out / (tag + '.json')} to replace it"
           if spec.get("out") else f"give it another name (name=NAME: results in runs/eval/NAME), or delete "
           f"{out / (tag + '.json')} to replace it")
    refuse_other_model(out / f"{tag}.json", {"model_name": name, "model_fingerprint": model_fingerprint(model)}, fix)
    res = evaluate(model, data.test, class_counts=data.class_counts, attacks=cfg.eval.attacks, eps=cfg.eval.eps,
                   norm=cfg.eval.norm, step_size=cfg.eval.step_size, n_samples=cfg.eval.n_samples,
                   batch_size=cfg.eval.batch_size, out_dir=out, tag=tag, seed=cfg.eval.seed, mode=cfg.eval.mode,
                   chunk_size=cfg.eval.chunk_size, tail_group=cfg.eval.tail_group or None, progress=progress,
                   name=name, meta=meta)
    return {**res.result, "out": str(out)}


def default_name(weights: str | Path, sha256: str) -> str:
    """The name of weights evaluated without ``name=``: the file's stem and the first 8 hex digits of its
    SHA-256 (``model-3f2a9c1b``), so two files called ``model.pt`` never share a result folder."""
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", Path(weights).stem).lstrip("._-+") or "weights"
    return f"{stem[:100]}-{sha256[:8]}"
