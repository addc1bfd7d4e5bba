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
