"""The gradient-masking audit (SPEC 4): logit re-scaling sweep, zero gradients, PGD vs AutoAttack, adaptive
x10, Square after the white-box attacks; ``ltrobust audit`` files and their flags in every eval report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ltrobust import cli
from ltrobust.config import resolve_config
from ltrobust.data import build_data
from ltrobust.evaluation.audit import (AuditOptions, LogitScaled, audit_checks, audit_markdown, audit_model,
                                   zero_gradient_mask)
from ltrobust.evaluation.evaluator import balanced_subset, images_of
from ltrobust.evaluation.runs import evaluate_run, load_run
from ltrobust.training.trainer import Trainer
from ltrobust.errors import ConfigError

EPS, STEP = 16 / 255, 4 / 255  # 8x8 digits: at 8/255 PGD-20 barely moves this small model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A PGD-AT MLP (linear head) on digits-LT, fp32."""
    out = tmp_path_factory.mktemp("runs")
    Trainer(resolve_config(["dataset=digits-lt", "model=mlp", "model.width=32", "method=pgd_at", "epochs=15",
                            "train.progress=false", "train.val_samples=40", "train.val_attack_steps=2",
                            "train.precision=fp32", f"out={out}", "name=r"])).fit()
    return out / "r"


@pytest.fixture(scope="module")
def sample(run_dir):
    run = load_run(run_dir)
    data = build_data(run.cfg.data, "cpu")
    x, y = images_of(data.test, balanced_subset(data.test.labels, 200, seed=0), torch.device("cpu"))
    return run, x, y


# ------------------------------------------------------------------------------------- done-when
def test_rescaled_linear_head_pgd_rises_at_the_extremes_while_aa_stays_flat_and_is_flagged(sample):
    """With the head's logits x 10^-kappa, kappa in -2..2: clean and AutoAttack (APGD-CE + APGD-T) stay
    within 0.5 points while PGD-20 rises at both extremes, and the audit flags it.

    x100 (kappa = -2): the fp32 softmax saturates, CE's input gradient is exactly zero on many images and
    PGD cannot move them. x0.01 (kappa = 2): the softmax is nearly uniform and CE's gradient points at the
    mean logit instead of the closest wrong class. APGD-T's DLR loss is scale invariant."""
    run, x, y = sample
    res = audit_model(run.deployed, x, y, run.class_counts, eps=EPS, step_size=STEP,
                      options=AuditOptions(aa="apgd", square=False))
    rows = {r["kappa"]: r for r in res["rescaling"]}
    assert sorted(rows) == [-2, -1, 0, 1, 2] and rows[-2]["factor"] == 100 and rows[2]["factor"] == 0.01
    clean = [r["clean"] for r in rows.values()]
    aa = [r["aa"] for r in rows.values()]
    assert max(clean) - min(clean) <= 0.5 and max(aa) - min(aa) <= 0.5
    assert rows[-2]["pgd"] > rows[0]["pgd"] + 2 and rows[2]["pgd"] > rows[0]["pgd"] + 2
    assert rows[0]["aa"] <= rows[0]["pgd"] <= rows[0]["clean"]
    # the mechanism at x100: exactly zero input gradients; none at the deployed scale
    assert rows[-2]["zero_grad"] > 10 and rows[0]["zero_grad"] == 0 == res["zero_grad"]["percent"]
    assert "logit_rescaling" in res["flags"] and "rescaling_aa" not in res["flags"]
    check = res["checks"]["logit_rescaling"]
    assert check["aa_flat"] and check["clean_spread"] <= 0.5 and check["pgd_rise"] > 2
    assert "rises from" in check["message"] and "stays flat" in check["message"]
    assert res["attacks"]["sweep"]["plan"]["attacks"] == ["apgd-ce", "apgd-t"]
    md = audit_markdown({**res, "tag": "best"})
    assert "| -2 | 100 |" in md and "logit_rescaling" in md and "APGD-CE + APGD-T" in md
    print("kappa sweep (kappa, clean, PGD-20, APGD-CE+T, zero grad %):",
          [(k, r["clean"], r["pgd"], r["aa"], r["zero_grad"]) for k, r in rows.items()])


def test_logit_scaled_wrapper_keeps_predictions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    x = torch.rand(64, 1, 4, 4)
    for kappa in (-2, -1, 1, 2):
        scaled = LogitScaled(model, 10.0 ** -kappa)
        assert torch.allclose(scaled(x), model(x) * 10.0 ** -kappa)
        assert torch.equal(scaled(x).argmax(1), model(x).argmax(1))


# --------------------------------------------------------------------------------------- checks
def _summary(pgd=40.0, aa=38.0, adaptive=40.0, sweep_pgd=(40.0,) * 5, sweep_aa=(38.0,) * 5, zero=0.0,
             square_gain=0.0):
    rows = [{"kappa": k, "factor": 10.0 ** -k, "clean": 60.0, "pgd": p, "aa": a}
            for k, p, a in zip((-2.0, -1.0, 0.0, 1.0, 2.0), sweep_pgd, sweep_aa)]
    return {"rescaling": rows, "robust": {"pgd": pgd, "aa": aa, "adaptive": adaptive},
            "zero_grad": {"percent": zero}, "square": {"gain": square_gain, "broken": int(square_gain > 0),
                                                     "whitebox_robust": 10}}


@pytest.mark.parametrize("summary, flag", [
    (_summary(), None),
    (_summary(sweep_pgd=(42.1, 40, 40, 40, 40)), "logit_rescaling"),
    (_summary(sweep_pgd=(42.0, 40, 40, 40, 40)), None),  # exactly at the threshold: not flagged
    (_summary(sweep_pgd=(40, 37.9, 40, 40, 40)), "rescaled_pgd_stronger"),
    (_summary(sweep_aa=(38, 38, 38, 38, 39.1)), "rescaling_aa"),
    (_summary(zero=1.01), "zero_gradients"),
    (_summary(zero=1.0), None),
    (_summary(aa=34.9), "pgd_aa_gap"),
    (_summary(aa=35.0), None),
    (_summary(adaptive=37.9), "adaptive_gap"),
    (_summary(square_gain=1.5), "square_gain"),
    (_summary(square_gain=1.0), None),
])
def test_each_check_flags_above_its_threshold(summary, flag):
    checks = audit_checks(summary, AuditOptions())
    flagged = {k for k, c in checks.items() if c["flagged"]}
    if flag == "rescaled_pgd_stronger":  # a rescaled PGD 2.1 points lower also makes PGD depend on the scale
        assert flagged == {"rescaled_pgd_stronger", "logit_rescaling"}
    else:
        assert flagged == ({flag} if flag else set())
    assert all(isinstance(c["message"], str) and c["message"] for c in checks.values())


def test_thresholds_are_options():
    checks = audit_checks(_summary(aa=37.0), AuditOptions(pgd_aa_gap=0.5))
    assert checks["pgd_aa_gap"]["flagged"] and checks["pgd_aa_gap"]["threshold"] == 0.5
    opts = AuditOptions.from_overrides(["audit.kappas=-1,0,1", "audit.aa=apgd", "audit.square=false",
                                        "audit.n_samples=50", "audit.pgd_aa_gap=3"])
    assert opts.kappas == (-1.0, 0.0, 1.0) and opts.aa == "apgd" and not opts.square and opts.n_samples == 50
    with pytest.raises(ConfigError, match="unknown audit option 'audit.kapas'.*audit.kappas"):
        AuditOptions.from_overrides(["audit.kapas=1"])
    with pytest.raises(ConfigError, match="audit.aa"):
        AuditOptions(aa="fab")


# ------------------------------------------------------------------ a model that masks its gradients
class Rounded(nn.Module):
    """Logits rounded to 0.1: predictions barely change, every input gradient is exactly zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.round(self.model(x) * 10) / 10


def test_masked_gradients_are_flagged_and_square_finds_what_white_box_attacks_miss(sample):
    run, x, y = sample
    masked = Rounded(run.deployed)
    assert zero_gradient_mask(masked, x[:20], y[:20]).all()
    res = audit_model(masked, x[:40], y[:40], run.class_counts, eps=EPS, step_size=STEP,
                      options=AuditOptions(kappas=(0.0,), aa="apgd"))
    assert res["zero_grad"]["percent"] == 100.0
    assert res["square"]["broken"] > 0 and res["robust"]["worst_case"] < res["robust"]["whitebox"]
    assert {"zero_gradients", "square_gain"} <= set(res["flags"])
    # the same images through the unmasked model: Square finds nothing the white-box attacks missed
    plain = audit_model(run.deployed, x[:40], y[:40], run.class_counts, eps=EPS, step_size=STEP,
                        options=AuditOptions(kappas=(0.0,), aa="apgd"))
    assert plain["square"]["gain"] <= 1.0 and not {"zero_gradients", "square_gain"} & set(plain["flags"])
    assert plain["robust"]["whitebox"] < res["robust"]["whitebox"]
    print("masked:", res["robust"], res["square"]["broken"], "plain:", plain["robust"], plain["square"]["broken"])


# ------------------------------------------------------------------------------------ end to end
def test_cli_audit_writes_files_and_every_eval_report_shows_the_flags(run_dir, capsys):
    eval_over = ["attacks=clean,pgd5", "eval.n_samples=20", f"eval.eps={EPS}", f"eval.step_size={STEP}"]
    before = evaluate_run(run_dir, eval_over, device="cpu", progress=False)  # an eval written before the audit
    assert "audit" not in before
    # audit.aa=apgd keeps this file fast on a shared CPU; standard AutoAttack runs in test_eval.py
    rc = cli.main(["audit", str(run_dir), "audit.n_samples=20", "audit.kappas=-2,0,2", "audit.aa=apgd",
                   f"eval.eps={EPS}", f"eval.step_size={STEP}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    audit = json.loads((run_dir / "eval" / "audit.json").read_text())
    assert (run_dir / "eval" / "audit.md").read_text() in out + "\n"
    assert audit["tag"] == "best" and audit["n"] == 20 and [r["kappa"] for r in audit["rescaling"]] == [-2, 0, 2]
    assert audit["attacks"]["aa"]["plan"]["attacks"] == ["apgd-ce", "apgd-t"]
    assert audit["attacks"]["aa"]["plan"]["n_target_classes"] == 9 and audit["options"]["aa"] == "apgd"
    assert audit["square"]["whitebox_robust"] == round(audit["robust"]["whitebox"] * 20 / 100)
    assert len(audit["square"]["test_indices"]) == audit["square"]["broken"]
    assert set(audit["checks"]) == {"logit_rescaling", "rescaled_pgd_stronger", "rescaling_aa", "zero_gradients",
                                    "pgd_aa_gap", "adaptive_gap", "square_gain"}
    assert audit["robust"]["worst_case"] <= min(audit["robust"][k] for k in ("pgd", "aa", "adaptive"))
    assert {"versions", "config", "options", "seed", "deployed"} <= set(audit)
    # the eval written before the audit now carries its flags, and so does every later eval
    for res in (json.loads((run_dir / "eval" / "best.json").read_text()),
                evaluate_run(run_dir, eval_over, device="cpu", progress=False)):
        assert res["audit"]["flags"] == audit["flags"] and res["audit"]["tag"] == "best"
    md = (run_dir / "eval" / "best.md").read_text()
    assert "Gradient-masking audit (audit of `best`) flags: " + (", ".join(audit["flags"]) or "none") in md
    # another deployed model (an inference adjustment) has no audit yet: no flags borrowed from `best`
    other = evaluate_run(run_dir, [*eval_over, "eval.adjust=logit_adjust"], device="cpu", progress=False)
    assert "audit" not in other


def test_worst_case_and_white_box_bookkeeping(monkeypatch):
    """Scripted attacks: which images each attack breaks is fixed, so the audit's bookkeeping is exact.
    AutoAttack standard contains Square, so it does not count as white-box for check (e)."""
    from ltrobust.evaluation import audit as audit_mod

    n, c = 10, 10
    y = torch.arange(n)
    x = torch.eye(c)[y].view(n, 1, 1, c)  # the label drawn as a one-hot image
    model = nn.Sequential(nn.Flatten(), nn.Linear(c, c))
    with torch.no_grad():
        model[1].weight.copy_(10 * torch.eye(c))
        model[1].bias.zero_()
    breaks = {("pgd20", 1.0): {0}, ("apgd", 100.0): {1}, ("adaptive", 1.0): {2}, ("aa", 1.0): {3},
              ("square", 1.0): {3, 4}}
    seen = {}

    def scripted(spec, net, x_, y_, todo, **kw):
        factor = getattr(net, "factor", 1.0)
        seen.setdefault(spec.name, []).append(todo.nonzero().squeeze(1).tolist())
        broken = torch.zeros(n, dtype=torch.bool)
        broken[list(breaks.get((spec.name, factor), set()))] = True
        return todo & ~broken, torch.where(todo, torch.where(broken, (y_ + 1) % c, y_), -1)

    monkeypatch.setattr(audit_mod, "attack_flags", scripted)
    res = audit_model(model, x, y, [100] * c, options=AuditOptions(kappas=(-2.0, 0.0)))
    assert res["rescaling"][0]["pgd"] == 100 and res["rescaling"][0]["aa"] == 90  # kappa -2: apgd breaks image 1
    assert res["robust"] == {"clean": 100, "pgd": 90, "aa": 90, "adaptive": 90, "whitebox": 70, "worst_case": 50}
    assert seen["square"] == [[3, 4, 5, 6, 7, 8, 9]]  # white-box robust: not 0 (PGD), 1 (APGD at x100), 2 (x10)
    assert res["square"]["broken"] == 2 and res["square"]["positions"] == [3, 4] and not res["aa_is_whitebox"]
    assert set(res["flags"]) == {"logit_rescaling", "rescaling_aa", "square_gain"}  # PGD/APGD move with kappa
