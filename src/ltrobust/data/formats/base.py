"""What every on-disk format reader returns, and the cached image decoder they share.

A reader is a function ``read(cfg: DataConfig) -> RawData``. Images are uint8 arrays (N, H, W, C) in
dataset order (the order the selection shuffles); streamed formats (ImageNet-LT) give file paths.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import DataError
from ...io import temp_file_beside

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
CACHE_VERSION = 1


@dataclass
class RawSplit:
    """One split as read from disk: labels and either decoded images or image paths."""

    labels: np.ndarray  #: int64 (N,)
    images: np.ndarray | None = None  #: uint8 (N, H, W, C)
    paths: list[str] | None = None  #: absolute image paths (streamed formats)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.images) if self.images is not None else len(self.paths or [])
        if n != len(self.labels):
            raise DataError(f"{n} images but {len(self.labels)} labels: the data set files are inconsistent.")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RawData:
    """Every split of a data set, as read from disk."""

    train: RawSplit
    test: RawSplit
    class_names: list[str]
    val: RawSplit | None = None  #: the data set's own validation split, if it has one
    source: dict = field(default_factory=dict)  #: {"format": ..., "path": ...} for the manifest


def require_dir(path: str | os.PathLike | None, dataset: str, layout: str, how: str) -> Path:
    """``Path(path)`` if it is a folder, else a :class:`DataError` naming the folder and layout."""
    if path is None:
        raise DataError(f"{dataset} needs data_dir=PATH, the folder holding\n{layout}\n{how}")
    p = Path(path).expanduser()
    if not p.is_dir():
        what = "is a file, not a folder" if p.exists() else "does not exist"
        raise DataError(f"{dataset}: data folder {p} {what}. Expected layout:\n{layout}\n{how}")
    return p


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (ImageFolder's order). An image name that is a
    broken symbolic link is an error, not a silently smaller class."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    broken = [p for p in files if p.is_symlink() and not p.exists()]
    if broken:
        raise DataError(f"image file {broken[0]} is a broken symbolic link (to {os.readlink(broken[0])}): restore "
                        "its target, or delete the link (and the cache) and build again.")
    return sorted((p for p in files if p.is_file()), key=lambda p: p.name)


#: PIL modes of 16-bit grey images (PNG, TIFF): values 0..65535
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_OPEN_LOCK = threading.Lock()


def open_image(path: str | os.PathLike, mode: str) -> Any:
    """Open and decode one image file as a PIL image of ``mode`` (``RGB`` or ``L``), 8 bits per channel.

    Deeper images are scaled by their real range, never clipped: 16-bit grey (``I;16``) by 65535 (PIL
    reduces 16-bit colour PNGs to 8 bits itself), floating-point grey (``F``, e.g. a float TIFF) holding values
    in [0, 1] by 1. A float image outside [0, 1] (or with NaN), a 32-bit integer image (range unknown) and an
    image over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) are refused.

    Raises:
        DataError: naming the file, what is wrong and the fix.
    """
    from PIL import Image, UnidentifiedImageError

    fix = "Replace or delete the file (and its cache) and build again."
    try:
        # PIL checks the pixel count in open(), from the header: over MAX_IMAGE_PIXELS it only warns (the
        # decode would then take gigabytes), over twice that it raises; both are refused here. The filter is
        # process-wide, so it is set under a lock and only around the header read.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        reason = str(exc).rstrip(".")
        raise DataError(f"image file {path} was refused as a possible decompression bomb: {reason} (PIL's limit, "
                        f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}). If it is a real image, replace it "
                        f"with a downscaled copy; else delete it (and its cache) and build again.") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}. {fix}") from None
    try:
        with im:
            im.load()
            if im.mode in _MODES_16BIT or (im.mode == "I" and im.format == "PNG"):
                arr = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
                im = Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L")
            elif im.mode == "I":
                raise DataError(f"image file {path} holds 32-bit integer pixels (PIL mode I), whose range ltrobust "
                                "cannot tell: save it as an 8- or 16-bit PNG.")
            elif im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                if not np.isfinite(arr).all():
                    raise DataError(f"image file {path} holds NaN or infinite pixels: replace it with a finite image "
                                    "(floating-point pixels in [0, 1], or an 8- or 16-bit PNG).")
                lo, hi = float(arr.min()), float(arr.max())
                if lo < 0 or hi > 1:
                    raise DataError(f"image file {path} holds floating-point pixels in [{lo:.4g}, {hi:.4g}]; ltrobust "
                                    "reads float images as values in [0, 1]: rescale it to [0, 1], or save it as an "
                                    "8- or 16-bit PNG.")
                im = Image.fromarray(np.rint(arr * 255.0).astype(np.uint8), "L")
            return im.convert(mode)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}. {fix}") from None


def decode_image(path: str | os.PathLike, mode: str, size: int | None = None) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C) in PIL ``mode`` (RGB or L; :func:`open_image`); with ``size``,
    resized so its shorter side is ``size`` (bicubic, antialiased) and centre-cropped to ``size`` x ``size``."""
    from PIL import Image

    im = open_image(path, mode)
    try:
        if size:
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}. Replace or delete the file "
                        "(and its cache) and build again.") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_images(paths: Sequence[Path], mode: str, cache_name: str, cache_dirs: Sequence[Path],
                  root: Path | None = None, size: int | None = None) -> np.ndarray:
    """Decode image files once into uint8 (N, H, W, C); later calls load an ``.npz`` cache.

    The cache key covers every path (relative to ``root``, so a relative or absolute ``data_dir``
    finds the same cache), size and modification time: editing, adding or removing a file rebuilds
    it. The cache is written to the first writable folder of ``cache_dirs`` (:func:`cache_dirs_for`:
    ltrobust's own cache folder, never the data folder). All images must share
    one size (the file with a different size is named otherwise) unless ``size`` resizes them
    (:func:`decode_image`; give it a ``cache_name`` of its own).
    """
    key = _listing_key(paths, mode, root)
    for folder in cache_dirs:
        f = Path(folder) / f"{cache_name}-{key[:16]}.npz"
        if f.is_file():
            try:
                with np.load(f) as z:
                    if str(z["key"]) == key:
                        log.debug("loaded decoded images from cache %s", f)
                        return z["images"]
            except (OSError, ValueError, KeyError):
                log.warning("ignoring unreadable image cache %s", f)
    log.info("decoding %d images (%s); cached for the next build", len(paths), cache_name)
    images = None
    for i, p in enumerate(paths):
        arr = decode_image(p, mode, size)
        if images is None:
            images = np.empty((len(paths),) + arr.shape, dtype=np.uint8)
        elif arr.shape != images.shape[1:]:
            raise DataError(f"image file {p} is {arr.shape[1]}x{arr.shape[0]} but {paths[0]} is "
                            f"{images.shape[2]}x{images.shape[1]}: every image of a split must have one size.")
        images[i] = arr
    if images is None:
        raise DataError(f"no image files to decode for {cache_name}.")
    _write_cache(images, key, cache_name, cache_dirs)
    return images


def _listing_key(paths: Sequence[Path], mode: str, root: Path | None) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{mode}|".encode())
    prefix = str(root) + os.sep if root is not None else ""
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            raise DataError(f"cannot read image file {p}: {exc}") from None
        name = str(p)
        name = name[len(prefix):] if prefix and name.startswith(prefix) else name
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _write_cache(images: np.ndarray, key: str, cache_name: str, cache_dirs: Sequence[Path]) -> None:
    """Write atomically (tmp + rename) to the first writable folder; drop older caches of the same name."""
    for folder in cache_dirs:
        folder = Path(folder)
        tmp = None
        target = folder / f"{cache_name}-{key[:16]}.npz"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = temp_file_beside(target)  # the umask's permissions, as open() gives
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, images=images, key=np.array(key))
            os.replace(tmp, target)
            for old in folder.glob(f"{cache_name}-*.npz"):
                if old != target:
                    old.unlink(missing_ok=True)
            return
        except OSError as exc:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            log.debug("cannot write image cache in %s: %s", folder, exc)
    log.warning("could not write the decoded-image cache in any of %s; the next build decodes again",
                [str(f) for f in cache_dirs])


#: the environment variable naming ltrobust's cache folder (``ltrobust --cache-dir DIR`` sets it)
CACHE_ENV = "LTROBUST_CACHE_DIR"


def cache_dir() -> Path:
    """ltrobust's own cache folder: ``$LTROBUST_CACHE_DIR`` (``ltrobust --cache-dir DIR`` sets it), else the
    platform's user cache folder (``platformdirs.user_cache_dir("ltrobust")``: ``~/.cache/ltrobust`` on Linux,
    ``~/Library/Caches/ltrobust`` on macOS, ``%LOCALAPPDATA%\\ltrobust\\Cache`` on Windows)."""
    given = os.environ.get(CACHE_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ltrobust", appauthor=False))


def cache_dirs_for(root: Path) -> list[Path]:
    """Where the decoded-image caches of the data folder ``root`` go: ``<cache_dir()>/<name>-<hash of its
    path>``, never inside the user's data folder (which may be read-only, shared or under version control)."""
    root = Path(root).resolve()
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return [cache_dir() / f"{root.name}-{tag}"]
