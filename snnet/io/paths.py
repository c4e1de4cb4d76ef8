"""Output paths that cannot destroy the user's files, and files written whole or not at all.

The rules every entry point applies before it does any work (one ``check_...`` per rule):

* an output that is one of the command's inputs is refused (:func:`check_not_an_input`): the
  command would destroy what it reads;
* an output file must not be an existing folder, and its folder must not be a file
  (:func:`check_output_file`); an output folder must not be an existing file
  (:func:`check_output_dir`);

and how every file is written: to a temporary name in the same folder, fsynced, then renamed
(:func:`snnet.io.checkpoint.atomic_write` for a file object, :func:`atomic_path` for writers that
want a path, :func:`write_text` for text), so that a full disk or a kill leaves either the
previous file or the complete new one, and never a temporary file after a failure it sees.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, Mapping, Optional

from ..errors import ConfigError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(output: Optional[str | Path], flag: str, inputs: Mapping[str, Optional[str | Path]]) -> None:
    """Refuse ``output`` (given by ``flag``) when it is the same file as one of ``inputs``
    (``{flag: path}``; a hard link or symlink counts as the same file)."""
    if not output:
        return
    out = Path(output)
    for what, path in inputs.items():
        if path and (_same_file(out, Path(path)) or out.resolve() == Path(path).resolve()):
            raise ConfigError(
                f"{flag} '{output}' is the {what} this command reads: writing it would destroy the input; "
                f"choose another {flag}"
            )


def _file_above(path: Path) -> Optional[Path]:
    """The nearest existing ancestor of ``path`` that is not a folder, if any."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_file(path: Optional[str | Path], flag: str) -> None:
    """Refuse an output file ``path`` that is an existing folder or lies under a file."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} '{path}' is a folder: give a file name (e.g. '{p / 'out'}{p.suffix}')")
    above = _file_above(p)
    if above is not None:
        raise ConfigError(f"{flag} '{path}' lies under '{above}', which is a file, not a folder: choose another path")


def check_output_dir(path: Optional[str | Path], flag: str) -> None:
    """Refuse an output folder ``path`` that is an existing file or lies under a file."""
    if not path:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} '{path}' is a file, not a folder: choose another {flag}")
    above = _file_above(p)
    if above is not None:
        raise ConfigError(f"{flag} '{path}' lies under '{above}', which is a file, not a folder: choose another path")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every OS can fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix: exporters read it) for a writer that takes
    a file name; on success the file is fsynced and renamed onto ``path``, on any failure it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:  # e.g. ENOSPC, which names no file: name the one written
        tmp.unlink(missing_ok=True)
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
