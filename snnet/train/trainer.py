"""The training loop of train.py: a :class:`Trainer` holds everything one process trains with.

One optimizer step trains ONE network of the SN-Net, drawn by :class:`snnet.train.network_sampling.NetworkSampler`
(every rank the same network by default): :meth:`Trainer.step` is that step and may be overridden,
as in timm's training tasks. ``step_callbacks`` run after each forward with ``(trainer, step,
loss)`` (``step``: the global step being trained, from 1) and may return a replacement loss or
raise; tests use them to inject NaNs and kill workers.

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

No host-device synchronisation per step: the losses stay on the device until the log interval
(:class:`PendingSteps`), where one all-reduce and one copy read every pending step's loss and
non-finite flag, and so does every checkpoint save before it writes. A non-finite loss on any rank
stops every rank there with :class:`DivergenceError` naming the first bad step and its network; the
steps after it were not recorded and their weights never reach a checkpoint, so the last
checkpoint on disk is the last good state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..config import plain
from ..core.compile import compile_blocks
from ..core.stitches import parse_stitch_ids
from ..data.loaders import build_loaders, data_config_for
from ..distributed import DistInfo, GradAllReduce, broadcast_state
from ..errors import CheckpointError, DataError, DivergenceError
from ..run_config import TrainConfig, build_snnet
from ..runtime import autocast_factory
from .checkpoint import (
    CHECKPOINT_VERSION,
    check_same_schedule,
    checkpoint_saver_class,
    cpu_copy,
    gather,
    load_weights,
    plain_scheduler_state,
    read_training_checkpoint,
    split_aux_bn,
)
from .metrics import PendingSteps, StepLog, summarize, validate
from .network_sampling import create_network_sampler
from .recipe import (
    apply_split_bn,
    build_loss,
    build_optimizer,
    build_scheduler,
    build_teacher,
    default_val_ids,
)
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .runlog import start_run_files

_logger = logging.getLogger("train")

# (trainer, global step being trained, loss) -> a replacement loss or None; may raise.
StepCallback = Callable[["Trainer", int, torch.Tensor], Optional[torch.Tensor]]
# (trainer) -> True to stop at this step boundary. Collective: every rank calls it at the same
# boundaries and must get the same answer (snnet.launch's preemption flag agrees over the ranks).
StopCheck = Callable[["Trainer"], bool]


class TrainingInterrupted(Exception):
    """``stop_check`` stopped training at a step boundary; last.pth.tar resumes there exactly."""


class Trainer:
    """Everything one process holds while training, built from train.py's resolved arguments;
    :meth:`fit` trains to ``--epochs`` (or ``--stop-epoch``), :meth:`train_one_epoch` one epoch,
    :meth:`step` one optimizer step. ``resume`` is a checkpoint to continue from ('' for none)."""

    def __init__(
        self,
        args: TrainConfig,
        info: DistInfo,
        out_dir: Path,
        resume: str = "",
        step_callbacks: Sequence[StepCallback] = (),
        stop_check: Optional[StopCheck] = None,
    ):
        self.args, self.info, self.out_dir = args, info, out_dir
        self.step_callbacks = list(step_callbacks)
        self.stop_check = stop_check
        self.epoch = 0
        self.step_in_epoch = 0  # optimizer steps done in self.epoch
        self.global_step = 0
        self.saver_state = None
        # The order matters: the model is built from the run seed (the same weights on every
        # rank), then every process seeds its own randomness (drop-path, erasing, mixup) once.
        train_ds, val_ds = self._datasets()
        teacher = self._model()
        seed_everything(self.args.seed + info.rank)
        data_cfg = data_config_for(self.net, train_ds)
        self._announce()
        self._network_sampler()
        if self.args.ls_init and not resume and not self.args.initial_checkpoint and self.net.layer_specs:
            self._ls_init(train_ds, data_cfg)
        self._place_model()
        self._optimization()
        self._loaders(train_ds, val_ds, data_cfg)
        if resume:
            self.load(resume, resume_opt=not self.args.no_resume_opt)
            if info.distributed:
                dist.barrier()
        # the schedule is a function of (epoch, update): set the lr of every group (lr_scale included)
        self.scheduler.step(self.epoch)
        self.scheduler.step_update(self.global_step)
        self._wrap_and_loss(teacher)
        self._outputs(resume)

    # -- construction, in order ---------------------------------------------------------------
    def _datasets(self) -> tuple:
        """The training and validation sets; the class count they give goes into the run config
        (recorded in args.yaml and the checkpoints: eval.py reads it)."""
        from ..data.datasets import create_dataset, resolve_num_classes

        args = self.args
        train_ds = create_dataset(args.dataset, args.data_dir, args.train_split, args.img_size, args.seed)
        val_ds = create_dataset(args.dataset, args.data_dir, args.val_split, args.img_size, args.seed)
        self.args = dataclasses.replace(args, num_classes=resolve_num_classes(args.num_classes, train_ds))
        return train_ds, val_ds

    def _model(self) -> Optional[nn.Module]:
        """The SN-Net (from ``--initial-checkpoint``'s weights when given: an official SN-Net
        checkpoint switches the official forward on, said in the log), split BN, and the teacher."""
        args, initial = self.args, None
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
                if self.info.is_primary:
                    _logger.info(f"{args.initial_checkpoint} is an official SN-Net checkpoint: official forward on")
                self.args = args = dataclasses.replace(args, official_forward=True)
        self.net = build_snnet(args, args.num_classes, seed=args.seed)  # the same initial weights on every rank
        if initial is not None:
            from ..io.official import load_initial_weights

            load_initial_weights(self.net, initial, args.initial_checkpoint, _logger.info)
        if args.split_bn:
            apply_split_bn(self.net)
        return build_teacher(args, args.num_classes, self.info.device)  # before LS init: fail fast on missing weights

    def _announce(self) -> None:
        """The first log lines (rank 0; train.log holds them once the run starts, :meth:`_outputs`)."""
        args, info, net = self.args, self.info, self.net
        if not info.is_primary:
            return
        _logger.info(
            f"Run folder {self.out_dir}; {info.world_size} process(es) on {info.device.type}, batch "
            f"{args.batch_size} per process ({args.batch_size * info.world_size} global), lr {args.lr:.3g}"
        )
        _logger.info(
            f"SN-Net over {net.config['anchors']}: {net.num_stitches} networks, "
            f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters"
        )

    def _network_sampler(self) -> None:
        """Which network each step trains. Made before LS init (seconds to minutes), so that a
        refused sampling option fails fast; FLOPs are counted in eval mode on zeros, so the global
        RNG stream is the same either way."""
        args, info = self.args, self.info
        self.net_sampler = create_network_sampler(
            self.net,
            args.sample_by,
            args.seed,
            info.rank,
            args.sample_per_rank,
            args.sample_weights,
            args.flops_gap,
            args.flops_sampling_k,
        )

    def _ls_init(self, train_ds, data_cfg: dict) -> None:
        """Least-squares init of the stitching layers on rank 0 (broadcast in :meth:`_place_model`)."""
        from ..data.datasets import ls_init_images

        args, net = self.args, self.net
        if args.ls_init_images > len(train_ds):
            raise DataError(
                f"--ls-init-images {args.ls_init_images} is larger than the training set "
                f"({len(train_ds)} images): use at most {len(train_ds)}"
            )
        if not self.info.is_primary:
            return
        start = time.perf_counter()
        images = ls_init_images(train_ds, args.ls_init_images, data_cfg, args.seed)
        net.init_stitching_layers(
            images, batch_size=args.ls_init_batch_size, combine=args.ls_init_combine, progress=True
        )
        _logger.info(
            f"Least-squares init of {len(net.stitch_layers)} stitching layers on {len(images)} "
            f"training images in {time.perf_counter() - start:.1f} s"
        )

    def _place_model(self) -> None:
        """The net on the device (rank 0's LS-initialised weights on every rank)."""
        self.net.to(self.info.device)
        if self.args.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.info.distributed:
            broadcast_state(self.net)

    def _optimization(self) -> None:
        """Optimizer, precision (apex / autocast / GradScaler), EMA, compile."""
        from timm.utils import ModelEmaV3

        args, info = self.args, self.info
        self.optimizer = build_optimizer(self.net, args)
        self.apex_amp = None
        if args.amp and args.amp_impl == "apex":  # legacy: NVIDIA apex AMP O1 (patches net in place)
            from apex import amp as apex_amp  # checked in resolve_args

            self.net, self.optimizer = apex_amp.initialize(self.net, self.optimizer, opt_level="O1")
            self.apex_amp = apex_amp
        self.amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
        self.native_amp = args.amp and args.amp_impl == "native"
        self.autocast = autocast_factory(self.native_amp, self.amp_dtype, info.device)
        # GradScaler for float16 on CUDA only (bfloat16 and CPU autocast need none)
        cuda_fp16 = self.native_amp and self.amp_dtype == torch.float16 and info.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if cuda_fp16 else None
        self.ema = None
        if args.model_ema:
            self.ema = ModelEmaV3(
                self.net,
                decay=args.model_ema_decay,
                use_warmup=args.model_ema_warmup,
                device=torch.device("cpu") if args.model_ema_force_cpu else None,
            )
        # after the EMA's deep copy: a copy of a compiled module would call the original's forward
        self.mark_cudagraph_step = None
        if args.torchcompile:
            compile_blocks(self.net, args.torchcompile, args.torchcompile_mode)
            if args.torchcompile_mode == "reduce-overhead":  # a new iteration may overwrite the last one's outputs
                self.mark_cudagraph_step = torch.compiler.cudagraph_mark_step_begin

    def _loaders(self, train_ds, val_ds, data_cfg: dict) -> None:
        """Data loaders, steps per epoch and the schedule over them."""
        args = self.args
        loaders = build_loaders(train_ds, val_ds, args, self.info, data_cfg)
        self.data_sampler, self.train_loader, self.train_prep, self.val_loader, self.val_prep = loaders
        full_steps = self.data_sampler.num_samples // args.batch_size
        self.steps_per_epoch = min(full_steps, args.max_steps_per_epoch or full_steps)
        if self.steps_per_epoch < 1:
            raise DataError(
                f"{self.data_sampler.num_samples} training images per process give no full batch of "
                f"{args.batch_size}: lower --batch-size"
            )
        self.scheduler = build_scheduler(self.optimizer, args, self.steps_per_epoch)

    def _wrap_and_loss(self, teacher: Optional[nn.Module]) -> None:
        """Gradient averaging (DDP or our all-reduce), Mixup/CutMix, the loss, validated networks."""
        args, info, net = self.args, self.info, self.net
        if info.distributed and args.grad_sync == "ddp":
            self.model = nn.parallel.DistributedDataParallel(
                net, device_ids=[info.device.index] if info.device.type == "cuda" else None, find_unused_parameters=True
            )
            self.grad_sync = None  # DDP's own hooks
        else:
            self.model = net
            self.grad_sync = GradAllReduce(net.parameters(), info.world_size, union=args.sample_per_rank)
        self.mixup_fn, self.criterion = build_loss(args, teacher, args.num_classes)
        self.val_ids = (
            list(range(net.num_stitches))
            if args.val_stitches == "all"
            else parse_stitch_ids(args.val_stitches, net.num_stitches)
            if args.val_stitches
            else default_val_ids(net)
        )

    def _outputs(self, resume: str) -> None:
        """Checkpoint saver (its top-k list kept when resuming in the same folder), tensorboard, steps.jsonl."""
        args, out_dir = self.args, self.out_dir
        self.saver = checkpoint_saver_class()(
            lambda metric: self.checkpoint_state(True, metric),
            checkpoint_dir=str(out_dir),
            recovery_dir=str(out_dir),
            decreasing=args.eval_metric == "loss",
            max_history=args.checkpoint_hist,
        )
        if self.saver_state and Path(resume).resolve().parent == out_dir.resolve():
            self.saver.load_state_dict(self.saver_state)
        # every check passed: the run starts (folder, args.yaml with the values the run uses, train.log)
        start_run_files(_logger, out_dir, args, self.info.is_primary)
        self.writer = None
        if self.info.is_primary:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir))
        self.step_log = StepLog(out_dir / "steps.jsonl")
        self.pending = PendingSteps()
        if self.epoch >= args.epochs:
            _logger.info(f"Nothing to do: {resume} already finished epoch {self.epoch - 1} of --epochs {args.epochs}")

    # -- the epochs --------------------------------------------------------------------------
    def fit(self) -> int:
        """Train and validate each epoch up to ``--epochs`` (or ``--stop-epoch``); 0 when done."""
        from timm.utils import distribute_bn, update_summary

        args, info, net = self.args, self.info, self.net
        out_dir = self.out_dir
        if info.is_primary:
            _logger.info(
                f"Training {args.epochs - self.epoch} epoch(s) of {self.steps_per_epoch} steps; "
                f"validating cfg_ids {self.val_ids}"
            )
        best = None
        try:
            end = args.epochs if args.stop_epoch is None else min(args.epochs, args.stop_epoch)
            while self.epoch < end:
                train_metrics = self.train_one_epoch()
                if info.distributed and args.dist_bn:  # frozen anchors keep their statistics
                    distribute_bn(
                        net.stitch_layers if net.anchors_frozen else net, info.world_size, args.dist_bn == "reduce"
                    )
                per_net = validate(
                    net, self.val_loader, self.val_prep, self.val_ids, self.autocast, args.max_val_batches
                )
                eval_metrics = summarize(per_net)
                metric = eval_metrics[args.eval_metric]
                if self.ema is not None and not args.model_ema_force_cpu:
                    if info.distributed and args.dist_bn:
                        distribute_bn(self.ema, info.world_size, args.dist_bn == "reduce")
                    ema_net = validate(
                        self.ema.module,
                        self.val_loader,
                        self.val_prep,
                        self.val_ids,
                        self.autocast,
                        args.max_val_batches,
                    )
                    eval_metrics.update(summarize(ema_net, "ema_"))
                    metric = eval_metrics["ema_" + args.eval_metric]
                lr = self.optimizer.param_groups[0]["lr"]
                if info.is_primary:
                    desc = "  ".join(f"{cfg}: {v['top1']:.2f}" for cfg, v in per_net.items())
                    _logger.info(
                        f"Eval: {self.epoch}  mean top-1 {eval_metrics['top1']:.2f}  top-5 "
                        f"{eval_metrics['top5']:.2f}  loss {eval_metrics['loss']:.4f}  per network top-1 [{desc}]"
                    )
                    update_summary(
                        self.epoch,
                        train_metrics,
                        eval_metrics,
                        filename=str(out_dir / "summary.csv"),
                        lr=lr,
                        write_header=not (out_dir / "summary.csv").exists(),
                    )
                    for k, v in eval_metrics.items():
                        self.writer.add_scalar(f"eval/{k}", v, self.epoch)
                    self.writer.add_scalar("train/epoch_loss", train_metrics["loss"], self.epoch)
                    self.writer.flush()
                self.scheduler.step(self.epoch + 1, metric)
                best = self.saver.save_checkpoint(self.epoch, metric=metric) if info.is_primary else None
                if not info.is_primary:
                    self.checkpoint_state(True, metric)  # the collective half of the save
                if info.distributed:
                    dist.barrier()
                self.epoch += 1
                self.step_in_epoch = 0
        finally:
            self.step_log.close()
            if self.writer is not None:
                self.writer.close()
        if info.is_primary and best and best[0] is not None:
            _logger.info(f"*** Best metric: {best[0]:.4f} (epoch {best[1]})")
        return 0

    def train_one_epoch(self) -> dict:
        """Train ``self.epoch`` from step ``self.step_in_epoch``; returns the epoch's mean loss."""
        args, info, net = self.args, self.info, self.net
        self.model.train()
        if self.mixup_fn is not None and args.mixup_off_epoch and self.epoch >= args.mixup_off_epoch:
            self.mixup_fn.mixup_enabled = False
        self.data_sampler.set_epoch(self.epoch, skip_batches=self.step_in_epoch)
        steps = self.steps_per_epoch
        self.loss_sum, self.loss_n = 0.0, 0
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # torchrun's restart count, logged
        t_last, n_since = time.perf_counter(), 0
        it = iter(self.train_loader)
        while self.step_in_epoch < steps:
            try:
                x, y = next(it)
            except StopIteration:
                break
            x, y = self.train_prep(x, y)
            if self.mixup_fn is not None:
                x, y = self.mixup_fn(x, y)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            cfg_id = self.net_sampler.draw()
            loss = self.step(x, y, cfg_id)
            lr = self.optimizer.param_groups[0]["lr"]
            self.pending.add(
                {
                    "epoch": self.epoch,
                    "step": self.global_step,
                    "step_in_epoch": self.step_in_epoch,
                    "rank": info.rank,
                    "cfg_id": cfg_id,
                    "loss": None,
                    "global_loss": None,
                    "lr": lr,
                    "attempt": attempt,
                },
                loss,
            )
            n_since += 1
            log_now = self.step_in_epoch % args.log_interval == 0 or self.step_in_epoch == steps
            save_now = bool(args.checkpoint_interval) and self.global_step % args.checkpoint_interval == 0
            if log_now or save_now:
                global_loss = self.read_losses()
            if log_now:
                now = time.perf_counter()
                ips = n_since * x.shape[0] * info.world_size / max(now - t_last, 1e-9)
                t_last, n_since = now, 0
                _logger.info(
                    f"Train: {self.epoch} [{self.step_in_epoch:>4d}/{steps} ({100.0 * self.step_in_epoch / steps:>3.0f}%)]  "
                    f"Loss: {global_loss:#.4g} ({self.loss_sum / self.loss_n:#.4g})  {ips:>7.1f} img/s  LR: {lr:.3e}  "
                    f"Net: {cfg_id} {net.stitches[cfg_id].name}"
                )
                if self.writer is not None:
                    self.writer.add_scalar("train/loss", global_loss, self.global_step)
                    self.writer.add_scalar("train/lr", lr, self.global_step)
            if save_now and self.step_in_epoch < steps:
                self.save_last()
            if self.step_in_epoch < steps and self.stop_check is not None and self.stop_check(self):
                self.read_losses()  # the steps so far to steps.jsonl, then last.pth.tar at this step
                self.save_last()
                raise TrainingInterrupted(f"stopped at global step {self.global_step}: {self.out_dir}/last.pth.tar")
        self.read_losses()  # an epoch that ran out of data before a log step
        return OrderedDict(loss=self.loss_sum / max(self.loss_n, 1))

    def read_losses(self) -> float:
        """Read the pending steps' losses (one host sync), write their steps.jsonl records and add
        them to the epoch's mean; the last global loss. A non-finite loss on any process raises
        :class:`DivergenceError` naming the first such step (collective)."""
        records, first_bad = self.pending.read(self.info.world_size)
        for record in records[:first_bad]:
            self.step_log.write(record)
            self.loss_sum += record["global_loss"]
            self.loss_n += 1
        if first_bad is not None:
            r = records[first_bad]
            raise DivergenceError(
                f"non-finite loss at epoch {r['epoch']} step {r['step_in_epoch']}/{self.steps_per_epoch} (global "
                f"step {r['step']}) training network cfg_id {r['cfg_id']} ({self.net.stitches[r['cfg_id']].name}); "
                f"last good checkpoint kept in {self.out_dir}: lower --lr, add --clip-grad or use --amp-dtype bfloat16"
            )
        return records[-1]["global_loss"] if records else float("nan")

    def step(self, x: torch.Tensor, y: torch.Tensor, cfg_id: int) -> torch.Tensor:
        """One optimizer step of network ``cfg_id`` on the prepared batch; returns the loss, still
        on the device (reading it here would stall the GPU queue every step: see
        :meth:`read_losses`)."""
        net = self.net
        net.select(cfg_id)
        if self.mark_cudagraph_step is not None:
            self.mark_cudagraph_step()
        if self.grad_sync is not None:
            self.grad_sync.begin(cfg_id)  # its buckets launch during backward
        with self.autocast():
            out = self.model(x)
            loss = self.criterion(x, out, y)
        for callback in self.step_callbacks:
            replaced = callback(self, self.global_step + 1, loss)
            if replaced is not None:
                loss = replaced
        self.backward_and_step(loss)
        self.global_step += 1
        self.step_in_epoch += 1
        if self.ema is not None:
            self.ema.update(net, step=self.global_step)
        self.scheduler.step_update(num_updates=self.global_step)
        return loss.detach()

    # -- precision, backward, optimizer step -------------------------------------------------
    def backward_and_step(self, loss: torch.Tensor) -> None:
        """backward, gradient averaging over processes, clipping, optimizer step, grads to None."""
        backward_and_step(loss, self.optimizer, self.args, self.scaler, self.apex_amp, self.grad_sync)

    def save_last(self) -> None:
        """Step-level checkpoint: last.pth.tar inside an epoch (collective; rank 0 writes)."""
        from ..io.checkpoint import save_checkpoint

        state = self.checkpoint_state(epoch_complete=False)
        if state is not None:
            state["saver"] = plain(self.saver.state_dict())
            save_checkpoint(state, self.out_dir / "last.pth.tar")
        if self.info.distributed:
            dist.barrier()

    # -- state ------------------------------------------------------------------------------
    def state_dict(self, epoch_complete: bool, metric: Optional[float] = None) -> Optional[dict]:
        """The training checkpoint (format in the module docstring). Collective (all ranks call
        it: every rank's RNG and network-sampler states are gathered); the dict on rank 0, None
        elsewhere."""
        info = self.info
        rng = gather(info, cpu_copy(capture_rng_state()))
        samplers = gather(info, cpu_copy(self.net_sampler.state_dict()))
        if not info.is_primary:
            return None
        sd, aux = split_aux_bn(self.net.state_dict())
        state = {
            "version": CHECKPOINT_VERSION,
            "arch": "snnet",
            "args": plain(self.args),
            "snnet_config": plain(self.net.config),
            "epoch": self.epoch,
            "epoch_complete": epoch_complete,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "world_size": info.world_size,
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
            state["state_dict_ema"] = split_aux_bn(self.ema.module.state_dict())[0]
        if metric is not None:
            state["metric"] = metric
        return state

    def load_state_dict(self, ckpt: dict, source: str, resume_opt: bool = True) -> None:
        """Continue from checkpoint ``ckpt`` (read from ``source``): the weights (and EMA), and
        unless ``resume_opt`` is False the optimizer, scaler, schedule, position, network sampler
        and RNGs."""
        load_weights(self.net, self.ema, ckpt, source)
        if not resume_opt:
            _logger.info(f"Loaded weights from {source} (--no-resume-opt: fresh optimizer, schedule and sampler)")
            return
        info = self.info
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
        samplers, rngs = ckpt["network_sampler"], ckpt["rng_states"]
        if int(ckpt.get("world_size", 1)) == info.world_size:
            self.net_sampler.load_state_dict(samplers[info.rank])
            restore_rng_state(rngs[info.rank])
        else:
            if info.is_primary:
                _logger.warning(
                    f"checkpoint {source} was written by {ckpt.get('world_size')} processes, this run has "
                    f"{info.world_size}: the run continues but will not repeat the original exactly"
                )
            per_rank = self.net_sampler.per_rank
            self.net_sampler.load_state_dict(samplers[0] if not per_rank else samplers[info.rank % len(samplers)])
        self.saver_state = ckpt.get("saver")
        where = f"epoch {self.epoch}" + (f" after step {self.step_in_epoch}" if self.step_in_epoch else "")
        _logger.info(f"Resumed from {source}: continuing at {where} (global step {self.global_step})")

    def checkpoint_state(self, epoch_complete: bool, metric: Optional[float] = None) -> Optional[dict]:
        """:meth:`state_dict` (the checkpoint saver's callback)."""
        return self.state_dict(epoch_complete, metric)

    def load(self, path: str, resume_opt: bool) -> None:
        """Resume from the checkpoint file ``path`` (see :meth:`load_state_dict`); with the optimizer,
        only under the schedule (``--epochs``) it was written with."""
        ckpt = read_training_checkpoint(path, self.net.config)
        if resume_opt:
            check_same_schedule(ckpt, path, self.args.epochs)
        self.load_state_dict(ckpt, path, resume_opt)


def backward_and_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    args: Any,
    scaler: Optional[torch.amp.GradScaler] = None,
    apex_amp=None,
    grad_sync: Optional[GradAllReduce] = None,
) -> None:
    """One optimizer step from ``loss``: backward (scaled by ``scaler`` or apex when given), the
    gradient all-reduce, ``--clip-grad``, the step, grads to None. The trainer's and the lab's
    (:mod:`snnet.lab`) cells' steps, so that a lab cell trains exactly as train.py would."""
    from timm.utils import dispatch_clip_grad

    if apex_amp is not None:
        with apex_amp.scale_loss(loss, opt) as scaled:
            scaled.backward()
    elif scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    if grad_sync is not None:
        grad_sync()
    if args.clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        dispatch_clip_grad(params, value=args.clip_grad, mode=args.clip_mode)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)  # unused parameters keep grad None: the optimizer skips them
