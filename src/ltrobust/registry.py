"""One small registry for data sets, models, attacks, losses, methods, analyses and experiment trackers.

Each entry is registered with a decorator (timm's ``@register_model`` pattern), so the CLI and the
parametrised tests find every entry by name without an if/elif chain::

    from ltrobust.registry import MODELS

    @MODELS.register("resnet18")
    def resnet18(num_classes: int, width: int = 64, **kw) -> nn.Module: ...

    model = MODELS.build("resnet18", num_classes=10)
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry:
    """A name -> object table with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        _REGISTRIES.append(self)

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            old = self._entries.get(key)
            if old is not None and old is not obj:
                raise ConfigError(f"{self.kind} {key!r} is registered twice: by {_origin(old)} and by {_origin(obj)}; "
                                  f"register the second one under another name (ltrobust list shows the names "
                                  f"taken).")
            self._entries[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        """Return the entry called ``name``; raise :class:`ConfigError` naming close matches."""
        _load_builtin_entries()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(self.names())}."

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Look up ``name`` and call it with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        _load_builtin_entries()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        _load_builtin_entries()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


_REGISTRIES: list[Registry] = []


def _origin(obj: Any) -> str:
    """``module.qualname`` of a registered object, for messages."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


DATASETS = Registry("data set")
MODELS = Registry("model")
ATTACKS = Registry("attack")
LOSSES = Registry("loss")
METHODS = Registry("method")
ADJUSTMENTS = Registry("inference adjustment")
ANALYSES = Registry("analysis")
LOGGERS = Registry("logger")  # experiment trackers of train.logger (training/loggers.py)

_loaded = False
_loading = False


def _load_builtin_entries() -> None:
    """Import the packages whose modules register the built-in entries.

    Marked done only after every import succeeded, so one broken module raises its own error on each
    lookup instead of leaving the registries half-filled.
    """
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        import importlib
        import importlib.util

        for pkg in ("data", "models", "attacks", "losses", "methods", "evaluation.adjust", "analysis",
                    "training.loggers"):
            if importlib.util.find_spec(f"ltrobust.{pkg}") is not None:
                importlib.import_module(f"ltrobust.{pkg}")
        load_plugins()
        _loaded = True
    finally:
        _loading = False


#: Environment variable naming user modules to import (comma-separated), e.g. ``LTROBUST_PLUGINS=mypkg.models``.
PLUGINS_ENV = "LTROBUST_PLUGINS"
_plugins: list[str] = []


def load_plugins(names: Iterable[str] = ()) -> list[str]:
    """Import the user modules ``names`` and those of ``$LTROBUST_PLUGINS``, so their ``@MODELS.register``,
    ``@DATASETS.register``, ``@METHODS.register`` ... decorators run; returns every plugin imported so far.

    The current folder is searched first (as ``python -m`` does). ``names`` are added to the variable, so
    processes started from this one (sweep workers, DDP ranks) import them too.

    Example::

        load_plugins(["mypkg.models"])   # what `ltrobust --import mypkg.models ...` does
    """
    import importlib
    import os
    import sys
    import traceback

    _load_builtin_entries()  # built-in names first, so a plug-in that reuses one is the entry named as the second
    env = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    wanted = list(dict.fromkeys([*env, *(n.strip() for n in names if n.strip())]))
    if wanted and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in wanted:
        if name in _plugins:
            continue
        if name.endswith(".py") or not all(part.isidentifier() for part in name.split(".")):
            stem = name[:-3] if name.endswith(".py") else name
            hint = (f"; for the file {name}, write {Path(stem).name} and run from its folder (or add the folder to "
                    "PYTHONPATH)") if name.endswith(".py") or "/" in name else ""
            raise ConfigError(f"plugin {name!r} (from --import or ${PLUGINS_ENV}) is not a module name: write a "
                              f"dotted Python module name such as mypkg.models{hint}.")
        before = [dict(r._entries) for r in _REGISTRIES]
        try:
            try:
                importlib.import_module(name)
            except BaseException:  # a plug-in that fails halfway leaves no entry behind (a retry starts clean)
                for registry, entries in zip(_REGISTRIES, before):
                    registry._entries = entries
                raise
        except ImportError as exc:
            raise ConfigError(f"cannot import plugin {name!r} (from --import or ${PLUGINS_ENV}): {exc}. Run from "
                              "the folder that holds it, add that folder to PYTHONPATH, or pip install it.") from None
        except ConfigError as exc:  # e.g. a name registered twice
            raise ConfigError(f"plugin {name!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the plug-in's own code failed while importing
            where = "" if isinstance(exc, SyntaxError) else \
                " ({0.filename}, line {0.lineno})".format(traceback.extract_tb(exc.__traceback__)[-1])
            raise ConfigError(f"plugin {name!r} failed while importing: {type(exc).__name__}: {exc}{where}; fix it "
                              f"(python -c 'import {name}' shows the traceback), or leave it out of --import and "
                              f"${PLUGINS_ENV}.") from None
        _plugins.append(name)
        if name not in env:  # processes started from this one (sweep workers, DDP ranks) import it too
            env.append(name)
            os.environ[PLUGINS_ENV] = ",".join(env)
    return list(_plugins)
