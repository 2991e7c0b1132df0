"""The parity harness (benchmarks/parity) on a tiny stand-in "official" repository written here.

The real checkouts are not available in CI, so a stand-in repository plays the authors' code: a training
script whose top level parses the command line and loads data from a path that does not exist (the harness
must run only the definitions it needs), a model file, an lr schedule counting epochs from 1, and a PGD-AT
step with a balanced-softmax loss. A mini method module drives it with the harness's shared machinery against
ltrobust's real trainer on digits-LT. The identical stand-in reports "equal" at every row; one changed line
(a milestone, the attack start, the BatchNorm mode switch) makes the harness report "differs" there.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """conv-bn-relu x2, max-pool, conv-bn-relu, mean over space, linear."""

    def __init__(self, width=4, classes=10, channels=1):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU())
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))
'''

TRAIN = '''
import argparse
import torch
import torch.nn.functional as F
from net import Net

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--epochs", type=int, default=6)
parser.add_argument("--eps", default=32. / 255.)
parser.add_argument("--alpha", default=8. / 255.)
parser.add_argument("--iters", default=3)
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()
CACHE = open("/nonexistent/stand-in/data.bin", "rb").read()  # data loading at import: must not run


def adjust_lr(optimizer, epoch):
    value = args.lr
    if epoch >= 4:
        value = args.lr * 0.1
    if epoch >= 5:
        value = args.lr * 0.01
    for group in optimizer.param_groups:
        group["lr"] = value


def robust_loss(model, x, y, counts, optimizer):
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape).cuda().detach()
    for _ in range(args.iters):
        x_adv.requires_grad_()
        with torch.enable_grad():
            objective = F.cross_entropy(model(x_adv), y)
        grad, = torch.autograd.grad(objective, [x_adv])
        x_adv = x_adv.detach() + args.alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - args.eps), x + args.eps).clamp(0.0, 1.0)
    model.train()
    optimizer.zero_grad()
    logits = model(x_adv.detach())
    prior = torch.tensor(counts).type_as(logits).log()
    return F.cross_entropy(logits + prior, y)


def train(model, loader, optimizer, counts):
    model.train()
    for x, y in loader:
        x, y = x.cuda(), y.cuda()
        loss = robust_loss(model, x, y, counts, optimizer)
        loss.backward()
        optimizer.step()


def main():
    model = Net().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, args.epochs + 1):
        adjust_lr(optimizer, epoch)
'''

#: one-line changes of the stand-in, each a difference the harness must find
VARIANTS = {
    "milestone": ("    if epoch >= 4:\n", "    if epoch >= 3:\n"),
    "start": ("0.001 * torch.randn(x.shape).cuda().detach()",
              "torch.empty_like(x).uniform_(-args.eps, args.eps).cuda().detach()"),
    "bn": ("    model.eval()\n    x_adv", "    x_adv"),
}

#: ltrobust's settings that follow the stand-in (what an AT-BSL preset does for the real code)
OURS = ["dataset=digits-lt", "imbalance=10", "model=smallcnn", "model.width=4", "model.normalize=false",
        "method=at_bsl", "attack.eps=32/255", "attack.step_size=8/255", "attack.steps=3",
        "attack.random_start=normal", "train.lr=0.05", "train.epochs=6", "train.milestones=4,5",
        "train.milestone_base=1", "train.precision=fp32", "train.channels_last=false", "train.seed=1",
        "train.batch_size=16", "train.progress=false"]


@pytest.fixture
def parity(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.parity as parity

    return parity


def standin(tmp_path: Path, variant: str | None = None) -> Path:
    repo = tmp_path / "standin"
    repo.mkdir()
    (repo / "net.py").write_text(NET)
    text = TRAIN
    if variant:
        old, new = VARIANTS[variant]
        assert text.count(old) == 1
        text = text.replace(old, new)
    (repo / "train.py").write_text(text)
    return repo


def standin_spec(tmp_path: Path):
    """The stand-in's method module, built on the harness's shared machinery as a real one is."""
    from benchmarks.parity import ours
    from benchmarks.parity.core import KeyMap, compare_exact, compare_tensor, load_mapped, map_state
    from benchmarks.parity.method import MethodSpec
    from benchmarks.parity.official import Recorder, call_with_seed, quiet
    from benchmarks.parity.steps import after_each_step, compare_steps, ours_steps, split_calls
    from ltrobust.data import build_data

    keymap = KeyMap(rules=((r"^features\.", "backbone."), (r"^fc\.", "head.")),
                    ours_only={r"^normalize\.mean$": 0.0, r"^normalize\.std$": 1.0})

    def schedule(ctx):
        args = ctx.checkout.args("train.py")
        defs = ctx.checkout.definitions("train.py", ["adjust_lr"], {"args": args})
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
        theirs = []
        for epoch in range(1, args.epochs + 1):
            defs["adjust_lr"](opt, epoch)
            theirs.append(opt.param_groups[0]["lr"])
        cfg = ours.config(*OURS)
        tr = ours.trainer(cfg, build_data(cfg.data), tmp_path / "run-schedule")
        yield compare_tensor("schedule", "learning rate at every epoch", torch.tensor(theirs, dtype=torch.float64),
                             torch.tensor([tr.lr(e) for e in range(cfg.train.epochs)], dtype=torch.float64))
        net = ctx.checkout.module("net").Net()
        their_opt = ctx.checkout.statement("train.py", "optimizer", {"torch": torch, "model": net, "args": args},
                                           function="main")
        keys = ("lr", "momentum", "weight_decay", "nesterov")
        yield compare_exact("schedule", "optimizer settings", [their_opt.defaults[k] for k in keys],
                            [tr.optimizer.defaults[k] for k in keys])

    def step(ctx):
        args = ctx.checkout.args("train.py")
        cfg = ours.config(*OURS)
        data = build_data(cfg.data)
        perm = torch.randperm(len(data.train.labels), generator=torch.Generator().manual_seed(0))[:32]
        batches = [(x.double(), y) for x, y in ours.batches(data.train.subset(perm), 16, 2)]
        seeds = [7, 8]
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            tr = ours.trainer(cfg, data, tmp_path / "run-step")
            tr.model.double()
            torch.manual_seed(args.seed)
            net = ctx.checkout.module("net").Net().double()
            m = map_state(net.state_dict(), tr.model.state_dict(), keymap)
            load_mapped(tr.model, net.state_dict(), m)
            real = ctx.checkout.definitions("train.py", ["robust_loss"], {"args": args})["robust_loss"]
            losses = []

            def observed(*a, **k):
                out = real(*a, **k)
                losses.append(out.detach().clone())
                return out

            seeded = call_with_seed(observed, iter(seeds))
            defs = ctx.checkout.definitions("train.py", ["train"], {"args": args, "robust_loss": seeded})
            opt = ctx.checkout.statement("train.py", "optimizer", {"torch": torch, "model": net, "args": args},
                                         function="main")
            snaps = after_each_step(opt, net)
            rec = Recorder(net)
            with quiet():
                defs["train"](rec, batches, opt, data.class_counts)
            theirs = split_calls(rec, int(args.iters), losses, snaps)
            mine = ours_steps(tr, batches, seeds)
        finally:
            torch.set_default_dtype(default)
        yield from compare_steps(theirs, mine, m, batches, "stand-in, fp64")

    return MethodSpec(name="standin", repository="test/standin", checkout="standin", commit="unknown",
                      files=("train.py", "net.py"), checks={"schedule": schedule, "step": step})


def run(parity, tmp_path, variant=None):
    from benchmarks.parity.method import Options, run_method

    return run_method(standin_spec(tmp_path), standin(tmp_path, variant), Options(levels=("schedule", "step")))


def test_observed_steps_equal_recorded_steps(parity, tmp_path):
    """ours_steps_observed (a hook on one module, for attacks that bypass the model's forward) records what
    ours_steps (a Recorder as the attack model) records, on a method whose attack calls the forward."""
    from benchmarks.parity import ours
    from benchmarks.parity.steps import ours_steps, ours_steps_observed
    from ltrobust.data import build_data

    cfg = ours.config(*OURS)
    data = build_data(cfg.data)
    batches = ours.batches(data.train.subset(torch.arange(32)), 16, 2)
    a, b, c = (ours.trainer(cfg, data, tmp_path / name) for name in "abc")
    b.model.load_state_dict(a.model.state_dict())
    c.model.load_state_dict(a.model.state_dict())
    recorded = ours_steps(a, batches, [3, 4])
    observed, forwards = ours_steps_observed(b, batches, [3, 4], b.model.normalize, logits_scale=2.0)
    assert forwards == 1  # the loss's forward on the AEs
    by_position, _ = ours_steps_observed(c, batches, [3, 4], c.model.normalize, attack_forwards=3)
    assert [len(s.attack_inputs) for s in by_position] == [3, 3]
    for p, o in zip(by_position, observed):
        assert torch.equal(p.x_adv, o.x_adv), (p.x_adv - o.x_adv).abs().max()
        assert torch.equal(p.logits, o.logits * 2.0), (p.logits - o.logits * 2).abs().max()
    for r, o in zip(recorded, observed):
        assert len(r.attack_inputs) == len(o.attack_inputs) == 3 and r.attack_training == o.attack_training
        for tr_, to in zip(r.attack_inputs, o.attack_inputs):
            assert torch.equal(tr_, to)
        assert torch.equal(r.x_adv, o.x_adv) and torch.equal(r.loss, o.loss)
        assert torch.equal(r.logits / 2.0, o.logits)
        assert r.grads.keys() == o.grads.keys() and all(torch.equal(r.grads[k], o.grads[k]) for k in r.grads)


def test_model_rows_equal_for_a_copy_and_differ_for_a_changed_bias(parity):
    """model_rows: a model against its own copy is equal in both BatchNorm modes (logits and input gradients);
    a copy with one head bias changed differs; the modes are visited eval then train."""
    from benchmarks.parity.steps import model_rows

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    net = net.double()
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    rows = list(model_rows(net, copy.deepcopy(net), x, y, torch.float64, "copy"))
    assert [r.quantity for r in rows] == ["model: logits, eval mode", "model: input gradients, eval mode",
                                          "model: logits, train mode", "model: input gradients, train mode"]
    assert all(r.equal for r in rows)
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[4].bias[0] += 0.5
    assert not any(r.equal for r in model_rows(net, other, x, y, torch.float64, "changed"))


def test_identical_standin_is_equal_at_every_row(parity, tmp_path):
    report = run(parity, tmp_path)
    assert report.rows and all(r.equal for r in report.rows), [r for r in report.rows if not r.equal]
    quantities = {r.quantity for r in report.rows}
    assert {"learning rate at every epoch", "optimizer settings", "BatchNorm mode while attacking",
            "attack start, step 1", "attack iterates, step 2", "loss, step 2", "gradients, step 2",
            "weights after step 2", "BatchNorm buffers after step 2"} <= quantities
    assert report.level_summary("step").startswith("equal")
    # the stand-in's checkout is untouched: no byte-code written into it, nothing of its code left imported
    assert not list((tmp_path / "standin").glob("**/__pycache__"))
    assert "net" not in sys.modules and not any("parity-official" in p for p in sys.path)


@pytest.mark.parametrize("variant, first", [("milestone", "learning rate at every epoch"),
                                            ("start", "attack start, step 1"),
                                            ("bn", "BatchNorm mode while attacking")])
def test_a_one_line_difference_is_reported(parity, tmp_path, variant, first):
    report = run(parity, tmp_path, variant)
    differs = [r.quantity for r in report.rows if not r.equal]
    assert first in differs
    assert report.unexplained  # the stand-in's module declares no known difference
    if variant == "milestone":  # the step level is untouched by a schedule change
        assert all(r.equal for r in report.rows if r.level == "step")
    else:
        assert "loss, step 1" in differs or "attack iterates, step 1" in differs


def test_known_difference_is_explained_only_where_declared(parity):
    from benchmarks.parity.core import Known, Row
    from benchmarks.parity.method import MethodSpec

    spec = MethodSpec(name="x", repository="a/b", checkout="b", commit="", files=(), checks={},
                      known={r"^loss": Known("rounding", "tiny", "train.channels_last=false", where="fp32")})
    r32 = spec.explain(Row("step", "loss, step 1", "differs", "p, fp32", "fp32"))
    r64 = spec.explain(Row("step", "loss, step 1", "differs", "p, fp64", "fp64"))
    ok = spec.explain(Row("step", "loss, step 1", "equal", "p, fp32", "fp32"))
    assert r32.reason == "rounding" and r32.option == "train.channels_last=false"
    assert r64.reason == "" and ok.reason == ""


def test_comparisons_and_key_maps(parity):
    from benchmarks.parity.core import (KeyMap, ParityError, compare_exact, compare_tensor, compare_tensors,
                                        map_state, predictions_agree)

    a = torch.tensor([1.0, 2.0, 4.0])
    assert compare_tensor("step", "q", a, a * (1 + 1e-6)).verdict == "equal"  # within float32's 1e-5
    r = compare_tensor("step", "q", a, a + torch.tensor([0.0, 0.0, 1e-3]))
    assert r.verdict == "differs" and r.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert r.max_rel == pytest.approx(2.5e-4, rel=1e-3)
    assert compare_tensor("step", "q", a.double(), a.double() * (1 + 1e-6)).verdict == "differs"  # fp64: 1e-10
    assert compare_tensor("step", "q", a, a[:2]).verdict == "differs"
    assert compare_exact("schedule", "q", [0.1, 0.01], [0.1, 0.01]).equal
    d = compare_exact("schedule", "q", [0.1, 0.01, 0.001], [0.1, 0.001, 0.001])
    assert not d.equal and "index 1" in d.detail
    rows = compare_tensors("step", "w", {"x": a, "y": a}, {"x": a, "y": a + 1})
    assert not rows.equal and "worst y" in rows.detail
    assert not predictions_agree("eval", "c", torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1])).equal
    km = KeyMap(rules=((r"^fc\.", "head."), (r"^(?!head\.)", "backbone.")), unused=(r"^spare\.",),
                ours_only={r"^normalize\.": 0.0})
    theirs = {"conv.weight": torch.zeros(2), "fc.bias": torch.zeros(3), "spare.w": torch.zeros(1)}
    mine = {"backbone.conv.weight": torch.ones(2), "head.bias": torch.ones(3), "normalize.mean": torch.zeros(1)}
    assert map_state(theirs, mine, km) == {"conv.weight": "backbone.conv.weight", "fc.bias": "head.bias"}
    with pytest.raises(ParityError, match="must be 0.0"):
        map_state(theirs, {**mine, "normalize.mean": torch.ones(1)}, km)
    with pytest.raises(ParityError, match="differ in shape"):
        map_state(theirs, {**mine, "head.bias": torch.ones(4)}, km)
    with pytest.raises(ParityError, match="not declared ours-only"):
        map_state(theirs, {**mine, "head.extra": torch.ones(1)}, km)


def test_checkout_runs_only_chosen_definitions_on_the_cpu(parity, tmp_path):
    from benchmarks.parity.core import ParityError
    from benchmarks.parity.official import Checkout, cpu_only

    cuda = torch.Tensor.cuda
    with Checkout(standin(tmp_path)) as ck, cpu_only():
        args = ck.args("train.py", ["--lr", "0.2"])
        assert args.lr == 0.2 and args.epochs == 6
        ns = ck.definitions("train.py", ["adjust_lr"], {"args": args})
        assert "CACHE" not in ns and "robust_loss" not in ns  # the data loading at import did not run
        assert torch.ones(1).cuda().device.type == "cpu" and torch.cuda.is_available() is False
        with pytest.raises(ParityError, match="defines no nothing_here"):
            ck.definitions("train.py", ["nothing_here"])
        with pytest.raises(ParityError, match="assigns no scheduler"):
            ck.statement("train.py", "scheduler", {}, function="main")
    assert torch.Tensor.cuda is cuda


def test_report_json_and_docs_table(parity, tmp_path):
    from benchmarks.parity.__main__ import write_table
    from benchmarks.parity.core import Known, Report, Row, docs_table

    rep = Report("standin", "test/standin", "abc1234def", "abc1234def", "python -m benchmarks.parity standin")
    rep.add([Row("data", "counts", "equal", theirs=[1, 2], ours=[1, 2]),
             Row("eval", "checkpoint choice", "differs").explain(Known("leak", "none", "eval.checkpoint=last"))])
    out = rep.write(tmp_path)
    saved = json.loads(out.read_text())
    assert out.name.startswith("parity-standin-") and saved["official_commit"] == "abc1234def"
    assert saved["summary"]["data"] == "equal (1 rows)" and "leak" in saved["summary"]["eval"]
    assert saved["rows"][1]["reason"] == "leak" and saved["rows"][1]["verdict"] == "differs"
    table = docs_table([saved])
    assert table.splitlines()[2].startswith("| standin (test/standin@abc1234)")
    doc = tmp_path / "parity.md"
    doc.write_text("# x\n<!-- parity-table: generated by python -m benchmarks.parity --table -->\nold\n"
                   "<!-- /parity-table -->\ntail\n")
    write_table(tmp_path, doc)
    text = doc.read_text()
    assert "old" not in text and "| standin" in text and text.endswith("tail\n")


def test_a_result_is_not_overwritten_by_one_with_other_settings(parity, tmp_path):
    """Two runs of one day: with the same settings the second replaces the first; with other settings both are
    kept (the second as ...-2.json) and the table reads the one written last."""
    from benchmarks.parity.__main__ import newest_results
    from benchmarks.parity.core import Report, Row

    def report(batch, seconds):
        rep = Report("standin", "test/standin", "abc1234def", "abc1234def", "cmd", seconds=seconds,
                     settings={"batch_size": batch})
        rep.add([Row("data", "counts", "equal")])
        return rep

    first = report(8, 1.0).write(tmp_path)
    assert report(8, 2.0).write(tmp_path) == first and json.loads(first.read_text())["seconds"] == 2.0
    other = report(32, 3.0).write(tmp_path)
    assert other != first and other.name.endswith("-2.json")
    assert json.loads(first.read_text())["settings"] == {"batch_size": 8}  # kept
    assert [r["seconds"] for r in newest_results(tmp_path)] == [3.0]
    assert report(32, 4.0).write(tmp_path) == other  # the same settings as -2: replaced


def test_cli_errors_are_one_line(tmp_path):
    for argv, message in ((["nope", "--official", str(tmp_path)], "unknown method 'nope'"),
                          (["at-bsl", "--official", str(tmp_path / "missing")], "no checkout at"),
                          (["at-bsl", "--official", str(tmp_path)], "is not a checkout of NISPLab/AT-BSL"),
                          (["robal", "--official", str(tmp_path), "--checkpoint", str(tmp_path)],
                           "takes no --checkpoint"),
                          (["--all", str(tmp_path), "--checkpoint", str(tmp_path)], "not with --all"),
                          (["reat", "--official", str(tmp_path), "--checkpoint", str(tmp_path / "w.pt")],
                           "no such file")):
        res = subprocess.run([sys.executable, "-m", "benchmarks.parity", *argv], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
