"""The peaks example: points in [-3, 3]^2 classified by the level of MATLAB's ``peaks`` function."""
from __future__ import annotations

import numpy as np

from .dataset import Dataset, _streams

#: Level thresholds t1 < t2 < t3 < t4 of the ``peaks`` classes: class k holds the points with
#: t_k <= f(x, y) < t_{k+1} (t_0 = -inf, t_5 = +inf).  They are rounded 20/40/60/80 % quantiles of
#: f under the uniform distribution on [-3, 3]^2 (estimated from 4 million samples); the measured
#: class shares on a fresh 4-million-point sample are 20.0, 20.0, 19.9, 20.0, 20.0 %.  The middle
#: band (0.0017 <= f < 0.1536) is mostly the flat outer region where f is near zero.
PEAKS_THRESHOLDS = (-0.308, 0.0017, 0.1536, 1.314)


PEAKS_N_CLASSES = 5


_PEAKS_DEFAULT = (5000, 1000)


def peaks(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MATLAB's ``peaks`` function, elementwise on arrays of equal shape (float64)."""
    return (3.0 * (1.0 - x) ** 2 * np.exp(-x ** 2 - (y + 1.0) ** 2)
            - 10.0 * (x / 5.0 - x ** 3 - y ** 5) * np.exp(-x ** 2 - y ** 2)
            - np.exp(-(x + 1.0) ** 2 - y ** 2) / 3.0)


def peaks_labels(points: np.ndarray) -> np.ndarray:
    """Class (int64, 0..4) of each point of a float array of shape ``(n, 2)``."""
    f = peaks(points[:, 0], points[:, 1])
    return np.searchsorted(np.asarray(PEAKS_THRESHOLDS), f, side="right").astype(np.int64)


# --------------------------------------------------------------------------------------------
# peaks


def _load_peaks(seed: int, n_train, n_val) -> Dataset:
    n_train = _PEAKS_DEFAULT[0] if n_train is None else n_train
    n_val = _PEAKS_DEFAULT[1] if n_val is None else n_val
    train_rng, val_rng = _streams(seed, 2)
    x_train = train_rng.uniform(-3.0, 3.0, size=(n_train, 2))
    x_val = val_rng.uniform(-3.0, 3.0, size=(n_val, 2))
    return Dataset("peaks", x_train, peaks_labels(x_train), x_val, peaks_labels(x_val),
                   (2,), PEAKS_N_CLASSES, "dense")
