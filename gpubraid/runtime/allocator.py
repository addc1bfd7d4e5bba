"""Host memory that is freed stays with the process for the next allocation of its size.

Training allocates and frees the same large arrays every step: states and adjoints of every layer,
each step's temporaries (z, σ(z), σ'(z)·λ: B × C numbers, 320 kB at peaks' 5000 × 8).  glibc serves
blocks above its mmap threshold (128 kB, raised up to 32 MiB as blocks are freed) from fresh
mappings and trims freed heap tops back to the system, so each such array is paid again in page
faults: a 1.3 MB state array filled once cost 0.86 ms fresh against 0.036 ms reused on this
project's VM (``bench/README.md``, "Host allocator").  :func:`keep_freed_memory` sets glibc's mmap
threshold to 32 MiB and its trim threshold to 1 GiB (``mallopt``), so freed blocks are reused;
memory the process has used is then kept until it exits, as a caching allocator would.

Nothing is changed when the user set glibc's own tunables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) or when the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30

USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def keep_freed_memory() -> bool:
    """Set the thresholds once per process; True when they were set."""
    if any(os.environ.get(v) for v in USER_TUNABLES):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
