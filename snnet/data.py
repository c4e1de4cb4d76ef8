"""Datasets, transforms, loaders and normalisation, for training and evaluation alike.

Datasets: scikit-learn's handwritten digits (the offline default) and ImageFolder. Both yield
``(PIL RGB image, int target)`` and carry a settable ``transform``, so timm's transforms and
loaders (``timm.data.create_transform`` / ``create_loader``) apply to the digits exactly as they
apply to ImageNet. Loaders give uint8 batches (timm's ``fast_collate``); :class:`Normalize` (and
:class:`BatchPrep` in training) turns them into normalised float batches on the device.
"""
from __future__ import annotations

import copy
import functools
from argparse import Namespace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .errors import DataError
from .sampling import EpochSampler, SeededSamples

if TYPE_CHECKING:
    from .distributed import DistInfo
    from .model import SNNet

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
    train, val = train_test_split(
        np.arange(len(targets)), test_size=val_fraction, random_state=seed, stratify=targets)
    return DigitsDataset(train if split == "train" else val)


def _image_folder(data_dir: str | Path, split: str):
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
        dataset = ImageDataset(str(folder))
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


def create_dataset(name: str | None, data_dir: str | Path | None, split: str,
                   img_size: int | None = None, seed: int | None = None):
    """``name='digits'``: that split of the digits; empty ``name``: the ImageFolder ``data_dir/split``.

    ``img_size`` and ``seed`` never change the data. Resizing is the transform's job, and the
    digits split is always that of seed 0, so that runs with different training seeds are
    validated on the same images.
    """
    if name == "digits":
        return load_digits_split(split)
    if name:
        raise DataError(f"unknown dataset '{name}': use --dataset digits, or --data-dir with an ImageFolder")
    if not data_dir:
        raise DataError("no data given: pass --data-dir /path/to/imagenet (train/ and val/ folders) or --dataset digits")
    return _image_folder(data_dir, split)


def num_classes_of(dataset) -> int:
    """Number of classes of a digits split or a timm ``ImageDataset`` folder."""
    if hasattr(dataset, "classes"):
        return len(dataset.classes)
    reader = getattr(dataset, "reader", None)
    if reader is not None and hasattr(reader, "class_to_idx"):
        return len(reader.class_to_idx)
    raise DataError(f"cannot tell the class count of a {type(dataset).__name__}: pass --num-classes")



def resolve_num_classes(requested: Optional[int], dataset) -> int:
    """``--num-classes`` if given, else the dataset's; refuse a classifier too small for the labels."""
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


def create_loader_for(
    dataset,
    *,
    img_size: int,
    batch_size: int,
    is_training: bool,
    distributed: bool = False,
    workers: int = 2,
    seed: Optional[int] = None,
    no_aug: bool = False,
    scale: Optional[tuple[float, float]] = None,
    ratio: Optional[tuple[float, float]] = None,
    hflip: Optional[float] = None,
    vflip: float = 0.0,
    color_jitter: float = 0.4,
    aa: Optional[str] = None,
    reprob: float = 0.0,
    remode: str = "pixel",
    recount: int = 1,
    resplit: bool = False,
    num_aug_splits: int = 0,
    num_aug_repeats: int = 0,
    interpolation: str = "bilinear",
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    crop_pct: Optional[float] = None,
    collate_fn: Optional[Callable] = None,
    device: torch.device = torch.device("cpu"),
    pin_memory: bool = False,
):
    """A timm loader (``timm.data.create_loader``) for ``dataset``, with timm train.py's argument names.

    Sets ``dataset.transform`` (timm's train or eval transform, resizing to ``img_size``).
    ``mean``/``std`` default to ImageNet's; ``hflip`` to 0.5, or 0 for the digits; ``crop_pct``
    to timm's, or 1.0 for the digits. On CUDA timm's prefetcher normalises (and random-erases)
    batches on the GPU; on CPU the transform does it, so batches are normalised float tensors
    either way.

    ``distributed=True`` (the process group must be up) shards with timm's choice of sampler:
    ``DistributedSampler`` (or ``RepeatAugSampler`` with ``num_aug_repeats``) for training, and
    ``OrderedDistributedSampler`` for evaluation, which pads with repeats so every rank gets as
    many samples: metrics then count a few images twice. Call ``loader.sampler.set_epoch(epoch)``
    every training epoch, as timm's train.py does.

    ``seed`` makes the shuffling and the worker seeds repeatable without touching the global RNG.
    """
    from timm.data import AugMixDataset, create_loader

    hflip, crop_pct = _defaults_for(dataset, hflip, crop_pct)
    if is_training and num_aug_splits > 1:
        dataset = AugMixDataset(dataset, num_splits=num_aug_splits)  # as in timm's train.py
    use_prefetcher = device.type == "cuda"
    loader = create_loader(
        dataset,
        input_size=(3, img_size, img_size),
        batch_size=batch_size,
        is_training=is_training,
        no_aug=no_aug,
        re_prob=reprob,
        re_mode=remode,
        re_count=recount,
        re_split=resplit,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        vflip=vflip,
        color_jitter=color_jitter,
        auto_augment=aa,
        num_aug_repeats=num_aug_repeats,
        num_aug_splits=num_aug_splits,
        interpolation=interpolation,
        mean=_or_imagenet(mean, IMAGENET_DEFAULT_MEAN),
        std=_or_imagenet(std, IMAGENET_DEFAULT_STD),
        num_workers=workers,
        distributed=distributed,
        crop_pct=crop_pct,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        device=device,
        use_prefetcher=use_prefetcher,
    )
    if seed is not None:
        base = loader.loader if use_prefetcher else loader  # timm's PrefetchLoader wraps the DataLoader
        generator = torch.Generator().manual_seed(seed)
        base.generator = generator  # draws the worker seeds
        if isinstance(base.sampler, torch.utils.data.RandomSampler):
            base.sampler.generator = generator  # draws the shuffling order
        elif hasattr(base.sampler, "seed"):
            base.sampler.seed = seed  # DistributedSampler shuffles with seed + epoch
    return loader


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
            f"--ls-init-images {n} is larger than the training set ({len(dataset)} images): use at most {len(dataset)}")
    if n < 1:
        raise DataError(f"--ls-init-images {n} is not a positive number of images: use at least 1")
    _, crop_pct = _defaults_for(dataset, None, crop_pct)
    view = copy.copy(dataset)  # a shallow copy: own transform, shared images
    view.transform = create_transform(
        img_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct,
        mean=_or_imagenet(mean, IMAGENET_DEFAULT_MEAN), std=_or_imagenet(std, IMAGENET_DEFAULT_STD))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([view[i][0] for i in order.tolist()])


# ---------------------------------------------------------------------------------------------
# normalisation and loaders of evaluation (eval.py, validation in training)
# ---------------------------------------------------------------------------------------------
class ShardSampler(torch.utils.data.Sampler):
    """Rank ``r`` of ``world`` takes dataset indices ``r, r + world, ...``: no padding, so the
    sums over ranks count every sample exactly once (timm's ``OrderedDistributedSampler`` pads
    the last batch by repeating samples)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Normalize:
    """uint8 NCHW batch (timm's ``fast_collate``) -> normalised float batch on the device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 channels_last: bool = False):
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor([m * 255 for m in mean], device=device).view(shape)
        self.std = torch.tensor([s * 255 for s in std], device=device).view(shape)
        self.device = device
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:  # already-normalised float batches pass through
            x = x.float().sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)


def eval_transform(data_cfg: Mapping[str, Any]):
    """timm's evaluation transform (resize, center crop), uint8 output for :class:`Normalize`."""
    from timm.data import create_transform

    return create_transform(
        data_cfg["input_size"], is_training=False, interpolation=data_cfg["interpolation"],
        mean=data_cfg["mean"], std=data_cfg["std"], crop_pct=data_cfg["crop_pct"],
        crop_mode=data_cfg.get("crop_mode"), use_prefetcher=True,
    )


def eval_loader(dataset, batch_size: int, workers: int = 0, rank: int = 0, world: int = 1,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """This rank's shard of ``dataset`` in order, uint8 batches (``fast_collate``); the workers
    persist from one pass (chunk) to the next, as in timm's ``create_loader``."""
    from timm.data.loader import fast_collate

    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world), num_workers=workers,
        collate_fn=fast_collate, pin_memory=pin_memory, drop_last=False, persistent_workers=workers > 0,
        # Its own generator: a DataLoader without one draws each pass's base seed from the global
        # RNG, so validating inside training would shift the training's random draws.
        generator=torch.Generator().manual_seed(0),
    )



# ---------------------------------------------------------------------------------------------
# training data
# ---------------------------------------------------------------------------------------------
class BatchPrep(Normalize):
    """The validation's normalisation (uint8 batch -> normalized float batch on the device), then
    timm's batch random erasing.

    Runs in step order in the training process (not one batch ahead like timm's PrefetchLoader)
    so that its RNG draws are restored exactly on resume."""

    def __init__(self, mean, std, device: torch.device, re_prob=0.0, re_mode="pixel", re_count=1, re_num_splits=0):
        from timm.data.random_erasing import RandomErasing

        super().__init__(mean, std, device)
        self.erase = RandomErasing(re_prob, mode=re_mode, max_count=re_count, num_splits=re_num_splits,
                                   device=device) if re_prob > 0 else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__call__(x, y)
        if self.erase is not None:
            x = self.erase(x)
        return x, y


def _posterize(img, bits_to_keep, **_):
    """timm's ``posterize`` op, except that 0 bits gives a black image as older Pillow did."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def patch_timm_posterize() -> bool:
    """timm's RandAugment posterizes to 0 bits at magnitude 10 (``inc1``, reached with ``mstd``),
    which recent Pillow refuses (13.0 here; older Pillow returned a black image), so the paper's
    ``rand-m9-mstd0.5-inc1`` would crash a run now and then. Point timm's ops at :func:`_posterize`
    (a module-level function, so transforms still pickle for spawned workers). Returns whether
    the patch was needed."""
    from PIL import Image, ImageOps
    from timm.data import auto_augment as aa

    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return False
    except ValueError:
        pass
    for name, fn in list(aa.NAME_TO_OP.items()):
        if fn is aa.posterize:
            aa.NAME_TO_OP[name] = _posterize
    return True


def data_config_for(net: SNNet, train_ds) -> dict:
    """timm's data config of the first anchor (mean/std, interpolation, crop) at the SN-Net's input
    size; for the digits no centre crop (strokes touch the border) and no flips."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=net.anchors[0])
    cfg["input_size"] = tuple(net.input_size)
    digits = isinstance(train_ds, DigitsDataset)
    cfg["crop_pct"] = 1.0 if digits else cfg["crop_pct"]
    cfg["hflip"] = 0.0 if digits else 0.5
    return cfg


def build_loaders(train_ds, val_ds, args: Namespace, info: DistInfo, data_cfg: dict):
    """The training sampler, loader and batch preparation, and the validation loader and
    normalisation, as train.py's arguments set them."""
    from timm.data import create_transform
    from timm.data.loader import fast_collate

    img = data_cfg["input_size"]
    if args.aa:
        patch_timm_posterize()
    train_ds.transform = create_transform(
        img, is_training=True, no_aug=args.no_aug, scale=args.scale, ratio=args.ratio,
        hflip=data_cfg["hflip"] if args.hflip is None else args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=args.train_interpolation, mean=data_cfg["mean"], std=data_cfg["std"],
        use_prefetcher=True,  # uint8 out; normalisation and random erasing in BatchPrep
    )
    sampler = EpochSampler(train_ds, info.world_size, info.rank, args.seed, args.batch_size)
    train_loader = torch.utils.data.DataLoader(
        SeededSamples(train_ds, args.seed), batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        collate_fn=fast_collate, pin_memory=args.pin_mem, drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched by the loader
        persistent_workers=args.workers > 0,
    )
    # Validation reads the data as eval.py does: each rank its unpadded shard, in order.
    val_ds.transform = eval_transform(data_cfg)
    val_loader = eval_loader(val_ds, args.validation_batch_size, args.workers, info.rank, info.world_size, args.pin_mem)
    re_splits = 2 if args.resplit else 0
    train_prep = BatchPrep(data_cfg["mean"], data_cfg["std"], info.device, 0.0 if args.no_aug else args.reprob,
                           args.remode, args.recount, re_splits)
    val_prep = Normalize(data_cfg["mean"], data_cfg["std"], info.device, args.channels_last)
    return sampler, train_loader, train_prep, val_loader, val_prep
