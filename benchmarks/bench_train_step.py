"""Training-step cost of SN-Net: an anchor step vs the plain timm model, and DDP's unused-parameter handling.

    python benchmarks/bench_train_step.py                 # both parts
    python benchmarks/bench_train_step.py --part anchor   # SN-Net set to an anchor vs plain timm
    python benchmarks/bench_train_step.py --part ddp      # 2 CPU processes (gloo): own all-reduce vs DDP

Part 1 times forward + backward + AdamW step of the SN-Net trained on one anchor (sampler drawing
that anchor, ``net.select``, the optimizer holding every SN-Net parameter, grads set to None) and
of a plain timm model with the same weights, on the same batch, interleaved, and prints the
median ratio. Part 2 trains two copies of an SN-Net side by side in 2 gloo processes, one with
``snnet.distributed.GradAllReduce`` (train.py's default) and one wrapped in
``DistributedDataParallel(find_unused_parameters=True)``, on the same sampled networks, and
prints the median step times and their ratio.
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
from torch import nn

from snnet import create_snnet
from snnet.distributed import GradAllReduce
from snnet.sampling import NetworkSampler


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
    t_net, t_plain = [], []
    for i in range(args.repeats):
        order = [(snnet_step, t_net), (plain_step, t_plain)]
        for fn, acc in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - start)
    m_net, m_plain = statistics.median(t_net), statistics.median(t_plain)
    print(f"[anchor] {args.anchors[anchor]} at {args.img_size}px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats; SN-Net holds {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M params "
          f"({net.num_stitches} networks)")
    print(f"[anchor] plain timm step: {m_plain * 1000:8.1f} ms (median)")
    print(f"[anchor] SN-Net step:     {m_net * 1000:8.1f} ms (median)")
    print(f"[anchor] ratio SN-Net / timm: {m_net / m_plain:.3f}x")


def _ddp_worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    kw = dict(img_size=args.ddp_img_size, num_classes=10, model_kwargs=dict(patch_size=args.ddp_patch))
    net_a = create_snnet(args.ddp_anchors, **kw)
    net_b = create_snnet(args.ddp_anchors, **kw)
    net_b.load_state_dict(net_a.state_dict())
    reducer = GradAllReduce(net_a.parameters(), world)
    sent: list[int] = []

    def sync_a():  # train.py's default: all-reduce the gradients that exist
        sent.append(sum(p.grad.numel() * p.grad.element_size() for p in net_a.parameters() if p.grad is not None))
        reducer()

    ddp_b = nn.parallel.DistributedDataParallel(net_b, find_unused_parameters=True)
    opt_a, opt_b = _optimizer(net_a.parameters()), _optimizer(net_b.parameters())
    sampler = NetworkSampler(net_a.num_stitches, seed=0)
    g = torch.Generator().manual_seed(rank)
    t_a, t_b = [], []
    for i in range(args.ddp_warmup + args.ddp_steps):
        cfg = sampler.draw()
        x = torch.randn(args.ddp_batch, 3, args.ddp_img_size, args.ddp_img_size, generator=g)
        y = torch.randint(0, 10, (args.ddp_batch,), generator=g)
        net_a.select(cfg)
        net_b.select(cfg)
        runs = [(lambda: _step(net_a, opt_a, x, y, sync_a), t_a), (lambda: _step(ddp_b, opt_b, x, y), t_b)]
        for fn, acc in runs if i % 2 == 0 else runs[::-1]:
            dist.barrier()
            start = time.perf_counter()
            fn()
            if i >= args.ddp_warmup:
                acc.append(time.perf_counter() - start)
    same = all(torch.allclose(p, q, rtol=1e-4, atol=1e-6) for p, q in zip(net_a.parameters(), net_b.parameters()))
    total = sum(p.numel() * p.element_size() for p in net_a.parameters())
    if rank == 0:
        queue.put(dict(t_a=statistics.median(t_a), t_b=statistics.median(t_b), same=same, n=net_a.num_stitches,
                       params=sum(p.numel() for p in net_a.parameters()), mb_a=statistics.mean(sent) / 2**20,
                       mb_b=total / 2**20))
    dist.destroy_process_group()


def bench_ddp(args) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_ddp_worker, args=(2, port, args, queue), nprocs=2, join=True)
    r = queue.get()
    print(f"[ddp] 2 processes x 1 thread, gloo; SN-Net over {args.ddp_anchors} at {args.ddp_img_size}px patch "
          f"{args.ddp_patch}, batch {args.ddp_batch}/process, {r['n']} networks, {r['params'] / 1e6:.1f} M params; "
          f"{args.ddp_steps} steps each, interleaved")
    print(f"[ddp] own bucketed all-reduce (GradAllReduce): {r['t_a'] * 1000:8.1f} ms/step (median), "
          f"{r['mb_a']:7.1f} MB of gradients all-reduced per step (mean)")
    print(f"[ddp] DDP(find_unused_parameters=True):        {r['t_b'] * 1000:8.1f} ms/step (median), "
          f"{r['mb_b']:7.1f} MB (every bucket, unused parameters as zeros)")
    print(f"[ddp] ratio DDP / all-reduce: {r['t_b'] / r['t_a']:.3f}x; same weights after training: {'yes' if r['same'] else 'NO'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["anchor", "ddp", "all"], default="all")
    p.add_argument("--anchors", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224"])
    p.add_argument("--anchor-index", type=int, default=1, help="which anchor the SN-Net trains in part 1")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--ddp-anchors", nargs="+",
                   default=["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"])
    p.add_argument("--ddp-img-size", type=int, default=32)
    p.add_argument("--ddp-patch", type=int, default=8)
    p.add_argument("--ddp-batch", type=int, default=8)
    p.add_argument("--ddp-warmup", type=int, default=3)
    p.add_argument("--ddp-steps", type=int, default=20)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.part in ("anchor", "all"):
        bench_anchor(args)
    if args.part in ("ddp", "all"):
        bench_ddp(args)


if __name__ == "__main__":
    main()
