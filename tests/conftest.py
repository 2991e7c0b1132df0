"""Shared test fixtures: one-thread torch for tiny models, the shared CIFAR-10 copy, a killed training run, and a
user's plain model on digits-LT's test split (the evaluation tests)."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on the shared 2-core CPU: one intra-op thread is several times faster than two that
    wait for each other. A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def ltrobust_cache_dir(tmp_path_factory) -> Path:
    """ltrobust's cache folder (decoded image folders) for the whole session: a temporary folder, never the
    user's ``~/.cache/ltrobust`` (``$LTROBUST_CACHE_DIR``; a test may point it elsewhere with monkeypatch)."""
    import os

    folder = tmp_path_factory.mktemp("ltrobust-cache")
    before = os.environ.get("LTROBUST_CACHE_DIR")
    os.environ["LTROBUST_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("LTROBUST_CACHE_DIR", None)
    else:
        os.environ["LTROBUST_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def cifar10_jpeg_dir() -> Path:
    """The shared CIFAR-10 JPEG image folder, extracted once into ``<project>/.data/cifar10`` (git-ignored).

    Skips (saying why) when ``../shared/data/cifar10-jpeg.tar.gz`` is absent. Decoded images are cached in
    the session's ltrobust cache folder (:func:`ltrobust_cache_dir`), so every session decodes them once.
    """
    if not SHARED_CIFAR10.is_file():
        pytest.skip(f"real-data check skipped: {SHARED_CIFAR10} is absent (the shared CIFAR-10 JPEG copy)")
    tag = hashlib.sha1(f"{SHARED_CIFAR10.stat().st_size}-{SHARED_CIFAR10.stat().st_mtime_ns}".encode()).hexdigest()
    target = ROOT / ".data" / "cifar10"
    marker = target / f".extracted-{tag[:12]}"
    if not marker.is_file():
        from ltrobust.io import extract_tar

        extract_tar(SHARED_CIFAR10, target)
        marker.touch()
    return target


class Killed(BaseException):
    """Stands in for a SIGKILL in in-process resume tests (a BaseException: no handler in ltrobust catches it)."""


@pytest.fixture
def die_after_checkpoint(monkeypatch):
    """``with die_after_checkpoint(epoch): Trainer(cfg).fit()``: the run dies right after ``last.pt`` of
    ``epoch`` is on disk, as a SIGKILL there would (the block expects it and fails if the run survives).
    ``run_name`` limits it to ``<run_name>/checkpoints/last.pt`` (not a self-distillation teacher's).
    The real ``io.save_checkpoint`` is back when the block ends."""
    from ltrobust import io

    @contextmanager
    def arm(epoch: int, run_name: str | None = None):
        real_save = io.save_checkpoint

        def save_then_die(path, state):
            real_save(path, state)
            p = Path(path)
            if p.name == "last.pt" and state["epoch"] == epoch and run_name in (None, p.parent.parent.name):
                raise Killed

        with monkeypatch.context() as m:
            m.setattr(io, "save_checkpoint", save_then_die)
            with pytest.raises(Killed):
                yield

    return arm


@pytest.fixture(scope="module")
def digits():
    """digits-LT's test split (500 images, 50 per class) as float (x, y), and its training counts."""
    from ltrobust.config import DataConfig
    from ltrobust.data import build_data

    d = build_data(DataConfig(dataset="digits-lt"))
    return d.test.images.float() / 255, d.test.labels, d.class_counts


@pytest.fixture(scope="module")
def mlp(digits):
    """A user's plain nn.Sequential (not an LTModel) trained a little on half the test images, so that accuracies
    are far from 0 and 100."""
    x, y, _ = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[::2]), y[::2]).backward()
        opt.step()
    return model.eval()
