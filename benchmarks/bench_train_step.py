"""Training-step cost of SN-Net: an anchor step vs the plain timm model, and DDP's unused-parameter handling.

    python benchmarks/bench_train_step.py                 # both parts
    python benchmarks/bench_train_step.py --part anchor   # SN-Net set to an anchor vs plain timm
    python benchmarks/bench_train_step.py --part ddp      # 2 CPU processes (gloo): overlapped vs after-backward all-reduce vs DDP

Part 1 times forward + backward + AdamW step of the SN-Net trained on one anchor (sampler drawing
that anchor, ``net.select``, the optimizer holding every SN-Net parameter, grads set to None) and
of a plain timm model with the same weights, on the same batch, interleaved, and prints the
median ratio. Part 2 trains copies of an SN-Net side by side in 2 gloo processes (default: one
with ``snnet.distributed.GradAllReduce`` overlapping the all-reduce with backward, train.py's
default; one with the same all-reduce after backward; one wrapped in
``DistributedDataParallel(find_unused_parameters=True)``; ``--ddp-variants allreduce per-rank``
compares per-rank sampling), interleaved, and prints the median step times, the time the step
still waits for the all-reduce after backward (so how much of it the overlap hides), the gradient
bytes all-reduced per step (DDP's counted by a comm hook around its default all-reduce) and
whether the weights agree.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timing import interleaved_medians
from torch import nn

from snnet import create_snnet
from snnet.core.stitches import parse_stitch_ids
from snnet.distributed import GradAllReduce
from snnet.train.network_sampling import NetworkSampler


def _optimizer(params):
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(params, opt="adamw", lr=1e-4, weight_decay=0.05)


def _step(model, opt, x, y, sync=None):
    out = model(x)
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    if sync is not None:
        sync()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_anchor(args) -> None:
    import timm

    torch.manual_seed(0)
    kwargs = dict(img_size=args.img_size, num_classes=1000)
    net = create_snnet(args.anchors, **kwargs)
    anchor = args.anchor_index
    plain = timm.create_model(args.anchors[anchor], **kwargs)
    plain.load_state_dict(net.anchors[anchor].state_dict())
    weights = [1.0 if i == anchor else 0.0 for i in range(net.num_stitches)]
    sampler = NetworkSampler(net.num_stitches, seed=0, weights=weights)
    opt_net, opt_plain = _optimizer(net.parameters()), _optimizer(plain.parameters())
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch_size,))
    net.train()
    plain.train()

    def snnet_step():
        net.select(sampler.draw())
        _step(net, opt_net, x, y)

    def plain_step():
        _step(plain, opt_plain, x, y)

    for _ in range(args.warmup):
        snnet_step()
        plain_step()
    m_net, m_plain = interleaved_medians([snnet_step, plain_step], args.repeats)
    print(
        f"[anchor] {args.anchors[anchor]} at {args.img_size}px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved repeats; SN-Net holds {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M params "
        f"({net.num_stitches} networks)"
    )
    print(f"[anchor] plain timm step: {m_plain * 1000:8.1f} ms (median)")
    print(f"[anchor] SN-Net step:     {m_net * 1000:8.1f} ms (median)")
    print(f"[anchor] ratio SN-Net / timm: {m_net / m_plain:.3f}x")


VARIANTS = {
    "overlap": "own bucketed all-reduce overlapped with backward (GradAllReduce), every rank the same network "
    "(train.py's default)",
    "allreduce": "own bucketed all-reduce after backward (GradAllReduce(overlap=False)), every rank the same network",
    "ddp": "DDP(find_unused_parameters=True), every rank the same network",
    "per-rank": "own all-reduce over the union, each rank its own network (--sample-per-rank)",
}


def _counting_allreduce_hook(variant: "_Variant", bucket):
    """DDP's default all-reduce (sum / world), recording the bytes of each bucket it reduces."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buf = bucket.buffer()
    variant.bucket_bytes += buf.numel() * buf.element_size()
    if bucket.is_last():
        variant.sent.append(variant.bucket_bytes)
        variant.bucket_bytes = 0
    return default_hooks.allreduce_hook(None, bucket)


class _Variant:
    """One SN-Net copy trained one way; all copies start from the same weights."""

    def __init__(self, kind: str, net: nn.Module, world: int, rank: int, networks: list[int]):
        self.kind, self.net = kind, net
        self.model = net
        if kind == "ddp":
            self.model = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
            self.model.register_comm_hook(self, _counting_allreduce_hook)  # DDP's own all-reduce, bytes counted
        self.reducer = (
            None
            if kind == "ddp"
            else GradAllReduce(net.parameters(), world, union=kind == "per-rank", overlap=kind == "overlap")
        )
        self.opt = _optimizer(net.parameters())
        weights = None
        if networks:  # a few networks, each trained many times: the steady state of a long run
            weights = [1.0 if i in networks else 0.0 for i in range(net.num_stitches)]
        self.sampler = NetworkSampler(net.num_stitches, seed=0, rank=rank, per_rank=kind == "per-rank", weights=weights)
        self.times: list[float] = []
        self.waits: list[float] = []  # time in the sync call after backward: the all-reduce not hidden
        self.sent: list[int] = []
        self.bucket_bytes = 0

    def sync(self):
        if self.reducer is None:
            return
        start = time.perf_counter()
        self.reducer()
        self.waits.append(time.perf_counter() - start)
        # bytes all-reduced: the gradients that exist after the union step
        self.sent.append(
            sum(p.grad.numel() * p.grad.element_size() for p in self.net.parameters() if p.grad is not None)
        )

    def step(self, x, y, record: bool):
        cfg_id = self.sampler.draw()
        self.net.select(cfg_id)
        if self.reducer is not None:
            self.reducer.begin(cfg_id)
        dist.barrier()
        start = time.perf_counter()
        _step(self.model, self.opt, x, y, self.sync)
        if record:
            self.times.append(time.perf_counter() - start)
        elif self.waits:
            self.waits.pop()  # warm-up


def _ddp_worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    kw = dict(img_size=args.ddp_img_size, num_classes=10, model_kwargs=dict(patch_size=args.ddp_patch))
    first = create_snnet(args.ddp_anchors, **kw)
    nets = [first] + [create_snnet(args.ddp_anchors, **kw) for _ in args.ddp_variants[1:]]
    for n in nets[1:]:
        n.load_state_dict(first.state_dict())
    networks = parse_stitch_ids(args.ddp_networks, first.num_stitches) if args.ddp_networks else []
    variants = [_Variant(kind, n, world, rank, networks) for kind, n in zip(args.ddp_variants, nets)]
    g = torch.Generator().manual_seed(rank)
    for i in range(args.ddp_warmup + args.ddp_steps):
        x = torch.randn(args.ddp_batch, 3, args.ddp_img_size, args.ddp_img_size, generator=g)
        y = torch.randint(0, 10, (args.ddp_batch,), generator=g)
        for v in variants if i % 2 == 0 else variants[::-1]:
            v.step(x, y, record=i >= args.ddp_warmup)
    by_kind = {v.kind: v.net for v in variants}
    checks = {}
    if "overlap" in by_kind and "allreduce" in by_kind:  # the same sums, so bit-equal weights
        checks["overlapped and after-backward all-reduce end with identical weights"] = all(
            torch.equal(p, q) for p, q in zip(by_kind["overlap"].parameters(), by_kind["allreduce"].parameters())
        )
    if "allreduce" in by_kind and "ddp" in by_kind:  # DDP sums in its own buckets: float rounding
        checks["all-reduce and DDP end with the same weights"] = all(
            torch.allclose(p, q, rtol=1e-4, atol=1e-6)
            for p, q in zip(by_kind["allreduce"].parameters(), by_kind["ddp"].parameters())
        )
    if rank == 0:
        queue.put(
            dict(
                n=first.num_stitches,
                params=sum(p.numel() for p in first.parameters()),
                checks=checks,
                results=[
                    (
                        v.kind,
                        statistics.median(v.times),
                        statistics.median(v.waits) if v.waits else None,
                        statistics.mean(v.sent) / 2**20,
                    )
                    for v in variants
                ],
            )
        )
    dist.destroy_process_group()


def bench_ddp(args) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_ddp_worker, args=(2, port, args, queue), nprocs=2, join=True)
    r = queue.get()
    print(
        f"[ddp] 2 processes x 1 thread, gloo; SN-Net over {args.ddp_anchors} at {args.ddp_img_size}px patch "
        f"{args.ddp_patch}, batch {args.ddp_batch}/process, {r['n']} networks, {r['params'] / 1e6:.1f} M params; "
        f"{args.ddp_steps} steps each, interleaved"
    )
    base = r["results"][0][1]
    waits = {}
    for kind, t, wait, mb in r["results"]:
        waits[kind] = wait
        waited = "" if wait is None else f", {wait * 1000:.1f} ms waiting for the all-reduce after backward"
        print(
            f"[ddp] {VARIANTS[kind]}:\n      {t * 1000:8.1f} ms/step (median, {t / base:.3f}x){waited}, "
            f"{mb:7.1f} MB of gradients all-reduced per step (mean)"
        )
    if waits.get("overlap") is not None and waits.get("allreduce"):
        print(
            f"[ddp] all-reduce time hidden behind backward: {1 - waits['overlap'] / waits['allreduce']:.0%} "
            f"(wait after backward {waits['overlap'] * 1000:.1f} ms overlapped vs {waits['allreduce'] * 1000:.1f} ms)"
        )
    for what, ok in r["checks"].items():
        print(f"[ddp] {what}: {'yes' if ok else 'NO'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["anchor", "ddp", "all"], default="all")
    p.add_argument("--anchors", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224"])
    p.add_argument("--anchor-index", type=int, default=1, help="which anchor the SN-Net trains in part 1")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads for part 1 (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--ddp-anchors", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
    )
    p.add_argument(
        "--ddp-variants",
        nargs="+",
        default=["overlap", "allreduce", "ddp"],
        choices=sorted(VARIANTS),
        help="gradient-sync variants trained side by side (first is the reference)",
    )
    p.add_argument(
        "--ddp-networks",
        default="0,1,2,10,40,60",
        help="cfg_ids the processes train (uniformly); each network's first step plans its gradient "
        "buckets without overlap, so the steady state needs networks that recur ('' = all)",
    )
    p.add_argument("--ddp-img-size", type=int, default=32)
    p.add_argument("--ddp-patch", type=int, default=8)
    p.add_argument("--ddp-batch", type=int, default=8)
    p.add_argument("--ddp-warmup", type=int, default=10)
    p.add_argument("--ddp-steps", type=int, default=20)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("anchor", "all"):
        bench_anchor(args)
    if args.part in ("ddp", "all"):
        bench_ddp(args)


if __name__ == "__main__":
    main()
