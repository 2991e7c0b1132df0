"""RobustLT (Zhang, Guo, Li, Shi and Liu, CVPR 2026) against its authors' code, zhang-lilin/RobustLT at 2d63979.

What runs of theirs, unchanged (``official.Checkout``):

- data: ``core.data.cifar10lt.ImbalancedCIFAR10`` (its counts and its seeded split rule, which writes the split
  npz their loader reads) on CIFAR pickles written in the official layout, ``core.data.load_test_data``,
  ``core.data.utils.get_dataloader`` (their batch sampler), the transforms of ``load_cifar10lt`` (``aua``,
  ``base``) and their released split files ``core/data/split/cifar10-exp*-seed*.npz``;
- schedule: their ``Trainer`` (``core/trainer/__init__.py``) built from their parser's defaults
  (``core/trainer/parser.py``) and the release's configs (``configs/cifar10lf/robustlt_atbsl_cifar10.yaml``,
  ``robustlt_robal_cifar10.yaml``) with the README's command line (seed 102, WRN-28-10, IR 50): its optimiser,
  ``MultiStepLR``, its training method from ``core.methods.get_method`` (the class budgets of
  ``core/methods/robustlt.py`` and their warm-up, read off the wrapped ``get_adversarial_examples``);
- step: their ``Networks`` (WRN-28-10 + FC, ResNet-18 + FC) against ltrobust's models with mapped weights, and
  ``Trainer.train(epoch)`` for k steps (``robustlt_atbsl``: the AT-BSL base's PGD in train-mode BatchNorm with the
  running statistics off, the class radii and steps at the epoch's warm-up, the BSL loss, the SGD step) against
  ltrobust's ``Trainer.train_step`` from the same weights, on the same batches, with the same random start;
- eval: ``eval.py``'s model lines (``Networks`` + ``load_state_dict`` + ``eval``) and its attacks
  (``core.metrics._METRICS``: torchattacks' PGD with ``configs/eval/pgd.yaml``, AutoAttack with ``aa.yaml``) on
  a checkpoint loaded by their model class and by ltrobust's ``load_run``.

The step level runs the preset's method on a ResNet-18 (their ``Networks`` with ``--model resnet18``, ours with
``model.name=resnet18``): the computation compared is the method's; the WRN-28-10 itself is compared alone
(key map, initial weights, logits and input gradients).
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import ours
from .at_bsl import _cifar_files, _describe_attack, _integrity_off, _pad4
from .core import (Known, KeyMap, ParityError, Row, compare_exact, compare_tensor, compare_tensors, load_mapped,
                   map_state, mapped, predictions_agree)
from .method import Context, MethodSpec
from .official import Recorder, call_with_seed, patched, quiet
from .steps import StepRecord, after_each_step, compare_steps, flips, model_rows, ours_steps, ours_steps_observed

PRESET = "robustlt-at-bsl-cifar10lt-wrn28"
ROBAL = "robustlt-robal-cifar10lt-wrn28"
CONFIGS = {PRESET: "configs/cifar10lf/robustlt_atbsl_cifar10.yaml", ROBAL: "configs/cifar10lf/robustlt_robal_cifar10.yaml"}
#: the README's command line: ``--data cifar10 --imbalance_rate 50 --seed 102 --model wrn-28-10`` (these four keys of
#: the YAML are ignored in favour of the command line, core/trainer/config.py ARGS_FOR_TUNE)
README_ARGS = {"imbalance_rate": 50, "seed": 102, "model": "wrn-28-10"}
IRS = (10, 50, 100)  # the imbalance ratios of the released split files
STEP_EPOCH = 41  #: their 1-based epoch of the step level: warm-up intensity (41 - 1) / (0.8 * 100) = 0.5

# ------------------------------------------------------------------------------------- key maps
RESNET18 = KeyMap(rules=((r"^classifier\.fc\.", "head."),))
WRN = KeyMap(rules=((r"^classifier\.fc\.", "head."), (r"\.layer\.", "."), (r"\.convShortcut\.", ".shortcut."),
                    (r"^backbone\.bn1\.", "backbone.bn.")))
#: their Networks with the CosPlus classifier (the RoBal base): its zero bias without gradient and its running mean of
#: features (``moving_ed``, for TDE) are never read by its scale-1 forward
RESNET18_COS = KeyMap(rules=((r"^classifier\.weight$", "head.weight"),),
                      unused=(r"^classifier\.bias$", r"^classifier\.moving_ed$"))
KEYMAPS = {"resnet18": RESNET18, "wrn28_10": WRN, "resnet18+cos": RESNET18_COS}
THEIR_ARCH = {"resnet18": "resnet18", "wrn28_10": "wrn-28-10"}


# ---------------------------------------------------------------------------------- known differences
_FP32 = Known(
    "float32 rounding, amplified by PGD's sign step: their loops keep x_adv and clamp it to x +- eps (eps_c in "
    "training), ltrobust keeps delta = x_adv - x, so iterates differ in the last bit and a gradient component near zero can "
    "change sign (that pixel moves by two class steps); the preset's channels_last memory format also rounds "
    "the convolutions differently. The float64 rows of the same computation are equal at every step",
    "in float32 the runs part from step 1 on (the row's figures); none in float64", "", where="fp32")
KNOWN = {
    r"^selected training indices \(their rule": Known(
        "their split is their own: np.random.default_rng(seed) shuffles each class's indices (class 0 first) and "
        "takes the first n_c (core/data/utils.py _generate_splits, 20% of them listed as validation and put back "
        "into training when --validation is off, as in every release config); ltrobust's default is LDAM-DRW's "
        "rule (np.random.RandomState(seed), the same per-class shuffle), so the same counts select other images",
        "a different sample of each class's images (the same counts); no effect on any computation",
        "data.indices_file=<their split's train_indices + val_indices as .npy> (the row after this one: equal)"),
    r"^input normalisation constants": Known(
        "their model normalises inside with CIFAR-10's mean and the std (0.2023, 0.1994, 0.2010) (core/data/"
        "cifar10lt.py DATA_DESC, a widely copied value that is not the per-pixel std); ltrobust's models normalise "
        "with the per-pixel std (0.2470, 0.2435, 0.2616). The step and eval levels load their constants into "
        "ltrobust's normalisation buffers, so the rest of the computation is compared as theirs",
        "the first convolution reads inputs scaled by 1.22, 1.22 and 1.30 (per channel) relative to theirs: the "
        "same function class, a different parametrisation for SGD and weight decay; not measured over a run",
        "none (ltrobust has no option for other normalisation constants)"),
    r"^BatchNorm buffers after|^BatchNorm updates per step": Known(
        "their training step moves the BatchNorm running statistics four times per batch: update() logs accuracies "
        "with model(input_adv) and model(input) after the optimiser step, still in train mode (core/methods/"
        "utils.py:94), and the AT-BSL base's loss also runs the clean batch through the model in train mode "
        "(core/methods/atbsl.py:18, its logits unused); ltrobust's step moves them once over AT-BSL (the loss's "
        "forward) and twice over RoBal (x' and x, both read by the loss). Weights and gradients are not affected; "
        "the running statistics (what the evaluated model uses) follow a mix of clean and adversarial batches",
        "the row's figures after each step (the weights stay equal); over training it changes the statistics the "
        "evaluated model normalises with, not measured",
        "none (these forwards are bookkeeping of their code, not part of the method)"),
    r"^AutoAttack settings|^AutoAttack per-image": Known(
        "their eval.py runs torchattacks 3.5.1 AutoAttack(version='standard'), whose APGD-CE, APGD-T and FAB-T run "
        "10 iterations (the reference: 100) and target C-1 classes (reference: 9); ltrobust runs the reference "
        "AutoAttack (a weakened AutoAttack is not copied)", "measured on the checkpoint: see the row's counts", ""),
    r"^served classifier \(RoBal base\)|^served logits \(RoBal base\)": Known(
        "their eval.py serves the training classifier as the config builds it (CosPlus at scale 1, posthoc false), "
        "so the deployed logits are cos; ltrobust's RobustLT-over-RoBal preset serves RoBal's deployed logits "
        "s * cos - tau_p * log pi with tau_p 0 (the release's posthoc false), i.e. s * cos, the logits the training "
        "loss scores (as RoBal-R in RoBal's own parity)",
        "the argmax is the same (the 'clean predictions' row), and the logits divided by s are equal (the row "
        "after); CE-based attacks see a 10x sharper softmax, so their AEs differ", ""),
    r"^PGD-20 per-image": Known(
        "different random starts: torchattacks' PGD draws its uniform start from the global RNG after their "
        "seed(1); ltrobust's from its own seeded generator. With the same start injected, the attacks are equal "
        "(the 'PGD-20 AEs, same start' row)", "the per-image disagreement counted in the row", ""),
    r"accuracy as each code counts it": Known(
        "their eval.py counts an image robust when its attacked image is classified correctly, also when its clean "
        "image is not; ltrobust counts it only when the clean image is correct too (AutoAttack's and RobustBench's "
        "rule), so their count can only be higher", "the row's counts on the checkpoint", ""),
    r"^initial weights": Known(
        "the classifier's bias: their FC_Classifier's nn.Linear sits outside the WideResNet whose initialisation loop "
        "zeroes Linear biases, so it keeps PyTorch's default U(-1/sqrt(640), 1/sqrt(640)); ltrobust's WRN head starts "
        "at 0 (the reference WRN code's rule). Every other tensor is equal from the same seed",
        "a head bias within +-0.04 at initialisation; not measurable over a run (the step level maps their weights "
        "into ours)", ""),
    r"attack iterates|adversarial examples|logits on the AEs|^loss|^gradients|^weights after|AEs, same start|"
    r"correct, same start|attack start": _FP32,
}


# ------------------------------------------------------------------------------------- their pieces
def _missing_name(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("balanced_softmax_loss is not defined in the release (a stand-in the harness provides for "
                       "the import of core/methods/atbsl.py; their code never calls it)")


def _load_methods(ctx: Context) -> None:
    """Make their ``core.methods`` importable: ``core/methods/atbsl.py`` imports ``balanced_softmax_loss`` from
    ``core/methods/utils.py``, which does not define it, so ``import core.methods`` (and with it ``train.py``)
    fails at this commit. Their ``utils.py`` is loaded first, unchanged, and given a stand-in of that name (never
    called: ATBSL computes its loss with its own ``BSL``); the stand-in is listed in the JSON."""
    import importlib.util
    import sys

    if "core.methods.utils" in sys.modules:
        return
    ctx.checkout.module("core")
    f = ctx.checkout.file("core/methods/utils.py")
    spec = importlib.util.spec_from_file_location("core.methods.utils", f)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["core.methods.utils"] = mod
    spec.loader.exec_module(mod)
    if not hasattr(mod, "balanced_softmax_loss"):
        mod.balanced_softmax_loss = _missing_name
        ctx.checkout.stand_ins.append("core.methods.utils.balanced_softmax_loss (missing in the release; never called)")
        ctx.note("their core/methods/atbsl.py imports balanced_softmax_loss from core/methods/utils.py, which does "
                 "not define it: `import core.methods` (train.py) raises ImportError at this commit; the harness "
                 "gives the name a stand-in that raises if called (it is never called)")


def _their_args(ctx: Context, preset: str = PRESET, **over: Any) -> Any:
    """Their train.py arguments: the parser's defaults (core/trainer/parser.py), the release's config for the
    preset (as core/trainer/config.py load_config applies it) and the README's command line."""
    import yaml

    _load_methods(ctx)
    parser = argparse.ArgumentParser()
    ctx.checkout.module("core.trainer.parser").set_parser_train(parser)
    args = parser.parse_args([])
    tune = ctx.checkout.module("train_multi").ARGS_FOR_TUNE if (ctx.checkout.root / "train_multi.py").is_file() \
        else README_ARGS
    for k, v in yaml.safe_load(ctx.checkout.file(CONFIGS[preset]).read_text()).items():
        if k in tune:  # load_config skips these: the command line gives them
            continue
        setattr(args, k, v)
    for k, v in {**README_ARGS, "data": "cifar10lt", "device": "cpu", **over}.items():
        setattr(args, k, v)
    return args


def _root(ctx: Context) -> Path:
    """A data folder in their layout: ``<root>/cifar10/cifar-10-batches-py`` (their loaders read
    ``dirname(data_dir)/cifar10``) holding the same pickles ltrobust reads."""
    if "root" in ctx.cache:
        return ctx.cache["root"]
    files = _cifar_files(ctx, 10)
    root = ctx.scratch / "rlt-data"
    root.mkdir(exist_ok=True)
    if not (root / "cifar10").exists():
        os.symlink(files, root / "cifar10")
    ctx.cache["root"] = root
    return root


def _their_train_set(ctx: Context, ir: int, seed: int, augment: str = "none") -> Any:
    mod = ctx.checkout.module("core.data.cifar10lt")
    with _integrity_off(), quiet():
        ds, _ = mod.load_cifar10lt(data_dir=str(_root(ctx) / "cifar10lt"), logger=None, validation=False,
                                   imb_rate=ir, imb_type="exp", seed=seed, augmentation=augment)
    return ds


def _our_data(ctx: Context, preset: str = PRESET, *extra: str):
    from ltrobust.data import build_data

    cfg = ours.preset(preset, f"data_dir={_root(ctx) / 'cifar10'}", *extra)
    return cfg, build_data(cfg.data)


def _indices_npy(ctx: Context, indices: list[int], name: str) -> Path:
    f = ctx.scratch / f"{name}.npy"
    np.save(f, np.asarray(indices, dtype=np.int64))
    return f


# ============================================================================================ data
def check_data(ctx: Context) -> Iterator[Row]:
    from ltrobust.data.profiles import class_counts

    seed = 7  # a seed without a released split file: their rule runs and writes one
    for ir in IRS:
        ds = _their_train_set(ctx, ir, seed)
        setting = f"CIFAR-10-LT IR {ir}"
        yield compare_exact("data", "per-class counts", list(ds.samples_per_class),
                            class_counts("exp", 5000, 10, ir), setting,
                            detail="their get_samples_per_class(img_max=5000, imb_factor=1/IR) vs ltrobust's exp profile")
        cfg, data = _our_data(ctx, PRESET, f"imbalance={ir}")
        their_idx = sorted(int(i) for i in ds.data_indices)
        our_idx = sorted(int(i) for c in data.manifest["indices"]["train"].values() for i in c)
        yield compare_exact("data", "selected training indices (their rule, ltrobust's default)", their_idx, our_idx,
                            setting, detail=f"their ImbalancedCIFAR10(seed={seed}) on the same files vs the preset's "
                                            f"selection (data.selection_seed={cfg.data.selection_seed})")
        f = _indices_npy(ctx, list(ds.data_indices), f"their-split-ir{ir}")
        _, data2 = _our_data(ctx, PRESET, f"imbalance={ir}", f"data.indices_file={f}")
        ours_imgs = data2.train.images.permute(0, 2, 3, 1)
        order = np.argsort([i for c in range(10) for i in data2.manifest["indices"]["train"][str(c)]], kind="stable")
        yield compare_tensor("data", "selected training images with data.indices_file=their split",
                             torch.from_numpy(ds.data[np.sort(ds.data_indices)]), ours_imgs[torch.from_numpy(order)],
                             setting, detail=f"{len(ds.data_indices)} images (train + val indices: --validation is "
                                             "off), uint8, exact, in index order (their sampler permutes each epoch)")
    # the released split files: sizes and the train / validation partition their loader reads
    sizes_t, sizes_o = [], []
    for ir in IRS:
        for s in (102, 103, 104):
            f = ctx.checkout.root / "core" / "data" / "split" / f"cifar10-exp{ir}-seed{s}.npz"
            if not f.is_file():
                continue
            z = np.load(f)
            tr, va = z["train_indices"], z["val_indices"]
            sizes_t.append([ir, s, len(tr) + len(va), len(set(tr.tolist()) | set(va.tolist()))])
            n = sum(class_counts("exp", 5000, 10, ir))
            sizes_o.append([ir, s, n, n])
    yield compare_exact("data", "released split files: images, distinct", sizes_t, sizes_o, "CIFAR-10-LT",
                        detail="[IR, seed, train + val indices, distinct] of core/data/split/cifar10-exp*-seed*.npz vs "
                               "ltrobust's counts; the classes they select need the official file order (not here)")
    ctx.note("RobustLT: the released splits (core/data/split/*.npz, seeds 102-104) index the official CIFAR-10 file "
             "order; with the official files, data.indices_file=<their train_indices + val_indices as .npy> "
             "trains on exactly their split (checked on a split their rule generated on these files).")
    # test split
    mod = ctx.checkout.module("core.data")
    with _integrity_off(), quiet():
        test, _ = mod.load_test_data(str(_root(ctx) / "cifar10lt"), None, batch_size_test=128)
    _, data = _our_data(ctx)
    yield compare_tensor("data", "test images, in order", torch.from_numpy(test.data),
                         data.test.images.permute(0, 2, 3, 1).contiguous(), "CIFAR-10", detail="full test split")
    yield from _transforms(ctx)
    yield from _normalisation_and_validation(ctx)


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
            fill = t.fill if not isinstance(t.fill, dict) else next(iter(t.fill.values()))
            out.append([n, size, _pad4(t.padding), fill if fill is not None else 0, t.padding_mode])
        elif n == "RandomHorizontalFlip":
            out.append([n, t.p])
        else:
            out.append([n])
    return out


def _transforms(ctx: Context) -> Iterator[Row]:
    from .at_bsl import _our_pipeline

    for preset in (PRESET, ROBAL):
        args = _their_args(ctx, preset)
        ds = _their_train_set(ctx, 50, 102 if False else 7, args.augment)
        cfg = ours.preset(preset)
        yield compare_exact("data", f"augmentation pipeline (their --augment {args.augment})",
                            _describe(ds.dataset.transform), _our_pipeline(cfg.data.augment, 32)[0], preset,
                            detail=f"their load_cifar10lt transforms (torchvision.transforms.v2) vs ltrobust "
                                   f"data.augment={cfg.data.augment}")


def _normalisation_and_validation(ctx: Context) -> Iterator[Row]:
    desc = ctx.checkout.module("core.data.cifar10lt").DATA_DESC
    args = _their_args(ctx)
    _, data = _our_data(ctx)
    cfg = ours.preset(PRESET)
    yield compare_exact("data", "input normalisation", "in the model" if args.normalize else "none",
                        "in the model" if cfg.model.normalize else "none", PRESET,
                        detail=f"their --normalize {args.normalize} (parser default); model.normalize={cfg.model.normalize}")
    yield compare_exact("data", "input normalisation constants", [list(desc["mean"]), list(desc["std"])],
                        [[round(v, 4) for v in data.mean], [round(v, 4) for v in data.std]], PRESET,
                        detail="mean and std per channel")
    their_rule = "none: the last epoch is evaluated" if not args.validation else "20% of each class's selection"
    yield compare_exact("data", "validation split", their_rule,
                        "none: the last epoch is evaluated" if cfg.eval.checkpoint == "last" else
                        f"{data.manifest['val_per_class']} per class", PRESET,
                        detail="what picks the checkpoint; theirs: the parser default, no release config sets it")


# ========================================================================================= schedule
class _Loader:
    """What their Trainer reads of a loader: its length (steps per epoch), ``dataset.samples_per_class``, and
    the batches to iterate (the step level's)."""

    def __init__(self, counts: list[int], steps: int, batches: list | None = None) -> None:
        self.dataset = type("D", (), {"samples_per_class": counts})()
        self.steps, self.batches = steps, batches or []

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter(self.batches)


def _their_trainer(ctx: Context, preset: str, loader: _Loader, **over: Any) -> Any:
    args = _their_args(ctx, preset, **over)
    info = ctx.checkout.module("core.data.cifar10lt").DATA_DESC
    tmod = ctx.checkout.module("core.trainer")
    # RoBal's MultiMarginLoss builds torch.cuda.FloatTensor(...) (core/methods/robal.py:17): a CPU tensor here
    with quiet(), patched(torch.cuda, "FloatTensor", torch.FloatTensor):
        return tmod.Trainer(args, info, loader, logger=None, verbose=False), args


def _their_radii(method: Any, epoch: int) -> torch.Tensor:
    """The class radii their wrapped get_adversarial_examples sets at 1-based ``epoch`` (one call on a tiny
    linear model: the radii are read back from ``classwise_epsilon``)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 10))
    method.current_epoch = epoch
    x, y = torch.rand(10, 3, 1, 1), torch.arange(10)
    saved = method.perturb_steps
    method.perturb_steps = 0
    try:
        method.get_adversarial_examples(model=model, wa_model=None, input=x, target=y)
    finally:
        method.perturb_steps = saved
    return method.classwise_epsilon.detach().clone()


def check_schedule(ctx: Context) -> Iterator[Row]:
    cfg0, data = _our_data(ctx)
    counts = list(data.class_counts)
    for preset in (PRESET, ROBAL):
        args0 = _their_args(ctx, preset)
        steps = int(np.ceil(sum(counts) / args0.batch_size))
        theirs, args = _their_trainer(ctx, preset, _Loader(counts, steps), model="resnet18")
        cfg = ours.preset(preset, f"data_dir={_root(ctx) / 'cifar10'}")
        tr = ours.trainer(cfg, data, ctx.scratch / f"sched-{preset}")
        yield compare_exact("schedule", "epochs", args.num_epochs, cfg.train.epochs, preset)
        their_lr = []
        for _ in range(args.num_epochs):  # MultiStepLR stepped at the end of each epoch (their Trainer.train)
            their_lr.append(theirs.optimizer.param_groups[0]["lr"])
            theirs.optimizer.step()
            theirs.scheduler.step()
        our_lr = [tr.lr(e) for e in range(cfg.train.epochs)]
        yield compare_tensor("schedule", "learning rate at every epoch", torch.tensor(their_lr, dtype=torch.float64),
                             torch.tensor(our_lr, dtype=torch.float64), preset,
                             detail=f"theirs MultiStepLR({args.scheduler_opt}) at epoch 1..{args.num_epochs}, ours "
                                    f"lr(epoch) at 0..{cfg.train.epochs - 1}; distinct {sorted(set(their_lr))}")
        keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
        opt = theirs.optimizer
        yield compare_exact("schedule", "optimizer settings", [type(opt).__name__] + [opt.defaults[k] for k in keys],
                            [type(tr.optimizer).__name__] + [tr.optimizer.defaults[k] for k in keys], preset,
                            detail="SGD " + ", ".join(keys))
        their_wd = sum(p.numel() for g in opt.param_groups for p in g["params"] if g["weight_decay"] > 0)
        our_wd = sum(p.numel() for g in tr.optimizer.param_groups for p in g["params"] if g["weight_decay"] > 0)
        total = sum(p.numel() for p in tr.model.parameters())
        their_total = sum(p.numel() for g in opt.param_groups for p in g["params"])
        yield compare_exact("schedule", "weight decay on which parameters", [len(opt.param_groups), their_wd == their_total],
                            [len(tr.optimizer.param_groups), our_wd == total], preset,
                            detail="groups, every parameter decayed (BatchNorm and biases included)")
        # their loader: get_dataloader's batch sampler over their dataset (the last, smaller batch kept)
        ds = _their_train_set(ctx, 50, 7)
        util = ctx.checkout.module("core.data.utils")
        # their sampler calls Sampler.__init__(None), which the installed torch refuses (their README pins torch 2.6)
        sampler_init = torch.utils.data.Sampler.__init__
        with quiet(), patched(torch.utils.data.Sampler, "__init__", lambda self, *a, **k: sampler_init(self)):
            their_loader = util.get_dataloader(ds, batch_size=args.batch_size, shuffle=True)
        sizes = [len(b) for b in their_loader.batch_sampler]
        yield compare_exact("schedule", "batch size, steps per epoch, last batch dropped",
                            [args.batch_size, len(their_loader), sum(sizes) < len(ds)],
                            [cfg.train.batch_size, len(tr.loader), bool(tr.loader.drop_last)], preset,
                            detail=f"{len(ds)} training images; their last batch holds {sizes[-1]} (their "
                                   f"ImbalancedDataSampler yields the partial batch)")
        m = theirs.training_method
        yield compare_exact("schedule", "attack eps, step, steps as written",
                            [m.epsilon, m.step_size, m.perturb_steps],
                            [cfg.attack.eps, cfg.attack.step_size, cfg.attack.steps], preset,
                            detail="their parser's --attack-eps 8/255, --attack-step 2/255, --attack-iter (config)")
        yield compare_exact("schedule", "RobustLT alpha, beta", [m.robustlt_alpha, m.robustlt_beta],
                            [tr.method.options.alpha, tr.method.beta], preset)
        yield compare_tensor("schedule", "class radii eps_c (CPB)", m.classwise_epsilon_max.float(),
                             tr.method.eps_max.float(), preset,
                             detail=f"theirs robustlt() in float32, ours cpb_budgets in float64 kept in float32; counts "
                                    f"{counts}; eps_c x 255 {[round(v * 255, 3) for v in tr.method.eps_max.tolist()]}")
        their_r = torch.stack([_their_radii(m, e) for e in range(1, args.num_epochs + 1)]).float()
        our_r = []
        for e in range(cfg.train.epochs):
            tr.method.on_epoch_start(e)
            our_r.append(tr.method.class_radii().float())
        yield compare_tensor("schedule", "class radii at every epoch (CPB x AIW warm-up)", their_r, torch.stack(our_r),
                             preset, detail=f"their classwise_epsilon after get_adversarial_examples at current_epoch "
                                            f"1..{args.num_epochs} vs ours after on_epoch_start(0..{cfg.train.epochs - 1});"
                                            f" (epochs, classes); zero at the first epoch, full from epoch "
                                            f"{int(torch.nonzero(their_r[:, 0] == their_r[-1, 0])[0]) + 1}")
        yield compare_exact("schedule", "precision", "fp32",
                            "fp32" if tr.amp_dtype is None else str(tr.amp_dtype).replace("torch.", ""), preset,
                            detail=f"their code has no autocast; train.precision={cfg.train.precision}")
        yield compare_exact("schedule", "seed", args.seed, cfg.train.seed, preset,
                            detail="README command line --seed 102 (their models differ in initialisation anyway)")


# ============================================================================================= step
def _their_model(ctx: Context, arch: str, seed: int, preset: str = PRESET) -> torch.nn.Module:
    """Their Networks for ``preset``'s config (AT-BSL: the FC classifier; RoBal: CosPlus at scale 1)."""
    args = _their_args(ctx, preset, model=THEIR_ARCH[arch])
    info = ctx.checkout.module("core.data.cifar10lt").DATA_DESC
    torch.manual_seed(seed)
    return ctx.checkout.module("core.models").Networks(args, info, "cpu")


def _mapping(arch: str, theirs: torch.nn.Module, mine: torch.nn.Module) -> dict[str, str]:
    """``arch``: a key of KEYMAPS (``resnet18+cos``: their Networks with the CosPlus classifier)."""
    ms = {k: v for k, v in mine.state_dict().items() if not k.startswith("normalize.")}
    return map_state(theirs.state_dict(), ms, KEYMAPS[arch])


def _their_normalisation(theirs: torch.nn.Module, mine: torch.nn.Module) -> None:
    """Their normalisation constants into ltrobust's buffers (see the data level's row)."""
    with torch.no_grad():
        mine.normalize.mean.copy_(theirs.backbone.mean.reshape(mine.normalize.mean.shape))
        mine.normalize.std.copy_(theirs.backbone.std.reshape(mine.normalize.std.shape))


def _in_dtype(theirs: torch.nn.Module, mine: torch.nn.Module,
              dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Copies of both models in ``dtype`` (their backbone's mean and std are plain tensors: cast too)."""
    t_model, o_model = copy.deepcopy(theirs).to(dtype), copy.deepcopy(mine).to(dtype)
    t_model.backbone.mean, t_model.backbone.std = t_model.backbone.mean.to(dtype), t_model.backbone.std.to(dtype)
    return t_model, o_model


def _dtypes(ctx: Context) -> list[torch.dtype]:
    return [torch.float32] + ([torch.float64] if ctx.options.fp64 else [])


def check_step(ctx: Context) -> Iterator[Row]:
    yield from _models(ctx)
    for preset in (PRESET, ROBAL):
        for dtype in _dtypes(ctx):
            yield from _steps(ctx, preset, dtype)


def _models(ctx: Context) -> Iterator[Row]:
    from ltrobust.models import build_model

    for arch, n in (("wrn28_10", 2), ("resnet18", 4)):
        cfg = ours.preset(PRESET, f"model.name={arch}")
        setting = f"{arch} vs their Networks({THEIR_ARCH[arch]}, FC)"
        theirs = _their_model(ctx, arch, 102)
        torch.manual_seed(102)
        mine = build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, 32)
        try:
            m = _mapping(arch, theirs, mine)
        except ParityError as exc:
            yield Row("step", "model: key mapping", "differs", setting, detail=str(exc))
            continue
        yield Row("step", "model: key mapping", "equal", setting,
                  detail=f"{len(m)} tensors mapped; every key of ours hit, shapes equal; their normalisation "
                         "constants loaded into ours")
        ts, ms = theirs.state_dict(), mine.state_dict()
        yield compare_tensors("step", "initial weights, same seed", mapped(ts, m), {o: ms[o] for o in m.values()},
                              setting, detail="torch.manual_seed(102) before each model is built")
        x = torch.from_numpy(ours.synthetic_images(n, 32, seed=11)).permute(0, 3, 1, 2).float() / 255
        y = torch.arange(n) % 10
        for dtype in (_dtypes(ctx) if arch == "resnet18" else [torch.float32]):
            t_model, o_model = _in_dtype(theirs, mine, dtype)
            load_mapped(o_model, t_model.state_dict(), m)
            _their_normalisation(t_model, o_model)
            yield from model_rows(t_model, o_model, x, y, dtype, setting)


class _Split:
    """Their step records from the Recorder: per step, ``attack`` forwards, then the loss's forward on the AEs;
    the other forwards of the step (the AT-BSL base's clean forward, update()'s two logging forwards) counted."""

    @staticmethod
    def records(rec: Recorder, k: int, attack_steps: int, losses: list, snaps: list) -> tuple[list[StepRecord], int]:
        per = len(rec.calls) // k
        out = []
        for i in range(k):
            calls = rec.calls[i * per:(i + 1) * per]
            att, loss_call = calls[:attack_steps], calls[attack_steps]
            out.append(StepRecord([c[1] for c in att], [c[0] for c in att], loss_call[1], loss_call[2], losses[i],
                                  snaps[i]["grads"], snaps[i]["weights"], snaps[i]["buffers"]))
        return out, per


def _steps(ctx: Context, preset: str, dtype: torch.dtype) -> Iterator[Row]:
    """k steps of their Trainer.train(epoch) and of ltrobust's Trainer.train_step, same weights, same batches,
    same start, at their epoch STEP_EPOCH (warm-up intensity 0.5): ResNet-18 on both sides."""
    k, batch = ctx.options.steps, ctx.options.batch_size
    name = "fp32" if dtype == torch.float32 else "fp64"
    setting = f"{preset} model.name=resnet18, {name}, batch {batch}, their epoch {STEP_EPOCH}"
    cfg, data = _our_data(ctx, preset, "model.name=resnet18")
    rng = np.random.RandomState(ctx.options.seed)
    perm = torch.from_numpy(rng.permutation(len(data.train.labels))[: k * batch])
    batches = [(x.to(dtype), y) for x, y in ours.batches(data.train.subset(perm), batch, k)]
    seeds = [2000 + i for i in range(k)]
    counts = list(data.class_counts)
    steps_per_epoch = int(np.ceil(sum(counts) / cfg.train.batch_size))
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        tr = ours.trainer(cfg, data, ctx.scratch / f"step-{preset}-{name}")
        tr.model.to(dtype)
        theirs, args = _their_trainer(ctx, preset, _Loader(counts, steps_per_epoch, batches), model="resnet18")
        model = theirs.model
        robal = preset == ROBAL
        m = _mapping("resnet18+cos" if robal else "resnet18", model, tr.model)
        load_mapped(tr.model, model.state_dict(), m)
        _their_normalisation(model, tr.model)
        method = theirs.training_method
        if dtype == torch.float64:  # their radii given to ours (the row "class radii eps_c" compares them)
            tr.method.eps_max = method.classwise_epsilon_max.detach().clone()
        losses: list[torch.Tensor] = []
        update = method.update

        def observed_update(**kw: Any) -> Any:
            losses.append(kw["loss"].mean().detach().clone())
            return update(**kw)

        method.update = observed_update
        starts: list[torch.Tensor] = []
        get_adv = method.get_adversarial_examples
        method.forward = call_with_seed(method.forward, iter(seeds))
        snaps = after_each_step(theirs.optimizer, model)
        rec = Recorder(model)
        theirs.model = rec
        # RoBal's MultiMarginLoss.forward casts with index.type(torch.cuda.FloatTensor): a CPU tensor here
        with quiet(), patched(torch.cuda, "FloatTensor", torch.FloatTensor):
            theirs.train(STEP_EPOCH, verbose=False)
        their_steps, per = _Split.records(rec, k, args.attack_iter, losses, snaps)
        starts = [s.attack_inputs[0] - b[0] for s, b in zip(their_steps, batches)]
        # ours: the same seeds (float32: the same draws); float64: their start injected (their draw is float32)
        import importlib

        pgd_mod = importlib.import_module("ltrobust.attacks.pgd")  # the module (the package exports pgd, a function)

        it = iter(starts)
        init = pgd_mod.initial_delta

        def their_start(threat, x, random_start, generator=None, start_eps=None):
            return next(it).to(x.dtype)

        def run_ours() -> tuple[list[StepRecord], int]:
            if robal:  # RoBal's attack reads features and the head's cosines: the input normalisation is observed;
                # the attack runs in train mode (attack.bn_mode=batch): its forwards are the step's first ones
                return ours_steps_observed(tr, batches, seeds, tr.model.normalize, epoch=STEP_EPOCH - 1,
                                           logits_scale=tr.model.head.scale,
                                           attack_forwards=tr.method.base.options.attack_steps)
            return ours_steps(tr, batches, seeds, epoch=STEP_EPOCH - 1), 1  # one train-mode forward: the loss's

        if dtype == torch.float64:
            with patched(pgd_mod, "initial_delta", their_start):
                our_steps, our_forwards = run_ours()
        else:
            our_steps, our_forwards = run_ours()
        del get_adv, init
    finally:
        torch.set_default_dtype(default)
    if dtype == torch.float32:
        ctx.cache["trained" if preset == PRESET else "trained-robal"] = {
            key: v.clone() for key, v in model.state_dict().items()}
    yield compare_tensor("step", "class radii in force at the step", method.classwise_epsilon.detach(),
                         tr.method.class_radii().to(method.classwise_epsilon.dtype), setting,
                         detail="theirs classwise_epsilon at current_epoch 41, ours class_radii() at epoch 40" +
                                ("; float64: their radii given to ours" if dtype == torch.float64 else ""))
    yield compare_exact("step", "BatchNorm updates per step", per - args.attack_iter, our_forwards, setting,
                        detail="train-mode forwards per step outside the attack: theirs (the loss's x' and x: AT-BSL's "
                               "clean logits unused, RoBal's read by the KL; update()'s two logging forwards) vs "
                               "ltrobust's loss forwards")
    if robal:
        o = tr.method.base.options
        mo = args.method_opt
        yield compare_exact("step", "RoBal loss terms and weights",
                            [mo["s"], mo["m"], mo["tau_b"], mo["tau_m"], mo["beta_adv"], mo["beta"],
                             model.classifier.gamma],
                            [tr.model.head.scale, o.m0, o.tau_b, o.tau_m, 1.0, o.alpha, tr.model.head.gamma],
                            setting, detail="s, m0, tau_b, tau_m, the margin loss's weight (ltrobust: 1, no option), "
                                            "the KL's weight (their beta, ltrobust's alpha), gamma")
    start = ("their torch.FloatTensor(shape).uniform_(-eps, eps) and ltrobust's uniform start in the global eps ball, "
             "same seed" if dtype == torch.float32 else "their start injected into ltrobust's PGD (their draw is "
             "float32 whatever the default dtype)")
    yield from compare_steps(their_steps, our_steps, m, batches, setting, start=start)


# ============================================================================================= eval
def _both_deployed(ctx: Context, preset: str, cfg: Any, data: Any, state: dict[str, torch.Tensor],
                   folder: str) -> tuple[torch.nn.Module, Any, Any]:
    """One checkpoint (their state dict) loaded by both codes: their eval.py's model lines (Networks for the
    preset's config, ``load_state_dict``, eval mode), and ltrobust's checkpoint writer and reader (what
    ``ltrobust eval`` loads). Returns (their model, our trainer, our loaded run)."""
    from ltrobust.evaluation.runs import load_run

    theirs = _their_model(ctx, "resnet18", 102, preset)
    theirs.load_state_dict(state)
    theirs.eval()
    tr = ours.trainer(cfg, data, ctx.scratch / folder)
    load_mapped(tr.model, state, _mapping("resnet18+cos" if preset == ROBAL else "resnet18", theirs, tr.model))
    _their_normalisation(theirs, tr.model)
    ckpt = tr.folder.checkpoint("last")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tr.save_weights(ckpt, 0, None)
    return theirs, tr, load_run(ckpt, [f"data_dir={_root(ctx) / 'cifar10'}"])


def check_eval(ctx: Context) -> Iterator[Row]:
    from ltrobust.attacks import pgd, threat_model
    from ltrobust.evaluation.evaluator import balanced_subset

    import ltrobust

    state = ctx.cache.get("trained")
    which = f"their ResNet-18 after the step level's {ctx.options.steps} steps (fp32)"
    if state is None:
        state, which = _their_model(ctx, "resnet18", 102).state_dict(), "their ResNet-18 at initialisation"
    ctx.note(f"RobustLT evaluation checkpoint: {which}")
    cfg, data = _our_data(ctx, PRESET, "model.name=resnet18")
    n = ctx.options.eval_images
    x, y = ours.batches(data.test.subset(balanced_subset(data.test.labels, n, seed=ctx.options.seed)), n, 1)[0]
    theirs, _, run = _both_deployed(ctx, PRESET, cfg, data, state, "eval-run")
    deployed = run.deployed.eval()
    setting = f"{PRESET} model.name=resnet18, {n} test images"
    yield compare_exact("eval", "checkpoint choice", "last epoch",
                        "last epoch" if run.cfg.eval.checkpoint == "last" else run.cfg.eval.checkpoint, PRESET,
                        detail="their eval.py loads state-last.pt; ltrobust eval.checkpoint")
    import yaml

    pgd_opt = yaml.safe_load(ctx.checkout.file("configs/eval/pgd.yaml").read_text())["attack_opt"]
    str2float = ctx.checkout.module("core.trainer.utils").str2float
    pgd_opt = {k: str2float(v) if k in ("eps", "alpha") else v for k, v in pgd_opt.items()}
    yield compare_exact("eval", "PGD-20 settings", [pgd_opt["steps"], pgd_opt["alpha"], pgd_opt["eps"]],
                        [20, run.cfg.eval.step_size, run.cfg.eval.eps], PRESET,
                        detail="configs/eval/pgd.yaml (steps, alpha, eps) vs the preset's pgd20 with eval.step_size")
    metrics = ctx.checkout.module("core.metrics")
    for dtype in _dtypes(ctx):
        name, count = ("fp32", n) if dtype == torch.float32 else ("fp64", min(16, n))
        where = f"{setting.split(',')[0]}, {count} test images, {name}"
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            t_model, o_model = (model.eval() for model in _in_dtype(theirs, deployed, dtype))
            pick = torch.arange(0, n, max(1, n // count))[:count]
            xd, yd = x[pick].to(dtype), y[pick]
            xt, xo = xd.clone().requires_grad_(True), xd.clone().requires_grad_(True)
            zt, zo = t_model(xt), o_model(xo)
            yield compare_tensor("eval", "served logits", zt, zo, where,
                                 detail="their Networks + load_state_dict vs ltrobust's load_run(...).deployed")
            gt, = torch.autograd.grad(F.cross_entropy(zt, yd, reduction="sum"), xt)
            go, = torch.autograd.grad(F.cross_entropy(zo, yd, reduction="sum"), xo)
            yield compare_tensor("eval", "input gradients", gt, go, where)
            rec = Recorder(t_model).eval()  # torchattacks restores the mode it finds on the model it is given
            adversary = metrics._METRICS["pgd"](rec, **pgd_opt)
            torch.manual_seed(1)  # eval.py: seed(args.seed), --seed 1
            their_adv = adversary(xd.clone(), yd)
            start = rec.calls[0][1] - xd
            our_adv = pgd(o_model, xd, yd, threat_model("linf", run.cfg.eval.eps), steps=20,
                          step_size=run.cfg.eval.step_size, objective="ce", random_start=True, start=start)
            with torch.no_grad():
                t_ok, o_ok = t_model(their_adv).argmax(1) == yd, o_model(our_adv).argmax(1) == yd
            yield compare_tensor("eval", "PGD-20 AEs, same start", their_adv, our_adv, where,
                                 detail=f"torchattacks PGD(**configs/eval/pgd.yaml) vs ltrobust's pgd, their start "
                                        f"injected; {flips(their_adv, our_adv)}")
            yield predictions_agree("eval", "PGD-20 attacked image correct, same start", t_ok, o_ok, where)
        finally:
            torch.set_default_dtype(default)
    # own random starts: per-image robustness with ltrobust.evaluate
    res = ltrobust.evaluate(deployed, (x, y), attacks=("clean", "pgd20"), mode="standalone", seed=ctx.options.seed,
                            eps=run.cfg.eval.eps, step_size=run.cfg.eval.step_size, progress=False)
    flags = dict(zip(res.samples["names"], res.samples["flags"]))
    with torch.no_grad():
        t_clean = theirs(x).argmax(1) == y
    torch.manual_seed(1)
    their_adv = metrics._METRICS["pgd"](theirs, **pgd_opt)(x.clone(), y)
    with torch.no_grad():
        t_adv = theirs(their_adv).argmax(1) == y
    yield predictions_agree("eval", "clean per-image correctness", t_clean,
                            torch.from_numpy(np.asarray(flags["clean"])), setting)
    o_ok = torch.from_numpy(np.asarray(flags["pgd20"]))
    yield predictions_agree("eval", "PGD-20 per-image robustness, own random starts", t_clean & t_adv, o_ok, setting,
                            detail="robust = clean and attacked image correct")
    yield compare_exact("eval", "PGD-20 accuracy as each code counts it", int(t_adv.sum()), int(o_ok.sum()), setting,
                        detail=f"theirs: attacked image correct ({int((t_adv & ~t_clean).sum())} of them wrong on "
                               f"the clean image); ours: clean and attacked image correct, of {len(y)} images")
    yield from _autoattack(ctx, theirs, deployed, x, y, metrics)
    yield from _robal_served(ctx, x, y)


def _robal_served(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> Iterator[Row]:
    """The RoBal base's served logits: their eval.py's Networks with the training config's CosPlus (scale 1) against
    ltrobust's deployed model of the RobustLT-over-RoBal preset, on the RoBal step level's checkpoint."""
    state = ctx.cache.get("trained-robal")
    which = f"after the step level's {ctx.options.steps} steps of {ROBAL} (fp32)"
    if state is None:
        state, which = _their_model(ctx, "resnet18", 102, ROBAL).state_dict(), "at initialisation"
    cfg, data = _our_data(ctx, ROBAL, "model.name=resnet18")
    theirs, tr, run = _both_deployed(ctx, ROBAL, cfg, data, state, "eval-run-robal")
    deployed = run.deployed.eval()
    scale = float(tr.model.head.scale)
    setting = f"{ROBAL} model.name=resnet18, their ResNet-18 + CosPlus {which}"
    yield compare_exact("eval", "served classifier (RoBal base)",
                        f"CosPlus, scale {theirs.classifier.scale:g}, no post-hoc term",
                        f"cosine head, scale {scale:g}, tau_p {tr.method.base.options.tau_p:g}", setting,
                        detail="their eval.py serves the training config's classifier; ltrobust's deployed model")
    for dtype in _dtypes(ctx):
        name, count = ("fp32", len(y)) if dtype == torch.float32 else ("fp64", min(16, len(y)))
        where = f"{setting}, {count} test images, {name}"
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            t_model, o_model = (model.eval() for model in _in_dtype(theirs, deployed, dtype))
            xd, yd = x[:count].to(dtype), y[:count]
            with torch.no_grad():
                zt, zo = t_model(xd), o_model(xd)
            yield compare_tensor("eval", "served logits (RoBal base)", zt, zo, where,
                                 detail="their Networks + load_state_dict vs ltrobust's load_run(...).deployed")
            yield compare_tensor("eval", "served logits / s (RoBal base)", zt, zo / scale, where,
                                 detail=f"ltrobust's deployed logits divided by s = {scale:g}: the scale is the only "
                                        "difference")
            yield predictions_agree("eval", "clean predictions (RoBal base)", zt.argmax(1) == yd, zo.argmax(1) == yd,
                                    where)
        finally:
            torch.set_default_dtype(default)


def _autoattack(ctx: Context, theirs: torch.nn.Module, deployed: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                metrics: Any) -> Iterator[Row]:
    import torchattacks
    import yaml
    from pyautoattack import AutoAttack as ReferenceAA

    from ltrobust.attacks.autoattack import _build, autoattack_plan, run_autoattack

    n = min(ctx.options.aa_images, len(y))
    xa, ya = x[:n], y[:n]
    opt = yaml.safe_load(ctx.checkout.file("configs/eval/aa.yaml").read_text())["attack_opt"]
    str2float = ctx.checkout.module("core.trainer.utils").str2float
    opt = {k: str2float(v) if k == "eps" else v for k, v in opt.items()}
    opt["n_classes"] = 10  # eval.py: attack_opt['n_classes'] = num_classes
    with patched(torchattacks.AutoAttack, "get_seed", lambda self: ctx.options.seed):  # seeded with the clock
        atk = metrics._METRICS["aa"](theirs, **opt)
        theirs_desc = [_describe_attack(a) for a in atk._autoattack.attacks]
        torch.manual_seed(1)
        with quiet():
            adv = atk(xa, ya)
    with torch.no_grad():
        t_ok = (theirs(xa).argmax(1) == ya) & (theirs(adv).argmax(1) == ya)
    plan = autoattack_plan(10, "standard")
    ref = _build(ReferenceAA, deployed, 8 / 255, "Linf", "standard", plan, ctx.options.seed, torch.device("cpu"))
    ours_desc = [["APGD", ref.apgd.n_iter, ref.apgd.n_restarts, "ce"],
                 ["APGDT", ref.apgd_targeted.n_iter, ref.apgd_targeted.n_target_classes],
                 ["FAB", ref.fab.n_iter, ref.fab.n_target_classes, "targeted"],
                 ["Square", ref.square.n_queries]]
    yield compare_exact("eval", "AutoAttack settings", theirs_desc, ours_desc, PRESET,
                        detail="per attack: iterations (restarts, loss) / target classes / queries; theirs torchattacks "
                               "AutoAttack(**configs/eval/aa.yaml, n_classes=10), ours the reference AutoAttack")
    _, o_ok = run_autoattack(deployed, xa, ya, eps=8 / 255, version="standard", seed=ctx.options.seed)
    yield predictions_agree("eval", "AutoAttack per-image robustness", t_ok, o_ok, f"{PRESET} model.name=resnet18, "
                            f"{n} test images", detail="clean and AutoAttack correct")


SPEC = MethodSpec(
    name="robustlt",
    repository="zhang-lilin/RobustLT",
    checkout="RobustLT",
    commit="2d639792ea213e0d050f1046b26ef7919adf97b5",
    files=("core/methods/robustlt.py", "core/methods/utils.py", "core/methods/atbsl.py", "core/trainer/__init__.py",
           "core/trainer/parser.py", "core/data/utils.py", "core/data/cifar10lt.py", "core/models/__init__.py",
           "core/models/resnet.py", "core/models/wideresnet.py", "core/models/basic_classifiers.py",
           "core/methods/robal.py", "core/metrics.py", "eval.py",
           "configs/cifar10lf/robustlt_atbsl_cifar10.yaml", "configs/cifar10lf/robustlt_robal_cifar10.yaml",
           "configs/eval/pgd.yaml", "configs/eval/aa.yaml"),
    checks={"data": check_data, "schedule": check_schedule, "step": check_step, "eval": check_eval},
    known=KNOWN,
    # coloredlogs colours their Logger's console output (core/trainer/logger.py); no Logger is built here
    stubs={"coloredlogs": {"install": lambda *a, **k: None}},
    presets=(PRESET, ROBAL),
)
