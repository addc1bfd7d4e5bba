"""gpubraid.data.dataset: user arrays and .npz files, input validation, mini-batches."""

import numpy as np
import pytest

from gpubraid.data.dataset import DATASETS, batches
from gpubraid.data.examples import load_dataset
from gpubraid.errors import UserError


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
