"""Evaluate many networks of an SN-Net from one pass over the data.

The official SN-Net code evaluates each of its (often 71) networks with its own full pass over
the validation set: every image is decoded 71 times and every anchor's stem and early blocks
run again for each network that starts with them. Here:

* every batch is loaded and decoded once, and every selected network runs on it;
* networks that share leading computation share it: per batch, each front anchor runs its stem
  and blocks once, and after block ``j`` the computation branches into every selected network
  that leaves that anchor at ``j`` (the stitching layer output is shared too when several
  networks leave through the same layer at the same ``j``); an anchor is the branch after its
  last block, followed by its head;
* metrics are exact sums (correct top-1 / top-5 counts, summed cross-entropy, sample count), so
  they are identical to evaluating the networks one at a time (``tests/test_sweep.py``);
* under ``torchrun`` each rank takes the indices ``rank, rank + world, ...`` of the dataset
  (no padding, unlike timm's ``OrderedDistributedSampler``) and the sums are all-reduced, so
  every validation sample counts exactly once;
* the selected networks are processed in chunks (``--sweep-chunk``, :func:`make_chunks`); eval.py
  saves each finished chunk (:mod:`snnet.results`), so an interrupted sweep loses at most one.

The loaders and normalisation are :mod:`snnet.data`'s; latency is :mod:`snnet.latency`'s.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .model import SNNet
from .stitches import Stitch


# ---------------------------------------------------------------------------------------------
# the shared-prefix forward
# ---------------------------------------------------------------------------------------------
def exit_block(net: SNNet, stitch: Stitch) -> int:
    """The last block of the front anchor that network ``stitch`` runs (an anchor: its last)."""
    if stitch.is_anchor:
        return net.anchor_adapters[stitch.front].num_blocks - 1
    return stitch.front_block


def sweep_order(net: SNNet, cfg_ids: Iterable[int]) -> list[int]:
    """``cfg_ids`` ordered by (front anchor, exit block, cfg_id): consecutive networks share the
    longest prefixes, so chunks cut from this order lose the least sharing."""
    return sorted(set(cfg_ids), key=lambda i: (net.stitches[i].front, exit_block(net, net.stitches[i]), i))


def make_chunks(net: SNNet, cfg_ids: Iterable[int], size: int) -> list[list[int]]:
    """Split the networks into chunks of ``size`` (0: one chunk) in :func:`sweep_order`."""
    order = sweep_order(net, cfg_ids)
    if size <= 0 or size >= len(order):
        return [order] if order else []
    return [order[i:i + size] for i in range(0, len(order), size)]


@dataclass
class SweepPlan:
    """Which networks branch off which front anchor after which block.

    ``branches[a][j]`` lists the selected networks that run anchor ``a``'s stem and blocks
    ``0..j`` and then leave it (an anchor network leaves after its last block, into its head).
    """

    net: SNNet
    cfg_ids: list[int]
    branches: dict[int, dict[int, list[Stitch]]] = field(init=False)

    def __post_init__(self):
        self.cfg_ids = sorted(set(int(i) for i in self.cfg_ids))
        self.branches = {}
        for i in self.cfg_ids:
            s = self.net.stitches[i]
            self.branches.setdefault(s.front, {}).setdefault(exit_block(self.net, s), []).append(s)

    @property
    def index(self) -> dict[int, int]:
        """cfg_id -> row in the metric sums."""
        return {c: r for r, c in enumerate(self.cfg_ids)}


def forward_networks(net: SNNet, plan: SweepPlan, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(cfg_id, logits)`` of every network of ``plan`` on the batch ``x``, computing each
    front anchor's stem and blocks once. Call under ``torch.no_grad()`` (or inference mode).

    The logits equal ``net.select(cfg_id)(x)``: every network runs the same modules on the same
    tensors in the same order; only repeated work is skipped.
    """
    for a in sorted(plan.branches):
        adapter = net.anchor_adapters[a]
        by_exit = plan.branches[a]
        h = adapter.stem(x)
        for j in range(-1, max(by_exit) + 1):
            if j >= 0:
                h = adapter.blocks[j](h)
            leaving = by_exit.get(j)
            if not leaving:
                continue
            stitched: dict[int, torch.Tensor] = {}  # stitching layer -> its output on h
            for s in leaving:
                if s.is_anchor:
                    out = adapter.head(h)
                else:
                    if s.layer not in stitched:
                        stitched[s.layer] = net.stitch_layers[s.layer](h)
                    out = net.anchor_adapters[s.back].forward_from(stitched[s.layer], s.back_block)
                yield s.cfg_id, out
            del stitched


# ---------------------------------------------------------------------------------------------
# metric sums
# ---------------------------------------------------------------------------------------------
class MetricSums:
    """Per network: correct top-1, correct top-5, sample count (int64), summed loss (float64).

    Kept on the device and added to without synchronising; :meth:`all_reduce` sums them over
    processes.
    """

    def __init__(self, cfg_ids: Sequence[int], device: torch.device | str = "cpu"):
        self.cfg_ids = list(cfg_ids)
        self.row = {c: r for r, c in enumerate(self.cfg_ids)}
        self.counts = torch.zeros(len(self.cfg_ids), 3, dtype=torch.int64, device=device)  # c1, c5, n
        self.loss = torch.zeros(len(self.cfg_ids), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, cfg_id: int, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits = logits.float()
        k = min(5, logits.shape[1])
        hit = logits.topk(k, dim=1).indices.eq(target.view(-1, 1))
        r = self.row[cfg_id]
        self.counts[r, 0] += hit[:, 0].sum()
        self.counts[r, 1] += hit.any(dim=1).sum()
        self.counts[r, 2] += target.numel()
        self.loss[r] += F.cross_entropy(logits, target, reduction="sum").double()

    def all_reduce(self) -> "MetricSums":
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)
            dist.all_reduce(self.loss)
        return self

    def records(self) -> list[dict[str, Any]]:
        counts, loss = self.counts.cpu().tolist(), self.loss.cpu().tolist()
        return [
            {"cfg_id": c, "correct1": int(n[0]), "correct5": int(n[1]), "count": int(n[2]), "loss_sum": float(s)}
            for c, n, s in zip(self.cfg_ids, counts, loss)
        ]


def metrics_of(record: Mapping[str, Any]) -> dict[str, float]:
    """top1/top5 in percent and mean loss from a record of sums."""
    n = max(int(record["count"]), 1)
    return {"top1": 100.0 * record["correct1"] / n, "top5": 100.0 * record["correct5"] / n,
            "loss": record["loss_sum"] / n}


# ---------------------------------------------------------------------------------------------
# passes over the data
# ---------------------------------------------------------------------------------------------
Prep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _no_prep(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, y


@torch.no_grad()
def sweep_pass(net: SNNet, loader: Iterable, cfg_ids: Sequence[int], prep: Prep = _no_prep,
               autocast: Callable[[], Any] = contextlib.nullcontext, device: torch.device | str = "cpu",
               progress: Optional[Callable[[int, int], None]] = None) -> MetricSums:
    """One pass over ``loader``: the summed metrics of every network in ``cfg_ids`` (this
    process's shard only; call :meth:`MetricSums.all_reduce` to sum over processes)."""
    plan = SweepPlan(net, cfg_ids)
    sums = MetricSums(plan.cfg_ids, device)
    was = net.training
    net.eval()
    try:
        for b, (x, y) in enumerate(loader):
            x, y = prep(x, y)
            with autocast():
                for cfg_id, out in forward_networks(net, plan, x):
                    sums.update(cfg_id, out, y)
            if progress is not None:
                progress(b + 1, y.numel())
    finally:
        net.train(was)
    return sums


@torch.no_grad()
def one_at_a_time(net: SNNet, loader: Iterable, cfg_ids: Sequence[int], prep: Prep = _no_prep,
                  autocast: Callable[[], Any] = contextlib.nullcontext,
                  device: torch.device | str = "cpu") -> MetricSums:
    """The official way: a fresh pass over ``loader`` per network, ``net.select(i); net(x)``
    (the reference for tests and benchmarks)."""
    sums = MetricSums(sorted(set(cfg_ids)), device)
    was = net.training
    net.eval()
    try:
        for cfg_id in sums.cfg_ids:
            with net.selecting(cfg_id):
                for x, y in loader:
                    x, y = prep(x, y)
                    with autocast():
                        out = net(x)
                    sums.update(cfg_id, out, y)
    finally:
        net.train(was)
    return sums
