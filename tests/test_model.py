"""The model in float64: gradients by finite differences, adjoints by dot products, batching."""
import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.activations import ACTIVATIONS
from gpubraid.network.network import ResNetODE
from gpubraid.network.reference import evaluate
from gpubraid.network.steps import ConvStep, DenseStep
from gpubraid.runtime.backend import resolve_backend

BE = resolve_backend("numpy", "float64")
KINDS = {"dense": (3,), "conv": (2, 5, 4)}


def problem(kind, act, N=4, seed=0, gamma=(0.1, 0.3)):
    model = ResNetODE(kind, KINDS[kind], 3, N, 3, 1.5, act, BE, gamma_tik=gamma[0], gamma_ddt=gamma[1])
    layout = model.layout()
    rng = np.random.default_rng(seed)
    theta = model.init_params(layout, seed=seed) + 0.2 * rng.standard_normal(layout.size)
    x = rng.standard_normal((5, *KINDS[kind]))
    y = rng.integers(0, 3, 5)
    return model, layout, theta, x, y


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_gradient_matches_finite_differences_per_group(kind, act):
    model, layout, theta, x, y = problem(kind, act)
    ev = evaluate(model, layout, theta, x, y)
    rng = np.random.default_rng(1)
    for group, (lo, hi) in layout.offsets.items():
        d = np.zeros_like(theta)
        d[lo:hi] = rng.standard_normal(hi - lo)
        eps = 1e-6
        fp = evaluate(model, layout, theta + eps * d, x, y, grad=False).objective
        fm = evaluate(model, layout, theta - eps * d, x, y, grad=False).objective
        fd = (fp - fm) / (2 * eps)
        an = float(ev.grad @ d)
        assert abs(fd - an) <= 1e-6 * max(abs(an), 1e-3), (group, fd, an)


def steps():
    yield DenseStep(4, "tanh", BE), (4,)
    yield ConvStep(3, 5, 4, "tanh", BE), (3, 5, 4)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("which", [0, 1])
def test_step_adjoint_dot_product(act, which):
    """<J v, w> = <v, Jᵀ w> for the state Jacobian and <∂Φ/∂θ δθ, w> = <δθ, param_grad(w)>."""
    step, S = list(steps())[which]
    step = type(step)(*((4,) if which == 0 else (3, 5, 4)), act, BE)
    rng = np.random.default_rng(2)
    L, B = 3, 4
    u = rng.standard_normal((L, B, *S))
    K = rng.standard_normal((L, *step.param_shapes[0]))
    b = rng.standard_normal((L, *step.param_shapes[1]))
    h = rng.uniform(0.1, 0.5, L)
    v, w = rng.standard_normal(u.shape), rng.standard_normal(u.shape)
    z = step.preactivation(u, (K, b))
    ds = step.activation.dsigma(np, z)
    hb = h.reshape(L, *(1,) * (u.ndim - 1))
    Jv = v + hb * ds * step.linear(v, K)
    lhs, rhs = np.sum(Jv * w), np.sum(v * (step.adjoint(u, w, (K, b), h) - 0))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)
    dK, db = rng.standard_normal(K.shape), rng.standard_normal(b.shape)
    Jt = hb * ds * (step.linear(u, dK) + step.bias(db))
    gK, gb = step.param_grad(u, w, (K, b), h)
    lhs, rhs = np.sum(Jt * w), np.sum(dK * gK) + np.sum(db * gb)
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)


@pytest.mark.parametrize("which", [0, 1])
def test_linear_transpose_dot_product(which):
    step, S = list(steps())[which]
    rng = np.random.default_rng(3)
    L, B = 2, 3
    K = rng.standard_normal((L, *step.param_shapes[0]))
    v, w = rng.standard_normal((L, B, *S)), rng.standard_normal((L, B, *S))
    lhs, rhs = np.sum(step.linear(v, K) * w), np.sum(v * step.linear_t(w, K))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("which", [0, 1])
def test_batched_equals_separate_layers_exactly(which):
    step, S = list(steps())[which]
    rng = np.random.default_rng(4)
    L, B = 5, 3
    u, lam = rng.standard_normal((L, B, *S)), rng.standard_normal((L, B, *S))
    K = rng.standard_normal((L, *step.param_shapes[0]))
    b = rng.standard_normal((L, *step.param_shapes[1]))
    h = rng.uniform(0.1, 0.5, L)
    fwd = step.forward(u, (K, b), h)
    adj = step.adjoint(u, lam, (K, b), h)
    gK, gb = step.param_grad(u, lam, (K, b), h)
    for i in range(L):
        one = (slice(i, i + 1),)
        args = (K[one], b[one])
        assert np.array_equal(fwd[i], step.forward(u[one], args, h[one])[0])
        assert np.array_equal(adj[i], step.adjoint(u[one], lam[one], args, h[one])[0])
        g1 = step.param_grad(u[one], lam[one], args, h[one])
        assert np.array_equal(gK[i], g1[0][0]) and np.array_equal(gb[i], g1[1][0])


def test_conv_matches_direct_correlation():
    """ConvStep.linear is the zero-padded 3×3 correlation of the docstring."""
    step = ConvStep(2, 4, 3, "identity", BE)
    rng = np.random.default_rng(5)
    u = rng.standard_normal((1, 2, 2, 4, 3))
    K = rng.standard_normal((1, 2, 2, 3, 3))
    up = np.pad(u, ((0, 0), (0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros_like(u)
    for o in range(2):
        for i in range(2):
            for dy in range(3):
                for dx in range(3):
                    ref[:, :, o] += K[0, o, i, dy, dx] * up[:, :, i, dy:dy + 4, dx:dx + 3]
    assert np.allclose(step.linear(u, K), ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kind", list(KINDS))
def test_regulariser_gradient_and_block_split(kind):
    """R's gradient (Tikhonov + ddt) by finite differences; block shares add up to the whole."""
    model, layout, theta, x, y = problem(kind, "tanh", N=7, gamma=(0.2, 0.7))
    model.h[:] = np.linspace(0.1, 0.4, 7)  # non-uniform steps exercise h_n in both terms
    g = np.zeros_like(theta)
    R = model.regularizer(layout, layout.views(theta), layout.views(g))
    rng = np.random.default_rng(6)
    d = rng.standard_normal(theta.shape)
    eps = 1e-6
    Rp = model.regularizer(layout, layout.views(theta + eps * d))
    Rm = model.regularizer(layout, layout.views(theta - eps * d))
    assert abs((Rp - Rm) / (2 * eps) - g @ d) <= 1e-8 * abs(g @ d)
    F = layout.views(theta)
    total, parts = 0.0, []
    for a, b in ((0, 3), (3, 4), (4, 7)):
        lay = model.layout(a, b)
        vec = np.zeros(lay.size)
        Q = lay.views(vec)
        Q.K[...], Q.b[...] = F.K[a:b], F.b[a:b]
        if lay.has_open:
            Q.open_K[...], Q.open_b[...] = F.open_K, F.open_b
        if lay.has_class:
            Q.W[...], Q.c[...] = F.W, F.c
        left = (F.K[a - 1], F.b[a - 1]) if a > 0 else None
        right = (F.K[b], F.b[b]) if b < 7 else None
        gq = np.zeros_like(vec)
        total += model.regularizer(lay, Q, lay.views(gq), left, right)
        parts.append((a, b, lay.views(gq)))
    assert abs(total - R) <= 1e-13 * R
    G = layout.views(g)
    for a, b, Gq in parts:
        assert np.allclose(Gq.K, G.K[a:b], rtol=1e-13, atol=1e-15)
        assert np.allclose(Gq.b, G.b[a:b], rtol=1e-13, atol=1e-15)


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError, match="activation"):
        ResNetODE("dense", (2,), 3, 4, 3, 1.0, "gelu", BE)
    with pytest.raises(UserError, match="layers"):
        ResNetODE("dense", (2,), 3, 0, 3, 1.0, "tanh", BE)
    with pytest.raises(UserError, match="final_time"):
        ResNetODE("dense", (2,), 3, 4, 3, 0.0, "tanh", BE)
    with pytest.raises(UserError, match="final_time"):
        ResNetODE("dense", (2,), 3, 4, 3, float("inf"), "tanh", BE)
    with pytest.raises(UserError, match="kind"):
        ResNetODE("rnn", (2,), 3, 4, 3, 1.0, "tanh", BE)
    with pytest.raises(UserError, match="conv networks"):
        ResNetODE("conv", (2,), 3, 4, 3, 1.0, "tanh", BE)
    step = DenseStep(3, "tanh", BE)
    u = np.zeros((2, 4, 3))
    with pytest.raises(UserError, match="state must have shape"):
        step.forward(np.zeros((2, 4, 5)), (np.zeros((2, 3, 3)), np.zeros((2, 3))), np.ones(2))
    with pytest.raises(UserError, match="parameter K must have shape"):
        step.forward(u, (np.zeros((1, 3, 3)), np.zeros((2, 3))), np.ones(2))
    with pytest.raises(UserError, match="step sizes"):
        step.forward(u, (np.zeros((2, 3, 3)), np.zeros((2, 3))), np.ones(3))
    with pytest.raises(UserError, match="adjoint"):
        step.adjoint(u, np.zeros((2, 4, 2)), (np.zeros((2, 3, 3)), np.zeros((2, 3))), np.ones(2))
    with pytest.raises(UserError, match="backend"):
        resolve_backend("tpu")
    with pytest.raises(UserError, match="dtype"):
        resolve_backend("numpy", "float16")


def test_float32_backend_runs_in_float32():
    be = resolve_backend("numpy", "float32")
    model = ResNetODE("dense", (2,), 3, 4, 3, 1.0, "tanh", be)
    layout = model.layout()
    theta = model.init_params(layout)
    ev = evaluate(model, layout, theta, be.asarray(np.ones((2, 2))), np.array([0, 1]))
    assert theta.dtype == np.float32 and ev.grad.dtype == np.float32
