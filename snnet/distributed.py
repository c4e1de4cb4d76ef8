"""Process group set-up and gradient averaging for SN-Net training.

Every step trains one network of the SN-Net, so most parameters get no gradient in a given
step. Two ways to average gradients over processes are offered (``--grad-sync``):

* ``allreduce`` (default): no DDP wrapper; after ``backward`` the gradients that exist are
  flattened into buckets and all-reduced (asynchronously, then averaged). Parameters without a
  gradient on every rank keep ``grad=None``, so the optimizer skips them exactly as in a
  single-process run (no weight decay, no momentum drift on unused anchors). With
  ``--sample-per-rank`` ranks train different networks; a small all-reduce of "has a gradient"
  flags first gives every rank the union, and missing gradients count as zeros.
* ``ddp``: ``DistributedDataParallel(find_unused_parameters=True)``, which traverses the autograd
  graph every step to find the unused parameters and overlaps communication with backward.

``results/benchmarks_train.md`` compares the two. ``static_graph=True`` is not an option: the
graph changes with the sampled network. Adding ``0 * p.sum()`` for unused parameters would make
DDP's plain mode work but gives those parameters zero gradients, so AdamW would decay them and
momentum would keep moving them: not the single-process semantics.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, SNNetError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def init_distributed(device: Optional[str] = None) -> DistInfo:
    """Read torchrun's environment; start a gloo (CPU) or nccl (CUDA) process group if world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        visible = torch.cuda.device_count()
        if dev.index >= visible:
            raise ConfigError(
                f"process {local_rank} of this node needs GPU {dev.index} but {visible} are visible: start at most "
                f"{visible} processes per node (./distributed_train.sh {visible} ...) or pass --device cpu"
            )
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev)


def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def _buckets(tensors: list[torch.Tensor], cap_bytes: int) -> list[list[torch.Tensor]]:
    out: list[list[torch.Tensor]] = []
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.dtype, t.device), []).append(t)
    for group in by_kind.values():
        cur: list[torch.Tensor] = []
        size = 0
        for t in group:
            if cur and size + t.numel() * t.element_size() > cap_bytes:
                out.append(cur)
                cur, size = [], 0
            cur.append(t)
            size += t.numel() * t.element_size()
        if cur:
            out.append(cur)
    return out


class GradAllReduce:
    """Average the gradients that exist over all ranks, leaving unused parameters' ``grad`` None."""

    def __init__(self, params: Iterable[nn.Parameter], world_size: int, union: bool = False, bucket_mb: float = 25.0):
        self.params = [p for p in params if p.requires_grad]
        self.world_size = world_size
        self.union = union
        self.cap = int(bucket_mb * 2**20)

    @torch.no_grad()
    def __call__(self) -> None:
        if self.world_size <= 1:
            return
        if self.union:
            dev = self.params[0].device
            flags = torch.tensor([p.grad is not None for p in self.params], dtype=torch.int32, device=dev)
            dist.all_reduce(flags)
            for p, f in zip(self.params, flags.tolist()):
                if f and p.grad is None:
                    p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.params if p.grad is not None]
        pending = []
        for bucket in _buckets(grads, self.cap):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            pending.append((bucket, flat, dist.all_reduce(flat, async_op=True)))
        for bucket, flat, work in pending:
            work.wait()
            flat.div_(self.world_size)
            offset = 0
            for g in bucket:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def is_distributed() -> bool:
    """Whether a process group is up (torchrun)."""
    return dist.is_available() and dist.is_initialized()


def on_primary(fn: Callable[[], Any], primary: bool) -> Any:
    """Run ``fn`` on rank 0 and give its result (or its user error) to every rank."""
    result: Any = None
    error: Optional[tuple[str, str]] = None
    if primary:
        try:
            result = fn()
        except SNNetError as e:
            error = (type(e).__name__, str(e))
    if is_distributed():
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        from . import errors

        raise getattr(errors, error[0], SNNetError)(error[1])
    return result
