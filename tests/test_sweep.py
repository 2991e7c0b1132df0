"""Sweeps: every shipped grid expands into valid configs; a 2 x 2 grid of tiny runs trains once, is
skipped on a rerun, and its report holds the mean ± std computed here by hand from the per-run JSON;
local subprocess slots are pinned to GPUs; the Ray engine runs the same jobs as Ray tasks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from ltrobust.evaluation import runs as runs_module
from ltrobust.training import trainer as trainer_module
from ltrobust.errors import ConfigError, LtrobustError
from ltrobust.experiments import sweep
from ltrobust.report import OPTIONS, build_report
from ltrobust.experiments.sweep import GRID_DIR, eval_overrides, load_grid, plan_runs, run_sweep, slot_env

SMOKE = GRID_DIR / "digits-smoke.yaml"
ATTACKS = ("clean", "fgsm", "pgd5", "worst_case")


class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _no_report(inputs, **opts):
    """Stands in for build_report where a test is about running jobs (the report is tested elsewhere)."""
    return {"index": None}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The digits-smoke grid (loss {ce, bsl} x seed {0, 1}) run once into a temporary folder."""
    out = tmp_path_factory.mktemp("smoke")
    result = run_sweep(SMOKE, [f"out={out}"], report=build_report, report_options=OPTIONS)
    return out, result


# ------------------------------------------------------------------------------------------ grids
@pytest.mark.parametrize("path", sorted(GRID_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_grid_expands_into_valid_runs(path, tmp_path):
    spec = load_grid(path, [f"out={tmp_path}"])
    plans = plan_runs(spec)
    assert plans and len({p.name for p in plans}) == len(plans)  # one folder per distinct training
    for p in plans:
        assert p.run_dir.parent == tmp_path / "runs" and p.evals
        assert p.cfg.name == p.name and "=" not in p.name  # `ltrobust report` treats "=" as an option
        for tag, point in p.evals.items():
            assert sweep.eval_tag(point.cfg) == tag
    text = path.read_text()
    assert text.startswith("#") and "cost" in text.lower()  # every grid states what it costs


def test_paper_grids_cover_the_studies(tmp_path):
    t1 = plan_runs(load_grid("robal-table1-cifar10lt", [f"out={tmp_path}"]))
    finetunes = {p.cfg.train.finetune for p in t1}
    adjusts = {pt.cfg.eval.adjust for p in t1 for pt in p.evals.values()}
    losses = {p.cfg.method.loss for p in t1}
    assert finetunes == {"none", "crt", "rw", "lws"}
    assert adjusts == {"none", "cdt", "tau_norm", "logit_adjust", "tde"}
    assert {"ce", "ldam", "cat", "bsl", "focal", "cb"} <= losses
    # the four inference rows are evaluations of the vanilla run, not four more trainings
    vanilla = [p for p in t1 if len(p.evals) > 1]
    assert len(vanilla) == 1 and len(vanilla[0].evals) == 5
    ir = plan_runs(load_grid("imbalance-ratios-cifar10lt", [f"out={tmp_path}"]))
    assert {p.cfg.data.imbalance for p in ir} == {10.0, 20.0, 50.0, 100.0}
    assert {p.cfg.train.seed for p in ir} == {0, 1, 2}
    assert {p.cfg.method.name for p in ir} == {"pgd_at", "robal", "reat"}
    assert {p.cfg.data.profile for p in ir} == {"exp", "balanced-small"}  # REAT Table 8's PGD-AT (BS)
    t4 = plan_runs(load_grid("robal-table4-cifar10lt", [f"out={tmp_path}"]))
    assert {p.cfg.method.name for p in t4} == {"pgd_at", "trades", "robal"}
    assert {p.cfg.data.imbalance for p in t4} == {10.0, 20.0, 50.0, 100.0}
    scale = plan_runs(load_grid("data-scale-cifar10lt", [f"out={tmp_path}"]))
    assert {p.cfg.data.profile for p in scale} == {"full", "balanced-small", "exp"}
    assert "robal" in {p.cfg.method.name for p in scale}  # RoBal Fig. 5's LT-Our
    # each grid in the architecture and protocol of the paper table it reproduces (issue 26)
    assert all(p.cfg.model.name == "resnet18" for p in ir)  # REAT: ResNet-18, best epoch
    assert all(p.cfg.model.name == "wrn34_10" and p.cfg.eval.checkpoint == "last" and "apgd" in p.cfg.eval.attacks
               for p in t1 + t4 + scale)  # RoBal: WRN-34-10, last epoch, AA = APGD-CE + APGD-T
    assert all(p.cfg.data.dataset == "cifar10-lt" for p in t1 + ir + t4 + scale)
    assert all(p.cfg.reference for p in t1 + ir + t4)  # every row carries the numbers it targets


def test_robal_table1_rows_are_table_s5_forms(tmp_path):
    """LDAM on the linear head with no scale (s = 1) and focal / CB-focal in the sigmoid (BCE) form, as
    in RoBal's Table S5, on hand-made logits."""
    from ltrobust.config import loss_options
    from ltrobust.registry import LOSSES

    rows = {p.label: p.cfg for p in load_grid("robal-table1-cifar10lt", [f"out={tmp_path}"]).points}
    counts = [16, 1, 81]
    z, y = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]]), torch.tensor([1, 2])

    def built(label):
        cfg = rows[label]
        return LOSSES.get(cfg.method.loss)(counts, options=loss_options(cfg), total_epochs=cfg.train.epochs)

    # g_i = W_i^T f(x) - 1{i = y} delta_i, delta = 0.5 n^(-1/4) / max n^(-1/4) = (0.25, 0.5, 1/6)
    delta = [0.25, 0.5, 0.5 / 3]
    expected = (torch.nn.functional.cross_entropy(z - torch.tensor([[0, delta[1], 0], [0, 0, delta[2]]]), y))
    assert float(built("Class-aware margin (LDAM)")(z, y)) == pytest.approx(float(expected), abs=1e-6)

    def bce_focal(v, label):
        q = [1 / (1 + math.exp(-a)) if c == label else 1 - 1 / (1 + math.exp(-a)) for c, a in enumerate(v)]
        return -sum((1 - qc) ** 2 * math.log(qc) for qc in q)

    per = [bce_focal(z[0].tolist(), 1), bce_focal(z[1].tolist(), 2)]
    assert float(built("Hard-example mining (focal)")(z, y)) == pytest.approx(sum(per) / 2, abs=1e-6)
    assert rows["Re-weighting (CB-focal)"].method.loss_args["form"] == "sigmoid"


def test_grid_order_command_line_wins_and_bad_grids_are_named(tmp_path):
    spec = load_grid(SMOKE, [f"out={tmp_path}", "seed=5", "epochs=1"])
    assert {p.cfg.train.seed for p in spec.points} == {5} and {p.cfg.train.epochs for p in spec.points} == {1}
    assert len(plan_runs(spec)) == 2  # seeds collapsed: ce and bsl remain
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {imbalanec: [10]}\n")
    with pytest.raises(ConfigError, match="imbalance"):
        load_grid(bad)
    bad.write_text("grid: {loss: ce}\n")
    with pytest.raises(ConfigError, match="non-empty lists"):
        load_grid(bad)
    with pytest.raises(ConfigError, match="digits-smoke"):
        load_grid(tmp_path / "missing.yaml")


def test_grid_report_options_are_checked_against_the_builder_before_any_run(tmp_path):
    bad = tmp_path / "bad_report.yaml"
    bad.write_text(Path(sweep.grid_path(SMOKE)).read_text() + "report: {colour: red}\n")
    with pytest.raises(ConfigError, match="unknown report option.*colour"):
        load_grid(bad, [f"out={tmp_path}"], report_options=OPTIONS)
    with pytest.raises(ConfigError, match="unknown attack 'pdg20'"):  # attack names: checked before any run
        plan_runs(load_grid(SMOKE, [f"out={tmp_path}", "eval.attacks=clean,pdg20"]))


def test_eval_overrides_round_trip_exactly(tmp_path):
    from ltrobust.config import resolve_config

    cfg = load_grid(SMOKE, [f"out={tmp_path}", "eval.eps=8/255", "eval.adjust=logit_adjust"]).points[0].cfg
    again = resolve_config(eval_overrides(cfg), base=resolve_config([]))
    assert again.eval == cfg.eval


def test_subprocess_slots_are_pinned_to_gpus():
    assert slot_env(0, ["0", "1"], 4) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert slot_env(3, ["0", "1"], 4) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert slot_env(2, ["GPU-a", "GPU-b", "GPU-c"], 3) == {"CUDA_VISIBLE_DEVICES": "GPU-c"}
    assert slot_env(1, [], 2, cpus=8) == {"OMP_NUM_THREADS": "4"}


# ------------------------------------------------------------------------------------ a real sweep
def _per_run(out: Path) -> dict[str, list[dict]]:
    """eval/best.json of every run, by loss, read as plain JSON."""
    by_loss: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*/eval/best.json")):
        data = json.loads(path.read_text())
        by_loss.setdefault(data["loss"], []).append(data)
    return by_loss


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_sweep_trains_each_run_once_and_reports_seed_mean_std(smoke, monkeypatch):
    out, first = smoke
    assert (first["n_runs"], first["n_trained"], first["n_evaluated"], first["n_skipped"]) == (4, 4, 4, 0)
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == ["digits-lt-ir10-mlp-pgd_at-bsl-s0", "digits-lt-ir10-mlp-pgd_at-bsl-s1",
                     "digits-lt-ir10-mlp-pgd_at-s0", "digits-lt-ir10-mlp-pgd_at-s1"]

    fit = Counter(trainer_module.Trainer.fit)
    evaluate = Counter(runs_module.evaluate_run)
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: fit(self))
    monkeypatch.setattr(runs_module, "evaluate_run", evaluate)
    again = run_sweep(SMOKE, [f"out={out}"], report=build_report)
    assert fit.calls == 0 and evaluate.calls == 0  # the rerun trained and evaluated nothing
    assert (again["n_trained"], again["n_evaluated"], again["n_skipped"]) == (0, 0, 4)

    by_loss = _per_run(out)
    assert sorted(by_loss) == ["bsl", "ce"] and all(len(v) == 2 for v in by_loss.values())
    assert sorted(r["train_seed"] for r in by_loss["ce"]) == [0, 1]
    summary = json.loads((out / "report" / "report.json").read_text())
    groups = {g["config"]["method.loss"]: g for g in summary["groups"]}
    md = (out / "report" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    for loss, results in by_loss.items():
        g = groups[loss]
        assert g["n"] == 2 and sorted(g["seeds"]) == [0, 1]
        row = next(line for line in md.splitlines() if line.startswith(f"| pgd_at + {loss} |"))
        cells = dict(zip(columns, [c.strip() for c in row.strip("|").split("|")]))
        for attack in ATTACKS:
            for metric in ("accuracy", "balanced_accuracy", "tail", "boundary_error"):
                xs = [r["results"][attack][metric] for r in results if metric in r["results"][attack]]
                if len(xs) < 2:
                    continue
                m, s = _mean_std(xs)
                got = g["results"][attack][metric]
                assert got["n"] == 2
                assert got["mean"] == pytest.approx(m, abs=1e-12) and got["std"] == pytest.approx(s, abs=1e-12)
            m, s = _mean_std([r["results"][attack]["accuracy"] for r in results])
            title = {"clean": "Clean", "fgsm": "FGSM", "pgd5": "PGD-5", "worst_case": "Worst case"}[attack]
            assert cells[title] == f"{m:.2f} ± {s:.2f}"
        m, s = _mean_std([r["results"]["worst_case"]["boundary_error"] for r in results])
        assert cells["Gap (Clean - Worst case)"] == f"{m:.2f} ± {s:.2f}"
        per_class = g["results"]["clean"]["per_class"]
        for c in range(10):
            m, s = _mean_std([r["results"]["clean"]["per_class"][c] for r in results])
            assert per_class[c]["mean"] == pytest.approx(m, abs=1e-12)
    manifest = json.loads((out / "sweep.json").read_text())
    assert len(manifest["entries"]) == 4 and manifest["failed"] == []


def test_changed_evaluation_settings_reevaluate_without_retraining(smoke, tmp_path, monkeypatch):
    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report"))
    fit = Counter(trainer_module.Trainer.fit)
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: fit(self))
    res = run_sweep(SMOKE, [f"out={copy}", "loss=ce", "seed=0", "eval.attacks=clean,fgsm"], report=_no_report)
    assert fit.calls == 0 and res["n_trained"] == 0 and res["n_evaluated"] == 1 and res["n_runs"] == 1
    stored = json.loads((copy / "runs" / "digits-lt-ir10-mlp-pgd_at-s0" / "eval" / "best.json").read_text())
    assert list(stored["results"]) == ["clean", "fgsm", "worst_case"]


def test_failed_jobs_are_collected_named_and_retried_on_the_next_run(tmp_path):
    over = [f"out={tmp_path}", "dataset=cifar10-lt", "data.data_dir=/nonexistent/cifar10", "seed=0"]
    with pytest.raises(LtrobustError, match=r"(?s)2 job\(s\) of the sweep failed.*re-run the same command"):
        run_sweep(SMOKE, over)  # loss {ce, bsl} x seed 0: both trainings fail on the missing data
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert [f["stage"] for f in manifest["failed"]] == ["train", "train"]
    assert all("cifar" in f["error"].lower() for f in manifest["failed"])
    assert not any((tmp_path / "runs").glob("*/train_summary.json"))


def test_parallel_engine_runs_jobs_in_pinned_subprocesses(smoke, tmp_path, monkeypatch, caplog):
    out, _ = smoke
    copy = tmp_path / "par"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report"))
    (copy / "runs" / "digits-lt-ir10-mlp-pgd_at-bsl-s1" / "eval" / "best.json").unlink()
    monkeypatch.setattr(sweep, "visible_gpus", lambda: ["7"])  # pretend GPU 7 is visible: the slot is pinned to it
    with caplog.at_level("INFO", logger="ltrobust.experiments.sweep"):
        res = run_sweep(SMOKE, [f"out={copy}", "parallel=2", "train.device=cpu"], report=_no_report)
    assert (res["n_trained"], res["n_evaluated"]) == (0, 1)
    assert "GPU 7" in caplog.text
    stem = "eval-digits-lt-ir10-mlp-pgd_at-bsl-s1-best"
    assert json.loads((copy / "jobs" / f"{stem}.result.json").read_text())["ran"] is True
    assert (copy / "logs" / f"{stem}.log").is_file()
    assert (copy / "runs" / "digits-lt-ir10-mlp-pgd_at-bsl-s1" / "eval" / "best.json").is_file()


# ------------------------------------------------------------------------------------------- Ray
def test_ray_engine_runs_each_job_as_a_ray_task(smoke, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    out, _ = smoke
    copy = tmp_path / "ray"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report"))
    gone = copy / "runs" / "digits-lt-ir10-mlp-pgd_at-bsl-s1"
    shutil.rmtree(gone)  # the one run left for Ray to train and evaluate
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(SMOKE, [f"out={copy}", "engine=ray"], report=build_report)
        assert ray.is_initialized()  # a Ray instance the caller started is left running
    finally:
        ray.shutdown()
    assert (res["n_runs"], res["n_trained"], res["n_evaluated"], res["n_skipped"]) == (4, 1, 1, 3)
    assert (gone / "train_summary.json").is_file() and (gone / "eval" / "best.json").is_file()
    new = json.loads((gone / "eval" / "best.json").read_text())
    assert new["loss"] == "bsl" and new["train_seed"] == 1 and new["n"] == 50
    assert Path(res["report"]).is_file()
