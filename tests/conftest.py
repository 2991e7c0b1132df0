"""Shared test fixtures about data (keep this file small)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def cifar10_jpeg_dir() -> Path:
    """The shared CIFAR-10 JPEG image folder, extracted once into ``<project>/.data/cifar10`` (git-ignored).

    Skips (saying why) when ``../shared/data/cifar10-jpeg.tar.gz`` is absent. Decoded images are
    cached by the loader inside the extracted folder, so later sessions build in about a second.
    """
    if not SHARED_CIFAR10.is_file():
        pytest.skip(f"real-data check skipped: {SHARED_CIFAR10} is absent (the shared CIFAR-10 JPEG copy)")
    tag = hashlib.sha1(f"{SHARED_CIFAR10.stat().st_size}-{SHARED_CIFAR10.stat().st_mtime_ns}".encode()).hexdigest()
    target = ROOT / ".data" / "cifar10"
    marker = target / f".extracted-{tag[:12]}"
    if not marker.is_file():
        tmp = ROOT / ".data" / "cifar10.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if shutil.which("tar"):  # GNU tar is several times faster than tarfile on 60,000 small files
            subprocess.run(["tar", "-xzf", str(SHARED_CIFAR10), "-C", str(tmp)], check=True)
        else:
            with tarfile.open(SHARED_CIFAR10) as tar:
                tar.extractall(tmp, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        marker.touch()
    return target
