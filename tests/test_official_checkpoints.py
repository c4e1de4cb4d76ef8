"""Checkpoints of the official SN-Net code: built here in its key layout, loaded by snnet, and
compared network by network with the official forward written out by hand from its code
(stitching_deit/snnet.py, stitching_resnet_swin/timm/models/{snnet,resnet}.py)."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import run_entry
from test_official_rules import official_networks

from snnet import create_snnet
from snnet.errors import CheckpointError
from snnet.evaluate.main import main as eval_main
from snnet.evaluate.results import read_results
from snnet.evaluate.sweep import SweepPlan, forward_networks
from snnet.io.checkpoint import extract_state_dict, load_checkpoint_file
from snnet.io.official import convert_official_state

pytestmark = pytest.mark.usefixtures("one_thread")

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
DEIT_WIDTHS = [(24, 2), (48, 3), (96, 6)]  # DeiT Ti/S/B at 1/8 width
DEPTH = 12  # the paper's DeiT depth: 71 networks (at 1/8 width, 32 px)
DEIT_KW = dict(img_size=32, patch_size=4, depth=DEPTH, num_classes=10)


def _randomize_norms(model: torch.nn.Module) -> None:
    """Non-trivial LayerNorm / BatchNorm parameters and statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)


# --- DeiT ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_deit(tmp_path_factory):
    torch.manual_seed(0)
    anchors = [timm.create_model(n, embed_dim=d, num_heads=h, **DEIT_KW).eval() for n, (d, h) in zip(DEIT, DEIT_WIDTHS)]
    for a in anchors:
        _randomize_norms(a)
    state = {f"anchors.{i}.{k}": v for i, a in enumerate(anchors) for k, v in a.state_dict().items()}
    layers = {}  # (pair, layer) -> (weight, bias): stitch_layers[pair][layer] of nn.Linear(front dim, back dim)
    for p in range(2):
        for lid in range(DEPTH - 1):  # kernel 2, stride 1: depth - 1 windows with new positions
            w = torch.randn(DEIT_WIDTHS[p + 1][0], DEIT_WIDTHS[p][0]) * 0.3
            b = torch.randn(DEIT_WIDTHS[p + 1][0]) * 0.1
            layers[(p, lid)] = (w, b)
            state[f"stitch_layers.{p}.{lid}.transform.weight"], state[f"stitch_layers.{p}.{lid}.transform.bias"] = w, b
    path = tmp_path_factory.mktemp("official") / "snnet_deit.pth"
    torch.save({"model": state, "epoch": 49, "args": argparse.Namespace(model="snnet_deit", lr=5e-5, epochs=50)}, path)
    return path, anchors, layers


def official_deit_logits(anchors, layers, entry, x):
    """stitching_deit/snnet.py SNNet.forward for one stitch: forward_patch_embed, front blocks,
    stitch layer, back blocks, forward_head (no final norm)."""
    _, front, (j, k), layer = entry
    f, b = anchors[front], anchors[front + 1]
    h = f._pos_embed(f.patch_embed(x))
    for blk in f.blocks[: j + 1]:
        h = blk(h)
    h = F.linear(h, *layers[(front, layer)])
    for blk in b.blocks[k:]:
        h = blk(h)
    return b.forward_head(h)


def _deit_net(official_forward=True):
    return create_snnet(
        DEIT,
        num_classes=10,
        img_size=32,
        model_kwargs=dict(patch_size=4, depth=DEPTH),
        anchor_kwargs=[dict(embed_dim=d, num_heads=h) for d, h in DEIT_WIDTHS],
        official_forward=official_forward,
    ).eval()


def test_official_deit_checkpoint_gives_the_official_logits(official_deit):
    path, anchors, layers = official_deit
    ckpt = load_checkpoint_file(path)  # weights_only, with argparse.Namespace allowed for this layout only
    assert ckpt["official_args"]["model"] == "snnet_deit" and "args" not in ckpt
    net = _deit_net()
    net.load_state_dict(convert_official_state(extract_state_dict(ckpt), net))
    entries = official_networks([[DEPTH]] * 3, [0], forward_only=False)
    assert net.num_stitches == 3 + len(entries) == 71
    x = torch.randn(4, 3, 32, 32)
    by_sweep = dict(forward_networks(net, SweepPlan(net, list(range(net.num_stitches))), x))
    with torch.no_grad():
        for i, anchor in enumerate(anchors):  # anchors: equal to snnet's own (timm's forward, with norm)
            assert torch.equal(net.select(i)(x), anchor(x))
        for cfg_id, entry in enumerate(entries, start=3):
            expected = official_deit_logits(anchors, layers, entry, x)
            assert torch.allclose(net.select(cfg_id)(x), expected, atol=1e-5), cfg_id
            assert torch.allclose(by_sweep[cfg_id], expected, atol=1e-5), cfg_id
        # the natural forward (snnet's default) keeps the back anchor's norm: different logits
        natural = _deit_net(official_forward=False)
        natural.load_state_dict(net.state_dict())
        assert not torch.allclose(natural.select(10)(x), net.select(10)(x), atol=1e-3)


@pytest.mark.slow
def test_eval_py_on_official_deit_checkpoint_reproduces_the_official_accuracies(official_deit, tmp_path, capsys):
    from snnet.data.datasets import create_dataset
    from snnet.data.loaders import Normalize, data_config_for, eval_loader, eval_transform

    path, anchors, layers = official_deit
    out = tmp_path / "eval"
    code = run_entry(
        eval_main,
        [
            "--resume",
            path,
            "--anchors",
            *DEIT,
            "--img-size",
            "32",
            "--model-kwargs",
            "patch_size=4",
            f"depth={DEPTH}",
            "--anchor-kwargs",
            *[f"embed_dim={d} num_heads={h}" for d, h in DEIT_WIDTHS],
            "--dataset",
            "digits",
            "--workers",
            "0",
            "--output",
            out,
            "--log-interval",
            "0",
        ],
    )
    assert code == 0
    assert "71 networks selected (official SN-Net forward)" in capsys.readouterr().out
    got = {r["cfg_id"]: r["top1"] for r in read_results(out / "stitches.csv")}
    # the official forward on the same images and transform, one network at a time
    ds = create_dataset("digits", None, "validation")
    cfg = data_config_for(_deit_net(), ds)
    ds.transform = eval_transform(cfg)
    prep = Normalize(cfg["mean"], cfg["std"], torch.device("cpu"))
    entries = official_networks([[DEPTH]] * 3, [0], forward_only=False)
    correct = torch.zeros(71)
    with torch.no_grad():
        for x, y in eval_loader(ds, 120):
            x, y = prep(x, y)
            logits = [a(x) for a in anchors] + [official_deit_logits(anchors, layers, e, x) for e in entries]
            correct += torch.tensor([float((out.argmax(-1) == y).sum()) for out in logits])
    expected = {i: round(100 * float(c) / len(ds), 4) for i, c in enumerate(correct)}
    assert got == expected


def test_namespace_is_allowed_only_in_official_layout(tmp_path):
    # same pickled Namespace, snnet-style weights: refused as before
    path = tmp_path / "not_official.pth"
    torch.save(
        {
            "model": {"anchors.0.w": torch.ones(1), "stitch_layers.0.transform.weight": torch.ones(1)},
            "args": argparse.Namespace(lr=0.1),
        },
        path,
    )
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(argparse.Namespace\)"):
        load_checkpoint_file(path)


# --- ResNet-18/50 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_resnet(tmp_path_factory):
    torch.manual_seed(0)
    anchors = [timm.create_model(n, num_classes=10).eval() for n in ("resnet18", "resnet50")]
    for a in anchors:
        _randomize_norms(a)
    state = {f"anchors.{i}.{k}": v for i, a in enumerate(anchors) for k, v in a.state_dict().items()}
    dims = {1: (128, 512), 2: (256, 1024)}  # stage_dims of ResNet-18 / ResNet-50 at stages 1, 2
    layers = {}
    for group, stage in enumerate((1, 2)):  # the official stitch_layers[stage - 1]
        for lid in range(2):  # ResNet-18's stage depth: one 1x1 conv per front block
            w = torch.randn(dims[stage][1], dims[stage][0], 1, 1) * 0.05
            b = torch.randn(dims[stage][1]) * 0.1
            layers[(stage, lid)] = (w, b)
            state[f"stitch_layers.{group}.0.{lid}.transform.weight"] = w
            state[f"stitch_layers.{group}.0.{lid}.transform.bias"] = b
    path = tmp_path_factory.mktemp("official") / "resnet_18_50.pth"
    torch.save({"state_dict": state, "epoch": 29, "args": argparse.Namespace(model="snnet_resnet18_50")}, path)
    return path, anchors, layers


def official_resnet_logits(anchors, layers, entry, x):
    """stitching_resnet_swin: ResNet.forward_until(stage, j), the stitch's 1x1 conv, forward_from(stage, k)."""
    stage, front, (j, k), layer = entry
    f, b = anchors[front], anchors[front + 1]
    h = f.maxpool(f.act1(f.bn1(f.conv1(x))))
    for s, blocks in enumerate([f.layer1, f.layer2, f.layer3, f.layer4]):
        for i, blk in enumerate(blocks):
            h = blk(h)
            if s == stage and i == j:
                break
        if s == stage:
            break
    h = F.conv2d(h, *layers[(stage, layer)])
    for s, blocks in enumerate([b.layer1, b.layer2, b.layer3, b.layer4]):
        if s < stage:
            continue
        for blk in blocks[k:] if s == stage else blocks:
            h = blk(h)
    return b.forward_head(h)


def test_official_resnet_checkpoint_gives_the_official_logits(official_resnet):
    path, anchors, layers = official_resnet
    ckpt = load_checkpoint_file(path)
    net = create_snnet(["resnet18", "resnet50"], num_classes=10, official_forward=True).eval()
    net.load_state_dict(convert_official_state(extract_state_dict(ckpt), net))
    entries = official_networks([[2, 2, 2, 2], [3, 4, 6, 3]], [1, 2], forward_only=True)
    assert net.num_stitches == 2 + len(entries) == 10
    # the list-position quirk: networks 3 and 7 use layer 0 of their stage, not their front block's
    assert [entries[c - 2][3] for c in (3, 7)] == [0, 0] and [entries[c - 2][2][0] for c in (3, 7)] == [1, 1]
    x = torch.randn(2, 3, 64, 64)
    by_sweep = dict(forward_networks(net, SweepPlan(net, list(range(10))), x))
    with torch.no_grad():
        for i, anchor in enumerate(anchors):
            assert torch.equal(net.select(i)(x), anchor(x))
        for cfg_id, entry in enumerate(entries, start=2):
            expected = official_resnet_logits(anchors, layers, entry, x)
            assert torch.allclose(net.select(cfg_id)(x), expected, atol=1e-4, rtol=1e-4), cfg_id
            assert torch.allclose(by_sweep[cfg_id], expected, atol=1e-4, rtol=1e-4), cfg_id
    natural = create_snnet(["resnet18", "resnet50"], num_classes=10)
    assert natural.stitches[3].route.layers != natural.stitches[2].route.layers
    assert net.stitches[3].route.layers == net.stitches[2].route.layers


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--initial-checkpoint", "--resume"])
def test_train_py_starts_from_an_official_checkpoint(official_deit, tmp_path, flag):
    from snnet.io.official_layout import looks_official
    from snnet.train.main import main as train_main

    path, anchors, layers = official_deit
    assert looks_official(path) and not looks_official(tmp_path / "missing.pth")
    out = tmp_path / "train"
    tiny = ["--anchors", *DEIT, "--img-size", "32", "--model-kwargs", "patch_size=4", f"depth={DEPTH}"]
    tiny += ["--anchor-kwargs", *[f"embed_dim={d} num_heads={h}" for d, h in DEIT_WIDTHS], "--dataset", "digits"]
    run = tiny + ["--workers", "0", "--max-steps-per-epoch", "1", "--lr", "0", "--warmup-epochs", "0"]
    run += ["--max-val-batches", "1", "--output", out, "--experiment", "r", flag, path]
    # a time-limited job: 1 epoch of a 2-epoch schedule (a resumed run keeps its --epochs)
    assert run_entry(train_main, run + ["--epochs", "2", "--stop-epoch", "1"]) == 0
    saved = load_checkpoint_file(out / "r" / "last.pth.tar")
    assert saved["snnet_config"]["official_forward"] is True and saved["epoch"] == 0
    net = _deit_net()
    net.load_state_dict(convert_official_state(extract_state_dict(load_checkpoint_file(path)), net))
    for k, v in net.state_dict().items():  # lr 0: the official weights unchanged (not re-initialised by LS)
        if k.startswith("stitch_layers"):
            assert torch.equal(saved["state_dict"][k], v), k
    if flag == "--resume":  # the same command again (a restart) continues from the run's own last.pth.tar
        assert run_entry(train_main, run + ["--epochs", "2"]) == 0
        assert load_checkpoint_file(out / "r" / "last.pth.tar")["epoch"] == 1
        assert f"Resumed from {out / 'r' / 'last.pth.tar'}" in (out / "r" / "train.log").read_text()


# --- ResNet-18 -> Swin-T (the ResNet/Swin tree, whose Swin is the old timm layout) ---------------------
SWIN_KW = dict(window_size=4, embed_dim=24, depths=(2, 2, 6, 2), num_heads=(1, 2, 3, 4), num_classes=10, img_size=64)


def test_official_resnet_swin_checkpoint_gives_the_official_logits(tmp_path):
    from test_weights import _original_swin_layout

    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", num_classes=10).eval()
    swin = timm.create_model("swin_tiny_patch4_window7_224", **SWIN_KW).eval()
    for m in (resnet, swin):
        _randomize_norms(m)
    state = {f"anchors.0.{k}": v for k, v in resnet.state_dict().items()}
    state.update({f"anchors.1.{k}": v for k, v in _original_swin_layout(swin.state_dict())["model"].items()})
    layers = {}
    for group, stage in enumerate((1, 2)):
        for lid in range(2 if stage == 2 else 1):
            w, b = torch.randn(24 * 2**stage, 64 * 2**stage, 1, 1) * 0.05, torch.randn(24 * 2**stage) * 0.1
            layers[(stage, lid)] = (w, b)
            state[f"stitch_layers.{group}.0.{lid}.transform.weight"] = w
            state[f"stitch_layers.{group}.0.{lid}.transform.bias"] = b
    path = tmp_path / "resnet18_swin_ti.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(model="snnet_resnet18_swin_ti")}, path)

    net = create_snnet(
        ["resnet18", "swin_tiny_patch4_window7_224"],
        num_classes=10,
        img_size=64,
        anchor_kwargs=[{}, {k: v for k, v in SWIN_KW.items() if k not in ("num_classes", "img_size")}],
        official_forward=True,
    ).eval()
    net.load_state_dict(convert_official_state(extract_state_dict(load_checkpoint_file(path)), net))
    entries = official_networks([[2, 2, 2, 2], [2, 2, 6, 2]], [1, 2], forward_only=True)
    assert net.num_stitches == 2 + len(entries) == 8
    assert entries[5 - 2][2][0] == 1 and entries[5 - 2][3] == 0  # network 5: front block 1, layer 0

    def official(entry, x):  # ResNet.forward_until, conv + reshape to tokens (cnn_to_vit), Swin.forward_from
        stage, _, (j, k), layer = entry
        h = resnet.maxpool(resnet.act1(resnet.bn1(resnet.conv1(x))))
        for s, blocks in enumerate([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4][: stage + 1]):
            for blk in blocks[: j + 1] if s == stage else blocks:
                h = blk(h)
        h = F.conv2d(h, *layers[(stage, layer)]).permute(0, 2, 3, 1)  # tokens on the map's grid (timm: NHWC)
        for blk in swin.layers[stage].blocks[k:]:
            h = blk(h)
        for later in swin.layers[stage + 1 :]:
            h = later(h)  # old layout: this merge ended the previous stage; timm runs it first here
        return swin.forward_head(swin.norm(h))

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.select(1)(x), swin(x))
        for cfg_id, entry in enumerate(entries, start=2):
            assert torch.allclose(net.select(cfg_id)(x), official(entry, x), atol=1e-4, rtol=1e-4), cfg_id


# --- LeViT (the original LeViT code's keys) -----------------------------------------------------
def original_levit_keys(model) -> dict[str, str]:
    """timm key -> the key the original LeViT code (stitching_levit/levit.py) gives the same
    tensor: ``patch_embed`` = b16 (Conv2d_BN ``c``/``bn`` at 0, 2, 4, 6), one flat ``blocks``
    Sequential of ``Residual(m=...)`` units (per block Attention then MLP; between stages
    AttentionSubsample, then its MLP residual), ``head``/``head_dist`` = BN_Linear (``bn``, ``l``)."""
    names = {f"stem.conv{i + 1}.{p}": f"patch_embed.{2 * i}.{p}" for i in range(4) for p in ("linear", "bn")}
    names.update(
        {f"{h}.bn": f"{h}.bn" for h in ("head", "head_dist")} | {f"{h}.linear": f"{h}.l" for h in ("head", "head_dist")}
    )
    flat = 0
    for s, stage in enumerate(model.stages):
        if s > 0:  # LevitDownsample: AttentionSubsample (kv, q = (Subsample, Linear_BN), proj), MLP residual
            ds = f"stages.{s}.downsample."
            for t, o in (
                ("attn_downsample.kv", "kv"),
                ("attn_downsample.q.ln", "q.1"),
                ("attn_downsample.proj.ln", "proj.1"),
            ):
                names[f"{ds}{t}.linear"], names[f"{ds}{t}.bn"] = f"blocks.{flat}.{o}.c", f"blocks.{flat}.{o}.bn"
            names[f"{ds}attn_downsample.attention_biases"] = f"blocks.{flat}.attention_biases"
            names[f"{ds}mlp.ln1.linear"], names[f"{ds}mlp.ln1.bn"] = (
                f"blocks.{flat + 1}.m.0.c",
                f"blocks.{flat + 1}.m.0.bn",
            )
            names[f"{ds}mlp.ln2.linear"], names[f"{ds}mlp.ln2.bn"] = (
                f"blocks.{flat + 1}.m.2.c",
                f"blocks.{flat + 1}.m.2.bn",
            )
            flat += 2
        for d in range(len(stage.blocks)):
            b = f"stages.{s}.blocks.{d}."
            names[f"{b}attn.qkv.linear"], names[f"{b}attn.qkv.bn"] = f"blocks.{flat}.m.qkv.c", f"blocks.{flat}.m.qkv.bn"
            names[f"{b}attn.proj.ln.linear"], names[f"{b}attn.proj.ln.bn"] = (
                f"blocks.{flat}.m.proj.1.c",
                f"blocks.{flat}.m.proj.1.bn",
            )
            names[f"{b}attn.attention_biases"] = f"blocks.{flat}.m.attention_biases"
            names[f"{b}mlp.ln1.linear"], names[f"{b}mlp.ln1.bn"] = (
                f"blocks.{flat + 1}.m.0.c",
                f"blocks.{flat + 1}.m.0.bn",
            )
            names[f"{b}mlp.ln2.linear"], names[f"{b}mlp.ln2.bn"] = (
                f"blocks.{flat + 1}.m.2.c",
                f"blocks.{flat + 1}.m.2.bn",
            )
            flat += 2
    out = {}
    for key in model.state_dict():
        module = max((m for m in names if key == m or key.startswith(m + ".")), key=len)
        out[key] = names[module] + key[len(module) :]
    return out


def test_official_levit_checkpoint_with_original_levit_keys_loads_every_tensor():
    torch.manual_seed(0)
    source = create_snnet(["levit_128", "levit_192"], num_classes=10, img_size=64, official_forward=True).eval()
    for a in source.anchors:
        _randomize_norms(a)
        for m in a.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_var.uniform_(0.5, 1.5)
    state = {}
    for i, a in enumerate(source.anchors):
        original = original_levit_keys(a)
        state.update({f"anchors.{i}.{original[k]}": v for k, v in a.state_dict().items()})
        for name, m in a.named_modules():  # the original code saves its constant bias index buffers too
            if hasattr(m, "attention_bias_idxs"):
                unit = original[f"{name}.attention_biases"].rsplit(".", 1)[0]
                state[f"anchors.{i}.{unit}.attention_bias_idxs"] = m.attention_bias_idxs
    assert not any(".stages." in k or ".stem." in k for k in state)
    for stage in (0, 1):  # stitch_layers[stage][pair 0][layer]: the paired windows of that stage, in order
        for lid, i in enumerate(i for i, spec in enumerate(source.layer_specs) if spec.stage == stage):
            for what in ("weight", "bias"):
                state[f"stitch_layers.{stage}.0.{lid}.transform.{what}"] = getattr(
                    source.stitch_layers[i].transform, what
                )
    net = create_snnet(["levit_128", "levit_192"], num_classes=10, img_size=64, official_forward=True)
    net.load_state_dict(convert_official_state(state, net))
    loaded = net.state_dict()
    for k, v in source.state_dict().items():
        assert torch.equal(loaded[k], v), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for cfg_id in range(net.num_stitches):
            assert torch.equal(net.eval().select(cfg_id)(x), source.select(cfg_id)(x)), cfg_id
