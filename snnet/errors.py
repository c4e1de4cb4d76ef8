"""Errors a user can fix, and how the command-line scripts report them.

Every refusal the scripts make is an :class:`SNNetError`: the scripts print its message as one
line on stderr and exit non-zero, without a traceback. So does an ``OSError`` (a full disk, a
path that is a file where a folder is needed, a permission): the line names the file and the
reason. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from typing import Callable, TypeVar


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag or value is one ``error: ...`` line (exit 2) as every
    other refusal, not argparse's usage block; ``--help`` shows the usage."""

    def error(self, message: str):  # type: ignore[override]
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(2)


class SNNetError(Exception):
    """A problem with the user's input; the message names the problem and the fix."""


class UnknownModelError(SNNetError, ValueError):
    """A model name timm does not know, or a family SN-Net has no adapter for."""


class IncompatibleAnchorsError(SNNetError, ValueError):
    """Anchors that cannot be stitched (stage layout, feature layout or spatial size differ)."""


class CheckpointError(SNNetError):
    """A checkpoint file that is missing, unreadable, unsafe or of another model."""


class ConfigError(SNNetError, ValueError):
    """A malformed config file or an invalid combination of arguments."""


class DataError(SNNetError):
    """A missing or unusable dataset."""


class BudgetError(SNNetError, ValueError):
    """No network satisfies the requested budget."""


class DivergenceError(SNNetError):
    """Training produced a non-finite loss."""


F = TypeVar("F", bound=Callable)


def describe_os_error(e: OSError) -> str:
    """An ``OSError`` on one line: the file(s), the reason, and what to do about a full disk."""
    reason = e.strerror or str(e) or type(e).__name__
    files = " -> ".join(f"'{f}'" for f in (e.filename, e.filename2) if f is not None)
    hint = ": free some space or write elsewhere" if e.errno == errno.ENOSPC else ""
    return f"{files}: {reason}{hint}" if files else f"{reason}{hint}"


def exit_on_user_error(main: F) -> F:
    """Wrap a script's ``main`` so that an :class:`SNNetError` or an ``OSError`` ends it with one
    clear line (exit code 2), and the output folders it locked (:mod:`snnet.io.lock`) are
    released however it ends."""

    from .io.lock import released_locks

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            with released_locks():  # the output folders it held
                return main(*args, **kwargs)
        except SNNetError as e:
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank refuses alike: one line
                print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except OSError as e:
            print(f"error: {describe_os_error(e)}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
