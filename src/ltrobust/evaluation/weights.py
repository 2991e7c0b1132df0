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
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..config import ModelConfig, check_name, parse_value, resolve_config, to_dict
from ..errors import ConfigError
from ..io import sha256_file

log = logging.getLogger(__name__)

_MODEL_FIELDS = {f for f in ModelConfig.__dataclass_fields__ if f != "name"}


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
            values = parse_value(value)
            spec[key.rsplit(".", 1)[-1]] = [float(v) for v in (values if isinstance(values, list) else [values])]
        elif key.startswith("model."):
            spec["options"][key[len("model."):]] = parse_value(value)
        else:
            rest.append(item)
    return spec, rest


def build_weights_model(spec: dict[str, Any], num_classes: int, in_channels: int,
                        image_size: int) -> nn.Module:
    """The model ``spec`` names, with the weights of ``spec["weights"]`` loaded, in eval mode, on the CPU."""
    from ..models import build_model
    from ..models.foreign import Normalized, build_foreign, is_foreign_name, load_weights, read_state_dict

    arch, weights = spec["model"], Path(spec["weights"])
    mean, std = spec.get("mean"), spec.get("std")
    if arch.startswith("robustbench."):
        if mean or std:
            log.warning("model.mean / model.std ignored: RobustBench models normalise their inputs themselves.")
        return build_foreign(arch, num_classes, weights=weights).eval()
    state = read_state_dict(weights)
    if is_foreign_name(arch):
        net = build_foreign(arch, num_classes, in_channels=in_channels, options=spec["options"])
        load_weights(net, state, f"the weights in {weights}")
        model: nn.Module = Normalized(net, mean, std, in_channels) if (mean or std) else net
        return model.eval()
    bad = sorted(set(spec["options"]) - _MODEL_FIELDS)
    if bad:
        raise ConfigError(f"model {arch!r} has no option {', '.join(bad)}; its options: {', '.join(sorted(_MODEL_FIELDS))}.")
    cfg_model = replace(ModelConfig(name=arch), **spec["options"])
    stored_mean = state.get("normalize.mean")
    if stored_mean is not None and (mean or std):
        log.warning("model.mean / model.std ignored: %s carries its own normalisation buffers.", weights)
    model = build_model(cfg_model, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
                        image_size=image_size)
    load_weights(model, state, f"the weights in {weights}", optional=("normalize.mean", "normalize.std"))
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
        raise ConfigError(f"weights={spec['weights']} does not exist.")
    if spec.get("name"):
        check_name("name", spec["name"], "wrn-34-10")
    # a bare key that names an eval. setting means it (eps=4/255 is eval.eps), as in `ltrobust eval RUN`
    cfg = resolve_config(eval_overrides(rest))
    dev = resolve_device(device or cfg.train.device)
    weights_sha256 = sha256_file(spec["weights"])
    name = spec.get("name") or default_name(spec["weights"], weights_sha256)
    out = Path(spec.get("out") or Path("runs") / "eval" / name)
    tag = "eval" + (f"-{cfg.eval.tag}" if cfg.eval.tag else "")
    data = build_data(cfg.data, "cpu")
    model = build_weights_model(spec, data.num_classes, data.channels, data.image_size).to(dev)
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
