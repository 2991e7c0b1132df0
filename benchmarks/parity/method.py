"""What a method module declares (:class:`MethodSpec`) and how a run goes (:func:`run_method`).

A method module (``benchmarks/parity/<method>.py``) defines ``SPEC = MethodSpec(...)``: the repository, the
commit it was written against, the files of theirs it reads, one check per level, and the differences it
knows (:class:`~.core.Known`, keyed by a regular expression on the row's quantity). :func:`run_method`
opens the checkout (:class:`~.official.Checkout`), runs the checks of the chosen levels on the CPU with
their device calls made CPU calls, explains the rows that differ, and returns the :class:`~.core.Report`.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from .core import LEVELS, Known, ParityError, Report, Row
from .official import Checkout, cpu_only

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Sizes and switches of a parity run (the CLI's flags)."""

    levels: tuple[str, ...] = LEVELS
    fp64: bool = True  #: also run the step and model checks in float64 on both sides
    steps: int = 3  #: optimiser steps k of the step level
    batch_size: int = 32  #: images per step (the step level)
    eval_images: int = 100  #: test images of the evaluation level (PGD-type attacks)
    aa_images: int = 32  #: test images of the AutoAttack comparison (the slowest part)
    checkpoint: str | None = None  #: weights for the evaluation level (their state-dict format)
    images: str | None = None  #: an image-folder CIFAR-10 copy whose images fill the official-format files
    seed: int = 0
    threads: int = 0  #: torch threads (0: leave as is)


@dataclass
class Context:
    """What a check receives: the open checkout, the options, a scratch folder, the report (for notes)."""

    checkout: Checkout
    options: Options
    scratch: Path
    report: Report
    cache: dict[str, Any] = field(default_factory=dict)  #: results shared between a module's checks

    def note(self, text: str) -> None:
        self.report.notes.append(text)


Check = Callable[[Context], Iterable[Row]]


@dataclass(frozen=True)
class MethodSpec:
    """A method module's declaration.

    Args:
        name: the CLI name (``at-bsl``).
        repository: ``owner/name`` on GitHub.
        checkout: the checkout's folder name under ``--all DIR`` (a path for nested code, ``MCAT/code/...``).
        commit: the commit the module was written and last run against.
        files: the files of theirs it imports or reads (relative to the checkout).
        checks: level -> check; a check yields :class:`~.core.Row` objects.
        known: regex on a row's quantity -> :class:`~.core.Known` (the first match explains a differing row).
        stubs: stand-ins for third-party modules their code imports but that are not installed.
        presets: the ltrobust presets whose parity the module proves.
        takes_checkpoint: whether its evaluation level loads ``--checkpoint`` (the others evaluate their network
            after the step level's steps).
    """

    name: str
    repository: str
    checkout: str
    commit: str
    files: tuple[str, ...]
    checks: Mapping[str, Check]
    known: Mapping[str, Known] = field(default_factory=dict)
    stubs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    presets: tuple[str, ...] = ()
    takes_checkpoint: bool = False

    def explain(self, row: Row) -> Row:
        """Attach the first known difference whose pattern matches the row's quantity (and its ``where``)."""
        for pattern, known in self.known.items():
            if re.search(pattern, row.quantity) and (not known.where
                                                      or re.search(known.where, f"{row.setting} {row.dtype}")):
                return row.explain(known)
        return row


def run_method(spec: MethodSpec, path: str | Path, options: Options, command: str = "") -> Report:
    """Run ``spec``'s checks of ``options.levels`` against the checkout at ``path``; returns the report."""
    bad = [lvl for lvl in options.levels if lvl not in LEVELS]
    if bad:
        raise ParityError(f"unknown level {bad[0]!r}: use {', '.join(LEVELS)}.")
    checkout = Checkout(path, spec.stubs)
    missing = [f for f in spec.files if not (checkout.path / f).exists()]
    if missing:
        raise ParityError(f"{checkout.path} is not a checkout of {spec.repository}: {missing[0]} is missing.")
    report = Report(spec.name, spec.repository, checkout.commit, spec.commit, command,
                    settings=dataclasses.asdict(options))
    if report.commit not in ("unknown", spec.commit):
        report.notes.append(f"checkout at {report.commit}, the module was written against {spec.commit}")
    if checkout.dirty:
        report.notes.append("the checkout has uncommitted changes: its files differ from the commit named")
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    default_dtype = torch.get_default_dtype()
    # both sides with subnormal floats flushed, as ltrobust's trainer and evaluator run on a CPU (flush_denormals)
    if torch.set_flush_denormal(True):
        report.notes.append("both sides ran with subnormal floats flushed to zero (ltrobust's CPU setting)")
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="parity-") as scratch, checkout, cpu_only():
            ctx = Context(checkout, options, Path(scratch), report)
            for level in LEVELS:
                if level in options.levels and level in spec.checks:
                    t = time.perf_counter()
                    for row in spec.checks[level](ctx):
                        report.add(spec.explain(row))
                    log.info("%s: %s level done (%.0f s)", spec.name, level, time.perf_counter() - t)
            report.stand_ins = list(checkout.stand_ins)
    finally:
        torch.set_default_dtype(default_dtype)
        torch.set_num_threads(threads)
    report.seconds = time.perf_counter() - t0
    return report
