"""Recording of one run's compute spans and messages per rank, for :mod:`gpubraid.runtime.replay`.

When a :class:`Tracer` is active (:func:`start`), every call of :class:`~gpubraid.runtime.comm.Comm`
ends the rank's current *compute span* and appends the call as an event; the next span starts
when the call returns.  A span's length is the thread's CPU time (``time.thread_time_ns``, nearly
independent of how many processes share a core) and, for reference, its wall time
(``time.perf_counter_ns``).  On a GPU the tracer synchronises the device before reading the clocks
and the replay uses the wall time (the device, not the thread, does the work).

Events of a rank, in order (times in ns; ``g`` indexes the rank's table of communicators, each
given by its world ranks, so sub-communicators match across ranks):

    ["c", cpu, wall]                              compute span
    ["s", g, dest, tag, nbytes, seq, cpu, wall]   send (non-blocking) to world rank ``dest``; cpu/wall of the call
    ["r", g, source, tag, nbytes, seq, wall]      blocking receive from world rank ``source``
    ["w", [i, ...], wall]                         wait for the sends that are events i of this rank
    ["k", kind, g, nbytes, seq, wall]             collective over communicator g (nbytes: this rank's part)
    ["m", label]                                  a mark in the program (e.g. the end of a training
                                                  iteration): splits the span, costs nothing

``seq`` numbers the messages of one (communicator, source, dest, tag) in order (MPI delivers them
in that order), and the collectives of one communicator; the replay matches events by them.
While no tracer is active (:data:`ACTIVE` is None) the hooks cost one global lookup per call.

**More ranks than cores.**  The replay stands for one core per rank, but a run traced with more
ranks on a host than it has cores time-shares them: the ranks' spans then run side by side on
shared caches and memory, and each is cut into slices between the others'.  Their CPU time grows
(8 ranks on 2 cores: 1.1-1.3x a rank's work alone), and a replay of such a trace is slower than
the hardware it stands for.  So on such a host the tracer passes a :class:`CoreGate` between the
host's ranks: a rank computes only while it holds it (from the return of one communication call to
the start of the next), so its spans run alone, as on a core of its own; it waits for the gate
outside its spans, which the replay does not count.  The traced run's own wall time then grows
about P/cores-fold; its meta records ``gated``.  ``GPUBRAID_TRACE_CORES=N`` in the environment
traces as if each host had N cores (to gate on a host with more, or to see what gating costs).

Ranks waiting in MPI calls busy-poll (MPICH does).  Waiting asleep there instead (a
probe, a non-blocking barrier or a test first, then the call) was tried and dropped: it halved
the traced wall time of 8 data groups on 2 cores but lengthened the replayed steps of the 8-rank
pipeline by 15 % and of one-shot by 10 % (a rank whose message arrived no longer took the gate
right after its sender, so more of the others' spans fell between).

What the gate cannot give a rank is a machine of its own.  One data group's evaluation (625
samples, 256 layers; ``python -m bench.gate_cost``) costs 6.6 ms of CPU time alone, 7.5 beside one
other rank, 9.1 when two ranks take turns on one core and 10.2 when eight take turns on two (with 8
micro-batches: 7.5, 7.6, 8.5, 10.2).  Preemption is not it (ranks pinned apart: as slow), nor data
evicted from the caches alone (re-reading the rank's memory before each span: as slow).  A replay
of a trace gated this way is that much slower than P devices with memories of their own.
"""
from __future__ import annotations

import fcntl
import json
import os
import pickle
import statistics
import tempfile
import time
from collections import defaultdict

from ..errors import UserError
from .atomic import write_atomic
from .rerun import world_ranks

FORMAT = "gpubraid-trace"
VERSION = 2
#: Versions :func:`load` reads (version 1 has no marks).
READS = (1, 2)

#: Environment variable: the cores per host the gate assumes (default: the host's).
CORES_ENV = "GPUBRAID_TRACE_CORES"

#: The tracer of this process while tracing, else None (read by :mod:`gpubraid.runtime.comm`).
ACTIVE: "Tracer | None" = None



def pickled_size(obj) -> int:
    """Bytes of ``obj`` as mpi4py sends a Python object (pickled, highest protocol)."""
    return len(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


class CoreGate:
    """A lock the ranks of one host pass between them (``flock`` on a file every one of them opened
    before the first :meth:`acquire`): one rank computes at a time."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "a")
        self._held = False

    def acquire(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_EX)
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        self._file.close()
        try:
            os.unlink(self.path)
        except OSError:  # another rank of the host removed it first
            pass


def host_cores(environ=os.environ) -> int:
    """Cores per host for the gate: :data:`CORES_ENV` when set (a positive integer), else the host's."""
    value = environ.get(CORES_ENV)
    if value is None:
        return os.cpu_count() or 1
    if not value.strip().isdigit() or int(value) < 1:
        raise UserError(f"{CORES_ENV} must be a positive integer (cores per host for --trace); got {value!r}")
    return int(value)


def _host_gate(world_comm) -> "CoreGate | None":
    """A :class:`CoreGate` for this host's ranks when they outnumber its cores (None otherwise, and
    without MPI).  Collective over ``world_comm``."""
    cores = host_cores()
    if world_comm.size == 1:
        return None
    from mpi4py import MPI

    host = world_comm.comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        crowded = host.Get_size() > cores
        token = host.bcast(os.urandom(8).hex() if host.Get_rank() == 0 else None, root=0) if crowded else None
        gate = CoreGate(os.path.join(tempfile.gettempdir(), f"gpubraid-gate-{token}")) if crowded else None
        host.Barrier()  # every rank opened the file before any removes it
    finally:
        host.Free()
    return gate


class Tracer:
    """One rank's event list; ``sync`` (a callable) synchronises the device before each clock read;
    ``gate``: the host's :class:`CoreGate`, held during compute spans (None: not gated)."""

    def __init__(self, world_rank: int, sync=None, gate: CoreGate | None = None):
        self.world_rank = world_rank
        self.sync = sync
        self.gate = gate
        self.events: list = []
        self.groups: list[tuple[int, ...]] = []
        self._group_of: dict[int, tuple[int, object]] = {}   # id(mpi comm) -> (index, comm kept alive)
        self._p2p = defaultdict(int)
        self._coll = defaultdict(int)
        self._cpu = time.thread_time_ns()
        self._wall = time.perf_counter_ns()

    # -- the hooks of comm.py ---------------------------------------------------------------------
    def _close_span(self) -> int:
        """Append the current compute span (the device synchronised first) and start the next;
        returns the wall clock at the cut."""
        if self.sync is not None:
            self.sync()
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        self.events.append(["c", cpu - self._cpu, wall - self._wall])
        self._cpu, self._wall = cpu, wall
        return wall

    def begin(self) -> int:
        """End the current compute span (a communication call starts); returns the call's start (wall)."""
        wall = self._close_span()
        if self.gate is not None:
            self.gate.release()
        return wall

    def _end(self, event: list) -> int:
        """Append ``event`` (the call that began at the last span's end) and start the next span."""
        self.events.append(event)
        if self.gate is not None:
            self.gate.acquire()
        self._cpu, self._wall = time.thread_time_ns(), time.perf_counter_ns()
        return len(self.events) - 1

    def mark(self, label: str) -> None:
        """End the current compute span at a point of the program named ``label`` and start the next
        (the gate is kept: no communication happens here)."""
        self._close_span()
        self.events.append(["m", str(label)])

    def leave_gate(self) -> None:
        """Give up the gate for good (the tracer records nothing more)."""
        if self.gate is not None:
            self.gate.close()
            self.gate = None

    def group(self, mpi_comm) -> tuple[int, tuple[int, ...]]:
        """(index in this rank's table, world ranks) of an mpi4py communicator (None: this rank alone).

        Communicators of the same ranks share an entry: their messages and collectives are numbered
        together, which matches across ranks because every rank makes its calls in program order."""
        key = id(mpi_comm)
        if key not in self._group_of:
            ranks = (self.world_rank,) if mpi_comm is None else world_ranks(mpi_comm)
            if ranks not in self.groups:
                self.groups.append(ranks)
            self._group_of[key] = (self.groups.index(ranks), mpi_comm)
        g = self._group_of[key][0]
        return g, self.groups[g]

    def send(self, mpi_comm, dest: int, tag: int, nbytes: int) -> int:
        """Record a send begun by :meth:`begin`; returns its event index (for :meth:`wait`)."""
        g, ranks = self.group(mpi_comm)
        key = (g, self.world_rank, ranks[dest], tag)
        seq = self._p2p[key]
        self._p2p[key] += 1
        cpu, wall = time.thread_time_ns() - self._cpu, time.perf_counter_ns() - self._wall
        return self._end(["s", g, ranks[dest], tag, int(nbytes), seq, cpu, wall])

    def recv(self, mpi_comm, source: int, tag: int, nbytes: int) -> None:
        g, ranks = self.group(mpi_comm)
        key = (g, ranks[source], self.world_rank, tag)
        seq = self._p2p[key]
        self._p2p[key] += 1
        self._end(["r", g, ranks[source], tag, int(nbytes), seq, time.perf_counter_ns() - self._wall])

    def wait(self, sends: list[int]) -> None:
        self._end(["w", [int(i) for i in sends], time.perf_counter_ns() - self._wall])

    def collective(self, kind: str, mpi_comm, nbytes: int) -> None:
        g, _ = self.group(mpi_comm)
        seq = self._coll[g]
        self._coll[g] += 1
        self._end(["k", kind, g, int(nbytes), seq, time.perf_counter_ns() - self._wall])

    def close(self) -> dict:
        """This rank's record: the last compute span closed; the tracer stops recording (and
        gives up the gate)."""
        self.begin()
        self.leave_gate()
        return {"rank": self.world_rank, "groups": [list(g) for g in self.groups], "events": self.events}


def start(world_comm, sync=None) -> Tracer:
    """Begin tracing this process (every rank of ``world_comm``, a :class:`Comm`, calls it together:
    a barrier first, so the ranks' timelines start at one instant).  CPU runs (``sync`` None) with
    more ranks on a host than cores are gated (see the module docstring)."""
    global ACTIVE
    gate = _host_gate(world_comm) if sync is None else None
    world_comm.barrier()
    ACTIVE = Tracer(world_comm.rank, sync, gate)
    if gate is not None:
        gate.acquire()
    return ACTIVE


def mark(label: str) -> None:
    """A mark named ``label`` in this rank's trace while tracing (every rank should make the same
    marks, e.g. one per training iteration: the replay reports when all ranks passed each)."""
    if ACTIVE is not None:
        ACTIVE.mark(label)


def stop() -> None:
    """Stop recording without writing (a run that did not finish leaves no trace file)."""
    global ACTIVE
    if ACTIVE is not None:
        ACTIVE.leave_gate()
    ACTIVE = None


def finish(tracer: Tracer, world_comm, path: str, clock: str = "thread", meta: dict | None = None) -> None:
    """Stop tracing and write every rank's events to ``path`` (rank 0 writes, atomically; a rerun of
    one rank, :mod:`gpubraid.runtime.rerun`, writes its own).

    ``clock``: which span length the replay should use, "thread" (CPU backends) or "wall" (GPUs).
    ``meta``: what else the file should say (settings, the measured wall time of the traced region).
    """
    global ACTIVE
    ACTIVE = None
    gated = tracer.gate is not None
    mine = tracer.close()
    ranks = [mine] if world_comm.size == 1 else world_comm.comm.gather(mine, root=0)
    alone = getattr(world_comm.comm, "alone", False)   # a rerun of one rank: its events by themselves
    if alone:
        ranks = [mine]
    if world_comm.rank == 0 or alone:
        meta = {**(meta or {}), "gated": gated}
        doc = {"format": FORMAT, "version": VERSION, "clock": clock, "meta": meta, "ranks": ranks}
        write_atomic(path, lambda f: json.dump(doc, f, separators=(",", ":")))


#: Per event kind, the fields that are the machine's timings (the rest must agree between repeats).
_TIMED = {"c": (1, 2), "s": (6, 7), "r": (6,), "w": (2,), "k": (5,)}


def median(docs: list) -> dict:
    """One trace from repeats of the same run: every compute span and send call the median of its
    repeats' times, every other field the first's (one repeat: that trace itself).

    A run's events follow its program order, so repeats of one command record the same events on
    every rank.  On a shared machine single spans are stretched by other work at random; the
    replay waits at each collective for the slowest of the P ranks, so one stretched span costs
    them all.  The median over three or more repeats keeps what the spans cost undisturbed.
    ValueError when the repeats' ranks or events differ (not the same run)."""
    if not docs:
        raise ValueError("median of no traces")
    if len(docs) == 1:   # one repeat is its own median
        return docs[0]
    first = docs[0]
    if any(len(d["ranks"]) != len(first["ranks"]) for d in docs):
        raise ValueError("the traces are not repeats of one run: their rank counts differ")
    out = {**first, "ranks": [], "meta": {**first.get("meta", {}), "median_of": len(docs)}}
    for i, rank in enumerate(first["ranks"]):
        repeats = [d["ranks"][i]["events"] for d in docs]
        if any(len(r) != len(rank["events"]) for r in repeats):
            raise ValueError(f"the traces are not repeats of one run: rank {i} has other event counts")
        events = []
        for j, ev in enumerate(rank["events"]):
            timed = _TIMED.get(ev[0], ())
            untimed = [[x for k, x in enumerate(r[j]) if k not in timed] for r in repeats]
            if any(u != untimed[0] for u in untimed):
                raise ValueError(f"the traces are not repeats of one run: rank {i}, event {j} differs")
            events.append([int(statistics.median(r[j][k] for r in repeats)) if k in timed else x
                           for k, x in enumerate(ev)])
        out["ranks"].append({**rank, "events": events})
    return out


def load(path: str) -> dict:
    """A trace file written by :func:`finish` (ValueError when it is not one)."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a gpubraid trace")
    if doc.get("version") not in READS:
        raise ValueError(f"{path!r}: trace version {doc.get('version')!r}; this gpubraid reads versions "
                         f"{', '.join(map(str, READS))}")
    return doc
