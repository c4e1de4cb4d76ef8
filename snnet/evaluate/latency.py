"""Latency of one network of an SN-Net as deployed (eval.py --measure-latency): CUDA-graph replay on
CUDA, wall clock on the CPU; and eval.py's autocast setting."""

from __future__ import annotations

import contextlib
import statistics
import time
from argparse import Namespace
from typing import Any, Callable

import torch

from ..core.model import SNNet
from ..runtime import autocast_factory, eval_mode


@torch.no_grad()
def measure_latency(
    net: SNNet,
    cfg_id: int,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    warmup: int = 10,
    repeats: int = 30,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    channels_last: bool = False,
    cuda_graph: bool = True,
) -> float:
    """Median time in ms of one forward of network ``cfg_id`` (alone, as deployed) on a batch of
    ``batch_size`` random images, after ``warmup`` forwards.

    On CUDA the forward is captured once in a CUDA graph and its replays are timed with CUDA events
    (``cuda_graph``, the default): that is how a latency-critical deployment runs it, and an eager
    forward at small batches measures Python and kernel-launch time, the same for every network.
    On the CPU (or ``cuda_graph=False``) each eager forward is timed on the wall clock, CUDA
    synchronised around it.
    """
    device = torch.device(device)
    x = torch.randn(batch_size, *net.input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> torch.Tensor:
        with autocast():
            return net(x)

    with eval_mode(net):
        with net.selecting(cfg_id):
            if device.type == "cuda" and cuda_graph:
                return _cuda_graph_latency(forward, warmup, repeats)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            for _ in range(max(0, warmup)):
                forward()
            sync()
            times = []
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                forward()
                sync()
                times.append(time.perf_counter() - start)
            return 1000.0 * statistics.median(times)


def _cuda_graph_latency(forward: Callable[[], torch.Tensor], warmup: int, repeats: int) -> float:
    """Median ms of one replay of a CUDA graph of ``forward``, timed by CUDA events."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream, as capture requires
        for _ in range(max(1, warmup)):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    cache = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)  # cached weight casts must not outlive the capture
    try:
        with torch.cuda.graph(graph):
            forward()
    finally:
        torch.set_autocast_cache_enabled(cache)
    for _ in range(max(1, warmup)):
        graph.replay()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(max(1, repeats))
    ]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def autocast_for(args: Any, device: torch.device) -> Callable[[], Any]:
    """eval.py's ``--amp``/``--amp-dtype`` as an autocast factory (:func:`snnet.runtime.autocast_factory`)."""
    return autocast_factory(args.amp, args.amp_dtype, device)


def cached_latencies(args: Namespace, net: SNNet, info, ids: list[int], partial) -> dict[int, float]:
    """eval.py --measure-latency: median forward time per network on rank 0's device, cached in
    (and read back from) the partial results ``partial`` when given; empty on other ranks."""
    out: dict[int, float] = {}
    if info.is_primary:
        device = next(net.parameters()).device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        setting = {
            "batch_size": args.latency_batch_size,
            "device": name,
            "amp": args.amp_dtype if args.amp else False,
            "channels_last": args.channels_last,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
        }
        autocast = autocast_for(args, device)
        measured = 0
        for i in ids:
            cached = partial.latency_for(i, setting) if partial is not None else None
            if cached is None:
                cached = measure_latency(
                    net,
                    i,
                    args.latency_batch_size,
                    device,
                    args.latency_warmup,
                    args.latency_repeats,
                    autocast,
                    args.channels_last,
                )
                measured += 1
                if partial is not None:
                    partial.add_latency(i, cached, setting)
            out[i] = cached
        print(
            f"Latency: {measured} networks timed at batch {args.latency_batch_size} on {name}"
            + (f" ({len(ids) - measured} from the partial results)" if measured < len(ids) else ""),
            flush=True,
        )
    return out
