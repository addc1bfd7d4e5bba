"""The host allocator setting: applied once on glibc, never over the user's own tunables, and the
same numbers either way."""
import json
import os
import platform
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("var", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
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
