"""gpubraid.data.indianpines: the hyperspectral cube and ground truth, normalisation, bad files."""

import numpy as np
import pytest

from gpubraid.data.examples import load_dataset
from gpubraid.errors import UserError
from tests.data.checks import check_dataset, same


def _write_pines(directory, corrected=True, cube=None, gt=None, bands=20):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    if gt is None:
        gt = np.zeros((12, 10), dtype=np.uint8)
        gt[:4, :] = 1
        gt[4:8, :5] = 3
        gt[8:, 2:] = 16
    if cube is None:
        cube = rng.integers(1000, 5000, size=(12, 10, bands)).astype(np.uint16)
        cube[..., 0] = 7  # a constant band: standardised with std 1
    name, var = ("Indian_pines_corrected.mat", "indian_pines_corrected") if corrected else \
        ("Indian_pines.mat", "indian_pines")
    savemat(directory / name, {var: cube})
    savemat(directory / "Indian_pines_gt.mat", {"indian_pines_gt": gt})
    return cube, gt


@pytest.mark.parametrize("corrected", [True, False])
def test_indianpines(tmp_path, corrected):
    cube, gt = _write_pines(tmp_path, corrected)
    n = int((gt > 0).sum())  # 40 + 20 + 32 = 92
    d = load_dataset("indianpines", data_dir=tmp_path)
    n_val = round(0.2 * n)
    check_dataset(d, n - n_val, n_val)
    assert d.in_shape == (20,) and d.n_classes == 16 and d.kind == "dense"
    assert set(np.unique(d.y_train).tolist()) == {0, 2, 15}
    assert np.allclose(d.x_train[:, 1:].mean(axis=0), 0) and np.allclose(d.x_train[:, 1:].std(axis=0), 1)
    assert np.all(d.x_train[:, 0] == 0)
    counts = np.bincount(d.y_val, minlength=16)
    # stratified: 40, 20 and 32 labelled pixels -> about 8, 4 and 6.4 of the 18 validation pixels
    assert abs(counts[0] - 8) <= 1 and abs(counts[2] - 4) <= 1 and abs(counts[15] - 6.4) <= 1.5
    assert same(d, load_dataset("indianpines", data_dir=tmp_path))
    assert not same(d, load_dataset("indianpines", data_dir=tmp_path, seed=9))
    # the samples are the labelled pixels' spectra, standardised per band with training statistics
    raw = cube.reshape(-1, 20).astype(float)[gt.ravel() > 0]
    labels = gt.ravel()[gt.ravel() > 0] - 1
    x_all = np.concatenate([d.x_train, d.x_val])
    mean, std = x_all[:, 1:].mean(0), x_all[:, 1:].std(0)
    expected = (raw[:, 1:] - raw[:, 1:].mean(0)) / raw[:, 1:].std(0)
    key = lambda a: np.lexsort(a.T)
    got = (x_all[:, 1:] - mean) / std
    assert np.allclose(got[key(got)], expected[key(expected)])
    assert sorted(np.concatenate([d.y_train, d.y_val]).tolist()) == sorted(labels.tolist())
    sub = load_dataset("indianpines", data_dir=tmp_path, n_train=10, n_val=5)
    check_dataset(sub, 10, 5)


def test_indianpines_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="GPUBRAID_DATA"):
        load_dataset("indianpines")
    with pytest.raises(UserError, match="Indian_pines_corrected.mat"):
        load_dataset("indianpines", data_dir=tmp_path)
    cube, gt = _write_pines(tmp_path)
    with pytest.raises(UserError, match="n_train"):
        load_dataset("indianpines", data_dir=tmp_path, n_train=90)
    (tmp_path / "Indian_pines_gt.mat").unlink()
    with pytest.raises(UserError, match="Indian_pines_gt.mat"):
        load_dataset("indianpines", data_dir=tmp_path)
    bad = cube.astype(float)
    bad[0, 0, 3] = np.nan
    _write_pines(tmp_path, cube=bad)
    with pytest.raises(UserError, match="non-finite"):
        load_dataset("indianpines", data_dir=tmp_path)
    _write_pines(tmp_path, gt=np.zeros((5, 5)))
    with pytest.raises(UserError, match="does not match"):
        load_dataset("indianpines", data_dir=tmp_path)
    from scipy.io import savemat
    _write_pines(tmp_path)
    savemat(tmp_path / "Indian_pines_gt.mat", {"gt": gt})
    with pytest.raises(UserError, match="indian_pines_gt"):
        load_dataset("indianpines", data_dir=tmp_path)
    (tmp_path / "Indian_pines_gt.mat").write_bytes(b"garbage")
    with pytest.raises(UserError, match="Indian_pines_gt.mat"):
        load_dataset("indianpines", data_dir=tmp_path)
    _write_pines(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)
    with pytest.raises(UserError, match=r"gpubraid\[data\]"):
        load_dataset("indianpines", data_dir=tmp_path)


def test_indianpines_complex_cube_and_gt_rejected(tmp_path):
    pytest.importorskip("scipy")
    cube, gt = _write_pines(tmp_path)
    _write_pines(tmp_path, cube=cube.astype(float) + 1j)
    with pytest.raises(UserError, match="complex"):
        load_dataset("indianpines", data_dir=tmp_path)
    _write_pines(tmp_path, gt=gt.astype(complex))
    with pytest.raises(UserError, match="complex"):
        load_dataset("indianpines", data_dir=tmp_path)


def test_indianpines_records_its_normalisation(tmp_path):
    pytest.importorskip("scipy")
    cube, gt = _write_pines(tmp_path)
    d = load_dataset("indianpines", data_dir=tmp_path)
    raw = cube.reshape(-1, 20).astype(float)[gt.ravel() > 0]
    x_all = np.concatenate([d.x_train, d.x_val])
    back = np.concatenate([d.normalize(raw)])
    key = lambda a: np.lexsort(a.T)  # noqa: E731
    assert np.allclose(back[key(back)], x_all[key(x_all)])
    assert d.meta()["normalization"] is not None
