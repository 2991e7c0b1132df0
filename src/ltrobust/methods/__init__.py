"""Training methods: one file per method, each registered in ``METHODS``."""

import importlib
import pkgutil

from .base import Method

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["Method"]
