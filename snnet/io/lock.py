"""One process per output folder: a run folder, a sweep's results, a lab grid (per cell shard),
a composition's results.

A second process writing the same folder would interleave its checkpoints, tables and logs with
the first one's. So each entry point holds an exclusive ``flock`` on a lock file in the folder
while it writes there (:func:`hold_folder`), and refuses with one line when another process
holds it; before any work it checks that nobody holds it (:func:`check_folder_free`), so that a
refused second command costs seconds and writes nothing. The kernel drops a ``flock`` when its
process ends, SIGKILL included: a killed run never leaves a stale lock, and the same command
rerun takes the folder over at once. The lock file stays, empty (a refused command changes no
byte of it); it is created only where the command writes anyway.

Locks are released by :func:`released_locks`, which every entry point's ``main`` runs inside
(:func:`snnet.errors.exit_on_user_error`), so that a ``main`` called twice in one process (tests,
a requeued in-process job) starts clean.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".snnet.lock"
_held: dict[Path, int] = {}  # lock file -> open descriptor holding its flock


def _lock_path(folder: str | Path, name: str) -> Path:
    return Path(folder).absolute() / name


def _refusal(folder: str | Path, flag: str, path: Path) -> OSError:
    """EBUSY naming the folder: :func:`snnet.errors.exit_on_user_error` prints it as one line (an
    OSError, so that this module needs nothing of snnet and the wrapper can release the locks)."""
    reason = f"{flag} is in use by another process (lock {path.name}): wait for it to finish, or choose another {flag}"
    return OSError(errno.EBUSY, reason, str(folder))


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def check_folder_free(folder: str | Path, flag: str, name: str = LOCK_NAME) -> None:
    """Refuse when another process holds ``folder``'s lock; creates and changes nothing."""
    path = _lock_path(folder, name)
    if path in _held or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # unreadable: hold_folder will say why when the command gets there
    try:
        if not _try_lock(fd):
            raise _refusal(folder, flag, path)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def hold_folder(folder: str | Path, flag: str, name: str = LOCK_NAME) -> None:
    """Take ``folder``'s lock (creating the folder and the lock file) until :func:`released_locks`
    ends; refuse with one line when another process holds it."""
    path = _lock_path(folder, name)
    if path in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd):
        os.close(fd)
        raise _refusal(folder, flag, path)
    _held[path] = fd


def release_all() -> None:
    """Drop every lock this process holds."""
    while _held:
        _, fd = _held.popitem()
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def released_locks() -> Iterator[None]:
    """Run a command; the folder locks it took are released when it ends, however it ends."""
    try:
        yield
    finally:
        release_all()
