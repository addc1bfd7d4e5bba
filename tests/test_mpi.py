"""Rank-count independence under mpiexec -n 1..4 (oversubscribed on small machines) and the abort path."""
import time

import numpy as np
import pytest

pytestmark = pytest.mark.mpi

def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


CONFIGS = {
    # kind, N, cfactor, nrelax, max_levels, tol, max_iter
    "dense-N37-FCF-3lvl-uneven": ("dense", 37, 4, 1, 3, 1e-12, 100),
    "conv-N8-F-2lvl-ranks-exceed-coarse": ("conv", 8, 4, 0, 2, 1e-12, 100),
    "dense-N33-FCF-maxlvl": ("dense", 33, 2, 1, 30, 1e-12, 100),
    "dense-N64-F-fixed-2-iterations": ("dense", 64, 4, 0, 30, 0.0, 2),
    # automatic level choice from the estimated ρ, nested guess, one iteration (one-shot style)
    "dense-N64-auto-levels-nested-1-iteration": ("dense", 64, 2, 0, 30, 0.0, 1, "auto"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_results_independent_of_rank_count(mpirun, name):
    ref = mpirun.json(1, "lp_check.py", *CONFIGS[name])
    if CONFIGS[name][5] > 0:
        assert ref["state_err"] <= 1e-10 and ref["grad_err"] <= 1e-8
    for n in (2, 3, 4):
        got = mpirun.json(n, "lp_check.py", *CONFIGS[name])
        for d in ("fwd", "bwd"):
            assert got[d]["iterations"] == ref[d]["iterations"], (n, d)
            assert got[d]["levels"] == ref[d]["levels"], (n, d)
            if ref[d]["rho"] is not None:
                assert abs(got[d]["rho"] - ref[d]["rho"]) <= 1e-12 * ref[d]["rho"], (n, d)
            assert rel(got[d]["residuals"], ref[d]["residuals"]) <= 1e-12, (n, d)
        assert rel(got["states"], ref["states"]) <= 1e-12, n
        assert rel(got["grad"], ref["grad"]) <= 1e-12, n
        assert abs(got["objective"] - ref["objective"]) <= 1e-12 * abs(ref["objective"]), n


@pytest.mark.parametrize("trial", range(3))
def test_one_failing_rank_stops_every_rank(mpirun, trial):
    t0 = time.monotonic()
    out = mpirun(3, "abort_check.py", timeout=60)
    elapsed = time.monotonic() - t0
    assert out.returncode != 0
    assert out.stderr.count("gpubraid: rank 1 failed: RuntimeError: planted failure") == 1, out.stderr
    assert "unreachable" not in out.stdout
    assert elapsed < 30, elapsed
