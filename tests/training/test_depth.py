"""Multilevel initialisation in depth (--depth-levels): the interpolation of parameters in depth,
the coarse networks trained first, the same numbers on every rank count, and its bad settings."""
import json
import subprocess

import numpy as np
import pytest

from gpubraid.cli import main as cli
from gpubraid.network.network import ResNetODE
from gpubraid.network.reference import evaluate
from gpubraid.runtime.backend import resolve_backend
from gpubraid.training.config import TrainConfig
from gpubraid.training.depth import prolong
from gpubraid.training.trainer import Trainer


def test_prolong_gives_each_coarse_layer_to_the_two_fine_layers_of_its_interval():
    be = resolve_backend("numpy")
    coarse, fine = (ResNetODE("dense", (2,), 3, n, 2, 1.0, "tanh", be) for n in (4, 8))
    theta = np.random.default_rng(0).standard_normal(coarse.layout().size)
    out = prolong(coarse, fine, theta)
    c, f = coarse.layout().views(theta), fine.layout().views(out)
    assert set(f.names()) == set(c.names()) and out.shape == (fine.layout().size,)
    for name in fine.layer_names:
        assert np.array_equal(f[name][0::2], c[name]) and np.array_equal(f[name][1::2], c[name])
    for name in (*fine.open_names, *fine.head_names):
        assert np.array_equal(f[name], c[name])
    with pytest.raises(ValueError, match="halve"):
        prolong(coarse, coarse, theta)


def test_prolonged_parameters_give_the_same_ode_to_first_order():
    """Layer n of N applies θ(t) on [nh, (n+1)h): prolonged again and again, one θ(t) is propagated
    with ever smaller steps, and the objective converges at first order (forward Euler)."""
    be = resolve_backend("numpy")
    x = np.random.default_rng(1).standard_normal((64, 2))
    y = np.zeros(64, dtype=int)
    nets = [ResNetODE("dense", (2,), 3, n, 2, 1.0, "tanh", be) for n in (8, 16, 32, 64, 128)]
    theta = nets[0].init_params(nets[0].layout(), seed=3)
    objectives = []
    for coarse, fine in zip(nets, nets[1:] + [None]):
        objectives.append(evaluate(coarse, coarse.layout(), theta, x, y, grad=False).objective)
        theta = prolong(coarse, fine, theta) if fine is not None else theta
    gaps = np.abs(np.diff(objectives))
    assert np.all(gaps > 0) and np.allclose(gaps[1:] / gaps[:-1], 0.5, atol=0.08), gaps


def test_the_coarse_networks_train_first_and_start_the_fine_run():
    common = dict(example="peaks", layers=16, n_train=300, n_val=100, iterations=4, val_every=0, progress=False,
                  method="serial")
    plain = Trainer(TrainConfig(**common)).run()
    tr = Trainer(TrainConfig(depth_levels=2, depth_iterations=3, **common))
    res = tr.run()
    assert [e["layers"] for e in res.depth_history] == [4, 4, 4, 8, 8, 8]
    assert len(res.history) == 4 and res.history[0]["time_s"] > res.depth_history[-1]["time_s"]
    assert res.history[0]["objective"] < plain.history[0]["objective"]
    assert res.depth_history[-1]["objective"] < res.depth_history[0]["objective"]
    assert res.metrics()["depth_history"] == res.depth_history


@pytest.mark.mpi
def test_depth_levels_give_the_same_history_on_one_and_two_ranks(mpirun, tmp_path):
    runs = []
    for n in (1, 2):
        out = tmp_path / f"m{n}.json"
        cmd = mpirun.gpubraid(n, "train", "peaks", "--layers", "8", "--depth-levels", "1", "--depth-iterations", "3",
                              "--iterations", "3", "--n-train", "200", "--n-val", "50", "--no-progress",
                              "--metrics", out)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=mpirun.env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "[4 layers]  it     3" in proc.stdout
        runs.append(json.loads(out.read_text()))
    for key in ("history", "depth_history"):
        a, b = (np.array([e["objective"] for e in r[key]]) for r in runs)
        assert a.shape == b.shape == (3,) and np.max(np.abs(a - b) / a) <= 1e-12, key


@pytest.mark.parametrize("argv,words", [
    (["--layers", "12", "--depth-levels", "3"], "divisible by 2^3 = 8"),
    (["--layers", "8", "--depth-levels", "4"], "divisible by 2^4"),
    (["--depth-levels", "-1"], "--depth-levels"),
    (["--depth-iterations", "0"], "--depth-iterations"),
])
def test_bad_depth_settings_are_one_line(capsys, argv, words):
    assert cli.main(["train", "peaks", "--no-progress", "--iterations", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
