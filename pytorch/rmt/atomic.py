"""THE atomic file writer: a reader never sees half a file, and an interrupted write leaves the
old file in place."""
from __future__ import annotations

import glob
import os
import pathlib
import uuid
from typing import IO, Callable


def remove_stale(path: pathlib.Path) -> None:
    """Delete temporary files of `path` left by writers that no longer run (a kill -9 mid-save)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], text: bool = False, **open_kwargs) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it over `path`.

    The temporary name is unique and in the same directory, so the rename is atomic on one file
    system; it is opened with "x" rather than by mkstemp so that it gets the usual umask
    permissions (mkstemp makes 0600, unreadable in a shared data directory). `text` opens it in
    text mode (with `open_kwargs` such as encoding and newline), else binary.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x" if text else "xb", **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
