"""Issue 9: automatic level choice, nested iteration, adaptive stop, exact step counting, the
public cycle schedule, solve input validation and O(levels) setup."""
import time

import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.reference import forward_states
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.runtime.backend import resolve_backend
from gpubraid.solver.grid import Distribution, build_hierarchy
from gpubraid.solver.mgrit import MGRIT
from gpubraid.solver.options import MGRITOptions
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer
from tests.solver.test_mgrit import make_problem, scalar_step

BE = resolve_backend("numpy", "float64")


def scalar(N, a, T, **opts):
    h = np.full(N, T / N)
    solver = MGRIT(None, [0], [0, N], h, MGRITOptions(cfactor=2, **opts), BE)
    return solver, (np.full((N, 1), a),)


@pytest.mark.parametrize("N", [64, 256, 1024])
def test_level_choice_from_estimated_spectral_scale(N):
    """ρ of u' = a·u is |a|; levels stop where max(H)·ρ would exceed the bound; the coarsest grid
    has about T·ρ/bound steps whatever N is."""
    a, T = -3.0, 10.0
    solver, data = scalar(N, a, T, stability=1.0, tol=1e-10, max_iter=100)
    u, st = solver.solve(scalar_step, data, np.ones((1, 1)), (1, 1))
    assert abs(st.rho - 3.0) < 1e-4
    H = solver.levels[st.levels - 1].H.max()
    assert H * 3.0 <= 1.0 and (st.levels == solver.n_levels or 2 * H * 3.0 > 1.0)
    assert st.h_rho and max(st.h_rho) <= 1.0
    assert 30 <= solver.levels[st.levels - 1].N < 60       # T·ρ/bound = 30 (m = 2), independent of N
    assert st.converged
    assert np.allclose(u[:, 0, 0], (1 + a * T / N) ** np.arange(N + 1), rtol=1e-8, atol=1e-9)
    # the convergence bound ½·T·ρ²·H ≤ c limits the levels further
    solver2, _ = scalar(N, a, T, stability=1.0, conv_bound=5.0, tol=1e-10, max_iter=100)
    _, st2 = solver2.solve(scalar_step, data, np.ones((1, 1)), (1, 1))
    assert st2.levels < st.levels
    assert st2.levels == 1 or 0.5 * T * 9.0 * solver2.levels[st2.levels - 1].H.max() <= 5.0
    # the estimate is counted: (iters + 1) calls on N steps × samples used / batch
    assert st.estimate_steps == (solver.opts.stability_iters + 1) * N


def test_level_choice_follows_the_parameters_per_solve():
    """Larger weights (larger ρ) give fewer levels on the same solver object."""
    model, layout, theta, x, y = make_problem("dense", 128, B=4)
    opts = MGRITOptions(cfactor=2, stability=1.0, tol=1e-11, max_iter=100)
    lp = LayerParallel(model, None, opts, opts)
    lp.evaluate(theta, x, y, 4)
    small = lp.last_stats[0]
    lp.evaluate(theta * 4, x, y, 4)
    big = lp.last_stats[0]
    assert big.rho > 2 * small.rho and big.levels < small.levels
    assert lp.last_stats[1].levels == big.levels            # the adjoint solve uses the same levels


def test_nested_iteration_guess():
    """Converged result unchanged; after one iteration the residual is smaller than from u_0."""
    model, layout, theta, x, y = make_problem("dense", 64, B=4)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    U_ref = forward_states(model, P, x)
    res1 = {}
    for nested in (False, True):
        s = MGRIT(None, [0], [0, 64], model.h, MGRITOptions(cfactor=2, max_levels=3, nested=nested,
                                                            tol=1e-12, max_iter=100), BE)
        u, st = s.solve(model.step.forward, P.layers(), u0, u0.shape)
        assert st.converged and np.abs(u - U_ref).max() <= 1e-10 * np.abs(U_ref).max()
        s1 = MGRIT(None, [0], [0, 64], model.h, MGRITOptions(cfactor=2, max_levels=3, nested=nested,
                                                             tol=0.0, max_iter=1), BE)
        u1, st1 = s1.solve(model.step.forward, P.layers(), u0, u0.shape)
        res1[nested] = (st1.residuals[-1], np.abs(u1 - U_ref).max())
    assert res1[True][0] < res1[False][0]
    assert res1[True][1] < res1[False][1]


@pytest.mark.parametrize("cfactor,levels", [(2, 2), (3, 3), (4, 2)])
def test_nested_start_reads_no_row_before_writing_it(cfactor, levels, monkeypatch):
    """The nested start's level-0 rows are not filled with u_0 (only point 0 is put in): with every
    new array full of NaN the one-shot solve gives the same bits as with zeros."""
    model, layout, theta, x, y = make_problem("dense", 50, B=4)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    opts = MGRITOptions(cfactor=cfactor, max_levels=levels, nested=True, tol=0.0, max_iter=1)
    out = {}
    for poison in (0.0, np.nan):
        empty = np.empty
        monkeypatch.setattr(np, "empty", lambda *a, **k: np.full_like(empty(*a, **k), poison))
        s = MGRIT(None, [0], [0, 50], model.h, opts, BE)
        u, st = s.solve(model.step.forward, P.layers(), u0, u0.shape, levels=levels)
        monkeypatch.setattr(np, "empty", empty)
        assert st.levels == levels and np.isfinite(u).all()
        out[poison] = u
    assert np.array_equal(out[0.0], out[np.nan])


def test_adaptive_stop_with_cap():
    model, layout, theta, x, y = make_problem("dense", 64, B=4)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    s = MGRIT(None, [0], [0, 64], model.h, MGRITOptions(cfactor=2, tol=0.0, max_iter=4, skip=False,
                                                        final_residual=False), BE)
    _, fixed = s.solve(model.step.forward, P.layers(), u0, u0.shape)
    assert fixed.iterations == 4 and len(fixed.residuals) == 4     # no residual of the last iterate
    assert fixed.residuals[1] < fixed.residuals[0]
    tol = fixed.residuals[1] * 1.0001
    _, st = s.solve(model.step.forward, P.layers(), u0, u0.shape, tol=tol)
    assert st.converged and st.iterations == 1
    _, st = s.solve(model.step.forward, P.layers(), u0, u0.shape, tol=1e-30, max_iter=2)
    assert st.iterations == 2 and not st.converged


def test_adaptive_oneshot_training_records_iterations():
    cfg = dict(example="peaks", n_train=200, n_val=50, iterations=4, val_every=0, layers=16,
               adaptive=1e3, fwd_iters=3, bwd_iters=3, progress=False)
    res = Trainer(TrainConfig(**cfg)).run()
    its = [h["fwd_iters"] for h in res.history[1:]]
    assert all(0 <= i <= 3 for i in its) and min(its) < 3


@pytest.mark.parametrize("layers", [16, 37])
def test_serial_counts_two_n_per_evaluation(layers):
    tr = Trainer(TrainConfig(example="peaks", method="serial", layers=layers, n_train=100, n_val=50,
                             iterations=2, val_every=0, progress=False))
    res = tr.run()
    assert all(h["steps"] == 2 * layers for h in res.history)


@pytest.mark.parametrize("opts,warm", [
    (dict(cfactor=2, max_levels=3, nrelax=[0, 1]), False),
    (dict(cfactor=[4, 2], max_levels=4, nrelax=1), True),
    (dict(cfactor=2, max_levels=2, nrelax=0, nested=True, final_residual=False), False),
    (dict(cfactor=3, max_levels=4, nrelax=[0, 1], nested=True), False),
    (dict(cfactor=2, max_levels=5, fmg=True), False)])
@pytest.mark.parametrize("levels", [None, 2])
def test_schedule_counts_what_solve_does(opts, warm, levels):
    model, layout, theta, x, y = make_problem("dense", 45, B=2)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    s = MGRIT(None, [0], [0, 45], model.h, MGRITOptions(tol=0.0, max_iter=3, **opts), BE)
    w = None
    if warm:
        w, _ = s.solve(model.step.forward, P.layers(), u0, u0.shape)
    _, st = s.solve(model.step.forward, P.layers(), u0, u0.shape, warm=None if w is None else w.copy(),
                    levels=levels)
    per = [0] * s.n_levels
    coarse = 0
    for phase, l, n in s.schedule(st.iterations, levels=levels, warm=warm):
        if phase == "coarse_solve":
            coarse += n
        else:
            per[l] += n
    assert per == st.steps_per_level and coarse == st.coarse_steps


def test_solve_input_validation():
    model, layout, theta, x, y = make_problem("dense", 16, B=3)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    s = MGRIT(None, [0], [0, 16], model.h, MGRITOptions(cfactor=2, tol=0.0, max_iter=1), BE)
    f = model.step.forward
    with pytest.raises(UserError, match="u0"):
        s.solve(f, P.layers(), None, u0.shape)
    with pytest.raises(UserError, match="u0.*warm"):
        s.solve(f, P.layers(), None, u0.shape, warm=np.zeros((17, *u0.shape)))
    with pytest.raises(UserError, match="u0 must have shape"):
        s.solve(f, P.layers(), u0[:1], u0.shape)                 # would broadcast silently
    with pytest.raises(UserError, match="u0 must have shape"):
        s.solve(f, P.layers(), u0[:2], u0.shape)
    with pytest.raises(UserError, match="warm must have shape"):
        s.solve(f, P.layers(), u0, u0.shape, warm=np.zeros((17, 1, u0.shape[1])))
    with pytest.raises(UserError, match="data"):
        s.solve(f, tuple(p[:15] for p in P.layers()), u0, u0.shape)
    with pytest.raises(UserError, match="sample_shape"):
        s.solve(f, P.layers(), u0, (0, 3))


def test_setup_is_o_levels_in_python():
    """10^7 steps: hierarchy, distribution, level index sets and fetch plan in well under a minute
    (vectorised; a Python loop over points would take minutes).  Not a timing assertion: the
    bound only catches an O(N) Python loop."""
    N = 10_000_000
    t0 = time.perf_counter()
    s = MGRIT(None, [0], [0, N], np.full(N, 1.0 / N), MGRITOptions(cfactor=2), BE)
    levels = build_hierarchy(np.full(N, 1.0 / N), 2, 10, 2)
    dist = Distribution(np.array([0, N // 3, N]), levels)
    lays = [dist.layout(l, p) for l in range(len(levels)) for p in range(2)]
    assert s.n_levels == 10 and len(lays) == 20
    assert s.lv[0].c_rows_host.size == N // 2
    assert time.perf_counter() - t0 < 120
