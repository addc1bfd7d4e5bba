"""Building the host kernels' library: ``kernels/dense_host.c`` compiled by the system C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``) into a shared library cached under
``$GPUBRAID_CACHE_DIR`` (default ``~/.cache/gpubraid``), keyed by the sources, the compiler, its
flags and the CPU, so a cluster node of another CPU type compiles its own.

The two element types compile at once (``-DGB_HOST_F64_ONLY``, ``-DGB_HOST_F32_ONLY``) and are
linked into one library: 7.3 s instead of 13.5 on the Intel VM of 2026-12-05.  Ranks that start together
may build at once: each works in a temporary directory of its own and renames its library into
place.  :mod:`gpubraid.runtime.host` loads it.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import cuda

SOURCE, HEADERS = "dense_host.c", ("dense_host.h", "head_host.h", "opening_host.h")
COMPILE = ("-O2", "-funroll-loops", "-march=native", "-std=gnu11", "-fPIC")
FLAGS = (*COMPILE, "-shared")  # the whole library in one command
PARTS = ("-DGB_HOST_F64_ONLY", "-DGB_HOST_F32_ONLY")  # compiled at once, then linked: half the wait
LIBS = ("-lm",)
ENV_CACHE = "GPUBRAID_CACHE_DIR"


def compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` split as the shell would (so ``ccache gcc`` or ``gcc -m64``
    work), else the first of cc, gcc and clang on PATH; None when there is none."""
    for words in (shlex.split(os.environ.get("CC", "")), ["cc"], ["gcc"], ["clang"]):
        path = shutil.which(words[0]) if words else None
        if path:
            return [path, *words[1:]]
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


def source_dir() -> Path:
    """The sources next to this code (a source checkout) or else the installed package data."""
    here = Path(__file__).resolve().parents[2] / "kernels"
    return here if (here / SOURCE).is_file() else cuda.kernel_source_dir()


def build(cc: list[str]) -> Path:
    """The shared library for compiler command ``cc``: the cached one, or compiled now, its two element
    types at once (RuntimeError on failure)."""
    src_dir = source_dir()
    code = b"".join((src_dir / name).read_bytes() for name in (SOURCE, *HEADERS))
    st = os.stat(cc[0])
    key = hashlib.sha256(b"\0".join([code, " ".join(cc).encode(), str((st.st_size, st.st_mtime_ns)).encode(),
                                     " ".join(FLAGS + PARTS + LIBS).encode(), _cpu().encode()])).hexdigest()[:20]
    target = _cache_dir() / f"dense_host-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(dir=target.parent)
    try:
        objs = [os.path.join(work, f"part{i}.o") for i in range(len(PARTS))]
        _run_all(cc, [[*cc, *COMPILE, part, "-c", "-I", str(src_dir), "-o", obj, str(src_dir / SOURCE)]
                      for part, obj in zip(PARTS, objs)])
        tmp = os.path.join(work, "lib.so")
        _run_all(cc, [[*cc, "-shared", "-o", tmp, *objs, *LIBS]])
        os.replace(tmp, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _run_all(cc: list[str], commands: list[list[str]], timeout: float = 300) -> None:
    """Run ``commands`` at once; RuntimeError with the last line a failed one wrote (or its exit status)."""
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            last = (err.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
            raise RuntimeError(f"{Path(cc[0]).name} failed: {last}")
