"""benchmarks/device_check.py --dry-run: every part of the one-shot GPU check runs on CPU with tiny sizes,
so the script cannot rot between GPU sessions (issue 19)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_device_check_dry_run_writes_every_part(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import device_check

    out = tmp_path / "check"
    result = device_check.main(["--dry-run", "--out", str(out)])
    saved = json.loads((out / "device_check.json").read_text())
    assert saved["errors"] == {} and saved["skipped"] == {}, (saved["errors"], saved["skipped"])
    assert set(saved["parts"]) == {"pytest", "resnet18", "compiled", "wrn", "aa"}
    # the CUDA tests were collected by the marker and skipped cleanly on CPU (none failed, none missing)
    tests = saved["parts"]["pytest"]["tests"]
    assert len(tests) == 7 and set(tests.values()) == {"skipped"} and saved["parts"]["pytest"]["returncode"] == 0
    r18 = saved["parts"]["resnet18"]
    assert r18["ltrobust_images_per_s"] > 0 and r18["reference_images_per_s"] > 0
    assert r18["speedup"] == pytest.approx(r18["ltrobust_images_per_s"] / r18["reference_images_per_s"])
    assert "reference_images_per_s" not in saved["parts"]["compiled"]  # the compiled side alone
    assert saved["parts"]["wrn"]["projected_epoch_s"] == pytest.approx(
        saved["parts"]["wrn"]["train_images"] / saved["parts"]["wrn"]["images_per_s"])
    aa = saved["parts"]["aa"]
    assert aa["projected_10000_s"] == pytest.approx(aa["seconds"] * 10000 / aa["n"])
    # every target is reported with its bound; a dry run judges none of them
    assert len(saved["targets"]) == 4
    assert all(t["value"] is not None and t["met"] is None for t in saved["targets"].values())
    assert result["targets"] == saved["targets"]
    log = (out / "device_check.log").read_text()
    assert "== aa" in log and "skipped" in log  # the log holds the parts' output and pytest's


def test_targets_are_judged_against_the_issue_bounds():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    parts = {"resnet18": {"ltrobust_epoch_s": 4.0, "reference_epoch_s": 30.0},
             "compiled": {"ltrobust_epoch_s": 2.5}, "wrn": {"projected_epoch_s": 25.0},
             "aa": {"projected_10000_s": 299.0}}
    t = device_check.evaluate_targets(parts, dry=False)
    epoch, speedup = t["resnet18_epoch_s (best of eager, compiled)"], t["resnet18_speedup_over_papers_loop"]
    assert epoch["value"] == 2.5 and epoch["met"] is True  # the better of eager and compiled
    assert speedup["value"] == 12.0 and speedup["met"] is True  # 30 s / 2.5 s
    assert t["wrn34_10_epoch_s (projected)"]["met"] is False
    assert t["autoattack_10000_s (projected)"]["met"] is True
    missing = device_check.evaluate_targets({}, dry=False)
    assert all(v["value"] is None and v["met"] is None for v in missing.values())
