"""Transforms, loaders and normalisation of train.py and eval.py, over :mod:`snnet.data.datasets`'s datasets.

Loaders give uint8 batches (timm's ``fast_collate``); :class:`Normalize` (and :class:`BatchPrep`
in training, which adds random erasing) turns them into normalised float batches on the device.
Evaluation and the trainer's validation read the data the same way: :func:`eval_transform`,
:func:`eval_loader` (each rank its unpadded shard), :class:`Normalize`.
"""

from __future__ import annotations

import copy
import os
from argparse import Namespace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .datasets import DigitsDataset
from .samplers import EpochSampler, SeededSamples
from .streams import ShardStream, StreamLoader

if TYPE_CHECKING:
    from ..core.model import SNNet
    from ..distributed import DistInfo
    from .sources import DataOptions


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

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool = False):
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
        data_cfg["input_size"],
        is_training=False,
        interpolation=data_cfg["interpolation"],
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        crop_pct=data_cfg["crop_pct"],
        crop_mode=data_cfg.get("crop_mode"),
        use_prefetcher=True,
    )


def eval_loader(
    dataset, batch_size: int, workers: int = 0, rank: int = 0, world: int = 1, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """This rank's shard of ``dataset`` in order, uint8 batches (``fast_collate``); the workers
    persist from one pass (chunk) to the next, as in timm's ``create_loader``."""
    from timm.data.loader import fast_collate

    if isinstance(dataset, ShardStream):  # timm's reader gives each rank its shards
        dataset.configure(False, 0, rank, world, workers=workers)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=fast_collate, pin_memory=pin_memory
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world),
        num_workers=workers,
        collate_fn=fast_collate,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=workers > 0,
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
        self.erase = (
            RandomErasing(re_prob, mode=re_mode, max_count=re_count, num_splits=re_num_splits, device=device)
            if re_prob > 0
            else None
        )

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


def max_workers(world_size: int) -> tuple[int, int, int]:
    """Data-loading workers one process may start (this machine's cores over its processes:
    ``LOCAL_WORLD_SIZE`` under torchrun), the cores and the local processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    return max(0, cores // max(1, local_world)), cores, local_world


def build_loaders(train_ds, val_ds, args: Namespace, info: DistInfo, data_cfg: dict):
    """The training sampler, loader and batch preparation, and the validation loader and
    normalisation, as train.py's arguments set them."""
    from timm.data import create_transform

    img = data_cfg["input_size"]
    if args.aa:
        patch_timm_posterize()
    train_ds.transform = create_transform(
        img,
        is_training=True,
        no_aug=args.no_aug,
        scale=args.scale,
        ratio=args.ratio,
        hflip=data_cfg["hflip"] if args.hflip is None else args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        auto_augment=args.aa,
        interpolation=args.train_interpolation,
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        use_prefetcher=True,  # uint8 out; normalisation and random erasing in BatchPrep
    )
    if isinstance(train_ds, ShardStream):  # the loader is its own "sampler": set_epoch, num_samples
        stream = copy.copy(train_ds)  # its own seed: lab.py builds one loader per seed over one dataset
        stream.configure(True, args.seed, info.rank, info.world_size, args.batch_size, args.workers)
        sampler = train_loader = StreamLoader(stream, args.batch_size, args.workers, args.pin_mem)
    else:
        sampler, train_loader = _map_loader(train_ds, args, info)
    # Validation reads the data as eval.py does: each rank its unpadded shard, in order.
    val_ds.transform = eval_transform(data_cfg)
    val_loader = eval_loader(val_ds, args.validation_batch_size, args.workers, info.rank, info.world_size, args.pin_mem)
    re_splits = 2 if args.resplit else 0
    train_prep = BatchPrep(
        data_cfg["mean"],
        data_cfg["std"],
        info.device,
        0.0 if args.no_aug else args.reprob,
        args.remode,
        args.recount,
        re_splits,
    )
    val_prep = Normalize(data_cfg["mean"], data_cfg["std"], info.device, args.channels_last)
    return sampler, train_loader, train_prep, val_loader, val_prep


def _map_loader(train_ds, args: Namespace, info: DistInfo):
    """The seeded, resumable sampler and loader of a map-style training set."""
    from timm.data.loader import fast_collate

    sampler = EpochSampler(train_ds, info.world_size, info.rank, args.seed, args.batch_size)
    train_loader = torch.utils.data.DataLoader(
        SeededSamples(train_ds, args.seed),
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=fast_collate,
        pin_memory=args.pin_mem,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched by the loader
        persistent_workers=args.workers > 0,
    )
    return sampler, train_loader


def sample_train_images(
    net: SNNet, dataset: str, data_dir: str | None, n_images: int, seed: int, opts: DataOptions | None = None
) -> torch.Tensor:
    """``n_images`` training images as train.py's ``--ls-init`` takes them (drawn from ``seed``,
    evaluation transform of the first anchor at the SN-Net's input size), one batch: the images
    of eval.py's ``--compatibility`` scores and of compose.py's junction scores."""
    from .datasets import create_dataset, ls_init_images

    train_ds = create_dataset(dataset, data_dir, "train", opts=opts, training=True)
    return ls_init_images(train_ds, n_images, data_config_for(net, train_ds), seed)
