"""A data set (:class:`Dataset`), your arrays and .npz files as one, stratified splits, mini-batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError, check_positive_int

DATASETS = ("peaks", "mnist", "indianpines")


_DATA_EXTRA = "pip install 'gpubraid[data]'"


@dataclass
class Dataset:
    """A data set split into training and validation parts.

    Attributes:
        name: the data set's name (one of :data:`DATASETS`, or ``"arrays"``/a file name for user data).
        x_train: float64 array of shape ``(n_train, *in_shape)``.
        y_train: classification: int64 array ``(n_train,)`` with labels in ``0 .. n_classes - 1``;
            regression: float64 array ``(n_train, n_out)``.
        x_val: float64 array of shape ``(n_val, *in_shape)``.
        y_val: like ``y_train`` with ``n_val`` rows.
        in_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 28, 28)``.
        n_classes: number of classes (None for regression).
        kind: ``"dense"`` or ``"conv"``: the kind of network that suits the data.
        task: ``"classification"`` or ``"regression"``.
        n_out: number of regression outputs (None for classification).
        x_mean, x_std: the input normalisation applied (x_stored = (x_raw − x_mean) / x_std),
            float64 arrays broadcastable against one sample, or None when none was applied;
            apply the same to new inputs before predicting (:meth:`normalize`).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    in_shape: tuple
    n_classes: int | None
    kind: str
    task: str = "classification"
    n_out: int | None = None
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None

    def normalize(self, x) -> np.ndarray:
        """Raw inputs (n, *in_shape) as the network saw them in training (float64)."""
        x = np.asarray(x, dtype=np.float64)
        if self.x_mean is None:
            return x
        return (x - self.x_mean) / self.x_std

    def meta(self) -> dict:
        """JSON-able description: what :func:`gpubraid.network.network.network_for_data` needs, plus sizes."""
        out = {"name": self.name, "task": self.task, "kind": self.kind, "in_shape": tuple(self.in_shape),
               "n_train": self.n_train, "n_val": self.n_val, "n_classes": self.n_classes, "n_out": self.n_out,
               "normalization": None}
        if self.x_mean is not None:
            out["normalization"] = {"mean": np.asarray(self.x_mean).tolist(), "std": np.asarray(self.x_std).tolist()}
        return out

    @classmethod
    def from_arrays(cls, x_train, y_train, x_val=None, y_val=None, **kwargs) -> "Dataset":
        """See :func:`dataset_from_arrays`."""
        return dataset_from_arrays(x_train, y_train, x_val, y_val, **kwargs)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.x_val.shape[0])


def next_batch(n: int, batch_size: int, rng: np.random.Generator, order, pos: int):
    """The next shuffled mini-batch, resumable: ``(idx, order, pos)`` after the one drawn.

    ``order`` (the epoch's permutation, int64 (n,), or None) and ``pos`` (samples of it used) are
    the whole state; a new epoch draws ``rng.permutation(n)`` when the last one is used up.
    """
    if order is None or pos >= n:
        order, pos = rng.permutation(n).astype(np.int64), 0
    idx = order[pos:pos + batch_size]
    return idx, order, pos + len(idx)


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index arrays of the shuffled mini-batches of one epoch (:func:`next_batch` in a loop).

    Args:
        n: number of samples.
        batch_size: samples per batch; the last batch holds the remaining ``n % batch_size`` samples
            when that is not zero (it is kept, not dropped).
        rng: NumPy generator that draws the permutation (one ``permutation`` call per epoch).

    Yields:
        int64 arrays of shape ``(batch_size,)`` (the last possibly shorter) that together form a
        permutation of ``0 .. n - 1``.
    """
    n = check_positive_int("n", n)
    batch_size = check_positive_int("batch_size", batch_size)
    if not isinstance(rng, np.random.Generator):
        raise UserError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    order, pos = None, 0
    while pos < n:
        idx, order, pos = next_batch(n, batch_size, rng, order, pos)
        yield idx


# --------------------------------------------------------------------------------------------
# splitting helpers


def _streams(seed: int, count: int) -> list:
    """``count`` independent NumPy generators derived from ``seed`` (entropy ``[seed, i]``)."""
    return [np.random.default_rng([seed, i]) for i in range(count)]


def _stratified_order(labels: np.ndarray, rng) -> np.ndarray:
    """A permutation of the samples whose every prefix has nearly the class shares of the whole.

    Within each class the samples are shuffled; the i-th of the n_c samples of class c gets the key
    (i + u) / n_c with u uniform in [0, 1), and the samples are sorted by key.
    """
    keys = np.empty(labels.shape[0])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        keys[idx] = (np.arange(idx.size) + rng.uniform(size=idx.size)) / idx.size
    return np.argsort(keys, kind="stable")


def _take(what: str, available: int, requested: int | None) -> int:
    if requested is None:
        return available
    if requested > available:
        raise UserError(f"{what} must be at most {available} (the samples available); got {requested}")
    return requested


def _split_one_pool(labels, rng, default_val: int, n_train, n_val, dataset: str):
    """Stratified split of one pool of samples into (train indices, validation indices)."""
    total = labels.shape[0]
    n_val = _take(f"n_val for {dataset}", total - 1, n_val) if n_val is not None else min(default_val, total - 1)
    n_train = _take(f"n_train for {dataset} (with n_val={n_val})", total - n_val, n_train)
    order = _stratified_order(labels, rng)
    return order[n_val:n_val + n_train], order[:n_val]


def _check_finite(x: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(x)):
        raise UserError(f"{where} contains non-finite values (NaN or inf)")


# --------------------------------------------------------------------------------------------
# user arrays

TASKS = ("classification", "regression")


NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val")


def _real_array(a, name: str, *, allow_int: bool = True) -> np.ndarray:
    """``a`` as a NumPy array after the checks every user array gets (one-line UserError naming it)."""
    try:
        arr = np.asarray(a)
    except Exception as exc:  # noqa: BLE001 - ragged lists etc.
        raise UserError(f"{name} is not an array: {exc}") from None
    if np.iscomplexobj(arr):
        raise UserError(f"{name} holds complex values; expected real numbers")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or
                                 (allow_int and np.issubdtype(arr.dtype, np.integer))):
        raise UserError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
        raise UserError(f"{name} is empty (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise UserError(f"{name} contains non-finite values (NaN or inf)")
    return arr


def _features(a, name: str) -> np.ndarray:
    x = _real_array(a, name).astype(np.float64)
    if x.ndim == 3:
        x = x[:, None]  # (n, H, W) -> (n, 1, H, W)
    if x.ndim not in (2, 4):
        raise UserError(f"{name} must have shape (n, d) (features), (n, H, W) or (n, C, H, W) (images); "
                        f"got {x.shape}")
    return x


def _targets(a, name: str, task: str, n: int) -> np.ndarray:
    y = _real_array(a, name)
    if y.shape[0] != n:
        raise UserError(f"{name} has {y.shape[0]} rows; the inputs have {n}")
    if task == "classification":
        if y.ndim != 1:
            raise UserError(f"{name} must be integer class labels of shape (n,); got shape {y.shape}")
        if np.issubdtype(y.dtype, np.floating) and np.any(y != np.round(y)):
            raise UserError(f"{name} must hold integer class labels; found non-integer values")
        if y.min() < 0:
            raise UserError(f"{name}: class labels must be 0 .. n_classes-1; found {int(y.min())}")
        return y.astype(np.int64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise UserError(f"{name} must be regression targets of shape (n,) or (n, n_out); got shape {y.shape}")
    return y.astype(np.float64)


def dataset_from_arrays(x_train, y_train, x_val=None, y_val=None, *, task: str = "classification",
                        val_fraction: float = 0.2, seed: int = 0, normalize: bool = False,
                        name: str = "arrays") -> Dataset:
    """A :class:`Dataset` from the user's arrays, checked.

    Args:
        x_train: inputs (n, d) (a dense network), (n, C, H, W) or (n, H, W) (images, a conv
            network; a channel axis is added to (n, H, W)); real numbers, finite.
        y_train: classification: integer labels (n,) in 0 .. n_classes-1 (n_classes = largest
            label + 1 over train and validation, at least 2); regression: float targets (n,) or (n, n_out).
        x_val, y_val: validation arrays (both or neither); without them a seeded split of the
            training arrays holds out ``val_fraction`` of the samples (stratified by class for
            classification).
        task: ``"classification"`` or ``"regression"``.
        normalize: standardise the inputs by the training mean and standard deviation (per
            feature for (n, d), per channel for images); recorded in ``x_mean``/``x_std``.

    Raises:
        UserError: one line naming the array or argument at fault: wrong ndim, empty, NaN/inf,
            complex or non-numeric values, negative or non-integer labels, mismatched lengths or
            sample shapes, fewer than 2 classes, a bad task/val_fraction/seed.
    """
    if task not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer; got {seed!r}")
    if (x_val is None) != (y_val is None):
        raise UserError("x_val and y_val must be given together (or neither, for a seeded split)")
    xt = _features(x_train, "x_train")
    yt = _targets(y_train, "y_train", task, xt.shape[0])
    if x_val is not None:
        xv = _features(x_val, "x_val")
        if xv.shape[1:] != xt.shape[1:]:
            raise UserError(f"x_val samples have shape {xv.shape[1:]}; x_train samples have {xt.shape[1:]}")
        yv = _targets(y_val, "y_val", task, xv.shape[0])
        if task == "regression" and yv.shape[1] != yt.shape[1]:
            raise UserError(f"y_val has {yv.shape[1]} outputs per sample; y_train has {yt.shape[1]}")
    else:
        try:
            vf = float(val_fraction)
        except (TypeError, ValueError):
            vf = float("nan")
        if not 0 < vf < 1:
            raise UserError(f"val_fraction must lie strictly between 0 and 1; got {val_fraction!r}")
        n = xt.shape[0]
        if n < 2:
            raise UserError(f"x_train needs at least 2 samples to split off a validation part; got {n}")
        n_val = min(n - 1, max(1, int(round(vf * n))))
        rng = np.random.default_rng([int(seed), 11])
        order = _stratified_order(yt, rng) if task == "classification" else rng.permutation(n)
        xt, yt, xv, yv = xt[order[n_val:]], yt[order[n_val:]], xt[order[:n_val]], yt[order[:n_val]]
    n_classes = n_out = None
    if task == "classification":
        n_classes = int(max(yt.max(), yv.max())) + 1
        if n_classes < 2:
            raise UserError(f"y_train: classification needs at least 2 classes (labels 0 and 1); got n_classes={n_classes}")
    else:
        n_out = int(yt.shape[1])
    mean = std = None
    if normalize:
        axes = (0,) if xt.ndim == 2 else (0, 2, 3)
        mean = xt.mean(axis=axes, keepdims=True)[0]
        std = xt.std(axis=axes, keepdims=True)[0]
        std = np.where(std > 0, std, 1.0)
        xt, xv = (xt - mean) / std, (xv - mean) / std
    kind = "dense" if xt.ndim == 2 else "conv"
    return Dataset(name, xt, yt, xv, yv, tuple(int(s) for s in xt.shape[1:]), n_classes, kind, task, n_out,
                   mean, std)


def infer_task(y) -> str:
    """Integer targets are class labels ("classification"); anything else is "regression"."""
    return "classification" if np.issubdtype(np.asarray(y).dtype, np.integer) else "regression"


def load_npz(path, *, task: str | None = None, val_fraction: float = 0.2, seed: int = 0,
             normalize: bool = False) -> Dataset:
    """A :class:`Dataset` from a ``.npz`` file with arrays ``x_train``, ``y_train`` and optionally
    ``x_val``, ``y_val`` (otherwise a seeded split, see :func:`dataset_from_arrays`); ``task``
    None: :func:`infer_task` from ``y_train``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - zip errors, pickled objects, ...
        raise UserError(f"cannot read {path} as a .npz file: {exc}") from None
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if unknown:
        raise UserError(f"{path}: unexpected arrays {', '.join(unknown)} (allowed: {', '.join(NPZ_KEYS)})")
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise UserError(f"{path} lacks the arrays {', '.join(missing)} (expected x_train, y_train, "
                        "optionally x_val, y_val)")
    return dataset_from_arrays(arrays["x_train"], arrays["y_train"], arrays.get("x_val"), arrays.get("y_val"),
                               task=task or infer_task(arrays["y_train"]), val_fraction=val_fraction, seed=seed, normalize=normalize,
                               name=path.name)
