"""Process group set-up and gradient averaging for SN-Net training.

Every step trains one network of the SN-Net, so most parameters get no gradient in a given
step. Two ways to average gradients over processes are offered (``--grad-sync``):

* ``allreduce`` (default): no DDP wrapper; the gradients that exist are flattened into buckets
  and all-reduced asynchronously while backward still runs (:class:`GradAllReduce`), then
  averaged. Parameters without a
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

import functools
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Optional

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


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent (torchrun, submitit's task
    controller) dies, even by SIGKILL; without it the workers of a killed launcher keep training,
    in sessions of their own, and keep writing its run folder. Linux only (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl: nobody will send the signal
        os.kill(os.getpid(), sig)


def die_with(pid: int, sig: int = signal.SIGKILL, interval_s: float = 0.5) -> None:
    """Send ``sig`` to this process once process ``pid`` (not its parent: e.g. the ``submit.py``
    that waits for a local job, whose controller submitit keeps alive on purpose) has ended, as
    :func:`die_with_parent` does for the parent. A watcher thread polls every ``interval_s``."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), sig)
                return
            except PermissionError:  # alive, someone else's: pid reused after all, or not ours to watch
                continue

    threading.Thread(target=watch, name=f"die-with-{pid}", daemon=True).start()


def set_cpu_threads(threads: Optional[int]) -> int:
    """Intra-op CPU threads of this process: ``threads`` (``--threads``) when given, else
    ``OMP_NUM_THREADS`` when set (torch reads it; torchrun sets 1 per worker), else 1. torch's own
    default, one per core, collapses when other processes share the cores (10-14x slower on a
    busy 2-core machine); one thread per process never oversubscribes. Returns the count."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(1)
    return torch.get_num_threads()


def init_distributed(device: Optional[str] = None) -> DistInfo:
    """Read torchrun's environment; start a gloo (CPU) or nccl (CUDA) process group if world > 1.
    A torchrun worker dies with torchrun (:func:`die_with_parent`)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
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
    """Average the gradients that exist over all ranks, leaving unused parameters' ``grad`` None.

    Use: ``sync.begin(cfg_id)`` before ``backward``, ``sync()`` after it. With ``overlap`` (the
    default when every rank trains the same network) the gradients are all-reduced while backward
    still runs: a post-accumulate-grad hook on every parameter counts the gradients of each bucket,
    and a bucket is launched (asynchronously) as soon as all of its gradients exist, strictly in
    bucket order so that every rank issues the same collectives in the same order. The buckets of a
    network are planned the first time it trains, from the order its gradients became ready (rank
    0's order, broadcast once per network); that first step all-reduces after backward, as without
    overlap. ``sync()`` then waits, averages and copies back. The sums are elementwise, so bucket
    composition does not change the result.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        world_size: int,
        union: bool = False,
        bucket_mb: float = 25.0,
        overlap: bool = True,
    ):
        self.params = [p for p in params if p.requires_grad]
        self.world_size = world_size
        self.union = union
        self.cap = int(bucket_mb * 2**20)
        self.overlap = overlap and world_size > 1 and not union
        self.plans: dict[Hashable, _BucketPlan] = {}
        self.launched_in_backward = 0  # buckets launched by the hooks (how much was overlapped)
        self._step: Optional[_OverlapStep] = None
        if self.overlap:
            for i, p in enumerate(self.params):
                p.register_post_accumulate_grad_hook(functools.partial(self._grad_ready, i))

    def begin(self, network: Hashable) -> None:
        """Announce the network whose backward comes next (its bucket plan, if known)."""
        if self.overlap:
            self._step = _OverlapStep(network, self.plans.get(network))

    def _grad_ready(self, index: int, _param: nn.Parameter) -> None:
        step = self._step
        if step is None:
            return
        if step.plan is None:
            step.ready_order.append(index)
            return
        bucket = step.plan.bucket_of.get(index)
        if bucket is None:  # not in this network's plan: reduced after backward
            step.unplanned.append(index)
            return
        step.remaining[bucket] -= 1
        # launch in bucket order: every rank must issue the same collectives in the same order
        while step.next_bucket < len(step.remaining) and step.remaining[step.next_bucket] == 0:
            step.works.append(self._launch(step.plan.buckets[step.next_bucket]))
            step.next_bucket += 1
            self.launched_in_backward += 1

    def _launch(self, bucket: list[int]) -> Optional[tuple[list[torch.Tensor], torch.Tensor, Any]]:
        grads = [g for g in (self.params[i].grad for i in bucket) if g is not None]
        if not grads:
            return None
        flat = torch.cat([g.reshape(-1) for g in grads])
        return grads, flat, dist.all_reduce(flat, async_op=True)

    @torch.no_grad()
    def __call__(self) -> None:
        if self.world_size <= 1:
            return
        step, self._step = self._step, None
        if step is None:  # no overlap: every bucket after backward
            self._reduce_after_backward()
            return
        if step.plan is None:  # first step of this network: plan its buckets from the order grads arrived
            order = [step.ready_order]
            dist.broadcast_object_list(order, src=0)
            self.plans[step.network] = step.plan = _BucketPlan.build(order[0], self.params, self.cap)
            step.next_bucket = 0
        for bucket in step.plan.buckets[step.next_bucket :] + ([step.unplanned] if step.unplanned else []):
            step.works.append(self._launch(bucket))
        _finish(step.works, self.world_size)

    def _reduce_after_backward(self) -> None:
        if self.union:
            dev = self.params[0].device
            flags = torch.tensor([p.grad is not None for p in self.params], dtype=torch.int32, device=dev)
            dist.all_reduce(flags)
            for p, f in zip(self.params, flags.tolist()):
                if f and p.grad is None:
                    p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.params if p.grad is not None]
        works = []
        for bucket in _buckets(grads, self.cap):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            works.append((bucket, flat, dist.all_reduce(flat, async_op=True)))
        _finish(works, self.world_size)


def _finish(works: list, world_size: int) -> None:
    """Wait for the all-reduces, average, and copy each bucket back into its gradients."""
    for grads, flat, work in filter(None, works):
        work.wait()
        flat.div_(world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


class _BucketPlan:
    """A network's gradient buckets (parameter indices), in launch order."""

    def __init__(self, buckets: list[list[int]]):
        self.buckets = buckets
        self.bucket_of = {i: b for b, bucket in enumerate(buckets) for i in bucket}

    @classmethod
    def build(cls, ready_order: list[int], params: list[nn.Parameter], cap_bytes: int) -> "_BucketPlan":
        index = {id(p): i for i, p in enumerate(params)}
        return cls([[index[id(p)] for p in b] for b in _buckets([params[i] for i in ready_order], cap_bytes)])


class _OverlapStep:
    """Book-keeping of one backward: which buckets are still waiting for gradients."""

    def __init__(self, network: Hashable, plan: Optional[_BucketPlan]):
        self.network, self.plan = network, plan
        self.ready_order: list[int] = []  # recorded while the network has no plan yet
        self.remaining = [len(b) for b in plan.buckets] if plan is not None else []
        self.next_bucket = 0
        self.unplanned: list[int] = []
        self.works: list = []


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
