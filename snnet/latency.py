"""Wall-clock latency of one network of an SN-Net, as deployed (eval.py --measure-latency)."""
from __future__ import annotations

import contextlib
import statistics
import time
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
