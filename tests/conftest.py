"""Fixtures shared by every test directory: the float64 NumPy backend, ``mpiexec`` and launches of
``python`` (the scripts of tests/mpi/, or ``-m gpubraid``) under it, and a spiral data set with a
model trained on it (the model-file and trainer tests).

tests/mpi/ is on ``sys.path`` (pyproject's ``pythonpath``): its ``user_steps`` module is the "your
own layer" of the tests, importable by name like a user's module on PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from user_steps import spiral

from gpubraid.cli import main as cli
from gpubraid.runtime.backend import resolve_backend

MPI_SCRIPTS = Path(__file__).resolve().parent / "mpi"
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


class MPIRun:
    """Launches ``python`` under ``mpiexec -n n``; one BLAS thread per rank (ranks are
    oversubscribed on small machines) and unbuffered output (tests read it line by line)."""

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def __init__(self, mpiexec: str):
        self.mpiexec = mpiexec

    def command(self, n: int, *argv) -> list[str]:
        """``mpiexec -n n python ARGV``."""
        return [self.mpiexec, "-n", str(n), sys.executable, *map(str, argv)]

    def gpubraid(self, n: int, *argv) -> list[str]:
        """``mpiexec -n n python -m gpubraid ARGV``."""
        return self.command(n, "-m", "gpubraid", *argv)

    def __call__(self, n: int, script: str, *args, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run tests/mpi/``script`` with ``args`` on ``n`` ranks; its status, stdout and stderr."""
        return subprocess.run(self.command(n, MPI_SCRIPTS / script, *args), capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def json(self, n: int, script: str, *args, timeout: float = 180) -> dict:
        """Run tests/mpi/``script`` (which must succeed) and parse the JSON of its last output line."""
        out = self(n, script, *args, timeout=timeout)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def backend():
    """The NumPy backend in float64 (finite-difference and dot-product checks need it)."""
    return resolve_backend("numpy", "float64")


@pytest.fixture(scope="session")
def mpiexec() -> str:
    """Path of ``mpiexec`` (next to this interpreter, else on PATH); the test is skipped without one."""
    if MPIEXEC is None:
        pytest.skip("mpiexec not found")
    return MPIEXEC


@pytest.fixture(scope="session")
def mpirun(mpiexec) -> MPIRun:
    return MPIRun(mpiexec)


@pytest.fixture(scope="session")
def spiral_npz(tmp_path_factory):
    """An .npz of three spiral arms in 2-D: 600 training and 200 validation samples."""
    path = tmp_path_factory.mktemp("data") / "spiral.npz"
    (xt, yt), (xv, yv) = spiral(600, 0), spiral(200, 1)
    np.savez(path, x_train=xt, y_train=yt, x_val=xv, y_val=yv)
    return path


@pytest.fixture(scope="session")
def spiral_run(spiral_npz, tmp_path_factory):
    """The default method on the spiral (defaults for feature data), saved and with metrics."""
    out = tmp_path_factory.mktemp("run")
    rc = cli.main(["train", "--data", str(spiral_npz), "--no-progress", "--save", str(out / "m.safetensors"),
                   "--metrics", str(out / "m.json")])
    assert rc == 0
    return out / "m.safetensors", json.loads((out / "m.json").read_text())
