"""Checkpoints: atomic saves survive SIGKILL, unsafe pickles never run, mismatches are explained."""

import argparse
import collections
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from snnet.errors import CheckpointError
from snnet.io.checkpoint import extract_state_dict, load_checkpoint_file, load_model_weights, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_round_trip(tmp_path):
    state = {
        "epoch": 3,
        "metric": 0.5,
        "done": False,
        "none": None,
        "name": "x",
        "args": {"lr": 0.1, "anchors": ["a", "b"], "scale": (0.08, 1.0)},
        "state_dict": collections.OrderedDict(w=torch.arange(4.0), p=torch.nn.Parameter(torch.ones(2))),
        "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"params": [0], "lr": 0.1}]},
        "meta": {"size": torch.Size([2, 3]), "dtype": torch.float16, "device": torch.device("cpu")},
    }
    path = tmp_path / "c.pth.tar"
    save_checkpoint(state, path)
    back = load_checkpoint_file(path)
    assert (
        back["args"] == state["args"] and back["meta"] == state["meta"] and back["optimizer"]["state"][0]["step"] == 5
    )
    assert (back["epoch"], back["metric"], back["done"], back["none"], back["name"]) == (3, 0.5, False, None, "x")
    assert torch.equal(back["state_dict"]["w"], torch.arange(4.0)) and list(back["state_dict"]) == ["w", "p"]
    assert os.listdir(tmp_path) == ["c.pth.tar"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as plain torch.save would create it


@pytest.mark.parametrize(
    "state,where",
    [
        ({"args": argparse.Namespace(lr=1)}, r"state\['args'\] is a argparse.Namespace"),
        (
            {"opt": {"groups": [{"x": collections.defaultdict(int)}]}},
            r"state\['opt'\]\['groups'\]\[0\]\['x'\] is a collections.defaultdict",
        ),
        ({"metric": np.float64(0.5)}, r"state\['metric'\] is a numpy.float64"),
        ({"pair": collections.namedtuple("Pair", "a b")(1, 2)}, r"state\['pair'\] is a .*Pair"),
        ({object(): 1}, r"a key of state is a builtins.object"),
    ],
)
def test_refuses_non_plain_state(tmp_path, state, where):
    path = tmp_path / "c.pth.tar"
    save_checkpoint({"epoch": 1}, path)
    with pytest.raises(TypeError, match=where + ": checkpoints hold only tensors and plain Python data"):
        save_checkpoint(state, path)
    assert os.listdir(tmp_path) == ["c.pth.tar"] and load_checkpoint_file(path) == {"epoch": 1}


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pth.tar"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint_file(path) == {"epoch": 1} and os.listdir(tmp_path) == ["c.pth.tar"]


@pytest.mark.slow
def test_killed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth.tar"
    save_checkpoint({"epoch": 1, "w": torch.zeros(10)}, path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import torch
        from snnet.io.checkpoint import save_checkpoint
        big = {{"epoch": 2, "w": torch.ones(50_000_000)}}  # 200 MB
        print("ready", flush=True)
        while True:
            save_checkpoint(big, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in tmp_path.glob(".last.pth.tar.tmp-*")):
            assert time.monotonic() < deadline and proc.poll() is None, "the child never started writing"
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-write: kill it the moment its temporary file has data
        proc.wait()
    leftovers = list(tmp_path.glob(".last.pth.tar.tmp-*"))
    assert len(leftovers) == 1  # the torn write stayed in its temporary file
    ckpt = load_checkpoint_file(path)
    if path.read_bytes() != before:  # only if a whole save finished before the kill
        assert ckpt["epoch"] == 2 and torch.equal(ckpt["w"], torch.ones(50_000_000))
    else:
        assert ckpt["epoch"] == 1 and torch.equal(ckpt["w"], torch.zeros(10))
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        load_checkpoint_file(leftovers[0])  # what would have replaced it without the rename
    save_checkpoint({"epoch": 3}, path)  # a later save is not disturbed by the leftover
    assert load_checkpoint_file(path) == {"epoch": 3}


def test_missing_truncated_and_random_files(tmp_path):
    with pytest.raises(CheckpointError, match=rf"^checkpoint '{tmp_path}/nope.pth.tar' does not exist"):
        load_checkpoint_file(tmp_path / "nope.pth.tar")
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        load_checkpoint_file(tmp_path)
    good = tmp_path / "good.pth.tar"
    torch.save({"state_dict": {"w": torch.randn(1000)}}, good)
    data = good.read_bytes()
    bad = {
        "trunc": data[: len(data) // 2],
        "random": np.random.RandomState(0).bytes(4096),
        "empty": b"",
        "text": b"epoch: 3\n",
        "trunc_legacy": None,
    }
    legacy = tmp_path / "legacy.pth.tar"
    torch.save({"w": torch.randn(1000)}, legacy, _use_new_zipfile_serialization=False)
    bad["trunc_legacy"] = legacy.read_bytes()[:-500]
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint_file(tmp_path / name)
        assert str(e.value).startswith(
            f"'{tmp_path / name}' is not a valid checkpoint (truncated or not written by torch.save): "
        ), name
        assert "\n" not in str(e.value) and len(str(e.value)) < 300, name


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker file


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = Payload(str(marker))
    zipped, legacy, raw = tmp_path / "evil.pth.tar", tmp_path / "evil_legacy.pth", tmp_path / "evil.pkl"
    torch.save({"state_dict": {}, "x": payload}, zipped)
    torch.save({"x": payload}, legacy, _use_new_zipfile_serialization=False)
    raw.write_bytes(pickle.dumps({"x": payload}, protocol=2))
    for path in (zipped, legacy, raw):
        with pytest.raises(
            CheckpointError,
            match=rf"^'{path}' holds pickled Python objects \(.*open\), which snnet "
            r"refuses to load because unpickling can run arbitrary code",
        ):
            load_checkpoint_file(path)
    assert not marker.exists()
    pickle.loads(raw.read_bytes())  # the payload is real: plain unpickling does run it
    assert marker.exists()


def test_timm_style_checkpoint_with_namespace_is_refused(tmp_path):
    path = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(argparse.Namespace\)"):
        load_checkpoint_file(path)


def test_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, tmp_path / "m.safetensors")
    assert torch.equal(load_checkpoint_file(tmp_path / "m.safetensors")["w"], torch.arange(3.0))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="is not a valid safetensors file"):
        load_checkpoint_file(tmp_path / "bad.safetensors")


def test_extract_state_dict_variants():
    w, e = torch.ones(2), torch.zeros(2)
    assert extract_state_dict({"state_dict": {"module.a": w}, "epoch": 3}) == {"a": w}
    assert extract_state_dict({"state_dict": {"_orig_mod.module.a": w}}) == {"a": w}
    assert extract_state_dict({"model": {"a": w}, "optimizer": {}}) == {"a": w}
    assert extract_state_dict({"module.a": w}) == {"a": w}
    with_ema = {"state_dict": {"a": w}, "state_dict_ema": {"module.a": e}}
    assert extract_state_dict(with_ema) == {"a": w}  # EMA only when asked for
    assert extract_state_dict(with_ema, use_ema=True) == {"a": e}
    assert extract_state_dict({"model": {"a": w}, "model_ema": {"a": e}}, use_ema=True) == {"a": e}
    with pytest.raises(CheckpointError, match="no EMA weights .*: drop --use-ema"):
        extract_state_dict({"state_dict": {"a": w}}, use_ema=True)
    with pytest.raises(CheckpointError, match="holds no weights .*epoch, arch"):
        extract_state_dict({"epoch": 1, "arch": "x"})


def tiny_deit(num_classes):
    return timm.create_model(
        "deit_tiny_patch16_224", num_classes=num_classes, img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=2
    )


def test_load_model_weights(tmp_path):
    model = tiny_deit(10)
    path = tmp_path / "a.pth.tar"
    # what train.py writes for one anchor: SN-Net keys under 'anchors.0.', trained with DDP
    save_checkpoint({"state_dict": {f"module.anchors.0.{k}": v for k, v in model.state_dict().items()}}, path)
    other = tiny_deit(10)
    assert load_model_weights(other, path) == ([], [])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))

    with pytest.raises(
        CheckpointError,
        match=rf"^checkpoint '{path}' does not match the model: 2 shape mismatches "
        r"\(head.weight: checkpoint \[10, 16\] vs model \[5, 16\]\); was it "
        r"saved for other anchors, .*another --num-classes\?$",
    ):
        load_model_weights(tiny_deit(5), path)
    with pytest.raises(CheckpointError, match=r"2 shape mismatches"):
        load_model_weights(tiny_deit(5), path, strict=False)  # strict=False forgives keys, not shapes

    headless = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_checkpoint({"model": {**headless, "extra.bias": torch.zeros(1)}}, tmp_path / "b.pth")
    with pytest.raises(
        CheckpointError, match=r"2 missing keys \(e.g. head.weight\), 1 unexpected keys \(e.g. extra.bias\)"
    ):
        load_model_weights(tiny_deit(10), tmp_path / "b.pth")
    assert load_model_weights(tiny_deit(10), tmp_path / "b.pth", strict=False) == (
        ["head.weight", "head.bias"],
        ["extra.bias"],
    )
    with pytest.raises(CheckpointError, match=rf"^checkpoint '{tmp_path / 'b.pth'}': the checkpoint has no EMA"):
        load_model_weights(tiny_deit(10), tmp_path / "b.pth", use_ema=True)
