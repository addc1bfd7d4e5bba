"""Your own data and layer from the CLI and the Trainer: .npz files, images, regression, import paths."""

import numpy as np
import pytest
from user_steps import spiral

from gpubraid import load
from gpubraid.cli import main as cli
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer


def test_spiral_from_an_npz_trains_to_095(spiral_run):
    _, metrics = spiral_run
    assert metrics["config"]["method"] == "oneshot" and metrics["data"].endswith("spiral.npz")
    assert metrics["val_accuracy"] >= 0.95, metrics["val_accuracy"]


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
        assert load(str(tmp_path / "m.safetensors"), trust=True).predict(x).shape == (150,)


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
