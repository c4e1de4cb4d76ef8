"""Evaluating every network of a two-way (SN-Netv2) SN-Net: one pass over the data vs one pass per network.

    python benchmarks/bench_sweep_two_way.py                  # DeiT3-S/L-shaped (depths 12/24, 134 networks)
    python benchmarks/bench_sweep_two_way.py --dims 24 64     # heavier anchors

The same measurement as ``bench_sweep.py`` (same JPEGs, loader, timings and identical-counts
check) on a DeiT3-S/L-shaped two-way SN-Net at reduced widths: 2 anchors, 11 SL, 11 LS, 55 LSL
and 55 SLS networks. The sweep runs the prefix tree of all 134 routes once per batch: the
first anchor's blocks, each stitching layer's output and each middle segment are shared by
every network whose route starts with them.
"""

from __future__ import annotations

import argparse

from bench_sweep import main

from snnet import create_snnet
from snnet.core.model import SNNet


def build_s_l(args: argparse.Namespace) -> SNNet:
    return create_snnet(
        ["deit3_small_patch16_224", "deit3_large_patch16_224"],
        num_classes=10,
        model_kwargs=dict(patch_size=args.patch_size),
        anchor_kwargs=[dict(embed_dim=d, num_heads=max(1, d // 24)) for d in args.dims],
        stitching="two-way",
    )


if __name__ == "__main__":
    main(build_s_l, dims=(16, 48), shape="DeiT3-S/L-shaped two-way, depths 12/24", description=__doc__)
