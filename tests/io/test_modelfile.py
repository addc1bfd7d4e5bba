"""Model files: predict reproduces the training accuracy, --init, bad files, saved on two ranks."""
import json
import os

import numpy as np
import pytest

from gpubraid import load
from gpubraid.cli import main as cli
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer


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


def test_load_takes_a_backend_or_its_name(spiral_run, spiral_npz):
    from gpubraid.errors import UserError
    from gpubraid.runtime.backend import resolve_backend

    model_path, metrics = spiral_run
    x = np.load(spiral_npz)["x_val"]
    labels = load(str(model_path)).predict(x)
    for backend in ("numpy", resolve_backend("numpy", "float64")):
        assert np.array_equal(load(str(model_path), backend=backend).predict(x), labels)
    for bad, words in (("tpu", "backend must be one of"), (3, "backend must be a Backend")):
        with pytest.raises(UserError, match=words):
            load(str(model_path), backend=bad)


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
@pytest.mark.parametrize("method", [[], ["--method", "pipeline", "--micro-batches", "3"]], ids=["oneshot", "pipeline"])
def test_a_model_saved_from_two_ranks_predicts_on_one(mpirun, tmp_path, spiral_npz, method):
    import subprocess

    cmd = mpirun.gpubraid(2, "train", "--data", spiral_npz, "--iterations", "20", "--no-progress", *method,
                          "--save", tmp_path / "m.safetensors", "--metrics", tmp_path / "m.json")
    out = subprocess.run(cmd, capture_output=True, text=True, env=mpirun.env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    data = np.load(spiral_npz)
    model = load(str(tmp_path / "m.safetensors"))
    assert np.mean(model.predict(data["x_train"]) == data["y_train"]) == metrics["train_accuracy"]
