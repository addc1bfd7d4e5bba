"""The ResNet as an ODE (ALGORITHM.md §1): opening layer, N residual steps, classifier, regulariser.

Parameters live in one flat vector per process (so optimisers see a plain vector and distributed
dot products are one allreduce); :class:`ParamLayout` cuts it into named views:

    open_K, open_b   opening layer      dense (C, d_in), (C,);  conv (C, C_in, 3, 3), (C,)
    K, b             residual layers    (L, *step.param_shapes[0]), (L, C)  for layers a..b-1
    W, c             classifier         (n_classes, prod(state_shape)), (n_classes,)

A process holds the layers of its block [a, b); the first block also holds the opening layer, the
last one the classifier.  The serial reference uses a single block [0, N) with both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backend import Backend
from .errors import UserError, check_positive_float, check_positive_int
from .steps import ConvStep, DenseStep, ResidualStep

KINDS = ("dense", "conv")


@dataclass
class Params:
    """Named views into a flat parameter vector; groups a process does not hold are None."""

    open_K: object
    open_b: object
    K: object
    b: object
    W: object
    c: object

    def layers(self):
        """The residual-layer parameters as the tuple the step protocol takes."""
        return (self.K, self.b)


class ParamLayout:
    """Offsets of the parameter groups of layers [a, b) (+ opening, + classifier) in a flat vector."""

    def __init__(self, model: "ResNetODE", a: int, b: int, has_open: bool, has_class: bool):
        if not 0 <= a <= b <= model.layers:
            raise ValueError(f"layer block [{a}, {b}) outside [0, {model.layers})")
        self.model, self.a, self.b = model, a, b
        self.has_open, self.has_class = has_open, has_class
        L = b - a
        shapes = []
        if has_open:
            shapes += [("open_K", model.open_shape), ("open_b", (model.channels,))]
        shapes += [("K", (L, *model.step.param_shapes[0])), ("b", (L, *model.step.param_shapes[1]))]
        if has_class:
            shapes += [("W", (model.n_classes, model.state_size)), ("c", (model.n_classes,))]
        self.shapes = dict(shapes)
        self.offsets = {}
        off = 0
        for name, shp in shapes:
            n = int(np.prod(shp))
            self.offsets[name] = (off, off + n)
            off += n
        self.size = off

    def views(self, vec) -> Params:
        """Named views of ``vec`` (shape (size,)); writing a view writes the vector."""
        if vec.shape != (self.size,):
            raise ValueError(f"parameter vector must have shape ({self.size},); got {tuple(vec.shape)}")
        out = {}
        for name in ("open_K", "open_b", "K", "b", "W", "c"):
            if name in self.offsets:
                lo, hi = self.offsets[name]
                out[name] = vec[lo:hi].reshape(self.shapes[name])
            else:
                out[name] = None
        return Params(**out)


class ResNetODE:
    """A residual network read as forward Euler on u' = σ(K(t) u + b(t)).

    Args:
        kind: ``"dense"`` (states (B, C)) or ``"conv"`` (states (B, C, H, W), 3×3 same padding).
        in_shape: per-sample input shape: (d_in,) for dense, (C_in, H, W) for conv.
        channels: C, the width of every residual layer.
        layers: N ≥ 1 residual steps.
        n_classes: number of output classes.
        final_time: T > 0; uniform step h = T / N.
        activation: ``tanh``, ``relu``, ``smoothrelu`` or ``identity``.
        gamma_tik, gamma_ddt: Tikhonov and time-derivative regularisation weights (≥ 0).
        backend: where arrays live.
    """

    def __init__(self, kind: str, in_shape, channels: int, layers: int, n_classes: int,
                 final_time: float, activation: str, backend: Backend,
                 gamma_tik: float = 0.0, gamma_ddt: float = 0.0):
        if kind not in KINDS:
            raise UserError(f"network kind must be one of {', '.join(KINDS)}; got {kind!r}")
        self.kind = kind
        self.channels = check_positive_int("channels", channels)
        self.layers = check_positive_int("layers", layers)
        self.n_classes = check_positive_int("n_classes", n_classes, 2)
        self.final_time = check_positive_float("final_time", final_time)
        for name, g in (("gamma_tik", gamma_tik), ("gamma_ddt", gamma_ddt)):
            if not (float(g) >= 0 and math.isfinite(float(g))):
                raise UserError(f"{name} must be a finite number >= 0; got {g!r}")
        self.gamma_tik, self.gamma_ddt = float(gamma_tik), float(gamma_ddt)
        self.be = backend
        self.xp = backend.xp
        self.in_shape = tuple(int(s) for s in in_shape)
        C = self.channels
        if kind == "dense":
            if len(self.in_shape) != 1:
                raise UserError(f"dense networks take inputs of shape (d_in,); got {self.in_shape}")
            self.step: ResidualStep = DenseStep(C, activation, backend)
            self.open_shape = (C, self.in_shape[0])
        else:
            if len(self.in_shape) != 3:
                raise UserError(f"conv networks take inputs of shape (C_in, H, W); got {self.in_shape}")
            _, H, W = self.in_shape
            self.step = ConvStep(C, H, W, activation, backend)
            self.open_shape = (C, self.in_shape[0], 3, 3)
        self.activation = self.step.activation
        self.state_shape = self.step.state_shape
        self.state_size = int(np.prod(self.state_shape))
        self.h = np.full(self.layers, self.final_time / self.layers)  # host copy; per-step sizes

    # -- parameters -------------------------------------------------------------------------------
    def layout(self, a: int = 0, b: int | None = None, has_open: bool | None = None,
               has_class: bool | None = None) -> ParamLayout:
        """Layout of the block [a, b); by default the opening goes with a == 0, the classifier with b == N."""
        b = self.layers if b is None else b
        return ParamLayout(self, a, b, a == 0 if has_open is None else has_open,
                           b == self.layers if has_class is None else has_class)

    def init_params(self, layout: ParamLayout, seed: int = 0, scale: float = 1.0):
        """Random initial parameters for ``layout``: the same numbers whatever the block split.

        Every group draws from its own stream seeded by (seed, group id), so a layer's initial
        weights do not depend on which process holds it.  Weights ~ N(0, scale²/fan_in), biases 0.
        """
        vec = np.zeros(layout.size)
        host = layout.views(vec)
        kshape = self.step.param_shapes[0]
        fan_in = int(np.prod(kshape[1:]))
        for i, n in enumerate(range(layout.a, layout.b)):
            rng = np.random.default_rng([seed, 1, n])
            host.K[i] = rng.standard_normal(kshape) * scale / math.sqrt(fan_in)
        if layout.has_open:
            rng = np.random.default_rng([seed, 0])
            host.open_K[...] = rng.standard_normal(self.open_shape) / math.sqrt(np.prod(self.open_shape[1:]))
        if layout.has_class:
            rng = np.random.default_rng([seed, 2])
            host.W[...] = rng.standard_normal(host.W.shape) / math.sqrt(self.state_size)
        return self.be.asarray(vec)

    def step_sizes(self, a: int, b: int):
        """h_n for layers a..b-1 on the backend, shape (b - a,)."""
        return self.be.asarray(self.h[a:b])

    # -- opening layer ----------------------------------------------------------------------------
    def open_forward(self, x, P: Params):
        """u_0 = σ(K_open x + b_open): x (B, *in_shape) -> (B, *state_shape)."""
        s = self.step
        z = s.linear(x[None], P.open_K[None]) + s.bias(P.open_b[None])
        return self.activation.sigma(self.xp, z)[0]

    def open_grad(self, x, lam0, P: Params, G: Params) -> None:
        """Add the opening layer's gradient given λ_0 = ∂ℓ/∂u_0 (B, *state_shape) into G."""
        s = self.step
        z = s.linear(x[None], P.open_K[None]) + s.bias(P.open_b[None])
        a = self.activation.dsigma(self.xp, z) * lam0[None]
        G.open_K += s.linear_grad(a, x[None])[0]
        G.open_b += s.bias_grad(a)[0]

    # -- classifier and loss ----------------------------------------------------------------------
    def logits(self, uN, P: Params):
        """W flatten(u_N) + c: (B, *state_shape) -> (B, n_classes)."""
        return uN.reshape(uN.shape[0], -1) @ P.W.T + P.c

    def loss(self, uN, y, P: Params, G: Params | None = None):
        """Mean softmax cross-entropy of the classifier on u_N against integer labels y (B,).

        Returns ``(loss, n_correct, lam_N)``; ``lam_N`` = ∂ℓ/∂u_N (B, *state_shape) and the
        classifier's gradient is added into ``G`` when ``G`` is given (``lam_N`` is None otherwise).
        """
        xp = self.xp
        B = uN.shape[0]
        z = self.logits(uN, P)
        z = z - z.max(axis=1, keepdims=True)
        ez = xp.exp(z)
        s = ez.sum(axis=1, keepdims=True)
        rows = xp.arange(B)
        loss = float(xp.mean(xp.log(s[:, 0]) - z[rows, y]))
        correct = int((z.argmax(axis=1) == y).sum())
        if G is None:
            return loss, correct, None
        p = ez / s
        p[rows, y] -= 1
        p /= B
        flat = uN.reshape(B, -1)
        G.W += p.T @ flat
        G.c += p.sum(axis=0)
        return loss, correct, (p @ P.W).reshape(uN.shape)

    # -- regulariser ------------------------------------------------------------------------------
    def regularizer(self, layout: ParamLayout, P: Params, G: Params | None = None,
                    left=None, right=None) -> float:
        """This block's share of R(θ); adds ∂R/∂θ of the block into G when given.

        ``left`` = (K, b) of layer a−1 and ``right`` = (K, b) of layer b (each shaped like one layer,
        or None at the ends of the network) couple the block to its neighbours through the ddt term
        γ_ddt/2 Σ_{n≥1} ‖θ_n − θ_{n−1}‖² / h_n.  The shares of all blocks add up to R.
        """
        xp = self.xp
        a, b, N = layout.a, layout.b, self.layers
        h = self.step_sizes(a, b)
        gt, gd = self.gamma_tik, self.gamma_ddt
        R = 0.0
        for p, gp in zip(P.layers(), G.layers() if G is not None else (None, None)):
            hb = h.reshape(-1, *(1,) * (p.ndim - 1))
            if gt:
                R += 0.5 * gt * float(xp.sum(hb * p * p))
                if gp is not None:
                    gp += gt * hb * p
        if gt:
            for name in ("open_K", "open_b", "W", "c"):
                p = getattr(P, name)
                if p is not None:
                    R += 0.5 * gt * float(xp.sum(p * p))
                    if G is not None:
                        getattr(G, name)[...] += gt * p
        if gd and b > a:
            for j, (p, gp) in enumerate(zip(P.layers(), G.layers() if G is not None else (None, None))):
                # d_n = θ_n − θ_{n−1} for n = max(a,1)..b-1 ; include the left neighbour when a ≥ 1
                if a >= 1:
                    prev = xp.concatenate([left[j][None], p[:-1]], axis=0)
                    hn, cur = h, p
                else:
                    prev, cur, hn = p[:-1], p[1:], h[1:]
                d = cur - prev
                hb = hn.reshape(-1, *(1,) * (p.ndim - 1))
                R += 0.5 * gd * float(xp.sum(d * d / hb))
                if gp is None:
                    continue
                q = d / hb  # (θ_n − θ_{n−1}) / h_n for the n of this block
                gp[len(gp) - len(q):] += gd * q
                # −(θ_{n+1} − θ_n)/h_{n+1} for n = a..b-1 with n+1 ≤ N−1
                nxt = q[1:] if a >= 1 else q
                gp[: len(nxt)] -= gd * nxt
                if b < N:
                    hr = float(self.h[b])
                    gp[-1] -= gd * (right[j] - p[-1]) / hr
        return R
