"""Tests of gpubraid.training.optim: convergence to known minimisers, the dot hook, settings validation."""
import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.runtime.backend import resolve_backend
from gpubraid.training.optim import (
    LBFGS,
    OPTIMIZERS,
    SGD,
    Adam,
    StepInfo,
    local_dot,
    make_optimizer,
    optimizer_settings,
)

be = resolve_backend("numpy", "float64")


def quadratic(n=20, cond=1e3, seed=0):
    """0.5 x'Ax - b'x with eigenvalues log-spaced in [1, cond]; returns (closure, x*, A)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.logspace(0, np.log10(cond), n)) @ q.T
    a = be.asarray(0.5 * (a + a.T))
    b = be.asarray(rng.standard_normal(n))
    x_star = np.linalg.solve(a, b)

    def closure(x):
        ax = a @ x
        return 0.5 * float(x @ ax) - float(b @ x), ax - b

    return closure, x_star


def rosenbrock(x):
    """Extended Rosenbrock, sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2; minimiser all ones."""
    f = float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return f, g


def run(opt, closure, x, steps):
    infos = []
    for _ in range(steps):
        info = opt.step(x, closure)
        assert isinstance(info, StepInfo)
        infos.append(info)
    return infos


def test_lbfgs_ill_conditioned_quadratic():
    closure, x_star = quadratic()
    x = be.zeros(20)
    infos = run(LBFGS(), closure, x, 300)
    # the Armijo test compares objective values, so roundoff in f (~1e-16) limits the attainable
    # accuracy to |x - x*| ~ sqrt(1e-16 / lambda_min) ~ 1e-7 here
    assert np.linalg.norm(x - x_star) <= 1e-6 * np.linalg.norm(x_star)
    # first step: steepest descent from alpha0 = min(1, 1/|g|), halved once per rejected trial
    # (n_evals = 1 evaluation at the start + the trials, of which only the last was accepted)
    first = infos[0]
    assert first.step_size == pytest.approx(min(1.0, 1.0 / first.grad_norm) * 0.5 ** (first.n_evals - 2))
    objectives = [i.objective for i in infos]
    assert all(b <= a for a, b in zip(objectives, objectives[1:]))


@pytest.mark.parametrize("n", [2, 10])
def test_lbfgs_rosenbrock(n):
    x = np.full(n, -1.2)
    x[1::2] = 1.0
    opt = LBFGS()
    for _ in range(500):
        info = opt.step(x, rosenbrock)
        if info.grad_norm < 1e-10:
            break
    assert np.max(np.abs(x - 1.0)) < 1e-6


def test_lbfgs_does_not_reevaluate_accepted_point():
    points = []

    def counted(x):
        points.append(x.copy())
        return rosenbrock(x)

    x = np.array([-1.2, 1.0])
    opt = LBFGS(memory=5)
    infos = run(opt, counted, x, 30)
    assert sum(i.n_evals for i in infos) == len(points)
    assert infos[0].n_evals >= 2 and all(i.n_evals >= 1 for i in infos[1:])
    # no point is evaluated twice (the accepted point's (f, g) is reused)
    for i in range(1, len(points)):
        assert not np.array_equal(points[i], points[i - 1])
    # the reported objective is the one computed at the step's start point
    assert infos[1].objective == pytest.approx(rosenbrock(points[infos[0].n_evals - 1])[0])
    # reset() drops the cache: the next step evaluates the start point again
    opt.reset()
    before = len(points)
    info = opt.step(x, counted)
    assert np.array_equal(points[before], points[before - 1]) and info.n_evals == len(points) - before


def test_lbfgs_closure_reusing_gradient_buffer():
    closure, x_star = quadratic(n=8, cond=50)
    buffer = np.empty(8)

    def reusing(x):
        f, g = closure(x)
        buffer[...] = g
        return f, buffer

    x = np.zeros(8)
    run(LBFGS(), reusing, x, 60)
    assert np.allclose(x, x_star, atol=1e-9)


def test_lbfgs_failed_line_search_leaves_theta():
    def bad(x):  # gradient points the wrong way: no step decreases f
        return float(x @ x), -2.0 * x

    x = np.ones(3)
    info = LBFGS(max_backtracks=3).step(x, bad)
    assert info.step_size == 0.0 and info.n_evals == 5
    assert np.array_equal(x, np.ones(3))


def test_lbfgs_zero_gradient_stops():
    x = np.zeros(4)
    info = LBFGS().step(x, lambda t: (0.0, np.zeros(4)))
    assert info.grad_norm == 0.0 and info.step_size == 0.0 and np.all(x == 0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_quadratic(nesterov):
    closure, x_star = quadratic(n=10, cond=100)
    x = be.zeros(10)
    infos = run(SGD(lr=1.0 / 100, momentum=0.9, nesterov=nesterov), closure, x, 800)
    assert np.linalg.norm(x - x_star) <= 1e-8 * np.linalg.norm(x_star)
    assert all(i.n_evals == 1 and i.step_size == 0.01 for i in infos)


def test_sgd_plain_and_weight_decay():
    closure, x_star = quadratic(n=5, cond=10)
    x = np.zeros(5)
    run(SGD(lr=0.1, momentum=0.0), closure, x, 500)
    assert np.allclose(x, x_star, atol=1e-10)
    # weight decay lam adds 0.5 lam |x|^2: minimiser (A + lam I)^{-1} b, here checked via b = A x*
    lam = 0.5
    x = np.zeros(5)
    opt = SGD(lr=0.05, momentum=0.5, weight_decay=lam)
    run(opt, closure, x, 1000)
    g_at = closure(x)[1] + lam * x
    assert np.linalg.norm(g_at) < 1e-10


def test_adam_quadratic():
    closure, x_star = quadratic(n=10, cond=100)
    x = be.zeros(10)
    opt = Adam(lr=0.003)
    infos = run(opt, closure, x, 2000)
    assert np.linalg.norm(x - x_star) <= 1e-6 * np.linalg.norm(x_star)
    assert all(i.n_evals == 1 for i in infos)
    # one bias-corrected first step moves every coordinate by lr (sign of -g)
    x = np.zeros(10)
    g0 = closure(x)[1]
    Adam(lr=0.01).step(x, closure)
    assert np.allclose(x, -0.01 * np.sign(g0), rtol=1e-6)


@pytest.mark.parametrize("name,settings", [("lbfgs", {}), ("sgd", {"lr": 0.01}), ("adam", {"lr": 0.05})])
def test_dot_hook_is_the_only_reduction(name, settings):
    """Arrays whose reductions raise: the optimiser must reduce only through ``dot``."""

    class NoReduce(np.ndarray):
        def _forbidden(self, *a, **k):
            raise AssertionError("reduction outside the dot hook")
        sum = max = min = mean = dot = any = all = prod = std = var = _forbidden

        def __matmul__(self, other):
            raise AssertionError("reduction outside the dot hook")

    calls = []

    def dot(a, b):
        calls.append(1)
        return float(np.vdot(np.asarray(a).view(np.ndarray), np.asarray(b).view(np.ndarray)))

    closure, x_star = quadratic(n=6, cond=10)

    def wrapped(x):
        f, g = closure(x.view(np.ndarray))
        return f, g.view(NoReduce)

    x = np.zeros(6).view(NoReduce)
    opt = make_optimizer(name, dot=dot, **settings)
    run(opt, wrapped, x, 400)
    assert calls
    assert np.allclose(x.view(np.ndarray), x_star, atol=1e-3)


def test_dot_hook_values_are_used():
    """A dot that is 2x the true inner product changes L-BFGS's path (gamma, first step) but the
    iterates still converge to the same minimiser; and the default dot is local_dot."""
    closure, x_star = quadratic(n=6, cond=10)
    x1, x2 = np.zeros(6), np.zeros(6)
    i1 = run(LBFGS(), closure, x1, 40)
    i2 = run(LBFGS(dot=lambda a, b: 2.0 * local_dot(a, b)), closure, x2, 40)
    assert i2[0].grad_norm == pytest.approx(np.sqrt(2) * i1[0].grad_norm)
    assert np.allclose(x1, x_star, atol=1e-9) and np.allclose(x2, x_star, atol=1e-9)
    assert LBFGS().dot is local_dot
    assert local_dot(np.arange(3.0), np.ones(3)) == 3.0


def test_make_optimizer_and_settings():
    assert OPTIMIZERS == ("lbfgs", "sgd", "adam")
    assert isinstance(make_optimizer("lbfgs", memory=3), LBFGS)
    sgd = make_optimizer("sgd", lr=0.1, nesterov=True)
    assert isinstance(sgd, SGD) and sgd.nesterov
    assert isinstance(make_optimizer("adam"), Adam)
    assert optimizer_settings("adam")["beta2"] == 0.999
    with pytest.raises(UserError, match="lbfgs, sgd, adam"):
        make_optimizer("rmsprop")
    with pytest.raises(UserError, match="lr"):
        make_optimizer("sgd")
    with pytest.raises(UserError, match="allowed: memory"):
        make_optimizer("lbfgs", lr=0.1)


@pytest.mark.parametrize("name,settings,word", [
    ("lbfgs", {"memory": 0}, "memory"),
    ("lbfgs", {"memory": 2.5}, "memory"),
    ("lbfgs", {"c1": 1.0}, "c1"),
    ("lbfgs", {"backtrack": 0.0}, "backtrack"),
    ("lbfgs", {"max_backtracks": -1}, "max_backtracks"),
    ("lbfgs", {"initial_step": 0}, "initial_step"),
    ("sgd", {"lr": -0.1}, "lr"),
    ("sgd", {"lr": float("nan")}, "lr"),
    ("sgd", {"lr": 0.1, "momentum": 1.0}, "momentum"),
    ("sgd", {"lr": 0.1, "momentum": 0.0, "nesterov": True}, "nesterov"),
    ("sgd", {"lr": 0.1, "nesterov": "yes"}, "nesterov"),
    ("sgd", {"lr": 0.1, "weight_decay": -1}, "weight_decay"),
    ("adam", {"lr": 0}, "lr"),
    ("adam", {"beta1": 1.5}, "beta1"),
    ("adam", {"beta2": -0.1}, "beta2"),
    ("adam", {"eps": 0}, "eps"),
])
def test_bad_settings(name, settings, word):
    with pytest.raises(UserError, match=word):
        make_optimizer(name, **settings)


def test_bad_dot():
    with pytest.raises(UserError, match="dot"):
        LBFGS(dot=3)


def test_float32_theta_stays_float32():
    be32 = resolve_backend("numpy", "float32")
    closure, x_star = quadratic(n=6, cond=10)
    for opt in (LBFGS(), SGD(lr=0.05), Adam(lr=0.01)):
        x = be32.zeros(6)

        def c32(t):
            f, g = closure(t.astype(np.float64))
            return f, be32.asarray(g)

        run(opt, c32, x, 5)
        assert x.dtype == np.float32


def two_loop(pairs, g):
    """-H g by the two-loop recursion over ``pairs`` [(s, y), ...] (oldest first): the reference."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        a = (s @ q) / (s @ y)
        alphas.append(a)
        q -= a * y
    s, y = pairs[-1]
    q *= (s @ y) / (y @ y)
    for (s, y), a in zip(pairs, reversed(alphas)):
        q += (a - (y @ q) / (s @ y)) * s
    return -q


def values(blocks):
    """The local inner products of :class:`CurvatureMemory` blocks [(A, b), ...], in order."""
    return np.concatenate([np.atleast_1d(A @ b) for A, b in blocks]) if blocks else np.zeros(0)


@pytest.mark.parametrize("k,memory", [(1, 5), (4, 5), (9, 5)])
def test_compact_direction_equals_the_two_loop_recursion(k, memory):
    """The compact form's -H g and g.d equal the two-loop recursion's over the last ``memory`` pairs
    (with k > memory the newest pairs have taken the oldest ones' buffer rows)."""
    from gpubraid.training.lbfgs_memory import CurvatureMemory

    rng = np.random.default_rng(k)
    n = 30
    A = rng.standard_normal((n, n))
    A = A @ A.T + n * np.eye(n)                     # SPD: every pair has s.y > 0
    mem, pairs = CurvatureMemory(memory), []
    for _ in range(k):
        s = rng.standard_normal(n)
        y = A @ s
        mem.add(s, y, values(mem.pair_products(s, y)))
        pairs = (pairs + [(s, y)])[-memory:]
    g = rng.standard_normal(n)
    d, gd = mem.direction(g, g @ g, values(mem.gradient_products(g)))
    ref = two_loop(pairs, g)
    assert len(mem) == min(k, memory)
    np.testing.assert_allclose(d, ref, rtol=1e-11, atol=1e-13 * np.abs(ref).max())
    assert gd == pytest.approx(g @ ref, rel=1e-11)


def test_lbfgs_reduces_twice_per_step():
    """With a ``sums`` hook, L-BFGS makes one reduction for the gradient's products and one for the
    new pair's, and no ``dot`` calls; the iterates are the local run's to round-off."""
    closure, _ = quadratic(n=12, cond=100)
    calls = []

    def sums(local):
        calls.append(len(local))
        return local.copy()

    def no_dot(a, b):
        raise AssertionError("single reduction")

    x1, x2 = np.zeros(12), np.zeros(12)
    i1 = run(LBFGS(memory=4), closure, x1, 25)
    i2 = run(LBFGS(memory=4, dot=no_dot, sums=sums), closure, x2, 25)
    assert len(calls) == 2 * 25
    assert max(calls) == 3 + 3 * 4        # a new pair against a full memory
    np.testing.assert_allclose([i.objective for i in i2], [i.objective for i in i1], rtol=1e-12)
    np.testing.assert_allclose(x2, x1, rtol=1e-10, atol=1e-12)


def test_lbfgs_state_round_trip_continues_bit_for_bit():
    """state() then load_state() into a fresh optimiser continues with the same bits (the pairs in
    their buffer rows); a state of the two-loop version (pairs and "rho" only: the products
    recomputed, the rows in age order) continues to round-off."""
    closure, _ = quadratic(n=10, cond=50)
    x = np.zeros(10)
    a = LBFGS(memory=3)
    run(a, closure, x, 7)
    vectors, scalars = a.state()
    assert scalars["slots"] != sorted(scalars["slots"])      # the memory has wrapped around
    vectors = {k: v.copy() for k, v in vectors.items()}
    xb, xc = x.copy(), x.copy()
    b, c = LBFGS(memory=3), LBFGS(memory=3)
    b.load_state(vectors, scalars, xb)
    old = {k: v for k, v in scalars.items() if k not in ("sy", "yy", "slots")}
    old["rho"] = [1.0 / sy for sy in np.diag(np.array(scalars["sy"]))]
    c.load_state(vectors, old, xc)
    fa = [i.objective for i in run(a, closure, x, 8)]
    fb = [i.objective for i in run(b, closure, xb, 8)]
    fc = [i.objective for i in run(c, closure, xc, 8)]
    assert fa == fb and np.array_equal(x, xb)
    np.testing.assert_allclose(fc, fa, rtol=1e-12)
