"""Stopping every MPI rank together: one failing rank ends the job with one line naming it.

:func:`abort_all` reports a rank's failure and stops every rank of its communicator;
:func:`agree` lets the ranks learn, after a step each ran on its own, whether any of them failed,
without hanging on a rank that never reached the step.
"""
from __future__ import annotations

import os
import sys
import time
import traceback

import numpy as np

from ..errors import UserError
from .comm import Comm, _mpi

_aborting = False


def abort_all(comm, exc: BaseException, code: int = 1) -> None:
    """Report ``exc`` as this rank's failure and stop every rank of ``comm`` with status ``code``.

    The report (a traceback for unexpected errors, then one line naming the rank) is written in
    one piece and flushed, and the launcher is given a moment to forward it before MPI_Abort;
    a second failure while aborting exits at once without printing again.
    """
    global _aborting
    if _aborting:
        os._exit(code)
    _aborting = True
    mpi_comm = getattr(comm, "comm", comm)
    rank = mpi_comm.Get_rank() if mpi_comm is not None else 0
    text = f"gpubraid: rank {rank} failed: {type(exc).__name__}: {exc}\n"
    if not isinstance(exc, UserError):
        text = "".join(traceback.format_exception(exc)) + text
    sys.stderr.write(text)
    sys.stderr.flush()
    if mpi_comm is not None and mpi_comm.Get_size() > 1:
        time.sleep(0.2)
        mpi_comm.Abort(code)
    sys.exit(code)


def agree(comm: Comm, err: BaseException | None, timeout_s: float = 30.0, code: int = 2) -> str | None:
    """Whether some rank failed a collective step: None when none did, else the first failing
    rank's message (on every rank).

    A rank that failed waits at most ``timeout_s`` for the others (which may be stuck in a
    collective it never joined) and then stops the whole job with status ``code``.
    """
    if comm.size == 1:
        return None if err is None else str(err)
    MPI = _mpi()
    sub = comm.comm.Dup()
    try:
        flag = np.array([0 if err is None else 1], dtype=np.int32)
        out = np.zeros(1, dtype=np.int32)
        req = sub.Iallreduce(flag, out, op=MPI.MAX)
        if err is None:
            req.Wait()
        else:
            deadline = time.monotonic() + timeout_s
            while not req.Test():
                if time.monotonic() > deadline:
                    abort_all(comm, err, code)
                time.sleep(0.01)
        if out[0] == 0:
            return None
        messages = sub.allgather(None if err is None else str(err))
        return next(m for m in messages if m is not None)
    finally:
        sub.Free()
