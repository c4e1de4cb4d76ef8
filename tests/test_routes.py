"""Networks by name (``--routes``) and the junctions between layouts.

Every junction pair (tokens / NCHW / NHWC, grids resampled, class token made, prefix tokens dropped
or broadcast) is checked against a forward written out by hand from its pieces: anchor A's blocks,
the layout change written here with other ops (convolutions, transposes), the layer's map, anchor
B's blocks and head. LS init through a junction is checked against ``torch.linalg.lstsq`` on rows
made by that hand-written layout change.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from snnet import create_snnet
from snnet.core.junctions import FeatureSpec, Junction
from snnet.core.layers import create_stitching_layer
from snnet.core.routes import Route, Segment, parse_route, route_name
from snnet.errors import ConfigError, IncompatibleAnchorsError

pytestmark = pytest.mark.usefixtures("one_thread")

# Three layouts at one input size (64 px): ResNet-18 (NCHW grids 16/8/4/2), a DeiT (tokens, one
# class token, an 8x8 patch grid), a Swin (NHWC grids 16/8/4/2); small widths, non-trivial blocks.
MIXED = dict(
    anchors=["resnet18", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"],
    img_size=64,
    anchor_kwargs=[
        dict(channels=(8, 16, 32, 64), stem_width=8, zero_init_last=False),
        dict(patch_size=8, embed_dim=32, depth=4, num_heads=2),
        dict(window_size=4, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)),
    ],
)
R, D, S = MIXED["anchors"]


def test_parse_route_is_the_inverse_of_route_name():
    names, depths = ["resnet50", "vit_small_patch16_224"], [16, 12]
    cases = {
        "resnet50[:7]>vit_small_patch16_224[6:]": ((0, 0, 7), (1, 6, 12)),
        "vit_small_patch16_224[:4]>resnet50[8:12]>vit_small_patch16_224[8:]": ((1, 0, 4), (0, 8, 12), (1, 8, 12)),
        "resnet50[:5]>resnet50[9:]": ((0, 0, 5), (0, 9, 16)),
        "resnet50[:0]>vit_small_patch16_224[0:]": ((0, 0, 0), (1, 0, 12)),
        "vit_small_patch16_224": ((1, 0, 12),),
    }
    for name, segments in cases.items():
        route = parse_route(name, names, depths)
        assert route.segments == tuple(Segment(*s) for s in segments), name
        assert route.layers == tuple(range(len(segments) - 1))
        assert route_name(route, names, depths) == name
    # spelled-out forms read the same
    assert parse_route(" resnet50[ 0:7 ] > vit_small_patch16_224[6:12]", names, depths) == parse_route(
        "resnet50[:7]>vit_small_patch16_224[6:]", names, depths
    )
    assert parse_route("resnet50[:]", names, depths) == Route((Segment(0, 0, 16),))


@pytest.mark.parametrize(
    "name, message",
    [
        ("resnet50[:7]vit_small_patch16_224[6:]", "cannot read"),
        ("resnet50(:7)>vit_small_patch16_224[6:]", "cannot read"),
        ("resnet50[:7]>", "cannot read"),
        ("resnet18[:7]>vit_small_patch16_224[6:]", "'resnet18' is not an anchor"),
        ("resnet50[:17]>vit_small_patch16_224[6:]", "does not exist: resnet50 has blocks 0..15"),
        ("resnet50[:7]>vit_small_patch16_224[-1:]", "does not exist"),
        ("resnet50[2:7]>vit_small_patch16_224[6:]", "the first segment starts at the stem"),
        ("resnet50[:7]>vit_small_patch16_224[6:10]", "the last segment runs to the head"),
        ("resnet50[:7]>vit_small_patch16_224[6:]>resnet50[9:]", "needs a stop block"),
        ("resnet50[:7]>vit_small_patch16_224[:8]>resnet50[9:]", "needs a start block"),
        ("resnet50[:7]>vit_small_patch16_224[6:6]>resnet50[9:]", "runs no blocks"),
        ("resnet50[:5]", "the last segment runs to the head"),
    ],
)
def test_bad_route_names_fail_with_one_line(name, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_route(name, ["resnet50", "vit_small_patch16_224"], [16, 12])
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    routes = [
        f"{R}[:3]>{D}[2:]",  # nchw 8x8 -> tokens 8x8 (class token made)
        f"{D}[:2]>{R}[5:]",  # tokens 8x8 -> nchw 4x4 (resampled, prefix dropped)
        f"{R}[:2]>{S}[2:]",  # nchw 16x16 -> nhwc 8x8 (resampled)
        f"{S}[:3]>{R}[4:]",  # nhwc 4x4 -> nchw 8x8 (resampled)
        f"{D}[:1]>{S}[1:]",  # tokens 8x8 -> nhwc 16x16
        f"{S}[:2]>{D}[3:]",  # nhwc 8x8 -> tokens 8x8
        f"{R}[:2]>{R}[5:]",  # one anchor with a gap: nchw 16x16 -> 4x4
        f"{D}[:1]>{R}[2:5]>{D}[3:]",  # three segments, two junctions
        f"{R}[:3]>{D}[2:3]>{R}[6:]",  # shares its first junction with the first route
    ]
    net = create_snnet(num_classes=5, routes=routes, **MIXED).eval()
    return net, routes


def test_routes_are_the_networks_in_the_given_order(mixed):
    net, routes = mixed
    assert [s.name for s in net.stitches] == MIXED["anchors"] + routes
    assert net.config["routes"] == routes
    # one layer per distinct junction; the last route reuses the first one's
    assert len(net.stitch_layers) == 10
    assert net.stitches[-1].route.layers[0] == net.stitches[3].route.layers[0] == 0
    with pytest.raises(ConfigError, match="is network 3 already"):
        create_snnet(num_classes=5, routes=[routes[0], routes[0]], **MIXED)


def _grid_by_hand(x, layout, prefix):
    """Features -> (patch grid NCHW, the class token or None), written without the junction."""
    if layout == "nchw":
        return x, None
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2), None
    b, n, c = x.shape
    side = int(round((n - prefix) ** 0.5))
    return x[:, prefix:].transpose(1, 2).reshape(b, c, side, side), (x[:, 0] if prefix else None)


def _junction_by_hand(x, front, back, j, k, weight, bias, class_token="mean", prefix_tokens="drop", stride=1):
    """Anchor ``front``'s features after block j -> input of ``back`` block k through the map
    (``stride``: resampled to ``stride`` times the back grid, then every ``stride``-th position)."""
    grid, cls = _grid_by_hand(x, front.layout, front.num_prefix_tokens)
    target = tuple(g * stride for g in back.grid(k))
    if tuple(grid.shape[-2:]) != target:
        grid = F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
    if back.layout == "tokens":
        if front.layout != "tokens":
            made = {"mean": grid.mean((2, 3)), "zeros": torch.zeros_like(grid[:, :, 0, 0])}
            made["ones"] = torch.ones_like(made["zeros"])
            cls = made[class_token]
        tokens = grid[:, :, ::stride, ::stride].flatten(2).transpose(1, 2)
        return torch.cat([cls[:, None], tokens], 1) @ weight.T + bias
    grid = grid[:, :, ::stride, ::stride]
    if cls is not None and prefix_tokens == "broadcast":
        grid = torch.cat([grid, cls[:, :, None, None].expand(-1, -1, *grid.shape[-2:])], 1)
    out = F.conv2d(grid, weight[:, :, None, None], bias)  # a channel map on a grid is a 1x1 convolution
    return out if back.layout == "nchw" else out.permute(0, 2, 3, 1)


def _route_by_hand(net, route, x, **rules):
    segs = route.segments
    adapters = net.anchor_adapters
    h = adapters[segs[0].anchor].stem(x)
    for i, seg in enumerate(segs):
        if i:
            layer = net.stitch_layers[route.layers[i - 1]]
            prev = segs[i - 1]
            weight, bias = layer.transform.weight, layer.transform.bias
            h = _junction_by_hand(
                h, adapters[prev.anchor], adapters[seg.anchor], prev.stop - 1, seg.start, weight, bias, **rules
            )
        for blk in adapters[seg.anchor].blocks[seg.start : seg.stop]:
            h = blk(h)
    return adapters[segs[-1].anchor].stitched_head(h)


def test_every_junction_pair_matches_a_hand_written_forward(mixed):
    net, routes = mixed
    images = torch.randn(6, 3, 64, 64)
    net.init_stitching_layers(images)  # non-trivial maps
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for s in net.stitches[3:]:
            expected = _route_by_hand(net, s.route, x)
            torch.testing.assert_close(net.select(s.cfg_id)(x), expected, rtol=1e-4, atol=1e-4, msg=s.name)


@pytest.mark.parametrize("class_token, prefix_tokens", [("zeros", "broadcast"), ("ones", "drop")])
def test_class_token_and_prefix_rules(class_token, prefix_tokens):
    torch.manual_seed(0)
    routes = [f"{R}[:3]>{D}[2:]", f"{D}[:2]>{R}[5:]", f"{D}[:1]>{S}[1:]"]
    net = create_snnet(num_classes=5, routes=routes, class_token=class_token, prefix_tokens=prefix_tokens, **MIXED)
    net.eval()
    widths = [layer.transform.in_features for layer in net.stitch_layers]
    extra = 32 if prefix_tokens == "broadcast" else 0  # the DeiT's class token as extra channels
    assert widths == [16, 32 + extra, 32 + extra]
    x = torch.randn(2, 3, 64, 64)
    rules = dict(class_token=class_token, prefix_tokens=prefix_tokens)
    with torch.no_grad():
        for s in net.stitches[3:]:
            torch.testing.assert_close(net.select(s.cfg_id)(x), _route_by_hand(net, s.route, x, **rules), msg=s.name)


def test_ls_init_fits_the_map_after_the_layout_change(mixed):
    """The LS map of every junction equals lstsq on hand-made rows: [X 1] W = Y."""
    net, _ = mixed
    images = torch.randn(8, 3, 64, 64)
    net.init_stitching_layers(images)
    a = net.anchor_adapters
    with torch.no_grad():
        for spec, layer in zip(net.layer_specs, net.stitch_layers):
            (j, k), front, back = spec.positions[0], a[spec.front], a[spec.back]
            xf, yb = front.forward_until(images, j), back.forward_until(images, k - 1)
            eye = torch.eye(layer.transform.in_features)
            rows = _junction_by_hand(xf, front, back, j, k, eye, torch.zeros(eye.shape[0]))  # the layout change alone
            rows = (rows.permute(0, 2, 3, 1) if back.layout == "nchw" else rows).reshape(-1, eye.shape[0])
            target = (yb.permute(0, 2, 3, 1) if back.layout == "nchw" else yb).reshape(
                -1, yb.shape[1 if back.layout == "nchw" else -1]
            )
            design = torch.cat([rows, torch.ones(len(rows), 1)], 1).double()
            sol = torch.linalg.lstsq(design, target.double(), driver="gelsd").solution
            torch.testing.assert_close(layer.transform.weight, sol[:-1].T.float(), rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(layer.transform.bias, sol[-1].float(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name, k", [("resnet18", 4), ("deit_tiny_patch16_224", 2)])
def test_self_stitch_at_ls_init_reproduces_the_anchor(name, k):
    """A[:k]>A[k:] with the linear layer at LS init is the identity map: the anchor's logits and top-1."""
    cfg = dict(MIXED, anchors=[name], anchor_kwargs=[MIXED["anchor_kwargs"][MIXED["anchors"].index(name)]])
    torch.manual_seed(0)
    net = create_snnet(num_classes=10, routes=[f"{name}[:{k}]>{name}[{k}:]"], **cfg).eval()
    images = torch.randn(32, 3, 64, 64)
    net.init_stitching_layers(images)
    with torch.no_grad():
        anchor, stitched = net.select(0)(images), net.select(1)(images)
    torch.testing.assert_close(stitched, anchor, rtol=1e-3, atol=1e-3)
    assert torch.equal(stitched.argmax(1), anchor.argmax(1))


def test_impossible_junctions_and_bad_rules_fail_with_one_line():
    tokens = FeatureSpec("tokens", 32, grid=None, prefix=1)  # tokens that form no known grid
    with pytest.raises(IncompatibleAnchorsError, match="no known grid of patches") as info:
        Junction(tokens, FeatureSpec("nchw", 16, (4, 4)), where="a block 3 -> b block 2")
    assert "a block 3 -> b block 2" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(IncompatibleAnchorsError, match="patch grids there cannot be matched"):
        Junction(tokens, FeatureSpec("tokens", 16, (4, 4), prefix=1))
    with pytest.raises(IncompatibleAnchorsError, match="strided layer needs a grid"):
        Junction(tokens, FeatureSpec("tokens", 16, None, prefix=1), stride=2)
    legacy = Junction(FeatureSpec("tokens", 32), FeatureSpec("tokens", 16))  # token counts equal, grid unknown
    with pytest.raises(IncompatibleAnchorsError, match="--stitch-layer conv3x3 convolves a grid of patches"):
        create_stitching_layer("conv3x3", 32, 16, junction=legacy)
    with pytest.raises(ConfigError, match="unknown --class-token 'cls'"):
        create_snnet(routes=[f"{R}[:3]>{D}[2:]"], class_token="cls", **MIXED)
    with pytest.raises(ConfigError, match="unknown --prefix-tokens 'keep'"):
        create_snnet(routes=[f"{R}[:3]>{D}[2:]"], prefix_tokens="keep", **MIXED)


def _kwargs_flags(kwargs: dict) -> str:
    return " ".join(f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in kwargs.items())


def test_eval_flops_only_takes_routes_and_refuses_bad_ones(tmp_path, capsys):
    from conftest import run_entry

    from snnet.evaluate.main import main
    from snnet.evaluate.results import read_results

    routes = [f"{R}[:3]>{D}[2:]", f"{D}[:2]>{R}[5:]"]
    argv = ["--anchors", R, D, "--img-size", "64", "--num-classes", "5", "--anchor-kwargs"]
    argv += [_kwargs_flags(kw) for kw in MIXED["anchor_kwargs"][:2]] + ["--flops-only", "--prefix-tokens", "broadcast"]
    assert run_entry(main, argv + ["--routes", *routes, "--output", tmp_path / "ok"]) == 0
    rows = read_results(tmp_path / "ok" / "stitches.csv")
    assert [r["name"] for r in rows] == [R, D, *routes]
    capsys.readouterr()
    assert run_entry(main, argv + ["--routes", f"{R}[:30]>{D}[2:]", "--output", tmp_path / "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names a block that does not exist: resnet18 has blocks 0..7" in err[0], err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_route_configs_cover_every_pair_and_build():
    """configs/routes/: every pair of ResNet-50, Swin-T, ViT-S and MobileNetV3 has a config whose
    keys train.py knows and whose routes build (random weights, full size)."""
    from itertools import combinations
    from pathlib import Path

    from snnet.cli import build_train_parser
    from snnet.config import parse_args_with_config

    models = {"resnet50", "swin_tiny_patch4_window7_224", "vit_small_patch16_224", "mobilenetv3_large_100"}
    covered = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "routes").glob("*.yaml")):
        args, _ = parse_args_with_config(build_train_parser(), ["-c", str(path)])
        assert args.train_only == "stitching" and args.routes, path
        net = create_snnet(args.anchors, num_classes=10, img_size=args.img_size, routes=args.routes)
        assert [s.name for s in net.stitches[2:]] == args.routes
        covered.add(frozenset(args.anchors))
    assert covered == {frozenset(p) for p in combinations(models, 2)}


def test_tokens_into_tokens_of_another_grid_keep_the_class_token():
    """A DeiT of 8x8 patches into one of 16x16: patch grid resampled, class token carried over."""
    small = "deit_small_patch16_224"
    anchor_kwargs = [MIXED["anchor_kwargs"][1], dict(patch_size=4, embed_dim=48, depth=4, num_heads=2)]
    torch.manual_seed(0)
    net = create_snnet(
        [D, small], num_classes=5, img_size=64, anchor_kwargs=anchor_kwargs, routes=[f"{D}[:2]>{small}[1:]"]
    )
    net.eval()
    assert net.stitch_layers[0].junction.resample
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.select(2)(x), _route_by_hand(net, net.stitches[2].route, x))
