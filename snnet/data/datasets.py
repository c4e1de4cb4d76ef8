"""Datasets: scikit-learn's handwritten digits (the offline default), ImageFolder, and timm's
named datasets (``torch/``, ``hfds/``, ``wds/``: :mod:`snnet.data.sources`).

All yield ``(PIL RGB image, int target)`` and carry a settable ``transform``, so timm's
transforms and loaders (``timm.data.create_transform`` / ``create_loader``) apply to the digits
exactly as they apply to ImageNet. The loaders train.py and eval.py use are :mod:`snnet.data.loaders`.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import DataError
from .sources import DataOptions, _class_map, check_folder_options, open_timm_dataset
from .streams import ShardStream, first_images

_VAL_SPLITS = ("val", "validation")


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, 8, 8) images (grey 0..16 scaled to 0..255) and int targets."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images.flags.writeable = False  # shared by every split through the cache
    return images, digits.target.astype(np.int64)


class DigitsDataset(torch.utils.data.Dataset):
    """Some of scikit-learn's 8x8 handwritten digits, as PIL RGB images and int targets.

    Args:
        indices: which of the 1,797 digits (positions in ``sklearn.datasets.load_digits()``).
        transform: applied to each PIL image; timm's ``create_loader`` sets it.
    """

    def __init__(self, indices: Sequence[int], transform: Optional[Callable] = None):
        images, targets = _digits()
        self.classes = [str(c) for c in range(10)]
        self.indices = np.asarray(indices, dtype=np.int64)
        self.images = images[self.indices]
        self.targets: list[int] = targets[self.indices].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        # Grey replicated to 3 channels: the anchors are RGB ImageNet models.
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def load_digits_split(split: str, *, seed: int = 0, val_fraction: float = 0.2) -> DigitsDataset:
    """The ``'train'`` or ``'validation'`` (alias ``'val'``) part of the digits.

    The split is stratified (every class keeps its share in both parts) and fixed by ``seed``:
    the same seed always gives the same two disjoint parts, which together hold all 1,797 digits
    (1,437 train and 360 validation at the default ``val_fraction``).
    """
    from sklearn.model_selection import train_test_split

    if split != "train" and split not in _VAL_SPLITS:
        raise DataError(f"unknown split '{split}' for the digits dataset: use 'train' or 'validation'")
    _, targets = _digits()
    train, val = train_test_split(np.arange(len(targets)), test_size=val_fraction, random_state=seed, stratify=targets)
    return DigitsDataset(train if split == "train" else val)


def _image_folder(data_dir: str | Path, split: str, opts: DataOptions):
    """``data_dir/<split>`` (class sub-folders of images) as a timm ``ImageDataset``."""
    from timm.data import ImageDataset

    root = Path(data_dir)
    names = _VAL_SPLITS if split in _VAL_SPLITS else (split,)
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if folder is None:
        raise DataError(
            f"data dir '{root / names[0]}' does not exist: pass --data-dir pointing at a folder with "
            f"train/ and val/ (ImageFolder layout) or use --dataset digits"
        )
    try:
        dataset = ImageDataset(str(folder), class_map=_class_map(opts), input_img_mode=opts.input_img_mode)
    except RuntimeError as e:  # timm's reader refuses a folder without images
        raise DataError(
            f"no images found in '{folder}' ({str(e).splitlines()[0]}): put each class's images in "
            f"its own sub-folder, e.g. {folder}/<class>/0001.jpg"
        ) from None
    if "" in dataset.reader.class_to_idx:
        # timm files images lying directly in the split folder under a class named ''.
        raise DataError(
            f"'{folder}' holds images outside class folders: put each class's images in its own "
            f"sub-folder, e.g. {folder}/<class>/0001.jpg"
        )
    return dataset


def create_dataset(
    name: str | None,
    data_dir: str | Path | None,
    split: str,
    img_size: int | None = None,
    seed: int | None = None,
    opts: DataOptions | Any = None,
    training: bool = False,
):
    """``name='digits'``: that split of the digits; a timm name (``torch/``, ``hfds/``, ``wds/``):
    timm's factory (:mod:`snnet.data.sources`); empty ``name``: the ImageFolder ``data_dir/split``.

    ``opts`` are timm's dataset options (class map, image mode, columns, sample counts), or a
    run config holding them;
    ``training`` says the split is trained on (a stream then takes ``--train-num-samples``).
    ``img_size`` and ``seed`` never change the data. Resizing is the transform's job, and the
    digits split is always that of seed 0, so that runs with different training seeds are
    validated on the same images.
    """
    opts = opts if isinstance(opts, DataOptions) else DataOptions.from_args(opts or object())
    if name and name != "digits":
        return open_timm_dataset(name, None if data_dir is None else str(data_dir), split, opts, training)
    check_folder_options(opts)
    if name == "digits":
        if data_dir:
            raise DataError(
                f"--data-dir {data_dir} has no effect: --dataset digits is scikit-learn's embedded set; drop one"
            )
        if opts.class_map or opts.input_img_mode != "RGB":
            raise DataError("--class-map/--input-img-mode have no effect on --dataset digits (RGB, classes 0..9)")
        return load_digits_split(split)
    if not data_dir:
        raise DataError(
            "no data given: pass --data-dir /path/to/imagenet (train/ and val/ folders) or --dataset digits"
        )
    return _image_folder(data_dir, split, opts)


def num_classes_of(dataset) -> int:
    """Number of classes of a digits split or a timm ``ImageDataset`` folder."""
    if getattr(dataset, "classes", None):
        return len(dataset.classes)
    reader = getattr(dataset, "reader", None)
    if reader is not None and hasattr(reader, "class_to_idx"):
        return len(reader.class_to_idx)
    raise DataError(
        f"cannot tell the class count of a {type(dataset).__name__} (WebDataset shards without class names): "
        f"pass --num-classes or --class-map"
    )


def resolve_num_classes(requested: Optional[int], dataset) -> int:
    """``--num-classes`` if given, else the dataset's; refuse a classifier too small for the labels."""
    if requested is not None and getattr(dataset, "classes", 1) is None:
        return requested  # a stream without class names: the classifier size given is taken
    found = num_classes_of(dataset)
    if requested is None:
        return found
    if requested < found:
        raise DataError(
            f"--num-classes {requested} is smaller than the dataset's {found} classes (labels 0..{found - 1}): "
            f"pass --num-classes {found} or leave it out"
        )
    return requested


def _or_imagenet(values: Optional[Sequence[float]], default: tuple[float, ...]) -> tuple[float, ...]:
    return default if values is None else tuple(float(v) for v in values)


def _defaults_for(dataset, hflip: Optional[float], crop_pct: Optional[float]) -> tuple[float, Optional[float]]:
    """Digits-aware defaults: a mirrored digit is another symbol (or none), and strokes touch the
    8x8 border, so the digits get no flips and no centre crop. ``crop_pct=None`` lets timm pick."""
    if isinstance(dataset, DigitsDataset):
        return (0.0 if hflip is None else hflip), (1.0 if crop_pct is None else crop_pct)
    return (0.5 if hflip is None else hflip), crop_pct


def sample_images(
    dataset,
    n: int,
    img_size: int,
    seed: int = 0,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    interpolation: str = "bilinear",
    crop_pct: Optional[float] = None,
) -> torch.Tensor:
    """``n`` images of ``dataset`` as one ``(n, 3, img_size, img_size)`` batch, without augmentation.

    The images are the first ``n`` of a permutation drawn from ``seed`` and go through timm's
    eval transform (resize, centre crop, normalise), so every call gives the same batch: what
    the least-squares init of the stitching layers needs. ``dataset`` is left as it was.
    """
    from timm.data import create_transform

    if n > len(dataset):
        raise DataError(
            f"--ls-init-images {n} is larger than the training set ({len(dataset)} images): use at most {len(dataset)}"
        )
    if n < 1:
        raise DataError(f"--ls-init-images {n} is not a positive number of images: use at least 1")
    _, crop_pct = _defaults_for(dataset, None, crop_pct)
    transform = create_transform(
        img_size,
        is_training=False,
        interpolation=interpolation,
        crop_pct=crop_pct,
        mean=_or_imagenet(mean, IMAGENET_DEFAULT_MEAN),
        std=_or_imagenet(std, IMAGENET_DEFAULT_STD),
    )
    if isinstance(dataset, ShardStream):  # no random access: the first n in shard order (docs/data.md)
        return torch.stack([transform(image) for image in first_images(dataset, n)])
    view = copy.copy(dataset)  # a shallow copy: own transform, shared images
    view.transform = transform
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([view[i][0] for i in order.tolist()])


def ls_init_images(dataset, n: int, data_cfg: Mapping[str, Any], seed: int) -> torch.Tensor:
    """The least-squares init batch of train.py (and of the lab, ``--compatibility`` and the
    benchmarks): :func:`sample_images` with the input size, normalisation, interpolation and
    crop of the timm data config ``data_cfg``."""
    return sample_images(
        dataset,
        n,
        data_cfg["input_size"][-1],
        seed,
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        interpolation=data_cfg["interpolation"],
        crop_pct=data_cfg["crop_pct"],
    )
