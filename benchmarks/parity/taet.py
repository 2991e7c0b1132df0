"""TAET (Wang et al., CVPR 2025) against its authors' code, BuhuiOK/TAET-Two-Stage-Adversarial-Equalization-Training-on-
Long-Tailed-Distributions at a374adf.

Their training code lives in Jupyter notebooks; the harness runs their code cells unchanged
(:meth:`~.official.Checkout.cells`), in one namespace, in a scratch folder laid out as their relative paths expect:

- data: ``datasets/create_cifar10-lt.ipynb`` cells 0-1 (their ``Cifar10LT`` subset builder, and the ``.npy`` files
  it writes) on CIFAR-10 pickles written in the official layout; their committed label files
  ``datasets/cifar10lt_*/{train,test}_labels.npy`` (the counts of their runs); ``code/TAET/TAET.ipynb`` cell 0
  (their dataset class, transforms and loaders, reading those ``.npy`` files);
- schedule: ``TAET.ipynb`` cell 3 (the SGD optimiser and MultiStepLR), HARL's signature (cell 4), the stage
  switch and the epochs read off cells 7-8;
- step: ``TAET_demo.ipynb`` cell 3 (torchvision's ResNet-18, ``fc`` replaced: the paper's network) and
  ``TAET.ipynb`` cells 1-2 (ResNet-50: what that notebook trains), cell 3, cell 4 (``HARL``, equal to
  ``code/HARL.py``) and cell 7 (``train_model``), run for 42 epochs of one batch each: 40 epochs of stage 1
  and two of stage 2, across the stage switch, against ltrobust's ``Trainer.train_step`` from the same weights;
- evaluation: ``TAET.ipynb`` cell 6 (``evaluate_model_with_attack_by_class``) with the attacks of cell 12's
  ``attacks = [...]`` statement (torchattacks FGSM, PGD-20, CW, AutoAttack), on a checkpoint loaded by their
  model and by ltrobust's ``load_run``.

pytz (their loop's clock) is not installed here: a stand-in with Asia/Shanghai's fixed offset is used (listed in
the JSON). Their loop's ``torch.save`` of every epoch is replaced by a recorder for the run (the weights are read
by the step observers instead).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import datetime
import inspect
import io
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import ours
from .core import Known, KeyMap, Row, compare_exact, compare_tensor, compare_tensors, load_mapped, map_state, \
    mapped, predictions_agree
from .method import Context, MethodSpec
from .official import Recorder, call_with_seed, patched, quiet
from .core import snapshot
from .steps import StepRecord, compare_steps, flips, model_rows

PRESET = "taet-cifar10lt-ir10-resnet18"
IRS = (10, 20, 50, 100)
CREATE = "datasets/create_cifar10-lt.ipynb"
TAET_NB = "code/TAET/TAET.ipynb"
DEMO_NB = "code/TAET_demo.ipynb"
HARL_PY = "code/HARL.py"
#: code cells of TAET.ipynb: data and loaders, ResNet-50, its fc, optimiser + scheduler, HARL, (class stats),
#: evaluation functions, train_model, its call, ..., the final evaluation
CELL_DATA, CELL_R50, CELL_FC, CELL_OPT, CELL_HARL, CELL_EVAL, CELL_LOOP, CELL_CALL, CELL_FINAL = 0, 1, 2, 3, 4, 6, 7, 8, 12
DEMO_CELL_R18 = 3
STEP_SIZE = 64  #: image side of the step and evaluation levels (the networks are size-agnostic; CPU time)

_IDENTITY = {r"^normalize\.mean$": 0.0, r"^normalize\.std$": 1.0}  # ours with model.normalize=false
TORCHVISION = KeyMap(rules=((r"^fc\.", "head."), (r"^(?!head\.)", "backbone.")), ours_only=_IDENTITY)


def _timezone(name: str) -> datetime.tzinfo:
    """pytz.timezone for their loop's clock line (Asia/Shanghai: UTC+8, no daylight saving)."""
    return datetime.timezone(datetime.timedelta(hours=8), name)


STUBS = {"pytz": {"timezone": _timezone}}


# ---------------------------------------------------------------------------------- known differences
KNOWN = {
    r"^selected test images": Known(
        "their subset draws are unseeded (np.random.shuffle per class, train then test from one global stream); "
        "ltrobust seeds the same rule (data.selection_seed) and draws the test subset from its own seeded "
        "stream, so with the train draw seeded alike the same training images are chosen (the row above) but "
        "not the same test images", "which 4,080 test images of the 10,000 form the long-tailed test set; the "
        "counts are equal", "data.indices_file= with a split's test indices"),
    r"^resize to 224": Known(
        "PIL's bilinear resize (their ToPILImage + Resize) and torch's bilinear interpolation (ltrobust's "
        "resize_uint8, once when the data are built) round differently", "the row's counts: a grey level here and "
        "there", ""),
    r"^validation split": Known(
        "their code has no validation split: it keeps the last epoch's weights (model_final.pt) and evaluates on "
        "the test set every 10 epochs without choosing by it; ltrobust holds out images the subset did not select "
        "and, as the preset says, also reports the last epoch", "no effect on any training step", "eval.checkpoint=last"),
    r"^seed": Known(
        "their notebooks set no seed (initial weights, subset draws, loader order, attack starts change every "
        "run); ltrobust seeds all of them (train.seed)", "none on the computation; the step level starts both "
        "from the same weights and seeds the attack start alike", ""),
    r"^model: architecture": Known(
        "TAET.ipynb builds torchvision's ResNet-50; the paper (Table 1: ResNet-18) and their TAET_demo.ipynb train "
        "torchvision's ResNet-18, which the preset follows (the same ImageNet stem, the same 224-px pipeline)",
        "a different network; both are checked below (the ResNet-50 rows with model=resnet50)", "model=resnet50"),
    r"^CW attack": Known(
        "their CW is torchattacks' CW(c=10, kappa=0, steps=100, lr=0.01): the l_2 Carlini-Wagner attack with a "
        "fixed c and no eps bound, counted robust when its unbounded AE is still classified correctly; the paper's "
        "Sec. 6.1 lists it among attacks 'under l_inf bounded perturbations with a size of 8/255'. ltrobust's cw100 "
        "is PGD-100 on the CW margin inside the l_inf ball (SPEC)", "their CW column (57.59 for TAET, Table 1) "
        "measures another quantity than the other columns, above PGD-20 for every method", "attacks=cw_l2-100 is "
        "the nearest ltrobust attack (binary search on c, minimal l_2 perturbation compared with an eps)"),
    r"^AutoAttack settings|^AutoAttack per-image": Known(
        "their final evaluation calls torchattacks 3.5.1 AutoAttack(version='standard', n_classes=10), whose "
        "APGD-CE, APGD-T and FAB-T run 10 iterations (the reference: 100) and target C-1 classes; ltrobust runs the "
        "reference AutoAttack (a weakened AutoAttack is not copied)", "measured on the checkpoint: see the row's "
        "counts", ""),
    r"^(FGSM|PGD-20) per-image": Known(
        "different random starts: torchattacks' PGD starts at a uniform point of the eps-ball drawn from the "
        "global RNG, ltrobust's from its own seeded generator; with the start injected the AEs are equal (the "
        "'... AEs, same start' rows)", "the per-image disagreement counted in the row", ""),
    r"accuracy as each code counts it": Known(
        "their evaluate_model_with_attack_by_class counts an image robust when its attacked image is classified "
        "correctly, also when the clean image is not; ltrobust counts it only when both are correct "
        "(AutoAttack's and RobustBench's rule)", "the row's counts on the checkpoint", ""),
    r"(logits on the AEs|^loss|^gradients|^weights after|^BatchNorm buffers after).*step ([3-9]\d)$|^loss at every "
    r"step": Known(
        "float64 rounding, amplified by 40 optimiser steps of an untrained BatchNorm network at lr 0.1 on batches of 8 "
        "64-px images (BatchNorm over 2x2 maps in the last stage): the runs agree to 1e-14 after step 1 and 1e-13 "
        "after step 2, and the gap grows about tenfold per step without a jump (the 'loss at every step' row); "
        "the HARL steps' attack start, iterates and AEs agree to 1e-16", "relative 1e-7 after 40 steps in float64: "
        "no difference of computation (steps 1-2 and the HARL rows equal)", "", where="fp64"),
    r"attack iterates|adversarial examples|logits on the AEs|^loss|^gradients|^weights after|^BatchNorm buffers "
    r"after|AEs, same start|correct, same start": Known(
        "float32 rounding, amplified by PGD's sign step and by 40 steps of training: ltrobust keeps delta = "
        "x_adv - x, their HARL keeps x_adv, and the preset's channels_last memory format makes the convolutions "
        "round differently; the float64 rows of the same computation are equal", "in float32 the runs part by "
        "rounding, as two float32 runs with non-deterministic GPU kernels do; none in float64",
        "train.channels_last=false rounds as their contiguous tensors do", where="fp32"),
}


# ------------------------------------------------------------------------------------- their pieces
def _chdir(path: Path):
    """Run their cells from ``path`` (their paths are relative: '../../datasets/cifar10lt_10')."""
    @contextlib.contextmanager
    def cm():
        old = os.getcwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(old)
    return cm()


def _cifar_root(ctx: Context) -> Path:
    """Official-format CIFAR-10 pickles (real images with ``--images``) under ``scratch/work/datasets``."""
    if "root" in ctx.cache:
        return ctx.cache["root"]
    if ctx.options.images:
        train, test = ours.real_cifar10(ctx.options.images)
    else:
        y = ours.interleaved_labels(10, 5000, 0)
        yt = ours.interleaved_labels(10, 1000, 1)
        train = (ours.synthetic_images(len(y), 32, seed=10), y)
        test = (ours.synthetic_images(len(yt), 32, seed=1010), yt)
    root = ctx.scratch / "work" / "datasets"
    ours.write_cifar(root, 10, train, test, py2_keys=True)  # their reader: pickle.load(encoding='bytes')
    ctx.cache["root"] = root
    return root


def _create_ns(ctx: Context) -> dict[str, Any]:
    """create_cifar10-lt.ipynb cell 0 (their Cifar10LT; the cell itself builds IR 100) after np.random.seed(0):
    their draw is unseeded, the harness seeds the global stream as ltrobust's selection_seed=0 does."""
    if "create" not in ctx.cache:
        root = _cifar_root(ctx)
        np.random.seed(0)
        torch.manual_seed(0)
        with _chdir(root), quiet():
            ctx.cache["create"] = ctx.checkout.cells(CREATE, [0])
    return ctx.cache["create"]


def _their_subset(ctx: Context, ir: int, seed: int = 0):
    """Their Cifar10LT(train) and Cifar10LT(test) at imbalance ``ir`` (imb_factor 1 / IR), drawn in the cell's
    order (train, then test) from the global stream seeded with ``seed``."""
    ns, root = _create_ns(ctx), _cifar_root(ctx)
    np.random.seed(seed)
    with _chdir(root):
        train = ns["Cifar10LT"](root="./cifar-10-batches-py", imb_factor=1 / ir, train=True)
        test = ns["Cifar10LT"](root="./cifar-10-batches-py", imb_factor=1 / ir, train=False)
    return train, test


def _their_npy(ctx: Context) -> Path:
    """Their .npy files of IR 10 (train / test images and labels) written by create_cifar10-lt.ipynb cell 1 from
    their IR-10 subset, in ``scratch/work/datasets/cifar10lt_10`` (the cell names its folder cifar10lt_100:
    the harness renames it)."""
    if "npy" in ctx.cache:
        return ctx.cache["npy"]
    root = _cifar_root(ctx)
    train, test = _their_subset(ctx, 10)
    ns = dict(_create_ns(ctx), train_dataset=train, test_dataset=test)
    with _chdir(root), quiet():
        ctx.checkout.cells(CREATE, [1], ns)
    (root / "cifar10lt_100").rename(root / "cifar10lt_10")
    ctx.cache["npy"] = root / "cifar10lt_10"
    return ctx.cache["npy"]


def _taet_ns(ctx: Context) -> dict[str, Any]:
    """TAET.ipynb cells 0 (data, transforms, loaders), 3 (optimiser, scheduler: on the demo's ResNet-18 of cell 3),
    4 (HARL), 6 (evaluation functions) and 7 (train_model), run from ``scratch/work/code/TAET``."""
    if "taet" in ctx.cache:
        return ctx.cache["taet"]
    _their_npy(ctx)
    run = ctx.scratch / "work" / "code" / "TAET"
    run.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")  # their loop ends with plt.show()
    torch.manual_seed(0)
    with _chdir(run), quiet():
        ns = ctx.checkout.cells(TAET_NB, [CELL_DATA])
        ns = ctx.checkout.cells(DEMO_NB, [DEMO_CELL_R18], ns)  # model = resnet18, fc -> 10 classes
        ns = ctx.checkout.cells(TAET_NB, [CELL_OPT, CELL_HARL, CELL_EVAL, CELL_LOOP], ns)
    ns["__run_dir__"] = run
    ctx.cache["taet"] = ns
    return ns


def _their_resnet(ctx: Context, depth: int, seed: int) -> torch.nn.Module:
    """Their model cell, run in a fresh namespace after ``torch.manual_seed(seed)``: TAET_demo.ipynb cell 3
    (ResNet-18) or TAET.ipynb cells 1-2 (ResNet-50)."""
    import torch.nn as nn

    torch.manual_seed(seed)
    with quiet():
        if depth == 18:
            ns = ctx.checkout.cells(DEMO_NB, [DEMO_CELL_R18], {"nn": nn})
        else:
            ns = ctx.checkout.cells(TAET_NB, [CELL_R50, CELL_FC], {"torch": torch, "nn": nn})
    return ns["model"]


def _cell_tree(ctx: Context, rel: str, cell: int) -> ast.Module:
    return ast.parse(ctx.checkout.cell_sources(rel)[cell])


def _stage_switch(ctx: Context) -> Any:
    """The constant of ``if epoch < N`` in their train_model (cell 7): the first HARL epoch (0-based)."""
    tree = _cell_tree(ctx, TAET_NB, CELL_LOOP)
    return next((n.comparators[0].value for n in ast.walk(tree) if isinstance(n, ast.Compare)
                 and isinstance(n.left, ast.Name) and n.left.id == "epoch" and isinstance(n.ops[0], ast.Lt)
                 and isinstance(n.comparators[0], ast.Constant)), None)


def _their_epochs(ctx: Context) -> Any:
    """``num_epochs=`` of their train_model call (cell 8)."""
    tree = _cell_tree(ctx, TAET_NB, CELL_CALL)
    return next((k.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                 for k in n.keywords if k.arg == "num_epochs"), None)


# ============================================================================================ data
def check_data(ctx: Context) -> Iterator[Row]:
    from ltrobust.data import build_data

    root = _cifar_root(ctx)
    for ir in IRS:
        setting = f"CIFAR-10-LT IR {ir}"
        committed = ctx.checkout.file(f"datasets/cifar10lt_{ir}/train_labels.npy")
        their_counts = np.bincount(np.load(committed), minlength=10).tolist()
        cfg = ours.preset(PRESET, f"data_dir={root}", f"imbalance={ir}", "data.image_size=-1")
        data = build_data(cfg.data)
        yield compare_exact("data", "per-class counts", their_counts, data.class_counts, setting,
                            detail=f"theirs: the labels file of their run (cifar10lt_{ir}/train_labels.npy); "
                                   f"total {sum(their_counts)}")
        their_test = np.bincount(np.load(ctx.checkout.file(f"datasets/cifar10lt_{ir}/test_labels.npy")),
                                 minlength=10).tolist()
        yield compare_exact("data", "long-tailed test counts", their_test,
                            np.bincount(data.test.labels.numpy(), minlength=10).tolist(), setting,
                            detail="their test_labels.npy vs data.test_profile=lt")
        train, test = _their_subset(ctx, ir)
        idx = np.asarray(train.indices)
        their_imgs = torch.from_numpy(train.data[idx].reshape(-1, 3, 32, 32))
        yield compare_tensor("data", "selected training images, in order (their rule, global seed 0)", their_imgs,
                             data.train.images, setting,
                             detail=f"their Cifar10LT after np.random.seed(0) (their code draws unseeded) vs "
                                    f"data.selection_seed=0; {len(idx)} images, class by class in the shuffled "
                                    "order, uint8, exact")
        yield compare_exact("data", "training labels, in order", [int(v) for v in train.labels[idx]],
                            data.train.labels.tolist(), setting)
        if ir == 10:
            t_idx = np.sort(np.asarray(test.indices))
            yield compare_tensor("data", "selected test images", torch.from_numpy(
                test.data[t_idx].reshape(-1, 3, 32, 32)), data.test.images, setting,
                detail="their test subset (drawn after the training one from the same stream) vs ltrobust's")
    yield from _pipeline(ctx)


def _describe(transform: Any) -> list[Any]:
    out = []
    for t in transform.transforms:
        n = type(t).__name__
        if n == "Resize":
            out.append([n, list(t.size) if not isinstance(t.size, int) else [t.size, t.size]])
        elif n == "RandomCrop":
            p = [t.padding] * 4 if isinstance(t.padding, int) else list(t.padding)
            out.append([n, list(t.size), p, t.fill, t.padding_mode])
        elif n == "RandomHorizontalFlip":
            out.append([n, t.p])
        elif n != "ToPILImage":
            out.append([n])
    return out


def _pipeline(ctx: Context) -> Iterator[Row]:
    from ltrobust.data.lt import resize_uint8

    ns = _taet_ns(ctx)
    cfg = ours.preset(PRESET)
    size = cfg.data.image_size
    ours_desc = [["Resize", [size, size]], ["RandomCrop", [size, size], [cfg.data.crop_padding] * 4, 0, "constant"],
                 ["RandomHorizontalFlip", 0.5], ["ToTensor"]]
    yield compare_exact("data", "augmentation pipeline", _describe(ns["train_transform"]), ours_desc, PRESET,
                        detail="theirs TAET.ipynb cell 0's train_transform (ToPILImage left out); ours "
                               f"data.image_size={size} (resized once when built), the loader's crop with "
                               f"data.crop_padding={cfg.data.crop_padding} and flip")
    yield compare_exact("data", "test transform", _describe(ns["test_transform"]), [["Resize", [size, size]],
                                                                                     ["ToTensor"]], PRESET)
    imgs = ns["test_dataset"].images[:16]  # (16, 3072) uint8, their layout
    theirs = torch.stack([ns["test_dataset"].transform(np.transpose(im.reshape(3, 32, 32), (1, 2, 0)))
                          for im in imgs])
    ours_t = resize_uint8(torch.from_numpy(imgs.reshape(-1, 3, 32, 32).copy()), size).float() / 255
    d = ((theirs - ours_t).abs() * 255).round()
    row = compare_tensor("data", "resize to 224 px (pixels)", theirs, ours_t, PRESET,
                         detail=f"their PIL Resize + ToTensor vs ltrobust's resize_uint8 / 255 on 16 test images: "
                                f"{int((d > 0).sum())} of {d.numel()} values differ, at most {int(d.max())} grey "
                                "levels")
    yield row
    from ltrobust.models import build_model

    theirs_m = _their_resnet(ctx, 18, 0).eval()
    mine = build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, STEP_SIZE).eval()
    x = torch.rand(2, 3, STEP_SIZE, STEP_SIZE)
    seen: list[torch.Tensor] = []
    for net, conv in ((theirs_m, theirs_m.conv1), (mine, mine.backbone.conv1)):
        h = conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
        with torch.no_grad():
            net(x)
        h.remove()
    where = ["none" if torch.equal(s, x) else "in the model" for s in seen]
    in_loader = any("Normalize" in type(t).__name__ for t in ns["train_transform"].transforms)
    yield compare_exact("data", "input normalisation", "in the loader" if in_loader else where[0], where[1], PRESET,
                        detail=f"what reaches the first convolution; model.normalize={cfg.model.normalize}")
    cfg_v = ours.preset(PRESET)
    yield compare_exact("data", "validation split", "none: last epoch kept (model_final.pt)",
                        f"{cfg_v.data.val_per_class if cfg_v.data.val_per_class >= 0 else 'default'} per class from "
                        f"{cfg_v.data.val_from} training images", PRESET,
                        detail="what could choose the reported weights")


# ========================================================================================= schedule
def check_schedule(ctx: Context) -> Iterator[Row]:
    ns = _taet_ns(ctx)
    cfg, data = _trainer_data(ctx, 224)
    tr = ours.trainer(cfg, data, ctx.scratch / "run-schedule")
    epochs = _their_epochs(ctx)
    yield compare_exact("schedule", "epochs", epochs, cfg.train.epochs, PRESET,
                        detail="their train_model(..., num_epochs=100) call (TAET.ipynb cell 8)")
    yield compare_exact("schedule", "stage switch: first HARL epoch (0-based)", _stage_switch(ctx),
                        tr.method.stage1_epochs, PRESET,
                        detail="their train_model: 'if epoch < 40' clean CE, else HARL; ours stage1_epochs "
                               "(the step level crosses it)")
    # their optimiser and MultiStepLR (cell 3) stepped once per epoch as their loop does
    model = _their_resnet(ctx, 18, 0)
    cell = ctx.checkout.cells(TAET_NB, [CELL_OPT], {"optim": torch.optim, "model": model})
    opt, sched = cell["optimizer"], cell["scheduler"]
    their_lr = []
    for _ in range(epochs):
        their_lr.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    our_lr = [tr.lr(e) for e in range(cfg.train.epochs)]
    yield compare_tensor("schedule", "learning rate at every epoch", torch.tensor(their_lr, dtype=torch.float64),
                         torch.tensor(our_lr, dtype=torch.float64), PRESET,
                         detail=f"MultiStepLR(milestones=[75, 90]) read before each epoch's steps; distinct values "
                                f"{sorted(set(their_lr), reverse=True)}")
    yield compare_exact("schedule", "learning rate within an epoch", "constant", "constant" if all(
        tr.lr(e, s, 10) == tr.lr(e) for e in range(cfg.train.epochs) for s in range(10)) else "varies", PRESET)
    keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
    yield compare_exact("schedule", "optimizer settings", [type(opt).__name__] + [opt.defaults[k] for k in keys],
                        [type(tr.optimizer).__name__] + [tr.optimizer.defaults[k] for k in keys], PRESET,
                        detail="SGD " + ", ".join(keys))
    their_wd = sum(p.numel() for g in opt.param_groups for p in g["params"] if g["weight_decay"] > 0)
    our_wd = sum(p.numel() for g in tr.optimizer.param_groups for p in g["params"] if g["weight_decay"] > 0)
    yield compare_exact("schedule", "weight decay on which parameters", [len(opt.param_groups), their_wd],
                        [len(tr.optimizer.param_groups), our_wd], PRESET,
                        detail="groups, parameters with weight decay (all, BatchNorm and biases included)")
    loader = ns["train_loader"]
    yield compare_exact("schedule", "batch size, steps per epoch, last batch dropped",
                        [loader.batch_size, len(loader), bool(loader.drop_last)],
                        [cfg.train.batch_size, len(tr.loader), bool(tr.loader.drop_last)], PRESET,
                        detail=f"{len(loader.dataset)} training images (IR 10); theirs TAET.ipynb cell 0's loader")
    sig = inspect.signature(ns["HARL"]).parameters
    loop_call = [n for n in ast.walk(_cell_tree(ctx, TAET_NB, CELL_LOOP)) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", "") == "HARL"]
    passed = sorted(k.arg for n in loop_call for k in n.keywords)
    yield compare_exact("schedule", "attack eps, step, steps as written",
                        [sig["epsilon"].default, sig["step_size"].default, sig["perturb_steps"].default],
                        [cfg.attack.eps, cfg.attack.step_size, cfg.attack.steps], PRESET,
                        detail=f"HARL's defaults (their loop passes only {passed}): 0.031, 0.003, 10, not the "
                               "paper's 8/255 and the AT-BSL code's 2/255")
    yield compare_exact("schedule", "HARL weights alpha, beta, gamma",
                        [sig["alpha"].default, sig["beta"].default, sig["gamma"].default],
                        [tr.method.options.alpha, tr.method.options.beta, tr.method.options.gamma], PRESET)
    text = "\n".join(ctx.checkout.cell_sources(TAET_NB)) + ctx.checkout.file(HARL_PY).read_text()
    yield compare_exact("schedule", "precision",
                        "mixed" if any(k in text for k in ("autocast", "GradScaler", ".half()", "bfloat16")) else "fp32",
                        "fp32" if tr.amp_dtype is None else str(tr.amp_dtype).replace("torch.", ""), PRESET,
                        detail=f"train.precision={cfg.train.precision}")
    yield compare_exact("schedule", "seed", "none" if "manual_seed" not in text else "set", cfg.train.seed, PRESET,
                        detail="their notebooks call no torch.manual_seed / np.random.seed")


def _trainer_data(ctx: Context, size: int, *overrides: str):
    """The preset's config and an LTData with the IR-10 counts over a blank image view of side ``size`` (the
    trainer reads the counts and the input spec; batches are handed to it)."""
    from ltrobust.data.profiles import class_counts

    cfg = ours.preset(PRESET, *overrides)
    counts = class_counts("exp", 5000, 10, cfg.data.imbalance)
    labels = torch.from_numpy(np.repeat(np.arange(10), counts))
    images = torch.zeros(1, 3, size, size, dtype=torch.uint8).expand(len(labels), 3, size, size)
    return cfg, ours.lt_data(images, labels, counts, cfg, (0.0,) * 3, (1.0,) * 3)


# ============================================================================================= step
def _dtypes(ctx: Context) -> list[torch.dtype]:
    return [torch.float32] + ([torch.float64] if ctx.options.fp64 else [])


def check_step(ctx: Context) -> Iterator[Row]:
    yield from _models(ctx)
    yield from _harl_rows(ctx)
    for dtype in _dtypes(ctx):
        yield from _steps(ctx, dtype)


def _models(ctx: Context) -> Iterator[Row]:
    from ltrobust.models import build_model

    cfg = ours.preset(PRESET)
    yield compare_exact("step", "model: architecture", "torchvision resnet50 (TAET.ipynb cell 1)", cfg.model.name,
                        PRESET, detail="TAET_demo.ipynb cell 3 builds torchvision resnet18; the paper: ResNet-18")
    for depth, name in ((18, "resnet18_imagenet"), (50, "resnet50")):
        setting = f"{name} vs their torchvision resnet{depth}"
        theirs = _their_resnet(ctx, depth, 0)
        mine = build_model(ours.preset(PRESET, f"model={name}").model, 10, 3, None, None, STEP_SIZE)
        m = map_state(theirs.state_dict(), mine.state_dict(), TORCHVISION)
        yield Row("step", "model: key mapping", "equal", setting,
                  detail=f"{len(m)} tensors mapped; every key of ours hit, shapes equal, our normalisation the identity")
        x = torch.from_numpy(ours.synthetic_images(4, STEP_SIZE, seed=11)).permute(0, 3, 1, 2).float() / 255
        y = torch.arange(4)
        for dtype in _dtypes(ctx):
            t_model, o_model = copy.deepcopy(theirs).to(dtype), copy.deepcopy(mine).to(dtype)
            load_mapped(o_model, t_model.state_dict(), m)
            yield from model_rows(t_model, o_model, x, y, dtype, setting)
            bn = {k: o for k, o in m.items() if "running" in k or "num_batches" in k}
            yield compare_tensors("step", "model: BatchNorm buffers after a train-mode forward",
                                  mapped(t_model.state_dict(), bn), {o: o_model.state_dict()[o] for o in bn.values()},
                                  setting)


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are a fixed tensor (whatever the input): HARL's loss part alone."""

    def __init__(self, z: torch.Tensor) -> None:
        super().__init__()
        self.z = torch.nn.Parameter(z.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z * 1


def _harl_rows(ctx: Context) -> Iterator[Row]:
    """HARL.py equals the notebook's HARL cell; HARL's loss part (perturb_steps=0 on fixed logits) against
    ltrobust's TAET loss of the preset on batches with and without absent classes, float64."""
    from ltrobust.methods.taet import TAET

    ns = _taet_ns(ctx)
    cell = ctx.checkout.cell_sources(TAET_NB)[CELL_HARL].strip()
    yield compare_exact("step", "HARL: code/HARL.py vs the notebook's HARL cell",
                        ctx.checkout.file(HARL_PY).read_text().strip(), cell, "TAET.ipynb cell 4",
                        detail="the text of both, stripped; the loop calls the cell's HARL")
    cfg, data = _trainer_data(ctx, STEP_SIZE)
    tr = ours.trainer(cfg, data, ctx.scratch / "run-harl")
    method: TAET = tr.method
    method.on_epoch_start(cfg.train.epochs - 1)  # stage 2
    g = torch.Generator().manual_seed(3)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # their class_losses = torch.zeros(num_classes): the default dtype
    try:
        yield from _harl_cases(ns, method, g)
    finally:
        torch.set_default_dtype(default)


def _harl_cases(ns: dict[str, Any], method: Any, g: torch.Generator) -> Iterator[Row]:
    for name, y in (("every class present", torch.arange(32) % 10),
                    ("classes 7-9 absent", torch.randint(0, 7, (32,), generator=g)),
                    ("one class", torch.full((8,), 4))):
        z = torch.randn(len(y), 10, generator=g, dtype=torch.float64) * 3
        torch.manual_seed(0)
        fixed = _Fixed(z)
        theirs = ns["HARL"](fixed, torch.zeros(len(y), 1, dtype=torch.float64), y, num_classes=10, perturb_steps=0)
        g_t, = torch.autograd.grad(theirs, fixed.z)
        zo = z.clone().requires_grad_(True)
        out = method.compute_loss(lambda _x: zo, torch.zeros(len(y), 1), torch.zeros(len(y), 1), y)
        g_o, = torch.autograd.grad(out["loss"], zo)
        yield compare_tensor("step", f"HARL loss, {name}", theirs.detach(), out["loss"].detach(), PRESET,
                             detail=f"theirs {float(theirs.detach()):.12g}, ours {float(out['loss'].detach()):.12g}; "
                                    f"absent_as_zero={method.options.absent_as_zero}")
        yield compare_tensor("step", f"HARL gradient w.r.t. the logits, {name}", g_t, g_o, PRESET)


class _EpochBatches:
    """Their dataloaders['train']: epoch e yields the one batch ``batches[e]``."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> None:
        self.batches, self.dataset, self.epoch = batches, range(n), 0

    def __iter__(self):
        batch = self.batches[self.epoch]
        self.epoch += 1
        return iter([batch])

    def __len__(self) -> int:
        return 1


def _records(calls: list, bounds: list[int], losses: list, snaps: list) -> tuple[list[StepRecord], list[int]]:
    """Steps from a recorder's calls cut at ``bounds`` (the call count after each step). A step's last call is
    the loss's; the train-mode calls before the first eval-mode one are clean forwards (their loop's unused
    one; counted apart), the rest the attack's (eval-mode BatchNorm, as both codes attack)."""
    out, clean = [], []
    start = 0
    for b, loss, snap in zip(bounds, losses, snaps):
        seg = calls[start:b]
        start = b
        lead = next((i for i, c in enumerate(seg[:-1]) if not c[0]), len(seg) - 1)
        attack = seg[lead:-1]
        clean.append(lead)
        out.append(StepRecord([c[1] for c in attack], [c[0] for c in attack], seg[-1][1], seg[-1][2], loss,
                              snap["grads"], snap["weights"], snap["buffers"]))
    return out, clean


def _steps(ctx: Context, dtype: torch.dtype) -> Iterator[Row]:
    """Their train_model for 42 epochs of one batch each (40 clean-CE epochs, the switch, 2 HARL epochs) and
    ltrobust's Trainer.train_step at each epoch's learning rate, from the same weights, on the same batches, with
    the global RNG seeded alike before each HARL call and each of ltrobust's steps."""
    from ltrobust.data.lt import resize_uint8
    from ltrobust.data.splits import ArraySplit

    ns = _taet_ns(ctx)
    switch = _stage_switch(ctx)
    n_steps, batch = switch + 2, ctx.options.batch_size // 4 or 2
    name = "fp32" if dtype == torch.float32 else "fp64"
    setting = f"{PRESET}, {name}, batch {batch}, {STEP_SIZE} px, epochs 1-{n_steps} of one step"
    # the same batches for both: the LT training images (their npy, IR 10), a seeded sample, resized
    ds = ns["train_dataset"]
    rng = np.random.RandomState(ctx.options.seed)
    pick = rng.permutation(len(ds.labels))[: n_steps * batch]
    images = resize_uint8(torch.from_numpy(ds.images[pick].reshape(-1, 3, 32, 32).copy()), STEP_SIZE)
    split = ArraySplit(images, torch.from_numpy(ds.labels[pick].astype(np.int64)))
    batches = [(x.to(dtype), y) for x, y in ours.batches(split, batch, n_steps)]
    seeds = [2000 + i for i in range(n_steps)]
    cfg, data = _trainer_data(ctx, STEP_SIZE)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    saves: list[str] = []
    try:
        tr = ours.trainer(cfg, data, ctx.scratch / f"step-{name}")
        tr.model.to(dtype)
        theirs = _their_resnet(ctx, 18, 0).to(dtype)
        m = map_state(theirs.state_dict(), tr.model.state_dict(), TORCHVISION)
        load_mapped(tr.model, theirs.state_dict(), m)
        # theirs: cell 3's optimiser and scheduler on their model, cell 7's train_model, observed
        cell = ctx.checkout.cells(TAET_NB, [CELL_OPT], {"optim": torch.optim, "model": theirs})
        opt, sched = cell["optimizer"], cell["scheduler"]
        rec = Recorder(theirs)
        bounds: list[int] = []
        snaps: list[dict[str, dict[str, torch.Tensor]]] = []
        numbers = [1, 2, switch - 1, switch, switch + 1, switch + 2]  # the steps compared (snapshots kept)
        empty: dict[str, dict[str, torch.Tensor]] = {"weights": {}, "grads": {}, "buffers": {}}

        def keep(model: torch.nn.Module, step: int) -> dict[str, dict[str, torch.Tensor]]:
            return {w: snapshot(model, w) for w in empty} if step in numbers else empty

        opt.register_step_post_hook(lambda o, a, k: (bounds.append(len(rec.calls)),
                                                     snaps.append(keep(theirs, len(bounds)))))
        losses: list[torch.Tensor] = []
        harl, evaluate = ns["HARL"], ns["evaluate_and_save_results"]

        def observed_harl(*a: Any, **k: Any) -> torch.Tensor:
            out = harl(*a, **k)
            losses.append(out.detach().clone())
            return out

        evals: list[int] = []

        def observed_eval(model: Any, loader: Any, path: Any, epoch: int) -> None:
            n, n_ce = len(rec.calls), len(ce_losses)  # their every-10-epochs evaluation: run, not a step
            evaluate(model, loader, path, epoch)
            del rec.calls[n:], ce_losses[n_ce:]
            evals.append(epoch)

        ce_losses: list[torch.Tensor] = []
        cross_entropy = F.cross_entropy

        def observed_ce(*a: Any, **k: Any) -> torch.Tensor:
            out = cross_entropy(*a, **k)
            ce_losses.append(out.detach().clone())
            return out

        tiny_test = [(batches[0][0][:2], batches[0][1][:2])]
        harl_seeds = iter(seeds[switch:])
        loop_ns = ns["train_model"].__globals__
        with contextlib.ExitStack() as stack:
            for key, value in (("HARL", call_with_seed(observed_harl, harl_seeds)),
                               ("evaluate_and_save_results", observed_eval), ("test_loader", tiny_test),
                               ("device", "cpu")):
                stack.enter_context(patched_item(loop_ns, key, value))
            stack.enter_context(patched(F, "cross_entropy", observed_ce))
            stack.enter_context(patched(torch, "save", lambda obj, f, *a, **k: saves.append(os.path.basename(str(f)))))
            stack.enter_context(_chdir(ns["__run_dir__"]))
            stack.enter_context(quiet())
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))  # their tqdm bars
            ns["train_model"](rec, {"train": _EpochBatches(batches, len(ds.labels)), "test": tiny_test}, opt, sched,
                              num_epochs=n_steps)
        their_losses = _their_losses(ce_losses, losses, switch, cfg.attack.steps)
        their_steps, their_clean = _records(rec.calls, bounds, their_losses, snaps)
        # ours: start_epoch(e) and train_step at lr(e), every model forward observed
        our_rec = Recorder(tr.model)
        saved = tr.attack_model, tr.train_model
        tr.attack_model = tr.train_model = our_rec
        our_snaps, our_losses, our_bounds = [], [], []
        try:
            for e, ((x, y), seed) in enumerate(zip(batches, seeds)):
                tr.start_epoch(e)
                torch.manual_seed(seed)
                res = tr.train_step(x, y, tr.lr(e))
                our_losses.append(res["loss"].detach())
                our_bounds.append(len(our_rec.calls))
                our_snaps.append(keep(tr.model, e + 1))
        finally:
            tr.attack_model, tr.train_model = saved
        our_steps, our_clean = _records(our_rec.calls, our_bounds, our_losses, our_snaps)
    finally:
        torch.set_default_dtype(default)
    if dtype == torch.float32:
        ctx.cache["trained"] = {k: v.clone() for k, v in theirs.state_dict().items()}
        ctx.note(f"their train_model evaluated (nature, PGD-20 on the test loader, nothing chosen by it) after epochs "
                 f"{evals} and saved {len(saves)} files ({', '.join(sorted(set(saves))[-2:])}, ...): model_final.pt is "
                 "what their evaluation cell loads")
    yield compare_exact("step", "attack forwards per step",
                        [len(s.attack_inputs) for s in their_steps], [len(s.attack_inputs) for s in our_steps],
                        setting, detail="attack forwards per step; 0 in stage 1")
    yield compare_exact("step", "clean train-mode forwards before the loss, per step", their_clean, our_clean,
                        setting, detail="their loop's unused 'outputs = model(inputs)' (and stage 1's second "
                                        "forward) vs ltrobust's clean_forward")
    rel = [float((t.loss.double() - o.loss.double()).abs() / t.loss.double().abs().clamp_min(1e-300))
           for t, o in zip(their_steps, our_steps)]
    growth = ", ".join(f"{i + 1}: {r:.1e}" for i, r in enumerate(rel) if i in (0, 1, 2, 4, 9, 19, 29, 38, 39, 40, 41))
    yield Row("step", "loss at every step: how the difference grows", "equal" if max(rel) <= (1e-5 if dtype ==
              torch.float32 else 1e-10) else "differs", setting, name, max_rel=max(rel),
              detail=f"relative difference of the loss by step ({growth}): a last-bit difference grows step by step "
                     "over the clean stage, no jump at any step")
    sel = [n - 1 for n in numbers]
    yield from compare_steps([their_steps[i] for i in sel], [our_steps[i] for i in sel], m,
                             [batches[i] for i in sel], setting, numbers=numbers,
                             start="x + 0.001 N(0, I): their HARL's torch.randn and ltrobust's random_start=normal, "
                                   "same seed")


def _their_losses(ce_losses: list[torch.Tensor], harl_losses: list[torch.Tensor], switch: int,
                  attack_steps: int) -> list[torch.Tensor]:
    """Their loss of every step: stage 1's F.cross_entropy (one call per step), then HARL's returns. HARL's own
    cross_entropy calls (attack_steps mean-reduced calls, then one per-sample call) come after the switch."""
    return [ce_losses[i] for i in range(switch)] + harl_losses


@contextlib.contextmanager
def patched_item(ns: dict[str, Any], key: str, value: Any) -> Iterator[None]:
    """Set ``ns[key] = value`` for the block (a name their function reads from its globals), then restore it."""
    missing = key not in ns
    old = ns.get(key)
    ns[key] = value
    try:
        yield
    finally:
        if missing:
            del ns[key]
        else:
            ns[key] = old


# ============================================================================================= eval
def _checkpoint(ctx: Context) -> tuple[dict[str, torch.Tensor], str]:
    """The evaluation level's weights in their state-dict format: ``--checkpoint`` (theirs, or an ltrobust
    checkpoint mapped to theirs), else their ResNet-18 after the step level, else at initialisation."""
    import hashlib

    from ltrobust import io as lt_io
    from ltrobust.models import build_model

    path = ctx.options.checkpoint
    if path:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        state = lt_io.load_checkpoint(path, map_location="cpu")
        state = state.get("state_dict", state)
        if isinstance(state.get("model"), dict):  # an ltrobust checkpoint: our keys -> theirs
            mine = state["model"]
            theirs = _their_resnet(ctx, 18, 0)
            model = build_model(ours.preset(PRESET).model, 10, 3, None, None, STEP_SIZE)
            m = map_state(theirs.state_dict(), model.state_dict(), TORCHVISION)
            state = {t: mine[o] for t, o in m.items()}
        return state, f"{path} (sha256 {digest}...)"
    if "trained" in ctx.cache:
        return ctx.cache["trained"], "their ResNet-18 after the step level's 42 steps (fp32)"
    return _their_resnet(ctx, 18, 0).state_dict(), "their ResNet-18 at initialisation (pass --checkpoint)"


def _their_attacks(ctx: Context, model: torch.nn.Module) -> dict[str, Any]:
    """The attacks of their final evaluation: the ``attacks = [...]`` statement of TAET.ipynb cell 12 alone (the
    cell then runs them on the whole test set), on ``model``; name -> torchattacks object."""
    import torchattacks

    tree = _cell_tree(ctx, TAET_NB, CELL_FINAL)
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "attacks")
    ns = {"model": model, "NUM_CLASSES": 10, **{k: getattr(torchattacks, k) for k in
                                                ("FGSM", "PGD", "CW", "DeepFool", "AutoAttack")}}
    exec(compile(ast.Module(body=[node], type_ignores=[]), f"{TAET_NB}#cell{CELL_FINAL}", "exec"), ns)  # noqa: S102
    return dict(ns["attacks"])


def _their_run(ev: Any, rec: Recorder, attack: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Their evaluate_model_with_attack_by_class on one batch: the prediction on the attacked images (their last
    forward) and the balanced accuracy they report."""
    rec.calls.clear()
    with quiet(), contextlib.redirect_stderr(io.StringIO()):
        _, avg, balanced = ev(rec, [(x, y)], attack, 10)
    return rec.calls[-1][2].argmax(1), balanced


def check_eval(ctx: Context) -> Iterator[Row]:
    from ltrobust.attacks import parse_attack, pgd, threat_model
    from ltrobust.data import build_data
    from ltrobust.data.lt import resize_uint8
    from ltrobust.data.splits import ArraySplit
    from ltrobust.evaluation.evaluator import balanced_subset
    from ltrobust.evaluation.runs import load_run

    state, which = _checkpoint(ctx)
    ctx.note(f"evaluation checkpoint: {which}")
    ns = _taet_ns(ctx)
    ev = ns["evaluate_model_with_attack_by_class"]
    cfg = ours.preset(PRESET, f"data_dir={_cifar_root(ctx)}", "data.image_size=-1")
    data = build_data(cfg.data)  # the long-tailed test set (test_profile=lt)
    n = ctx.options.eval_images
    pick = balanced_subset(data.test.labels, n, seed=ctx.options.seed)
    split = ArraySplit(resize_uint8(data.test.images[pick], STEP_SIZE), data.test.labels[pick])
    x, y = ours.batches(split, len(pick), 1)[0]
    theirs = _their_resnet(ctx, 18, 0)
    theirs.load_state_dict(state)  # their cell 11: model.load_state_dict(torch.load(weights_path))
    theirs.eval()
    cfg_t, data_t = _trainer_data(ctx, STEP_SIZE)
    tr = ours.trainer(cfg_t, data_t, ctx.scratch / "eval-run")
    m = map_state(theirs.state_dict(), tr.model.state_dict(), TORCHVISION)
    load_mapped(tr.model, state, m)
    ckpt = tr.folder.checkpoint("last")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tr.save_weights(ckpt, 0, None)
    run = load_run(ckpt, ["checkpoint=last"])
    deployed = run.deployed.eval()
    setting = f"{PRESET}, {len(y)} long-tailed test images at {STEP_SIZE} px"
    yield compare_exact("eval", "checkpoint choice", "last epoch",
                        "last epoch" if run.cfg.eval.checkpoint == "last" else "best on the validation split",
                        PRESET, detail=f"theirs: model_final.pt (saved after the last epoch, loaded by TAET.ipynb "
                                       f"cell 11); their loop evaluates on the test set every 10 epochs but chooses "
                                       f"nothing; ours eval.checkpoint={run.cfg.eval.checkpoint}")
    spec_names = {"FGSM": "fgsm", "PGD-20": "pgd20"}
    for dtype in _dtypes(ctx):
        name, count = ("fp32", len(y)) if dtype == torch.float32 else ("fp64", min(16, len(y)))
        where = f"{PRESET}, {count} test images, {name}"
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            t_model, o_model = copy.deepcopy(theirs).to(dtype).eval(), copy.deepcopy(deployed).to(dtype).eval()
            sel = torch.arange(0, len(y), max(1, len(y) // count))[:count]
            xd, yd = x[sel].to(dtype), y[sel]
            xt, xo = xd.clone().requires_grad_(True), xd.clone().requires_grad_(True)
            zt, zo = t_model(xt), o_model(xo)
            yield compare_tensor("eval", "served logits", zt, zo, where,
                                 detail="their torchvision resnet18 + load_state_dict vs ltrobust's load_run(...).deployed")
            gt, = torch.autograd.grad(F.cross_entropy(zt, yd, reduction="sum"), xt)
            go, = torch.autograd.grad(F.cross_entropy(zo, yd, reduction="sum"), xo)
            yield compare_tensor("eval", "input gradients", gt, go, where)
            rec = Recorder(t_model)
            attacks = _their_attacks(ctx, rec)
            for label, our_name in spec_names.items():
                torch.manual_seed(ctx.options.seed)
                t_pred, _ = _their_run(ev, rec, attacks[label], xd, yd)
                start = rec.calls[0][1] - xd  # their first attack forward is at x + their start
                their_adv = rec.calls[-1][1]
                spec = parse_attack(our_name, eps=run.cfg.eval.eps, step_size=run.cfg.eval.step_size)
                our_adv = pgd(o_model, xd, yd, threat_model(spec.norm, spec.eps), steps=spec.steps,
                              step_size=spec.step_size, objective=spec.objective, random_start=spec.random_start,
                              momentum=spec.momentum, objective_kwargs=dict(spec.objective_kwargs),
                              start=start if our_name != "fgsm" else None)
                with torch.no_grad():
                    o_pred = o_model(our_adv).argmax(1)
                yield compare_tensor("eval", f"{label} AEs, same start", their_adv, our_adv, where,
                                     detail=f"torchattacks {type(attacks[label]).__name__} (cell 12) vs ltrobust's "
                                            f"{our_name} (eval step {spec.step_size:.6g}), their start injected; "
                                            f"{flips(their_adv, our_adv)}")
                yield predictions_agree("eval", f"{label} attacked image correct, same start", t_pred == yd,
                                        o_pred == yd, where)
        finally:
            torch.set_default_dtype(default)
    yield from _suite(ctx, ev, theirs, deployed, x, y, run.cfg, setting)
    yield from _autoattack(ctx, ev, theirs, deployed, x, y)


def _suite(ctx: Context, ev: Any, theirs: torch.nn.Module, deployed: torch.nn.Module, x: torch.Tensor,
           y: torch.Tensor, cfg: Any, setting: str) -> Iterator[Row]:
    """Their nature / FGSM / PGD-20 with their own random starts against ltrobust.evaluate: per-image robustness."""
    import ltrobust

    res = ltrobust.evaluate(deployed, (x, y), attacks=("clean", "fgsm", "pgd20"), eps=cfg.eval.eps,
                            step_size=cfg.eval.step_size, mode="standalone", seed=ctx.options.seed, progress=False)
    flags = dict(zip(res.samples["names"], res.samples["flags"]))
    rec = Recorder(theirs)
    attacks = _their_attacks(ctx, rec)
    t_clean, _ = _their_run(ev, rec, attacks["nature"], x, y)
    t_clean = t_clean == y
    yield predictions_agree("eval", "clean per-image correctness", t_clean,
                            torch.from_numpy(np.asarray(flags["clean"])), setting,
                            detail="their 'nature' (FGSM eps=0) vs ltrobust's clean")
    for label, our_name in (("FGSM", "fgsm"), ("PGD-20", "pgd20")):
        torch.manual_seed(ctx.options.seed)
        t_pred, _ = _their_run(ev, rec, attacks[label], x, y)
        t_adv = t_pred == y
        o_ok = torch.from_numpy(np.asarray(flags[our_name]))
        yield predictions_agree("eval", f"{label} per-image robustness, own random starts", t_clean & t_adv, o_ok,
                                setting, detail=f"robust = clean and attacked image correct; ltrobust.evaluate("
                                                f"attacks=clean,{our_name}, mode=standalone)")
        yield compare_exact("eval", f"{label} accuracy as each code counts it", int(t_adv.sum()), int(o_ok.sum()),
                            setting, detail=f"theirs: attacked image correct, {int((t_adv & ~t_clean).sum())} of them "
                                            f"wrong on the clean image; ours: clean and attacked correct, of {len(y)}")
    cw = attacks["CW"]
    yield compare_exact("eval", "CW attack", ["CW l_2", f"c={cw.c}", f"kappa={cw.kappa}", f"steps={cw.steps}",
                                              f"lr={cw.lr}", "no eps bound"],
                        ["CW_inf margin PGD", "kappa=50", "steps=100", f"step={cfg.eval.step_size:.6g}",
                         f"eps={cfg.eval.eps:.6g}"], PRESET,
                        detail="their cell 12's CW(model, c=10, kappa=0, steps=100, lr=0.01) vs the preset's cw100")


def _autoattack(ctx: Context, ev: Any, theirs: torch.nn.Module, deployed: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor) -> Iterator[Row]:
    import torchattacks
    from pyautoattack import AutoAttack as ReferenceAA

    from ltrobust.attacks.autoattack import _build, autoattack_plan, run_autoattack

    from .at_bsl import _describe_attack

    n = min(ctx.options.aa_images, len(y))
    xa, ya = x[:n], y[:n]
    rec = Recorder(theirs, keep=1)
    with patched(torchattacks.AutoAttack, "get_seed", lambda self: ctx.options.seed):  # their call: seed=None
        atk = _their_attacks(ctx, rec)["AutoAttack"]
        theirs_desc = [_describe_attack(a) for a in atk._autoattack.attacks]
        t_pred, _ = _their_run(ev, rec, atk, xa, ya)
    with torch.no_grad():
        t_ok = (theirs(xa).argmax(1) == ya) & (t_pred == ya)
    plan = autoattack_plan(10, "standard")
    ref = _build(ReferenceAA, deployed, 8 / 255, "Linf", "standard", plan, ctx.options.seed, torch.device("cpu"))
    ours_desc = [["APGD", ref.apgd.n_iter, ref.apgd.n_restarts, "ce"],
                 ["APGDT", ref.apgd_targeted.n_iter, ref.apgd_targeted.n_target_classes],
                 ["FAB", ref.fab.n_iter, ref.fab.n_target_classes, "targeted"],
                 ["Square", ref.square.n_queries]]
    yield compare_exact("eval", "AutoAttack settings", theirs_desc, ours_desc, PRESET,
                        detail="per attack: iterations (restarts, loss) / target classes / queries; theirs "
                               "torchattacks AutoAttack(version='standard', n_classes=10) of cell 12, ours the "
                               "reference AutoAttack (pyautoattack)")
    _, o_ok = run_autoattack(deployed, xa, ya, eps=8 / 255, version="standard", seed=ctx.options.seed)
    yield predictions_agree("eval", "AutoAttack per-image robustness", t_ok, o_ok, f"{PRESET}, {n} test images",
                            detail="clean and AutoAttack correct")


SPEC = MethodSpec(
    name="taet",
    repository="BuhuiOK/TAET-Two-Stage-Adversarial-Equalization-Training-on-Long-Tailed-Distributions",
    checkout="TAET",
    commit="a374adf59c991d82147e4f7ae4f8fbf82a878325",
    files=(HARL_PY, TAET_NB, DEMO_NB, CREATE, "datasets/cifar10lt_10/train_labels.npy"),
    checks={"data": check_data, "schedule": check_schedule, "step": check_step, "eval": check_eval},
    known=KNOWN,
    stubs=STUBS,
    presets=(PRESET,),
)
