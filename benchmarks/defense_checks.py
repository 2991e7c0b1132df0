"""Toy checks of the defenses against their official code (issue 26): the measured effect of each documented
choice, on digits-LT and a small BatchNorm CNN, on the CPU in seconds. docs/methods.md quotes the output.

Each check trains (or loads, when its run folder exists) a small ``smallcnn`` (width 8) on digits-LT with natural
training for 5 epochs, takes 64 random training images, and compares the defense's training AEs (or radii, or
served logits) under the official behaviour and the alternative the option gives.

Usage (from the project root)::

    .venv/bin/python benchmarks/defense_checks.py            # every check
    .venv/bin/python benchmarks/defense_checks.py mma adt    # some of them

Checks: ``mma`` (BatchNorm modes of the margin search), ``adt`` (cumulative vs per-step gradients of the
distribution parameters, init_rho 0 vs -5), ``trades`` (the 0.001 N(0, I) start vs the uniform start), ``he``
(served logits s cos vs cos under PGD-20), ``las_at`` (BatchNorm mode of the reward's PGD).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ltrobust.attacks import pgd  # noqa: E402
from ltrobust.attacks.pgd import eval_mode  # noqa: E402
from ltrobust.config import AttackConfig, resolve_config  # noqa: E402
from ltrobust.data.loader import eval_loader  # noqa: E402
from ltrobust.experiments import train  # noqa: E402
from ltrobust.registry import LOSSES, METHODS  # noqa: E402

OUT = ROOT / "runs" / "defense_checks"
EPS, STEP = 0.15, 0.05  # digits-LT's l_inf setting (SPEC 3: never CIFAR's 8/255 on digits)


def toy(name: str = "natural", extra: tuple[str, ...] = ()):
    """A smallcnn (width 8) trained 5 epochs on digits-LT, and 64 random training images."""
    cfg = resolve_config(["dataset=digits-lt", "model=smallcnn", "model.width=8", f"method={name}", "epochs=5",
                          "train.batch_size=32", "train.progress=false", "train.val_every=0", "train.precision=fp32",
                          f"attack.eps={EPS}", f"attack.step_size={STEP}", "attack.steps=3", f"out={OUT}",
                          f"name=toy-{name}", *extra])
    tr = train(cfg)
    xs, ys = zip(*[(b[0], b[1]) for b in eval_loader(tr.data.train, 512)])
    x, y = torch.cat(xs), torch.cat(ys)
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:64]
    return tr, tr.model.train(), x[pick], y[pick]


def make(tr, name: str, attack: AttackConfig, **options):
    counts = [int(c) for c in tr.class_counts]
    cls = METHODS.get(name)
    return cls(counts, attack, LOSSES.get("ce")(counts), cls.Options(**options))


def check_mma() -> None:
    tr, model, x, y = toy()

    def radii(bn_mode: str) -> torch.Tensor:
        m = make(tr, "mma", AttackConfig(eps=EPS, step_size=STEP, steps=10, bn_mode=bn_mode), d_max=0.3, eps_min=0.02)
        torch.manual_seed(0)
        m.train_attack(copy.deepcopy(model), x, y)
        return m._eps

    def before_issue_26() -> torch.Tensor:
        """Full batch, check and search in eval mode, AN-PGD's PGD in train mode (the bn_mode conversion)."""
        m, net = make(tr, "mma", AttackConfig(eps=EPS, step_size=STEP, steps=10), d_max=0.3, eps_min=0.02), \
            copy.deepcopy(model)
        eps0, shape = torch.full((len(y),), m.eps_min), (-1, 1, 1, 1)
        torch.manual_seed(0)
        with eval_mode(net):
            correct = m._margin(net, x, y) < 0
            x_pgd = pgd(net, x, y, m.threat.per_sample(eps0, 4), steps=10, step_size=(2.5 * eps0 / 10).view(shape),
                        objective=m.attack_objective(x, y)[0], bn_mode="train")
            unit = (x_pgd - x) / (eps0.view(shape) + 1e-12)
            return torch.where(correct, m.bisection(net, x, y, unit, eps0), torch.zeros_like(eps0))

    official = radii("train")
    print(f"mma: {int((official > 0).sum())} of 64 correct; mean radius (official: search in train mode, PGD in "
          f"eval) {float(official[official > 0].mean()):.4f}")
    for label, r in (("attack.bn_mode=eval", radii("eval")), ("before issue 26", before_issue_26())):
        d = (r - official).abs()
        print(f"  {label}: radii differ on {int((d > 1e-6).sum())} of 64, mean |diff| {float(d.mean()):.4f}, "
              f"mean radius {float(r[r > 0].mean()):.4f}")


def check_adt() -> None:
    tr, model, x, y = toy()
    attack = AttackConfig(eps=8 / 255, steps=7)  # the authors' CIFAR-10 budget, in CIFAR units

    def aes(**options) -> torch.Tensor:
        torch.manual_seed(0)  # the same draws for every variant
        return make(tr, "adt", attack, **options).train_attack(copy.deepcopy(model), x, y)

    official = aes()
    print(f"adt (eps 8/255, 7 steps of 0.3, 5 draws): mean |x' - x| of the official AEs "
          f"{float((official - x).abs().mean()) * 255:.2f}/255")
    for label, opts in (("inner_grad=per_step", {"inner_grad": "per_step"}), ("init_rho=-5", {"init_rho": -5.0}),
                        ("per_step and init_rho=-5 (before issue 26)", {"inner_grad": "per_step", "init_rho": -5.0})):
        other = aes(**opts)
        print(f"  {label}: AEs differ from the official by {float((other - official).abs().mean()) * 255:.2f}/255 "
              f"on average (mean |x' - x| {float((other - x).abs().mean()) * 255:.2f}/255)")


def robust_accuracy(model, data, attack: str) -> float:
    """Accuracy (%) of ``model`` under one suite attack on the first 500 test images (eps 0.15, step 0.015)."""
    from ltrobust.attacks import parse_attack, run_attack

    spec = parse_attack(attack, eps=EPS, step_size=EPS / 10)
    hits = total = 0
    for x, y, *_ in eval_loader(data.test, 250):
        x_adv = run_attack(spec, model, x, y, seed=0)
        with torch.no_grad():
            hits += int((model(x_adv).argmax(1) == y).sum())
        total += len(y)
        if total >= 500:
            break
    return 100.0 * hits / total


def check_he() -> None:
    head = ("model.head=cosine", "model.cosine_scale=10", "model.cosine_gamma=0")
    tr, model, _, _ = toy("he", head)
    model.eval()
    served = {s: make(tr, "he", AttackConfig(), serve=s).deployed(model) for s in ("cosine", "scaled")}
    print("he (PGD-AT-HE, s 10, m 0.2; 500 digits test images, eps 0.15):")
    for attack in ("clean", "pgd20", "adaptive", "cw20"):
        accs = {s: robust_accuracy(m, tr.data, attack) for s, m in served.items()}
        print(f"  {attack}: served cos (serve=cosine) {accs['cosine']:.1f} %, served s cos (serve=scaled) "
              f"{accs['scaled']:.1f} %")


def digits_run(name: str, *overrides: str):
    """A run in the digits-all-methods setting (MLP width 64, 15 epochs, eps 0.15, PGD-3 x 0.05), last epoch."""
    cfg = resolve_config(["dataset=digits-lt", "imbalance=10", "model=mlp", "model.width=64", "epochs=15",
                          "train.batch_size=32", "train.milestones=11,14", "train.precision=fp32", "train.val_every=0",
                          "train.progress=false", f"attack.eps={EPS}", f"attack.step_size={STEP}", "attack.steps=3",
                          f"out={OUT}", f"name={name}", *overrides])
    return train(cfg)


def check_trades() -> None:
    tr, model, x, y = toy()
    m = {s: make(tr, "trades", AttackConfig(eps=8 / 255, random_start=s)) for s in ("normal", "uniform")}
    aes = {}
    for s, method in m.items():
        torch.manual_seed(0)
        aes[s] = method.train_attack(copy.deepcopy(model), x, y)
    print(f"trades (eps 8/255, PGD-10 on the KL): AEs from the 0.001 N(0, I) start (the TRADES code) and from the "
          f"uniform start differ by {float((aes['normal'] - aes['uniform']).abs().mean()) * 255:.2f}/255 on average")
    for start in ("normal", "uniform"):
        run = digits_run(f"trades-{start}", "method=trades", f"attack.random_start={start}")
        accs = [robust_accuracy(run.model.eval(), run.data, a) for a in ("clean", "pgd20")]
        print(f"  digits-LT, 15 epochs, attack.random_start={start}: clean {accs[0]:.1f} %, PGD-20 {accs[1]:.1f} %")


def check_las_at() -> None:
    from types import SimpleNamespace

    tr, model, x, y = toy()
    torch.manual_seed(0)
    x_adv = pgd(copy.deepcopy(model), x, y, make(tr, "pgd_at", AttackConfig()).threat, steps=10, step_size=2 / 255)
    context = SimpleNamespace(cfg=tr.cfg, data=tr.data, device=torch.device("cpu"),
                              optimizer=SimpleNamespace(param_groups=[{"lr": 0.1}]))
    out = {}
    for mode in ("train", "eval"):
        m = make(tr, "las_at", AttackConfig(), reward_a=0.0, reward_c=0.0, strategy_model="target", reward_bn_mode=mode)
        m.setup(context)
        torch.manual_seed(1)
        out[mode] = float(m.reward(copy.deepcopy(model), x, x_adv, y)) / 4 * 100  # R2 / r2_scale, in %
    print(f"las_at: R2's PGD-10 accuracy of the one-step-updated copy on 64 images (eps 8/255): reward_bn_mode=train "
          f"(the authors') {out['train']:.1f} %, reward_bn_mode=eval {out['eval']:.1f} %")


CHECKS = {"mma": check_mma, "adt": check_adt, "he": check_he, "trades": check_trades, "las_at": check_las_at}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="*", help=f"any of {', '.join(CHECKS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    torch.set_num_threads(1)
    for name in args.checks or CHECKS:
        CHECKS[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
