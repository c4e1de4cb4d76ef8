"""FLOPs table of every network: count each part once vs trace every network whole.

    python benchmarks/bench_flops_table.py            # DeiT Ti/S/B, 71 networks

Prints both times, their ratio, and checks that the numbers are identical.
"""

from __future__ import annotations

import argparse
import time
import warnings

from snnet import create_snnet
from snnet.core.flops import flops_table, network_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--anchors", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    net = create_snnet(args.anchors, num_classes=1000)
    network_flops(net, 0)  # warm-up: first trace pays one-time costs

    start = time.perf_counter()
    table = [row["flops"] for row in flops_table(net)]
    composed = time.perf_counter() - start

    start = time.perf_counter()
    whole = [network_flops(net, i) for i in range(net.num_stitches)]
    separate = time.perf_counter() - start

    assert table == whole, "composed and whole-network counts differ"
    print(f"networks: {net.num_stitches} ({', '.join(args.anchors)})")
    print(f"per-part table:         {composed:7.2f} s")
    print(f"each network with fvcore: {separate:7.2f} s")
    print(f"speed-up: {separate / composed:.1f}x, identical counts: yes")


if __name__ == "__main__":
    main()
