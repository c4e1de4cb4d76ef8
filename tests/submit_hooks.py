"""Test-only step callbacks and a lab.py stand-in for submit.py's jobs (tests/test_submit.py). The
job's tasks unpickle them, so this module stays light: no pytest, no test modules."""

from __future__ import annotations

import argparse
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SignalOnceAtStep:
    """Step callback: at global step ``steps[rank]`` the task sends itself the preemption signal
    (as Slurm does to every task), once per rank (a marker file in ``marker_dir``)."""

    steps: tuple
    marker_dir: str

    def __call__(self, trainer, global_step: int, loss) -> None:
        rank = trainer.info.rank
        marker = Path(self.marker_dir) / f"signalled-{rank}"
        if global_step == self.steps[rank] and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGUSR2)


@dataclass
class StandInLab:
    """A lab.py stand-in: owns the cells ``c`` with ``c % K == i`` for ``--cell-shard i/K``, writes
    ``cell-c.done`` for each and skips those already written; in its first attempt it is preempted
    (sends itself the signal) after its first cell."""

    cells: int
    folder: str

    def __call__(self, argv: list[str]) -> int:
        parser = argparse.ArgumentParser()
        parser.add_argument("--cell-shard")
        i, k = map(int, parser.parse_known_args(argv)[0].cell_shard.split("/"))  # and --device cpu
        folder = Path(self.folder)
        with open(folder / f"attempts-{i}", "a") as f:
            f.write("x")
        for c in range(i, self.cells, k):
            done = folder / f"cell-{c}.done"
            if done.exists():
                continue
            with open(folder / "computed", "a") as f:
                f.write(f"{c}\n")
            done.write_text(f"{i}/{k}")
            if (folder / f"attempts-{i}").read_text() == "x":
                os.kill(os.getpid(), signal.SIGUSR2)  # submitit's handler: requeue with the same shard
        return 0


@dataclass
class Heartbeat:
    """A job that writes its pid to ``folder/pid-<rank>``, then a heartbeat file until killed."""

    folder: str

    def __call__(self, argv: list[str]) -> int:
        import time

        folder = Path(self.folder)
        (folder / f"pid-{os.environ['RANK']}").write_text(str(os.getpid()))
        while True:
            (folder / f"beat-{os.environ['RANK']}").write_text(str(time.time()))
            time.sleep(0.2)


@dataclass
class HoldFirstRun:
    """Step callback: a Slurm job's first run holds at global step ``from_step`` (writing
    ``holding`` into the run folder) until it gets the preemption signal or is killed, at most
    ``limit_s``; a requeued run (SLURM_RESTART_COUNT > 0), and any run once ``fast_marker``
    exists, goes on at full speed. Holding changes no weights."""

    from_step: int
    fast_marker: str
    limit_s: float = 300.0

    def __call__(self, trainer, global_step: int, loss) -> None:
        import time

        if os.environ.get("SLURM_RESTART_COUNT", "0") != "0" or Path(self.fast_marker).exists():
            return
        if global_step < self.from_step:
            return
        (Path(trainer.out_dir) / "holding").touch()
        deadline = time.time() + self.limit_s
        # the trainer's stop_check under submit.py (snnet.launch.PreemptionFlag) records the signal
        while not getattr(trainer.stop_check, "signalled", False) and time.time() < deadline:
            time.sleep(0.2)
