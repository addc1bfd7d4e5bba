"""gpubraid.network.steps in float64: adjoints by dot products, batching, the convolution, bad inputs."""
import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.activations import ACTIVATIONS
from gpubraid.network.steps import ConvStep, DenseStep
from gpubraid.runtime.backend import resolve_backend

BE = resolve_backend("numpy", "float64")


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


def test_bad_inputs_raise_user_error():
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

