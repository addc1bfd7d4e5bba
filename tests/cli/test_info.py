"""``gpubraid info``: the machine, MPI and backend report, as text and JSON, on one and two ranks."""
from __future__ import annotations

import json

import pytest

from gpubraid.cli import info
from tests.cli.launch import run_cli


def test_info_text_and_json():
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    assert "CUDA-aware MPI" in res.stdout and "decided by" in res.stdout
    assert "MPI library" in res.stdout and "backend" in res.stdout
    res = run_cli("info", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert isinstance(info["cuda_aware"], bool) and info["cuda_aware_decided_by"]
    assert info["ranks"] == 1 and info["backend"] == "numpy" and info["gpus"] == []
    assert info["mpi_library"] and info["gpubraid"]


def test_mpiexec_warning():
    assert info.mpiexec_warning("/opt/mpich/bin/mpiexec", "/opt/mpich/lib/libmpi.so.12") is None
    assert "different MPI" in info.mpiexec_warning("/usr/bin/mpiexec", "/opt/mpich/lib/libmpi.so.12")
    assert "no mpiexec" in info.mpiexec_warning(None, "/opt/mpich/lib/libmpi.so.12")


@pytest.mark.mpi
def test_mpi_info(mpiexec):
    res = run_cli("info", "--json", launcher=[mpiexec, "-n", "2"], timeout=60)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["ranks"] == 2 and [p["rank"] for p in info["processes"]] == [0, 1]
    assert sorted(p["local_rank"] for p in info["processes"]) == [0, 1]
