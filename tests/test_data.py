"""Datasets and loaders: the digits split is real, fixed and disjoint; ImageFolder errors are clear."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from snnet.data.datasets import create_dataset, create_loader_for, load_digits_split, num_classes_of, sample_images
from snnet.errors import DataError


def test_digits_split_is_disjoint_complete_stratified_and_fixed():
    train, val = load_digits_split("train"), load_digits_split("validation")
    assert (len(train), len(val)) == (1437, 360)
    assert not set(train.indices) & set(val.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(1797))
    assert np.array_equal(load_digits_split("train").indices, train.indices)
    assert np.array_equal(load_digits_split("val").indices, val.indices)
    assert not np.array_equal(load_digits_split("train", seed=1).indices, train.indices)
    # stratified: every class keeps its 20% share of the validation split, to within one image
    all_counts = np.bincount(load_digits().target)
    assert np.all(np.abs(np.bincount(val.targets) - 0.2 * all_counts) <= 1)
    assert num_classes_of(train) == 10 and train.classes == [str(c) for c in range(10)]


def test_digits_images_are_sklearns():
    ref = load_digits()
    ds = load_digits_split("validation")
    for i in (0, 7, 100, 359):
        img, label = ds[i]
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (8, 8)
        pixels = np.asarray(img)
        assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey replicated to RGB
        np.testing.assert_array_equal(pixels[..., 0], np.round(ref.images[ds.indices[i]] * 255 / 16))
        assert label == ds.targets[i] == ref.target[ds.indices[i]]
    assert np.asarray(ds[0][0]).max() > 200  # real strokes, not an empty image


def test_create_dataset_digits_uses_one_fixed_split():
    val = create_dataset("digits", None, "val", img_size=32, seed=7)
    assert np.array_equal(val.indices, load_digits_split("validation").indices)
    with pytest.raises(DataError, match="unknown split 'tset'.*use 'train' or 'validation'"):
        create_dataset("digits", None, "tset")


def write_folder(root, classes=("cat", "dog"), n=3, ext="png"):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(root / c / f"{i}.{ext}")


def test_image_folder(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", n=2, ext="jpg")
    train = create_dataset("", tmp_path, "train")
    val = create_dataset("", tmp_path, "validation")  # 'validation' finds timm's val/ folder
    assert (len(train), len(val), num_classes_of(train), num_classes_of(val)) == (6, 4, 2, 2)
    img, _ = val[0]
    assert img.mode == "RGB" and img.size == (12, 10)
    labels = {train.filename(i, absolute=True): train[i][1] for i in range(len(train))}
    assert sorted(labels.values()) == [0, 0, 0, 1, 1, 1]
    assert all(label == (1 if "/dog/" in path else 0) for path, label in labels.items())


def test_missing_empty_and_flat_folders(tmp_path):
    with pytest.raises(
        DataError, match=rf"data dir '{tmp_path}/val' does not exist: pass --data-dir .* --dataset digits$"
    ):
        create_dataset("", tmp_path, "validation")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images found in .*: put each class's images in its own sub-folder"):
        create_dataset("", tmp_path, "train")
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "loose.png")
    with pytest.raises(DataError, match="holds images outside class folders"):
        create_dataset("", tmp_path, "train")
    with pytest.raises(DataError, match="no data given"):
        create_dataset("", None, "train")
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        create_dataset("cifar", None, "train")


def test_loaders_give_normalised_cpu_batches(tmp_path):
    train = load_digits_split("train")
    loader = create_loader_for(train, img_size=32, batch_size=16, is_training=True, workers=0, seed=3)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.shape == (16,) and y.dtype == torch.int64
    assert x.min() < 0 < x.max()  # ImageNet-normalised
    assert len(loader) == len(train) // 16  # training drops the last partial batch
    assert "HorizontalFlip" not in repr(train.transform)  # a mirrored digit is not a digit

    again = create_loader_for(
        load_digits_split("train"), img_size=32, batch_size=16, is_training=True, workers=0, seed=3
    )
    assert torch.equal(next(iter(again))[1], y)  # the seed fixes the shuffling

    val = create_loader_for(load_digits_split("val"), img_size=24, batch_size=100, is_training=False, workers=0)
    shapes = [x.shape for x, _ in val]
    assert shapes[0] == (100, 3, 24, 24) and sum(s[0] for s in shapes) == 360  # nothing dropped

    write_folder(tmp_path / "train")
    folder = create_dataset("", tmp_path, "train")
    x, y = next(iter(create_loader_for(folder, img_size=16, batch_size=4, is_training=True, workers=0)))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1}
    assert "HorizontalFlip" in repr(folder.transform)


def test_sample_images_is_deterministic_and_unaugmented():
    from timm.data import create_transform

    train = load_digits_split("train")
    a = sample_images(train, 5, img_size=32, seed=0)
    assert a.shape == (5, 3, 32, 32)
    assert torch.equal(a, sample_images(train, 5, img_size=32, seed=0))
    assert not torch.equal(a, sample_images(train, 5, img_size=32, seed=1))
    assert train.transform is None  # the dataset is left as it was
    first = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[0].item()
    expected = create_transform(32, is_training=False, crop_pct=1.0)(train[first][0])
    assert torch.equal(a[0], expected)
    with pytest.raises(
        DataError,
        match=r"^--ls-init-images 1438 is larger than the training set \(1437 images\): "
        r"use at most 1437$",
    ):
        sample_images(train, 1438, img_size=32)
    with pytest.raises(DataError, match="use at least 1"):
        sample_images(train, 0, img_size=32)


def test_distributed_loaders_use_timms_samplers(tmp_path):
    import torch.distributed as dist
    from timm.data.distributed_sampler import OrderedDistributedSampler

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        train = create_loader_for(
            load_digits_split("train"), img_size=16, batch_size=8, is_training=True, distributed=True, workers=0, seed=5
        )
        val = create_loader_for(
            load_digits_split("val"), img_size=16, batch_size=8, is_training=False, distributed=True, workers=0
        )
    finally:
        dist.destroy_process_group()
    assert type(train.sampler) is torch.utils.data.DistributedSampler and train.sampler.seed == 5
    assert type(val.sampler) is OrderedDistributedSampler
    assert next(iter(train))[0].shape == (8, 3, 16, 16)


def test_num_classes_smaller_than_the_labels_is_refused():
    from snnet.data.datasets import load_digits_split, resolve_num_classes

    ds = load_digits_split("validation")
    assert resolve_num_classes(None, ds) == 10 and resolve_num_classes(12, ds) == 12
    with pytest.raises(DataError, match="--num-classes 5 is smaller than the dataset's 10 classes"):
        resolve_num_classes(5, ds)
