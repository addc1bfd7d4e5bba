"""Residual steps, batched over layer intervals: the protocol every network plugs in through.

A *step* advances L independent layer intervals at once, each with its own parameters and step
size.  Shapes (S is the per-sample state shape, P_i the per-layer shape of parameter group i):

    u, lam            (L, B, *S)   states / adjoints at the start of each interval
    params            tuple of arrays (L, *P_i)
    h                 (L,)         step sizes

The protocol is five members, in the spirit of XBraid's callbacks:

    state_shape                        S
    param_shapes                       (P_0, P_1, ...)   any number of groups
    forward(u, params, h)       -> u + h f(u; θ)                          (L, B, *S)
    adjoint(u, lam, params, h)  -> lam + h (∂f/∂u)ᵀ lam, linearised at u  (L, B, *S)
    param_grad(u, lam, params, h) -> h (∂f/∂θ)ᵀ lam summed over the batch, tuple of (L, *P_i)

and optional ones that a network uses when present:

    param_names     names of the groups (default ``p0, p1, ...``); they name the layout's views
    param_init      per group ``"normal"`` (N(0, scale²/fan_in), fan_in = prod(P_i[1:]) or 1),
                    ``"zeros"``, or a callable ``(rng, shape) -> array`` (float64, ``shape``);
                    default: "normal" for groups with two or more axes, "zeros" otherwise.
                    A step may instead define ``init_layer(rng, scale) -> tuple of arrays``.
    describe()      JSON-able dict naming the step and its settings
    empty_states(shape, dtype) -> array
                    room for the states of a layer-serial sweep, (n, B, *S), in the memory layout
                    the step runs fastest on (ConvStep on the torch engine: channels-last); the
                    sweeps then hand the step views of it
    resized(state_shape) -> step
                    the same step on states of another sample shape (ConvStep: C × H' × W' maps),
                    for MGRIT levels that halve the feature maps (``spatial_levels``)
    cache_blocked   True when the step's layer-serial sweeps run faster on micro-batches whose
                    states stay in the CPU caches between the forward and the backward sweep
                    (the built-in steps on NumPy, except ConvStep on the torch engine): the
                    automatic micro-batch count then cuts the batch so (:mod:`gpubraid.runtime.resources`)

and an optional pair that layer-serial propagation (forward sweep, then backward sweep at the same
states and parameters: :mod:`gpubraid.network.sweep`) uses instead of forward / adjoint / param_grad
when a step has both, so what the forward step computed is not computed again:

    forward_keep(u, params, h, out) -> kept
        writes forward(u, params, h) into ``out`` (L, B, *S) and returns ``kept``, anything the
        step wants back in the adjoint step at the same u and params (ResidualStep: σ'(z))
    adjoint_grad(u, lam, params, h, kept, out) -> grads
        writes adjoint(u, lam, params, h) into ``out`` and returns param_grad(u, lam, params, h);
        ``kept`` is forward_keep's at the same u, params (the step may overwrite it) or None
        (recompute)

Both must agree with the three methods (:func:`gpubraid.network.selftest.check_step` checks it); the
solver and the objective never look inside ``kept``.  A step may go further and sweep a whole block
of n layers in one call (DenseStep: on NumPy the compiled C loops of :mod:`gpubraid.runtime.host`,
on CuPy one kernel launch per sweep):

    forward_block(U, params, h, keep) -> kept, or NotImplemented
        U (n + 1, B, *S): writes U[1..n] from U[0]; ``kept`` is an (n, B, *S) array (``keep``) or None
    backward_block(U, Lam, params, h, grads, kept) -> bool
        writes Lam[n − 1..0] from Lam[n] and adds the layers' param_grad into ``grads`` (n, *P_j);
        ``kept``: forward_block's or None
    backward_through(U, lam, params, h, grads, kept) -> bool
        backward_block when only its ends are wanted (the layer-serial training sweeps): ``lam``
        (B, *S) holds λ_n and is replaced by λ_0 in place; the adjoints in between are not kept

NotImplemented / False means nothing was done (these arrays do not suit the block form): the sweeps
then run the per-layer calls, with ``kept[i:i + 1]`` as layer i's.  MGRIT's coarsest solve (a chain
with a right-hand side) likewise takes each rank's rows in one call when the step has

    forward_chain(u0, V, params, h, G) -> bool
        V (n, B, *S): V[i] = forward(V[i − 1]) + G[i] from V[−1] = u0 (B, *S); G like V (may be V
        itself) or None; params (n, *P_j) and h (n,) per step
    adjoint_chain(w0, W, U, params, h, G) -> bool
        W[i] = adjoint(U[i], W[i − 1]) + G[i] in the order given (the adjoint solve's: the caller
        passes the layers reversed)

and steps row by row when they decline (False) or are missing.  MGRIT's relaxation writes each
batch of independent layers straight into the level's rows (no new array, the right-hand side
added in the same pass) when the step has

    forward_rhs(u, params, h, out, rhs) -> bool
        out[i] = forward(u[i]) + rhs[i] for L independent layers; u, out, rhs (L, B, *S) views of
        one level's rows (a layer stride), rhs None or like out (may be out)
    adjoint_rhs(u, lam, params, h, out, rhs) -> bool
        out[i] = adjoint(u[i], lam[i]) + rhs[i], likewise

and computes and adds when they decline (False) or are missing.

All arrays are float64 or float32 arrays of the backend (NumPy or CuPy), all of one dtype, and the
outputs have the dtype of ``u``.  :func:`gpubraid.network.selftest.check_step` tests a step against this
protocol.

Everything else (vectors, norms, sums, buffers) is plain arrays of the backend.  :class:`ResidualStep`
implements the three methods and the pair for f(u; K, b) = σ(K u + b) given only the linear
operator K and its transpose; :class:`DenseStep` and :class:`ConvStep` are the two built-in layers
(their products written into their own fresh arrays or ``out``, so no temporary is made for the
bias, the activation or the residual update).  Both ways (the three methods, the pair) run the same
operations, so they agree bit for bit; against the plain formulas they agree to round-off (h is
folded into DenseStep's C×C matrix, bias sums are matrix-vector products, tanh goes through exp).
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import numpy as np

from ..errors import UserError
from ..runtime.allocator import empty_aligned, empty_aligned_like
from ..runtime.backend import Backend
from . import torch_conv
from .activations import get_activation
from .conv import conv3x3, conv3x3_grad, conv3x3_t, im2col  # noqa: F401  (conv3x3*: the opening's)
from .dispatch import CudaDispatch, CudaSweeps, HostDispatch
from .rows import add_rows, batch_sum, ones


def check_arrays(step, u, params, h) -> None:
    """UserError unless u (L, B, *S), params (L, *P_i) and h (L,) fit ``step``'s shapes."""
    L = u.shape[0]
    if u.ndim != 2 + len(step.state_shape) or tuple(u.shape[2:]) != tuple(step.state_shape):
        raise UserError(f"state must have shape (L, B, {', '.join(map(str, step.state_shape))}); "
                        f"got {tuple(u.shape)}")
    names = getattr(step, "param_names", None) or [f"p{i}" for i in range(len(step.param_shapes))]
    for n, p, shp in zip(names, params, step.param_shapes):
        if tuple(p.shape) != (L, *shp):
            raise UserError(f"parameter {n} must have shape (L={L}, {', '.join(map(str, shp))}); "
                            f"got {tuple(p.shape)}")
    if tuple(h.shape) != (L,):
        raise UserError(f"step sizes must have shape (L={L},); got {tuple(h.shape)}")


class ResidualStep(ABC):
    """Forward-Euler residual step u + h·σ(K u + b), batched over layers.

    Subclasses define the linear operator through :meth:`linear`, :meth:`linear_t` and
    :meth:`linear_grad`, and how a per-layer bias of shape (L, C) broadcasts against (L, B, *S).
    """

    state_shape: tuple[int, ...]
    param_shapes: tuple[tuple[int, ...], ...]

    def __init__(self, activation: str, backend: Backend):
        self.activation = get_activation(activation)
        self.be = backend
        self.xp = backend.xp

    # -- the linear part, supplied by subclasses -------------------------------------------------
    @abstractmethod
    def linear(self, u, K):
        """K u for each layer: u (L, B, *S_in), K (L, ...) -> (L, B, *S_out)."""

    @abstractmethod
    def linear_t(self, a, K):
        """Kᵀ a for each layer: a (L, B, *S_out) -> (L, B, *S_in)."""

    @abstractmethod
    def linear_grad(self, a, u):
        """Σ_batch a ⋆ u, the gradient of <a, K u> with respect to K: -> (L, *K.shape[1:])."""

    @abstractmethod
    def bias(self, b):
        """b (L, C) as a view broadcastable against (L, B, *S)."""

    @abstractmethod
    def bias_grad(self, a):
        """Σ over batch and pixels of a (L, B, *S) -> (L, C)."""

    # -- the protocol ----------------------------------------------------------------------------
    def check(self, u, params, h) -> None:
        """Raise UserError unless u, params and h have matching layer counts and shapes."""
        check_arrays(self, u, params, h)

    def _hb(self, h, ndim):
        return h.reshape((h.shape[0],) + (1,) * (ndim - 1))

    def describe(self) -> dict:
        """JSON-able description: the step's name and settings."""
        return {"name": type(self).__name__, "activation": self.activation.name}

    @property
    def cache_blocked(self) -> bool:
        """Whether layer-serial sweeps gain from micro-batches that stay in cache: on the host."""
        return not self.be.is_gpu

    def preactivation(self, u, params):
        K, b = params
        return self.linear(u, K) + self.bias(b)

    def forward(self, u, params, h):
        self.check(u, params, h)
        out = self.xp.empty_like(u)
        self.residual_into(u, self.activation.sigma(self.xp, self.preactivation(u, params)), h, out)
        return out

    def adjoint(self, u, lam, params, h):
        self.check(u, params, h)
        if lam.shape != u.shape:
            raise UserError(f"adjoint must have the state's shape {tuple(u.shape)}; got {tuple(lam.shape)}")
        a = self.activation.dsigma(self.xp, self.preactivation(u, params)) * lam
        out = self.xp.empty_like(lam)
        self.adjoint_into(a, params[0], h, lam, out)
        return out

    def param_grad(self, u, lam, params, h):
        self.check(u, params, h)
        if lam.shape != u.shape:
            raise UserError(f"adjoint must have the state's shape {tuple(u.shape)}; got {tuple(lam.shape)}")
        a = self.activation.dsigma(self.xp, self.preactivation(u, params)) * lam
        return self._grads(a, u, h, params[0].ndim)

    def _grads(self, a, u, h, k_ndim):
        """(h ⋆ Σ a ⋆ u, h Σ a): the gradients of both groups from a = σ'(z)·λ."""
        hb = h.reshape(-1, *(1,) * (k_ndim - 1))
        return hb * self.linear_grad(a, u), h[:, None] * self.bias_grad(a)

    # -- the layer-serial pair: σ'(z) kept from the forward step for the adjoint step --------------
    def forward_keep(self, u, params, h, out):
        """forward(u, params, h) written into ``out`` (L, B, *S); returns σ'(z) (L, B, *S).  Unchecked:
        the layer-serial sweeps call it per layer on the objective's own arrays (microseconds a call
        count at small batches); :meth:`forward` checks."""
        z = self.preactivation(u, params)
        s, ds = self.activation.both(self.xp, z, empty_aligned_like(self.xp, z))
        self.residual_into(u, s, h, out)
        return ds

    def residual_into(self, u, s, h, out):
        """u + h s written into ``out``: u, s, out (L, B, *S), h (L,); ``s`` is overwritten (with h s,
        while it is in cache: one pass over ``out``)."""
        s *= self._hb(h, u.ndim)
        self.xp.add(s, u, out=out)

    def adjoint_grad(self, u, lam, params, h, kept, out):
        """adjoint(u, lam, params, h) written into ``out``; returns param_grad(u, lam, params, h).
        ``kept``: σ'(z) from :meth:`forward_keep` at (u, params), overwritten; None: recomputed."""
        if kept is None:
            self.check(u, params, h)
            kept = self.activation.dsigma(self.xp, self.preactivation(u, params))
        if lam.shape != u.shape or kept.shape != u.shape:
            raise UserError(f"adjoint must have the state's shape {tuple(u.shape)}; got {tuple(lam.shape)}")
        a = self.xp.multiply(kept, lam, out=kept)  # σ'(z)·λ
        return self.adjoint_and_grads(a, u, params[0], h, lam, out)

    def adjoint_and_grads(self, a, u, K, h, lam, out):
        """:meth:`adjoint_into` (a, K, h, lam, out), and returns :meth:`_grads` (a, u, h): one hook, so that a
        step can compute both from one pass over a."""
        self.adjoint_into(a, K, h, lam, out)
        return self._grads(a, u, h, K.ndim)

    def adjoint_into(self, a, K, h, lam, out):
        """λ + h Kᵀ a written into ``out``: a, lam, out (L, B, *S), K (L, ...), h (L,)."""
        self.xp.multiply(self.linear_t(a, K), self._hb(h, lam.ndim), out=out)
        out += lam


class DenseStep(CudaDispatch, CudaSweeps, HostDispatch, ResidualStep):
    """Dense residual layer on C features: K (C, C), b (C,), states (L, B, C)."""

    _cuda_prefix = "dense"

    def __init__(self, channels: int, activation: str, backend: Backend):
        super().__init__(activation, backend)
        self.channels = channels
        self.state_shape = (channels,)
        self.param_shapes = ((channels, channels), (channels,))

    param_names = ("K", "b")
    param_init = ("normal", "zeros")

    def describe(self) -> dict:
        return {"name": "dense", "channels": self.channels, "activation": self.activation.name}

    def linear(self, u, K):
        return self.xp.matmul(u, K.transpose(0, 2, 1))

    def preactivation(self, u, params):
        K, b = params
        z = self.linear(u, K)
        if self.xp is np:
            add_rows(z, b)
        else:
            z += self.bias(b)
        return z

    def linear_t(self, a, K):
        return self.xp.matmul(a, K)

    def adjoint_into(self, a, K, h, lam, out):
        # h folded into the C×C matrix (one pass less); the product added to λ while it is in cache
        self.xp.add(self.xp.matmul(a, K * h[:, None, None]), lam, out=out)

    def linear_grad(self, a, u):
        return self.xp.matmul(a.transpose(0, 2, 1), u)

    def bias(self, b):
        return b[:, None, :]

    def bias_grad(self, a):
        return batch_sum(self.xp, a)


class ConvStep(CudaDispatch, ResidualStep):
    """3×3 same-padding convolution on C channels of H×W images.

    K (C_out, C_in, 3, 3), b (C_out,), states (L, B, C, H, W).  Correlation convention (as in
    PyTorch's conv2d): (K u)_o(y, x) = Σ_i Σ_{dy,dx} K[o, i, dy, dx] u_i(y + dy − 1, x + dx − 1).
    """

    _cuda_prefix = "conv"

    def __init__(self, channels: int, height: int, width: int, activation: str, backend: Backend,
                 engine: str | None = None):
        super().__init__(activation, backend)
        self.channels, self.height, self.width = channels, height, width
        # float32 convolutions on PyTorch's CPU kernels when torch is there (torch_conv.load)
        self._torch = None if backend.is_gpu or backend.dtype_name != "float32" else torch_conv.load(engine)
        self.state_shape = (channels, height, width)
        self.param_shapes = ((channels, channels, 3, 3), (channels,))

    param_names = ("K", "b")
    param_init = ("normal", "zeros")

    def describe(self) -> dict:
        return {"name": "conv", "channels": self.channels, "height": self.height, "width": self.width,
                "activation": self.activation.name}

    def resized(self, state_shape) -> "ConvStep":
        """This step on maps of another size, (C, H', W'), with the same parameters (the coarse
        levels of spatial coarsening: :mod:`gpubraid.solver.space`)."""
        C, H, W = (int(x) for x in state_shape)
        if C != self.channels:
            raise UserError(f"resized: the channels stay {self.channels}; got {C}")
        out = copy.copy(self)
        out.height, out.width, out.state_shape = H, W, (C, H, W)
        return out

    def _fast(self, x) -> bool:
        return self._fast_dtype(x.dtype)

    @property
    def cache_blocked(self) -> bool:
        """On the host, except on the torch engine (its per-call cost outweighs the caches: float32
        MNIST 62 ms per step unsplit, 88 ms in 10 micro-batches; float64 220 against 133 ms)."""
        return not self.be.is_gpu and not self._fast_dtype(self.be.dtype)

    def _fast_dtype(self, dtype) -> bool:
        """Whether arrays of ``dtype`` run on the torch engine (float32 only)."""
        return self._torch is not None and np.dtype(dtype) == np.float32

    def linear(self, u, K):
        return self._torch.conv3x3(u, K) if self._fast(u) else conv3x3(self.xp, u, K)

    def preactivation(self, u, params):
        K, b = params
        return self._torch.conv3x3(u, K, b) if self._fast(u) else conv3x3(self.xp, u, K, b)

    def linear_t(self, a, K):
        return self._torch.conv3x3_t(a, K) if self._fast(a) else conv3x3_t(self.xp, a, K)

    def empty_states(self, shape, dtype):
        """States for the layer-serial sweeps: channels-last in memory on the torch engine (its
        convolutions run 1.3–1.6× faster on them than on channel-major arrays: ``bench/README.md``)."""
        return empty_aligned(self.xp, shape, dtype, (0, 1, 3, 4, 2) if self._fast_dtype(dtype) else None)

    def residual_into(self, u, s, h, out):
        if self._fast(u):
            self._torch.axpy(s, h, u, out)
        else:
            super().residual_into(u, s, h, out)

    def adjoint_into(self, a, K, h, lam, out):
        if self._fast(a):
            self._torch.conv3x3_t_residual(a, K, h, lam, out)
        else:
            super().adjoint_into(a, K, h, lam, out)

    def linear_grad(self, a, u):
        return self._torch.conv3x3_grad(a, u) if self._fast(a) else conv3x3_grad(self.xp, a, u)

    def _grads(self, a, u, h, k_ndim):
        if not self._fast(a):
            return super()._grads(a, u, h, k_ndim)
        return self._scaled(h, *self._torch.conv3x3_grads(a, u))  # both from one convolution_backward per layer

    def adjoint_and_grads(self, a, u, K, h, lam, out):
        if not self._fast(a):
            return super().adjoint_and_grads(a, u, K, h, lam, out)
        return self._scaled(h, *self._torch.adjoint_and_grads(a, u, K, h, lam, out))

    @staticmethod
    def _scaled(h, gK, gb):
        gK *= h[:, None, None, None, None]
        gb *= h[:, None]
        return gK, gb

    def bias(self, b):
        return b[:, None, :, None, None]

    def bias_grad(self, a):
        L, B, C = a.shape[:3]
        per_image = self.xp.matmul(a.reshape(L, B, C, -1), ones(self.xp, a.shape[3] * a.shape[4], a.dtype))
        return batch_sum(self.xp, per_image)  # Σ over pixels, then over the batch
