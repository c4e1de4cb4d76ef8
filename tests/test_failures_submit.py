"""submit.py's failure handling (issue 28): what the job's script would refuse at its start is one
`error:` line, exit 2, before anything is submitted (submit.py's flags, the job's flags and
config, a job or output folder it cannot write, an output folder another process writes); a
SIGKILL of a local job's submit.py ends the job, and the same command then resumes it to the
weights of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_DEIT_ARGS, run_entry
from test_failures import REPO, hashes, locked_by_another_process, one_error_line, read_only, sigkill_when
from test_train import TINY

from snnet import launch
from snnet.io.lock import check_folder_free
from snnet.train.main import main as train_main

# eval.py --flops-only reads no data: without --workers (which it refuses as having no effect)
FLOPS_ONLY = [a for a in TINY_DEIT_ARGS if a not in ("--workers", "0")] + ["--flops-only"]
DEMO_LAB = REPO / "configs" / "lab" / "demo_digits.yaml"


def submit(job_dir: Path, *options, entry_args=()) -> list[str]:
    return ["--cluster", "local", "--job-dir", str(job_dir / "%j"), *options, "--", *map(str, entry_args)]


def test_bad_submissions_are_one_line_and_submit_nothing(tmp_path, capsys):
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    lab_config = tmp_path / "grid.yaml"
    lab_config.write_text(yaml.safe_dump({"anchors": ["resnet18"], "adapterz": ["linear"]}))
    (tmp_path / "ro").mkdir()
    train = TINY + ["--output", out, "--experiment", "run"]
    cases = [
        (submit(jobs, "--bogus", entry_args=train), "submit.py: unrecognized arguments: --bogus"),
        (submit(jobs, "--timeout", "0", entry_args=train), "--timeout must be >= 1"),
        (submit(jobs, entry_args=train + ["--bogus"]), "train.py: unrecognized arguments: --bogus"),
        (submit(jobs, entry_args=TINY + ["--output", a_file]), "is a file, not a folder"),
        (submit(jobs, "--job", "eval", entry_args=["--bogus"]), "eval.py: unrecognized arguments: --bogus"),
        (submit(jobs, "--job", "eval", entry_args=FLOPS_ONLY + ["--output", a_file]), "is a file"),
        (submit(jobs, "--job", "lab", entry_args=["-c", tmp_path / "nope.yaml"]), "nope.yaml' does not exist"),
        (submit(jobs, "--job", "lab", entry_args=["-c", lab_config]), "unknown key 'adapterz'"),
        (submit(jobs, "--job", "lab", entry_args=["-c", DEMO_LAB, "--cell-shard", "0/2"]), "sets --cell-shard"),
        (submit(a_file / "jobs", entry_args=train), "Not a directory"),
    ]
    for argv, message in cases:
        line = one_error_line(run_entry(lambda a: launch.main(a, scripts_dir=REPO), argv), capsys)
        assert message in line, (argv, line)
    with read_only(tmp_path / "ro"):
        line = one_error_line(run_entry(launch.main, submit(tmp_path / "ro" / "jobs", entry_args=train)), capsys)
    assert "Operation not permitted" in line or "Permission denied" in line, line
    assert not jobs.exists() and not out.exists() and a_file.read_text() == "mine"


def test_a_folder_another_process_writes_is_refused_before_submitting(tmp_path, capsys):
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    with locked_by_another_process(out / "run"):
        before = hashes(out)
        argv = submit(jobs, entry_args=TINY + ["--output", out, "--experiment", "run"])
        line = one_error_line(run_entry(launch.main, argv), capsys)
        assert "--output/--experiment is in use by another process" in line
        argv = submit(jobs, "--job", "eval", entry_args=FLOPS_ONLY + ["--output", out / "run"])
        line = one_error_line(run_entry(launch.main, argv), capsys)
        assert "--output is in use by another process" in line
        assert hashes(out) == before and not jobs.exists()


@pytest.mark.slow
def test_sigkill_of_a_local_submit_then_the_same_command_resumes_to_the_same_weights(tmp_path):
    # 40 steps: the job must outlive the kill by more than die_with's 0.5 s poll, or it ends first
    args = TINY + ["--epochs", "1", "--max-steps-per-epoch", "40", "-b", "16", "--checkpoint-interval", "2"]
    assert run_entry(train_main, args + ["--output", tmp_path / "ref", "--experiment", "run"]) == 0
    run = tmp_path / "out" / "run"
    cmd = [
        sys.executable,
        str(REPO / "submit.py"),
        *submit(tmp_path / "jobs", entry_args=args + ["--output", run.parent, "--experiment", "run"]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    sigkill_when(cmd, lambda: (run / "last.pth.tar").is_file(), env)  # a step-level checkpoint, mid-epoch
    deadline = time.time() + 20  # the job ends with its submit.py: its task lets go of the run folder
    while True:
        try:
            check_folder_free(run, "--output")
            break
        except OSError:
            assert time.time() < deadline, "the job outlived its submit.py"
            time.sleep(0.2)
    first = torch.load(run / "last.pth.tar", weights_only=True)
    assert first["global_step"] < 40
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "continuing at epoch 0 after step" in (run / "train.log").read_text()
    a, b = (torch.load(d / "last.pth.tar", weights_only=True) for d in (tmp_path / "ref" / "run", run))
    assert a["global_step"] == b["global_step"] == 40
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
