"""Steps a user would write, shared by tests/test_network.py, tests/test_torch_step.py and the MPI checks.

``TwoLayerStep``: three parameter groups, f(u) = K2ᵀ σ(K1 u + b) written against the step protocol
by hand.  ``two_layer_module``: the same kind of block as a torch module, f(u) = W2 σ(W1 u + b1).
"""
import numpy as np

from gpubraid.network.activations import get_activation


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


def spiral(n: int, seed: int, k: int = 3):
    """``k`` interleaved spiral arms in 2-D: features (n, 2) float64, labels (n,) int64."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.25, 1.0, n)
    c = rng.integers(0, k, n)
    angle = 4 * t + 2 * np.pi * c / k + rng.normal(0, 0.2, n)
    return np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1), c.astype(np.int64)


def lbfgs_history(lp, theta, x, y, batch, iterations=10):
    """Train with L-BFGS through ``lp`` (a LayerParallel) for ``iterations`` steps; the objective at
    the start of every step and after the last one (identical on every rank)."""
    from gpubraid.training.optim import make_optimizer

    opt = make_optimizer("lbfgs", dot=lp.dot, memory=10)

    def closure(th):
        ev = lp.evaluate(th, x, y, batch, grad=True)
        return ev.objective, ev.grad

    hist = [opt.step(theta, closure).objective for _ in range(iterations)]
    hist.append(lp.evaluate(theta, x, y, batch, grad=False).objective)
    return hist


def build(which, backend, layers=12):
    """(network, dataset) of the MPI/serial training checks: ``three`` (TwoLayerStep, classification)
    or ``torch`` (the torch block, regression on two float targets)."""
    from gpubraid.data.dataset import dataset_from_arrays
    from gpubraid.network.network import network_for_data

    if which == "three":
        ds = dataset_from_arrays(*toy_arrays(60, 3, 3, seed=0), seed=0)
        step = TwoLayerStep(4, 6, backend)
    else:
        from gpubraid.network.torch_step import TorchStep

        ds = dataset_from_arrays(*toy_arrays(60, 3, seed=0, regression=True), task="regression", seed=0)
        step = TorchStep(lambda: two_layer_module(4, 6), (4,), backend)
    net = network_for_data(ds.meta(), step, layers=layers, final_time=2.0, backend=backend,
                           gamma_tik=1e-3, gamma_ddt=1e-3)
    return net, ds


def train_history(which, method, backend, comm=None, iterations=10):
    """Train the ``build(which)`` network with L-BFGS through a LayerParallel on ``comm`` (None: one
    process): ``method`` "serial" (one level), "pipeline" (one level, 3 micro-batches streamed 1F1B),
    "chimera" (one level, 4 micro-batches streamed both ways) or "exact" (FCF MGRIT to 1e-10).  Returns (the objective history of :func:`lbfgs_history`, the
    LayerParallel, this rank's final parameters)."""
    from gpubraid.objective.layer_parallel import LayerParallel
    from gpubraid.objective.pipeline import PipelineOptions
    from gpubraid.solver.options import MGRITOptions

    net, ds = build(which, backend)
    if method in ("serial", "pipeline", "chimera"):
        opts = MGRITOptions(max_levels=1, tol=1e-10, max_iter=100)
    else:
        opts = MGRITOptions(cfactor=2, max_levels=10, nrelax=1, tol=1e-10, max_iter=100)
    pipeline = {"pipeline": PipelineOptions(3, "1f1b"), "chimera": PipelineOptions(4, "chimera")}.get(method)
    lp = LayerParallel(net, comm, opts, opts, pipeline=pipeline)
    theta = lp.scatter_params(net.init_params(net.layout(), seed=0))
    hist = lbfgs_history(lp, theta, ds.x_train if lp.needs_inputs else None, ds.y_train if lp.needs_targets else None,
                         ds.n_train, iterations)
    return hist, lp, theta


class StateShapeStep(TwoLayerStep):
    """TwoLayerStep built the way ``--layer module:attr`` builds a user step: attr(backend=, state_shape=)."""

    def __init__(self, backend, state_shape, hidden=6):
        super().__init__(state_shape[0], hidden, backend)



def resnet_problem(kind: str, N: int, B: int, backend, in_shape=None):
    """The ResNetODE of the MPI checks (4 channels, 3 classes, T = 2, tanh, regularised) with its
    full-layout parameters (seed 3, scale 2) and B samples: (model, theta_full, x, y).  Inputs
    (3,) or (2, 5, 4) images unless ``in_shape`` is given."""
    from gpubraid.network.network import ResNetODE

    if in_shape is None:
        in_shape = (3,) if kind == "dense" else (2, 5, 4)
    model = ResNetODE(kind, in_shape, 4, N, 3, 2.0, "tanh", backend, gamma_tik=1e-2, gamma_ddt=1e-2)
    theta_full = model.init_params(model.layout(), seed=3, scale=2.0)
    rng = np.random.default_rng(0)
    return model, theta_full, rng.standard_normal((B, *in_shape)), rng.integers(0, 3, B)

def numpy_chains(step) -> list:
    """Give the NumPy ``step`` the optional ``forward_chain`` / ``adjoint_chain`` (what the dense step
    has on a GPU: a coarsest-solve segment in one call), computed exactly as the solver's row loop
    computes the rows, so that results must not change by a bit; returns the list each call appends
    (direction, rows) to."""
    calls = []

    def run(kind, start, V, G, one):
        prev = start
        for i in range(V.shape[0]):
            v = one(i, prev)
            if G is None:
                V[i] = v
            else:
                np.add(v, G[i], out=V[i])
            prev = V[i]
        calls.append((kind, V.shape[0]))
        return True

    def forward_chain(u0, V, params, h, G):
        return run("forward", u0, V, G, lambda i, u: step.forward(u[None], tuple(p[i:i + 1] for p in params),
                                                                  h[i:i + 1])[0])

    def adjoint_chain(w0, W, U, params, h, G):
        return run("adjoint", w0, W, G, lambda i, w: step.adjoint(U[i:i + 1], w[None],
                                                                  tuple(p[i:i + 1] for p in params), h[i:i + 1])[0])

    step.forward_chain, step.adjoint_chain = forward_chain, adjoint_chain
    return calls


def __getattr__(name):
    """``TorchBlock``: a torch.nn.Module class for ``--layer user_steps:TorchBlock`` (4 channels),
    made on first use so that this module imports without torch."""
    if name != "TorchBlock":
        raise AttributeError(name)
    import torch

    class TorchBlock(torch.nn.Module):
        def __init__(self, channels=4, hidden=6):
            super().__init__()
            self.lin1 = torch.nn.Linear(channels, hidden)
            self.lin2 = torch.nn.Linear(hidden, channels, bias=False)

        def forward(self, u):
            return self.lin2(torch.tanh(self.lin1(u)))

    globals()["TorchBlock"] = TorchBlock
    return TorchBlock
