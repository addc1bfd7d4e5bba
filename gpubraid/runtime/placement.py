"""Where a rank runs on its host: its node-local rank (which GPU it takes) and its share of the
host's cores (the threads of its BLAS and OpenMP pools).

NumPy's BLAS (OpenBLAS, MKL, BLIS) and an OpenMP runtime each start one thread per core in every
process.  P ranks on a host of C cores then run P·C such threads, and a rank's BLAS threads, which
spin for a while after each call waiting for more work, take the cores the other ranks compute on.
On 2 cores, 2 data groups training peaks at 256 layers took 7.1 s for 60 steps with the default
pools and 2.4 s with one thread per rank.

:func:`fit_to_host` gives each rank ``min(cores it may run on, C // ranks on its host)`` threads
(at least one), through ``threadpoolctl`` for the libraries already loaded, ``OMP_NUM_THREADS`` for
those loaded later (PyTorch reads it when it starts its pool) and ``torch.set_num_threads`` when
PyTorch is loaded.  It changes nothing when the host runs one rank, or when the user sized the pools
(any of :data:`USER_SETTINGS` in the environment): those settings win.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

#: Environment variables by which a user sizes the pools; any of them set: gpubraid leaves them alone.
USER_SETTINGS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPools:
    """What :func:`fit_to_host` decided: ``threads`` per rank (None: left as they were) and why."""

    threads: int | None
    reason: str


#: This process's decision (None until :func:`fit_to_host` ran), for ``gpubraid info``.
CURRENT: ThreadPools | None = None


def node_local_rank() -> int:
    """This process's rank among the processes on its node (0 without MPI launcher variables)."""
    for var in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                "SLURM_LOCALID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID"):
        if var in os.environ:
            return int(os.environ[var])
    from mpi4py import MPI

    return on_host(MPI.COMM_WORLD)[0]


def rank_cores() -> int:
    """Cores this process may run on (its affinity mask; all the host's where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_rank(host_ranks: int, host_cores: int, own_cores: int) -> int:
    """min(``own_cores``, ``host_cores`` // ``host_ranks``), at least 1: a rank bound to a few cores
    keeps them, ranks sharing the host split it evenly."""
    return max(1, min(own_cores, host_cores // max(1, host_ranks)))


def decide(host_ranks: int, host_cores: int, own_cores: int, environ=os.environ) -> ThreadPools:
    """The pools' size for one of ``host_ranks`` ranks on a host of ``host_cores`` cores."""
    chosen = [f"{k}={environ[k]}" for k in USER_SETTINGS if environ.get(k)]
    if chosen:
        return ThreadPools(None, f"{', '.join(chosen)} set by you")
    if host_ranks <= 1:
        return ThreadPools(None, "one rank on this host: the libraries' defaults")
    n = threads_per_rank(host_ranks, host_cores, own_cores)
    return ThreadPools(n, f"{host_ranks} ranks share this host's {host_cores} cores")


def on_host(mpi_comm) -> tuple[int, int]:
    """(this rank's rank, how many ranks) among the ranks of ``mpi_comm`` (an mpi4py communicator)
    that run on this host.  Collective."""
    from mpi4py import MPI

    if mpi_comm.Get_size() == 1:
        return 0, 1
    host = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return host.Get_rank(), host.Get_size()
    finally:
        host.Free()


def fit_to_host(mpi_comm) -> ThreadPools:
    """Size this rank's thread pools to its share of the host (see the module docstring) and return
    the decision.  Collective over ``mpi_comm`` on its first call; later calls return that decision
    (the ``OMP_NUM_THREADS`` it set is not the user's)."""
    global CURRENT
    if CURRENT is not None:
        return CURRENT
    pools = decide(on_host(mpi_comm)[1], os.cpu_count() or 1, rank_cores())
    if pools.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=pools.threads)
        os.environ["OMP_NUM_THREADS"] = str(pools.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(pools.threads)
    CURRENT = pools
    return pools


def blas_threads() -> int | None:
    """Threads of the BLAS NumPy uses in this process, as ``threadpoolctl`` reads them (None: no BLAS
    it knows)."""
    from threadpoolctl import threadpool_info

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None
