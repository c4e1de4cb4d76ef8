"""SN-Netv2's LoRA stitching layers: merged == unmerged, only the low-rank factors and the bias
learn, LS init sets the frozen base, and a two-way LoRA run with FLOPs-group sampling resumes
exactly and exports a three-segment network through eval.py."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_PAIRS, TINY_TWO_WAY, run_entry

from snnet import create_snnet
from snnet.core.flops import flops_table, network_flops
from snnet.core.layers import LoRAStitchingLayer, StitchingLayer, create_stitching_layer

pytestmark = pytest.mark.usefixtures("one_thread")

TWO_WAY_ARGS = [
    "--dataset",
    "digits",
    "--img-size",
    "32",
    "--workers",
    "0",
    "--anchors",
    *TINY_TWO_WAY["anchors"],
    "--model-kwargs",
    "patch_size=8",
    "init_values=0.5",
    "--anchor-kwargs",
    "embed_dim=32 num_heads=2 depth=4",
    "embed_dim=48 num_heads=2 depth=8",
    "--stitching",
    "two-way",
    "--stitch-layer",
    "lora",
    "--lora-rank",
    "4",
    "--log-interval",
    "5",
    "--max-val-batches",
    "2",
    "--warmup-epochs",
    "0",
]


def lora_layer(layout="tokens"):
    torch.manual_seed(0)
    layer = create_stitching_layer("lora", 12, 20, layout, layout, lora_rank=3)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)  # a trained-looking update
    return layer


@pytest.mark.parametrize("layout", ["tokens", "nchw"])
def test_merged_equals_unmerged(layout):
    layer = lora_layer(layout)
    assert isinstance(layer, LoRAStitchingLayer)
    x = torch.randn(2, 5, 12) if layout == "tokens" else torch.randn(2, 12, 3, 3)
    unmerged = layer.train()(x)
    merged = layer.eval()(x)
    plain = layer.as_linear()
    assert type(plain) is StitchingLayer
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the exported layer: one linear map, the same weights (BLAS may round differently)
        assert torch.equal(plain.transform.weight, layer.effective_weight())
        torch.testing.assert_close(plain.eval()(x), layer(x), rtol=1e-6, atol=1e-6)
    # by hand: x W^T + b + x A^T B^T / rank
    t = layer.transform
    rows = x if layout == "tokens" else x.permute(0, 2, 3, 1)
    ref = rows @ t.weight.T + t.bias + rows @ layer.lora_A.T @ layer.lora_B.T / 3
    ref = ref if layout == "tokens" else ref.permute(0, 3, 1, 2)
    torch.testing.assert_close(unmerged, ref, rtol=1e-5, atol=1e-6)
    base = rows @ t.weight.T + t.bias
    assert (ref - (base if layout == "tokens" else base.permute(0, 3, 1, 2))).abs().max() > 1e-3  # the update matters


def test_merge_follows_parameter_changes_in_eval_mode():
    layer = lora_layer().eval()
    x = torch.randn(4, 12)
    before = layer(x)
    with torch.no_grad():
        layer.lora_A.add_(1.0)  # an optimizer step or load_state_dict changes parameters in place
    after = layer(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, layer.train()(x), rtol=1e-5, atol=1e-6)


def test_merge_made_under_inference_mode_serves_outside_it():
    layer = lora_layer()
    x = torch.randn(4, 12, requires_grad=True)
    with torch.inference_mode():
        inside = layer.eval()(x.detach())
    outside = layer(x)
    outside.sum().backward()  # an inference tensor saved for backward would raise here
    torch.testing.assert_close(outside.detach(), inside)


def test_set_weights_is_the_ls_contract():
    layer = lora_layer()
    w, b = torch.randn(20, 12), torch.randn(20)
    layer.set_weights(w, b)
    x = torch.randn(4, 12)
    torch.testing.assert_close(layer.train()(x), x @ w.T + b)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0


def test_only_low_rank_factors_and_bias_get_gradients():
    net = create_snnet(num_classes=5, stitch_layer="lora", lora_rank=4, **TINY_TWO_WAY).train()
    x = torch.randn(2, 3, 32, 32)
    three = next(s for s in net.stitches if len(s.route.segments) == 3)
    net.select(three.cfg_id)(x).sum().backward()
    got = {n for n, p in net.stitch_layers.named_parameters() if p.grad is not None}
    expected = {f"{i}.{name}" for i in three.route.layers for name in ("lora_A", "lora_B", "transform.bias")}
    assert got == expected
    assert all(not layer.transform.weight.requires_grad for layer in net.stitch_layers)


def test_lora_counts_describe_the_deployed_network():
    net = create_snnet(num_classes=5, stitch_layer="lora", lora_rank=4, **TINY_TWO_WAY)
    linear = create_snnet(num_classes=5, **TINY_TWO_WAY)
    ours, theirs = flops_table(net), flops_table(linear)
    assert [(r["flops"], r["params"]) for r in ours] == [(r["flops"], r["params"]) for r in theirs]
    for row in ours:
        assert row["flops"] == network_flops(net, row["cfg_id"]), row["name"]


def test_v1_sliding_window_layers_share_one_update():
    net = create_snnet(num_classes=5, stitch_layer="lora", lora_rank=2, **TINY_PAIRS["deit"])
    shared = [spec for spec in net.layer_specs if len(spec.positions) > 1]
    assert shared and len(net.stitch_layers) == len(net.layer_specs)
    assert all(layer.lora_A.shape == (2, layer.transform.in_features) for layer in net.stitch_layers)


@pytest.mark.slow
def test_two_way_lora_run_resumes_exactly_and_exports_three_segments(tmp_path):
    from test_resume import _equal_states
    from test_train import PLAIN, load, read_steps

    from snnet.evaluate.main import main as eval_main
    from snnet.train.main import main as train_main

    recipe = (
        TWO_WAY_ARGS
        + PLAIN
        + [
            "--seed",
            "3",
            "--epochs",
            "2",
            "--max-steps-per-epoch",
            "4",
            "-b",
            "8",
            "--lr",
            "1e-3",
            "--ls-init",
            "--ls-init-images",
            "8",
            "--drop-path",
            "0.1",
            "--sample-by",
            "flops-groups",
            "--flops-gap",
            "0.0001",
            "--output",
            tmp_path,
        ]
    )
    assert run_entry(train_main, recipe + ["--experiment", "full"]) == 0
    assert run_entry(train_main, recipe + ["--experiment", "split", "--stop-epoch", "1"]) == 0
    assert run_entry(train_main, recipe + ["--experiment", "split"]) == 0
    full, split = load(tmp_path / "full" / "last.pth.tar"), load(tmp_path / "split" / "last.pth.tar")
    assert [r["loss"] for r in read_steps(tmp_path / "split")] == [r["loss"] for r in read_steps(tmp_path / "full")]
    assert [r["cfg_id"] for r in read_steps(tmp_path / "split")] == [r["cfg_id"] for r in read_steps(tmp_path / "full")]
    _equal_states(full["state_dict"], split["state_dict"])
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in full["state_dict"].items())  # it learned
    assert full["snnet_config"]["stitching"] == "two-way" and full["snnet_config"]["stitch_layer"] == "lora"

    # eval.py reads the stitching options from the checkpoint and ships a three-segment network
    net = create_snnet(num_classes=10, stitch_layer="lora", lora_rank=4, **TINY_TWO_WAY)
    cfg_id = next(s.cfg_id for s in net.stitches if len(s.route.segments) == 3)
    out = tmp_path / "net.pt"
    assert (
        run_entry(
            eval_main,
            [
                "--resume",
                tmp_path / "full" / "last.pth.tar",
                "--export",
                cfg_id,
                "--export-path",
                out,
                "--output",
                tmp_path / "eval",
            ],
        )
        == 0
    )
    net.load_state_dict(full["state_dict"])
    exported = torch.jit.load(str(out))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net.eval().select(cfg_id)(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in exported.parameters()) == net.num_params(cfg_id)
