"""RoBal (Wu, Liu, Huang, Wang and Lin, CVPR 2021) against its authors' code, wutong16/Adversarial_Long-Tail at ab2f3a7.

What runs of theirs, unchanged (``official.Checkout``):

- data: ``datasets.builder.build_datasets`` (their LDAM-DRW ``IMBALANCECIFAR10`` / ``IMBALANCECIFAR100`` subset and
  their transforms) on CIFAR pickles written in the official layout, ``datasets.loader.build_loader.build_dataloader``;
- schedule: ``adjust_learning_rate`` of ``train.py`` and the optimiser line of its ``main()``, with their YAML configs
  (``configs/CIFAR10_LT/cifar10_LT0.02_pgdat_robal_{N,R}_{train,eval}.yaml``, CIFAR-100 alike) completed by their
  ``utils.env.set_default_configs``;
- step: their ``Networks`` (``CosPlus`` cosine classifier, ``MultiMarginLoss``) inside their ``_CustomDataParallel``,
  their ``train()`` loop of ``train.py`` calling ``methods.train_modes.add_reg_train`` (the PGD on CE of the scale-1
  cosines, the margin loss, the TRADES-style KL), for k steps on the same batches as ltrobust's
  ``Trainer.train_step``, from the same weights, with the global RNG seeded identically before each step. Their
  ``Networks`` builds only WideResNet backbones; for the ResNet-18 presets its backbone is their own
  ``models.backbones.resnet.ResNet18`` with the final linear layer removed (the classifier's ``in_dim`` 512);
  their ``WideResNet`` is compared with ltrobust's ``wrn34_10`` at the model level;
- evaluation: their evaluation classifier (``PostProc`` with ``tau_p`` for RoBal-N, ``CosPlus`` at scale 1 for
  RoBal-R) loaded through ``utils.env.load_checkpoint``, ``attacks.pgd_attack._pgd_whitebox_basic`` (FGSM, PGD-20)
  and ``attacks.auto_attack.eval_auto_attack`` (APGD-CE + APGD-T of the reference AutoAttack), against
  ltrobust's ``load_run`` / ``pgd`` / ``run_autoattack``.

mmcv (their loader's collate, dist info, ``mkdir_or_exist``) is not installed here: stand-ins with mmcv's behaviour
are used (listed in the JSON). Their ``from autoattack import AutoAttack`` gets the reference AutoAttack as
packaged on PyPI (``pyautoattack``), the code their import names.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from . import ours
from .at_bsl import (_Batches, _collate, _describe, _first_conv_input, _our_pipeline, _split_of, _cifar_files,
                     _their_cifar)
from .core import Known, KeyMap, Row, compare_exact, compare_tensor, compare_tensors, load_mapped, map_state, mapped, \
    predictions_agree
from .method import Context, MethodSpec
from .official import Recorder, call_with_seed, patched, quiet
from .steps import StepRecord, after_each_step, compare_steps, flips, model_rows, ours_steps_observed

N10, R10 = "robal-n-cifar10lt-resnet18", "robal-r-cifar10lt-resnet18"
N100, R100 = "robal-n-cifar100lt-resnet18", "robal-r-cifar100lt-resnet18"
WRN_R10 = "robal-r-cifar10lt-wrn34"
PRESETS = (N10, R10, N100, R100)
CFG = {N10: "configs/CIFAR10_LT/cifar10_LT0.02_pgdat_robal_N", R10: "configs/CIFAR10_LT/cifar10_LT0.02_pgdat_robal_R",
       N100: "configs/CIFAR100_LT/cifar100_LT0.1_pgdat_robal_N", R100: "configs/CIFAR100_LT/cifar100_LT0.1_pgdat_robal_R"}
CIFAR10_IRS = (10, 20, 50, 100)  # Wu et al., Table 4 (IR 50: Table 2)
CIFAR100_IRS = (10,)
#: ltrobust settings under which their training step is reproduced exactly (the start of their code; the preset
#: keeps Madry et al.'s symmetric start: the "attack start" rows of the preset setting)
THEIR_START = "attack.random_start=one_sided"
#: the lr milestones that reproduce their compounding decay with ltrobust's step schedule (80 epochs, decay at 60, 75)
COMPOUNDING = [*range(60, 81), *range(75, 81)]

# ------------------------------------------------------------------------------------- key maps
_IDENTITY = {r"^normalize\.mean$": 0.0, r"^normalize\.std$": 1.0}  # ours with model.normalize=false
_HEAD = (r"^classifier\.weight$", "head.weight")
_UNUSED = (r"^classifier\.bias$", r"^classifier\.moving_ed$")  # a zero bias without gradient; a statistic for TDE
RESNET18 = KeyMap(rules=(_HEAD,), unused=_UNUSED, ours_only=_IDENTITY)
WRN = KeyMap(rules=(_HEAD, (r"^backbone\.bn1\.", "backbone.bn."), (r"\.layer\.", "."),
                    (r"\.convShortcut\.", ".shortcut.")), unused=_UNUSED, ours_only=_IDENTITY)


def _mkdir_or_exist(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def _reference_autoattack() -> Any:
    """The reference AutoAttack (fra31/auto-attack as packaged on PyPI, ``pyautoattack``) under the constructor their
    ``from autoattack import AutoAttack`` line calls: the packaging takes keyword-only arguments and no ``verbose``
    (it logs instead), its batch size is ``batch_size`` (theirs ``bs``) and it returns ``(x_adv, y_adv)`` where the
    original returns ``x_adv``; everything else is the reference class."""
    import pyautoattack

    class AutoAttack(pyautoattack.AutoAttack):
        def __init__(self, model: Any, norm: str = "Linf", eps: float = 0.3, seed: Any = None, verbose: bool = True,
                     attacks_to_run: Any = (), version: str = "standard", device: Any = "cpu", **_: Any) -> None:
            super().__init__(model, norm=norm, eps=eps, seed=seed, version=version, device="cpu")
            self.verbose = verbose

        def run_standard_evaluation(self, x_orig: Any, y_orig: Any, bs: int = 250, **_: Any) -> Any:
            x_adv, _ = super().run_standard_evaluation(x_orig, y_orig, batch_size=bs)  # the packaging adds y_adv
            return x_adv

    return AutoAttack


STUBS = {"mmcv": {"mkdir_or_exist": _mkdir_or_exist, "dump": lambda *a, **k: None},
         "mmcv.runner": {"get_dist_info": lambda: (0, 1)}, "mmcv.parallel": {"collate": _collate}}

_LR_BUG = ("their adjust_learning_rate multiplies the optimiser's current lr by the decay of the epoch every epoch "
           "(param_group['lr'] * decay, decay = 0.1 per passed milestone), so the decay compounds: 0.1 up to epoch 59, "
           "then 1e-2, 1e-3, 1e-4, ... one decade per epoch from 60 and two per epoch from 75 (about 1e-32 at epoch "
           "80); the paper describes x0.1 at 60 and 75 (supplement A.1). A bug, not copied (SPEC 3)")

# ---------------------------------------------------------------------------------- known differences
KNOWN = {
    r"^learning rate at every epoch$": Known(
        _LR_BUG, "identical for epochs 1-59; from epoch 60 theirs is 10x, 100x, ... smaller (the row's per-epoch "
        "values): their model is in effect trained 60 epochs at 0.1 and about one at 0.01, then frozen",
        "train.milestones=[" + ",".join(map(str, COMPOUNDING)) + "] (every epoch from 60, twice from 75) reproduces "
        "it exactly: the 'their compounding decay' row"),
    r"^attack start|^attack iterates|^adversarial examples|^logits on the AEs|^loss,|^gradients|^weights after|"
    r"^BatchNorm buffers after": Known(
        "the preset's training attack starts uniformly in the eps-ball (Madry et al.); their add_reg_train starts at "
        "x + eps * U[0, 1), only the positive half of the l_inf box (a slip: their own evaluation PGD draws "
        "U(-eps, eps)); with the same draws everything after the start differs",
        "the start differs in every pixel (the row); with attack.random_start=one_sided every step-level row is "
        "equal (the rows of that setting)", THEIR_START, where=r"^robal-\S+-resnet18(?! attack\.random_start), "),
    r"^validation split": Known(
        "their code has no validation split and picks no checkpoint: train.py saves every 10 epochs and test.py "
        "evaluates epoch80.pt (the last; supplement A.1: 'without early-stop'); ltrobust's preset holds out 100 "
        "images per class that the LT subset did not select and keeps the best balanced validation robustness",
        "no effect on any training step; it decides which epoch is reported",
        "eval.checkpoint=last (the robal-*-paper-protocol presets)"),
    r"^checkpoint choice": Known(
        "their protocol reports the last epoch; ltrobust's preset reports the best balanced validation robustness "
        "(its honest default: no test-set choice, and the last checkpoint is reported beside it)",
        "no effect on training; the reported epoch differs", "eval.checkpoint=last (robal-*-paper-protocol)"),
    r"^evaluation attack settings|^AutoAttack settings": Known(
        "their test.py attacks at eps 0.031 with step 0.0078 (0.031 < 8/255 = 0.03137) and runs only APGD-CE and "
        "APGD-T of AutoAttack ('fab-t and square won't contribute much', supplement B); the preset evaluates at 8/255 "
        "with the full standard AutoAttack (the comparable number; RoBal's Table 2 'AA' is APGD-CE + T, the presets' "
        "reference marks it as apgd)", "a weaker evaluation: see the per-image AutoAttack rows",
        "eval.eps=0.031 eval.step_size=0.0078 eval.attacks=clean,fgsm,pgd20,mim20,cw20,apgd (robal-*-paper-protocol)",
        where=r"^robal-\S+-resnet18(?!-paper)|^robal-\S+-wrn34 "),
    r"^served (logits|classifier)|^input gradients|^(FGSM|PGD-20) AEs, same start|^(FGSM|PGD-20) attacked image "
    r"correct": Known(
        "RoBal-R on CIFAR-10-LT: their eval config serves the training classifier as it is (CosPlus at scale 1, no "
        "post-hoc term), so the deployed logits are cos; ltrobust serves s * cos (tau_p = 0), the logits the "
        "training loss scores. The argmax is the same; CE-based attacks see a 10x sharper softmax",
        "clean predictions equal; the gradient directions of CE and so the PGD / FGSM AEs differ (the rows)",
        "", where=r"RoBal-R"),
    r"^initial weights.*(CosPlus|cosine)": Known(
        "their CosPlus classifier and ltrobust's CosineHead both draw U(-1/sqrt(D), 1/sqrt(D)), but their classifier "
        "is built after the backbone from a stream the backbone's construction advanced differently (their "
        "_CustomDataParallel / Networks order); the distribution is the same", "none on the model's function", ""),
    r"attack iterates|adversarial examples|logits on the AEs|^loss|^gradients|^weights after|^BatchNorm buffers "
    r"after|AEs, same start|correct, same start": Known(
        "float32 rounding, amplified by PGD's sign step: ltrobust keeps delta = x_adv - x and sums the attack's CE "
        "where their loop keeps x_adv and averages it, the cosine head rounds in another order, and the preset's "
        "channels_last memory format makes the convolutions round differently; a gradient component near zero "
        "changes sign and that pixel moves by two step sizes. The float64 rows of the same computation are equal",
        "in float32 the two runs part after a few flipped pixels (the row's figures); none in float64",
        "train.channels_last=false rounds as their contiguous tensors do (fewer flipped pixels, not none)",
        where="fp32"),
}


# ------------------------------------------------------------------------------------- their pieces
class _Cfg(dict):
    """Their mmcv ``Config`` of a YAML file: a dict with attribute access (what their code reads)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _cfgs(ctx: Context, preset: str, stage: str = "train") -> _Cfg:
    """Their config of ``preset`` (``stage`` train or eval), completed by their ``set_default_configs``."""
    raw = yaml.safe_load(ctx.checkout.file(f"{CFG[preset]}_{stage}.yaml").read_text())
    cfgs = _Cfg({k: (_Cfg(v) if isinstance(v, dict) else v) for k, v in raw.items()})
    with quiet():
        ctx.checkout.module("utils.env").set_default_configs(cfgs)
    return cfgs


@contextlib.contextmanager
def _cuda_types() -> Iterator[None]:
    """Their loss builds ``torch.cuda.FloatTensor`` objects: CPU ones for the run."""
    with patched(torch.cuda, "FloatTensor", torch.FloatTensor):
        yield


def _their_net(ctx: Context, cfgs: _Cfg, counts: list[int], arch: str, seed: int | None = None) -> torch.nn.Module:
    """Their ``Networks(cfgs)``; for ``resnet18`` its backbone is their ``ResNet18`` without its last linear layer
    (their Networks builds only WideResNet) and the classifier reads 512 features."""
    cfgs = _Cfg(cfgs)
    cfgs["classifier_opt"] = _Cfg(dict(cfgs.get("classifier_opt") or {}))
    if arch == "resnet18":
        cfgs["classifier_opt"]["in_dim"] = 512
        cfgs["backbone_opt"] = {"depth": 10, "widen_factor": 1}  # built, then replaced (saves building WRN-34-10)
    if seed is not None:
        torch.manual_seed(seed)
    net_mod = ctx.checkout.module("models.Networks")
    with quiet(), _cuda_types():
        if arch == "resnet18":
            backbone = ctx.checkout.module("models.backbones.resnet").ResNet18()
            backbone.linear = torch.nn.Identity()
            net = net_mod.Networks(cfgs, num_classes=len(counts), samples_per_cls=counts)
            net.backbone = backbone
        else:
            net = net_mod.Networks(cfgs, num_classes=len(counts), samples_per_cls=counts)
    return net


def _mapping(arch: str, theirs: torch.nn.Module, mine: torch.nn.Module) -> tuple[dict[str, str], str]:
    m = map_state(theirs.state_dict(), mine.state_dict(), RESNET18 if arch == "resnet18" else WRN)
    unused = sorted(k for k in theirs.state_dict() if k not in m)
    return m, f"{len(m)} tensors mapped" + (f"; unused: {', '.join(unused)}" if unused else "")


class _Net(Recorder):
    """A :class:`Recorder` that also hands their code the wrapped network's attributes (``loss``, ``num_classes``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def _counts(ctx: Context, preset: str) -> list[int]:
    classes = 100 if "cifar100" in preset else 10
    ratio = 0.1 if classes == 100 else 0.02
    return list(_their_cifar(ctx, classes, _cifar_files(ctx, classes), ratio)[1])


def _our_data(ctx: Context, preset: str, *extra: str, imbalance: float | None = None):
    from ltrobust.data import build_data

    classes = 100 if "cifar100" in preset else 10
    root = _cifar_files(ctx, classes)
    cfg = ours.preset(preset, f"data_dir={root}", *((f"imbalance={imbalance:g}",) if imbalance else ()), *extra)
    return cfg, build_data(cfg.data)


def _dtypes(ctx: Context) -> list[torch.dtype]:
    return [torch.float32] + ([torch.float64] if ctx.options.fp64 else [])


# ============================================================================================ data
def check_data(ctx: Context) -> Iterator[Row]:
    for classes, irs, cfg_ratio in ((10, CIFAR10_IRS, 0.02), (100, CIFAR100_IRS, 0.1)):
        name = f"CIFAR-{classes}-LT"
        root = _cifar_files(ctx, classes)
        preset = N10 if classes == 10 else N100
        for ir in irs:
            ratio = cfg_ratio if abs(1 / ir - cfg_ratio) < 1e-12 else 1 / ir
            theirs, spc = _their_cifar(ctx, classes, root, ratio)
            _, data = _our_data(ctx, preset, imbalance=ir)
            setting = f"{name} IR {ir}"
            yield compare_exact("data", "per-class counts", spc, data.class_counts, setting,
                                detail=f"imbalance_ratio={ratio!r} (theirs) vs imbalance={ir} (ours); total {sum(spc)}")
            yield compare_tensor("data", "selected training images, in order", torch.from_numpy(theirs.data),
                                 data.train.images.permute(0, 2, 3, 1).contiguous(), setting,
                                 detail=f"{len(theirs.data)} images, uint8, exact")
            yield compare_exact("data", "training labels, in order", list(theirs.targets), data.train.labels.tolist(),
                                setting)
        test, _ = _their_cifar(ctx, classes, root, None, train=False)
        _, data = _our_data(ctx, preset)
        yield compare_tensor("data", "test images, in order", torch.from_numpy(test.data),
                             data.test.images.permute(0, 2, 3, 1).contiguous(), name, detail="full test split")
    # their preset configs' data settings
    for preset in PRESETS:
        cfgs = _cfgs(ctx, preset)
        cfg = ours.preset(preset)
        yield compare_exact("data", "data set and imbalance", [cfgs.dataset, cfgs.num_classes, round(1 / cfgs.imbalance_ratio)],
                            [cfg.data.dataset.replace("-lt", "").upper(), 100 if "100" in cfg.data.dataset else 10,
                             round(cfg.data.imbalance)], preset, detail="their config's dataset, num_classes, "
                            "1 / imbalance_ratio")
    # augmentation: their builder's transforms (train: crop 4 + flip; test: ToTensor)
    builder = ctx.checkout.module("datasets.builder")
    yield compare_exact("data", "augmentation pipeline", _describe(builder.transform_train),
                        _our_pipeline(ours.preset(N10).data.augment, 32)[0], "CIFAR",
                        detail=f"ltrobust data.augment={ours.preset(N10).data.augment}")
    imgs = _their_cifar(ctx, 10, _cifar_files(ctx, 10), None, train=False)[0].data[:32]
    from PIL import Image

    theirs_t = torch.stack([builder.transform_test(Image.fromarray(img)) for img in imgs])
    yield compare_tensor("data", "uint8 -> float conversion", theirs_t, ours.batches(_split_of(imgs), len(imgs), 1)[0][0],
                         "CIFAR", detail="their ToTensor (PIL) vs ltrobust's loader (x / 255)")
    yield from _normalisation_and_validation(ctx)


def _normalisation_and_validation(ctx: Context) -> Iterator[Row]:
    from ltrobust.models import build_model

    builder = ctx.checkout.module("datasets.builder")
    in_loader = any("Normalize" in type(t).__name__ for t in
                    builder.transform_train.transforms + builder.transform_test.transforms)
    x = torch.rand(2, 3, 32, 32)
    for preset, arch in ((N10, "resnet18"), (WRN_R10, "wrn34_10")):
        cfg = ours.preset(preset)
        counts = [100, 10] + [10] * 8
        theirs = _their_net(ctx, _cfgs(ctx, N10), counts, arch)
        mine = build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, 32)
        t_first = _first_conv_input(theirs, theirs.backbone.conv1, x)
        o_first = _first_conv_input(mine, mine.backbone.conv1, x)

        def where(first: torch.Tensor) -> str:
            return "none" if torch.equal(first, x) else "in the model"

        yield compare_exact("data", "input normalisation", "in the loader" if in_loader else where(t_first),
                            where(o_first), preset,
                            detail=f"what reaches the first convolution; model.normalize={cfg.model.normalize}")
    _, data = _our_data(ctx, N10)
    man = data.manifest
    yield compare_exact("data", "validation split", "none: the last epoch is evaluated",
                        f"{man['val_per_class']} per class from {man['val_from']} training images", N10,
                        detail="what picks the checkpoint")


# ========================================================================================= schedule
def _their_lrs(ctx: Context, cfgs: _Cfg) -> list[float]:
    defs = ctx.checkout.definitions("train.py", ["adjust_learning_rate"],
                                    {"logger": logging.getLogger("parity.robal.theirs"), "distributed": False},
                                    skip_imports=("mmcv", "torch.utils.tensorboard", "datasets", "attacks", "methods",
                                                  "models", "utils"))
    ns = defs["adjust_learning_rate"].__globals__
    ns["logger_info"] = lambda logger, dist, info: None
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfgs.lr)
    out = []
    for epoch in range(cfgs.resume_epoch + 1, cfgs.epochs + 1):  # their main()
        defs["adjust_learning_rate"](dummy, epoch, cfgs.lr_decline, cfgs.warmup_epochs)
        out.append(dummy.param_groups[0]["lr"])
    return out


def _their_optimizer(ctx: Context, cfgs: _Cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimiser of their main() for ``cfgs.lr_dict is None`` (the else branch, the one their configs take)."""
    import ast

    main = ctx.checkout.source_facts("train.py", "main")
    node = next(n for n in ast.walk(main) if isinstance(n, ast.If) and "lr_dict" in ast.unparse(n.test))
    stmt = node.orelse[0]
    ns = {"optim": torch.optim, "model": model, "cfgs": cfgs, "__builtins__": __builtins__}
    exec(compile(ast.Module(body=[stmt], type_ignores=[]), str(ctx.checkout.file("train.py")), "exec"), ns)  # noqa: S102
    return ns["optimizer"]


def check_schedule(ctx: Context) -> Iterator[Row]:
    for preset in PRESETS:
        cfgs = _cfgs(ctx, preset)
        cfg, data = _our_data(ctx, preset)
        tr = ours.trainer(cfg, data, ctx.scratch / f"sched-{preset}")
        their_lr = _their_lrs(ctx, cfgs)
        our_lr = [tr.lr(e) for e in range(cfg.train.epochs)]
        yield compare_exact("schedule", "epochs", cfgs.epochs, cfg.train.epochs, preset)
        lr_t = torch.tensor(their_lr, dtype=torch.float64)
        row = compare_tensor("schedule", "learning rate at every epoch", lr_t, torch.tensor(our_lr, dtype=torch.float64),
                             preset, detail="theirs adjust_learning_rate(epoch) for epoch 1..80, ours at 0..79; ratio "
                             "ours / theirs at epochs 59..64: " + ", ".join(f"{o / t:.3g}" for o, t in
                                                                          zip(our_lr[58:64], their_lr[58:64])))
        yield row
        if preset == N10:
            opt_cfg = ours.preset(preset, f"train.milestones=[{','.join(map(str, COMPOUNDING))}]")
            sched = ours.trainer(opt_cfg, data, ctx.scratch / "sched-compound")
            yield compare_tensor("schedule", "learning rate at every epoch, their compounding decay", lr_t,
                                 torch.tensor([sched.lr(e) for e in range(80)], dtype=torch.float64), preset,
                                 detail="ltrobust with train.milestones=[60..80, 75..80] (the option of the known row)")
            yield compare_exact("schedule", "learning rate within an epoch", "constant", "constant" if all(
                tr.lr(e, s, 10) == tr.lr(e) for e in range(cfg.train.epochs) for s in range(10)) else "varies", preset)
        counts = _counts(ctx, preset)
        net = _their_net(ctx, cfgs, counts, "resnet18")
        opt = _their_optimizer(ctx, cfgs, net)
        keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
        yield compare_exact("schedule", "optimizer settings", [type(opt).__name__] + [opt.defaults[k] for k in keys],
                            [type(tr.optimizer).__name__] + [tr.optimizer.defaults[k] for k in keys], preset,
                            detail="SGD " + ", ".join(keys))
        # weight decay reaches the parameters that get a gradient: theirs all of model.parameters() (their zero
        # classifier bias and moving_ed have requires_grad=False, so SGD skips them)
        t_wd = [len(opt.param_groups), all(g["weight_decay"] > 0 for g in opt.param_groups),
                sum(p.numel() for g in opt.param_groups for p in g["params"] if p.requires_grad)]
        o_wd = [len(tr.optimizer.param_groups), all(g["weight_decay"] > 0 for g in tr.optimizer.param_groups),
                sum(p.numel() for g in tr.optimizer.param_groups for p in g["params"] if p.requires_grad)]
        yield compare_exact("schedule", "weight decay on which parameters", t_wd, o_wd, preset,
                            detail="groups, all with weight decay, trainable parameters decayed (their Networks with "
                                   "their ResNet18 backbone; BatchNorm and biases included on both sides)")
        trainset, _ = _their_cifar(ctx, len(counts), _cifar_files(ctx, len(counts)), cfgs.imbalance_ratio)
        loader = ctx.checkout.module("datasets.loader.build_loader").build_dataloader(
            trainset, imgs_per_gpu=cfgs.batch_size, dist=False, sampler=cfgs.sampler, shuffle=True)
        yield compare_exact("schedule", "batch size, steps per epoch, last batch dropped",
                            [loader.batch_size, len(loader), bool(loader.drop_last)],
                            [cfg.train.batch_size, len(tr.loader), bool(tr.loader.drop_last)], preset,
                            detail=f"{len(data.train.labels)} training images")
        yield compare_exact("schedule", "attack eps, step, steps as written",
                            [cfgs.train_epsilon, cfgs.train_step_size, cfgs.train_num_steps],
                            [cfg.attack.eps, cfg.attack.step_size, tr.method.options.attack_steps], preset,
                            detail="their config's train_epsilon, train_step_size, train_num_steps")
        for p in (preset, *((f"{preset.replace('resnet18', 'wrn34')}-paper-protocol",) if preset else ())):
            c = ours.preset(p)
            yield compare_exact("schedule", "evaluation attack settings",
                                [cfgs.test_epsilon, cfgs.test_step_size, cfgs.test_num_steps, cfgs.random],
                                [c.eval.eps, c.eval.step_size, 20, "pgd20" in c.eval.attacks], p,
                                detail="their test_epsilon, test_step_size, test_num_steps, random start of PGD-20; "
                                       "ours eval.eps, eval.step_size, pgd20 in eval.attacks")
        yield compare_exact("schedule", "precision", _their_precision(ctx),
                            "fp32" if tr.amp_dtype is None else str(tr.amp_dtype).replace("torch.", ""), preset,
                            detail=f"train.precision={cfg.train.precision}")
        args = ctx.checkout.args("train.py", ["x.yaml"])
        yield compare_exact("schedule", "seed", args.seed, cfg.train.seed, preset,
                            detail="their --seed (set_random_seed before the model is built)")


def _their_precision(ctx: Context) -> str:
    text = " ".join(ctx.checkout.file(f).read_text() for f in ("train.py", "methods/train_modes.py"))
    return "mixed" if any(k in text for k in ("autocast", "GradScaler", ".half()", "bfloat16")) else "fp32"


# ============================================================================================= step
def check_step(ctx: Context) -> Iterator[Row]:
    yield from _models(ctx)
    for preset in (N10, R10):
        for dtype in _dtypes(ctx):
            yield from _steps(ctx, preset, dtype, THEIR_START)
    yield from _steps(ctx, R100, torch.float64, THEIR_START)
    # the presets as they are: Madry's start (the rows name the start as the difference)
    yield from _steps(ctx, N10, torch.float32)


def _models(ctx: Context) -> Iterator[Row]:
    """Their Networks (backbone + CosPlus) against ltrobust's models with mapped weights."""
    from ltrobust.models import build_model

    counts = _counts(ctx, N10)
    for arch, preset, n in (("resnet18", N10, 8), ("wrn34_10", WRN_R10, 2)):
        cfg = ours.preset(preset)
        cfgs = _cfgs(ctx, N10)
        setting = f"{arch} + cosine head vs their Networks ({'ResNet18' if arch == 'resnet18' else 'WideResNet'} + CosPlus)"
        theirs = _their_net(ctx, cfgs, counts, arch, seed=cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        mine = build_model(cfg.model, 10, 3, (0.5,) * 3, (0.25,) * 3, 32)
        m, text = _mapping(arch, theirs, mine)
        yield Row("step", "model: key mapping", "equal", setting,
                  detail=f"{text}; every key of ours hit, shapes equal, our normalisation the identity")
        if arch == "wrn34_10":
            ts, ms = theirs.state_dict(), mine.state_dict()
            back = {k: o for k, o in m.items() if k.startswith("backbone.")}
            yield compare_tensors("step", "initial weights of the backbone, same seed (WideResNet)", mapped(ts, back),
                                  {o: ms[o] for o in back.values()}, setting,
                                  detail=f"torch.manual_seed({cfg.train.seed}) before each model is built")
        x = torch.from_numpy(ours.synthetic_images(n, 32, seed=11)).permute(0, 3, 1, 2).float() / 255
        y = torch.arange(n) % 10
        for dtype in _dtypes(ctx):
            t_model, o_model = copy.deepcopy(theirs).to(dtype), copy.deepcopy(mine).to(dtype)
            load_mapped(o_model, t_model.state_dict(), m)
            yield from model_rows(t_model, o_model, x, y, dtype, setting, what="scale-1 cosines",
                                  ours_fn=lambda model, xo: model.head.cosine(model.features(xo)),
                                  detail="their CosPlus (scale 1, the training config) vs head.cosine(features)")


def _step_batches(ctx: Context, data: Any, k: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.RandomState(ctx.options.seed)
    perm = torch.from_numpy(rng.permutation(len(data.train.labels))[: k * batch])
    return ours.batches(data.train.subset(perm), batch, k)


def _steps(ctx: Context, preset: str, dtype: torch.dtype, *overrides: str) -> Iterator[Row]:
    """k optimiser steps of their train() (add_reg_train) and of ltrobust's Trainer.train_step from the same
    weights, on the same batches, with the same RNG seed before each step."""
    k, batch = ctx.options.steps, ctx.options.batch_size
    name = "fp32" if dtype == torch.float32 else "fp64"
    setting = f"{preset}{''.join(' ' + o for o in overrides)}, {name}, batch {batch}"
    cfgs = _cfgs(ctx, preset)
    counts = _counts(ctx, preset)
    cfg, data = _our_data(ctx, preset, *overrides)
    batches = [(x.to(dtype), y) for x, y in _step_batches(ctx, data, k, batch)]
    seeds = [1000 + i for i in range(k)]
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        tr = ours.trainer(cfg, data, ctx.scratch / f"step-{preset}-{name}-{len(overrides)}")
        tr.model.to(dtype)
        theirs = _their_net(ctx, cfgs, counts, "resnet18", seed=cfg.train.seed).to(dtype)
        m, _ = _mapping("resnet18", theirs, tr.model)
        load_mapped(tr.model, theirs.state_dict(), m)
        # theirs: their train() with add_reg_train observed, the optimiser line of main(), their DataParallel wrapper
        modes = ctx.checkout.module("methods.train_modes")
        losses: list[torch.Tensor] = []

        def observed(**kw: Any) -> torch.Tensor:
            out = modes.add_reg_train(**kw)
            losses.append(out.detach().clone())
            return out

        defs = ctx.checkout.definitions("train.py", ["train"], {
            "cfgs": cfgs, "samples_per_cls": counts, "distributed": False, "logger": logging.getLogger("parity"),
            "add_reg_train": call_with_seed(observed, iter(seeds))},
            skip_imports=("mmcv", "torch.utils.tensorboard", "datasets", "attacks"))
        defs["train"].__globals__["logger_info"] = lambda logger, dist, info: None
        wrapped = ctx.checkout.module("utils.env")._CustomDataParallel(theirs)
        opt = _their_optimizer(ctx, cfgs, wrapped)
        lrs = _their_lrs(ctx, cfgs)
        for g in opt.param_groups:
            g["lr"] = lrs[0]  # main(): adjust_learning_rate(optimizer, 1) first
        snaps = after_each_step(opt, theirs)
        rec = _Net(wrapped)
        with quiet(), _cuda_types():
            defs["train"](cfgs, rec, "cpu", _Batches(batches, len(data.train.labels)), opt, 1, None)
        # per step: the attack's forwards (eval mode), then x' (L_1), x (beta_nat * CE), x, x' (the KL) in train mode
        per = cfgs.train_num_steps + 4
        their_steps = []
        for i, (loss, snap) in enumerate(zip(losses, snaps)):
            calls = rec.calls[i * per:(i + 1) * per]
            a, t = calls[:cfgs.train_num_steps], calls[cfgs.train_num_steps:]
            their_steps.append(StepRecord([c[1] for c in a], [c[0] for c in a], t[0][1], t[0][2], loss,
                                          snap["grads"], snap["weights"], snap["buffers"]))
        # RoBal's attack reads features and the head's cosines, not the model's forward: the backbone is observed;
        # the logits compared are the scale-1 cosines, as their CosPlus(scale 1) returns them
        our_steps, train_forwards = ours_steps_observed(tr, batches, seeds, tr.model.backbone,
                                                        logits_scale=tr.model.head.scale)
    finally:
        torch.set_default_dtype(default)
    if dtype == torch.float32 and preset == N10 and overrides == (THEIR_START,):
        ctx.cache["trained"] = {key: v.clone() for key, v in theirs.state_dict().items()}
    yield compare_exact("step", "forwards per step (attack, train mode)",
                        [sum(not c[0] for c in rec.calls[:per]), sum(c[0] for c in rec.calls[:per])],
                        [len(our_steps[0].attack_inputs), train_forwards], setting,
                        detail="their add_reg_train: the attack's forwards, then x' (L_1), x (beta_nat 0 * CE), x and x' "
                               f"(the KL); ltrobust with forwards={tr.method.options.forwards}")
    yield compare_exact("step", "loss terms and weights", [cfgs.loss_opt["MultiMargin"]["m"],
                                                           cfgs.loss_opt["MultiMargin"]["tau_b"],
                                                           cfgs.loss_opt["MultiMargin"]["tau_m"],
                                                           cfgs.loss_opt["MultiMargin"]["s"],
                                                           cfgs.train_mode["add_reg"]["beta_reg"],
                                                           cfgs.classifier_opt["gamma"]],
                        [tr.method.options.m0, tr.method.options.tau_b, tr.method.options.tau_m,
                         tr.model.head.scale, tr.method.options.alpha, tr.model.head.gamma], setting,
                        detail="m0, tau_b, tau_m, s, alpha (their beta_reg), gamma")
    yield from compare_steps(their_steps, our_steps, m, batches, setting,
                             start="their x + eps * torch.rand and ltrobust's start, same seed")


# ============================================================================================= eval
def _checkpoint(ctx: Context) -> tuple[dict[str, torch.Tensor], str]:
    if "trained" in ctx.cache:
        return ctx.cache["trained"], (f"their Networks (ResNet18 + CosPlus) after the step level's "
                                      f"{ctx.options.steps} steps of {N10} (fp32)")
    cfg = ours.preset(N10)
    net = _their_net(ctx, _cfgs(ctx, N10), _counts(ctx, N10), "resnet18", seed=cfg.train.seed)
    return net.state_dict(), "their Networks (ResNet18 + CosPlus) at initialisation"


def check_eval(ctx: Context) -> Iterator[Row]:
    from ltrobust.attacks import Linf, pgd
    from ltrobust.evaluation.evaluator import balanced_subset
    from ltrobust.evaluation.runs import load_run

    state, which = _checkpoint(ctx)
    ctx.note(f"evaluation checkpoint: {which}")
    path = ctx.scratch / "their-checkpoint.pt"
    torch.save(state, path)
    env = ctx.checkout.module("utils.env")
    log = logging.getLogger("parity.robal.theirs")
    log.setLevel(logging.WARNING)
    n = ctx.options.eval_images
    for preset, label in ((N10, "RoBal-N"), (R10, "RoBal-R")):
        counts = _counts(ctx, preset)
        cfg, data = _our_data(ctx, preset)
        x, y = ours.batches(data.test.subset(balanced_subset(data.test.labels, n, seed=ctx.options.seed)), n, 1)[0]
        # theirs: test.py's lines: Networks(eval config), load_checkpoint, eval()
        ecfgs = _cfgs(ctx, preset, "eval")
        theirs = _their_net(ctx, ecfgs, counts, "resnet18")
        with quiet():
            env.load_checkpoint(theirs, log, str(path))
        theirs.eval()
        # ours: the weights through ltrobust's checkpoint writer and reader (what `ltrobust eval` loads)
        tr = ours.trainer(cfg, data, ctx.scratch / f"eval-{preset}")
        train_net = _their_net(ctx, _cfgs(ctx, preset), counts, "resnet18")
        m, _ = _mapping("resnet18", train_net, tr.model)
        load_mapped(tr.model, state, m)
        ckpt = tr.folder.checkpoint("best")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tr.save_weights(ckpt, 0, None)
        run = load_run(ckpt, [f"data_dir={_cifar_files(ctx, 10)}"])
        deployed = run.deployed.eval()
        setting = f"{preset} ({label}), {n} test images"
        if preset == N10:
            yield _checkpoint_choice(ctx, run.cfg, preset)
            yield _checkpoint_choice(ctx, ours.preset(f"{WRN_R10.replace('-r-', '-n-')}-paper-protocol"),
                                     f"{WRN_R10.replace('-r-', '-n-')}-paper-protocol")
        yield compare_exact("eval", "served classifier", _describe_theirs(ecfgs), _describe_ours(deployed), setting,
                            detail="their eval config's classifier vs ltrobust's deployed model")
        for dtype in _dtypes(ctx):
            dn, count = ("fp32", n) if dtype == torch.float32 else ("fp64", min(8, n))
            where = f"{setting}, {dn}"
            default = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                t_model, o_model = copy.deepcopy(theirs).to(dtype).eval(), copy.deepcopy(deployed).to(dtype).eval()
                pick = torch.arange(0, n, max(1, n // count))[:count]
                xd, yd = x[pick].to(dtype), y[pick]
                xt, xo = xd.clone().requires_grad_(True), xd.clone().requires_grad_(True)
                zt, zo = t_model(xt), o_model(xo)
                yield compare_tensor("eval", "served logits", zt, zo, where,
                                     detail="their eval network + load_checkpoint vs ltrobust's load_run(...).deployed")
                yield compare_exact("eval", "served predictions", zt.argmax(1).tolist(), zo.argmax(1).tolist(), where)
                gt, = torch.autograd.grad(F.cross_entropy(zt, yd, reduction="sum"), xt)
                go, = torch.autograd.grad(F.cross_entropy(zo, yd, reduction="sum"), xo)
                yield compare_tensor("eval", "input gradients", gt, go, where)
                # their FGSM and PGD-20 (test_epsilon, test_step_size, random start), their start injected into ours
                pa = ctx.checkout.module("attacks.pgd_attack")
                rec = Recorder(t_model)
                torch.manual_seed(ctx.options.seed)
                pa._pgd_whitebox_basic(rec, "cpu", xd.clone(), yd, random=ecfgs.random, epsilon=ecfgs.test_epsilon,
                                       num_steps=ecfgs.test_num_steps, step_size=ecfgs.test_step_size)
                # forwards: clean, FGSM (gradient, output), then per PGD step two (output, loss), then the final
                fgsm_adv = rec.calls[2][1]
                start = rec.calls[3][1] - xd
                pgd_adv = rec.calls[-1][1]
                thr = Linf(ecfgs.test_epsilon)
                ours_fgsm = pgd(o_model, xd, yd, thr, steps=1, step_size=ecfgs.test_epsilon, random_start=False)
                ours_pgd = pgd(o_model, xd, yd, thr, steps=ecfgs.test_num_steps, step_size=ecfgs.test_step_size,
                               start=start)
                for name, t_adv, o_adv, t_out in (("FGSM", fgsm_adv, ours_fgsm, rec.calls[2][2]),
                                                  ("PGD-20", pgd_adv, ours_pgd, rec.calls[-1][2])):
                    yield compare_tensor("eval", f"{name} AEs, same start", t_adv, o_adv, where,
                                         detail=f"their _pgd_whitebox_basic (eps {ecfgs.test_epsilon}, step "
                                                f"{ecfgs.test_step_size}) vs ltrobust's pgd, their start injected; "
                                                f"{flips(t_adv, o_adv)}")
                    with torch.no_grad():
                        o_pred = o_model(o_adv).argmax(1)
                    yield predictions_agree("eval", f"{name} attacked image correct, same start",
                                            t_out.argmax(1) == yd, o_pred == yd, where)
            finally:
                torch.set_default_dtype(default)
        if preset == N10:
            yield from _autoattack(ctx, ecfgs, theirs, deployed, x, y, setting)


def _describe_theirs(ecfgs: _Cfg) -> list[Any]:
    c = ecfgs.classifier_opt
    if ecfgs.classifier == "PostProc":
        return ["cosine", c.get("scale"), c.get("gamma"), "tau_p", c.get("tau_p") if c.get("posthoc") else 0.0]
    return ["cosine", c.get("scale"), c.get("gamma"), "tau_p", 0.0]


def _describe_ours(deployed: Any) -> list[Any]:
    head = deployed.head
    return ["cosine", head.scale, head.gamma, "tau_p", getattr(deployed, "tau_p", 0.0)]


def _checkpoint_choice(ctx: Context, cfg: Any, preset: str) -> Row:
    import ast

    test = ctx.checkout.source_facts("test.py")
    loads = any(isinstance(n, ast.Attribute) and n.attr == "model_path" for n in ast.walk(test))
    cfgs = _cfgs(ctx, N10, "eval")
    theirs = f"last epoch ({Path(cfgs.model_path).name})" if loads and str(cfgs.model_path).endswith(
        f"epoch{cfgs.epochs}.pt") else "?"
    ours_rule = ("best balanced PGD robustness on the validation split" if cfg.eval.checkpoint == "best"
                 else f"last epoch (epoch{cfg.train.epochs}.pt)")
    return compare_exact("eval", "checkpoint choice", theirs, ours_rule, preset,
                         detail="theirs: test.py loads cfgs.model_path, the eval config's epoch80.pt")


def _autoattack(ctx: Context, ecfgs: _Cfg, theirs: torch.nn.Module, deployed: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor, setting: str) -> Iterator[Row]:
    """Their eval_auto_attack (APGD-CE + APGD-T of the reference AutoAttack) against ltrobust's ``apgd`` and ``aa``."""
    import pyautoattack

    from ltrobust.attacks.autoattack import run_autoattack

    n = min(ctx.options.aa_images, len(y))
    xa, ya = x[:n], y[:n]
    aa_mod = ctx.checkout.module("attacks.auto_attack")
    rec = _Net(theirs, keep=1)  # their function also reads model.classifier
    seen: dict[str, Any] = {}
    real_run = pyautoattack.AutoAttack.run_standard_evaluation

    def observed_run(self: Any, *a: Any, **k: Any) -> Any:
        self.seed = ctx.options.seed  # their call leaves the seed to the clock
        seen.update(attacks=list(self.attacks_to_run), eps=self.epsilon, version=self.version,
                    n_iter=self.apgd.n_iter, targets=self.apgd_targeted.n_target_classes)
        return real_run(self, *a, **k)

    scratch = ctx.scratch / "their-aa"
    scratch.mkdir(exist_ok=True)
    cwd = os.getcwd()
    try:
        os.chdir(scratch)  # their function writes ./data_ana/*.csv
        with patched(pyautoattack.AutoAttack, "run_standard_evaluation", observed_run), quiet():
            aa_mod.eval_auto_attack(rec, "cpu", ecfgs, _Quiet(), _Batches([(xa, ya)], n))
    finally:
        os.chdir(cwd)
    t_adv_pred = rec.calls[-1][2].argmax(1)
    with torch.no_grad():
        t_ok = (theirs(xa).argmax(1) == ya) & (t_adv_pred == ya)
    paper = ours.preset(f"{WRN_R10.replace('-r-', '-n-')}-paper-protocol")
    for cfg_name, cfg in ((N10, ours.preset(N10)), (f"{WRN_R10.replace('-r-', '-n-')}-paper-protocol", paper)):
        aa = [a for a in cfg.eval.attacks if a in ("aa", "apgd")]
        ours_desc = [["apgd-ce", "apgd-t"] if aa == ["apgd"] else ["apgd-ce", "apgd-t", "fab-t", "square"],
                     round(cfg.eval.eps, 6)]
        yield compare_exact("eval", "AutoAttack settings", [seen.get("attacks"), round(float(seen.get("eps", 0)), 6)],
                            ours_desc, cfg_name, detail=f"attacks run and eps; theirs AutoAttack(version="
                                                        f"{seen.get('version')!r}) with attacks_to_run set, APGD "
                                                        f"{seen.get('n_iter')} iterations, {seen.get('targets')} "
                                                        "target classes (the reference's)")
    _, o_ok = run_autoattack(deployed, xa, ya, eps=float(ecfgs.test_epsilon), version="apgd-ce-t", seed=ctx.options.seed)
    yield predictions_agree("eval", "AutoAttack per-image robustness, APGD-CE + T at their eps", t_ok, o_ok,
                            f"{setting[:setting.index(',')]}, {n} test images",
                            detail=f"clean and APGD-CE + T correct at eps {ecfgs.test_epsilon}: their "
                                   "eval_auto_attack vs ltrobust's apgd (run_autoattack version apgd-ce-t)")
    _, full_ok = run_autoattack(deployed, xa, ya, eps=8 / 255, version="standard", seed=ctx.options.seed)
    yield compare_exact("eval", "robust images: their APGD-CE + T at 0.031 vs ltrobust's full AA at 8/255",
                        int(t_ok.sum()), int(full_ok.sum()), f"{setting[:setting.index(',')]}, {n} test images",
                        detail="the protocol gap of the known row, measured on the checkpoint")


class _Quiet:
    """Their logger (``logger.info``) for a function that logs progress: nothing printed."""

    def info(self, *a: Any, **k: Any) -> None:
        pass


SPEC = MethodSpec(
    name="robal",
    repository="wutong16/Adversarial_Long-Tail",
    checkout="Adversarial_Long-Tail",
    commit="ab2f3a792aede2bd2a3e57657c787ec542165be1",
    files=("train.py", "test.py", "methods/train_modes.py", "methods/losses_inclass.py", "models/Networks.py",
           "models/classifiers/basic_classifiers.py", "models/backbones/resnet.py", "models/backbones/wideresnet.py",
           "datasets/builder.py", "datasets/datasets.py", "datasets/loader/build_loader.py", "attacks/pgd_attack.py",
           "attacks/auto_attack.py", "utils/env.py", *(f"{c}_{s}.yaml" for c in CFG.values() for s in ("train", "eval"))),
    checks={"data": check_data, "schedule": check_schedule, "step": check_step, "eval": check_eval},
    known=KNOWN,
    stubs={**STUBS, "autoattack": {"AutoAttack": _reference_autoattack()}},
    presets=(*PRESETS, WRN_R10),
)
