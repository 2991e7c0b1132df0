"""benchmarks/reproduce.py (issue 31): the preset trained by ltrobust's Trainer within a time budget, stopped
cleanly between epochs and resumed; evaluated; ours beside the preset's reference numbers. The dry run (digits-LT,
tiny sizes, CPU) runs here so the script cannot rot between GPU sessions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ltrobust.config import load_preset, resolve_config

ROOT = Path(__file__).resolve().parents[1]
PRESET = "at-bsl-cifar10lt-resnet18"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def reproduce(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import reproduce

    return reproduce


def test_dry_run_stops_on_the_budget_then_resumes_to_the_end(tmp_path, reproduce):
    out, run = tmp_path / "rep.json", tmp_path / "run"
    # budget 0: the first epoch of an invocation always runs, the second would end after the deadline
    first = reproduce.main(["--dry-run", "--out", str(out), "--run-dir", str(run), "--budget-s", "0"])
    saved = json.loads(out.read_text())
    assert saved["training"] == first["training"]
    tr = saved["training"]
    assert (tr["epochs_done"], tr["epochs_total"], tr["complete"], tr["stopped_by_budget"]) == (1, 2, False, True)
    assert tr["first_epoch_this_invocation"] == 0 and len(tr["epoch_train_seconds"]) == 1
    assert any(n.startswith("TRUNCATED: 1 of 2 epochs") and str(run) in n for n in saved["notes"])
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "train_summary.json").exists()
    # evaluated all the same: clean and PGD-20 on the whole balanced test set, AutoAttack on a balanced 10
    full, aa = saved["evaluation"]["full"], saved["evaluation"]["aa10"]
    assert full["n"] == 500 and {"clean", "pgd20"} <= set(full["results"])
    assert aa["n"] == 10 and "aa" in aa["results"] and aa["tag"] == "best-aa10"
    assert saved["errors"] == {} and saved["dry_run"] is True
    # the preset's reference list, read at run time, with ours beside every value; nothing judged
    refs = load_preset(PRESET)["reference"]
    assert [r["table"] for r in saved["reference"]] == [r["table"] for r in refs]
    for ours, ref in zip(saved["reference"], refs):
        assert set(ours["values"]) == set(ref["values"])
        for key, v in ours["values"].items():
            assert v["paper"] == ref["values"][key] and v["within"] is None
            assert v["ours_minus_paper"] == pytest.approx(v["ours"] - v["paper"], abs=1e-3)
        assert "epochs 1 (paper %s)" % ref["settings"]["epochs"] in ours["settings_that_differ"]
    assert saved["reference"][0]["values"]["clean"]["ours"] == full["results"]["clean"]["accuracy"]
    assert saved["reference"][0]["values"]["aa"]["ours"] == aa["results"]["aa"]["accuracy"]
    assert all(t["met"] is None for t in saved["targets"].values())
    assert saved["data"]["format"] == "sklearn-digits" and saved["data"]["official_cifar_pickles"] is False
    assert saved["versions"]["torch"] and saved["device"] and saved["wall_s"] > 0
    rows = (tmp_path / "rep-metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and "epoch 0/1" in (tmp_path / "rep.log").read_text()

    # the same command resumes from the last finished epoch and, without a budget, trains to the end
    second = reproduce.main(["--dry-run", "--out", str(out), "--run-dir", str(run)])
    tr = second["training"]
    assert (tr["epochs_done"], tr["complete"], tr["stopped_by_budget"]) == (2, True, False)
    assert tr["first_epoch_this_invocation"] == 1 and tr["epochs_this_invocation"] == 1
    assert not any(n.startswith("TRUNCATED") for n in second["notes"])
    assert "resuming" in (tmp_path / "rep.log").read_text()
    assert len((tmp_path / "rep-metrics.jsonl").read_text().splitlines()) == 2


def test_budget_trainer_stops_before_an_epoch_that_would_end_late(tmp_path, reproduce):
    cfg = resolve_config(["preset=at-bsl-digits", "model.width=4", "train.epochs=3", "train.max_steps_per_epoch=1",
                          "train.batch_size=16", "train.val_every=0", "train.device=cpu", "train.progress=false"])
    tr = reproduce.BudgetTrainer(cfg, run_dir=tmp_path / "r", deadline=float("inf"))
    tr.fit()
    tr.end()
    assert tr.first_epoch == 0 and tr.stopped_before is None and len(tr.cycles) == 3
    # a deadline already past: the first epoch of the invocation runs, the next one is refused
    late = reproduce.BudgetTrainer(cfg, run_dir=tmp_path / "r2", deadline=0.0)
    with pytest.raises(reproduce.BudgetSpent):
        late.fit()
    assert late.stopped_before == 1 and len(late.cycles) == 1


def test_reference_comparison_by_hand(reproduce):
    cfg = resolve_config(["preset=at-bsl-digits"])
    ref = {"source": "x.txt", "paper": "P", "table": "Table 1",
           "settings": {"epochs": 100, "data": "cifar-pickle", "checkpoint": "best-test", "train.batch_size": 128},
           "values": {"clean": 67.0, "pgd20": 35.2, "clean.tail_group": 63.2, "aa": 31.2}}
    cfg = resolve_config({"reference": [ref]}, base=cfg)
    ours = {"clean": {"accuracy": 68.0, "tail_group": 60.0}, "pgd20": {"accuracy": 33.6}}
    settings = reproduce.run_settings(cfg, 100, "image-folder")
    [judged] = reproduce.compare_reference(cfg, ours, settings, judged=True)
    v = judged["values"]
    assert v["clean"] == {"paper": 67.0, "ours": 68.0, "ours_minus_paper": 1.0, "within": True}
    assert v["pgd20"]["ours_minus_paper"] == pytest.approx(-1.6) and v["pgd20"]["within"] is False
    assert v["clean.tail_group"]["ours_minus_paper"] == pytest.approx(-3.2)
    assert v["aa"] == {"paper": 31.2, "ours": None, "ours_minus_paper": None, "within": None}  # not evaluated
    assert judged["all_within"] is None  # one value missing: no verdict
    assert judged["settings_that_differ"] == ["data image-folder (paper cifar-pickle)",
                                              "checkpoint best-val (paper best-test)",
                                              f"train.batch_size {cfg.train.batch_size} (paper 128)"]
    ours["aa"] = {"accuracy": 30.0}
    [full] = reproduce.compare_reference(cfg, ours, settings, judged=True)
    assert full["all_within"] is False and full["values"]["aa"]["within"] is True
    [unjudged] = reproduce.compare_reference(cfg, ours, settings, judged=False)
    assert all(x["within"] is None for x in unjudged["values"].values()) and unjudged["all_within"] is None


def test_data_source_says_the_jpeg_copy_is_not_the_official_pickles(tmp_path, reproduce):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "0001.jpg").write_bytes(b"")
    jpeg = reproduce.data_source({"source": {"format": "image-folder", "path": str(tmp_path)}}, "cifar10-lt")
    assert jpeg["official_cifar_pickles"] is False and jpeg["jpeg"] is True
    assert "JPEG re-encoding" in jpeg["caveat"] and "not the official" in jpeg["caveat"]
    pickles = reproduce.data_source({"source": {"format": "cifar-pickle", "path": str(tmp_path)}}, "cifar10-lt")
    assert pickles["official_cifar_pickles"] is True and "caveat" not in pickles


def test_a_run_folder_of_other_settings_is_refused_and_recorded(tmp_path, reproduce):
    out, run = tmp_path / "rep.json", tmp_path / "run"
    reproduce.main(["--dry-run", "--out", str(out), "--run-dir", str(run), "--budget-s", "0"])
    res = reproduce.main(["--dry-run", "--out", str(out), "--run-dir", str(run), "--budget-s", "0", "train.lr=0.05"])
    assert "different config" in res["errors"]["training"] and "train.lr" in res["errors"]["training"]
    assert res["training"]["epochs_done"] == 1  # the folder's finished epoch is untouched
    assert res["evaluation"] == {} and all(v["ours"] is None for v in res["reference"][0]["values"].values())
    assert any("not the preset as published" in n for n in res["notes"])
