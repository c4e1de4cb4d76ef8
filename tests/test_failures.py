"""Failure handling (issues 20, 28): every refusal is one `error:` line with exit 2 and no
traceback, no file that existed before is changed, files are written whole or not at all, one
process per output folder, and settings that would change nothing are refused or logged.

train.py, eval.py and predict.py here; lab.py, compose.py and submit.py in
test_failures_lab.py, test_failures_compose.py and test_failures_submit.py, with the helpers below."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import TINY_DEIT_ARGS, TINY_TWO_WAY, run_entry

from snnet.errors import ConfigError
from snnet.evaluate.main import main as eval_main
from snnet.evaluate.predict import main as predict_main
from snnet.train.main import main as train_main

REPO = Path(__file__).resolve().parents[1]
TRAIN = TINY_DEIT_ARGS + [
    "--log-interval",
    "5",
    "--max-val-batches",
    "2",
    "--warmup-epochs",
    "0",
    "-b",
    "16",
    "--max-steps-per-epoch",
    "3",
    "--epochs",
    "1",
]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(code: int, capsys) -> str:
    """The single stderr line of a refusal (exit 2, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the SHA-256 of its bytes (folders of large files)."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def locked_by_another_process(folder: Path, name: str = ".snnet.lock"):
    """Another process holding ``folder``'s lock (an exclusive flock), as a running command does."""
    hold = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", hold, str(folder / name)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


class Payload:
    """Unpickling it creates the marker file: a checkpoint carrying it must be refused unrun."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def full_disk(monkeypatch) -> None:
    """Every fsync fails with ENOSPC from now on (how a full disk shows in an atomic write)."""

    def fail(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fail)


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only for real: mode 555, and for root (whom modes do not stop) the immutable
    attribute; checked by trying to create a file in it."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        with pytest.raises(OSError):
            (folder / ".probe").write_text("")
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def sigkill_when(cmd: list, ready: Callable[[], bool], env: dict, timeout: float = 240) -> None:
    """Run ``cmd`` and SIGKILL it as soon as ``ready()`` (polled); fails if it ends first."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"ended before the kill: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "never got there"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 1-epoch run of the tiny DeiT SN-Net on the digits."""
    out = tmp_path_factory.mktemp("train")
    assert run_entry(train_main, TRAIN + ["--output", out, "--experiment", "run"]) == 0
    return out / "run"


# ---------------------------------------------------------------------------------------------
# train.py
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_refused_reruns_and_checks_leave_every_file_as_it_was(run, capsys):
    before = snapshot(run.parent)
    rerun = TRAIN + ["--output", run.parent, "--experiment", "run"]
    cases = [
        (["--num-classes", "12"], "shape mismatches (anchors.0.head.weight: checkpoint [10, 32] vs model [12, 32])"),
        (
            ["--stitch-layer", "lora", "--lora-rank", "4"],
            "was trained with stitch_layer=linear but this run has stitch_layer=lora",
        ),
        (["--epochs", "3"], "follows a schedule of --epochs 1 (1 done)"),
        (["--sample-by", "flops-groups", "--flops-gap", "-1"], "--flops-gap must be >= 0"),
        (["--sample-by", "flops-groups", "--flops-gap", "1.0"], "puts all 12 networks"),
        (["--model-kwargs", "depth=abc"], "timm cannot build deit_tiny_patch16_224"),
        (["--img-size", "0"], "--img-size must be >= 1"),
        (["--opt", "foo"], "--opt 'foo': Optimizer foo not found"),
        (["--sched", "foo"], "--sched 'foo': Unknown scheduler"),
    ]
    for extra, message in cases:
        line = one_error_line(run_entry(train_main, rerun + extra), capsys)
        assert message in line, (extra, line)
        assert snapshot(run.parent) == before, extra  # args.yaml, train.log, checkpoints untouched

    fresh = TRAIN + ["--output", run.parent, "--experiment", "fresh"]
    line = one_error_line(run_entry(train_main, fresh + ["--ls-init", "--ls-init-images", "5000"]), capsys)
    assert "--ls-init-images 5000 is larger than the training set" in line
    assert not (run.parent / "fresh").exists()  # no empty run folder, no 0-byte train.log
    line = one_error_line(run_entry(train_main, TRAIN + ["--output", run, "--experiment", "args.yaml"]), capsys)
    assert f"'{run / 'args.yaml'}' is a file, not a folder" in line
    assert snapshot(run.parent) == before


@pytest.mark.slow
def test_launcher_refuses_before_any_worker_starts(run, tmp_path):
    """Under distributed_train.sh an argument error is one line (checked before torchrun starts)."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    before = snapshot(run.parent)
    extra = ["--experiment", "run", "--stitch-layer", "lora", "--lora-rank", "4"]  # a rerun refused by its checkpoint
    proc = subprocess.run(
        [str(REPO / "distributed_train.sh"), "2", *TRAIN, "--output", str(run.parent), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=240,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "stitch_layer=linear but this run has stitch_layer=lora" in lines[0]
    assert snapshot(run.parent) == before


# ---------------------------------------------------------------------------------------------
# eval.py and predict.py
# ---------------------------------------------------------------------------------------------
def _png(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_eval_resume_alone_uses_the_runs_data_and_options(run, tmp_path):
    ckpt = run / "last.pth.tar"
    assert run_entry(eval_main, ["--resume", ckpt, "--output", tmp_path / "alone", "--stitches", "0-3"]) == 0
    # the same sweep with every data and model option spelled out, as before
    explicit = TINY_DEIT_ARGS + ["--resume", ckpt, "--output", tmp_path / "explicit", "--stitches", "0-3"]
    assert run_entry(eval_main, explicit) == 0
    for name in ("stitches.csv", "pareto.csv"):
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "explicit" / name).read_bytes()


@pytest.mark.slow
def test_outputs_never_destroy_inputs_and_a_full_disk_keeps_the_old_files(run, tmp_path, capsys, monkeypatch):
    ckpt = shutil.copy(run / "last.pth.tar", tmp_path / "m.pt")
    assert run_entry(eval_main, ["--resume", ckpt, "--export", "1", "--export-path", tmp_path / "good.pt"]) == 0
    assert run_entry(eval_main, ["--resume", ckpt, "--output", tmp_path / "sweep", "--stitches", "0-3"]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)

    cases = [
        (["--export", "0", "--export-path", ckpt], "is the --resume checkpoint this command reads"),
        (["--output", ckpt], "is a file, not a folder"),
        (["--export", "0", "--export-path", tmp_path / "sweep"], "unknown suffix"),
    ]
    for extra, message in cases:
        line = one_error_line(run_entry(eval_main, ["--resume", ckpt] + extra), capsys)
        assert message in line, (extra, line)
    assert snapshot(tmp_path) == before

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    for extra, name in (
        (["--export", "1", "--export-path", tmp_path / "good.pt"], "good.pt"),
        (
            ["--output", tmp_path / "sweep", "--stitches", "0-3"],
            "stitches.csv",
        ),  # a finished sweep: only the tables are written
    ):
        line = one_error_line(run_entry(eval_main, ["--resume", ckpt] + extra), capsys)
        assert name in line and "No space left on device" in line, line
        assert snapshot(tmp_path) == before  # the old files whole, no temporary file left behind

    monkeypatch.undo()
    image = _png(tmp_path / "img.png")
    before = snapshot(tmp_path)
    for extra, message in (
        (["--csv", image], "is the image"),
        (["--csv", tmp_path], "is a folder"),
    ):
        line = one_error_line(run_entry(predict_main, ["--exported", tmp_path / "good.pt", image] + extra), capsys)
        assert message in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_unreadable_exported_files_are_one_line(run, tmp_path, capsys):
    ckpt = run / "last.pth.tar"
    assert run_entry(eval_main, ["--resume", ckpt, "--export", "1", "--export-path", tmp_path / "good.onnx"]) == 0
    assert run_entry(eval_main, ["--resume", ckpt, "--export", "1", "--export-path", tmp_path / "good.pt"]) == 0
    image = _png(tmp_path / "img.png")
    good_json = (tmp_path / "good.pt.json").read_text()
    (tmp_path / "garbage.onnx").write_bytes(os.urandom(1000))
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:5000])
    shutil.copy(tmp_path / "good.onnx", tmp_path / "renamed.pt")
    shutil.copy(tmp_path / "good.onnx", tmp_path / "other.onnx")
    for name in ("garbage.onnx", "truncated.pt", "renamed.pt"):
        (tmp_path / f"{name}.json").write_text(good_json)
    (tmp_path / "other.onnx.json").write_text(good_json.replace("32", "64"))  # another input size
    marker = tmp_path / "ran"
    for name in ("payload.pt", "payload.pt2"):  # a pickle whose unpickling would create the marker
        torch.save({"model": Payload(marker)}, tmp_path / name)
        (tmp_path / f"{name}.json").write_text(good_json)
    capsys.readouterr()
    for name, message in (
        ("payload.pt", "cannot be read as TorchScript"),
        ("payload.pt2", "payload.pt2"),
        ("garbage.onnx", "cannot be read as ONNX"),
        ("truncated.pt", "cannot be read as TorchScript"),
        ("renamed.pt", "cannot be read as TorchScript"),
        ("other.onnx", "refuses input (1, 3, 64, 64)"),
    ):
        line = one_error_line(run_entry(predict_main, ["--exported", tmp_path / name, image]), capsys)
        assert name in line and message in line, line
    assert not marker.exists()  # the payload never ran


@pytest.mark.slow
def test_a_folder_another_process_writes_is_refused_before_any_work(run, tmp_path, capsys):
    """train.py's run folder and eval.py's results folder: one process each (snnet.io.lock)."""
    for entry, args, folder in (
        (train_main, TRAIN + ["--output", run.parent, "--experiment", "run", "--epochs", "1"], run),
        (eval_main, ["--resume", run / "last.pth.tar", "--output", tmp_path / "sweep"], tmp_path / "sweep"),
    ):
        with locked_by_another_process(folder):
            before = snapshot(folder)
            line = one_error_line(run_entry(entry, args), capsys)
            assert "is in use by another process" in line and str(folder) in line, line
            assert snapshot(folder) == before


@pytest.mark.slow
def test_compatibility_without_weights_warns(tmp_path, capsys):
    args = TINY_DEIT_ARGS + ["--compatibility", "--compat-images", "20", "--output", tmp_path, "--stitches", "0"]
    assert run_entry(eval_main, args) == 0
    assert "--compatibility without --pretrained or --anchor-checkpoints scores randomly initialised" in (
        capsys.readouterr().out
    )


def test_bad_model_values_are_one_line(tmp_path, capsys):
    for extra, message in (
        (["--model-kwargs", "depth=abc"], "timm cannot build deit_tiny_patch16_224 with depth='abc'"),
        (["--img-size", "0"], "--img-size must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
    ):
        args = ["--anchors", "deit_tiny_patch16_224", "--flops-only", "--output", tmp_path] + extra
        assert message in one_error_line(run_entry(eval_main, args), capsys)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# helpers, one rule each
# ---------------------------------------------------------------------------------------------
def test_output_path_rules(tmp_path):
    from snnet.io.paths import atomic_path, check_not_an_input, check_output_dir, check_output_file

    data = tmp_path / "data.bin"
    data.write_bytes(b"input")
    os.link(data, tmp_path / "hard.bin")
    for out in (data, tmp_path / "hard.bin", tmp_path / "sub" / ".." / "data.bin"):
        with pytest.raises(ConfigError, match="is the checkpoint this command reads"):
            check_not_an_input(out, "--out", {"checkpoint": data})
    check_not_an_input(tmp_path / "new.bin", "--out", {"checkpoint": data})
    with pytest.raises(ConfigError, match="is a folder"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(ConfigError, match="which is a file"):
        check_output_file(data / "x.csv", "--out")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_dir(data, "--out")

    with pytest.raises(RuntimeError), atomic_path(data) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert data.read_bytes() == b"input" and sorted(p.name for p in tmp_path.iterdir()) == ["data.bin", "hard.bin"]
    with atomic_path(data) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".bin"  # exporters read the suffix
        tmp.write_bytes(b"new")
    assert data.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["data.bin", "hard.bin"]


def test_os_errors_are_one_line_naming_the_file(capsys):
    from snnet.errors import exit_on_user_error

    @exit_on_user_error
    def fails():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/stitches.csv")

    with pytest.raises(SystemExit) as e:
        fails()
    assert one_error_line(e.value.code, capsys) == (
        "error: 'out/stitches.csv': No space left on device: free some space or write elsewhere"
    )


def test_images_are_read_faithfully_in_every_mode():
    from PIL import Image

    from snnet.evaluate.predict import to_rgb

    ramp16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    for mode in ("I;16", "I"):
        image = Image.fromarray(ramp16) if mode == "I;16" else Image.fromarray(ramp16.astype(np.int32), "I")
        got = np.asarray(to_rgb(image))
        assert got.shape == (1, 4, 3) and got[0, :, 0].tolist() == [0, 1, 128, 255], mode
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(floats))[0, :, 1].tolist() == [0, 128, 255]
    # alpha over white: a transparent pixel is white, a half-transparent black one mid-grey
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8), "RGBA")
    assert np.asarray(to_rgb(rgba))[0].tolist() == [[255, 255, 255], [0, 0, 0], [127, 127, 127]]
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]
    cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0]]], dtype=np.uint8), "CMYK")
    assert np.asarray(to_rgb(cmyk))[0].tolist() == [[255, 255, 255], [0, 255, 255]]


def test_cpu_threads_default_to_one_unless_told(monkeypatch):
    from snnet.distributed import set_cpu_threads

    threads = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert set_cpu_threads(None) == 1
        assert set_cpu_threads(2) == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torch read it at start-up: left alone
        assert set_cpu_threads(None) == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_flops_groups_are_logged_and_one_group_is_refused(caplog):
    from snnet import create_snnet
    from snnet.core.flops import flops_table
    from snnet.train.network_sampling import create_network_sampler

    net = create_snnet(num_classes=5, **TINY_TWO_WAY)
    flops = sorted(row["flops"] / 1e9 for row in flops_table(net))
    with caplog.at_level(logging.INFO, logger="train"):
        sampler = create_network_sampler(net, "flops-groups", 0, flops_gap=0.0001)
    sizes = [len(g) for g in sampler.groups]
    assert f"{len(sizes)} groups of {sizes} networks" in caplog.text and len(sizes) > 3
    # by hand: a new group at each network more than 1e-4 GFLOPs above the current group's first
    # (the official reference starts at 0 GFLOPs)
    count, reference = 0, 0.0
    for i, f in enumerate(flops):
        if f - reference > 0.0001:
            count, reference = count + 1, f
        elif i == 0:
            count = 1
    assert count == len(sizes)
    with pytest.raises(ConfigError, match=f"puts all {len(flops)} networks .* in one group"):
        create_network_sampler(net, "flops-groups", 0, flops_gap=1.0)


def test_help_says_each_default_once():
    from snnet.cli import build_eval_parser, build_predict_parser, build_train_parser

    for parser in (build_train_parser(), build_eval_parser(), build_predict_parser()):
        text = re.sub(r"\s+", " ", parser.format_help())
        entries = re.split(r" (?=--?\w)", text)
        assert not [e for e in entries if e.count("(default") > 1]


@pytest.mark.slow
def test_readme_python_api_snippet_runs_as_written():
    """docs/python-api.md's first Python block, run as written but for two substitutions it states:
    pretrained=True becomes False (no hub here; the weights change none of the numbers and names
    the snippet shows) and the 16 stand-in images become 4 (least squares through DeiT-B on 2 cores)."""
    page = (REPO / "docs" / "python-api.md").read_text()
    snippet = re.search(r"# Python API\n\n```python\n(.*?)```", page, re.S).group(1)
    assert "pretrained=True" in snippet
    shown = dict(re.findall(r"^(\S.*?)  # (\d+|'[^']*')", snippet, re.M))  # expression -> value in its comment
    namespace: dict = {}
    assert "torch.randn(16, 3, 224, 224)" in snippet
    runnable = snippet.replace("pretrained=True", "pretrained=False").replace("randn(16,", "randn(4,")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(runnable, "docs/python-api.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    for expr, value in shown.items():
        assert eval(expr, namespace) == eval(value), expr
    assert namespace["logits"].shape == (2, 1000)
