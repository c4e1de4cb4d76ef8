"""lab.py's failure handling (issue 28): every bad flag, grid YAML, route, adapter that does not
fit a layout, --cell-shard, anchor file, output path, full disk, read-only folder, second process
and SIGKILL is one `error:` line, exit 2, and leaves every file as it was; a killed lab rerun by
the same command ends with the same cells as an uninterrupted one."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_entry
from test_failures import (
    REPO,
    Payload,
    full_disk,
    hashes,
    locked_by_another_process,
    one_error_line,
    read_only,
    sigkill_when,
)
from test_lab import GRID, TI, S, _write, recipe  # noqa: F401 (recipe: the anchors fixture)

from snnet.io.checkpoint import load_checkpoint_file
from snnet.lab.main import main as lab_main

# 2 cells of 2 steps, one per chunk (a kill between chunks keeps the first)
SMALL = {"epochs": 1, "max_steps_per_epoch": 2, "ls_init_images": 20, "max_val_batches": 1, "log_interval": 0}
CELLS = {**GRID, "adapters": ["linear"], "seeds": [0], "chunk_cells": 1}
TIMING = {"cells.csv": ("seconds",), "trajectory.csv": ("img_per_sec", "peak_mem_mb")}


def _config(folder: Path, base: dict, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return _write(folder / "tiny.yaml", {**base, **SMALL, **CELLS, **changes})


@pytest.fixture(scope="module")
def lab_run(recipe, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    """The 2-cell lab, finished: its config and its folder."""
    tmp = tmp_path_factory.mktemp("lab")
    config = _config(tmp, recipe)
    assert run_entry(lab_main, ["-c", config, "--output", tmp / "out"]) == 0
    return config, tmp / "out" / "tiny"


def _without(path: Path, columns) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in columns} for r in csv.DictReader(f)]


def _unlocked(folder: Path) -> dict[str, str]:
    return {k: v for k, v in hashes(folder).items() if ".snnet.lock" not in k}


@pytest.mark.slow
def test_bad_lab_inputs_are_one_line_and_change_nothing(lab_run, recipe, tmp_path, capsys):  # noqa: F811
    config, done = lab_run
    anchors = Path(recipe["anchor_checkpoints"][0]).parent
    before = (hashes(done), hashes(anchors))
    payload, garbage, marker = tmp_path / "payload.pth", tmp_path / "garbage.pth", tmp_path / "ran"
    state = load_checkpoint_file(recipe["anchor_checkpoints"][0])["state_dict"]
    torch.save({"state_dict": state, "note": Payload(marker)}, payload)
    garbage.write_bytes(os.urandom(4096))
    bad_yaml = tmp_path / "bad" / "tiny.yaml"
    bad_yaml.parent.mkdir()
    bad_yaml.write_text("routes: [a\nadapters: linear\n")
    fresh = tmp_path / "fresh"

    def new(**changes):  # a config of its own (the cases are built before they run)
        return ["-c", _config(tmp_path / f"config{len(os.listdir(tmp_path))}", recipe, **changes), "--output", fresh]

    other = [recipe["anchor_checkpoints"][1]]
    cases = [
        (["-c", config, "--output", fresh, "--bogus"], "unrecognized arguments: --bogus"),
        (["-c", config, "--output", fresh, "--cell-shard", "x"], "--cell-shard 'x' is not I/K"),
        (["-c", config, "--output", fresh, "--cell-shard", "2/2"], "I must be in 0..K-1"),
        (["-c", config, "--output", fresh, "--cell-shard=-1/2"], "I must be in 0..K-1"),
        (["-c", config, "--output", fresh, "--cell-shard", "-1/2"], "--cell-shard: expected one argument"),
        (["-c", config, "--output", fresh, "--cell-shard", "0/0"], "I must be in 0..K-1"),
        (["-c", tmp_path / "missing.yaml", "--output", fresh], "missing.yaml"),
        (["-c", bad_yaml, "--output", fresh], "line"),
        (new(routes=["garbage"]), "cannot read 'garbage'"),
        (new(routes=[f"{TI}[:2]>nope[2:]"]), "'nope' is not an anchor"),
        (new(routes=[f"{TI}[:2]>{S}[9:]"]), "names a block that does not exist"),
        (new(adapters=["nonsense"]), "stitch_layer is 'nonsense'"),
        (
            new(adapters=[{"name": "s2", "stitch_layer": "linear", "stitch_stride": 2}]),
            "which --stitch-layer linear cannot",
        ),
        (new(anchor_checkpoints=[str(payload), *other]), "holds pickled Python objects"),
        (new(anchor_checkpoints=[str(garbage), *other]), "garbage.pth"),
        (new(anchor_checkpoints=[str(tmp_path / "missing.pth"), *other]), "missing.pth"),
        (["-c", config, "--output", config], "is a file, not a folder"),
        (
            ["-c", _config(tmp_path / "other", recipe, lrs=[0.5]), "--output", done.parent],
            "holds a lab of another grid",
        ),
    ]
    for args, message in cases:
        line = one_error_line(run_entry(lab_main, args), capsys)
        assert message in line, (args, line)
        assert (hashes(done), hashes(anchors)) == before and not fresh.exists(), line
    assert not marker.exists()  # the payload never ran

    # --overwrite of a folder that holds the lab's own config would delete it
    inside = _config(tmp_path / "mine" / "tiny", recipe)
    args = ["-c", inside, "--output", tmp_path / "mine", "--overwrite"]
    line = one_error_line(run_entry(lab_main, args), capsys)
    assert "--overwrite would delete" in line and "holds the config" in line and inside.is_file()


@pytest.mark.slow
def test_full_disk_read_only_folder_and_a_second_process_keep_the_old_files(lab_run, capsys, monkeypatch):
    config, done = lab_run
    argv = ["-c", config, "--output", done.parent]
    before = hashes(done)
    with locked_by_another_process(done):
        line = one_error_line(run_entry(lab_main, argv), capsys)
        assert "--output/--experiment is in use by another process" in line
        with locked_by_another_process(done, ".snnet.lock-shard-1-of-2"):
            before = hashes(done)  # with the holder's lock file
            line = one_error_line(run_entry(lab_main, argv + ["--cell-shard", "1/2"]), capsys)
            assert "in use by another process (lock .snnet.lock-shard-1-of-2)" in line
            assert hashes(done) == before
            # another shard of the same grid shares the folder (a job array)
            assert run_entry(lab_main, argv + ["--cell-shard", "0/2"]) == 0
    # report.html says when it was written: the rerun's page is new, every other file the same
    assert _unlocked(done) | {"report.html": None} == {
        **{k: v for k, v in before.items() if ".snnet.lock" not in k},
        "report.html": None,
    }
    before = hashes(done)
    with read_only(done), read_only(done / "cells"):
        line = one_error_line(run_entry(lab_main, argv), capsys)
    assert "Operation not permitted" in line or "Permission denied" in line, line
    assert hashes(done) == before
    full_disk(monkeypatch)
    line = one_error_line(run_entry(lab_main, argv), capsys)
    assert "No space left on device" in line and "cells.csv" in line
    assert hashes(done) == before and not [p for p in done.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_sigkill_mid_lab_then_the_same_command_ends_as_an_uninterrupted_lab(lab_run, recipe, tmp_path):  # noqa: F811
    _, done = lab_run
    config = _config(tmp_path, recipe)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(REPO / "lab.py"), "-c", str(config), "--output", str(out)]
    sigkill_when(cmd, lambda: (out / "tiny" / "cells" / "cell-0000.json").is_file(), env)
    assert not (out / "tiny" / "cells.csv").exists()
    assert run_entry(lab_main, ["-c", config, "--output", out]) == 0  # the same command: resumes
    for name, timing in TIMING.items():
        assert _without(out / "tiny" / name, timing) == _without(done / name, timing), name
    for cell in sorted((done / "cells").glob("*.pth")):
        a, b = (load_checkpoint_file(d / "cells" / cell.name)["state_dict"] for d in (done, out / "tiny"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
