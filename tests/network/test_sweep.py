"""The layer-serial pair forward_keep / adjoint_grad, the sweeps that use it, the convolution kernels
(nine shifted GEMMs, im2col, PyTorch's) and Adam's scratch vectors: the same numbers as the plain
formulas (bit for bit where the operations are the same, round-off where torch sums otherwise)."""
import numpy as np
import pytest

from gpubraid.network import conv, sweep, torch_conv
from gpubraid.network.activations import ACTIVATIONS
from gpubraid.network.selftest import check_step
from gpubraid.network.steps import ConvStep, DenseStep
from gpubraid.network.sweep import backward_sweep, forward_sweep, forward_through
from gpubraid.runtime import host
from gpubraid.runtime.backend import resolve_backend
from gpubraid.training.optim import Adam


def _step(kind, act, dtype, engine="numpy"):
    be = resolve_backend("numpy", dtype)
    return DenseStep(5, act, be) if kind == "dense" else ConvStep(4, 5, 3, act, be, engine=engine)


def _problem(step, n, B, dtype, seed=0):
    rng = np.random.default_rng(seed)
    S = step.state_shape
    layers = tuple((0.5 * rng.standard_normal((n, *s))).astype(dtype) for s in step.param_shapes)
    return rng.standard_normal((B, *S)).astype(dtype), layers, rng.uniform(0.1, 0.5, n).astype(dtype)


class _Plain:
    """The same step seen through the three protocol methods only."""

    def __init__(self, step):
        self.state_shape, self.param_shapes = step.state_shape, step.param_shapes
        self.forward, self.adjoint, self.param_grad = step.forward, step.adjoint, step.param_grad


def sweeps(step, u0, lamN, layers, h, empty=None, keep=True):
    """(U, Lam, grads, kept) of a forward and a backward sweep (the gradients start at 0.25: they are
    added to what is there); ``empty``: how U is allocated; ``kept``: what the forward sweep kept."""
    n, dtype = len(h), u0.dtype
    U = (empty or (lambda shape, dt: np.empty(shape, dt)))((n + 1, *u0.shape), dtype)
    U[0] = u0
    kept = forward_sweep(step, U, layers, h, keep=keep)
    Lam = np.empty_like(U)
    Lam[-1] = lamN
    grads = tuple(np.full_like(p, 0.25) for p in layers)
    backward_sweep(step, U, Lam, layers, h, grads, kept)
    return U, Lam, grads, kept


@pytest.mark.parametrize("kind, dtype", [("dense", "float64"), ("dense", "float32"), ("conv", "float64"),
                                         ("conv", "float32"), ("conv-torch", "float32")])  # torch: float32 only
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_sweeps_with_the_pair_equal_the_three_methods_bit_for_bit(kind, act, dtype, monkeypatch):
    monkeypatch.setattr(host, "library", lambda: None)  # the per-layer pair (tests/runtime/test_host.py: the block)
    if kind == "conv-torch":
        pytest.importorskip("torch")
    step = _step(kind.split("-")[0], act, dtype, engine="torch" if kind == "conv-torch" else "numpy")
    n, B = 4, 3
    u0, layers, h = _problem(step, n, B, dtype)
    lamN = np.random.default_rng(1).standard_normal(u0.shape).astype(dtype)
    results = []
    for s in (step, _Plain(step)):
        U = np.empty((n + 1, *u0.shape), dtype)
        U[0] = u0
        kept = forward_sweep(s, U, layers, h, keep=True)
        assert (kept is None) == (s is not step)
        Lam = np.empty_like(U)
        Lam[-1] = lamN
        grads = tuple(np.full_like(p, 0.25) for p in layers)  # gradients are added to what is there
        backward_sweep(s, U, Lam, layers, h, grads, kept)
        results.append((U, Lam, grads))
    (U1, L1, G1), (U2, L2, G2) = results
    assert np.array_equal(U1, U2) and np.array_equal(L1, L2)
    assert all(np.array_equal(a, b) for a, b in zip(G1, G2))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_adjoint_grad_without_kept_recomputes(kind, monkeypatch):
    monkeypatch.setattr(host, "library", lambda: None)  # the NumPy methods, bit for bit
    step = _step(kind, "tanh", "float64")
    u0, layers, h = _problem(step, 2, 3, "float64")
    u = np.stack([u0, 0.5 * u0])
    lam = np.random.default_rng(2).standard_normal(u.shape)
    out = np.empty_like(u)
    grads = step.adjoint_grad(u, lam, layers, h, None, out)
    assert np.array_equal(out, step.adjoint(u, lam, layers, h))
    assert all(np.array_equal(a, b) for a, b in zip(grads, step.param_grad(u, lam, layers, h)))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_selftest_checks_the_pair_and_catches_a_wrong_one(kind):
    step = _step(kind, "tanh", "float64")
    report = check_step(step)
    assert report.ok and any(c.name == "pair" for c in report.checks)

    class Wrong(type(step)):
        def adjoint_grad(self, u, lam, params, h, kept, out):
            grads = super().adjoint_grad(u, lam, params, h, kept, out)
            return (2 * grads[0], grads[1])

    wrong = Wrong(5, "tanh", step.be) if kind == "dense" else Wrong(4, 5, 3, "tanh", step.be, engine="numpy")
    report = check_step(wrong)
    assert [c.name for c in report.failed()] == ["pair"]


@pytest.mark.parametrize("kind, dtype", [("dense", "float64"), ("dense", "float32"), ("conv", "float64")])
@pytest.mark.parametrize("budget", [None, 1])  # one block of all samples; one sample per block
def test_forward_through_gives_the_per_layer_calls_bits(kind, dtype, budget, monkeypatch):
    """Inference's forward pass: the block form over sample blocks where the step has one (the
    per-layer calls' values to round-off), one forward call per layer otherwise (their bits, also
    over sample blocks: conv); u is left alone."""
    if budget is not None:
        monkeypatch.setattr(sweep, "THROUGH_BYTES", budget)
        monkeypatch.setattr(sweep, "LAYER_BYTES", budget)
    step = _step(kind, "tanh", dtype)
    n, B = 5, 7
    u0, layers, h = _problem(step, n, B, dtype)
    ref = u0.copy()
    for i in range(n):
        ref = step.forward(ref[None], tuple(p[i:i + 1] for p in layers), h[i:i + 1])[0]
    before = u0.copy()
    tol = 4 * np.finfo(dtype).eps
    for s, exact in ((step, kind == "conv"), (_Plain(step), True)):
        got = forward_through(s, np, u0, layers, h)
        assert got.shape == u0.shape and got.dtype == u0.dtype
        assert np.array_equal(got, ref) if exact else np.allclose(got, ref, rtol=tol, atol=tol)
        assert np.array_equal(u0, before)


def test_forward_through_of_no_samples(monkeypatch):
    monkeypatch.setattr(sweep, "LAYER_BYTES", 1)
    step = _step("conv", "tanh", "float64")
    _, layers, h = _problem(step, 3, 1, "float64")
    u = np.empty((0, *step.state_shape))
    assert forward_through(step, np, u, layers, h).shape == u.shape


def test_forward_through_falls_back_when_the_block_form_declines(monkeypatch):
    step = _step("dense", "tanh", "float64")
    u0, layers, h = _problem(step, 4, 6, "float64")
    ref = forward_through(_Plain(step), np, u0, layers, h)
    monkeypatch.setattr(step, "forward_block", lambda *a: NotImplemented, raising=False)
    assert np.array_equal(forward_through(step, np, u0, layers, h), ref)


def _reference_conv(u, K):
    """The zero-padded 3×3 correlation by loops: u (L, B, Ci, H, W), K (L, Co, Ci, 3, 3)."""
    L, B, Ci, H, W = u.shape
    up = np.pad(u, ((0, 0), (0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((L, B, K.shape[1], H, W))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("loi,lbiyx->lboyx", K[..., dy, dx], up[..., dy:dy + H, dx:dx + W])
    return out


@pytest.mark.parametrize("Ci", [1, 4, 6])
@pytest.mark.parametrize("budget", [None, 1, 3 * 6 * 7 * 8])  # all at once; 1 sample; 3 samples
def test_conv_kernels_against_loops(Ci, budget, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(conv, "BLOCK_BYTES", budget * Ci)
    rng = np.random.default_rng(3)
    u = rng.standard_normal((2, 3, Ci, 5, 4))
    K = rng.standard_normal((2, 4, Ci, 3, 3))
    b = rng.standard_normal((2, 4))
    a = rng.standard_normal((2, 3, 4, 5, 4))
    ref = _reference_conv(u, K)
    assert np.allclose(conv.conv3x3(np, u, K), ref, rtol=1e-13, atol=1e-13)
    assert np.allclose(conv.conv3x3(np, u, K, b), ref + b[:, None, :, None, None], rtol=1e-13, atol=1e-13)
    # <a, K u> = <Kᵀ a, u> = <∂/∂K, K>
    lhs = np.sum(a * ref)
    assert np.isclose(lhs, np.sum(conv.conv3x3_t(np, a, K) * u), rtol=1e-12)
    assert np.isclose(lhs, np.sum(conv.conv3x3_grad(np, a, u) * K), rtol=1e-12)


def test_conv_blocks_cover_the_layers_and_samples_in_order_within_the_budget(monkeypatch):
    monkeypatch.setattr(conv, "BLOCK_BYTES", 1000)
    for L, B, nbytes in [(1, 1, 10), (3, 7, 100), (5, 4, 100), (4, 250, 10), (2, 3, 5000), (6, 1, 999)]:
        cells = [(li, b) for ls, bs in conv.blocks(L, B, nbytes)
                 for li in range(L)[ls] for b in range(B)[bs]]
        assert cells == [(li, b) for li in range(L) for b in range(B)], (L, B, nbytes)
        for ls, bs in conv.blocks(L, B, nbytes):
            count = len(range(L)[ls]) * len(range(B)[bs])
            assert count == 1 or count * nbytes <= 1000, (L, B, nbytes)
    assert len(conv.blocks(5, 4, 100)) == 3  # whole batches, two layers at a time
    assert len(conv.blocks(1, 250, 10)) == 3  # one layer's samples in pieces of 100


def test_blocked_conv_gives_a_sample_the_same_bits_and_the_gradient_to_round_off(monkeypatch):
    rng = np.random.default_rng(4)
    u, a = rng.standard_normal((2, 2, 9, 8, 5, 6))
    K, b = rng.standard_normal((2, 8, 8, 3, 3)), rng.standard_normal((2, 8))
    whole = conv.conv3x3(np, u, K, b), conv.conv3x3_t(np, a, K), conv.conv3x3_grad(np, a, u)
    monkeypatch.setattr(conv, "BLOCK_BYTES", 2 * conv._padded_bytes(u))  # two samples per block
    assert len(conv.blocks(2, 9, conv._padded_bytes(u))) == 10
    blocked = conv.conv3x3(np, u, K, b), conv.conv3x3_t(np, a, K), conv.conv3x3_grad(np, a, u)
    assert np.array_equal(whole[0], blocked[0]) and np.array_equal(whole[1], blocked[1])
    assert np.allclose(whole[2], blocked[2], rtol=1e-13, atol=1e-13)


def test_torch_conv_equals_numpy_to_round_off():
    pytest.importorskip("torch")
    tk = torch_conv.load("torch")
    rng = np.random.default_rng(4)
    u = rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    a = rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    K = rng.standard_normal((2, 4, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal((2, 4)).astype(np.float32)
    for got, want in ((tk.conv3x3(u, K, b), conv.conv3x3(np, u, K, b)), (tk.conv3x3_t(a, K), conv.conv3x3_t(np, a, K)),
                      (tk.conv3x3_grad(a, u), conv.conv3x3_grad(np, a, u))):
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_torch_conv_fused_backward_and_residual_equal_the_plain_calls():
    pytest.importorskip("torch")
    tk = torch_conv.load("torch")
    rng = np.random.default_rng(6)
    u, a, lam = (rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32) for _ in range(3))
    K = rng.standard_normal((2, 4, 4, 3, 3)).astype(np.float32)
    h = np.array([0.25, 0.5], np.float32)
    out, out2, out3 = (np.empty_like(u) for _ in range(3))
    gK, gb = tk.adjoint_and_grads(a, u, K, h, lam, out)
    tk.conv3x3_t_residual(a, K, h, lam, out2)
    assert np.array_equal(out, out2)
    gK2, gb2 = tk.conv3x3_grads(a, u)
    assert np.array_equal(gK, gK2) and np.array_equal(gb, gb2) and np.array_equal(gK, tk.conv3x3_grad(a, u))
    assert np.allclose(out, lam + h[:, None, None, None, None] * conv.conv3x3_t(np, a, K), rtol=1e-5, atol=1e-5)
    assert np.allclose(gb, a.sum(axis=(1, 3, 4)), rtol=1e-5, atol=1e-5)
    tk.axpy(a, h, u, out3)
    assert np.allclose(out3, u + h[:, None, None, None, None] * a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_channels_last_states_of_the_torch_engine_give_the_same_sweeps(act):
    pytest.importorskip("torch")
    step = _step("conv", act, "float32", engine="torch")
    n, B = 3, 4
    u0, layers, h = _problem(step, n, B, "float32")
    lamN = np.random.default_rng(7).standard_normal(u0.shape).astype(np.float32)
    U = step.empty_states((n + 1, *u0.shape), np.float32)
    assert U.strides[2] == U.itemsize  # channels fastest in memory
    got = sweeps(step, u0, lamN, layers, h, step.empty_states)
    want = sweeps(step, u0, lamN, layers, h)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        assert np.allclose(g, w, rtol=1e-5, atol=1e-5)
    assert _step("conv", act, "float32", engine="numpy").empty_states((2, 3, 4, 5, 3), np.float32).flags.c_contiguous


def test_step_engine_names_are_checked():
    from gpubraid.errors import UserError
    with pytest.raises(UserError, match="step engine must be one of"):
        torch_conv.load("cuda")
    assert torch_conv.load("numpy") is None


def test_adam_scratch_vectors_give_the_formulas_bits():
    rng = np.random.default_rng(5)
    theta = rng.standard_normal(50)
    ref = theta.copy()
    opt = Adam(lr=0.01)
    m = v = np.zeros(50)
    for t in range(1, 6):
        g = rng.standard_normal(50)
        opt.step(theta, lambda th: (0.0, g))
        m = 0.9 * m + (1.0 - 0.9) * g
        v = 0.999 * v + (1.0 - 0.999) * (g * g)
        ref -= (0.01 * (1.0 / (1.0 - 0.9 ** t))) * m / ((v * (1.0 / (1.0 - 0.999 ** t))) ** 0.5 + 1e-8)
        assert np.array_equal(theta, ref)
