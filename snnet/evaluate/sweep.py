"""Evaluate many networks of an SN-Net from one pass over the data.

The official SN-Net code evaluates each of its (often 71) networks with its own full pass over
the validation set: every image is decoded 71 times and every anchor's stem and early blocks
run again for each network that starts with them. Here:

* every batch is loaded and decoded once, and every selected network runs on it;
* networks that share leading computation share it: the selected networks' routes form a prefix
  tree of steps (stem, blocks, stitching layers, head), and per batch every step of the tree
  runs once. So each first anchor runs its stem and blocks once and branches after block ``j``
  into every network that leaves it there; a stitching layer's output is shared by every
  network that leaves through it at that point, and SN-Netv2's three-segment routes share
  their first two segments in the same way; an anchor is the branch after its last block,
  followed by its head;
* metrics are exact sums (correct top-1 / top-5 counts, summed cross-entropy, sample count), so
  they are identical to evaluating the networks one at a time (``tests/test_sweep.py``);
* under ``torchrun`` each rank takes the indices ``rank, rank + world, ...`` of the dataset
  (no padding, unlike timm's ``OrderedDistributedSampler``) and the sums are all-reduced, so
  every validation sample counts exactly once;
* the selected networks are processed in chunks (``--sweep-chunk``, :func:`make_chunks`); eval.py
  saves each finished chunk (:mod:`snnet.evaluate.results`), so an interrupted sweep loses at most one.

The loaders and normalisation are :mod:`snnet.data.datasets`'s; latency is :mod:`snnet.evaluate.latency`'s.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..core.model import SNNet
from ..core.routes import Route, Step
from ..runtime import eval_mode


# ---------------------------------------------------------------------------------------------
# the shared-prefix forward
# ---------------------------------------------------------------------------------------------
def _order_key(route: Route) -> tuple[int, ...]:
    """(first anchor, its exit) and then every junction: routes that share prefixes sort together."""
    key = [route.first.anchor, route.first.stop]
    for _, layer, seg in route.junctions():
        key += [layer, seg.anchor, seg.start, seg.stop]
    return tuple(key)


def sweep_order(net: SNNet, cfg_ids: Iterable[int]) -> list[int]:
    """``cfg_ids`` ordered by their routes (first anchor, exit block, then the later segments):
    consecutive networks share the longest prefixes, so chunks cut from this order lose the
    least sharing."""
    return sorted(set(cfg_ids), key=lambda i: (_order_key(net.stitches[i].route), i))


def make_chunks(net: SNNet, cfg_ids: Iterable[int], size: int) -> list[list[int]]:
    """Split the networks into chunks of ``size`` (0: one chunk) in :func:`sweep_order`."""
    order = sweep_order(net, cfg_ids)
    if size <= 0 or size >= len(order):
        return [order] if order else []
    return [order[i : i + size] for i in range(0, len(order), size)]


class PrefixNode:
    """A node of the prefix tree over the selected routes' steps: reached by running the steps
    on the path from the root; ``outputs`` are the networks whose head step ends here."""

    def __init__(self):
        self.children: dict[Step, "PrefixNode"] = {}
        self.outputs: list[int] = []
        self.height = 0  # steps on the longest path below

    def finish(self) -> None:
        """Order each node's children by height, the tallest last (see :func:`forward_networks`)."""
        for child in self.children.values():
            child.finish()
        self.children = dict(sorted(self.children.items(), key=lambda kv: kv[1].height))
        self.height = 1 + max((c.height for c in self.children.values()), default=-1)


@dataclass
class SweepPlan:
    """The prefix tree of the selected networks' routes (``tree``): two networks share every
    step up to where their routes part (stem and blocks of the first anchor, a stitching
    layer's output, the next anchor's blocks, ...)."""

    net: SNNet
    cfg_ids: list[int]
    tree: PrefixNode = field(init=False)

    def __post_init__(self):
        self.cfg_ids = sorted(set(int(i) for i in self.cfg_ids))
        self.tree = PrefixNode()
        for i in self.cfg_ids:
            node = self.tree
            for step in self.net.stitches[i].route.steps():
                node = node.children.setdefault(step, PrefixNode())
            node.outputs.append(i)
        self.tree.finish()


def forward_networks(net: SNNet, plan: SweepPlan, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(cfg_id, logits)`` of every network of ``plan`` on the batch ``x``, running every
    step of the prefix tree once. Call under ``torch.no_grad()`` (or inference mode).

    The logits equal ``net.select(cfg_id)(x)``: every network runs the same modules on the same
    tensors in the same order; only repeated work is skipped.
    """
    yield from _walk(net, plan.tree, x)


def _walk(net: SNNet, node: PrefixNode, h: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    # Where the tree branches, every child but the tallest is run while ``h`` is kept; the
    # tallest (the anchor's own continuation) then goes on in this loop without keeping ``h``,
    # so the tensors held at once are one per branch level, not one per block.
    while True:
        for cfg_id in node.outputs:
            yield cfg_id, h
        if not node.children:
            return
        *branches, (step, last) = node.children.items()
        for branch_step, child in branches:
            yield from _walk(net, child, net.run_step(branch_step, h))
        h, node = net.run_step(step, h), last


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
    return {
        "top1": 100.0 * record["correct1"] / n,
        "top5": 100.0 * record["correct5"] / n,
        "loss": record["loss_sum"] / n,
    }


# ---------------------------------------------------------------------------------------------
# passes over the data
# ---------------------------------------------------------------------------------------------
Prep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _no_prep(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, y


@torch.no_grad()
def sweep_pass(
    net: SNNet,
    loader: Iterable,
    cfg_ids: Sequence[int],
    prep: Prep = _no_prep,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    device: torch.device | str = "cpu",
    progress: Optional[Callable[[int, int], None]] = None,
) -> MetricSums:
    """One pass over ``loader``: the summed metrics of every network in ``cfg_ids`` (this
    process's shard only; call :meth:`MetricSums.all_reduce` to sum over processes)."""
    plan = SweepPlan(net, cfg_ids)
    sums = MetricSums(plan.cfg_ids, device)
    with eval_mode(net):
        for b, (x, y) in enumerate(loader):
            x, y = prep(x, y)
            with autocast():
                for cfg_id, out in forward_networks(net, plan, x):
                    sums.update(cfg_id, out, y)
            if progress is not None:
                progress(b + 1, y.numel())
    return sums


@torch.no_grad()
def one_at_a_time(
    net: SNNet,
    loader: Iterable,
    cfg_ids: Sequence[int],
    prep: Prep = _no_prep,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    device: torch.device | str = "cpu",
) -> MetricSums:
    """The official way: a fresh pass over ``loader`` per network, ``net.select(i); net(x)``
    (the reference for tests and benchmarks)."""
    sums = MetricSums(sorted(set(cfg_ids)), device)
    with eval_mode(net):
        for cfg_id in sums.cfg_ids:
            with net.selecting(cfg_id):
                for x, y in loader:
                    x, y = prep(x, y)
                    with autocast():
                        out = net(x)
                    sums.update(cfg_id, out, y)
    return sums


def progress_logger(
    log: Callable[[str], None], what: str, interval: int, n_batches: int, world: int, start: float
) -> Callable[[int, int], None]:
    """A ``progress`` callback for :func:`sweep_pass` that logs a line (images per second over
    ``world`` processes since ``start``) every ``interval`` batches."""
    seen = [0]

    def progress(b: int, n: int) -> None:
        seen[0] += n
        if interval and (b % interval == 0 or b == n_batches):
            rate = seen[0] * world / max(time.perf_counter() - start, 1e-9)
            log(f"  {what}: batch {b}/{n_batches}, {rate:.1f} img/s")

    return progress
