"""Record what MPI delivered to each rank of a run, and run any one rank again alone from the record.

A trace (:mod:`gpubraid.runtime.trace`) taken with more ranks than cores times spans that share
the cores with the other ranks, and they cost more than on a core or device of their own (8 ranks
on 2 cores: 1.4-1.6x, not from the caches or preemption alone).  A replay of such a trace is
slower than the hardware it stands for.  Running each rank again by itself, with the machine to
itself, times the same spans as one rank per core would: every decision it makes (line searches,
level choices, the planner's pick) follows the recorded run because everything it learns from the
other ranks is what it learned then.

``GPUBRAID_RECORD=DIR``
    :meth:`~gpubraid.runtime.comm.Comm.world` wraps COMM_WORLD in a :class:`RecordingComm`: each
    call that delivers data to this rank (receives, reductions, gathers, broadcasts, and the
    communicator splits) appends what it delivered to ``DIR/rank-<r>.rec`` in call order, and each
    array sent what identifies it (peer, tag, shape, its first and last numbers).

``GPUBRAID_RERUN=DIR:R``
    :meth:`~gpubraid.runtime.comm.Comm.world` is a :class:`ReplayComm` standing for world rank R of
    the recorded run, in this one process: its calls deliver what rank R's did, in the same order,
    and its sends go nowhere.  The same command then computes what rank R computed, to the bit;
    with ``--trace`` the file holds rank R's events alone, its spans timed alone.  A call other
    than the recorded one (another kind, shape or type), or a send of other values, stops the run
    with :class:`RerunDiverged`.

:func:`with_spans` puts the spans of such reruns into the recorded run's trace, whose messages
and collectives they match event by event.  ``python -m bench.rerun`` does all three steps.
"""
from __future__ import annotations

import atexit
import os
import pickle

import numpy as np

from ..errors import UserError

RECORD_ENV = "GPUBRAID_RECORD"
RERUN_ENV = "GPUBRAID_RERUN"


class RerunDiverged(RuntimeError):
    """The rerun made a call the recorded rank did not make at this point."""


def _path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rank-{rank}.rec")


def _sent(buf, dest: int, tag: int) -> tuple:
    """What identifies a send cheaply: peer, tag, shape, dtype and, of a host array, its first and
    last numbers (a rerun that computes other values sends other ones there)."""
    ends = None
    if isinstance(buf, np.ndarray) and buf.size:
        flat = buf.reshape(-1)
        ends = np.concatenate([flat[:4], flat[-4:]]).tobytes()
    return int(dest), int(tag), tuple(getattr(buf, "shape", ())), str(getattr(buf, "dtype", type(buf).__name__)), ends


def world_ranks(mpi_comm) -> tuple[int, ...]:
    """The COMM_WORLD ranks of an mpi4py communicator's members (or of a recording or replaying
    stand-in's), in its rank order."""
    own = getattr(mpi_comm, "world_ranks", None)
    if own is not None:
        return own()
    from mpi4py import MPI

    return tuple(mpi_comm.Get_group().Translate_ranks(list(range(mpi_comm.Get_size())), MPI.COMM_WORLD.Get_group()))


class _Writer:
    """Append-only record of one rank: (kind, value) pickles, flushed at exit."""

    def __init__(self, path: str):
        self.file = open(path, "wb")
        atexit.register(self.file.close)

    def put(self, kind: str, value) -> None:
        pickle.dump((kind, value), self.file, protocol=pickle.HIGHEST_PROTOCOL)


class _Reader:
    """The record of one rank, read back in order."""

    def __init__(self, path: str, rank: int):
        try:
            self.file = open(path, "rb")
        except OSError as exc:
            raise UserError(f"{RERUN_ENV}: cannot read the record of rank {rank} ({exc.strerror}: {path})") from None
        self.rank, self.calls = rank, 0

    def take(self, kind: str):
        """The next recorded value, which must come from a call of ``kind`` (MPI calls are counted
        from 1, the record's "start" entry not among them)."""
        self.calls += kind != "start"
        try:
            got, value = pickle.load(self.file)
        except EOFError:
            got, value = "the end of the record", None
        if got != kind:
            raise RerunDiverged(f"rerun of rank {self.rank} diverged at MPI call {self.calls}: {kind}, "
                                f"where the recorded run made {got}")
        return value

    def into(self, kind: str, buf) -> None:
        """The next recorded array (a call of ``kind``) copied into ``buf`` (same shape and dtype)."""
        value = self.take(kind)
        if not isinstance(value, np.ndarray) or value.shape != buf.shape or value.dtype != buf.dtype:
            raise RerunDiverged(f"rerun of rank {self.rank} diverged at MPI call {self.calls}: {kind} of "
                                f"{buf.dtype} {buf.shape}, where the recorded run's was "
                                f"{getattr(value, 'dtype', type(value).__name__)} {getattr(value, 'shape', '')}")
        if isinstance(buf, np.ndarray):
            buf[...] = value
        else:
            buf.set(value)   # a device array (CUDA-aware MPI receives into device memory)


def _host_copy(buf) -> np.ndarray:
    """A host copy of a received buffer (NumPy, or a CuPy device array)."""
    return np.array(buf, copy=True) if isinstance(buf, np.ndarray) else buf.get()


class RecordingComm:
    """An mpi4py communicator that appends what each of its calls delivered to this rank to a record
    (every other attribute is the communicator's own)."""

    def __init__(self, comm, record: _Writer):
        self._comm, self._record = comm, record

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def world_ranks(self) -> tuple[int, ...]:
        return world_ranks(self._comm)

    def Split(self, color: int = 0, key: int = 0):
        new = self._comm.Split(color, key)
        self._record.put("Split", (new.Get_rank(), new.Get_size(), world_ranks(new)))
        return RecordingComm(new, self._record)

    def _delivered(self, kind: str, buf) -> None:
        self._record.put(kind, _host_copy(buf))

    def Dup(self):
        return RecordingComm(self._comm.Dup(), self._record)

    def Isend(self, buf, dest, tag):
        self._record.put("Isend", _sent(buf, dest, tag))
        return self._comm.Isend(buf, dest=dest, tag=tag)

    def Recv(self, buf, source, tag):
        self._comm.Recv(buf, source=source, tag=tag)
        self._delivered("Recv", buf)

    def Iallreduce(self, x, out, op):
        return _Completed(self._comm.Iallreduce(x, out, op=op), lambda: self._delivered("Iallreduce", out))

    def Allreduce(self, x, out, op):
        self._comm.Allreduce(x, out, op=op)
        self._delivered("Allreduce", out)

    def Allgather(self, x, out):
        self._comm.Allgather(x, out)
        self._delivered("Allgather", out)

    def Bcast(self, buf, root=0):
        self._comm.Bcast(buf, root=root)
        self._delivered("Bcast", buf)

    def Gatherv(self, sendbuf, recvbuf, root=0):
        self._comm.Gatherv(sendbuf, recvbuf, root=root)
        self._record.put("Gatherv", None if recvbuf is None else _host_copy(recvbuf[0]))

    def Scatterv(self, sendbuf, recvbuf, root=0):
        self._comm.Scatterv(sendbuf, recvbuf, root=root)
        self._delivered("Scatterv", recvbuf)

    def _object(self, kind: str, value):
        self._record.put(kind, value)
        return value

    def allgather(self, obj):
        return self._object("allgather", self._comm.allgather(obj))

    def bcast(self, obj, root=0):
        return self._object("bcast", self._comm.bcast(obj, root=root))

    def gather(self, obj, root=0):
        return self._object("gather", self._comm.gather(obj, root=root))

    def recv(self, source, tag):
        return self._object("recv", self._comm.recv(source=source, tag=tag))


class _Completed:
    """A request whose completion (by Wait, or a Test that finds it done) calls ``done`` once."""

    def __init__(self, request, done):
        self.request, self.done = request, done

    def _finish(self) -> bool:
        if self.done is not None:
            self.done()
            self.done = None
        return True

    def Wait(self) -> bool:
        if self.request is not None:
            self.request.Wait()
        return self._finish()

    def Test(self) -> bool:
        return (self.request is None or self.request.Test()) and self._finish()


class ReplayComm:
    """Stands for the communicator a recorded rank had: its rank, size and members, and what each of
    its calls delivered, read back in order; sends go nowhere, barriers pass at once.

    ``alone`` marks the world of a rerun (:func:`gpubraid.runtime.trace.finish` writes this rank's
    events by themselves); split into the host's ranks (``Split_type``) it is a world of its own."""

    alone = True

    def __init__(self, record: _Reader | None, rank: int, size: int, members: tuple[int, ...]):
        self._record, self._rank, self._size, self._members = record, rank, size, tuple(members)

    def Get_rank(self) -> int:
        return self._rank

    def Get_size(self) -> int:
        return self._size

    def world_ranks(self) -> tuple[int, ...]:
        return self._members

    def Split(self, color: int = 0, key: int = 0):
        rank, size, members = self._record.take("Split")
        return ReplayComm(self._record, rank, size, members)

    def Split_type(self, kind, key: int = 0):
        return ReplayComm(None, 0, 1, (self._members[self._rank],))

    def Dup(self):
        return ReplayComm(self._record, self._rank, self._size, self._members)

    def Free(self) -> None:
        pass

    def Barrier(self) -> None:
        pass

    def Isend(self, buf, dest, tag):
        from mpi4py import MPI

        sent = self._record.take("Isend")
        if sent != _sent(buf, dest, tag):
            raise RerunDiverged(f"rerun of rank {self._record.rank} diverged at MPI call {self._record.calls}: "
                                f"it sends other values to rank {dest} (tag {tag}) than the recorded run did")
        return MPI.REQUEST_NULL

    def send(self, obj, dest, tag) -> None:
        pass

    def Abort(self, code: int = 1):
        os._exit(code)

    def Recv(self, buf, source, tag):
        self._record.into("Recv", buf)

    def Allreduce(self, x, out, op):
        self._record.into("Allreduce", out)

    def Iallreduce(self, x, out, op):
        self._record.into("Iallreduce", out)
        return _Completed(None, None)

    def Allgather(self, x, out):
        self._record.into("Allgather", out)

    def Bcast(self, buf, root=0):
        self._record.into("Bcast", buf)

    def Gatherv(self, sendbuf, recvbuf, root=0):
        if recvbuf is None:
            self._record.take("Gatherv")
        else:
            self._record.into("Gatherv", recvbuf[0])

    def Scatterv(self, sendbuf, recvbuf, root=0):
        self._record.into("Scatterv", recvbuf)

    def allgather(self, obj):
        return self._record.take("allgather")

    def bcast(self, obj, root=0):
        return self._record.take("bcast")

    def gather(self, obj, root=0):
        return self._record.take("gather")

    def recv(self, source, tag):
        return self._record.take("recv")


def _rerun_target(value: str) -> tuple[str, int]:
    directory, sep, rank = value.rpartition(":")
    if not sep or not directory or not rank.isdigit():
        raise UserError(f"{RERUN_ENV} must be DIR:RANK (a record directory and a world rank); got {value!r}")
    return directory, int(rank)


def wrap_world(world, environ=os.environ):
    """COMM_WORLD (an mpi4py communicator) as this run should use it: itself, recording
    (:data:`RECORD_ENV`) or a rerun of one recorded rank (:data:`RERUN_ENV`).  The record's first
    entry is the rank, the size and the BLAS threads the rank ran with, which a rerun takes again."""
    record, rerun = environ.get(RECORD_ENV), environ.get(RERUN_ENV)
    if record and rerun:
        raise UserError(f"set one of {RECORD_ENV} and {RERUN_ENV}, not both")
    from .placement import blas_threads

    if record:
        try:
            os.makedirs(record, exist_ok=True)
            writer = _Writer(_path(record, world.Get_rank()))
        except OSError as exc:
            raise UserError(f"{RECORD_ENV}: cannot write the record in {record} ({exc.strerror})") from None
        writer.put("start", (world.Get_rank(), world.Get_size(), blas_threads()))
        return RecordingComm(world, writer)
    if rerun:
        directory, rank = _rerun_target(rerun)
        reader = _Reader(_path(directory, rank), rank)
        _, size, threads = reader.take("start")
        if threads is not None and threads != blas_threads():
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads, user_api="blas")
        return ReplayComm(reader, rank, size, tuple(range(size)))
    return world


def with_spans(doc: dict, alone: dict[int, dict]) -> dict:
    """The trace ``doc`` with the compute spans (and send calls' costs) of each rank w in ``alone``
    taken from ``alone[w]`` (that rank's events in a rerun's trace): the same events, each
    message and collective matched by kind, peer, tag, size and number.  ValueError when they
    differ."""
    out = {**doc, "ranks": [dict(r) for r in doc["ranks"]], "meta": {**doc.get("meta", {}), "spans": "alone"}}
    for rank in out["ranks"]:
        w = rank["rank"]
        if w not in alone:
            continue
        mine, theirs = rank["events"], alone[w]["events"]
        if len(mine) != len(theirs):
            raise ValueError(f"rank {w}: the rerun has {len(theirs)} events, the trace {len(mine)}")
        events = []
        for i, (a, b) in enumerate(zip(mine, theirs)):
            key = {"c": 1, "s": 6, "r": 6, "w": 1, "k": 5, "m": 2}[a[0]]
            if a[0] != b[0] or (a[0] != "w" and a[1:key] != b[1:key]):
                raise ValueError(f"rank {w}, event {i}: the rerun has {b[:key]}, the trace {a[:key]}")
            events.append(list(b) if a[0] == "c" else (a[:6] + list(b[6:8]) if a[0] == "s" else a))
        rank["events"] = events
    return out
