"""Training methods: exact follows serial, every method is rank-count independent."""
import json

import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer


def history(**kw):
    cfg = TrainConfig(example="peaks", progress=False, **kw)
    res = Trainer(cfg).run()
    return res, np.array([h["objective"] for h in res.history])


def test_exact_follows_serial_trajectory():
    """Objective per iteration equal to ≤ 1e-6 relative over the first 20 L-BFGS iterations."""
    common = dict(iterations=20, n_train=1000, n_val=200, val_every=0)
    _, serial = history(method="serial", **common)
    res, exact = history(method="exact", **common)
    assert len(serial) == len(exact) == 20
    assert np.max(np.abs(exact - serial) / np.abs(serial)) <= 1e-6
    h = res.history[-1]
    assert h["fwd_iters"] > 0 and h["bwd_iters"] > 0 and h["fwd_residual"] <= 1e-9


def test_oneshot_history_carries_fixed_mgrit_iterations():
    # all levels (no automatic level choice, which may pick one level = the serial solve here, no cap
    # for the rank count, no monitor to drop levels)
    res, obj = history(method="oneshot", iterations=5, n_train=300, n_val=100, val_every=5,
                       fwd_iters=2, bwd_iters=3, stability=0.0, conv_bound=0.0, levels_for_ranks=False,
                       monitor_every=0)
    assert np.all(np.isfinite(obj))
    for h in res.history:
        assert h["fwd_iters"] == 2 and h["bwd_iters"] == 3
        assert h["fwd_residual"] >= 0 and h["bwd_residual"] >= 0
    assert "val_accuracy" in res.history[-1]
    m = res.metrics()
    for key in ("method", "ranks", "backend", "dtype", "layers", "iterations", "objective",
                "train_accuracy", "val_accuracy", "wall_s", "history"):
        assert key in m
    assert 0 <= m["train_accuracy"] <= 1 and 0 <= m["val_accuracy"] <= 1
    json.dumps(m)


def test_minibatch_adam_trains():
    res, obj = history(method="oneshot", optimizer="adam", lr=0.02, batch_size=64, iterations=30,
                       n_train=500, n_val=200, layers=8, val_every=0)
    assert obj[-5:].mean() < obj[:5].mean()


@pytest.mark.parametrize("bad", [dict(method="fast"), dict(layers=0), dict(final_time=0.0),
                                 dict(final_time=float("nan")), dict(optimizer="newton"),
                                 dict(activation="gelu"), dict(example="cifar"),
                                 dict(optimizer="lbfgs", batch_size=32), dict(iterations=0)])
def test_bad_config_raises_user_error(bad):
    with pytest.raises(UserError):
        Trainer(TrainConfig(**{"example": "peaks", "n_train": 100, "n_val": 50, **bad}))


@pytest.mark.mpi
@pytest.mark.parametrize("method,optimizer", [("serial", "lbfgs"), ("exact", "lbfgs"),
                                              ("oneshot", "lbfgs"), ("oneshot", "sgd")])
def test_training_trajectory_independent_of_rank_count(mpirun, method, optimizer):
    runs = {n: mpirun.json(n, "train_check.py", method, optimizer) for n in (1, 2, 4)}
    ref = np.array([h["objective"] for h in runs[1]["history"]])
    for n in (2, 4):
        got = np.array([h["objective"] for h in runs[n]["history"]])
        assert runs[n]["ranks"] == n
        assert got.shape == ref.shape
        assert np.max(np.abs(got - ref) / np.abs(ref)) <= 1e-10, (n, got, ref)
        assert runs[n]["val_accuracy"] == runs[1]["val_accuracy"]


@pytest.mark.mpi
def test_as_many_ranks_as_layers(mpirun):
    """P up to the number of layers works: 4 ranks with one layer each, same objective as 1 rank."""
    runs = [mpirun.json(n, "train_check.py", "oneshot", "lbfgs", 4) for n in (1, 4)]
    a = np.array([h["objective"] for h in runs[0]["history"]])
    b = np.array([h["objective"] for h in runs[1]["history"]])
    assert np.max(np.abs(a - b) / np.abs(a)) <= 1e-10
