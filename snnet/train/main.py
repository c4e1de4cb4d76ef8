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
from ..distributed import DistInfo, init_distributed, set_cpu_threads
from ..errors import ConfigError, exit_on_user_error
from ..io.lock import check_folder_free
from ..io.paths import check_output_dir
from ..run_config import TrainConfig, build_snnet, from_namespace, require_anchors
from .effects import check_train_effects, needs_built_net
from .network_sampling import check_sampling_args
from .runlog import DeferredFileLog
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
    set_cpu_threads(cfg.threads)
    if cfg.check_args:
        return check_only(cfg)
    # Every rank checks the run folder before the process group forms: the primary takes its lock
    # only once every rank has joined, so no rank can find its own primary's lock (a race under load).
    out_dir = _run_folder(cfg)
    info = init_distributed(cfg.device)
    handlers: list[logging.Handler] = []
    try:
        return _run(cfg, info, handlers, out_dir, step_callbacks, stop_check)
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
    out_dir: Path,
    step_callbacks: Sequence[StepCallback],
    stop_check: Optional[StopCheck] = None,
) -> int:
    handlers += setup_logging(info)
    if info.is_primary:  # train.log is written once the run starts (runlog.start_run_files)
        handlers.append(add_file_log())
    cfg = resolve_args(args, info)
    cfg, resume = resume_target(cfg, out_dir, info)
    if cfg.no_resume_opt and not resume and info.is_primary:
        _logger.info("--no-resume-opt: no checkpoint to resume in this run folder, so the run starts fresh anyway")
    return Trainer(cfg, info, out_dir, resume, step_callbacks, stop_check).fit()


def _run_folder(args: TrainConfig) -> Path:
    """The run folder, refused before any work when it is a file or another train.py writes it."""
    require_anchors(args.anchors)
    exp = args.experiment or default_experiment(args)
    out_dir = Path(args.output or "./output/train") / exp
    check_output_dir(out_dir, "--output/--experiment")
    check_folder_free(out_dir, "--output/--experiment")  # another train.py on it: refused before any work
    return out_dir


def check_only(args: TrainConfig) -> int:
    """``--check-args``: the checks that need no data, in one process, for
    ``SNNET_CHECK_WORLD_SIZE`` processes (distributed_train.sh sets it): values and combinations,
    FLOPs groups (on a random-weight SN-Net), the run folder and the checkpoint a rerun would
    resume. A refusal is then one line before torchrun starts, not one per worker under
    torchrun's report; what only a worker can find (data, weights, shapes) is still its own."""
    from ..io.checkpoint import load_checkpoint_file
    from .checkpoint import check_resume_args

    _logger.addHandler(logging.NullHandler())  # the workers log the warnings
    info = DistInfo(world_size=int(os.environ.get("SNNET_CHECK_WORLD_SIZE", "1")))
    require_anchors(args.anchors)
    args = resolve_args(args, info)
    if needs_built_net(args):  # FLOPs groups, layer sizes, junctions: judged on a random-weight SN-Net
        from .network_sampling import create_network_sampler

        net = build_snnet(args, num_classes=args.num_classes or 10, pretrained=False)
        create_network_sampler(
            net, args.sample_by, args.seed, 0, False, args.sample_weights, args.flops_gap, args.flops_sampling_k
        )
    # without --experiment each torchrun run gets a folder of its own: only a --resume FILE to check
    resume = args.resume if args.resume != AUTO else ""
    if args.experiment:
        out_dir = Path(args.output or "./output/train") / args.experiment
        check_output_dir(out_dir, "--output/--experiment")
        check_folder_free(out_dir, "--output/--experiment")
        args, resume = resume_target(args, out_dir, info)
    if resume:
        from ..io.official_layout import looks_official

        if not looks_official(resume):
            check_resume_args(load_checkpoint_file(resume), resume, args)
    return 0


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
    if args.validation_batch_size is not None and args.validation_batch_size < 1:
        raise ConfigError(f"--validation-batch-size must be >= 1, got {args.validation_batch_size}")
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
    check_sampling_args(args.sample_by, args.sample_weights, args.flops_gap, args.flops_sampling_k)
    check_train_effects(args, info, _logger.info)
    check_optimizer_and_schedule(args.opt, args.sched)
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


def check_optimizer_and_schedule(opt: str, sched: str) -> None:
    """``--opt`` and ``--sched`` names timm knows, tried on a dummy parameter before any work
    (timm's factories raise a bare ValueError, and only once the model and data are built)."""
    import torch
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    try:
        optimizer = create_optimizer_v2(torch.nn.Linear(1, 1), opt=opt, lr=1e-3)
    except (ValueError, AssertionError, KeyError) as e:
        raise ConfigError(f"--opt '{opt}': {e} (timm's names: e.g. adamw, sgd, lamb, lookahead_adamw)") from None
    try:
        create_scheduler_v2(optimizer, sched=sched, num_epochs=2)
    except (ValueError, AssertionError, KeyError) as e:
        raise ConfigError(
            f"--sched '{sched}': {e} (timm's names: cosine, tanh, step, multistep, plateau, poly)"
        ) from None


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


def add_file_log() -> logging.Handler:
    """train.log's handler, holding its lines until the run folder is created."""
    fh = DeferredFileLog()
    _logger.addHandler(fh)
    return fh
