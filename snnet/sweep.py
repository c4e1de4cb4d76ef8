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
* the selected networks are processed in chunks (``--sweep-chunk``), each chunk's results are
  appended to a partial-results file as soon as it is complete, and a rerun skips what is
  there: an interrupted sweep loses at most one chunk.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import ConfigError
from .model import SNNet
from .routes import Route, Step
from .stitches import Stitch

PARTIAL_NAME = "sweep_partial.jsonl"
PARTIAL_VERSION = 1


# ---------------------------------------------------------------------------------------------
# the shared-prefix forward
# ---------------------------------------------------------------------------------------------
def exit_block(net: SNNet, stitch: Stitch) -> int:
    """The last block of the first anchor that network ``stitch`` runs (an anchor: its last)."""
    return stitch.route.first.stop - 1


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
    return [order[i:i + size] for i in range(0, len(order), size)]


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

    @property
    def index(self) -> dict[int, int]:
        """cfg_id -> row in the metric sums."""
        return {c: r for r, c in enumerate(self.cfg_ids)}


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
            {"cfg_id": c, "correct1": int(n[0]), "correct5": int(n[1]), "count": int(n[2]), "loss_sum": float(l)}
            for c, n, l in zip(self.cfg_ids, counts, loss)
        ]


def metrics_of(record: Mapping[str, Any]) -> dict[str, float]:
    """top1/top5 in percent and mean loss from a record of sums."""
    n = max(int(record["count"]), 1)
    return {"top1": 100.0 * record["correct1"] / n, "top5": 100.0 * record["correct5"] / n,
            "loss": record["loss_sum"] / n}


# ---------------------------------------------------------------------------------------------
# data
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

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 channels_last: bool = False):
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
        data_cfg["input_size"], is_training=False, interpolation=data_cfg["interpolation"],
        mean=data_cfg["mean"], std=data_cfg["std"], crop_pct=data_cfg["crop_pct"],
        crop_mode=data_cfg.get("crop_mode"), use_prefetcher=True,
    )


def eval_loader(dataset, batch_size: int, workers: int = 0, rank: int = 0, world: int = 1,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """This rank's shard of ``dataset`` in order, uint8 batches (``fast_collate``); the workers
    persist from one pass (chunk) to the next, as in timm's ``create_loader``."""
    from timm.data.loader import fast_collate

    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world), num_workers=workers,
        collate_fn=fast_collate, pin_memory=pin_memory, drop_last=False, persistent_workers=workers > 0,
        # Its own generator: a DataLoader without one draws each pass's base seed from the global
        # RNG, so validating inside training would shift the training's random draws.
        generator=torch.Generator().manual_seed(0),
    )


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
    was, previous = net.training, net.cfg_id
    net.eval()
    try:
        for cfg_id in sums.cfg_ids:
            net.select(cfg_id)
            for x, y in loader:
                x, y = prep(x, y)
                with autocast():
                    out = net(x)
                sums.update(cfg_id, out, y)
    finally:
        net.train(was)
        net.select(previous)
    return sums


# ---------------------------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def measure_latency(net: SNNet, cfg_id: int, batch_size: int = 1, device: torch.device | str = "cpu",
                    warmup: int = 10, repeats: int = 30, autocast: Callable[[], Any] = contextlib.nullcontext,
                    channels_last: bool = False) -> float:
    """Median wall time in ms of one forward of network ``cfg_id`` (alone, as deployed) on a
    batch of ``batch_size`` random images, after ``warmup`` forwards; CUDA is synchronised
    around every timed forward."""
    device = torch.device(device)
    x = torch.randn(batch_size, *net.input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was, previous = net.training, net.cfg_id
    net.eval().select(cfg_id)
    times = []
    try:
        with autocast():
            for _ in range(max(0, warmup)):
                net(x)
            sync()
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                net(x)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        net.train(was)
        net.select(previous)
    return 1000.0 * statistics.median(times)


# ---------------------------------------------------------------------------------------------
# partial results (resuming)
# ---------------------------------------------------------------------------------------------
def fingerprint(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PartialResults:
    """``DIR/sweep_partial.jsonl``: a header naming what is evaluated, then one JSON line per
    finished network (``type: accuracy``, the sums) or latency measurement (``type: latency``).

    Lines are appended and fsynced as soon as a chunk is complete; a truncated last line (a
    process killed mid-write) is ignored. A header that describes another evaluation (other
    checkpoint, data, model...) is refused unless ``overwrite`` discards the file.
    """

    def __init__(self, out_dir: str | Path, description: Mapping[str, Any], overwrite: bool = False):
        self.path = Path(out_dir) / PARTIAL_NAME
        self.description = json.loads(json.dumps(dict(description), sort_keys=True, default=str))
        self.key = fingerprint(self.description)
        self.accuracy: dict[int, dict[str, Any]] = {}
        self.latency: dict[int, dict[str, Any]] = {}
        if overwrite and self.path.exists():
            self.path.unlink()
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append([{"type": "header", "version": PARTIAL_VERSION, "fingerprint": self.key,
                           "description": self.description}])

    def _load(self) -> None:
        lines = self.path.read_text().splitlines()
        records = []
        for n, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(lines) - 1:
                    break  # the last line of a killed write
                raise ConfigError(f"{self.path} line {n + 1} is corrupt: delete the file or pass --overwrite") from None
        if not records or records[0].get("type") != "header":
            raise ConfigError(f"{self.path} is not a partial sweep file: delete it or pass --overwrite")
        header = records[0]
        if header.get("fingerprint") != self.key:
            theirs = header.get("description", {})
            diff = sorted(k for k in set(theirs) | set(self.description) if theirs.get(k) != self.description.get(k))
            what = ", ".join(f"{k}: {theirs.get(k)!r} there vs {self.description.get(k)!r} now" for k in diff[:3])
            raise ConfigError(
                f"{self.path.parent} holds partial results of another evaluation ({what}): "
                f"pass --overwrite to discard them, or choose another --output"
            )
        for r in records[1:]:
            if r.get("type") == "accuracy":
                self.accuracy[int(r["cfg_id"])] = r
            elif r.get("type") == "latency":
                self.latency[int(r["cfg_id"])] = r
        if len(lines) and not self.path.read_text().endswith("\n"):
            # drop the torn line so that appends start on a fresh line
            self.path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def _append(self, records: Iterable[Mapping[str, Any]]) -> None:
        with open(self.path, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add_accuracy(self, records: Iterable[Mapping[str, Any]]) -> None:
        records = [{"type": "accuracy", **r} for r in records]
        self._append(records)
        for r in records:
            self.accuracy[int(r["cfg_id"])] = r

    def add_latency(self, cfg_id: int, latency_ms: float, setting: Mapping[str, Any]) -> None:
        record = {"type": "latency", "cfg_id": int(cfg_id), "latency_ms": float(latency_ms), **setting}
        self._append([record])
        self.latency[int(cfg_id)] = record

    def latency_for(self, cfg_id: int, setting: Mapping[str, Any]) -> Optional[float]:
        r = self.latency.get(cfg_id)
        if r is None or any(r.get(k) != v for k, v in setting.items()):
            return None
        return float(r["latency_ms"])
