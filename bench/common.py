"""Shared helpers of the gpubraid benchmarks: machine/version info, timing, JSON output, CLI.

Every benchmark writes one JSON document ``{"benchmark", "machine", "versions", "date",
"config", "results", ...}`` into its run's directory, ``bench/results/<date>-<host-or-device>/<name>.json``
(or the directory given by ``--out``); plots are made from those files only (``python -m bench.plot``).
Run the benchmarks from the repository root as modules: ``python -m bench.<name>``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

# One BLAS thread per process (set before NumPy loads): single-process and MPI runs then use the
# same per-rank compute, and 2 ranks on this 2-core machine do not fight over BLAS threads.
for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"


# -- machine and versions --------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str | None:
    """Name of CUDA device 0 when CuPy sees one, else None."""
    try:
        from gpubraid.runtime.backend import gpu_available
        if not gpu_available():
            return None
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None


def machine_info() -> dict:
    g = gpu_name()
    return {"hostname": socket.gethostname(), "cpu_model": cpu_model(), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "device": g if g is not None else "cpu"}


def _version(mod: str) -> str | None:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "unknown")
    except Exception:
        return None


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


# The code a benchmark measured is the code at its start (others commit while it runs).
GIT_AT_START = {"git_commit": _git("rev-parse", "--short", "HEAD"),
                "gpubraid_dirty": bool(_git("status", "--porcelain", "--", "gpubraid"))}


def versions() -> dict:
    import gpubraid
    out = {"gpubraid": getattr(gpubraid, "__version__", "unknown"), "numpy": np.__version__,
           "mpi4py": _version("mpi4py"), "mpi_library": None, "cupy": _version("cupy"),
           "torch": _version("torch"), "matplotlib": _version("matplotlib")}
    try:
        from mpi4py import MPI
        out["mpi_library"] = MPI.Get_library_version().strip().splitlines()[0]
    except Exception:
        pass
    out.update(GIT_AT_START)
    out["git_commit_at_end"] = _git("rev-parse", "--short", "HEAD")
    return out


def host_tag() -> str:
    """File-name tag: the GPU name when there is one, else the hostname (safe characters only)."""
    g = gpu_name()
    tag = g if g is not None else socket.gethostname()
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_") or "host"


def today() -> str:
    return _dt.date.today().isoformat()


# -- timing ------------------------------------------------------------------------------------------
def sync_of(xp):
    """A device synchronisation callable for array module ``xp`` (no-op for NumPy)."""
    if xp is np or getattr(xp, "__name__", "") == "numpy":
        return lambda: None
    return lambda: xp.cuda.get_current_stream().synchronize()


def time_it(fn, repeats: int = 5, warmup: int = 1, sync=None, min_time: float = 0.0) -> dict:
    """Median/min/max wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    With ``min_time`` > 0 each sample loops ``fn`` until at least that long and reports the mean
    per call (for micro-benchmarks below the timer's resolution).
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            sync()
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        samples.append(dt / n)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "repeats": repeats, "samples_s": samples}


def median(xs):
    return statistics.median(xs) if xs else None


def seconds_per_step(metrics: dict, skip: int = 1, per_evaluation: bool = False) -> float:
    """Median seconds between consecutive entries of a training run's history after the first
    ``skip`` (start-up and first touches), per step, or per evaluation (a step's line-search trials
    counted) with ``per_evaluation``."""
    h = metrics["history"][skip:]
    return statistics.median((b["time_s"] - a["time_s"]) / ((b.get("n_evals") or 1) if per_evaluation else 1)
                             for a, b in zip(h, h[1:]))


# -- output ------------------------------------------------------------------------------------------
def run_dir(out_dir=None) -> Path:
    """The directory of this run's results: ``out_dir``, else bench/results/<date>-<host-or-device>/."""
    d = Path(out_dir) if out_dir else RESULTS / f"{today()}-{host_tag()}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def result_path(name: str, out_dir=None) -> Path:
    """``<run directory>/<name>.json`` (see :func:`run_dir`)."""
    return run_dir(out_dir) / f"{name}.json"


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_default))
    os.replace(tmp, path)
    return path


def document(name: str, config: dict, results, **extra) -> dict:
    return {"benchmark": name, "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(), "versions": versions(), "config": config,
            "results": results, **extra}


def load_json(path) -> dict:
    return json.loads(Path(path).read_text())


#: Environment of the ``gpubraid`` subprocesses the benchmarks start: one BLAS thread, NumPy backend,
#: this checkout first on the path.
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "GPUBRAID_BACKEND": "numpy",
           "PYTHONPATH": str(REPO)}


def train_cli(ranks: int, args: list, workdir: str, trace: bool = False, timeout: float = 3600,
              env: dict | None = None, entry: tuple = ("-m", "gpubraid")) -> dict:
    """Run ``gpubraid train ARGS --no-progress`` (under ``mpiexec -n ranks`` when ranks > 1) and return
    its metrics JSON; with ``trace`` also ``--trace <workdir>/t.json``; ``env``: variables added to
    :data:`CLI_ENV`; ``entry``: the interpreter's arguments that run the command line (another
    module that calls it).  SystemExit with the stderr tail when the run fails."""
    metrics = os.path.join(workdir, "m.json")
    cmd = [sys.executable, *entry, "train", *args, "--no-progress", "--metrics", metrics]
    if trace:
        cmd += ["--trace", os.path.join(workdir, "t.json")]
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks), *cmd]
    run_checked(cmd, env, timeout)
    return json.loads(Path(metrics).read_text())


def run_checked(cmd: list, env: dict | None = None, timeout: float = 3600) -> None:
    """Run ``cmd`` with :data:`CLI_ENV` and ``env`` added; SystemExit with the stderr tail when it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, env={**CLI_ENV, **(env or {})}, timeout=timeout)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke-test size (well under a minute)")
    p.add_argument("--out", default=None, help="output directory (default bench/results/<date>-<host-or-device>)")
    p.add_argument("--no-plot", action="store_true", help="write the JSON only")
    return p


def runs_of(name: str) -> list[Path]:
    """Every result file of benchmark ``name`` under bench/results, oldest run first (run
    directories start with their date)."""
    return sorted(RESULTS.glob(f"*/{name}.json"), key=lambda p: (p.parent.name[:10], p.stat().st_mtime))


def latest(name: str) -> Path | None:
    """The newest result file of benchmark ``name`` under bench/results."""
    files = runs_of(name)
    return files[-1] if files else None


def mpiexec() -> str | None:
    """Path of mpiexec next to this interpreter, or on PATH."""
    cand = Path(sys.executable).parent / "mpiexec"
    if cand.exists():
        return str(cand)
    from shutil import which
    return which("mpiexec")


def mpi_oversubscribe_args(mpiexec_path: str, n: int) -> list[str]:
    """Arguments that let ``n`` ranks run on fewer cores (Open MPI needs --oversubscribe)."""
    try:
        v = subprocess.run([mpiexec_path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except Exception:
        v = ""
    if "Open MPI" in v or "OpenRTE" in v:
        return ["--oversubscribe"]
    return []


def bench_env() -> dict:
    """Environment for benchmark subprocesses: one BLAS thread per process, NumPy backend."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(k, "1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def subplots(*grid, **kwargs):
    """``matplotlib.pyplot.subplots(*grid, **kwargs)`` on the file-only Agg backend: (figure, axes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, **kwargs)


def save_figure(fig, json_path, png_path=None, dpi: int = 110) -> Path:
    """Lay out and write ``fig`` as PNG (default: the JSON's path with .png) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png = Path(png_path) if png_path else Path(json_path).with_suffix(".png")
    fig.savefig(png, dpi=dpi)
    plt.close(fig)
    return png


def finish(name: str, doc: dict, args, plot) -> Path:
    """Write ``doc`` as the benchmark's result JSON, print its path, and plot it unless --no-plot."""
    path = write_json(result_path(name, args.out), doc)
    print(path)
    if not args.no_plot:
        print(plot(path))
    return path
