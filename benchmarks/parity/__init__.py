"""Parity harness: ltrobust's training and evaluation against the authors' own code, step by step (docs/parity.md).

``python -m benchmarks.parity at-bsl --official /path/to/AT-BSL`` runs one method's checks against a checkout
of its repository; ``--all DIR`` runs every method whose checkout is in ``DIR`` (folders named as the
repositories). Each method is one module of this package, registered in :data:`METHODS`; the shared machinery
is in :mod:`.core` (rows, comparisons, key maps, the report), :mod:`.official` (their code, unchanged, from a
scratch copy, on the CPU), :mod:`.ours` (ltrobust's real code paths, data files in the official formats) and
:mod:`.method` (what a module declares, how a run goes). "How to add a method" is in docs/parity.md.
"""

from __future__ import annotations

import importlib

from .core import ParityError
from .method import MethodSpec

#: method name (the CLI's) -> its module; a module defines ``SPEC = MethodSpec(...)``
METHODS = {
    "at-bsl": "benchmarks.parity.at_bsl",
    "robal": "benchmarks.parity.robal",
    "reat": "benchmarks.parity.reat",
    "taet": "benchmarks.parity.taet",
    "self-distill": "benchmarks.parity.self_distill",
    "robustlt": "benchmarks.parity.robustlt",
    "mcat": "benchmarks.parity.mcat",
}


def load_method(name: str) -> MethodSpec:
    """The :class:`~.method.MethodSpec` of method ``name``; :class:`~.core.ParityError` for an unknown name."""
    if name not in METHODS:
        raise ParityError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}.")
    return importlib.import_module(METHODS[name]).SPEC
