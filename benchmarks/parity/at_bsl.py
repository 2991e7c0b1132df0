"""AT-BSL (Yue, Mou, Wang and Zhao, CVPR 2024) against its authors' code, NISPLab/AT-BSL at 23f433e.

What runs of theirs, unchanged (``official.Checkout``):

- data: ``datasets.builder.build_datasets`` / ``IMBALANCECIFAR10`` / ``IMBALANCECIFAR100`` (their LDAM-DRW
  subset) on CIFAR pickles written in the official layout, ``datasets.tiny_imagenet.TinyImagenet`` on an npz
  in their repack's layout, ``datasets.loader.build_loader.build_dataloader``, and the transforms their
  training scripts build at the top level (``--aug none|aua|ra``);
- schedule: ``adjust_learning_rate`` of ``train_at_bsl_cifar10.py`` / ``train_at_bsl_tiny_imagenet.py`` (their
  parser's defaults as ``args``), the optimiser line of their ``main()``;
- step: their ``train()`` loop of ``train_at_bsl_cifar10.py`` (which calls ``at_bsl_loss.pgd_loss``) for k
  steps on the same batches as ltrobust's ``Trainer.train_step``, from the same weights, with the global RNG
  seeded identically before each step (their start ``x + 0.001 * torch.randn`` and ltrobust's
  ``random_start=normal`` then draw the same numbers); their ``ResNet18``, ``WideResNet`` and
  ``ti_preact_resnet`` against ltrobust's models with mapped weights;
- evaluation: ``eval.py``'s ``_pgd_whitebox`` (FGSM, PGD-20, CW-20 and LSA) and ``evaluate_attack`` with their
  ``torchattacks.AutoAttack`` line, on a checkpoint loaded by their model class and by ltrobust's
  ``load_run``.

mmcv (their loader's collate and dist info) is not installed here: stand-ins with mmcv's behaviour for a
non-distributed loader of (tensor, int) pairs are used (listed in the JSON); only the loader's length and
settings are read from it.
"""

from __future__ import annotations

import ast
import copy
import itertools
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from . import ours
from .core import (Known, KeyMap, ParityError, Row, compare_exact, compare_tensor, compare_tensors, load_mapped,
                   map_state, mapped, predictions_agree)
from .method import Context, MethodSpec
from .official import Recorder, call_with_seed, patched, quiet
from .steps import after_each_step, compare_steps, flips, model_rows, ours_steps, split_calls

PRESET = "at-bsl-cifar10lt-resnet18"
TINY = "at-bsl-tinyimagenetlt-preact18"
CIFAR10_IRS = (10, 20, 50, 100)
CIFAR100_IRS = (10, 20, 50)
TRAIN_SCRIPT = "train_at_bsl_cifar10.py"
TINY_SCRIPT = "train_at_bsl_tiny_imagenet.py"

# ------------------------------------------------------------------------------------- key maps
_IDENTITY = {r"^normalize\.mean$": 0.0, r"^normalize\.std$": 1.0}  # ours with model.normalize=false
RESNET18 = KeyMap(rules=((r"^linear\.", "head."), (r"^(?!head\.)", "backbone.")), ours_only=_IDENTITY)
PREACT18 = KeyMap(rules=((r"^linear\.", "head."), (r"\.shortcut\.0\.", ".shortcut."), (r"^(?!head\.)", "backbone.")),
                  ours_only=_IDENTITY)
WRN = KeyMap(rules=((r"^fc\.", "head."), (r"^bn1\.", "bn."), (r"\.layer\.", "."), (r"\.convShortcut\.", ".shortcut."),
                    (r"^(?!head\.)", "backbone.")), unused=(r"^sub_block1\.",), ours_only=_IDENTITY)
KEYMAPS = {"resnet18": RESNET18, "wrn34_10": WRN, "preact_resnet18": PREACT18}


# --------------------------------------------------------------------------------------- stand-ins
def _collate(batch: list, samples_per_gpu: int = 1) -> Any:
    """mmcv.parallel.collate for batches of (tensor, int): torch's default collate (what mmcv falls back to)."""
    return default_collate(batch)


STUBS = {"mmcv.runner": {"get_dist_info": lambda: (0, 1)}, "mmcv.parallel": {"collate": _collate}}


# ---------------------------------------------------------------------------------- known differences
KNOWN = {
    r"^validation split": Known(
        "their code has no validation split: it picks the checkpoint by PGD-20 on the test set from epoch 75 "
        "on (a leak we do not copy); ltrobust holds out 100 images per class that the LT subset did not select",
        "no effect on any training step; it decides which epoch is reported (Cho et al., ICLR 2025, Table 1, AT-BSL: best "
        "35.87 vs last 29.40 PGD-20)", "eval.checkpoint=last (no selection at all)"),
    r"^checkpoint choice": Known(
        "leak in their code: best test-set PGD-20 robustness from epoch 75 on (9,984 of the 10,000 test images: "
        "their test loader drops the last batch); ltrobust picks the best balanced validation robustness",
        "no effect on training; the reported epoch differs (see Cho et al., ICLR 2025, Table 1 best vs last)",
        "eval.checkpoint=last"),
    r"^AutoAttack settings|^AutoAttack per-image": Known(
        "their eval.py calls torchattacks 3.5.1 AutoAttack(version='standard'), whose APGD-CE, APGD-T and FAB-T "
        "run 10 iterations (the reference: 100) and target C-1 classes (reference: 9); ltrobust runs the "
        "reference AutoAttack (a weakened AutoAttack is not copied)", "measured on the checkpoint: see the row's "
        "counts", ""),
    r"^(FGSM|PGD-20|CW-20|LSA) per-image": Known(
        "different random starts: their FGSM starts at x + 0.001 N(0, I) and their PGD-20 / CW-20 / LSA at "
        "x + U(-eps, eps) not clipped to [0, 1] before the first gradient; ltrobust's FGSM starts at x and its "
        "PGD at a uniform start clipped to the image box (Madry et al.), drawn from its own seeded generator. "
        "With the same start injected, the attacks are equal (the '... AEs, same start' rows)",
        "the per-image disagreement counted in the row", ""),
    r"AutoAugment pixels|RandAugment pixels": Known(
        "the same torchvision policy, with the same draws, on a PIL image (theirs) and on a uint8 tensor "
        "(ltrobust's device loader): each operation alone agrees within one grey level (Color, Contrast, "
        "AutoContrast round differently) except Rotate's nearest-neighbour sampling (about 0.1% of values), and "
        "a following threshold or rescaling (Solarize, Posterize, AutoContrast, Equalize) can turn one level into "
        "many", "the share of pixel values that differ, in the row: the same augmentation distribution up to "
        "these rounding cases", ""),
    r"augmentation .*Tiny": Known(
        "their Tiny-ImageNet script defaults to --aug ra (AT-BSL-RA); the preset targets Cho et al., ICLR 2025, Table 3's plain "
        "AT-BSL", "not measured (a different augmentation, not a different computation)",
        "data.augment=randaugment"),
    r"^initial weights.*WideResNet": Known(
        "their WideResNet builds an unused sub_block1 between block1 and block2, whose initialisation draws "
        "from the RNG, so the same seed gives other values; the distribution is the same (Kaiming-normal fan-out "
        "convolutions, BN 1 / 0, zero bias)", "none on the model's function or its training", ""),
    r"accuracy as each code counts it": Known(
        "their eval.py counts an image robust when its attacked image is classified correctly, also when its clean "
        "image is not (err_pgd counts every test image); ltrobust counts an image robust only when its clean image "
        "is correct and the attack fails (AutoAttack's and RobustBench's rule), so their count can only be higher",
        "the row's counts on the checkpoint (the images wrong on the clean image but right after the attack)", ""),
    r"attack iterates|adversarial examples|logits on the AEs|^loss|^gradients|^weights after|^BatchNorm buffers "
    r"after|AEs, same start|correct, same start": Known(
        "float32 rounding, amplified by PGD's sign step: ltrobust keeps delta = x_adv - x, their loop keeps x_adv, "
        "so the iterates differ in the last bit, a gradient component near zero changes sign and that pixel moves "
        "by two step sizes; the preset's channels_last memory format also makes the convolutions round "
        "differently. The float64 rows of the same computation are equal at every step",
        "in float32 the two runs part from step 1 on (the row's figures), as two float32 runs with non-deterministic "
        "GPU kernels do; none in float64", "train.channels_last=false rounds as their contiguous tensors do "
        "(fewer flipped pixels, not none)", where="fp32"),
}


# ------------------------------------------------------------------------------------- their pieces
def _their_args(ctx: Context, script: str = TRAIN_SCRIPT, argv: Iterable[str] = ("--arch", "res", "--aug", "none")):
    return ctx.checkout.args(script, list(argv))


def _integrity_off():
    """torchvision's md5 checks of the CIFAR files (the files here are not the official bytes)."""
    import contextlib

    import torchvision.datasets.cifar as tv_cifar

    stack = contextlib.ExitStack()
    stack.enter_context(patched(tv_cifar.CIFAR10, "_check_integrity", lambda self: True))
    stack.enter_context(patched(tv_cifar, "check_integrity", lambda *a, **k: True))
    return stack


def _cifar_files(ctx: Context, num_classes: int, order_seed: int = 0) -> Path:
    """Official-format CIFAR files under the scratch folder (real CIFAR-10 images with ``--images``)."""
    key = f"cifar{num_classes}-{order_seed}"
    if key in ctx.cache:
        return ctx.cache[key]
    per_class = 50000 // num_classes
    if num_classes == 10 and ctx.options.images:
        (x, y), test = ours.real_cifar10(ctx.options.images)
        if order_seed:  # another interleaving of the same images (the within-class order kept)
            y_new = ours.interleaved_labels(10, per_class, order_seed)
            x_new = np.empty_like(x)
            for c in range(10):
                x_new[y_new == c] = x[y == c]
            x, y = x_new, y_new
    else:
        y = ours.interleaved_labels(num_classes, per_class, order_seed)
        x = ours.synthetic_images(len(y), 32, seed=num_classes)
        if order_seed:
            base_y = ours.interleaved_labels(num_classes, per_class, 0)
            x_new = np.empty_like(x)
            for c in range(num_classes):
                x_new[y == c] = x[base_y == c]
            x = x_new
        yt = np.repeat(np.arange(num_classes), 10000 // num_classes)
        test = (ours.synthetic_images(len(yt), 32, seed=1000 + num_classes), yt)
    root = ctx.scratch / key
    ours.write_cifar(root, num_classes, (x, y), test)
    ctx.cache[key] = root
    return root


def _their_cifar(ctx: Context, num_classes: int, root: Path, ratio: float | None, train: bool = True):
    """Their ``build_datasets`` as their script calls it (the test split without an imbalance ratio)."""
    builder = ctx.checkout.module("datasets.builder")
    kw = {"imbalance_ratio": ratio} if train else {}
    with _integrity_off(), quiet():
        return builder.build_datasets(name=f"CIFAR{num_classes}", mode="train" if train else "test",
                                      num_classes=num_classes, root=str(root), transform=None, **kw)


def _our_data(ctx: Context, num_classes: int, root: Path, imbalance: float, *extra: str):
    from ltrobust.data import build_data

    cfg = ours.preset(PRESET, f"data_dir={root}", f"imbalance={imbalance:g}", *extra,
                      *(() if num_classes == 10 else ("dataset=cifar100-lt",)))
    return cfg, build_data(cfg.data)


def _tiny_npz(ctx: Context) -> tuple[Path, np.ndarray]:
    """Their Tiny-ImageNet repack layout (``train.npz`` / ``val.npz`` with ``image`` and ``label``), with 1x1
    images that carry their own index (the subset rule reads only the labels)."""
    if "tiny" in ctx.cache:
        return ctx.cache["tiny"]
    root = ctx.scratch / "tiny"
    root.mkdir(exist_ok=True)
    labels = ours.interleaved_labels(200, 500, 7)
    idx = np.arange(len(labels))
    tags = np.stack([idx % 256, (idx // 256) % 256, idx // 65536], axis=1).astype(np.uint8)[:, None, None, :]
    np.savez(root / "train.npz", image=tags, label=labels)
    yv = np.repeat(np.arange(200), 50)
    np.savez(root / "val.npz", image=np.zeros((len(yv), 1, 1, 3), np.uint8), label=yv)
    ctx.cache["tiny"] = (root, labels)
    return root, labels


def _tiny_module(ctx: Context):
    """Their Tiny-ImageNet module and a factory of contexts that switch its md5 check off."""
    mod = ctx.checkout.module("datasets.tiny_imagenet")
    return mod, lambda: patched(mod, "check_integrity", lambda *a, **k: True)


# ============================================================================================ data
def check_data(ctx: Context) -> Iterator[Row]:
    from ltrobust.data.profiles import class_counts, select_lt_indices

    for num_classes, irs, script_ratio in ((10, CIFAR10_IRS, 0.02), (100, CIFAR100_IRS, 0.1)):
        name = f"CIFAR-{num_classes}-LT"
        root = _cifar_files(ctx, num_classes)
        for ir in irs:
            ratio = script_ratio if abs(1 / ir - script_ratio) < 1e-12 else 1 / ir
            theirs, spc = _their_cifar(ctx, num_classes, root, ratio)
            _, data = _our_data(ctx, num_classes, root, ir)
            setting = f"{name} IR {ir}"
            yield compare_exact("data", "per-class counts", spc, data.class_counts, setting,
                                detail=f"imbalance_ratio={ratio!r} (theirs, n_min / n_max) vs imbalance={ir} "
                                       f"(ours, n_max / n_min); total {sum(spc)}")
            ours_imgs = data.train.images.permute(0, 2, 3, 1).contiguous()
            yield compare_tensor("data", "selected training images, in order", torch.from_numpy(theirs.data),
                                 ours_imgs, setting, detail=f"{len(theirs.data)} images, uint8, exact")
            yield compare_exact("data", "training labels, in order", list(theirs.targets),
                                data.train.labels.tolist(), setting)
        test, _ = _their_cifar(ctx, num_classes, root, None, train=False)
        _, data = _our_data(ctx, num_classes, root, irs[0])
        yield compare_tensor("data", "test images, in order", torch.from_numpy(test.data),
                             data.test.images.permute(0, 2, 3, 1).contiguous(), name, detail="full test split")
    # the rule reads each class's order in the file, not how the classes interleave (checked on two orders)
    root2 = _cifar_files(ctx, 10, order_seed=3)
    _, a = _our_data(ctx, 10, _cifar_files(ctx, 10), 50)
    _, b = _our_data(ctx, 10, root2, 50)
    theirs2, _ = _their_cifar(ctx, 10, root2, 0.02)
    yield compare_tensor("data", "selection under another interleaving of the classes", a.train.images,
                         b.train.images, "CIFAR-10-LT IR 50", detail="ours on two label orders with the same "
                         "within-class order: the same images, so the official files' interleaving does not matter")
    yield compare_tensor("data", "selected training images, in order", torch.from_numpy(theirs2.data),
                         b.train.images.permute(0, 2, 3, 1).contiguous(), "CIFAR-10-LT IR 50, second label order")
    # Tiny-ImageNet-LT: their repack's loader on an npz of the same layout vs ltrobust's profile and rule
    root, labels = _tiny_npz(ctx)
    mod, no_md5 = _tiny_module(ctx)
    with no_md5(), quiet():
        tiny = mod.TinyImagenet(root=str(root), split="train", download=False, transform=None)
    counts = class_counts("exp", 500, 200, 10)
    yield compare_exact("data", "per-class counts", list(tiny.img_num_list), counts, "Tiny-ImageNet-LT IR 10",
                        detail="theirs: n_max = 100000 / 200 hard-coded, imb_factor 0.1")
    tags = tiny.data.reshape(len(tiny.data), 3).astype(np.int64)
    their_idx = tags[:, 0] + 256 * tags[:, 1] + 65536 * tags[:, 2]
    yield compare_exact("data", "selected training indices, in order", their_idx,
                        select_lt_indices(labels, counts, 0), "Tiny-ImageNet-LT IR 10",
                        detail="ltrobust's select_lt_indices on the same label array; ltrobust reads the "
                               "tiny-imagenet-200 folders, their code a third-party .npz repack whose file order "
                               "was not available to compare")
    ctx.note("Tiny-ImageNet: the subset rule is compared on a label array in their npz layout; whether their "
             "repack lists each class's images in the order of tiny-imagenet-200's files is not known here "
             "(data.indices_file reproduces any published split exactly).")
    yield from _transforms(ctx)
    yield from _normalisation_and_validation(ctx)


def _pad4(padding: Any) -> list[int]:
    """torchvision's padding (an int, (lr, tb) or (l, t, r, b)) as (l, t, r, b)."""
    p = [padding] if isinstance(padding, int) else list(padding)
    return p * 4 if len(p) == 1 else (p * 2 if len(p) == 2 else p)


def _describe(transform: Any) -> list[Any]:
    """A torchvision Compose (v1 or v2 classes) as (name, settings) pairs."""
    out = []
    for t in transform.transforms:
        n = type(t).__name__
        if n == "AutoAugment":
            out.append([n, str(t.policy)])
        elif n == "RandAugment":
            out.append([n, t.num_ops, t.magnitude])
        elif n == "RandomCrop":
            size = [t.size, t.size] if isinstance(t.size, int) else list(t.size)
            out.append([n, size, _pad4(t.padding), t.fill, t.padding_mode])
        elif n == "RandomHorizontalFlip":
            out.append([n, t.p])
        else:
            out.append([n])
    return out


def _our_pipeline(augment: str, size: int) -> tuple[list[Any], Any]:
    """ltrobust's training augmentation for ``augment`` as (name, settings) pairs, read off the real loader."""
    from ltrobust.data import DeviceLoader, get_spec
    from ltrobust.data.splits import ArraySplit

    spec = get_spec("cifar10-lt" if size == 32 else "tinyimagenet-lt")
    split = ArraySplit(torch.zeros(2, 3, size, size, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    loader = DeviceLoader(split, 2, shuffle=True, augment=augment, padding=spec.crop_padding, flip=spec.flip)
    desc: list[Any] = []
    if loader._policy is not None:
        desc += _describe(type("C", (), {"transforms": [loader._policy]})())
    # the crop: zero padding, offsets 0..2p per side (random_crop), the flip with probability 0.5 (random_flip)
    desc.append(["RandomCrop", [size, size], [loader.padding] * 4, 0, "constant"])
    if loader.flip and augment != "crop":
        desc.append(["RandomHorizontalFlip", 0.5])
    desc.append(["ToTensor"])
    return desc, loader


def _transforms(ctx: Context) -> Iterator[Row]:
    from PIL import Image

    from ltrobust.data import random_crop, random_flip
    from ltrobust.data.loader import policy_augment

    root = _cifar_files(ctx, 10)
    test, _ = _their_cifar(ctx, 10, root, None, train=False)
    imgs = test.data[:32]  # (32, 32, 32, 3) uint8
    for aug, ours_aug in (("none", "crop_flip"), ("aua", "autoaugment"), ("ra", "randaugment")):
        ns = ctx.checkout.definitions(TRAIN_SCRIPT, ["transform_aug", "transform_train", "transform_test"],
                                      {"args": _their_args(ctx, TRAIN_SCRIPT, ["--aug", aug])})
        theirs_desc = _describe(ns["transform_train"])
        ours_desc, loader = _our_pipeline(ours_aug, 32)
        yield compare_exact("data", f"augmentation pipeline (--aug {aug})", theirs_desc, ours_desc, "CIFAR",
                            detail=f"ltrobust data.augment={ours_aug}")
        if aug == "none":
            # the crop and flip: every crop of theirs is one ltrobust's random_crop / random_flip can draw
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
            found = 0
            for i, img in enumerate(imgs):
                torch.manual_seed(i)
                t = ns["transform_train"](Image.fromarray(img))  # float (3, 32, 32)
                t8 = (t * 255).round().to(torch.uint8)
                hit = False
                for dy, dx, fl in itertools.product(range(9), range(9), (False, True)):
                    cand = random_flip(random_crop(x[i:i + 1], 4, torch.tensor([[dy, dx]])), torch.tensor([fl]))[0]
                    if torch.equal(cand, t8):
                        hit = True
                        break
                found += hit
            yield compare_exact("data", "random crop and flip: their outputs among ours", len(imgs), found, "CIFAR",
                                detail=f"{found} of {len(imgs)} of their crops (zero padding 4, flip) are crops "
                                       "ltrobust's random_crop / random_flip produce")
            # the conversion to float: their ToTensor vs ltrobust's loader
            theirs_t = torch.stack([ns["transform_test"](Image.fromarray(img)) for img in imgs])
            ours_t = ours.batches(_split_of(imgs), len(imgs), 1)[0][0]
            yield compare_tensor("data", "uint8 -> float conversion", theirs_t, ours_t, "CIFAR",
                                 detail="their ToTensor (PIL) vs ltrobust's loader (x / 255)")
        else:
            policy = ns["transform_aug"][0]
            diffs, n_px = [], 0
            for i, img in enumerate(imgs):
                torch.manual_seed(100 + i)
                t = torch.from_numpy(np.array(policy(Image.fromarray(img)))).permute(2, 0, 1)
                o = policy_augment(torch.from_numpy(img).permute(2, 0, 1)[None], loader._policy, 100 + i)[0]
                d = (t.int() - o.int()).abs()
                diffs.append(int(d.max()))
                n_px += int((d > 0).sum())
            name = "AutoAugment" if aug == "aua" else "RandAugment"
            row = compare_exact("data", f"{name} pixels, same draws", [0] * len(imgs), diffs, "CIFAR",
                                detail=f"max |theirs - ours| per image in grey levels over {len(imgs)} images; "
                                       f"{n_px} of {imgs.size} pixel values differ")
            row.max_abs = float(max(diffs))
            yield row
    # Tiny-ImageNet: their load_tinyimagenet's transforms (default --aug ra) vs the preset
    args = _their_args(ctx, TINY_SCRIPT, [])
    root_t, _ = _tiny_npz(ctx)
    mod, no_md5 = _tiny_module(ctx)
    with no_md5(), quiet():
        tr, te, spc = mod.load_tinyimagenet(data_dir=str(root_t), aug=args.aug, batch_size=args.batch_size,
                                            test_batch_size=args.test_batch_size)
    cfg = ours.preset(TINY)
    yield compare_exact("data", f"augmentation pipeline (their default --aug {args.aug}), Tiny",
                        _describe(tr.dataset.transform), _our_pipeline(cfg.data.augment, 64)[0], "Tiny-ImageNet-LT",
                        detail=f"preset data.augment={cfg.data.augment}")
    with no_md5(), quiet():
        tr, _, _ = mod.load_tinyimagenet(data_dir=str(root_t), aug="ra", batch_size=128, test_batch_size=128)
    yield compare_exact("data", "augmentation pipeline (--aug ra), Tiny-ImageNet option",
                        _describe(tr.dataset.transform), _our_pipeline("randaugment", 64)[0], "Tiny-ImageNet-LT",
                        detail="data.augment=randaugment")


def _split_of(imgs: np.ndarray):
    """uint8 (N, H, W, C) images as an ltrobust split (labels 0)."""
    from ltrobust.data.splits import ArraySplit

    return ArraySplit(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.zeros(len(imgs), dtype=torch.long))


def _first_conv_input(model: torch.nn.Module, conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What reaches the network's first convolution when ``model`` reads ``x``."""
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return seen[0]


def _normalisation_and_validation(ctx: Context) -> Iterator[Row]:
    from ltrobust.models import build_model

    ns = ctx.checkout.definitions(TRAIN_SCRIPT, ["transform_aug", "transform_train", "transform_test"],
                                  {"args": _their_args(ctx)})
    transforms = ns["transform_train"].transforms + ns["transform_test"].transforms
    in_loader = any("Normalize" in type(t).__name__ for t in transforms)
    for preset, arch, size, classes in ((PRESET, "resnet18", 32, 10), (TINY, "preact_resnet18", 64, 200)):
        cfg = ours.preset(preset)
        x = torch.rand(2, 3, size, size)
        theirs = _their_model(ctx, arch)
        mine = build_model(cfg.model, classes, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), size)
        t_first = _first_conv_input(theirs, theirs.conv1, x)
        o_first = _first_conv_input(mine, mine.backbone.conv1, x)

        def where(first: torch.Tensor) -> str:
            return "none" if torch.equal(first, x) else "in the model"

        yield compare_exact("data", "input normalisation", "in the loader" if in_loader else where(t_first),
                            where(o_first), preset,
                            detail=f"what reaches the first convolution; model.normalize={cfg.model.normalize}")
    # validation: read off their main(): which loader the per-epoch evaluation gets, and from which epoch
    main = ctx.checkout.source_facts(TRAIN_SCRIPT, "main")
    calls = [n for n in ast.walk(main)
             if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "eval_adv_test_whitebox"]
    loader = calls[0].args[2].id if calls and len(calls[0].args) > 2 else "?"
    theirs_rule = f"none: {loader} from epoch {_epoch_threshold(main)}" if loader == "test_loader" else loader
    _, data = _our_data(ctx, 10, _cifar_files(ctx, 10), 50)
    man = data.manifest
    yield compare_exact("data", "validation split", theirs_rule,
                        f"{man['val_per_class']} per class from {man['val_from']} training images", PRESET,
                        detail="what the per-epoch evaluation that picks the checkpoint reads")


def _epoch_threshold(main: ast.AST) -> Any:
    """The constant of ``if epoch >= N`` in their ``main()`` (the first epoch evaluated on the test set)."""
    return next((n.comparators[0].value for n in ast.walk(main) if isinstance(n, ast.Compare)
                 and isinstance(n.left, ast.Name) and n.left.id == "epoch"
                 and isinstance(n.comparators[0], ast.Constant)), None)


# ========================================================================================= schedule
def check_schedule(ctx: Context) -> Iterator[Row]:
    for preset, script in ((PRESET, TRAIN_SCRIPT), (TINY, TINY_SCRIPT)):
        args = _their_args(ctx, script, [] if script == TINY_SCRIPT else ["--arch", "res", "--aug", "none"])
        defs = ctx.checkout.definitions(script, ["adjust_learning_rate"], {"args": args}, skip_imports=("datasets",))
        dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
        their_lr = []
        for epoch in range(1, args.epochs + 1):  # their main(): range(1, epochs + 1)
            defs["adjust_learning_rate"](dummy, epoch)
            their_lr.append(dummy.param_groups[0]["lr"])
        cfg, data = _schedule_data(ctx, preset)
        tr = ours.trainer(cfg, data, ctx.scratch / f"run-{preset}")
        our_lr = [tr.lr(e) for e in range(cfg.train.epochs)]
        yield compare_exact("schedule", "epochs", args.epochs, cfg.train.epochs, preset)
        row = compare_tensor("schedule", "learning rate at every epoch", torch.tensor(their_lr, dtype=torch.float64),
                             torch.tensor(our_lr, dtype=torch.float64), preset,
                             detail=f"theirs adjust_learning_rate(epoch) for epoch 1..{args.epochs}, ours lr at "
                                    f"epoch 0..{cfg.train.epochs - 1}; distinct values theirs "
                                    f"{sorted(set(their_lr), reverse=True)}")
        yield row
        yield compare_exact("schedule", "learning rate within an epoch", "constant", "constant" if all(
            tr.lr(e, s, 10) == tr.lr(e) for e in range(cfg.train.epochs) for s in range(10)) else "varies", preset)
        model = _their_model(ctx, "preact_resnet18" if preset == TINY else "resnet18")
        opt = ctx.checkout.statement(script, "optimizer", {"optim": torch.optim, "model": model, "args": args},
                                     function="main")
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
        their_len, their_bs, their_drop = _their_loader(ctx, preset, args)
        yield compare_exact("schedule", "batch size, steps per epoch, last batch dropped",
                            [their_bs, their_len, their_drop], [cfg.train.batch_size, len(tr.loader),
                                                                bool(tr.loader.drop_last)], preset,
                            detail=f"{len(data.train.labels)} training images")
        yield compare_exact("schedule", "attack eps, step, steps as written",
                            [args.epsilon, args.step_size, args.num_steps],
                            [cfg.attack.eps, cfg.attack.step_size, cfg.attack.steps], preset,
                            detail="their parser's defaults 8./255., 2./255., 10 (pgd_loss's own defaults 0.031 / "
                                   "0.003 are overridden by train(), see the step rows)")
        yield compare_exact("schedule", "precision", _their_precision(ctx, script),
                            "fp32" if tr.amp_dtype is None else str(tr.amp_dtype).replace("torch.", ""), preset,
                            detail=f"train.precision={cfg.train.precision}")
        yield compare_exact("schedule", "seed", args.seed, cfg.train.seed, preset,
                            detail="torch.manual_seed before the model is built (the initial weights: step rows)")


def _their_precision(ctx: Context, script: str) -> str:
    """``fp32`` unless their training script or loss uses autocast / half precision."""
    text = " ".join((ctx.checkout.file(script).read_text(), ctx.checkout.file("at_bsl_loss.py").read_text()))
    return "mixed" if any(k in text for k in ("autocast", "GradScaler", ".half()", "bfloat16")) else "fp32"


def _their_loader(ctx: Context, preset: str, args: Any) -> tuple[int, int, bool]:
    if preset == TINY:
        root, _ = _tiny_npz(ctx)
        mod, no_md5 = _tiny_module(ctx)
        with no_md5(), quiet():
            tr, _, _ = mod.load_tinyimagenet(data_dir=str(root), aug="none", batch_size=args.batch_size,
                                             test_batch_size=args.test_batch_size)
        return len(tr), tr.batch_size, bool(tr.drop_last)
    trainset, _ = _their_cifar(ctx, 10, _cifar_files(ctx, 10), 0.02)
    bl = ctx.checkout.module("datasets.loader.build_loader")
    loader = bl.build_dataloader(trainset, imgs_per_gpu=args.batch_size, dist=False, shuffle=True)
    return len(loader), loader.batch_size, bool(loader.drop_last)


def _schedule_data(ctx: Context, preset: str, *overrides: str):
    """The preset's config and data for the schedule and step levels (CIFAR from files; Tiny with its counts)."""
    from ltrobust.data.profiles import class_counts

    if preset == TINY:
        cfg = ours.preset(TINY, *overrides)
        counts = class_counts("exp", 500, 200, 10)
        n = sum(counts)
        labels = torch.from_numpy(np.repeat(np.arange(200), counts))
        # the trainer reads the counts and the input spec; the step's batches come from _step_data, so the
        # 39,072 images are one blank image repeated (a view, no memory)
        images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8).expand(n, 3, 64, 64)
        from ltrobust.data import get_spec

        spec = get_spec("tinyimagenet-lt")
        return cfg, ours.lt_data(images, labels, counts, cfg, spec.mean, spec.std)
    return _our_data(ctx, 10, _cifar_files(ctx, 10), 50, *overrides)


# ============================================================================================= step
class _Batches:
    """What their ``train()`` iterates: given batches, with a ``dataset`` for its progress print."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> None:
        self.batches, self.dataset = batches, range(n)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _dtypes(ctx: Context) -> list[torch.dtype]:
    return [torch.float32] + ([torch.float64] if ctx.options.fp64 else [])


def check_step(ctx: Context) -> Iterator[Row]:
    yield from _models(ctx)
    for preset in (PRESET, TINY):
        for dtype in _dtypes(ctx):
            yield from _steps(ctx, preset, dtype)
    # the preset in fp32 with the contiguous memory format their tensors have (channels_last rounds differently)
    yield from _steps(ctx, PRESET, torch.float32, "train.channels_last=false")


THEIR_CLASS = {"resnet18": "ResNet18", "wrn34_10": "WideResNet", "preact_resnet18": "ti_preact_resnet"}


def _their_model(ctx: Context, arch: str, seed: int | None = None) -> torch.nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    if arch == "resnet18":
        return ctx.checkout.module("models.resnet").ResNet18(num_classes=10)
    if arch == "wrn34_10":
        return ctx.checkout.module("models.wideresnet").WideResNet(num_classes=10)
    return ctx.checkout.module("models.ti_preact_resnet").ti_preact_resnet("preact-resnet18")


def _mapping(arch: str, theirs: torch.nn.Module, mine: torch.nn.Module) -> tuple[dict[str, str], str]:
    """Their key -> our key, checked (:func:`~.core.map_state`), and a sentence saying what was mapped."""
    m = map_state(theirs.state_dict(), mine.state_dict(), KEYMAPS[arch])
    unused = sorted({k.split(".")[0] for k in theirs.state_dict() if k not in m})
    return m, f"{len(m)} tensors mapped" + (f"; unused: {', '.join(unused)}" if unused else "")


def _models(ctx: Context) -> Iterator[Row]:
    """Their model classes against ltrobust's with mapped weights: key map, logits, input gradients, train-mode
    BatchNorm, and the initial weights of the same seed."""
    from ltrobust.models import build_model

    seed = ours.preset(PRESET).train.seed
    for arch, preset, classes, size, n in (("resnet18", PRESET, 10, 32, 8), ("wrn34_10", PRESET, 10, 32, 2),
                                           ("preact_resnet18", TINY, 200, 64, 4)):
        cfg = ours.preset(preset, f"model={arch}")
        setting = f"{arch} vs their {THEIR_CLASS[arch]}"
        theirs = _their_model(ctx, arch, seed)
        torch.manual_seed(seed)  # as the trainer does before building the model
        mine = build_model(cfg.model, classes, 3, (0.5,) * 3, (0.25,) * 3, size)
        try:
            m, text = _mapping(arch, theirs, mine)
        except ParityError as exc:
            yield Row("step", "model: key mapping", "differs", setting, detail=str(exc))
            continue
        yield Row("step", "model: key mapping", "equal", setting,
                  detail=f"{text}; every key of ours hit, shapes equal, our normalisation the identity")
        ts, ms = theirs.state_dict(), mine.state_dict()
        yield compare_tensors("step", f"initial weights, same seed ({THEIR_CLASS[arch]})", mapped(ts, m),
                              {o: ms[o] for o in m.values()}, setting,
                              detail=f"torch.manual_seed({seed}) before each model is built")
        x = torch.from_numpy(ours.synthetic_images(n, size, seed=11)).permute(0, 3, 1, 2).float() / 255
        y = torch.arange(n) % classes
        for dtype in _dtypes(ctx):
            t_model, o_model = copy.deepcopy(theirs).to(dtype), copy.deepcopy(mine).to(dtype)
            load_mapped(o_model, t_model.state_dict(), m)
            yield from model_rows(t_model, o_model, x, y, dtype, setting)
            bn = {k: o for k, o in m.items() if "running" in k or "num_batches" in k}
            yield compare_tensors("step", "model: BatchNorm buffers after a train-mode forward",
                                  mapped(t_model.state_dict(), bn), {o: o_model.state_dict()[o] for o in bn.values()},
                                  setting)
            if arch == "wrn34_10" and dtype == torch.float32:
                t_model.zero_grad()
                F.cross_entropy(t_model(x), y).backward()
                sub = [p.grad for k, p in t_model.named_parameters() if k.startswith("sub_block1.")]
                yield compare_exact("step", "model: their sub_block1 receives no gradient", len(sub),
                                    sum(g is None for g in sub), setting,
                                    detail="parameters under sub_block1, and how many have no gradient after backward")


def _step_data(ctx: Context, preset: str, data: Any, k: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k batches for both codes, through ltrobust's loader: a seeded sample of the LT training set (CIFAR), or
    64-px images with labels sampled from the LT training labels (Tiny-ImageNet, whose files are not built)."""
    from ltrobust.data.splits import ArraySplit

    rng = np.random.RandomState(ctx.options.seed)
    perm = torch.from_numpy(rng.permutation(len(data.train.labels))[: k * batch])
    if preset == TINY:
        images = torch.from_numpy(ours.synthetic_images(k * batch, 64, seed=5)).permute(0, 3, 1, 2).contiguous()
        split = ArraySplit(images, data.train.labels[perm].clone())
    else:
        split = data.train.subset(perm)
    return ours.batches(split, batch, k)


def _steps(ctx: Context, preset: str, dtype: torch.dtype, *overrides: str) -> Iterator[Row]:
    """k optimiser steps of their train() and of ltrobust's Trainer.train_step from the same weights, on the
    same batches, with the same RNG seed before each step (``overrides``: ltrobust settings of a variant)."""
    k, tiny = ctx.options.steps, preset == TINY
    batch = ctx.options.batch_size if not tiny else max(2, ctx.options.batch_size // 4)
    name = "fp32" if dtype == torch.float32 else "fp64"
    setting = f"{preset}{''.join(' ' + o for o in overrides)}, {name}, batch {batch}"
    script = TINY_SCRIPT if tiny else TRAIN_SCRIPT
    args = _their_args(ctx, script, [] if tiny else ["--arch", "res", "--aug", "none"])
    cfg, data = _schedule_data(ctx, preset, *overrides)
    batches = [(x.to(dtype), y) for x, y in _step_data(ctx, preset, data, k, batch)]
    seeds = [1000 + i for i in range(k)]
    their_counts = _their_counts(ctx, preset)
    arch = "preact_resnet18" if tiny else "resnet18"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # their torch.randn(shape) and ltrobust's start draw in this dtype
    try:
        # ltrobust: the real trainer (the model from the preset, its optimiser, method and schedule)
        tr = ours.trainer(cfg, data, ctx.scratch / f"step-{preset}-{name}-{len(overrides)}")
        tr.model.to(dtype)
        theirs = _their_model(ctx, arch, args.seed).to(dtype)
        m, _ = _mapping(arch, theirs, tr.model)
        load_mapped(tr.model, theirs.state_dict(), m)
        # theirs: train() of their script with their pgd_loss (observed), the optimiser line of main()
        loss_mod = ctx.checkout.module("at_bsl_loss")
        losses, passed = [], []

        def observed_pgd_loss(**kw: Any) -> torch.Tensor:
            passed.append([kw.get("epsilon"), kw.get("step_size"), kw.get("perturb_steps")])
            out = loss_mod.pgd_loss(**kw)
            losses.append(out.detach().clone())
            return out

        defs = ctx.checkout.definitions(script, ["train", "adjust_learning_rate"],
                                        {"args": args, "samples_per_cls": their_counts,
                                         "pgd_loss": call_with_seed(observed_pgd_loss, iter(seeds))},
                                        skip_imports=("datasets",))
        opt = ctx.checkout.statement(script, "optimizer", {"optim": torch.optim, "model": theirs, "args": args},
                                     function="main")
        defs["adjust_learning_rate"](opt, 1)  # main(): epoch 1 first
        snaps = after_each_step(opt, theirs)
        rec = Recorder(theirs)
        with quiet():
            defs["train"](args, rec, "cpu", _Batches(batches, len(data.train.labels)), opt, 1)
        their_steps = split_calls(rec, cfg.attack.steps, losses, snaps)
        # ltrobust: start_epoch, then train_step on each batch after the same seed
        our_steps = ours_steps(tr, batches, seeds)
    finally:
        torch.set_default_dtype(default)
    if dtype == torch.float32 and not tiny and not overrides:
        ctx.cache["trained"] = {key: v.clone() for key, v in theirs.state_dict().items()}
    yield compare_exact("step", "attack settings their train() passes to pgd_loss", passed[0],
                        [cfg.attack.eps, cfg.attack.step_size, cfg.attack.steps], setting,
                        detail="epsilon, step_size, perturb_steps")
    yield from compare_steps(their_steps, our_steps, m, batches, setting,
                             start="x + 0.001 N(0, I): their torch.randn and ltrobust's random_start=normal, same seed")


def _their_counts(ctx: Context, preset: str) -> list[int]:
    if preset == TINY:
        mod, no_md5 = _tiny_module(ctx)
        root, _ = _tiny_npz(ctx)
        with no_md5(), quiet():
            return list(mod.TinyImagenet(root=str(root), split="train").img_num_list)
    return list(_their_cifar(ctx, 10, _cifar_files(ctx, 10), 0.02)[1])


# ============================================================================================= eval
#: their eval.py attack name (and logit scale alpha) -> ltrobust's attack of the same definition
EVAL_ATTACKS = (("FGSM", "FGSM", 1.0, "fgsm"), ("PGD-20", "PGD", 1.0, "pgd20"), ("CW-20", "CW", 1.0, "cw20"),
                ("LSA", "PGD", 10.0, "adaptive20"))


def _checkpoint(ctx: Context) -> tuple[dict[str, torch.Tensor], str]:
    """The fixed checkpoint of the evaluation level in their state-dict format, and a sentence naming it:
    ``--checkpoint`` (their format, or an ltrobust checkpoint mapped to theirs), else their model after the
    step level, else their model at initialisation."""
    import hashlib

    from ltrobust import io
    from ltrobust.models import build_model

    path = ctx.options.checkpoint
    if path:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        state = io.load_checkpoint(path, map_location="cpu")
        state = state.get("state_dict", state)
        if isinstance(state.get("model"), dict):  # an ltrobust checkpoint: map our keys to theirs
            mine = state["model"]
            if not (torch.all(mine["normalize.mean"] == 0) and torch.all(mine["normalize.std"] == 1)):
                raise ParityError(f"{path} normalises its inputs inside the model; their ResNet18 has no "
                                  "normalisation: use a checkpoint trained with model.normalize=false.")
            theirs = _their_model(ctx, "resnet18")
            model = build_model(ours.preset(PRESET).model, 10, 3, None, None, 32)
            m, _ = _mapping("resnet18", theirs, model)
            state = {t: mine[o] for t, o in m.items()}
        return state, f"{path} (sha256 {digest}...)"
    if "trained" in ctx.cache:
        return ctx.cache["trained"], f"their ResNet18 after the step level's {ctx.options.steps} steps (fp32)"
    model = _their_model(ctx, "resnet18", ours.preset(PRESET).train.seed)
    return model.state_dict(), "their ResNet18 at initialisation (pass --checkpoint for a trained one)"


def check_eval(ctx: Context) -> Iterator[Row]:
    from ltrobust.attacks import parse_attack, pgd, threat_model
    from ltrobust.evaluation.evaluator import balanced_subset
    from ltrobust.evaluation.runs import load_run

    state, which = _checkpoint(ctx)
    ctx.note(f"evaluation checkpoint: {which}")
    root = _cifar_files(ctx, 10)
    cfg, data = _our_data(ctx, 10, root, 50)
    n = ctx.options.eval_images
    # a balanced sample of the test split (ltrobust's evaluation sample), the same images for both codes
    x, y = ours.batches(data.test.subset(balanced_subset(data.test.labels, n, seed=ctx.options.seed)), n, 1)[0]
    # theirs: eval.py's model lines (ResNet18, load_state_dict, eval)
    theirs = _their_model(ctx, "resnet18")
    theirs.load_state_dict(state)
    theirs.eval()
    # ours: the weights through ltrobust's checkpoint writer and reader (what `ltrobust eval` loads)
    tr = ours.trainer(cfg, data, ctx.scratch / "eval-run")
    m, _ = _mapping("resnet18", theirs, tr.model)
    load_mapped(tr.model, state, m)
    ckpt = tr.folder.checkpoint("best")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tr.save_weights(ckpt, 0, None)
    run = load_run(ckpt, [f"data_dir={root}"])
    deployed = run.deployed.eval()
    setting = f"{PRESET}, {n} test images"
    yield _checkpoint_choice(ctx, run.cfg)
    ev = ctx.checkout.definitions("eval.py", ["cwloss", "_pgd_whitebox", "eval_adv_test_whitebox",
                                              "evaluate_attack"], {"num_classes": 10})
    for dtype in _dtypes(ctx):
        # float64 on the first 16 images, FGSM and PGD-20 only (CW-20 and LSA run the same loop): CPU time
        name, count = ("fp32", n) if dtype == torch.float32 else ("fp64", min(16, n))
        attacks = EVAL_ATTACKS if dtype == torch.float32 else EVAL_ATTACKS[:2]
        where = f"{PRESET}, {count} test images, {name}"
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            t_model, o_model = copy.deepcopy(theirs).to(dtype).eval(), copy.deepcopy(deployed).to(dtype).eval()
            pick = torch.arange(0, n, max(1, n // count))[:count]  # spread over the (class-sorted) sample
            xd, yd = x[pick].to(dtype), y[pick]
            xt, xo = xd.clone().requires_grad_(True), xd.clone().requires_grad_(True)
            zt, zo = t_model(xt), o_model(xo)
            yield compare_tensor("eval", "served logits", zt, zo, where,
                                 detail="their ResNet18 + load_state_dict vs ltrobust's load_run(...).deployed")
            gt, = torch.autograd.grad(F.cross_entropy(zt, yd, reduction="sum"), xt)
            go, = torch.autograd.grad(F.cross_entropy(zo, yd, reduction="sum"), xo)
            yield compare_tensor("eval", "input gradients", gt, go, where)
            for label, method, alpha, our_name in attacks:
                rec = Recorder(t_model)
                torch.manual_seed(ctx.options.seed)
                ev["_pgd_whitebox"](rec, xd.clone(), yd, "cpu", alpha, method)
                start = rec.calls[0][1] - xd  # their first attack forward is at x + their start
                their_adv, their_pred = rec.calls[-1][1], rec.calls[-1][2].argmax(1)
                spec = parse_attack(our_name, eps=run.cfg.eval.eps, step_size=run.cfg.eval.step_size)
                our_adv = pgd(o_model, xd, yd, threat_model(spec.norm, spec.eps), steps=spec.steps,
                              step_size=spec.step_size, objective=spec.objective, random_start=spec.random_start,
                              momentum=spec.momentum, objective_kwargs=dict(spec.objective_kwargs), start=start)
                with torch.no_grad():
                    our_pred = o_model(our_adv).argmax(1)
                yield compare_tensor("eval", f"{label} AEs, same start", their_adv, our_adv, where,
                                     detail=f"their _pgd_whitebox({method!r}, alpha={alpha:g}) vs ltrobust's "
                                            f"{our_name}, their start injected; {flips(their_adv, our_adv)}")
                yield predictions_agree("eval", f"{label} attacked image correct, same start", their_pred == yd,
                                        our_pred == yd, where)
        finally:
            torch.set_default_dtype(default)
    yield from _suite(ctx, ev, theirs, deployed, x, y, setting)
    yield from _autoattack(ctx, theirs, deployed, x, y)


def _checkpoint_choice(ctx: Context, cfg: Any) -> Row:
    main = ctx.checkout.source_facts(TRAIN_SCRIPT, "main")
    keeps = any(isinstance(n, ast.Compare) and isinstance(n.left, ast.Name) and n.left.id == "rob"
                for n in ast.walk(main))
    theirs = f"best test-set PGD-20 from epoch {_epoch_threshold(main)}" if keeps else "?"
    ours_rule = ("best balanced PGD robustness on the validation split" if cfg.eval.checkpoint == "best"
                 else "last epoch")
    return compare_exact("eval", "checkpoint choice", theirs, f"{ours_rule} (eval.checkpoint={cfg.eval.checkpoint})",
                         PRESET, detail="theirs read off main(); every epoch is saved (epoch{N}.pt)")


def _suite(ctx: Context, ev: dict[str, Any], theirs: torch.nn.Module, deployed: torch.nn.Module, x: torch.Tensor,
           y: torch.Tensor, setting: str) -> Iterator[Row]:
    """Their attacks with their own random starts against ltrobust's evaluation suite (ltrobust.evaluate):
    per-image robustness (clean and adversarial correct) on the same images."""
    import ltrobust

    names = [our for _, _, _, our in EVAL_ATTACKS]
    res = ltrobust.evaluate(deployed, (x, y), attacks=("clean", *names), mode="standalone", seed=ctx.options.seed,
                            progress=False)
    flags = dict(zip(res.samples["names"], res.samples["flags"]))
    clean = Recorder(theirs)
    ev["_pgd_whitebox"](clean, x.clone(), y, "cpu", 1.0, "None")  # their clean evaluation
    t_clean = clean.calls[-1][2].argmax(1) == y
    yield predictions_agree("eval", "clean per-image correctness", t_clean,
                            torch.from_numpy(np.asarray(flags["clean"])), setting)
    for label, method, alpha, our_name in EVAL_ATTACKS:
        rec = Recorder(theirs)
        torch.manual_seed(ctx.options.seed)
        ev["_pgd_whitebox"](rec, x.clone(), y, "cpu", alpha, method)
        t_adv = rec.calls[-1][2].argmax(1) == y
        o_ok = torch.from_numpy(np.asarray(flags[our_name]))
        yield predictions_agree("eval", f"{label} per-image robustness, own random starts", t_clean & t_adv, o_ok,
                                setting, detail=f"robust = clean and attacked image correct; ltrobust.evaluate(..., "
                                                f"attacks=clean,{our_name}, mode=standalone)")
        # the accuracy each code reports: theirs counts every image whose attacked image is classified correctly
        yield compare_exact("eval", f"{label} accuracy as each code counts it", int(t_adv.sum()), int(o_ok.sum()),
                            setting, detail=f"theirs: attacked image correct (eval.py's err count), "
                                            f"{int((t_adv & ~t_clean).sum())} of them wrong on the clean image; "
                                            f"ours: clean and attacked image correct, of {len(y)} images")


def _autoattack(ctx: Context, theirs: torch.nn.Module, deployed: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor) -> Iterator[Row]:
    """Their AutoAttack line (torchattacks) against ltrobust's reference AutoAttack on the same images."""
    import torchattacks
    from pyautoattack import AutoAttack as ReferenceAA

    from ltrobust.attacks.autoattack import _build, autoattack_plan, run_autoattack

    n = min(ctx.options.aa_images, len(y))
    xa, ya = x[:n], y[:n]
    rec = Recorder(theirs, keep=1)
    with patched(torchattacks.AutoAttack, "get_seed", lambda self: ctx.options.seed):  # their call seeds with the clock
        atk = ctx.checkout.statement("eval.py", "atk", {"torchattacks": torchattacks, "model": rec, "num_classes": 10})
        theirs_desc = [_describe_attack(a) for a in atk._autoattack.attacks]
        ev = ctx.checkout.definitions("eval.py", ["evaluate_attack"])
        with quiet():
            ev["evaluate_attack"](rec, _Batches([(xa, ya)], n), atk, "autoattack")
    t_adv_pred = rec.calls[-1][2].argmax(1)  # their last forward: model(X_adv) under no_grad
    with torch.no_grad():
        t_ok = (theirs(xa).argmax(1) == ya) & (t_adv_pred == ya)
    plan = autoattack_plan(10, "standard")
    ref = _build(ReferenceAA, deployed, 8 / 255, "Linf", "standard", plan, ctx.options.seed, torch.device("cpu"))
    ours_desc = [["APGD", ref.apgd.n_iter, ref.apgd.n_restarts, "ce"],
                 ["APGDT", ref.apgd_targeted.n_iter, ref.apgd_targeted.n_target_classes],
                 ["FAB", ref.fab.n_iter, ref.fab.n_target_classes, "targeted"],
                 ["Square", ref.square.n_queries]]
    yield compare_exact("eval", "AutoAttack settings", theirs_desc, ours_desc, PRESET,
                        detail="per attack: iterations (restarts, loss) / target classes / queries; theirs "
                               "torchattacks AutoAttack(version='standard', n_classes=10), ours the reference "
                               "AutoAttack (pyautoattack)")
    _, o_ok = run_autoattack(deployed, xa, ya, eps=8 / 255, version="standard", seed=ctx.options.seed)
    yield predictions_agree("eval", "AutoAttack per-image robustness", t_ok, o_ok, f"{PRESET}, {n} test images",
                            detail="clean and AutoAttack correct")


def _describe_attack(a: Any) -> list[Any]:
    n = type(a).__name__
    if n == "APGD":
        return [n, a.steps, a.n_restarts, a.loss]
    if n == "APGDT":
        return [n, a.steps, a.n_target_classes]
    if n == "FAB":
        return [n, a.steps, a.n_target_classes, "targeted" if a.multi_targeted else "untargeted"]
    if n == "Square":
        return [n, a.n_queries]
    return [n]


SPEC = MethodSpec(
    name="at-bsl",
    repository="NISPLab/AT-BSL",
    checkout="AT-BSL",
    commit="23f433e8eeec463f1ec40188966a64d240c33443",
    files=("at_bsl_loss.py", "pgd_attack.py", "train_at_bsl_cifar10.py", "train_at_bsl_tiny_imagenet.py", "eval.py",
           "datasets/builder.py", "datasets/datasets.py", "datasets/tiny_imagenet.py",
           "datasets/loader/build_loader.py", "models/resnet.py", "models/wideresnet.py", "models/ti_preact_resnet.py"),
    checks={"data": check_data, "schedule": check_schedule, "step": check_step, "eval": check_eval},
    known=KNOWN,
    stubs=STUBS,
    presets=(PRESET, TINY),
    takes_checkpoint=True,
)
