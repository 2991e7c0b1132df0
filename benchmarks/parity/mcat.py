"""MCAT (Xian, Yang and Yu, IJCAI 2026) against its authors' code, yneversky/MCAT at f19c2af (code/MACT_code).

The release's code computes another method than the paper describes (docs/methods.md, "mcat"); ltrobust's
``variant=code`` reproduces the code and is what this module compares (``variant=paper`` is the paper's
description: a differentiable manifold term with the appendix's sign in the attack and the loss, its weights,
generator sizes and schedule; no code of the authors computes it, so it has no parity rows).

What runs of theirs, unchanged (``official.Checkout``):

- data: ``mcat.utils_data.exp_decay_counts`` / ``stratified_subsample_indices`` (what
  ``scripts/prepare_cifar_lt.py`` writes to its split JSON), ``mcat.data``'s transforms and
  ``build_dataloaders`` (read off for the loader settings);
- schedule: ``run.py``'s parser defaults, the optimiser line of ``mcat.trainer.Trainer.__init__`` (no scheduler);
- step: their ``build_model("resnet18_cifar")`` against ltrobust's ``resnet18`` with mapped weights, their
  ``ClassConditionalGenerators`` against ltrobust's ``ClassGenerators`` (key map ``G.{c}.net.`` ->
  ``generators.{c}.``), ``Trainer._train_generators`` against ``fit_generators`` (the same batches, features and
  latent draws), ``Trainer._manifold_distance`` against ``manifold_distance(..., reduction="class_mean",
  differentiable=False)``, ``Trainer._geom_regularizer`` against ``etf_loss``, and k steps of
  ``Trainer._train_one_epoch`` (MS-PGD, CE + beta L_ETF, the SGD step) against ltrobust's ``Trainer.train_step``
  from the same weights and generators on the same batches; their ``Trainer`` object is made without its
  ``__init__`` (which reads the data files and fits the generators for 10 epochs) and given the state;
- eval: their model after the step level loaded by ``build_model`` + ``load_state_dict`` and by ``ltrobust eval``'s
  loader, their ``mcat.attacks.pgd_linf`` (PGD-20) and their AutoAttack call (read off ``_eval_autoattack``).

The repository's commit holds the code as ``MACT_code.zip``; ``--official`` points at the archive unpacked
(``code/MACT_code``), which git reports as untracked.
"""

from __future__ import annotations

import copy
import types
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import ours
from .at_bsl import _cifar_files
from .core import (Known, KeyMap, Row, compare_exact, compare_tensor, compare_tensors, load_mapped, map_state,
                   mapped)
from .method import Context, MethodSpec
from .official import Recorder, quiet
from .steps import StepRecord, after_each_step, compare_steps, ours_steps

PRESET = "mcat-code-cifar100lt-resnet18"
PAPER = "mcat-cifar100lt-resnet18"
IRS = {100: (10, 20, 50, 100), 10: (50,)}

_IDENTITY = {r"^normalize\.mean$": 0.0, r"^normalize\.std$": 1.0}
RESNET18 = KeyMap(rules=((r"^encoder\.", "backbone."), (r"\.downsample\.", ".shortcut."), (r"^classifier\.", "head.")),
                  ours_only=_IDENTITY)
GENERATORS = KeyMap(rules=((r"^G\.(\d+)\.net\.", r"generators.\1."),))

_FP32 = Known(
    "float32 rounding, amplified by PGD's sign step: their loop clamps x_adv to x +- eps, ltrobust keeps delta, so "
    "iterates differ in the last bit and a gradient component near zero can change sign; the preset's "
    "channels_last memory format also rounds the convolutions differently. The float64 rows are equal",
    "in float32 the runs part from step 1 on (the row's figures); none in float64", "", where="fp32")
KNOWN = {
    r"^per-class counts": Known(
        "their exp_decay_counts rounds img_max * IR^(-c / (C - 1)) to the nearest integer (mcat/utils_data.py), "
        "ltrobust's exp profile (LDAM-DRW's, as every other seed code) truncates it", "some classes differ by one "
        "image (the row's first difference); the total by a few", "data.indices_file=<their split's lt_indices> "
        "(their counts and images exactly: the 'with data.indices_file' row)"),
    r"^selected training indices \(their rule": Known(
        "their split draws np.random.default_rng(seed) per class (scripts/prepare_cifar_lt.py via "
        "stratified_subsample_indices); ltrobust's default is LDAM-DRW's np.random.RandomState rule",
        "a different sample of each class's images; no effect on any computation",
        "data.indices_file=<their split JSON's lt_indices saved as a JSON list>"),
    r"^checkpoint choice": Known(
        "leak in their code: ckpt_best.pth is the epoch with the best robust accuracy on the test set (their "
        "val_loader is the test split, mcat/trainer.py:533-539); ltrobust picks on a held-out validation split",
        "no effect on training; the reported epoch differs", "eval.checkpoint=last (no selection)"),
    r"^model stem": Known(
        "their --arch resnet18 (the default) is torchvision's ImageNet-stem ResNet-18 (7x7 stride-2 conv and "
        "max-pool) on 32 px images (mcat/models.py:70-72); ltrobust's resnet18 has the CIFAR stem, as their own "
        "--arch resnet18_cifar (compared below) and every seed method's code", "the ImageNet stem reduces 32 px "
        "images to 8x8 before the first stage: a weaker network (not measured here)", "none"),
    r"^PGD-20 per-image": Known(
        "different random starts: their pgd_linf draws its uniform start from the global RNG, ltrobust's from its "
        "own seeded generator; with the same start injected the attacks are equal (the 'same start' rows)",
        "the per-image disagreement counted in the row", ""),
    r"attack iterates|adversarial examples|logits on the AEs|^loss|^gradients|^weights after|^BatchNorm buffers "
    r"after|AEs, same start|correct, same start": _FP32,
}


# ------------------------------------------------------------------------------------- their pieces
def _their_args(ctx: Context, *argv: str) -> Any:
    """run.py's parser (its own statements) and parse_args: the defaults of the release."""
    import argparse

    f = ctx.checkout.file("run.py")
    import ast

    tree = ast.parse(f.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parse_args")
    body = [s for s in fn.body if not isinstance(s, ast.Return)]
    ns: dict[str, Any] = {"argparse": argparse}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(f), "exec"), ns)  # noqa: S102 (their parser)
    return ns["p"].parse_args(["--dataset", "cifar100", *argv])


def _float(ctx: Context, text: str) -> float:
    ns = ctx.checkout.definitions("run.py", ["_parse_float_expr"])
    return float(ns["_parse_float_expr"](text))


class _Rec(Recorder):
    """A Recorder for their model, whose forward returns (logits, features): keeps the logits."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.model(x, *args, **kwargs)
        self.calls.append((self.model.training, x.detach().clone(), out[0].detach().clone()))
        return out

    def classifier_weight(self) -> torch.Tensor:  # what their _geom_regularizer reads off the model
        return self.model.classifier_weight()


def _their_cfg(ctx: Context, args: Any, out_dir: str) -> Any:
    """Their TrainConfig as run.py's main() fills it (the parsed defaults)."""
    tr = ctx.checkout.module("mcat.trainer")
    f = lambda s: _float(ctx, s)  # noqa: E731
    return tr.TrainConfig(
        exp_name=args.exp_name, out_dir=out_dir, seed=args.seed, dataset=args.dataset, data_root=args.data_root,
        ir=args.ir, tiny_train_dir=args.tiny_train_dir, tiny_val_dir=args.tiny_val_dir, batch_size=args.batch_size,
        num_workers=0, arch=args.arch, method=args.method, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, momentum=args.momentum, device="cpu", save_every=args.save_every,
        epsilon=f(args.epsilon), train_attack_steps=args.train_attack_steps,
        train_attack_step_size=f(args.train_attack_step_size), eval_attack=args.eval_attack,
        eval_pgd_steps=args.eval_pgd_steps, eval_pgd_step_size=f(args.eval_pgd_step_size),
        eval_aa_every=args.eval_aa_every, eval_max_batches=args.eval_max_batches, awp_gamma=args.awp_gamma,
        awp_lr=args.awp_lr, awp_steps=args.awp_steps, lambda_m=args.lambda_m, beta_g=args.beta_g,
        mspgd_steps=args.mspgd_steps, mspgd_step_size=f(args.mspgd_step_size),
        mspgd_random_start=args.mspgd_random_start, gen_z_dim=args.gen_z_dim, gen_hidden=args.gen_hidden,
        gen_epochs=args.gen_epochs, gen_lr=args.gen_lr, gen_batch_size=args.gen_batch_size,
        gen_latent_steps=args.gen_latent_steps, gen_latent_lr=args.gen_latent_lr)


def _their_trainer(ctx: Context, cfg: Any, model: torch.nn.Module, batches: list, num_classes: int) -> Any:
    """Their Trainer without its __init__ (data files, 10 generator epochs), given the state __init__ builds."""
    tr = ctx.checkout.module("mcat.trainer")
    t = tr.Trainer.__new__(tr.Trainer)
    t.cfg, t.device, t.model, t.num_classes = cfg, torch.device("cpu"), model, num_classes
    t.train_loader = batches
    t.metrics_path = ctx.scratch / "mcat-metrics.jsonl"
    t.feat_dim = 512
    t.awp, t._free_delta = None, None
    return t


def _our_data(ctx: Context, classes: int, *extra: str):
    from ltrobust.data import build_data

    root = _cifar_files(ctx, classes)
    ds = [] if classes == 100 else ["dataset=cifar10-lt"]
    cfg = ours.preset(PRESET, f"data_dir={root}", *ds, *extra)
    return cfg, build_data(cfg.data)


# ============================================================================================ data
def check_data(ctx: Context) -> Iterator[Row]:
    import json

    from ltrobust.data.profiles import class_counts

    ud = ctx.checkout.module("mcat.utils_data")
    for classes, irs in IRS.items():
        n_max = 50000 // classes
        for ir in irs:
            setting = f"CIFAR-{classes}-LT IR {ir}"
            theirs_c = ud.exp_decay_counts(classes, img_max=n_max, ir=ir)
            yield compare_exact("data", "per-class counts", theirs_c, class_counts("exp", n_max, classes, ir), setting,
                                detail=f"their exp_decay_counts (rounded) vs ltrobust's exp profile; totals "
                                       f"{sum(theirs_c)} and {sum(class_counts('exp', n_max, classes, ir))}")
            if ir != 100 and classes == 100:
                continue
            cfg, data = _our_data(ctx, classes, f"imbalance={ir}")
            labels = np.asarray(ours.interleaved_labels(classes, n_max, 0))
            sel = ud.stratified_subsample_indices(labels, theirs_c, seed=0)
            our_idx = sorted(int(i) for c in data.manifest["indices"]["train"].values() for i in c)
            yield compare_exact("data", "selected training indices (their rule, ltrobust's default)", sorted(sel.tolist()),
                                our_idx, setting, detail="their stratified_subsample_indices(seed 0), as "
                                "scripts/prepare_cifar_lt.py writes lt_indices, on the same label array")
            f = ctx.scratch / f"mcat-split-{classes}-{ir}.json"
            f.write_text(json.dumps([int(i) for i in sel]))
            _, data2 = _our_data(ctx, classes, f"imbalance={ir}", f"data.indices_file={f}")
            our2 = sorted(int(i) for c in data2.manifest["indices"]["train"].values() for i in c)
            yield compare_exact("data", "selected training indices with data.indices_file=their split", sorted(sel.tolist()),
                                our2, setting, detail=f"{len(sel)} indices; counts {data2.class_counts[:3]}...")
    # transforms and normalisation: read off mcat/data.py
    dmod = ctx.checkout.module("mcat.data")
    train_tf = [type(t).__name__ for t in dmod._cifar_train_tf().transforms]
    test_tf = [type(t).__name__ for t in dmod._cifar_test_tf().transforms]
    cfg = ours.preset(PRESET)
    ours_tf = ["RandomCrop", "RandomHorizontalFlip", "ToTensor"] if cfg.data.augment in ("crop_flip", "") else \
        [cfg.data.augment]
    yield compare_exact("data", "augmentation pipeline", train_tf, ours_tf, PRESET,
                        detail=f"their _cifar_train_tf (RandomCrop(32, padding=4), flip) vs data.augment={cfg.data.augment}")
    yield compare_exact("data", "input normalisation", "none" if "Normalize" not in train_tf + test_tf else "loader",
                        "in the model" if cfg.model.normalize else "none", PRESET,
                        detail=f"their transforms {test_tf} (test); model.normalize={cfg.model.normalize}")
    args = _their_args(ctx)
    yield compare_exact("data", "model stem", f"--arch {args.arch}: ImageNet stem (7x7/2 conv, max-pool)",
                        f"{cfg.model.name}: CIFAR stem (3x3/1 conv)", PRESET)


# ========================================================================================= schedule
def check_schedule(ctx: Context) -> Iterator[Row]:
    args = _their_args(ctx)
    cfg, data = _our_data(ctx, 100)
    tr = ours.trainer(ours.preset(PRESET, f"data_dir={_cifar_files(ctx, 100)}", "method.gen_epochs=1",
                                  "train.max_steps_per_epoch=1"), data, ctx.scratch / "sched")
    m = tr.method
    yield compare_exact("schedule", "epochs", args.epochs, cfg.train.epochs, PRESET)
    yield compare_exact("schedule", "learning rate at every epoch", [args.lr] * args.epochs,
                        [tr.lr(e) for e in range(cfg.train.epochs)], PRESET,
                        detail="theirs: no scheduler (Trainer.__init__ builds none)")
    model = ctx.checkout.module("mcat.models").build_model("resnet18_cifar", 100)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    ctx.note("MCAT: the optimiser is the line of mcat/trainer.py Trainer.__init__ (SGD(model.parameters(), lr, "
             "momentum, weight_decay)) with run.py's defaults; the line sits in __init__, whose other lines read the "
             "data files, so it is rebuilt here with their arguments")
    keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    yield compare_exact("schedule", "optimizer settings", [type(opt).__name__] + [opt.defaults[k] for k in keys],
                        [type(tr.optimizer).__name__] + [tr.optimizer.defaults[k] for k in keys], PRESET)
    n = sum(data.class_counts)
    yield compare_exact("schedule", "batch size, steps per epoch, last batch dropped",
                        [args.batch_size, n // args.batch_size, True],
                        [cfg.train.batch_size, len(tr.loader), bool(tr.loader.drop_last)], PRESET,
                        detail=f"their build_dataloaders: DataLoader(shuffle=True, drop_last=True); {n} images")
    yield compare_exact("schedule", "sampler", "instance-uniform (shuffle=True)",
                        "instance-uniform (shuffle=True)" if cfg.train.sampler == "uniform" else cfg.train.sampler,
                        PRESET, detail=f"train.sampler={cfg.train.sampler}")
    yield compare_exact("schedule", "MS-PGD eps, step, steps, random start",
                        [_float(ctx, args.epsilon), _float(ctx, args.mspgd_step_size), args.mspgd_steps,
                         "uniform" if args.mspgd_random_start else "none"],
                        [cfg.attack.eps, cfg.attack.step_size, cfg.attack.steps, cfg.attack.random_start], PRESET)
    yield compare_exact("schedule", "lambda_m, beta_g (ETF weight), distance, inner sign, outer manifold term",
                        [args.lambda_m, args.beta_g, "detached", -1, False],
                        [m.lam, m.etf_weight, "differentiable" if m.differentiable else "detached", m.inner_sign,
                         m.outer_manifold], PRESET, detail="run.py defaults; mcat/trainer.py _mspgd_linf and the "
                                                           "mcat branch of _train_one_epoch")
    yield compare_exact("schedule", "generators: z_dim, hidden, epochs, lr, latent steps, latent lr, latent reduction",
                        [args.gen_z_dim, [int(v) for v in args.gen_hidden.split(",")], args.gen_epochs, args.gen_lr,
                         args.gen_latent_steps, args.gen_latent_lr, "class_mean"],
                        [m.z_dim, list(m.hidden), 10, m.options.gen_lr, m.options.latent_steps, m.options.latent_lr,
                         m.latent_reduction], PRESET, detail="ours: method.gen_epochs is its default 10 in the preset")
    yield compare_exact("schedule", "precision", "fp32",
                        "fp32" if tr.amp_dtype is None else str(tr.amp_dtype).replace("torch.", ""), PRESET,
                        detail=f"their code has no autocast; train.precision={cfg.train.precision}")
    yield compare_exact("schedule", "seed", args.seed, cfg.train.seed, PRESET)
    yield compare_exact("schedule", "checkpoint choice", "best robust accuracy on the test set (ckpt_best.pth)",
                        f"eval.checkpoint={cfg.eval.checkpoint}", PRESET)


# ============================================================================================= step
def _dtypes(ctx: Context) -> list[torch.dtype]:
    return [torch.float32] + ([torch.float64] if ctx.options.fp64 else [])


def check_step(ctx: Context) -> Iterator[Row]:
    for dtype in _dtypes(ctx):
        yield from _steps(ctx, dtype)


def _steps(ctx: Context, dtype: torch.dtype) -> Iterator[Row]:
    from ltrobust.losses.mcat import class_groups, etf_loss, manifold_distance
    from ltrobust.methods.mcat import ClassGenerators, fit_generators

    name = "fp32" if dtype == torch.float32 else "fp64"
    k, batch = ctx.options.steps, ctx.options.batch_size
    setting = f"{PRESET}, {name}, batch {batch}"
    args = _their_args(ctx)
    cfg, data = _our_data(ctx, 100, "method.gen_epochs=1", "train.max_steps_per_epoch=1")
    rng = np.random.RandomState(ctx.options.seed)
    perm = torch.from_numpy(rng.permutation(len(data.train.labels))[: k * batch])
    batches = [(x.to(dtype), y) for x, y in ours.batches(data.train.subset(perm), batch, k)]
    trm = ctx.checkout.module("mcat.trainer")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(args.seed)
        model = ctx.checkout.module("mcat.models").build_model("resnet18_cifar", 100).to(dtype)
        tr = ours.trainer(cfg, data, ctx.scratch / f"step-{name}")
        tr.model.to(dtype)
        m = map_state(model.state_dict(), tr.model.state_dict(), RESNET18)
        load_mapped(tr.model, model.state_dict(), m)
        if dtype == torch.float32:
            yield Row("step", "model: key mapping", "equal", "resnet18 vs their build_model('resnet18_cifar')",
                      detail=f"{len(m)} tensors mapped; every key of ours hit, shapes equal, our normalisation the "
                             "identity (model.normalize=false)")
        tcfg = _their_cfg(ctx, args, str(ctx.scratch))
        theirs = _their_trainer(ctx, tcfg, model, batches, 100)
        # generators: theirs built with their seed, mapped into ltrobust's, both fitted one epoch on the k batches
        torch.manual_seed(5)
        gens = trm.ClassConditionalGenerators(100, args.gen_z_dim, 512, theirs._parse_hidden()).to(dtype)
        # ltrobust's latent steps run in float32 whatever the model's dtype (losses.mcat.latent_projection)
        G = ClassGenerators(100, args.gen_z_dim, 512, theirs._parse_hidden()).float()
        gm = map_state(gens.state_dict(), G.state_dict(), GENERATORS)
        load_mapped(G, gens.state_dict(), gm)
        if dtype == torch.float32:
            yield Row("step", "generators: key mapping", "equal", "G.{c}.net. -> generators.{c}.",
                      detail=f"{len(gm)} tensors (100 generators {args.gen_z_dim} -> {args.gen_hidden} -> 512)")
        tcfg.gen_epochs = 1
        theirs.generators = gens
        torch.manual_seed(7)
        with quiet():
            theirs._train_generators(gens)
        feats = [theirs._extract_features_batch(x) for x, _ in batches]
        if dtype == torch.float32:
            torch.manual_seed(7)
            fit_generators(G, lambda e: [(f, y) for f, (_, y) in zip(feats, batches)], 1, args.gen_lr)
        if dtype == torch.float64:  # the step compares with the same generators: theirs in float32 for ours
            load_mapped(G, {k: v.float() for k, v in gens.state_dict().items()}, gm)
        else:
            yield compare_tensors("step", "generators after fitting (1 epoch on the k batches)",
                                  mapped(gens.state_dict(), gm), dict(G.state_dict()), setting,
                                  detail="their Trainer._train_generators vs ltrobust's fit_generators; the same "
                                         "eval-mode features and torch.manual_seed before each (the latent draws)")
            f0, y0 = feats[0], batches[0][1]
            torch.manual_seed(11)
            d_t = theirs._manifold_distance(f0, y0)
            torch.manual_seed(11)
            d_o = manifold_distance(G, f0, class_groups(y0), args.gen_z_dim, args.gen_latent_steps,
                                    args.gen_latent_lr, "class_mean", differentiable=False)
            yield compare_tensor("step", "manifold distance per sample", d_t, d_o.to(d_t.dtype), setting,
                                 detail="their _manifold_distance vs manifold_distance(reduction='class_mean', "
                                        "differentiable=False), torch.manual_seed(11) before each")
        for p in gens.parameters():
            p.requires_grad_(False)
        gens.eval()
        theirs.generators = gens
        tr.method.set_generators(G)
        yield compare_tensor("step", "ETF regulariser", theirs._geom_regularizer().detach(),
                             etf_loss(tr.model.head.weight).detach().to(dtype), setting,
                             detail="their _geom_regularizer vs etf_loss(head.weight)")
        # k steps of their _train_one_epoch
        theirs.optimizer = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=tcfg.momentum,
                                           weight_decay=tcfg.weight_decay)
        snaps = after_each_step(theirs.optimizer, model)
        ce_calls: list[torch.Tensor] = []
        geom: list[torch.Tensor] = []
        real_ce, real_geom = F.cross_entropy, theirs._geom_regularizer

        def ce(*a: Any, **kw: Any) -> torch.Tensor:
            out = real_ce(*a, **kw)
            ce_calls.append(out.detach().clone())
            return out

        def geom_reg() -> torch.Tensor:
            out = real_geom()
            geom.append(out.detach().clone())
            return out

        theirs._geom_regularizer = geom_reg
        rec = _Rec(model)
        theirs.model = rec
        seeds = [3000 + i for i in range(k)]
        saved_f = trm.F
        trm.F = types.SimpleNamespace(**{n: getattr(F, n) for n in dir(F) if not n.startswith("__")})
        trm.F.cross_entropy = ce
        try:
            batches_seeded = _Seeded(batches, seeds)
            theirs.train_loader = batches_seeded
            with quiet():
                theirs._train_one_epoch(1)
        finally:
            trm.F = saved_f
        per = len(rec.calls) // k
        steps_n = tcfg.mspgd_steps
        losses = [ce_calls[i * (steps_n + 1) + steps_n] + tcfg.beta_g * geom[i] for i in range(k)]
        their_steps = []
        for i in range(k):
            calls = rec.calls[i * per:(i + 1) * per]
            s = snaps[i]
            their_steps.append(StepRecord([c[1] for c in calls[:steps_n]], [c[0] for c in calls[:steps_n]],
                                          calls[steps_n][1], calls[steps_n][2], losses[i], s["grads"], s["weights"],
                                          s["buffers"]))
        our_steps = ours_steps(tr, batches, seeds, epoch=0)
    finally:
        torch.set_default_dtype(default)
    if dtype == torch.float32:
        ctx.cache["trained"] = {key: v.clone() for key, v in model.state_dict().items()}
    # ltrobust's ms_pgd asks the model for its class count with one forward on x[:1] when the model has no
    # num_classes attribute (the harness's Recorder around ours hides it): that probe is not an attack iterate
    for o in our_steps:
        keep = [i for i, a in enumerate(o.attack_inputs) if a.shape[0] == o.x_adv.shape[0]]
        o.attack_inputs, o.attack_training = [o.attack_inputs[i] for i in keep], [o.attack_training[i] for i in keep]
    if dtype == torch.float32:
        ctx.note(f"MCAT step level: their _train_one_epoch makes {per} forwards per step: {steps_n} MS-PGD forwards "
                 "(eval mode), the loss forward (train mode) and two eval-mode forwards under no_grad for the logged "
                 "manifold drift, which move no BatchNorm statistic and no weight (their latent draws use the random "
                 "stream, which neither side's step reads afterwards: no random start)")
    yield from compare_steps(their_steps, our_steps, m, batches, setting,
                             start="no random start on either side (--mspgd_random_start off; attack.random_start=none)")


# ============================================================================================= eval
def check_eval(ctx: Context) -> Iterator[Row]:
    """Their evaluation on one checkpoint (their model after the step level): served logits and input gradients
    against ``ltrobust eval``'s loader, their ``pgd_linf`` (PGD-20, step 2/255, uniform start) with its start injected
    into ltrobust's ``pgd`` and with each side's own start, and their AutoAttack call."""
    import ast

    import ltrobust
    from ltrobust.attacks import pgd, threat_model
    from ltrobust.evaluation.evaluator import balanced_subset
    from ltrobust.evaluation.runs import load_run

    from .core import predictions_agree
    from .steps import flips

    args = _their_args(ctx)
    state = ctx.cache.get("trained")
    which = f"their resnet18_cifar after the step level's {ctx.options.steps} steps (fp32)"
    if state is None:
        torch.manual_seed(args.seed)
        state = ctx.checkout.module("mcat.models").build_model("resnet18_cifar", 100).state_dict()
        which = "their resnet18_cifar at initialisation"
    ctx.note(f"MCAT evaluation checkpoint: {which}")
    cfg, data = _our_data(ctx, 100, "method.gen_epochs=1", "train.max_steps_per_epoch=1")
    n = ctx.options.eval_images
    x, y = ours.batches(data.test.subset(balanced_subset(data.test.labels, n, seed=ctx.options.seed)), n, 1)[0]
    theirs = ctx.checkout.module("mcat.models").build_model("resnet18_cifar", 100)
    theirs.load_state_dict(state)
    theirs.eval()
    tr = ours.trainer(cfg, data, ctx.scratch / "eval-run")
    m = map_state(theirs.state_dict(), tr.model.state_dict(), RESNET18)
    load_mapped(tr.model, state, m)
    ckpt = tr.folder.checkpoint("last")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tr.save_weights(ckpt, 0, None)
    run = load_run(ckpt, [f"data_dir={_cifar_files(ctx, 100)}"])
    deployed = run.deployed.eval()
    setting = f"{PRESET}, {n} test images"
    eps, step = _float(ctx, args.epsilon), _float(ctx, args.eval_pgd_step_size)
    yield compare_exact("eval", "PGD-20 settings", [args.eval_pgd_steps, step, eps],
                        [20, run.cfg.eval.step_size, run.cfg.eval.eps], PRESET,
                        detail="run.py --eval_pgd_steps, --eval_pgd_step_size, --epsilon vs pgd20 at eval.step_size")
    attacks = ctx.checkout.module("mcat.attacks")
    for dtype in [torch.float32] + ([torch.float64] if ctx.options.fp64 else []):
        name, count = ("fp32", n) if dtype == torch.float32 else ("fp64", min(16, n))
        where = f"{PRESET}, {count} test images, {name}"
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            t_model, o_model = copy.deepcopy(theirs).to(dtype).eval(), copy.deepcopy(deployed).to(dtype).eval()
            pick = torch.arange(0, n, max(1, n // count))[:count]
            xd, yd = x[pick].to(dtype), y[pick]
            xt, xo = xd.clone().requires_grad_(True), xd.clone().requires_grad_(True)
            zt, zo = t_model(xt)[0], o_model(xo)
            yield compare_tensor("eval", "served logits", zt, zo, where,
                                 detail="their build_model('resnet18_cifar') + load_state_dict (logits of (logits, "
                                        "features)) vs ltrobust's load_run(...).deployed")
            gt, = torch.autograd.grad(F.cross_entropy(zt, yd, reduction="sum"), xt)
            go, = torch.autograd.grad(F.cross_entropy(zo, yd, reduction="sum"), xo)
            yield compare_tensor("eval", "input gradients", gt, go, where)
            rec = _Rec(t_model).eval()
            torch.manual_seed(ctx.options.seed)
            their_adv = attacks.pgd_linf(rec, xd.clone(), yd, epsilon=eps, step_size=step, steps=args.eval_pgd_steps,
                                         random_start=True)
            start = rec.calls[0][1] - xd
            our_adv = pgd(o_model, xd, yd, threat_model("linf", run.cfg.eval.eps), steps=20,
                          step_size=run.cfg.eval.step_size, objective="ce", random_start=True, start=start)
            with torch.no_grad():
                t_ok, o_ok = t_model(their_adv)[0].argmax(1) == yd, o_model(our_adv).argmax(1) == yd
            yield compare_tensor("eval", "PGD-20 AEs, same start", their_adv, our_adv, where,
                                 detail=f"their mcat.attacks.pgd_linf vs ltrobust's pgd, their start injected; "
                                        f"{flips(their_adv, our_adv)}")
            yield predictions_agree("eval", "PGD-20 attacked image correct, same start", t_ok, o_ok, where)
        finally:
            torch.set_default_dtype(default)
    res = ltrobust.evaluate(deployed, (x, y), attacks=("clean", "pgd20"), mode="standalone", seed=ctx.options.seed,
                            eps=run.cfg.eval.eps, step_size=run.cfg.eval.step_size, progress=False)
    flags = dict(zip(res.samples["names"], res.samples["flags"]))
    with torch.no_grad():
        t_clean = theirs(x)[0].argmax(1) == y
    torch.manual_seed(ctx.options.seed)
    adv = attacks.pgd_linf(theirs, x.clone(), y, epsilon=eps, step_size=step, steps=args.eval_pgd_steps,
                           random_start=True)
    with torch.no_grad():
        t_adv = theirs(adv)[0].argmax(1) == y
    yield predictions_agree("eval", "clean per-image correctness", t_clean,
                            torch.from_numpy(np.asarray(flags["clean"])), setting)
    yield predictions_agree("eval", "PGD-20 per-image robustness, own random starts", t_clean & t_adv,
                            torch.from_numpy(np.asarray(flags["pgd20"])), setting,
                            detail="robust = clean and attacked image correct")
    # their AutoAttack call, read off _eval_autoattack: the reference package, standard version, their eps
    fn = next(node for node in ast.walk(ctx.checkout.source_facts("mcat/trainer.py"))
              if isinstance(node, ast.FunctionDef) and node.name == "_eval_autoattack")
    call = next(c for c in ast.walk(fn) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "AutoAttack")
    kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
    yield compare_exact("eval", "AutoAttack call", [kw.get("norm"), kw.get("version"), "eps=--epsilon"],
                        ["'Linf'", "'standard'", "eps=--epsilon"] if run.cfg.eval.eps == eps else ["?"], PRESET,
                        detail="their `from autoattack import AutoAttack` (the reference package) with version "
                               "'standard' on (logits of) their model; ltrobust runs the same package and version")


class _Seeded:
    """Batches whose iteration seeds the global RNG before each (the seed ltrobust's step gets)."""

    def __init__(self, batches: list, seeds: list[int]) -> None:
        self.batches, self.seeds = batches, seeds

    def __iter__(self):
        for b, s in zip(self.batches, self.seeds):
            torch.manual_seed(s)
            yield b

    def __len__(self) -> int:
        return len(self.batches)


SPEC = MethodSpec(
    name="mcat",
    repository="yneversky/MCAT",
    checkout="MCAT/code/MACT_code",
    commit="f19c2afc52aa2941fccbe4d0c16f64f640dd76a1",
    files=("run.py", "mcat/trainer.py", "mcat/models.py", "mcat/data.py", "mcat/utils_data.py", "mcat/attacks.py",
           "scripts/prepare_cifar_lt.py"),
    checks={"data": check_data, "schedule": check_schedule, "step": check_step, "eval": check_eval},
    known=KNOWN,
    presets=(PRESET,),
)
