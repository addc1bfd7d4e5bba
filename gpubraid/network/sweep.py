"""Layer-serial sweeps of a step through a block of layers: the forward pass and the backward pass
with the layer gradients, as the layer-serial training methods run them.

A step with the optional ``forward_block`` / ``backward_block`` (:mod:`gpubraid.network.steps`) runs
the whole block in one call each, when it can for these arrays.  Otherwise a step with the optional
pair ``forward_keep`` / ``adjoint_grad`` keeps from each forward step what its adjoint step needs
(the built-in steps: σ'(z)), and computes each layer's adjoint and gradient in one call; other steps
are called through forward / adjoint and one batched ``param_grad`` after the sweep.  Either way
the results are the protocol's: the block form and the pair must agree with the three methods.

Shapes: n layers, states and adjoints ``U``, ``Lam`` (n + 1, B, *S) (row i is u_i, λ_i), parameter
groups ``layers`` (n, *P_j), step sizes ``h`` (n,), gradient groups ``grads`` (n, *P_j).

:func:`forward_through` is the forward pass of inference, which keeps only the last state: the
block form over sample blocks small enough that all n + 1 rows of one block stay in cache (on a
GPU: blocks of up to 256 MiB of states, one launch each); a ``cache_blocked`` step without it
layer by layer over sample blocks of LAYER_BYTES, which stay in cache from layer to layer.
"""
from __future__ import annotations

import numpy as np

from ..runtime.allocator import empty_aligned

#: Bytes of states (all n + 1 rows) that one block call of :func:`forward_through` holds: on the
#: CPU what stays in cache; on a GPU, where each call is a kernel launch and caches do not decide,
#: as much as is worth holding at once.
THROUGH_BYTES = 1 << 23
GPU_THROUGH_BYTES = 1 << 28
#: Bytes of one state per sample block when a ``cache_blocked`` step without the block form runs
#: :func:`forward_through` layer by layer on the host (MNIST conv, 8 channels: 10 images; 55 µs
#: per image and layer against 95 for chunks of 650 images, ``bench/README.md``).
LAYER_BYTES = 1 << 19


def _layer(layers, i):
    return tuple([p[i:i + 1] for p in layers])


def empty_states(step, xp, shape, dtype):
    """Uninitialised states (n + 1, B, *S) in the step's preferred layout (its optional
    ``empty_states``), else C order on a cache line."""
    alloc = getattr(step, "empty_states", None)
    return alloc(shape, dtype) if callable(alloc) else empty_aligned(xp, shape, dtype)


def forward_through(step, xp, u, layers, h):
    """u_n (B, *S) from u_0 = ``u`` through the n layers (``u`` is not modified).

    With the step's ``forward_block``: one call per sample block of at most THROUGH_BYTES of
    states (GPU_THROUGH_BYTES when ``xp`` is not NumPy); otherwise (or when the block form
    declines these arrays) one batched ``forward`` call per layer, over sample blocks of
    LAYER_BYTES when the step is ``cache_blocked`` and ``xp`` is NumPy.  The block form gives the
    per-layer calls' values to round-off; the sample blocks do not change a sample's values.
    """
    n, B = len(h), u.shape[0]
    block = getattr(step, "forward_block", None)
    if callable(block) and n > 1 and B > 0:
        budget = THROUGH_BYTES if xp is np else GPU_THROUGH_BYTES
        m = int(max(1, min(B, budget // ((n + 1) * u[0].nbytes))))
        U = empty_states(step, xp, (n + 1, m, *u.shape[1:]), u.dtype)
        out = None
        for lo in range(0, B, m):
            k = min(B, lo + m) - lo
            V = U[:, :k]
            V[0] = u[lo:lo + k]
            if block(V, layers, h, False) is NotImplemented:
                break
            if out is None:
                out = U[-1].copy() if k == B else xp.empty_like(u)
            if k < B:
                out[lo:lo + k] = V[-1]
        else:
            return out
    m = max(1, LAYER_BYTES // max(1, u.itemsize * int(np.prod(u.shape[1:]))))
    if xp is np and m < B and getattr(step, "cache_blocked", False):
        out = np.empty_like(u)
        for lo in range(0, B, m):
            out[lo:lo + m] = _layer_by_layer(step, u[lo:lo + m], layers, h)
        return out
    return _layer_by_layer(step, u, layers, h)


def _layer_by_layer(step, u, layers, h):
    for i in range(len(h)):
        u = step.forward(u[None], _layer(layers, i), h[i:i + 1])[0]
    return u


def forward_sweep(step, U, layers, h, keep: bool = False):
    """U[i + 1] = forward(U[i]) for i = 0..n − 1, written into ``U``.

    Returns what the step kept for :func:`backward_sweep` at these states and parameters when
    ``keep`` (a list of n per-layer ``kept``, or the block form's (n, B, *S) array); None otherwise.
    """
    block = getattr(step, "forward_block", None)
    if callable(block):
        kept = block(U, layers, h, keep)
        if kept is not NotImplemented:
            return kept
    n = U.shape[0] - 1
    if not (keep and _has_pair(step)):
        for i in range(n):
            U[i + 1] = step.forward(U[i:i + 1], _layer(layers, i), h[i:i + 1])[0]
        return None
    return [step.forward_keep(U[i:i + 1], _layer(layers, i), h[i:i + 1], U[i + 1:i + 2]) for i in range(n)]


def backward_sweep(step, U, Lam, layers, h, grads, kept=None) -> None:
    """Lam[i] = adjoint(U[i], Lam[i + 1]) for i = n − 1..0, written into ``Lam`` (Lam[n] given),
    and every layer's param_grad(U[i], Lam[i + 1]) added into ``grads``.

    ``kept``: :func:`forward_sweep`'s for these U and ``layers`` (used up), or None.
    """
    block = getattr(step, "backward_block", None)
    if callable(block) and block(U, Lam, layers, h, grads, kept):
        return
    n = U.shape[0] - 1
    if kept is not None and not isinstance(kept, list):  # a block forward's (n, B, *S) array
        kept = [kept[i:i + 1] for i in range(n)]
    if not _has_pair(step):
        for i in range(n - 1, -1, -1):
            Lam[i] = step.adjoint(U[i:i + 1], Lam[i + 1:i + 2], _layer(layers, i), h[i:i + 1])[0]
        for g, d in zip(grads, step.param_grad(U[:-1], Lam[1:], layers, h)):
            g += d
        return
    for i in range(n - 1, -1, -1):
        k = None if kept is None else kept[i]
        d = step.adjoint_grad(U[i:i + 1], Lam[i + 1:i + 2], _layer(layers, i), h[i:i + 1], k, Lam[i:i + 1])
        if kept is not None:
            kept[i] = None  # free it as soon as it is used
        for g, di in zip(grads, d):
            g[i:i + 1] += di


def backward_through(step, U, lam, layers, h, grads, kept=None) -> bool:
    """:func:`backward_sweep` keeping only its ends: ``lam`` (B, *S) holds λ_n and is replaced by λ_0,
    and every layer's param_grad is added into ``grads``; the adjoints in between are not kept.

    By the step's optional ``backward_through`` (one array carried down in place, no (n + 1, B, *S)
    array written); False, with nothing done, when the step has none or it declines these arrays:
    the caller then runs :func:`backward_sweep`.  ``kept`` as there (used up only on True).
    """
    through = getattr(step, "backward_through", None)
    return callable(through) and bool(through(U, lam, layers, h, grads, kept))


def _has_pair(step) -> bool:
    return callable(getattr(step, "forward_keep", None)) and callable(getattr(step, "adjoint_grad", None))
