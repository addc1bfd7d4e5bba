"""The host allocator setting: applied once on glibc, never over the user's own tunables, and the
same numbers either way; arrays on a cache line in the layout asked for."""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from gpubraid.runtime.allocator import SMALL, empty_aligned, empty_aligned_like

PROBE = ("import json; from gpubraid.runtime.allocator import keep_freed_memory as k; "
         "print(json.dumps([k(), k()]))")


def _probe(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))},
                              **env})
    return json.loads(out.stdout)


def test_applied_once_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert _probe() == [True, True]


@pytest.mark.parametrize("var", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_",
                                 "GLIBC_TUNABLES"])
def test_the_users_own_tunables_are_left_alone(var):
    assert _probe(**{var: "131072" if var != "GLIBC_TUNABLES" else "glibc.malloc.trim_threshold=131072"}) \
        == [False, False]


def test_training_numbers_do_not_depend_on_the_allocator(tmp_path):
    runs = []
    for env in ({}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        out = tmp_path / f"m{len(runs)}.json"
        subprocess.run([sys.executable, "-m", "gpubraid", "train", "peaks", "--layers", "8", "--iterations", "3",
                        "--n-train", "300", "--no-progress", "--metrics", str(out)], check=True, capture_output=True,
                       env={**os.environ, **env})
        runs.append([e["objective"] for e in json.loads(out.read_text())["history"]])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("shape, axes", [((70, 30, 50), None), ((2, 3, 40, 50, 60), (0, 1, 3, 4, 2)),
                                         ((100001,), None), ((7, 3, 5), None), ((2, 3, 4, 5, 6), (0, 1, 3, 4, 2))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_empty_aligned_gives_the_asked_layout_on_a_cache_line_from_64_KiB(shape, axes, dtype):
    for _ in range(8):  # glibc's blocks start at varying 16-byte offsets: try several
        a = empty_aligned(np, shape, dtype, axes)
        assert a.shape == shape and a.dtype == dtype
        assert a.ctypes.data % 64 == 0 or a.nbytes < SMALL
        order = np.argsort([-s for s in a.strides], kind="stable")
        assert tuple(order) == (axes or tuple(range(len(shape))))
        a[...] = 1.5  # writable, and the memory is its own
        like = empty_aligned_like(np, a)
        assert like.shape == a.shape and like.strides == a.strides
        assert like.ctypes.data % 64 == 0 or a.nbytes < SMALL
