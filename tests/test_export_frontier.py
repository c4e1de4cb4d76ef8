"""Several networks in one TorchScript file: each block stored once, every network's logits the SN-Net's."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from test_export import tiny_net

from snnet.evaluate.export import export_network
from snnet.evaluate.export_frontier import export_network_set

pytestmark = pytest.mark.usefixtures("one_thread")

# A fresh interpreter (-I: no cwd or PYTHONPATH on sys.path) that never imports snnet or timm:
# runs every network of the file by m(x, cfg_id) and by m.select(cfg_id); m(x), tries an id the
# file lacks.
LOADER = textwrap.dedent("""
    import sys, torch
    path, inp, out = sys.argv[1:4]
    x = torch.load(inp)
    m = torch.jit.load(path)
    ids = list(m.networks())
    with torch.no_grad():
        first = m(x)
        by_arg = {c: m(x, c) for c in ids}
        by_select = {}
        for c in ids:
            m.select(c)
            by_select[c] = m(x)
    try:
        m(x, 10**6)
        missing = ""
    except Exception as e:
        missing = str(e)
    foreign = sorted(k for k in sys.modules if k.split(".")[0] in ("snnet", "timm"))
    torch.save({"ids": ids, "first": first, "by_arg": by_arg, "by_select": by_select, "missing": missing,
                "default": m.default_cfg_id, "foreign": foreign}, out)
""")


def deit_storage_bytes(net, cfg_ids) -> int:
    """Bytes of the distinct parameters the networks run, counted from the timm modules by hand
    (tiny DeiT: no buffers): a stem is patch_embed + cls_token + pos_embed, a head norm + head."""

    def size(*parts):
        return sum(
            4 * p.numel() for part in parts for p in ([part] if isinstance(part, torch.Tensor) else part.parameters())
        )

    stems, blocks, layers, heads = set(), set(), set(), set()
    for c in cfg_ids:
        route = net.stitches[c].route
        stems.add(route.first.anchor)
        heads.add(route.last.anchor)
        blocks |= {(s.anchor, b) for s in route.segments for b in range(s.start, s.stop)}
        layers |= set(route.layers)
    m = net.anchors
    return (
        sum(size(m[a].patch_embed, m[a].cls_token, m[a].pos_embed) for a in stems)
        + sum(size(m[a].blocks[b]) for a, b in blocks)
        + sum(size(net.stitch_layers[i]) for i in layers)
        + sum(size(m[a].norm, m[a].head) for a in heads)
    )


def stored_tensor_bytes(path) -> int:
    """Bytes of the tensor storages in a TorchScript archive (its ``data/`` records)."""
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if "/data/" in i.filename and not i.filename.endswith("/"))


def test_one_file_holds_each_block_once_and_every_networks_logits(tmp_path):
    net = tiny_net("deit")
    ids = [s.cfg_id for s in net.stitches]
    order = sorted(ids, key=lambda c: (-c % 5, c))  # any order: the file keeps it
    path = tmp_path / "all.pt"
    report = export_network_set(net, order, path, default=order[2])
    assert report.cfg_ids == order

    # weights: exactly the distinct modules' bytes; the file far below the networks exported one by one
    distinct = deit_storage_bytes(net, ids)
    assert stored_tensor_bytes(path) == distinct
    singles = 0
    for c in ids:
        export_network(net, c, tmp_path / "one.pt")
        singles += os.path.getsize(tmp_path / "one.pt")
    size = os.path.getsize(path)
    print(f"\nfile {size} B, distinct parameters {distinct} B, {len(ids)} single exports {singles} B")
    assert distinct < size < distinct * 1.5 and size < singles / 5

    x = torch.randn(3, *net.input_size)  # not the traced batch size
    with torch.no_grad():
        expected = {c: net.select(c)(x) for c in ids}
    del net, report
    gc.collect()
    m = torch.jit.load(str(path))
    assert list(m.networks()) == order and m.default_cfg_id == order[2]
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected[order[2]], rtol=0, atol=0)
        for c in ids:
            torch.testing.assert_close(m(x, c), expected[c], rtol=0, atol=0)
    with pytest.raises(torch.jit.Error, match=r"cfg_id 99 is not in this file: it holds cfg_ids \[" + str(order[0])):
        m(x, 99)
    with pytest.raises(torch.jit.Error, match="cfg_id -1 is not in this file"):
        m.select(-1)


@pytest.mark.parametrize("family", ["resnet_swin", pytest.param("levit", marks=pytest.mark.slow)])
def test_other_families_share_their_blocks_and_match(family, tmp_path):
    net = tiny_net(family)
    ids = [s.cfg_id for s in net.stitches][::2] + [net.num_stitches - 1]
    path = tmp_path / "some.pt"
    report = export_network_set(net, ids, path, default=ids[0])
    alone = sum(net.num_params(c) for c in ids)
    assert report.params < alone  # stitched networks share their anchors' blocks
    x = torch.randn(2, *net.input_size)
    m = torch.jit.load(str(path))
    with torch.no_grad():
        for c in ids:
            torch.testing.assert_close(m(x, c), net.select(c)(x), rtol=0, atol=0)


@pytest.mark.slow
def test_file_runs_every_network_without_snnet(tmp_path):
    net = tiny_net("deit")
    ids = [0, 4, 7, 1]
    path = tmp_path / "set.pt"
    export_network_set(net, ids, path, default=7)
    x = torch.randn(3, *net.input_size)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = {c: net.select(c)(x) for c in ids}
    del net
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
    assert got["foreign"] == [] and got["ids"] == ids and got["default"] == 7
    torch.testing.assert_close(got["first"], expected[7], rtol=0, atol=0)
    for c in ids:
        torch.testing.assert_close(got["by_arg"][c], expected[c], rtol=0, atol=0)
        torch.testing.assert_close(got["by_select"][c], expected[c], rtol=0, atol=0)
    assert "cfg_id 1000000 is not in this file: it holds cfg_ids [0, 4, 7, 1]" in got["missing"]


def test_refuses_other_formats_missing_and_repeated_ids(tmp_path):
    from snnet.errors import ConfigError

    net = tiny_net("deit")
    for suffix in (".pt2", ".onnx"):
        with pytest.raises(ConfigError, match="one TorchScript file"):
            export_network_set(net, [0, 1], tmp_path / f"set{suffix}", default=0)
    with pytest.raises(ConfigError, match="cfg_id 99 does not exist: this SN-Net has cfg_ids 0..11"):
        export_network_set(net, [0, 99], tmp_path / "set.pt", default=0)
    with pytest.raises(ConfigError, match="names a network twice"):
        export_network_set(net, [3, 3], tmp_path / "set.pt", default=3)
    assert list(tmp_path.iterdir()) == []
