"""Each on-disk format, written in its real layout by the test and read through the real readers."""

from __future__ import annotations

import logging
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ltrobust.config import DataConfig
from ltrobust.data import DeviceLoader, build_data, class_counts, select_lt_indices
from ltrobust.data.formats import base as formats_base
from ltrobust.errors import ConfigError, DataError


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as the official CIFAR
    pickles (made with Python 2) store their keys and array buffers: ``pickle.load(f, encoding="bytes")``
    gives the keys b'data', b'labels', and torchvision's ``encoding="latin1"`` gives 'data', 'labels'."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump_py2(obj, path):
    with open(path, "wb") as fh:
        _Py2Pickler(fh, protocol=2).dump(obj)


def _images(n, h, w, seed, channels=3):
    return np.random.RandomState(seed).randint(0, 256, (n, h, w, channels)).astype(np.uint8)


# ------------------------------------------------------------------------------------------ CIFAR
def _write_cifar10(root, per_class=6, test_per_class=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    images = _images(len(labels), 32, 32, 1)  # (N, H, W, C)
    rows = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)  # R plane, G plane, B plane
    for b, part in enumerate(np.array_split(np.arange(len(labels)), 5), 1):
        _dump_py2({b"batch_label": b"training batch %d of 5" % b, b"labels": labels[part].tolist(),
                   b"data": rows[part], b"filenames": [b"img_%d.png" % i for i in part]}, folder / f"data_batch_{b}")
    test_labels = np.tile(np.arange(10), test_per_class)
    test_images = _images(len(test_labels), 32, 32, 2)
    _dump_py2({b"batch_label": b"testing batch 1 of 1", b"labels": test_labels.tolist(),
               b"data": test_images.transpose(0, 3, 1, 2).reshape(-1, 3072), b"filenames": []}, folder / "test_batch")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump_py2({b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}, folder / "batches.meta")
    return labels, images, test_labels, test_images


def test_cifar10_pickle_layout(tmp_path, caplog):
    labels, images, test_labels, test_images = _write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        assert {b"data", b"labels"} <= set(pickle.load(fh, encoding="bytes"))  # the real files' keys
    cfg = DataConfig(dataset="cifar10-lt", data_dir=str(tmp_path), imbalance=3, val_per_class=1)
    with caplog.at_level(logging.WARNING, logger="ltrobust.data"):
        d = build_data(cfg)
    counts = class_counts("exp", 6, 10, 3)
    assert d.class_counts == counts and d.class_names[0] == "airplane" and d.class_names[9] == "truck"
    chosen = select_lt_indices(labels, counts, 0)
    assert torch.equal(d.train.images, torch.from_numpy(images[chosen]).permute(0, 3, 1, 2))
    assert d.train.labels.tolist() == labels[chosen].tolist()
    assert torch.equal(d.test.images, torch.from_numpy(test_images).permute(0, 3, 1, 2))
    assert d.test.labels.tolist() == test_labels.tolist()
    assert d.manifest["source"]["format"] == "cifar-pickle"
    assert any("differ from the official" in r.getMessage() for r in caplog.records)
    # data_dir may also name the cifar-10-batches-py folder itself
    again = build_data(DataConfig(dataset="cifar10-lt", data_dir=str(tmp_path / "cifar-10-batches-py"),
                                  imbalance=3, val_per_class=1))
    assert again.manifest["indices_sha256"] == d.manifest["indices_sha256"]


def test_cifar100_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    labels = np.random.RandomState(0).permutation(np.repeat(np.arange(100), 3))
    images = _images(300, 32, 32, 3)
    _dump_py2({b"filenames": [], b"batch_label": b"training batch 1 of 1", b"fine_labels": labels.tolist(),
               b"coarse_labels": (labels // 5).tolist(), b"data": images.transpose(0, 3, 1, 2).reshape(300, -1)},
              folder / "train")
    _dump_py2({b"filenames": [], b"batch_label": b"testing batch 1 of 1", b"fine_labels": list(range(100)),
               b"coarse_labels": [c // 5 for c in range(100)], b"data": _images(100, 32, 32, 4).transpose(0, 3, 1, 2)
               .reshape(100, -1)}, folder / "test")
    _dump_py2({b"fine_label_names": [b"class%03d" % c for c in range(100)],
               b"coarse_label_names": [b"super%02d" % c for c in range(20)]}, folder / "meta")
    d = build_data(DataConfig(dataset="cifar100-lt", data_dir=str(tmp_path), imbalance=3, val_per_class=0))
    assert d.class_counts == class_counts("exp", 3, 100, 3) and d.num_classes == 100
    chosen = select_lt_indices(labels, d.class_counts, 0)
    assert torch.equal(d.train.images, torch.from_numpy(images[chosen]).permute(0, 3, 1, 2))
    assert d.class_names[7] == "class007" and len(d.test) == 100


def test_cifar_missing_folder_names_folder_layout_and_download(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        build_data(DataConfig(dataset="cifar10-lt", data_dir=str(missing)))
    msg = str(err.value)
    assert str(missing) in msg and "cifar-10-batches-py" in msg and "data_batch_1" in msg
    assert "data.download=true" in msg and "train/<class>" in msg
    with pytest.raises(DataError, match="data_dir"):
        build_data(DataConfig(dataset="cifar100-lt"))
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(DataError, match="incomplete"):
        build_data(DataConfig(dataset="cifar100-lt", data_dir=str(tmp_path)))


# ---------------------------------------------------------------------------------- image folder
def _write_image_folder(root, classes, per_class, test_per_class, size=32, ext=".png"):
    rng = np.random.RandomState(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                arr = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{i:04d}{ext}")


def test_image_folder_reads_sorts_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LTROBUST_CACHE_DIR", str(tmp_path / "cache"))
    classes = ["truck", "airplane", "cat", "bird", "deer", "dog", "frog", "horse", "ship", "automobile"]
    _write_image_folder(tmp_path / "data", classes, per_class=4, test_per_class=2)
    tmp_path = tmp_path / "data"
    cfg = DataConfig(dataset="cifar10-lt", data_dir=str(tmp_path), imbalance=2, val_per_class=0)
    d = build_data(cfg)
    assert d.class_names == sorted(classes) and d.class_counts == class_counts("exp", 4, 10, 2)
    first = np.array(Image.open(tmp_path / "train" / "airplane" / "0000.png"))  # png: lossless
    pos = d.manifest["indices"]["train"]["0"].index(0)
    assert torch.equal(d.train.images[pos], torch.from_numpy(first).permute(2, 0, 1))
    assert list((tmp_path.parent / "cache").glob("data-*/imagefolder-train-*.npz"))  # ltrobust's cache folder
    assert not list(tmp_path.rglob("*.npz"))  # nothing written into the user's data

    def no_decoding(*args, **kw):
        raise AssertionError("the second build must read the cache")

    monkeypatch.setattr(formats_base, "decode_image", no_decoding)
    again = build_data(cfg)
    assert torch.equal(again.train.images, d.train.images) and torch.equal(again.test.images, d.test.images)


def test_image_folder_unreadable_or_odd_image_names_the_file(tmp_path):
    _write_image_folder(tmp_path, [f"c{k}" for k in range(10)], per_class=2, test_per_class=1)
    bad = tmp_path / "train" / "c3" / "0001.png"
    bad.write_bytes(b"this is not an image")
    cfg = DataConfig(dataset="cifar10-lt", data_dir=str(tmp_path), val_per_class=0)
    with pytest.raises(DataError, match=str(bad)):
        build_data(cfg)
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(bad)
    with pytest.raises(DataError, match=str(bad)):
        build_data(cfg)


def test_image_folder_with_wrong_number_of_classes(tmp_path):
    _write_image_folder(tmp_path, ["a", "b", "c"], per_class=2, test_per_class=1)
    with pytest.raises(DataError, match="10 classes"):
        build_data(DataConfig(dataset="cifar10-lt", data_dir=str(tmp_path)))


# ------------------------------------------------------------------------------------ Tiny-ImageNet
def test_tinyimagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = [f"n{k:08d}" for k in range(200)][::-1]  # wnids.txt is not sorted
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {w[-3:]}, other\n" for w in wnids))
    rng = np.random.RandomState(0)
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(2):
            mode_arr = rng.randint(0, 256, (64, 64)) if w == "n00000005" and i == 0 else rng.randint(0, 256, (64, 64, 3))
            Image.fromarray(mode_arr.astype(np.uint8)).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
    lines = []
    for k, w in enumerate(sorted(wnids)):
        Image.fromarray(rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)).save(root / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines[::-1]) + "\n")
    d = build_data(DataConfig(dataset="tinyimagenet-lt", data_dir=str(tmp_path), imbalance=2, val_per_class=0))
    assert d.num_classes == 200 and d.image_size == 64 and d.channels == 3  # greyscale JPEG -> RGB
    assert d.class_counts == class_counts("exp", 2, 200, 2)
    assert d.class_names[0] == "thing 000" and d.manifest["source"]["wnids"][5] == "n00000005"
    assert len(d.test) == 200 and d.test.labels.tolist() == list(range(200))[::-1]
    with pytest.raises(DataError, match="val_annotations.txt"):
        (root / "val" / "val_annotations.txt").unlink()
        build_data(DataConfig(dataset="tinyimagenet-lt", data_dir=str(root)))


# ------------------------------------------------------------------------------------- ImageNet-LT
@pytest.fixture(scope="module")
def imagenet_lt_root(tmp_path_factory):
    """1000 classes: train/<wnid>/ images (3 for classes 0 and 1, else 1); val and test lists point at
    a few shared files (labels come from the lists), to keep the file count small."""
    tmp_path = tmp_path_factory.mktemp("imagenet_lt")
    rng = np.random.RandomState(0)
    lists = {"train": [], "val": [], "test": []}
    for split in ("val", "test"):
        (tmp_path / split).mkdir()
        for i in range(8):
            Image.fromarray(rng.randint(0, 256, (40 + i, 30 + 2 * i, 3)).astype(np.uint8)).save(
                tmp_path / split / f"ILSVRC2012_{split}_{i}.JPEG")
    for c in range(1000):
        w = f"n{c:08d}"
        (tmp_path / "train" / w).mkdir(parents=True)
        for i in range(3 if c < 2 else 1):
            rel = f"train/{w}/{w}_{i}.JPEG"
            Image.fromarray(rng.randint(0, 256, (40 + c % 7, 30 + c % 5, 3)).astype(np.uint8)).save(tmp_path / rel)
            lists["train"].append(f"{rel} {c}")
        lists["val"].append(f"val/ILSVRC2012_val_{c % 8}.JPEG {c}")
        for i in range(2 if c % 100 == 0 else 1):
            lists["test"].append(f"test/ILSVRC2012_test_{(c + i) % 8}.JPEG {c}")
    (tmp_path / "ImageNet_LT").mkdir()
    for split, lines in lists.items():
        (tmp_path / "ImageNet_LT" / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_imagenet_lt_lists_are_used_as_is_and_streamed(imagenet_lt_root):
    cfg = DataConfig(dataset="imagenet-lt", data_dir=str(imagenet_lt_root), image_size=32)
    d = build_data(cfg)
    assert d.class_counts == [3, 3] + [1] * 998 and len(d.val) == 1000 and len(d.test) == 1010
    assert d.manifest["profile"] == "natural" and d.class_names[1] == "n00000001"
    d.train.num_workers = 0
    a = DeviceLoader(d.train, 16, shuffle=True, augment="crop_flip", seed=0)
    b = DeviceLoader(d.train, 16, shuffle=True, augment="crop_flip", seed=0)
    (xa, ya), (xb, yb) = next(iter(a)), next(iter(b))
    assert xa.shape == (16, 3, 32, 32) and xa.dtype == torch.float32 and 0 <= xa.min() and xa.max() <= 1
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    d.train.num_workers = 2  # worker processes decode the same batches as the main process
    (xw, yw), = [batch for _, batch in zip(range(1), DeviceLoader(d.train, 16, shuffle=True, augment="crop_flip", seed=0))]
    assert torch.equal(xw, xa) and torch.equal(yw, ya)
    d.test.num_workers = 0
    batches = list(DeviceLoader(d.test, 256, pad_last=True))
    assert len(batches) == 4 and batches[-1][0].shape == (256, 3, 32, 32) and int(batches[-1][2].sum()) == 1010 - 768
    x, y = d.test.get_batch(torch.tensor([0, 5]))  # random access for the evaluator, eval transform
    assert torch.equal(x, batches[0][0][[0, 5]]) and y.tolist() == [0, 4]  # class 0 has two test images
    with pytest.raises(ConfigError, match="naturally long-tailed"):
        build_data(DataConfig(dataset="imagenet-lt", data_dir=str(imagenet_lt_root), profile="step"))


def test_imagenet_lt_missing_files(tmp_path):
    (tmp_path / "ImageNet_LT_train.txt").write_text("train/n0/a.JPEG 0\n")
    with pytest.raises(DataError, match="ImageNet_LT_train.txt"):
        build_data(DataConfig(dataset="imagenet-lt", data_dir=str(tmp_path)))  # listed image is missing
    (tmp_path / "train" / "n0").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "n0" / "a.JPEG")
    with pytest.raises(DataError, match="ImageNet_LT_val.txt"):
        build_data(DataConfig(dataset="imagenet-lt", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="does not exist"):
        build_data(DataConfig(dataset="imagenet-lt", data_dir=str(tmp_path / "missing")))


# -------------------------------------------------------------------------------------- DermaMNIST
def _write_dermamnist(path, size=28):
    counts = {"train": [22, 35, 76, 8, 77, 469, 9], "val": [3, 5, 11, 2, 11, 67, 2], "test": [6, 10, 22, 2, 22, 134, 3]}
    arrays = {}
    for k, (split, per_class) in enumerate(counts.items()):
        labels = np.random.RandomState(k).permutation(np.repeat(np.arange(7), per_class))
        arrays[f"{split}_images"] = _images(len(labels), size, size, k)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)  # (N, 1) as MedMNIST stores them
    np.savez(path, **arrays)
    return arrays


def test_dermamnist_npz_used_as_is_with_its_own_val(tmp_path):
    arrays = _write_dermamnist(tmp_path / "dermamnist.npz")
    d = build_data(DataConfig(dataset="dermamnist", data_dir=str(tmp_path)))
    assert d.class_counts == [22, 35, 76, 8, 77, 469, 9] and d.num_classes == 7
    assert torch.equal(d.train.images, torch.from_numpy(arrays["train_images"]).permute(0, 3, 1, 2))
    assert d.train.labels.tolist() == arrays["train_labels"][:, 0].tolist()
    assert len(d.val) == 101 and d.manifest["val_from"] == "own_val_split" and len(d.test) == 199
    assert d.groups["head"] == [4, 5] and d.groups["tail"] == [3, 6]  # by count, not index
    assert d.class_names[5] == "melanocytic nevi"
    resized = build_data(DataConfig(dataset="dermamnist", data_dir=str(tmp_path), image_size=32))
    assert resized.train.images.shape == (696, 3, 32, 32) and resized.image_size == 32
    _write_dermamnist(tmp_path / "dermamnist_64.npz", size=64)
    assert build_data(DataConfig(dataset="dermamnist", data_dir=str(tmp_path), image_size=64)).manifest["source"][
        "path"].endswith("dermamnist_64.npz")
    with pytest.raises(DataError, match="dermamnist.npz"):
        build_data(DataConfig(dataset="dermamnist", data_dir=str(tmp_path / "empty")))


# ------------------------------------------------------------------- deep images, decompression bombs
def _png(path, width, height, rows, bit_depth, colour_type):
    """A PNG written chunk by chunk (IHDR, one zlib IDAT of filter-0 scanlines, IEND), as any encoder does."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" + row) for row in rows) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_16bit_png_and_float_tiff_are_scaled_by_their_real_range(tmp_path):
    """Issue 29 item 7: a 16-bit grey PNG (0..65535) and a float TIFF (0..1) were converted by clipping to 0..255
    (almost every pixel white, or black); they decode scaled by their range, as the 8-bit image they hold."""
    from ltrobust.data.formats.base import decode_image
    from ltrobust.data.stream import decode_stream_image

    levels = np.arange(64, dtype=np.float64).reshape(8, 8) * (255 / 63)
    want = np.rint(levels).astype(np.uint8)
    grey16 = np.rint(levels * 257).astype(np.uint16)  # v / 65535 == levels / 255
    _png(tmp_path / "grey16.png", 8, 8, [r.astype(">u2").tobytes() for r in grey16], 16, 0)
    Image.fromarray((levels / 255).astype(np.float32), "F").save(tmp_path / "float.tif")
    Image.fromarray(grey16).save(tmp_path / "grey16.tif")
    for name in ("grey16.png", "float.tif", "grey16.tif"):
        assert np.array_equal(decode_image(tmp_path / name, "L")[..., 0], want), name
        assert np.array_equal(decode_image(tmp_path / name, "RGB"), np.repeat(want[..., None], 3, axis=2)), name
    rgb16 = np.stack([grey16, grey16[::-1], np.full_like(grey16, 65535)], axis=-1)  # PIL reduces it to 8 bits
    _png(tmp_path / "rgb16.png", 8, 8, [r.astype(">u2").tobytes() for r in rgb16], 16, 2)
    assert np.abs(decode_image(tmp_path / "rgb16.png", "RGB").astype(int)
                  - np.stack([want, want[::-1], np.full_like(want, 255)], axis=-1)).max() <= 1
    streamed = decode_stream_image(str(tmp_path / "grey16.png"), 8, train=False)  # ImageNet-LT's decoder too
    assert streamed.shape == (3, 8, 8) and int(streamed.max()) > 200


@pytest.mark.parametrize("kind, match", [
    ("float outside [0, 1]", r"floating-point pixels in \[0, 2\]; ltrobust reads float images as values in \[0, 1\]"),
    ("float NaN", r"NaN or infinite pixels"),
    ("32-bit integer", r"32-bit integer pixels \(PIL mode I\), whose range ltrobust cannot tell: save it as an 8- or "
                       r"16-bit PNG"),
])
def test_images_without_a_known_range_are_refused(tmp_path, kind, match):
    from ltrobust.data.formats.base import decode_image

    path = tmp_path / "x.tif"
    if kind == "float outside [0, 1]":
        Image.fromarray(np.linspace(0, 2, 16, dtype=np.float32).reshape(4, 4), "F").save(path)
    elif kind == "float NaN":
        Image.fromarray(np.full((4, 4), np.nan, np.float32), "F").save(path)
    else:
        Image.fromarray(np.arange(16, dtype=np.int32).reshape(4, 4) * 100000).save(path)
    with pytest.raises(DataError, match=str(path) + ".*" + match):
        decode_image(path, "RGB")


def bomb_png(path, side):
    """A decompression bomb: a 1-bit PNG of side x side black pixels, a few kB on disk."""
    return _png(path, side, side, [bytes((side + 7) // 8)] * side, 1, 0)


@pytest.mark.parametrize("side", [9500, 14000], ids=["over PIL's limit (a warning in PIL)", "over twice the limit"])
def test_a_decompression_bomb_is_refused_with_a_clear_error(tmp_path, side, recwarn):
    """Issue 29 item 9: PIL's DecompressionBombError escaped as a traceback (and over the limit PIL only warned,
    then decoded gigabytes); both are a DataError naming the file and PIL's limit, with no warning printed."""
    from ltrobust.data.formats.base import decode_image

    path = bomb_png(tmp_path / "bomb.png", side)
    assert path.stat().st_size < 50_000 and side * side > Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match=r"bomb\.png was refused as a possible decompression bomb: Image size "
                                        rf"\({side * side} pixels\).*PIL\.Image\.MAX_IMAGE_PIXELS"):
        decode_image(path, "RGB")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
