"""Export of one network: exactly its parameters, the SN-Net's outputs, loadable with plain torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY_PAIRS

from snnet import create_snnet
from snnet.evaluate.export import export_network, standalone_network

# Loads an exported file in a fresh interpreter (-I: no cwd or PYTHONPATH on sys.path) that never
# imports snnet or timm, runs it on a saved batch and reports its parameter count.
LOADER = textwrap.dedent("""
    import sys, torch
    path, inp, out = sys.argv[1:4]
    x = torch.load(inp)
    if path.endswith(".pt2"):
        program = torch.export.load(path)
        params = sum(program.state_dict[n].numel() for n in program.graph_signature.parameters)
        model = program.module()
    else:
        model = torch.jit.load(path)
        params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        y = model(x)
    foreign = sorted(m for m in sys.modules if m.split(".")[0] in ("snnet", "timm"))
    torch.save({"y": y, "params": params, "foreign": foreign}, out)
""")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(family):
    torch.manual_seed(0)
    net = create_snnet(num_classes=5, **TINY_PAIRS[family]).eval()
    with torch.no_grad():
        for layer in net.stitch_layers:
            layer.transform.weight.normal_(0, 0.3)
    return net


def middle_stitch(net):
    stitched = [s.cfg_id for s in net.stitches if not s.is_anchor]
    return stitched[len(stitched) // 2]


def test_standalone_modules_hold_exactly_each_networks_parameters():
    net = tiny_net("deit")
    x = torch.randn(3, 3, *net.input_size[1:])
    for s in net.stitches:
        module = standalone_network(net, s.cfg_id)
        assert sum(p.numel() for p in module.parameters()) == net.num_params(s.cfg_id), s.name
        with torch.no_grad():
            assert torch.equal(module(x), net.select(s.cfg_id)(x)), s.name
    # a stitched network keeps no unused block of either anchor
    module = standalone_network(net, 5)  # deit_tiny[:2] > deit_small[1:]
    assert all(isinstance(b, torch.nn.Identity) for b in list(module.front.blocks)[2:])
    assert isinstance(module.back.blocks[0], torch.nn.Identity) and module.back.cls_token is None
    assert isinstance(module.front.head, torch.nn.Identity) and isinstance(module.back.patch_embed, torch.nn.Identity)


@pytest.mark.parametrize(
    "family,suffix",
    [("deit", ".pt"), ("deit", ".pt2"), ("resnet", ".pt"), ("resnet_swin", ".pt"), ("resnet_swin", ".pt2")],
)
@pytest.mark.slow
def test_exported_file_loads_with_plain_torch_and_matches(family, suffix, tmp_path):
    net = tiny_net(family)
    cfg_id = middle_stitch(net)
    path = tmp_path / f"net{suffix}"
    report = export_network(net, cfg_id, path)
    assert report.params == net.num_params(cfg_id) and report.dynamic_batch

    x = torch.randn(3, 3, *net.input_size[1:])  # not the traced batch size
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
    assert got["foreign"] == []
    assert got["params"] == net.num_params(cfg_id)
    with torch.no_grad():
        expected = net.select(cfg_id)(x)
    torch.testing.assert_close(got["y"], expected, atol=1e-5, rtol=1e-5)


def test_onnx_export_is_valid_holds_the_parameters_and_matches(tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    net = tiny_net("deit")
    cfg_id = middle_stitch(net)
    path = tmp_path / "net.onnx"
    export_network(net, cfg_id, path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # DeiT has no buffers: every initializer is a parameter of the network
    assert sum(int(np.prod(t.dims)) for t in model.graph.initializer) == net.num_params(cfg_id)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    x = torch.randn(3, 3, *net.input_size[1:])
    y = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = net.select(cfg_id)(x)
    torch.testing.assert_close(torch.from_numpy(y), expected, atol=1e-5, rtol=1e-5)


def test_export_refuses_unknown_suffix_and_ids(tmp_path):
    from snnet.errors import ConfigError

    net = tiny_net("deit")
    with pytest.raises(ConfigError, match="unknown suffix"):
        export_network(net, 3, tmp_path / "net.zip")
    with pytest.raises(ConfigError, match="out of range"):
        export_network(net, 99, tmp_path / "net.pt")
