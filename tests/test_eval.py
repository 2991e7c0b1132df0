"""``ltrobust eval`` end to end on a tiny run: cascade, per-sample flags, every SPEC 4 metric in one JSON,
chunked resume (after a kill, a deleted chunk, a corrupt chunk, new weights), deployed-logit wrappers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltrobust import cli
from ltrobust.config import resolve_config
from ltrobust.data import build_data
from ltrobust.evaluation import evaluator
from ltrobust.evaluation.evaluator import Evaluation, column_title, markdown_table, predict
from ltrobust.evaluation.metrics import summarize
from ltrobust.evaluation.runs import evaluate_run, load_run
from ltrobust.training.trainer import Trainer

SUITE = ["clean", "fgsm", "pgd20", "pgd100", "mim20", "cw20", "cw100", "aa", "adaptive"]
SPEC4_KEYS = {"n", "accuracy", "per_class", "balanced_accuracy", "head", "body", "tail", "many", "medium", "few",
              "tail_group", "worst_class", "groups", "predicted_distribution"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def without_seconds(obj):
    """A result without its timings (the only part that differs between identical evaluations)."""
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if k != "seconds"}
    return obj


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A PGD-AT MLP on digits-LT (IR 10: training counts 124 .. 12, so many / medium / few are all non-empty)."""
    out = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    Trainer(resolve_config(["dataset=digits-lt", "model=mlp", "model.width=32", "method=pgd_at", "epochs=12",
                            "train.progress=false", "train.val_samples=40", "train.val_attack_steps=2",
                            "train.precision=fp32", f"out={out}", "name=r"])).fit()
    return out / "r"


@pytest.fixture(scope="module")
def loaded(run_dir):
    run = load_run(run_dir)
    return run, build_data(run.cfg.data, "cpu")


class Killed(Exception):
    """Stands for a SIGKILL / Ctrl-C in the middle of a chunk."""


class Counter:
    """Wraps ``run_attack``: counts calls and attacked images, optionally raises at call ``kill_at``."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.real = evaluator.run_attack
        self.calls, self.images, self.models, self.kill_at = 0, 0, [], kill_at

    def __call__(self, spec, model, x, y, **kw):
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at:
            raise Killed
        self.images += len(x)
        self.models.append(model)
        return self.real(spec, model, x, y, **kw)


def _numbers_are_numbers(obj) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            _numbers_are_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            _numbers_are_numbers(v)
    elif isinstance(obj, str):
        try:
            float(obj)
        except ValueError:
            return
        raise AssertionError(f"number stored as a string: {obj!r}")


# ------------------------------------------------------------------------------------------ end to end
def test_cli_eval_full_suite_writes_every_metric(run_dir, capsys):
    # eps 16/255 so that every attack has work on this 8x8 model; one chunk, so AutoAttack runs once
    rc = cli.main(["eval", str(run_dir), "attacks=" + ",".join(SUITE), "eval.n_samples=24", "eval.chunk_size=24",
                   f"eval.eps={16 / 255}", f"eval.step_size={4 / 255}", "eval.batch_size=64"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "eval r best: 100%|" in err and "24 img · Clean, FGSM" in err  # the progress bar
    res = json.loads((run_dir / "eval" / "best.json").read_text())
    _numbers_are_numbers(res)
    timings = [res["seconds"]] + [r["seconds"] for r in res["results"].values() if "seconds" in r]
    assert len(timings) == len(SUITE) + 1 and all(t == round(t, 3) for t in timings)  # ms, no float noise
    assert res["n"] == 24 and res["mode"] == "cascade" and res["chunks"] == 1 and res["seed"] == 0
    assert res["attack_names"] == SUITE and list(res["results"]) == SUITE + ["worst_case"]
    assert {"torch", "python", "numpy", "pyautoattack", "ltrobust"} <= set(res["versions"])
    assert res["config"]["eval"]["attacks"] == SUITE and res["config"]["method"]["name"] == "pgd_at"
    assert res["autoattack"]["version"] == "0.2.0"
    assert res["autoattack"]["plans"]["standard"]["n_target_classes"] == 9  # min(9, C - 1)
    aa = next(a for a in res["attacks"] if a["name"] == "aa")
    assert aa["aa_version"] == "standard" and aa["eps"] == pytest.approx(16 / 255)
    cw = next(a for a in res["attacks"] if a["name"] == "cw100")
    assert cw["steps"] == 100 and cw["objective"] == "cw" and cw["objective_kwargs"] == {"kappa": 50.0}

    samples = np.load(run_dir / "eval" / res["samples"])
    names, flags, preds, y = list(samples["names"]), samples["flags"], samples["preds"], samples["labels"]
    assert names == SUITE + ["worst_case"] and flags.shape == (len(names), 24)
    # cascade: each attack ran on the images still robust, so the flags only ever switch off
    assert (flags[1:-1] <= flags[:-2]).all() and (flags[-1] == flags[-2]).all()
    assert (flags[-1] == flags.all(0)).all()  # worst case = per-sample minimum
    clean = flags[0]
    for i, name in enumerate(names):
        r = res["results"][name]
        want = SPEC4_KEYS | ({"boundary_error"} if name != "clean" else set())
        assert want <= set(r), (name, want - set(r))
        ref = summarize(flags[i], y, res["class_counts"])
        assert r["accuracy"] == pytest.approx(ref["accuracy"]) and r["per_class"] == pytest.approx(ref["per_class"])
        assert r["balanced_accuracy"] == pytest.approx(ref["balanced_accuracy"])
        assert r["tail_group"] == pytest.approx(ref["tail_group"])
        if name != "clean":
            assert r["boundary_error"] == pytest.approx(100 * clean.mean() - 100 * flags[i].mean())
        dist = r["predicted_distribution"]
        assert sum(dist["overall"]) == pytest.approx(100.0) and len(dist["by_true_class"]) == 10
        wrong = preds[i] != y
        assert ((preds[i] == y) == flags[i]).all()  # a flag is exactly "the AE is classified correctly"
        assert (dist["fooled"] is None) == (not (clean & wrong).any())
    assert res["results"]["worst_case"]["accuracy"] == res["results"]["adaptive"]["accuracy"]
    assert res["results"]["clean"]["accuracy"] > res["results"]["pgd20"]["accuracy"]  # the attacks had work
    md = (run_dir / "eval" / "best.md").read_text()
    for name in names:
        assert f"| {column_title(name)} |" in md
    assert "| many | medium | few |" in md and "| Worst case |" in out and "results:" in out


def test_evaluate_a_checkpoint_file(run_dir):
    res = evaluate_run(run_dir / "checkpoints" / "last.pt", ["attacks=clean", "eval.n_samples=20"], device="cpu",
                       progress=False)
    assert res["tag"] == "last" and res["checkpoint"].endswith("last.pt")
    assert (run_dir / "eval" / "last.json").exists()


# --------------------------------------------------------------------------------------------- resume
def _evaluation(loaded, out_dir, model=None, **kw):
    run, data = loaded
    opts = dict(attacks=["pgd5", "cw5"], mode="standalone", n_samples=40, chunk_size=10, batch_size=64,
                progress=False) | kw
    return Evaluation(model or run.deployed, data.test, run.class_counts, out_dir=out_dir, tag="t", **opts)


def test_resume_redoes_only_missing_or_corrupt_chunks(loaded, tmp_path, monkeypatch):
    ev = _evaluation(loaded, tmp_path)
    # killed in the first attack of chunk 2: chunks 0 and 1 are on disk, no result yet
    killer = Counter(kill_at=None)
    per_chunk = []
    for k, (a, b) in enumerate(ev.chunks()):  # the calls each chunk makes: 2 attacks x 1 batch if any clean-correct
        x, y = evaluator.images_of(ev.split, ev.indices[a:b], ev.device)
        per_chunk.append(2 * bool((predict(ev.model, x) == y).any()))
    assert per_chunk[2] > 0 and per_chunk[1] > 0 and per_chunk[3] > 0
    killer.kill_at = per_chunk[0] + per_chunk[1] + 1
    monkeypatch.setattr(evaluator, "run_attack", killer)
    with pytest.raises(Killed):
        ev.run()
    assert sorted(p.name for p in ev.chunk_dir.iterdir() if p.suffix == ".json") == ["chunk_00000.json",
                                                                                      "chunk_00001.json"]
    assert not (tmp_path / "t.json").exists()

    counter = Counter()
    monkeypatch.setattr(evaluator, "run_attack", counter)
    first = ev.run()  # resumes: only chunks 2 and 3
    assert counter.calls == per_chunk[2] + per_chunk[3] and first["chunks_reused"] == 2

    def rerun():
        c = Counter()
        monkeypatch.setattr(evaluator, "run_attack", c)
        return c, _evaluation(loaded, tmp_path).run()

    # the final JSON and one chunk deleted: only that chunk is recomputed, with the same result
    (tmp_path / "t.json").unlink()
    ev.chunk_path(1).unlink()
    c, res = rerun()
    chunk1 = json.loads(ev.chunk_path(1).read_text())
    assert c.calls == per_chunk[1] and c.images == 2 * sum(chunk1["flags"]["clean"])
    assert without_seconds(res["results"]) == without_seconds(first["results"]) and res["chunks_reused"] == 3

    # a truncated chunk and a chunk whose content no longer matches its checksum are redone
    text = ev.chunk_path(3).read_text()
    ev.chunk_path(3).write_text(text[: len(text) // 2])
    c, res = rerun()
    assert c.calls == per_chunk[3] and without_seconds(res["results"]) == without_seconds(first["results"])
    data = json.loads(ev.chunk_path(2).read_text())
    data["flags"]["pgd5"] = [not f for f in data["flags"]["pgd5"]]
    ev.chunk_path(2).write_text(json.dumps(data))
    c, res = rerun()
    assert c.calls == per_chunk[2] and without_seconds(res["results"]) == without_seconds(first["results"])

    # nothing missing: nothing recomputed
    c, res = rerun()
    assert c.calls == 0 and res["chunks_reused"] == 4


def test_new_weights_or_settings_invalidate_the_chunks(loaded, tmp_path, monkeypatch):
    run, _ = loaded
    _evaluation(loaded, tmp_path).run()
    counter = Counter()
    monkeypatch.setattr(evaluator, "run_attack", counter)
    _evaluation(loaded, tmp_path, attacks=["pgd5", "cw6"]).run()  # another attack: every chunk redone
    assert counter.calls > 0
    with torch.no_grad():  # other weights behind the same tag (e.g. a re-trained best.pt): every chunk redone
        run.model.head.bias.add_(0.01)
    try:
        counter = Counter()
        monkeypatch.setattr(evaluator, "run_attack", counter)
        res = _evaluation(loaded, tmp_path, attacks=["pgd5", "cw6"]).run()
        assert counter.calls > 0 and res["chunks_reused"] == 0
    finally:
        with torch.no_grad():
            run.model.head.bias.sub_(0.01)


# -------------------------------------------------------------------------------------- cascade mode
def test_cascade_attacks_only_the_images_still_robust(loaded, tmp_path, monkeypatch):
    counter = Counter()
    monkeypatch.setattr(evaluator, "run_attack", counter)
    cas = _evaluation(loaded, tmp_path / "c", attacks=["fgsm", "pgd10"], mode="cascade", chunk_size=40).run()
    sa = _evaluation(loaded, tmp_path / "s", attacks=["fgsm", "pgd10"], mode="standalone", chunk_size=40).run()
    n = cas["n"]
    acc = {k: round(v["accuracy"] * n / 100) for k, v in cas["results"].items()}
    assert counter.images == acc["clean"] + acc["fgsm"] + 2 * acc["clean"]  # cascade: pgd10 on the FGSM-robust
    assert cas["results"]["pgd10"]["accuracy"] <= sa["results"]["pgd10"]["accuracy"]
    fl = np.load(tmp_path / "s" / "t_samples.npz")["flags"]
    assert (fl[3] == (fl[1] & fl[2])).all()  # standalone worst case = per-sample minimum
    assert sa["results"]["worst_case"]["accuracy"] <= min(sa["results"][k]["accuracy"] for k in ("fgsm", "pgd10"))
    assert "Standalone" in markdown_table(sa) and "Cascade" in markdown_table(cas)


# ---------------------------------------------------------------------------- deployed-logit wrappers
def test_adjustment_wraps_the_deployed_model_that_attacks_target(run_dir, loaded, monkeypatch):
    raw, data = loaded
    run = load_run(run_dir, ["eval.adjust=logit_adjust", "eval.adjust_tau=1"])
    assert type(run.deployed).__name__ == "LogitAdjusted" and run.deployed.model is not None
    x = data.test.images[:32].float() / 255
    y = data.test.labels[:32]

    def grad(model):
        xr = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(xr), y), xr)[0]

    offset = -torch.log(torch.tensor(raw.class_counts, dtype=torch.float32) / sum(raw.class_counts))
    assert torch.allclose(run.deployed(x), raw.deployed(x) + offset, atol=1e-5)
    assert not torch.allclose(grad(run.deployed), grad(raw.deployed))

    counter = Counter()
    monkeypatch.setattr(evaluator, "run_attack", counter)
    res = evaluate_run(run_dir, ["eval.adjust=logit_adjust", "eval.adjust_tau=1", "attacks=clean,pgd5",
                                 "eval.n_samples=20"], device="cpu", progress=False)
    assert res["tag"] == "best-logit_adjust1" and (run_dir / "eval" / "best-logit_adjust1.json").exists()
    assert res["deployed"][0] == {"adjust": "logit_adjust", "tau": 1.0}
    assert counter.models and all(type(m).__name__ == "LogitAdjusted" for m in counter.models)
    s = np.load(run_dir / "eval" / "best-logit_adjust1_samples.npz")
    xs = data.test.images[torch.as_tensor(s["indices"])].float() / 255
    assert (s["flags"][0] == (predict(run.deployed, xs) == torch.as_tensor(s["labels"])).numpy()).all()

    tde = evaluate_run(run_dir, ["eval.adjust=tde", "eval.adjust_tau=0.1", "attacks=clean", "eval.n_samples=20"],
                       device="cpu", progress=False)  # needs the mean training feature
    assert tde["tag"] == "best-tde0.1" and tde["deployed"][0]["adjust"] == "tde"


class _PixelClassifier(torch.nn.Module):
    """Predicts class k for an image whose first pixel is k/255 (logits -(255 x - c)^2)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("classes", torch.arange(num_classes, dtype=torch.float32))

    def forward(self, x):
        return -(self.scale * x[:, 0, 0, 0:1] * 255 - self.classes) ** 2


def test_quick_robustness_per_class_clean_equals_a_direct_count():
    from types import SimpleNamespace

    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 3])  # class 2 has no image
    preds = torch.tensor([0, 0, 0, 1, 2, 1, 0, 0, 3])  # class 0: 3 of 5, class 1: 1 of 3, class 3: 1 of 1
    images = torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = preds.to(torch.uint8)
    split = SimpleNamespace(images=images, labels=labels)
    model = _PixelClassifier(4)
    assert torch.equal(predict(model, images.float() / 255), preds)
    res = evaluator.quick_robustness(model, split, 4, SimpleNamespace(norm="linf", eps=0.0, step_size=0.0),
                                     steps=1, n_samples=0, batch_size=4)  # eps 0: robust = clean
    direct = [100.0 * int(((preds == labels) & (labels == c)).sum()) / int((labels == c).sum())
              if (labels == c).any() else None for c in range(4)]
    assert res["per_class_clean"] == direct == [60.0, 100.0 / 3, None, 100.0]  # exactly 60.0, no float32 noise
    assert res["per_class_rob"] == res["per_class_clean"]
    assert res["clean"] == res["rob"] == 100.0 * 5 / 9 and res["n"] == 9
    assert res["clean_balanced"] == pytest.approx((60.0 + 100.0 / 3 + 100.0) / 3, abs=1e-12)
    json.dumps(res)  # plain Python numbers
