"""Array backend: the one place that chooses NumPy or CuPy, the dtype and the device.

Model and solver code never imports numpy/cupy for array math; it asks a :class:`Backend` for
``xp`` (the array module) and the dtype.  ``GPUBRAID_BACKEND=numpy|cupy`` overrides the automatic
choice (CuPy when it imports and a GPU is visible, NumPy otherwise).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UserError

BACKENDS = ("numpy", "cupy")


DTYPES = {"float64": np.float64, "float32": np.float32}


def _cupy_or_none():
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA driver/runtime mismatch raised at import
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    return _cupy_or_none() is not None


@dataclass(frozen=True)
class Backend:
    """The array library, dtype and device every array of a run lives on.

    Attributes:
        name: ``"numpy"`` or ``"cupy"``.
        xp: the array module.
        dtype: ``numpy.float64`` or ``numpy.float32``; all states and parameters use it.
        device: CUDA device ordinal (``None`` for NumPy).
    """

    name: str
    xp: Any = field(repr=False)
    dtype: Any
    device: int | None = None

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    @property
    def dtype_name(self) -> str:
        return np.dtype(self.dtype).name

    def asarray(self, a, dtype=None):
        """Array on this backend's device with this backend's dtype (or ``dtype``)."""
        return self.xp.asarray(a, dtype=self.dtype if dtype is None else dtype)

    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=self.dtype if dtype is None else dtype)

    def to_host(self, a) -> np.ndarray:
        """A NumPy copy (or view, for NumPy arrays) of ``a``."""
        if self.is_gpu and not isinstance(a, np.ndarray):
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def scalar(self, a) -> float:
        """A Python float from a 0-d array (synchronises the device)."""
        return float(self.to_host(a))

    def synchronize(self) -> None:
        """Wait for all queued device work (no-op on NumPy)."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def pinned_host_copy(self, a) -> np.ndarray:
        """A copy of device array ``a`` in page-locked host memory (waits for ``a``'s stream)."""
        mem = self.xp.cuda.alloc_pinned_memory(a.nbytes)
        host = np.frombuffer(mem, a.dtype, a.size).reshape(a.shape)
        a.get(out=host)
        return host

    def copy_from_host(self, dst, host: np.ndarray) -> None:
        """Write the host array ``host`` into ``dst`` (an array of this backend, same shape)."""
        if self.is_gpu:
            dst.set(host)
        else:
            dst[...] = host


def resolve_backend(name: str | None = None, dtype: str = "float64", device: int | None = None) -> Backend:
    """Choose the backend.

    Args:
        name: ``"numpy"``, ``"cupy"`` or ``None``/``"auto"`` (environment ``GPUBRAID_BACKEND``, then
            CuPy when a GPU is visible, else NumPy).
        dtype: ``"float64"`` or ``"float32"``.
        device: CUDA device ordinal for CuPy; default: node-local MPI rank modulo the device count.

    Raises:
        UserError: unknown backend or dtype, or CuPy requested without a usable GPU.
    """
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if name in (None, "", "auto"):
        name = os.environ.get("GPUBRAID_BACKEND", "") or None
        if name is None:
            name = "cupy" if gpu_available() else "numpy"
    if name not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)} (or auto); got {name!r}")
    if name == "numpy":
        return Backend("numpy", np, DTYPES[dtype], None)
    cupy = _cupy_or_none()
    if cupy is None:
        raise UserError("backend 'cupy' needs CuPy and a visible CUDA GPU (pip install 'gpubraid[gpu]'); "
                        "use --backend numpy on this machine")
    if device is None:
        from .placement import node_local_rank

        device = node_local_rank() % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(device).use()
    return Backend("cupy", cupy, DTYPES[dtype], device)
