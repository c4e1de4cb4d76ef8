"""Datasets: the digits split is real, fixed and disjoint; ImageFolder errors are clear."""
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from snnet.data import DigitsDataset, create_dataset, num_classes_of, targets_of
from snnet.errors import DataError


def test_digits_split_is_disjoint_complete_and_fixed():
    train, val = DigitsDataset("train"), DigitsDataset("val")
    assert len(train) + len(val) == 1797
    assert not set(train.indices) & set(val.indices)
    assert np.array_equal(DigitsDataset("train").indices, train.indices)
    assert not np.array_equal(DigitsDataset("train", seed=1).indices, train.indices)
    assert num_classes_of(train) == 10


def test_digits_images_are_sklearns():
    ref = load_digits()
    ds = DigitsDataset("val")
    for i in (0, 7, 100):
        img, label = ds[i]
        pixels = np.asarray(img)[:, :, 0].astype(float)
        np.testing.assert_allclose(pixels, ref.images[ds.indices[i]] * 255 / 16, atol=0.5)
        assert label == ref.target[ds.indices[i]]


def write_folder(root, classes=("cat", "dog"), n=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / c / f"{i}.png")


def test_image_folder(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", n=2)
    train = create_dataset("", tmp_path, "train")
    val = create_dataset("", tmp_path, "validation")
    assert (len(train), len(val), num_classes_of(train)) == (6, 4, 2)
    assert sorted(targets_of(train)) == [0, 0, 0, 1, 1, 1]


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(DataError, match="does not exist: pass --data-dir"):
        create_dataset("", tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no images found"):
        create_dataset("", tmp_path, "train")
    with pytest.raises(DataError, match="no data given"):
        create_dataset("", None, "train")
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        create_dataset("cifar", None, "train")
