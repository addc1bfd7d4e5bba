"""Spatial coarsening: the operators, the level shapes, and MGRIT with halved feature maps against
serial propagation (forward, and the adjoint in the correction scheme)."""
import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.steps import ConvStep, DenseStep
from gpubraid.objective.level_steps import LevelSteps
from gpubraid.runtime.backend import resolve_backend
from gpubraid.solver.mgrit import MGRIT
from gpubraid.solver.options import MGRITOptions
from gpubraid.solver.space import add_interpolated, level_shapes, restrict_space
from gpubraid.torch.settings import make_settings
from gpubraid.training.config import TrainConfig
from gpubraid.training.methods import make_method

BE = resolve_backend("numpy", "float64")


def test_restriction_is_the_2x2_mean_and_interpolation_its_scaled_transpose():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((3, 2, 4, 6, 8))
    v = rng.standard_normal((3, 2, 4, 3, 4))
    Ru = restrict_space(np, u)
    assert Ru.shape == v.shape
    assert np.allclose(Ru[0, 1, 2, 1, 3], u[0, 1, 2, 2:4, 6:8].mean())
    Pv = np.zeros_like(u)
    add_interpolated(np, Pv, v)
    assert np.array_equal(Pv[..., 2:4, 6:8], np.broadcast_to(v[..., 1:2, 3:4], Pv[..., 2:4, 6:8].shape))
    # <R u, v> = ¼ <u, P v> (dot-product test), R P = I
    assert np.isclose((Ru * v).sum(), 0.25 * (u * Pv).sum(), rtol=1e-13)
    assert np.allclose(restrict_space(np, Pv), v, rtol=0, atol=1e-15)
    out = np.empty_like(v)
    assert restrict_space(np, u, out) is out and np.array_equal(out, Ru)


def test_level_shapes_halve_the_last_two_axes_and_refuse_what_cannot_halve():
    assert level_shapes((5, 8, 28, 28), 2, 4) == [(5, 8, 28, 28), (5, 8, 14, 14), (5, 8, 7, 7), (5, 8, 7, 7)]
    assert level_shapes((5, 8, 28, 28), 3, 2) == [(5, 8, 28, 28), (5, 8, 14, 14)]  # only the levels there are
    assert level_shapes((5, 8), 0, 3) == [(5, 8)] * 3
    with pytest.raises(UserError, match=r"spatial_levels: 28x28 feature maps halve into whole pixels 2 time"):
        level_shapes((5, 8, 28, 28), 3, 4)
    with pytest.raises(UserError, match="two spatial axes"):
        level_shapes((5, 8), 1, 3)
    with pytest.raises(UserError, match="spatial_levels must be an integer >= 0"):
        MGRITOptions(spatial_levels=-1).validate()


def test_level_steps_need_a_resizable_step():
    with pytest.raises(UserError, match="DenseStep has no resized"):
        LevelSteps(DenseStep(4, "tanh", BE), 1)
    with pytest.raises(UserError, match="halve into whole pixels 1 time"):
        LevelSteps(ConvStep(2, 6, 6, "tanh", BE), 2)
    steps = LevelSteps(ConvStep(2, 8, 4, "tanh", BE), 2)
    assert sorted(steps.steps) == [(2, 2, 1), (2, 4, 2), (2, 8, 4)]


class _NaNEmpty:
    """NumPy whose ``empty`` arrays are full of NaN."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        return np.full(shape, np.nan, dtype=dtype)


def _conv_chain(N=24, B=2, C=3, H=8, W=8, seed=0):
    rng = np.random.default_rng(seed)
    step = ConvStep(C, H, W, "tanh", BE)
    K = rng.normal(size=(N, C, C, 3, 3)) * 0.4
    b = rng.normal(size=(N, C)) * 0.1
    h = np.full(N, 2.0 / N)
    u0 = rng.normal(size=(B, C, H, W))
    U = [u0]
    for n in range(N):
        U.append(step.forward(U[-1][None], (K[n:n + 1], b[n:n + 1]), h[n:n + 1])[0])
    return step, (K, b), h, np.array(U)


@pytest.mark.parametrize("N,spatial,levels,nested", [(24, 1, 3, False), (24, 2, 3, False), (25, 2, 4, False),
                                                     (24, 2, 3, True)])
def test_mgrit_with_halved_maps_converges_to_serial_propagation(N, spatial, levels, nested):
    """FAS with halved maps is still MGRIT for the fine chain: its residual falls to the tolerance and
    the solution is serial propagation's (N = 25: uneven C-points, index-array selectors; ``nested``:
    the nested start, whose coarse C-points are set from the coarser level's values)."""
    step, params, h, ref = _conv_chain(N)
    solver = MGRIT(None, [0], [0, N], h, MGRITOptions(cfactor=2, max_levels=levels, tol=1e-11, max_iter=40,
                                                      spatial_levels=spatial, nested=nested), BE)
    solver.xp = _NaNEmpty()  # a row the solve reads before writing it would spread NaN
    u, stats = solver.solve(LevelSteps(step, spatial).forward, params, ref[0], ref[0].shape)
    assert np.isfinite(stats.residuals).all()
    assert stats.converged and stats.levels == levels
    assert np.abs(u - ref).max() < 1e-10
    # the coarse levels really ran on halved maps: level 1's rows are 4x smaller
    plain = MGRIT(None, [0], [0, N], h, MGRITOptions(cfactor=2, max_levels=levels, tol=1e-11, max_iter=40,
                                                     nested=nested), BE)
    _, pstats = plain.solve(step.forward, params, ref[0], ref[0].shape)
    assert stats.residuals[1] != pstats.residuals[1]


def test_adjoint_correction_scheme_with_halved_maps_matches_serial_adjoint():
    """The linear adjoint solve (correction scheme) with the forward states as per-sample step data,
    halved with the levels, converges to the serial adjoint."""
    N = 16
    step, (K, b), h, U = _conv_chain(N, seed=1)
    lamN = np.random.default_rng(2).normal(size=U[0].shape)
    ref = [lamN]
    for n in range(N - 1, -1, -1):
        ref.append(step.adjoint(U[n][None], ref[-1][None], (K[n:n + 1], b[n:n + 1]), h[n:n + 1])[0])
    steps = LevelSteps(step, 1)
    data = (K[::-1].copy(), b[::-1].copy(), U[:-1][::-1].copy())
    opts = MGRITOptions(cfactor=2, max_levels=3, tol=1e-11, max_iter=40, linear=True, spatial_levels=1)
    solver = MGRIT(None, [0], [0, N], h[::-1].copy(), opts, BE)
    lam, stats = solver.solve(lambda w, d, hh: steps.adjoint(d[-1], w, d[:-1], hh), data, lamN, lamN.shape,
                              sample_data=(2,))
    assert stats.converged
    assert np.abs(lam - np.array(ref)).max() < 1e-10


def test_spatial_levels_is_a_training_setting_and_refused_by_the_torch_module():
    cfg = TrainConfig(example="mnist", method="oneshot", spatial_levels=1)
    m = make_method(cfg)
    assert m.forward.spatial_levels == 1 and m.adjoint.spatial_levels == 1
    with pytest.raises(UserError, match="spatial_levels is not a LayerParallel setting"):
        make_settings("oneshot", {"spatial_levels": 1})
