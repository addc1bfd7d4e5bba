"""Each rank's BLAS and OpenMP threads: its share of the host's cores, unless the user sized them."""
import json
import os
import subprocess

import pytest

from gpubraid.runtime.placement import USER_SETTINGS, decide, threads_per_rank


@pytest.mark.parametrize("host_ranks, host_cores, own_cores, expected", [
    (2, 2, 2, 1),     # two ranks on two cores: one thread each
    (8, 64, 64, 8),   # eight unbound ranks on 64 cores
    (8, 64, 32, 8),   # bound to a socket of 32 shared by four ranks: still the even share
    (4, 64, 1, 1),    # bound to one core by the launcher: keeps it
    (8, 2, 2, 1),     # more ranks than cores: at least one
    (3, 16, 16, 5),
])
def test_threads_per_rank_is_the_even_share_within_the_ranks_own_cores(host_ranks, host_cores, own_cores, expected):
    assert threads_per_rank(host_ranks, host_cores, own_cores) == expected


def test_a_user_setting_wins_and_one_rank_keeps_the_defaults():
    for var in USER_SETTINGS:
        pools = decide(4, 16, 16, environ={var: "3"})
        assert pools.threads is None and f"{var}=3" in pools.reason
    assert decide(1, 16, 16, environ={}).threads is None
    assert decide(4, 16, 16, environ={"OMP_NUM_THREADS": ""}).threads == 4   # empty: not set


@pytest.mark.mpi
def test_ranks_sharing_a_host_split_its_cores(mpirun, tmp_path):
    """Under mpiexec -n 2 with no thread settings, Comm.world() gives each rank
    min(its cores, host cores // 2) BLAS threads, and PyTorch, imported later, as many; calling it
    again keeps that decision."""
    script = tmp_path / "threads_check.py"
    script.write_text(
        "import json\n"
        "from gpubraid.runtime.comm import Comm\n"
        "from gpubraid.runtime.placement import blas_threads, fit_to_host\n"
        "comm = Comm.world()\n"
        "import torch\n"
        "Comm.world()\n"
        "again = fit_to_host(comm.comm).reason\n"
        "rows = comm.comm.allgather((blas_threads(), torch.get_num_threads(), again))\n"
        "print(json.dumps(rows)) if comm.rank == 0 else None\n")
    env = {k: v for k, v in mpirun.env.items() if k not in USER_SETTINGS}
    out = subprocess.run(mpirun.command(2, script), capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = threads_per_rank(2, os.cpu_count(), len(os.sched_getaffinity(0)))
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r[:2] for r in rows] == [[expected, expected]] * 2
    # later calls keep the first decision: the OMP_NUM_THREADS it set is not taken for the user's
    assert all("share this host" in r[2] for r in rows), rows
