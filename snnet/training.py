"""SN-Net training in the style of timm's train.py (``train.py``, ``distributed_train.sh``).

One optimizer step trains ONE network of the SN-Net, drawn by :class:`snnet.sampling.NetworkSampler`
(every rank the same network by default). The recipe is stock timm's: ``create_optimizer_v2``,
``create_scheduler_v2`` (stepped per update), timm transforms / RandAugment / random erasing,
``Mixup``, label smoothing, ``ModelEmaV3``, ``dispatch_clip_grad``, ``convert_splitbn_model``,
``distribute_bn``, ``CheckpointSaver``'s top-k bookkeeping; SN-Net adds least-squares init of
the stitching layers, DeiT-style distillation and a learning-rate scale for stitching layers.

Resuming
--------
A checkpoint holds only tensors and plain Python data (``torch.load(weights_only=True)``):
``version, arch, args, snnet_config, epoch, epoch_complete, step_in_epoch, global_step,
world_size, state_dict, [aux_bn_state_dict], [state_dict_ema], optimizer, scheduler, [scaler],
network_sampler (one state per rank), rng_states (one per rank), [metric], saver``.

Step-level resume: with ``--checkpoint-interval N`` every rank pauses after each N-th optimizer
step inside an epoch, rank 0 gathers every rank's RNG and network-sampler states, and
``last.pth.tar`` is written atomically with ``epoch_complete=False`` and ``step_in_epoch=k``.
A run resumed from it (``--resume auto``, the default when the run folder has ``last.pth.tar``;
this is what ``torchrun --max-restarts`` relies on) restores weights, optimizer, scheduler,
scaler, EMA, the network sampler and the RNGs, then starts epoch ``epoch`` after its first ``k``
batches: the data order is a function of ``(seed, epoch)`` only (:class:`EpochSampler`), the
skipped batches are never loaded, and each sample's augmentation is seeded from
``(seed, epoch, index)`` (:class:`SeededSamples`) whatever worker loads it. Batch-level random
erasing, Mixup/CutMix and drop-path run in the training process on the restored RNGs. Hence the
final weights equal those of an uninterrupted run with the same seed (tested on CPU).

A non-finite loss on any rank stops every rank with :class:`DivergenceError` before the
optimizer step, so the last checkpoint on disk is the last good state.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import signal
import sys
import time
from argparse import Namespace
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .cli import add_data_args, add_model_args, build_snnet
from .config import parse_args_with_config, parse_kwargs
from .distributed import DistInfo, GradAllReduce, all_reduce_sum, broadcast_state, init_distributed
from .errors import CheckpointError, ConfigError, DataError, DivergenceError, exit_on_user_error
from .model import SNNet
from .sampling import (
    EpochSampler,
    NetworkSampler,
    SeededSamples,
    capture_rng_state,
    resolve_sample_weights,
    restore_rng_state,
    seed_everything,
)
from .stitches import parse_stitch_ids
from .sweep import Normalize, eval_loader, eval_transform, metrics_of, sweep_pass

_logger = logging.getLogger("train")

CHECKPOINT_VERSION = 1
AUTO = "auto"


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
def build_train_parser() -> argparse.ArgumentParser:
    """train.py's parser; ``-c FILE.yaml`` sets its defaults (see :mod:`snnet.config`)."""
    parser = argparse.ArgumentParser(
        description="Train an SN-Net (or, with one anchor, a plain timm model) the way timm's train.py trains.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-c", "--config", default="", metavar="FILE.yaml",
                        help="YAML file of argument defaults (keys are the long option names)")
    add_model_args(parser)
    add_data_args(parser)

    g = parser.add_argument_group("model extras")
    g.add_argument("--drop-path", type=float, default=None, metavar="P", help="drop-path rate of every anchor")
    g.add_argument("--drop", type=float, default=None, metavar="P", help="dropout rate of every anchor")
    g.add_argument("--ls-init", action=argparse.BooleanOptionalAction, default=False,
                   help="least-squares init of the stitching layers before training (not redone on resume)")
    g.add_argument("--ls-init-images", type=int, default=100, metavar="N",
                   help="training images (no augmentation) for --ls-init; the paper uses 100")
    g.add_argument("--ls-init-batch-size", type=int, default=50, metavar="N", help="images per forward in LS init")
    g.add_argument("--ls-init-combine", default="mean", choices=["mean", "joint"],
                   help="how a layer shared by several positions combines their solutions")

    g = parser.add_argument_group("data extras")
    g.add_argument("--train-split", default="train", help="dataset split to train on")
    g.add_argument("--val-split", default="validation", help="dataset split to validate on")
    g.add_argument("-b", "--batch-size", type=int, default=128, metavar="N",
                   help="batch size PER PROCESS (as timm); the global batch is this x world size")
    g.add_argument("--global-batch-size", type=int, default=None, metavar="N",
                   help="alternative to --batch-size: the global batch, divided over the processes")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=None, metavar="N",
                   help="validation batch size per process (default: --batch-size)")
    g.add_argument("--pin-mem", action="store_true", default=False, help="pin CPU memory in the data loader")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, metavar="N",
                   help="stop each epoch after N optimizer steps (short runs, tests)")
    g.add_argument("--max-val-batches", type=int, default=None, metavar="N",
                   help="validate on at most N batches per process")

    g = parser.add_argument_group("augmentation (timm)")
    g.add_argument("--no-aug", action="store_true", default=False, help="no training augmentation at all")
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], metavar="PCT", help="random resized crop scale")
    g.add_argument("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0], metavar="RATIO",
                   help="random resized crop aspect ratio")
    g.add_argument("--hflip", type=float, default=None, help="horizontal flip probability (default 0.5; 0 for digits)")
    g.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    g.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT", help="color jitter (off with --aa)")
    g.add_argument("--aa", type=str, default=None, metavar="NAME", help="auto-augment policy, e.g. rand-m9-mstd0.5-inc1")
    g.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random erasing probability")
    g.add_argument("--remode", type=str, default="pixel", help="random erasing mode")
    g.add_argument("--recount", type=int, default=1, help="random erasing count")
    g.add_argument("--resplit", action="store_true", default=False,
                   help="do not random-erase the first half of each batch (clean split)")
    g.add_argument("--train-interpolation", type=str, default="random", help="training interpolation")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (on if > 0)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (on if > 0)")
    g.add_argument("--cutmix-minmax", type=float, nargs=2, default=None, help="cutmix min/max ratio (overrides alpha)")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of cutmix instead of mixup")
    g.add_argument("--mixup-mode", type=str, default="batch", choices=["batch", "pair", "elem"])
    g.add_argument("--mixup-off-epoch", type=int, default=0, metavar="N", help="turn mixup off from this epoch (0: never)")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--split-bn", action="store_true", default=False,
                   help="separate BatchNorm statistics for the clean and erased halves (needs --resplit)")
    g.add_argument("--dist-bn", type=str, default="reduce", choices=["reduce", "broadcast", ""],
                   help="sync BatchNorm running stats over processes at the end of each epoch")

    g = parser.add_argument_group("optimizer (timm create_optimizer_v2)")
    g.add_argument("--opt", default="adamw", metavar="NAME", help="optimizer")
    g.add_argument("--opt-eps", type=float, default=None, metavar="EPS")
    g.add_argument("--opt-betas", type=float, nargs="+", default=None, metavar="BETA")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="gradient clipping (off if unset)")
    g.add_argument("--clip-mode", type=str, default="norm", choices=["norm", "value", "agc"])
    g.add_argument("--stitch-lr-scale", type=float, default=1.0,
                   help="learning-rate multiplier of the stitching layers relative to the anchors")

    g = parser.add_argument_group("learning rate schedule (timm create_scheduler_v2)")
    g.add_argument("--sched", type=str, default="cosine", metavar="NAME")
    g.add_argument("--sched-on-updates", action=argparse.BooleanOptionalAction, default=True,
                   help="step the schedule every optimizer update (else per epoch)")
    g.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="learning rate (default: --lr-base scaled by the global batch size)")
    g.add_argument("--lr-base", type=float, default=5e-4, metavar="LR", help="learning rate for --lr-base-size")
    g.add_argument("--lr-base-size", type=int, default=512, metavar="N")
    g.add_argument("--lr-base-scale", type=str, default="linear", choices=["linear", "sqrt"])
    g.add_argument("--lr-noise", type=float, nargs="+", default=None, metavar="PCT")
    g.add_argument("--lr-noise-pct", type=float, default=0.67)
    g.add_argument("--lr-noise-std", type=float, default=1.0)
    g.add_argument("--lr-cycle-mul", type=float, default=1.0)
    g.add_argument("--lr-cycle-decay", type=float, default=0.5)
    g.add_argument("--lr-cycle-limit", type=int, default=1)
    g.add_argument("--lr-k-decay", type=float, default=1.0)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--decay-epochs", type=float, default=90)
    g.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270])
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--warmup-prefix", action="store_true", default=False)
    g.add_argument("--cooldown-epochs", type=int, default=0)
    g.add_argument("--patience-epochs", type=int, default=10)
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1)

    g = parser.add_argument_group("SN-Net training")
    g.add_argument("--sample-per-rank", action="store_true", default=False,
                   help="each process draws its own network per step (default: all train the same one)")
    g.add_argument("--sample-weights", nargs="+", default=None, metavar="W",
                   help="'uniform' (default), 'flops', 'params' or one weight per network (cfg_id order)")
    g.add_argument("--val-stitches", type=str, default=None, metavar="IDS",
                   help="cfg_ids validated each epoch, e.g. '0,3,10' or 'all' (default: anchors + 3 evenly spaced)")
    g.add_argument("--eval-metric", type=str, default="top1", choices=["top1", "top5", "loss"],
                   help="best-checkpoint metric: its mean over the validated networks")
    g.add_argument("--teacher", type=str, default=None, metavar="NAME", help="timm teacher model for distillation")
    g.add_argument("--teacher-checkpoint", type=str, default=None, metavar="FILE",
                   help="teacher weights (default: timm's pretrained weights)")
    g.add_argument("--teacher-kwargs", nargs="*", default={}, metavar="K=V", help="timm.create_model kwargs of the teacher")
    g.add_argument("--distillation-type", type=str, default="none", choices=["none", "soft", "hard"])
    g.add_argument("--distillation-alpha", type=float, default=0.5)
    g.add_argument("--distillation-tau", type=float, default=1.0)
    g.add_argument("--grad-sync", type=str, default="allreduce", choices=["allreduce", "ddp"],
                   help="gradient averaging over processes: own bucketed all-reduce or DDP(find_unused_parameters)")

    g = parser.add_argument_group("mechanics")
    g.add_argument("--device", type=str, default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--amp", action="store_true", default=False, help="mixed precision (torch.autocast)")
    g.add_argument("--amp-dtype", type=str, default="float16", choices=["float16", "bfloat16"])
    g.add_argument("--amp-impl", type=str, default="native", choices=["native", "apex"])
    g.add_argument("--channels-last", action="store_true", default=False)
    g.add_argument("--model-ema", action="store_true", default=False, help="keep an EMA of the weights (timm ModelEmaV3)")
    g.add_argument("--model-ema-decay", type=float, default=0.9998)
    g.add_argument("--model-ema-warmup", action="store_true", default=False)
    g.add_argument("--model-ema-force-cpu", action="store_true", default=False)

    g = parser.add_argument_group("output and checkpoints")
    g.add_argument("--output", default="", metavar="DIR", help="parent folder of the runs (default: ./output/train)")
    g.add_argument("--experiment", default="", metavar="NAME", help="run folder name (default: date-anchors-size)")
    g.add_argument("--resume", default="", metavar="FILE",
                   help="checkpoint to resume from, or 'auto' (the run folder's last.pth.tar; default when it exists)")
    g.add_argument("--initial-checkpoint", default="", metavar="FILE",
                   help="start from these weights (a train.py or an official SN-Net checkpoint; no optimizer state, no LS init)")
    g.add_argument("--no-resume-opt", action="store_true", default=False,
                   help="resume the weights only (fresh optimizer, scheduler, scaler, sampler)")
    g.add_argument("--checkpoint-hist", type=int, default=10, metavar="N", help="epoch checkpoints kept (top-k by metric)")
    g.add_argument("--checkpoint-interval", type=int, default=0, metavar="N",
                   help="also write last.pth.tar every N optimizer steps inside an epoch (0: epoch ends only)")
    g.add_argument("--stop-epoch", type=int, default=None, metavar="N",
                   help="stop after N epochs in total but keep the --epochs schedule (time-limited jobs: rerun the "
                        "same command to continue)")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="steps between log lines")
    return parser


def resolve_args(args: Namespace, info: DistInfo) -> Namespace:
    """Check combinations and sizes that need the world size; fill derived values."""
    if not args.anchors:
        raise ConfigError("no anchors given: pass --anchors NAME [NAME ...] (small to large) or -c a config")
    if args.global_batch_size is not None:
        if args.global_batch_size % info.world_size:
            raise ConfigError(
                f"--global-batch-size {args.global_batch_size} does not divide by the {info.world_size} processes: "
                f"use a multiple of {info.world_size}"
            )
        args.batch_size = args.global_batch_size // info.world_size
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax) and args.batch_size % 2:
        raise ConfigError(f"Mixup/CutMix need an even per-process batch size, got --batch-size {args.batch_size}")
    if args.split_bn:
        if not args.resplit or args.reprob <= 0:
            raise ConfigError("--split-bn needs --resplit with --reprob > 0 (the erased half gets its own BatchNorm stats)")
        if args.batch_size % 2:
            raise ConfigError(f"--split-bn needs an even per-process batch size, got --batch-size {args.batch_size}")
    if args.distillation_type != "none" and not args.teacher:
        raise ConfigError(f"--distillation-type {args.distillation_type} needs --teacher NAME")
    if args.amp and args.amp_impl == "apex":
        try:
            import apex  # noqa: F401
        except ImportError:
            raise ConfigError("--amp-impl apex needs NVIDIA apex installed; use --amp-impl native (torch.autocast)") from None
    if args.amp and args.amp_dtype == "float16" and info.device.type == "cpu":
        _logger.warning("--amp-dtype float16 on CPU runs without a GradScaler; bfloat16 is the usual CPU choice")
    if args.ls_init_images < 1:
        raise ConfigError(f"--ls-init-images must be >= 1, got {args.ls_init_images}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(info.world_size)))
    max_workers = max(0, cores // max(1, local_world))
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if args.workers > max_workers:
        if info.is_primary:
            _logger.warning(f"--workers {args.workers} x {local_world} processes exceeds the {cores} available cores: "
                            f"using {max_workers} workers per process")
        args.workers = max_workers
    if args.lr is None:
        global_batch = args.batch_size * info.world_size
        ratio = global_batch / args.lr_base_size
        args.lr = args.lr_base * (math.sqrt(ratio) if args.lr_base_scale == "sqrt" else ratio)
    if args.validation_batch_size is None:
        args.validation_batch_size = args.batch_size
    return args


def plain(value: Any) -> Any:
    """Arguments as plain Python data (for checkpoints)."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------
# run folder, logging
# ---------------------------------------------------------------------------------------------
def default_experiment(args: Namespace) -> str:
    """timm's ``date-model-size`` name; under torchrun the run id replaces the date so that
    restarted workers (``--max-restarts``) find the same folder and resume."""
    short = "+".join(a.split("_")[0] + ("_" + a.split("_")[1] if "_" in a else "") for a in args.anchors)
    stamp = os.environ.get("TORCHELASTIC_RUN_ID") or datetime.now().strftime("%Y%m%d-%H%M%S")
    return "-".join([stamp[:24], short, str(args.img_size or "default")])


def setup_logging(info: DistInfo) -> list[logging.Handler]:
    """Rank 0 logs INFO to stdout, the other ranks warnings only (to stderr)."""
    stream = logging.StreamHandler(sys.stdout if info.is_primary else sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    stream.setLevel(logging.INFO if info.is_primary else logging.WARNING)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False
    _logger.addHandler(stream)
    return [stream]


def add_file_log(out_dir: Path) -> logging.Handler:
    fh = logging.FileHandler(out_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    fh.setLevel(logging.INFO)
    _logger.addHandler(fh)
    return fh


class StepLog:
    """Per-step records (one JSON line per rank and optimizer step) in the run folder's steps.jsonl."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        os.write(self.fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------
# data
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

    from .data import DigitsDataset

    cfg = resolve_data_config({}, model=net.anchors[0])
    cfg["input_size"] = tuple(net.input_size)
    digits = isinstance(train_ds, DigitsDataset)
    cfg["crop_pct"] = 1.0 if digits else cfg["crop_pct"]
    cfg["hflip"] = 0.0 if digits else 0.5
    return cfg


def build_loaders(train_ds, val_ds, args: Namespace, info: DistInfo, data_cfg: dict):
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


# ---------------------------------------------------------------------------------------------
# model pieces
# ---------------------------------------------------------------------------------------------
def build_model(args: Namespace, num_classes: int) -> SNNet:
    model_args = Namespace(**vars(args))
    kwargs = parse_kwargs(args.model_kwargs)
    if args.drop_path is not None:
        kwargs.setdefault("drop_path_rate", args.drop_path)
    if args.drop is not None:
        kwargs.setdefault("drop_rate", args.drop)
    model_args.model_kwargs = kwargs
    return build_snnet(model_args, num_classes=num_classes)


def apply_split_bn(net: SNNet) -> None:
    from timm.layers import convert_splitbn_model

    bn1d = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm1d)]
    if bn1d:
        raise ConfigError(f"--split-bn converts BatchNorm2d only, but these anchors use BatchNorm1d ({bn1d[0]}, ...): drop --split-bn")
    convert_splitbn_model(net, 2)  # replaces BatchNorm layers in place below the top module


def param_groups(net: SNNet, weight_decay: float, stitch_lr_scale: float) -> list[dict]:
    """Anchors' groups (timm's decay/no-decay split, ``no_weight_decay()`` respected) and the
    stitching layers' groups with ``lr_scale`` (timm's schedulers multiply each group's lr by it)."""
    from timm.optim import param_groups_weight_decay

    groups = []
    for anchor in net.anchors:
        nwd = anchor.no_weight_decay() if hasattr(anchor, "no_weight_decay") else ()
        groups += param_groups_weight_decay(anchor, weight_decay, no_weight_decay_list=nwd)
    for g in param_groups_weight_decay(net.stitch_layers, weight_decay):
        g["lr_scale"] = stitch_lr_scale  # the scheduler sets lr = schedule value * lr_scale
        groups.append(g)
    groups = [g for g in groups if len(g["params"])]
    covered = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert covered == total, f"param groups cover {covered} of {total} parameters"
    return groups


def build_teacher(args: Namespace, num_classes: int, device: torch.device) -> Optional[nn.Module]:
    if args.distillation_type == "none" or not args.teacher:
        return None
    import timm

    from .checkpoint import load_model_weights

    kwargs = parse_kwargs(args.teacher_kwargs)
    pretrained = args.teacher_checkpoint is None
    if not timm.is_model(args.teacher.split(".")[0]):
        raise ConfigError(f"unknown teacher model '{args.teacher}': timm has no model of that name")
    if pretrained:
        from .weights import create_pretrained_model

        teacher = create_pretrained_model(args.teacher, "--teacher-checkpoint FILE", num_classes=num_classes, **kwargs)
    else:
        teacher = timm.create_model(args.teacher, num_classes=num_classes, **kwargs)
    if args.teacher_checkpoint:
        load_model_weights(teacher, args.teacher_checkpoint)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class TrainLoss(nn.Module):
    """Base loss (timm's), plus DeiT-style distillation on the same output:
    ``(1 - alpha) * base + alpha * distill``."""

    def __init__(self, base: nn.Module, teacher: Optional[nn.Module], kind: str, alpha: float, tau: float):
        super().__init__()
        self.base = base
        self.teacher = teacher
        self.kind = kind
        self.alpha = alpha
        self.tau = tau

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        base = self.base(outputs, targets)
        if self.kind == "none" or self.teacher is None:
            return base
        with torch.no_grad():
            t = self.teacher(inputs)
        if self.kind == "soft":
            T = self.tau
            distill = F.kl_div(F.log_softmax(outputs / T, dim=1), F.log_softmax(t / T, dim=1),
                               reduction="sum", log_target=True) * (T * T) / outputs.numel()
        else:
            distill = F.cross_entropy(outputs, t.argmax(dim=1))
        return base * (1 - self.alpha) + distill * self.alpha


def default_val_ids(net: SNNet, extra: int = 3) -> list[int]:
    """The anchors plus ``extra`` evenly spaced stitches."""
    anchors = [s.cfg_id for s in net.stitches if s.is_anchor]
    rest = [s.cfg_id for s in net.stitches if not s.is_anchor]
    if not rest:
        return anchors
    k = min(extra, len(rest))
    picks = [rest[round(i * (len(rest) - 1) / max(1, k - 1))] for i in range(k)] if k > 1 else [rest[len(rest) // 2]]
    return sorted(set(anchors + picks))


# ---------------------------------------------------------------------------------------------
# the training state and its checkpoints
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Everything one process holds while training, and its checkpoint (de)serialisation."""

    def __init__(self, args: Namespace, info: DistInfo, out_dir: Path):
        self.args = args
        self.info = info
        self.out_dir = out_dir
        self.epoch = 0
        self.step_in_epoch = 0  # optimizer steps done in self.epoch
        self.global_step = 0

    # -- precision, backward, optimizer step -------------------------------------------------
    def setup_precision(self) -> None:
        args, info = self.args, self.info
        self.amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
        self.native_amp = args.amp and args.amp_impl == "native"
        # GradScaler for float16 on CUDA only (bfloat16 and CPU autocast need none)
        cuda_fp16 = self.native_amp and self.amp_dtype == torch.float16 and info.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if cuda_fp16 else None

    def autocast(self):
        if self.native_amp:
            return torch.autocast(device_type=self.info.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """backward, gradient averaging over processes, clipping, optimizer step, grads to None."""
        from timm.utils import dispatch_clip_grad

        opt = self.optimizer
        if self.apex_amp is not None:
            with self.apex_amp.scale_loss(loss, opt) as scaled:
                scaled.backward()
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self.grad_sync()
        if self.args.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            dispatch_clip_grad(params, value=self.args.clip_grad, mode=self.args.clip_mode)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)  # unused parameters keep grad None: the optimizer skips them

    def save_last(self) -> None:
        """Step-level checkpoint: last.pth.tar inside an epoch (collective; rank 0 writes)."""
        from .checkpoint import save_checkpoint

        state = self.checkpoint_state(epoch_complete=False)
        if state is not None:
            state["saver"] = plain(self.saver.state_dict())
            save_checkpoint(state, self.out_dir / "last.pth.tar")
        if self.info.distributed:
            dist.barrier()

    # -- state ------------------------------------------------------------------------------
    def model_state(self) -> tuple[dict, dict]:
        sd = self.net.state_dict()
        aux = {k: v for k, v in sd.items() if ".aux_bn." in k}
        return OrderedDict((k, v) for k, v in sd.items() if ".aux_bn." not in k), aux

    def gather(self, obj: Any) -> list[Any]:
        if not self.info.distributed:
            return [obj]
        out: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(out, obj)
        return out

    def checkpoint_state(self, epoch_complete: bool, metric: Optional[float] = None) -> Optional[dict]:
        """Collective (all ranks call it); the state dict on rank 0, None elsewhere."""
        rng = self.gather(_cpu(capture_rng_state()))
        samplers = self.gather(_cpu(self.net_sampler.state_dict()))
        if not self.info.is_primary:
            return None
        sd, aux = self.model_state()
        state = {
            "version": CHECKPOINT_VERSION,
            "arch": "snnet",
            "args": plain(self.args),
            "snnet_config": plain(self.net.config),
            "epoch": self.epoch,
            "epoch_complete": epoch_complete,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "world_size": self.info.world_size,
            "state_dict": sd,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": plain_scheduler_state(self.scheduler),
            "network_sampler": samplers,
            "rng_states": rng,
        }
        if aux:
            state["aux_bn_state_dict"] = aux
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["state_dict_ema"] = OrderedDict(
                (k, v) for k, v in self.ema.module.state_dict().items() if ".aux_bn." not in k)
        if metric is not None:
            state["metric"] = metric
        return state

    def check_compatible(self, ckpt: dict, path: str) -> None:
        theirs = ckpt.get("snnet_config")
        if "official_args" in ckpt:
            raise CheckpointError(f"checkpoint {path} is an official SN-Net checkpoint, which cannot be resumed: start "
                                  f"from its weights with --initial-checkpoint {path}")
        if not isinstance(theirs, dict) or "state_dict" not in ckpt:
            raise CheckpointError(f"checkpoint {path} is not an SN-Net training checkpoint of train.py: start without --resume")
        ours = plain(self.net.config)
        if list(theirs.get("anchors", [])) != list(ours["anchors"]):
            raise CheckpointError(
                f"checkpoint {path} was trained with anchors {list(theirs.get('anchors', []))} but --anchors are "
                f"{ours['anchors']}: resume with the same --anchors or use another --experiment"
            )
        for key, value in ours.items():
            if key in theirs and plain(theirs[key]) != value:
                raise CheckpointError(
                    f"checkpoint {path} was trained with {key}={theirs[key]} but this run has {key}={value}: "
                    f"use the checkpoint's stitching options or another --experiment"
                )

    def load(self, path: str, resume_opt: bool) -> None:
        from .checkpoint import load_checkpoint_file

        ckpt = load_checkpoint_file(path)
        if not isinstance(ckpt, dict):
            raise CheckpointError(f"checkpoint {path} is not a train.py checkpoint: start without --resume")
        self.check_compatible(ckpt, path)
        sd = dict(ckpt["state_dict"])
        sd.update(ckpt.get("aux_bn_state_dict", {}))
        missing, unexpected = self.net.load_state_dict(sd, strict=False)
        missing = [k for k in missing if ".aux_bn." not in k]
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {path} does not match the model ({len(missing)} missing keys, e.g. "
                f"{(missing or unexpected)[0]}; {len(unexpected)} unexpected): check --model-kwargs/--anchor-kwargs"
            )
        if self.ema is not None:
            ema_sd = dict(ckpt.get("state_dict_ema") or ckpt["state_dict"])
            ema_sd.update(ckpt.get("aux_bn_state_dict", {}))
            self.ema.module.load_state_dict(ema_sd, strict=False)
        if not resume_opt:
            _logger.info(f"Loaded weights from {path} (--no-resume-opt: fresh optimizer, schedule and sampler)")
            return
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        if ckpt.get("epoch_complete", True):
            self.epoch += 1
            self.step_in_epoch = 0
        else:
            self.step_in_epoch = int(ckpt["step_in_epoch"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        same_world = int(ckpt.get("world_size", 1)) == self.info.world_size
        samplers = ckpt["network_sampler"]
        rngs = ckpt["rng_states"]
        if same_world:
            self.net_sampler.load_state_dict(samplers[self.info.rank])
            restore_rng_state(rngs[self.info.rank])
        else:
            if self.info.is_primary:
                _logger.warning(f"checkpoint {path} was written by {ckpt.get('world_size')} processes, this run has "
                                f"{self.info.world_size}: the run continues but will not repeat the original exactly")
            self.net_sampler.load_state_dict(samplers[0] if not self.net_sampler.per_rank else samplers[self.info.rank % len(samplers)])
        self.saver_state = ckpt.get("saver")
        where = f"epoch {self.epoch}" + (f" after step {self.step_in_epoch}" if self.step_in_epoch else "")
        _logger.info(f"Resumed from {path}: continuing at {where} (global step {self.global_step})")


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def plain_scheduler_state(scheduler) -> dict:
    return {k: plain(v) if not isinstance(v, torch.Tensor) else v for k, v in scheduler.state_dict().items()}


def _saver_class():
    from timm.utils import CheckpointSaver

    class SNNetCheckpointSaver(CheckpointSaver):
        """timm's top-k bookkeeping; files written by :func:`snnet.checkpoint.save_checkpoint`
        with plain data only (timm's ``_save`` pickles the argparse Namespace)."""

        def __init__(self, state_fn, **kwargs):
            super().__init__(model=None, optimizer=None, **kwargs)
            self.state_fn = state_fn

        def _replace(self, src, dst):
            # atomic on POSIX; timm unlinks dst first (for Windows), which would leave a moment
            # without last.pth.tar for a killed run to resume from
            os.replace(src, dst)

        def _save(self, save_path, epoch, metric=None):
            from .checkpoint import save_checkpoint

            state = self.state_fn(metric)
            state["saver"] = plain(self.state_dict(epoch, metric))
            save_checkpoint(state, save_path)

    return SNNetCheckpointSaver


# ---------------------------------------------------------------------------------------------
# one epoch of training, validation
# ---------------------------------------------------------------------------------------------
def train_one_epoch(t: Trainer) -> dict:
    """Train ``t.epoch`` from step ``t.step_in_epoch``; returns the epoch's mean loss."""
    args, info = t.args, t.info
    net: SNNet = t.net
    t.model.train()
    if t.mixup_fn is not None and args.mixup_off_epoch and t.epoch >= args.mixup_off_epoch:
        t.mixup_fn.mixup_enabled = False
    t.data_sampler.set_epoch(t.epoch, skip_batches=t.step_in_epoch)
    steps = t.steps_per_epoch
    loss_sum, loss_n = 0.0, 0
    kill_at = int(os.environ.get("SNNET_TEST_KILL_AT_STEP", "0"))  # test hooks
    nan_at = int(os.environ.get("SNNET_TEST_NAN_AT_STEP", "0"))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    t_last, n_since = time.perf_counter(), 0
    it = iter(t.train_loader)
    while t.step_in_epoch < steps:
        try:
            x, y = next(it)
        except StopIteration:
            break
        x, y = t.train_prep(x, y)
        if t.mixup_fn is not None:
            x, y = t.mixup_fn(x, y)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cfg_id = t.net_sampler.draw()
        net.select(cfg_id)
        if kill_at and attempt == 0 and info.rank == info.world_size - 1 and t.global_step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: a worker dies in the middle of an epoch
        with t.autocast():
            out = t.model(x)
            loss = t.criterion(x, out, y)
        if nan_at and t.global_step + 1 == nan_at:
            loss = loss * float("nan")
        local = loss.detach().float()
        stats = torch.stack([local, (~torch.isfinite(local)).float()])
        all_reduce_sum(stats)
        global_loss = float(stats[0]) / info.world_size
        if stats[1] > 0 or not math.isfinite(global_loss):
            stitch = net.stitches[cfg_id]
            raise DivergenceError(
                f"non-finite loss at epoch {t.epoch} step {t.step_in_epoch + 1}/{steps} (global step "
                f"{t.global_step + 1}) training network cfg_id {cfg_id} ({stitch.name}); last good checkpoint kept "
                f"in {t.out_dir}: lower --lr, add --clip-grad or use --amp-dtype bfloat16"
            )
        t.backward_and_step(loss)
        t.global_step += 1
        t.step_in_epoch += 1
        if t.ema is not None:
            t.ema.update(net, step=t.global_step)
        t.scheduler.step_update(num_updates=t.global_step)
        loss_sum += global_loss
        loss_n += 1
        lr = t.optimizer.param_groups[0]["lr"]
        t.step_log.write({"epoch": t.epoch, "step": t.global_step, "step_in_epoch": t.step_in_epoch, "rank": info.rank,
                          "cfg_id": cfg_id, "loss": float(local), "global_loss": global_loss, "lr": lr,
                          "attempt": attempt})
        n_since += 1
        if t.step_in_epoch % args.log_interval == 0 or t.step_in_epoch == steps:
            now = time.perf_counter()
            ips = n_since * x.shape[0] * info.world_size / max(now - t_last, 1e-9)
            t_last, n_since = now, 0
            _logger.info(
                f"Train: {t.epoch} [{t.step_in_epoch:>4d}/{steps} ({100.0 * t.step_in_epoch / steps:>3.0f}%)]  "
                f"Loss: {global_loss:#.4g} ({loss_sum / loss_n:#.4g})  {ips:>7.1f} img/s  LR: {lr:.3e}  "
                f"Net: {cfg_id} {net.stitches[cfg_id].name}"
            )
            if t.writer is not None:
                t.writer.add_scalar("train/loss", global_loss, t.global_step)
                t.writer.add_scalar("train/lr", lr, t.global_step)
        if args.checkpoint_interval and t.global_step % args.checkpoint_interval == 0 and t.step_in_epoch < steps:
            t.save_last()
    return OrderedDict(loss=loss_sum / max(loss_n, 1))


@torch.no_grad()
def validate(net: SNNet, loader, prep: Normalize, cfg_ids: list[int], autocast,
             max_batches: Optional[int] = None) -> dict[int, dict[str, float]]:
    """Top-1/top-5/loss of each network in ``cfg_ids``, in that order, from one pass over the
    (sharded) data that shares the networks' common prefixes (eval.py's sweep), summed over
    processes."""
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    sums = sweep_pass(net, batches, cfg_ids, prep, autocast, device=prep.device).all_reduce()
    by_id = {r["cfg_id"]: metrics_of(r) for r in sums.records()}
    return {c: by_id[c] for c in cfg_ids}


def summarize(per_net: dict[int, dict[str, float]], prefix: str = "") -> OrderedDict:
    row: OrderedDict = OrderedDict()
    for m in ("top1", "top5", "loss"):
        row[prefix + m] = sum(v[m] for v in per_net.values()) / len(per_net)
    for cfg, v in per_net.items():
        row[f"{prefix}top1_net{cfg}"] = v["top1"]
    return row


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
@exit_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    parser = build_train_parser()
    args, _ = parse_args_with_config(parser, argv)
    info = init_distributed(args.device)
    handlers: list[logging.Handler] = []
    try:
        return _run(args, info, handlers)
    finally:
        for h in handlers:
            _logger.removeHandler(h)
            h.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(args: Namespace, info: DistInfo, handlers: list) -> int:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    from timm.utils import ModelEmaV3, distribute_bn, update_summary

    from .config import save_args_yaml
    from .data import create_dataset, resolve_num_classes, sample_images

    handlers += setup_logging(info)
    if not args.anchors:
        raise ConfigError("no anchors given: pass --anchors NAME [NAME ...] (small to large) or -c a config")
    exp = args.experiment or default_experiment(args)
    out_dir = Path(args.output or "./output/train") / exp
    out_dir.mkdir(parents=True, exist_ok=True)
    if info.distributed:
        dist.barrier()
    if info.is_primary:
        handlers.append(add_file_log(out_dir))
    args = resolve_args(args, info)

    # resume target
    last = out_dir / "last.pth.tar"
    resume = args.resume
    if resume == AUTO or (not resume and last.exists()):
        resume = str(last) if last.exists() else ""
        if args.resume == AUTO and not resume and info.is_primary:
            _logger.info(f"--resume auto: no {last} yet, starting fresh")

    seed_everything(args.seed + info.rank)
    train_ds = create_dataset(args.dataset, args.data_dir, args.train_split, args.img_size, args.seed)
    val_ds = create_dataset(args.dataset, args.data_dir, args.val_split, args.img_size, args.seed)
    num_classes = resolve_num_classes(args.num_classes, train_ds)
    args.num_classes = num_classes  # recorded in args.yaml and the checkpoints (eval.py reads it)

    initial = None
    if args.initial_checkpoint:
        from .checkpoint import load_checkpoint_file
        from .official import official_state_of

        initial = load_checkpoint_file(args.initial_checkpoint)
        args.official_forward = args.official_forward or official_state_of(initial) is not None
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    net = build_model(args, num_classes)
    if initial is not None:
        from .official import load_initial_weights

        load_initial_weights(net, initial, args.initial_checkpoint)
        del initial
    if args.split_bn:
        apply_split_bn(net)
    teacher = build_teacher(args, num_classes, info.device)  # before LS init: fail fast on missing weights
    seed_everything(args.seed + info.rank)  # per-rank randomness from here on (drop-path, erasing, mixup)
    data_cfg = data_config_for(net, train_ds)
    if info.is_primary:
        save_args_yaml(args, out_dir / "args.yaml")  # after resolve_args: the values the run uses
        _logger.info(f"Run folder {out_dir}; {info.world_size} process(es) on {info.device.type}, batch "
                     f"{args.batch_size} per process ({args.batch_size * info.world_size} global), lr {args.lr:.3g}")
        _logger.info(f"SN-Net over {net.config['anchors']}: {net.num_stitches} networks, "
                     f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters")

    t = Trainer(args, info, out_dir)
    t.net = net
    t.saver_state = None
    if args.ls_init and not resume and not args.initial_checkpoint and net.layer_specs:
        if args.ls_init_images > len(train_ds):
            raise DataError(f"--ls-init-images {args.ls_init_images} is larger than the training set "
                            f"({len(train_ds)} images): use at most {len(train_ds)}")
        if info.is_primary:
            start = time.perf_counter()
            images = sample_images(train_ds, args.ls_init_images, data_cfg["input_size"][-1], args.seed,
                                   mean=data_cfg["mean"], std=data_cfg["std"],
                                   interpolation=data_cfg["interpolation"], crop_pct=data_cfg["crop_pct"])
            net.init_stitching_layers(images, batch_size=args.ls_init_batch_size, combine=args.ls_init_combine,
                                      progress=True)
            _logger.info(f"Least-squares init of {len(net.stitch_layers)} stitching layers on {len(images)} "
                         f"training images in {time.perf_counter() - start:.1f} s")
    net.to(info.device)
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    if info.distributed:
        broadcast_state(net)  # rank 0's LS-initialised weights to every rank

    t.net_sampler = NetworkSampler(net.num_stitches, args.seed, info.rank, args.sample_per_rank,
                                   resolve_sample_weights(args.sample_weights, net))
    opt_kwargs = {}
    if args.opt_eps is not None:
        opt_kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs["betas"] = tuple(args.opt_betas)
    t.optimizer = create_optimizer_v2(param_groups(net, args.weight_decay, args.stitch_lr_scale),
                                      opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                      momentum=args.momentum, **opt_kwargs)
    t.apex_amp = None
    if args.amp and args.amp_impl == "apex":  # legacy: NVIDIA apex AMP O1
        from apex import amp as apex_amp  # checked in resolve_args

        net, t.optimizer = apex_amp.initialize(net, t.optimizer, opt_level="O1")
        t.apex_amp = apex_amp
    t.setup_precision()
    t.ema = None
    if args.model_ema:
        t.ema = ModelEmaV3(net, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                           device=torch.device("cpu") if args.model_ema_force_cpu else None)

    sampler, train_loader, train_prep, val_loader, val_prep = build_loaders(train_ds, val_ds, args, info, data_cfg)
    full_steps = sampler.num_samples // args.batch_size
    t.steps_per_epoch = min(full_steps, args.max_steps_per_epoch or full_steps)
    if t.steps_per_epoch < 1:
        raise DataError(f"{sampler.num_samples} training images per process give no full batch of {args.batch_size}: "
                        f"lower --batch-size")
    t.data_sampler, t.train_loader, t.train_prep = sampler, train_loader, train_prep
    t.scheduler, _ = create_scheduler_v2(t.optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == "loss"),
                                         updates_per_epoch=t.steps_per_epoch)

    if resume:
        t.load(resume, resume_opt=not args.no_resume_opt)
        if info.distributed:
            dist.barrier()
    # the schedule is a function of (epoch, update): set the lr of every group (lr_scale included)
    t.scheduler.step(t.epoch)
    t.scheduler.step_update(t.global_step)

    if info.distributed and args.grad_sync == "ddp":
        ddp = nn.parallel.DistributedDataParallel(net, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                                  find_unused_parameters=True)
        t.model = ddp
        t.grad_sync = lambda: None
    else:
        t.model = net
        t.grad_sync = GradAllReduce(net.parameters(), info.world_size, union=args.sample_per_rank)

    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    t.mixup_fn = None
    if mixup_active and not args.no_aug:
        t.mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                           prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                           label_smoothing=args.smoothing, num_classes=num_classes)
        base = SoftTargetCrossEntropy()
    elif args.smoothing:
        base = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    t.criterion = TrainLoss(base, teacher, args.distillation_type, args.distillation_alpha, args.distillation_tau)

    val_ids = (list(range(net.num_stitches)) if args.val_stitches == "all" else
               parse_stitch_ids(args.val_stitches, net.num_stitches) if args.val_stitches else default_val_ids(net))

    decreasing = args.eval_metric == "loss"
    t.saver = _saver_class()(lambda metric: t.checkpoint_state(True, metric), checkpoint_dir=str(out_dir),
                             recovery_dir=str(out_dir), decreasing=decreasing, max_history=args.checkpoint_hist)
    if t.saver_state and Path(resume).resolve().parent == out_dir.resolve():
        t.saver.load_state_dict(t.saver_state)
    t.writer = None
    if info.is_primary:
        from torch.utils.tensorboard import SummaryWriter

        t.writer = SummaryWriter(log_dir=str(out_dir))
    t.step_log = StepLog(out_dir / "steps.jsonl")

    if t.epoch >= args.epochs:
        _logger.info(f"Nothing to do: {resume} already finished epoch {t.epoch - 1} of --epochs {args.epochs}")
    if info.is_primary:
        _logger.info(f"Training {args.epochs - t.epoch} epoch(s) of {t.steps_per_epoch} steps; validating cfg_ids {val_ids}")
    best = None
    try:
        end = args.epochs if args.stop_epoch is None else min(args.epochs, args.stop_epoch)
        while t.epoch < end:
            train_metrics = train_one_epoch(t)
            if info.distributed and args.dist_bn:
                distribute_bn(net, info.world_size, args.dist_bn == "reduce")
            per_net = validate(net, val_loader, val_prep, val_ids, t.autocast, args.max_val_batches)
            eval_metrics = summarize(per_net)
            metric = eval_metrics[args.eval_metric]
            if t.ema is not None and not args.model_ema_force_cpu:
                if info.distributed and args.dist_bn:
                    distribute_bn(t.ema, info.world_size, args.dist_bn == "reduce")
                ema_net = validate(t.ema.module, val_loader, val_prep, val_ids, t.autocast, args.max_val_batches)
                eval_metrics.update(summarize(ema_net, "ema_"))
                metric = eval_metrics["ema_" + args.eval_metric]
            lr = t.optimizer.param_groups[0]["lr"]
            if info.is_primary:
                desc = "  ".join(f"{cfg}: {v['top1']:.2f}" for cfg, v in per_net.items())
                _logger.info(f"Eval: {t.epoch}  mean top-1 {eval_metrics['top1']:.2f}  top-5 {eval_metrics['top5']:.2f}  "
                             f"loss {eval_metrics['loss']:.4f}  per network top-1 [{desc}]")
                update_summary(t.epoch, train_metrics, eval_metrics, filename=str(out_dir / "summary.csv"), lr=lr,
                               write_header=not (out_dir / "summary.csv").exists())
                for k, v in eval_metrics.items():
                    t.writer.add_scalar(f"eval/{k}", v, t.epoch)
                t.writer.add_scalar("train/epoch_loss", train_metrics["loss"], t.epoch)
                t.writer.flush()
            t.scheduler.step(t.epoch + 1, metric)
            best = t.saver.save_checkpoint(t.epoch, metric=metric) if info.is_primary else None
            if not info.is_primary:
                t.checkpoint_state(True, metric)  # the collective half of the save
            if info.distributed:
                dist.barrier()
            t.epoch += 1
            t.step_in_epoch = 0
    finally:
        t.step_log.close()
        if t.writer is not None:
            t.writer.close()
    if info.is_primary and best and best[0] is not None:
        _logger.info(f"*** Best metric: {best[0]:.4f} (epoch {best[1]})")
    return 0
