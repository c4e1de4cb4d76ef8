"""submit.py: train.py, eval.py or lab.py as a job of submitit (Slurm, or this machine), with
exact resume after preemption or a time limit.

    python submit.py --nodes 2 --ngpus 8 --partition gpu --timeout 1440 -- -c configs/deit_ti_s_b.yaml ...
    python submit.py --cluster local --nodes 1 --ngpus 2 -- <train.py arguments>

Each task of the job is one process of the usual process group: :class:`Task` exports submitit's
job environment as torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), which :func:`snnet.distributed.init_distributed` reads, and runs the
entry's ``main`` in-process.

Preemption and time limits
--------------------------
Slurm sends USR2 (``SUBMITIT_PREEMPT_SIGNAL``) to every task some time before the limit, or on
preemption; submitit's handler would checkpoint and requeue from inside the signal handler, in
the middle of a step. A training task replaces it by :class:`PreemptionFlag`, which only records
the signal; at each step boundary the trainer asks the flag, the ranks agree (a max over ranks,
on a gloo group of its own, read one step after it is started so that no step waits for it), and
on the agreed step every rank saves the exact-resume ``last.pth.tar``
(:class:`snnet.train.trainer.TrainingInterrupted`). Rank 0 then calls submitit's handler, which
requeues the job with the same arguments (:meth:`Task.checkpoint`); the requeued job finds
``last.pth.tar`` in the run folder (``--resume auto``) and continues exactly. eval.py and lab.py
jobs keep submitit's handler: they are requeued as they are, and skip the networks (sweep chunks)
or cells already written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from submitit import AutoExecutor, JobEnvironment
from submitit.core.utils import DelayedSubmission
from submitit.helpers import Checkpointable, TorchDistributedEnvironment

from .distributed import die_with, die_with_parent
from .errors import ConfigError, OneLineArgumentParser, exit_on_user_error

_logger = logging.getLogger("submit")

JOBS = ("train", "eval", "lab")


def build_submit_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="submit.py",
        description="Run train.py / eval.py / lab.py as a submitit job: submit.py [options] -- <their arguments>",
    )
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="slurm; local (tasks on this machine); debug (in this process). Default: slurm when sbatch exists, else local")  # fmt: skip
    p.add_argument("--job", choices=JOBS, default="train", help="the script the job runs (default train)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="cpu: no GPUs, --tasks-per-node gloo tasks per node (also passed to the job's script); default cuda")  # fmt: skip
    p.add_argument("--ngpus", type=int, default=None,
                   help="GPUs per node, one task (process) each (default 1; 0 or --device cpu: none)")  # fmt: skip
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="tasks (processes) per node: --ngpus with GPUs, else default 1")  # fmt: skip
    p.add_argument("--cpus-per-task", type=int, default=8, help="Slurm CPUs per task (default 8)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--qos", help="Slurm quality of service")
    p.add_argument("--constraint", help="Slurm node constraint (e.g. a GPU type)")
    p.add_argument("--timeout", type=int, default=4320, help="time limit in minutes (default 4320: 3 days)")
    p.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit at which Slurm sends the requeue signal (default 120)")  # fmt: skip
    p.add_argument("--job-dir", default="output/submitit/%j",
                   help="submitit's folder: job pickles and the logs <job id>_<task>_log.out/.err (%%j: job id)")  # fmt: skip
    p.add_argument("--array-tasks", type=int, default=1,
                   help="--job lab: an array of K jobs, job i running lab.py --cell-shard i/K (default 1)")  # fmt: skip
    return p


@exit_on_user_error
def main(
    argv: Optional[Sequence[str]] = None,
    scripts_dir: Optional[Path] = None,
    entries: Optional[Mapping[str, Callable[..., int]]] = None,
    step_callbacks: Sequence[Callable] = (),
) -> int:
    """submit.py. ``scripts_dir`` holds lab.py; ``entries`` replace the job table (tests pass
    stand-ins); ``step_callbacks`` go to the trainer of a train job (see :mod:`snnet.train.trainer`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_submit_parser().parse_args(argv[:split])
    entry_argv = argv[split + 1 :]
    check_args(args)
    entry_argv = resolve_device(args, entry_argv)
    cluster = args.cluster or AutoExecutor.which()
    check_slurm_only(args, cluster)
    if cluster == "slurm":
        check_slurm(args)
    entry = (entries or {}).get(args.job)
    if entry is None:  # the real script: its arguments are checked before the job waits in a queue
        entry = default_entry(args.job, scripts_dir)
        check_entry_args(args, entry_argv)
    if args.job == "train":
        entry_argv, run_dir = pin_experiment(entry_argv)
        print(f"run folder: {run_dir}", flush=True)
    tasks = make_tasks(args, entry, entry_argv, step_callbacks)
    executor = make_executor(args)
    if executor.cluster == "local":  # this command waits for the job: the job ends with it (SIGKILL too)
        for task in tasks:
            task.watch_pid = os.getpid()
    jobs = submit_tasks(executor, tasks)
    for job in jobs:
        print(f"job {job.job_id}: logs {Path(job.paths.stdout).parent}/{job.job_id}_<task>_log.out/.err", flush=True)
    if executor.cluster == "slurm":
        return 0
    return wait_for(jobs)


def check_args(args: argparse.Namespace) -> None:
    for name, low in (("nodes", 1), ("ngpus", 0), ("tasks_per_node", 1), ("array_tasks", 1), ("timeout", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if args.device == "cpu" and args.ngpus:
        raise ConfigError(f"--device cpu asks for no GPUs: leave out --ngpus {args.ngpus} (or use --ngpus 0)")
    if args.device == "cuda" and args.ngpus == 0:
        raise ConfigError("--device cuda needs GPUs: use --ngpus N >= 1, or --device cpu")
    ngpus, tasks = gpus_and_tasks(args)
    if ngpus and args.tasks_per_node not in (None, ngpus):
        raise ConfigError(
            f"--tasks-per-node {args.tasks_per_node} with --ngpus {ngpus}: a GPU job runs one task per GPU "
            "(leave out --tasks-per-node, or use --device cpu)"
        )
    if args.cluster in ("local", "debug") and args.nodes > 1:
        raise ConfigError(f"--cluster {args.cluster} runs on this machine: use --nodes 1, or --cluster slurm")
    if args.cluster == "debug" and tasks > 1:
        raise ConfigError(
            "--cluster debug runs one task in this process: use --ngpus 1 / --tasks-per-node 1, or --cluster local"
        )
    if args.array_tasks > 1 and args.job != "lab":
        raise ConfigError(f"--array-tasks splits lab.py's cells: use it with --job lab, not --job {args.job}")


def gpus_and_tasks(args: argparse.Namespace) -> tuple[int, int]:
    """GPUs and tasks per node: --ngpus GPUs (1 unless --device cpu) and one task each; no GPUs:
    --tasks-per-node tasks (1)."""
    ngpus = args.ngpus if args.ngpus is not None else (0 if args.device == "cpu" else 1)
    return ngpus, ngpus or args.tasks_per_node or 1


def resolve_device(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The job script's arguments on a CPU job (--device cpu, or --ngpus 0): ``--device cpu`` added
    when they do not name a device, refused when they name another."""
    if gpus_and_tasks(args)[0]:
        return argv
    named = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--device"]
    named += [a.split("=", 1)[1] for a in argv if a.startswith("--device=")]
    if any(d != "cpu" for d in named):
        raise ConfigError(f"the job asks for no GPUs, and its script's arguments say --device {named[-1]}: use cpu")
    return argv if named else argv + ["--device", "cpu"]


def check_slurm(args: argparse.Namespace) -> None:
    """Refuse, before anything is submitted, a Slurm job that cannot be submitted here: no Slurm
    on this machine, a controller that does not answer, a partition the cluster does not have."""
    import shutil
    import subprocess

    if args.timeout * 60 <= args.signal_delay:
        raise ConfigError(
            f"--timeout {args.timeout} (minutes) is not above --signal-delay {args.signal_delay} (seconds): "
            "the requeue signal would come before the job runs; raise --timeout or lower --signal-delay"
        )
    if shutil.which("sbatch") is None:
        raise ConfigError("--cluster slurm: there is no Slurm on this machine (no sbatch on PATH): use --cluster local")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # Slurm's programs would retry it for a minute
        raise ConfigError(f"--cluster slurm: SLURM_CONF={conf} is not a file: point it at the cluster's slurm.conf")
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"--cluster slurm: sinfo failed ({e}): is Slurm (SLURM_CONF) set up here?") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"--cluster slurm: Slurm does not answer (sinfo: {why}): is SLURM_CONF right?")
    partitions = sorted(set(proc.stdout.split()))
    if args.partition and args.partition not in partitions:
        raise ConfigError(
            f"--partition {args.partition}: this cluster has no such partition (it has: {', '.join(partitions)})"
        )


def submit_tasks(executor: AutoExecutor, tasks: list) -> list:
    """Submit the tasks (several: one job array); a submission Slurm refuses is one error line."""
    from submitit.core.utils import FailedJobError

    try:
        with executor.batch() if len(tasks) > 1 else contextlib.nullcontext():
            return [executor.submit(task) for task in tasks]
    except FailedJobError as e:
        lines = [ln for ln in str(e).splitlines() if "error" in ln.lower()] or str(e).splitlines() or ["?"]
        raise ConfigError(f"Slurm refused the job: {lines[-1].strip()}") from None


SLURM_ONLY = ("partition", "account", "qos", "constraint", "signal_delay", "cpus_per_task")


def check_slurm_only(args: argparse.Namespace, cluster: str) -> None:
    """Refuse Slurm's options when the job runs on this machine (``cluster`` is submitit's choice:
    ``--cluster``, or slurm when sbatch exists): the local executor would drop them silently."""
    from .config import Needs, builtin_defaults, refuse_without_effect

    why = f"is a Slurm setting and the job runs on this machine (--cluster {cluster})"
    rules = [Needs(dest, lambda a: cluster == "slurm", why) for dest in SLURM_ONLY]
    refuse_without_effect(args, rules, builtin_defaults(build_submit_parser()))


def check_entry_args(args: argparse.Namespace, argv: list[str]) -> None:
    """Refuse, before submitting, what the job's script would refuse at its start without data or
    weights: its flags and config, an output folder that is a file or that another process is
    writing (:mod:`snnet.io.lock`). train.py's are checked by :func:`pin_experiment`."""
    from .io.lock import LOCK_NAME, check_folder_free
    from .io.paths import check_output_dir

    if args.job == "train":
        return
    if args.job == "eval":
        from .evaluate.main import parse_eval_config

        cfg = parse_eval_config(argv)
        if cfg.out_dir:
            check_folder_free(cfg.out_dir, "--output")
    else:
        from .lab.main import build_lab_parser, shard_lock
        from .lab.spec import load_lab_spec

        opts = build_lab_parser().parse_args(argv)
        spec = load_lab_spec(opts.config)
        out_dir = Path(opts.output) / (opts.experiment or Path(spec.path).stem)
        check_output_dir(out_dir, "--output/--experiment")
        k = args.array_tasks
        for name in [LOCK_NAME] + [shard_lock((i, k)) for i in range(k)]:
            check_folder_free(out_dir, "--output/--experiment", name)


def default_entry(job: str, scripts_dir: Optional[Path]) -> Callable[..., int]:
    """The ``main`` a job runs: train -> snnet.train.main, eval -> snnet.evaluate.main, lab -> lab.py's."""
    if job == "train":
        from .train.main import main as train_main

        return train_main
    if job == "eval":
        from .evaluate.main import main as eval_main

        return eval_main
    lab = Path(scripts_dir or ".") / "lab.py"
    if not lab.is_file():
        raise ConfigError(f"--job lab runs lab.py, which is not in this checkout ({lab}): use --job train or eval")
    return ScriptMain(str(lab.resolve()))


def pin_experiment(argv: list[str]) -> tuple[list[str], Path]:
    """train.py's arguments with ``--experiment`` named, and the run folder. The default name
    carries the date, and a requeued job must find the same folder to resume from; parsing here
    also refuses bad arguments, and a run folder that is a file or that another process is
    writing (:mod:`snnet.io.lock`), before the job waits in a queue."""
    from .cli import build_train_parser
    from .config import parse_args_with_config
    from .io.lock import check_folder_free
    from .io.paths import check_output_dir
    from .run_config import require_anchors
    from .train.main import default_experiment

    args, _ = parse_args_with_config(build_train_parser(), argv)
    require_anchors(args.anchors)
    experiment = args.experiment
    if not experiment:
        experiment = default_experiment(args)
        argv = argv + ["--experiment", experiment]
    run_dir = Path(args.output or "./output/train") / experiment
    check_output_dir(run_dir, "--output/--experiment")
    check_folder_free(run_dir, "--output/--experiment")
    return argv, run_dir


def make_tasks(args: argparse.Namespace, entry: Callable, argv: list[str], step_callbacks: Sequence) -> list[Task]:
    """One task function per job: a train job stops at a step boundary when preempted; lab jobs
    get ``--cell-shard i/K``, one per array element."""
    if args.job == "train":
        return [Task(entry, argv, {"step_callbacks": list(step_callbacks)}, stop_at_step_boundary=True)]
    if args.job == "lab":
        if "--cell-shard" in argv:
            raise ConfigError("submit.py sets --cell-shard from --array-tasks: leave it out of lab.py's arguments")
        k = args.array_tasks
        return [Task(entry, argv + ["--cell-shard", f"{i}/{k}"]) for i in range(k)]
    return [Task(entry, argv)]


def make_executor(args: argparse.Namespace) -> AutoExecutor:
    ngpus, tasks = gpus_and_tasks(args)
    try:
        executor = AutoExecutor(folder=args.job_dir, cluster=args.cluster)
        params: dict[str, Any] = dict(
            name=f"snnet-{args.job}",
            timeout_min=args.timeout,
            nodes=args.nodes,
            tasks_per_node=tasks,
            cpus_per_task=args.cpus_per_task,
            slurm_signal_delay_s=args.signal_delay,
            slurm_array_parallelism=args.array_tasks,
            # the batch shell outlives a USR2 sent to the whole job (scancel --signal=USR2 --full):
            # bash would end on it, and the job with it, before the tasks save and requeue
            slurm_setup=["trap 'true' USR2"],
        )
        if ngpus:  # a CPU-only cluster refuses any GPU request, even of 0
            params["gpus_per_node"] = ngpus
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(args, key):
                params[f"slurm_{key}"] = getattr(args, key)
        executor.update_parameters(**params)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"submitit refused the job: {e}") from None
    return executor


def wait_for(jobs: list) -> int:
    """Wait for local / debug jobs; 0 when every task succeeded, else one line per failed job
    (the last line of its first task log that has one: the entry's ``error: ...`` or exception)."""
    failed = 0
    for job in jobs:
        try:
            job.results()
        except Exception:  # the task's traceback or error line is in its log
            failed += 1
            logs = sorted(Path(job.paths.stderr).parent.glob(f"{job.job_id}_*_log.err"))
            lines = [ln for log in logs for ln in log.read_text().strip().splitlines()[-1:]]
            why = next((ln for ln in lines if "rror" in ln), lines[0] if lines else "no log")
            print(
                f"error: job {job.job_id} failed: {why.strip()} (logs: {Path(job.paths.stderr).parent})",
                file=sys.stderr,
            )
    return 1 if failed else 0


@dataclass(frozen=True)
class ScriptMain:
    """The ``main`` of an entry script (lab.py), loaded from its file inside the task."""

    path: str

    def __call__(self, argv: list[str], **kwargs: Any) -> int:
        spec = importlib.util.spec_from_file_location(f"snnet_entry_{Path(self.path).stem}", self.path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main(argv, **kwargs)


class Task(Checkpointable):
    """What each task of a job runs: the process group from submitit's job environment, then
    ``entry(argv, **kwargs)`` in this process. submitit calls :meth:`checkpoint` on preemption or
    time-out and requeues what it returns: the same task, which resumes from the run folder."""

    def __init__(
        self,
        entry: Callable[..., int],
        argv: Sequence[str],
        kwargs: Optional[Mapping[str, Any]] = None,
        stop_at_step_boundary: bool = False,
    ):
        self.entry, self.argv, self.kwargs = entry, list(argv), dict(kwargs or {})
        self.stop_at_step_boundary = stop_at_step_boundary
        self.watch_pid: Optional[int] = None  # a local job's submit.py: the task ends with it

    def __call__(self) -> int:
        from .train.trainer import TrainingInterrupted

        job_env = JobEnvironment()
        if job_env.cluster != "debug":
            die_with_parent()  # a killed job controller (or slurmstepd) takes its tasks along
        if self.watch_pid is not None:
            die_with(self.watch_pid)  # submitit keeps a local job's controller alive on purpose
        dist_env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        sig = JobEnvironment._usr_sig()
        requeue = signal.getsignal(sig)  # submitit's handler: checkpoint(), then requeue (None in debug)
        kwargs = dict(self.kwargs)
        if self.stop_at_step_boundary and callable(requeue):
            flag = PreemptionFlag(Path(job_env.paths.submitted_pickle))
            signal.signal(sig, flag.on_signal)
            kwargs["stop_check"] = flag
        try:
            code = self.entry(list(self.argv), **kwargs)
        except TrainingInterrupted as e:
            print(f"{e}: requeueing", flush=True)
            if dist_env.rank == 0:
                requeue(sig, None)  # exits (requeued), or raises when the job may not be requeued
            flag.wait_for_requeue()
            sys.exit(-1)  # the requeued job starts every task again
        # a user error (exit 2) and submitit's requeue (exit) leave as SystemExit, without a result
        if code:
            raise RuntimeError(f"{self} returned {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """The requeued job: the same entry and arguments (``--resume auto`` finds last.pth.tar)."""
        task = Task(self.entry, self.argv, self.kwargs, self.stop_at_step_boundary)
        task.watch_pid = self.watch_pid
        return DelayedSubmission(task)

    def __repr__(self) -> str:
        return f"{getattr(self.entry, '__module__', self.entry)} {' '.join(self.argv)}"


class PreemptionFlag:
    """The trainer's ``stop_check`` under submitit: True at the first step boundary at which every
    rank knows that some rank got the preemption signal. Each boundary waits for the max over ranks
    started at the previous one and starts the next, on a gloo group of its own (CPU: no device
    sync), so every rank reads the same value at the same boundary, one step after the signal."""

    def __init__(self, submitted: Path) -> None:
        self.signalled = False
        self.pid = os.getpid()
        self.group: Any = None
        self.pending: Optional[tuple[Any, Any]] = None
        self.submitted = submitted  # the job's pickle, which rank 0 rewrites to requeue
        self.pickled_at = submitted.stat().st_mtime_ns if submitted.exists() else 0

    def wait_for_requeue(self, timeout_s: float = 60.0) -> None:
        """Return once rank 0 has pickled the requeued job: a task leaving before that could make
        Slurm end the job first (KillOnBadExit)."""
        deadline = time.time() + timeout_s
        while (
            time.time() < deadline and self.submitted.exists() and self.submitted.stat().st_mtime_ns == self.pickled_at
        ):
            time.sleep(0.2)

    def on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() == self.pid:  # forked DataLoader workers inherit the handler: only the task counts
            self.signalled = True

    def __call__(self, trainer: Any) -> bool:
        import torch
        import torch.distributed as dist

        if not trainer.info.distributed:
            return self.signalled
        if self.group is None:  # collective: every rank reaches its first step boundary
            self.group = dist.new_group(backend="gloo")
        if self.pending is not None:
            work, flag = self.pending
            work.wait()
            if flag.item() > 0:
                return True
        flag = torch.tensor([int(self.signalled)])
        self.pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True), flag)
        return False
