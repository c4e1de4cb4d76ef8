"""Datasets: scikit-learn's handwritten digits (the offline default) and ImageFolder via timm.

Both return PIL images and int targets with a settable ``transform``, so timm's transforms and
loaders apply to the digits exactly as to ImageNet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from .errors import DataError

_SPLIT_ALIASES = {"val": "validation", "validation": "validation", "train": "train", "test": "validation"}


class DigitsDataset(torch.utils.data.Dataset):
    """scikit-learn's 1,797 real 8x8 handwritten digits (10 classes), shipped with sklearn.

    The split is a seeded permutation: the first ``1 - val_fraction`` of it is ``train``, the
    rest ``validation``; the same seed always gives the same disjoint split. Grey levels 0..16
    become 0..255 RGB images; resizing to the model's input size is the transform's job.
    """

    def __init__(self, split: str = "train", seed: int = 0, val_fraction: float = 0.2,
                 transform: Optional[Callable] = None):
        from sklearn.datasets import load_digits

        if split not in _SPLIT_ALIASES:
            raise DataError(f"unknown split '{split}' for the digits dataset: use 'train' or 'val'")
        digits = load_digits()
        order = np.random.RandomState(seed).permutation(len(digits.images))
        n_train = int(round(len(order) * (1 - val_fraction)))
        self.indices = order[:n_train] if _SPLIT_ALIASES[split] == "train" else order[n_train:]
        self.images = (digits.images[self.indices] * (255.0 / 16.0)).round().astype(np.uint8)
        self.targets = digits.target[self.indices].tolist()
        self.classes = [str(c) for c in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def image_folder(data_dir: str | Path, split: str):
    """``data_dir/<split>`` as a timm ImageDataset (class sub-folders, ImageNet layout)."""
    root = Path(data_dir)
    folder = root / split
    if not folder.is_dir() and split in ("val", "validation"):
        folder = root / ("validation" if split == "val" else "val")
    if not folder.is_dir():
        raise DataError(
            f"data dir '{root / split}' does not exist: pass --data-dir pointing at a folder with "
            f"train/ and val/ class folders (ImageFolder layout), or use --dataset digits"
        )
    from timm.data import ImageDataset

    try:
        dataset = ImageDataset(str(folder))
    except Exception as e:  # timm raises RuntimeError/ValueError on folders without images
        raise DataError(f"no images found in '{folder}': {str(e).splitlines()[0]}") from None
    if len(dataset) == 0:
        raise DataError(f"no images found in '{folder}': expected class folders holding image files")
    return dataset


def create_dataset(name: str | None, data_dir: str | Path | None, split: str,
                   img_size: int | None = None, seed: int | None = None):
    """``name='digits'``: the digits split; otherwise the ImageFolder ``data_dir/split``.

    ``img_size`` and ``seed`` never change the data: resizing is the transform's job, and the
    digits split is fixed so that runs with different seeds validate on the same images.
    """
    if name == "digits":
        return DigitsDataset(split)
    if name:
        raise DataError(f"unknown dataset '{name}': use --dataset digits, or --data-dir with an ImageFolder")
    if not data_dir:
        raise DataError("no data given: pass --data-dir /path/to/imagenet (train/ and val/ folders) or --dataset digits")
    return image_folder(data_dir, split)


def num_classes_of(dataset) -> int:
    """Number of classes of a digits or timm ImageDataset."""
    if hasattr(dataset, "classes"):
        return len(dataset.classes)
    reader = getattr(dataset, "reader", None)
    if reader is not None and hasattr(reader, "class_to_idx"):
        return len(reader.class_to_idx)
    return len({int(t) for t in targets_of(dataset)})


def targets_of(dataset) -> list[int]:
    """Every sample's label, without decoding images."""
    if hasattr(dataset, "targets"):
        return list(dataset.targets)
    reader = getattr(dataset, "reader", None)
    if reader is not None and hasattr(reader, "samples"):
        return [int(t) for _, t in reader.samples]
    raise DataError(f"cannot read the labels of a {type(dataset).__name__}")
