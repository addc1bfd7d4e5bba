"""MGRIT against serial propagation, the parareal property, the two-level bound, scalability.

All in float64 on one process; tests/objective/test_layer_parallel.py repeats the comparisons over 1–4 ranks.
"""
import itertools

import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.network import ResNetODE
from gpubraid.network.reference import evaluate, forward_states
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.runtime.backend import resolve_backend
from gpubraid.runtime.comm import Comm
from gpubraid.solver.chain import SerialChain
from gpubraid.solver.cycle import phases
from gpubraid.solver.grid import build_hierarchy
from gpubraid.solver.mgrit import MGRIT
from gpubraid.solver.options import MGRITOptions

BE = resolve_backend("numpy", "float64")


def make_problem(kind, N, B=3, seed=0):
    in_shape = (3,) if kind == "dense" else (2, 4, 3)
    model = ResNetODE(kind, in_shape, 3 if kind == "dense" else 2, N, 3, 2.0, "tanh", BE,
                      gamma_tik=1e-3, gamma_ddt=1e-3)
    layout = model.layout()
    theta = model.init_params(layout, seed=seed, scale=1.5)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, *in_shape))
    y = rng.integers(0, 3, B)
    return model, layout, theta, x, y


LEVELS = {"2": 2, "3": 3, "max": 30}


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("N", [8, 33, 64, 257])
@pytest.mark.parametrize("m", [2, 4, 8])
def test_converged_mgrit_equals_serial(kind, N, m):
    """Forward states ≤ 1e-10 and gradients ≤ 1e-8 (relative) for 2, 3, max levels, F and FCF."""
    model, layout, theta, x, y = make_problem(kind, N)
    ref = evaluate(model, layout, theta, x, y)
    U_ref = forward_states(model, layout.views(theta), x)
    for (lname, levels), nrelax in itertools.product(LEVELS.items(), (0, 1)):
        opts = MGRITOptions(cfactor=m, max_levels=levels, nrelax=nrelax, tol=1e-13, max_iter=200)
        lp = LayerParallel(model, None, opts, opts)
        ev = lp.evaluate(theta, x, y, x.shape[0])
        fst, bst = lp.last_stats
        assert fst.converged and bst.converged, (lname, nrelax)
        state_err = np.abs(lp.U - U_ref).max() / np.abs(U_ref).max()
        grad_err = np.linalg.norm(ev.grad - ref.grad) / np.linalg.norm(ref.grad)
        assert state_err <= 1e-10, (lname, nrelax, state_err)
        assert grad_err <= 1e-8, (lname, nrelax, grad_err)
        assert abs(ev.objective - ref.objective) <= 1e-10 * abs(ref.objective)


def scalar_step(u, data, h):
    """User-defined step for u' = a·u: forward Euler, a per interval in data[0] (L, 1)."""
    return u + h[:, None, None] * data[0][:, None, :] * u


def scalar_solve(N, m, ha, nrelax, max_iter, levels=2, access=None, u0=1.0):
    h = np.full(N, 0.1)
    a = ha / 0.1
    solver = MGRIT(None, [0], [0, N], h, MGRITOptions(cfactor=m, max_levels=levels, nrelax=nrelax,
                                                        tol=0.0, max_iter=max_iter, skip=False), BE)
    u, stats = solver.solve(scalar_step, (np.full((N, 1), a),), np.full((1, 1), u0), (1, 1), access=access)
    exact = (1 + ha) ** np.arange(N + 1)
    return u[:, 0, 0], exact, stats


@pytest.mark.parametrize("m", [2, 4, 5])
@pytest.mark.parametrize("Nc", [3, 6, 9])
def test_parareal_property_two_level_f_relaxation(m, Nc):
    """After k iterations the first k coarse intervals are exact; all of them after N_c."""
    N = m * Nc
    for k in range(Nc + 1):
        u, exact, _ = scalar_solve(N, m, -0.3, 0, k)
        err = np.abs(u - exact)
        assert err[: k * m + 1].max() <= 1e-14, (k, err)
        if k < Nc - 1:
            assert err[(k + 1) * m + 1:].max() > 1e-8  # not exact further on: the test can fail
    u, exact, stats = scalar_solve(N, m, -0.3, 0, Nc)
    assert np.abs(u - exact).max() <= 1e-14
    assert stats.residuals[-1] <= 1e-14


def test_fcf_two_coarse_intervals_per_iteration():
    """With FCF the first 2k coarse intervals are exact after k iterations."""
    m, Nc = 4, 10
    for k in range(1, 5):
        u, exact, _ = scalar_solve(m * Nc, m, -0.3, 1, k)
        assert np.abs(u - exact)[: 2 * k * m + 1].max() <= 1e-14


def two_level_bound(lam, mu, m, Nc, fcf):
    geo = (1 - abs(mu) ** (Nc - (2 if fcf else 1))) / (1 - abs(mu))
    return (abs(lam) ** m if fcf else 1.0) * abs(lam ** m - mu) * geo


@pytest.mark.parametrize("fcf", [False, True])
@pytest.mark.parametrize("m", [2, 4, 8])
@pytest.mark.parametrize("Nc", [4, 16, 64])
@pytest.mark.parametrize("mha", [-0.2, -0.8, -1.5])
def test_error_reduction_within_two_level_bound(fcf, m, Nc, mha):
    """‖e_{k+1}‖ / ‖e_k‖ at the C-points never exceeds the two-level bound (docs/algorithm.md §3.9).

    The grid runs over m·h·a (the coarse step's h·a) so that both fine and coarse steps are stable.
    """
    ha = mha / m
    lam, mu = 1 + ha, 1 + m * ha
    assert abs(lam) < 1 and abs(mu) < 1
    bound = two_level_bound(lam, mu, m, Nc, fcf)
    N = m * Nc
    exact = lam ** np.arange(N + 1)
    errors = []

    def access(k, u):
        errors.append(np.linalg.norm(u[m::m, 0, 0] - exact[m::m]))

    scalar_solve(N, m, ha, 1 if fcf else 0, 6, access=access)
    factors = [errors[k + 1] / errors[k] for k in range(len(errors) - 1) if errors[k] > 1e-13]
    assert factors, "no iteration to measure"
    assert max(factors) <= bound * (1 + 1e-8), (factors, bound)


def test_iteration_counts_flat_in_N():
    """Multilevel FCF, m = 4, tol 1e-9 on a tanh ResNet: iterations flat from N = 64 to 4096.

    Setting: dense, 8 channels, T = 5 (h = 5/N), weights ~ N(0, 1/8) (init scale 1), biases 0,
    opening weights ~ N(0, 1/2), batch 4.
    """
    counts = {}
    for N in (64, 256, 1024, 4096):
        model = ResNetODE("dense", (2,), 8, N, 5, 5.0, "tanh", BE)
        layout = model.layout()
        theta = model.init_params(layout, seed=1)
        x = np.random.default_rng(1).standard_normal((4, 2))
        P = layout.views(theta)
        opts = MGRITOptions(cfactor=4, nrelax=1, max_levels=30, tol=1e-9, max_iter=50)
        solver = MGRIT(None, [0], [0, N], model.h, opts, BE)
        u, stats = solver.solve(model.step.forward, P.layers(), model.open_forward(x, P), (4, 8))
        assert stats.converged
        counts[N] = stats.iterations
    assert max(counts.values()) / min(counts.values()) <= 1.5, counts


def test_hierarchy_last_point_is_c_point_and_step_sizes_vary():
    levels = build_hierarchy(np.full(37, 0.5), 4, 10, 2)
    assert [lv.N for lv in levels] == [37, 10, 3]
    assert levels[1].fine.tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 37]
    assert levels[1].H[-1] == 0.5 and levels[1].H[0] == 2.0
    assert levels[2].fine.tolist() == [0, 16, 32, 37]
    assert np.isclose(levels[2].H.sum(), 37 * 0.5)


def expected_steps(levels, nrelax, iterations):
    """Step applications of ``iterations`` V-cycles plus the final relaxation, from the hierarchy."""
    L = len(levels) - 1
    nC = [levels[l + 1].N for l in range(L)]
    nF = [levels[l].N - nC[l] for l in range(L)]
    relax = [nF[l] + nrelax * levels[l].N for l in range(L)]
    cycle = relax[0] + nC[0]
    cycle += sum(levels[l].N + relax[l] + nC[l] + nF[l] for l in range(1, L))
    cycle += 2 * levels[L].N  # restriction onto the coarsest level, and its sequential solve
    return iterations * cycle + relax[0] + nC[0], cycle


def test_work_accounting_matches_cycle_cost():
    """Counted step applications equal the cycle's cost; per V-cycle about 2.0 N (F), 3.4 N (FCF)."""
    N = 4096
    h = np.full(N, 1e-3)
    for nrelax, about in ((0, 2.0), (1, 3.4)):
        solver = MGRIT(None, [0], [0, N], h, MGRITOptions(cfactor=4, nrelax=nrelax, max_levels=30,
                                                            tol=0.0, max_iter=5, skip=False), BE)
        _, stats = solver.solve(scalar_step, (np.full((N, 1), -1.0),), np.ones((1, 1)), (1, 1))
        total, cycle = expected_steps(solver.levels, nrelax, stats.iterations)
        assert sum(stats.steps_per_level) + stats.coarse_steps == total
        assert abs(cycle / N - about) < 0.2, (nrelax, cycle / N)


def test_skip_and_warm_start_and_fcycle_converge_to_serial():
    model, layout, theta, x, y = make_problem("dense", 64)
    U_ref = forward_states(model, layout.views(theta), x)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    for fmg, skip in ((True, True), (False, False)):
        solver = MGRIT(None, [0], [0, 64], model.h,
                       MGRITOptions(cfactor=2, fmg=fmg, skip=skip, tol=1e-12), BE)
        u, stats = solver.solve(model.step.forward, P.layers(), u0, u0.shape)
        assert np.abs(u - U_ref).max() <= 1e-10 * np.abs(U_ref).max()
    # a warm start from the converged solution converges at once
    u2, stats2 = solver.solve(model.step.forward, P.layers(), u0, u0.shape, warm=u.copy())
    assert stats2.iterations == 0 and stats2.converged


@pytest.mark.parametrize("bound", [0.1, 2.0, 1e9])  # one level, some, all
def test_choose_makes_the_choice_of_the_solve_without_solving(bound):
    """MGRIT.choose gives the levels, ρ (bit for bit) and estimate cost that a solve choosing
    itself gets, cold and from a warm start; the warm rows are left alone; a solve handed the
    choice does not estimate again and equals the one that chose."""
    model, layout, theta, x, y = make_problem("dense", 64, B=5)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    solver = MGRIT(None, [0], [0, 64], model.h, MGRITOptions(cfactor=2, stability=bound, max_iter=1), BE)
    phi = model.step.forward
    warm = forward_states(model, P, x) + 0.01
    warm[0] = 7.0  # row 0 is the initial value's: the choice and the solve take u0 there
    for start in (None, warm):
        keep = None if start is None else start.copy()
        choice = solver.choose(phi, P.layers(), u0, u0.shape, warm=start)
        if start is not None:
            assert np.array_equal(start, keep)
        u, own = solver.solve(phi, P.layers(), u0, u0.shape, warm=None if start is None else start.copy())
        assert (choice.levels, choice.rho, choice.h_rho, choice.estimate_steps) == \
            (own.levels, own.rho, own.h_rho, own.estimate_steps)
        calls = []

        def counted(*a):
            calls.append(1)
            return phi(*a)

        u2, given = solver.solve(counted, P.layers(), u0, u0.shape, warm=None if start is None else start.copy(),
                                 choice=choice)
        assert np.array_equal(u2, u) and given.rho == own.rho and given.levels == own.levels
        assert given.total_steps == own.total_steps
    expected = {0.1: (1, 1), 2.0: (2, solver.n_levels - 1), 1e9: (solver.n_levels, solver.n_levels)}[bound]
    assert expected[0] <= choice.levels <= expected[1]


def test_relative_tolerance_and_max_iter():
    model, layout, theta, x, y = make_problem("dense", 64)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    solver = MGRIT(None, [0], [0, 64], model.h, MGRITOptions(cfactor=2, tol=0.0, rtol=1e-6), BE)
    _, stats = solver.solve(model.step.forward, P.layers(), u0, u0.shape)
    assert stats.converged and stats.residuals[-1] <= 1e-6 * stats.residuals[0]
    assert stats.residuals[-2] > 1e-6 * stats.residuals[0]
    solver = MGRIT(None, [0], [0, 64], model.h, MGRITOptions(cfactor=2, tol=0.0, max_iter=3), BE)
    _, stats = solver.solve(model.step.forward, P.layers(), u0, u0.shape)
    assert stats.iterations == 3 and not stats.converged and len(stats.residuals) == 4


def test_single_level_is_sequential_solve():
    model, layout, theta, x, y = make_problem("dense", 16)
    U_ref = forward_states(model, layout.views(theta), x)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    solver = MGRIT(None, [0], [0, 16], model.h, MGRITOptions(max_levels=1), BE)
    u, stats = solver.solve(model.step.forward, P.layers(), u0, u0.shape)
    assert np.array_equal(u, U_ref)
    assert stats.steps_per_level == [16] and stats.coarse_steps == 0  # propagated, not gathered


def test_nvtx_ranges_name_every_phase(monkeypatch):
    import gpubraid.runtime.profiling as prof

    seen = []

    class Recorder:
        def __init__(self, name, domain=None):
            seen.append((name, domain))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(prof.nvtx, "annotate", Recorder)
    model, layout, theta, x, y = make_problem("dense", 32)
    opts = MGRITOptions(cfactor=2, max_levels=3, tol=1e-12)
    LayerParallel(model, None, opts, opts).evaluate(theta, x, y, x.shape[0])
    names = {n for n, d in seen if d == "gpubraid"}
    assert {"relax", "residual", "restrict", "coarse_solve", "correct", "exchange"} <= names, names


@pytest.mark.parametrize("bad", [dict(cfactor=1), dict(max_levels=0), dict(nrelax=-1), dict(tol=-1.0),
                                 dict(cfactor=[4, 1]), dict(max_iter=-2)])
def test_bad_options_raise_user_error(bad):
    with pytest.raises(UserError):
        MGRITOptions(**bad).validate()


@pytest.mark.parametrize("cfactor,max_levels,min_coarse", [(1, 10, 2), ([4, 1], 10, 2), ("4", 10, 2),
                                                            (float("nan"), 10, 2), (2, 0, 2), (2, 10, 0)])
def test_hierarchy_settings_are_checked_once(cfactor, max_levels, min_coarse):
    """build_hierarchy and MGRITOptions.validate give the same one-line error (one check)."""
    with pytest.raises(UserError) as by_grid:
        build_hierarchy(np.full(16, 0.1), cfactor, max_levels, min_coarse)
    with pytest.raises(UserError) as by_options:
        MGRITOptions(cfactor=cfactor, max_levels=max_levels, min_coarse=min_coarse).validate()
    assert str(by_grid.value) == str(by_options.value)


def test_the_cycle_visits_the_phases_in_order():
    """Three levels, F-relaxation, first relaxation skipped, one coarse correction, final residual."""
    visits = phases(2, MGRITOptions(nrelax=0), max_iter=1, cold=True, final_residual=True,
                    converged=lambda it: False)
    assert [(v.phase, v.level) for v in visits] == [
        ("residual", 0), ("restrict", 1),
        ("f_relax", 1), ("residual", 1), ("restrict", 2), ("coarse_solve", 2), ("correct", 1), ("f_relax", 1),
        ("correct", 0), ("iterated", 0),
        ("f_relax", 0), ("residual", 0)]
    assert [v.phase for v in phases(0, MGRITOptions(), max_iter=5, cold=True, final_residual=True,
                                    converged=lambda it: False)] == ["serial"]


def test_only_the_nested_start_solves_the_coarsest_level_with_g_zero():
    """The nested start's coarsest solve is marked ``zero`` (nothing gathered: g = 0); the coarse
    corrections' solves, and every solve from a warm start, gather g."""
    for cold in (True, False):
        visits = [v for v in phases(2, MGRITOptions(nested=True), max_iter=2, cold=cold, final_residual=True,
                                    converged=lambda it: False) if v.phase == "coarse_solve"]
        assert [v.zero for v in visits] == ([True] if cold else []) + [False, False]


@pytest.mark.parametrize("opts,levels", [(dict(max_levels=1), None), (dict(cfactor=2), 1),
                                         (dict(cfactor=2, stability=0.5, nested=True), None),
                                         (dict(cfactor=3, nrelax=[1, 0], fmg=True, tol=1e-3, max_iter=9), None)])
def test_schedule_counts_what_solve_does_with_every_level_choice(opts, levels):
    """One level (serial), a caller's level count, the stability choice, a tolerance stop."""
    N = 45
    data = (np.full((N, 1), -2.0),)
    s = MGRIT(None, [0], [0, N], np.full(N, 0.1), MGRITOptions(**{"tol": 0.0, "max_iter": 3, **opts}), BE)
    _, st = s.solve(scalar_step, data, np.ones((1, 2)), (1, 2), levels=levels)
    per, coarse = [0] * s.n_levels, 0
    for phase, l, n in s.schedule(st.iterations, levels=st.levels, warm=False,
                                  converged_early=st.converged and st.iterations < s.opts.max_iter):
        if phase == "coarse_solve":
            coarse += n
        else:
            per[l] += n
    assert per == st.steps_per_level and coarse == st.coarse_steps
    assert sum(per) + coarse >= N


def test_one_level_is_the_serial_chain_bit_for_bit():
    model, layout, theta, x, y = make_problem("conv", 19)
    P = layout.views(theta)
    u0 = model.open_forward(x, P)
    ref, _ = SerialChain(Comm.single(), [0], [0, 19], model.h, BE).solve(model.step.forward, P.layers(), u0,
                                                                          u0.shape)
    for opts, levels in ((MGRITOptions(max_levels=1), None), (MGRITOptions(cfactor=2), 1)):
        u, st = MGRIT(None, [0], [0, 19], model.h, opts, BE).solve(model.step.forward, P.layers(), u0, u0.shape,
                                                                   levels=levels)
        assert np.array_equal(u, ref) and st.levels == 1 and st.iterations == 0 and st.converged
        assert sum(st.steps_per_level) == 19 and st.coarse_steps == 0


def test_a_failing_solve_leaves_the_solver_intact():
    """Per-solve state lives in the solve: a step that raises mid-cycle changes nothing on the
    solver, and the next solve is bit-identical to a fresh solver's."""
    N = 48
    h = np.full(N, 0.1)
    opts = MGRITOptions(cfactor=2, max_levels=4, nrelax=1, tol=0.0, max_iter=3)
    data = (np.linspace(-1.0, -2.0, N)[:, None],)
    solver = MGRIT(None, [0], [0, N], h, opts, BE)
    before = dict(vars(solver))
    levels_before = [dict(vars(lv)) for lv in solver.lv]
    calls = []

    def failing(u, d, hh):
        calls.append(u.shape[0])
        if len(calls) == 5:       # inside the coarsest solve of the first cycle
            raise RuntimeError("step failed")
        return scalar_step(u, d, hh)

    with pytest.raises(RuntimeError, match="step failed"):
        solver.solve(failing, data, np.ones((1, 1)), (1, 1), levels=2)
    assert vars(solver).keys() == before.keys() and all(vars(solver)[k] is v for k, v in before.items())
    for lv, saved in zip(solver.lv, levels_before):
        assert vars(lv).keys() == saved.keys() and all(vars(lv)[k] is v for k, v in saved.items())
    u, st = solver.solve(scalar_step, data, np.ones((1, 1)), (1, 1))
    u_ref, st_ref = MGRIT(None, [0], [0, N], h, opts, BE).solve(scalar_step, data, np.ones((1, 1)), (1, 1))
    assert np.array_equal(u, u_ref) and st.levels == st_ref.levels == 4
    assert st.steps_per_level == st_ref.steps_per_level and st.residuals == st_ref.residuals
