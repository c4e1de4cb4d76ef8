"""Wall-clock latency of one network of an SN-Net, as deployed (eval.py --measure-latency), and
eval.py's autocast setting."""
from __future__ import annotations

import contextlib
import statistics
import time
from argparse import Namespace
from typing import Any, Callable

import torch

from .model import SNNet


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
    was = net.training
    net.eval()
    times = []
    try:
        with net.selecting(cfg_id), autocast():
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
    return 1000.0 * statistics.median(times)


def autocast_for(args: Namespace, device: torch.device) -> Callable[[], Any]:
    """eval.py's ``--amp``/``--amp-dtype`` as a context-manager factory (a no-op without --amp)."""
    if not args.amp:
        return contextlib.nullcontext
    dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def cached_latencies(args: Namespace, net: SNNet, info, ids: list[int], partial) -> dict[int, float]:
    """eval.py --measure-latency: median forward time per network on rank 0's device, cached in
    (and read back from) the partial results ``partial`` when given; empty on other ranks."""
    out: dict[int, float] = {}
    if info.is_primary:
        device = next(net.parameters()).device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        setting = {"batch_size": args.latency_batch_size, "device": name, "amp": args.amp_dtype if args.amp else False,
                   "channels_last": args.channels_last, "threads": torch.get_num_threads() if device.type == "cpu" else None}
        autocast = autocast_for(args, device)
        measured = 0
        for i in ids:
            cached = partial.latency_for(i, setting) if partial is not None else None
            if cached is None:
                cached = measure_latency(net, i, args.latency_batch_size, device, args.latency_warmup,
                                         args.latency_repeats, autocast, args.channels_last)
                measured += 1
                if partial is not None:
                    partial.add_latency(i, cached, setting)
            out[i] = cached
        print(f"Latency: {measured} networks timed at batch {args.latency_batch_size} on {name}"
              + (f" ({len(ids) - measured} from the partial results)" if measured < len(ids) else ""), flush=True)
    return out
