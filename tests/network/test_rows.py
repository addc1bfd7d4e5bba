"""gpubraid.network.rows: the bias added to every row and the batch sum equal NumPy's plain forms."""
import numpy as np
import pytest

from gpubraid.network.rows import add_rows, batch_sum


@pytest.mark.parametrize("B, C", [(1, 32), (7, 32), (5000, 32), (9, 3), (300, 256), (13, 1000)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bias_rows_and_batch_sums_equal_numpys(B, C, dtype):
    rng = np.random.default_rng(B + C)
    z = rng.standard_normal((3, B, C)).astype(dtype)
    b = rng.standard_normal((3, C)).astype(dtype)
    want = z + b[:, None, :]
    add_rows(z, b)
    assert np.array_equal(z, want)  # the same additions, grouped into longer rows
    got = batch_sum(np, z)
    assert got.shape == (3, C) and got.dtype == z.dtype
    bound = B * np.finfo(dtype).eps * np.abs(z).sum(axis=1, dtype=np.float64)  # any summation order's error
    assert np.all(np.abs(got - z.sum(axis=1, dtype=np.float64)) <= bound)
