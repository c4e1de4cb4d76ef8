"""Training a chunk of lab cells in one pass over the data.

Per step, the cells of one seed share that seed's batch (the same data order as train.py with
``--seed S``: :class:`~snnet.data.samplers.EpochSampler` and
:class:`~snnet.data.samplers.SeededSamples` depend on the seed only). The chunk's routes form the
sweep's prefix tree (:func:`snnet.evaluate.sweep.forward_networks`), so a front ``A[:i]`` shared
by several cells runs once per batch; the frozen anchors need no gradients, so that front builds
no autograd graph. Each cell's output is taken as soon as the tree yields it: its loss, backward
and optimizer step run right away (:meth:`CellRun.step`), before the next cell's branch, so one
cell's graph is alive at a time. Each cell thus runs train.py's computation on train.py's
batches; what is shared is only computed once.

Validation (before training: ``ls_top1``; after every epoch) is one sweep pass over the
validation set for every cell of the chunk.
"""

from __future__ import annotations

import itertools
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..evaluate.sweep import SweepPlan, forward_networks, metrics_of, sweep_pass
from .cells import CellNetworks, CellRun, FrozenAnchors

_logger = logging.getLogger("lab")


@dataclass
class SeedData:
    """One seed's training data: train.py's sampler, loader and batch preparation for that seed."""

    sampler: Any
    loader: Any
    prep: Any


@dataclass
class Progress:
    """Console progress over the whole lab: cells done / total, cell-steps per second, ETA."""

    total_cells: int
    done_cells: int
    cell_steps_left: int
    start: float = 0.0
    cell_steps: int = 0
    images: int = 0

    def __post_init__(self):
        self.start = time.perf_counter()

    def advance(self, cells: int, batch: int) -> None:
        self.cell_steps += cells
        self.cell_steps_left -= cells
        self.images += cells * batch

    def line(self, what: str) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        eta = self.cell_steps_left * elapsed / max(self.cell_steps, 1)
        return (
            f"lab: {self.done_cells}/{self.total_cells} cells done | {what} | "
            f"{self.images / elapsed:.0f} img/s | ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        )


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory: the device's allocations on CUDA (reset after reading), else the process's
    peak resident set."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return round(peak, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@torch.no_grad()
def validate_cells(view: CellNetworks, val_loader, val_prep, max_batches: Optional[int], device) -> list[dict]:
    """top1/top5/loss of every cell of ``view`` from one sweep pass over the validation set."""
    batches = val_loader if max_batches is None else itertools.islice(val_loader, max_batches)
    sums = sweep_pass(view, batches, list(range(len(view.stitches))), val_prep, device=device)
    return [metrics_of(r) for r in sums.records()]


def train_chunk(
    runs: list[CellRun],
    frozen: FrozenAnchors,
    data: dict[int, SeedData],
    val: tuple[Any, Any],
    steps_per_epoch: int,
    progress: Progress,
) -> None:
    """Train every cell of ``runs`` for its ``--epochs`` in one pass per epoch; each run's
    ``trajectory`` gets one row per epoch, ``ls_top1`` its top-1 before training."""
    args = runs[0].args
    device = next(iter(data.values())).prep.device
    view = CellNetworks(frozen, runs)
    val_loader, val_prep = val
    t0 = time.perf_counter()
    for run, m in zip(runs, validate_cells(view, val_loader, val_prep, args.max_val_batches, device)):
        run.ls_top1 = m["top1"]
    _share_time(runs, time.perf_counter() - t0)
    groups = {seed: [i for i, r in enumerate(runs) if r.cell.seed == seed] for seed in data}
    groups = {seed: ids for seed, ids in groups.items() if ids}
    plans = {seed: SweepPlan(view, ids) for seed, ids in groups.items()}
    ids = sorted(r.cell.index for r in runs)
    label = f"{len(ids)} cell(s) {', '.join(map(str, ids[:6]))}{', ...' if len(ids) > 6 else ''}"
    for epoch in range(args.epochs):
        view.train()
        iters = {}
        for seed in groups:
            data[seed].sampler.set_epoch(epoch)
            iters[seed] = iter(data[seed].loader)
        sums = {i: torch.zeros(3, dtype=torch.float64, device=device) for i in range(len(runs))}  # loss, correct, n
        seconds = [0.0] * len(runs)
        for step in range(steps_per_epoch):
            for seed, ids in groups.items():
                x, y = data[seed].prep(*next(iters[seed]))
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                _train_batch(runs, plans[seed], view, x, y, sums, seconds)
                progress.advance(len(ids), x.shape[0])
            if args.log_interval and ((step + 1) % args.log_interval == 0 or step + 1 == steps_per_epoch):
                _logger.info(
                    progress.line(
                        f"training {label}: epoch {epoch + 1}/{args.epochs} step {step + 1}/{steps_per_epoch}"
                    )
                )
        t0 = time.perf_counter()
        metrics = validate_cells(view, val_loader, val_prep, args.max_val_batches, device)
        _share_time(runs, time.perf_counter() - t0)
        peak = peak_mem_mb(device)
        for i, (run, m) in enumerate(zip(runs, metrics)):
            loss_sum, correct, n = sums[i].tolist()
            run.seconds += seconds[i]
            run.trajectory.append(
                {
                    "cell": run.cell.index,
                    "epoch": epoch,
                    "step": run.global_step,
                    "lr": run.optimizer.param_groups[0]["lr"],
                    "train_loss": loss_sum / max(n, 1),
                    "train_top1": 100.0 * correct / max(n, 1),
                    "val_loss": m["loss"],
                    "val_top1": m["top1"],
                    "img_per_sec": n / max(seconds[i], 1e-9),
                    "peak_mem_mb": peak,
                }
            )
            run.scheduler.step(epoch + 1, m[run.args.eval_metric])  # as Trainer, after validation


def _train_batch(runs, plan, view, x, y, sums, seconds) -> None:
    """One optimizer step of every cell in ``plan`` on the batch; the shared front is charged to
    the first cell that needs it."""
    start = time.perf_counter()
    for i, out in forward_networks(view, plan, x):
        loss = runs[i].step(x, out, y)
        with torch.no_grad():
            correct = (out.argmax(dim=1) == y).sum()
        n = loss.new_tensor(y.numel(), dtype=torch.float64)
        sums[i] += torch.stack([loss.double() * n, correct.double(), n])
        now = time.perf_counter()
        seconds[i] += now - start
        start = now


def _share_time(runs: list[CellRun], seconds: float) -> None:
    for run in runs:
        run.seconds += seconds / len(runs)
