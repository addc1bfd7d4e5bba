"""The single-process layer-serial reference every parallel result is compared with.

Forward: u_0 = opening(x), u_{n+1} = Φ_n(u_n) one layer at a time.  Backward: λ_N = ∂ℓ/∂u_N,
λ_n = (∂Φ_n/∂u)ᵀ λ_{n+1} (the step's ``adjoint``) one layer at a time; then the gradients of all
N layers, every parameter group, in one batched ``param_grad`` call (docs/algorithm.md §2).
"""
from __future__ import annotations

from .network import Evaluation, Network
from .params import ParamLayout


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
