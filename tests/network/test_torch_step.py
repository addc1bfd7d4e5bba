"""The PyTorch bridge: torch modules written to match DenseStep/ConvStep equal them to 1e-12 (float64)."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from user_steps import two_layer_module  # noqa: E402

from gpubraid.network.heads import Classifier
from gpubraid.network.network import Network  # noqa: E402
from gpubraid.network.steps import ConvStep, DenseStep  # noqa: E402
from gpubraid.network.torch_step import TorchStep  # noqa: E402
from gpubraid.runtime.backend import resolve_backend  # noqa: E402
from tests.network.gradcheck import fd_check  # noqa: E402

BE = resolve_backend("numpy", "float64")
ACT = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda z: z}


def dense_module(C, act):
    class Dense(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.K = torch.nn.Parameter(torch.randn(C, C) / C ** 0.5)
            self.b = torch.nn.Parameter(torch.zeros(C))

        def forward(self, u):
            return ACT[act](u @ self.K.T + self.b)

    return Dense()


def conv_module(C, act):
    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.K = torch.nn.Parameter(torch.randn(C, C, 3, 3) / (9 * C) ** 0.5)
            self.b = torch.nn.Parameter(torch.zeros(C))

        def forward(self, u):
            return ACT[act](torch.nn.functional.conv2d(u, self.K, self.b, padding=1))

    return Conv()


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("act", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_torch_step_equals_builtin(kind, act):
    if kind == "dense":
        ref, S = DenseStep(4, act, BE), (4,)
        ts = TorchStep(lambda: dense_module(4, act), S, BE)
    else:
        ref, S = ConvStep(3, 5, 4, act, BE), (3, 5, 4)
        ts = TorchStep(lambda: conv_module(3, act), S, BE)
    assert ts.param_names == ("K", "b") and ts.param_shapes == ref.param_shapes
    rng = np.random.default_rng(0)
    L, B = 4, 3
    u, lam = rng.standard_normal((L, B, *S)), rng.standard_normal((L, B, *S))
    params = tuple(rng.standard_normal((L, *s)) for s in ref.param_shapes)
    h = rng.uniform(0.1, 0.5, L)
    assert rel(ts.forward(u, params, h), ref.forward(u, params, h)) <= 1e-12
    assert rel(ts.adjoint(u, lam, params, h), ref.adjoint(u, lam, params, h)) <= 1e-12
    for g, r in zip(ts.param_grad(u, lam, params, h), ref.param_grad(u, lam, params, h)):
        assert g.shape == r.shape and rel(g, r) <= 1e-12


def test_arrays_cross_without_copies():
    ts = TorchStep(lambda: two_layer_module(4, 6), (4,), BE)
    u = np.random.default_rng(0).standard_normal((2, 3, 4))
    t = ts._t(u)
    assert t.data_ptr() == u.ctypes.data
    out = t * 2
    assert ts._a(out).ctypes.data == out.data_ptr()



@pytest.mark.parametrize("on_gpu", [False, True], ids=["numpy", "dlpack"])
def test_reversed_views_cross_as_copies(on_gpu):
    """The adjoint's layers in solver order are a reversed view; torch has no negative strides (on
    CUDA its DLPack import aborted the process on the H200, 2026-12-04): they cross as a copy, also
    the length-1 axis that ascontiguousarray would leave reversed.  ``on_gpu`` takes the DLPack path
    (NumPy arrays stand in for CuPy's: torch imports both by DLPack)."""
    import torch

    from gpubraid.network.torch_step import to_tensor
    u = np.random.default_rng(0).standard_normal((5, 3, 4))
    for view in (u[::-1], u[::-2], u[:1][::-1], u[1:][::-1][:, ::-1]):
        t = to_tensor(torch, view, on_gpu)
        assert np.array_equal(t.numpy(), view) and all(s >= 0 for s in t.stride())
    t = to_tensor(torch, u[1:], on_gpu)
    assert t.data_ptr() == u[1:].ctypes.data  # no copy where torch can view the array

def test_init_is_rank_independent_and_from_the_factory():
    ts = TorchStep(lambda: two_layer_module(4, 6), (4,), BE)
    net = Network(ts, (3,), 6, 1.0, BE, Classifier(3))
    full = net.init_params(net.layout(), seed=5)
    again = net.init_params(net.layout(), seed=5)
    assert np.array_equal(full, again)
    F = net.layout().views(full)
    lay = net.layout(2, 5)
    Q = lay.views(net.init_params(lay, seed=5))
    for name in ts.param_names:
        assert np.array_equal(Q[name], F[name][2:5])
    # torch.nn.Linear's own initialisation: uniform in ±1/sqrt(fan_in), different per layer
    w = F["lin1_weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(4) and not np.array_equal(w[0], w[1])
    assert not np.array_equal(net.init_params(net.layout(), seed=6), full)


def test_network_gradient_with_torch_step_by_finite_differences():
    ts = TorchStep(lambda: two_layer_module(4, 5), (4,), BE)
    net = Network(ts, (3,), 5, 1.0, BE, Classifier(3), gamma_tik=0.1, gamma_ddt=0.2)
    layout = net.layout()
    rng = np.random.default_rng(1)
    theta = net.init_params(layout, seed=1) + 0.1 * rng.standard_normal(layout.size)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    fd_check(net, theta, x, y)


def test_gpubraid_imports_without_torch():
    code = ("import sys; import gpubraid, gpubraid.network.heads, gpubraid.network.reference, gpubraid.objective.layer_parallel, "
            "gpubraid.network.selftest, gpubraid.network.torch_step; assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
