"""Indian Pines (AVIRIS hyperspectral scene) from the standard .mat files: pixels as spectra."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .dataset import _DATA_EXTRA, Dataset, _check_finite, _split_one_pool, _streams

_INDIANPINES_VAL_FRACTION = 0.2


_INDIANPINES_N_CLASSES = 16


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
