"""The CuPy kernel path of gpubraid.runtime.cuda against the NumPy steps (needs CuPy and a CUDA GPU)."""
from __future__ import annotations

import numpy as np
import pytest

from gpubraid.network.activations import ACTIVATIONS
from gpubraid.network.steps import ConvStep, DenseStep
from gpubraid.runtime.backend import Backend, gpu_available, resolve_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU"),
]

DTYPES = (np.float64, np.float32)
TOL = {np.float64: 1e-12, np.float32: 2e-5}


def _problem(state_shape, K_shape, dtype, seed):
    rng = np.random.default_rng(seed)
    L, C = state_shape[0], state_shape[2]
    fan_in = int(np.prod(K_shape[2:]))
    u = rng.standard_normal(state_shape).astype(dtype)
    lam = rng.standard_normal(state_shape).astype(dtype)
    K = (rng.standard_normal(K_shape) / np.sqrt(fan_in)).astype(dtype)
    b = (0.3 * rng.standard_normal((L, C))).astype(dtype)
    h = rng.uniform(0.1, 1.0, L).astype(dtype)
    return u, lam, K, b, h


def _compare(cpu_step, gpu_step, u, lam, K, b, h, dtype):
    import cupy

    dev = [cupy.asarray(x) for x in (u, lam, K, b, h)]
    du, dlam, dK, db, dh = dev
    pairs = {
        "forward": (gpu_step.forward(du, (dK, db), dh), cpu_step.forward(u, (K, b), h)),
        "adjoint": (gpu_step.adjoint(du, dlam, (dK, db), dh), cpu_step.adjoint(u, lam, (K, b), h)),
    }
    gK, gb = gpu_step.param_grad(du, dlam, (dK, db), dh)
    rK, rb = cpu_step.param_grad(u, lam, (K, b), h)
    pairs["dK"], pairs["db"] = (gK, rK), (gb, rb)
    for name, (got, ref) in pairs.items():
        got = cupy.asnumpy(got)
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        err = np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref))
        assert err <= TOL[dtype], f"{name}: relative error {err:.3g}"
    # Deterministic gradients: a second run gives the same bits.
    gK2, gb2 = gpu_step.param_grad(du, dlam, (dK, db), dh)
    assert cupy.asnumpy(gK2).tobytes() == cupy.asnumpy(gK).tobytes()
    assert cupy.asnumpy(gb2).tobytes() == cupy.asnumpy(gb).tobytes()


def _backends(dtype):
    import cupy

    name = np.dtype(dtype).name
    return resolve_backend("numpy", name), Backend("cupy", cupy, dtype, cupy.cuda.Device().id)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", tuple(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(3, 2, 1, 5, 7), (2, 3, 10, 11, 19), (2, 4, 16, 32, 32)], ids=str)
def test_conv_gpu_matches_numpy(shape, act, dtype):
    L, B, C, H, W = shape
    cpu, gpu = _backends(dtype)
    _compare(ConvStep(C, H, W, act, cpu), ConvStep(C, H, W, act, gpu),
             *_problem(shape, (L, C, C, 3, 3), dtype, seed=0), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", tuple(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(3, 5, 1), (2, 300, 7), (4, 64, 64)], ids=str)
def test_dense_gpu_matches_numpy(shape, act, dtype):
    L, B, C = shape
    cpu, gpu = _backends(dtype)
    _compare(DenseStep(C, act, cpu), DenseStep(C, act, gpu), *_problem(shape, (L, C, C), dtype, seed=1), dtype)


def test_launcher_rejects_mixed_dtypes():
    import cupy

    from gpubraid.errors import UserError
    from gpubraid.runtime import cuda

    u = cupy.zeros((1, 1, 2, 3, 3), dtype=cupy.float32)
    K = cupy.zeros((1, 2, 2, 3, 3), dtype=cupy.float64)
    with pytest.raises(UserError):
        cuda.conv_forward(u, K, cupy.zeros((1, 2), cupy.float32), cupy.ones(1, cupy.float32), 0)


def test_noncontiguous_inputs():
    """Strided inputs are copied to contiguous buffers before launch."""
    import cupy

    from gpubraid.runtime import cuda

    _, gpu = _backends(np.float64)
    u, lam, K, b, h = _problem((2, 3, 4, 6, 5), (2, 4, 4, 3, 3), np.float64, seed=2)
    ref = cuda.conv_forward(cupy.asarray(u), cupy.asarray(K), cupy.asarray(b), cupy.asarray(h), 0)
    ut = cupy.asfortranarray(cupy.asarray(u))
    got = cuda.conv_forward(ut, cupy.asarray(K), cupy.asarray(b), cupy.asarray(h), 0)
    assert cupy.asnumpy(got).tobytes() == cupy.asnumpy(ref).tobytes()


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_full_mgrit_solve_on_gpu_equals_cpu(kind):
    """Forward and adjoint MGRIT with every step on the GPU equal the NumPy solve (float64)."""
    import cupy

    from gpubraid.network.network import ResNetODE
    from gpubraid.objective.layer_parallel import LayerParallel
    from gpubraid.solver.options import MGRITOptions

    in_shape = (3,) if kind == "dense" else (2, 9, 7)
    cpu, gpu = _backends(np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, *in_shape))
    y = rng.integers(0, 4, 6)
    opts = MGRITOptions(cfactor=4, nrelax=1, max_levels=3, tol=1e-12)
    results = []
    for be in (cpu, gpu):
        model = ResNetODE(kind, in_shape, 4, 33, 4, 2.0, "tanh", be, gamma_tik=1e-3, gamma_ddt=1e-3)
        theta = model.init_params(model.layout(), seed=2)
        lp = LayerParallel(model, None, opts, opts)
        ev = lp.evaluate(theta, be.asarray(x), be.xp.asarray(y), 6)
        fst, bst = lp.last_stats
        results.append((ev.objective, be.to_host(ev.grad), be.to_host(lp.U), fst.iterations, bst.iterations))
    (f0, g0, U0, i0, j0), (f1, g1, U1, i1, j1) = results
    assert (i0, j0) == (i1, j1)
    assert abs(f1 - f0) <= 1e-12 * abs(f0)
    assert np.max(np.abs(U1 - U0)) <= 1e-12 * np.max(np.abs(U0))
    assert np.linalg.norm(g1 - g0) <= 1e-11 * np.linalg.norm(g0)
    assert isinstance(lp.U, cupy.ndarray)


# (n, B, C): the widths the sweeps are compiled for (4, 8, 16) and run-time widths around them.
SWEEP_SHAPES = [(1, 5, 1), (2, 40, 4), (4, 300, 8), (3, 200, 16), (3, 1000, 32), (2, 130, 64)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", SWEEP_SHAPES, ids=str)
def test_dense_chains_on_gpu_match_the_per_row_steps(shape, act, dtype):
    """The coarsest solve's chains (one launch each direction, a right-hand side held in the rows
    themselves, the adjoint's states a reversed view) against one NumPy step call per row."""
    import cupy

    n, B, C = shape
    cpu, gpu = _backends(dtype)
    rng = np.random.default_rng(9)
    start, G = rng.standard_normal((B, C)).astype(dtype), rng.standard_normal((n, B, C)).astype(dtype)
    U = rng.standard_normal((n, B, C)).astype(dtype)[::-1]
    K = (rng.standard_normal((n, C, C)) / np.sqrt(C)).astype(dtype)
    b = (0.3 * rng.standard_normal((n, C))).astype(dtype)
    h = rng.uniform(0.1, 1.0, n).astype(dtype)
    ref, step = DenseStep(C, act, cpu), DenseStep(C, act, gpu)
    params, dh = (cupy.asarray(K), cupy.asarray(b)), cupy.asarray(h)
    for adjoint in (False, True):
        rows, prev = [], start
        for i in range(n):
            one = (K[i:i + 1], b[i:i + 1])
            v = (ref.adjoint(U[i:i + 1], prev[None], one, h[i:i + 1]) if adjoint
                 else ref.forward(prev[None], one, h[i:i + 1]))
            prev = v[0] + G[i]
            rows.append(prev)
        V = cupy.asarray(G)
        done = (step.adjoint_chain(cupy.asarray(start), V, cupy.asarray(U), params, dh, V) if adjoint
                else step.forward_chain(cupy.asarray(start), V, params, dh, V))
        assert done
        err = np.max(np.abs(cupy.asnumpy(V).astype(np.float64) - np.stack(rows))) / np.max(np.abs(np.stack(rows)))
        assert err <= TOL[dtype], f"{'adjoint' if adjoint else 'forward'} chain: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", SWEEP_SHAPES, ids=str)
def test_dense_layer_sweeps_on_gpu_match_the_per_layer_steps(shape, act, dtype):
    """One launch per sweep (states, adjoints, gradients, λ carried in place) against one NumPy call
    per layer; the gradients of two runs are bitwise equal."""
    import cupy

    n, B, C = shape
    cpu, gpu = _backends(dtype)
    rng = np.random.default_rng(7)
    u0, lam_n = rng.standard_normal((B, C)).astype(dtype), rng.standard_normal((B, C)).astype(dtype)
    K = (rng.standard_normal((n, C, C)) / np.sqrt(C)).astype(dtype)
    b = (0.3 * rng.standard_normal((n, C))).astype(dtype)
    h = rng.uniform(0.1, 1.0, n).astype(dtype)
    ref, step = DenseStep(C, act, cpu), DenseStep(C, act, gpu)
    us, lams, rK, rb = [u0], [lam_n], np.zeros_like(K), np.zeros_like(b)
    for i in range(n):
        us.append(ref.forward(us[i][None], (K[i:i + 1], b[i:i + 1]), h[i:i + 1])[0])
    for i in reversed(range(n)):
        dK, db = ref.param_grad(us[i][None], lams[0][None], (K[i:i + 1], b[i:i + 1]), h[i:i + 1])
        rK[i], rb[i] = dK[0], db[0]
        lams.insert(0, ref.adjoint(us[i][None], lams[0][None], (K[i:i + 1], b[i:i + 1]), h[i:i + 1])[0])
    params, dh = (cupy.asarray(K), cupy.asarray(b)), cupy.asarray(h)
    bits = None
    for keep in (True, False, True):
        U = cupy.zeros((n + 1, B, C), dtype=dtype)
        U[0] = cupy.asarray(u0)
        kept = step.forward_block(U, params, dh, keep)
        Lam = cupy.zeros((n + 1, B, C), dtype=dtype)
        Lam[n] = cupy.asarray(lam_n)
        grads = (cupy.zeros_like(params[0]), cupy.zeros_like(params[1]))
        assert step.backward_block(U, Lam, params, dh, grads, kept)
        lam, through = cupy.asarray(lam_n), (cupy.zeros_like(params[0]), cupy.zeros_like(params[1]))
        assert step.backward_through(U, lam, params, dh, through, step.forward_block(U, params, dh, keep))
        for name, got, want in (("states", U, np.stack(us)), ("adjoints", Lam, np.stack(lams)), ("dK", grads[0], rK),
                                ("db", grads[1], rb), ("through λ_0", lam, lams[0]), ("through dK", through[0], rK)):
            got = cupy.asnumpy(got)
            err = np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want))
            assert err <= TOL[dtype], f"{name} ({keep}): relative error {err:.3g}"
        if keep:
            now = cupy.asnumpy(grads[0]).tobytes() + cupy.asnumpy(grads[1]).tobytes()
            assert bits is None or bits == now, "gradients differ between two runs"
            bits = now
