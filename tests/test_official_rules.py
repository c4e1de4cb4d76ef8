"""Every shipped config gives the official code's network set, in the official order.

The official SN-Net code is four trees with their own rules: DeiT pairs every (j, k) of a window
in one stage; the Swin tree stitches stages 0-2 forward only; the ResNet/Swin tree stages 1-2
only (``if i in [0, 3]: continue``); the LeViT tree stages 0-1. Unequal stages map the shallow
one onto the deep one with ``F.interpolate`` (nearest) and assign stitching layers by list
position (``zip(stitch_cfgs, end_mapping_ids)``). The rules are restated here from that code,
independently of snnet.core.stitches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from snnet import create_snnet
from snnet.cli import build_train_parser
from snnet.config import parse_args_with_config

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def official_paired(depth: int, forward_only: bool, kernel_size: int = 2, stride: int = 1):
    """(cfgs, layer ids) of the official ``paired_stitching``."""
    cfgs, layers, layer = [], [], -1
    for i in range(0, depth, stride):
        ids = list(range(depth))[i : i + kernel_size]
        new = False
        for j in ids:
            for k in ids:
                if (j, k) in cfgs or (forward_only and j >= k):
                    continue
                new = True
                cfgs.append((j, k))
                layers.append(layer + 1)
        layer += new
    return cfgs, layers


def official_unpaired(front_depth: int, end_depth: int):
    """(cfgs, layer ids) of the official ``unpaired_stitching`` + ``zip`` in ``get_stitch_configs``."""
    end_mapping = F.interpolate(torch.arange(front_depth).float()[None, None], end_depth).long().flatten().tolist()
    cfgs = [(idx, i) for idx in range(front_depth) for i, e in enumerate(end_mapping) if e == idx and idx < i]
    return [(cfg, layer) for cfg, layer in zip(cfgs, end_mapping)]


def official_networks(stage_depths: list[list[int]], stages: list[int], forward_only: bool):
    """[(stage, front anchor, (j, k) local to the stage, official layer id)] after the anchors."""
    out = []
    for stage in stages:
        depths = [d[stage] for d in stage_depths]
        for front in range(len(depths) - 1):
            d, next_d = depths[front], depths[front + 1]
            if d == next_d:
                pairs = list(zip(*official_paired(d, forward_only)))
            else:
                pairs = official_unpaired(d, next_d)
            out += [(stage, front, cfg, layer) for cfg, layer in pairs]
    return out


NARROW = {  # the configs' anchors at small widths: the rules depend on depths only
    "deit_ti_s_b": [dict(embed_dim=24, num_heads=2)] * 3,
    "swin_t_s_b": [dict(embed_dim=16, num_heads=(1, 1, 1, 1))] * 3,
    "resnet18_resnet50": None,
    "resnet18_swin_t": [{}, dict(embed_dim=16, num_heads=(1, 1, 1, 1))],
    "levit_192_256": None,
}
# which official tree covers each config: (stages stitched, forward only)
TREES = {
    "deit_ti_s_b": ([0], False),
    "swin_t_s_b": ([0, 1, 2], True),
    "resnet18_resnet50": ([1, 2], True),
    "resnet18_swin_t": ([1, 2], True),
    "levit_192_256": ([0, 1], True),
}
# network counts of the official results files (stitches_res*.txt) where the repo has them
OFFICIAL_COUNTS = {"deit_ti_s_b": 71, "resnet18_resnet50": 10, "resnet18_swin_t": 8}


def _local(adapter, block: int, stage: int) -> int:
    return adapter.stage_block_ids(stage).index(block)


@pytest.fixture(scope="module", params=sorted(NARROW))
def config_net(request):
    name = request.param
    args, _ = parse_args_with_config(build_train_parser(), ["-c", str(REPO / "configs" / f"{name}.yaml")])
    net = create_snnet(
        args.anchors, num_classes=10, img_size=args.img_size, anchor_kwargs=NARROW[name], stages=args.stages
    )
    return name, net


def test_shipped_configs_give_the_official_networks_in_official_order(config_net):
    name, net = config_net
    stage_depths = [[len(a.stage_block_ids(s)) for s in range(a.num_stages)] for a in net.anchor_adapters]
    stages, forward_only = TREES[name]
    expected = [(stage, front, cfg) for stage, front, cfg, _ in official_networks(stage_depths, stages, forward_only)]
    stitched = [s for s in net.stitches if not s.is_anchor]
    got = [
        (
            s.stage if net.anchor_adapters[0].num_stages > 1 else 0,
            s.front,
            (
                _local(net.anchor_adapters[s.front], s.front_block, s.stage),
                _local(net.anchor_adapters[s.back], s.back_block, s.stage),
            ),
        )
        for s in stitched
    ]
    assert got == expected
    assert [s.cfg_id for s in net.stitches[: len(net.anchor_adapters)]] == list(range(len(net.anchor_adapters)))
    if name in OFFICIAL_COUNTS:
        assert net.num_stitches == OFFICIAL_COUNTS[name]
