"""SN-Netv2 as its authors ran it (ziplab/SN-Netv2, classification/): official checkpoints built
here in the layout of its ``SNNetv2`` (``stitch_layers.<direction>.<id>.transform.*``, LoRA
``Linear`` with ``lora_A``/``lora_B``, an ``nn.Identity`` closing each direction, a pickled
``argparse.Namespace``), its forward written out by hand from ``snnet.py``/``models_v2.py``,
DeiT-III's release files, and the drop-path schedule of ``models_v2.py``."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_TWO_WAY, run_entry
from test_checkpoint import Payload
from test_two_way import official_configs, official_name

from snnet import create_snnet
from snnet.errors import CheckpointError
from snnet.evaluate.main import main as eval_main
from snnet.evaluate.results import read_results
from snnet.io.checkpoint import extract_state_dict, load_checkpoint_file, save_checkpoint
from snnet.io.official import convert_official_state
from snnet.io.official_layout import official_forward_of

pytestmark = pytest.mark.usefixtures("one_thread")

RANK = 4
D0, D1 = (kw["depth"] for kw in TINY_TWO_WAY["anchor_kwargs"])  # 4 / 8: the depth ratio of DeiT3-S/L
TWO_WAY_FLAGS = [
    "--anchors",
    *TINY_TWO_WAY["anchors"],
    "--img-size",
    str(TINY_TWO_WAY["img_size"]),
    "--model-kwargs",
    *[f"{k}={v}" for k, v in TINY_TWO_WAY["model_kwargs"].items()],
    "--anchor-kwargs",
    *[" ".join(f"{k}={v}" for k, v in kw.items()) for kw in TINY_TWO_WAY["anchor_kwargs"]],
    "--dataset",
    "digits",
    "--workers",
    "0",
]


def to_release_keys(state: dict) -> dict:
    """timm's DeiT3 keys -> DeiT-III's own (``models_v2.py``: ``blocks.<i>.gamma_1/gamma_2``)."""
    return {re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k): v for k, v in state.items()}


def snnet_v2_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_snnet(num_classes=10, stitch_layer="lora", lora_rank=RANK, **TINY_TWO_WAY).eval()
    with torch.no_grad():  # a trained-looking SN-Net: LS bases, non-zero LoRA updates, non-trivial norms
        for layer in net.stitch_layers:
            layer.transform.weight.normal_(0, 0.3)
            layer.transform.bias.normal_(0, 0.1)
            layer.lora_B.normal_(0, 0.3)
        for m in net.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return net


def official_v2_layers(net) -> dict:
    """(direction, official layer id) -> (W, b, A, B) of ``SNNetv2.stitch_layers``, taken from the
    snnet layer at the official position of each two-segment config; the small -> large layer of
    the small anchor's last block (official cfg D0 + 1) gets weights of its own."""
    torch.manual_seed(1)
    layers = {}
    for comb, cfgs, ids in official_configs(D0, D1):
        if len(comb) != 2:
            continue
        direction, lid, position = comb[0], ids[0], tuple(cfgs[0])
        match = [i for i, s in enumerate(net.layer_specs) if s.front == direction and s.positions[0] == position]
        if match:
            layer = net.stitch_layers[match[0]]
            layers[(direction, lid)] = (layer.transform.weight, layer.transform.bias, layer.lora_A, layer.lora_B)
        else:  # (0, D0 - 1): serves only cfg D0 + 1, which snnet does not have
            w = net.stitch_layers[0].transform.weight
            layers[(direction, lid)] = tuple(
                torch.randn(s) for s in (w.shape, w.shape[:1], (RANK, w.shape[1]), (w.shape[0], RANK))
            )
    return layers


def official_v2_checkpoint(net, path) -> dict:
    """``main.py``'s ``utils.save_on_master({...}, checkpoint.pth)`` of a ``SNNetv2``."""
    layers = official_v2_layers(net)
    state = {
        f"anchors.{i}.{k}": v for i, a in enumerate(net.anchors) for k, v in to_release_keys(a.state_dict()).items()
    }
    for (direction, lid), tensors in layers.items():
        for what, t in zip(("weight", "bias", "lora_A", "lora_B"), tensors):
            state[f"stitch_layers.{direction}.{lid}.transform.{what}"] = t.detach().clone()
    args = argparse.Namespace(
        snnet_name="snnet_v2", lora_r=RANK, anchors=["deit_small_patch16_LS", "deit_large_patch16_LS"]
    )
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 3e-5, "params": [0]}]}
    torch.save({"model": state, "optimizer": optimizer, "lr_scheduler": {"t_initial": 50}, "epoch": 49,
                "scaler": {"scale": 65536.0}, "args": args}, path)  # fmt: skip
    return layers


def official_v2_logits(anchors, layers, comb, cfgs, ids, x):
    """``SNNetv2.forward`` in eval mode: ``forward_patch_embed`` of the first anchor, then per
    segment ``selective_forward(begin, end)`` (blocks begin..end inclusive) and
    ``stitch_layers[model_id][id]`` (merged LoRA ``Linear``: W + B A * lora_alpha / r; the last id
    is -1, the ``nn.Identity``), then ``forward_norm_head`` (final norm, head on the class token)."""
    if len(comb) == 1:
        return anchors[comb[0]](x)
    bounds = [c for pair in cfgs for c in pair]
    route = [[0, bounds[0]]] + [[bounds[i], bounds[i + 1]] for i in range(1, len(bounds) - 1, 2)]
    route.append([bounds[-1], len(anchors[comb[-1]].blocks)])
    first = anchors[comb[0]]
    h = torch.cat((first.cls_token.expand(x.shape[0], -1, -1), first.patch_embed(x) + first.pos_embed), dim=1)
    for model_id, (begin, end), lid in zip(comb, route, ids + [-1]):
        for blk in anchors[model_id].blocks[begin : end + 1]:
            h = blk(h)
        if lid != -1:
            w, b, a, bb = layers[(model_id, lid)]
            h = F.linear(h, w + bb @ a * (1 / RANK), b)
    last = anchors[comb[-1]]
    return last.head(last.norm(h)[:, 0])


@pytest.fixture(scope="module")
def official_v2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("official_v2")
    net = snnet_v2_net()
    save_checkpoint({"state_dict": net.state_dict(), "snnet_config": net.config}, folder / "snnet.pth.tar")
    layers = official_v2_checkpoint(net, folder / "checkpoint.pth")
    return folder, net, layers


def test_official_v2_checkpoint_gives_the_official_logits(official_v2):
    folder, built_from, layers = official_v2
    ckpt = load_checkpoint_file(folder / "checkpoint.pth")  # weights_only, the Namespace allowed for this layout
    assert official_forward_of(ckpt) == "v2" and ckpt["official_args"]["lora_r"] == RANK and "args" not in ckpt
    net = create_snnet(num_classes=10, stitch_layer="lora", lora_rank=RANK, **TINY_TWO_WAY).eval()
    notes = []
    net.load_state_dict(convert_official_state(extract_state_dict(ckpt), net, notes.append))
    assert len(notes) == 1 and f"stitch_layers.0.{D0 - 1} dropped" in notes[0] and f"cfg {D0 + 1}" in notes[0]
    loaded = net.state_dict()
    for k, v in built_from.state_dict().items():
        assert torch.equal(loaded[k], v), k
    anchors = [a.eval() for a in net.anchors]
    by_name = {s.name: s for s in net.stitches}
    x = torch.randn(3, 3, 32, 32)
    seen = []
    with torch.no_grad():
        for official_id, (comb, cfgs, ids) in enumerate(official_configs(D0, D1)):
            if official_id == D0 + 1:
                continue  # the official code neither trains nor evaluates it (not in all_cfgs)
            stitch = by_name[official_name(comb, cfgs, TINY_TWO_WAY["anchors"])]
            assert stitch.official_id == official_id
            seen.append(stitch.cfg_id)
            expected = official_v2_logits(anchors, layers, comb, cfgs, ids, x)
            torch.testing.assert_close(net.select(stitch.cfg_id)(x), expected, rtol=1e-5, atol=1e-5)
    assert seen == list(range(net.num_stitches))  # every snnet network, in the official order
    # SN-Net's official forward (no final norm on stitched networks) would be wrong for v2
    v1 = create_snnet(num_classes=10, stitch_layer="lora", lora_rank=RANK, official_forward=True, **TINY_TWO_WAY)
    v1.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert not torch.allclose(v1.eval().select(5)(x), net.select(5)(x), atol=1e-3)


def test_eval_py_on_official_v2_checkpoint_gives_the_snnet_accuracies(official_v2, tmp_path, capsys):
    folder, net, _ = official_v2
    flags = [*TWO_WAY_FLAGS, "--log-interval", "0"]
    assert run_entry(eval_main, [*flags, "--resume", folder / "snnet.pth.tar", "--output", tmp_path / "a"]) == 0
    capsys.readouterr()
    # the options the file implies (two-way, LoRA of its rank) are taken from it
    assert run_entry(eval_main, [*flags, "--resume", folder / "checkpoint.pth", "--output", tmp_path / "b"]) == 0
    out = capsys.readouterr().out
    assert f"stitch_layers.0.{D0 - 1} dropped" in out and "official SN-Net forward" not in out
    ours, theirs = read_results(tmp_path / "a" / "stitches.csv"), read_results(tmp_path / "b" / "stitches.csv")
    assert [r["top1"] for r in theirs] == [r["top1"] for r in ours] and len(ours) == net.num_stitches
    official_ids = [i for i in range(net.num_stitches + 1) if i != D0 + 1]
    assert [r["official_cfg_id"] for r in theirs] == official_ids
    assert [r["cfg_id"] for r in theirs] == list(range(net.num_stitches))
    lines = [json.loads(line) for line in (tmp_path / "b" / "stitches_res.txt").read_text().splitlines()]
    assert [r["cfg_id"] for r in lines] == official_ids  # diffs line by line with the official file
    assert [r["acc1"] for r in lines] == [round(r["top1"], 3) for r in theirs]
    # SN-Net's rule asked for explicitly: one line, nothing written
    code = run_entry(
        eval_main, [*flags, "--resume", folder / "checkpoint.pth", "--official-forward", "--output", tmp_path / "c"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "drop --official-forward" in err and err.count("\n") == 1


def test_train_and_predict_start_from_an_official_v2_checkpoint(official_v2, tmp_path, capsys):
    from snnet.evaluate.predict import main as predict_main
    from snnet.train.main import main as train_main

    folder, net, _ = official_v2
    run = [*TWO_WAY_FLAGS, "--stitching", "two-way", "--stitch-layer", "lora", "--lora-rank", RANK, "--epochs", 1]
    run += ["--max-steps-per-epoch", 1, "--lr", 0, "--warmup-epochs", 0, "--max-val-batches", 1, "--output", tmp_path]
    assert run_entry(train_main, [*run, "--experiment", "r", "--initial-checkpoint", folder / "checkpoint.pth"]) == 0
    bad = [*run, "--experiment", "bad", "--initial-checkpoint", folder / "checkpoint.pth", "--official-forward"]
    assert run_entry(train_main, bad) == 2 and "drop --official-forward" in capsys.readouterr().err
    saved = load_checkpoint_file(tmp_path / "r" / "last.pth.tar")
    assert "official_forward" not in saved["snnet_config"]
    for k, v in net.state_dict().items():  # lr 0: the official weights, unchanged
        assert torch.equal(saved["state_dict"][k], v), k
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(image)
    capsys.readouterr()
    flags = TWO_WAY_FLAGS[: TWO_WAY_FLAGS.index("--workers")]  # predict.py reads its images itself
    code = run_entry(predict_main, [*flags, "--resume", folder / "checkpoint.pth", "--stitch", 7, image])
    assert code == 0 and "digit.png" in capsys.readouterr().out


def test_only_the_official_objects_are_allowed_and_a_payload_never_runs(official_v2, tmp_path):
    folder, _, _ = official_v2
    state = torch.load(folder / "checkpoint.pth", weights_only=False)["model"]  # our own file: trusted
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1), "x": Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(.*open\)"):
        load_checkpoint_file(evil)
    # a Namespace that smuggles the payload: refused too
    torch.save({"model": state, "args": argparse.Namespace(x=Payload(str(marker)))}, evil)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects"):
        load_checkpoint_file(evil)
    assert not marker.exists()


def test_swin_tree_yacs_config_loads_as_plain_data_and_a_payload_never_runs(tmp_path):
    from yacs.config import CfgNode  # only to write the file as the Swin tree does (fvcore's dependency)

    config = CfgNode({"MODEL": {"TYPE": "snnet", "SWIN": {"DEPTHS": [2, 2, 6, 2]}}, "TRAIN": {"BASE_LR": 5e-5}})
    config.freeze()
    state = {"stitch_layers.0.0.0.transform.weight": torch.randn(4, 3), "anchors.0.w": torch.ones(2)}
    path = tmp_path / "ckpt_epoch_latest.pth"  # utils.save_checkpoint of stitching_swin
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "max_accuracy": 80.1, "scaler": {},
                "epoch": 29, "config": config}, path)  # fmt: skip
    ckpt = load_checkpoint_file(path)
    assert ckpt["official_config"] == {
        "MODEL": {"TYPE": "snnet", "SWIN": {"DEPTHS": [2, 2, 6, 2]}},
        "TRAIN": {"BASE_LR": 5e-5},
    }
    assert type(ckpt["official_config"]["MODEL"]) is dict and "config" not in ckpt
    assert torch.equal(
        ckpt["model"]["stitch_layers.0.0.0.transform.weight"], state["stitch_layers.0.0.0.transform.weight"]
    )
    # not in the official layout: the config is refused; with a payload inside the config: refused, never run
    torch.save({"model": {"anchors.0.w": torch.ones(2)}, "config": config}, path)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(yacs.config.CfgNode\)"):
        load_checkpoint_file(path)
    marker = tmp_path / "pwned"
    evil = CfgNode({"MODEL": {"TYPE": "snnet"}})
    dict.__setitem__(evil.MODEL, "PAYLOAD", Payload(str(marker)))  # past yacs' own type check
    torch.save({"model": state, "config": evil}, path)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(.*open\)"):
        load_checkpoint_file(path)
    assert not marker.exists()


# --- DeiT-III release files --------------------------------------------------------------------
def test_deit3_release_file_loads_as_an_anchor_with_every_tensor_equal(tmp_path):
    kw = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, depth=4, init_values=0.5, num_classes=10)
    torch.manual_seed(0)
    source = timm.create_model("deit3_small_patch16_224", **kw)
    path = tmp_path / "deit_3_small_224_21k.pth"
    release = to_release_keys(source.state_dict())
    assert "blocks.0.gamma_1" in release and not any(".ls1." in k for k in release)
    torch.save({"model": release}, path)  # models_v2.py reads checkpoint["model"]
    small, large = TINY_TWO_WAY["anchor_kwargs"]
    torch.manual_seed(1)
    net = create_snnet(
        ["deit3_small_patch16_224", "deit3_large_patch16_224"],
        num_classes=10,
        img_size=32,
        model_kwargs=dict(patch_size=8, init_values=0.5),
        anchor_kwargs=[dict(embed_dim=32, num_heads=2, depth=4), large],
        anchor_checkpoints=[str(path), None],
        stitching="two-way",
    )
    assert small["embed_dim"] == 32 and set(net.anchors[0].state_dict()) == set(source.state_dict())
    loaded = net.anchors[0].state_dict()
    for k, v in source.state_dict().items():
        assert torch.equal(loaded[k], v), k


# --- drop-path schedule ------------------------------------------------------------------------
def _block_rates(model) -> list[list[float]]:
    """Per block, the drop probability of its two residual branches (0 where timm put Identity)."""
    return [[getattr(getattr(b, s), "drop_prob", 0.0) for s in ("drop_path1", "drop_path2")] for b in model.blocks]


@pytest.mark.parametrize("schedule", ["linear", "uniform"])
def test_drop_path_schedule_against_the_official_and_timm_rates(schedule):
    from snnet.cli import build_train_parser
    from snnet.config import parse_args_with_config
    from snnet.run_config import build_snnet

    rates = (0.05, 0.4)  # models_v2.py's anchor_drop_path of SN-Netv2's S/L recipe
    flags = TWO_WAY_FLAGS[: TWO_WAY_FLAGS.index("--anchor-kwargs")] + ["--anchor-kwargs"]
    flags += [
        " ".join(f"{k}={v}" for k, v in {**kw, "drop_path_rate": r}.items())
        for kw, r in zip(TINY_TWO_WAY["anchor_kwargs"], rates)
    ]
    flags += ["--stitching", "two-way"] + (["--drop-path-schedule", schedule] if schedule == "uniform" else [])
    args, _ = parse_args_with_config(build_train_parser(), flags)
    assert args.drop_path_schedule == schedule
    net = build_snnet(args, 10)
    for model, rate in zip(net.anchors, rates):
        depth = len(model.blocks)
        if schedule == "uniform":  # models_v2.py: dpr = [drop_path_rate for i in range(depth)]
            expected = [rate] * depth
        else:  # timm: torch.linspace(0, drop_path_rate, depth), written out
            expected = [rate * i / (depth - 1) for i in range(depth)]
        assert np.allclose(_block_rates(model), [[r, r] for r in expected], atol=1e-7)
    x = torch.randn(64, 5, 32)
    block0 = net.anchors[1].blocks[0].drop_path1.train()
    dropped = (block0(x) == 0).all(dim=(1, 2)).float().mean()  # whole samples dropped only where it is live
    assert (dropped > 0) == (schedule == "uniform")


@pytest.mark.parametrize("name", ["deit3_s_l_v2", "deit3_s_b_v2"])
def test_v2_configs_are_the_official_recipe(name):
    from pathlib import Path

    from snnet.cli import build_train_parser
    from snnet.config import parse_args_with_config

    args, _ = parse_args_with_config(
        build_train_parser(), ["-c", str(Path(__file__).parents[1] / "configs" / f"{name}.yaml")]
    )
    assert [a.split(".", 1)[1] for a in args.anchors] == ["fb_in22k_ft_in1k"] * 2
    assert args.drop_path_schedule == "uniform" and args.stitching == "two-way" and args.stitch_layer == "lora"
    assert [kw["drop_path_rate"] for kw in args.anchor_kwargs] == [0.05, 0.4 if name == "deit3_s_l_v2" else 0.15]
