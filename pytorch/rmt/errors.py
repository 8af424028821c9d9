"""The library's errors: each carries the one line a user needs (what is wrong, what to do).

Library code raises them and never ends the process; the command-line entry points (`python3
-m rmt.train`, ...) are wrapped in `exits_on_error`, which turns one into "error: <message>" on
stderr and exit status 1. A program or notebook that calls the library catches `RMTError`.
"""
from __future__ import annotations

import functools


class RMTError(Exception):
    """Base class: str(e) is the one-line message."""


class FlagError(RMTError):
    """Flags that cannot work together or with this machine (found after parsing)."""


class UsageError(FlagError):
    """Flags that contradict each other or the family: the entry point shows its usage line
    with the message and exits with status 2, as for a flag argparse itself refuses."""


class DataError(RMTError):
    """A data set, corpus or text that is missing, unreadable or does not fit the flags."""


class CheckpointError(RMTError, RuntimeError):
    """A checkpoint file is missing, truncated, not in the expected format or of another model."""


class RunError(RMTError):
    """A run that cannot start or go on: its directory is busy or empty, or training diverged."""


def exits_on_error(main):
    """An entry point's main: an RMTError ends the process with its one line (SystemExit)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except RMTError as e:
            raise SystemExit(f"error: {e}") from None
    return wrapper
