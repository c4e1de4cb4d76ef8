"""Gradient averaging overlapped with backward (snnet.distributed.GradAllReduce) on 2 gloo processes:
bit-equal weights to the all-reduce after backward, and the buckets really launched during backward."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_PAIRS
from torch import nn

STEPS = 12


def _worker(rank: int, world: int, port: int, queue) -> None:
    from snnet import create_snnet
    from snnet.distributed import GradAllReduce
    from snnet.train.network_sampling import NetworkSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    nets = [create_snnet(**TINY_PAIRS["deit"], num_classes=10) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    # a small bucket cap: several buckets per network, so launch order and plans are exercised
    syncs = [
        GradAllReduce(n.parameters(), world, overlap=overlap, bucket_mb=0.02) for n, overlap in zip(nets, (False, True))
    ]
    opts = [torch.optim.AdamW(n.parameters(), lr=1e-3) for n in nets]
    sampler = NetworkSampler(nets[0].num_stitches, seed=3)
    g = torch.Generator().manual_seed(rank)  # each rank its own data
    for _ in range(STEPS):
        cfg_id = sampler.draw()
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
        for net, sync, opt in zip(nets, syncs, opts):
            net.select(cfg_id)
            sync.begin(cfg_id)
            nn.functional.cross_entropy(net(x), y).backward()
            sync()
            opt.step()
            opt.zero_grad(set_to_none=True)
    same = all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), nets[1].parameters()))
    unused_stay_none = all(p.grad is None for p in nets[1].parameters())
    queue.put((rank, same, unused_stay_none, syncs[1].launched_in_backward, len(syncs[1].plans)))
    dist.destroy_process_group()


@pytest.mark.slow
def test_overlapped_sync_gives_the_same_weights_and_launches_during_backward():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_worker, args=(2, port, queue), nprocs=2, join=True)
    results = sorted(queue.get() for _ in range(2))
    for rank, same, grads_none, launched, plans in results:
        assert same, f"rank {rank}: overlapped all-reduce changed the weights"
        assert grads_none
        assert plans >= 2  # several networks trained, one plan each
        assert launched > 0, "no bucket was all-reduced during backward"
    assert results[0][3:] == results[1][3:]  # both ranks launched the same collectives
