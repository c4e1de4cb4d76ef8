"""A one-node Slurm on this machine, for the tests of submit.py (tests/test_slurm.py).

Debian's ``slurm-wlm`` and ``munge`` (``make test`` installs them as root: scripts/system_deps.sh),
started from a temporary folder with a configuration of their own: this host as controller and
node, its real CPU count and memory, no GPUs, free ports, its own munge socket and key, so that it
never talks to another Slurm or munge on the machine. Every daemon is started in the foreground by
pid and stopped by pid. tests/slurm.conf is the configuration this writes, kept as an example.

    python tests/slurm_cluster.py /tmp/slurm   # brings one up by hand; Ctrl-C stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scancel", "scontrol", "sacct")
PARTITION = "debug"

# {placeholders} are filled by write_config; tests/slurm.conf is this with this machine's values.
TEMPLATE = """\
# A one-node Slurm: this host is the controller and the only compute node (no GPUs).
# Written by tests/slurm_cluster.py for the tests of submit.py; to try submit.py on one machine,
# see docs/slurm.md ("One machine as a Slurm cluster").
ClusterName=snnet-test
SlurmctldHost={host}({addr})
SlurmUser={user}
SlurmdUser=root
# Ports of its own, so that it never talks to another Slurm on the machine.
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
# munge on its own socket and key (tests/slurm_cluster.py starts that munged too)
AuthType=auth/munge
# cred_expire: a requeued job waits this long before it starts again (default 120 s)
AuthInfo=socket={folder}/munge/munge.socket,cred_expire=15
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
# No cgroups: processes are tracked through /proc, tasks are not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Accounting without slurmdbd: finished jobs go to a text file, which `sacct -c` reads.
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
# Finished jobs stay visible to scontrol / squeue for an hour; jobs may be requeued.
MinJobAge=3600
JobRequeue=1
KillWait=5
ReturnToService=2
SchedulerParameters=sched_interval=2
SchedulerType=sched/backfill
MpiDefault=none
NodeName={node} NodeAddr={addr} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
# OverSubscribe: up to 4 jobs share a CPU (the tests run their jobs at once on a 2-core machine)
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


# tests/slurm.conf, the documented example: what this writes on a 2-CPU machine named "myhost"
# (the tests pick free ports; the example names two fixed ones).
EXAMPLE = dict(host="myhost", node="myhost", addr="127.0.0.1", user="root", ctld_port=6917, slurmd_port=6918,
               folder="/tmp/snnet-slurm", cpus=2, memory_mb=21000, partition=PARTITION)  # fmt: skip


def example_config() -> str:
    return TEMPLATE.format(**EXAMPLE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def memory_mb() -> int:
    """This machine's memory in MB, less a little, as slurmd must see at least RealMemory."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 * 9 // 10
    raise RuntimeError("no MemTotal in /proc/meminfo")


def config_values(folder: Path) -> dict:
    import getpass

    return dict(
        host=socket.gethostname().split(".")[0],
        node=socket.gethostname().split(".")[0],
        addr="127.0.0.1",
        user=getpass.getuser(),
        ctld_port=free_port(),
        slurmd_port=free_port(),
        folder=str(folder),
        cpus=len(os.sched_getaffinity(0)),  # nproc: the CPUs this process may use
        memory_mb=memory_mb(),
        partition=PARTITION,
    )


@dataclass
class SlurmCluster:
    """A running one-node Slurm: ``env`` points Slurm's commands at it (SLURM_CONF, MUNGE socket)."""

    folder: Path
    conf: Path
    env: dict
    procs: dict = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def logs(self, lines: int = 15) -> str:
        out = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            log = self.folder / name
            if log.exists():
                out.append(f"--- {name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def job_state(self, job_id: str) -> str:
        """The job's state as scontrol shows it (finished jobs stay there: MinJobAge)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return next(f.split("=", 1)[1] for f in out.split() if f.startswith("JobState="))

    def completed_states(self, job_id: str) -> list[str]:
        """Every finished run of the job as ``sacct -c`` (the jobcomp file) records it."""
        out = self.run("sacct", "-c", "-n", "-P", "-j", str(job_id), "-o", "JobID,State").stdout
        return [line.split("|")[1] for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        """Cancel every job (slurmd leaves running job steps behind when it stops), wait for them
        to end, then stop every daemon this started, by its pid: TERM, then KILL after 10 s."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            import getpass

            self.run("scancel", "--full", "-u", getpass.getuser(), check=False)
            deadline = time.time() + 60
            while time.time() < deadline:
                proc = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20)
                if proc.returncode != 0 or not proc.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_config(folder: Path) -> Path:
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    conf = folder / "slurm.conf"
    conf.write_text(TEMPLATE.format(**config_values(folder)))
    return conf


def start_munged(folder: Path, procs: dict) -> None:
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    m = folder / "munge"
    procs["munged"] = subprocess.Popen(
        [_program("munged"), "--foreground", "--force", f"--socket={m}/munge.socket", f"--key-file={key}"]
        + [f"--pid-file={m}/munged.pid", f"--log-file={folder}/munged.log", f"--seed-file={m}/munged.seed"],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "munged.err", "w"),
    )
    _wait(lambda: (m / "munge.socket").exists(), 20, "munged made no socket", procs, folder)


def start_cluster(folder: Path) -> SlurmCluster:
    """Write the configuration, start munged, slurmctld and slurmd in ``folder``, and return once
    ``sinfo`` shows the node idle and ``srun hostname`` ran; the daemons are stopped on failure."""
    missing = missing_programs()
    if missing:
        raise RuntimeError(
            f"the Slurm tests need {', '.join(missing)}: run 'make system-deps' as root "
            "(or: sudo apt-get install slurm-wlm munge)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    conf = write_config(folder)
    env = {**os.environ, "SLURM_CONF": str(conf), "MUNGE_SOCKET": str(folder / "munge" / "munge.socket")}
    for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and v != "SLURM_CONF"]:
        del env[var]  # a test run inside a Slurm job must not hand its job's settings on
    cluster = SlurmCluster(folder, conf, env)
    try:
        start_munged(folder, cluster.procs)
        for name in ("slurmctld", "slurmd"):
            cluster.procs[name] = subprocess.Popen(
                [_program(name), "-D", "-f", str(conf)] + (["-i"] if name == "slurmctld" else []),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(folder / f"{name}.err", "w"),
                start_new_session=True,  # Ctrl-C of pytest reaches the daemons only through stop()
            )
        _wait(lambda: _node_idle(cluster), 60, "the node never became idle", cluster.procs, folder)
        out = cluster.run("srun", "-N1", "-n1", "hostname", timeout=60).stdout.strip()
        if out != socket.gethostname().split(".")[0] and out != socket.gethostname():
            raise RuntimeError(f"srun hostname printed {out!r}")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(cluster: SlurmCluster) -> bool:
    proc = cluster.run("sinfo", "-h", "-o", "%t", check=False, timeout=20)
    return proc.returncode == 0 and proc.stdout.strip() == "idle"


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _wait(ready, timeout_s: float, why: str, procs: dict, folder: Path) -> None:
    deadline = time.time() + timeout_s
    while not ready():
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead or time.time() > deadline:
            errs = "".join((folder / f"{n}.err").read_text()[-1500:] for n in procs if (folder / f"{n}.err").exists())
            raise RuntimeError(f"{why} (ended: {dead}): {errs}\n{SlurmCluster(folder, folder, {}).logs()}")
        time.sleep(0.3)


if __name__ == "__main__":
    cluster = start_cluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/snnet-slurm").resolve())
    print(f"export SLURM_CONF={cluster.conf}\nsinfo:\n{cluster.run('sinfo').stdout}Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
