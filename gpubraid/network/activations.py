"""Activation functions σ and their derivatives σ', written against any array module.

Each activation is a pair ``(sigma, dsigma)`` of functions ``f(xp, z) -> array`` with the shape and
dtype of ``z``.  The CUDA kernels implement the same formulas (``kernels/activations.cuh``) and use
the integer code in :data:`CODES`.

:meth:`Activation.both` gives σ(z) and σ'(z) together, as a forward step that keeps σ'(z) for its
adjoint needs them: with the same bits as ``sigma`` and ``dsigma``, but overwriting ``z`` and
computing tanh once where the activation has an in-place form (``both_``).

On NumPy, tanh is computed as 2 / (1 + exp(−2z)) − 1: NumPy's ``exp`` is vectorised where its
``tanh`` is not (on the CPU of ``bench/README.md`` 2.2× faster in float64, 1.4× in float32, for a
(5000, 32) array).  The result is tanh's to round-off in absolute terms (≤ 2 ulp of 1; for
|z| ≪ 1 the relative error grows, which a residual update u + h σ(z) with |u| ~ 1 does not see).
Other array modules (CuPy) use their own ``tanh``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserError

SMOOTH_EPS = 0.1  # SmoothReLU: quadratic (z + eps)^2 / (4 eps) on (-eps, eps), ReLU outside


@dataclass(frozen=True)
class Activation:
    name: str
    code: int  # the kernels' switch value
    sigma: Callable
    dsigma: Callable
    both_: Callable | None = None  # (xp, z, d) -> (σ(z), σ'(z) in d), z overwritten; None: sigma and dsigma

    def both(self, xp, z, d=None):
        """(σ(z), σ'(z)), each of z's shape and dtype, bit for bit ``sigma`` and ``dsigma``;
        ``z`` may be overwritten (it holds σ(z) afterwards for tanh and ReLU); σ'(z) is written into
        ``d`` when given (z's shape and dtype), else into a new array."""
        d = xp.empty_like(z) if d is None else d
        if self.both_ is not None:
            return self.both_(xp, z, d)
        d[...] = self.dsigma(xp, z)
        return self.sigma(xp, z), d


def _tanh_into(xp, z, out):
    """tanh(z) written into ``out`` (may be ``z``): 2 / (1 + exp(−2z)) − 1 on NumPy."""
    if xp is not np:
        return xp.tanh(z, out=out)
    with np.errstate(over="ignore"):  # exp(−2z) = inf for z ≪ 0 gives 2 / inf − 1 = −1
        np.multiply(z, -2, out=out)
        np.exp(out, out=out)
    out += 1
    np.divide(2, out, out=out)
    out -= 1
    return out


def _tanh(xp, z):
    return _tanh_into(xp, z, xp.empty_like(z))


def _dtanh(xp, z):
    t = _tanh(xp, z)
    return 1 - t * t


def _tanh_both(xp, z, d):
    t = _tanh_into(xp, z, z)
    xp.multiply(t, t, out=d)
    xp.subtract(1, d, out=d)  # 1 - t*t, as _dtanh
    return t, d


def _relu(xp, z):
    if xp is np:
        return _relu_into(z, _drelu(np, z), np.empty_like(z))
    return xp.maximum(z, 0)


def _relu_into(z, d, out):
    """max(z, 0) as z · [z > 0] into ``out`` (NumPy's ``maximum`` is 3× slower than a multiply).
    The same values but for z = −inf, where the product is NaN: the forward pass had already overflowed."""
    with np.errstate(invalid="ignore"):
        return np.multiply(z, d, out=out)


def _drelu(xp, z, d=None):
    d = xp.empty_like(z) if d is None else d
    if xp is np:  # the comparison written as 0.0 / 1.0 directly: no boolean array and astype pass
        return np.greater(z, 0, out=d, casting="unsafe")
    d[...] = z > 0
    return d


def _relu_both(xp, z, d):
    _drelu(xp, z, d)
    return (_relu_into(z, d, z) if xp is np else xp.maximum(z, 0, out=z)), d


def _smoothrelu(xp, z):
    e = SMOOTH_EPS
    quad = (z + e) * (z + e) / (4 * e)
    return xp.where(z <= -e, 0, xp.where(z >= e, z, quad)).astype(z.dtype, copy=False)


def _dsmoothrelu(xp, z):
    e = SMOOTH_EPS
    lin = (z + e) / (2 * e)
    return xp.where(z <= -e, 0, xp.where(z >= e, 1, lin)).astype(z.dtype, copy=False)


def _identity(xp, z):
    return z


def _didentity(xp, z):
    return xp.ones_like(z)


ACTIVATIONS = {
    "tanh": Activation("tanh", 0, _tanh, _dtanh, _tanh_both),
    "relu": Activation("relu", 1, _relu, _drelu, _relu_both),
    "smoothrelu": Activation("smoothrelu", 2, _smoothrelu, _dsmoothrelu),
    "identity": Activation("identity", 3, _identity, _didentity),
}


CODES = {name: a.code for name, a in ACTIVATIONS.items()}


def get_activation(name: str) -> Activation:
    """The activation called ``name``; UserError listing the allowed names otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise UserError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {name!r}") from None
