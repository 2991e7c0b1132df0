"""AutoAttack (Croce & Hein, ICML 2020) through ``pyautoattack``, a packaging of the authors' code.

AutoAttack: "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", https://arxiv.org/abs/2003.01690, code https://github.com/fra31/auto-attack. ltrobust does not
vendor or re-implement it: the attacks run from the PyPI package ``pyautoattack==0.2.0``, whose attack
code was compared file by file with fra31/auto-attack at commit
a39220048b3c9f2cca9a4d3a54604793c68eca7e (``docs/autoattack_provenance.md``: the attack logic matches;
the package changes imports, logging and the ``AutoAttack`` constructor / ``run_standard_evaluation``
signatures only).

What this adapter adds to the package (SPEC 4):

- the number of target classes of APGD-T and FAB-T is ``min(9, C - 1)`` (C from one forward pass), so a
  7-class (DermaMNIST) or 3-class model runs; APGD-T's targeted DLR loss reads the 4th-largest logit and
  APGD-DLR the 3rd, so with ``C < 4`` APGD-T (and with ``C < 3`` APGD-DLR) is left out, with a warning;
- ``version="apgd-ce-t"``: APGD-CE + APGD-T with the standard version's settings, i.e. the first two
  attacks of AutoAttack standard (RoBal, supplementary Sec. C: "we use the first two"); its robust set
  contains the standard version's robust set;
- ``version="square"``: Square alone (5000 queries), the black-box check of the gradient-masking audit;
- per-sample robust flags, the model in eval mode while attacked (every module's mode restored after),
  parameters' ``requires_grad`` switched off while attacked (FAB calls ``backward``, which would
  otherwise accumulate into the parameters' ``.grad``) and restored, the caller's random state
  untouched (the package reseeds the global generator before every attack), an optional log file.
"""

from __future__ import annotations

import contextlib
import logging
import re
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

PACKAGE = "pyautoattack"
#: The package version whose code was compared with the authors' repository.
VERIFIED_VERSION = "0.2.0"
UPSTREAM_REPOSITORY = "fra31/auto-attack"
UPSTREAM_COMMIT = "a39220048b3c9f2cca9a4d3a54604793c68eca7e"

#: Attacks of each supported version, in the order they run (each on the points still robust).
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "apgd-ce-t": ("apgd-ce", "apgd-t"),
    "square": ("square",),
    "rand": ("apgd-ce", "apgd-dlr"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
}
#: Versions the package configures itself (``version=`` of its constructor); the others run through
#: ``version="custom"`` with the standard version's hyper-parameters.
_PACKAGE_VERSIONS = ("standard", "rand", "plus")
#: Fewest classes an attack's loss needs: DLR reads the 3rd-largest logit, targeted DLR the 4th.
_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}
_NORMS = {"linf": "Linf", "l2": "L2"}
_MAX_TARGETS = 9


def autoattack_version() -> dict[str, str]:
    """Name and version of the AutoAttack packaging in use, and the upstream commit it was checked against.

    Example::

        autoattack_version()
        # {'package': 'pyautoattack', 'version': '0.2.0', 'verified_version': '0.2.0',
        #  'upstream': 'fra31/auto-attack@a39220048b3c9f2cca9a4d3a54604793c68eca7e'}
    """
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "not installed"
    return {"package": PACKAGE, "version": version, "verified_version": VERIFIED_VERSION,
            "upstream": f"{UPSTREAM_REPOSITORY}@{UPSTREAM_COMMIT}"}


def canonical_norm(norm: str) -> str:
    """``"Linf"`` / ``"L2"`` (the package's spelling) from any case; :class:`ConfigError` otherwise."""
    key = str(norm).lower()
    if key not in _NORMS:
        raise ConfigError(f"AutoAttack norm {norm!r} is not supported: use 'Linf' or 'L2' "
                          "(the l_inf and l_2 threat models of SPEC 4).")
    return _NORMS[key]


def autoattack_plan(num_classes: int, version: str = "standard",
                    n_target_classes: int | None = None) -> dict[str, object]:
    """The attacks :func:`run_autoattack` runs for a ``num_classes``-way model, and their target count.

    Args:
        num_classes: C, the number of logits.
        version: ``standard`` | ``apgd-ce-t`` | ``square`` | ``rand`` | ``plus``.
        n_target_classes: target classes of APGD-T and FAB-T; ``None``: ``min(9, C - 1)``.

    Returns:
        ``{"version", "attacks" (list, run order), "n_target_classes", "dropped" (attacks left out
        because C is too small for their loss)}``.

    Example::

        autoattack_plan(3)["attacks"]   # ['apgd-ce', 'fab-t', 'square']: APGD-T needs C >= 4
    """
    if version not in VERSIONS:
        raise ConfigError(f"AutoAttack version {version!r} is not supported: use one of "
                          f"{', '.join(VERSIONS)}.")
    if num_classes < 2:
        raise ConfigError(f"AutoAttack needs a model with at least 2 classes, got {num_classes}.")
    if n_target_classes is None:
        n_target_classes = min(_MAX_TARGETS, num_classes - 1)
    elif not 1 <= n_target_classes <= num_classes - 1:
        raise ConfigError(f"n_target_classes={n_target_classes} must lie in [1, C - 1] = "
                          f"[1, {num_classes - 1}] for a {num_classes}-class model.")
    attacks, dropped = [], []
    for attack in VERSIONS[version]:
        (dropped if num_classes < _MIN_CLASSES.get(attack, 2) else attacks).append(attack)
    return {"version": version, "attacks": attacks, "n_target_classes": int(n_target_classes),
            "dropped": dropped}


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
                   version: str = "standard", n_target_classes: int | None = None, batch_size: int = 256,
                   seed: int = 0, device: torch.device | str | None = None,
                   log_path: str | Path | None = None, *,
                   square_queries: int | None = None,
                   observer: Callable[..., None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run AutoAttack (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690) on a batch.

    Each attack runs on the points still robust after the previous ones (the package's evaluation
    loop); the result is the per-sample worst case.

    Args:
        model: maps images (N, C_in, H, W) in [0, 1] to logits (N, C). Attacked in eval mode; the mode
            of every submodule is restored afterwards.
        x: images (N, C_in, H, W) in [0, 1]. Square needs image-shaped inputs.
        y: labels (N,).
        eps: radius of the threat model in pixel units (8/255 for l_inf, 0.5 for l_2).
        norm: ``"Linf"`` or ``"L2"`` (any case). Default: ``"Linf"``.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square), ``"apgd-ce-t"`` (APGD-CE + APGD-T,
            RoBal's cheaper subset), ``"square"`` (Square alone), ``"rand"`` (APGD-CE + APGD-DLR with
            EoT 20, for randomised defences), ``"plus"``. Default: ``"standard"``.
        n_target_classes: target classes of APGD-T / FAB-T. Default ``None``: ``min(9, C - 1)``.
        batch_size: images per forward pass inside the package. Default: 256.
        seed: the package's seed (it reseeds before every attack). Default: 0.
        device: where the attack runs; default ``None``: ``x.device``. The model must live there.
        log_path: append the package's progress log (DEBUG level) to this file; ``None``: no file.
        square_queries: Square's query budget; ``None``: the standard 5000. A smaller budget is for
            quick checks only: it is not AutoAttack's standard setting.
        observer: called as the attacks progress (a progress bar's hook): ``observer("start", attacks=[...],
            n=images, robust=clean fraction)``, ``observer("stage", name="apgd-t")`` when an attack starts,
            ``observer("after", name="apgd-t", robust=fraction still robust)`` when it ends, and
            ``observer("end")``. ``None``: nothing is called.

    Returns:
        ``(x_adv, robust)``: adversarial images (N, C_in, H, W) on ``x.device`` (a point that no attack
        broke keeps its clean image) and per-sample robust flags (N,) bool, True where the model
        classifies the clean image and every attack's output correctly.

    Example::

        x_adv, robust = run_autoattack(model, x, y, eps=8 / 255, version="standard")
        robust_acc = 100.0 * robust.float().mean().item()
    """
    norm = canonical_norm(norm)
    if not eps > 0:
        raise ConfigError(f"AutoAttack eps={eps} must be > 0 (pixel units, e.g. 8/255).")
    if batch_size < 1:
        raise ConfigError(f"AutoAttack batch_size={batch_size} must be >= 1.")
    if square_queries is not None and square_queries < 1:
        raise ConfigError(f"AutoAttack square_queries={square_queries} must be >= 1 (None: 5000).")
    if version not in VERSIONS:  # fail before the forward pass
        autoattack_plan(2, version)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"AutoAttack got {x.shape[0]} images but {y.shape[0]} labels.")
    if x.shape[0] == 0:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device)
    if x.min() < 0 or x.max() > 1:
        raise DataError("AutoAttack expects images in [0, 1] (normalisation lives inside the model); got "
                        f"values in [{x.min().item():.4g}, {x.max().item():.4g}].")
    _check_package_version()
    from pyautoattack import AutoAttack

    out_device = x.device
    device = torch.device(device) if device is not None else x.device
    x_run = x.detach().to(device, torch.float32)
    y_run = y.detach().to(device, torch.long)
    with _attack_state(model, device):
        with torch.no_grad():
            num_classes = int(model(x_run[:1]).shape[1])
        plan = autoattack_plan(num_classes, version, n_target_classes)
        if plan["dropped"]:
            log.warning("AutoAttack on a %d-class model: %s left out (the loss needs more classes).",
                        num_classes, ", ".join(plan["dropped"]))
        adversary = _build(AutoAttack, model, eps, norm, version, plan, seed, device)
        if square_queries is not None:
            adversary.square.n_queries = int(square_queries)
        log.info("AutoAttack %s (%s), eps=%.6g, %s, %d target classes, %d images", version,
                 ", ".join(plan["attacks"]), eps, norm, plan["n_target_classes"], x_run.shape[0])
        with _package_log(log_path, AutoAttackProgress(list(plan["attacks"]), x_run.shape[0], observer)):
            x_adv, y_adv = adversary.run_standard_evaluation(x_run, y_run, batch_size=batch_size)
        if observer is not None:
            observer("end")
    robust = y_adv == y_run  # (N,): clean prediction of unbroken points, adversarial one of broken points
    return x_adv.to(out_device, x.dtype), robust.to(out_device)


def _build(AutoAttack: type, model: nn.Module, eps: float, norm: str, version: str,
           plan: dict[str, object], seed: int, device: torch.device):
    """The package's ``AutoAttack`` object configured for ``plan``."""
    attacks = list(plan["attacks"])  # type: ignore[arg-type]
    k = int(plan["n_target_classes"])  # type: ignore[arg-type]
    if version in _PACKAGE_VERSIONS:
        adversary = AutoAttack(model, norm=norm, eps=eps, seed=seed, version=version, device=device)
    else:
        adversary = AutoAttack(model, norm=norm, eps=eps, seed=seed, version="custom", attacks=attacks,
                               device=device)
        # The standard version's settings (AutoAttack.set_version("standard") for Linf / L2 at the
        # upstream commit): one restart each, 5000 Square queries.
        adversary.apgd.n_restarts = 1
        adversary.apgd_targeted.n_restarts = 1
        adversary.fab.n_restarts = 1
        adversary.square.n_queries = 5000
    adversary.attacks_to_run = attacks
    adversary.apgd_targeted.n_target_classes = k
    adversary.fab.n_target_classes = k
    return adversary


def _check_package_version() -> None:
    version = autoattack_version()["version"]
    if version == "not installed":
        raise ConfigError(f"AutoAttack needs the package {PACKAGE}=={VERIFIED_VERSION}: "
                          f"pip install {PACKAGE}=={VERIFIED_VERSION}.")
    if version != VERIFIED_VERSION:
        log.warning("%s %s is installed; ltrobust checked %s against %s@%s "
                    "(docs/autoattack_provenance.md). Results may differ.", PACKAGE, version,
                    VERIFIED_VERSION, UPSTREAM_REPOSITORY, UPSTREAM_COMMIT[:7])


@contextlib.contextmanager
def _attack_state(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode and frozen parameters while attacking, the caller's RNG untouched; all restored after."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training
            for p, flag in grads:
                p.requires_grad_(flag)


class _Forward(logging.Handler):
    """Passes the package's warnings on to ltrobust's logger while its log goes elsewhere."""

    def emit(self, record: logging.LogRecord) -> None:
        log.handle(record)


class AutoAttackProgress(logging.Handler):
    """Turns the package's per-attack log lines into ltrobust progress lines (INFO) and ``observer`` calls.

    The package logs (at DEBUG, logger ``auto-attack``) ``running apgd-ce`` before and ``robust accuracy
    after APGD-CE: 45.31% (total time 12.3 s)`` after each attack. Each finished attack gives one line with
    the robust accuracy and the time so far. The time left is not guessed here: the attacks' costs per image
    differ by orders of magnitude (APGD-T runs 9 targets, Square 5000 queries) and depend on the model, so
    the estimate lives in the evaluation's progress bar (:mod:`ltrobust.evaluation.progress`), which measures
    each attack's cost as it runs.
    """

    _AFTER = re.compile(r"robust accuracy after (?P<name>[\w-]+): (?P<acc>[\d.]+)% \(total time (?P<t>[\d.]+) s\)")
    _CLEAN = re.compile(r"(?:initial|clean) accuracy: (?P<acc>[\d.]+)%")
    _RUNNING = re.compile(r"^running (?P<name>[\w-]+)$")

    def __init__(self, attacks: list[str], n_images: int, observer: Callable[..., None] | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.attacks = attacks
        self.n_images = n_images
        self.observer = observer
        self.done: list[float] = []  #: robust accuracy (%) after each finished attack
        self.start_acc: float | None = None

    def _notify(self, event: str, **info: object) -> None:
        if self.observer is not None:
            self.observer(event, **info)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        clean = self._CLEAN.search(msg)
        if clean and self.start_acc is None:
            self.start_acc = float(clean.group("acc"))
            log.info("AutoAttack: clean accuracy %.2f%% on %d images; running %s", self.start_acc, self.n_images,
                     ", ".join(self.attacks))
            self._notify("start", attacks=list(self.attacks), n=self.n_images, robust=self.start_acc / 100)
            return
        running = self._RUNNING.search(msg.strip())
        if running:
            self._notify("stage", name=running.group("name").lower())
            return
        after = self._AFTER.search(msg)
        if after is None:
            return
        acc, total = float(after.group("acc")), float(after.group("t"))
        self.done.append(acc)
        log.info("AutoAttack %d/%d: robust accuracy after %s %.2f%% (%s so far)", len(self.done), len(self.attacks),
                 after.group("name"), acc, _duration(total))
        self._notify("after", name=after.group("name").lower(), robust=acc / 100)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def _package_log(log_path: str | Path | None, progress: AutoAttackProgress | None = None) -> Iterator[None]:
    """For one run, send the package's log (logger ``auto-attack``, DEBUG level) to ``progress`` (per-attack
    lines on ltrobust's logger) and to ``log_path``; its warnings go on to ltrobust's logger."""
    pkg_log = logging.getLogger("auto-attack")
    handlers: list[logging.Handler] = [_Forward(level=logging.WARNING)]
    if progress is not None:
        handlers.append(progress)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(file_handler)
    saved = pkg_log.level, pkg_log.propagate
    pkg_log.setLevel(logging.DEBUG)
    pkg_log.propagate = False
    for h in handlers:
        pkg_log.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            pkg_log.removeHandler(h)
            h.close()
        pkg_log.setLevel(saved[0])
        pkg_log.propagate = saved[1]
