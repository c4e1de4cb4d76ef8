"""One file of several networks (eval.py --export frontier / ID,ID,...) against one file per network.

Builds the paper's DeiT Ti/S/B SN-Net at full size (random weights: sizes and times do not depend
on them), writes ``--networks`` of its networks into one TorchScript file and each of them into
its own file (eval.py --export CFG_ID), and prints, side by side in one run: the file sizes, the
bytes of the distinct parameters the networks run (each block once), and the median forward time
of each network from the shared file (``m(x, cfg_id)``) and from its own file, at batch 1, on one
thread, timed in alternation:

    .venv/bin/python benchmarks/bench_export_size.py --output /tmp/export-size
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from snnet import create_snnet
from snnet.evaluate.export import export_network
from snnet.evaluate.export_frontier import export_network_set, held_params

ANCHORS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]


def median_ms_pair(first, second, x: torch.Tensor, warmup: int, repeats: int) -> tuple[float, float]:
    """Median forward times of two functions on ``x``, timed in alternation (the same machine
    load for both), after ``warmup`` untimed calls of each (TorchScript optimises on its first runs)."""
    times: tuple[list[float], list[float]] = ([], [])
    with torch.no_grad():
        for _ in range(warmup):
            first(x)
            second(x)
        for _ in range(repeats):
            for forward, out in ((first, times[0]), (second, times[1])):
                start = time.perf_counter()
                forward(x)
                out.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument("--networks", default="0,1,2,5,15,25,35,45,55,65", help="cfg_ids to export")
    parser.add_argument("--repeats", type=int, default=15, help="timed forwards per network and file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    net = create_snnet(ANCHORS, num_classes=1000).eval()
    ids = [int(c) for c in args.networks.split(",")]

    start = time.perf_counter()
    export_network_set(net, ids, out / "set.pt", default=ids[-1])
    set_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for c in ids:
        export_network(net, c, out / f"net-{c}.pt")
    single_seconds = time.perf_counter() - start
    distinct = 4 * held_params(net, ids)  # float32 bytes of each stem, block, stitching layer and head once
    del net

    shared = torch.jit.load(str(out / "set.pt"))
    x = torch.randn(1, 3, 224, 224)
    print("| cfg_id | own file (MB) | from the shared file (ms) | from its own file (ms) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    singles = 0
    for c in ids:
        size = os.path.getsize(out / f"net-{c}.pt")
        singles += size
        own = torch.jit.load(str(out / f"net-{c}.pt"))
        a, b = median_ms_pair(lambda t, c=c: shared(t, c), own, x, 3, args.repeats)
        print(f"| {c} | {size / 1e6:.1f} | {a:.1f} | {b:.1f} | {a / b:.3f} |")
    size = os.path.getsize(out / "set.pt")
    print(
        f"\n{len(ids)} networks: one file {size / 1e6:.1f} MB (export {set_seconds:.0f} s); the distinct parameters "
        f"{distinct / 1e6:.1f} MB; {len(ids)} files {singles / 1e6:.1f} MB (export {single_seconds:.0f} s); "
        f"one file / distinct parameters = {size / distinct:.3f}, one file / {len(ids)} files = {size / singles:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
