"""Datasets and loaders: the digits split is real, fixed and disjoint; ImageFolder errors are clear."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from snnet.data.datasets import create_dataset, load_digits_split, num_classes_of, sample_images
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


def _train_loaders(train, val, extra=(), world=1, rank=0):
    """train.py's loaders (snnet.data.loaders.build_loaders) for the tiny DeiT pair's arguments."""
    from conftest import TINY_DEIT_ARGS

    from snnet.cli import build_train_parser
    from snnet.data.loaders import build_loaders, data_config_for
    from snnet.distributed import DistInfo
    from snnet.run_config import build_snnet
    from snnet.train.main import resolve_args

    info = DistInfo(rank=rank, world_size=world)
    cfg = resolve_args(build_train_parser().parse_args(TINY_DEIT_ARGS + ["--seed", "3", *extra]), info)
    net = build_snnet(cfg, num_classes=10)
    return build_loaders(train, val, cfg, info, data_config_for(net, train))


def test_loaders_give_normalised_cpu_batches(tmp_path):
    train = load_digits_split("train")
    sampler, loader, prep, val_loader, val_prep = _train_loaders(train, load_digits_split("val"), ["-b", "16"])
    sampler.set_epoch(0)
    x, y = prep(*next(iter(loader)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.shape == (16,) and y.dtype == torch.int64
    assert x.min() < 0 < x.max()  # normalised
    assert len(loader) == len(train) // 16  # training drops the last partial batch
    assert "HorizontalFlip" not in repr(train.transform)  # a mirrored digit is not a digit

    again = _train_loaders(load_digits_split("train"), load_digits_split("val"), ["-b", "16"])
    again[0].set_epoch(0)
    assert torch.equal(next(iter(again[1]))[1], y)  # the seed fixes the shuffling

    _, _, _, val_loader, _ = _train_loaders(train, load_digits_split("val"), ["-b", "16", "-vb", "100"])
    shapes = [x.shape for x, _ in val_loader]
    assert shapes[0] == (100, 3, 32, 32) and sum(s[0] for s in shapes) == 360  # nothing dropped

    write_folder(tmp_path / "train")
    folder = create_dataset("", tmp_path, "train")
    sampler, loader, prep, _, _ = _train_loaders(folder, load_digits_split("val"), ["-b", "4"])
    sampler.set_epoch(0)
    x, y = prep(*next(iter(loader)))
    assert x.shape == (4, 3, 32, 32) and set(y.tolist()) <= {0, 1}
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


def test_two_processes_share_out_the_data_once():
    """Per rank, train.py's loaders: training shards that together are one epoch (and the first
    global batch of one process with the double batch), and validation shards that cover the set once."""
    ranks = [_train_loaders(load_digits_split("train"), load_digits_split("val"), ["-b", "8"], 2, r) for r in (0, 1)]
    one = _train_loaders(load_digits_split("train"), load_digits_split("val"), ["-b", "16"])
    for loaders in ranks + [one]:
        loaders[0].set_epoch(0)
    shards = [list(r[0]) for r in ranks]
    # 1437 images padded to 1438 (DistributedSampler's rule): one image is on both ranks
    assert len(shards[0]) == len(shards[1]) == 719
    assert {i for _, i in shards[0] + shards[1]} == {i for _, i in one[0]} == set(range(1437))
    assert sorted(i for _, i in shards[0][:8] + shards[1][:8]) == sorted(i for _, i in list(one[0])[:16])
    val = [sum(len(y) for _, y in r[3]) for r in ranks]
    assert sum(val) == 360 and abs(val[0] - val[1]) <= 1  # unpadded shards


def test_num_classes_smaller_than_the_labels_is_refused():
    from snnet.data.datasets import load_digits_split, resolve_num_classes

    ds = load_digits_split("validation")
    assert resolve_num_classes(None, ds) == 10 and resolve_num_classes(12, ds) == 12
    with pytest.raises(DataError, match="--num-classes 5 is smaller than the dataset's 10 classes"):
        resolve_num_classes(5, ds)
