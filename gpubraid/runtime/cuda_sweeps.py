"""CUDA launchers that take many layers in one launch: the dense step's layer sweeps (the serial
method, every pipeline micro-batch, the one-level solves) and its chains with a right-hand side
(MGRIT's coarsest solve), ``kernels/dense.cu``; one thread per sample carries it through the
layers (widths up to :data:`~gpubraid.runtime.cuda.SWEEP_MAX_C`; for the widths of
:data:`~gpubraid.runtime.cuda.SWEEP_WIDTHS` the instances compiled for them, their state in registers).

Each launcher returns NotImplemented or False, having done nothing, when the kernels do not take
the arrays (width, layout, dtype, device): the caller then runs the per-layer launches of
:mod:`gpubraid.runtime.cuda`.  Shapes: states (n + 1, B, C) or (n, B, C), K (n, C, C), b (n, C), h (n,).
"""
from __future__ import annotations

import numpy as np

from . import cuda


def layer_stride(x, dtype, n: int, shape) -> int | None:
    """x's layer stride in elements (negative for a reversed view: the adjoint's layers in solver
    order) when x is an array (n, *shape) of ``dtype`` whose layers are each contiguous, as the
    kernels that walk layers by a stride index them (these sweeps, the host loops of
    :mod:`gpubraid.runtime.host`); else None.  One layer has no stride to speak of (``row[None]``
    has stride 0): 0."""
    if x.dtype != dtype or tuple(x.shape) != (n, *shape) or n < 1:
        return None
    step, item = x.strides[0], np.dtype(dtype).itemsize
    if not x[0].flags.c_contiguous or (n > 1 and (step == 0 or step % item)):
        return None
    return step // item if n > 1 else 0


def _kernel(kind: str, dtype, C: int):
    """The kernel dense_<kind>_kernel for ``dtype``: the instance compiled for width C when there
    is one (:data:`~gpubraid.runtime.cuda.SWEEP_WIDTHS`), else the run-time-width one."""
    cw = cuda.sweep_width(C)
    return cuda._kernel(f"dense_{kind}_kernel<{{T}}, {cw}>", dtype, cw)


def _sweep_params(U, K, b, h):
    """(n, B, C, U's layer stride, contiguous K, b, h) for a sweep of states U (n + 1, B, C), or
    None when the kernels do not take them (width above SWEEP_MAX_C, layers not C-contiguous or not
    evenly apart, dtypes or devices that differ, sizes beyond 32-bit indexing of samples)."""
    cp = cuda._cupy()
    if not isinstance(U, cp.ndarray) or U.ndim != 3 or np.dtype(U.dtype) not in cuda._DTYPE_NAMES:
        return None
    n, B, C = U.shape[0] - 1, int(U.shape[1]), int(U.shape[2])
    su = layer_stride(U, U.dtype, n + 1, (B, C))
    if n < 1 or not 0 < C <= cuda.SWEEP_MAX_C or su is None or B >= cuda._INT32_LIMIT:
        return None
    arrays = [cp.asarray(x, dtype=U.dtype, order="C") for x in (K, b, h)]
    if any(x.device.id != U.device.id for x in arrays) or [x.shape for x in arrays] != [(n, C, C), (n, C), (n,)]:
        return None
    return (n, B, C, su, *arrays)


def dense_sweep_forward(U, K, b, h, act: int, keep: bool):
    """U[1..n] from U[0] through n dense layers in one launch (U (n + 1, B, C), K (n, C, C), b (n, C),
    h (n,)); returns σ'(z) (n, B, C) when ``keep``, else None; NotImplemented (nothing done) when the
    kernel does not take these arrays (:func:`_sweep_params`)."""
    p = _sweep_params(U, K, b, h)
    if p is None:
        return NotImplemented
    n, B, C, su, K, b, h = p
    cp = cuda._cupy()
    D = cp.empty((n, B, C), dtype=U.dtype) if keep else None
    grid, block = cuda.dense_sweep_launch(B)
    with cuda._nvtx("dense_sweep_forward"):
        _kernel("sweep_forward", U.dtype, C)(
            grid, block, (U, np.int64(su), D, K, b, h, *cuda._i32(n, B, C, act)))  # None: a null σ' pointer
    return D


def dense_sweep_backward(U, Lam, K, b, h, act: int, kept, gK, gb) -> bool:
    """The adjoint sweep through n dense layers in one launch, and the layers' parameter gradients
    added into gK (n, C, C), gb (n, C).  Lam (n + 1, B, C): λ_n given, λ_{n−1..0} written; or Lam
    (B, C): λ_n, replaced by λ_0 in place.  ``kept``: :func:`dense_sweep_forward`'s σ'(z) for these U
    (used up: it is overwritten by a = σ'(z) ⊙ λ), or None (recomputed).  False (nothing done) when
    the kernel does not take these arrays."""
    p = _sweep_params(U, K, b, h)
    if p is None:
        return False
    n, B, C, su, K, b, h = p
    cp = cuda._cupy()
    if not isinstance(Lam, cp.ndarray) or Lam.dtype != U.dtype or Lam.device.id != U.device.id:
        return False
    if Lam.ndim == 2:  # λ carried through in place
        sl = 0 if Lam.shape == (B, C) and Lam.flags.c_contiguous else None
    else:
        sl = layer_stride(Lam, U.dtype, n + 1, (B, C))
    if sl is None:
        return False
    if kept is not None and (kept.shape != (n, B, C) or kept.dtype != U.dtype or not kept.flags.c_contiguous):
        kept = None  # recomputed
    A = cp.empty((n, B, C), dtype=U.dtype) if kept is None else kept
    grid, block = cuda.dense_sweep_launch(B)
    with cuda._nvtx("dense_sweep_backward"):
        _kernel("sweep_backward", U.dtype, C)(
            grid, block, (U, np.int64(su), Lam, np.int64(sl), kept, A, K, b, h, *cuda._i32(n, B, C, act)))
        dK, db = cuda._dense_grads(A, U[:-1], h)
        gK += dK
        gb += db
    return True


def _chain_params(start, V, K, b, h, G, U=None):
    """(n, B, C, V's, G's and U's layer strides, contiguous K, b, h) for a chain of n steps into V
    (n, B, C) from ``start`` (B, C), with right-hand side G (like V, or None) and linearisation
    states U (like V, or None); None when the kernels do not take them."""
    cp = cuda._cupy()
    if not isinstance(V, cp.ndarray) or V.ndim != 3 or np.dtype(V.dtype) not in cuda._DTYPE_NAMES:
        return None
    n, B, C = (int(x) for x in V.shape)
    if n < 1 or not 0 < C <= cuda.SWEEP_MAX_C or B >= cuda._INT32_LIMIT:
        return None
    others = [x for x in (start, G, U) if x is not None]
    if any(not isinstance(x, cp.ndarray) or x.dtype != V.dtype or x.device.id != V.device.id for x in others):
        return None
    if start.shape != (B, C) or not start.flags.c_contiguous:
        return None
    strides = [layer_stride(x, V.dtype, n, (B, C)) if x is not None else 0 for x in (V, G, U)]
    arrays = [cp.asarray(x, dtype=V.dtype, order="C") for x in (K, b, h)]
    if None in strides or [x.shape for x in arrays] != [(n, C, C), (n, C), (n,)]:
        return None
    return (n, B, C, *strides, *arrays)


def dense_chain_forward(u0, V, K, b, h, act: int, G=None) -> bool:
    """V[i] = Φ_i(V[i − 1]) + G[i], i = 0..n − 1, from V[−1] = u0 (B, C), in one launch;
    Φ_i(u) = u + h_i σ(K_i u + b_i); V (n, B, C); G like V or None (no right-hand side), and may be
    V itself.  False (nothing done) when the kernel does not take these arrays."""
    p = _chain_params(u0, V, K, b, h, G)
    if p is None:
        return False
    n, B, C, sv, sg, _, K, b, h = p
    grid, block = cuda.dense_sweep_launch(B)
    with cuda._nvtx("dense_chain_forward"):
        _kernel("chain_forward", V.dtype, C)(
            grid, block, (u0, V, np.int64(sv), G, np.int64(sg), K, b, h, *cuda._i32(n, B, C, act)))
    return True


def dense_chain_adjoint(w0, W, U, K, b, h, act: int, G=None) -> bool:
    """W[i] = W[i − 1] + h_i K_iᵀ (σ'(K_i U[i] + b_i) ⊙ W[i − 1]) + G[i], i = 0..n − 1, from W[−1] = w0
    (B, C), in one launch (the adjoint solve's order: layers already reversed by the caller); W, U
    (n, B, C); G like W or None, and may be W itself.  False (nothing done) when the kernel does not
    take these arrays."""
    p = _chain_params(w0, W, K, b, h, G, U)
    if p is None:
        return False
    n, B, C, sw, sg, su, K, b, h = p
    grid, block = cuda.dense_sweep_launch(B)
    with cuda._nvtx("dense_chain_adjoint"):
        _kernel("chain_adjoint", W.dtype, C)(
            grid, block, (w0, W, np.int64(sw), G, np.int64(sg), U, np.int64(su), K, b, h,
                          *cuda._i32(n, B, C, act)))
    return True
