#!/usr/bin/env python3
"""train.py with test-only step callbacks, for tests that run training in another process
(torchrun workers): the library reads no test hooks, the tests install them here.

    hooked_train.py [--kill-at-step N] [train.py args...]

``--kill-at-step N``: the last rank SIGKILLs itself in its first attempt (torchrun's
TORCHELASTIC_RESTART_COUNT 0) when about to train global step N, after the forward: a worker
dying in the middle of an epoch.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snnet.train.main import main  # noqa: E402


def kill_at_step(step: int):
    def callback(trainer, global_step: int, loss: torch.Tensor) -> None:
        info = trainer.info
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and info.rank == info.world_size - 1 and global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def nan_at_step(step: int):
    """A NaN loss at global step ``step`` (as a diverging run would give)."""

    def callback(trainer, global_step: int, loss: torch.Tensor) -> Optional[torch.Tensor]:
        return loss * float("nan") if global_step == step else None

    return callback


if __name__ == "__main__":
    hooks = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    hooks.add_argument("--kill-at-step", type=int, default=0)
    known, rest = hooks.parse_known_args()
    callbacks = [kill_at_step(known.kill_at_step)] if known.kill_at_step else []
    sys.exit(main(rest, step_callbacks=callbacks))
