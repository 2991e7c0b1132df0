"""benchmarks/gpu_session.py (issue 31): the one command of a GPU session (install the carried wheels, unpack
the data, device_check.py, then reproduce.py with the time left, the targets read off both JSONs), run here as
a dry run on CPU so that it cannot rot between GPU sessions."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def session(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the session puts its install folder first
    import gpu_session

    return gpu_session


def probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel that is not installed here, to exercise the offline install."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ltr_probe-0.1-py3-none-any.whl"
    info = "ltr_probe-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ltr_probe/__init__.py", "VALUE = 31\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: ltr-probe\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"ltr_probe/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_session_dry_run_writes_named_files_and_reads_the_targets(tmp_path, session):
    out, site = tmp_path / "OUT", tmp_path / "site"
    probe_wheel(tmp_path / "whl")
    res = session.main(["--dry-run", "--out", str(out), "--run-dir", str(tmp_path / "run"), "--site", str(site),
                        "--wheels", str(tmp_path / "whl"), "--check-skip", "pytest,resnet18,compiled,wrn,aa"])
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"session-cpu-{date}.json", f"session-cpu-{date}.log", f"device-check-cpu-{date}.json",
                            f"device-check-cpu-{date}.log", f"reproduce-at-bsl-cifar10lt-resnet18-cpu-{date}.json",
                            f"reproduce-at-bsl-cifar10lt-resnet18-cpu-{date}.log",
                            f"reproduce-at-bsl-cifar10lt-resnet18-cpu-{date}-metrics.jsonl"])
    assert len(files) <= 8  # what the device tool brings back from $OUT
    saved = json.loads((out / f"session-cpu-{date}.json").read_text())
    assert saved["errors"] == {} and saved["files"] == files
    # the wheel that was missing went into the install folder, which the children had on PYTHONPATH
    assert saved["steps"]["install"]["wheels"] == {"ltr_probe-0.1-py3-none-any.whl": "installed"}
    assert (site / "ltr_probe" / "__init__.py").is_file() and saved["steps"]["install"]["pythonpath"][0] == str(site)
    for step in ("device_check", "reproduce"):
        assert saved["steps"][step]["returncode"] == 0 and saved["steps"][step]["timed_out"] is False
    # reproduce got the time left of the 480 s budget, so it trained its 2 dry-run epochs and evaluated
    repro = json.loads((out / f"reproduce-at-bsl-cifar10lt-resnet18-cpu-{date}.json").read_text())
    budget = float(saved["steps"]["reproduce"]["command"][saved["steps"]["reproduce"]["command"].index("--budget-s") + 1])
    assert 0 < budget <= 470 and repro["budget"]["budget_s"] == budget
    assert repro["training"]["complete"] and saved["reproduction"]["epochs_done"] == 2
    check = json.loads((out / f"device-check-cpu-{date}.json").read_text())
    assert set(check["skipped"]) == {"pytest", "resnet18", "compiled", "wrn", "aa"}
    # the five targets of the issue, each with its bound; a dry run judges none
    assert set(res["targets"]) == set(session.TARGETS) and all(t["met"] is None for t in res["targets"].values())
    assert res["targets"]["autoattack_10000_s (projected)"]["from"] == "reproduction's AA stage"
    assert res["targets"]["autoattack_10000_s (projected)"]["value"] == pytest.approx(
        repro["targets"]["autoattack_10000_s (projected from the AA stage)"]["value"])
    log = (out / f"session-cpu-{date}.log").read_text()
    assert "targets (cpu (dry run); DRY RUN" in log and "at_bsl_within_1.5_points" in log


def test_targets_are_read_off_both_jsons(session):
    check = {"targets": {"resnet18_epoch_s (best of eager, compiled)": {"value": 2.5, "met": True},
                         "resnet18_speedup_over_papers_loop": {"value": 12.0, "met": True},
                         "wrn34_10_epoch_s (projected)": {"value": 25.0, "met": False},
                         "autoattack_10000_s (projected)": {"value": 280.0, "met": True}}}
    repro = {"targets": {"numbers within 1.5 points of the preset's reference": {
                 "value": {"REAT Table 1": False}, "met": None, "not_judged": "truncated run (20 of 100 epochs)"},
             "autoattack_10000_s (projected from the AA stage)": {"value": 350.0, "met": False}}}
    t = session.targets(check, repro)
    assert t["resnet18_epoch_s (best of eager, compiled)"]["met"] is True
    assert t["wrn34_10_epoch_s (projected)"] == {"value": 25.0, "bound": "<= 20", "met": False, "from": "device check"}
    # the reproduction's AutoAttack (a better trained model) wins over the device check's when it ran
    assert t["autoattack_10000_s (projected)"]["value"] == 350.0 and t["autoattack_10000_s (projected)"]["met"] is False
    repro["targets"]["autoattack_10000_s (projected from the AA stage)"]["value"] = None
    assert session.targets(check, repro)["autoattack_10000_s (projected)"]["from"] == "device check"
    assert t["at_bsl_within_1.5_points"]["met"] is None and "truncated" in t["at_bsl_within_1.5_points"]["not_judged"]
    assert all(v["value"] is None for v in session.targets({}, {}).values())


def test_device_slug_names_files(session):
    assert session.device_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert session.device_slug("NVIDIA H200") == "h200"
    assert session.device_slug("NVIDIA A100-SXM4-80GB") == "a100"
    assert session.device_slug("NVIDIA GeForce RTX 4090") == "rtx-4090"


def test_a_step_past_its_limit_is_stopped_with_its_children(tmp_path, session):
    s = session.Session(tmp_path, "s", 10.0)
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    step = session.run_child(s, "sleeper", [sys.executable, "-c", code], dict(os.environ), 3.0)
    s.log_file.close()
    assert step["timed_out"] is True and step["returncode"] != 0 and step["seconds"] < 20
    assert "stopped at its limit" in (tmp_path / "s.log").read_text()
    grandchild = int(pid_file.read_text())  # its whole process group went, the grandchild too
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        state = Path(f"/proc/{grandchild}/stat").read_text().split()[2] if Path(f"/proc/{grandchild}").exists() else "gone"
        assert state in ("Z", "gone"), f"grandchild {grandchild} still running ({state})"
