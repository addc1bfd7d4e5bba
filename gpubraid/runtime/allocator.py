"""Host memory that is freed stays with the process for the next allocation of its size.

Training allocates and frees the same large arrays every step: states and adjoints of every layer,
each step's temporaries (z, σ(z), σ'(z)·λ: B × C numbers, 320 kB at peaks' 5000 × 8).  glibc serves
blocks above its mmap threshold (128 kB, raised up to 32 MiB as blocks are freed) from fresh
mappings and trims freed heap tops back to the system, so each such array is paid again in page
faults: a 1.3 MB state array filled once cost 0.86 ms fresh against 0.036 ms reused on this
project's VM (``bench/README.md``, "Host allocator").  :func:`keep_freed_memory` sets glibc's mmap
threshold to 32 MiB and its trim threshold to 1 GiB (``mallopt``), so freed blocks are reused;
memory the process has used is then kept until it exits, as a caching allocator would.

Blocks above 32 MiB would still be fresh mappings (glibc does not raise the threshold further):
at 256 layers a full batch's states are 82 MB, and a two-level MGRIT evaluation allocates about ten
arrays of 41–82 MB.  So glibc is also told to make no mappings at all (``M_MMAP_MAX`` = 0): every
block comes from the heap, and a freed one is there for the next array of its size.

Nothing is changed when the user set glibc's own tunables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_MAX_``, ``GLIBC_TUNABLES``) or when the C library is not
glibc.

:func:`empty_aligned` gives NumPy arrays that start on a cache line (64 bytes).  glibc's blocks start
16 bytes into one, at any of the four 16-byte offsets; oneDNN's backward convolution (the float32
conv step on PyTorch's kernels) ran 1.9 ms on an aligned (50, 8, 28, 28) array and 3.4–3.8 ms at a
32-byte offset on this project's VM.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os

import numpy as np

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30

USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")


@functools.cache
def keep_freed_memory() -> bool:
    """Set the thresholds (and no mappings) once per process; True when they were set."""
    if any(os.environ.get(v) for v in USER_TUNABLES):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_MMAP_MAX, 0)))


CACHE_LINE = 64


SMALL = 1 << 16  # arrays below 64 KiB: the alignment is not worth the bookkeeping (microseconds a call)


def empty_aligned(xp, shape, dtype, axes=None):
    """``xp.empty(shape, dtype)``, starting on a 64-byte boundary when ``xp`` is NumPy (CuPy's
    allocations already are) and the array has 64 KiB or more.  ``axes``: the axes from slowest to
    fastest in memory (default 0, 1, ..., C order), e.g. (0, 1, 3, 4, 2) for (L, B, C, H, W) stored
    channels-last."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if xp is not np or nbytes < SMALL:
        if axes is None:
            return xp.empty(shape, dtype=dtype)
        return xp.empty([shape[a] for a in axes], dtype=dtype).transpose(np.argsort(axes))
    buf = np.empty(nbytes + CACHE_LINE, dtype=np.uint8)
    start = -buf.ctypes.data % CACHE_LINE
    flat = buf[start:start + nbytes].view(dtype)
    if axes is None:
        return flat.reshape(shape)
    return flat.reshape([shape[a] for a in axes]).transpose(np.argsort(axes))


def empty_aligned_like(xp, a):
    """:func:`empty_aligned` of ``a``'s shape and dtype, its axes in the order of ``a``'s strides."""
    if xp is not np or a.nbytes < SMALL:
        return xp.empty_like(a)
    axes = tuple(int(i) for i in np.argsort([-abs(s) for s in a.strides], kind="stable"))
    return empty_aligned(np, a.shape, a.dtype, None if axes == tuple(range(a.ndim)) else axes)
