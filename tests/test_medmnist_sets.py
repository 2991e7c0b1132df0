"""The long-tailed 2D MedMNIST sets (OrganAMNIST, BloodMNIST, PathMNIST, ...): tiny npz files in the real layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltrobust.cli import main
from ltrobust.config import DataConfig
from ltrobust.data import SPECS, build_data
from ltrobust.data.medmnist_sets import MEDMNIST_SETS
from ltrobust.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, per_class: dict[str, list[int]], channels: int, size: int = 28) -> dict[str, np.ndarray]:
    """A ``<name>.npz`` as the medmnist package stores it: uint8 images (N, H, W) for greyscale sets or
    (N, H, W, 3), labels (N, 1)."""
    arrays = {}
    for k, (split, counts) in enumerate(per_class.items()):
        rng = np.random.RandomState(k)
        labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        shape = (len(labels), size, size) + ((channels,) if channels == 3 else ())
        arrays[f"{split}_images"] = rng.randint(0, 256, shape).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


ORGAN = {"train": [12, 9, 9, 10, 26, 25, 40, 26, 26, 20, 23], "val": [2] * 11, "test": [3] * 11}
BLOOD = {"train": [9, 22, 11, 20, 8, 10, 23, 16], "val": [2] * 8, "test": [3] * 8}


def test_registered_sets_and_their_metadata():
    for name in ("organamnist", "organcmnist", "organsmnist", "bloodmnist", "pathmnist", "octmnist", "tissuemnist"):
        spec = SPECS[name]
        names, channels, flip, _ = MEDMNIST_SETS[name]
        assert spec.natural and spec.num_classes == len(names) and spec.channels == channels
        assert spec.mean == (0.5,) * channels and spec.image_size == 28
    assert not SPECS["organamnist"].flip  # left / right organs: a flip would swap the labels
    assert SPECS["bloodmnist"].flip and SPECS["pathmnist"].num_classes == 9


def test_greyscale_organamnist_used_as_is_with_its_own_splits(tmp_path):
    arrays = _write(tmp_path / "organamnist.npz", ORGAN, channels=1)
    d = build_data(DataConfig(dataset="organamnist", data_dir=str(tmp_path)))
    assert d.num_classes == 11 and d.channels == 1 and d.class_counts == ORGAN["train"]
    assert d.class_names[1] == "femur-left" and d.class_names[10] == "spleen"
    assert torch.equal(d.train.images, torch.from_numpy(arrays["train_images"])[:, None])  # (N, 1, 28, 28)
    assert d.train.labels.tolist() == arrays["train_labels"][:, 0].tolist()
    assert d.manifest["val_from"] == "own_val_split" and len(d.val) == 22 and len(d.test) == 33
    assert d.groups["head"] == [4, 6, 7] and d.groups["tail"] == [1, 2, 3]  # by training count (ties: lower index)
    assert not d.flip and d.manifest["source"]["format"] == "medmnist-npz"


def test_rgb_bloodmnist_and_the_larger_files(tmp_path):
    _write(tmp_path / "bloodmnist.npz", BLOOD, channels=3)
    d = build_data(DataConfig(dataset="bloodmnist", data_dir=str(tmp_path)))
    assert d.channels == 3 and d.class_counts == BLOOD["train"] and d.class_names[7] == "platelet"
    _write(tmp_path / "bloodmnist_64.npz", BLOOD, channels=3, size=64)
    big = build_data(DataConfig(dataset="bloodmnist", data_dir=str(tmp_path), image_size=64))
    assert big.train.images.shape[-1] == 64 and big.manifest["source"]["path"].endswith("bloodmnist_64.npz")


def test_errors_name_the_file_of_the_set(tmp_path):
    with pytest.raises(DataError, match="pathmnist.npz"):
        build_data(DataConfig(dataset="pathmnist", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="organamnist.npz"):
        build_data(DataConfig(dataset="organamnist"))
    _write(tmp_path / "organamnist.npz", {"train": [2] * 5, "val": [1] * 5, "test": [1] * 5}, channels=1)
    with pytest.raises(DataError, match="no image of class 5"):  # a file of another set (5 classes)
        build_data(DataConfig(dataset="organamnist", data_dir=str(tmp_path)))


def test_data_info_and_a_tiny_training_run_from_the_cli(tmp_path, capsys):
    _write(tmp_path / "organamnist.npz", ORGAN, channels=1)
    assert main(["data", "info", "organamnist", f"data_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "11 classes, 1x28x28 images" in out and "kidney-right" in out and "own val split" in out
    assert main(["train", "dataset=organamnist", f"data_dir={tmp_path}", "model=smallcnn", "model.width=4",
                 "epochs=1", "train.batch_size=64", "attack.steps=1", "train.val_samples=22", "train.val_attack_steps=1",
                 "train.progress=false", f"out={tmp_path}", "name=organ"]) == 0
    assert (tmp_path / "organ" / "checkpoints" / "best.pt").is_file()
