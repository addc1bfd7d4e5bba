"""Activation functions σ and their derivatives σ', written against any array module.

Each activation is a pair ``(sigma, dsigma)`` of functions ``f(xp, z) -> array`` with the shape and
dtype of ``z``.  The CUDA kernels implement the same formulas (``kernels/activations.cuh``) and use
the integer code in :data:`CODES`.
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


def _tanh(xp, z):
    return xp.tanh(z)


def _dtanh(xp, z):
    t = xp.tanh(z)
    return 1 - t * t


def _relu(xp, z):
    return xp.maximum(z, 0)


def _drelu(xp, z):
    return (z > 0).astype(z.dtype)


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
    "tanh": Activation("tanh", 0, _tanh, _dtanh),
    "relu": Activation("relu", 1, _relu, _drelu),
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
