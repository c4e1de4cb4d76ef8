"""submit.py on submitit's local executor: 2 local tasks train like torchrun's workers, a preempted
job saves its step and is requeued to the same weights, workers that die with their launcher; the
sbatch script of what one machine cannot show (2 GPU nodes). The jobs on a real Slurm, a lab job
array among them, are tests/test_slurm.py's."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from submit_hooks import Heartbeat, SignalOnceAtStep
from test_train import PYTHON, REPO, TINY, load, read_steps

from snnet import launch

TESTS = Path(__file__).resolve().parent
STEPS = 8  # per epoch
ARGS = TINY + ["--device", "cpu", "--seed", "3", "--lr", "1e-3", "--epochs", "2", "--max-steps-per-epoch", STEPS]
ARGS += ["-b", "16", "--reprob", "0.25", "--drop-path", "0.1", "--log-interval", "4"]


def submit_argv(job_dir: Path, *options, entry_args=()) -> list[str]:
    return ["--cluster", "local", "--nodes", "1", "--job-dir", str(job_dir / "%j"), *options, "--"] + [
        str(a) for a in entry_args
    ]


@pytest.fixture
def tasks_import_tests(monkeypatch):
    """The job's tasks unpickle submit_hooks' callbacks and stand-ins: put tests/ on their path."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_preempted_local_job_saves_its_step_is_requeued_and_ends_with_the_same_weights(tmp_path, tasks_import_tests):
    """The README's `python submit.py --cluster local --nodes 1 --ngpus 2 -- <train.py args>`, then the
    same job preempted mid-epoch: rank 1 gets the signal in step 5, rank 0 in step 6; the ranks agree
    to stop after step 6, save it, submitit requeues the job, and it resumes to the same weights."""
    out = tmp_path / "out"
    clean = subprocess.run(
        [PYTHON, "submit.py"]
        + submit_argv(tmp_path / "jobs", "--ngpus", "2", entry_args=ARGS + ["--output", out, "--experiment", "clean"]),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"run folder: {out / 'clean'}" in clean.stdout
    for name in ("args.yaml", "summary.csv", "train.log", "last.pth.tar", "checkpoint-1.pth.tar", "model_best.pth.tar"):
        assert (out / "clean" / name).is_file(), name
    assert {r["rank"] for r in read_steps(out / "clean")} == {0, 1}  # two tasks, one process group

    callback = SignalOnceAtStep(steps=(6, 5), marker_dir=str(tmp_path))
    argv = submit_argv(tmp_path / "pre", "--ngpus", "2", entry_args=ARGS + ["--output", out, "--experiment", "pre"])
    assert launch.main(argv, step_callbacks=[callback]) == 0
    assert {p.name for p in tmp_path.glob("signalled-*")} == {"signalled-0", "signalled-1"}

    log = (out / "pre" / "train.log").read_text()
    assert "continuing at epoch 0 after step 6 (global step 6)" in log, log
    job_logs = "".join(p.read_text() for p in (tmp_path / "pre").glob("*/*_log.*"))
    assert "stopped at global step 6" in job_logs and "Requeued job" in job_logs, job_logs[-3000:]
    steps = [(r["step"], r["rank"]) for r in read_steps(out / "pre")]
    assert sorted(steps) == [(s, r) for s in range(1, 2 * STEPS + 1) for r in (0, 1)]  # each step once per rank

    a, b = load(out / "clean" / "last.pth.tar"), load(out / "pre" / "last.pth.tar")
    assert a["global_step"] == b["global_step"] == 2 * STEPS
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_bad_submissions_fail_with_one_line_before_anything_is_submitted(tmp_path, capsys):
    cases = [
        (["--job", "lab"], [], "lab.py, which is not in this checkout"),
        (["--array-tasks", "2"], TINY, "use it with --job lab, not --job train"),
        (["--nodes", "2"], TINY, "--cluster local runs on this machine: use --nodes 1"),
        ([], ["--dataset", "digits"], "no anchors given"),
        ([], TINY + ["--epochs", "x"], "invalid int value"),
    ]
    for options, entry_args, message in cases:
        argv = submit_argv(tmp_path / "jobs", *options, entry_args=entry_args)
        with pytest.raises(SystemExit) as e:
            launch.main(argv, scripts_dir=tmp_path)
        assert e.value.code == 2, options
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (options, err)
    assert not (tmp_path / "jobs").exists()


def test_slurm_job_script_asks_for_the_nodes_gpus_and_requeue_signal(tmp_path, monkeypatch, capsys):
    """On Slurm, submit.py writes an sbatch script (read here from a stand-in sbatch on PATH) and
    returns. What a one-node CPU cluster cannot show (tests/test_slurm.py runs the rest on a real
    one): 2 nodes of 8 GPUs, a GPU partition, account, QOS, constraint."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho gpu\necho cpu\n")  # the cluster's partitions
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\necho "Submitted batch job 4242"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = ["--cluster", "slurm", "--nodes", "2", "--ngpus", "8", "--partition", "gpu", "--account", "acct"]
    options += ["--qos", "high", "--constraint", "h100", "--timeout", "90", "--job-dir", str(tmp_path / "jobs")]
    assert launch.main(options + ["--"] + [str(a) for a in TINY]) == 0
    assert "job 4242" in capsys.readouterr().out
    script = (tmp_path / "job.sh").read_text()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=acct",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=h100",
        "#SBATCH --time=90",
        "#SBATCH --signal=USR2@120",
    ):
        assert line in script, (line, script)
    assert "submitit.core._submit" in script and "srun" in script
    # --ngpus 0 (as --device cpu): no GPU request at all, N tasks per node, the script on the CPU
    options = ["--cluster", "slurm", "--nodes", "2", "--ngpus", "0", "--tasks-per-node", "3", "--partition", "cpu"]
    assert launch.main(options + ["--job-dir", str(tmp_path / "cpu"), "--"] + [str(a) for a in TINY]) == 0
    script = (tmp_path / "job.sh").read_text()
    assert "#SBATCH --ntasks-per-node=3" in script and "#SBATCH --nodes=2" in script and "gpu" not in script
    (pickled,) = (tmp_path / "cpu").glob("*_submitted.pkl")
    task = pickle.loads(pickled.read_bytes()).function
    assert task.argv[task.argv.index("--device") + 1] == "cpu"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; its new parent may not reap it here


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_sigkill_of_the_launcher_ends_its_workers(tmp_path):
    """./distributed_train.sh (exec'd into torchrun) is SIGKILLed while its 2 workers train: both
    workers end within seconds and the run folder stops changing."""
    run = tmp_path / "run"
    args = ARGS + ["--epochs", "1000", "--log-interval", "1", "--output", tmp_path, "--experiment", "run"]
    env = {**os.environ, "PYTHON": PYTHON, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [str(REPO / "distributed_train.sh"), "2"] + [str(a) for a in args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not ((run / "steps.jsonl").exists() and (run / "steps.jsonl").stat().st_size > 0):
            assert launcher.poll() is None and time.time() < deadline, "workers never trained"
            time.sleep(0.5)
        workers = _children(launcher.pid)
        assert len(workers) == 2
        launcher.kill()
        launcher.wait()
        deadline = time.time() + 10
        while any(map(_alive, workers)) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers)), "workers outlived their launcher"
        before = _snapshot(run)
        time.sleep(2)
        assert _snapshot(run) == before
    finally:
        launcher.kill()
        for pid in filter(_alive, locals().get("workers", [])):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_sigkill_of_a_local_jobs_controller_ends_its_tasks(tmp_path, tasks_import_tests):
    """submit.py's tasks under submitit's local controller: SIGKILL the controller, the 2 tasks end."""
    args = launch.build_submit_parser().parse_args(submit_argv(tmp_path / "jobs", "--ngpus", "2")[:-1])
    job = launch.make_executor(args).submit(launch.Task(Heartbeat(str(tmp_path)), []))
    controller = job._process  # submitit's LocalJob keeps the controller's Popen
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("beat-*"))) < 2:
            assert controller.poll() is None and time.time() < deadline, "tasks never started"
            time.sleep(0.2)
        tasks = [int((tmp_path / f"pid-{rank}").read_text()) for rank in (0, 1)]
        assert all(map(_alive, tasks))
        controller.kill()
        controller.wait()
        deadline = time.time() + 10
        while any(map(_alive, tasks)) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, tasks)), "tasks outlived their controller"
    finally:
        controller.kill()
        for pid in filter(_alive, locals().get("tasks", [])):
            os.kill(pid, signal.SIGKILL)


def test_debug_cluster_trains_in_this_process(tmp_path, one_thread):
    """--cluster debug: one task, in this process, the usual run folder; the environment is restored."""
    entry_args = ARGS + ["--epochs", "1", "--max-steps-per-epoch", "2", "--output", tmp_path / "out"]
    argv = ["--cluster", "debug", "--job-dir", str(tmp_path / "jobs"), "--"] + [str(a) for a in entry_args]
    assert launch.main(argv) == 0
    (run,) = (tmp_path / "out").iterdir()
    assert [r["step"] for r in read_steps(run)] == [1, 2]
    assert (run / "last.pth.tar").is_file() and (run / "train.log").is_file()
    assert "RANK" not in os.environ and "MASTER_PORT" not in os.environ


def test_example_slurm_conf_is_what_the_test_cluster_writes():
    """tests/slurm.conf (docs/slurm.md's one-machine example) is tests/slurm_cluster.py's template
    on a 2-CPU machine "myhost": the example and the tested configuration stay one."""
    from slurm_cluster import example_config

    assert (TESTS / "slurm.conf").read_text() == example_config()
