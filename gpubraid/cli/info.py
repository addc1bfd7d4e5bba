"""``gpubraid info``: the software stack, and how MPI and the GPUs are set up on every rank."""
from __future__ import annotations

import os
import sys

from .. import __version__
from ..errors import UserError


def _prefix(path: str | None) -> str | None:
    """The installation prefix of a file in PREFIX/bin or PREFIX/lib* (its grandparent)."""
    if not path:
        return None
    return os.path.dirname(os.path.dirname(os.path.realpath(path)))


def mpiexec_warning(mpiexec: str | None, libmpi: str | None) -> str | None:
    """A warning when the first ``mpiexec`` on PATH seems to belong to another MPI than ``libmpi``."""
    if mpiexec is None:
        return "no mpiexec on PATH (pip install mpich, or load your cluster's MPI module)"
    if libmpi is None:
        return None
    a, b = _prefix(mpiexec), _prefix(libmpi)
    if a != b:
        return (f"mpiexec ({mpiexec}, prefix {a}) may belong to a different MPI than the loaded "
                f"libmpi ({libmpi}, prefix {b}); launch with the mpiexec of the MPI mpi4py uses")
    return None


def gather_info() -> dict:
    """The report of ``gpubraid info`` (the per-process entries gathered on every rank)."""
    import platform
    import shutil
    import socket

    import mpi4py
    import numpy as np
    from mpi4py import MPI

    from ..runtime.backend import _cupy_or_none, resolve_backend
    from ..runtime.comm import detect_cuda_aware, mpi_library_path
    from ..runtime.placement import blas_threads, fit_to_host, node_local_rank

    cupy_version = None
    try:
        import cupy

        cupy_version = cupy.__version__
    except Exception:  # not installed, or a broken CUDA installation
        pass
    gpus = []
    cp = _cupy_or_none()
    if cp is not None:
        for i in range(cp.cuda.runtime.getDeviceCount()):
            name = cp.cuda.runtime.getDeviceProperties(i)["name"]
            gpus.append(name.decode() if isinstance(name, bytes) else str(name))
    try:
        backend = resolve_backend().name
    except UserError as exc:
        backend = f"unavailable: {exc}"
    from ..network import torch_conv
    from ..runtime import host

    try:
        engine = "numpy" if torch_conv.load() is None else "torch (float32 convolutions on PyTorch's CPU kernels)"
    except UserError as exc:
        engine = f"unavailable: {exc}"
    try:
        aware, how = detect_cuda_aware()
    except UserError as exc:
        aware, how = False, str(exc)
    libmpi = mpi_library_path()
    mpiexec = shutil.which("mpiexec")
    world = MPI.COMM_WORLD
    pools = fit_to_host(world)  # as gpubraid train sizes them
    local = node_local_rank()
    device = None
    if cp is not None and gpus:
        device = local % len(gpus)
    threads = blas_threads()
    me = {"rank": world.Get_rank(), "host": socket.gethostname(), "local_rank": local, "gpu": device,
          "blas_threads": threads}
    processes = world.allgather(me)
    return {
        "gpubraid": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": " ".join(MPI.Get_library_version().strip().splitlines()[0].split()),
        "mpi_library_path": libmpi,
        "cupy": cupy_version,
        "backend": backend,
        "step_engine": engine,
        "host_kernels": host.status(),
        "gpus": gpus,
        "cuda_aware": aware,
        "cuda_aware_decided_by": how,
        "ranks": world.Get_size(),
        "node_local_rank": local,
        "blas_threads": threads,
        "threads_decided_by": pools.reason,
        "processes": processes,
        "mpiexec": mpiexec,
        "mpiexec_warning": mpiexec_warning(mpiexec, libmpi),
    }


def format_info(info: dict) -> str:
    """``gpubraid info``'s human-readable report."""
    rows = [
        ("gpubraid", info["gpubraid"]), ("python", info["python"]), ("numpy", info["numpy"]),
        ("mpi4py", info["mpi4py"]), ("MPI library", info["mpi_library"]),
        ("libmpi", info["mpi_library_path"] or "not found"), ("mpiexec", info["mpiexec"] or "not found"),
        ("cupy", info["cupy"] or "not installed"), ("backend", info["backend"]),
        ("CPU step engine", info["step_engine"]),
        ("host kernels", info["host_kernels"]),
        ("GPUs", ", ".join(f"{i}: {n}" for i, n in enumerate(info["gpus"])) or "none"),
        ("CUDA-aware MPI", f"{'yes' if info['cuda_aware'] else 'no'} "
                           f"(decided by {info['cuda_aware_decided_by']})"),
        ("ranks", info["ranks"]), ("node-local rank", info["node_local_rank"]),
        ("BLAS threads", f"{info['blas_threads'] or 'unknown'} per rank ({info['threads_decided_by']})"),
    ]
    lines = [f"{k:<16}{v}" for k, v in rows]
    if info["ranks"] > 1:
        for p in info["processes"]:
            gpu = "-" if p["gpu"] is None else p["gpu"]
            lines.append(f"  rank {p['rank']:<4} host {p['host']}  local rank {p['local_rank']}  GPU {gpu}  "
                         f"BLAS threads {p['blas_threads'] or 'unknown'}")
    if info["mpiexec_warning"]:
        lines.append(f"warning: {info['mpiexec_warning']}")
    return "\n".join(lines)


def print_info(as_json: bool = False) -> None:
    """``gpubraid info``: gather the report on every rank, print it on rank 0."""
    import json

    from mpi4py import MPI

    info = gather_info()
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(json.dumps(info, indent=1) if as_json else format_info(info), flush=True)
