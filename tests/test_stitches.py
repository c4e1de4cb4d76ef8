"""The paper's stitching rules: counts, order and names against hand counts and the paper."""

import pytest
from conftest import TINY_PAIRS

from snnet import create_snnet
from snnet.core.stitches import paired_positions, parse_stitch_ids, unpaired_positions
from snnet.errors import ConfigError


def brute_force_paired(depth, kernel, stride):
    """Independent restatement: every (j, k) inside some window, in first-window order."""
    order = []
    for start in range(0, depth, stride):
        w = [i for i in range(start, start + kernel) if i < depth]
        order += [(j, k) for j in w for k in w if (j, k) not in order]
    return order


@pytest.mark.parametrize("depth,kernel,stride", [(12, 2, 1), (12, 3, 1), (12, 3, 2), (6, 2, 2), (4, 1, 1)])
def test_paired_positions_match_definition(depth, kernel, stride):
    groups = paired_positions(depth, kernel, stride)
    assert [p for g in groups for p in g] == brute_force_paired(depth, kernel, stride)


def test_paired_depth_12_is_the_papers_34_over_11_layers():
    groups = paired_positions(12)
    assert sum(map(len, groups)) == 34 and len(groups) == 11
    assert groups[0] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert groups[1] == [(1, 2), (2, 1), (2, 2)]
    assert groups[-1] == [(10, 11), (11, 10), (11, 11)]


def test_unpaired_maps_shallow_stage_proportionally_forward_only():
    # Swin-T stage 3 (6 blocks) onto Swin-S stage 3 (18 blocks), worked by hand.
    groups = unpaired_positions(6, 18)
    assert groups[0] == [(0, 1), (0, 2)]
    assert groups[1] == [(1, 3), (1, 4), (1, 5)]
    assert groups[5] == [(5, 15), (5, 16), (5, 17)]
    assert sum(map(len, groups)) == 17
    assert all(j < k for g in groups for j, k in g)


def test_deit_ti_s_b_order_and_names(deit_ti_s_b):
    net = deit_ti_s_b
    assert net.num_stitches == 71 and len(net.stitch_layers) == 22
    names = [s.name for s in net.stitches]
    assert names[:3] == ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
    assert names[3] == "deit_tiny_patch16_224[:1]>deit_small_patch16_224[0:]"
    assert names[4] == "deit_tiny_patch16_224[:1]>deit_small_patch16_224[1:]"
    assert names[36] == "deit_tiny_patch16_224[:12]>deit_small_patch16_224[11:]"
    assert names[37] == "deit_small_patch16_224[:1]>deit_base_patch16_224[0:]"
    assert "deit_tiny_patch16_224[:4]>deit_small_patch16_224[4:]" in names
    assert all(s.is_anchor == (s.cfg_id < 3) for s in net.stitches)


def test_hierarchical_stitches_stay_inside_middle_stages():
    net = create_snnet(num_classes=5, **TINY_PAIRS["swin"])
    stitched = [s for s in net.stitches if not s.is_anchor]
    front, back = net.anchor_adapters
    for s in stitched:
        assert front.block_stages[s.front_block] == back.block_stages[s.back_block] == s.stage
        assert s.stage != front.num_stages - 1
    # stages 0 and 1 (2 vs 2 blocks: one forward pair each), stage 2 (2 vs 6: unpaired, 5)
    assert [s.stage for s in stitched] == [0, 1, 2, 2, 2, 2, 2]


def test_parse_stitch_ids():
    assert parse_stitch_ids("0,3,10-12", 20) == [0, 3, 10, 11, 12]
    with pytest.raises(ConfigError, match="out of range"):
        parse_stitch_ids("0,25", 20)
    with pytest.raises(ConfigError, match="bad stitch id"):
        parse_stitch_ids("x", 20)


def test_selecting_runs_that_network_and_restores_the_previous_one():
    import torch

    net = create_snnet(**TINY_PAIRS["deit"], num_classes=10).eval()
    x = torch.randn(2, *net.input_size)
    net.select(2)
    with torch.no_grad(), net.selecting(1) as selected:
        assert selected is net and net.cfg_id == 1
        assert torch.equal(net(x), net.anchors[1](x))  # anchor 1 runs as the timm model itself
    assert net.cfg_id == 2
    with pytest.raises(RuntimeError, match="inside"), net.selecting(0):
        raise RuntimeError("inside")
    assert net.cfg_id == 2
    with pytest.raises(ConfigError, match="out of range"), net.selecting(net.num_stitches):
        pass
    assert net.cfg_id == 2
