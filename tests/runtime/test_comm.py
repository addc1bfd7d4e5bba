"""One failing rank stops every rank under mpiexec: one line, nothing hangs."""
import time

import pytest

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("trial", range(3))
def test_one_failing_rank_stops_every_rank(mpirun, trial):
    t0 = time.monotonic()
    out = mpirun(3, "abort_check.py", timeout=60)
    elapsed = time.monotonic() - t0
    assert out.returncode != 0
    assert out.stderr.count("gpubraid: rank 1 failed: RuntimeError: planted failure") == 1, out.stderr
    assert "unreachable" not in out.stdout
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("ranks", [1, 3])
def test_reductions_of_many_numbers_and_in_rank_order(mpirun, ranks):
    """allreduce_sums reduces a vector at once; allgather stacks every rank's numbers in rank order,
    sum_in_rank_order adds them in that order (the same bits as a sequential sum), allreduce_max;
    gather_rows puts every rank's rows (some ranks none) where the offsets say on rank 0 and
    scatter_rows hands them back, also for device arrays staged through host memory (a stand-in
    for CuPy's without a CUDA-aware MPI); seven collectives on more than one rank, none on one."""
    out = mpirun.json(ranks, "comm_check.py")
    assert out["sums_close"] and out["gathered_in_rank_order"] and out["max"]
    assert out["float_in_rank_order"] and out["array_in_rank_order"]
    assert out["gathered_rows"] and out["scattered_rows"] and out["staged_rows"]
    assert out["collectives"] == (7 if ranks > 1 else 0)
