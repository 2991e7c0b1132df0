"""Models ltrobust did not build: torchvision, timm, RobustBench and the user's own code, and their weights.

``build_foreign(arch, num_classes, ...)`` names an architecture in one string:

- any ltrobust model name (``resnet18``, ``wrn34_10``, ...), built as in training;
- ``torchvision.<name>`` (``torchvision.models.get_model``) or ``timm.<name>`` (``timm.create_model``), with
  ``num_classes`` set and no pretrained download;
- ``robustbench.<dataset>.<threat>.<name>`` (``robustbench.cifar10.Linf.Standard``): RobustBench's own model
  definition and loader (``robustbench.utils.load_model``), reading the weights file given instead of
  downloading (needs the ``robustbench`` extra: ``pip install -e '.[robustbench]'``);
- ``module:callable`` for the user's code on ``PYTHONPATH`` (``mypkg.nets:wrn``), called with the options
  (and ``num_classes`` when it takes that argument).

:func:`load_weights` reads a weights file (``weights_only``) and fits it to the model: the state dict may sit
under ``state_dict`` / ``model`` / ``net`` (and similar) keys and carry ``module.`` (DataParallel) or
``_orig_mod.`` (``torch.compile``) prefixes; a mismatch lists the first missing, unexpected and
mismatched keys. Every model maps images in [0, 1] to logits; an architecture that expects normalised
inputs is given ``mean`` / ``std`` and wrapped in :class:`~.base.Normalize`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .. import io
from ..errors import CheckpointError, ConfigError, install_hint
from .base import Normalize

log = logging.getLogger(__name__)

#: Keys under which checkpoints of common training code keep the state dict (searched in this order).
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "state")
#: Prefixes added by wrappers: DataParallel / DDP (``module.``) and ``torch.compile`` (``_orig_mod.``).
PREFIXES = ("module.", "_orig_mod.")

#: what a weights file ltrobust did not write must be
WEIGHTS_EXPECTED = ("weights=PATH must be a file that torch.save wrote from model.state_dict() (alone, or under a key "
                    "such as state_dict or model)")

PICKLED_MODEL_ADVICE = (
    "A whole pickled model is never loaded. Where the model's class is defined, save only its weights, "
    "model.state_dict(), with torch.save to weights.pt; then evaluate them with "
    "`ltrobust eval weights=weights.pt model=mypkg.module:build_model dataset=... data_dir=...` (or call "
    "ltrobust.evaluate(model, data) in Python).")


def is_foreign_name(arch: str) -> bool:
    """True when ``arch`` names an architecture outside ltrobust's registry (``torchvision.``, ``timm.``,
    ``robustbench.`` or ``module:callable``)."""
    return ":" in arch or arch.split(".", 1)[0] in ("torchvision", "timm", "robustbench")


def check_foreign(arch: str, options: Mapping[str, Any] | None = None) -> Any:
    """Check what can be checked of ``arch`` before any data is read, and return its builder: a
    ``module:callable`` imports and names a callable that takes ``options``, a ``torchvision.`` / ``timm.`` name
    exists, RobustBench is installed and its zoo holds the model.

    Raises:
        ConfigError: naming the architecture and the fix.
    """
    opts = dict(options or {})
    if arch.startswith("robustbench."):
        return robustbench_entry(arch)
    if ":" in arch:
        fn = _callable(arch)
        params = _parameters(fn)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = sorted(k for k in opts if k not in params) if params and not takes_any else []
        if unknown:
            names = ", ".join(k for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
            raise ConfigError(f"model={arch} takes no option {', '.join(unknown)} (model.{unknown[0]}=...); its "
                              f"arguments: {names or 'none'}.")
        return fn
    lib, _, name = arch.partition(".")
    if lib == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model_builder(name)
        except ValueError:
            names = ", ".join(sorted(torchvision.models.list_models())[:12])
            raise ConfigError(f"model={arch}: torchvision has no model {name!r} (e.g. {names}, ...; "
                              "torchvision.models.list_models() lists them).") from None
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model={arch} needs timm: {install_hint('vit')}.") from None
    if not timm.is_model(name):
        raise ConfigError(f"model={arch}: timm has no model {name!r} (timm.list_models('*{name[:6]}*') lists "
                          "close names).")
    return timm.create_model


def build_foreign(arch: str, num_classes: int, *, in_channels: int = 3, options: Mapping[str, Any] | None = None,
                  weights: str | Path | None = None) -> nn.Module:
    """The network ``arch`` names (module docstring), with ``num_classes`` outputs, weights not yet loaded
    (except RobustBench models, which its own loader builds from ``weights``)."""
    opts = dict(options or {})
    builder = check_foreign(arch, opts)
    if arch.startswith("robustbench."):
        if weights is None:
            raise ConfigError(f"model={arch} needs weights=PATH (the RobustBench checkpoint file).")
        return _robustbench(arch, Path(weights))
    try:
        if ":" in arch:
            if "num_classes" in _parameters(builder) and "num_classes" not in opts:
                opts["num_classes"] = num_classes
            net = builder(**opts)
        elif arch.startswith("torchvision."):
            net = builder(num_classes=num_classes, weights=None, **opts)
        else:
            net = builder(arch.partition(".")[2], pretrained=False, num_classes=num_classes, in_chans=in_channels,
                          **opts)
    except TypeError as exc:  # an option the constructor does not take, or a value of the wrong type
        given = ", ".join(f"model.{k}={v}" for k, v in opts.items() if k != "num_classes") or "no options"
        raise ConfigError(f"model={arch} could not be built with {given}: {exc}. Give only options its "
                          "constructor takes.") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model={arch} returned {type(net).__name__}, not a torch.nn.Module: the callable "
                          "must build and return the network.")
    return net


def check_forward(model: nn.Module, in_channels: int, image_size: int, what: str) -> None:
    """Run ``model`` once on a black image of the data's shape, so that a model that cannot take these images
    (3 input channels on 1-channel data, too small an image) fails now with the fix, not inside an attack.

    Raises:
        ConfigError: naming ``what`` (e.g. ``model=torchvision.resnet18``), the image shape and the fix.
    """
    try:
        param = next(model.parameters())
    except StopIteration:
        return
    x = torch.zeros(1, in_channels, image_size, image_size, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001 - any failure of the forward pass (the user's code included)
        raise ConfigError(forward_error(exc, what, in_channels, image_size)) from None
    finally:
        model.train(was_training)


def forward_error(exc: Exception, what: str, in_channels: int, image_size: int) -> str:
    """The message for a model whose forward pass failed on images of ``in_channels`` x ``image_size``^2."""
    import re

    m = re.search(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels", str(exc))
    if m:
        want, got = int(m.group(1)), int(m.group(2))
        return (f"{what} expects {want}-channel images but the data's images have {got} channel"
                f"{'s' if got != 1 else ''}: evaluate it on {want}-channel data, or give it a first layer that takes "
                f"{got} channel{'s' if got != 1 else ''} (ltrobust's own models take the data's channels).")
    first = " ".join(str(exc).split())[:300]
    return (f"{what} cannot run on the data's images ({in_channels}x{image_size}x{image_size}, C x H x W): "
            f"{type(exc).__name__}: {first}. Check model= and its options against the data (channels, image size).")


def _parameters(fn: Any) -> Mapping[str, Any]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def _callable(spec: str) -> Any:
    import os

    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the current folder first, as python -m and plug-ins
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model={spec}: cannot import {module_name!r} ({exc}); run from its folder, put that "
                          "folder on PYTHONPATH, or pip install its package.") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(f"model={spec}: importing {module_name!r} failed: {type(exc).__name__}: {exc}; fix it "
                          f"(python -c 'import {module_name}' shows the traceback).") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"model={spec}: module {module_name!r} has no {attr!r}.")
    if not callable(obj):
        raise ConfigError(f"model={spec}: {attr!r} is not callable; name a class or a function that builds the model.")
    return obj


def robustbench_entry(arch: str) -> tuple[str, str, str, dict[str, Any]]:
    """``(dataset, threat, name, zoo entry)`` of ``robustbench.<dataset>.<threat>.<name>``; the entry's
    ``"model"`` builds RobustBench's own architecture (random weights)."""
    parts = arch.split(".", 3)
    if len(parts) != 4 or parts[0] != "robustbench":
        raise ConfigError(f"model={arch}: write robustbench.<dataset>.<threat>.<name>, e.g. "
                          "robustbench.cifar10.Linf.Standard.")
    _, dataset, threat, name = parts
    if "autoattack" not in sys.modules:  # robustbench imports `autoattack`; its PyPI packaging is pyautoattack
        try:
            importlib.import_module("autoattack")
        except ImportError:
            import pyautoattack

            sys.modules["autoattack"] = pyautoattack
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as exc:
        raise ConfigError(f"model={arch} needs RobustBench. {_robustbench_missing(exc)}.") from None
    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    except (ValueError, KeyError):
        raise ConfigError(f"model={arch}: RobustBench has no {dataset}/{threat} zoo (datasets "
                          f"{[d.value for d in BenchmarkDataset]}, threats {[t.value for t in ThreatModel]}).") from None
    if name not in zoo:
        raise ConfigError(f"model={arch}: the RobustBench {dataset}/{threat} zoo has no {name!r} "
                          f"(e.g. {', '.join(list(zoo)[:5])}, ...).")
    return dataset, threat, name, zoo[name]


def _robustbench_missing(exc: ImportError) -> str:
    """Why RobustBench does not import, and the fix. Without its distribution it is not installed, even when a
    ``robustbench`` folder imports partly (torchattacks' wheel ships an incomplete copy, without metadata)."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("robustbench")
    except importlib.metadata.PackageNotFoundError:
        partial = "" if (exc.name or "").split(".")[0] == "robustbench" else (
            " (the robustbench folder found has no package metadata and imports only partly, e.g. the incomplete "
            "copy that torchattacks installs)")
        return f"RobustBench is not installed{partial}: {install_hint('robustbench')}"
    missing = (exc.name or "").split(".")[0]
    if missing == "pkg_resources":
        return (f"RobustBench {version} imports pkg_resources, which setuptools 81 removed: "
                "pip install 'setuptools<81'")
    return f"RobustBench {version} cannot import {missing or exc}: pip install {missing or 'its dependencies'}"


def _robustbench(arch: str, weights: Path) -> nn.Module:
    """A RobustBench zoo model built by RobustBench's ``load_model`` from a local checkpoint file."""
    dataset, threat, name, entry = robustbench_entry(arch)
    from robustbench.utils import load_model

    if isinstance(entry.get("gdrive_id"), list):
        raise ConfigError(f"model={arch} is an ensemble of several checkpoint files; load it with RobustBench "
                          "in Python and pass it to ltrobust.evaluate.")
    if not weights.is_file():
        raise CheckpointError(f"weights={weights} does not exist.")
    # read once with weights_only=True first: whatever RobustBench's own torch.load does, a file that asks to
    # build Python objects is refused here
    io.load_checkpoint(weights, map_location="cpu", refused_advice=PICKLED_MODEL_ADVICE, expected=WEIGHTS_EXPECTED)
    with tempfile.TemporaryDirectory() as tmp:  # RobustBench's layout <dir>/<dataset>/<threat>/<name>.pt
        folder = Path(tmp) / dataset / threat
        folder.mkdir(parents=True)
        (folder / f"{name}.pt").symlink_to(weights.resolve())
        try:
            model = load_model(name, model_dir=tmp, dataset=dataset, threat_model=threat,
                               custom_checkpoint=str(weights))
        except RuntimeError as exc:
            raise CheckpointError(f"RobustBench could not load {weights} into {name}: "
                                  f"{' '.join(str(exc).split())[:400]}") from None
    return model


# ------------------------------------------------------------------------------------------ weights
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, unwrapped from its container keys and wrapper prefixes."""
    state = io.load_checkpoint(path, map_location="cpu", refused_advice=PICKLED_MODEL_ADVICE,
                               expected=WEIGHTS_EXPECTED)
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(state, Mapping) and not _is_state_dict(state):
            inner = next((state[k] for k in STATE_KEYS if isinstance(state.get(k), Mapping)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping) or not _is_state_dict(state):
        keys = list(state)[:8] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"{path} holds no state dict (top-level keys {keys}); save model.state_dict() with "
                              f"torch.save, alone or under one of the keys {', '.join(STATE_KEYS)}.")
    return strip_prefixes(state)


def _is_state_dict(d: Mapping[str, Any]) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def strip_prefixes(state: Mapping[str, torch.Tensor], prefixes: Sequence[str] = PREFIXES) -> dict[str, torch.Tensor]:
    """``state`` with the wrapper prefixes removed wherever they start a key (repeatedly, in any order)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "the weights",
                 optional: Sequence[str] = ()) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch raises :class:`CheckpointError` listing the first
    missing, unexpected and shape-mismatched keys. Keys ending in one of ``optional`` may be missing."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(tuple(optional))]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        def first(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = [f"{name} ({len(keys)}): {first(keys)}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch, file vs model", mismatched))
                 if keys]
        raise CheckpointError(f"{source} do not fit the model {type(model).__name__}: " + "; ".join(parts)
                              + ". Check model= and its options (width, depth, num_classes) against the code that "
                              "trained these weights.")
    model.load_state_dict({k: v for k, v in state.items()}, strict=False)


class Normalized(nn.Module):
    """``net(normalize(x))``: a network trained on normalised inputs, served images in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        self.model = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))
