"""Reliability (issue 6): bad input, crashes and untrusted files never cost a result.

Everything user-facing goes through the real command line, ``python -m ltrobust.cli`` in a subprocess:

* a table of bad inputs: each exits with status 2 and one ``error:`` line that names the fix, no traceback;
* untrusted files: a pickle that would run code, YAML with a ``!!python`` tag (preset, a run's
  ``config.yaml``, the config embedded in a checkpoint); nothing runs;
* a non-finite loss stops the run naming epoch and step and keeps the last good checkpoint;
* fault injection: ``train`` and ``eval`` killed with SIGKILL at seeded random points, then re-run with the
  same command, end bit-identical to an uninterrupted run (CPU, deterministic, fp32);
* a full disk (ENOSPC) or a read-only folder (EROFS), simulated by a ``sitecustomize`` put on
  ``PYTHONPATH`` that makes the file calls under one folder fail with that errno (we run as root, so
  ``chmod`` would not stop a write), gives a clear error and leaves the previous checkpoint intact.

Each command starts a fresh interpreter (about 4 s of imports), so the one-shot commands run two at a
time from one module fixture, and the uninterrupted reference of each fault-injection test runs beside
its killed twin. See docs/reliability.md for what is and is not guaranteed.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from ltrobust import io
from ltrobust.config import resolve_config
from ltrobust.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ltrobust"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# A tiny deterministic run: digits-lt, smallcnn of width 4, 3 steps per epoch, a one-step attack.
TINY = ["dataset=digits-lt", "model=smallcnn", "model.width=4", "train.batch_size=32", "train.max_steps_per_epoch=3",
        "train.progress=false", "train.val_samples=50", "train.val_attack_steps=1", "attack.steps=1",
        "data.val_from=holdout", "train.deterministic=true", "train.precision=fp32"]
LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING) [\w.]+: ")


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ltrobust.cli", *args]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240):
    return subprocess.run(cli_argv(*args), cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's contract for bad input: status 2, no traceback, and one ``error:`` line, the last one.

    Lines before it may only be the log records of work done before the failure (``INFO name: ...``).
    """
    err = proc.stderr
    assert proc.returncode == 2, f"exit status {proc.returncode}, stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one final 'error:' line, stderr:\n{err}"
    others = [line for line in lines[:-1] if not LOG_RECORD.match(line)]
    assert not others, f"stderr lines that are neither log records nor the error: {others}"
    return errors[0]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return io.load_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> int:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a.name}: tensor {k} differs"
    return len(wa)


DROP = ("seconds", "images_per_s", "peak_rss_mb", "peak_cuda_mb", "checksum", "run", "checkpoint", "chunks_reused")


def without_timing(obj: Any, drop: tuple[str, ...] = DROP) -> Any:
    """A result without timing and bookkeeping fields (and the run folder's own path), for exact comparison."""
    if isinstance(obj, dict):
        return {k: without_timing(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [without_timing(v, drop) for v in obj]
    return obj


def tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run (trained in-process; every test copies it before touching it)."""
    out = tmp_path_factory.mktemp("base")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        Trainer(resolve_config(TINY + ["epochs=2", f"out={out}", "name=base"])).fit()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return out / "base"


def copy_run(base: Path, target: Path) -> Path:
    shutil.copytree(base, target)
    return target


# --------------------------------------------------------------------------------- fault injection
SITECUSTOMIZE = '''
"""Fault injection for tests/test_reliability.py, loaded as ``sitecustomize`` through PYTHONPATH.

LTROBUST_FAULT_UNDER=/folder and LTROBUST_FAULT_ERRNO=ENOSPC|EROFS make the file calls under that folder
fail as on a full disk (files are created, writes fail after half the bytes, mkdir fails) or on a
read-only file system (creating, opening for writing, renaming, deleting and mkdir all fail).
"""
import builtins, errno, io, os

_UNDER = os.environ.get("LTROBUST_FAULT_UNDER")
if _UNDER:
    _UNDER = os.path.realpath(_UNDER)
    _ERR = getattr(errno, os.environ.get("LTROBUST_FAULT_ERRNO", "ENOSPC"))
    _FULL = _ERR == errno.ENOSPC
    _open, _os_open, _fdopen = builtins.open, os.open, os.fdopen
    _WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _fds = set()

    def _hit(path):
        if isinstance(path, int):
            return False
        p = os.path.realpath(os.fsdecode(os.fspath(path)))
        return p == _UNDER or p.startswith(_UNDER + os.sep)

    def _fail(path):
        raise OSError(_ERR, os.strerror(_ERR), os.fsdecode(os.fspath(path)))

    class _FullFile:
        """A file on a full disk: half of the first write lands, then ENOSPC."""

        def __init__(self, fh):
            self._fh = fh

        def write(self, data):
            self._fh.write(data[: len(data) // 2])
            self._fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    def _open_patched(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _hit(file):
            if not _FULL:
                _fail(file)
            return _FullFile(_open(file, mode, *args, **kwargs))
        return _open(file, mode, *args, **kwargs)

    def _os_open_patched(path, flags, mode=0o777, *args, **kwargs):
        if flags & _WRITING and _hit(path):
            if not _FULL:
                _fail(path)
            fd = _os_open(path, flags, mode, *args, **kwargs)
            _fds.add(fd)
            return fd
        return _os_open(path, flags, mode, *args, **kwargs)

    def _fdopen_patched(fd, *args, **kwargs):
        fh = _fdopen(fd, *args, **kwargs)
        return _FullFile(fh) if fd in _fds else fh

    def _guard(fn):
        def wrapped(*args, **kwargs):
            if any(isinstance(a, (str, bytes, os.PathLike)) and _hit(a) for a in args[:2]):
                _fail(args[0])
            return fn(*args, **kwargs)
        return wrapped

    builtins.open = io.open = _open_patched
    os.open, os.fdopen = _os_open_patched, _fdopen_patched
    for _name in ("mkdir",) if _FULL else ("mkdir", "replace", "rename", "remove", "unlink", "rmdir"):
        setattr(os, _name, _guard(getattr(os, _name)))
'''


def fault_env(work: Path, under: Path, err: str) -> dict[str, str]:
    folder = work / "inject"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), ENV.get("PYTHONPATH", "")) if p)
    return {**ENV, "PYTHONPATH": path, "LTROBUST_FAULT_UNDER": str(under), "LTROBUST_FAULT_ERRNO": err}


# ----------------------------------------------------------------------------- one-shot commands
@dataclass
class Case:
    """One CLI command expected to fail with status 2 and an error naming ``fix`` (a regex)."""

    name: str
    fix: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    ctx: dict[str, Any] = field(default_factory=dict)
    setup: Callable[[], Any] | None = None  #: prepares the files this case reads (run only when it is selected)


class _Evil:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _evil_pickle_checkpoint(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True)
    torch.save({"model": _Evil(f"touch {marker}")}, path)  # a plain torch file, as found on the internet


def _five_class_checkpoint(base: Path, target: Path) -> None:
    """A checksummed checkpoint of the same model trained on a 5-class data set."""
    state = io.load_checkpoint(base / "checkpoints" / "best.pt")
    state["model"] = {k: (v[:5].clone() if k.startswith("head.") else v) for k, v in state["model"].items()}
    state["num_classes"], state["class_counts"] = 5, state["class_counts"][:5]
    io.save_checkpoint(target / "checkpoints" / "best.pt", state)


def _image_folder_with_a_broken_image(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c, name in enumerate(("airplane", "automobile")):
            folder = root / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32), (40 * c, 80, 120)).save(folder / "0000.png")
    (root / "train" / "airplane" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 8)
    return root


def build_cases(work: Path, base: Path) -> list[Case]:
    """Set up every bad input and return the commands (run with cwd=work)."""
    train_tiny = ["train", *TINY, f"out={work}"]
    cases = [
        Case("unknown data set", r"unknown data set 'cifar10lt'\. Did you mean 'cifar10-lt'", ["train", "dataset=cifar10lt"]),
        Case("unknown model", r"unknown model 'resnet19'\. Did you mean 'resnet18'", ["train", "model=resnet19"]),
        Case("unknown method", r"unknown method 'pgd_att'\. Did you mean 'pgd_at'", ["train", "method=pgd_att"]),
        Case("unknown attack (eval)", r"unknown attack 'pdg20'\. Did you mean 'pgd'.*e\.g\. pgd20",
             ["eval", str(copy_run(base, work / "attack_run")), "attacks=clean,pdg20"]),
        Case("unknown attack (train, before any training)", r"unknown attack 'pdg20'\. Did you mean 'pgd'",
             [*train_tiny, "name=attack_typo", "epochs=1", "eval.attacks=clean,pdg20"]),
        Case("unknown preset", r"unknown preset 'at-bsl-digit'\. Did you mean at-bsl-digits", ["train", "preset=at-bsl-digit"]),
        Case("unknown config key", r"unknown config key 'imbalanse'\. Did you mean imbalance", ["train", "imbalanse=50"]),
        Case("imbalance ratio < 1", r"imbalance=0\.5 is below 1.*use a value >= 1", ["train", "imbalance=0.5"]),
        Case("eps > 1 (training attack)", r"outside \[0, 1\].*write attack\.eps=8/255", ["train", "attack.eps=8"]),
        Case("eps < 0 (evaluation)", r"outside \[0, 1\].*write eval\.eps=8/255",
             ["eval", str(copy_run(base, work / "eps_run")), "eval.eps=-0.1"]),
        Case("negative attack steps", r"attack\.steps=-3 is negative: use 0 \(no attack\) or more", ["train", "attack.steps=-3"]),
        Case("negative validation attack steps", r"train\.val_attack_steps=-1 is negative: use 0 or more",
             ["train", "train.val_attack_steps=-1"]),
        Case("checkpoint class count != data set's", r"trained with 5 classes but data set digits-lt has 10; evaluate it on "
             r"the data set it was trained on", ["eval", str(work / "five_class_run")]),
        Case("missing data folder", r"data folder .*no_such_folder does not exist\. Expected layout.*data\.download=true",
             ["train", "dataset=cifar10-lt", f"data_dir={work / 'no_such_folder'}"]),
        Case("unreadable image", r"cannot read image file .*broken\.png.*Replace or delete the file",
             ["train", "dataset=cifar10-lt", f"data_dir={work / 'images'}", "model=smallcnn", "model.width=4"]),
        Case("truncated checkpoint (eval)", r"best\.pt is truncated or corrupt.*checkpoint=last",
             ["eval", str(copy_run(base, work / "truncated_run"))]),
        Case("corrupt checkpoint (resume)", r"last\.pt is truncated or corrupt \(checksum mismatch\).*delete this "
             r"file and re-run the command",
             [*train_tiny, "name=corrupt_run", "epochs=3"]),
        Case("malicious pickle checkpoint", r"refused.*posix\.system.*weights_only=True", ["eval", str(work / "evil_run")],
             ctx={"marker": work / "PWNED-pickle"}),
        Case("!!python tag in a preset", r"evil\.yaml \(line 4, column 11\) was refused.*safe_load.*remove the tag",
             ["train", f"preset={work / 'evil.yaml'}"], ctx={"marker": work / "PWNED-preset"}),
        Case("!!python tag in a run's config.yaml", r"config\.yaml \(line 2, column 11\) was refused.*remove the tag",
             [*train_tiny, "name=evil_config_run", "epochs=3"], ctx={"marker": work / "PWNED-config"}),
        Case("!!python tag in a checkpoint's config", r"config embedded in .*best\.pt was refused.*safe_load.*use a "
             r"checkpoint written by ltrobust train", ["eval", str(work / "evil_config_ckpt")],
             ctx={"marker": work / "PWNED-checkpoint-config"}),
        Case("non-finite loss", r"non-finite at epoch 1, step \d+; the last good checkpoint .*last\.pt is kept\. Lower "
             r"train\.lr", [*train_tiny, "name=nan_run", "epochs=2", "train.val_every=0", "train.lr=0.05",
                            "train.milestones=1", "train.lr_decay=1e30"]),
    ]
    # files the cases above read
    _five_class_checkpoint(base, work / "five_class_run")
    _image_folder_with_a_broken_image(work / "images")
    best = work / "truncated_run" / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    last = copy_run(base, work / "corrupt_run") / "checkpoints" / "last.pt"
    raw = bytearray(last.read_bytes())
    raw[-100] ^= 0xFF
    last.write_bytes(bytes(raw))
    _evil_pickle_checkpoint(work / "evil_run" / "checkpoints" / "best.pt", work / "PWNED-pickle")

    def tag(marker: str) -> str:
        return f"!!python/object/apply:os.system [\"touch {work / marker}\"]"

    (work / "evil.yaml").write_text(f"data:\n  imbalance: 10\ntrain:\n  epochs: {tag('PWNED-preset')}\n")
    copy_run(base, work / "evil_config_run")
    (work / "evil_config_run" / "config.yaml").write_text(f"train:\n  epochs: {tag('PWNED-config')}\n")
    state = io.load_checkpoint(base / "checkpoints" / "best.pt")
    state["config"] = f"train:\n  epochs: {tag('PWNED-checkpoint-config')}\n"
    io.save_checkpoint(work / "evil_config_ckpt" / "checkpoints" / "best.pt", state)
    # full disk / read-only folder: the previous checkpoints are recorded before the command runs
    full = copy_run(base, work / "full_disk_run")
    ro = copy_run(base, work / "read_only_run")
    (work / "read_only_out").mkdir()
    for name, under, err, fix, extra in (
            ("disk full while saving a checkpoint", full / "checkpoints", "ENOSPC",
             r"cannot write .*checkpoints/(best|last)\.pt: the disk is full\. The previous file .* is intact", ["name=full_disk_run"]),
            ("read-only run folder (resume)", ro, "EROFS",
             r"cannot write .*read_only_run.*: the folder is on a read-only file system.*out=DIR", ["name=read_only_run"]),
            ("read-only output folder (new run)", work / "read_only_out", "EROFS",
             r"cannot write .*read_only_out.*read-only file system.*out=DIR", ["out=" + str(work / "read_only_out"), "name=new"])):
        ckpts = {p.name: p.read_bytes() for p in (under.parent if under.name == "checkpoints" else under).rglob("*.pt")}
        cases.append(Case(name, fix, [*train_tiny, "epochs=3", *extra], env=fault_env(work, under, err),
                          ctx={"checkpoints": ckpts, "under": under}))
    return cases + integrity_cases(work, base) + fresh_process_cases(work)


# ------------------------------------------------------------------ integrity cases (issue 15)
def _evil_cifar_folder(root: Path, marker: Path) -> Path:
    """A CIFAR-10 python-release folder whose every file, once unpickled, runs ``touch marker``."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({"data": _Evil(f"touch {marker}"), "labels": []}, protocol=2))
    return root


def _with_config(base: Path, target: Path, **sections: dict[str, Any]) -> Path:
    """A copy of ``base`` whose config.yaml and checkpoints' embedded configs carry these changes."""
    import yaml

    run = copy_run(base, target)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    for sec, values in sections.items():
        raw[sec].update(values)
    text = yaml.safe_dump(raw, sort_keys=False)
    (run / "config.yaml").write_text(text)
    for which in ("best.pt", "last.pt"):
        state = io.load_checkpoint(run / "checkpoints" / which)
        if "config" in state:
            state["config"] = text
            io.save_checkpoint(run / "checkpoints" / which, state)
    return run


def _png_tree(root: Path, train_size: int, test_size: int, test_classes: int = 10) -> Path:
    """An image-folder CIFAR-10 (one image per class) whose test images are ``test_size`` px."""
    from PIL import Image

    for split, size, n in (("train", train_size, 10), ("test", test_size, test_classes)):
        for c in range(n):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            Image.new("RGB", (size, size), (20 * c, 80, 120)).save(folder / "0000.png")
    return root


def _other_architecture(base: Path, target: Path) -> Path:
    """A run folder whose last.pt holds a wider first layer than its config.yaml describes."""
    run = copy_run(base, target)
    state = io.load_checkpoint(run / "checkpoints" / "last.pt")
    key = next(k for k, v in state["model"].items() if v.dim() == 4 and k.endswith("weight"))  # the first conv
    state["model"][key] = torch.cat([state["model"][key]] * 2)
    io.save_checkpoint(run / "checkpoints" / "last.pt", state)
    return run


def _evaluated(base: Path, target: Path) -> Path:
    from ltrobust.evaluation.runs import evaluate_run

    run = copy_run(base, target)
    evaluate_run(run, ["attacks=clean,pgd2", "eval.n_samples=20"], device="cpu", progress=False)
    return run


def integrity_cases(work: Path, base: Path) -> list[Case]:
    """Issue 15: data files that would run code, results that would be lost, options that would be ignored,
    bad data and bad values."""
    train_tiny = ["train", *TINY, f"out={work}"]
    marker_direct, marker_shared = work / "PWNED-cifar", work / "PWNED-cifar-shared"
    return [
        Case("crafted CIFAR pickles (data info)", r"CIFAR file .*evil_cifar/cifar-10-batches-py/data_batch_1 was "
             r"refused: it asks to build Python objects \(posix\.system\).*unpack the official archive",
             ["data", "info", "cifar10-lt", f"data_dir={work / 'evil_cifar'}"], ctx={"marker": marker_direct},
             setup=lambda: _evil_cifar_folder(work / "evil_cifar", marker_direct)),
        Case("crafted CIFAR pickles named by a shared run folder (eval)", r"CIFAR file .*shared_evil_cifar.*was "
             r"refused: it asks to build Python objects \(posix\.system\)", ["eval", str(work / "shared_run")],
             ctx={"marker": marker_shared},
             setup=lambda: (_evil_cifar_folder(work / "shared_evil_cifar", marker_shared),
                            _with_config(base, work / "shared_run",
                                         data={"dataset": "cifar10-lt", "data_dir": str(work / "shared_evil_cifar")}))),
        Case("eval over a result of other settings", r"best\.json holds a result computed with other settings "
             r"\(attacks clean,pgd2 .* -> clean,fgsm .*\); it is kept\. .*eval\.tag=fgsm",
             ["eval", str(work / "evaluated_run"), "attacks=clean,fgsm", "eval.n_samples=20"],
             setup=lambda: _evaluated(base, work / "evaluated_run")),
        Case("resume with another train.epochs (cosine schedule)", r"trained for train\.epochs=2; continuing it to 3 "
             r"would not match a straight run of 3 epochs \(the cosine learning-rate schedule.*Resume with "
             r"train\.epochs=2", [*train_tiny, "name=cosine_run", "epochs=3", "train.schedule=cosine"],
             setup=lambda: _with_config(base, work / "cosine_run", train={"schedule": "cosine"})),
        Case("trades with attack.loss_mode=inner", r"method 'trades' crafts its training AEs with PGD on KL.*"
             r"attack\.loss_mode='inner' does not apply: leave attack\.loss_mode=outer",
             [*train_tiny, "name=trades_inner", "epochs=1", "method=trades", "loss=bsl", "attack.loss_mode=inner"]),
        Case("awp gamma=nan", r"gamma=nan is not a number: give a finite value", ["train", "method=awp", "gamma=nan"]),
        Case("test images of another size", r"the test images in .*odd_size.* are 28x28x3 \(H x W x C\) but the "
             r"training images are 32x32x3: use a test split of the same image size",
             ["train", "dataset=cifar10-lt", f"data_dir={work / 'odd_size'}", "model=smallcnn", "model.width=4"],
             setup=lambda: _png_tree(work / "odd_size", 32, 28)),
        Case("test split missing a class", r"the test split in .*class_missing has no image of class 9 \(class9\): "
             r"every class needs test images",
             ["train", "dataset=cifar10-lt", f"data_dir={work / 'class_missing'}", "model=smallcnn", "model.width=4"],
             setup=lambda: _png_tree(work / "class_missing", 32, 32, test_classes=9)),
        Case("negative lr_decay", r"train\.lr_decay=-0\.1 must be > 0 .*e\.g\. train\.lr_decay=0\.1",
             ["train", "train.lr_decay=-0.1"]),
        Case("negative warmup_epochs", r"train\.warmup_epochs=-1 is negative: use 0", ["train", "train.warmup_epochs=-1"]),
        Case("negative val_samples", r"train\.val_samples=-5 is negative: use 0 \(every validation image\)",
             ["train", "train.val_samples=-5"]),
        Case("negative n_samples (eval)", r"eval\.n_samples=-1 is negative: use 0 \(the whole test set\)",
             ["eval", str(work / "n_samples_run"), "eval.n_samples=-1"], setup=lambda: copy_run(base, work / "n_samples_run")),
        Case("momentum > 1", r"train\.momentum=1\.5 is outside \[0, 1\).*train\.momentum=0\.9", ["train", "train.momentum=1.5"]),
        Case("negative crop_padding", r"data\.crop_padding=-2 is negative: use 0 \(no crop\)", ["train", "data.crop_padding=-2"]),
        Case("epochs=0", r"train\.epochs=0 trains nothing.*use train\.epochs=1 or more", ["train", "epochs=0"]),
        Case("division by zero in a fraction", r"attack\.eps=8/0: 8/0 divides by zero.*e\.g\. 8/255", ["train", "attack.eps=8/0"]),
        Case("negative weight_decay", r"train\.weight_decay=-1\.0 is negative: use 0 \(none\)", ["train", "train.weight_decay=-1"]),
        Case("negative momentum", r"train\.momentum=-1\.0 is outside \[0, 1\)", ["train", "train.momentum=-1"]),
        Case("negative finetune_lr (before training)", r"train\.finetune_lr=-1\.0 is negative.*e\.g\. train\.finetune_lr=0\.01",
             [*train_tiny, "name=finetune_lr_run", "epochs=1", "train.finetune=crt", "train.finetune_lr=-1"]),
        Case("negative selection_seed", r"data\.selection_seed=-1 is negative: use a seed >= 0",
             ["train", "data.selection_seed=-1"]),
        Case("resume with another architecture in last.pt", r"last\.pt does not fit this run's model smallcnn \(width "
             r"4\): it holds another architecture or width.*Delete .*last\.pt to start the run over",
             [*train_tiny, "name=other_arch_run", "epochs=3"],
             setup=lambda: _other_architecture(base, work / "other_arch_run")),
    ]


# ------------------------------------------------------------------ round 3 (issue 29, issue 30 item 4)
DUP_PLUGIN = """from ltrobust.registry import MODELS


@MODELS.register("resnet18")
def resnet18(num_classes=10, **kw):
    raise AssertionError("never built")
"""


def _save(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _squeezenet(work: Path) -> Path:
    """A small torchvision network's state dict (3 input channels, 10 classes)."""
    import torchvision

    return _save(torchvision.models.squeezenet1_1(num_classes=10).state_dict(), work / "squeezenet.pt")


def _bomb_tree(root: Path) -> Path:
    """An image-folder CIFAR-10 whose first training image is a decompression bomb (a 1-bit PNG of 9500 x 9500
    pixels, over PIL.Image.MAX_IMAGE_PIXELS, in a few kB)."""
    from test_data_formats import bomb_png

    _png_tree(root, 32, 32)
    bomb_png(root / "train" / "class0" / "0000.png", 9500)
    return root


def _indices_with_a_repeated_test_image(path: Path) -> Path:
    path.write_text(json.dumps({"train": list(range(10)), "test": [0, 0, 1]}))
    return path


def fresh_process_cases(work: Path) -> list[Case]:
    """Round 3 cases that need a fresh interpreter: a broken plug-in of $LTROBUST_PLUGINS is imported while the
    parser is built (its traceback came from there), and PIL's decompression-bomb warning goes to stderr."""
    return [
        Case("plugin module missing ($LTROBUST_PLUGINS)", r"cannot import plugin 'no_such_plugin_29' \(from --import or "
             r"\$LTROBUST_PLUGINS\): No module named 'no_such_plugin_29'\. Run from the folder that holds it",
             ["list"], env={**ENV, "LTROBUST_PLUGINS": "no_such_plugin_29"}),
        Case("decompression bomb PNG", r"0000\.png was refused as a possible decompression bomb: Image size \(90250000 "
             r"pixels\) exceeds limit of 89478485 pixels.*replace it with a downscaled copy",
             ["train", "dataset=cifar10-lt", f"data_dir={work / 'bomb_tree'}", "model=smallcnn"],
             setup=lambda: _bomb_tree(work / "bomb_tree")),
    ]


def quick_cases(work: Path, base: Path) -> list[Case]:
    """Issue 29 (items 5, 7-12, 15, 18, 20), issue 30 item 4 and the second pass: plug-ins, command-line values,
    weights files and data files, run in process (``cli.main``); ``ctx["before_work"]``: the error must come
    before any image is decoded."""
    png10 = work / "png10"

    def png10_tree() -> Path:
        return png10 if png10.exists() else _png_tree(png10, 32, 32)

    def squeezenet() -> Path:
        return work / "squeezenet.pt" if (work / "squeezenet.pt").exists() else _squeezenet(work)

    weights = ["eval", "dataset=digits-lt", "attacks=clean", "eval.n_samples=10"]
    before = {"before_work": True}
    return [
        Case("plugin registers a taken name", r"plugin 'dup_plugin_29': model 'resnet18' is registered twice: by "
             r"ltrobust\.models\.resnet\.resnet18 and by dup_plugin_29\.resnet18; register the second one under "
             r"another name", ["--import", "dup_plugin_29", "list"],
             setup=lambda: (work / "dup_plugin_29.py").write_text(DUP_PLUGIN)),
        Case("plugin fails while importing", r"plugin 'broken_plugin_29' failed while importing: ZeroDivisionError: "
             r"division by zero \(.*broken_plugin_29\.py, line 1\); fix it", ["list", "--import", "broken_plugin_29"],
             setup=lambda: (work / "broken_plugin_29.py").write_text("x = 1 / 0\n")),
        Case("model module missing (before any image is decoded)", r"model=no_such_module_29:Net: cannot import "
             r"'no_such_module_29'.*put that folder on PYTHONPATH",
             ["eval", f"weights={work / 'squeezenet.pt'}", "model=no_such_module_29:Net", "dataset=imagefolder",
              f"data_dir={png10}", "attacks=clean"], ctx=before, setup=lambda: (squeezenet(), png10_tree())),
        Case("bad indices file (before any image is decoded)", r"indices_file=.*repeated\.json lists test index 0 2 "
             r"times: each image once", ["train", "dataset=cifar10-lt", f"data_dir={png10}",
                                         f"indices_file={work / 'repeated.json'}"], ctx=before,
             setup=lambda: (png10_tree(), _indices_with_a_repeated_test_image(work / "repeated.json"))),
        Case("malformed indices JSON", r"indices_file=.*ragged\.json: 'train' must be a flat list of integer indices",
             ["data", "info", "digits-lt", f"indices_file={work / 'ragged.json'}"],
             setup=lambda: (work / "ragged.json").write_text('{"train": [[1, 2], [3]]}')),
        Case("reference value .nan in a preset", r"reference\[0\]: values\.clean=nan is not a percentage: write the "
             r"paper's number in \[0, 100\]", ["train", f"preset={work / 'nan_reference.yaml'}"],
             setup=lambda: (work / "nan_reference.yaml").write_text(
                 "reference:\n  - {source: x.txt, table: Table 1, values: {clean: .nan, pgd20: 30}}\n")),
        Case("model.mean=abc", r"model\.mean=abc is not a list of numbers: give one value per image channel, e\.g\. "
             r"model\.mean=0\.485,0\.456,0\.406", [*weights, f"weights={work / 'squeezenet.pt'}",
                                                   "model=torchvision.squeezenet1_1", "model.mean=abc"],
             setup=lambda: squeezenet()),
        Case("model.mean= (empty)", r"model\.mean= is empty: give one value per image channel.*or leave model\.mean "
             r"out", [*weights, f"weights={work / 'squeezenet.pt'}", "model=torchvision.squeezenet1_1", "model.mean="],
             setup=lambda: squeezenet()),
        Case("model option the constructor does not take", r"model=torchvision\.squeezenet1_1 could not be built with "
             r"model\.foo=module:callable: .*unexpected keyword argument 'foo'\. Give only options its constructor "
             r"takes", [*weights, f"weights={work / 'squeezenet.pt'}", "model=torchvision.squeezenet1_1",
                        "model.foo=module:callable"], setup=lambda: squeezenet()),
        Case("class_counts=[10,5,2 (unclosed)", r"class_counts=\[10,5,2 is not a list of numbers \(a bracket left "
             r"open\?\)", ["data", "info", "imagefolder", f"data_dir={png10}", "class_counts=[10,5,2"], ctx=before,
             setup=lambda: png10_tree()),
        Case("class_counts with a zero", r"class 1 has 0 training images; every class needs a count >= 1",
             ["data", "info", "imagefolder", f"data_dir={png10}", "class_counts=5,0,5,5,5,5,5,5,5,5"], ctx=before,
             setup=lambda: png10_tree()),
        Case("attack.step_size=0", r"attack\.step_size=0\.0 must be > 0 with attack\.steps=10.*attack\.steps=0 for no "
             r"attack", ["train", "attack.step_size=0"]),
        Case("eval.step_size=0", r"eval\.step_size=0\.0 must be > 0.*e\.g\. eval\.step_size=2/255",
             ["eval", str(work / "step0_run"), "eval.step_size=0"], setup=lambda: copy_run(base, work / "step0_run")),
        Case("torchvision model on 1-channel data", r"model=torchvision\.squeezenet1_1 expects 3-channel images but "
             r"the data's images have 1 channel: evaluate it on 3-channel data, or give it a first layer that takes "
             r"1 channel", [*weights, f"weights={work / 'squeezenet.pt'}", "model=torchvision.squeezenet1_1"],
             setup=lambda: squeezenet()),
        Case("weights= a plain pickle", r"raw\.pkl cannot be read: it is a plain Python pickle \(pickle\.dump\), not a "
             r"torch\.save file, but weights=PATH must be a file that torch\.save wrote from "
             r"model\.state_dict\(\)",
             [*weights, f"weights={work / 'raw.pkl'}", "model=torchvision.squeezenet1_1"],
             setup=lambda: (work / "raw.pkl").write_bytes(__import__("pickle").dumps({"conv.weight": [1.0]}))),
        Case("weights= a file of garbage", r"garbage\.pt cannot be read: it is not a torch\.save file \(it starts with "
             r"b'hello world '\), but weights=PATH must be a file that torch\.save wrote",
             [*weights, f"weights={work / 'garbage.pt'}", "model=torchvision.squeezenet1_1"],
             setup=lambda: (work / "garbage.pt").write_bytes(b"hello world " * 10)),
    ]


def _edited_tree(root: Path, edit: Callable[[Path], Any]) -> Path:
    """An image-folder CIFAR-10 (one 32 px PNG per class and split), then ``edit(root)``."""
    _png_tree(root, 32, 32)
    edit(root)
    return root


def _two_classes(root: Path, train_size: int = 16, test_sizes: tuple[int, int] = (16, 16)) -> Path:
    from PIL import Image

    for split, sizes in (("train", (train_size, train_size)), ("test", test_sizes)):
        for c, size in enumerate(sizes):
            (root / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (size, size), (90 * c, 80, 120)).save(root / split / f"c{c}" / "0000.png")
    return root


def second_pass_cases(work: Path, base: Path) -> list[Case]:
    """The second pass of issue 29: new hostile or careless inputs (docs/reliability.md lists them with the
    outcome before this pass)."""
    small = work / "small.pt"
    mod = work / "user_models_29.py"

    def weights_file() -> Path:
        return small if small.exists() else _save(io.load_checkpoint(base / "checkpoints" / "best.pt")["model"], small)

    def user_module() -> None:
        mod.write_text("x = 5\n\n\ndef none(**kw):\n    return None\n")
        (work / "syntax_29.py").write_text("def f(:\n")

    def ok(*extra: str, w: str | None = None) -> list[str]:
        return ["eval", f"weights={w or small}", "model=smallcnn", "model.width=4", "dataset=digits-lt", "attacks=clean",
                "eval.n_samples=10", *extra]

    def foreign(arch: str) -> list[str]:
        return ["eval", f"weights={small}", f"model={arch}", "dataset=digits-lt", "attacks=clean"]

    def info(root: str, *extra: str) -> list[str]:
        return ["data", "info", "cifar10-lt", f"data_dir={work / root}", *extra]

    png10 = work / "png10_2"

    def counts(name: str, text: str) -> Callable[[], Any]:
        return lambda: ((png10.exists() or _png_tree(png10, 32, 32)), (work / name).write_text(text))

    train_tiny = ["train", *TINY, f"out={work}", "epochs=1"]
    return [
        Case("train.lr= (empty)", r"train\.lr= is empty: give a value, or leave train\.lr out for its default",
             ["train", "train.lr="]),
        Case("eval.attacks= (empty)", r"eval\.attacks= is empty", ["train", "eval.attacks="]),
        Case("epochs=abc", r"train\.epochs='abc' is not a valid int", ["train", "epochs=abc"]),
        Case("imagefolder without data_dir", r"imagefolder needs data_dir=PATH", ["data", "info", "imagefolder"]),
        Case("data_dir is a file", r"data folder .*afile is a file, not a folder", info("afile"),
             setup=lambda: (work / "afile").write_text("x")),
        Case("preset file that does not exist", r"preset file .*nope\.yaml does not exist: give a YAML file",
             ["train", f"preset={work / 'nope.yaml'}"]),
        Case("preset that is a YAML list", r"preset .*list\.yaml must be a mapping of sections to keys",
             ["train", f"preset={work / 'list.yaml'}"], setup=lambda: (work / "list.yaml").write_text("- a\n- b\n")),
        Case("eval of a folder that is no run", r"notrun has no checkpoints/best\.pt; is it a finished ltrobust run "
             r"folder", ["eval", str(work / "notrun")], setup=lambda: (work / "notrun").mkdir()),
        Case("eval of a missing path", r"missing does not exist: pass a run folder", ["eval", str(work / "missing")]),
        Case("checkpoint=middle", r"checkpoint='middle': use best or last", ["eval", str(base), "checkpoint=middle"]),
        Case("weights= an empty file", r"empty\.pt cannot be read: it is an empty file, but weights=PATH must be",
             ok(w=str(work / "empty.pt")), setup=lambda: (work / "empty.pt").write_bytes(b"")),
        Case("weights= a folder", r"weights=.*wdir is a folder, not a file", ok(w=str(work / "wdir")),
             setup=lambda: (work / "wdir").mkdir()),
        Case("weights= without model=", r"weights=PATH needs model=ARCH", ["eval", f"weights={small}",
                                                                         "dataset=digits-lt"], setup=weights_file),
        Case("weights= a bare tensor", r"tensor\.pt holds no state dict \(top-level keys Tensor\)",
             ok(w=str(work / "tensor.pt")), setup=lambda: _save(torch.zeros(3), work / "tensor.pt")),
        Case("weights of another width", r"do not fit the model LTModel: shape mismatch.*Check model= and its options",
             ok("model.width=8"), setup=weights_file),
        Case("model.head=foo", r"model\.head='foo': use linear or cosine", ok("model.head=foo"), setup=weights_file),
        Case("unknown torchvision model", r"torchvision has no model 'resnet999'", foreign("torchvision.resnet999"),
             setup=weights_file),
        Case("module:attribute that is not callable", r"model=user_models_29:x: 'x' is not callable",
             foreign("user_models_29:x"), setup=lambda: (weights_file(), user_module())),
        Case("module:callable returning None", r"user_models_29:none returned NoneType, not a torch\.nn\.Module",
             foreign("user_models_29:none"), setup=lambda: (weights_file(), user_module())),
        Case("model module with a syntax error", r"importing 'syntax_29' failed: SyntaxError: invalid syntax",
             foreign("syntax_29:f"), setup=lambda: (weights_file(), user_module())),
        Case("model.std=-1", r"model\.std=-1 has a value <= 0", ok("model.std=-1"), setup=weights_file),
        Case("zero-byte PNG", r"0001\.png: cannot identify image file", info("zero_byte"),
             setup=lambda: _edited_tree(work / "zero_byte", lambda r: (r / "train/class0/0001.png").write_bytes(b""))),
        Case("class folder holding only a .txt", r"class folder .*class3 holds no images", info("txt_only"),
             setup=lambda: _edited_tree(work / "txt_only", lambda r: (
                 (r / "train/class3/0000.png").unlink(), (r / "train/class3/readme.txt").write_text("x")))),
        Case("image that is a broken symbolic link", r"0001\.png is a broken symbolic link \(to /nonexistent/x\.png\)",
             info("dangling"), setup=lambda: _edited_tree(work / "dangling", lambda r: os.symlink(
                 "/nonexistent/x.png", r / "train/class0/0001.png"))),
        Case("truncated PNG", r"0001\.png: image file is truncated", info("truncated"),
             setup=lambda: _edited_tree(work / "truncated", lambda r: (r / "train/class0/0001.png").write_bytes(
                 (r / "train/class0/0000.png").read_bytes()[:60]))),
        Case("image folder without test/", r"holds neither cifar-10-batches-py/ nor train/ \+ test/", info("no_test"),
             setup=lambda: _edited_tree(work / "no_test", lambda r: shutil.rmtree(r / "test"))),
        Case("test images of mixed sizes", r"is 20x20 but .* is 16x16: every image of a split must have one size\. "
             r"Set image_size=N", ["data", "info", "imagefolder", f"data_dir={work / 'mixed'}"],
             setup=lambda: _two_classes(work / "mixed", test_sizes=(16, 20))),
        Case("1x1 images", r"smallcnn needs images of at least 2 px, got image_size=1",
             ["eval", f"weights={small}", "model=smallcnn", "model.width=4", "dataset=imagefolder",
              f"data_dir={work / 'one_px'}", "attacks=clean"],
             setup=lambda: (weights_file(), _two_classes(work / "one_px", 1, (1, 1)))),
        Case("class_counts JSON naming a class with no folder", r"has counts of classes \['zebra'\] that have no folder",
             ["data", "info", "imagefolder", f"data_dir={png10}", f"class_counts={work / 'extra.json'}"],
             setup=counts("extra.json", json.dumps({**{f"class{c}": 5 for c in range(10)}, "zebra": 3}))),
        Case("class_counts JSON of floats", r"must list integers, one per class",
             ["data", "info", "imagefolder", f"data_dir={png10}", f"class_counts={work / 'floats.json'}"],
             setup=counts("floats.json", "[5.0, 3.0]")),
        Case("indices_file that is a folder", r"cannot read data\.indices_file=.*idx_dir: \[Errno 21\] Is a directory",
             ["data", "info", "digits-lt", f"indices_file={work / 'idx_dir'}"], setup=lambda: (work / "idx_dir").mkdir()),
        Case("indices .npy of floats", r"idx\.npy: 'train' must be a flat list of integer indices",
             ["data", "info", "digits-lt", f"indices_file={work / 'idx.npy'}"],
             setup=lambda: __import__("numpy").save(work / "idx.npy", __import__("numpy").array([0.5, 1.5]))),
        Case("indices text file without an index", r"idx\.txt: 'train' lists no index",
             ["data", "info", "digits-lt", f"indices_file={work / 'idx.txt'}"],
             setup=lambda: (work / "idx.txt").write_text("# nothing yet\n")),
        Case("report of a JSON list", r"list\.json holds no evaluation results", ["report", str(work / "list.json")],
             setup=lambda: (work / "list.json").write_text("[1, 2]")),
        Case("train out= under a file", r"cannot write .*afile/sub/.*: a part of that path is a file, not a folder",
             [*train_tiny, f"out={work / 'afile' / 'sub'}"], setup=lambda: (work / "afile").write_text("x")),
        Case("eval out= under a file", r"cannot write .*afile/sub.*: a part of that path is a file, not a folder",
             ok(f"out={work / 'afile' / 'sub'}"), setup=lambda: (weights_file(), (work / "afile").write_text("x"))),
        Case("train name=../escape", r"name=\.\./escape is a run folder name inside out=.*not a path out of it",
             [*train_tiny, "name=../escape"]),
        Case("eval of a run whose config.yaml is a list", r"config\.yaml is not a mapping of sections to keys \(it "
             r"holds a list\)", ["eval", str(work / "list_config")],
             setup=lambda: copy_run(base, work / "list_config").joinpath("config.yaml").write_text("- 1\n")),
        Case("eval of a run whose best.pt is a folder", r"best\.pt is a folder, not a file",
             ["eval", str(work / "folder_ckpt")], setup=lambda: (
                 copy_run(base, work / "folder_ckpt").joinpath("checkpoints/best.pt").unlink(),
                 (work / "folder_ckpt/checkpoints/best.pt").mkdir())),
        Case("--import a path", r"plugin '\.\./evil' .*is not a module name: write a dotted Python module name",
             ["--import", "../evil", "list"]),
        Case("--import a file name", r"plugin 'user_models_29\.py' .*is not a module name.*write user_models_29 and "
             r"run from its folder", ["--import", "user_models_29.py", "list"], setup=user_module),
        Case("plugin with a syntax error", r"plugin 'syntax_29' failed while importing: SyntaxError: invalid syntax "
             r"\(syntax_29\.py, line 1\); fix it", ["--import", "syntax_29", "list"], setup=user_module),
        Case("train an image folder without train/", r"has no training images \(no train/ folder\)",
             [*train_tiny, "dataset=imagefolder", f"data_dir={work / 'test_only'}", "class_counts=1,1"],
             setup=lambda: shutil.rmtree(_two_classes(work / "test_only") / "train")),
        Case("train with class_counts that differ from train/", r"class_counts=.* differs from the training images per "
             r"class in train/ \(\[1, 1\]\)", [*train_tiny, "dataset=imagefolder", f"data_dir={work / 'two'}",
                                                "class_counts=5,5"], setup=lambda: _two_classes(work / "two")),
        Case("train over a run of other settings that has no last.pt", r"holds checkpoints/best\.pt of a run with a "
             r"different config \(train\.lr: 0\.1 -> 0\.01\) and no last\.pt to resume; its result is kept",
             [*train_tiny, "name=no_last", "train.lr=0.01"],
             setup=lambda: copy_run(base, work / "no_last").joinpath("checkpoints/last.pt").unlink()),
    ]


SECOND_PASS_INPUTS = [
    "train.lr= (empty)", "eval.attacks= (empty)", "epochs=abc", "imagefolder without data_dir", "data_dir is a file",
    "preset file that does not exist", "preset that is a YAML list", "eval of a folder that is no run",
    "eval of a missing path", "checkpoint=middle", "weights= an empty file", "weights= a folder",
    "weights= without model=", "weights= a bare tensor", "weights of another width", "model.head=foo",
    "unknown torchvision model", "module:attribute that is not callable", "module:callable returning None",
    "model module with a syntax error", "model.std=-1", "zero-byte PNG", "class folder holding only a .txt",
    "image that is a broken symbolic link", "truncated PNG", "image folder without test/",
    "test images of mixed sizes", "1x1 images", "class_counts JSON naming a class with no folder",
    "class_counts JSON of floats", "indices_file that is a folder", "indices .npy of floats",
    "indices text file without an index", "report of a JSON list", "train out= under a file",
    "eval out= under a file", "train name=../escape", "eval of a run whose config.yaml is a list",
    "eval of a run whose best.pt is a folder", "--import a path", "--import a file name",
    "plugin with a syntax error", "train an image folder without train/",
    "train with class_counts that differ from train/", "train over a run of other settings that has no last.pt"]


ROUND3_INPUTS = ["plugin module missing ($LTROBUST_PLUGINS)", "decompression bomb PNG"]
QUICK_INPUTS = ["plugin registers a taken name",
                "plugin fails while importing", "model module missing (before any image is decoded)",
                "bad indices file (before any image is decoded)", "malformed indices JSON",
                "reference value .nan in a preset", "model.mean=abc", "model.mean= (empty)",
                 "model option the constructor does not take", "class_counts=[10,5,2 (unclosed)",
                 "class_counts with a zero", "attack.step_size=0", "eval.step_size=0",
                 "torchvision model on 1-channel data", "weights= a plain pickle", "weights= a file of garbage"]


INTEGRITY_INPUTS = ["crafted CIFAR pickles (data info)", "crafted CIFAR pickles named by a shared run folder (eval)",
                    "eval over a result of other settings", "resume with another train.epochs (cosine schedule)",
                    "trades with attack.loss_mode=inner", "awp gamma=nan", "test images of another size",
                    "test split missing a class", "negative lr_decay", "negative warmup_epochs",
                    "negative val_samples", "negative n_samples (eval)", "momentum > 1", "negative crop_padding",
                    "epochs=0", "division by zero in a fraction", "negative weight_decay", "negative momentum",
                    "negative finetune_lr (before training)", "negative selection_seed",
                    "resume with another architecture in last.pt"]


#: the cases read by tests that are not parametrised by case name
NEEDS = {"test_refused_runs_keep_their_checkpoints": ["corrupt checkpoint (resume)", "!!python tag in a run's config.yaml",
                                                      "unknown attack (train, before any training)"],
         "test_non_finite_loss_keeps_the_last_good_checkpoint": ["non-finite loss"]}


@pytest.fixture(scope="module")
def failures(request, tmp_path_factory, base_run) -> dict[str, tuple[Case, subprocess.CompletedProcess]]:
    """Run the one-shot failing commands that the selected tests read, two at a time."""
    wanted = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        wanted.update([params["name"]] if "name" in params else NEEDS.get(item.originalname, []))
    work = tmp_path_factory.mktemp("bad_input")
    cases = [c for c in build_cases(work, base_run) if c.name in wanted]
    for c in cases:
        if c.setup is not None:
            c.setup()
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        procs = pool.map(lambda c: run_cli(c.argv, cwd=work, env=c.env), cases)
        results = {c.name: (c, p) for c, p in zip(cases, procs)}
    results["_work"] = work  # type: ignore[assignment]
    return results


BAD_INPUTS = ["unknown data set", "unknown model", "unknown method", "unknown attack (eval)",
              "unknown attack (train, before any training)", "unknown preset", "unknown config key",
              "imbalance ratio < 1", "eps > 1 (training attack)", "eps < 0 (evaluation)", "negative attack steps",
              "negative validation attack steps", "checkpoint class count != data set's", "missing data folder",
              "unreadable image", "truncated checkpoint (eval)", "corrupt checkpoint (resume)",
              "malicious pickle checkpoint", "!!python tag in a preset", "!!python tag in a run's config.yaml",
              "!!python tag in a checkpoint's config", "non-finite loss", *INTEGRITY_INPUTS, *ROUND3_INPUTS]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_naming_the_fix(failures, name):
    case, proc = failures[name]
    line = error_line(proc)
    print(f"\n[{name}] ({len(proc.stderr.splitlines()) - 1} log lines before) {line}")  # for docs/reliability.md
    assert re.search(case.fix, line), f"{name}: the message does not name the fix ({case.fix!r}):\n{line}"


def run_in_process(argv: list[str], cwd: Path, env: dict[str, str] | None, monkeypatch, capsys):
    """``cli.main(argv)`` in this process, as a CompletedProcess; an exception that escapes it fails the test
    with its traceback (the CLI would have printed one)."""
    from ltrobust import cli

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LTROBUST_PLUGINS", os.environ.get("LTROBUST_PLUGINS", ""))  # restored after the test
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


@pytest.mark.parametrize("name", QUICK_INPUTS + SECOND_PASS_INPUTS)
def test_bad_input_in_process_exits_2_with_one_line_naming_the_fix(name, tmp_path, base_run, monkeypatch, capsys,
                                                                   caplog):
    """The bad-input contract through ``cli.main`` in this process (a fresh interpreter per case would cost 4 s
    of imports each); ``before_work`` cases (issue 30 item 4) also log no image decoding before the error."""
    import logging

    (case,) = [c for c in quick_cases(tmp_path, base_run) + second_pass_cases(tmp_path, base_run) if c.name == name]
    if case.setup is not None:
        case.setup()
    with caplog.at_level(logging.INFO):
        proc = run_in_process(case.argv, tmp_path, case.env, monkeypatch, capsys)
    line = error_line(proc)
    print(f"\n[{name}] {line}")  # for docs/reliability.md
    assert re.search(case.fix, line), f"{name}: the message does not name the fix ({case.fix!r}):\n{line}"
    if case.ctx.get("before_work"):
        decoded = [r.getMessage() for r in caplog.records if "decoding" in r.getMessage()]
        assert not decoded, f"{name}: images were decoded before the error: {decoded}"


@pytest.mark.parametrize("name", ["malicious pickle checkpoint", "!!python tag in a preset",
                                  "!!python tag in a run's config.yaml", "!!python tag in a checkpoint's config",
                                  "crafted CIFAR pickles (data info)",
                                  "crafted CIFAR pickles named by a shared run folder (eval)"])
def test_untrusted_files_run_no_code(failures, name):
    case, proc = failures[name]
    assert proc.returncode != 0
    assert not case.ctx["marker"].exists(), f"{name}: the payload ran"


def test_refused_runs_keep_their_checkpoints(failures):
    """A run that cannot resume (corrupt last.pt, tampered config.yaml) is left as it was."""
    work = failures["_work"]
    for name in ("corrupt_run", "evil_config_run"):
        assert (work / name / "checkpoints" / "best.pt").exists()
        assert not tmp_files(work / name)
    assert not (work / "attack_typo").exists(), "a config error must stop train before it creates the run folder"


def test_non_finite_loss_keeps_the_last_good_checkpoint(failures):
    run = failures["_work"] / "nan_run"
    last = io.load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in io.read_jsonl(run / "metrics.jsonl")] == [0]


@pytest.mark.parametrize("name", ["disk full while saving a checkpoint", "read-only run folder (resume)",
                                  "read-only output folder (new run)"])
def test_full_disk_or_read_only_folder_keeps_the_previous_checkpoint(failures, name, tmp_path):
    case, proc = failures[name]
    line = error_line(proc)
    print(f"\n[{name}] ({len(proc.stderr.splitlines()) - 1} log lines before) {line}")
    assert re.search(case.fix, line), line
    folder = case.ctx["under"]
    run = folder.parent if folder.name == "checkpoints" else folder
    after = {p.name: p.read_bytes() for p in run.rglob("*.pt")}
    assert after == case.ctx["checkpoints"], "a checkpoint changed"
    assert not tmp_files(run), "temporary files left behind"
    if case.ctx["checkpoints"]:  # once the disk has room again, the same command resumes and finishes
        assert io.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
        was = torch.are_deterministic_algorithms_enabled()
        try:
            Trainer(resolve_config(TINY + [f"out={run.parent}", f"name={run.name}", "epochs=3"])).fit()
        finally:
            torch.use_deterministic_algorithms(was)
        assert io.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
        assert [r["epoch"] for r in io.read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]


# --------------------------------------------------------------------------------- SIGKILL suite
@dataclass
class Kill:
    more: int  #: the kill is armed once this many more units (epochs / chunks) are on disk than at start
    fraction: float  #: then it waits this fraction of the last unit's duration
    units_at_start: int = -1
    units_at_kill: int = -1
    seconds_after_start: float = -1.0


def kill_plan(seed: int, n: int, more: tuple[int, int]) -> list[Kill]:
    """``n`` seeded random kill points."""
    rng = random.Random(seed)
    return [Kill(rng.randint(*more), rng.random()) for _ in range(n)]


class Progress:
    """Units of work on disk and the duration of the last one, read from the files the command writes."""

    def __init__(self, count: Callable[[], int], last_seconds: Callable[[], float]) -> None:
        self.count, self.last_seconds = count, last_seconds


def metrics_progress(run: Path) -> Progress:
    rows = lambda: io.read_jsonl(run / "metrics.jsonl")  # noqa: E731
    return Progress(lambda: len(rows()), lambda: float(rows()[-1]["seconds"]))


def chunk_progress(folder: Path) -> Progress:
    files = lambda: sorted(folder.glob("chunk_*.json")) if folder.is_dir() else []  # noqa: E731
    return Progress(lambda: len(files()), lambda: sum(json.loads(files()[-1].read_text())["seconds"].values()))


def run_and_kill(argv: list[str], cwd: Path, progress: Progress, kill: Kill, log: Path) -> None:
    """Start the command; once ``kill.more`` more units are done, wait ``kill.fraction`` of the last unit's
    duration and SIGKILL it."""
    kill.units_at_start = progress.count()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cli_argv(*argv), cwd=cwd, env=ENV, stdout=fh, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    deadline = None
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the command ended (status {proc.returncode}) before kill {kill}; see {log}")
            now = time.monotonic()
            if deadline is None and progress.count() >= kill.units_at_start + kill.more:
                deadline = now + kill.fraction * progress.last_seconds()
            if deadline is not None and now >= deadline:
                os.kill(proc.pid, signal.SIGKILL)
                kill.seconds_after_start = now - t0
                break
            time.sleep(0.002)
    finally:
        proc.wait()
    kill.units_at_kill = progress.count()
    assert proc.returncode == -signal.SIGKILL, f"the command was not killed: status {proc.returncode}"


def test_training_killed_three_times_resumes_to_identical_weights(tmp_path):
    epochs = 12
    argv = ["train", *TINY, f"epochs={epochs}", f"out={tmp_path}"]
    reference = subprocess.Popen(cli_argv(*argv, "name=straight"), cwd=tmp_path, env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = tmp_path / "killed"
    plan = kill_plan(seed=6, n=3, more=(1, 2))
    resumed_from = []
    for kill in plan:
        run_and_kill([*argv, "name=killed"], tmp_path, metrics_progress(killed), kill, tmp_path / "killed.log")
        last = killed / "checkpoints" / "last.pt"
        resumed_from.append(io.load_checkpoint(last)["epoch"] + 1 if last.exists() else 0)
    assert resumed_from[-1] > 0 and resumed_from[-1] < epochs, (plan, resumed_from)
    final = run_cli([*argv, "name=killed"], cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"from epoch {resumed_from[-1]}" in final.stderr, "the last command did not resume"
    _, ref_err = reference.communicate(timeout=240)
    assert reference.returncode == 0, ref_err[-3000:]

    straight = tmp_path / "straight"
    for which in ("last.pt", "best.pt"):
        assert_same_weights(straight / "checkpoints" / which, killed / "checkpoints" / which)
    a, b = (io.read_jsonl(r / "metrics.jsonl") for r in (straight, killed))
    assert [r["epoch"] for r in b] == list(range(epochs))  # each epoch logged once
    assert without_timing(a) == without_timing(b)  # losses, validation, AE counts: the same numbers
    assert io.load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == epochs - 1
    print(f"train kills: {plan}, resumed from epochs {resumed_from}")


def test_evaluation_killed_three_times_resumes_to_identical_numbers(tmp_path, base_run):
    ref_run, killed_run = copy_run(base_run, tmp_path / "ref"), copy_run(base_run, tmp_path / "killed")
    over = ["attacks=clean,pgd10,mim5", "eval.chunk_size=25", "eval.batch_size=25"]  # 500 images: 20 chunks
    reference = subprocess.Popen(cli_argv("eval", str(ref_run), *over), cwd=tmp_path, env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    plan = kill_plan(seed=7, n=3, more=(1, 4))
    chunks = killed_run / "eval" / "best_chunks"
    progress = chunk_progress(chunks)
    done = []
    for kill in plan:
        run_and_kill(["eval", str(killed_run), *over], tmp_path, progress, kill, tmp_path / "killed.log")
        done.append(progress.count())
    assert 0 < done[-1] < 20, done
    assert not (killed_run / "eval" / "best.json").exists()
    kept = {p.name: p.stat().st_ino for p in chunks.glob("chunk_*.json")}
    final = run_cli(["eval", str(killed_run), *over], cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert {name: (chunks / name).stat().st_ino for name in kept} == kept, "finished chunks were recomputed"
    _, ref_err = reference.communicate(timeout=240)
    assert reference.returncode == 0, ref_err[-3000:]
    a = io.read_json(ref_run / "eval" / "best.json")  # checksums verified
    b = io.read_json(killed_run / "eval" / "best.json")
    assert a["n"] == b["n"] == 500
    assert without_timing(a) == without_timing(b)
    print(f"eval kills: {plan}, chunks kept {done}")


def test_an_edited_result_chunk_fails_its_checksum_and_is_redone(tmp_path, base_run):
    """Result files carry a checksum checked on load: a tampered chunk is recomputed, not trusted."""
    from ltrobust.evaluation.runs import evaluate_run

    run = copy_run(base_run, tmp_path / "run")
    over = ["attacks=clean,pgd2", "eval.chunk_size=100", "eval.n_samples=200"]
    first = evaluate_run(run, over, device="cpu", progress=False)
    chunk = run / "eval" / "best_chunks" / "chunk_00000.json"
    raw = json.loads(chunk.read_text())
    raw["flags"]["worst_case"] = [True] * len(raw["flags"]["worst_case"])  # "every image robust"
    chunk.write_text(json.dumps(raw))
    again = evaluate_run(run, over, device="cpu", progress=False)
    assert without_timing(again) == without_timing(first)
    assert again.get("chunks_reused", 1) == 1  # the intact chunk was reused, the edited one recomputed
    io.read_json(chunk)  # rewritten with a valid checksum


# ------------------------------------------------------------------------------ static guarantees
FORBIDDEN = {
    r"\btorch\.save\(": "write checkpoints with io.save_checkpoint (atomic, checksummed)",
    r"\btorch\.load\(": "load checkpoints with io.load_checkpoint (weights_only=True, checksum)",
    r"weights_only\s*=\s*False": "never unpickle arbitrary objects",
    r"\byaml\.(load|full_load|unsafe_load|load_all|unsafe_load_all)\(": "use yaml.safe_load",
    r"\bpickle\.loads?\(": "pickles run code when loaded",
    r"allow_pickle\s*=\s*True": "pickles run code when loaded",
    r"(?<![.\w`])(eval|exec)\(": "never evaluate strings",
    r"\.write_(text|bytes)\(": "write through io.atomic_write_* (tmp + fsync + rename)",
    r"\bjson\.dump\(": "write results with io.write_json (atomic, checksummed)",
    r"\bopen\([^)]*['\"][wax]b?\+?['\"]": "write through io (atomic)",
}
ALLOWED = {  # (file relative to src/ltrobust, pattern): why
    ("io.py", r"\btorch\.save\("): "serialises into memory; the bytes go through atomic_write_bytes",
    ("io.py", r"\btorch\.load\("): "the one loader, weights_only=True",
    ("io.py", r"\bopen\([^)]*['\"][wax]b?\+?['\"]"): "append_jsonl: fsynced appends, a torn last line is skipped",
    ("experiments/sweep.py", r"\bopen\([^)]*['\"][wax]b?\+?['\"]"): "the log stream of a sweep's subprocess, not a result",
    ("training/cost.py", r"\.write_(text|bytes)\("): "/proc/self/clear_refs, a kernel control (resets the peak RSS), not a file",
}


def test_library_writes_and_loads_only_through_the_safe_paths():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, why in FORBIDDEN.items():
                if re.search(pattern, code) and (rel, pattern) not in ALLOWED:
                    bad.append(f"{rel}:{n}: {line.strip()}  ({why})")
    assert not bad, "\n".join(bad)


def test_docs_describe_the_guarantees():
    text = (ROOT / "docs" / "reliability.md").read_text()
    for needle in ("epoch", "chunk", "atomic", "checksum", "weights_only", "safe_load", "ENOSPC", "EROFS",
                   "sitecustomize", "not guaranteed"):
        assert needle in text, needle


# ------------------------------------------------------------------- integrity in-process (issue 15)
def test_data_location_comes_from_the_command_line_or_config_yaml_never_the_checkpoint(base_run, tmp_path, caplog):
    """A checkpoint's embedded config may point anywhere: eval / audit / analyze (all through load_run) take
    data_dir from the command line or the run's config.yaml, and log which."""
    import logging

    from ltrobust.evaluation.runs import load_run

    run = _with_config(base_run, tmp_path / "run")
    state = io.load_checkpoint(run / "checkpoints" / "best.pt")
    state["config"] = state["config"].replace("data_dir: null", f"data_dir: {tmp_path / 'elsewhere'}")
    assert "elsewhere" in state["config"]
    io.save_checkpoint(run / "checkpoints" / "best.pt", state)
    assert load_run(run).cfg.data.data_dir is None  # config.yaml's (none), not the checkpoint's
    with caplog.at_level(logging.INFO, logger="ltrobust.evaluation.runs"):
        assert load_run(run, [f"data_dir={tmp_path / 'given'}"]).cfg.data.data_dir == str(tmp_path / "given")
    assert any("from the command line" in r.getMessage() for r in caplog.records)
    loose = tmp_path / "loose.pt"  # a checkpoint outside a run folder: no config.yaml, so no data location
    shutil.copy(run / "checkpoints" / "best.pt", loose)
    assert load_run(loose).cfg.data.data_dir is None
    raw = (run / "config.yaml").read_text().replace("data_dir: null", f"data_dir: {tmp_path / 'from_yaml'}")
    (run / "config.yaml").write_text(raw)
    with caplog.at_level(logging.INFO, logger="ltrobust.evaluation.runs"):
        assert load_run(run).cfg.data.data_dir == str(tmp_path / "from_yaml")
    assert any(f"from {run / 'config.yaml'}" in r.getMessage() for r in caplog.records)


def test_other_test_data_recomputes_every_chunk(base_run, tmp_path):
    """The chunk fingerprint covers the data: other images (same labels, same indices) or another location
    are never served the old numbers."""
    from ltrobust.data import ArraySplit, build_data
    from ltrobust.evaluation.evaluator import Evaluation
    from ltrobust.evaluation.runs import load_run

    run = load_run(base_run)
    test = build_data(run.cfg.data).test
    other = ArraySplit(255 - test.images, test.labels)  # another test set with the same labels

    def evaluate(split, out, source=None):
        return Evaluation(run.deployed, split, run.class_counts, ["pgd2"], out, tag="t", n_samples=40, chunk_size=20,
                          progress=False, data_source=source).run()

    first = evaluate(test, tmp_path / "shared")
    again = evaluate(other, tmp_path / "shared")
    fresh = evaluate(other, tmp_path / "fresh")
    assert again["chunks_reused"] == 0
    assert without_timing(again["results"]) == without_timing(fresh["results"])
    assert again["settings"]["data"]["sha256"] != first["settings"]["data"]["sha256"]
    assert again["fingerprint"] != first["fingerprint"]
    moved = evaluate(other, tmp_path / "shared", {"format": "x", "path": str(tmp_path / "copy")})
    assert moved["chunks_reused"] == 0 and moved["settings"]["data"]["source"]["path"] == str(tmp_path / "copy")


def test_evaluations_with_other_settings_never_overwrite_each_other(base_run, tmp_path):
    from ltrobust.errors import ConfigError
    from ltrobust.evaluation.runs import evaluate_run, load_run

    run = copy_run(base_run, tmp_path / "run")
    over = ["eval.n_samples=20"]
    first = evaluate_run(run, ["attacks=clean,pgd2", *over], device="cpu", progress=False)
    stored = (run / "eval" / "best.json").read_bytes()
    with pytest.raises(ConfigError, match=r"other settings \(attacks clean,pgd2.*-> clean,fgsm.*eval\.tag=fgsm"):
        evaluate_run(run, ["attacks=fgsm", *over], device="cpu", progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(attacks .*eps 0\.03137.* -> .*eps 0\.01569"):
        evaluate_run(run, ["attacks=clean,pgd2", "eps=4/255", *over], device="cpu", progress=False)
    assert (run / "eval" / "best.json").read_bytes() == stored
    fgsm = evaluate_run(run, ["attacks=fgsm", "eval.tag=fgsm", *over], device="cpu", progress=False)
    assert fgsm["tag"] == "best-fgsm" and io.read_json(run / "eval" / "best.json")["attack_names"] == ["clean", "pgd2"]
    again = evaluate_run(run, ["attacks=clean,pgd2", *over], device="cpu", progress=False)  # same settings: fine
    assert without_timing(again["results"]) == without_timing(first["results"])
    # inside an evaluation a bare eval key means the evaluation's setting, not the training attack's
    cfg = load_run(run, ["eps=4/255", "norm=linf", "step_size=1/255"]).cfg
    assert (cfg.eval.eps, cfg.eval.step_size) == (4 / 255, 1 / 255) and cfg.attack.eps == 8 / 255


def test_extending_a_run_equals_a_straight_run_and_keeps_its_records_consistent(base_run, tmp_path):
    """train.epochs=3 on a finished 2-epoch run (step schedule, nothing that depends on the length) trains
    epoch 3 only and ends where a straight 3-epoch run ends; config.yaml and train_summary.json say 3."""
    import yaml

    from ltrobust.errors import ConfigError

    run = copy_run(base_run, tmp_path / "base")
    was = torch.are_deterministic_algorithms_enabled()
    try:
        extended = Trainer(resolve_config(TINY + [f"out={tmp_path}", "name=base", "epochs=3"])).fit()
        Trainer(resolve_config(TINY + [f"out={tmp_path}", "name=straight", "epochs=3"])).fit()
        with pytest.raises(ConfigError, match=r"already holds 3 trained epochs, more than train\.epochs=2"):
            Trainer(resolve_config(TINY + [f"out={tmp_path}", "name=base", "epochs=2"])).fit()
        with pytest.raises(ConfigError, match=r"loss ldam's DRW starts at drw_start=0\.8 of train\.epochs"):
            ldam = _with_config(base_run, tmp_path / "ldam", method={"loss": "ldam"})
            Trainer(resolve_config(TINY + [f"out={tmp_path}", f"name={ldam.name}", "epochs=3", "loss=ldam"])).fit()
    finally:
        torch.use_deterministic_algorithms(was)
    for which in ("last.pt", "best.pt"):
        assert_same_weights(tmp_path / "straight" / "checkpoints" / which, run / "checkpoints" / which)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3
    assert io.read_json(run / "train_summary.json")["epochs"] == extended["epochs"] == 3
    assert [r["epoch"] for r in io.read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]


def test_methods_refuse_options_they_would_ignore():
    from ltrobust.config import AttackConfig
    from ltrobust.errors import ConfigError
    from ltrobust.methods.awp import AWPOptions
    from ltrobust.registry import LOSSES, METHODS

    counts = [50, 20, 5]
    bsl = LOSSES.get("bsl")(counts)
    for name in ("trades", "natural"):
        for mode in ("inner", "both"):
            with pytest.raises(ConfigError, match="attack.loss_mode"):
                METHODS.get(name)(counts, AttackConfig(loss_mode=mode), bsl)
    with pytest.raises(ConfigError, match="attack.loss_mode"):  # awp over trades inherits the refusal
        METHODS.get("awp")(counts, AttackConfig(loss_mode="inner"), bsl, AWPOptions(base="trades"))
    with pytest.raises(ConfigError, match="attack.random_start=none would be ignored"):
        METHODS.get("fgsm_rs")(counts, AttackConfig(random_start=False), bsl)
    for bad in ({"gamma": float("nan")}, {"gamma": -0.5}, {"proxy_lr": 0.0}, {"beta": 3.0}):
        with pytest.raises(ConfigError):
            AWPOptions(**bad)
    AWPOptions(base="trades", beta=3.0)  # TRADES' beta is used with base=trades


def test_collapse_verdict_is_hand_computable():
    from ltrobust.training.trainer import collapse_verdict

    cfg = resolve_config(["loss=ldam"])
    rows = [{"epoch": e, "loss": loss, "val": {"clean_balanced": 10.0}} for e, loss in enumerate((205.0, 75.0))]
    v = collapse_verdict(rows, 10, cfg)
    assert v["collapsed"] and v["chance"] == 10.0 and v["best_val_clean_balanced"] == 10.0
    assert "loss=ldam scales the logits by s=30" in v["message"]
    rows[1]["val"]["clean_balanced"] = 12.6  # above 1.25 x chance: learning
    assert not collapse_verdict(rows, 10, cfg)["collapsed"]
    assert not collapse_verdict([{"epoch": 0, "loss": 1.0}], 10, cfg)["collapsed"]  # no validation: no verdict
    up = [{"epoch": e, "loss": loss, "val": {"clean_balanced": 1.0}} for e, loss in enumerate((4.0, 9.0))]
    assert "train.lr=0.1 is likely too high" in collapse_verdict(up, 100, resolve_config([]))["message"]


def test_a_collapsed_run_is_flagged_in_training_eval_and_report(tmp_path, caplog):
    """pgd_at loss=ldam (s=30) on a linear-head small CNN: validation sits at chance (issue 15's example)."""
    import logging

    from ltrobust.evaluation.evaluator import markdown_table
    from ltrobust.evaluation.runs import evaluate_run
    from ltrobust.report import build_report

    was = torch.are_deterministic_algorithms_enabled()
    try:
        with caplog.at_level(logging.WARNING, logger="ltrobust.training.trainer"):
            summary = Trainer(resolve_config(TINY + [f"out={tmp_path}", "name=ldam", "epochs=2", "loss=ldam",
                                                     "train.lr=0.2"])).fit()
    finally:
        torch.use_deterministic_algorithms(was)
    assert summary["collapse"]["collapsed"], summary["collapse"]
    assert any("training collapsed" in r.getMessage() and "loss=ldam" in r.getMessage() for r in caplog.records)
    assert io.read_json(tmp_path / "ldam" / "train_summary.json")["collapse"]["collapsed"]
    res = evaluate_run(tmp_path / "ldam", ["attacks=clean,pgd2", "eval.n_samples=20"], device="cpu", progress=False)
    assert res["collapse"]["collapsed"] and "COLLAPSED RUN" in markdown_table(res)
    out = build_report([str(tmp_path / "ldam")], out=str(tmp_path / "report"))
    assert "collapsed (validation at chance)" in out["markdown_table"]


# ------------------------------------------------------------------ round 3 in process (issue 29)
def test_robustbench_missing_names_the_install_that_works(monkeypatch):
    """Item 20: without RobustBench the message said `pip install 'ltrobust[robustbench]'` (ltrobust is not on
    PyPI), and with only torchattacks' incomplete robustbench folder it blamed pkg_resources. It names the
    packages (and the extra of the source folder); an installed RobustBench missing setuptools' pkg_resources is
    told to pin setuptools."""
    import importlib.metadata
    import sys

    from ltrobust.errors import ConfigError
    from ltrobust.models.foreign import robustbench_entry

    for mod in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import robustbench -> ModuleNotFoundError

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(ConfigError) as err:
        robustbench_entry("robustbench.cifar10.Linf.Standard")
    assert "RobustBench is not installed: pip install 'robustbench>=1.1' 'setuptools<81' (or, in the ltrobust " \
           "source folder, pip install -e '.[robustbench]')" in str(err.value)
    assert "ltrobust[" not in str(err.value)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.1.1")
    monkeypatch.setitem(sys.modules, "robustbench", None)
    monkeypatch.setitem(sys.modules, "robustbench.model_zoo", None)

    def no_pkg_resources(name, *args, **kwargs):
        if name.startswith("robustbench"):
            raise ModuleNotFoundError("No module named 'pkg_resources'", name="pkg_resources")
        return real_import(name, *args, **kwargs)

    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", no_pkg_resources)
    with pytest.raises(ConfigError, match=r"RobustBench 1\.1\.1 imports pkg_resources, which setuptools 81 removed: "
                                          r"pip install 'setuptools<81'"):
        robustbench_entry("robustbench.cifar10.Linf.Standard")


def test_install_hints_match_the_extras_of_pyproject():
    """The packages each message names are those of pyproject.toml's extras."""
    import tomllib

    from ltrobust.errors import EXTRAS

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {k: tuple(v) for k, v in extras.items() if k in EXTRAS} == EXTRAS
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *SRC.rglob("*.py")]
                     if p.name != "reliability.md")
    assert "ltrobust[" not in text.replace("pip install -e", ""), "ltrobust is not on PyPI: name the packages"


def test_normalisation_carried_by_the_weights_is_used_and_said_so_once(base_run, tmp_path, caplog):
    """Item 21: weights that carry normalize.mean / .std with a model.mean given warned `model.mean / model.std
    ignored` and then refused the ignored value (`mean has 3 values ...`). The file's values are used, the
    warning names them, and what they replace is not checked."""
    import logging

    from ltrobust.evaluation.weights import build_weights_model

    state = io.load_checkpoint(base_run / "checkpoints" / "best.pt")["model"]
    path = _save(state, tmp_path / "small.pt")
    spec = {"weights": str(path), "model": "smallcnn", "options": {"width": 4}, "mean": [0.5, 0.5, 0.5]}
    with caplog.at_level(logging.WARNING, logger="ltrobust.evaluation.weights"):
        model = build_weights_model(spec, num_classes=10, in_channels=1, image_size=8)
    (record,) = [r.getMessage() for r in caplog.records]
    mean = round(float(state["normalize.mean"].flatten()[0]), 4)
    assert record.startswith(f"model.mean ignored: {path} carries its own normalisation (mean [{mean}]")
    assert "which is used" in record and "missing" not in record
    assert torch.equal(model.normalize.mean, state["normalize.mean"])
    del state["normalize.std"]  # the file carries the mean only: the given std is used, and says nothing
    spec = {**spec, "mean": None, "std": [0.25]}
    model = build_weights_model({**spec, "weights": str(_save(state, tmp_path / "mean_only.pt"))}, 10, 1, 8)
    assert model.normalize.std.flatten().tolist() == [0.25]


def test_tensorboard_on_a_read_only_folder_warns_once_and_training_goes_on(tmp_path):
    """Item 16: TensorBoard logging to a read-only folder printed its writer thread's traceback and stopped the
    run; it is one warning and training finishes (metrics.jsonl keeps every number)."""
    pytest.importorskip("tensorboard", reason="train.logger=tensorboard needs the tensorboard extra")
    run = tmp_path / "tb"
    (run / "tensorboard").mkdir(parents=True)
    proc = run_cli(["train", *TINY, "epochs=1", f"out={tmp_path}", "name=tb", "train.logger=tensorboard"], tmp_path,
                   env=fault_env(tmp_path, run / "tensorboard", "EROFS"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception in thread" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "train.logger" in line or "tfevents" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING ltrobust.training.loggers: train.logger=tensorboard "
                                                         "is off for this run: OSError: [Errno 30]"), warnings
    assert "Training goes on" in warnings[0]
    assert [r["epoch"] for r in io.read_jsonl(run / "metrics.jsonl")] == [0]


def test_a_tracker_that_fails_mid_run_is_switched_off_with_one_warning(caplog):
    """The same guard for a failure after the start (a disk that fills up, a lost connection): the first error
    is one warning, later calls are skipped, the tracker is closed."""
    import logging

    from ltrobust.training.loggers import Guarded

    class Flaky:
        def __init__(self):
            self.calls, self.closed = 0, 0

        def log_scalars(self, step, scalars):
            self.calls += 1
            if step >= 1:
                raise OSError(28, "No space left on device")

        def close(self):
            self.closed += 1

    inner = Flaky()
    tracker = Guarded("flaky", inner)
    with caplog.at_level(logging.WARNING, logger="ltrobust.training.loggers"):
        for step in range(4):
            tracker.log_scalars(step, {"loss": 1.0})
        tracker.close()
    assert inner.calls == 2 and inner.closed == 1
    (record,) = caplog.records
    assert "train.logger=flaky stopped: OSError: [Errno 28] No space left on device. Training goes on" in record.message


def test_a_report_over_a_stored_nan_reference_warns_instead_of_failing(base_run, tmp_path, caplog):
    """Item 10: `reference:` values are checked when a preset or grid is loaded (the CLI table); a result stored
    before that check holds null where the NaN was, and the report left it to a TypeError: the report now leaves
    those paper numbers out with a warning naming the run."""
    import logging

    from ltrobust.config import check_reference
    from ltrobust.errors import ConfigError
    from ltrobust.report import build_report

    for bad in (float("nan"), float("inf"), -1.0, 101.0, None):
        with pytest.raises(ConfigError, match="is not a percentage"):
            check_reference([{"source": "x.txt", "table": "Table 1", "values": {"clean": bad}}])
    run = _evaluated(base_run, tmp_path / "legacy")
    result = io.read_json(run / "eval" / "best.json")
    result["config"]["reference"] = [{"source": "x.txt", "table": "Table 1", "values": {"clean": None, "pgd2": 30.0},
                                      "settings": {}}]
    io.write_json(run / "eval" / "best.json", result)
    with caplog.at_level(logging.WARNING, logger="ltrobust.report.collect"):
        out = build_report([str(run)], out=str(tmp_path / "report"))
    assert Path(out["index"]).is_file()
    assert any("its paper reference numbers are left out of the report: reference[0]: values.clean=None is not a "
               "percentage" in r.getMessage() for r in caplog.records)


def test_a_plugin_that_fails_halfway_leaves_no_entry_and_is_not_passed_on(tmp_path, monkeypatch):
    """Item 8: the first entry of a plug-in whose second registration clashes is rolled back (a retry would
    otherwise clash with its own half), and a plug-in that failed is not added to $LTROBUST_PLUGINS for the
    processes started from this one."""
    from ltrobust.errors import ConfigError
    from ltrobust.registry import MODELS, PLUGINS_ENV, load_plugins

    (tmp_path / "half_plugin_29.py").write_text(
        "from ltrobust.registry import MODELS\n\n@MODELS.register('half_plugin_net_29')\ndef a(**kw):\n    pass\n\n"
        "@MODELS.register('smallcnn')\ndef b(**kw):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV, "")
    for _ in range(2):  # the same error both times, not a clash with its own first half
        with pytest.raises(ConfigError, match=r"plugin 'half_plugin_29': model 'smallcnn' is registered twice: by "
                                              r"ltrobust\.models\.small\.smallcnn and by half_plugin_29\.b"):
            load_plugins(["half_plugin_29"])
        assert "half_plugin_net_29" not in MODELS and os.environ[PLUGINS_ENV] == ""
