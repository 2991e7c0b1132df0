"""Atomic, checksummed files: checkpoints and result JSON never end half-written.

Every file ltrobust writes goes to a temporary file in the same folder, is flushed and fsynced, and
then renamed over the target (``os.replace`` is atomic on POSIX), so a crash, a SIGKILL or a full disk
leaves either the previous file or the new one, never a mixture.

Checkpoints are one file: a short header (magic, format version, SHA-256 of the payload) followed by
the bytes ``torch.save`` wrote. Loading verifies the checksum and unpickles with
``torch.load(weights_only=True)``, so a checkpoint downloaded from someone else cannot run code. A plain
``torch.save`` file (someone else's weights) loads too, also with ``weights_only=True``, without the
checksum. Result JSON carries a ``checksum`` field over its canonical content, checked on load.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import pickle
import re
import secrets
import stat
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import CheckpointError, RunInUse

try:  # POSIX advisory locks; elsewhere run_lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAGIC = b"LTROBUST-CKPT v1\n"


#: errno values of a storage that refuses writes, with the words the error message uses
STORAGE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EROFS: "the folder is on a read-only file system",
                  errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                  errno.EDQUOT: "the disk quota is exceeded",
                  errno.ENOTDIR: "a part of that path is a file, not a folder"}


def _write_failure(path: str | Path, exc: OSError) -> CheckpointError:
    reason = STORAGE_ERRORS.get(exc.errno or 0, str(exc))
    return CheckpointError(f"cannot write {path}: {reason}. The previous file (if any) is intact; free space "
                           f"or choose a writable output folder (out=DIR).")


def storage_error(exc: OSError) -> CheckpointError | None:
    """The :class:`CheckpointError` for an ``OSError`` of a full or read-only disk (None for other errors).

    The CLI uses it as a safety net for writes that do not go through this module (e.g. ``mkdir``).
    """
    if exc.errno not in STORAGE_ERRORS:
        return None
    return _write_failure(exc.filename if exc.filename is not None else "a file", exc)


def temp_file_beside(path: str | Path) -> tuple[int, str]:
    """Create a new hidden temporary file ``.NAME.<random>.tmp`` in ``path``'s folder, to be renamed over
    ``path``; returns ``(fd, temporary path)``, the file open for writing.

    Its permissions are those ``open(path, "w")`` would give: the mode of ``path`` when it exists, else
    ``0o666`` less the process umask (``tempfile.mkstemp`` would make every file ``0600``, unreadable to
    the rest of a lab that shares a run folder). Raises ``OSError`` when the folder refuses it.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask, as for open()
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            return fd, str(tmp)
        with _suppress():  # an existing file keeps its mode, as when open() rewrites it
            os.fchmod(fd, mode)
        return fd, str(tmp)
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    The file gets the permissions ``open(path, "w")`` would give it (:func:`temp_file_beside`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_beside(path)
    except OSError as exc:
        raise _write_failure(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with _suppress():
            os.unlink(tmp)
        raise _write_failure(path, exc) from None
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    with _suppress():  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------------------ JSON
def _jsonable(obj: Any) -> Any:
    """Numbers as numbers: tensors / numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def extract_tar(archive: str | Path, target: str | Path) -> Path:
    """Extract a ``.tar.gz`` into ``target`` atomically: into ``target.partial`` first, then renamed.

    A killed extraction leaves only the ``.partial`` folder (removed by the next call), never a
    half-filled ``target``; an existing ``target`` is replaced. GNU tar is used when present (several times
    faster than :mod:`tarfile` on tens of thousands of small files), else :mod:`tarfile` with the "data"
    filter (no absolute paths, links out of the folder or device files).
    """
    import shutil
    import subprocess
    import tarfile

    archive, target = Path(archive), Path(target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if shutil.which("tar"):
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(tmp)], check=True)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def write_json(path: str | Path, obj: dict[str, Any], checksum: bool = True) -> None:
    """Write a result dict as JSON atomically, with a ``checksum`` over its canonical content."""
    data = _jsonable({k: v for k, v in obj.items() if k != "checksum"})
    if checksum:
        data["checksum"] = hashlib.sha256(_canonical(data)).hexdigest()
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read a JSON written by :func:`write_json`, verifying its checksum when it has one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"result file {path} does not exist.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"result file {path} is unreadable or truncated ({exc}); delete it and re-run "
                              f"the command that wrote it.") from None
    if verify and isinstance(data, dict) and "checksum" in data:
        expected = data.pop("checksum")
        if hashlib.sha256(_canonical(data)).hexdigest() != expected:
            raise CheckpointError(f"result file {path} fails its checksum (edited or corrupt); delete it and "
                                  f"re-run the command that wrote it.")
    return data


def write_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    """Write NumPy arrays as a compressed ``.npz`` atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_npz(path: str | Path) -> dict[str, Any]:
    """Every array of an ``.npz`` written by :func:`write_npz` (no pickled objects)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"array file {path} is missing or unreadable ({exc}); re-run the command that "
                              "wrote it.") from None


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync (metrics logs; a torn last line is ignored on read)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(_jsonable(record)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise _write_failure(path, exc) from None


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file atomically with ``rows`` (used to drop rows of work that is redone)."""
    atomic_write_text(path, "".join(json.dumps(_jsonable(r)) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    return rows


# ------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts) as one checksummed file, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, MAGIC + digest + b"\n" + payload)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", refused_advice: str | None = None,
                    expected: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``), verifying the checksum of ltrobust files.

    Raises :class:`CheckpointError` naming the file and the fix when it is missing, truncated,
    corrupt or would need arbitrary code to unpickle (``refused_advice``: the fix to give then, for files
    that ltrobust did not write; they load without the missing-checksum warning). ``expected`` describes
    what a file ltrobust did not write should be (e.g. weights saved with ``torch.save``): a file that
    ``torch.load`` cannot read is then named for what it is (a plain pickle, an empty file, ...) beside it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run folder or a .pt file.") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass a run folder or a .pt file. "
                              f"{_OTHER_CHECKPOINT}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if raw.startswith(MAGIC):
        header_end = len(MAGIC) + 64
        digest, payload = raw[len(MAGIC):header_end], raw[header_end + 1:]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt (checksum mismatch): it changed after "
                                  f"it was written. {_OTHER_CHECKPOINT}")
    else:
        payload = raw
        log.log(logging.DEBUG if refused_advice else logging.WARNING,
                "%s has no ltrobust checksum header; loading it with weights_only=True", path)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then reads or refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if refused:  # weights_only refused a global: the file asks to build Python objects
            raise CheckpointError(f"checkpoint {path} was refused: it asks to build Python objects "
                                  f"({refused.group(1)}), which could run code, and ltrobust loads checkpoints with "
                                  f"weights_only=True (tensors, numbers, strings, lists and dicts only). "
                                  + (refused_advice or "Use a checkpoint written by ltrobust; for other weights, "
                                     "save model.state_dict() and run `ltrobust eval weights=PATH model=ARCH ...`.")) from None
        if expected is not None and not raw.startswith(MAGIC):
            raise CheckpointError(f"{path} cannot be read: it is {file_kind(payload)}, but {expected}.") from None
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {reason}). "
                              f"{_OTHER_CHECKPOINT}") from None


#: the first pickle of a legacy (non-zip) torch.save file: the magic number 0x1950a86a20f9469cfc6c
_LEGACY_TORCH = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def file_kind(data: bytes) -> str:
    """What a file that ``torch.load`` could not read looks like, from its first bytes (for messages)."""
    if not data:
        return "an empty file"
    if data.startswith(b"PK\x03\x04"):
        return "a zip archive that torch.load cannot read (a torch.save file cut short, or another zip file)"
    if data.startswith(_LEGACY_TORCH):
        return "a torch.save file in the legacy format, cut short or damaged"
    if data[:1] == b"\x80":
        return "a plain Python pickle (pickle.dump), not a torch.save file"
    if len(data) > 10 and data[8:10] == b'{"':
        return "a safetensors file (load it with safetensors.torch.load_file and pass the model to ltrobust.evaluate)"
    return f"not a torch.save file (it starts with {data[:12]!r})"


_OTHER_CHECKPOINT = ("Use the run's other checkpoint (checkpoint=best or checkpoint=last), or delete this file and "
                     "re-run the command that wrote it (train resumes from last.pt, or starts over without it).")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def run_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the lock file ``path`` while the block runs (one writer per run folder).

    Two processes training into the same run folder (or evaluating the same tag) would interleave their
    checkpoints, metrics and chunks; the second one fails at once with :class:`RunInUse` naming the
    holder. The lock is an advisory ``flock`` on an open file, so the kernel releases it when the holder
    exits in any way (SIGKILL included): a killed run never leaves a stale lock behind. The lock file
    stays (it holds the last holder's pid and start time, for the message). No-op where ``fcntl`` is
    missing (Windows).
    """
    path = Path(path)
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # umask applies, as for open()
    except OSError as exc:
        err = storage_error(exc)
        if err is not None:
            raise _write_failure(path, exc) from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
            raise RunInUse(f"{path.parent} is in use by another ltrobust process ({holder}); wait for it to "
                           f"finish, or choose another name=... / out=... (eval: another eval.tag=...).") from None
        try:  # who holds it, for the message of the next one (informational: a full disk does not stop the run)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, {what} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
