"""Typed, frozen run configuration: dataclasses, YAML presets and ``key=value`` overrides.

A run is described by one :class:`RunConfig` made of sections (``data``, ``model``, ``attack``,
``method``, ``train``, ``eval``). Presets under ``configs/`` set defaults, the command line overrides
them (``imbalance=50``, ``train.lr=0.05``, ``method=robal``, ``alpha=6``), and the resolved config is
saved in the run folder. Keys may be written in full (``data.imbalance``) or by their leaf name when it
is unique (``imbalance``); a method's own options (e.g. RoBal's ``m0``) are written ``method.m0=0.1``
or ``m0=0.1`` and validated against that method's ``Options`` dataclass.

Example::

    cfg = resolve_config(["preset=at-bsl-cifar10lt-resnet18", "train.epochs=2"])
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent / "configs"

_PROFILES = ("exp", "step", "linear", "full", "balanced-small")
_AUGMENTS = ("none", "crop", "crop_flip", "autoaugment", "randaugment")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_name(key: str, value: str, example: str = "pgd100") -> str:
    """``value`` as a file name of its own (a result tag, a model name): letters, digits, ``.``, ``_``, ``+``
    and ``-``, never a path (``/``, ``\\``, ``..``) that would write outside the folder it names a file in."""
    text = str(value)
    if not _NAME_RE.match(text) or ".." in text or len(text) > 120:
        raise ConfigError(f"{key}={text!r} is not a name: use letters, digits, '.', '_', '+' and '-' (no '/' or "
                          f"'..', at most 120 characters), e.g. {key}={example}.")
    return text


def _check_eps(name: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, f"{name}={fmt_fraction(value)} is outside [0, 1]: eps is in pixel units of images in "
           f"[0, 1], e.g. 8/255 for l_inf; write {name}=8/255.")


@dataclass(frozen=True)
class DataConfig:
    """Which long-tailed data set to build (SPEC 1)."""

    dataset: str = "digits-lt"
    data_dir: str | None = None  #: folder holding the data set's files (not needed for digits-lt)
    profile: str = "exp"  #: exp | step | linear | full | balanced-small
    imbalance: float = 10.0  #: imbalance ratio n_max / n_min (>= 1)
    selection_seed: int = 0  #: seed of the per-class shuffle (LDAM-DRW procedure)
    test_profile: str = "full"  #: full (balanced test set) | lt (subsample with the training profile)
    val_per_class: int = -1  #: balanced validation images per class; -1: the data set's default; 0: none
    val_from: str = "unselected"  #: unselected (spare training images) | holdout (taken out of the LT set)
    augment: str = "crop_flip"  #: none | crop | crop_flip | autoaugment | randaugment
    crop_padding: int = -1  #: -1: the data set's default (4 for 32 px images)
    image_size: int = -1  #: resize for ImageNet-LT / DermaMNIST ViT; -1: native
    download: bool = False  #: download the official files when missing (only when asked)
    resample_gamma: float = -1.0  #: self-distillation teacher: gamma * n_min images per class; -1: IR / 2
    class_counts: str = ""  #: imagefolder: training images per class, a list (500,120,30) or a JSON file; "": train/
    #: the long-tailed subset read from a file (a published split) instead of profile / imbalance / seed:
    #: JSON (a list of training indices, or {"train": list or {class: list}, "test": list}, e.g. a run's
    #: manifest.json), .npy or a text file of training indices, all into the source's training split
    indices_file: str | None = None

    def __post_init__(self) -> None:
        _check(self.profile in _PROFILES, f"data.profile={self.profile!r} is not one of {_PROFILES}.")
        _check(self.imbalance >= 1, f"imbalance={self.imbalance} is below 1: the imbalance ratio is "
               "n_max / n_min, so use a value >= 1 (1 means balanced), e.g. imbalance=50.")
        _check(self.test_profile in ("full", "lt"), f"test_profile={self.test_profile!r}: use full or lt.")
        _check(self.val_from in ("unselected", "holdout"),
               f"val_from={self.val_from!r}: use unselected or holdout.")
        _check(self.augment in _AUGMENTS, f"augment={self.augment!r} is not one of {_AUGMENTS}.")
        _check(self.val_per_class >= -1, "val_per_class must be >= 0 (or -1 for the default).")
        _check(self.selection_seed >= 0, f"data.selection_seed={self.selection_seed} is negative: use a seed >= 0, "
               "e.g. data.selection_seed=0.")
        _check(self.crop_padding >= -1, f"data.crop_padding={self.crop_padding} is negative: use 0 (no crop), a "
               "padding in pixels, or -1 for the data set's default.")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and head (SPEC 2)."""

    name: str = "smallcnn"
    width: int = -1  #: base channel width; -1: the architecture's default (64 for ResNet-18)
    depth: int = -1  #: WideResNet depth (34, 28); -1: default
    widen: int = -1  #: WideResNet widen factor; -1: default
    head: str = "linear"  #: linear | cosine
    #: normalise inputs inside the model with the data set's per-channel mean and std; false: the network sees
    #: [0, 1] pixels, as in the AT-BSL, RoBal, REAT and TAET codes (docs/parity.md)
    normalize: bool = True
    cosine_scale: float = 10.0  #: s of the cosine head
    cosine_gamma: float = 1.0 / 32  #: gamma of the cosine head
    #: a local file of pretrained backbone weights (vit_b16: timm's ViT-B/16 checkpoint, e.g. the
    #: augreg ImageNet-21k .npz / .pth / .safetensors), loaded with timm's loader; never downloaded
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _check(self.head in ("linear", "cosine"), f"model.head={self.head!r}: use linear or cosine.")


#: ``attack.random_start`` as booleans (older configs and presets) and their start kinds
_START_ALIASES = {"true": "uniform", "yes": "uniform", "1": "uniform", "false": "none", "no": "none", "0": "none"}


@dataclass(frozen=True)
class AttackConfig:
    """The training-time attack (SPEC 3: l_inf PGD-10, eps 8/255, step 2/255, random start)."""

    norm: str = "linf"  #: linf | l2
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    #: where the attack starts: uniform (in the ball; true), normal (x + 0.001 N(0, I), the TRADES code's
    #: start that the AT-BSL and TAET codes use), one_sided (x + eps * U[0, 1), RoBal's training code),
    #: uniform_unclipped (x + U(-eps, eps) not clipped to [0, 1] before the first gradient, l_inf: REAT's code),
    #: none (the clean image; false)
    random_start: str = "uniform"
    #: BatchNorm while attacking: eval (running statistics), train (batch statistics, running ones updated),
    #: batch (batch statistics, running ones untouched); empty: the method's own default
    bn_mode: str = ""
    loss_mode: str = "outer"  #: where a long-tailed loss applies: outer | inner | both
    #: the AE-generation loss (a LOSSES name) apart from the outer one, e.g. rw with loss=bsl (REAT Table 2);
    #: empty: as loss_mode says. Methods with an attack objective of their own (TRADES' KL, ...) refuse it
    loss: str = ""
    loss_args: Mapping[str, Any] = field(default_factory=dict)  #: options of attack.loss, e.g. {power: 0.5}

    def __post_init__(self) -> None:
        start = _START_ALIASES.get(str(self.random_start).lower(), self.random_start)
        _check(start in ("uniform", "normal", "one_sided", "uniform_unclipped", "none"),
               f"attack.random_start={self.random_start!r}: use uniform (or true), normal (x + 0.001 N(0, I)), "
               "one_sided (x + eps U[0, 1), RoBal's code), uniform_unclipped (x + U(-eps, eps), REAT's code) or "
               "none (or false).")
        _check(start != "uniform_unclipped" or self.norm == "linf", "attack.random_start=uniform_unclipped is an "
               f"l_inf start (REAT's code): use uniform with attack.norm={self.norm}.")
        object.__setattr__(self, "random_start", start)
        _check(self.bn_mode in ("", "eval", "train", "batch"), f"attack.bn_mode={self.bn_mode!r}: use eval, train "
               "or batch, or leave it empty for the method's default.")
        _check(self.norm in ("linf", "l2"), f"attack.norm={self.norm!r}: use linf or l2.")
        _check(self.loss or not self.loss_args, "attack.loss_args is set but attack.loss is empty: name the attack "
               "loss, e.g. attack.loss=rw.")
        if self.norm == "linf":
            _check_eps("attack.eps", self.eps)
        else:
            _check(self.eps >= 0, f"attack.eps={self.eps} must be >= 0.")
        _check(self.steps >= 0, f"attack.steps={self.steps} is negative: use 0 (no attack) or more.")
        _check(self.step_size > 0 or self.steps == 0, f"attack.step_size={fmt_fraction(self.step_size)} must be > 0 "
               f"with attack.steps={self.steps} (a step of 0 leaves the training AEs where they start): e.g. "
               "attack.step_size=2/255, or attack.steps=0 for no attack.")
        _check(self.loss_mode in ("outer", "inner", "both"),
               f"attack.loss_mode={self.loss_mode!r}: use outer, inner or both.")


@dataclass(frozen=True)
class MethodConfig:
    """The training method, its long-tailed loss, and their own options."""

    name: str = "pgd_at"
    loss: str = "ce"  #: outer long-tailed loss (ce, bsl, ldam, focal, cb, cat, rw)
    loss_args: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)  #: the method's Options fields
    teacher: str | None = None  #: self_distill: reuse this teacher checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, precision and bookkeeping of training."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "step"  #: step | cosine | constant | piecewise
    milestones: tuple[int, ...] = ()  #: epochs where the step schedule multiplies lr by lr_decay
    #: how milestones count epochs: 0 (the first epoch is 0; decay from the (m+1)-th epoch on) | 1 (the first
    #: epoch is 1, as the AT-BSL and RoBal authors' code; decay from the m-th epoch on). docs/methods.md
    milestone_base: int = 0
    lr_decay: float = 0.1
    #: piecewise: lr = train.lr x the linear interpolation of lr_factors at lr_epochs (fractional epochs counted
    #: from 0, non-decreasing; an epoch given twice is a jump; held constant beyond the ends), evaluated every
    #: step as Wong et al.'s ``np.interp`` schedules (e.g. Fast-AT's cycle: lr_epochs=0,7.5,15 lr_factors=0,1,0)
    lr_epochs: tuple[float, ...] = ()
    lr_factors: tuple[float, ...] = ()
    warmup_epochs: int = 0
    precision: str = "auto"  #: auto (bf16 where native) | bf16 | fp32
    channels_last: bool = True
    compile: bool = False
    #: drop the last, smaller batch of each epoch (static shapes); none: only when train.compile is on
    drop_last: bool | None = None
    ema: float = 0.0  #: weight EMA decay (0: off)
    sampler: str = "uniform"  #: uniform | class_balanced (re-sampling)
    finetune: str = "none"  #: none | crt | rw | lws (backbone frozen, finetune_epochs)
    finetune_epochs: int = 1
    finetune_lr: float = 0.01  #: constant learning rate of the fine-tuning stage
    val_every: int = 1
    val_samples: int = 1000  #: validation images per epoch (balanced sample); 0: all
    val_attack_steps: int = 10
    #: also evaluate every validated epoch on a balanced sample of the *test* split (val_samples images,
    #: the same PGD): stored as "test" in metrics.jsonl, marked split=test, never used to choose a checkpoint
    #: (docs/analysis.md, epoch-choice)
    epoch_test: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    progress: bool = True
    record_ae_drift: bool = False
    ae_drift_samples: int = 256
    max_steps_per_epoch: int = 0  #: >0 caps steps per epoch (smoke tests)
    logger: str = "none"  #: tracker of every number of metrics.jsonl: none | tensorboard (README "Experiment tracking")

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs={self.epochs} trains nothing (no checkpoint to evaluate): use "
               "train.epochs=1 or more.")
        _check(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be >= 1.")
        _check(self.lr > 0, f"train.lr={self.lr} must be > 0.")
        _check(0.0 <= self.momentum < 1.0, f"train.momentum={self.momentum} is outside [0, 1): SGD momentum is a "
               "decay factor, e.g. train.momentum=0.9 (0: none).")
        _check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} is negative: use 0 (none) or a "
               "positive value, e.g. train.weight_decay=5e-4.")
        _check(self.lr_decay > 0, f"train.lr_decay={self.lr_decay} must be > 0 (a negative factor turns descent "
               "into ascent): the step schedule multiplies lr by it at each milestone, e.g. train.lr_decay=0.1.")
        _check(self.warmup_epochs >= 0, f"train.warmup_epochs={self.warmup_epochs} is negative: use 0 (no warm-up) "
               "or more.")
        _check(self.val_samples >= 0, f"train.val_samples={self.val_samples} is negative: use 0 (every validation "
               "image) or a sample size, e.g. train.val_samples=1000.")
        _check(self.val_every >= 0, f"train.val_every={self.val_every} is negative: use 0 (no validation) or a "
               "period in epochs.")
        _check(self.finetune_lr >= 0, f"train.finetune_lr={self.finetune_lr} is negative (gradient ascent): use a "
               "learning rate >= 0, e.g. train.finetune_lr=0.01.")
        _check(self.finetune_epochs >= 1, f"train.finetune_epochs={self.finetune_epochs} must be >= 1 (turn "
               "fine-tuning off with train.finetune=none).")
        _check(self.ae_drift_samples >= 1, f"train.ae_drift_samples={self.ae_drift_samples} must be >= 1.")
        _check(self.schedule in ("step", "cosine", "constant", "piecewise"),
               f"train.schedule={self.schedule!r}: use step, cosine, constant or piecewise.")
        if self.schedule == "piecewise":
            _check(len(self.lr_epochs) == len(self.lr_factors) >= 1, f"train.schedule=piecewise needs as many "
                   f"train.lr_factors as train.lr_epochs (got {len(self.lr_epochs)} epochs, {len(self.lr_factors)} "
                   "factors), e.g. train.lr_epochs=0,7.5,15 train.lr_factors=0,1,0.")
            _check(all(a <= b for a, b in zip(self.lr_epochs, self.lr_epochs[1:])) and min(self.lr_epochs) >= 0,
                   f"train.lr_epochs={list(self.lr_epochs)} must be non-negative and non-decreasing (a repeated "
                   "epoch is a jump).")
            _check(all(f >= 0 for f in self.lr_factors), f"train.lr_factors={list(self.lr_factors)} must be >= 0.")
            _check(self.warmup_epochs == 0, "train.warmup_epochs does not combine with train.schedule=piecewise: "
                   "put the warm-up into train.lr_epochs / lr_factors (e.g. 0,2,... and 0,1,...).")
        else:
            _check(not self.lr_epochs and not self.lr_factors, f"train.lr_epochs / train.lr_factors are only used "
                   f"by train.schedule=piecewise (schedule is {self.schedule!r}): drop them, or set "
                   "train.schedule=piecewise.")
        _check(self.precision in ("auto", "bf16", "fp32"),
               f"train.precision={self.precision!r}: use auto, bf16 or fp32.")
        _check(self.sampler in ("uniform", "class_balanced"),
               f"train.sampler={self.sampler!r}: use uniform or class_balanced.")
        _check(self.finetune in ("none", "crt", "rw", "lws"),
               f"train.finetune={self.finetune!r}: use none, crt, rw or lws.")
        _check(0.0 <= self.ema < 1.0, f"train.ema={self.ema} must be in [0, 1).")
        _check(all(m >= 0 for m in self.milestones), "train.milestones must be non-negative epochs.")
        _check(self.milestone_base in (0, 1), f"train.milestone_base={self.milestone_base}: use 0 (epochs count "
               "from 0) or 1 (from 1, as the AT-BSL and RoBal authors' code).")
        _check(self.val_attack_steps >= 0, f"train.val_attack_steps={self.val_attack_steps} is negative: use 0 or "
               "more, e.g. train.val_attack_steps=10.")
        _check(self.max_steps_per_epoch >= 0, f"train.max_steps_per_epoch={self.max_steps_per_epoch} is negative: "
               "use 0 (every batch) or a positive cap.")


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation suite (SPEC 4)."""

    attacks: tuple[str, ...] = ("clean", "pgd20")  #: the suite, in cascade order (clean always first)
    norm: str = "linf"  #: linf | l2
    eps: float = 8 / 255  #: radius of the threat model, pixel units of images in [0, 1]
    step_size: float = 2 / 255  #: PGD / MIM / CW step (TAET preset: 1/255)
    batch_size: int = 256  #: images per attack call
    chunk_size: int = 1000  #: images per resumable chunk
    n_samples: int = 0  #: evaluate the first n test images (balanced order); 0: all
    checkpoint: str = "best"  #: best | last
    adjust: str = "none"  #: inference adjustment: none | logit_adjust | tau_norm | cdt | tde
    adjust_tau: float = 1.0  #: tau of logit_adjust / tau_norm / cdt (alpha of tde)
    seed: int = 0  #: seed of the test sample and of every attack's randomness
    mode: str = "cascade"  #: cascade (each attack on the images still robust) | standalone
    tag: str = ""  #: suffix of the result files, for several evaluations of one checkpoint
    tail_group: int = 0  #: classes in the T-Clean / T-PGD tail group; 0: C // 10 (Cho et al.'s (ICLR 2025) convention)

    def __post_init__(self) -> None:
        _check(self.norm in ("linf", "l2"), f"eval.norm={self.norm!r}: use linf or l2.")
        _check(self.mode in ("cascade", "standalone"), f"eval.mode={self.mode!r}: use cascade or standalone.")
        if self.norm == "linf":
            _check_eps("eval.eps", self.eps)
        _check(self.checkpoint in ("best", "last"), f"eval.checkpoint={self.checkpoint!r}: use best or last.")
        _check(self.chunk_size >= 1 and self.batch_size >= 1, "eval batch and chunk sizes must be >= 1.")
        _check(self.n_samples >= 0, f"eval.n_samples={self.n_samples} is negative: use 0 (the whole test set) or "
               "a sample size, e.g. eval.n_samples=1000.")
        _check(self.step_size > 0, f"eval.step_size={fmt_fraction(self.step_size)} must be > 0 (with a step of 0 "
               "the iterative attacks do not move): e.g. eval.step_size=2/255.")
        _check(self.tail_group >= 0, f"eval.tail_group={self.tail_group} is negative: use 0 (C // 10) or a class "
               "count.")
        if self.norm == "l2":
            _check(0.0 <= self.eps < float("inf"), f"eval.eps={self.eps} must be a finite radius >= 0 (l_2 in pixel "
                   "units of images in [0, 1], e.g. eval.eps=0.5).")
        if self.tag:
            check_name("eval.tag", self.tag)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; saved resolved as ``config.yaml`` in the run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "runs"  #: parent folder of run folders
    name: str = ""  #: run folder name; empty: derived from method, loss, data set and seed
    preset: str = ""
    #: the paper numbers this run targets, shown beside ours by ``ltrobust report`` (:func:`check_reference`)
    reference: tuple[Mapping[str, Any], ...] = ()

    def run_name(self) -> str:
        if self.name:
            return self.name
        loss = "" if self.method.loss == "ce" else f"-{self.method.loss}"
        ir = f"-ir{self.data.imbalance:g}" if self.data.profile == "exp" else f"-{self.data.profile}"
        if self.data.profile == "linear":
            ir += f"-ir{self.data.imbalance:g}"
        if self.data.indices_file:
            ir += f"-idx{Path(self.data.indices_file).stem}"
        return f"{self.data.dataset}{ir}-{self.model.name}-{self.method.name}{loss}-s{self.train.seed}"


SECTIONS = {"data": DataConfig, "model": ModelConfig, "attack": AttackConfig, "method": MethodConfig,
            "train": TrainConfig, "eval": EvalConfig}
TOP_LEVEL = ("out", "name", "preset", "reference")
# Short names that map to a section's main field.
ALIASES = {"method": "method.name", "loss": "method.loss", "model": "model.name", "dataset": "data.dataset",
           "teacher": "method.teacher", "epochs": "train.epochs", "seed": "train.seed"}


# --------------------------------------------------------------------------------------------- values
_FRACTION = re.compile(r"^\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def parse_value(text: str) -> Any:
    """Parse a command-line value: YAML scalars, lists and mappings (``{m0: 0.1, tau_b: 1.2}``), plus fractions
    such as ``8/255``."""
    m = _FRACTION.match(text)
    if m:
        if float(m.group(2)) == 0:
            raise ConfigError(f"{text.strip()} divides by zero: write a fraction with a non-zero denominator, "
                              "e.g. 8/255.")
        return float(m.group(1)) / float(m.group(2))
    if "," in text and not text.strip().startswith(("[", "{")):
        return [parse_value(part) for part in text.split(",") if part != ""]
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a parsed value to the dataclass field type ``tp`` (given as a string annotation)."""
    tp = str(tp)
    if tp.endswith(" | None"):  # optional: `key=`, none or null give None, anything else the base type
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, tp[: -len(" | None")], key)
    if value is None and tp in ("float", "int", "bool") or value in (None, "") and tp.startswith("tuple[str"):
        raise ConfigError(f"{key}= is empty: give a value, or leave {key} out for its default.")
    if isinstance(value, str) and _FRACTION.match(value):
        value = parse_value(value)
    try:
        if tp in ("float",):
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
            if number != number:
                raise ConfigError(f"{key}=nan is not a number: give a finite value.")
            return number
        if tp == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if tp == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError
        if tp == "str":
            return "" if value is None else str(value)  # `key=` (empty) parses as None
        if tp.startswith("tuple[int"):
            if value in (None, "", "none"):
                return ()
            seq = value if isinstance(value, (list, tuple)) else [value]
            return tuple(int(v) for v in seq)
        if tp.startswith("tuple[float"):
            if value in (None, "", "none"):
                return ()
            seq = value if isinstance(value, (list, tuple)) else [value]
            return tuple(_coerce(v, "float", key) for v in seq)
        if tp.startswith("tuple[str"):
            seq = value if isinstance(value, (list, tuple)) else [value]
            return tuple(str(v) for v in seq)
        if tp.startswith("Mapping"):
            if not isinstance(value, Mapping):
                raise TypeError
            return dict(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        shown = fmt_fraction(value) if isinstance(value, float) else repr(value)
        write = {"int": "a whole number", "float": "a number (e.g. 0.1, 1e-4 or 8/255)", "bool": "true or false"}
        how = write.get(tp, "a comma-separated list" if tp.startswith("tuple") else "a mapping, e.g. {a: 1}"
                        if tp.startswith("Mapping") else f"a {tp}")
        raise ConfigError(f"{key}={shown} is not a valid {tp}: write {how}.") from None
    return value


# --------------------------------------------------------------------------------------- resolution
def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _leaf_index() -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for sec, cls in SECTIONS.items():
        for name in _field_names(cls):
            index.setdefault(name, []).append(f"{sec}.{name}")
    return index


def _all_keys() -> list[str]:
    """Every key a user may write, each once (an alias such as ``epochs`` is also a leaf name)."""
    keys = list(TOP_LEVEL) + list(ALIASES)
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{n}" for n in _field_names(cls)]
    keys += list(_leaf_index())
    return list(dict.fromkeys(keys))


def _method_option_fields(method: str, loss: str) -> tuple[list[str], list[str]]:
    """Option names of the given method and loss (empty when unknown)."""
    from .registry import LOSSES, METHODS

    m_fields: list[str] = []
    l_fields: list[str] = []
    if method in METHODS:
        opts = getattr(METHODS.get(method), "Options", None)
        if opts is not None and dataclasses.is_dataclass(opts):
            m_fields = _field_names(opts)
    if loss in LOSSES:
        opts = getattr(LOSSES.get(loss), "Options", None)
        if opts is not None and dataclasses.is_dataclass(opts):
            l_fields = _field_names(opts)
    return m_fields, l_fields


def _unknown_key(key: str, extra: Sequence[str] = ()) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys() + list(extra), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}.{hint} Run `ltrobust train --help` for every key.")


def _nested_from_flat(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {sec: {} for sec in SECTIONS}
    nested["_top"] = {}
    for key, value in flat.items():
        if "." in key:
            sec, name = key.split(".", 1)
            nested[sec][name] = value
        else:
            nested["_top"][key] = value
    return nested


def preset_name(name: str) -> str:
    """The file name of a preset: ``name``, or with ``_`` written ``-`` when only that one exists
    (``pgd_at-digits`` -> ``pgd-at-digits``)."""
    if "_" in name and not (PRESET_DIR / f"{name}.yaml").exists() and (
            PRESET_DIR / f"{name.replace('_', '-')}.yaml").exists():
        return name.replace("_", "-")
    return name


def load_preset(name: str) -> dict[str, Any]:
    """Load ``configs/<name>.yaml`` (safe YAML) as a flat ``{dotted.key: value}`` mapping.

    A preset may name a ``base`` preset that it extends. Preset names are written with hyphens; the method
    name's underscore is accepted too (``pgd_at-digits`` is ``pgd-at-digits``, ``at_bsl-digits`` is
    ``at-bsl-digits``).
    """
    path = Path(name)
    if not path.suffix:
        path = PRESET_DIR / f"{preset_name(name)}.yaml"
    if path.suffix and not path.is_file() and (Path(name).suffix or "/" in name):  # a file the user named
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"preset file {name} {what}: give a YAML file of sections and keys, or the name of a "
                          f"built-in preset (ltrobust list shows them).")
    if not path.exists():
        available = list_presets()
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Available presets: {', '.join(available)}.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise yaml_error("preset", path, exc) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {path} must be a mapping of sections to keys, e.g. `train: {{epochs: 10}}` "
                          f"(it holds a {type(raw).__name__}).")
    flat: dict[str, Any] = {}
    base = raw.pop("base", None)
    if base:
        flat.update(load_preset(base))
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub, v in value.items():
                if key == "method" and sub in ("args", "loss_args") and isinstance(v, dict):
                    for k2, v2 in v.items():
                        flat[f"method.{sub}.{k2}"] = v2
                else:
                    flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def yaml_error(what: str, path: str | Path, exc: yaml.YAMLError) -> ConfigError:
    """The error for a YAML file that ``yaml.safe_load`` rejects, naming the line and the fix.

    A tag such as ``!!python/object/apply:os.system`` is refused (safe_load never builds Python objects,
    so nothing runs); other problems are syntax errors.
    """
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if isinstance(exc, yaml.constructor.ConstructorError):
        return ConfigError(f"{what} {path}{where} was refused: {problem}. ltrobust reads YAML with yaml.safe_load, "
                           f"which never builds Python objects or runs code; remove the tag and write plain keys "
                           f"and values.")
    return ConfigError(f"{what} {path} is not valid YAML{where}: {problem}. Fix the file: `section:` lines with "
                       f"indented `key: value` lines under them.")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config(overrides: Sequence[str] | Mapping[str, Any] = (), base: RunConfig | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from a preset and ``key=value`` overrides.

    ``overrides`` is a list of ``key=value`` strings (the CLI form) or a mapping. ``preset=NAME`` is
    applied first wherever it appears; later keys win. Unknown keys and bad values raise
    :class:`ConfigError` naming the closest valid key.
    """
    pairs: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        pairs = [(k, v) for k, v in overrides.items()]
    else:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"expected key=value, got {item!r} (e.g. imbalance=50).")
            k, v = item.split("=", 1)
            try:
                pairs.append((k.strip(), parse_value(v)))
            except ConfigError as exc:
                raise ConfigError(f"{k.strip()}={v}: {exc}") from None
    flat: dict[str, Any] = {}
    if base is not None:
        flat.update(to_flat(base))
    for k, v in pairs:
        if k == "preset":
            flat.update(load_preset(str(v)))
            flat["preset"] = preset_name(str(v))
    # Resolve method and loss names first, so their own options can be recognised.
    expanded = [(ALIASES.get(k, k), v) for k, v in pairs if k != "preset"]
    for k, v in expanded:
        if k in ("method.name", "method.loss"):
            flat[k] = v
    method = str(flat.get("method.name", MethodConfig.name))
    loss = str(flat.get("method.loss", MethodConfig.loss))
    m_fields, l_fields = _method_option_fields(method, loss)
    leaves = _leaf_index()
    for k, v in expanded:
        if k in TOP_LEVEL or k.startswith("method.args.") or k.startswith("method.loss_args."):
            flat[k] = v
            continue
        if "." in k:
            sec, name = k.split(".", 1)
            if sec in SECTIONS and name in _field_names(SECTIONS[sec]):
                flat[k] = v
            elif sec == "method" and name in m_fields:
                flat[f"method.args.{name}"] = v
            elif sec == "loss" and name in l_fields:
                flat[f"method.loss_args.{name}"] = v
            elif sec in ("method", "loss"):
                owner, names = (f"method {method!r}", m_fields) if sec == "method" else (f"loss {loss!r}", l_fields)
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"{owner} has no option {name!r}.{hint} Its options: {', '.join(names) or 'none'}.")
            else:
                raise _unknown_key(k)
            continue
        if k in m_fields:
            flat[f"method.args.{k}"] = v
        elif k in l_fields:
            flat[f"method.loss_args.{k}"] = v
        elif k in leaves:
            targets = leaves[k]
            if len(targets) > 1:
                raise ConfigError(f"key {k!r} is ambiguous: write one of {', '.join(targets)}.")
            flat[targets[0]] = v
        else:
            raise _unknown_key(k, m_fields + l_fields)
    return from_flat(flat)


def from_flat(flat: Mapping[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from ``{dotted.key: value}``."""
    sections: dict[str, dict[str, Any]] = {sec: {} for sec in SECTIONS}
    top: dict[str, Any] = {}
    args: dict[str, Any] = {}
    loss_args: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("method.args."):
            args[key[len("method.args."):]] = value
        elif key.startswith("method.loss_args."):
            loss_args[key[len("method.loss_args."):]] = value
        elif "." in key:
            sec, name = key.split(".", 1)
            if sec not in SECTIONS or name not in _field_names(SECTIONS[sec]):
                raise _unknown_key(key)
            sections[sec][name] = value
        elif key in TOP_LEVEL:
            top[key] = value
        else:
            raise _unknown_key(key)
    sections["method"]["args"] = {**dict(sections["method"].get("args", {})), **args}
    sections["method"]["loss_args"] = {**dict(sections["method"].get("loss_args", {})), **loss_args}
    built = {}
    for sec, cls in SECTIONS.items():
        hints = {f.name: f.type for f in fields(cls)}
        kwargs = {name: _coerce(v, hints[name], f"{sec}.{name}") for name, v in sections[sec].items()}
        built[sec] = cls(**kwargs)
    reference = check_reference(top.pop("reference", ()))
    name = top.get("name")
    if name and (Path(str(name)).is_absolute() or ".." in Path(str(name)).parts):
        raise ConfigError(f"name={name} is a run folder name inside out= (it may hold sub-folders, e.g. "
                          f"name=ablation/seed0), not a path out of it: to write elsewhere, set out=DIR.")
    cfg = RunConfig(**built, **{k: ("" if v is None else str(v)) for k, v in top.items()}, reference=reference)
    validate_names(cfg)
    return cfg


#: ``settings`` keys of a reference that are not config keys: the data files' format (the run's
#: ``manifest.json`` ``source.format``), the checkpoint rule (``best-val`` | ``best-test`` | ``last``), epochs
REFERENCE_SETTINGS = ("epochs", "data", "checkpoint")
REFERENCE_CHECKPOINTS = ("best-val", "best-test", "last")


def check_reference(value: Any) -> tuple[dict[str, Any], ...]:
    """Validate the ``reference:`` list of a preset or grid run: the paper numbers the run targets.

    Each item::

        - source: "Li, Xu and Zhang, ..., arXiv:2307.10205 (2023)"   # the paper: authors, title, venue
          paper: REAT                          # short name shown in the report (optional)
          table: Table 1
          settings: {epochs: 80, data: cifar-pickle, checkpoint: best-test}   # the paper's run settings
          values: {clean: 67.33, pgd20: 36.20, aa: 32.08, clean.tail_group: 69.5}

    ``values`` keys are ``ATTACK`` (overall accuracy, %) or ``ATTACK.METRIC`` (a metric of the eval JSON:
    ``balanced_accuracy``, ``tail_group``, ``head``, ``tail``, ...). ``settings`` keys are ``epochs``,
    ``data`` (the data files' format: ``cifar-pickle``, ``image-folder``, ...), ``checkpoint`` (``best-val``:
    best on held-out validation, ltrobust's ``best``; ``best-test``: best on the test set; ``last``) and any
    config key (``train.batch_size``, ``model.name``); the report marks where a run differs from them.
    """
    if value in (None, "", ()):
        return ()
    if isinstance(value, Mapping) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"reference must be a list of {{source, table, settings, values}} items (docs/reports.md), "
                          f"got {value!r}.")
    out = []
    for i, item in enumerate(value):
        where = f"reference[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a mapping with source, table, settings and values, got {item!r}.")
        unknown = sorted(set(item) - {"source", "paper", "table", "settings", "values", "note"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: source, paper, table, settings, "
                              f"values, note.")
        for k in ("source", "table"):
            if not isinstance(item.get(k), str) or not item[k].strip():
                what = "the paper (authors, venue)" if k == "source" else "the paper's table"
                raise ConfigError(f"{where}: `{k}` must name {what}, "
                                  f"e.g. {k}: {'Wu et al., CVPR 2021' if k == 'source' else 'Table 1'}.")
        values = item.get("values")
        if not isinstance(values, Mapping) or not values:
            raise ConfigError(f"{where}: `values` must map metrics to the paper's numbers, e.g. "
                              f"values: {{clean: 67.33, pgd20: 36.2, aa: 32.08}}.")
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:  # NaN fails too
                raise ConfigError(f"{where}: values.{k}={v!r} is not a percentage: write the paper's number in "
                                  "[0, 100], e.g. 36.2 (leave out a metric the paper does not report).")
        settings = item.get("settings") or {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where}: `settings` must be a mapping, e.g. "
                              f"settings: {{epochs: 80, checkpoint: last}}.")
        for k, v in settings.items():
            if k not in REFERENCE_SETTINGS and k not in _all_keys():
                raise _unknown_key(str(k), REFERENCE_SETTINGS)
            if k == "checkpoint" and v not in REFERENCE_CHECKPOINTS:
                raise ConfigError(f"{where}: settings.checkpoint={v!r}: use {', '.join(REFERENCE_CHECKPOINTS)}.")
        out.append({**dict(item), "values": {str(k): float(v) for k, v in values.items()},
                    "settings": dict(settings)})
    return tuple(out)


def model_config(name: str, options: Mapping[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` of the ltrobust model ``name`` from ``model.<option>=value`` settings (values as
    parsed from the command line, coerced like every config key; an unknown option names the valid ones)."""
    types = {f.name: f.type for f in fields(ModelConfig) if f.name != "name"}
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; its options: "
                          f"{', '.join(sorted(types))}.")
    return ModelConfig(name=name, **{k: _coerce(v, types[k], f"model.{k}") for k, v in options.items()})


def validate_names(cfg: RunConfig) -> None:
    """Check registry names and method / loss options (close matches in the message).

    Attack names (``eval.attacks``) are checked where attacks live: :func:`ltrobust.attacks.check_attacks`,
    called by the trainer before any training and by the sweep before any run."""
    from .registry import DATASETS, LOGGERS, LOSSES, METHODS, MODELS

    if cfg.train.logger != "none" and cfg.train.logger not in LOGGERS:
        raise ConfigError(f"train.logger: {LOGGERS.unknown_message(cfg.train.logger)[:-1]}, or none.")
    DATASETS.get(cfg.data.dataset)
    MODELS.get(cfg.model.name)
    method_cls = METHODS.get(cfg.method.name)
    LOSSES.get(cfg.method.loss)
    method_options(cfg)
    if cfg.attack.loss:
        _build_options(getattr(LOSSES.get(cfg.attack.loss), "Options", None), cfg.attack.loss_args,
                       f"attack loss {cfg.attack.loss!r}")
    loss_cls = LOSSES.get(cfg.method.loss)
    _build_options(getattr(loss_cls, "Options", None), cfg.method.loss_args, f"loss {cfg.method.loss!r}")
    del method_cls


def _build_options(opts_cls: Any, values: Mapping[str, Any], owner: str) -> Any:
    if opts_cls is None:
        if values:
            raise ConfigError(f"{owner} takes no options, got {sorted(values)}.")
        return None
    names = _field_names(opts_cls)
    for k in values:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{owner} has no option {k!r}.{hint} Its options: {', '.join(names)}.")
    hints = {f.name: f.type for f in fields(opts_cls)}
    return opts_cls(**{k: _coerce(v, hints[k], f"{owner}.{k}") for k, v in values.items()})


def build_options(opts_cls: Any, values: Mapping[str, Any], owner: str) -> Any:
    """An ``Options`` dataclass instance from ``values`` (``{name: value}``, coerced and validated as config keys
    are; a wrapper method builds its base's options with it); None for a class without options and no values."""
    return _build_options(opts_cls, values, owner)


def method_options(cfg: RunConfig) -> Any:
    """The method's validated ``Options`` instance."""
    from .registry import METHODS

    cls = METHODS.get(cfg.method.name)
    return _build_options(getattr(cls, "Options", None), cfg.method.args, f"method {cfg.method.name!r}")


def loss_options(cfg: RunConfig) -> Any:
    from .registry import LOSSES

    cls = LOSSES.get(cfg.method.loss)
    return _build_options(getattr(cls, "Options", None), cfg.method.loss_args, f"loss {cfg.method.loss!r}")


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {k: getattr(cfg, k) for k in TOP_LEVEL}
    for sec in SECTIONS:
        obj = getattr(cfg, sec)
        for f in fields(obj):
            value = getattr(obj, f.name)
            if sec == "method" and f.name in ("args", "loss_args"):
                for k, v in dict(value).items():
                    flat[f"method.{f.name}.{k}"] = v
            else:
                flat[f"{sec}.{f.name}"] = value
    return flat


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain-Python form (tuples as lists) for YAML / JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    out: dict[str, Any] = {k: getattr(cfg, k) for k in TOP_LEVEL}
    for sec in SECTIONS:
        out[sec] = {f.name: plain(getattr(getattr(cfg, sec), f.name)) for f in fields(getattr(cfg, sec))}
    return out


_YAML_FLOAT = re.compile(r"^(\s*(?:- |[\w.]+: ))(-?[0-9][0-9.e+-]*)$")


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (``config.yaml``); a float that is a fraction such as 8/255 carries it as a
    comment (``eps: 0.03137254901960784  # 8/255``), so the file stays plain numbers for every YAML reader."""
    lines = []
    for line in yaml.safe_dump(to_dict(cfg), sort_keys=False).splitlines():
        m = _YAML_FLOAT.match(line)
        if m and "." in m.group(2):
            shown = fmt_fraction(float(m.group(2)))
            if "/" in shown:
                line += f"  # {shown}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def load_run_config(path: str | Path) -> RunConfig:
    """Load a saved ``config.yaml`` (the resolved form written into a run folder)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise yaml_error("run config", path, exc) from None
    except OSError as exc:
        raise ConfigError(f"cannot read run config {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"run config {path} is not a mapping of sections to keys (it holds a "
                          f"{type(raw).__name__}): restore the config.yaml that ltrobust train wrote.")
    return from_dict(raw)


def flatten_dict(nested: Mapping[str, Any]) -> dict[str, Any]:
    """Nested config (the ``to_dict`` / config.yaml form) -> ``{"section.key": value}`` with method options as
    ``method.args.NAME`` / ``method.loss_args.NAME`` (the ``to_flat`` form), without validation."""
    flat: dict[str, Any] = {}
    for key, value in (nested or {}).items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if key == "method" and sub in ("args", "loss_args") and isinstance(v, dict):
                    for k2, v2 in v.items():
                        flat[f"method.{sub}.{k2}"] = v2
                elif key == "method" and sub in ("args", "loss_args") and v is None:
                    continue
                else:
                    flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def from_dict(nested: Mapping[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from its nested form (a saved config.yaml)."""
    return from_flat(flatten_dict(nested))


def with_updates(cfg: RunConfig, **sections: Mapping[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with some fields of some sections replaced (``train={"epochs": 2}``)."""
    return replace(cfg, **{sec: replace(getattr(cfg, sec), **vals) for sec, vals in sections.items()})


def fmt_fraction(v: Any) -> str:
    """A value as people write it: a float without a short decimal form that is an exact fraction with a
    denominator up to 1000 as that fraction, over 255 when it is k/255 (``12/255``, not ``4/85``; ``1/3``
    stays ``1/3``), else the shortest decimal (``0.1``, ``1e-05``); lists and tuples comma-separated.
    For help texts, comments and messages (run names use :func:`fmt_value`).

    Example::

        fmt_fraction(8 / 255), fmt_fraction(0.1), fmt_fraction((0.0, 2 / 255))   # '8/255', '0.1', '0,2/255'
    """
    if isinstance(v, (list, tuple)):
        return ",".join(fmt_fraction(x) for x in v)
    if not isinstance(v, float) or not math.isfinite(v):
        return str(v)
    if v.is_integer():
        return repr(v)  # 2.0: still a float
    text = repr(v)
    if len(text.lstrip("-").replace("0.", "", 1).lstrip("0").split("e")[0].replace(".", "")) <= 6:
        return text  # a short decimal: 0.1, 0.03125, 1e-05
    frac = Fraction(v).limit_denominator(1000)
    if frac.numerator / frac.denominator != v:
        return text
    if 255 % frac.denominator == 0 and frac.denominator > 15:  # 12/255 rather than 4/85; 1/3 stays 1/3
        return f"{frac.numerator * 255 // frac.denominator}/255"
    return f"{frac.numerator}/{frac.denominator}"


def fmt_value(v: Any) -> str:
    """A config value as it is written in run names and tables: ``0.1``, ``8,16``, ``bsl``."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(fmt_value(x) for x in v)
    return str(v)
