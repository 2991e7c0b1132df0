"""Atomic, checksummed files: corrupt, truncated, malicious, disk full, read-only."""

from __future__ import annotations

import errno
import json
import os


import pytest
import torch

from ltrobust import io
from ltrobust.errors import CheckpointError


def test_checkpoint_roundtrip_and_header(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "name": "x", "list": [1, 2.5]}
    path = tmp_path / "c.pt"
    io.save_checkpoint(path, state)
    assert path.read_bytes().startswith(io.MAGIC)
    back = io.load_checkpoint(path)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["epoch"] == 3 and back["list"] == [1, 2.5]


def test_truncated_checkpoint_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "c.pt"
    io.save_checkpoint(path, {"w": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        io.load_checkpoint(path)


def test_flipped_byte_fails_the_checksum(tmp_path):
    path = tmp_path / "c.pt"
    io.save_checkpoint(path, {"w": torch.randn(100)})
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        io.load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/ltrobust_pwned",))


def test_malicious_pickle_does_not_run_code(tmp_path):
    marker = "/tmp/ltrobust_pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)  # plain torch file, no header
    with pytest.raises(CheckpointError, match="weights_only"):
        io.load_checkpoint(path)
    assert not os.path.exists(marker)
    # the same inside an ltrobust header (checksum valid) is refused too
    buf = path.read_bytes()
    import hashlib

    path.write_bytes(io.MAGIC + hashlib.sha256(buf).hexdigest().encode() + b"\n" + buf)
    with pytest.raises(CheckpointError):
        io.load_checkpoint(path)
    assert not os.path.exists(marker)


def test_plain_torch_state_dict_loads(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.ones(2)}}, path)
    assert torch.equal(io.load_checkpoint(path)["model"]["w"], torch.ones(2))


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        io.load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("err,msg", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, err, msg):
    path = tmp_path / "last.pt"
    io.save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:10])
            raise OSError(err, os.strerror(err))

    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: Failing(real_fdopen(fd, mode)))
    with pytest.raises(CheckpointError, match=msg):
        io.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_read_only_folder_gives_clear_error(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io.os, "open", refuse)
    with pytest.raises(CheckpointError, match="read-only.*out=DIR"):
        io.write_json(tmp_path / "r.json", {"a": 1})


def test_json_checksum_detects_edits_and_numbers_stay_numbers(tmp_path):
    path = tmp_path / "r.json"
    io.write_json(path, {"acc": torch.tensor(51.5), "per_class": [1.0, float("nan")], "n": 3})
    data = io.read_json(path)
    assert data["acc"] == 51.5 and data["per_class"] == [1.0, None] and data["n"] == 3
    raw = json.loads(path.read_text())
    raw["acc"] = 99.0
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        io.read_json(path)
    path.write_text('{"acc": 1')
    with pytest.raises(CheckpointError, match="truncated"):
        io.read_json(path)


def test_jsonl_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    io.append_jsonl(path, {"epoch": 0})
    with open(path, "a") as fh:
        fh.write('{"epoch": 1, "lo')
    assert io.read_jsonl(path) == [{"epoch": 0}]




def test_run_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    from ltrobust.errors import RunInUse

    lock = tmp_path / "run" / ".lock"
    with io.run_lock(lock, "training"):
        with pytest.raises(RunInUse, match=rf"{tmp_path / 'run'} is in use by another ltrobust process "
                                           rf"\(pid {os.getpid()}, training since .*\); wait for it"):
            with io.run_lock(lock, "training"):
                pass
    with io.run_lock(lock, "eval"):  # released on exit
        assert "eval since" in lock.read_text()


def test_run_lock_of_a_killed_process_is_released(tmp_path):
    import signal
    import subprocess
    import sys

    lock = tmp_path / ".lock"
    code = ("import os, signal; from ltrobust import io\n"
            f"with io.run_lock({str(lock)!r}, 'training'):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL and "training since" in lock.read_text()
    with io.run_lock(lock, "training"):  # no stale lock
        pass


def test_run_lock_on_a_read_only_folder_is_a_storage_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".lock"))

    monkeypatch.setattr(io.os, "open", refuse)
    with pytest.raises(CheckpointError, match=r"cannot write .*\.lock: the folder is on a read-only file system"):
        with io.run_lock(tmp_path / ".lock", "training"):
            pass


def test_extract_tar_is_atomic_and_replaces_the_target(tmp_path):
    import tarfile

    src = tmp_path / "src"
    (src / "train" / "cat").mkdir(parents=True)
    (src / "train" / "cat" / "0.txt").write_text("x")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "train", arcname="train")
    target = tmp_path / "out"
    (target / "stale").mkdir(parents=True)  # a previous, different copy
    (tmp_path / "out.partial").mkdir()  # left by a killed extraction
    assert io.extract_tar(archive, target) == target
    assert (target / "train" / "cat" / "0.txt").read_text() == "x"
    assert not (target / "stale").exists() and not (tmp_path / "out.partial").exists()


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after it)."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def test_written_files_get_the_permissions_of_the_umask(tmp_path, umask, mask):
    """Issue 29 item 13: every file ltrobust writes has the mode ``open()`` gives (0o666 less the umask), atomic
    writes included (``tempfile.mkstemp`` made them 0600, unreadable to a lab sharing a run folder)."""
    import numpy as np
    from PIL import Image

    from ltrobust.data.formats.base import decode_images

    umask(mask)
    expected = 0o666 & ~mask
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "a.png")
    io.save_checkpoint(tmp_path / "run" / "last.pt", {"epoch": 1})
    io.write_json(tmp_path / "run" / "eval" / "best.json", {"a": 1})
    io.atomic_write_text(tmp_path / "run" / "eval" / "best.md", "x")
    io.write_npz(tmp_path / "run" / "eval" / "s.npz", {"a": np.zeros(2)})
    io.append_jsonl(tmp_path / "run" / "metrics.jsonl", {"epoch": 0})
    with io.run_lock(tmp_path / "run" / ".lock", "training"):
        pass
    decode_images([tmp_path / "img" / "a.png"], "RGB", "c", [tmp_path / "cache"])
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "img"]
    assert len(files) == 7
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(expected)}, modes
    folders = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*")
               if p.is_dir() and p.name != "img"}
    assert set(folders.values()) == {oct(0o777 & ~mask)}, folders


def test_a_rewritten_file_keeps_its_mode(tmp_path, umask):
    """As ``open(path, "w")`` on an existing file: the user's chmod survives an atomic rewrite."""
    umask(0o022)
    path = tmp_path / "best.json"
    io.write_json(path, {"a": 1})
    os.chmod(path, 0o640)
    io.write_json(path, {"a": 2})
    assert path.stat().st_mode & 0o777 == 0o640 and io.read_json(path)["a"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]
