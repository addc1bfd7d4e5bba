"""MPI for gpubraid: layer blocks over ranks, neighbour messages, reductions, gathers, CUDA-awareness.

Stopping every rank on a failure is :mod:`gpubraid.runtime.abort`.

One process without ``mpiexec`` is simply one rank.  Arrays are sent as raw buffers: device buffers
go straight to MPI when the loaded MPI library is CUDA-aware, and are staged through host memory
otherwise (after synchronising the producing stream).  ``GPUBRAID_CUDA_AWARE=0|1`` overrides the
run-time detection.
"""
from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from . import placement as _placement
from . import rerun as _rerun
from . import trace as _trace


def _mpi():
    from mpi4py import MPI

    return MPI


def mpi_library_path() -> str | None:
    """Path of the libmpi that mpi4py loaded into this process (Linux), or None."""
    _mpi()
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return None
    found = sorted(set(re.findall(r"(/\S*lib(?:mpi|msmpi|impi)\S*\.so[\d.]*)", maps)))
    return found[0] if found else None


def detect_cuda_aware() -> tuple[bool, str]:
    """Whether the loaded MPI library accepts device pointers, and how that was decided.

    Order: ``GPUBRAID_CUDA_AWARE`` (0/1) if set; Open MPI's ``MPIX_Query_cuda_support()``;
    MPICH's ``MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA)``; otherwise not aware.
    """
    env = os.environ.get("GPUBRAID_CUDA_AWARE")
    if env is not None and env != "":
        if env not in ("0", "1"):
            raise UserError(f"GPUBRAID_CUDA_AWARE must be 0 or 1; got {env!r}")
        return env == "1", "GPUBRAID_CUDA_AWARE"
    path = mpi_library_path()
    if path is None:
        return False, "libmpi not found in this process"
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        return False, f"cannot open {path}: {exc}"
    if hasattr(lib, "MPIX_Query_cuda_support"):
        lib.MPIX_Query_cuda_support.restype = ctypes.c_int
        return bool(lib.MPIX_Query_cuda_support()), "MPIX_Query_cuda_support"
    if hasattr(lib, "MPIX_GPU_query_support"):
        flag = ctypes.c_int(0)
        MPIX_GPU_SUPPORT_CUDA = 0
        if lib.MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, ctypes.byref(flag)) == 0:
            return bool(flag.value), "MPIX_GPU_query_support"
    return False, "no CUDA query in the MPI library"


def _traced():
    """The active tracer (:mod:`gpubraid.runtime.trace`), its compute span ended because a
    communication call begins; None while not tracing."""
    t = _trace.ACTIVE
    if t is not None:
        t.begin()
    return t


@dataclass
class CommStats:
    """Point-to-point and collective traffic of one rank."""

    messages: int = 0
    bytes: int = 0
    collectives: int = 0

    def as_dict(self) -> dict:
        return {"messages": self.messages, "bytes": self.bytes, "collectives": self.collectives}


@dataclass
class PendingSend:
    """An MPI send request together with the buffer it reads, kept alive until completion."""

    request: object
    buffer: object
    event: int = -1        #: the send's event index in this rank's trace (while tracing)


@dataclass
class Comm:
    """A communicator over the layer dimension plus the buffer policy for device arrays.

    ``comm`` is an ``mpi4py.MPI.Comm``, or None for one process without MPI
    (:meth:`single`): every method works on either, so callers never branch on the process count.
    ``backend`` is the array backend whose device buffers are sent (host transfers are its job).
    """

    comm: object = None
    cuda_aware: bool = False
    backend: object = None
    stats: CommStats = field(default_factory=CommStats)
    #: An mpi4py communicator over which sums and maxima are reduced *as well* (the data groups,
    #: for the solver's norms and estimates); None: only over ``comm``.
    also: object = None

    @classmethod
    def world(cls) -> "Comm":
        """COMM_WORLD, with CUDA-awareness detected from the loaded MPI library and this rank's BLAS
        and OpenMP threads sized to its share of the host's cores (:mod:`gpubraid.runtime.placement`);
        recording what it delivers, or a rerun of one recorded rank, as the environment asks
        (:mod:`gpubraid.runtime.rerun`)."""
        MPI = _mpi()
        _placement.fit_to_host(MPI.COMM_WORLD)
        aware, _ = detect_cuda_aware()
        return cls(_rerun.wrap_world(MPI.COMM_WORLD), aware)

    @classmethod
    def single(cls) -> "Comm":
        """One process, no MPI."""
        return cls(None)

    def grid(self, data_parallel: int) -> tuple["Comm", "Comm"]:
        """Split these P ranks into D = ``data_parallel`` data groups of P/D layer ranks.

        Rank w is layer rank w mod (P/D) of data group w div (P/D).  Returns (layer_comm,
        group_comm): the communicator of this rank's group along the layers, and the one across
        the groups that links the ranks holding the same layer block.
        """
        P, D = self.size, data_parallel
        if D < 1 or P % D:
            raise UserError(f"data_parallel must divide the number of MPI ranks ({P}); got {D}")
        L = P // D
        if D == 1:
            return self, Comm.single()
        w = self.rank
        layer_comm = Comm(self.comm.Split(w // L, w % L), self.cuda_aware, self.backend)
        group_comm = Comm(self.comm.Split(w % L, w // L), self.cuda_aware, self.backend)
        return layer_comm, group_comm

    def reducing_also(self, other: "Comm") -> "Comm":
        """This communicator, with sums and maxima reduced over ``other`` as well."""
        if other.size == 1:
            return self
        return Comm(self.comm, self.cuda_aware, self.backend, self.stats, other.comm)

    @property
    def rank(self) -> int:
        return 0 if self.comm is None else self.comm.Get_rank()

    @property
    def size(self) -> int:
        return 1 if self.comm is None else self.comm.Get_size()

    @property
    def first_data_group(self) -> bool:
        """Whether this rank belongs to the first of the data groups reduced over (``also``)."""
        return self.also is None or self.also.Get_rank() == 0

    # -- point to point -------------------------------------------------------------------------
    def isend(self, a, dest: int, tag: int) -> "PendingSend":
        """Non-blocking send of a copy of array ``a`` (the caller may overwrite ``a`` at once)."""
        t = _traced()
        if isinstance(a, np.ndarray):
            buf = a.copy()
        else:
            buf = a.copy() if self.cuda_aware else self.backend.pinned_host_copy(a)
            self.backend.synchronize()
        self.stats.messages += 1
        self.stats.bytes += a.nbytes
        pending = PendingSend(self.comm.Isend(buf, dest=dest, tag=tag), buf)
        if t is not None:
            pending.event = t.send(self.comm, dest, tag, a.nbytes)
        return pending

    def recv_into(self, a, source: int, tag: int) -> None:
        """Blocking receive into the contiguous array ``a`` (device arrays staged when needed)."""
        t = _traced()
        buf = self._receivable(a)
        self.comm.Recv(buf, source=source, tag=tag)
        self._received(a, buf)
        if t is not None:
            t.recv(self.comm, source, tag, a.nbytes)

    @staticmethod
    def waitall(pending) -> None:
        """Complete a list of :class:`PendingSend` (their buffers are released afterwards)."""
        if pending:
            t = _traced()
            _mpi().Request.Waitall([p.request for p in pending])
            if t is not None:
                t.wait([p.event for p in pending])

    # -- collectives ----------------------------------------------------------------------------
    def allreduce_sum(self, x: float) -> float:
        return self.allreduce_sums((x,))[0]

    def allreduce_sums(self, x) -> list[float]:
        """Σ over the ranks of each number of ``x`` (a sequence of floats), in one allreduce."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        if self.size > 1 and x.size:
            self.stats.collectives += 1
            t = _traced()
            out = np.empty_like(x)
            self.comm.Allreduce(x, out, op=_mpi().SUM)
            if t is not None:
                t.collective("allreduce", self.comm, x.nbytes)
            x = out
        if self.also is not None:
            x = sum(self._also_allgather(x))  # in rank order, as every rank adds them
        return x.tolist()

    def allreduce_max(self, x: float) -> float:
        x = max(self.allgather((float(x),))[:, 0].tolist())
        return x if self.also is None else max(self._also_allgather(x))

    def _also_allgather(self, x) -> list:
        t = _traced()
        parts = self.also.allgather(x)
        if t is not None:
            t.collective("allgather", self.also, getattr(x, "nbytes", 8))
        return parts

    def allgather(self, x) -> np.ndarray:
        """Every rank's ``x`` (a NumPy array, or numbers: float64; the same shape on every rank)
        stacked in rank order, (size, *shape)."""
        host = np.ascontiguousarray(x if isinstance(x, np.ndarray) else np.asarray(x, np.float64))
        if self.size == 1:
            return host[None]
        self.stats.collectives += 1
        t = _traced()
        parts = np.empty((self.size, *host.shape), host.dtype)
        self.comm.Allgather(host, parts)
        if t is not None:
            t.collective("allgather", self.comm, host.nbytes)
        return parts

    def sum_in_rank_order(self, x):
        """Σ_r x_r over the ranks, added in rank order (so every rank gets the same bits):
        a float, or an array of the same shape on every rank (returned on its backend)."""
        if self.size == 1:
            return x
        if isinstance(x, float):
            return sum(self.allgather((x,))[:, 0].tolist())
        parts = self.allgather(x if isinstance(x, np.ndarray) else self.backend.to_host(x))
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        return total if isinstance(x, np.ndarray) else self.backend.asarray(total)

    def bcast_array(self, a, root: int, shape, dtype, xp):
        """Broadcast an array from ``root`` (others pass None); returns it on every rank."""
        if self.size == 1:
            return a
        self.stats.collectives += 1
        t = _traced()
        if self.rank == root:
            host = np.ascontiguousarray(a if isinstance(a, np.ndarray) else a.get())
        else:
            host = np.empty(shape, dtype)
        self.comm.Bcast(host, root=root)
        if t is not None:
            t.collective("bcast", self.comm, host.nbytes)
        return xp.asarray(host)

    def gather_rows(self, part, out, rows, root: int) -> None:
        """Gather every rank's ``part`` (its rows (k_r, *R), contiguous) into ``out`` on ``root``, in
        one collective: rank r's rows land at ``out[o_r:o_r + k_r]``, ``rows`` = ((k_r), (o_r)) per
        rank of this communicator.  ``out`` (contiguous, (n, *R)) is only read on ``root``."""
        if self.size == 1:
            out[rows[1][0]:rows[1][0] + rows[0][0]] = part
            return
        self.stats.collectives += 1
        t = _traced()
        counts, displs = self._row_spec(part, rows)
        if self.rank == root:
            buf = self._receivable(out)
            self.comm.Gatherv(self._sendable(part), [buf, (counts, displs)], root=root)
            self._received(out, buf)
        else:
            self.comm.Gatherv(self._sendable(part), None, root=root)
        if t is not None:
            t.collective("gather", self.comm, part.nbytes)

    def scatter_rows(self, full, part, rows, root: int) -> None:
        """The inverse of :meth:`gather_rows`: every rank's ``part`` (contiguous) receives rows
        ``full[o_r:o_r + k_r]`` of ``root``'s ``full``, in one collective (``full`` only read there)."""
        if self.size == 1:
            part[...] = full[rows[1][0]:rows[1][0] + rows[0][0]]
            return
        self.stats.collectives += 1
        t = _traced()
        counts, displs = self._row_spec(part, rows)
        send = [self._sendable(full), (counts, displs)] if self.rank == root else None
        buf = self._receivable(part)
        self.comm.Scatterv(send, buf, root=root)
        self._received(part, buf)
        if t is not None:
            t.collective("scatter", self.comm, part.nbytes)

    @staticmethod
    def _row_spec(part, rows):
        """MPI element counts and displacements of ``rows`` = ((k_r), (o_r)) for arrays of ``part``'s rows."""
        row = int(np.prod(part.shape[1:], dtype=np.int64))
        return [int(k) * row for k in rows[0]], [int(o) * row for o in rows[1]]

    def _receivable(self, a):
        """A buffer MPI may write ``a``'s new values into: ``a`` itself (a device array's pending work
        finished first), or, for a device array without a CUDA-aware MPI, a host array that
        :meth:`_received` copies in afterwards."""
        if isinstance(a, np.ndarray):
            return a
        if self.cuda_aware:
            self.backend.synchronize()
            return a
        return np.empty(a.shape, a.dtype)

    def _received(self, a, buf) -> None:
        """Put what MPI wrote into :meth:`_receivable`'s ``buf`` into ``a`` (nothing when it was ``a``)."""
        if buf is not a:
            self.backend.copy_from_host(a, buf)

    def _sendable(self, a):
        """``a`` as MPI may read it: itself (device work finished first), or a host copy of a device array."""
        if isinstance(a, np.ndarray):
            return a
        self.backend.synchronize()
        return a if self.cuda_aware else self.backend.to_host(a)

    def bcast_obj(self, obj, root: int = 0):
        if self.size == 1:
            return obj
        self.stats.collectives += 1
        t = _traced()
        out = self.comm.bcast(obj, root=root)
        if t is not None:
            t.collective("bcast", self.comm, _trace.pickled_size(out))
        return out

    def gather_obj(self, obj, root: int = 0):
        if self.size == 1:
            return [obj]
        self.stats.collectives += 1
        t = _traced()
        out = self.comm.gather(obj, root=root)
        if t is not None:
            t.collective("gather", self.comm, _trace.pickled_size(obj))
        return out

    def send_obj(self, obj, dest: int, tag: int) -> None:
        t = _traced()
        self.comm.send(obj, dest=dest, tag=tag)
        if t is not None:
            t.send(self.comm, dest, tag, _trace.pickled_size(obj))

    def recv_obj(self, source: int, tag: int):
        t = _traced()
        obj = self.comm.recv(source=source, tag=tag)
        if t is not None:
            t.recv(self.comm, source, tag, 0)
        return obj

    def barrier(self) -> None:
        if self.size > 1:
            t = _traced()
            self.comm.Barrier()
            if t is not None:
                t.collective("barrier", self.comm, 0)


def split_layers(n_layers: int, n_ranks: int) -> np.ndarray:
    """Contiguous block boundaries (n_ranks + 1,) splitting layers 0..N-1 as evenly as possible.

    Ranks get floor(N/P) or ceil(N/P) layers, the larger blocks first.  Needs 1 ≤ P ≤ N.
    """
    if n_ranks > n_layers:
        raise UserError(f"number of MPI ranks ({n_ranks}) must not exceed the number of layers ({n_layers})")
    q, r = divmod(n_layers, n_ranks)
    sizes = np.full(n_ranks, q)
    sizes[:r] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
