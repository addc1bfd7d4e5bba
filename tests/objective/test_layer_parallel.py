"""LayerParallel: results independent of the rank count under mpiexec -n 1..4 (oversubscribed on
small machines), and user networks trained layer-parallel equal their serial training."""
import numpy as np
import pytest
from user_steps import build, train_history

from gpubraid.network.reference import evaluate


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


@pytest.mark.mpi
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


@pytest.mark.mpi
@pytest.mark.parametrize("config", [("dense", 48, 4, 0, 2, 0.0, 2),
                                    CONFIGS["dense-N64-auto-levels-nested-1-iteration"]],
                         ids=["N48-2lvl-2-iterations-coarse-on-every-rank", "N64-auto-1-iteration"])
def test_coarsest_solve_by_the_steps_chains_changes_nothing(mpirun, config):
    """The coarsest solve takes each position's rows in one call of the step's chain (on 3 ranks the
    12 coarse points of N = 48 come from every rank: received rows stepped in place, each segment
    starting from the last one's end), on 1 and 3 ranks: with the dense step's compiled chains (the
    default) and with a NumPy double of them, the states, gradient, objective and residuals equal
    those of the row loop (no chains) bit for bit."""
    flags = list(config[7:])
    for n in (1, 3):
        ref = mpirun.json(n, "lp_check.py", *config[:7], ",".join([*flags, "nochain"]))
        for extra in ([], ["chain"]):
            got = mpirun.json(n, "lp_check.py", *config[:7], ",".join([*flags, *extra]) or "-")
            assert ref["chain_calls"] == 0
            assert (got["chain_calls"] >= 2 * got["fwd"]["iterations"] > 0) if extra else got["chain_calls"] == 0
            assert got["states"] == ref["states"] and got["grad"] == ref["grad"], (n, extra)
            assert got["objective"] == ref["objective"], (n, extra)
            for d in ("fwd", "bwd"):
                assert [got[d][k] for k in ("iterations", "levels", "residuals", "rho")] == \
                    [ref[d][k] for k in ("iterations", "levels", "residuals", "rho")], (n, d, extra)


#: L-BFGS steps of the user-network checks: the torch step's MGRIT solves are slow on the CPU
ITERATIONS = {"three": 10, "torch": 4}


@pytest.mark.parametrize("which", ["three", "torch"])
def test_user_network_trains_serial_equals_exact(backend, which):
    if which == "torch":
        pytest.importorskip("torch")
    hs, _, ts = train_history(which, "serial", backend, iterations=ITERATIONS[which])
    he, _, _ = train_history(which, "exact", backend, iterations=ITERATIONS[which])
    hs, he = np.array(hs), np.array(he)
    assert hs[-1] < (0.5 if which == "three" else 0.9) * hs[0]  # it trains
    assert np.abs(hs - he).max() <= 1e-6 * np.abs(hs).max(), np.abs(hs - he).max()
    # serial vs the serial evaluation at the final parameters
    net, ds = build(which, backend)
    assert abs(evaluate(net, net.layout(), ts, ds.x_train, ds.y_train, grad=False).objective - hs[-1]) <= 1e-12


@pytest.mark.mpi
@pytest.mark.parametrize("which", ["three", "torch"])
def test_user_network_rank_counts_agree(mpirun, which):
    """1, 2 and 3 ranks (torch: 1 and 3) train the same user network to the same histories (1e-10);
    serial = exact (1e-6); the pipeline on 2 ranks, 1F1B and Chimera, follows serial on 1 (1e-10)."""
    if which == "torch":
        pytest.importorskip("torch")

    def run(n, method):
        return mpirun.json(n, "network_check.py", which, method, ITERATIONS[which], timeout=300)

    ref = run(1, "exact")
    serial = run(1, "serial")
    h = np.array(ref["history"])
    assert np.abs(np.array(serial["history"]) - h).max() <= 1e-6 * np.abs(h).max()
    for n in (2, 3) if which == "three" else (3,):
        got = run(n, "exact")
        assert np.abs(np.array(got["history"]) - h).max() <= 1e-10 * np.abs(h).max(), n
        assert np.abs(np.array(got["theta"]) - np.array(ref["theta"])).max() <= 1e-8, n
    hs = np.array(serial["history"])
    for schedule in ("pipeline", "chimera"):
        pipelined = run(2, schedule)
        assert np.abs(np.array(pipelined["history"]) - hs).max() <= 1e-10 * np.abs(hs).max(), schedule
        assert np.abs(np.array(pipelined["theta"]) - np.array(serial["theta"])).max() <= 1e-8, schedule
