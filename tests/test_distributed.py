"""./distributed_train.sh on 2 CPU processes (gloo): the same training as 1 process, the documented
network sampling on every rank, and automatic resume after a worker is killed mid-epoch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from test_train import PLAIN, PYTHON, REPO, TINY, load, read_steps, run_main

from snnet.train.network_sampling import sampler_seed

SEED = 7
STEPS = 8  # per epoch
COMMON = (
    TINY
    + PLAIN
    + [
        "--seed",
        SEED,
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--max-steps-per-epoch",
        STEPS,
        "--ls-init",
        "--log-interval",
        "4",
    ]
)


def torchrun(nproc: int, args: list, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": PYTHON, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [str(REPO / "distributed_train.sh"), str(nproc)] + [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=timeout,
    )
    return proc


def by_step(records: list[dict]) -> dict[int, list[dict]]:
    """step -> its records, one per rank; a step re-run after a restart keeps its last attempt."""
    out: dict[int, dict[int, dict]] = {}
    for r in records:
        out.setdefault(r["step"], {})[r["rank"]] = r
    return {s: [v[k] for k in sorted(v)] for s, v in sorted(out.items())}


def expected_cfg_ids(num_networks: int, steps: int, seed: int) -> list[int]:
    """The documented rule (snnet/sampling.py), re-implemented."""
    g = torch.Generator().manual_seed(seed)
    w = torch.ones(num_networks, dtype=torch.float64)
    return [int(torch.multinomial(w, 1, generator=g)) for _ in range(steps)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 32 and two processes with batch 16 each, same seed."""
    out = tmp_path_factory.mktemp("dist")
    assert run_main(COMMON + ["-b", "32", "--output", out, "--experiment", "one"]) == 0
    proc = torchrun(2, COMMON + ["-b", "16", "--output", out, "--experiment", "two"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch(runs):
    one, two = by_step(read_steps(runs / "one")), by_step(read_steps(runs / "two"))
    assert sorted(one) == sorted(two) == list(range(1, 2 * STEPS + 1))
    for step in one:
        (single,), pair = one[step], two[step]
        assert [r["rank"] for r in pair] == [0, 1]
        assert pair[0]["cfg_id"] == pair[1]["cfg_id"] == single["cfg_id"]
        mean = (pair[0]["loss"] + pair[1]["loss"]) / 2
        assert mean == pytest.approx(single["loss"], rel=1e-4), step
        assert pair[0]["global_loss"] == pytest.approx(single["loss"], rel=1e-4)
    a, b = load(runs / "one" / "last.pth.tar")["state_dict"], load(runs / "two" / "last.pth.tar")["state_dict"]
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    assert "Eval: 1" in (runs / "two" / "train.log").read_text()


@pytest.mark.slow
def test_every_rank_trains_the_network_the_sampling_rule_says(runs, tmp_path):
    num_networks = 12  # depth-4 DeiT pair: 2 anchors + 10 stitches
    records = by_step(read_steps(runs / "two"))
    expected = expected_cfg_ids(num_networks, 2 * STEPS, sampler_seed(SEED))
    for rank in (0, 1):
        assert [records[s][rank]["cfg_id"] for s in sorted(records)] == expected
    assert len(set(expected)) > 3  # the rule really varies the network

    # --sample-per-rank: each rank its own stream (seed + 1000 * (rank + 1)); DDP sums over the union.
    proc = torchrun(
        2, COMMON + ["-b", "16", "--epochs", "1", "--sample-per-rank", "--output", tmp_path, "--experiment", "per-rank"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = by_step(read_steps(tmp_path / "per-rank"))
    got = [[records[s][rank]["cfg_id"] for s in sorted(records)] for rank in (0, 1)]
    for rank in (0, 1):
        assert got[rank] == expected_cfg_ids(num_networks, STEPS, sampler_seed(SEED, rank, per_rank=True))
    assert got[0] != got[1]


@pytest.mark.slow
def test_ddp_find_unused_parameters_gives_the_same_training(runs, tmp_path):
    proc = torchrun(
        2, COMMON + ["-b", "16", "--stop-epoch", "1", "--grad-sync", "ddp", "--output", tmp_path, "--experiment", "ddp"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, ours = by_step(read_steps(tmp_path / "ddp")), by_step(read_steps(runs / "two"))
    assert sorted(ddp) == list(range(1, STEPS + 1))
    for step in ddp:
        for r_ddp, r_ours in zip(ddp[step], ours[step]):
            assert r_ddp["cfg_id"] == r_ours["cfg_id"]
            assert r_ddp["loss"] == pytest.approx(r_ours["loss"], rel=1e-4)


@pytest.mark.slow
def test_worker_killed_mid_epoch_is_restarted_and_resumes_exactly(tmp_path):
    """torchrun --max-restarts 1 restarts both workers after rank 1 dies at global step 11 (epoch 1,
    step 3); they resume from the step-10 last.pth.tar and end with the uninterrupted run's weights."""
    args = TINY + [
        "--seed",
        SEED,
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--max-steps-per-epoch",
        STEPS,
        "-b",
        "16",
        "--reprob",
        "0.25",
        "--drop-path",
        "0.1",
        "--checkpoint-interval",
        "5",
        "--output",
        tmp_path,
    ]
    proc = torchrun(2, args + ["--experiment", "clean"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun(
        2,
        args + ["--experiment", "killed", "--kill-at-step", "11"],
        env={"TRAIN_SCRIPT": str(REPO / "tests" / "hooked_train.py"), "TORCHRUN_ARGS": "--max-restarts 1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "continuing at epoch 1 after step 2 (global step 10)" in log, log[-3000:]

    records = read_steps(tmp_path / "killed")
    assert {r["attempt"] for r in records} == {0, 1}
    assert max(r["step"] for r in records if r["attempt"] == 0) == 10  # died before finishing step 11
    assert min(r["step"] for r in records if r["attempt"] == 1) == 11
    clean, killed = load(tmp_path / "clean" / "last.pth.tar"), load(tmp_path / "killed" / "last.pth.tar")
    assert killed["global_step"] == clean["global_step"] == 2 * STEPS
    for k, v in clean["state_dict"].items():
        assert torch.equal(v, killed["state_dict"][k]), k
    assert (Path(tmp_path) / "killed" / "checkpoint-1.pth.tar").is_file()


def test_more_processes_than_gpus_fail_with_one_clear_line(monkeypatch):
    """A 2-process run on a 1-GPU node: the second process refuses before touching CUDA."""
    from snnet.distributed import init_distributed
    from snnet.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=r"needs GPU 1 but 1 are visible.*distributed_train.sh 1"):
        init_distributed("cuda")


def test_launcher_uses_the_repos_venv_python_unless_python_is_set(tmp_path):
    """README's ./distributed_train.sh must not fall back to a system python3 without torch."""
    import shutil

    script = tmp_path / "distributed_train.sh"
    shutil.copy(REPO / "distributed_train.sh", script)
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, where in (("python", venv_bin), ("other-python", tmp_path)):
        fake = where / name
        fake.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    used = subprocess.run([str(script), "2", "--epochs", "1"], capture_output=True, text=True, env=env, check=True)
    check, launch = used.stdout.splitlines()  # the arguments are checked by the same python first
    assert check.startswith("python ") and check.endswith("train.py --epochs 1 --check-args")
    assert launch.startswith("python -m torch.distributed.run --standalone --nproc_per_node=2 ")
    assert launch.endswith("train.py --epochs 1")
    env["PYTHON"] = str(tmp_path / "other-python")
    chosen = subprocess.run([str(script), "2"], capture_output=True, text=True, env=env, check=True)
    check, launch = chosen.stdout.splitlines()
    assert check.startswith("other-python ") and launch.startswith("other-python -m torch.distributed.run")
