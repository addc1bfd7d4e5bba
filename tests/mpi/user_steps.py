"""Steps a user would write, shared by tests/test_network.py, tests/test_torch_step.py and the MPI checks.

``TwoLayerStep``: three parameter groups, f(u) = K2ᵀ σ(K1 u + b) written against the step protocol
by hand.  ``two_layer_module``: the same kind of block as a torch module, f(u) = W2 σ(W1 u + b1).
"""
import numpy as np

from gpubraid.activations import get_activation


class TwoLayerStep:
    """u + h K2ᵀ σ(K1 u + b): states (L, B, C); K1 (L, M, C), K2 (L, M, C), b (L, M)."""

    param_names = ("K1", "K2", "b")
    param_init = ("normal", "normal", "zeros")

    def __init__(self, channels, hidden, backend, activation="tanh"):
        self.C, self.M = channels, hidden
        self.be, self.xp = backend, backend.xp
        self.act = get_activation(activation)
        self.state_shape = (channels,)
        self.param_shapes = ((hidden, channels), (hidden, channels), (hidden,))

    def describe(self):
        return {"name": "two_layer", "channels": self.C, "hidden": self.M, "activation": self.act.name}

    def _z(self, u, K1, b):
        return self.xp.matmul(u, K1.transpose(0, 2, 1)) + b[:, None, :]

    def forward(self, u, params, h):
        K1, K2, b = params
        s = self.act.sigma(self.xp, self._z(u, K1, b))
        return u + h[:, None, None] * self.xp.matmul(s, K2)

    def _a(self, u, lam, params):
        K1, K2, b = params
        return self.xp.matmul(lam, K2.transpose(0, 2, 1)) * self.act.dsigma(self.xp, self._z(u, K1, b))

    def adjoint(self, u, lam, params, h):
        return lam + h[:, None, None] * self.xp.matmul(self._a(u, lam, params), params[0])

    def param_grad(self, u, lam, params, h):
        K1, K2, b = params
        a = self._a(u, lam, params)
        s = self.act.sigma(self.xp, self._z(u, K1, b))
        hb = h[:, None, None]
        return (hb * self.xp.matmul(a.transpose(0, 2, 1), u),
                hb * self.xp.matmul(s.transpose(0, 2, 1), lam),
                h[:, None] * a.sum(axis=1))


def two_layer_module(channels=4, hidden=6):
    """A factory: f(u) = W2 tanh(W1 u + b1) as a torch module (torch imported here, lazily)."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = torch.nn.Linear(channels, hidden)
            self.lin2 = torch.nn.Linear(hidden, channels, bias=False)

        def forward(self, u):
            return self.lin2(torch.tanh(self.lin1(u)))

    return Block()


def toy_arrays(n=60, d=3, classes=3, seed=0, regression=False):
    """Small user arrays: x (n, d) float64; y integer labels (n,) or float targets (n, 2)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    if regression:
        return x, np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    return x, (np.digitize(x[:, 0] + 0.5 * x[:, 1] ** 2, [-0.3, 0.8])).astype(np.int64) % classes
