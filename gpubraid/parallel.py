"""MPI for gpubraid: layer blocks over ranks, neighbour messages, reductions, CUDA-awareness, abort.

One process without ``mpiexec`` is simply one rank.  Arrays are sent as raw buffers: device buffers
go straight to MPI when the loaded MPI library is CUDA-aware, and are staged through host memory
otherwise (after synchronising the producing stream).  ``GPUBRAID_CUDA_AWARE=0|1`` overrides the
run-time detection.
"""
from __future__ import annotations

import ctypes
import os
import re
import sys
import traceback
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError


def _mpi():
    from mpi4py import MPI

    return MPI


def node_local_rank() -> int:
    """This process's rank among the processes on its node (0 without MPI launcher variables)."""
    for var in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                "SLURM_LOCALID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID"):
        if var in os.environ:
            return int(os.environ[var])
    MPI = _mpi()
    if MPI.COMM_WORLD.Get_size() == 1:
        return 0
    return MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()


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


@dataclass
class Comm:
    """A communicator over the layer dimension plus the buffer policy for device arrays.

    ``comm`` is an ``mpi4py.MPI.Comm`` (a split of COMM_WORLD when data parallelism is added, so
    every method here works on whatever communicator it is given).
    """

    comm: object
    cuda_aware: bool = False
    stats: CommStats = field(default_factory=CommStats)

    @classmethod
    def world(cls) -> "Comm":
        MPI = _mpi()
        aware, _ = detect_cuda_aware()
        return cls(MPI.COMM_WORLD, aware)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    # -- buffers --------------------------------------------------------------------------------
    def _host_or_device(self, a):
        """(buffer to hand to MPI, whether it is a host staging copy) for a contiguous array."""
        if isinstance(a, np.ndarray):
            return a, False
        if self.cuda_aware:
            import cupy

            cupy.cuda.get_current_stream().synchronize()
            return a, False
        import cupy

        host = cupy.cuda.alloc_pinned_memory(a.nbytes)
        h = np.frombuffer(host, a.dtype, a.size).reshape(a.shape)
        a.get(out=h)  # synchronises the stream that produced ``a``
        return h, True

    def isend(self, a, dest: int, tag: int) -> "PendingSend":
        """Non-blocking send of a copy of array ``a`` (the caller may overwrite ``a`` at once)."""
        buf, _ = self._host_or_device(a.copy())
        self.stats.messages += 1
        self.stats.bytes += a.nbytes
        return PendingSend(self.comm.Isend(buf, dest=dest, tag=tag), buf)

    def recv_into(self, a, source: int, tag: int) -> None:
        """Blocking receive into the contiguous array ``a`` (device arrays staged when needed)."""
        if isinstance(a, np.ndarray) or self.cuda_aware:
            if not isinstance(a, np.ndarray):
                import cupy

                cupy.cuda.get_current_stream().synchronize()
            self.comm.Recv(a, source=source, tag=tag)
            return
        h = np.empty(a.shape, a.dtype)
        self.comm.Recv(h, source=source, tag=tag)
        a.set(h)

    @staticmethod
    def waitall(pending) -> None:
        """Complete a list of :class:`PendingSend` (their buffers are released afterwards)."""
        if pending:
            _mpi().Request.Waitall([p.request for p in pending])

    # -- collectives ----------------------------------------------------------------------------
    def allreduce_sum(self, x: float) -> float:
        if self.size == 1:
            return float(x)
        self.stats.collectives += 1
        return float(self.comm.allreduce(float(x)))

    def bcast_array(self, a, root: int, shape, dtype, xp):
        """Broadcast an array from ``root`` (others pass None); returns it on every rank."""
        if self.size == 1:
            return a
        self.stats.collectives += 1
        if self.rank == root:
            host = np.ascontiguousarray(a if isinstance(a, np.ndarray) else a.get())
        else:
            host = np.empty(shape, dtype)
        self.comm.Bcast(host, root=root)
        return xp.asarray(host)

    def bcast_obj(self, obj, root: int = 0):
        if self.size == 1:
            return obj
        self.stats.collectives += 1
        return self.comm.bcast(obj, root=root)

    def gather_obj(self, obj, root: int = 0):
        if self.size == 1:
            return [obj]
        self.stats.collectives += 1
        return self.comm.gather(obj, root=root)

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()


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


def abort_all(comm, exc: BaseException, code: int = 1) -> None:
    """Report ``exc`` as this rank's failure and stop every rank of ``comm`` with status ``code``."""
    rank = comm.Get_rank() if comm is not None else 0
    msg = f"gpubraid: rank {rank} failed: {type(exc).__name__}: {exc}"
    if not isinstance(exc, UserError):
        traceback.print_exception(exc, file=sys.stderr)
    print(msg, file=sys.stderr, flush=True)
    if comm is not None and comm.Get_size() > 1:
        comm.Abort(code)
    sys.exit(code)
