"""Activation functions σ and their derivatives σ', written against any array module.

Each activation is a pair ``(sigma, dsigma)`` of functions ``f(xp, z) -> array`` with the shape and
dtype of ``z``.  The CUDA kernels implement the same formulas (``kernels/activations.cuh``) and use
the integer code in :data:`CODES`.

:meth:`Activation.both` gives σ(z) and σ'(z) together, as a forward step that keeps σ'(z) for its
adjoint needs them: with the same bits as ``sigma`` and ``dsigma``, but overwriting ``z`` and
computing tanh once where the activation has an in-place form (``both_``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError

SMOOTH_EPS = 0.1  # SmoothReLU: quadratic (z + eps)^2 / (4 eps) on (-eps, eps), ReLU outside


@dataclass(frozen=True)
class Activation:
    name: str
    code: int  # the kernels' switch value
    sigma: Callable
    dsigma: Callable
    both_: Callable | None = None  # (xp, z) -> (σ(z), σ'(z)), z overwritten; None: sigma and dsigma

    def both(self, xp, z):
        """(σ(z), σ'(z)), each of z's shape and dtype, bit for bit ``sigma`` and ``dsigma``;
        ``z`` may be overwritten (it holds σ(z) afterwards for tanh and ReLU)."""
        if self.both_ is not None:
            return self.both_(xp, z)
        return self.sigma(xp, z), self.dsigma(xp, z)


def _tanh(xp, z):
    return xp.tanh(z)


def _dtanh(xp, z):
    t = xp.tanh(z)
    return 1 - t * t


def _tanh_both(xp, z):
    t = xp.tanh(z, out=z)
    d = xp.multiply(t, t)
    xp.subtract(1, d, out=d)  # 1 - t*t, as _dtanh
    return t, d


def _relu(xp, z):
    return xp.maximum(z, 0)


def _drelu(xp, z):
    return (z > 0).astype(z.dtype)


def _relu_both(xp, z):
    d = _drelu(xp, z)
    return xp.maximum(z, 0, out=z), d


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
