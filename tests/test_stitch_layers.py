"""Every stitching-layer kind: starts as the least-squares map (against ``torch.linalg.lstsq`` on
rows made by a hand-written layout change), counted (FLOPs by composition against a whole-network
trace, params against the parameters that get gradients), saved and loaded, exported."""

from __future__ import annotations

import pytest
import torch
from test_routes import MIXED, D, R, _junction_by_hand

from snnet import create_snnet
from snnet.core.flops import flops_table, network_flops
from snnet.core.layers import stitch_layer_kinds
from snnet.errors import ConfigError
from snnet.evaluate.export import export_network

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ["linear", "lora", "conv3x3", "mlp", "basic-block", "bottleneck", "transformer-block"]
CASES = [(k, 1) for k in KINDS] + [(k, 2) for k in ("conv3x3", "basic-block", "bottleneck")]
# a feature map into tokens with a class token (8x8 grid; with stride 2 resampled to 16x16 first),
# and tokens into a feature map (8x8 patches -> 4x4)
ROUTES = [f"{R}[:3]>{D}[2:]", f"{D}[:2]>{R}[5:]"]
TWO = dict(MIXED, anchors=[R, D], anchor_kwargs=MIXED["anchor_kwargs"][:2])

_nets: dict = {}


def ls_net(kind: str, stride: int):
    """A ResNet/DeiT net of this layer kind, LS-initialised (built once per case)."""
    if (kind, stride) not in _nets:
        torch.manual_seed(0)
        net = create_snnet(num_classes=5, routes=ROUTES, stitch_layer=kind, stitch_stride=stride, lora_rank=4, **TWO)
        images = torch.randn(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # the same for every kind
        net.init_stitching_layers(images)
        _nets[(kind, stride)] = (net.eval(), images)
    return _nets[(kind, stride)]


def test_every_kind_is_registered():
    assert set(KINDS) == set(stitch_layer_kinds())


@pytest.mark.parametrize("kind, stride", CASES)
def test_ls_init_makes_every_kind_the_least_squares_map(kind, stride):
    """After LS init the layer's output is [X 1] S with S = lstsq([X 1], Y), whatever its kind."""
    net, images = ls_net(kind, stride)
    a = net.anchor_adapters
    with torch.no_grad():
        for spec, layer in zip(net.layer_specs, net.stitch_layers):
            (j, k), front, back = spec.positions[0], a[spec.front], a[spec.back]
            xf, yb = front.forward_until(images, j), back.forward_until(images, k - 1)
            width = layer.junction.in_channels
            eye, zero = torch.eye(width), torch.zeros(width)
            x_rows = _junction_by_hand(xf, front, back, j, k, eye, zero, stride=stride)
            to_rows = (lambda t: t.permute(0, 2, 3, 1)) if back.layout == "nchw" else (lambda t: t)
            x_rows = to_rows(x_rows).reshape(-1, width)
            y_rows = to_rows(yb).reshape(-1, back.channels(k))
            design = torch.cat([x_rows, torch.ones(len(x_rows), 1)], 1).double()
            sol = torch.linalg.lstsq(design, y_rows.double(), driver="gelsd").solution
            expected = (design @ sol).float()
            got = to_rows(layer(xf)).reshape(-1, back.channels(k))
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3, msg=f"{kind} {front.name}->{back.name}")


def test_every_kind_at_ls_init_runs_the_same_networks():
    """Stride 1: a cell's outputs at initialisation do not depend on the kind."""
    x = torch.randn(2, 3, 64, 64)
    outs = {}
    with torch.no_grad():
        for kind in KINDS:
            net, _ = ls_net(kind, 1)
            outs[kind] = torch.stack([net.select(i)(x) for i in (2, 3)])
    for kind in KINDS[1:]:
        torch.testing.assert_close(outs[kind], outs["linear"], rtol=1e-4, atol=1e-4, msg=kind)


@pytest.mark.parametrize("kind, stride", CASES)
def test_flops_params_and_state_of_every_kind(kind, stride):
    net, _ = ls_net(kind, stride)
    with torch.no_grad():  # trained-looking weights: every branch contributes
        for p in net.stitch_layers.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    rows = flops_table(net)
    for row in rows[2:]:
        assert row["flops"] == network_flops(net, row["cfg_id"]), row["name"]
    net.train()
    x = torch.randn(2, 3, 64, 64)
    for cfg_id in (2, 3):
        net.zero_grad(set_to_none=True)
        net.select(cfg_id)(x).sum().backward()
        used = sum(p.numel() for p in net.parameters() if p.grad is not None)
        layer = net.stitch_layers[net.stitches[cfg_id].route.layers[0]]
        # a LoRA layer counts as its merged map; its frozen base gets no gradient, its factors do
        lora = layer.lora_A.numel() + layer.lora_B.numel() - layer.transform.weight.numel() if kind == "lora" else 0
        assert net.num_params(cfg_id) + lora == used, net.stitches[cfg_id].name
    net.eval()
    # saved and loaded: a fresh net of other random weights computes the same
    torch.manual_seed(1)
    other = create_snnet(num_classes=5, routes=ROUTES, stitch_layer=kind, stitch_stride=stride, lora_rank=4, **TWO)
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        for cfg_id in (2, 3):
            assert torch.equal(other.eval().select(cfg_id)(x), net.select(cfg_id)(x))


@pytest.mark.parametrize("kind, stride", CASES)
def test_every_kind_exports_to_torchscript(kind, stride, tmp_path):
    net, _ = ls_net(kind, stride)
    for cfg_id in (2, 3):
        # export_network loads the written file back and checks its outputs (another batch size)
        # against the SN-Net's and its parameter count against num_params
        report = export_network(net, cfg_id, tmp_path / f"{cfg_id}.pt")
        assert report.params == net.num_params(cfg_id) and report.max_abs_diff < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["conv3x3", "basic-block", "bottleneck", "mlp", "transformer-block"])
@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_every_kind_exports_to_pt2_and_onnx(kind, suffix, tmp_path):
    net, _ = ls_net(kind, 2 if kind in ("conv3x3", "basic-block", "bottleneck") else 1)
    # ResNet -> DeiT: the made class token through the layer (TorchScript covers both routes)
    report = export_network(net, 2, tmp_path / f"net{suffix}")  # checks outputs and params itself
    assert report.params == net.num_params(2)


def test_kinds_and_strides_are_checked():
    with pytest.raises(ConfigError, match="unknown --stitch-layer 'conv5x5'"):
        create_snnet(routes=ROUTES, stitch_layer="conv5x5", **TWO)
    with pytest.raises(ConfigError, match="--stitch-layer mlp cannot: use one of conv3x3, basic-block, bottleneck"):
        create_snnet(routes=ROUTES, stitch_layer="mlp", stitch_stride=2, **TWO)
    with pytest.raises(ConfigError, match="--stitch-stride must be >= 1"):
        create_snnet(routes=ROUTES, stitch_layer="conv3x3", stitch_stride=0, **TWO)
