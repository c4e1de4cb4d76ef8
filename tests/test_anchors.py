"""Anchor adapters reproduce timm's own forward exactly, and every stitch runs."""

import pytest
import timm
import torch
from conftest import TINY_PAIRS, families

from snnet import create_snnet
from snnet.anchors import create_anchor
from snnet.errors import IncompatibleAnchorsError, UnknownModelError


@pytest.mark.parametrize("family", families(TINY_PAIRS, slow=["resnet"]))
def test_split_points_compose_to_timm_forward(family):
    cfg = TINY_PAIRS[family]
    for i, name in enumerate(cfg["anchors"]):
        kwargs = {**cfg.get("model_kwargs", {}), **(cfg.get("anchor_kwargs") or [{}] * 2)[i]}
        anchor = create_anchor(name, num_classes=7, img_size=cfg["img_size"], model_kwargs=kwargs)
        # The reference is an independently created timm model with the same weights.
        reference = timm.create_model(
            name, num_classes=7, **({"img_size": cfg["img_size"]} if anchor.takes_img_size else {}), **kwargs
        )
        reference.load_state_dict(anchor.model.state_dict())
        anchor.model.eval(), reference.eval()
        x = torch.randn(2, 3, cfg["img_size"], cfg["img_size"])
        expected = reference(x)
        for j in range(-1, anchor.num_blocks):
            out = anchor.forward_from(anchor.forward_until(x, j), j + 1)
            assert torch.equal(out, expected), (name, j)


@pytest.mark.parametrize("family", families(TINY_PAIRS, slow=["resnet"]))
def test_every_stitch_runs(family):
    net = create_snnet(num_classes=5, **TINY_PAIRS[family]).eval()
    assert sum(not s.is_anchor for s in net.stitches) > 0
    x = torch.randn(2, 3, *net.input_size[1:])
    with torch.no_grad():
        for s in net.stitches:
            y = net.select(s.cfg_id)(x)
            assert y.shape == (2, 5) and torch.isfinite(y).all(), s.name


def test_anchor_networks_are_the_timm_models():
    net = create_snnet(num_classes=5, **TINY_PAIRS["deit"]).eval()
    x = torch.randn(2, 3, 32, 32)
    for i, model in enumerate(net.anchors):
        assert torch.equal(net.select(i)(x), model(x))


def test_unknown_model_names_the_problem():
    with pytest.raises(UnknownModelError, match="unknown model 'deit_tinny"):
        create_snnet(["deit_tinny_patch16_224"])
    with pytest.raises(UnknownModelError, match="no SN-Net anchor adapter"):
        create_snnet(["convnext_atto"])


def test_incompatible_anchors_explain_why():
    kw = dict(img_size=32, model_kwargs=dict(depth=2, embed_dim=32, num_heads=2))
    with pytest.raises(IncompatibleAnchorsError, match=r"spatial sizes differ \(tokens 65 vs 17\)"):
        create_snnet(
            ["deit_tiny_patch16_224", "deit_small_patch16_224"],
            anchor_kwargs=[dict(patch_size=4), dict(patch_size=8)],
            **kw,
        )
    with pytest.raises(IncompatibleAnchorsError, match="different numbers of stages"):
        create_snnet(["resnet18", "levit_128s"], img_size=64)
    with pytest.raises(IncompatibleAnchorsError, match="different input sizes"):
        create_snnet(
            ["deit_tiny_patch16_224", "deit_small_patch16_224"],
            anchor_kwargs=[dict(img_size=32), dict(img_size=64)],
            model_kwargs=dict(patch_size=8, depth=2, embed_dim=32, num_heads=2),
        )
    with pytest.raises(IncompatibleAnchorsError, match="tokens features cannot feed nchw"):
        create_snnet(["levit_128s", "levit_conv_128s"], img_size=64)
