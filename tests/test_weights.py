"""Pretrained and local weights: fast offline failure, the HF cache, every --anchor-checkpoints format."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from snnet.anchors import create_anchor
from snnet.cli import build_train_parser
from snnet.errors import CheckpointError
from snnet.io.checkpoint import load_model_weights

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = dict(patch_size=4, depth=2, embed_dim=24, num_heads=2)
TINY_SWIN = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=4)

pytestmark = pytest.mark.usefixtures("one_thread")


def _offline_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        HF_HOME=str(tmp_path / "empty-hf-home"),
        TORCH_HOME=str(tmp_path / "empty-torch-home"),
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


@pytest.mark.slow
@pytest.mark.parametrize(
    "how", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["HF_HUB_OFFLINE", "hub-unreachable"]
)
def test_missing_pretrained_weights_fail_fast_with_one_line(tmp_path, how):
    # The command on a machine without the weights; the closed local port stands for an
    # unreachable hub without depending on any network timeout.
    cmd = [
        sys.executable,
        "train.py",
        "-c",
        "configs/deit_ti_s_b.yaml",
        "--dataset",
        "digits",
        "--img-size",
        "32",
        "--output",
        str(tmp_path / "out"),
        "--workers",
        "0",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_offline_env(tmp_path, **how), capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1]
    line = errors[0]
    assert line.startswith("error: cannot get timm's pretrained weights of deit_tiny_patch16_224")
    for fix in ("HF_HUB_OFFLINE=1", "--anchor-checkpoints FILE", "--no-pretrained"):
        assert fix in line
    assert elapsed < 60, f"took {elapsed:.1f} s"  # a loaded 2-core machine imports torch slowly; the timing is below
    assert not (tmp_path / "empty-hf-home").exists() or not any((tmp_path / "empty-hf-home").rglob("*.safetensors"))


@pytest.mark.parametrize(
    "how", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["HF_HUB_OFFLINE", "hub-unreachable"]
)
def test_missing_pretrained_weights_fail_within_seconds(tmp_path, monkeypatch, how):
    """The failure itself, without interpreter start-up: timm alone retries the hub for ~50 s."""
    import huggingface_hub.constants as hf_constants

    from snnet import create_snnet

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for key, value in how.items():
        monkeypatch.setenv(key, value)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"^cannot get timm's pretrained weights of deit_tiny_patch16_224 "):
        create_snnet(["deit_tiny_patch16_224", "deit_small_patch16_224"], pretrained=True, num_classes=10)
    assert time.perf_counter() - start < 5


def test_no_pretrained_overrides_the_config():
    parser = build_train_parser()
    from snnet.config import parse_args_with_config

    on, _ = parse_args_with_config(parser, ["-c", str(REPO / "configs/deit_ti_s_b.yaml")])
    off, _ = parse_args_with_config(
        build_train_parser(), ["-c", str(REPO / "configs/deit_ti_s_b.yaml"), "--no-pretrained"]
    )
    assert on.pretrained is True and off.pretrained is False


def test_cached_hub_weights_load_offline_through_timm(tmp_path, monkeypatch):
    """A file in the HF cache is used without asking the hub; timm's classifier handling applies."""
    import huggingface_hub.constants as hf_constants

    source = timm.create_model("deit_tiny_patch16_224", **TINY_VIT).eval()
    repo_dir = tmp_path / "hub" / "models--timm--deit_tiny_patch16_224.fb_in1k"
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    anchor = create_anchor(
        "deit_tiny_patch16_224", pretrained=True, num_classes=10, img_size=224, model_kwargs=TINY_VIT
    )
    mine, theirs = anchor.model.state_dict(), source.state_dict()
    assert mine["head.weight"].shape == (10, 24)  # timm dropped the 1000-class head
    for k in theirs:
        if not k.startswith("head."):
            assert torch.equal(mine[k], theirs[k]), k
    assert "state_dict" not in anchor.model.pretrained_cfg  # no second copy of the weights kept


# --- --anchor-checkpoints formats ---------------------------------------------------------------
def _vit_files(tmp_path: Path, source: torch.nn.Module) -> dict[str, Path]:
    sd = source.state_dict()
    files = {
        "timm.safetensors": tmp_path / "model.safetensors",
        "hf.bin": tmp_path / "pytorch_model.bin",
        "deit.pth": tmp_path / "deit_tiny_patch16_224-a1311bcf.pth",
    }
    save_file(sd, str(files["timm.safetensors"]))
    torch.save(sd, files["hf.bin"])
    torch.save({"model": sd}, files["deit.pth"])  # DeiT's release layout
    return files


@pytest.mark.parametrize("fmt", ["timm.safetensors", "hf.bin", "deit.pth"])
def test_vit_weight_files(tmp_path, fmt):
    torch.manual_seed(0)
    source = timm.create_model("deit_tiny_patch16_224", img_size=32, **TINY_VIT).eval()
    path = _vit_files(tmp_path, source)[fmt]
    anchor = create_anchor("deit_tiny_patch16_224", checkpoint_path=path, img_size=32, model_kwargs=TINY_VIT)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(anchor.model.eval()(x), source(x))


def _original_swin_layout(sd: dict) -> dict:
    """timm's Swin state dict in the Swin authors' release layout: each stage's patch merging at
    the END of the stage before (timm: at the start of its own), the classifier at ``head.``,
    and the relative position index buffers saved."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        if m:
            k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        k = k.replace("head.fc.", "head.")
        out[k] = v
        if k.endswith("relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(
                16, 16, dtype=torch.long
            )
    return {"model": out}


def test_swin_original_release_layout_goes_through_timms_filter(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, **TINY_SWIN).eval()
    original = _original_swin_layout(source.state_dict())
    assert "layers.0.downsample.reduction.weight" in original["model"]  # really the other layout
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(original, path)
    anchor = create_anchor("swin_tiny_patch4_window7_224", checkpoint_path=path, img_size=64, model_kwargs=TINY_SWIN)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(anchor.model.eval()(x), source(x))


def test_torchvision_resnet18_weights_give_torchvisions_outputs(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv.state_dict(), path)
    anchor = create_anchor("resnet18", checkpoint_path=path, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(anchor.model.eval()(x), tv(x), atol=1e-5)


def test_wrong_architecture_names_the_first_mismatched_keys(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.safetensors"
    resnet_keys = set(timm.create_model("resnet18", num_classes=10).state_dict())
    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), str(path))
    model = timm.create_model("deit_tiny_patch16_224", img_size=32, **TINY_VIT)
    with pytest.raises(CheckpointError) as info:
        load_model_weights(model, path)
    message = str(info.value)
    assert "\n" not in message
    found = re.match(
        rf"checkpoint '{re.escape(str(path))}' does not match the model: (\d+) missing keys \(e\.g\. (\S+)\), "
        r"(\d+) unexpected keys \(e\.g\. (\S+)\)",
        message,
    )
    assert found, message
    assert int(found[1]) == len(model.state_dict()) and found[2] in model.state_dict()
    assert int(found[3]) == len(resnet_keys) and found[4] in resnet_keys
