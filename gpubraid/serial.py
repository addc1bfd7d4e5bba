"""Layer-serial forward propagation and backpropagation: the serial method, and the reference for
every parallel result.

:class:`SerialChain` propagates one chain (the states forward, or the adjoints in solver order)
across the ranks that hold its blocks, one after the other, with the solver interface of
:class:`~gpubraid.mgrit.MGRIT`: the serial training method is :class:`~gpubraid.layer_parallel.
LayerParallel` with this chain in place of MGRIT, on any number of ranks.  The functions below are
the single-process reference the tests compare everything with.

Forward: u_0 = opening(x), u_{n+1} = Φ_n(u_n) one layer at a time.  Backward: λ_N = ∂ℓ/∂u_N,
λ_n = (∂Φ_n/∂u)ᵀ λ_{n+1} (the step's ``adjoint``) one layer at a time; then the gradients of all
N layers, every parameter group, in one batched ``param_grad`` call (docs/algorithm.md §2).
"""
from __future__ import annotations

import numpy as np

from .mgrit import MGRITOptions, SolveStats
from .model import Evaluation, Network, ParamLayout
from .parallel import Comm

TAG_CHAIN = 900


def forward_states(model: Network, P, x):
    """All states u_0..u_N, shape (N + 1, B, *state_shape)."""
    xp, N = model.xp, model.layers
    u0 = model.open_forward(x, P)
    U = xp.empty((N + 1, *u0.shape), dtype=u0.dtype)
    U[0] = u0
    h = model.step_sizes(0, N)
    layer = P.layers()
    for n in range(N):
        U[n + 1] = model.step.forward(U[n:n + 1], tuple(p[n:n + 1] for p in layer), h[n:n + 1])[0]
    return U


def backward_adjoints(model: Network, P, U, lamN):
    """All adjoints λ_0..λ_N given λ_N, shape (N + 1, B, *state_shape)."""
    xp, N = model.xp, model.layers
    Lam = xp.empty_like(U)
    Lam[N] = lamN
    h = model.step_sizes(0, N)
    layer = P.layers()
    for n in range(N - 1, -1, -1):
        Lam[n] = model.step.adjoint(U[n:n + 1], Lam[n + 1:n + 2], tuple(p[n:n + 1] for p in layer),
                                    h[n:n + 1])[0]
    return Lam


def evaluate(model: Network, layout: ParamLayout, theta, x, y, grad: bool = True) -> Evaluation:
    """Objective (and gradient) of the whole network by layer-serial propagation.

    Args:
        layout: the full layout ``model.layout()`` (one process holds every layer).
        theta: flat parameter vector (layout.size,) on the model's backend.
        x: inputs (B, *in_shape); y: the head's targets (integer labels (B,), or values (B, n_out)).
    """
    P = layout.views(theta)
    U = forward_states(model, P, x)
    gvec = model.xp.zeros_like(theta) if grad else None
    G = layout.views(gvec) if grad else None
    loss, correct, lamN = model.loss(U[-1], y, P, G)
    R = model.regularizer(layout, P, G)
    if not grad:
        return Evaluation(loss + R, loss, correct, x.shape[0])
    Lam = backward_adjoints(model, P, U, lamN)
    N = model.layers
    grads = model.step.param_grad(U[:N], Lam[1:], P.layers(), model.step_sizes(0, N))
    for g, d in zip(G.layers(), grads):
        g += d
    model.open_grad(x, Lam[0], P, G)
    return Evaluation(loss + R, loss, correct, x.shape[0], grad=gvec)


class SerialChain:
    """One chain of N steps in solver order, propagated step by step across its positions.

    Position p owns steps [bounds[p], bounds[p + 1]) and waits for its left neighbour's last
    point before stepping.  Same arguments and :meth:`solve` as :class:`~gpubraid.mgrit.MGRIT`
    (the MGRIT-only ones are accepted and ignored); rows returned: the ghost point followed by
    the owned points, as MGRIT returns them.
    """

    opts = MGRITOptions(max_levels=1)

    def __init__(self, comm: Comm, ranks, bounds, h, backend):
        self.comm, self.be = comm, backend
        self.ranks = [int(r) for r in ranks]
        self.me = self.ranks.index(comm.rank)
        self.a, self.b = int(bounds[self.me]), int(bounds[self.me + 1])
        self.h = backend.asarray(np.asarray(h)[self.a:self.b])

    def solve(self, phi, data, u0, sample_shape, warm=None, access=None, **_):
        """Rows (b − a + 1, *sample_shape) of u_a..u_b and SolveStats (0 iterations)."""
        xp, n = self.be.xp, self.b - self.a
        U = xp.empty((n + 1, *sample_shape), dtype=self.be.dtype)
        if self.me == 0:
            U[0] = u0
        else:
            self.comm.recv_into(U[0], self.ranks[self.me - 1], TAG_CHAIN)
        for i in range(n):
            U[i + 1] = phi(U[i:i + 1], tuple(d[i:i + 1] for d in data), self.h[i:i + 1])[0]
        if self.me + 1 < len(self.ranks):
            Comm.waitall([self.comm.isend(U[-1], self.ranks[self.me + 1], TAG_CHAIN)])
        stats = SolveStats(converged=True, residuals=[0.0], steps_per_level=[n], levels=1)
        return U, stats
