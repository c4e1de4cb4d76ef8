"""Checkpoints: atomic saves survive SIGKILL, unsafe pickles never run, mismatches are explained."""
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import timm
import torch

from snnet.checkpoint import extract_state_dict, load_checkpoint_file, load_model_weights, save_checkpoint
from snnet.errors import CheckpointError


def test_round_trip(tmp_path):
    state = {"epoch": 3, "args": {"lr": 0.1, "anchors": ["a"]}, "state_dict": {"w": torch.arange(4.0)}, "none": None}
    save_checkpoint(state, tmp_path / "c.pth.tar")
    back = load_checkpoint_file(tmp_path / "c.pth.tar")
    assert back["epoch"] == 3 and back["args"] == state["args"] and torch.equal(back["state_dict"]["w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["c.pth.tar"]  # no temporary files left behind


def test_refuses_non_plain_state(tmp_path):
    import argparse

    with pytest.raises(TypeError, match=r"state\['args'\] is a Namespace"):
        save_checkpoint({"args": argparse.Namespace(lr=1)}, tmp_path / "c.pth.tar")
    assert not any(tmp_path.iterdir())


def test_killed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth.tar"
    save_checkpoint({"epoch": 1, "w": torch.zeros(10)}, path)
    script = textwrap.dedent(f"""
        import torch, sys
        from snnet.checkpoint import save_checkpoint
        big = {{"epoch": 2, "w": torch.ones(60_000_000)}}  # 240 MB: the save takes a while
        print("saving", flush=True)
        while True:
            save_checkpoint(big, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    time.sleep(0.4)  # inside a save (the first one cannot have finished this fast on 2 cores)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint_file(path)  # either the old or a complete new one, never a torn file
    assert ckpt["epoch"] in (1, 2)
    assert ckpt["w"].numel() in (10, 60_000_000)


def test_missing_truncated_and_random_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(tmp_path / "nope.pth.tar")
    good = tmp_path / "good.pth.tar"
    torch.save({"state_dict": {"w": torch.randn(1000)}}, good)
    data = good.read_bytes()
    (tmp_path / "trunc.pth.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is not a valid checkpoint"):
        load_checkpoint_file(tmp_path / "trunc.pth.tar")
    (tmp_path / "random.pth.tar").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="is not a valid checkpoint"):
        load_checkpoint_file(tmp_path / "random.pth.tar")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "x": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_checkpoint_file(path)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint_file(raw)
    assert not marker.exists()


def test_extract_state_dict_variants():
    w = torch.ones(2)
    assert extract_state_dict({"state_dict": {"module.a": w}}) == {"a": w}
    assert extract_state_dict({"model": {"a": w}}) == {"a": w}
    assert extract_state_dict({"a": w}) == {"a": w}
    assert extract_state_dict({"state_dict": {"a": 0 * w}, "state_dict_ema": {"a": w}}, use_ema=True) == {"a": w}
    with pytest.raises(CheckpointError, match="no EMA weights"):
        extract_state_dict({"state_dict": {"a": w}}, use_ema=True)


def test_load_model_weights_explains_mismatch(tmp_path):
    kw = dict(img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=2)
    model = timm.create_model("deit_tiny_patch16_224", num_classes=10, **kw)
    save_checkpoint({"state_dict": {f"anchors.0.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "a.pth.tar")
    other = timm.create_model("deit_tiny_patch16_224", num_classes=10, **kw)
    load_model_weights(other, tmp_path / "a.pth.tar")  # a one-anchor SN-Net checkpoint loads into timm
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    wrong = timm.create_model("deit_tiny_patch16_224", num_classes=5, **kw)
    with pytest.raises(CheckpointError, match=r"2 shape mismatches \(head.weight: checkpoint \[10, 16\] vs model \[5, 16\]\)"):
        load_model_weights(wrong, tmp_path / "a.pth.tar")
