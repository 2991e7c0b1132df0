#!/usr/bin/env python
"""One GPU session in one command (issue 31): install what the machine lacks, unpack the data, run
``device_check.py``, then with the time left ``reproduce.py`` on a preset; everything lands in ``--out``.

Made for the device tool's machines (one H100 / H200, python3 3.12 with torch, no internet; the
working tree travels, ignored folders only through ``carry``; at most 8 files come back from ``$OUT``):

1. **Install** into a fresh ``--site`` folder put first on ``PYTHONPATH``: each wheel of ``--wheels``
   (``.whl/``; pyautoattack, the one dependency of ltrobust that the image lacks) unless the same version is
   already installed, then ltrobust itself built from this working tree (``pip --no-build-isolation``, which
   also checks the packaging: presets included); if that build fails, ``src/`` goes on the path instead.
2. **Data**: the CIFAR-10 JPEG tarball (``--data-tar``, a copy of the shared 19.6 MB file) into
   ``.data/cifar10``, its sha256 recorded. It is a JPEG re-encoding, not the official pickles: both JSONs say so.
3. **Device check** (``device_check.py --skip aa``, no part started after ``--check-budget-s``, killed at
   ``--check-limit-s`` from the session's start): CUDA tests, ResNet-18 eager / compiled / papers' loop,
   WRN-34-10. Its AutoAttack part is left out: the reproduction's AutoAttack stage times the same attack on a
   better-trained model.
4. **Reproduction** (``reproduce.py``) with the rest of ``--budget-s``: training stops cleanly before an epoch
   that would not end in time, then the evaluation (its reserve inside that budget).
5. The issue's targets, read off both JSONs, in ``session-<device>-<date>.json`` and printed last.

Files in ``--out`` (7 at most, each named with the device and the UTC date):
``session-*.json`` / ``.log``, ``device-check-*.json`` / ``.log``, ``reproduce-<preset>-*.json`` / ``.log`` /
``-metrics.jsonl``. The exact device-tool call is in docs/speed.md.

``--dry-run``: the same steps on CPU with tiny sizes (device_check and reproduce in their dry-run modes; the
wheels are installed only when ``--wheels`` holds some), in about a minute of CPU; the test suite runs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: the issue's targets: key in the session JSON -> (where it is read, bound)
TARGETS = {
    "resnet18_epoch_s (best of eager, compiled)": ("device check", "<= 3"),
    "resnet18_speedup_over_papers_loop": ("device check", ">= 8"),
    "wrn34_10_epoch_s (projected)": ("device check", "<= 20"),
    "autoattack_10000_s (projected)": ("reproduction's AA stage (device check's when it ran)", "<= 300"),
    "at_bsl_within_1.5_points": ("reproduction", "|ours - paper| <= 1.5"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for the results (default: $OUT)")
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole session; the device call's "
                   "timeout_s should be about 60 s more (default 480)")
    p.add_argument("--check-budget-s", type=float, default=180.0, help="device_check.py starts no part after this "
                   "many seconds of its own (default 180)")
    p.add_argument("--check-limit-s", type=float, default=300.0, help="device_check.py is stopped at this many "
                   "seconds from the session's start (default 300)")
    p.add_argument("--check-skip", default="aa", help="device_check.py parts to skip (default aa: the reproduction "
                   "times AutoAttack)")
    p.add_argument("--skip-check", action="store_true", help="no device check: the whole budget to the reproduction")
    p.add_argument("--preset", default="at-bsl-cifar10lt-resnet18", help="the preset to reproduce")
    p.add_argument("--min-reproduce-s", type=float, default=120.0, help="reproduce only when this many seconds are "
                   "left (default 120)")
    p.add_argument("--run-dir", default=None, help="reproduce.py's run folder (default runs/reproduce/<preset>; the "
                   "same folder resumes)")
    p.add_argument("--wheels", default=".whl", help="folder of wheels to install when missing (default .whl)")
    p.add_argument("--data-tar", default=".data/cifar10-jpeg.tar.gz", help="CIFAR-10 JPEG tarball")
    p.add_argument("--data-dir", default=None, help="an unpacked CIFAR-10 folder instead of --data-tar")
    p.add_argument("--site", default=None, help="install folder put on PYTHONPATH (default: a fresh temporary one)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: device_check and reproduce dry runs")
    a = p.parse_args(argv)
    if not a.out:
        p.error("--out is required when $OUT is not set")
    return a


class Session:
    """The session's log (console and file), its JSON, and the clock."""

    def __init__(self, out: Path, stem: str, budget_s: float) -> None:
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.json_path = out / f"{stem}.json"
        self.log_file = (out / f"{stem}.log").open("a")
        self.data: dict[str, Any] = {"steps": {}, "errors": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def log(self, msg: str) -> None:
        line = f"[session {self.elapsed():6.1f} s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        self.data["wall_s"] = round(self.elapsed(), 1)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.json_path)


def device_slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``h100``; ``NVIDIA GeForce RTX 4090`` -> ``rtx-4090``; for file names."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in ("nvidia", "geforce", "tesla")]
    for w in words:
        if re.fullmatch(r"[a-z]+\d+[a-z]*", w):
            return w
    return "-".join(words[:2]) or "gpu"


def gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi (no CUDA context in this process), else from torch, else None."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def wheel_name(path: Path) -> tuple[str, str]:
    """``pyautoattack-0.2.0-py3-none-any.whl`` -> ``("pyautoattack", "0.2.0")``."""
    name, version = path.name.split("-")[:2]
    return name.replace("_", "-").lower(), version


def install(s: Session, wheels: Path, site: Path, dry: bool) -> dict[str, Any]:
    """Install the missing wheels and ltrobust (from this working tree) into ``site``; returns what was done and
    the ``PYTHONPATH`` entries for the children."""
    status: dict[str, Any] = {"site": str(site), "wheels": {}}
    todo = []
    for whl in sorted(wheels.glob("*.whl")) if wheels.is_dir() else []:
        dist, version = wheel_name(whl)
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have == version:
            status["wheels"][whl.name] = f"present ({have})"
        else:
            todo.append(whl)
            status["wheels"][whl.name] = f"to install (found {have or 'none'})"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site)]
    if todo:
        done = subprocess.run(pip + [str(w) for w in todo], capture_output=True, text=True)
        s.log(f"pip install {' '.join(w.name for w in todo)}: rc {done.returncode} {done.stderr[-2000:]}")
        for w in todo:
            status["wheels"][w.name] = "installed" if done.returncode == 0 else f"install failed (rc {done.returncode})"
    if not wheels.is_dir():
        status["wheels"] = f"no folder {wheels}"
    paths = [str(site)]
    if dry:
        status["ltrobust"] = "working tree src/ (dry run: not installed)"
        paths.append(str(ROOT / "src"))
    else:
        done = subprocess.run(pip + ["--no-build-isolation", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
        if done.returncode == 0:
            status["ltrobust"] = "installed from the working tree"
        else:
            s.log(f"building ltrobust from the working tree failed (rc {done.returncode}): {done.stderr[-2000:]}")
            status["ltrobust"] = f"build failed (rc {done.returncode}): src/ on PYTHONPATH instead"
            paths.append(str(ROOT / "src"))
    status["pythonpath"] = paths
    return status


def unpack(s: Session, tar: Path, target: Path) -> dict[str, Any]:
    """Extract the tarball once (safely, through ltrobust.io.extract_tar) into ``target``."""
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    marker = target / f".extracted-{digest[:12]}"
    if not marker.is_file():
        from ltrobust.io import extract_tar

        extract_tar(tar, target)
        marker.touch()
    s.log(f"data: {tar} (sha256 {digest}) in {target}")
    return {"tar": str(tar), "sha256": digest, "bytes": tar.stat().st_size, "data_dir": str(target),
            "what": "CIFAR-10 as JPEG image folders: a re-encoding, not the official python pickles"}


def run_child(s: Session, name: str, cmd: list[str], env: dict[str, str], limit_s: float) -> dict[str, Any]:
    """Run one step in its own process group; stop the whole group at ``limit_s`` seconds."""
    s.log(f"{name}: {' '.join(cmd)} (stopped after {limit_s:.0f} s)")
    t = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    try:
        rc = proc.wait(timeout=max(limit_s, 1.0))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc, timed_out = proc.returncode, True
    step = {"returncode": rc, "timed_out": timed_out, "seconds": round(time.monotonic() - t, 1), "command": cmd}
    s.log(f"{name}: rc {rc}{' (stopped at its limit)' if timed_out else ''} after {step['seconds']} s")
    return step


def read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def targets(check: dict[str, Any], repro: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets from the two JSONs: value, bound, met (None: not measured or not judged), source."""
    ct = check.get("targets") or {}
    rt = repro.get("targets") or {}
    out = {}
    for key in ("resnet18_epoch_s (best of eager, compiled)", "resnet18_speedup_over_papers_loop",
                "wrn34_10_epoch_s (projected)"):
        t = ct.get(key) or {}
        out[key] = {"value": t.get("value"), "bound": TARGETS[key][1], "met": t.get("met"), "from": "device check"}
    aa_check = ct.get("autoattack_10000_s (projected)") or {}
    aa_rep = rt.get("autoattack_10000_s (projected from the AA stage)") or {}
    aa, src = (aa_rep, "reproduction's AA stage") if aa_rep.get("value") is not None else (aa_check, "device check")
    out["autoattack_10000_s (projected)"] = {"value": aa.get("value"), "bound": "<= 300", "met": aa.get("met"),
                                            "from": src}
    within = next((v for k, v in rt.items() if k.startswith("numbers within")), {})
    out["at_bsl_within_1.5_points"] = {"value": within.get("value"), "bound": TARGETS["at_bsl_within_1.5_points"][1],
                                       "met": within.get("met"), "from": "reproduction",
                                       "not_judged": within.get("not_judged")}
    return out


def fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dry = a.dry_run
    name = "cpu (dry run)" if dry else (gpu_name() or "no GPU")
    slug = "cpu" if dry else device_slug(name)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    s = Session(out, f"session-{slug}-{date}", a.budget_s)
    s.data.update({"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": name,
                   "dry_run": dry, "preset": a.preset, "budget_s": a.budget_s,
                   "command": " ".join(["python3", "benchmarks/gpu_session.py"] + (argv if argv is not None
                                                                                  else sys.argv[1:]))})
    s.log(f"device {name}; budget {a.budget_s:.0f} s; results in {out}")
    if not dry and name == "no GPU":
        s.data["errors"]["device"] = "no CUDA GPU visible: run with --dry-run on CPU"
        s.log(s.data["errors"]["device"])
        s.save()
        s.log_file.close()
        return s.data
    site = Path(a.site) if a.site else Path(tempfile.mkdtemp(prefix="ltrobust-site-"))
    try:
        run_steps(a, s, out, slug, date, site)
    except Exception as exc:  # recorded; the summary below still reads whatever the steps wrote
        import traceback

        s.log(traceback.format_exc())
        s.data["errors"]["session"] = f"{type(exc).__name__}: {exc}"
    finally:
        summarise(a, s, out, name, slug, date)
        s.log_file.close()
        if not a.site:
            shutil.rmtree(site, ignore_errors=True)
    return s.data


def run_steps(a: argparse.Namespace, s: Session, out: Path, slug: str, date: str, site: Path) -> None:
    dry = a.dry_run
    # ------------------------------------------------------------------------------------ install
    t = time.monotonic()
    inst = install(s, ROOT / a.wheels if not Path(a.wheels).is_absolute() else Path(a.wheels), site, dry)
    s.data["steps"]["install"] = inst | {"seconds": round(time.monotonic() - t, 1)}
    s.log(f"install: {json.dumps(inst)}")
    sys.path[:0] = inst["pythonpath"]
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(inst["pythonpath"] + [p for p in os.environ.get("PYTHONPATH", "").split(
                   os.pathsep) if p]))
    s.save()
    # --------------------------------------------------------------------------------------- data
    data_dir = a.data_dir
    if not dry and data_dir is None:
        tar = ROOT / a.data_tar if not Path(a.data_tar).is_absolute() else Path(a.data_tar)
        if tar.is_file():
            t = time.monotonic()
            try:
                s.data["steps"]["data"] = unpack(s, tar, ROOT / ".data" / "cifar10") | {
                    "seconds": round(time.monotonic() - t, 1)}
                data_dir = s.data["steps"]["data"]["data_dir"]
            except Exception as exc:  # a bad tarball is recorded; the steps say what they then lack
                s.data["errors"]["data"] = f"{type(exc).__name__}: {exc}"
                s.log(f"data: {s.data['errors']['data']}")
        else:
            s.data["errors"]["data"] = f"no tarball {tar} (carry it: docs/speed.md)"
            s.log(s.data["errors"]["data"])
    s.save()
    # ------------------------------------------------------------------------------- device check
    check_stem = f"device-check-{slug}-{date}"
    if not a.skip_check:
        cmd = [sys.executable, str(HERE / "device_check.py"), "--out", str(out), "--stem", check_stem,
               "--budget-s", str(a.check_budget_s)]
        cmd += ["--skip", a.check_skip] if a.check_skip else []
        cmd += ["--dry-run"] if dry else (["--data-dir", data_dir] if data_dir else [])
        s.data["steps"]["device_check"] = run_child(s, "device check", cmd, env, a.check_limit_s - s.elapsed())
        s.save()
    # -------------------------------------------------------------------------------- reproduction
    rep_json = out / f"reproduce-{a.preset}-{slug}-{date}.json"
    left = a.budget_s - s.elapsed() - 10.0  # 10 s for the summary
    if left < (0.0 if dry else a.min_reproduce_s):
        s.data["steps"]["reproduce"] = {"skipped": f"{left:.0f} s left, under --min-reproduce-s {a.min_reproduce_s:g}"}
        s.log(f"reproduce: skipped ({s.data['steps']['reproduce']['skipped']})")
    else:
        cmd = [sys.executable, str(HERE / "reproduce.py"), "--preset", a.preset, "--out", str(rep_json),
               "--budget-s", f"{max(left, 0.0):.0f}"]
        cmd += ["--run-dir", a.run_dir] if a.run_dir else []
        cmd += ["--dry-run"] if dry else (["--data-dir", data_dir] if data_dir else [])
        # the evaluation may overrun its reserve a little: stopped 45 s after the session's budget
        s.data["steps"]["reproduce"] = run_child(s, "reproduce", cmd, env, a.budget_s + 45.0 - s.elapsed())


def summarise(a: argparse.Namespace, s: Session, out: Path, name: str, slug: str, date: str) -> None:
    """The issue's targets read off both JSONs, into the session JSON and printed last."""
    dry = a.dry_run
    check = read(out / f"device-check-{slug}-{date}.json")
    repro = read(out / f"reproduce-{a.preset}-{slug}-{date}.json")
    s.data["targets"] = tg = targets(check, repro)
    tr = repro.get("training") or {}
    s.data["reproduction"] = {"epochs_done": tr.get("epochs_done"), "epochs_total": tr.get("epochs_total"),
                              "complete": tr.get("complete"), "run_dir": repro.get("run_dir"),
                              "notes": repro.get("notes")}
    s.data["files"] = sorted(p.name for p in out.iterdir() if p.is_file())
    s.data["device_check_errors"] = check.get("errors")
    s.data["reproduce_errors"] = repro.get("errors")
    lines = ["", f"targets ({name}; {'DRY RUN, nothing judged' if dry else 'issue 31'}; met None: not measured "
             "or not judged):"]
    for k, v in tg.items():
        val = v["value"] if not isinstance(v["value"], dict) else ", ".join(f"{p}: {w}" for p, w in v["value"].items())
        lines.append(f"  {k}: {fmt(val)} (bound {v['bound']}) met {fmt(v['met'])} [{v['from']}"
                     + (f"; not judged: {v['not_judged']}]" if v.get("not_judged") else "]"))
    if tr:
        lines.append(f"reproduction: {tr.get('epochs_done')} of {tr.get('epochs_total')} epochs"
                     f"{'' if tr.get('complete') else ' (TRUNCATED: not the preset numbers)'}; "
                     f"median epoch {fmt(tr.get('epoch_train_seconds_median'))} s, projected full training "
                     f"{fmt(tr.get('projected_full_training_s'))} s")
    lines.append(f"files in {out}: {', '.join(s.data['files'])}")
    for line in lines:
        s.log(line)
    s.data["files"] = sorted(p.name for p in out.iterdir() if p.is_file())
    s.save()


if __name__ == "__main__":
    res = main()
    steps = res.get("steps", {})
    bad = res.get("errors") or any(isinstance(v, dict) and (v.get("returncode") or v.get("timed_out"))
                                   for v in steps.values())
    sys.exit(1 if bad else 0)
