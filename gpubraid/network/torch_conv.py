"""The 3×3 convolutions of :class:`~gpubraid.network.steps.ConvStep` on PyTorch's CPU kernels, for
NumPy float32 arrays (shared with torch through ``torch.from_numpy``, no copies).

PyTorch's float32 convolutions (oneDNN) are 1.4–2× faster than the nine NumPy GEMMs of
:mod:`gpubraid.network.conv` on the CPU of ``bench/README.md`` ("Serial step against PyTorch");
in float64 they are not, so ConvStep uses them for float32 only.  The results equal NumPy's to
round-off (another summation order), not bit for bit.  Importing this module imports torch;
:func:`load` is how the step gets it: None when torch is not installed (NumPy does everything) or
when ``GPUBRAID_STEP_ENGINE=numpy``.
"""
from __future__ import annotations

import os

import numpy as np

ENGINE_ENV = "GPUBRAID_STEP_ENGINE"
ENGINES = ("auto", "numpy", "torch")


def load(engine: str | None = None):
    """This module when the step engine is torch, else None.

    ``engine`` (or ``$GPUBRAID_STEP_ENGINE``, default ``auto``): ``auto`` uses torch when it
    imports, ``torch`` requires it, ``numpy`` never uses it.
    """
    from ..errors import UserError

    choice = (engine or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if choice not in ENGINES:
        raise UserError(f"step engine must be one of {', '.join(ENGINES)}; got {choice!r} "
                        f"(argument or {ENGINE_ENV})")
    if choice == "numpy":
        return None
    try:
        import torch  # noqa: F401
    except ImportError:
        if choice == "torch":
            raise UserError(f"the torch step engine needs PyTorch (pip install torch); or set "
                            f"{ENGINE_ENV}=numpy") from None
        return None
    import sys
    return sys.modules[__name__]


def _t(a: np.ndarray):
    import torch
    if any(s < 0 for s in a.strides) or not a.flags.writeable:
        a = np.array(a)
    return torch.from_numpy(a)


def conv3x3(u: np.ndarray, K: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Σ K ⋆ u (+ bias) per layer: u (L, B, C_in, H, W), K (L, C_out, C_in, 3, 3), bias (L, C_out)
    -> (L, B, C_out, H, W), a new array."""
    import torch.nn.functional as F

    def one(l):
        return F.conv2d(_t(u[l]), _t(K[l]), None if bias is None else _t(bias[l]), padding=1).numpy()

    if u.shape[0] == 1:
        return one(0)[None]
    out = np.empty((u.shape[0], u.shape[1], K.shape[1], *u.shape[3:]), dtype=u.dtype)
    for l in range(u.shape[0]):
        out[l] = one(l)
    return out


def conv3x3_t(a: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Kᵀ a per layer (the transpose of :func:`conv3x3`): a (L, B, C_out, H, W) -> (L, B, C_in, H, W)."""
    import torch.nn.functional as F
    out = np.empty((a.shape[0], a.shape[1], K.shape[2], *a.shape[3:]), dtype=a.dtype)
    for l in range(a.shape[0]):
        out[l] = F.conv_transpose2d(_t(a[l]), _t(K[l]), padding=1).numpy()
    return out


def conv3x3_t_residual(a: np.ndarray, K: np.ndarray, h: np.ndarray, lam: np.ndarray, out: np.ndarray) -> None:
    """lam + h Kᵀ a per layer written into ``out``: a, lam, out (L, B, C, H, W), K (L, C, C, 3, 3),
    h (L,); Kᵀ a is ``convolution_backward``'s input gradient, as in :func:`adjoint_and_grads`, and the
    residual update one pass (``torch.add`` with ``alpha``)."""
    _backward(a, lam, K, (True, False, False), h, lam, out)  # no weight gradient: lam stands in for u's shape


def adjoint_and_grads(a, u, K, h, lam, out) -> tuple[np.ndarray, np.ndarray]:
    """:func:`conv3x3_t_residual` and :func:`conv3x3_grads` from one ``convolution_backward`` per layer
    (oneDNN reorders ``a`` once for the three results); the same bits as the two calls."""
    return _backward(a, u, K, (True, True, True), h, lam, out)


def conv3x3_grad(a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Σ_batch a ⋆ u per layer: a (L, B, C_out, H, W), u (L, B, C_in, H, W) -> (L, C_out, C_in, 3, 3)."""
    return _backward(a, u, None, (False, True, False))[0]


def conv3x3_grads(a: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`conv3x3_grad`, Σ over batch and pixels of a (L, C_out)): both from one
    ``convolution_backward`` per layer."""
    return _backward(a, u, None, (False, True, True))


def _backward(a, u, K, mask, h=None, lam=None, out=None):
    """One ``convolution_backward`` per layer for the results in ``mask`` = (Kᵀ a, weight gradient,
    bias gradient): Kᵀ a goes into ``out`` as lam + h Kᵀ a, the gradients are returned (None where
    not asked).  K (L, C_out, C_in, 3, 3) is needed only for Kᵀ a (its shape otherwise)."""
    import torch
    L, _, Co = a.shape[:3]
    Ci = u.shape[2]
    gK = np.empty((L, Co, Ci, 3, 3), dtype=a.dtype) if mask[1] else None
    gb = np.empty((L, Co), dtype=a.dtype) if mask[2] else None
    shape_only = torch.empty((Co, Ci, 3, 3), dtype=_t(a[:1]).dtype) if K is None else None
    for l in range(L):
        dx, dK, db = torch.ops.aten.convolution_backward(
            _t(a[l]), _t(u[l]), shape_only if K is None else _t(K[l]), [Co] if mask[2] else None,
            [1, 1], [1, 1], [1, 1], False, [0, 0], 1, list(mask))
        if mask[0]:
            torch.add(_t(lam[l]), dx, alpha=float(h[l]), out=_t(out[l]))
        if mask[1]:
            gK[l] = dK.numpy()
        if mask[2]:
            gb[l] = db.numpy()
    return gK, gb


def axpy(x: np.ndarray, h: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """y + h x per layer written into ``out`` in one pass: x, y, out (L, ...), h (L,)."""
    import torch
    for l in range(x.shape[0]):
        torch.add(_t(y[l]), _t(x[l]), alpha=float(h[l]), out=_t(out[l]))
