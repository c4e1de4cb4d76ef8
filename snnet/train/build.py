"""The :class:`~snnet.train.trainer.Trainer`'s construction in named steps, in the order it calls
them: the data sets (their class count goes into the run config), the SN-Net and the teacher,
the first log lines, the network sampler, least-squares init, the net on the device, EMA and
compile, the steps per epoch, and the gradient averaging over processes.

The order matters for determinism: the model is built from the run seed (the same weights on
every rank) before the trainer seeds each process's own randomness, and the network sampler is
made before least-squares init (seconds to minutes) so that a refused sampling option fails fast.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..core.compile import compile_blocks
from ..core.model import SNNet
from ..core.stitches import parse_stitch_ids
from ..distributed import DistInfo, GradAllReduce, broadcast_state
from ..errors import CheckpointError, DataError
from ..run_config import ModelConfig, TrainConfig, build_snnet, idle_weight_options
from .network_sampling import NetworkSampler, create_network_sampler
from .recipe import apply_split_bn, build_teacher, default_val_ids

_logger = logging.getLogger("train")


def load_datasets(args: TrainConfig) -> tuple[TrainConfig, Any, Any]:
    """The training and validation sets, and the run config with the class count they give
    (recorded in args.yaml and the checkpoints: eval.py reads it)."""
    from ..data.datasets import create_dataset, resolve_num_classes
    from ..data.sources import DataOptions

    opts = DataOptions.from_args(args)
    train_ds = create_dataset(args.dataset, args.data_dir, args.train_split, args.img_size, args.seed, opts, True)
    val_ds = create_dataset(args.dataset, args.data_dir, args.val_split, args.img_size, args.seed, opts)
    return dataclasses.replace(args, num_classes=resolve_num_classes(args.num_classes, train_ds)), train_ds, val_ds


def build_model(args: TrainConfig, info: DistInfo) -> tuple[TrainConfig, SNNet, Optional[nn.Module]]:
    """The SN-Net (from ``--initial-checkpoint``'s weights when given: an official SN-Net
    checkpoint switches the official forward on, said in the log, and the run config returned
    says so), split BN, and the teacher."""
    initial = None
    if args.initial_checkpoint:
        from ..io.checkpoint import load_checkpoint_file
        from ..io.official_layout import official_forward_of

        initial = load_checkpoint_file(args.initial_checkpoint)
        # SN-Net's checkpoints need its forward; SN-Netv2's run as snnet's (final norm applied)
        official = official_forward_of(initial)
        if official == "v2" and args.official_forward:
            raise CheckpointError(
                f"{args.initial_checkpoint} is an official SN-Netv2 checkpoint, whose networks end with the "
                f"final norm: drop --official-forward (SN-Net's rule without it)"
            )
        if official == "v1" and not args.official_forward:
            if info.is_primary:
                _logger.info(f"{args.initial_checkpoint} is an official SN-Net checkpoint: official forward on")
            args = dataclasses.replace(args, official_forward=True)
    idle = idle_weight_options(
        ModelConfig.from_args(args), initial and f"--initial-checkpoint {args.initial_checkpoint}"
    )
    if idle and info.is_primary:
        _logger.info(idle)
    net = build_snnet(args, args.num_classes, seed=args.seed)  # the same initial weights on every rank
    if initial is not None:
        from ..io.official import load_initial_weights

        load_initial_weights(net, initial, args.initial_checkpoint, _logger.info)
    if args.split_bn:
        apply_split_bn(net)
    teacher = build_teacher(args, args.num_classes, info.device)  # before LS init: fail fast on missing weights
    return args, net, teacher


def log_run_start(args: TrainConfig, info: DistInfo, net: SNNet, out_dir: Path) -> None:
    """The first log lines (rank 0; train.log holds them once the run starts)."""
    if not info.is_primary:
        return
    _logger.info(
        f"Run folder {out_dir}; {info.world_size} process(es) on {info.device.type}, batch "
        f"{args.batch_size} per process ({args.batch_size * info.world_size} global), lr {args.lr:.3g}"
    )
    _logger.info(
        f"SN-Net over {net.config['anchors']}: {net.num_stitches} networks, "
        f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters"
    )


def build_network_sampler(net: SNNet, args: TrainConfig, info: DistInfo) -> NetworkSampler:
    """Which network each step trains. FLOPs are counted in eval mode on zeros, so the global
    RNG stream is the same whichever sampler is made."""
    return create_network_sampler(
        net,
        args.sample_by,
        args.seed,
        info.rank,
        args.sample_per_rank,
        args.sample_weights,
        args.flops_gap,
        args.flops_sampling_k,
    )


def ls_init_runs(net: SNNet, args: TrainConfig, info: DistInfo, resume: str) -> bool:
    """Whether ``--ls-init`` initialises the stitching layers: not on resume (the run's own
    layers continue), and not (logged once) from an ``--initial-checkpoint`` or without layers."""
    if not args.ls_init or resume:
        return False
    idle = (
        "the stitching layers start from --initial-checkpoint"
        if args.initial_checkpoint
        else "this SN-Net has no stitching layer"
        if not net.layer_specs
        else ""
    )
    if idle and info.is_primary:
        _logger.info(f"--ls-init: not run, {idle}")
    return not idle


def ls_init(net: SNNet, args: TrainConfig, info: DistInfo, train_ds, data_cfg: dict) -> None:
    """Least-squares init of the stitching layers on rank 0 (broadcast by :func:`place_model`)."""
    from ..data.datasets import ls_init_images

    if args.ls_init_images > len(train_ds):
        raise DataError(
            f"--ls-init-images {args.ls_init_images} is larger than the training set "
            f"({len(train_ds)} images): use at most {len(train_ds)}"
        )
    if not info.is_primary:
        return
    start = time.perf_counter()
    images = ls_init_images(train_ds, args.ls_init_images, data_cfg, args.seed)
    net.init_stitching_layers(images, batch_size=args.ls_init_batch_size, combine=args.ls_init_combine, progress=True)
    _logger.info(
        f"Least-squares init of {len(net.stitch_layers)} stitching layers on {len(images)} "
        f"training images in {time.perf_counter() - start:.1f} s"
    )


def place_model(net: SNNet, args: TrainConfig, info: DistInfo) -> None:
    """The net on the device (rank 0's LS-initialised weights on every rank)."""
    net.to(info.device)
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    if info.distributed:
        broadcast_state(net)


def build_ema(net: nn.Module, args: TrainConfig) -> Optional[Any]:
    """timm's ModelEmaV3 of ``net`` under ``--model-ema`` (None without)."""
    from timm.utils import ModelEmaV3

    if not args.model_ema:
        return None
    return ModelEmaV3(
        net,
        decay=args.model_ema_decay,
        use_warmup=args.model_ema_warmup,
        device=torch.device("cpu") if args.model_ema_force_cpu else None,
    )


def compile_for_training(net: SNNet, args: TrainConfig) -> Optional[Callable[[], None]]:
    """``--torchcompile``: the blocks compiled in place (after the EMA's deep copy: a copy of a
    compiled module would call the original's forward); the CUDA-graph step marker each step
    calls under ``reduce-overhead`` (a new iteration may overwrite the last one's outputs), else None."""
    if not args.torchcompile:
        return None
    compile_blocks(net, args.torchcompile, args.torchcompile_mode)
    return torch.compiler.cudagraph_mark_step_begin if args.torchcompile_mode == "reduce-overhead" else None


def steps_per_epoch(num_samples: int, args: TrainConfig) -> int:
    """Optimizer steps per epoch from ``num_samples`` training images per process (full batches,
    at most ``--max-steps-per-epoch``); refused when that is not one full batch."""
    full_steps = num_samples // args.batch_size
    steps = min(full_steps, args.max_steps_per_epoch or full_steps)
    if steps < 1:
        raise DataError(
            f"{num_samples} training images per process give no full batch of {args.batch_size}: lower --batch-size"
        )
    return steps


def wrap_for_processes(net: SNNet, args: TrainConfig, info: DistInfo) -> tuple[nn.Module, Optional[GradAllReduce]]:
    """The module each step calls and the gradient averaging over processes: DDP (its own hooks,
    no all-reduce of ours) under ``--grad-sync ddp`` with several processes, else the net and our
    all-reduce."""
    if info.distributed and args.grad_sync == "ddp":
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=True), None
    return net, GradAllReduce(net.parameters(), info.world_size, union=args.sample_per_rank)


def validated_networks(net: SNNet, args: TrainConfig) -> list[int]:
    """The cfg_ids each epoch validates: ``--val-stitches`` ('all', a list, or the default pick)."""
    if args.val_stitches == "all":
        return list(range(net.num_stitches))
    if args.val_stitches:
        return parse_stitch_ids(args.val_stitches, net.num_stitches)
    return default_val_ids(net)
