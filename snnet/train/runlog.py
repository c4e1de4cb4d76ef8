"""Run files written only once the run is known to start.

A rerun that is then refused (a checkpoint of other shapes, a bad option found while building)
must leave the run folder as it was, and a refused first run must leave no folder at all. So
train.log is buffered in memory (:class:`DeferredFileLog`) until :func:`start_run_files`, which the
trainer calls once every check has passed: it creates the folder, writes ``args.yaml`` and
flushes the buffered lines to ``train.log``.
"""

from __future__ import annotations

import logging
import logging.handlers
from argparse import Namespace
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"


class DeferredFileLog(logging.handlers.MemoryHandler):
    """Holds log records until :meth:`start` names the file; then writes them and every later one."""

    def __init__(self) -> None:
        super().__init__(capacity=1 << 30, flushLevel=logging.CRITICAL + 1, target=None)
        self.setLevel(logging.INFO)

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return self.target is not None  # write through once started, buffer before

    def start(self, path: Path) -> None:
        target = logging.FileHandler(path)
        target.setFormatter(logging.Formatter(FORMAT))
        self.setTarget(target)
        self.flush()

    def close(self) -> None:
        super().close()
        if self.target is not None:
            self.target.close()


def start_run_files(logger: logging.Logger, out_dir: Path, args: Namespace, primary: bool) -> None:
    """The run starts: create ``out_dir``, and on the primary process take the folder's lock (one
    train.py per run folder, :mod:`snnet.io.lock`), write ``args.yaml`` and start ``train.log``
    (with the lines logged so far)."""
    from ..config import save_args_yaml
    from ..io.lock import hold_folder

    out_dir.mkdir(parents=True, exist_ok=True)
    if not primary:
        return
    hold_folder(out_dir, "--output/--experiment")
    save_args_yaml(args, out_dir / "args.yaml")
    for h in logger.handlers:
        if isinstance(h, DeferredFileLog) and h.target is None:
            h.start(out_dir / "train.log")
