"""The host kernels (kernels/dense_host.c through gpubraid.runtime.host): the dense step's block sweeps
against the per-layer NumPy pair to round-off for every activation, both precisions, widths with and
without a compiled specialisation, chunk edges and strided layer views; the classifier head's softmax
cross-entropy against its NumPy formulas; the arrays they decline; and the build: cached per source,
compiler and CPU, racing ranks, no compiler, switched off."""
import os
import subprocess
import sys

import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.activations import ACTIVATIONS
from gpubraid.network.heads import Classifier
from gpubraid.network.openings import DenseOpening, _ActivatedOpening
from gpubraid.network.steps import DenseStep
from gpubraid.network.sweep import backward_sweep, forward_sweep
from gpubraid.runtime import host, host_build
from gpubraid.runtime.backend import resolve_backend
from tests.network.test_sweep import sweeps

pytestmark = pytest.mark.skipif(host.library() is None, reason=f"host kernels not built: {host.status()}")

TOL = {"float64": 1e-13, "float32": 2e-5}


def _problem(C, n, B, dtype, seed=0):
    rng = np.random.default_rng(seed)
    K = (rng.standard_normal((n, C, C)) / np.sqrt(C)).astype(dtype)
    b = (0.3 * rng.standard_normal((n, C))).astype(dtype)
    h = rng.uniform(0.1, 0.5, n).astype(dtype)
    return rng.standard_normal((B, C)).astype(dtype), rng.standard_normal((B, C)).astype(dtype), (K, b), h


def _sweeps(step, u0, lamN, layers, h, block: bool, monkeypatch, keep=True):
    """:func:`tests.network.test_sweep.sweeps` with the host kernels (``block``) or without."""
    with monkeypatch.context() as m:
        if not block:
            m.setattr(host, "library", lambda: None)
        return sweeps(step, u0, lamN, layers, h, keep=keep)


def _rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("C, B", [(8, 300), (5, 103), (1, 7), (32, 40), (64, 3), (48, 2)])
def test_block_sweeps_equal_the_numpy_pair(act, dtype, C, B, monkeypatch):
    step = DenseStep(C, act, resolve_backend("numpy", dtype))
    u0, lamN, layers, h = _problem(C, 6, B, dtype)
    for keep in (True, False):
        U1, L1, G1, kept = _sweeps(step, u0, lamN, layers, h, True, monkeypatch, keep)
        assert isinstance(kept, np.ndarray) if keep else kept is None  # the block form ran
        U0, L0, G0, _ = _sweeps(step, u0, lamN, layers, h, False, monkeypatch, keep)
        for got, want in [(U1, U0), (L1, L0), *zip(G1, G0)]:
            assert got.dtype == want.dtype and _rel(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("C, B", [(8, 300), (5, 3), (32, 17)])
def test_batched_forward_adjoint_param_grad_equal_numpy(act, dtype, C, B, monkeypatch):
    """MGRIT's calls: L independent layers at once (forward, adjoint, param_grad)."""
    step = DenseStep(C, act, resolve_backend("numpy", dtype))
    rng = np.random.default_rng(4)
    L = 5
    _, _, params, h = _problem(C, L, B, dtype)
    u, lam = (rng.standard_normal((L, B, C)).astype(dtype) for _ in range(2))
    calls = lambda: [step.forward(u, params, h), step.adjoint(u, lam, params, h), *step.param_grad(u, lam, params, h)]  # noqa: E731
    got = calls()
    with monkeypatch.context() as m:
        m.setattr(host, "library", lambda: None)
        want = calls()
    assert host.forward(u, *params, h, step.activation.code) is not NotImplemented
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape and _rel(g, w) <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("C", [8, 5])
def test_steps_into_rows_with_a_right_hand_side_equal_step_then_add_bit_for_bit(dtype, C):
    """MGRIT's relaxation writing into a level's rows: forward / adjoint of L independent layers plus a
    right-hand side, into strided rows of one array (the right-hand side may be the output), the bits
    of the kernel's new array plus the right-hand side; no right-hand side: the plain step."""
    step = DenseStep(C, "tanh", resolve_backend("numpy", dtype))
    rng = np.random.default_rng(9)
    _, _, (K, b), h = _problem(C, 4, 6, dtype)
    rows, lam = (rng.standard_normal((9, 6, C)).astype(dtype) for _ in range(2))
    g = rng.standard_normal((9, 6, C)).astype(dtype)
    src, tgt = slice(0, 8, 2), slice(1, 9, 2)
    for rhs in (g[tgt], None):
        want = step.forward(rows[src], (K, b), h) + (0 if rhs is None else rhs)
        out = rows.copy()
        assert step.forward_rhs(out[src], (K, b), h, out[tgt], rhs)
        assert np.array_equal(out[tgt], want) and np.array_equal(out[src], rows[src])
        want = step.adjoint(rows[src], lam[src], (K, b), h) + (0 if rhs is None else rhs)
        out = lam.copy()
        assert step.adjoint_rhs(rows[src], out[src], (K, b), h, out[tgt], rhs)
        assert np.array_equal(out[tgt], want)
    into = g[tgt].copy()  # the right-hand side as the output
    assert host.forward_into(rows[src], into, K, b, h, step.activation.code, into)
    assert np.array_equal(into, step.forward(rows[src], (K, b), h) + g[tgt])
    assert not host.forward_into(rows[src], np.empty((4, 6, C + 1), dtype), K, b, h, 0)   # declined
    assert not host.adjoint_into(rows[src], lam[src], None, K, b, h, 0, g[tgt])


def _head_losses(head, u, y, params, monkeypatch):
    """Classifier.loss through the kernel and through its NumPy formulas (kernels switched off)."""
    got = head.loss(u, y, params, True), head.loss(u, y, params, False)
    with monkeypatch.context() as m:
        m.setattr(host, "library", lambda: None)
        want = head.loss(u, y, params, True), head.loss(u, y, params, False)
    return got, want


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("S, K, B", [((8,), 5, 625), ((3,), 2, 1), ((32,), 7, 129), ((4, 4, 3), 64, 70),
                                     ((64,), 10, 64)])
def test_classifier_head_kernel_equals_the_numpy_formulas(dtype, S, K, B, monkeypatch):
    """Loss, number correct, λ_N and (∂W, ∂c) to round-off, blocks of 64 rows and their remainders, widths
    with and without a compiled specialisation (a (4, 4, 3) state is 48 wide); ties go to the first class."""
    head = Classifier(K).bind(S, resolve_backend("numpy", dtype))
    rng = np.random.default_rng(7)
    u = (3 * rng.standard_normal((B, *S))).astype(dtype)
    y = rng.integers(0, K, B)
    D = int(np.prod(S))
    for W, c in [(rng.standard_normal((K, D)), rng.standard_normal(K)), (np.zeros((K, D)), np.zeros(K))]:
        params = (W.astype(dtype), c.astype(dtype))
        assert host.softmax_xent(u.reshape(B, -1), y, *params, True) is not NotImplemented
        (got, got_value), (want, want_value) = _head_losses(head, u, y, params, monkeypatch)
        assert got[1] == want[1] == got_value[1] and got_value[2] is None and got_value[3] is None
        for g, w in [(got[0], want[0]), (got_value[0], want_value[0])]:
            assert abs(g - w) <= TOL[dtype] * abs(w)
        for g, w in [(got[2], want[2]), *zip(got[3], want[3])]:  # means of O(1) terms (sums that cancel: W = 0)
            assert g.dtype == w.dtype and g.shape == w.shape
            assert np.abs(g.astype(np.float64) - w).max() <= 10 * TOL[dtype] * max(np.abs(w).max(), 1.0)


def test_classifier_head_kernel_declines_what_it_cannot_take(monkeypatch):
    """Labels outside 0..K − 1 (the NumPy path then names them), labels not int64, states wider than 64,
    an empty batch, non-contiguous states: nothing done, the NumPy formulas give the answer."""
    rng = np.random.default_rng(8)
    W, c = rng.standard_normal((3, 8)), np.zeros(3)
    u, y = rng.standard_normal((10, 8)), rng.integers(0, 3, 10)
    for args in [(u, y + 3, W, c), (u, y.astype(np.int32), W, c), (u[::2], y[:5], W, c), (u[:0], y[:0], W, c),
                 (np.zeros((2, 65)), y[:2], np.zeros((3, 65)), c)]:
        assert host.softmax_xent(*args, True) is NotImplemented
    head = Classifier(3).bind((8,), resolve_backend("numpy", "float64"))
    with pytest.raises(UserError, match="labels must lie in 0..2"):
        head.loss(u, y + 3, (W, c))
    (got, _), (want, _) = _head_losses(head, u, y.astype(np.int32), (W, c), monkeypatch)
    assert got[0] == want[0] and _rel(got[2], want[2]) == 0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("d, C, B", [(2, 8, 5000), (5, 7, 33), (1, 1, 1), (64, 64, 130), (3, 16, 0)])
def test_dense_opening_kernel_equals_the_numpy_formulas(dtype, activation, d, C, B):
    """u_0 = σ(K x + b) and (∂K, ∂b) to round-off: chunks of rows and their remainders, widths with and
    without a compiled specialisation, inputs as wide as the kernel takes, an empty batch."""
    be = resolve_backend("numpy", dtype)
    opening = DenseOpening(activation).bind((d,), (C,), be)
    rng = np.random.default_rng(9)
    x, lam = rng.standard_normal((B, d)).astype(dtype), rng.standard_normal((B, C)).astype(dtype)
    params = (rng.standard_normal((C, d)).astype(dtype), rng.standard_normal(C).astype(dtype))
    got_u, got_g = host.open_forward(x, *params, opening.activation.code), host.open_grad(x, lam, *params,
                                                                                        opening.activation.code)
    assert got_u is not NotImplemented and got_g is not NotImplemented
    assert opening.forward(x, params) is not None and len(opening.grad(x, lam, params)) == 2
    want_u, want_g = _ActivatedOpening.forward(opening, x, params), _ActivatedOpening.grad(opening, x, lam, params)
    for g, w in [(got_u, want_u), *zip(got_g, want_g)]:
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.abs(g.astype(np.float64) - w).max(initial=0) <= 10 * TOL[dtype] * max(np.abs(w).max(initial=0), 1.0) \
            * max(1, B) ** 0.5


def test_dense_opening_kernel_declines_what_it_cannot_take():
    """Inputs or widths above 64, non-contiguous or mixed-dtype arrays: nothing done (the NumPy
    formulas answer, and DenseOpening gives the same numbers through them)."""
    rng = np.random.default_rng(10)
    x, K, b, lam = rng.standard_normal((6, 4)), rng.standard_normal((8, 4)), np.zeros(8), rng.standard_normal((6, 8))
    for args in [(x[::2], K, b), (x.astype(np.float32), K, b), (np.zeros((2, 65)), np.zeros((8, 65)), b),
                 (np.zeros((2, 4)), np.zeros((65, 4)), np.zeros(65)), (x, K.T.copy().T, b)]:
        assert host.open_forward(*args, 0) is NotImplemented
    assert host.open_grad(x, lam[:, ::2].copy()[:, :4], K, b, 0) is NotImplemented
    wide = DenseOpening("tanh").bind((65,), (8,), resolve_backend("numpy"))
    xw, Kw = rng.standard_normal((3, 65)), rng.standard_normal((8, 65))
    assert np.array_equal(wide.forward(xw, (Kw, b)), _ActivatedOpening.forward(wide, xw, (Kw, b)))


def test_library_of_another_calling_convention_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "ABI", host.ABI + 1)
    host._load.cache_clear()
    try:
        assert host.library() is None and "calling convention" in host.status()
    finally:
        monkeypatch.undo()
        host._load.cache_clear()
    assert host.library() is not None


def test_strided_layer_views_and_parameter_views(monkeypatch):
    """A block of the micro-batch rows lo:hi of whole-batch states (the pipeline's backward from a
    forward solve), and parameters that are views of one flat vector."""
    C, n, B = 8, 5, 50
    step = DenseStep(C, "tanh", resolve_backend("numpy", "float64"))
    u0, lamN, (K, b), h = _problem(C, n, B, "float64")
    flat = np.concatenate([K.ravel(), b.ravel()])
    layers = (flat[:K.size].reshape(K.shape), flat[K.size:].reshape(b.shape))
    U = np.empty((n + 1, B, C))
    U[0] = u0
    forward_sweep(step, U, layers, h)
    Lam = np.empty_like(U)
    Lam[-1] = lamN
    gflat = np.zeros_like(flat)
    grads = (gflat[:K.size].reshape(K.shape), gflat[K.size:].reshape(b.shape))
    for lo, hi in ((0, 17), (17, 50)):
        assert step.backward_block(U[:, lo:hi], Lam[:, lo:hi], layers, h, grads, None)
    _, L0, G0, _ = _sweeps(step, u0, lamN, (K, b), h, False, monkeypatch)
    assert _rel(Lam, L0) <= 1e-13
    assert all(_rel(g, w - 0.25) <= 1e-13 for g, w in zip(grads, G0))  # _sweeps starts its grads at 0.25


def test_reversed_layer_views_run_the_kernels():
    """MGRIT's batched calls on layers in reversed order (the adjoint's solver order seen from the
    layers: negative layer strides) run the kernels and give the forward-order results reversed."""
    C, n, B = 8, 6, 20
    u0, lamN, (K, b), h = _problem(C, n, B, "float64")
    rng = np.random.default_rng(5)
    u, lam = rng.standard_normal((n, B, C)), rng.standard_normal((n, B, C))
    rev = lambda x: x[::-1]  # noqa: E731
    want = host.param_grad(u, lam, K, b, h, 0)
    got = host.param_grad(rev(u), rev(lam), rev(K), rev(b), rev(h), 0)
    assert got is not NotImplemented and all(np.array_equal(g, w[::-1]) for g, w in zip(got, want))
    for call in (host.forward, host.adjoint):
        args = (u,) if call is host.forward else (u, lam)
        want = call(*args, K, b, h, 0)
        got = call(*map(rev, args), rev(K), rev(b), rev(h), 0)
        assert got is not NotImplemented and np.array_equal(got, want[::-1])


def test_one_layer_given_as_a_row_with_a_new_axis_runs_the_kernels():
    """``row[None]`` (layer stride 0, as MGRIT's coarsest solve hands its previous row) is one layer:
    the kernels take it, with the results of the same layer as a slice."""
    C, B = 8, 30
    u0, lamN, (K, b), h = _problem(C, 3, B, "float64")
    u = np.stack([u0, lamN])
    row, lam = u[1], u[0]
    assert row[None].strides[0] == 0
    for call in (host.forward, host.adjoint):
        args = (row[None],) if call is host.forward else (row[None], lam[None])
        want = call(*((u[1:2],) if call is host.forward else (u[1:2], u[0:1])), K[:1], b[:1], h[:1], 0)
        got = call(*args, K[:1], b[:1], h[:1], 0)
        assert got is not NotImplemented and np.array_equal(got, want)


def test_declined_arrays_run_the_per_layer_calls(monkeypatch):
    C, n, B = 4, 3, 6
    step = DenseStep(C, "tanh", resolve_backend("numpy", "float64"))
    _, _, layers, h = _problem(C, n, B, "float64")
    wide = np.zeros((n + 1, B, 2 * C))
    assert step.forward_block(wide[:, :, ::2], layers, h, True) is NotImplemented  # rows not contiguous
    assert step.forward_block(np.zeros((n + 1, B, C), np.float32), layers, h, True) is NotImplemented  # dtypes
    assert step.forward_block(np.zeros((n, B, C)), layers, h, True) is NotImplemented  # layer counts
    wide_step = DenseStep(host.MAX_C + 1, "tanh", step.be)  # wider layers: NumPy's matrix products
    _, _, wide_layers, wide_h = _problem(host.MAX_C + 1, n, B, "float64")
    assert wide_step.forward_block(np.zeros((n + 1, B, host.MAX_C + 1)), wide_layers, wide_h, True) is NotImplemented
    wide = np.zeros((n, B, host.MAX_C + 1))
    for call in (lambda: host.forward(wide, *wide_layers, wide_h, 0), lambda: host.adjoint(wide, wide, *wide_layers, wide_h, 0),
                 lambda: host.param_grad(wide, wide, *wide_layers, wide_h, 0)):
        assert call() is NotImplemented  # MGRIT's batched calls too
    U = np.zeros((n + 1, B, C))
    kept = step.forward_block(U, layers, h, True)
    Lam = np.zeros_like(U)
    bad = (np.zeros((n, C, C), np.float32), layers[1])
    assert not step.backward_block(U, Lam, layers, h, bad, kept)
    # a declined backward after a block forward: the sweep takes the kept array layer by layer
    u0, lamN, layers, h = _problem(C, n, B, "float64")
    U1, L1, G1, _ = _sweeps(step, u0, lamN, layers, h, True, monkeypatch)
    U[0] = u0
    kept = forward_sweep(step, U, layers, h, keep=True)
    Lam[-1] = lamN
    grads = tuple(np.full_like(p, 0.25) for p in layers)
    monkeypatch.setattr(step, "backward_block", lambda *a: False)
    backward_sweep(step, U, Lam, layers, h, grads, kept)
    assert _rel(Lam, L1) <= 1e-13 and all(_rel(g, w) <= 1e-13 for g, w in zip(grads, G1))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("C, B", [(8, 300), (5, 103), (64, 3)])
def test_backward_through_equals_the_block_sweeps_ends_bit_for_bit(act, dtype, C, B):
    """λ carried down in one row in place: λ_0 and the gradients are the full backward block's, bit for
    bit (the same operations), with σ' kept and recomputed; the row's memory is the caller's."""
    step = DenseStep(C, act, resolve_backend("numpy", dtype))
    u0, lamN, layers, h = _problem(C, 7, B, dtype)
    U = np.zeros((8, B, C), dtype)
    U[0] = u0
    for keep in (True, False):
        Lam, lam = np.zeros_like(U), lamN.copy()
        Lam[-1] = lamN
        G = tuple(np.full_like(p, 0.5) for p in layers)
        Gt = tuple(g.copy() for g in G)
        assert step.backward_block(U, Lam, layers, h, G, step.forward_block(U, layers, h, keep))
        address = lam.ctypes.data
        assert step.backward_through(U, lam, layers, h, Gt, step.forward_block(U, layers, h, keep))
        assert lam.ctypes.data == address and np.array_equal(lam, Lam[0])
        assert all(np.array_equal(a, b) for a, b in zip(Gt, G))



@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("C, B", [(8, 300), (5, 103), (1, 7), (64, 3)])
def test_coarsest_solve_chains_equal_the_row_loop_bit_for_bit(act, dtype, C, B):
    """The chains of MGRIT's coarsest solve (one C call per segment) give the solver's row loop (one
    step call per row, then the right-hand side added) bit for bit: without a right-hand side, with
    one, with the rows themselves holding it, with rows that are a sample block of a wider batch and
    states that are a reversed view; and they decline what the loops do not take."""
    step = DenseStep(C, act, resolve_backend("numpy", dtype))
    start, _, (K, b), h = _problem(C, 5, B, dtype, seed=4)
    rng = np.random.default_rng(5)
    G = rng.standard_normal((5, B, C)).astype(dtype)
    U = rng.standard_normal((5, B + 1, C)).astype(dtype)[::-1, 1:]
    for adjoint in (False, True):
        for rhs in ("none", "separate", "in place"):
            buf = np.full((5, B + 2, C), np.nan, dtype)
            V = buf[:, 1:B + 1]
            if rhs == "in place":
                V[...] = G
            Gd = {"none": None, "separate": G.copy(), "in place": V}[rhs]
            assert (step.adjoint_chain(start, V, U, (K, b), h, Gd) if adjoint
                    else step.forward_chain(start, V, (K, b), h, Gd))
            expect, prev = [], start  # the solver's row loop
            for k in range(5):
                one = (K[k:k + 1], b[k:k + 1])
                v = (step.adjoint(U[k:k + 1], prev[None], one, h[k:k + 1]) if adjoint
                     else step.forward(prev[None], one, h[k:k + 1]))[0]
                prev = v if rhs == "none" else np.add(v, G[k])
                expect.append(prev)
            assert np.array_equal(V, np.stack(expect)), (adjoint, rhs)
            assert np.isnan(buf[:, 0]).all() and np.isnan(buf[:, -1]).all()
    if B > 1 and C > 1:  # a start row not C-contiguous
        assert not step.forward_chain(np.asfortranarray(start), V, (K, b), h, None)
    assert not step.forward_chain(start, V.astype(np.float16), (K, b), h, None)

def test_backward_through_declines_rows_it_cannot_carry():
    step = DenseStep(8, "tanh", resolve_backend("numpy", "float64"))
    u0, lamN, layers, h = _problem(8, 4, 10, "float64")
    U = np.zeros((5, 10, 8))
    U[0] = u0
    kept = step.forward_block(U, layers, h, True)
    G = tuple(np.zeros_like(p) for p in layers)
    for lam in (np.zeros((20, 8))[::2], np.zeros((10, 8), np.float32), np.zeros((9, 8)), np.zeros((1, 10, 8))):
        before = lam.copy()
        assert not step.backward_through(U, lam, layers, h, G, kept)
        assert np.array_equal(lam, before) and not any(g.any() for g in G)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tanh_saturates_and_keeps_nan_like_numpy(dtype, monkeypatch):
    step = DenseStep(1, "tanh", resolve_backend("numpy", dtype))
    K, b, h = np.ones((1, 1, 1), dtype), np.zeros((1, 1), dtype), np.ones(1, dtype)
    z = np.array([[1e30], [-1e30], [400.0], [-400.0], [np.nan], [0.0]], dtype)
    U = np.stack([z, np.empty_like(z)])
    D = step.forward_block(U, (K, b), h, True)
    with np.errstate(over="ignore", invalid="ignore"):
        want = z + np.tanh(z)
    assert np.array_equal(U[1], want, equal_nan=True)
    assert np.array_equal(D[0], np.where(np.isnan(z), np.nan, 1 - np.tanh(z) ** 2), equal_nan=True)


def _status(env, tmp_path):
    code = "from gpubraid.runtime import host; print(host.status())"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "GPUBRAID_CACHE_DIR": str(tmp_path), **env},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_build_is_cached_and_survives_ranks_compiling_at_once(tmp_path):
    code = "from gpubraid.runtime import host; print(host.status())"
    env = {**os.environ, "GPUBRAID_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and all(o.startswith("compiled by") for o in outs), outs
    files = sorted(os.listdir(tmp_path / "host-kernels"))
    assert len(files) == 1 and files[0].endswith(".so")  # no temporary left behind
    mtime = (tmp_path / "host-kernels" / files[0]).stat().st_mtime_ns
    assert _status({}, tmp_path) == outs[0]
    assert (tmp_path / "host-kernels" / files[0]).stat().st_mtime_ns == mtime  # loaded, not rebuilt


def test_without_a_compiler_or_switched_off_numpy_runs(tmp_path):
    assert _status({"GPUBRAID_HOST_KERNELS": "0"}, tmp_path).startswith("off")
    assert _status({"PATH": str(tmp_path), "CC": ""}, tmp_path).startswith("no C compiler")
    wrapped = _status({"CC": f"env {host_build.compiler()[0]}"}, tmp_path)  # a wrapper command, as ccache gcc
    assert wrapped.startswith("compiled by env "), wrapped
    broken = _status({"CC": sys.executable}, tmp_path)  # $CC is the user's choice: used, and its failure said
    assert broken.startswith("not built") and "NumPy layer sweeps" in broken
    assert len(os.listdir(tmp_path / "host-kernels")) == 1  # the wrapped build; nothing half-written


def test_the_source_compiles_without_warnings(tmp_path):
    """As one library, and as the two parts the build compiles at once."""
    cc = host_build.compiler()
    src = host_build.source_dir() / host_build.SOURCE
    strict = ("-Wall", "-Wextra", "-Werror")
    runs = [[*cc, *host_build.FLAGS, *strict, "-o", str(tmp_path / "k.so"), str(src), *host_build.LIBS]]
    runs += [[*cc, *host_build.COMPILE, part, *strict, "-c", "-o", str(tmp_path / f"{i}.o"), str(src)]
             for i, part in enumerate(host_build.PARTS)]
    for cmd in runs:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
