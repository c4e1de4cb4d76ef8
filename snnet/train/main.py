"""train.py: SN-Net training in the style of timm's train.py (``train.py``, ``distributed_train.sh``).

This module turns the command line into a run: it checks the arguments that need the world
size, picks the run folder and the checkpoint to resume, sets up logging, then hands over to
:class:`snnet.train.trainer.Trainer` (the loop, the checkpoints and how resuming works). The recipe
(loss, distillation, optimizer, schedule) is :mod:`snnet.train.recipe`, the data :mod:`snnet.data.datasets`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from argparse import Namespace
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

import torch.distributed as dist

from ..cli import build_train_parser
from ..config import parse_args_with_config
from ..data.loaders import max_workers
from ..distributed import DistInfo, init_distributed
from ..errors import ConfigError, exit_on_user_error
from ..run_config import TrainConfig, from_namespace, require_anchors
from .trainer import StepCallback, StopCheck, Trainer

_logger = logging.getLogger("train")

AUTO = "auto"


@exit_on_user_error
def main(
    argv: Optional[list[str]] = None,
    step_callbacks: Sequence[StepCallback] = (),
    stop_check: Optional[StopCheck] = None,
) -> int:
    """train.py. ``step_callbacks`` and ``stop_check`` go to the :class:`~snnet.train.trainer.Trainer` (see there)."""
    parser = build_train_parser()
    args, _ = parse_args_with_config(parser, argv)
    cfg = from_namespace(TrainConfig, args)  # frozen from here on: derived values make a new config
    info = init_distributed(cfg.device)
    handlers: list[logging.Handler] = []
    try:
        return _run(cfg, info, handlers, step_callbacks, stop_check)
    finally:
        for h in handlers:
            _logger.removeHandler(h)
            h.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(
    args: TrainConfig,
    info: DistInfo,
    handlers: list,
    step_callbacks: Sequence[StepCallback],
    stop_check: Optional[StopCheck] = None,
) -> int:
    handlers += setup_logging(info)
    require_anchors(args.anchors)
    exp = args.experiment or default_experiment(args)
    out_dir = Path(args.output or "./output/train") / exp
    out_dir.mkdir(parents=True, exist_ok=True)
    if info.distributed:
        dist.barrier()
    if info.is_primary:
        handlers.append(add_file_log(out_dir))
    cfg = resolve_args(args, info)
    cfg, resume = resume_target(cfg, out_dir, info)
    return Trainer(cfg, info, out_dir, resume, step_callbacks, stop_check).fit()


def resume_target(cfg: TrainConfig, out_dir: Path, info: DistInfo) -> tuple[TrainConfig, str]:
    """The checkpoint to resume: ``--resume FILE``, or the run folder's last.pth.tar when it
    exists (``--resume auto``, also the default); '' to start fresh. An official SN-Net
    checkpoint given to ``--resume`` becomes ``--initial-checkpoint`` (in the returned config)."""
    from ..io.official_layout import looks_official

    last = out_dir / "last.pth.tar"
    resume = cfg.resume
    if resume and resume != AUTO and looks_official(resume):
        # an official SN-Net checkpoint has no optimizer state to resume: start from its weights,
        # and after a restart continue from this run's own last.pth.tar
        if info.is_primary and not last.exists():
            _logger.info(f"{resume} is an official SN-Net checkpoint: starting from its weights (--initial-checkpoint)")
        cfg = dataclasses.replace(cfg, initial_checkpoint=cfg.initial_checkpoint or resume)
        resume = ""
    if resume == AUTO or (not resume and last.exists()):
        resume = str(last) if last.exists() else ""
        if cfg.resume == AUTO and not resume and info.is_primary:
            _logger.info(f"--resume auto: no {last} yet, starting fresh")
    return cfg, resume


def _check_batch_options(args: Any, batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax) and batch_size % 2:
        raise ConfigError(f"Mixup/CutMix need an even per-process batch size, got --batch-size {batch_size}")
    if args.split_bn:
        if not args.resplit or args.reprob <= 0:
            raise ConfigError(
                "--split-bn needs --resplit with --reprob > 0 (the erased half gets its own BatchNorm stats)"
            )
        if batch_size % 2:
            raise ConfigError(f"--split-bn needs an even per-process batch size, got --batch-size {batch_size}")


def _check_recipe_options(args: Any, info: DistInfo) -> None:
    if args.distillation_type != "none" and not args.teacher:
        raise ConfigError(f"--distillation-type {args.distillation_type} needs --teacher NAME")
    if args.amp and args.amp_impl == "apex":
        try:
            import apex  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--amp-impl apex needs NVIDIA apex installed; use --amp-impl native (torch.autocast)"
            ) from None
    if args.amp and args.amp_dtype == "float16" and info.device.type == "cpu":
        _logger.warning("--amp-dtype float16 on CPU runs without a GradScaler; bfloat16 is the usual CPU choice")
    if args.ls_init_images < 1:
        raise ConfigError(f"--ls-init-images must be >= 1, got {args.ls_init_images}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")


def resolve_args(args: Namespace | TrainConfig, info: DistInfo) -> TrainConfig:
    """train.py's frozen run config: the parsed arguments checked (combinations and sizes that need
    the world size), with the values derived from them (per-process batch, workers, lr)."""
    require_anchors(args.anchors)
    cfg = args if isinstance(args, TrainConfig) else from_namespace(TrainConfig, args)
    batch_size = cfg.batch_size
    if cfg.global_batch_size is not None:
        if cfg.global_batch_size % info.world_size:
            raise ConfigError(
                f"--global-batch-size {cfg.global_batch_size} does not divide by the {info.world_size} processes: "
                f"use a multiple of {info.world_size}"
            )
        batch_size = cfg.global_batch_size // info.world_size
    _check_batch_options(cfg, batch_size)
    _check_recipe_options(cfg, info)
    workers, cores, local_world = max_workers(info.world_size)
    if cfg.workers > workers and info.is_primary:
        _logger.warning(
            f"--workers {cfg.workers} x {local_world} processes exceeds the {cores} available cores: "
            f"using {workers} workers per process"
        )
    lr = cfg.lr
    if lr is None:
        ratio = batch_size * info.world_size / cfg.lr_base_size
        lr = cfg.lr_base * (math.sqrt(ratio) if cfg.lr_base_scale == "sqrt" else ratio)
    return dataclasses.replace(
        cfg,
        batch_size=batch_size,
        workers=min(cfg.workers, workers),
        lr=lr,
        validation_batch_size=batch_size if cfg.validation_batch_size is None else cfg.validation_batch_size,
    )


# ---------------------------------------------------------------------------------------------
# run folder, logging
# ---------------------------------------------------------------------------------------------
def default_experiment(args: TrainConfig) -> str:
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
