"""Opening layers x (B, *in_shape) -> u_0 (B, *S): identity, σ(K x + b) dense or 3×3 conv."""
from __future__ import annotations

import copy

from ..errors import UserError
from ..runtime import host
from ..runtime.backend import Backend
from .activations import get_activation
from .steps import conv3x3, conv3x3_grad


# -- opening layers ---------------------------------------------------------------------------------
class Opening:
    """Protocol of an opening layer u_0 = opening(x; θ_open).

    Members (after :meth:`bind`): ``param_names``, ``param_shapes``, ``param_init`` (as for steps),
    ``forward(x, params) -> u0`` with x (B, *in_shape), u0 (B, *state_shape), and
    ``grad(x, lam0, params) -> tuple`` of ∂ℓ/∂θ_open given λ_0 = ∂ℓ/∂u_0 (B, *state_shape), one
    array per group shaped like ``param_shapes``.  ``describe()`` returns a JSON-able dict.
    """

    param_names: tuple = ()
    param_shapes: tuple = ()
    param_init: tuple = ()

    def bind(self, in_shape, state_shape, backend: Backend) -> "Opening":
        """A copy set up for per-sample inputs ``in_shape`` and states ``state_shape``."""
        o = copy.copy(self)
        o.in_shape, o.state_shape = tuple(in_shape), tuple(state_shape)
        o.be, o.xp = backend, backend.xp
        o._setup()
        return o

    def _setup(self) -> None:
        pass

    def describe(self) -> dict:
        return {"name": type(self).__name__}


class IdentityOpening(Opening):
    """u_0 = x (no parameters); the inputs must already have the state shape."""

    def _setup(self):
        if self.in_shape != self.state_shape:
            raise UserError(f"identity opening needs inputs of the state shape {self.state_shape}; "
                            f"got {self.in_shape}")

    def forward(self, x, params):
        return x.astype(self.be.dtype, copy=False)

    def grad(self, x, lam0, params):
        return ()

    def describe(self):
        return {"name": "identity"}


class _ActivatedOpening(Opening):
    """u_0 = σ(K x + b) for a linear map K given by the subclass (``_linear``, ``_linear_grad``);
    b has one entry per state channel."""

    param_names = ("K", "b")
    param_init = ("normal", "zeros")

    def __init__(self, activation: str = "tanh"):
        self.activation = get_activation(activation)

    def forward(self, x, params):
        K, b = params
        return self.activation.sigma(self.xp, self._z(x, K, b))[0]

    def grad(self, x, lam0, params):
        K, b = params
        a = self.activation.dsigma(self.xp, self._z(x, K, b)) * lam0[None]
        channel_free = tuple(i for i in range(1, a.ndim) if i != 2)  # batch and pixels
        return self._linear_grad(a, x[None])[0], a.sum(axis=channel_free)[0]

    def _z(self, x, K, b):
        """K x + b with a leading layer axis of 1: (1, B, *state_shape)."""
        return self._linear(x[None], K[None]) + b.reshape((1, 1, -1) + (1,) * (len(self.state_shape) - 1))

    def describe(self):
        return {"name": self.name, "activation": self.activation.name}


class DenseOpening(_ActivatedOpening):
    """u_0 = σ(K x + b): x (B, d_in) -> (B, C); K (C, d_in) ~ N(0, 1/d_in), b (C,) zeros."""

    name = "dense"

    def _setup(self):
        if len(self.in_shape) != 1 or len(self.state_shape) != 1:
            raise UserError(f"dense opening maps inputs (d_in,) to states (C,); got {self.in_shape} -> "
                            f"{self.state_shape}")
        self.param_shapes = ((self.state_shape[0], self.in_shape[0]), (self.state_shape[0],))

    def forward(self, x, params):
        """On the host, for widths and inputs up to 64, one C call (:func:`gpubraid.runtime.host.open_forward`);
        the NumPy formulas otherwise (the same numbers to round-off)."""
        fast = host.open_forward(x, *params, self.activation.code)
        return super().forward(x, params) if fast is NotImplemented else fast

    def grad(self, x, lam0, params):
        """(∂K, ∂b) by one C call where :meth:`forward` takes one (:func:`gpubraid.runtime.host.open_grad`)."""
        fast = host.open_grad(x, lam0, *params, self.activation.code)
        return super().grad(x, lam0, params) if fast is NotImplemented else fast

    def _linear(self, x, K):
        return self.xp.matmul(x, K.transpose(0, 2, 1))

    def _linear_grad(self, a, x):
        return self.xp.matmul(a.transpose(0, 2, 1), x)


class ConvOpening(_ActivatedOpening):
    """u_0 = σ(K ⋆ x + b), 3×3 same padding: x (B, C_in, H, W) -> (B, C, H, W);
    K (C, C_in, 3, 3) ~ N(0, 1/(9 C_in)), b (C,) zeros."""

    name = "conv"

    def _setup(self):
        if len(self.in_shape) != 3 or len(self.state_shape) != 3 or self.in_shape[1:] != self.state_shape[1:]:
            raise UserError(f"conv opening maps images (C_in, H, W) to states (C, H, W) of the same H, W; "
                            f"got {self.in_shape} -> {self.state_shape}")
        C = self.state_shape[0]
        self.param_shapes = ((C, self.in_shape[0], 3, 3), (C,))

    def _linear(self, x, K):
        return conv3x3(self.xp, x, K)

    def _linear_grad(self, a, x):
        return conv3x3_grad(self.xp, a, x)


def default_opening(in_shape, state_shape, activation: str = "tanh") -> Opening:
    """σ(K x + b) for (d,) -> (C,); 3×3 conv σ(K ⋆ x + b) for (C_in, H, W) -> (C, H, W); otherwise
    the identity when the shapes agree (pass ``IdentityOpening()`` to skip the opening layer always)."""
    in_shape, state_shape = tuple(in_shape), tuple(state_shape)
    if len(in_shape) == 1 and len(state_shape) == 1:
        return DenseOpening(activation)
    if len(in_shape) == 3 and len(state_shape) == 3 and in_shape[1:] == state_shape[1:]:
        return ConvOpening(activation)
    if in_shape == state_shape:
        return IdentityOpening()
    raise UserError(f"no default opening layer maps inputs {in_shape} to states {state_shape}; "
                    "pass opening=... (an Opening)")
