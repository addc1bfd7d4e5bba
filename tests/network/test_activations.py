"""Activations on NumPy: tanh through exp (the formula's accuracy, extreme arguments, no warnings),
ReLU through a comparison and a product, and ``both`` writing σ' where it is told."""
import warnings

import numpy as np
import pytest

from gpubraid.network.activations import ACTIVATIONS


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tanh_equals_numpys_to_two_ulp_of_one(dtype):
    tol = 2 * np.finfo(dtype).eps
    z = np.concatenate([np.linspace(-20, 20, 100001), np.geomspace(1e-12, 1, 1001), -np.geomspace(1e-12, 1, 1001)])
    z = z.astype(dtype)
    act = ACTIVATIONS["tanh"]
    t = act.sigma(np, z)
    assert t.dtype == z.dtype
    assert np.abs(t - np.tanh(z)).max() <= tol
    d = act.dsigma(np, z)
    assert np.abs(d - (1 - np.tanh(z) ** 2)).max() <= 4 * tol


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tanh_at_extreme_arguments_without_warnings(dtype):
    z = np.array([-np.inf, -1e30, -400.0, -0.0, 0.0, 400.0, 1e30, np.inf, np.nan], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s, d = ACTIVATIONS["tanh"].both(np, z.copy())
    assert np.array_equal(s[:-1], [-1, -1, -1, 0, 0, 1, 1, 1]) and np.isnan(s[-1])
    assert np.array_equal(d[:-1], [0, 0, 0, 1, 1, 0, 0, 0]) and np.isnan(d[-1])


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_both_equals_sigma_and_dsigma_bit_for_bit_and_writes_into_d(name, dtype):
    z = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(dtype)
    z[0, 0, :3] = [0.0, -0.05, 0.05]  # ReLU's kink and SmoothReLU's quadratic part
    act = ACTIVATIONS[name]
    want_s, want_d = act.sigma(np, z), act.dsigma(np, z)
    d = np.full_like(z, 7.0)
    s, got_d = act.both(np, z.copy(), d)
    assert got_d is d and s.dtype == d.dtype == z.dtype
    assert np.array_equal(s, want_s) and np.array_equal(d, want_d)


def test_relu_values_and_derivative():
    z = np.array([-2.0, -0.0, 0.0, 1e-300, 3.0])
    assert np.array_equal(ACTIVATIONS["relu"].sigma(np, z), [0, 0, 0, 1e-300, 3])
    assert np.array_equal(ACTIVATIONS["relu"].dsigma(np, z), [0, 0, 0, 1, 1])
