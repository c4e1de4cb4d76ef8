"""submit.py on a real one-node Slurm (tests/slurm_cluster.py, CPU only): 1- and 2-task training
jobs, an eval job, a lab.py job array, a preempted job array (a lab.py stand-in), bad
submissions, and a training job interrupted four ways (a preemption
signal, its time limit, ``scontrol requeue``, ``scancel`` and the same command again), each
ending with the weights of the uninterrupted job. The jobs are submitted together by one module
fixture and run at once (the partition lets 4 jobs share a CPU); each test then waits for its own.

The interrupted jobs carry a test-only step callback (tests/submit_hooks.py: HoldFirstRun) that
holds their first run at step 3 (after last.pth.tar of step 2 is written) until they are
interrupted, so that each interruption lands mid-training whatever the order the tests run in;
they are submitted through ``snnet.launch.main`` (what submit.py calls) to pass it."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from submit_hooks import HoldFirstRun, StandInLab
from test_lab import RECIPE, ROUTES
from test_train import REPO, TINY, load, read_steps

from snnet import launch

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
STEPS = 6
TRAIN = TINY + ["--seed", "3", "--epochs", "1", "--max-steps-per-epoch", STEPS, "-b", "16"]
TRAIN += ["--checkpoint-interval", "2", "--log-interval", "2"]
# CPU-only cluster: no GPUs asked for; 1 CPU per task (the node has 2)
CPU = ["--cluster", "slurm", "--device", "cpu", "--cpus-per-task", "1"]
INTERRUPTED = ("preempt", "timelimit", "requeue", "cancel")
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def submit_cmd(job_dir: Path, *options, entry_args=()) -> list[str]:
    return [sys.executable, "submit.py", *CPU, "--job-dir", str(job_dir / "%j"), *options, "--", *map(str, entry_args)]


def job_ids(stdout: str) -> list[str]:
    """The ids submit.py printed ("job 12: logs ..."; array jobs "job 12_0: ...")."""
    return re.findall(r"^job (\S+): logs ", stdout, flags=re.M)


def hooked_submit(argv: list[str], hook: HoldFirstRun) -> str:
    """submit.py in this process (snnet.launch.main) with a test-only step callback; the job id."""
    (job_id,) = submit_here(argv, step_callbacks=[hook])
    return job_id


def submit_here(argv: list, **kwargs) -> list[str]:
    """snnet.launch.main (what submit.py runs) in this process, with test-only ``kwargs``; the job ids."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert launch.main([str(a) for a in argv], **kwargs) == 0, out.getvalue()
    return job_ids(out.getvalue())


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory):
    """Every job of the module, submitted at once: {name: job id}, and their folders."""
    tmp = tmp_path_factory.mktemp("jobs")
    env = {**slurm_cluster.env, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), "OMP_NUM_THREADS": "1"}
    lab_config = tmp / "lab.yaml"
    lab_config.write_text(yaml.safe_dump(lab_recipe(tmp)))
    commands = {
        "one": submit_cmd(tmp / "submitit", entry_args=TRAIN + ["--output", tmp / "out", "--experiment", "one"]),
        # docs/slurm.md's CPU-only command as written (its submit.py options; this test's job arguments)
        "two": [sys.executable, "submit.py", *documented_cpu_options(), "--job-dir", str(tmp / "submitit" / "%j"), "--"]
        + [str(a) for a in TRAIN + ["--output", tmp / "out", "--experiment", "two"]],
        "lab": submit_cmd(
            tmp / "submitit",
            "--job",
            "lab",
            "--array-tasks",
            "2",
            entry_args=["-c", lab_config, "--output", tmp / "lab"],
        ),
    }
    procs = {k: subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}  # fmt: skip
    ids, printed = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        use_env(mp, env)
        for name in INTERRUPTED:
            hook = HoldFirstRun(from_step=3, fast_marker=str(tmp / f"fast-{name}"))
            options = ["--timeout", "1", "--signal-delay", "5"] if name == "timelimit" else []
            argv = CPU + ["--job-dir", tmp / "submitit" / "%j", *options, "--"]
            ids[name] = hooked_submit(argv + TRAIN + ["--output", tmp / "out", "--experiment", name], hook)
        (tmp / "standin").mkdir()
        lab = StandInLab(cells=5, folder=str(tmp / "standin"))  # preempts itself after its first cell
        argv = CPU + ["--job-dir", tmp / "submitit" / "%j", "--job", "lab", "--array-tasks", "2", "--"]
        ids["standin"] = submit_here(argv, entries={"lab": lab})
    for k, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        printed[k] = stdout
        ids[k] = job_ids(stdout) if k == "lab" else job_ids(stdout)[0]
    return dict(ids=ids, printed=printed, tmp=tmp, env=env, commands=commands, cluster=slurm_cluster)


def use_env(mp: pytest.MonkeyPatch, env: dict) -> None:
    """This process's environment as the jobs': the test cluster's SLURM_CONF, tests/ on PYTHONPATH."""
    for k in list(os.environ):
        if k not in env:  # e.g. SLURM_* of a job the suite itself runs in
            mp.delenv(k)
    for k, v in env.items():
        mp.setenv(k, v)


def documented_cpu_options() -> list[str]:
    """submit.py's options in docs/slurm.md's command for a CPU-only cluster (before its `--`)."""
    text = (REPO / "docs" / "slurm.md").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("python submit.py --device cpu")]
    words = shlex.split(line)
    return words[2 : words.index("--")]


def lab_recipe(tmp: Path) -> dict:
    """test_lab's tiny grid (2 routes x 2 seeds = 4 cells), anchors from files, one short epoch."""
    from conftest import TINY_PAIRS

    from snnet import create_snnet
    from snnet.io.checkpoint import save_checkpoint

    torch.manual_seed(123)
    net = create_snnet(**TINY_PAIRS["deit"], num_classes=10)
    paths = []
    for i, model in enumerate(net.anchors):
        paths.append(str(tmp / f"anchor{i}.pth"))
        save_checkpoint({"state_dict": model.state_dict()}, paths[-1])
    return {**RECIPE, "anchor_checkpoints": paths, "epochs": 1, "max_steps_per_epoch": 2, "routes": ROUTES,
            "adapters": ["linear"], "lrs": [2.0e-3], "seeds": [0, 1]}  # fmt: skip


def wait_done(cluster, job_id: str, timeout_s: float = 300) -> str:
    """The job's final state (scontrol), after its requeues."""
    deadline = time.time() + timeout_s
    while (state := cluster.job_state(job_id)) not in DONE:
        assert time.time() < deadline, f"job {job_id} still {state}\n{cluster.logs()}"
        time.sleep(1)
    return state


def job_logs(tmp: Path, job_id: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((tmp / "submitit").glob(f"{job_id}/*_log.*")))


def assert_completed(jobs, job_id: str) -> None:
    state = wait_done(jobs["cluster"], job_id)
    assert state == "COMPLETED", f"job {job_id}: {state}\n{job_logs(jobs['tmp'], job_id)[-4000:]}"
    assert jobs["cluster"].completed_states(job_id)[-1] == "COMPLETED"  # sacct -c: the jobcomp file


def restarts(cluster, job_id: str) -> int:
    out = cluster.run("scontrol", "show", "job", "-o", job_id).stdout
    return int(re.search(r"\bRestarts=(\d+)", out).group(1))


def wait_holding(jobs, name: str, timeout_s: float = 240) -> None:
    """Until the job's first run holds at step 3: last.pth.tar of step 2 is written."""
    marker = jobs["tmp"] / "out" / name / "holding"
    deadline = time.time() + timeout_s
    while not marker.exists():
        state = jobs["cluster"].job_state(jobs["ids"][name])
        assert state not in DONE and time.time() < deadline, (
            f"{name}: {state}\n{job_logs(jobs['tmp'], jobs['ids'][name])}"
        )
        time.sleep(0.5)


def assert_same_weights_as_uninterrupted(jobs, name: str) -> None:
    assert_completed(jobs, jobs["ids"]["one"])
    out = jobs["tmp"] / "out"
    a, b = load(out / "one" / "last.pth.tar"), load(out / name / "last.pth.tar")
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert sorted(r["step"] for r in read_steps(out / name)) == list(range(1, STEPS + 1))  # each step once
    assert "continuing at epoch 0 after step" in (out / name / "train.log").read_text()
    names = {p.name for p in (out / name).iterdir()} - {"holding"}
    assert not [n for n in names if ".tmp-" in n], names  # nothing half-written left behind
    assert files(out / name) == files(out / "one")


def files(run: Path) -> set[str]:
    """The run folder's file names, less TensorBoard's (one per process, named by time and pid)."""
    return {p.name for p in run.iterdir() if not p.name.startswith("events.out.tfevents")} - {"holding"}


def test_preemption_signal_saves_requeues_and_resumes_to_the_same_weights(jobs):
    """`scancel --signal=USR2 --full JOBID` mid-training: the job stops at the next step boundary,
    saves, requeues itself (Restarts=1), resumes and ends like the uninterrupted job."""
    wait_holding(jobs, "preempt")
    job_id = jobs["ids"]["preempt"]
    jobs["cluster"].run("scancel", "--signal=USR2", "--full", job_id)
    assert_completed(jobs, job_id)
    assert restarts(jobs["cluster"], job_id) == 1
    logs = job_logs(jobs["tmp"], job_id)
    assert "stopped at global step 3" in logs and "this job is preempted" in logs, logs[-3000:]
    assert f"Requeued job {job_id} (3 remaining timeouts)" in logs  # a preemption is not a time-out
    assert_same_weights_as_uninterrupted(jobs, "preempt")


def test_scontrol_requeue_from_outside_resumes_from_last_checkpoint(jobs):
    """`scontrol requeue JOBID`: Slurm kills the run (no signal the job acts on) and starts it again;
    it resumes from last.pth.tar of step 2."""
    wait_holding(jobs, "requeue")
    job_id = jobs["ids"]["requeue"]
    jobs["cluster"].run("scontrol", "requeue", job_id)
    assert_completed(jobs, job_id)
    assert restarts(jobs["cluster"], job_id) == 1
    assert "continuing at epoch 0 after step 2 " in (jobs["tmp"] / "out" / "requeue" / "train.log").read_text()
    assert_same_weights_as_uninterrupted(jobs, "requeue")


def test_scancel_then_the_same_submit_command_resumes(jobs, monkeypatch):
    """A plain `scancel JOBID`, then the same submit command (a new job) resumes from last.pth.tar."""
    wait_holding(jobs, "cancel")
    job_id = jobs["ids"]["cancel"]
    jobs["cluster"].run("scancel", job_id)
    assert wait_done(jobs["cluster"], job_id) == "CANCELLED"
    (jobs["tmp"] / "fast-cancel").touch()  # the new job's first run goes at full speed
    use_env(monkeypatch, jobs["env"])
    hook = HoldFirstRun(from_step=3, fast_marker=str(jobs["tmp"] / "fast-cancel"))
    argv = CPU + ["--job-dir", jobs["tmp"] / "submitit" / "%j", "--"]
    again = hooked_submit(argv + TRAIN + ["--output", jobs["tmp"] / "out", "--experiment", "cancel"], hook)
    assert again != job_id
    assert_completed(jobs, again)
    assert "continuing at epoch 0 after step 2 " in (jobs["tmp"] / "out" / "cancel" / "train.log").read_text()
    assert_same_weights_as_uninterrupted(jobs, "cancel")


def test_train_jobs_of_one_and_two_tasks_complete_where_the_docs_say(jobs):
    """submit.py prints the run folder and job id and returns; the jobs complete (scontrol and
    sacct -c); the run folder is --output/--experiment, the logs --job-dir/<id>_<task>_log.*."""
    tmp = jobs["tmp"]
    for name, tasks in (("one", 1), ("two", 2)):
        job_id = jobs["ids"][name]
        assert f"run folder: {tmp / 'out' / name}" in jobs["printed"][name]
        assert_completed(jobs, job_id)
        run = tmp / "out" / name
        for f in ("args.yaml", "summary.csv", "train.log", "last.pth.tar", "model_best.pth.tar"):
            assert (run / f).is_file(), f
        assert {r["rank"] for r in read_steps(run)} == set(range(tasks))  # one process group of N tasks
        for t in range(tasks):
            assert "Job completed successfully" in (tmp / "submitit" / job_id / f"{job_id}_{t}_log.out").read_text()
        assert (tmp / "submitit" / job_id / f"{job_id}_{tasks - 1}_log.err").is_file()
        assert not (tmp / "submitit" / job_id / f"{job_id}_{tasks}_log.out").exists()
        assert "gpus" not in (tmp / "submitit" / job_id / f"{job_id}_submission.sh").read_text()  # CPU-only


def test_eval_job_on_the_training_checkpoint(jobs, one_thread):
    """`submit.py --job eval` on the 1-task job's checkpoint writes the rows eval.py writes here."""
    from conftest import run_entry

    from snnet.evaluate.main import main as eval_main
    from snnet.evaluate.results import read_results

    tmp = jobs["tmp"]
    assert_completed(jobs, jobs["ids"]["one"])
    args = ["--resume", tmp / "out" / "one" / "last.pth.tar", "--dataset", "digits", "--workers", "0"]
    args += ["-b", "120", "--stitches", "0,5", "--log-interval", "0"]
    proc = subprocess.run(
        submit_cmd(tmp / "submitit", "--job", "eval", entry_args=args + ["--output", tmp / "eval"]),
        cwd=REPO, env=jobs["env"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (job_id,) = job_ids(proc.stdout)
    assert run_entry(eval_main, args + ["--device", "cpu", "--output", tmp / "eval-here"]) == 0
    assert_completed(jobs, job_id)
    there, here = read_results(tmp / "eval" / "stitches.csv"), read_results(tmp / "eval-here" / "stitches.csv")
    assert [r["cfg_id"] for r in there] == [0, 5]
    assert [r["top1"] for r in there] == [r["top1"] for r in here]


def test_lab_job_array_writes_every_cell_once(jobs):
    """`--job lab --array-tasks 2`: a Slurm array of 2 jobs, job i with --cell-shard i/2; together
    they write each of the 4 cells once."""
    ids = jobs["ids"]["lab"]
    assert len(ids) == 2 and ids[0].endswith("_0") and ids[1].endswith("_1")
    for job_id in ids:
        assert_completed(jobs, job_id)
    lab = jobs["tmp"] / "lab" / "lab"
    assert sorted(p.stem for p in (lab / "cells").glob("*.json")) == [f"cell-{c:04d}" for c in range(4)]
    trained = {}
    for i, job_id in enumerate(ids):
        log = job_logs(jobs["tmp"], job_id)
        assert f"(2 in shard {i}/2, 2 on this process, 0 already done)" in log, log[-2000:]
        (cells,) = re.findall(r"training \d+ cell\(s\) ([\d, ]+):", log)[-1:]
        trained[i] = [int(c) for c in cells.split(",")]
    assert trained == {0: [0, 2], 1: [1, 3]}  # each cell by one job, once


def test_a_preempted_lab_array_job_is_requeued_with_its_shard_and_keeps_its_cells(jobs):
    """Each job of a `--job lab --array-tasks 2` array (a lab.py stand-in, tests/submit_hooks.py)
    gets the preemption signal after its first cell: Slurm requeues it with the same --cell-shard,
    and it skips the cell it wrote."""
    folder = jobs["tmp"] / "standin"
    for job_id in jobs["ids"]["standin"]:
        assert_completed(jobs, job_id)
        assert restarts(jobs["cluster"], job_id) == 1
    shards = {c: (folder / f"cell-{c}.done").read_text() for c in range(5)}
    assert shards == {0: "0/2", 1: "1/2", 2: "0/2", 3: "1/2", 4: "0/2"}
    assert sorted((folder / "computed").read_text().split()) == ["0", "1", "2", "3", "4"]  # none twice
    assert [(folder / f"attempts-{i}").read_text() for i in (0, 1)] == ["xx", "xx"]


def test_time_limit_requeues_and_resumes_to_the_same_weights(jobs):
    """`--timeout 1 --signal-delay 5`, a first run held past the limit: Slurm's signal before the
    limit makes the job save, requeue itself and resume to the uninterrupted job's weights."""
    job_id = jobs["ids"]["timelimit"]
    assert "#SBATCH --time=1" in (jobs["tmp"] / "submitit" / job_id / f"{job_id}_submission.sh").read_text()
    assert_completed(jobs, job_id)
    assert restarts(jobs["cluster"], job_id) >= 1
    logs = job_logs(jobs["tmp"], job_id)
    assert "this job is timed-out" in logs and f"Requeued job {job_id} (2 remaining timeouts)" in logs, logs[-3000:]
    assert_same_weights_as_uninterrupted(jobs, "timelimit")


def test_bad_slurm_submissions_are_one_line_and_submit_nothing(jobs, tmp_path, capsys, monkeypatch):
    """An unknown partition, a timeout below the signal delay, a machine without Slurm."""
    from conftest import run_entry
    from test_failures import one_error_line

    use_env(monkeypatch, jobs["env"])
    before = jobs["cluster"].run("squeue", "-h", "-o", "%i").stdout
    train = TRAIN + ["--output", tmp_path / "out"]
    cases = [
        (["--partition", "nope"], "--partition nope: this cluster has no such partition (it has: debug)"),
        (["--timeout", "1", "--signal-delay", "60"], "--timeout 1 (minutes) is not above --signal-delay 60"),
        (["--device", "cpu", "--ngpus", "2"], "--device cpu asks for no GPUs"),
    ]
    for options, message in cases:
        argv = CPU + ["--job-dir", str(tmp_path / "jobs" / "%j"), *options, "--", *map(str, train)]
        assert message in one_error_line(run_entry(launch.main, argv), capsys), options
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch anywhere
    argv = CPU + ["--job-dir", str(tmp_path / "jobs" / "%j"), "--", *map(str, train)]
    assert "there is no Slurm on this machine" in one_error_line(run_entry(launch.main, argv), capsys)
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-such-slurm.conf"))  # Slurm's programs, no cluster
    assert "SLURM_CONF=" in one_error_line(run_entry(launch.main, argv), capsys)
    (tmp_path / "empty.conf").write_text("")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "empty.conf"))
    assert "Slurm does not answer (sinfo: " in one_error_line(run_entry(launch.main, argv), capsys)
    monkeypatch.undo()
    assert jobs["cluster"].run("squeue", "-h", "-o", "%i").stdout == before
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "out").exists()
