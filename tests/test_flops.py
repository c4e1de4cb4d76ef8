"""FLOPs and params per network against whole-network counts, autograd and the paper's table."""

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY_PAIRS, families
from fvcore.nn import FlopCountAnalysis

from snnet import create_snnet
from snnet.core.flops import count_flops, flops_table, network_flops

PUBLISHED = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "snnet_deit_published.jsonl").read_text().splitlines()
]


def test_deit_tiny_counts_fused_attention_like_the_paper():
    model = timm.create_model("deit_tiny_patch16_224")
    x = torch.zeros(1, 3, 224, 224)
    assert count_flops(model, x) == 1_258_411_200  # the paper's DeiT-Ti
    plain = FlopCountAnalysis(model.eval(), x)
    plain.unsupported_ops_warnings(False)
    assert plain.total() < 1.1e9  # what fvcore alone reports: attention skipped


def test_deit_ti_s_b_table_matches_published(deit_ti_s_b):
    """Same order, same FLOPs and params as the SN-Net authors' table, up to two documented
    differences in stitched networks: their FLOPs omit the back anchor's final LayerNorm
    (5 x 197 tokens x width), their params omit the front anchor's cls token and position
    embedding (198 x width), which the stitched network does run."""
    rows = flops_table(deit_ti_s_b)
    widths = [192, 384, 768]
    assert len(rows) == len(PUBLISHED) == 71
    for row, pub in zip(rows, PUBLISHED):
        s = deit_ti_s_b.stitches[row["cfg_id"]]
        if s.is_anchor:
            assert (row["flops"], row["params"]) == (pub["flops"], pub["params"]), row
        else:
            assert row["flops"] == pub["flops"] + 5 * 197 * widths[s.back], row
            assert row["params"] == pub["params"] + 198 * widths[s.front], row


@pytest.mark.parametrize("family", families(TINY_PAIRS, slow=["levit", "resnet", "resnet_swin", "swin"]))
def test_flops_by_composition_equal_whole_network(family):
    net = create_snnet(num_classes=5, **TINY_PAIRS[family])
    rows = flops_table(net)
    for row in rows:
        assert row["flops"] == network_flops(net, row["cfg_id"]), row["name"]


@pytest.mark.parametrize("family", families(TINY_PAIRS, slow=["deit", "levit", "resnet", "resnet_swin"]))
def test_params_are_exactly_those_that_get_gradients(family):
    # train mode, as in training (timm's LeViT caches attention biases in eval mode)
    net = create_snnet(num_classes=5, **TINY_PAIRS[family]).train()
    x = torch.randn(2, 3, *net.input_size[1:])
    for s in net.stitches:
        net.zero_grad(set_to_none=True)
        net.select(s.cfg_id)(x).sum().backward()
        used = sum(p.numel() for p in net.parameters() if p.grad is not None)
        assert net.num_params(s.cfg_id) == used, s.name
