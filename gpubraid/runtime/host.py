"""Host kernels: the C sweeps of ``kernels/dense_host.c``, compiled on first use and called through ctypes.

The CPU counterpart of :mod:`gpubraid.runtime.cuda`: where CuPy compiles the ``.cu`` sources with
NVRTC, this module compiles ``dense_host.c`` with the system C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang``) into a shared library cached under ``$GPUBRAID_CACHE_DIR`` (default
``~/.cache/gpubraid``), keyed by the source, the compiler, its flags and the CPU, so a cluster node
of another CPU type compiles its own.  Ranks that start together may compile at once: each writes
its own temporary file and renames it into place.

Without a compiler (or with ``GPUBRAID_HOST_KERNELS=0``) nothing is compiled and the steps run their
NumPy formulas: the same numbers to round-off.  :func:`status` says which, for ``gpubraid info``.

Launchers take NumPy arrays and return False, having done nothing, when the arrays do not fit the
kernels (dtype, layout, width): the caller then runs the NumPy path.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import cuda

SOURCE, HEADER = "dense_host.c", "dense_host.h"
FLAGS = ("-O2", "-funroll-loops", "-march=native", "-std=gnu11", "-fPIC", "-shared")
MAX_C = 64  # kernels/dense_host.c MAX_C
ENV_SWITCH, ENV_CACHE = "GPUBRAID_HOST_KERNELS", "GPUBRAID_CACHE_DIR"

_I64 = ctypes.c_int64
_P = ctypes.c_void_p


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _cpu() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "gpubraid")
    return Path(root) / "host-kernels"


def _build(cc: str) -> Path:
    """The shared library for compiler ``cc``: the cached one, or compiled now (RuntimeError on failure)."""
    src_dir = cuda.kernel_source_dir()
    code = (src_dir / SOURCE).read_bytes() + (src_dir / HEADER).read_bytes()
    st = os.stat(cc)
    key = hashlib.sha256(b"\0".join([code, cc.encode(), str((st.st_size, st.st_mtime_ns)).encode(),
                                     " ".join(FLAGS).encode(), _cpu().encode()])).hexdigest()[:20]
    target = _cache_dir() / f"dense_host-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        run = subprocess.run([cc, *FLAGS, "-I", str(src_dir), "-o", tmp, str(src_dir / SOURCE), "-lm"],
                             capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {run.stderr.strip().splitlines()[-1:] or run.returncode}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib) -> None:
    for t in ("f64", "f32"):
        fwd, bwd = getattr(lib, f"gb_dense_forward_{t}"), getattr(lib, f"gb_dense_backward_{t}")
        fwd.argtypes = [_I64, _I64, _I64, ctypes.c_int, _P, _I64, _P, _I64, _P, _I64, _P, _P, _I64]
        bwd.argtypes = [_I64, _I64, _I64, ctypes.c_int, _P, _I64, _P, _I64, _P, _I64, _P, _I64, _P, _P, _I64,
                        _P, _I64, _P, _I64]
        fwd.restype = bwd.restype = ctypes.c_int


@functools.cache
def _load() -> tuple[object | None, str]:
    """(library or None, what happened)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "no", "off", "false"):
        return None, f"off ({ENV_SWITCH}={os.environ[ENV_SWITCH]})"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC): NumPy layer sweeps"
    try:
        path = _build(cc)
        lib = ctypes.CDLL(str(path))
        _declare(lib)
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
        return None, f"not built ({exc}): NumPy layer sweeps"
    return lib, f"compiled by {Path(cc).name} ({path})"


def library():
    """The loaded kernels, or None (see :func:`status`)."""
    return _load()[0]


def status() -> str:
    """One line: whether the host kernels run, and why not."""
    return _load()[1]


_SUFFIX = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}


def _layered(x, dtype, n: int, shape) -> int | None:
    """x's layer stride in elements when x is a NumPy array (n, *shape) of ``dtype`` whose layers are
    each contiguous; else None."""
    if type(x) is not np.ndarray or x.dtype != dtype or x.shape != (n, *shape) or n < 1:
        return None
    step, item = x.strides[0], dtype.itemsize
    if step <= 0 or step % item or not x[0].flags.c_contiguous:
        return None
    return step // item


def _sizes(U) -> tuple[int, int, int]:
    """(n, B, C) of states U (n + 1, B, C); (0, 0, 0) for any other rank."""
    return (U.shape[0] - 1, U.shape[1], U.shape[2]) if U.ndim == 3 else (0, 0, 0)


def _ptr(x) -> int:
    return x.__array_interface__["data"][0]


def dense_forward(U, K, b, h, act: int, keep: bool):
    """U[i + 1] = U[i] + h_i σ(K_i U[i] + b_i), i = 0..n − 1, in place; U (n + 1, B, C), K (n, C, C),
    b (n, C), h (n,), one float dtype.  Returns σ'(z) (n, B, C) when ``keep``, else None; or
    NotImplemented (nothing done) when the kernels are not there or the arrays do not fit them."""
    lib = library()
    dt = U.dtype
    if lib is None or dt not in _SUFFIX:
        return NotImplemented
    n, B, C = _sizes(U)
    h = np.ascontiguousarray(h, dtype=dt)
    su, sk, sb = _layered(U, dt, n + 1, (B, C)), _layered(K, dt, n, (C, C)), _layered(b, dt, n, (C,))
    if None in (su, sk, sb) or not 0 < C <= MAX_C or B < 1 or h.shape != (n,):
        return NotImplemented
    D = np.empty((n, B, C), dt) if keep else None
    fn = getattr(lib, f"gb_dense_forward_{_SUFFIX[dt]}")
    fn(n, B, C, act, _ptr(U), su, _ptr(K), sk, _ptr(b), sb, _ptr(h), None if D is None else _ptr(D), B * C)
    return D


def dense_backward(U, Lam, K, b, h, act: int, D, gK, gb) -> bool:
    """Lam[i] = Lam[i + 1] + h_i K_iᵀ (σ'(z_i) ⊙ Lam[i + 1]), i = n − 1..0, in place (Lam (n + 1, B, C),
    Lam[n] given), and the layers' gradients added into gK (n, C, C), gb (n, C); σ'(z_i) from
    ``D`` (:func:`dense_forward`'s) or recomputed when None.  False (nothing done) when the kernels are
    not there or the arrays do not fit them."""
    lib = library()
    dt = U.dtype
    if lib is None or dt not in _SUFFIX:
        return False
    n, B, C = _sizes(U)
    h = np.ascontiguousarray(h, dtype=dt)
    s = [_layered(U, dt, n + 1, (B, C)), _layered(Lam, dt, n + 1, (B, C)), _layered(K, dt, n, (C, C)),
         _layered(b, dt, n, (C,)), _layered(gK, dt, n, (C, C)), _layered(gb, dt, n, (C,)),
         B * C if D is None else _layered(D, dt, n, (B, C))]
    if None in s or not 0 < C <= MAX_C or B < 1 or h.shape != (n,):
        return False
    su, sl, sk, sb, sgk, sgb, sd = s
    fn = getattr(lib, f"gb_dense_backward_{_SUFFIX[dt]}")
    fn(n, B, C, act, _ptr(U), su, _ptr(Lam), sl, _ptr(K), sk, _ptr(b), sb, _ptr(h),
       None if D is None else _ptr(D), sd, _ptr(gK), sgk, _ptr(gb), sgb)
    return True
