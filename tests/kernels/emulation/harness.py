"""Build the CUDA kernels for the CPU (g++ with cuda_shim.h) and call them on NumPy arrays.

:func:`build` compiles ``wrappers.cpp`` (which includes ``conv.cu`` and ``dense.cu`` from a kernel
directory) into a shared library; :class:`Emulator` wraps it with the same signatures as the
launchers in :mod:`gpubraid.runtime.cuda`, using that module's launch-geometry functions, so the grids the
GPU path launches are the grids the tests emulate.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from gpubraid.runtime import cuda

HERE = Path(__file__).resolve().parent
_CT = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_CT_INV = {c: d for d, c in _CT.items()}


def gxx() -> str | None:
    """Path of g++, or None."""
    return shutil.which("g++")


def build(kernel_dir: Path, out: Path, defines: tuple[str, ...] = ()) -> Path:
    """Compile the kernels in ``kernel_dir`` with the shim into the shared library ``out``."""
    cmd = [gxx(), "-std=c++20", "-O1", "-shared", "-fPIC", "-include", str(HERE / "cuda_shim.h"),
           f"-I{kernel_dir}", *(f"-D{d}" for d in defines), str(HERE / "wrappers.cpp"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"emulation build failed:\n{' '.join(cmd)}\n{res.stderr}")
    return out


def _ptr(a: np.ndarray):
    assert a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.c_void_p)


def _geom(grid, block):
    return (ctypes.c_uint * 6)(*grid, *block)


class Emulator:
    """The kernels of a built library, called like gpubraid.runtime.cuda's launchers on NumPy arrays."""

    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))

    def _fn(self, name):
        return getattr(self.lib, name)

    @staticmethod
    def _c(*arrays):
        dt = {a.dtype for a in arrays}
        assert len(dt) == 1, dt
        return [np.ascontiguousarray(a) for a in arrays], _CT[arrays[0].dtype]

    # -- conv
    def conv3x3(self, mode, x, K, b, h, r, act):
        """One conv3x3_kernel<T, mode> launch; returns out (L, B, C, H, W)."""
        (x, K, b, h, r), ct = self._c(x, K, b, h, r)
        L, B, C, H, W = x.shape
        out = np.full_like(x, np.nan)
        self._fn(f"emu_conv3x3_{ct}_{mode}")(
            _geom(*cuda.conv_launch(L, B, C, H, W)), *map(_ptr, (x, K, b, h, r, out)),
            *map(ctypes.c_int, (L, B, C, H, W, act)))
        return out

    def conv_forward(self, u, K, b, h, act):
        return self.conv3x3(cuda.CONV_FORWARD, u, K, b, h, u, act)

    def conv_adjoint(self, u, lam, K, b, h, act):
        a = self.conv3x3(cuda.CONV_ACT_GRAD, u, K, b, h, lam, act)
        return self.conv3x3(cuda.CONV_TRANSPOSE, a, K, b, h, lam, act)

    def conv_param_grad(self, u, lam, K, b, h, act):
        a = self.conv3x3(cuda.CONV_ACT_GRAD, u, K, b, h, lam, act)
        (a, u, h), ct = self._c(a, u, h)
        L, B, C, H, W = u.shape
        dK = np.full(K.shape, np.nan, dtype=u.dtype)
        db = np.full(b.shape, np.nan, dtype=u.dtype)
        self._fn(f"emu_conv_param_grad_{ct}")(
            _geom(*cuda.conv_grad_launch(L, C)), *map(_ptr, (a, u, h, dK, db)),
            *map(ctypes.c_int, (L, B, C, H, W)))
        return dK, db

    # -- dense (matrix products in NumPy, as cupy.matmul does them on the GPU)
    def dense_act(self, mode, z, b, h, r, act):
        (z, b, h, r), ct = self._c(z, b, h, r)
        L, B, C = r.shape
        out = np.full_like(r, np.nan)
        self._fn(f"emu_dense_act_{ct}_{mode}")(
            _geom(*cuda.dense_launch(L * B * C)), *map(_ptr, (z, b, h, r, out)),
            *map(ctypes.c_int, (L, B, C, act)))
        return out

    def dense_forward(self, u, K, b, h, act):
        return self.dense_act(cuda.DENSE_FORWARD, u @ K.transpose(0, 2, 1), b, h, u, act)

    def dense_adjoint(self, u, lam, K, b, h, act):
        a = self.dense_act(cuda.DENSE_ACT_GRAD, u @ K.transpose(0, 2, 1), b, h, lam, act)
        return lam + h[:, None, None] * (a @ K)

    def dense_param_grad(self, u, lam, K, b, h, act):
        a = self.dense_act(cuda.DENSE_ACT_GRAD, u @ K.transpose(0, 2, 1), b, h, lam, act)
        (a, h), ct = self._c(a, h)
        L, B, C = a.shape
        db = np.full((L, C), np.nan, dtype=a.dtype)
        self._fn(f"emu_dense_bias_grad_{ct}")(
            _geom(*cuda.dense_bias_grad_launch(L)), *map(_ptr, (a, h, db)), *map(ctypes.c_int, (L, B, C)))
        return h[:, None, None] * (a.transpose(0, 2, 1) @ u), db
