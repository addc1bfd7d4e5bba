"""gpubraid.data.peaks: the peaks example's function, labels, determinism and sizes."""

import numpy as np
import pytest

from gpubraid.data.examples import load_dataset
from gpubraid.data.peaks import PEAKS_THRESHOLDS, peaks, peaks_labels
from tests.data.checks import check_dataset, same


def test_peaks_defaults_and_labels():
    d = load_dataset("peaks")
    check_dataset(d, 5000, 1000)
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
    check_dataset(a, 100, 50)
    assert same(a, b) and not same(a, c)
    # the training points do not depend on n_val
    assert np.array_equal(load_dataset("peaks", seed=3, n_train=100, n_val=7).x_train, a.x_train)
