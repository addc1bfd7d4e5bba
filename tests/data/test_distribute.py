"""Data × layer parallelism: D data groups × P/D layer blocks give the 1-rank results."""
import numpy as np
import pytest

pytestmark = pytest.mark.mpi


def history(mpirun, ranks: int, method: str, optimizer: str, data_parallel: int):
    return mpirun.json(ranks, "train_check.py", method, optimizer, 8, data_parallel)


@pytest.mark.parametrize("method,optimizer", [("exact", "lbfgs"), ("oneshot", "lbfgs"), ("oneshot", "adam"),
                                              ("serial", "adam")])
def test_every_split_of_four_ranks_follows_one_rank(mpirun, method, optimizer):
    ref = history(mpirun, 1, method, optimizer, 1)
    obj = np.array([h["objective"] for h in ref["history"]])
    for ranks, groups in ((4, 2), (4, 4), (4, 1), (2, 2)):
        got = history(mpirun, ranks, method, optimizer, groups)
        assert got["ranks"] == ranks and got["config"]["data_parallel"] == groups
        o = np.array([h["objective"] for h in got["history"]])
        assert o.shape == obj.shape
        assert np.max(np.abs(o - obj) / np.abs(obj)) <= 1e-10, (ranks, groups, o, obj)
        assert got["val_accuracy"] == ref["val_accuracy"] and got["train_accuracy"] == ref["train_accuracy"]
        for key in ("fwd_iters", "bwd_iters"):
            assert [h.get(key) for h in got["history"]] == [h.get(key) for h in ref["history"]]


def test_bad_splits_are_one_line_errors(mpirun):
    out = mpirun(3, "train_check.py", "exact", "lbfgs", 8, 2)
    assert out.returncode != 0 and "data_parallel must divide the number of MPI ranks (3)" in out.stderr
