"""Checks shared by the data set tests."""
import numpy as np

from gpubraid.data.dataset import Dataset


def check_dataset(d: Dataset, n_train, n_val):
    """Shapes, dtypes, label range and finiteness of every split of ``d``."""
    assert d.x_train.shape == (n_train, *d.in_shape) and d.x_val.shape == (n_val, *d.in_shape)
    assert d.x_train.dtype == np.float64 and d.x_val.dtype == np.float64
    assert d.y_train.shape == (n_train,) and d.y_val.shape == (n_val,)
    assert d.y_train.dtype == np.int64 and d.y_val.dtype == np.int64
    for y in (d.y_train, d.y_val):
        assert y.min() >= 0 and y.max() < d.n_classes
    assert np.all(np.isfinite(d.x_train)) and np.all(np.isfinite(d.x_val))
    assert d.kind in ("dense", "conv")


def same(a: Dataset, b: Dataset) -> bool:
    """Whether ``a`` and ``b`` hold the same arrays."""
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("x_train", "y_train", "x_val", "y_val"))
