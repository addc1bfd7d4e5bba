"""Issue 19: the cheaper one-shot cycle (correction scheme for linear steps, no final relaxation)
and coarse steps from averaged step data."""
import dataclasses

import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.reference import forward_states
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.runtime.backend import resolve_backend
from gpubraid.solver.mgrit import MGRIT
from gpubraid.solver.options import MGRITOptions
from gpubraid.solver.state import SolveState
from gpubraid.training.config import TrainConfig
from gpubraid.training.methods import make_method
from tests.solver.test_mgrit import make_problem

BE = resolve_backend("numpy", "float64")


def test_averaged_coarse_params_equal_the_hand_computed_average():
    """Every coarse step's parameter rows are Σ h_s θ_s / Σ h_s over the level-0 steps it spans (the
    last one shorter), per-sample arrays are injected, on every level."""
    N = 11
    h = np.linspace(0.5, 1.5, N)
    solver = MGRIT(None, [0], [0, N], h, MGRITOptions(cfactor=2, max_levels=4, coarse_params="average"), BE)
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((N, 3, 2)), rng.standard_normal(N), rng.standard_normal((N, 4, 2)))
    s = SolveState(solver, None, (4, 2), False)
    solver.plan.distribute(s, data, sample_data=(2,))
    assert solver.n_levels == 4
    for l in range(1, solver.n_levels):
        fine = solver.levels[l].fine
        for k in range(solver.levels[l].N):
            span = np.arange(fine[k], fine[k + 1])
            w = h[span] / h[span].sum()
            for j in (0, 1):
                want = np.tensordot(w, data[j][span], axes=1)
                assert np.allclose(s.data[l][j][k], want, rtol=1e-14, atol=1e-14), (l, k, j)
            assert np.array_equal(s.data[l][2][k], data[2][fine[k]])      # injected
        assert np.allclose(s.h[l], solver.levels[l].H)
    # injection (the default) is unchanged
    inj = MGRIT(None, [0], [0, N], h, MGRITOptions(cfactor=2, max_levels=4), BE)
    s2 = SolveState(inj, None, (4, 2), False)
    inj.plan.distribute(s2, data)
    for l in range(1, inj.n_levels):
        for j in range(3):
            assert np.array_equal(s2.data[l][j], data[j][inj.levels[l].fine[:-1]])
            # on one rank every level's injected rows are level 0's at one stride: views, no copies
            assert np.shares_memory(s2.data[l][j], data[j])


def test_strided_rows_are_views_only_when_they_fill_the_level_at_one_stride():
    from gpubraid.solver.stepdata import _strided

    assert _strided(np.arange(4), np.array([1, 3, 5, 7]), 4) == slice(1, 8, 2)
    assert _strided(np.arange(1), np.array([6]), 1) == slice(6, 7, 1)
    assert _strided(np.arange(3), np.array([0, 2, 5]), 3) is None      # not one stride
    assert _strided(np.array([1, 2]), np.array([2, 4]), 3) is None     # rows from elsewhere too
    assert _strided(np.arange(2), np.array([4, 2]), 2) is None         # descending
    assert _strided(np.arange(0), np.array([], dtype=int), 0) is None


@pytest.mark.parametrize("linear", [False, True])
def test_coarse_levels_on_the_fine_rows_give_the_same_bits(linear, monkeypatch):
    """One-shot (no final relaxation: level 0's C-point changes interpolated) and converged solves, the
    coarse levels' states views of the finer levels' C-point rows (one position) or arrays of their
    own: the same states, adjoints and gradient, bit for bit.  No views where the coarse levels carry
    corrections (``linear``, here the adjoint's)."""
    from gpubraid.solver import mgrit as mgrit_module

    model, layout, theta, x, y = make_problem("dense", 32, B=4)
    base = dict(cfactor=2, max_levels=4, min_coarse=1)
    for o in (MGRITOptions(**base, max_iter=1, final_relax=False), MGRITOptions(**base, tol=1e-12, max_iter=60)):
        bwd = dataclasses.replace(o, linear=True) if linear else o
        views = LayerParallel(model, None, o, bwd)
        with monkeypatch.context() as m:
            m.setattr(mgrit_module, "coarse_rows_in_fine", lambda fine, coarse: None)
            own = LayerParallel(model, None, o, bwd)
        assert all(a is None for a in own.fwd.alias + own.bwd.alias)
        assert all(a is not None for a in views.fwd.alias[1:]) and views.fwd.n_levels == 4
        assert all((a is None) == linear for a in views.bwd.alias[1:])
        a, b = views.evaluate(theta, x, y, 4), own.evaluate(theta, x, y, 4)
        assert a.objective == b.objective and np.array_equal(a.grad, b.grad)
        assert np.array_equal(views.U, own.U) and np.array_equal(views.Lam, own.Lam)


@pytest.mark.parametrize("N, levels, nrelax", [(32, 4, 0), (12, 4, 1), (13, 3, [0, 1]), (40, 5, 1)])
def test_relaxation_into_the_rows_gives_the_same_bits(N, levels, nrelax, monkeypatch):
    """F- and C-relaxation writing the steps into the level's rows with g added in the same pass (the
    dense step's ``forward_rhs`` / ``adjoint_rhs``) against computing, then adding: the same states,
    adjoints and gradient bit for bit, one-shot and converged (N = 12: level 2 has 3 points, its C-points
    2 and 3, the last appended, one row apart: they must not be written while read)."""
    from gpubraid.objective import layer_parallel

    model, layout, theta, x, y = make_problem("dense", N, B=4)
    base = dict(cfactor=2, max_levels=levels, min_coarse=1, nrelax=nrelax)
    for o in (MGRITOptions(**base, max_iter=1, final_relax=False), MGRITOptions(**base, tol=1e-12, max_iter=80)):
        into = LayerParallel(model, None, o, dataclasses.replace(o, linear=True))
        assert hasattr(into.phi, "into") and hasattr(into.psi, "into")
        plain_propagators = layer_parallel.propagators
        with monkeypatch.context() as m:
            def without_into(steps):
                phi, psi = plain_propagators(steps)
                del phi.into, psi.into
                return phi, psi
            m.setattr(layer_parallel, "propagators", without_into)
            plain = LayerParallel(model, None, o, dataclasses.replace(o, linear=True))
        assert not hasattr(plain.phi, "into")
        a, b = into.evaluate(theta, x, y, 4), plain.evaluate(theta, x, y, 4)
        assert a.objective == b.objective and np.array_equal(a.grad, b.grad)
        assert np.array_equal(into.U, plain.U) and np.array_equal(into.Lam, plain.Lam)


def test_residual_lies_in_the_next_levels_g_and_the_restriction_builds_g_there(monkeypatch):
    """Every residual of a FAS and of a correction-scheme solve is written into rows 1.. of the next
    level's g (no copy in the restriction), and the gradient is serial's when converged."""
    from gpubraid.solver import mgrit as mgrit_module

    seen = []
    residual = mgrit_module.residual

    def spy(s, l):
        r = residual(s, l)
        seen.append((s.r_in_g, np.shares_memory(r, s.g[l + 1])))
        return r

    monkeypatch.setattr(mgrit_module, "residual", spy)
    model, layout, theta, x, y = make_problem("dense", 32, B=4)
    o = MGRITOptions(cfactor=2, max_levels=4, min_coarse=1, tol=1e-12, max_iter=60)
    ser = LayerParallel(model, None, MGRITOptions(max_levels=1), MGRITOptions(max_levels=1))
    for bwd in (o, dataclasses.replace(o, linear=True)):
        seen.clear()
        ev = LayerParallel(model, None, o, bwd).evaluate(theta, x, y, 4)
        assert seen and all(a and b for a, b in seen)
        ref = ser.evaluate(theta, x, y, 4)
        assert np.abs(ev.grad - ref.grad).max() <= 1e-9 * np.abs(ref.grad).max()


def test_c_relaxation_into_rows_one_apart_reads_every_row_before_writing():
    """C-points one row apart (N = 12, level 2: 3 points, C-points 2 and 3): c_relax gives
    u_c = Φ(u_{c−1}) + g_c from the rows as they were, written into the rows or not."""
    from gpubraid.solver.relax import c_relax

    model, layout, theta, x, y = make_problem("dense", 12, B=4)
    opts = MGRITOptions(cfactor=2, max_levels=4, min_coarse=1, nrelax=1)
    lp = LayerParallel(model, None, opts, opts)
    solver = lp.fwd
    assert solver.lv[2].c_sel == slice(2, 4, 1)
    rng = np.random.default_rng(3)
    data = layout.views(theta).layers()
    for phi in (lp.phi, lambda u, d, h: lp.phi(u, d, h)):   # with ``into``, and a callback without
        s = SolveState(solver, phi, (4, *model.state_shape), False)
        solver.plan.distribute(s, data, ())
        u = rng.standard_normal((solver.lv[2].rows, 4, *model.state_shape))
        s.u[2], s.g[2] = u.copy(), rng.standard_normal(u.shape)
        c_relax(s, 2)
        want = lp.phi(u[1:3], tuple(d[1:3] for d in s.data[2]), s.h[2][1:3]) + s.g[2][2:4]
        assert np.array_equal(s.u[2][2:4], want) and np.array_equal(s.u[2][:2], u[:2])


def test_coarse_levels_on_halved_maps_keep_their_arrays_and_views_below_them(monkeypatch):
    """With level 1 on halved feature maps, level 1 has arrays of its own and level 2 is a view of
    level 1's rows; the solve gives the bits of one without views."""
    from gpubraid.objective.level_steps import LevelSteps
    from gpubraid.solver import mgrit as mgrit_module
    from tests.solver.test_space import _conv_chain

    step, params, h, ref = _conv_chain(24)
    opts = MGRITOptions(cfactor=2, max_levels=3, max_iter=2, spatial_levels=1, final_relax=False)
    solver = MGRIT(None, [0], [0, 24], h, opts, BE)
    assert solver.alias[1] is None and solver.alias[2] is not None
    u, _ = solver.solve(LevelSteps(step, 1).forward, params, ref[0], ref[0].shape)
    monkeypatch.setattr(mgrit_module, "coarse_rows_in_fine", lambda fine, coarse: None)
    plain = MGRIT(None, [0], [0, 24], h, opts, BE)
    assert plain.alias == [None] * 3
    v, _ = plain.solve(LevelSteps(step, 1).forward, params, ref[0], ref[0].shape)
    assert np.array_equal(u, v)


def test_bad_coarse_params_raise_user_error():
    with pytest.raises(UserError, match="coarse_params"):
        MGRITOptions(coarse_params="mean").validate()
    with pytest.raises(UserError):
        TrainConfig(example="peaks", coarse_params="mean")


@pytest.mark.parametrize("levels,nrelax", [(2, 0), (3, [0, 1]), (5, 1)])
def test_correction_scheme_gives_the_same_iterates_without_restriction_steps(levels, nrelax):
    """A linear chain (the adjoint) solved with ``linear``: the FAS iterates to round-off, converged
    the serial adjoint, and no coarse steps in the restriction (schedule counts what solve does)."""
    model, layout, theta, x, y = make_problem("dense", 40, B=3)
    ser = LayerParallel(model, None, MGRITOptions(max_levels=1), MGRITOptions(max_levels=1))
    ref = ser.evaluate(theta, x, y, 3)
    for it in (1, 2, 40):
        o = MGRITOptions(cfactor=2, max_levels=levels, nrelax=nrelax, tol=1e-13 if it == 40 else 0.0,
                         max_iter=it)
        fas = LayerParallel(model, None, o, o)
        cs = LayerParallel(model, None, o, dataclasses.replace(o, linear=True))
        a, b = fas.evaluate(theta, x, y, 3), cs.evaluate(theta, x, y, 3)
        assert np.abs(a.grad - b.grad).max() <= 1e-11 * np.abs(a.grad).max()
        assert np.abs(fas.Lam - cs.Lam).max() <= 1e-11 * np.abs(fas.Lam).max()
        fb, cb = fas.last_stats[1], cs.last_stats[1]
        assert fb.iterations == cb.iterations
        restrict = sum(n for p, _, n in fas.bwd.schedule(fb.iterations, fb.levels, warm=False) if p == "restrict")
        cs_sched = list(cs.bwd.schedule(cb.iterations, cb.levels, warm=False))
        assert cb.total_steps == sum(n for *_, n in cs_sched)
        assert all(n == 0 for p, _, n in cs_sched if p == "restrict")
        # and the first F-sweep after a restriction skips Φ(0) = 0 (m = 2: half of it, levels ≥ 1)
        zero = sum(fas.bwd.lv[lv].f_relax_steps() - n for p, lv, n in cs_sched if p == "f_relax" and lv > 0
                   and n < fas.bwd.lv[lv].f_relax_steps())
        assert restrict > 0 and cb.total_steps == fb.total_steps - restrict - zero
        if it == 40:
            assert np.abs(b.grad - ref.grad).max() <= 1e-9 * np.abs(ref.grad).max()


def test_solve_without_final_relaxation_moves_f_points_by_their_c_point_correction():
    """final_relax off: C-points as with it; each F-point = its value before the correction + the
    correction of the C-point starting its interval; no steps for it; the schedule says so."""
    model, layout, theta, x, y = make_problem("dense", 21, B=3)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    U = forward_states(model, P, x)
    warm = U + 0.01 * np.cos(np.arange(U.size)).reshape(U.shape)
    seen = {}
    base = MGRITOptions(cfactor=2, max_levels=3, nrelax=[0, 1], tol=0.0, max_iter=1, final_residual=False)
    for fr in (True, False):
        s = MGRIT(None, [0], [0, 21], model.h, dataclasses.replace(base, final_relax=fr), BE)
        keep = {}
        u, st = s.solve(model.step.forward, P.layers(), u0, u0.shape, warm=warm.copy(),
                        access=lambda k, rows: keep.setdefault("c", rows.copy()))
        sched = list(s.schedule(1, warm=True))
        assert sum(n for *_, n in sched) == st.total_steps
        assert (sched[-1][:2] == ("interpolate", 0)) != fr
        seen[fr] = (u, keep["c"], st.total_steps)
    c = np.r_[0:21:2, 21]
    f = np.setdiff1d(np.arange(22), c)
    assert np.array_equal(seen[False][0][c], seen[True][0][c])
    assert seen[True][2] - seen[False][2] == f.size                     # N(1 − 1/m) fewer steps
    # access sees the F-points before the correction (the warm start F-relaxed)
    pre = seen[False][1]
    start = warm.copy()
    start[0] = u0
    e = seen[False][0][c] - start[c]
    assert np.array_equal(seen[False][0][f], pre[f] + e[(f - 1) // 2])


@pytest.mark.parametrize("N,levels,fwd,bwd", [(32, 2, 64, 48), (32, 3, 88, 56), (256, 2, 512, 384)])
def test_oneshot_default_step_counts(N, levels, fwd, bwd):
    """The default one-shot cycle, warm, per evaluation (schedule = what solve executes): 2 levels
    at m = 2 cost 2N forward + 1.5N adjoint = 1.75× serial (was 2.5N + 2.5N)."""
    m = make_method(TrainConfig(example="peaks", layers=N).resolved("dense"))
    h = np.full(N, 1.0 / N)
    f = MGRIT(None, [0], [0, N], h, m.forward, BE)
    b = MGRIT(None, [0], [0, N], h, m.adjoint, BE)
    assert sum(n for *_, n in f.schedule(1, levels, warm=True)) == fwd
    assert sum(n for *_, n in b.schedule(1, levels, warm=True)) == bwd


@pytest.mark.mpi
@pytest.mark.parametrize("coarse,spatial", [("inject", 0), ("average", 0), ("average", 2)])
def test_cheap_cycle_independent_of_rank_count(mpirun, coarse, spatial):
    """Three warm one-shot evaluations (uneven blocks, one layer per rank at the end of 4): the same
    states, adjoints, gradients and objectives on 1..4 ranks (``spatial``: a conv network whose
    coarse levels halve the feature maps)."""
    ref = mpirun.json(1, "oneshot_cycle_check.py", 13, 3, coarse, spatial)
    for n in (2, 3, 4):
        got = mpirun.json(n, "oneshot_cycle_check.py", 13, 3, coarse, spatial)
        for key in ("states", "adjoints"):
            assert np.array_equal(np.array(got[key]), np.array(ref[key])), (n, key)
        g, r = np.array(got["grad"]), np.array(ref["grad"])
        assert np.abs(g - r).max() <= 1e-12 * np.abs(r).max(), n
        assert np.allclose(got["objective"], ref["objective"], rtol=1e-12, atol=0), n
