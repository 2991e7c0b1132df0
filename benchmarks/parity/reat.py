"""REAT (Li, Xu and Zhang, arXiv:2307.10205, 2023) against its authors' code, GuanlinLee/REAT at a7909fd.

What runs of theirs, unchanged (``official.Checkout``):

- data: ``builder.build_datasets`` (their ``IMBALANCECIFAR10`` / ``IMBALANCECIFAR100``, the LDAM-DRW subset) on
  CIFAR pickles written in the official layout, ``builder.transform_train`` / ``transform_test``, and
  ``build_loader.build_dataloader`` as ``train.py`` calls it;
- schedule: ``train.py``'s parser (its defaults are the paper's command), its optimiser, ``milestones`` and
  ``MultiStepLR`` lines, stepped once per epoch as its loop does;
- step: ``train.py``'s training loop itself (the top-level ``for epoch`` statement, with the bookkeeping lines
  before it: the per-class counts of the AEs' predictions that drive the RBL weights of the next epoch, its
  per-epoch PGD-20 on the test loader, its checkpoint line), run for two epochs of k steps on the same batches
  as ltrobust's ``Trainer.train_epoch``, from the same weights, with the global RNG seeded identically before
  each call of their ``loss_functions.REAT`` (their ``torch.FloatTensor(...).uniform_`` start and ltrobust's
  ``random_start=uniform_unclipped`` then draw the same numbers); their ``resnet.resnet18`` against ltrobust's
  ResNet-18 with mapped weights (logits, penultimate features, input gradients, BatchNorm);
- evaluation: ``train.py``'s ``torchattacks.PGD`` line (their per-epoch PGD-20, which picks their checkpoint)
  on a checkpoint loaded by their model class and by ltrobust's ``load_run``.

Observers only (nothing of theirs is replaced): a :class:`~.official.Recorder` around their model, a hook after
their optimiser's step, and wrappers that keep what ``REAT`` passes to ``RBL`` (the weights of its
``F.cross_entropy(weight=...)``, the ENR weights) and what ``BSL`` returns (so TAIL = loss - BSL).
mmcv is not installed here: the stand-ins of the AT-BSL module (``get_dist_info``, ``collate``) are used.
"""

from __future__ import annotations

import contextlib
import importlib
import copy
import io as _io
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import ours
from .at_bsl import STUBS, _cifar_files, _describe, _first_conv_input, _integrity_off, _our_pipeline, _split_of
from .core import (Known, KeyMap, ParityError, Row, compare_exact, compare_tensor, compare_tensors, load_mapped,
                   map_state, mapped, predictions_agree, snapshot)
from .method import Context, MethodSpec
from .official import Recorder, patched, quiet
from .steps import StepRecord, compare_steps, flips

PRESET = "reat-cifar10lt-resnet18"
BSL_PRESET = "at-bsl-cifar10lt-resnet18-reat-table1"
SCRIPT = "train.py"
#: the imbalance ratios of the paper (Sec. 5: UR 10, 20, 50, 100 on CIFAR-10-LT; 10, 20, 50 on CIFAR-100-LT)
CIFAR10_IRS = (10, 20, 50, 100)
CIFAR100_IRS = (10, 20, 50)

_IDENTITY = {r"^normalize\.mean$": 0.0, r"^normalize\.std$": 1.0}  # ours with model.normalize=false
#: their resnet.ResNet (conv1 = Sequential(conv, bn, relu); blocks' residual_function = Sequential(conv, bn, relu,
#: conv, bn); fc) -> ltrobust's ResNet-18
RESNET18 = KeyMap(rules=((r"^conv1\.0\.", "conv1."), (r"^conv1\.1\.", "bn1."),
                         (r"\.residual_function\.0\.", ".conv1."), (r"\.residual_function\.1\.", ".bn1."),
                         (r"\.residual_function\.3\.", ".conv2."), (r"\.residual_function\.4\.", ".bn2."),
                         (r"^fc\.", "head."), (r"^(?!head\.)", "backbone.")), ours_only=_IDENTITY)


# ---------------------------------------------------------------------------------- known differences
KNOWN = {
    r"^validation split": Known(
        "their code has no validation split: after every epoch it runs torchattacks' PGD-20 on the whole test set "
        "and keeps the epoch with the best test robustness (a leak we do not copy); ltrobust holds out 100 images "
        "per class that the LT subset did not select", "no effect on any training step; it decides which epoch is "
        "reported", "eval.checkpoint=last (no selection at all)"),
    r"^checkpoint choice": Known(
        "leak in their code: the epoch with the best test-set PGD-20 (>=, so the later of equal epochs) is saved "
        "as best.pkl; ltrobust picks the best balanced validation robustness", "no effect on training; the "
        "reported epoch differs (Cho et al., ICLR 2025, Table 1 reports REAT best vs last)", "eval.checkpoint=last"),
    r"^PGD-20 per-image": Known(
        "different random starts: torchattacks' PGD draws its uniform start from the global RNG, ltrobust's "
        "evaluation from its own seeded generator; with the same start injected the attacks are equal (the "
        "'PGD-20 AEs, same start' rows)", "the per-image disagreement counted in the row", ""),
    r"PGD-20 accuracy as each code counts it": Known(
        "their loop counts an image robust when its attacked image is classified correctly, also when its clean "
        "image is not; ltrobust counts an image robust only when its clean image is correct and the attack fails "
        "(AutoAttack's and RobustBench's rule), so their count can only be higher", "the row's counts", ""),
    r"^AutoAttack": Known(
        "their repository has no AutoAttack (nor PGD-100 / CW-100) evaluation: only the per-epoch torchattacks "
        "PGD-20 of train.py; the paper's AA numbers came from code not published", "not measurable", ""),
    r"attack iterates|adversarial examples|logits on the AEs|^loss|^gradients|^weights after|^BatchNorm buffers "
    r"after|^BSL term|^TAIL term|^AE prediction counts|AEs, same start|correct, same start": Known(
        "float32 rounding, amplified by PGD's sign step: ltrobust keeps delta = x_adv - x, their loop keeps x_adv, "
        "so the iterates differ in the last bit, a gradient component near zero changes sign and that pixel moves "
        "by two step sizes; the preset's channels_last memory format also makes the convolutions round "
        "differently. The float64 rows of the same computation are equal at every step",
        "in float32 the two runs part from step 1 on (the row's figures), as two float32 runs with non-deterministic "
        "GPU kernels do; none in float64", "train.channels_last=false rounds as their contiguous tensors do "
        "(fewer flipped pixels, not none)", where="fp32"),
}


# ------------------------------------------------------------------------------------- their pieces
def _their_args(ctx: Context, *argv: str) -> Any:
    """``train.py``'s parser with ``argv`` (its defaults: ``--arch resnet --dataset cifar10 --imb 0.02``)."""
    return ctx.checkout.args(SCRIPT, list(argv))


def _their_cifar(ctx: Context, num_classes: int, root: Path, ratio: float | None, train: bool = True):
    """``builder.build_datasets`` as ``train.py`` calls it (the test split without an imbalance ratio)."""
    builder = ctx.checkout.module("builder")
    name = f"cifar{num_classes}"
    with _integrity_off(), quiet():
        if train:
            return builder.build_datasets(name=name, mode="train", num_classes=num_classes, imbalance_ratio=ratio,
                                          existing_ratio=1.0, root=str(root))
        return builder.build_datasets(name=name, mode="test", num_classes=num_classes, root=str(root))


def _their_model(ctx: Context, seed: int | None = None, dataset: str = "cifar10") -> torch.nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    return ctx.checkout.module("resnet").resnet18(dataset)


def _our_data(ctx: Context, num_classes: int, imbalance: float, preset: str = PRESET, *extra: str):
    from ltrobust.data import build_data

    root = _cifar_files(ctx, num_classes)
    cfg = ours.preset(preset, f"data_dir={root}", f"imbalance={imbalance:g}", *extra,
                      *(() if num_classes == 10 else ("dataset=cifar100-lt",)))
    return cfg, build_data(cfg.data)


def _mapping(theirs: torch.nn.Module, mine: torch.nn.Module) -> tuple[dict[str, str], str]:
    m = map_state(theirs.state_dict(), mine.state_dict(), RESNET18)
    return m, f"{len(m)} tensors mapped"


def _dtypes(ctx: Context) -> list[torch.dtype]:
    return [torch.float32] + ([torch.float64] if ctx.options.fp64 else [])


# ============================================================================================ data
def check_data(ctx: Context) -> Iterator[Row]:
    for num_classes, irs in ((10, CIFAR10_IRS), (100, CIFAR100_IRS)):
        name = f"CIFAR-{num_classes}-LT"
        root = _cifar_files(ctx, num_classes)
        for ir in irs:
            ratio = 0.02 if (num_classes, ir) == (10, 50) else 1 / ir  # --imb 0.02 is train.py's default
            theirs, spc = _their_cifar(ctx, num_classes, root, ratio)
            _, data = _our_data(ctx, num_classes, ir)
            setting = f"{name} IR {ir}"
            yield compare_exact("data", "per-class counts", list(spc), data.class_counts, setting,
                                detail=f"--imb {ratio!r} (theirs, n_min / n_max) vs imbalance={ir} (ours); "
                                       f"total {sum(spc)}")
            yield compare_tensor("data", "selected training images, in order", torch.from_numpy(theirs.data),
                                 data.train.images.permute(0, 2, 3, 1).contiguous(), setting,
                                 detail=f"{len(theirs.data)} images, uint8, exact")
            yield compare_exact("data", "training labels, in order", list(theirs.targets), data.train.labels.tolist(),
                                setting)
        test, _ = _their_cifar(ctx, num_classes, root, None, train=False)
        _, data = _our_data(ctx, num_classes, irs[0])
        yield compare_tensor("data", "test images, in order", torch.from_numpy(test.data),
                             data.test.images.permute(0, 2, 3, 1).contiguous(), name, detail="full test split")
    yield from _transforms(ctx)
    yield from _normalisation_and_validation(ctx)


def _transforms(ctx: Context) -> Iterator[Row]:
    from PIL import Image

    builder = ctx.checkout.module("builder")
    for preset in (PRESET, BSL_PRESET):
        cfg = ours.preset(preset)
        yield compare_exact("data", "augmentation pipeline", _describe(builder.transform_train),
                            _our_pipeline(cfg.data.augment, 32)[0], preset,
                            detail=f"their builder.transform_train vs ltrobust data.augment={cfg.data.augment}")
    test, _ = _their_cifar(ctx, 10, _cifar_files(ctx, 10), None, train=False)
    imgs = test.data[:32]
    theirs_t = torch.stack([builder.transform_test(Image.fromarray(img)) for img in imgs])
    ours_t = ours.batches(_split_of(imgs), len(imgs), 1)[0][0]
    yield compare_tensor("data", "uint8 -> float conversion", theirs_t, ours_t, "CIFAR",
                         detail="their transform_test (ToTensor on PIL) vs ltrobust's loader (x / 255)")


def _normalisation_and_validation(ctx: Context) -> Iterator[Row]:
    from ltrobust.models import build_model

    builder = ctx.checkout.module("builder")
    in_loader = any("Normalize" in type(t).__name__
                    for t in builder.transform_train.transforms + builder.transform_test.transforms)
    x = torch.rand(2, 3, 32, 32)
    theirs = _their_model(ctx)
    for preset in (PRESET, BSL_PRESET):
        cfg = ours.preset(preset)
        mine = build_model(cfg.model, 10, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32)
        t_first = _first_conv_input(theirs, theirs.conv1[0], x)
        o_first = _first_conv_input(mine, mine.backbone.conv1, x)

        def where(first: torch.Tensor) -> str:
            return "none" if torch.equal(first, x) else "in the model"

        yield compare_exact("data", "input normalisation", "in the loader" if in_loader else where(t_first),
                            where(o_first), preset,
                            detail=f"what reaches the first convolution; model.normalize={cfg.model.normalize}")
    _, data = _our_data(ctx, 10, 50)
    man = data.manifest
    yield compare_exact("data", "validation split", _their_selection(ctx),
                        f"{man['val_per_class']} per class from {man['val_from']} training images", PRESET,
                        detail="what the per-epoch evaluation that picks the checkpoint reads")


def _their_selection(ctx: Context) -> str:
    """What their loop evaluates each epoch, read off train.py: the loader the checkpoint's evaluation iterates."""
    import ast

    tree = ctx.checkout.source_facts(SCRIPT)
    loaders = {n.iter.id for n in ast.walk(tree) if isinstance(n, ast.For) and isinstance(n.iter, ast.Name)}
    tq = {n.args[0].id for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "tqdm"
          and n.args and isinstance(n.args[0], ast.Name)}
    return "none: test_loader every epoch" if "test_loader" in (loaders | tq) else "?"


# ========================================================================================= schedule
def _their_schedule(ctx: Context, args: Any) -> tuple[list[float], torch.optim.Optimizer]:
    """The lr of every epoch from their optimiser, milestones and MultiStepLR lines, stepped after each epoch."""
    import warnings

    from torch.optim.lr_scheduler import MultiStepLR

    model = _their_model(ctx)
    opt = ctx.checkout.statement(SCRIPT, "optimizer", {"torch": torch, "n": model, "args": args})
    milestones = ctx.checkout.statement(SCRIPT, "milestones", {})
    sched = ctx.checkout.statement(SCRIPT, "scheduler", {"MultiStepLR": MultiStepLR, "optimizer": opt,
                                                         "milestones": milestones, "args": args})
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() without an optimiser step
        for _ in range(args.epochs):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
    return lrs, opt


def _their_loader(ctx: Context, args: Any) -> Any:
    trainset, _ = _their_cifar(ctx, 10, _cifar_files(ctx, 10), args.imb)
    bl = ctx.checkout.module("build_loader")
    return bl.build_dataloader(trainset, imgs_per_gpu=args.batch_size, dist=False, sampler=None, shuffle=True)


def _their_start(ctx: Context) -> str:
    """How REAT's attack starts, read off loss_functions.REAT: the draw, and whether [0, 1] clips it before the
    first forward."""
    import ast

    fn = ctx.checkout.source_facts("loss_functions.py", "REAT")
    loop = next(n for n in fn.body if isinstance(n, ast.For))
    before = fn.body[:fn.body.index(loop)]
    text = " ".join(ast.unparse(n) for n in before)
    draw = "x + U(-eps, eps)" if "uniform_(-epsilon, epsilon)" in text else "?"
    return f"{draw}, {'clipped' if 'clamp' in text else 'not clipped'} before the first forward"


def _our_start(cfg: Any) -> str:
    return {"uniform": "x + U(-eps, eps), clipped before the first forward",
            "uniform_unclipped": "x + U(-eps, eps), not clipped before the first forward",
            "normal": "x + 0.001 N(0, I), not clipped before the first forward", "none": "x"}[cfg.attack.random_start]


def check_schedule(ctx: Context) -> Iterator[Row]:
    args = _their_args(ctx)
    their_lr, opt = _their_schedule(ctx, args)
    loader = _their_loader(ctx, args)
    precision = "mixed" if any(k in ctx.checkout.file(f).read_text() for f in (SCRIPT, "loss_functions.py")
                               for k in ("autocast", "GradScaler", ".half()", "bfloat16")) else "fp32"
    for preset in (PRESET, BSL_PRESET):
        cfg, data = _our_data(ctx, 10, 50, preset)
        tr = ours.trainer(cfg, data, ctx.scratch / f"run-{preset}")
        our_lr = [tr.lr(e) for e in range(cfg.train.epochs)]
        yield compare_exact("schedule", "epochs", args.epochs, cfg.train.epochs, preset)
        yield compare_tensor("schedule", "learning rate at every epoch", torch.tensor(their_lr, dtype=torch.float64),
                             torch.tensor(our_lr, dtype=torch.float64), preset,
                             detail=f"theirs MultiStepLR(milestones=[60, 75]) stepped after each of epochs 0.."
                                    f"{args.epochs - 1}; distinct values theirs {sorted(set(their_lr), reverse=True)}")
        yield compare_exact("schedule", "learning rate within an epoch", "constant", "constant" if all(
            tr.lr(e, s, 10) == tr.lr(e) for e in range(cfg.train.epochs) for s in range(10)) else "varies", preset)
        keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
        yield compare_exact("schedule", "optimizer settings", [type(opt).__name__] + [opt.defaults[k] for k in keys],
                            [type(tr.optimizer).__name__] + [tr.optimizer.defaults[k] for k in keys], preset,
                            detail="SGD " + ", ".join(keys))
        their_wd = sum(p.numel() for g in opt.param_groups for p in g["params"] if g["weight_decay"] > 0)
        our_wd = sum(p.numel() for g in tr.optimizer.param_groups for p in g["params"] if g["weight_decay"] > 0)
        total = sum(p.numel() for p in tr.model.parameters())
        yield compare_exact("schedule", "weight decay on which parameters", [len(opt.param_groups), their_wd],
                            [len(tr.optimizer.param_groups), our_wd], preset,
                            detail=f"groups, parameters with weight decay (of {total}: all, BatchNorm and biases "
                                   "included)")
        yield compare_exact("schedule", "batch size, steps per epoch, last batch dropped, shuffled",
                            [loader.batch_size, len(loader), bool(loader.drop_last),
                             type(loader.sampler).__name__ == "RandomSampler"],
                            [cfg.train.batch_size, len(tr.loader), bool(tr.loader.drop_last), bool(tr.loader.shuffle)],
                            preset, detail=f"{len(data.train.labels)} training images; their build_dataloader("
                                           "dist=False, shuffle=True), mmcv stand-ins")
        yield compare_exact("schedule", "attack eps, step, steps as written", [args.eps, args.ss, args.ns],
                            [cfg.attack.eps, cfg.attack.step_size, cfg.attack.steps], preset,
                            detail="their parser's defaults 8./255., 2./255., 10")
        yield compare_exact("schedule", "attack start", _their_start(ctx), _our_start(cfg), preset,
                            detail=f"their loss_functions.REAT vs attack.random_start={cfg.attack.random_start}; "
                                   "the step rows compare the drawn starts")
        yield compare_exact("schedule", "precision", precision,
                            "fp32" if tr.amp_dtype is None else str(tr.amp_dtype).replace("torch.", ""), preset,
                            detail=f"train.precision={cfg.train.precision}")
        yield compare_exact("schedule", "seed", args.seed, cfg.train.seed, preset,
                            detail="torch.manual_seed before the model is built (the initial weights: step rows)")


# ============================================================================================= step
def check_step(ctx: Context) -> Iterator[Row]:
    yield from _models(ctx)
    for dtype in _dtypes(ctx):
        yield from _epochs(ctx, dtype)
    yield from _epochs(ctx, torch.float32, "train.channels_last=false")
    yield from _bsl_preset(ctx)


def _models(ctx: Context) -> Iterator[Row]:
    """Their resnet18 against ltrobust's with mapped weights: key map, initial weights of the same seed, logits,
    penultimate features (TAIL's input), input gradients, train-mode BatchNorm."""
    from ltrobust.methods.base import logits_and_features
    from ltrobust.models import build_model

    cfg = ours.preset(PRESET)
    seed = cfg.train.seed
    setting = "resnet18 vs their resnet.resnet18('cifar10')"
    theirs = _their_model(ctx, seed)
    torch.manual_seed(seed)  # as the trainer does before building the model
    mine = build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, 32)
    try:
        m, text = _mapping(theirs, mine)
    except ParityError as exc:
        yield Row("step", "model: key mapping", "differs", setting, detail=str(exc))
        return
    yield Row("step", "model: key mapping", "equal", setting,
              detail=f"{text}; every key of ours hit, shapes equal, our normalisation the identity")
    ts, ms = theirs.state_dict(), mine.state_dict()
    yield compare_tensors("step", "initial weights, same seed", mapped(ts, m), {o: ms[o] for o in m.values()}, setting,
                          detail=f"torch.manual_seed({seed}) before each model is built")
    x = torch.from_numpy(ours.synthetic_images(8, 32, seed=11)).permute(0, 3, 1, 2).float() / 255
    y = torch.arange(8) % 10
    for dtype in _dtypes(ctx):
        t_model, o_model = copy.deepcopy(theirs).to(dtype), copy.deepcopy(mine).to(dtype)
        load_mapped(o_model, t_model.state_dict(), m)
        for mode in ("eval", "train"):
            t_model.train(mode == "train")
            o_model.train(mode == "train")
            xt, xo = x.to(dtype).requires_grad_(True), x.to(dtype).requires_grad_(True)
            ft, zt = t_model(xt, True)
            zo, fo = logits_and_features(o_model, xo, "reat")
            yield compare_tensor("step", f"model: logits, {mode} mode", zt, zo, setting)
            yield compare_tensor("step", f"model: penultimate features, {mode} mode", ft, fo, setting,
                                 detail="their model(x, True)[0] vs ltrobust's model(x, return_features=True)[1]")
            gt, = torch.autograd.grad(F.cross_entropy(zt, y, reduction="sum"), xt)
            go, = torch.autograd.grad(F.cross_entropy(zo, y, reduction="sum"), xo)
            yield compare_tensor("step", f"model: input gradients, {mode} mode", gt, go, setting)
        bn = {k: o for k, o in m.items() if "running" in k or "num_batches" in k}
        yield compare_tensors("step", "model: BatchNorm buffers after a train-mode forward",
                              mapped(t_model.state_dict(), bn), {o: o_model.state_dict()[o] for o in bn.values()},
                              setting)


class _EpochLoader:
    """What their loop iterates: each ``iter()`` (one per epoch) yields the next epoch's batches as (input, target,
    index) triples, as their ``IMBALANCECIFAR10`` does."""

    def __init__(self, epochs: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.epochs, self.i = epochs, 0

    def __iter__(self):
        batches = self.epochs[self.i % len(self.epochs)]
        self.i += 1
        return iter([(x, y, torch.arange(len(y))) for x, y in batches])

    def __len__(self) -> int:
        return len(self.epochs[0])


class _OurLoader:
    """ltrobust's trainer loader for the step level: the same batches per epoch (``train_epoch`` iterates it)."""

    def __init__(self, epochs: list[list[tuple[torch.Tensor, torch.Tensor]]], drop_last: bool) -> None:
        self.epochs, self.epoch, self.drop_last = epochs, 0, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.epochs[self.epoch])

    def __len__(self) -> int:
        return len(self.epochs[self.epoch])


def _step_batches(ctx: Context, data: Any, sizes: list[int],
                  batch: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """One list of batches per epoch (``sizes[e]`` batches in epoch e): a seeded sample of the LT training set
    through ltrobust's loader, each batch with two images of the code's tail classes (``range(C // 3 * 2 + 1,
    C)``: 3.5% of CIFAR-10-LT IR 50), so that TAIL has anchors in every step."""
    total = sum(sizes)
    labels = data.train.labels.numpy()
    c = int(labels.max()) + 1
    rng = np.random.RandomState(ctx.options.seed)
    perm = rng.permutation(len(labels))
    tail = [int(i) for i in perm if labels[i] >= c // 3 * 2 + 1]
    rest = [int(i) for i in perm if labels[i] < c // 3 * 2 + 1]
    n_tail = min(2, batch)
    idx: list[int] = []
    for b in range(total):
        chosen = tail[b * n_tail:(b + 1) * n_tail] + rest[b * (batch - n_tail):(b + 1) * (batch - n_tail)]
        idx += [chosen[j] for j in rng.permutation(len(chosen))]
    flat = ours.batches(data.train.subset(torch.tensor(idx)), batch, total)
    bounds = np.cumsum([0, *sizes])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _their_loop(ctx: Context, model: torch.nn.Module, epochs: list[list[tuple[torch.Tensor, torch.Tensor]]],
                test: tuple[torch.Tensor, torch.Tensor], seeds: Iterator[int], counts: list[int], tag: str):
    """Run train.py's training loop (the top-level ``for epoch`` statement and the bookkeeping before it) for
    ``len(epochs)`` epochs on ``model``; returns what the observers saw."""
    lf = ctx.checkout.module("loss_functions")
    args = _their_args(ctx, "--epochs", str(len(epochs)))
    save = ctx.scratch / f"their-{tag}"
    save.mkdir(exist_ok=True)
    args.save = str(save) + "/"
    rec = Recorder(model)
    opt = ctx.checkout.statement(SCRIPT, "optimizer", {"torch": torch, "n": rec, "args": args})
    from torch.optim.lr_scheduler import MultiStepLR

    milestones = ctx.checkout.statement(SCRIPT, "milestones", {})
    sched = ctx.checkout.statement(SCRIPT, "scheduler", {"MultiStepLR": MultiStepLR, "optimizer": opt,
                                                         "milestones": milestones, "args": args})
    snaps: list[dict[str, dict[str, torch.Tensor]]] = []
    opt.register_step_post_hook(lambda o, a, kw: snaps.append({w: snapshot(model, w) for w in
                                                              ("weights", "grads", "buffers")}))
    calls: list[dict[str, Any]] = []  # one per REAT call
    rbl_weights: list[torch.Tensor] = []
    bsl_values: list[torch.Tensor] = []
    real_ce, real_bsl = lf.F.cross_entropy, lf.BSL

    def observed_ce(*a: Any, **kw: Any) -> torch.Tensor:
        if kw.get("weight") is not None:
            rbl_weights.append(kw["weight"].detach().clone())
            # float64 run: their float32 weight tensor in the logits' dtype (the same values; F.cross_entropy
            # refuses mixed dtypes, which their code never meets on its fp32 GPU run)
            kw["weight"] = kw["weight"].to(a[0].dtype)
        return real_ce(*a, **kw)

    def observed_bsl(*a: Any, **kw: Any) -> torch.Tensor:
        out = real_bsl(*a, **kw)
        bsl_values.append(out.detach().clone())
        return out

    def observed_reat(model_, x, y, optimizer, sample_per_class, at_per_class, args_):
        torch.manual_seed(next(seeds))
        first, n_w = len(rec.calls), len(rbl_weights)
        logits, loss = lf.REAT(model_, x, y, optimizer, sample_per_class, at_per_class, args_)
        calls.append({"calls": (first, len(rec.calls)), "at": list(at_per_class), "loss": loss.detach().clone(),
                      "weights": rbl_weights[n_w] if len(rbl_weights) > n_w else None})
        return logits, loss

    f_proxy = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    f_proxy.cross_entropy = observed_ce
    names = ["train_clean_acc", "train_adv_acc", "test_clean_acc", "test_adv_acc", "train_clean_loss",
             "train_adv_loss", "test_clean_loss", "test_adv_loss", "best_eval_acc", "overall", "overall_error",
             "pre_at_sample", "next_at_sample", "piror_p", "post_p", "loadertrain"]
    x_t, y_t = test
    ns = {"args": args, "n": rec, "optimizer": opt, "scheduler": sched, "samples_per_cls": list(counts),
          "train_loader": _EpochLoader(epochs), "test_loader": [(x_t, y_t)],
          "loss_functions": types.SimpleNamespace(REAT=observed_reat)}
    with patched(lf, "F", f_proxy), patched(lf, "BSL", observed_bsl), quiet(), \
            contextlib.redirect_stderr(_io.StringIO()):
        out = ctx.checkout.definitions(SCRIPT, names, ns, skip_imports=("builder", "build_loader"))
    steps = []
    for c, loss, snap in zip(calls, bsl_values, snaps):
        a, b = c["calls"]
        seen = rec.calls[a:b]
        steps.append((StepRecord([s[1] for s in seen[:-1]], [s[0] for s in seen[:-1]], seen[-1][1], seen[-1][2],
                                 c["loss"], snap["grads"], snap["weights"], snap["buffers"]),
                      {"bsl": loss, "tail": c["loss"] - loss, "weights": c["weights"], "at": c["at"]}))
    return steps, out


def _our_loop(tr: Any, epochs: list[list[tuple[torch.Tensor, torch.Tensor]]], seeds: Iterator[int],
              starts: list[torch.Tensor] | None = None):
    """ltrobust's ``Trainer.train_epoch`` (and the method's ``on_epoch_end``, as ``Trainer._epochs`` calls it) for
    ``len(epochs)`` epochs of the given batches; ``train_step`` observed and preceded by the same seed as theirs.
    ``starts``: their drawn starts, injected in order (float64, where their float32 draw cannot be repeated)."""
    pgd_mod = importlib.import_module("ltrobust.attacks.pgd")  # the module (ltrobust.attacks.pgd is also a function)

    recorder, saved_attack, saved_loader = Recorder(tr.model), tr.attack_model, tr.loader
    real_step, real_initial = tr.train_step, pgd_mod.initial_delta
    steps: list[tuple[StepRecord, dict[str, Any]]] = []
    records: list[dict[str, Any]] = []
    pending = list(starts) if starts is not None else None

    def injected(threat, x, random_start, generator=None, start_eps=None):
        return pending.pop(0).to(x.dtype) if pending else real_initial(threat, x, random_start, generator, start_eps)

    def observed_step(x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
        recorder.calls.clear()
        weights, at = tr.method.attack_weights.clone(), list(tr.method.ae_counts)
        torch.manual_seed(next(seeds))
        res = real_step(x, y, lr)
        steps.append((StepRecord([c[1] for c in recorder.calls], [c[0] for c in recorder.calls], res["x_adv"],
                                 res["logits_adv"], res["loss"].detach(), snapshot(tr.model, "grads"),
                                 snapshot(tr.model, "weights"), snapshot(tr.model, "buffers")),
                      {"bsl": res["loss_lt"], "tail": res.get("tail", torch.zeros(())), "weights": weights, "at": at}))
        return res

    tr.attack_model, tr.train_step = recorder, observed_step
    tr.loader = _OurLoader(epochs, bool(saved_loader.drop_last))
    try:
        ctxm = patched(pgd_mod, "initial_delta", injected) if pending is not None else contextlib.nullcontext()
        with ctxm:
            for e in range(len(epochs)):
                record = tr.train_epoch(e)
                tr.method.on_epoch_end(e, record)
                records.append(record)
    finally:
        tr.attack_model, tr.loader = saved_attack, saved_loader
        del tr.train_step
    return steps, records


def _epochs(ctx: Context, dtype: torch.dtype, *overrides: str) -> Iterator[Row]:
    """k steps of their training loop and of ltrobust's trainer over two epochs (k - 1 steps, then one), from the
    same weights, on the same batches, with the same seed before each step: the second epoch's RBL weights come
    from the first epoch's predicted classes on both sides."""
    k, batch = ctx.options.steps, ctx.options.batch_size
    sizes = [max(1, k - 1), 1]  # k steps in all, the last one in the second epoch (its RBL weights: epoch 0's AEs)
    name = "fp32" if dtype == torch.float32 else "fp64"
    setting = f"{PRESET}{''.join(' ' + o for o in overrides)}, {name}, batch {batch}, {sizes[0]} + {sizes[1]} steps"
    cfg, data = _our_data(ctx, 10, 50, PRESET, *overrides, "train.progress=false")
    epochs = [[(x.to(dtype), y) for x, y in ep] for ep in _step_batches(ctx, data, sizes, batch)]
    flat = [b for ep in epochs for b in ep]
    test = ours.batches(data.test.subset(torch.tensor([0, 1])), 2, 1)[0]
    test = (test[0].to(dtype), test[1])
    seeds = [2000 + i for i in range(sum(sizes))]
    _, counts = _their_cifar(ctx, 10, _cifar_files(ctx, 10), 0.02)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        tr = ours.trainer(cfg, data, ctx.scratch / f"step-{name}-{len(overrides)}")
        tr.model.to(dtype)
        theirs = _their_model(ctx, _their_args(ctx).seed).to(dtype)
        m, _ = _mapping(theirs, tr.model)
        load_mapped(tr.model, theirs.state_dict(), m)
        their_steps, out = _their_loop(ctx, theirs, epochs, test, iter(seeds), list(counts), f"{name}-{len(overrides)}")
        inject = None
        if dtype == torch.float64:  # their start is a float32 draw (torch.FloatTensor); ltrobust's a float64 one
            inject = [s.attack_inputs[0] - x for (s, _), (x, _) in zip(their_steps, flat)]
        our_steps, records = _our_loop(tr, epochs, iter(seeds), inject)
    finally:
        torch.set_default_dtype(default)
    if dtype == torch.float32 and not overrides:
        ctx.cache["trained"] = {key: v.clone() for key, v in theirs.state_dict().items()}
    yield compare_exact("step", "steps run", len(their_steps), len(our_steps), setting)
    start = ("x + U(-eps, eps): their torch.FloatTensor(...).uniform_ and ltrobust's random_start=uniform_unclipped, "
             "same seed" if dtype == torch.float32 else "their float32 start injected into ltrobust's attack")
    yield from compare_steps([s for s, _ in their_steps], [s for s, _ in our_steps], m, flat, setting, start=start)
    for i, ((_, t), (_, o)) in enumerate(zip(their_steps, our_steps)):
        tag = f"step {i + 1} (epoch {int(i >= sizes[0])})"
        yield compare_exact("step", f"AE prediction counts a_c the RBL weights read, {tag}", t["at"],
                            [int(v) for v in o["at"]], setting,
                            detail="their pre_at_sample vs ltrobust's method.ae_counts (first epoch: n_c)")
        yield compare_tensor("step", f"ENR (RBL) class weights, {tag}", t["weights"], o["weights"], setting,
                             detail="their RBL's F.cross_entropy(weight=...) vs ltrobust's method.attack_weights "
                                    "(w ∝ 1/(E + 1e-5), sum C); float32 on both sides in every run (theirs from "
                                    "float32 numpy, ours from float64, rounded)")
        yield compare_tensor("step", f"BSL term, {tag}", t["bsl"], o["bsl"], setting,
                             detail=f"theirs {float(t['bsl']):.9g}, ours {float(o['bsl']):.9g}")
        yield compare_tensor("step", f"TAIL term, {tag}", t["tail"], o["tail"].to(t["tail"].dtype), setting,
                             detail=f"theirs (loss - BSL) {float(t['tail']):.9g}, ours {float(o['tail']):.9g}")
    their_after = list(out["pre_at_sample"])
    yield compare_exact("step", "AE prediction counts after the last epoch", their_after,
                        records[-1]["ae_pred_counts"], setting,
                        detail="their pre_at_sample (predicted classes of the train-mode logits on the AEs) vs "
                               "ltrobust's epoch record ae_pred_counts")


def _bsl_preset(ctx: Context) -> Iterator[Row]:
    """The PGD-AT + BSL preset of REAT's Table 1, as far as their code runs it: the attack start drawn by their
    REAT function and by the preset's attack (same seed, same batch), and their BSL on the same logits."""
    cfg, data = _our_data(ctx, 10, 50, BSL_PRESET, "train.progress=false")
    x, y = _step_batches(ctx, data, [1], ctx.options.batch_size)[0][0]
    tr = ours.trainer(cfg, data, ctx.scratch / "step-bsl")
    theirs = _their_model(ctx, _their_args(ctx).seed)
    m, _ = _mapping(theirs, tr.model)
    load_mapped(tr.model, theirs.state_dict(), m)
    lf = ctx.checkout.module("loss_functions")
    args = _their_args(ctx)
    rec = Recorder(copy.deepcopy(theirs))
    _, counts = _their_cifar(ctx, 10, _cifar_files(ctx, 10), 0.02)
    torch.manual_seed(7)
    opt = torch.optim.SGD(rec.parameters(), lr=0.0)
    lf.REAT(rec, x, y, opt, list(counts), list(counts), args)
    their_start = rec.calls[0][1] - x
    ours_rec = Recorder(tr.model)
    torch.manual_seed(7)
    tr.method.train_attack(ours_rec, x, y)
    our_start = ours_rec.calls[0][1] - x
    setting = f"{BSL_PRESET}, fp32, batch {len(y)}"
    yield compare_tensor("step", "attack start (their REAT draw vs the preset's)", their_start, our_start, setting,
                         detail="same seed; theirs unclipped x + U(-eps, eps); "
                                f"attack.random_start={cfg.attack.random_start}")
    yield compare_exact("step", "BatchNorm mode while attacking (their REAT vs the preset)",
                        sorted({"train" if c[0] else "eval" for c in rec.calls[:-1]}),
                        sorted({"train" if c[0] else "eval" for c in ours_rec.calls}), setting)
    logits = torch.randn(len(y), 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    theirs_bsl = lf.BSL(y, logits, list(counts))
    ours_bsl = _preset_loss(tr, logits, y)
    yield compare_tensor("step", "BSL on the same logits (their BSL vs the preset's loss)", theirs_bsl, ours_bsl,
                         setting, detail="float64 logits; theirs log of the counts, ours of the prior (a constant "
                                         "shift, the same softmax)")


def _preset_loss(tr: Any, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The outer loss of the BSL preset's method (AT-BSL's ``balanced_softmax``: CE(z + tau log pi, y)) on given
    logits."""
    return tr.method.balanced_softmax(logits, y)


# ============================================================================================= eval
def _checkpoint(ctx: Context) -> tuple[dict[str, torch.Tensor], str]:
    import hashlib

    from ltrobust import io

    path = ctx.options.checkpoint
    if path:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        state = io.load_checkpoint(path, map_location="cpu")
        return state.get("state_dict", state), f"{path} (sha256 {digest}...)"
    if "trained" in ctx.cache:
        return ctx.cache["trained"], f"their resnet18 after the step level's {ctx.options.steps} steps (fp32)"
    return _their_model(ctx, 0).state_dict(), "their resnet18 at initialisation (pass --checkpoint for a trained one)"


def check_eval(ctx: Context) -> Iterator[Row]:
    import torchattacks

    import ltrobust
    from ltrobust.attacks import parse_attack, pgd, threat_model
    from ltrobust.evaluation.evaluator import balanced_subset
    from ltrobust.evaluation.runs import load_run

    state, which = _checkpoint(ctx)
    ctx.note(f"evaluation checkpoint: {which}")
    cfg, data = _our_data(ctx, 10, 50, PRESET, "train.progress=false")
    n = ctx.options.eval_images
    x, y = ours.batches(data.test.subset(balanced_subset(data.test.labels, n, seed=ctx.options.seed)), n, 1)[0]
    theirs = _their_model(ctx)
    theirs.load_state_dict(state)
    theirs.eval()
    tr = ours.trainer(cfg, data, ctx.scratch / "eval-run")
    m, _ = _mapping(theirs, tr.model)
    load_mapped(tr.model, state, m)
    ckpt = tr.folder.checkpoint("best")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tr.save_weights(ckpt, 0, None)
    run = load_run(ckpt, [f"data_dir={_cifar_files(ctx, 10)}"])
    deployed = run.deployed.eval()
    yield compare_exact("eval", "checkpoint choice", "best test-set PGD-20 (torchattacks) at every epoch, >=",
                        ("best balanced PGD robustness on the validation split" if run.cfg.eval.checkpoint == "best"
                         else "last epoch") + f" (eval.checkpoint={run.cfg.eval.checkpoint})", PRESET,
                        detail="theirs read off train.py: best.pkl when correct_adv >= best_eval_acc, last.pkl after "
                               "the loop")
    for dtype in _dtypes(ctx):
        name, count = ("fp32", n) if dtype == torch.float32 else ("fp64", min(16, n))
        where = f"{PRESET}, {count} test images, {name}"
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            t_model, o_model = copy.deepcopy(theirs).to(dtype).eval(), copy.deepcopy(deployed).to(dtype).eval()
            pick = torch.arange(0, n, max(1, n // count))[:count]
            xd, yd = x[pick].to(dtype), y[pick]
            xt, xo = xd.clone().requires_grad_(True), xd.clone().requires_grad_(True)
            zt, zo = t_model(xt), o_model(xo)
            yield compare_tensor("eval", "served logits", zt, zo, where,
                                 detail="their resnet18 + load_state_dict vs ltrobust's load_run(...).deployed")
            gt, = torch.autograd.grad(F.cross_entropy(zt, yd, reduction="sum"), xt)
            go, = torch.autograd.grad(F.cross_entropy(zo, yd, reduction="sum"), xo)
            yield compare_tensor("eval", "input gradients", gt, go, where)
            # in eval mode as their loop calls it (n.eval() first): torchattacks restores the mode it found after
            # the attack, so a recorder left in train mode would put their model in train mode
            rec = Recorder(t_model).eval()
            atk = ctx.checkout.statement(SCRIPT, "pgd_eval", {"torchattacks": torchattacks, "n": rec})
            torch.manual_seed(ctx.options.seed)
            their_adv = atk(xd.clone(), yd)
            start = rec.calls[0][1] - xd
            with torch.no_grad():
                their_pred = t_model.eval()(their_adv).argmax(1)
            spec = parse_attack("pgd20", eps=run.cfg.eval.eps, step_size=run.cfg.eval.step_size)
            our_adv = pgd(o_model, xd, yd, threat_model(spec.norm, spec.eps), steps=spec.steps,
                          step_size=spec.step_size, objective=spec.objective, random_start=spec.random_start,
                          start=start)
            with torch.no_grad():
                our_pred = o_model(our_adv).argmax(1)
            yield compare_tensor("eval", "PGD-20 AEs, same start", their_adv, our_adv, where,
                                 detail=f"their torchattacks.PGD(eps=8/255, steps=20, alpha=2/255) line vs ltrobust's "
                                        f"pgd20, their start injected; {flips(their_adv, our_adv)}")
            yield predictions_agree("eval", "PGD-20 attacked image correct, same start", their_pred == yd,
                                    our_pred == yd, where)
        finally:
            torch.set_default_dtype(default)
    # their PGD-20 with its own random start against ltrobust's evaluation suite, per image
    setting = f"{PRESET}, {n} test images"
    res = ltrobust.evaluate(deployed, (x, y), attacks=("clean", "pgd20"), mode="standalone", seed=ctx.options.seed,
                            progress=False)
    flags = dict(zip(res.samples["names"], res.samples["flags"]))
    with torch.no_grad():
        t_clean = theirs(x).argmax(1) == y
    yield predictions_agree("eval", "clean per-image correctness", t_clean,
                            torch.from_numpy(np.asarray(flags["clean"])), setting)
    atk = ctx.checkout.statement(SCRIPT, "pgd_eval", {"torchattacks": torchattacks, "n": theirs})
    torch.manual_seed(ctx.options.seed)
    adv = atk(x.clone(), y)
    with torch.no_grad():
        t_adv = theirs(adv).argmax(1) == y
    o_ok = torch.from_numpy(np.asarray(flags["pgd20"]))
    yield predictions_agree("eval", "PGD-20 per-image robustness, own random starts", t_clean & t_adv, o_ok, setting,
                            detail="robust = clean and attacked image correct; ltrobust.evaluate(..., "
                                   "attacks=clean,pgd20, mode=standalone)")
    yield compare_exact("eval", "PGD-20 accuracy as each code counts it", int(t_adv.sum()), int(o_ok.sum()), setting,
                        detail=f"theirs: attacked image correct (correct_adv), {int((t_adv & ~t_clean).sum())} of "
                               f"them wrong on the clean image; ours: clean and attacked image correct, of {len(y)}")
    yield Row("eval", "AutoAttack, PGD-100, CW-100 (the paper's other columns)", "differs", PRESET,
              theirs="not in their code", ours="reference AutoAttack, pgd100, cw100",
              detail="their train.py evaluates PGD-20 only")


SPEC = MethodSpec(
    name="reat",
    repository="GuanlinLee/REAT",
    checkout="REAT",
    commit="a7909fd98a52d2bdb6a68aea7248e80900cffa29",
    files=("train.py", "loss_functions.py", "resnet.py", "builder.py", "datasets.py", "build_loader.py",
           "sampler.py"),
    checks={"data": check_data, "schedule": check_schedule, "step": check_step, "eval": check_eval},
    known=KNOWN,
    stubs=STUBS,
    presets=(PRESET, BSL_PRESET),
    takes_checkpoint=True,
)
