"""Host kernels: the dense step in C (``kernels/dense_host.c``: layer-serial sweeps through a block of
layers, MGRIT's batches of independent layers and its coarsest solve's chains), the classifier
head's softmax cross-entropy (``kernels/head_host.h``) and the dense opening layer
(``kernels/opening_host.h``), compiled on first use (:mod:`gpubraid.runtime.host_build`) and called
through ctypes.

The CPU counterpart of :mod:`gpubraid.runtime.cuda`: where CuPy compiles the ``.cu`` sources with
NVRTC, the system C compiler builds ``dense_host.c`` into a cached shared library.

Without a compiler (or with ``GPUBRAID_HOST_KERNELS=0``) nothing is compiled and the steps run their
NumPy formulas: the same numbers to round-off.  :func:`status` says which, for ``gpubraid info``.

Launchers take NumPy arrays and return NotImplemented (or False), having done nothing, when the
arrays do not fit the kernels (dtype, layout, width): the caller then runs the NumPy path.
"""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from pathlib import Path

import numpy as np

from . import cuda_sweeps
from .allocator import empty_aligned
from .host_build import build, compiler

MAX_C = 64  # kernels/dense_host.c MAX_C
ABI = 6  # kernels/dense_host.c GB_HOST_ABI: the argument lists below
ENV_SWITCH = "GPUBRAID_HOST_KERNELS"

_I64 = ctypes.c_int64
_P = ctypes.c_void_p


def _declare(lib) -> None:
    for t in ("f64", "f32"):
        fwd, bwd = getattr(lib, f"gb_dense_forward_{t}"), getattr(lib, f"gb_dense_backward_{t}")
        fwd.argtypes = [_I64, _I64, _I64, ctypes.c_int] + [_P, _I64] * 4 + [_P] + [_P, _I64] * 2
        bwd.argtypes = [_I64, _I64, _I64, ctypes.c_int] + [_P, _I64] * 5 + [_P] + [_P, _I64] * 4
        fwd.restype = bwd.restype = ctypes.c_int
        cf, ca = getattr(lib, f"gb_dense_chain_forward_{t}"), getattr(lib, f"gb_dense_chain_adjoint_{t}")
        cf.argtypes = [_I64, _I64, _I64, ctypes.c_int, _P] + [_P, _I64] * 4 + [_P]
        ca.argtypes = [_I64, _I64, _I64, ctypes.c_int, _P] + [_P, _I64] * 5 + [_P]
        cf.restype = ca.restype = ctypes.c_int
        sx = getattr(lib, f"gb_softmax_xent_{t}")
        sx.argtypes = [_I64, _I64, _I64] + [_P] * 4 + [ctypes.POINTER(ctypes.c_double), ctypes.POINTER(_I64)] + [_P] * 3
        sx.restype = ctypes.c_int
        of, og = getattr(lib, f"gb_open_forward_{t}"), getattr(lib, f"gb_open_grad_{t}")
        of.argtypes = [_I64, _I64, _I64, ctypes.c_int] + [_P] * 4
        og.argtypes = [_I64, _I64, _I64, ctypes.c_int] + [_P] * 6
        of.restype = og.restype = ctypes.c_int


@functools.cache
def _load() -> tuple[object | None, str]:
    """(library or None, what happened)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "no", "off", "false"):
        return None, f"off ({ENV_SWITCH}={os.environ[ENV_SWITCH]})"
    cc = compiler()
    if cc is None:
        return None, "no C compiler found (set CC): NumPy layer sweeps"
    try:
        path = build(cc)
        lib = ctypes.CDLL(str(path))
        lib.gb_host_abi.restype = ctypes.c_int
        if lib.gb_host_abi() != ABI:
            raise RuntimeError(f"{path.name} has calling convention {lib.gb_host_abi()}, this code {ABI}")
        _declare(lib)
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
        return None, f"not built ({exc}): NumPy layer sweeps"
    return lib, f"compiled by {' '.join([Path(cc[0]).name, *cc[1:]])} ({path})"


def library():
    """The loaded kernels, or None (see :func:`status`)."""
    return _load()[0]


def status() -> str:
    """One line: whether the host kernels run, and why not."""
    return _load()[1]


_SUFFIX = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}


def _layered(x, dtype, n: int, shape) -> int | None:
    """:func:`gpubraid.runtime.cuda_sweeps.layer_stride` of x when it is a NumPy array (the host loops take
    no other); else None."""
    return cuda_sweeps.layer_stride(x, dtype, n, shape) if type(x) is np.ndarray else None


def _ptr(x) -> int | None:
    return None if x is None else x.__array_interface__["data"][0]


def _strides(dt, n: int, B: int, C: int, states, params, grads=(), D=None) -> list | None:
    """Layer strides of ``states`` (n, B, C) (None entries skipped), ``params`` and ``grads`` ((n, C, C),
    (n, C)) and D (n, B, C); None when one does not fit the kernels."""
    if not 0 < C <= MAX_C or B < 1:
        return None
    out = [_layered(x, dt, n, (B, C)) if x is not None else 0 for x in states]
    for K, b in (params, *((grads,) if grads else ())):
        out += [_layered(K, dt, n, (C, C)), _layered(b, dt, n, (C,))]
    out.append(B * C if D is None else _layered(D, dt, n, (B, C)))
    return None if None in out else out


def _forward(U, V, K, b, h, act: int, keep: bool, G=None):
    """V[i] = U[i] + h_i σ(K_i U[i] + b_i) (+ G[i]), i = 0..n − 1 in order; U, V, G (n, B, C) (V[i] may be
    U[i + 1]; G may be V).  σ'(z) (n, B, C) when ``keep``, else None; NotImplemented (nothing done) when
    the arrays do not fit."""
    lib, dt = library(), U.dtype
    if lib is None or dt not in _SUFFIX or U.ndim != 3:
        return NotImplemented
    n, B, C = U.shape
    h = np.ascontiguousarray(h, dtype=dt)
    s = _strides(dt, n, B, C, (U, V, G), (K, b))
    if s is None or h.shape != (n,):
        return NotImplemented
    D = empty_aligned(np, (n, B, C), dt) if keep else None
    getattr(lib, f"gb_dense_forward_{_SUFFIX[dt]}")(
        n, B, C, act, _ptr(U), s[0], _ptr(V), s[1], _ptr(K), s[3], _ptr(b), s[4], _ptr(h), _ptr(D), s[5],
        _ptr(G), s[2])
    return D


def _backward(U, Lin, Lout, K, b, h, act: int, D, grads, G=None) -> bool:
    """For i = n − 1..0, a = σ'(z_i) ⊙ Lin[i]: Lout[i] = Lin[i] + h_i K_iᵀ a (Lout may be None; Lin[i] may be
    Lout[i + 1]) and, with ``grads`` = (gK, gb), h_i Σ a U[i]ᵀ and h_i Σ a added into them.  ``Lin`` may
    also be one contiguous (B, C) array with ``Lout`` the same array: λ carried down in place.  ``G``
    (like Lout, may be Lout): added to Lout[i].  False (nothing done) when the arrays do not fit."""
    lib, dt = library(), U.dtype
    if lib is None or dt not in _SUFFIX or U.ndim != 3:
        return False
    n, B, C = U.shape
    h = np.ascontiguousarray(h, dtype=dt)
    inplace = Lout is Lin
    if inplace and (type(Lin) is not np.ndarray or Lin.dtype != dt or Lin.shape != (B, C)
                    or not Lin.flags.c_contiguous):
        return False
    s = _strides(dt, n, B, C, (U, G) if inplace else (U, G, Lin, Lout), (K, b), grads, D)
    if s is None or h.shape != (n,) or (G is not None and (inplace or Lout is None)):
        return False
    sg = s.pop(1)
    if inplace:
        s[1:1] = [0, 0]
    gK, gb = grads or (None, None)
    sgk, sgb = (s[5], s[6]) if grads else (0, 0)
    getattr(lib, f"gb_dense_backward_{_SUFFIX[dt]}")(
        n, B, C, act, _ptr(U), s[0], _ptr(Lin), s[1], _ptr(Lout), s[2], _ptr(K), s[3], _ptr(b), s[4], _ptr(h),
        _ptr(D), s[-1], _ptr(gK), sgk, _ptr(gb), sgb, _ptr(G), sg)
    return True


def sweep_forward(U, K, b, h, act: int, keep: bool):
    """The chain U[i + 1] = U[i] + h_i σ(K_i U[i] + b_i), i = 0..n − 1, in place; U (n + 1, B, C), K (n, C, C),
    b (n, C), h (n,), one float dtype.  Returns σ'(z) (n, B, C) when ``keep``, else None; or
    NotImplemented (nothing done) when the kernels are not there or the arrays do not fit them."""
    if U.ndim != 3 or U.shape[0] < 2:
        return NotImplemented
    return _forward(U[:-1], U[1:], K, b, h, act, keep)


def sweep_backward(U, Lam, K, b, h, act: int, D, gK, gb) -> bool:
    """The chain Lam[i] = Lam[i + 1] + h_i K_iᵀ (σ'(z_i) ⊙ Lam[i + 1]), i = n − 1..0, in place (Lam (n + 1, B, C),
    Lam[n] given), and the layers' gradients added into gK (n, C, C), gb (n, C); σ'(z_i) from
    ``D`` (:func:`sweep_forward`'s) or recomputed when None.  False (nothing done) when the kernels are
    not there or the arrays do not fit them."""
    if U.ndim != 3 or U.shape[0] < 2 or Lam.shape != U.shape:
        return False
    return _backward(U[:-1], Lam[1:], Lam[:-1], K, b, h, act, D, (gK, gb))


def sweep_backward_through(U, lam, K, b, h, act: int, D, gK, gb) -> bool:
    """:func:`sweep_backward` without the adjoints in between: ``lam`` (B, C) holds λ_n and is replaced
    by λ_0 in place; the layers' gradients are added into gK, gb.  U, K, b, h, D as there.  False
    (nothing done) when the kernels are not there or the arrays do not fit them."""
    if U.ndim != 3 or U.shape[0] < 2 or lam.shape != U.shape[1:]:
        return False
    return _backward(U[:-1], lam, lam, K, b, h, act, D, (gK, gb))


def _takes(u) -> bool:
    """Whether the kernels are loaded and take states like ``u`` (tested before outputs are allocated;
    the layouts of the other arrays are checked by the launch)."""
    return library() is not None and type(u) is np.ndarray and u.dtype in _SUFFIX and u.ndim == 3 \
        and 0 < u.shape[2] <= MAX_C


def forward(u, K, b, h, act: int):
    """The batched step u + h σ(K u + b) of L independent layers: u (L, B, C) -> new (L, B, C), or
    NotImplemented."""
    if not _takes(u):
        return NotImplemented
    out = np.empty_like(u)
    return NotImplemented if _forward(u, out, K, b, h, act, False) is NotImplemented else out


def adjoint(u, lam, K, b, h, act: int):
    """λ + h Kᵀ (σ'(K u + b) ⊙ λ) for L independent layers: -> new (L, B, C), or NotImplemented."""
    if not _takes(u) or lam.shape != u.shape:
        return NotImplemented
    out = np.empty_like(lam)
    return out if _backward(u, lam, out, K, b, h, act, None, ()) else NotImplemented


def forward_into(u, out, K, b, h, act: int, rhs=None) -> bool:
    """out[i] = u[i] + h_i σ(K_i u[i] + b_i) (+ rhs[i]) for L independent layers, written into ``out``:
    u, out, rhs (L, B, C), views with a layer stride (MGRIT's relaxation: rows of one level); rhs may
    be out.  False (nothing done) when the kernels are not there or the arrays do not fit them."""
    return _takes(u) and _forward(u, out, K, b, h, act, False, rhs) is not NotImplemented


def adjoint_into(u, lam, out, K, b, h, act: int, rhs=None) -> bool:
    """out[i] = λ[i] + h_i K_iᵀ (σ'(K_i u[i] + b_i) ⊙ λ[i]) (+ rhs[i]) for L independent layers, written
    into ``out`` (rhs may be out); shapes and layouts as :func:`forward_into`.  False (nothing done) when
    the kernels are not there or the arrays do not fit them."""
    return _takes(u) and lam.shape == u.shape and _backward(u, lam, out, K, b, h, act, None, (), rhs)


def param_grad(u, lam, K, b, h, act: int):
    """(h Σ a uᵀ, h Σ a), a = σ'(K u + b) ⊙ λ, per layer: new (L, C, C), (L, C), or NotImplemented."""
    if not _takes(u) or lam.shape != u.shape:
        return NotImplemented
    grads = (np.zeros_like(K), np.zeros_like(b))
    return grads if _backward(u, lam, None, K, b, h, act, None, grads) else NotImplemented


def _chain(name, start, V, K, b, h, act: int, G, U=None) -> bool:
    """The chain kernel ``name`` into V (n, B, C) from ``start`` (B, C) with right-hand side G (like V, or
    None) and, for the adjoint, states U (like V); False (nothing done) when the arrays do not fit."""
    lib = library()
    if lib is None or type(V) is not np.ndarray or V.dtype not in _SUFFIX or V.ndim != 3:
        return False
    n, B, C = V.shape
    dt = V.dtype
    if type(start) is not np.ndarray or start.dtype != dt or start.shape != (B, C) or not start.flags.c_contiguous:
        return False
    s = _strides(dt, n, B, C, (V, G, U), (K, b))
    h = np.ascontiguousarray(h, dtype=dt)
    if s is None or h.shape != (n,):
        return False
    states = [_ptr(V), s[0], _ptr(G), s[1]] + ([_ptr(U), s[2]] if U is not None else [])
    getattr(lib, f"gb_dense_{name}_{_SUFFIX[dt]}")(n, B, C, act, _ptr(start), *states, _ptr(K), s[3], _ptr(b),
                                                  s[4], _ptr(h))
    return True


def chain_forward(u0, V, K, b, h, act: int, G=None) -> bool:
    """V[k] = V[k − 1] + h_k σ(K_k V[k − 1] + b_k) + G[k], k = 0..n − 1, from V[−1] = u0 (B, C): MGRIT's
    coarsest solve; V (n, B, C), G like V (may be V) or None.  False (nothing done) when the kernels are
    not there or the arrays do not fit them."""
    return _chain("chain_forward", u0, V, K, b, h, act, G)


def chain_adjoint(w0, W, U, K, b, h, act: int, G=None) -> bool:
    """W[k] = W[k − 1] + h_k K_kᵀ (σ'(K_k U[k] + b_k) ⊙ W[k − 1]) + G[k], k = 0..n − 1, from W[−1] = w0, in
    the order given (the adjoint solve's); W, U (n, B, C), G like W (may be W) or None.  False (nothing
    done) when the kernels are not there or the arrays do not fit them."""
    return _chain("chain_adjoint", w0, W, K, b, h, act, G, U)


def softmax_xent(u, y, W, c, want_grad: bool):
    """The classifier head's softmax cross-entropy (``kernels/head_host.h``): u (B, D) states, y (B,) int64
    labels, W (K, D), c (K), one float dtype, C order, D and K at most MAX_C.  Returns (loss summed over
    the samples, number correct, λ (B, D) or None, (∂W, ∂c) or None) with λ, ∂W, ∂c those of the mean
    loss; NotImplemented (nothing done) when the kernels are not there, the arrays do not fit, or a
    label lies outside 0..K − 1 (the caller's NumPy path then says which)."""
    lib = library()
    arrays = (u, y, W, c)
    if lib is None or any(type(a) is not np.ndarray or not a.flags.c_contiguous for a in arrays):
        return NotImplemented
    dt, (K, D) = u.dtype, W.shape
    B = u.shape[0]
    if dt not in _SUFFIX or W.dtype != dt or c.dtype != dt or y.dtype != np.int64 or u.shape != (B, D) \
            or y.shape != (B,) or c.shape != (K,) or not (B > 0 and D <= MAX_C and K <= MAX_C):
        return NotImplemented
    lam, gW, gc = (np.empty_like(u), np.empty_like(W), np.empty_like(c)) if want_grad else (None, None, None)
    loss, correct = ctypes.c_double(), _I64()
    if getattr(lib, f"gb_softmax_xent_{_SUFFIX[dt]}")(B, D, K, _ptr(u), _ptr(y), _ptr(W), _ptr(c), ctypes.byref(loss),
                                                     ctypes.byref(correct), _ptr(lam), _ptr(gW), _ptr(gc)):
        return NotImplemented
    return loss.value, int(correct.value), lam, None if gW is None else (gW, gc)


def _opening_fits(lib, x, K, b, *more) -> bool:
    """Whether the opening kernels take x (B, d), K (C, d), b (C) and ``more`` (each (B, C)): NumPy
    arrays of one float dtype, C order, 1 ≤ d, C ≤ MAX_C."""
    arrays = (x, K, b, *more)
    if lib is None or any(type(a) is not np.ndarray or not a.flags.c_contiguous for a in arrays):
        return False
    (C, d), B = K.shape, x.shape[0]
    return x.dtype in _SUFFIX and all(a.dtype == x.dtype for a in arrays) and x.shape == (B, d) \
        and b.shape == (C,) and all(a.shape == (B, C) for a in more) and 0 < C <= MAX_C and 0 < d <= MAX_C


def open_forward(x, K, b, act: int):
    """The dense opening σ(x Kᵀ + b) (``kernels/opening_host.h``): x (B, d), K (C, d), b (C) of one float
    dtype, C order, d and C at most MAX_C; returns u_0 (B, C), or NotImplemented (nothing done) when
    the kernels are not there or the arrays do not fit them."""
    lib = library()
    if not _opening_fits(lib, x, K, b):
        return NotImplemented
    u = empty_aligned(np, (x.shape[0], K.shape[0]), x.dtype)
    if getattr(lib, f"gb_open_forward_{_SUFFIX[x.dtype]}")(x.shape[0], K.shape[1], K.shape[0], act, _ptr(x), _ptr(K),
                                                           _ptr(b), _ptr(u)):
        return NotImplemented
    return u


def open_grad(x, lam0, K, b, act: int):
    """The dense opening's gradient (∂K (C, d), ∂b (C)) given λ_0 = ∂ℓ/∂u_0 (B, C), arrays as for
    :func:`open_forward`; NotImplemented (nothing done) when they do not fit the kernels."""
    lib = library()
    if not _opening_fits(lib, x, K, b, lam0):
        return NotImplemented
    gK, gb = np.empty_like(K), np.empty_like(b)
    if getattr(lib, f"gb_open_grad_{_SUFFIX[x.dtype]}")(x.shape[0], K.shape[1], K.shape[0], act, _ptr(x), _ptr(lam0),
                                                        _ptr(K), _ptr(b), _ptr(gK), _ptr(gb)):
        return NotImplemented
    return gK, gb
