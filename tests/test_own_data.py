"""Your own data and layer from the CLI and the Trainer; model files, predict and --init."""
import json
import os

import numpy as np
import pytest

from gpubraid import load
from gpubraid.cli import main as cli
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer



def spiral(n: int, seed: int, k: int = 3):
    """``k`` interleaved spiral arms in 2-D: features (n, 2) float64, labels (n,) int64."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.25, 1.0, n)
    c = rng.integers(0, k, n)
    angle = 4 * t + 2 * np.pi * c / k + rng.normal(0, 0.2, n)
    return np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1), c.astype(np.int64)


@pytest.fixture(scope="module")
def spiral_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "spiral.npz"
    (xt, yt), (xv, yv) = spiral(600, 0), spiral(200, 1)
    np.savez(path, x_train=xt, y_train=yt, x_val=xv, y_val=yv)
    return path


@pytest.fixture(scope="module")
def spiral_run(spiral_npz, tmp_path_factory):
    """The default method on the spiral (defaults for feature data), saved and with metrics."""
    out = tmp_path_factory.mktemp("run")
    rc = cli.main(["train", "--data", str(spiral_npz), "--no-progress", "--save", str(out / "m.safetensors"),
                   "--metrics", str(out / "m.json")])
    assert rc == 0
    return out / "m.safetensors", json.loads((out / "m.json").read_text())


def test_spiral_from_an_npz_trains_to_095(spiral_run):
    _, metrics = spiral_run
    assert metrics["config"]["method"] == "oneshot" and metrics["data"].endswith("spiral.npz")
    assert metrics["val_accuracy"] >= 0.95, metrics["val_accuracy"]


def test_predict_reproduces_the_train_accuracy(spiral_run, spiral_npz, tmp_path, capsys):
    model_path, metrics = spiral_run
    out = tmp_path / "pred.npz"
    assert cli.main(["predict", str(model_path), "--data", str(spiral_npz), "--array", "x_train",
                     "--out", str(out)]) == 0
    pred, data = np.load(out), np.load(spiral_npz)
    assert pred["labels"].dtype == np.int64 and pred["proba"].shape == (600, 3)
    assert np.allclose(pred["proba"].sum(axis=1), 1.0)
    assert np.mean(pred["labels"] == data["y_train"]) == metrics["train_accuracy"]
    model = load(str(model_path))
    assert np.mean(model.predict(data["x_val"]) == data["y_val"]) == metrics["val_accuracy"]


def test_init_starts_from_the_saved_parameters(spiral_run, spiral_npz):
    model_path, metrics = spiral_run
    cfg = TrainConfig(data=str(spiral_npz), init=str(model_path), method="serial", iterations=1, progress=False)
    res = Trainer(cfg).run()
    assert abs(res.history[0]["objective"] - metrics["objective"]) <= 1e-12 * metrics["objective"]


def test_images_train_a_conv_network(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 8, 8))                     # (n, H, W): a channel axis is added
    y = (x[:, :4].mean(axis=(1, 2)) > 0).astype(np.int64)
    np.savez(tmp_path / "img.npz", x_train=x, y_train=y)
    rc = cli.main(["train", "--data", str(tmp_path / "img.npz"), "--layers", "4", "--iterations", "3",
                   "--no-progress", "--save", str(tmp_path / "m.safetensors")])
    assert rc == 0
    model = load(str(tmp_path / "m.safetensors"))
    assert model.network.describe()["step"]["name"] == "conv"
    assert model.network.in_shape == (1, 8, 8)
    assert model.predict(x[:5]).shape == (5,)


def test_regression_targets_train_with_a_mean_squared_error_head(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (200, 3))
    t = np.stack([np.sin(2 * x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    res = Trainer(TrainConfig(layers=8, iterations=30, progress=False, val_every=0), data=(x, t)).run()
    assert res.train_accuracy is None and res.val_accuracy is None
    assert res.train_loss < 0.5 * res.history[0]["objective"]


def test_user_step_and_torch_module_by_import_path(tmp_path):
    pytest.importorskip("torch")
    x, y = spiral(150, 3)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=y)
    for layer in ("user_steps:StateShapeStep", "user_steps:TorchBlock"):
        rc = cli.main(["train", "--data", str(tmp_path / "s.npz"), "--layer", layer, "--layers", "4",
                       "--channels", "4", "--iterations", "4", "--no-progress", "--method", "exact",
                       "--save", str(tmp_path / "m.safetensors")])
        assert rc == 0, layer
        assert load(str(tmp_path / "m.safetensors")).predict(x).shape == (150,)


def test_trainer_takes_arrays_and_a_step_object():
    from user_steps import TwoLayerStep

    from gpubraid.runtime.backend import resolve_backend

    x, y = spiral(200, 4)
    step = TwoLayerStep(4, 6, resolve_backend("numpy", "float64"))
    runs = [Trainer(TrainConfig(method=m, layers=8, iterations=6, progress=False, val_every=0),
                    data=(x, y), step=step).run() for m in ("serial", "exact")]
    a, b = (np.array([h["objective"] for h in r.history]) for r in runs)
    assert np.max(np.abs(a - b) / np.abs(a)) <= 1e-6


@pytest.mark.parametrize("arrays,name", [
    (dict(x_train=np.ones((10, 2))), "y_train"),
    (dict(x_train=np.full((10, 2), np.nan), y_train=np.zeros(10, int)), "x_train"),
    (dict(x_train=np.ones((10, 2)), y_train=np.arange(10) - 1), "y_train"),
    (dict(x_train=np.ones((10, 2)), y_train=np.zeros(9, int)), "y_train"),
    (dict(x_train=np.ones((10, 2)), y_train=np.zeros(10, int), z=np.ones(3)), "z"),
])
def test_bad_data_files_are_one_line_errors(tmp_path, capsys, arrays, name):
    np.savez(tmp_path / "bad.npz", **arrays)
    rc = cli.main(["train", "--data", str(tmp_path / "bad.npz"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and name in err and "Traceback" not in err, err


def test_bad_model_files_and_predict_inputs(tmp_path, capsys, spiral_run):
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    np.savez(tmp_path / "x.npz", x=np.ones((3, 5)))
    model_path, _ = spiral_run
    for argv, name in [([str(tmp_path / "junk.safetensors")], "not a gpubraid model file"),
                       ([str(tmp_path / "missing")], "does not exist"),
                       ([str(model_path)], "shape (2,)")]:
        rc = cli.main(["predict", *argv, "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "p.npz")])
        err = capsys.readouterr().err
        assert rc == 2 and name in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "p.npz")


@pytest.mark.mpi
def test_a_model_saved_from_two_ranks_predicts_on_one(mpirun, tmp_path, spiral_npz):
    import subprocess

    cmd = mpirun.gpubraid(2, "train", "--data", spiral_npz, "--iterations", "20", "--no-progress",
                          "--save", tmp_path / "m.safetensors", "--metrics", tmp_path / "m.json")
    out = subprocess.run(cmd, capture_output=True, text=True, env=mpirun.env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    data = np.load(spiral_npz)
    model = load(str(tmp_path / "m.safetensors"))
    assert np.mean(model.predict(data["x_train"]) == data["y_train"]) == metrics["train_accuracy"]
