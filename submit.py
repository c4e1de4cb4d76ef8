#!/usr/bin/env python3
"""Run train.py, eval.py or lab.py as a Slurm job (submitit), or as local tasks on this machine.

    python submit.py --nodes 2 --ngpus 8 --partition gpu -- -c configs/deit_ti_s_b.yaml --data-dir /data/imagenet
    python submit.py --cluster local --nodes 1 --ngpus 2 -- <train.py arguments>
    python submit.py --job eval --ngpus 8 -- <eval.py arguments>
    python submit.py --device cpu --tasks-per-node 2 --cpus-per-task 1 -- <train.py arguments>   # a CPU-only cluster

A preempted or timed-out training job saves its current step and is requeued; the requeued job
resumes exactly. See ``snnet/launch.py`` and docs/slurm.md.
"""

import sys
from pathlib import Path

from snnet.launch import main

if __name__ == "__main__":
    sys.exit(main(scripts_dir=Path(__file__).resolve().parent))
