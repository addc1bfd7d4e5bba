"""Files that are never half-written: written to a temporary file beside the target, flushed to
disk, then renamed over it (a rename within a directory is atomic on POSIX file systems)."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def write_atomic(path: str, write: Callable, binary: bool = False) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes; on any failure (even a kill)
    the old file, or none, is left, never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpubraid-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
