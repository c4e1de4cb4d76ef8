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

import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from ..config import plain
from ..data.loaders import build_loaders, data_config_for
from ..distributed import DistInfo
from ..errors import DivergenceError
from ..run_config import TrainConfig
from .build import (
    build_ema,
    build_model,
    build_network_sampler,
    compile_for_training,
    load_datasets,
    log_run_start,
    ls_init,
    ls_init_runs,
    place_model,
    steps_per_epoch,
    validated_networks,
    wrap_for_processes,
)
from .checkpoint import (
    CHECKPOINT_VERSION,
    check_same_schedule,
    cpu_copy,
    gather,
    load_weights,
    plain_scheduler_state,
    read_training_checkpoint,
    split_aux_bn,
)
from .metrics import PendingSteps, summarize, validate
from .outputs import RunOutputs
from .recipe import build_loss, build_optimizer, build_scheduler
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .step import backward_and_step, build_precision

_logger = logging.getLogger("train")

# (trainer, global step being trained, loss) -> a replacement loss or None; may raise.
StepCallback = Callable[["Trainer", int, torch.Tensor], Optional[torch.Tensor]]
# (trainer) -> True to stop at this step boundary. Collective: every rank calls it at the same
# boundaries and must get the same answer (snnet.launch's preemption flag agrees over the ranks).
StopCheck = Callable[["Trainer"], bool]


class TrainingInterrupted(Exception):
    """``stop_check`` stopped training at a step boundary; last.pth.tar resumes there exactly."""


class Trainer:
    """Everything one process holds while training, built from train.py's resolved arguments
    (the steps in :mod:`snnet.train.build`); :meth:`fit` trains to ``--epochs`` (or
    ``--stop-epoch``), :meth:`train_one_epoch` one epoch, :meth:`step` one optimizer step. The run
    folder's files are :attr:`outputs` (:mod:`snnet.train.outputs`). ``resume`` is a checkpoint
    to continue from ('' for none)."""

    def __init__(
        self,
        args: TrainConfig,
        info: DistInfo,
        out_dir: Path,
        resume: str = "",
        step_callbacks: Sequence[StepCallback] = (),
        stop_check: Optional[StopCheck] = None,
    ):
        self.info, self.out_dir = info, out_dir
        self.step_callbacks = list(step_callbacks)
        self.stop_check = stop_check
        self.epoch = 0
        self.step_in_epoch = 0  # optimizer steps done in self.epoch
        self.global_step = 0
        self.saver_state = None
        args, train_ds, val_ds = load_datasets(args)
        args, net, teacher = build_model(args, info)
        self.args, self.net = args, net
        seed_everything(args.seed + info.rank)  # after the model: its weights are the run seed's on every rank
        data_cfg = data_config_for(net, train_ds)
        log_run_start(args, info, net, out_dir)
        self.net_sampler = build_network_sampler(net, args, info)
        if ls_init_runs(net, args, info, resume):
            ls_init(net, args, info, train_ds, data_cfg)
        place_model(net, args, info)
        self.optimizer = build_optimizer(net, args)
        self.net, self.optimizer, self.precision = build_precision(net, self.optimizer, args, info.device)
        self.ema = build_ema(self.net, args)
        self.mark_cudagraph_step = compile_for_training(self.net, args)
        loaders = build_loaders(train_ds, val_ds, args, info, data_cfg)
        self.data_sampler, self.train_loader, self.train_prep, self.val_loader, self.val_prep = loaders
        self.steps_per_epoch = steps_per_epoch(self.data_sampler.num_samples, args)
        self.scheduler = build_scheduler(self.optimizer, args, self.steps_per_epoch)
        if resume:
            self.load(resume, resume_opt=not args.no_resume_opt)
            if info.distributed:
                dist.barrier()
        # the schedule is a function of (epoch, update): set the lr of every group (lr_scale included)
        self.scheduler.step(self.epoch)
        self.scheduler.step_update(self.global_step)
        self.model, self.grad_sync = wrap_for_processes(self.net, args, info)
        self.mixup_fn, self.criterion = build_loss(args, teacher, args.num_classes)
        self.val_ids = validated_networks(self.net, args)
        same_folder = bool(resume) and Path(resume).resolve().parent == out_dir.resolve()
        self.outputs = RunOutputs(
            out_dir,
            args,
            info,
            lambda metric: self.checkpoint_state(True, metric),
            self.saver_state if same_folder else None,
        )
        self.pending = PendingSteps()
        if self.epoch >= args.epochs:
            _logger.info(f"Nothing to do: {resume} already finished epoch {self.epoch - 1} of --epochs {args.epochs}")

    # -- the epochs --------------------------------------------------------------------------
    def fit(self) -> int:
        """Train and validate each epoch up to ``--epochs`` (or ``--stop-epoch``); 0 when done."""
        from timm.utils import distribute_bn

        args, info, net = self.args, self.info, self.net
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
                    net, self.val_loader, self.val_prep, self.val_ids, self.precision.autocast, args.max_val_batches
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
                        self.precision.autocast,
                        args.max_val_batches,
                    )
                    eval_metrics.update(summarize(ema_net, "ema_"))
                    metric = eval_metrics["ema_" + args.eval_metric]
                lr = self.optimizer.param_groups[0]["lr"]
                self.outputs.write_epoch(self.epoch, per_net, train_metrics, eval_metrics, lr)
                self.scheduler.step(self.epoch + 1, metric)
                best = self.outputs.save_epoch(self.epoch, metric) if info.is_primary else None
                if not info.is_primary:
                    self.checkpoint_state(True, metric)  # the collective half of the save
                if info.distributed:
                    dist.barrier()
                self.epoch += 1
                self.step_in_epoch = 0
        finally:
            self.outputs.close()
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
                self.outputs.log_train(
                    f"Train: {self.epoch} [{self.step_in_epoch:>4d}/{steps} ({100.0 * self.step_in_epoch / steps:>3.0f}%)]  "
                    f"Loss: {global_loss:#.4g} ({self.loss_sum / self.loss_n:#.4g})  {ips:>7.1f} img/s  LR: {lr:.3e}  "
                    f"Net: {cfg_id} {net.stitches[cfg_id].name}",
                    global_loss,
                    lr,
                    self.global_step,
                )
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
            self.outputs.step_log.write(record)
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
        with self.precision.autocast():
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

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """backward, gradient averaging over processes, clipping, optimizer step, grads to None."""
        p = self.precision
        backward_and_step(loss, self.optimizer, self.args, p.scaler, p.apex_amp, self.grad_sync)

    def save_last(self) -> None:
        """Step-level checkpoint: last.pth.tar inside an epoch (collective; rank 0 writes)."""
        self.outputs.save_last(self.checkpoint_state(epoch_complete=False))
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
        if self.precision.scaler is not None:
            state["scaler"] = self.precision.scaler.state_dict()
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
        if self.precision.scaler is not None and "scaler" in ckpt:
            self.precision.scaler.load_state_dict(ckpt["scaler"])
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
        self._warn_other_stream(ckpt, source)
        self.saver_state = ckpt.get("saver")
        where = f"epoch {self.epoch}" + (f" after step {self.step_in_epoch}" if self.step_in_epoch else "")
        _logger.info(f"Resumed from {source}: continuing at {where} (global step {self.global_step})")

    def _warn_other_stream(self, ckpt: dict, source: str) -> None:
        """A WebDataset stream's order depends on the loader workers: resumed inside an epoch with
        other ``--workers``, the rest of that epoch comes from another stream (docs/data.md)."""
        from ..data.streams import StreamLoader

        saved = (ckpt.get("args") or {}).get("workers")
        stream = isinstance(self.data_sampler, StreamLoader)
        if stream and self.step_in_epoch and saved is not None and saved != self.args.workers and self.info.is_primary:
            _logger.warning(
                f"checkpoint {source} read its shards with --workers {saved}, this run has {self.args.workers}: "
                f"the rest of epoch {self.epoch} comes from another stream (resume with --workers {saved} to repeat it)"
            )

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
