"""SN-Netv2's two-way stitching: the official enumeration, routes equal to composing timm blocks
by hand, FLOPs by composition equal to whole-network tracing, LS init of every layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_PAIRS, TINY_TWO_WAY

from snnet import create_snnet
from snnet.core.flops import flops_table, network_flops
from snnet.errors import IncompatibleAnchorsError

pytestmark = pytest.mark.usefixtures("one_thread")


def official_configs(d0: int, d1: int) -> list[tuple[list[int], list[list[int]], list[int]]]:
    """(comb_id, stitch_cfgs, stitch_layer_ids) in the order of the official
    ``get_stitch_configs_bidirection``, re-derived here from its rules (nearest interpolation of
    the small anchor's block ids onto the large one's, ``i % 2 == 1`` for depth ratio 2)."""
    cfgs = [([0], [], []), ([1], [], [])]
    sl = [([0, 1], [[i, (i + 1) * (d1 // d0)]], [i]) for i in range(d0)]
    mapping = F.interpolate(torch.arange(d0, dtype=torch.float)[None, None], d1).squeeze().long().tolist()
    ls = []
    for i in range(d1):
        if (i % 2 == 1 if d1 != d0 else True) and i < d1 - 1:
            ls.append(([1, 0], [[i, mapping[i] + 1]], [i // (d1 // d0)]))
    lsl = [
        ([1, 0, 1], [b[1][0], f[1][0]], b[2] + f[2])
        for b in ls
        for f in sl
        if f[2][0] != d0 - 1 and f[1][0][0] >= b[1][0][1]
    ]
    sls = [([0, 1, 0], [f[1][0], b[1][0]], f[2] + b[2]) for f in sl for b in ls if b[1][0][0] >= f[1][0][1]]
    return cfgs + sl + ls + lsl + sls


def official_name(comb, cfgs, names):
    if len(comb) == 1:
        return names[comb[0]]
    if len(comb) == 2:
        ((f, e),) = cfgs
        return f"{names[comb[0]]}[:{f + 1}]>{names[comb[1]]}[{e}:]"
    (f1, e1), (f2, e2) = cfgs
    return f"{names[comb[0]]}[:{f1 + 1}]>{names[comb[1]]}[{e1}:{f2 + 1}]>{names[comb[2]]}[{e2}:]"


def test_deit3_s_l_is_the_official_134_in_order():
    names = ["deit3_small_patch16_224", "deit3_large_patch16_224"]
    # the real depths (12 / 24); narrow widths keep the build fast on a CPU
    net = create_snnet(
        names, num_classes=10, img_size=32, model_kwargs=dict(embed_dim=16, num_heads=1), stitching="two-way"
    )
    official = official_configs(12, 24)
    assert len(official) == 135
    official = [c for c in official if not (c[0] == [0, 1] and c[1][0][0] == 11)]  # cfg 13, left out officially
    assert net.num_stitches == 134
    assert [net.stitches[i].name for i in range(134)] == [official_name(c, s, names) for c, s, _ in official]
    kinds = [tuple(c) for c, _, _ in official]
    assert [kinds.count(k) for k in [(0,), (1,), (0, 1), (1, 0), (1, 0, 1), (0, 1, 0)]] == [1, 1, 11, 11, 55, 55]
    # layers: the SL ones first (official stitch_layers[0][i]), then the LS ones (stitch_layers[1][i])
    n_sl = 11
    for s, (comb, _, layer_ids) in zip(net.stitches, official):
        expected = [lid if (a, b) == (0, 1) else n_sl + lid for (a, b), lid in zip(zip(comb, comb[1:]), layer_ids)]
        assert list(s.route.layers) == expected, s.name
    assert len(net.stitch_layers) == 22
    assert net.stitches[net.num_stitches - 1].name.count(">") == 2
    assert "deit3_small_patch16_224[:4]>deit3_large_patch16_224[8:16]>deit3_small_patch16_224[8:]" in [
        s.name for s in net.stitches
    ]


def test_equal_depths_follow_the_official_rule():
    net = create_snnet(
        ["deit3_small_patch16_224", "deit3_base_patch16_224"],
        num_classes=10,
        img_size=32,
        model_kwargs=dict(embed_dim=16, num_heads=1, depth=6),
        stitching="two-way",
    )
    official = [c for c in official_configs(6, 6) if not (c[0] == [0, 1] and c[1][0][0] == 5)]
    names = net.config["anchors"]
    assert [s.name for s in net.stitches] == [official_name(c, s, names) for c, s, _ in official]


def hand_route(net, route, x):
    """A route computed from the timm models themselves: the first segment's output captured by a
    hook during the timm forward, stitching layers as F.linear, middle blocks called one by one,
    and the last segment's input injected by a hook into the timm forward of the last anchor."""
    models = [a.model for a in net.anchor_adapters]
    first, last = route.segments[0], route.segments[-1]
    captured = {}
    handle = (
        models[first.anchor].blocks[first.stop - 1].register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    )
    models[first.anchor](x)
    handle.remove()
    h = captured["h"]
    for _, layer, seg in route.junctions():
        t = net.stitch_layers[layer].transform
        h = F.linear(h, t.weight, t.bias)
        if seg is not last:
            for blk in models[seg.anchor].blocks[seg.start : seg.stop]:
                h = blk(h)
    handle = models[last.anchor].blocks[last.start - 1].register_forward_hook(lambda m, i, o: h)
    out = models[last.anchor](x)
    handle.remove()
    return out


def tiny_two_way(**kwargs):
    torch.manual_seed(0)
    net = create_snnet(num_classes=7, **TINY_TWO_WAY, **kwargs).eval()
    with torch.no_grad():  # clearly different networks
        for layer in net.stitch_layers:
            layer.transform.weight.normal_(0, 0.3)
    return net


def test_every_route_equals_composing_timm_blocks_by_hand():
    net = tiny_two_way()
    assert [len(s.route.segments) for s in net.stitches].count(3) == 6 and net.num_stitches == 14
    x = torch.randn(3, 3, 32, 32)
    outs = []
    with torch.no_grad():
        for s in net.stitches:
            got = net.select(s.cfg_id)(x)
            ref = net.anchors[s.front](x) if s.is_anchor else hand_route(net, s.route, x)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=s.name)
            outs.append(got)
    assert len({round(float(o.abs().sum()), 3) for o in outs}) == len(outs), "networks should differ"


def test_flops_table_equals_whole_network_tracing():
    net = tiny_two_way()
    for row in flops_table(net):
        assert row["flops"] == network_flops(net, row["cfg_id"]), row["name"]


def test_params_are_exactly_those_that_get_gradients():
    net = tiny_two_way().train()
    x = torch.randn(2, 3, 32, 32)
    for s in net.stitches:
        net.zero_grad(set_to_none=True)
        net.select(s.cfg_id)(x).sum().backward()
        used = sum(p.numel() for p in net.parameters() if p.grad is not None)
        assert net.num_params(s.cfg_id) == used, s.name


def rows(t):
    return t.reshape(-1, t.shape[-1]).double().numpy()


def test_ls_init_initialises_every_layer_both_directions():
    torch.manual_seed(0)
    net = create_snnet(num_classes=5, **TINY_TWO_WAY)
    images = torch.randn(6, 3, 32, 32)
    net.init_stitching_layers(images, batch_size=4)
    feats = []
    for a in net.anchor_adapters:  # block outputs captured by hooks on the timm models
        out = {}
        hs = [
            b.register_forward_hook(lambda m, i, o, n=n, out=out: out.__setitem__(n, o))
            for n, b in enumerate(a.model.blocks)
        ]
        with torch.no_grad():
            a.model.eval()(images)
        for h in hs:
            h.remove()
        feats.append(out)
    directions = set()
    for spec, layer in zip(net.layer_specs, net.stitch_layers):
        ((j, k),) = spec.positions
        x, y = rows(feats[spec.front][j]), rows(feats[spec.back][k - 1])
        sol, *_ = np.linalg.lstsq(np.concatenate([x, np.ones((len(x), 1))], 1), y, rcond=None)
        np.testing.assert_allclose(layer.transform.weight.detach().double().numpy(), sol[:-1].T, atol=1e-4)
        np.testing.assert_allclose(layer.transform.bias.detach().double().numpy(), sol[-1], atol=1e-4)
        directions.add((spec.front, spec.back))
    assert directions == {(0, 1), (1, 0)}


def test_incompatible_anchors_get_one_line_errors():
    with pytest.raises(IncompatibleAnchorsError, match="single-stage anchors.*4 stages"):
        create_snnet(num_classes=5, **{**TINY_PAIRS["swin"], "stitching": "two-way"})
    with pytest.raises(IncompatibleAnchorsError, match="exactly two anchors, got 3"):
        create_snnet(
            ["deit_tiny_patch16_224"] * 3, num_classes=5, img_size=32, model_kwargs=dict(depth=2), stitching="two-way"
        )
    with pytest.raises(IncompatibleAnchorsError, match="token.*differ|spatial sizes differ"):
        create_snnet(
            ["deit3_small_patch16_224", "deit3_large_patch16_224"],
            num_classes=5,
            img_size=32,
            anchor_kwargs=[dict(patch_size=8, depth=2), dict(patch_size=16, depth=4)],
            stitching="two-way",
        )


@pytest.mark.parametrize("kind", ["linear", "lora"])
def test_one_pass_sweep_is_bit_identical_to_select(kind):
    from snnet.evaluate.sweep import SweepPlan, forward_networks

    net = tiny_two_way(stitch_layer=kind, lora_rank=4)
    if kind == "lora":
        with torch.no_grad():
            for layer in net.stitch_layers:
                layer.lora_B.normal_(0, 0.3)
        net.eval()
    x = torch.randn(3, 3, 32, 32)
    ids = list(range(net.num_stitches))
    with torch.no_grad():
        got = dict(forward_networks(net, SweepPlan(net, ids), x))
        assert sorted(got) == ids
        for i in ids:
            assert torch.equal(got[i], net.select(i)(x)), net.stitches[i].name
        sub = [i for i in ids if len(net.stitches[i].route.segments) == 3][::2]
        assert sorted(dict(forward_networks(net, SweepPlan(net, sub), x))) == sub


@pytest.mark.slow
def test_three_segment_network_exports_as_a_plain_model(tmp_path):
    import os
    import subprocess
    import sys

    from test_export import LOADER

    from snnet.evaluate.export import export_network, standalone_network

    net = tiny_two_way()
    three = [s.cfg_id for s in net.stitches if len(s.route.segments) == 3]
    x = torch.randn(3, 3, 32, 32)
    for cfg_id in three:
        module = standalone_network(net, cfg_id)
        assert sum(p.numel() for p in module.parameters()) == net.num_params(cfg_id)
        with torch.no_grad():
            assert torch.equal(module(x), net.select(cfg_id)(x))
    cfg_id = three[-1]  # small -> large -> small: the small anchor runs twice
    assert net.stitches[cfg_id].route.anchors == (0, 1) and net.stitches[cfg_id].route.last.anchor == 0
    path = tmp_path / "net.pt"
    report = export_network(net, cfg_id, path)
    assert report.params == net.num_params(cfg_id)
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "y.pt")
    assert got["foreign"] == [] and got["params"] == net.num_params(cfg_id)
    with torch.no_grad():
        torch.testing.assert_close(got["y"], net.select(cfg_id)(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_deit3_s_l_flops_equal_the_official_table():
    """All 134 networks in the official order (their ids skip the untrained cfg 13) with exactly
    the FLOPs the SN-Netv2 authors' code counts (its stitched networks keep the final norm)."""
    import json
    from pathlib import Path

    published = [
        json.loads(line)
        for line in (Path(__file__).parent / "data" / "snnetv2_deit3_s_l_published.jsonl").read_text().splitlines()
    ]
    net = create_snnet(["deit3_small_patch16_224", "deit3_large_patch16_224"], num_classes=1000, stitching="two-way")
    rows = flops_table(net)
    assert [p["cfg_id"] for p in published] == [i for i in range(135) if i != 13]
    assert [r["flops"] for r in rows] == [p["flops"] for p in published]
    # the official ids beside snnet's contiguous ones: the published table diffs line by line
    assert [(r["official_cfg_id"], r["flops"]) for r in rows] == [(p["cfg_id"], p["flops"]) for p in published]
    assert [r["cfg_id"] for r in rows] == list(range(134))


@pytest.mark.parametrize("two_way", [False, True])
def test_layer_positions_are_exactly_the_route_junctions(two_way):
    """LS init solves each layer for its spec's positions; those are the junctions the routes run."""
    net = tiny_two_way() if two_way else create_snnet(num_classes=5, **TINY_PAIRS["deit"])
    junctions = {
        (layer, (before.anchor, before.stop - 1), (after.anchor, after.start))
        for s in net.stitches
        for before, layer, after in s.route.junctions()
    }
    positions = {
        (i, (spec.front, j), (spec.back, k)) for i, spec in enumerate(net.layer_specs) for j, k in spec.positions
    }
    assert junctions == positions


def test_paired_unpaired_checked_and_cli_errors_are_one_line(tmp_path, capsys):
    from conftest import run_entry

    from snnet.evaluate.main import main as eval_main

    with pytest.raises(IncompatibleAnchorsError, match="paired stitching needs stages of equal depth"):
        create_snnet(num_classes=5, **{**TINY_TWO_WAY, "stitching": "paired"})
    with pytest.raises(IncompatibleAnchorsError, match="unpaired stitching needs stages of different depths"):
        create_snnet(num_classes=5, **{**TINY_PAIRS["deit"], "stitching": "unpaired"})
    forced = create_snnet(num_classes=5, **{**TINY_PAIRS["deit"], "stitching": "paired"})
    assert [s.name for s in forced.stitches] == [
        s.name for s in create_snnet(num_classes=5, **TINY_PAIRS["deit"]).stitches
    ]
    code = run_entry(
        eval_main,
        [
            "--anchors",
            "resnet18",
            "resnet50",
            "--img-size",
            "64",
            "--stitching",
            "two-way",
            "--flops-only",
            "--output",
            tmp_path,
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: two-way stitching needs single-stage"), err
