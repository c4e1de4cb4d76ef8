"""``--train-only stitching``: the anchors stay bit-equal (weights, BatchNorm statistics), only the
stitching layers learn, and the anchors run in eval mode while the layers train; a run of a layer
kind with BatchNorm (basic-block) stopped after epoch 1 and resumed ends as the uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from conftest import run_entry
from safetensors.torch import save_file

from snnet.anchors import create_anchor
from snnet.io.checkpoint import load_checkpoint_file
from snnet.train.main import main

R, D = "resnet18", "deit_tiny_patch16_224"
KWARGS = {
    R: dict(channels=[8, 16, 32, 64], stem_width=8, zero_init_last=False, drop_path_rate=0.1),
    D: dict(patch_size=4, embed_dim=32, depth=4, num_heads=2, drop_path_rate=0.1),
}


@pytest.mark.slow
def test_train_only_stitching_keeps_the_anchors_bit_equal(tmp_path):
    files, before = [], {}
    for i, name in enumerate((R, D)):
        torch.manual_seed(i)
        model = create_anchor(name, num_classes=10, img_size=32, model_kwargs=KWARGS[name]).model
        state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp_path / f"{name}.safetensors"))
        files.append(tmp_path / f"{name}.safetensors")
        before.update({f"anchors.{i}.{k}": v for k, v in state.items()})

    seen = {}

    def watch(trainer, step, loss):  # after the forward, before the optimizer step
        net = trainer.net
        seen.setdefault("layers", {k: v.clone() for k, v in net.stitch_layers.state_dict().items()})
        seen["anchors_eval"] = seen.get("anchors_eval", True) and not any(m.training for m in net.anchors.modules())
        seen["layers_train"] = seen.get("layers_train", True) and net.stitch_layers.training
        seen["anchor_grads"] = any(p.requires_grad for p in net.anchors.parameters())

    args = ["--dataset", "digits", "--img-size", "32", "--workers", "0", "--anchors", R, D]
    args += ["--anchor-kwargs", *(" ".join(f"{k}={v}".replace(" ", "") for k, v in KWARGS[n].items()) for n in (R, D))]
    args += ["--anchor-checkpoints", *files, "--routes", f"{R}[:2]>{D}[2:]", f"{D}[:2]>{R}[4:]"]
    args += ["--train-only", "stitching", "--stitch-layer", "basic-block", "--ls-init", "--ls-init-images", "32"]
    args += ["--epochs", "2", "--max-steps-per-epoch", "4", "-b", "16", "--warmup-epochs", "0", "--lr", "1e-2"]
    args += ["--max-val-batches", "1", "--output", tmp_path / "out", "--log-interval", "2"]
    assert run_entry(lambda argv: main(argv, step_callbacks=[watch]), args + ["--experiment", "frozen"]) == 0

    full = load_checkpoint_file(tmp_path / "out" / "frozen" / "last.pth.tar")
    state = full["state_dict"]
    anchors = {k: v for k, v in state.items() if k.startswith("anchors.")}
    assert anchors.keys() == before.keys()
    changed = [k for k in anchors if not torch.equal(anchors[k], before[k])]
    assert not changed, changed[:5]  # running_mean/var and num_batches_tracked included
    assert seen["anchors_eval"] and seen["layers_train"] and not seen["anchor_grads"]
    trained = [k for k, v in seen["layers"].items() if not torch.equal(state[f"stitch_layers.{k}"], v)]
    assert any("weight" in k for k in trained), "the stitching layers did not learn"

    # stopped after epoch 1, then the same command again (resumes): the uninterrupted run's state
    assert run_entry(main, args + ["--experiment", "split", "--stop-epoch", "1"]) == 0
    assert run_entry(main, args + ["--experiment", "split"]) == 0
    split = load_checkpoint_file(tmp_path / "out" / "split" / "last.pth.tar")
    assert split["global_step"] == full["global_step"] == 8
    assert split["state_dict"].keys() == state.keys()
    assert all(torch.equal(split["state_dict"][k], v) for k, v in state.items())
    for k, v in full["optimizer"]["state"].items():
        assert all(torch.equal(split["optimizer"]["state"][k][n], t) for n, t in v.items() if torch.is_tensor(t))
