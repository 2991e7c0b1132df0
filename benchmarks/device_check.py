#!/usr/bin/env python
"""One-shot GPU check (issue 19): CUDA correctness and the GPU speed targets, in one run of <= 6 minutes on
one H100 / H200, into one JSON and one log in ``--out``.

1. Correctness: ``pytest -m cuda tests/test_cuda.py`` (bf16 autocast step finite and close to fp32; the
   ``train.compile`` path trains; the device loader and the attack loop make no host synchronisation;
   final evaluation in true fp32; a 1-process nccl group trains; PGD-20 and AutoAttack on CUDA agree with
   CPU on a linear model whose exact answer is known).
2. Speed, through ``speed.py``'s harness (the same runners, side by side):
   - ResNet-18, CIFAR-10-LT IR 50, PGD-10 AT: one full epoch of ltrobust eager, of ltrobust compiled
     (``train.compile``) and of the papers-style loop (``reference_loop.py``);
   - WRN-34-10 PGD-10 AT over ``--wrn-batches`` steps, projected to an epoch;
   - AutoAttack standard on 1,000 test images of a briefly trained ResNet-18, projected to 10,000.
   Targets, evaluated in the JSON: ResNet-18 epoch <= 3 s and >= 8x the papers-style loop; WRN-34-10
   <= 20 s per epoch; AutoAttack on 10,000 images <= 5 minutes.

What it needs on the GPU machine (about 61 MiB in all, within the device tool's 64 MiB: the repository
~1.5 MB, the tarball 19.6 MB, the wheels 43 MB, 42 of them pyautoattack's, which ships a 45 MB example
model): this repository (run
with ``PYTHONPATH=src``), torch, torchvision, numpy, pillow and pyyaml (a stock PyTorch image has them),
the CIFAR-10 JPEG tarball (``--data-tar .data/cifar10-jpeg.tar.gz``, a copy of
``../shared/data/cifar10-jpeg.tar.gz``, 19.6 MB) and the pure-Python wheels of ``NEEDED``
(``--wheels wheels/``, about 1 MiB, filled by ``WHEELS_COMMAND``; each missing one is installed with
``--no-index --no-deps``). docs/speed.md gives the exact command.

``--dry-run`` runs every part with tiny sizes on CPU and synthetic data in seconds (the CUDA tests then
skip): the test suite runs it, so the script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

#: the issue's GPU targets
TARGETS = {"resnet18_epoch_s": 3.0, "resnet18_speedup": 8.0, "wrn34_10_epoch_s": 20.0, "autoattack_10k_s": 300.0}


class Tee:
    """Writes to the console and to the log file."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for device_check.json and device_check.log")
    p.add_argument("--stem", default="device_check", help="name of the JSON and the log, without suffix (default "
                   "device_check; gpu_session.py names them with the device and the date)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: speed.py's search, or --data-tar)")
    p.add_argument("--data-tar", default=None, help="CIFAR-10 JPEG tarball to extract into a temporary folder")
    p.add_argument("--wheels", default=None, help="folder of the wheels in NEEDED (each installed if missing)")
    p.add_argument("--wrn-batches", type=int, default=20, help="timed WRN-34-10 steps (projected to an epoch)")
    p.add_argument("--aa-n", type=int, default=1000, help="AutoAttack test images (projected to 10,000)")
    p.add_argument("--aa-train-epochs", type=int, default=5, help="epochs of the briefly trained ResNet-18")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="a part not started within this many seconds is skipped (said in the JSON)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: pytest,resnet18,wrn,compiled,aa")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU with synthetic data (seconds)")
    return p.parse_args(argv)


#: import name -> distribution that the GPU machine may lack (a stock PyTorch image has torch, torchvision,
#: numpy, pillow, pyyaml); pure-Python wheels, so one download serves any Python version
NEEDED = {"pyautoattack": "pyautoattack", "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig",
          "tqdm": "tqdm", "packaging": "packaging"}
WHEELS_COMMAND = ("pip download --no-deps -d wheels/ pyautoattack==0.2.0 pytest pluggy iniconfig tqdm packaging")


def ensure_packages(wheels: str | None) -> dict[str, str]:
    """Install each missing package of NEEDED from the ``--wheels`` folder (no index: the machine is offline)."""
    import importlib.util

    status = {}
    for module, dist in NEEDED.items():
        if importlib.util.find_spec(module) is not None:
            status[dist] = "present"
        elif not wheels:
            status[dist] = f"missing (pass --wheels, filled by: {WHEELS_COMMAND})"
        else:
            cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", wheels, dist]
            done = subprocess.run(cmd, capture_output=True, text=True)
            print(done.stdout[-1000:] + done.stderr[-1000:])
            status[dist] = "installed from " + wheels if done.returncode == 0 else f"install failed (rc {done.returncode})"
    return status


def run_pytest(out: Path) -> dict[str, Any]:
    """``pytest -m cuda tests/test_cuda.py`` in a subprocess; outcome per test from its JUnit XML."""
    xml = out / "pytest-cuda.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
           f"--junitxml={xml}", str(ROOT / "tests" / "test_cuda.py")]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    print(done.stdout[-6000:] + done.stderr[-3000:])
    tests: dict[str, str] = {}
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            kids = {c.tag for c in case}
            tests[case.get("name", "?")] = ("failed" if kids & {"failure", "error"} else
                                             "skipped" if "skipped" in kids else "passed")
        xml.unlink()
    return {"returncode": done.returncode, "seconds": time.perf_counter() - t, "tests": tests,
            "passed": done.returncode == 0 and bool(tests) and "failed" not in tests.values()}


def speed_args(dry: bool, data_dir: str | None, out: Path, name: str, extra: list[str]) -> list[str]:
    base = ["--out", str(out / f"{name}.json"), "--tmp", str(out / f"{name}-runs"), "--no-flops", "--no-checks",
            "--skip-eval", "--methods", "pgd_at", "--steps", "10"]
    if dry:
        base += ["--device", "cpu", "--threads", "1", "--synthetic", "--batch-size", "8", "--steps", "1",
                 "--rounds", "1", "--peak-n", "64"]
    else:
        base += ["--device", "cuda"] + (["--data-dir", data_dir] if data_dir else [])
    return base + extra


def part_resnet18(a: argparse.Namespace, tmp: Path, data_dir: str | None, compiled: bool) -> dict[str, Any]:
    import speed

    dry = a.dry_run
    size = ["--model", "resnet18", "--width", "4" if dry else "-1"]
    if compiled:
        extra = size + ["--compile", "--no-reference"] + (["--batches", "1", "--warmup", "1"] if dry else
                                                           ["--batches", "0", "--warmup", "30"])
    else:
        extra = size + (["--batches", "1", "--warmup", "1"] if dry else ["--batches", "0", "--warmup", "10"])
    # the dry run takes the compiled configuration (train.compile=true, drop_last) with dynamo switched off:
    # inductor's C++ build takes minutes on a CPU
    import torch._dynamo

    with torch._dynamo.config.patch(disable=dry and compiled):
        res = speed.main(speed_args(dry, data_dir, tmp, "resnet18" + ("-compiled" if compiled else ""), extra))
    row = res["train"]["pgd_at"]
    n = res["data"]["train_images"]
    out = {"data": res["data"]["source"], "train_images": n,
           "ltrobust_images_per_s": row["ltrobust"]["images_per_s"],
           "ltrobust_epoch_s": n / row["ltrobust"]["images_per_s"],
           "measured": "one full epoch" if not dry else "1 batch (dry run), projected"}
    if "reference" in row:
        out |= {"reference_images_per_s": row["reference"]["images_per_s"],
                "reference_epoch_s": n / row["reference"]["images_per_s"], "speedup": row["speedup"]}
    return out


def part_wrn(a: argparse.Namespace, tmp: Path, data_dir: str | None) -> dict[str, Any]:
    import speed

    dry = a.dry_run
    extra = ["--model", "wrn34_10", "--width", "1" if dry else "-1", "--no-reference", "--rounds", "1",
             "--batches", "1" if dry else str(a.wrn_batches), "--warmup", "1" if dry else "5"]
    res = speed.main(speed_args(dry, data_dir, tmp, "wrn34_10", extra))
    row = res["train"]["pgd_at"]["ltrobust"]
    n = res["data"]["train_images"]
    return {"images_per_s": row["images_per_s"], "steps_timed": row["batches_per_round"],
            "projected_epoch_s": n / row["images_per_s"], "train_images": n}


def part_aa(a: argparse.Namespace, tmp: Path, data_dir: str | None) -> dict[str, Any]:
    """Train a ResNet-18 briefly (PGD-10 AT, ltrobust's Trainer), then AutoAttack standard on --aa-n
    balanced test images through ltrobust's adapter."""
    import torch

    import harness as H
    from ltrobust.config import resolve_config
    from ltrobust.evaluation.evaluator import balanced_subset, strict_fp32
    from ltrobust.training.trainer import Trainer

    dry = a.dry_run
    device = torch.device("cpu" if dry else "cuda")
    ns = argparse.Namespace(synthetic=dry, data_dir=data_dir, dataset="cifar10-lt", imbalance=50.0, seed=0)
    data, info = H.load_data(ns, device)
    epochs = 1 if dry else a.aa_train_epochs
    cfg = resolve_config(["method=pgd_at", "model=resnet18", "dataset=cifar10-lt", "imbalance=50",
                          f"train.device={device}", "train.progress=false", "train.val_every=0",
                          f"train.epochs={epochs}", "train.batch_size=" + ("8" if dry else "128"),
                          "attack.steps=" + ("1" if dry else "10")]
                         + (["model.width=4", "train.max_steps_per_epoch=2"] if dry else []))
    tr = Trainer(cfg, run_dir=tmp / "aa-train", data=data, resume=False)
    tr.build()
    tr.method.setup(tr)
    t = time.perf_counter()
    for e in range(epochs):
        tr.train_epoch(e)
    train_s = time.perf_counter() - t
    n = min(2 if dry else a.aa_n, len(data.test))
    idx = balanced_subset(data.test.labels, n, 0)
    x = data.test.images[idx.to(data.test.images.device)].to(device).float() / 255.0
    y = data.test.labels[idx.to(data.test.labels.device)].to(device)
    model = tr.eval_model().eval()
    with strict_fp32():  # as the final evaluation runs it
        res = H.time_ltrobust_aa(model, x, y, bs=min(n, 1000), square_queries=10 if dry else None,
                                 n_target_classes=1 if dry else None)
    return {"data": info["source"], "train_epochs": epochs, "train_seconds": train_s, "n": n,
            "clean": res["clean"], "robust": res["robust"], "seconds": res["seconds"],
            "projected_10000_s": res["seconds"] * 10000 / n, "precision": "fp32, TF32 off"}


def evaluate_targets(parts: dict[str, Any], dry: bool) -> dict[str, Any]:
    """Each target: the measured figure, the bound, and met (None when the part did not run or in a dry run)."""
    r18, comp = parts.get("resnet18", {}), parts.get("compiled", {})
    epochs = [p["ltrobust_epoch_s"] for p in (r18, comp) if "ltrobust_epoch_s" in p]
    best_epoch = min(epochs) if epochs else None
    ref_epoch = r18.get("reference_epoch_s")
    speedup = ref_epoch / best_epoch if ref_epoch and best_epoch else None
    wrn = parts.get("wrn", {}).get("projected_epoch_s")
    aa = parts.get("aa", {}).get("projected_10000_s")

    def t(value: float | None, bound: float, le: bool = True) -> dict[str, Any]:
        met = None if value is None or dry else (value <= bound if le else value >= bound)
        return {"value": value, "bound": ("<= " if le else ">= ") + str(bound), "met": met}

    return {"resnet18_epoch_s (best of eager, compiled)": t(best_epoch, TARGETS["resnet18_epoch_s"]),
            "resnet18_speedup_over_papers_loop": t(speedup, TARGETS["resnet18_speedup"], le=False),
            "wrn34_10_epoch_s (projected)": t(wrn, TARGETS["wrn34_10_epoch_s"]),
            "autoattack_10000_s (projected)": t(aa, TARGETS["autoattack_10k_s"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / f"{a.stem}.log").open("a")
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    result: dict[str, Any] = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "dry_run": a.dry_run,
                              "command": " ".join([Path(sys.executable).name, "benchmarks/device_check.py"] +
                                                  (argv if argv is not None else sys.argv[1:])),
                              "targets": {}, "parts": {}, "skipped": {}, "errors": {}}
    t0 = time.perf_counter()

    def save() -> None:
        result["seconds"] = time.perf_counter() - t0
        (out / f"{a.stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")

    with contextlib.redirect_stdout(Tee(sys.stdout, log_file)), contextlib.redirect_stderr(Tee(sys.stderr, log_file)), \
            tempfile.TemporaryDirectory(prefix="device-check-") as tmp_s:
        tmp = Path(tmp_s)
        import torch

        import harness as H

        result["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
        result["versions"] = H.versions()
        if not a.dry_run and not torch.cuda.is_available():
            print("no CUDA GPU visible: run with --dry-run on CPU")
            result["errors"]["device"] = "no CUDA GPU visible"
            save()
            return result
        result["packages"] = ensure_packages(a.wheels)
        data_dir = a.data_dir
        if a.data_tar and not a.dry_run:
            from ltrobust.io import extract_tar

            extract_tar(a.data_tar, tmp / "cifar10")
            data_dir = str(tmp / "cifar10")
        result["data_dir"] = data_dir
        parts: list[tuple[str, Callable[[], Any]]] = [
            ("pytest", lambda: run_pytest(out)),
            ("resnet18", lambda: part_resnet18(a, tmp, data_dir, compiled=False)),
            ("wrn", lambda: part_wrn(a, tmp, data_dir)),  # short and predictable: before the compile
            ("compiled", lambda: part_resnet18(a, tmp, data_dir, compiled=True)),
            ("aa", lambda: part_aa(a, tmp, data_dir)),
        ]
        for name, fn in parts:
            elapsed = time.perf_counter() - t0
            if name in skip or elapsed > a.budget_s:
                result["skipped"][name] = "--skip" if name in skip else f"budget: {elapsed:.0f} s > {a.budget_s:g} s"
                continue
            print(f"== {name} (at {elapsed:.0f} s)", flush=True)
            t = time.perf_counter()
            try:
                result["parts"][name] = fn() | {"part_seconds": time.perf_counter() - t}
            except Exception as exc:  # one failing part is recorded; the others still run
                import traceback

                traceback.print_exc()
                result["errors"][name] = f"{type(exc).__name__}: {exc}"
            result["targets"] = evaluate_targets(result["parts"], a.dry_run)
            save()
        print(json.dumps({"targets": result["targets"], "errors": result["errors"], "skipped": result["skipped"],
                          "pytest": result["parts"].get("pytest", {}).get("tests")}, indent=1, default=str))
        print(f"wrote {out / (a.stem + '.json')} and {out / (a.stem + '.log')} in {time.perf_counter() - t0:.0f} s")
    log_file.close()
    save()
    return result


if __name__ == "__main__":
    main()
