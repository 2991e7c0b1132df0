"""Self-distillation (Cho, Lee and Kim, ICLR 2025): no official code exists; what can be compared is compared.

The paper links no code. Its balanced self-teacher is adversarial training on a balanced resample D_B of the
long-tailed set, and AT-BSL on a balanced set is exactly PGD-AT (the balanced-softmax shift tau * log n_c is
the same for every class, so the softmax does not move). So the teacher is compared against the AT-BSL code
(NISPLab/AT-BSL at 23f433e, the code the paper's AT-BSL baseline rows come from), run unchanged as in
:mod:`.at_bsl`:

- data: their long-tailed CIFAR-10 subset (the student's data) against the preset's; D_B against the paper's
  rule (``gamma * n_min`` per class, gamma = IR / 2, Sec. 5.1: the AT-BSL code has no balanced resample);
- schedule: the teacher's epochs, batch, learning rate at every epoch, optimiser, attack and precision against
  the AT-BSL code's parser defaults and ``adjust_learning_rate`` (and the paper's Sec. 5.1 numbers);
- step: their ``train()`` loop with ``at_bsl_loss.pgd_loss`` given D_B's (equal) class counts, on D_B's batches,
  against ltrobust's teacher trainer (``teacher_config`` / ``teacher_data`` of the preset) from the same weights;
- the student's loss: ltrobust's ``SelfDistill.compute_loss`` against a direct float64 transcription, written
  here, of the paper's Eq. 1 (balanced softmax) and the distillation term as the paper describes it (KL to the
  balanced self-teacher on the AE plus Lee et al.'s IGDM, ramped; SPEC self_distill), on hand-made models.

There is no evaluation level: without their code there is no evaluation of theirs to compare.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch

from . import ours
from .at_bsl import (STUBS, TRAIN_SCRIPT, _Batches, _cifar_files, _mapping, _their_args, _their_cifar, _their_loader,
                     _their_model, _their_precision)
from .core import Known, Row, compare_exact, compare_tensor, load_mapped
from .method import Context, MethodSpec
from .official import Recorder, call_with_seed, quiet
from .steps import after_each_step, compare_steps, ours_steps, split_calls

PRESET = "self-distill-cifar10lt-resnet18"
IR = 50
#: ltrobust settings that reproduce the AT-BSL code's choices where the paper is silent (the step level runs the
#: teacher with them: the rows then show that nothing else differs)
AS_THEIR_CODE = ("attack.random_start=normal", "model.normalize=false", "train.precision=fp32")

KNOWN = {
    r"^teacher: epochs|^teacher: batch size": Known(
        "the paper's Sec. 5.1 (30 epochs, batch 32 for the balanced self-teacher); the AT-BSL code's defaults are "
        "its own 100 epochs and batch 128", "a different teacher training length (the paper's)", ""),
    r"^teacher: learning rate at every epoch": Known(
        "the paper gives no teacher schedule; ltrobust decays x0.1 at 0.75 and 0.9 of the teacher's epochs (as "
        "the student's 75 / 90 of 100); the AT-BSL code's adjust_learning_rate decays at epochs 75, 90, 100 only, so "
        "over 30 epochs it keeps 0.1", "the last 8 of the 30 teacher epochs at 0.01 / 0.001 instead of 0.1",
        "teacher_decay_at=\"\" (constant 0.1)"),
    r"^teacher: attack start": Known(
        "no code: the paper does not say; ltrobust's preset starts PGD uniformly in the eps-ball (SPEC), the AT-BSL "
        "code at x + 0.001 N(0, I)", "the training AEs' start", "attack.random_start=normal"),
    r"^input normalisation": Known(
        "no code: the paper does not say; the preset normalises with the CIFAR mean and std inside the model, "
        "the AT-BSL code feeds [0, 1] pixels", "another input scale for the same network", "model.normalize=false"),
    r"^teacher: precision": Known(
        "no code: the paper does not say; the preset runs precision=auto (bf16 where native), the AT-BSL code fp32",
        "bf16 rounding on hardware with native bf16", "train.precision=fp32"),
    r"^teacher: steps per epoch": Known(
        "the AT-BSL code's mmcv loader drops the last incomplete batch; ltrobust keeps it (the paper does not say)",
        "one smaller batch per epoch", "train.drop_last=true"),
    r"^teacher: seed": Known(
        "the AT-BSL code's --seed 1; the paper gives no seed", "other initial weights (the step level starts both "
        "from the same weights)", "train.seed=1"),
    r"(attack iterates|adversarial examples|logits on the AEs|^loss|^gradients|^weights after|^BatchNorm buffers "
    r"after).*step ([3-9]|\d\d)$": Known(
        "attributed to float64 rounding at gradient components near zero, whose sign PGD's sign step turns into a "
        "pixel moved by two step sizes, then cascading: steps 1 and 2 agree to 1e-13 (AEs to 1e-16) and the third "
        "starts from an untrained ResNet-18 that diverged at lr 0.1 on batches of 8 (loss 19); not separated from "
        "a real difference by this run (the AT-BSL module runs the same loop at batch 32 and is equal at every step)",
        "the third step's AEs (a few per cent of pixel values) and what follows from them", "", where=r"fp64$"),
    r"attack iterates|adversarial examples|logits on the AEs|^loss|^gradients|^weights after|^BatchNorm buffers "
    r"after": Known(
        "float32 rounding, amplified by PGD's sign step (as in the AT-BSL module: ltrobust keeps delta, their loop "
        "x_adv; channels_last rounds differently); the float64 rows are equal for steps 1-2", "none in float64",
        "", where=r"fp32$"),
}


# ============================================================================================ data
def _data(ctx: Context, *overrides: str):
    from ltrobust.data import build_data

    cfg = ours.preset(PRESET, f"data_dir={_cifar_files(ctx, 10)}", f"imbalance={IR}", *overrides)
    return cfg, build_data(cfg.data)


def check_data(ctx: Context) -> Iterator[Row]:
    from ltrobust.config import method_options
    from ltrobust.methods.self_distill import teacher_data

    root = _cifar_files(ctx, 10)
    cfg, data = _data(ctx)
    theirs, spc = _their_cifar(ctx, 10, root, 1 / IR if abs(1 / IR - 0.02) > 1e-12 else 0.02)
    setting = f"CIFAR-10-LT IR {IR} (the student's data)"
    yield compare_exact("data", "per-class counts", spc, data.class_counts, setting,
                        detail="the AT-BSL code's build_datasets (imbalance_ratio 0.02) vs the preset")
    yield compare_tensor("data", "selected training images, in order", torch.from_numpy(theirs.data),
                         data.train.images.permute(0, 2, 3, 1).contiguous(), setting, detail="uint8, exact")
    tdata = teacher_data(data, cfg)
    gamma = IR / 2  # the paper's Sec. 5.1
    paper = [int(gamma * min(spc))] * 10
    yield compare_exact("data", "teacher set D_B: per-class counts", paper, tdata.class_counts, setting,
                        detail=f"the paper: gamma * n_1 per class, gamma = IR / 2 = {gamma:g} (Sec. 4.2, 5.1); the "
                               "AT-BSL code has no balanced resample")
    # D_B holds only images of the long-tailed set, and every tail image (up-sampled classes are tiled)
    lt = {bytes(img.numpy().tobytes()) for img in data.train.images}
    outside = sum(bytes(img.numpy().tobytes()) not in lt for img in tdata.train.images)
    tail_c = int(np.argmin(spc))
    tail_lt = {bytes(img.numpy().tobytes()) for img, c in zip(data.train.images, data.train.labels) if int(c) == tail_c}
    tail_db = {bytes(img.numpy().tobytes()) for img, c in zip(tdata.train.images, tdata.train.labels)
               if int(c) == tail_c}
    yield compare_exact("data", "teacher set D_B: drawn from the long-tailed set, every tail image kept",
                        [0, len(tail_lt)], [outside, len(tail_lt & tail_db)], setting,
                        detail="D_B images not in the long-tailed set; distinct tail-class images of the LT set found "
                               "in D_B (the paper: tail classes up-sampled, head classes down-sampled)")
    opts = method_options(cfg)
    yield compare_exact("data", "teacher set D_B: gamma", gamma, float(tdata.manifest["teacher_resample"]["gamma"]),
                        setting, detail=f"data.resample_gamma={cfg.data.resample_gamma} (-1: IR / 2); teacher "
                                        f"checkpoint {opts.teacher_checkpoint}")
    # where inputs are normalised: the AT-BSL code's transforms have no Normalize, their ResNet18 none
    from ltrobust.models import build_model

    x = torch.rand(2, 3, 32, 32)
    mine = build_model(cfg.model, 10, 3, data.mean, data.std, 32).eval()
    seen: list[torch.Tensor] = []
    h = mine.backbone.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        mine(x)
    h.remove()
    yield compare_exact("data", "input normalisation", "none", "none" if torch.equal(seen[0], x) else "in the model",
                        PRESET, detail=f"model.normalize={cfg.model.normalize}; the AT-BSL code: none (see at-bsl)")


# ========================================================================================= schedule
def _teacher(ctx: Context, *overrides: str):
    """The preset's teacher config and D_B (what ``ltrobust train`` runs as the teacher stage)."""
    from ltrobust.config import method_options
    from ltrobust.methods.self_distill import teacher_config, teacher_data

    cfg, data = _data(ctx, *overrides)
    return teacher_config(cfg, method_options(cfg)), teacher_data(data, cfg)


def check_schedule(ctx: Context) -> Iterator[Row]:
    tcfg, tdata = _teacher(ctx)
    tr = ours.trainer(tcfg, tdata, ctx.scratch / "sd-teacher-schedule")
    args = _their_args(ctx)
    setting = f"{PRESET} teacher"
    yield compare_exact("schedule", "teacher: epochs", args.epochs, tcfg.train.epochs, setting,
                        detail="the AT-BSL code's --epochs default vs the preset's teacher_epochs (paper: 30)")
    yield compare_exact("schedule", "teacher: batch size", args.batch_size, tcfg.train.batch_size, setting,
                        detail="paper: 32")
    defs = ctx.checkout.definitions(TRAIN_SCRIPT, ["adjust_learning_rate"], {"args": args}, skip_imports=("datasets",))
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    their_lr = []
    for epoch in range(1, tcfg.train.epochs + 1):
        defs["adjust_learning_rate"](dummy, epoch)
        their_lr.append(dummy.param_groups[0]["lr"])
    our_lr = [tr.lr(e) for e in range(tcfg.train.epochs)]
    yield compare_tensor("schedule", "teacher: learning rate at every epoch", torch.tensor(their_lr, dtype=torch.float64),
                         torch.tensor(our_lr, dtype=torch.float64), setting,
                         detail=f"their adjust_learning_rate over the teacher's {tcfg.train.epochs} epochs (1-based) vs "
                                f"ours; ours distinct {sorted(set(our_lr), reverse=True)}")
    model = _their_model(ctx, "resnet18")
    opt = ctx.checkout.statement(TRAIN_SCRIPT, "optimizer", {"optim": torch.optim, "model": model, "args": args},
                                 function="main")
    keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
    yield compare_exact("schedule", "teacher: optimizer settings", [type(opt).__name__] + [opt.defaults[k] for k in keys],
                        [type(tr.optimizer).__name__] + [tr.optimizer.defaults[k] for k in keys], setting,
                        detail="SGD " + ", ".join(keys) + " (paper: SGD, lr 0.1, weight decay 5e-4)")
    their_wd = sum(p.numel() for g in opt.param_groups for p in g["params"] if g["weight_decay"] > 0)
    our_wd = sum(p.numel() for g in tr.optimizer.param_groups for p in g["params"] if g["weight_decay"] > 0)
    yield compare_exact("schedule", "teacher: weight decay on which parameters", [len(opt.param_groups), their_wd],
                        [len(tr.optimizer.param_groups), our_wd], setting)
    _, _, their_drop = _their_loader(ctx, "at-bsl-cifar10lt-resnet18", args)
    yield compare_exact("schedule", "teacher: steps per epoch, last batch dropped",
                        [math.floor(len(tdata.train.labels) / tcfg.train.batch_size) if their_drop else
                         math.ceil(len(tdata.train.labels) / tcfg.train.batch_size), bool(their_drop)],
                        [len(tr.loader), bool(tr.loader.drop_last)], setting,
                        detail=f"{len(tdata.train.labels)} D_B images at the teacher's batch size; theirs: their "
                               "loader's rule")
    yield compare_exact("schedule", "teacher: attack eps, step, steps", [args.epsilon, args.step_size, args.num_steps],
                        [tcfg.attack.eps, tcfg.attack.step_size, tcfg.attack.steps], setting,
                        detail="paper: eps 8/255, PGD-10")
    yield compare_exact("schedule", "teacher: attack start", "normal", tcfg.attack.random_start, setting,
                        detail="the AT-BSL code's pgd_loss: x + 0.001 N(0, I)")
    yield compare_exact("schedule", "teacher: precision", _their_precision(ctx, TRAIN_SCRIPT),
                        "fp32" if tr.amp_dtype is None else str(tr.amp_dtype).replace("torch.", ""), setting,
                        detail=f"train.precision={tcfg.train.precision}")
    yield compare_exact("schedule", "teacher: seed", args.seed, tcfg.train.seed, setting)


# ============================================================================================= step
def check_step(ctx: Context) -> Iterator[Row]:
    yield from _student_loss(ctx)
    for dtype in [torch.float32] + ([torch.float64] if ctx.options.fp64 else []):
        yield from _teacher_steps(ctx, dtype)


def _teacher_steps(ctx: Context, dtype: torch.dtype) -> Iterator[Row]:
    """k steps of the AT-BSL code's train() on D_B (their pgd_loss with D_B's equal counts) against ltrobust's
    teacher trainer with the AT-BSL code's choices (:data:`AS_THEIR_CODE`), same weights, batches and seeds."""
    k, batch = ctx.options.steps, ctx.options.batch_size
    name = "fp32" if dtype == torch.float32 else "fp64"
    setting = f"{PRESET} teacher ({', '.join(AS_THEIR_CODE)}), {name}, batch {batch}"
    tcfg, tdata = _teacher(ctx, *AS_THEIR_CODE)
    args = _their_args(ctx)
    rng = np.random.RandomState(ctx.options.seed)
    perm = torch.from_numpy(rng.permutation(len(tdata.train.labels))[: k * batch])
    batches = [(x.to(dtype), y) for x, y in ours.batches(tdata.train.subset(perm), batch, k)]
    seeds = [3000 + i for i in range(k)]
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        tr = ours.trainer(tcfg, tdata, ctx.scratch / f"sd-teacher-step-{name}")
        tr.model.to(dtype)
        theirs = _their_model(ctx, "resnet18", args.seed).to(dtype)
        m, _ = _mapping("resnet18", theirs, tr.model)
        load_mapped(tr.model, theirs.state_dict(), m)
        loss_mod = ctx.checkout.module("at_bsl_loss")
        losses: list[torch.Tensor] = []

        def observed_pgd_loss(**kw: Any) -> torch.Tensor:
            out = loss_mod.pgd_loss(**kw)
            losses.append(out.detach().clone())
            return out

        defs = ctx.checkout.definitions(TRAIN_SCRIPT, ["train", "adjust_learning_rate"],
                                        {"args": args, "samples_per_cls": list(tdata.class_counts),
                                         "pgd_loss": call_with_seed(observed_pgd_loss, iter(seeds))},
                                        skip_imports=("datasets",))
        opt = ctx.checkout.statement(TRAIN_SCRIPT, "optimizer", {"optim": torch.optim, "model": theirs, "args": args},
                                     function="main")
        defs["adjust_learning_rate"](opt, 1)
        snaps = after_each_step(opt, theirs)
        rec = Recorder(theirs)
        with quiet():
            defs["train"](args, rec, "cpu", _Batches(batches, len(tdata.train.labels)), opt, 1)
        their_steps = split_calls(rec, tcfg.attack.steps, losses, snaps)
        our_steps = ours_steps(tr, batches, seeds)
    finally:
        torch.set_default_dtype(default)
    yield from compare_steps(their_steps, our_steps, m, batches, setting,
                             start="x + 0.001 N(0, I): their torch.randn and ltrobust's random_start=normal, same seed")


# ------------------------------------------------------------------ the student's loss, by the paper's equations
def _eq1_bsl(z: torch.Tensor, y: torch.Tensor, counts: list[int], tau: float) -> torch.Tensor:
    """Eq. 1 of the paper, transcribed: -log(e^{z'_y + b_y} / sum_i e^{z'_i + b_i}), b_i = tau log n_i; mean."""
    b = tau * torch.log(torch.tensor(counts, dtype=torch.float64))
    terms = []
    for i in range(len(y)):
        num = torch.exp(z[i, y[i]] + b[y[i]])
        den = sum(torch.exp(z[i, j] + b[j]) for j in range(z.shape[1]))
        terms.append(-torch.log(num / den))
    return torch.stack(terms).mean()


def _kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """mean_i sum_c p_ic log(p_ic / q_ic), p = softmax(p_logits) (the teacher's), q = softmax(q_logits)."""
    p = torch.exp(p_logits) / torch.exp(p_logits).sum(1, keepdim=True)
    q = torch.exp(q_logits) / torch.exp(q_logits).sum(1, keepdim=True)
    return (p * torch.log(p / q)).sum(1).mean()


def _paper_loss(s: Any, t: Any, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, counts: list[int], tau: float,
                alpha: float, lam: float) -> torch.Tensor:
    """The student's loss as the paper describes it: BSL(s(x'), y) + alpha [KL(p_t(x') || p_s(x')) + lam * IGDM],
    IGDM = KL(softmax(t(x + d) - t(x - d)) || softmax(s(x + d) - s(x - d))), d = x' - x (Lee et al. 2023)."""
    d = x_adv - x
    s_p, s_m = s(x + d), s(x - d)
    with torch.no_grad():
        t_p, t_m = t(x + d), t(x - d)
    return _eq1_bsl(s_p, y, counts, tau) + alpha * (_kl_rows(t_p, s_p) + lam * _kl_rows(t_p - t_m, s_p - s_m))


def _student_loss(ctx: Context) -> Iterator[Row]:
    from ltrobust.config import AttackConfig
    from ltrobust.registry import LOSSES, METHODS

    counts = [5000, 2000, 700, 300, 100]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        g = torch.Generator().manual_seed(5)
        x = torch.rand(12, 6, generator=g)
        x_adv = (x + (torch.rand(12, 6, generator=g) * 2 - 1) * 0.03).clamp(0, 1)
        y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 4])
        for alpha, tau, epoch, epochs in ((1.0, 1.0, 0, 100), (1.0, 1.0, 49, 100), (2.0, 1.5, 99, 100),
                                          (0.0, 1.0, 10, 100)):
            torch.manual_seed(1)
            student = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
            teacher = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
            cls = METHODS.get("self_distill")
            method = cls(counts, AttackConfig(), LOSSES.get("ce")(counts, options={}, total_epochs=epochs),
                         cls.Options(alpha=alpha, tau=tau, igdm_max=10.0), total_epochs=epochs)
            method.set_teacher(teacher)
            method.on_epoch_start(epoch)
            lam = 10.0 * min(1.0, (epoch + 1) / epochs)
            ours_out = method.compute_loss(student, x, x_adv, y)["loss"]
            g_o = torch.autograd.grad(ours_out, list(student.parameters()))
            paper = _paper_loss(student, teacher, x, x_adv, y, counts, tau, alpha, lam)
            g_p = torch.autograd.grad(paper, list(student.parameters()))
            setting = f"alpha {alpha:g}, tau {tau:g}, epoch {epoch} of {epochs} (IGDM weight {lam:g})"
            yield compare_tensor("step", "student loss vs the paper's equations", paper.detach(), ours_out.detach(),
                                 setting, detail=f"paper (transcribed here) {float(paper.detach()):.12g}, ours "
                                                 f"{float(ours_out.detach()):.12g}; float64, 12 images, 5 classes")
            yield compare_tensor("step", "student loss gradient vs the paper's equations",
                                 torch.cat([v.flatten() for v in g_p]), torch.cat([v.flatten() for v in g_o]), setting)
    finally:
        torch.set_default_dtype(default)


SPEC = MethodSpec(
    name="self-distill",
    repository="NISPLab/AT-BSL",
    checkout="AT-BSL",
    commit="23f433e8eeec463f1ec40188966a64d240c33443",
    files=("at_bsl_loss.py", "train_at_bsl_cifar10.py", "datasets/builder.py", "datasets/datasets.py",
           "datasets/loader/build_loader.py", "models/resnet.py"),
    checks={"data": check_data, "schedule": check_schedule, "step": check_step},
    known=KNOWN,
    stubs=STUBS,
    presets=(PRESET,),
)
