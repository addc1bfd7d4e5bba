"""Files that are never half-written: written to a temporary file beside the target, flushed to
disk, then renamed over it (a rename within a directory is atomic on POSIX file systems).

An output that cannot be written (no space, quota, permissions) raises :class:`WriteError`, whose
message is the one line the command line prints: the setting, the file, the reason, the bytes
needed and free.  Whatever the path held before is left as it was.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable


class WriteError(OSError):
    """An output could not be written; the message is one line naming the setting and the file."""


def write_atomic(path: str, write: Callable, binary: bool = False) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes; on any failure (even a kill)
    the old file, or none, is left, never a partial one.  The file gets the permissions a plain
    ``open(path, "w")`` would give it (a replaced file keeps its own)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpubraid-", suffix=".tmp")  # mode 0600
    try:
        os.fchmod(fd, _mode(path))
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _mode(path: str) -> int:
    """The permission bits of the existing ``path``, else 0666 less the process's umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def write_output(setting: str, path: str, payload: bytes | str, after: str = "") -> None:
    """:func:`write_atomic` of ``payload`` to ``path``, the output named by ``setting``.

    Raises:
        WriteError: ``"<setting>: cannot write '<path>': <reason> (<n> needed, <m> free)<after>"``;
            ``path`` is left as it was.
    """
    binary = isinstance(payload, bytes)
    try:
        write_atomic(path, lambda f: f.write(payload), binary=binary)
    except OSError as exc:
        size = len(payload) if binary else len(payload.encode())
        try:
            free = f", {format_bytes(shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free)} free"
        except OSError:
            free = ""
        raise WriteError(f"{setting}: cannot write {path!r}: {exc.strerror or exc} "
                         f"({format_bytes(size)} needed{free}){after}") from None


def format_bytes(n: float, binary: bool = False) -> str:
    """``n`` bytes for a message: ``"812 bytes"``, ``"12.3 kB"``, ``"4.1 GB"`` (powers of 1000), or
    with ``binary`` ``"12.0 KiB"``, ``"4.1 GiB"`` (powers of 1024, as memory is counted)."""
    step, units = (1024, ("bytes", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("bytes", "kB", "MB", "GB", "TB"))
    for unit in units[:-1]:
        if n < step:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= step
    return f"{n:.1f} {units[-1]}"
