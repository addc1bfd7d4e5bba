"""A network as an ODE (docs/algorithm.md §1): opening layer, N residual steps, head, regulariser.

A :class:`Network` is three objects with small protocols plus the time grid:

    opening   x (B, *in_shape) -> u_0 (B, *S)             :class:`Opening` (default: σ(K x + b))
    step      u_{n+1} = u_n + h_n f(u_n; θ_n), batched over layers; the protocol of
              :mod:`gpubraid.network.steps` with any number of parameter groups and any state shape S
    head      u_N (B, *S), targets -> loss, ∂loss/∂u_N   :class:`Classifier` or :class:`Regression`

Parameters live in one flat vector per process (so optimisers see a plain vector and distributed
dot products are one allreduce); :class:`ParamLayout` cuts it into named views, in this order:

    open_<name>   the opening layer's groups, e.g. open_K (C, d_in), open_b (C,)
    <name>        the step's groups, (L, *P_i) for the layers a..b-1 held, e.g. K, b
    <name>        the head's groups, e.g. W (n_out, prod(S)), c (n_out,)

A process holds the layers of its block [a, b); the first block also holds the opening layer, the
last one the head.  The serial reference uses a single block [0, N) with both.
:class:`ResNetODE` is the network of the paper (dense or 3×3 conv steps σ(K u + b), softmax
classifier) built from these pieces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError, check_positive_float, check_positive_int
from ..runtime.backend import Backend
from ..runtime.resources import held_bytes
from .heads import Classifier, Head, Regression
from .imports import import_path
from .openings import ConvOpening, DenseOpening, Opening, default_opening
from .params import ParamLayout, Params, _inits, _names, draw_group
from .steps import ConvStep, DenseStep

KINDS = ("dense", "conv")




@dataclass
class Evaluation:
    """Objective J = ℓ + R at one parameter vector, with its gradient when asked for."""

    objective: float
    loss: float
    n_correct: int
    n_samples: int
    grad: object = None  # flat vector like the parameters, or None

    @property
    def accuracy(self) -> float:
        return self.n_correct / max(self.n_samples, 1)


# -- the network ------------------------------------------------------------------------------------
class Network:
    """Opening layer, N forward-Euler residual steps u + h f(u; θ_n) on [0, T], and a head.

    Args:
        step: a residual step (protocol of :mod:`gpubraid.network.steps`; any number of parameter groups).
        in_shape: per-sample input shape, e.g. (d,) or (C_in, H, W).
        layers: N ≥ 1 residual steps.
        final_time: T > 0; uniform step h = T / N.
        backend: where arrays live (float64 or float32 NumPy/CuPy).
        head: :class:`Classifier` or :class:`Regression` (or an object with the :class:`Head` protocol).
        opening: an :class:`Opening`; default :func:`default_opening` (σ = ``open_activation``).
        gamma_tik, gamma_ddt: Tikhonov weight (all groups: per-layer ones weighted by h_n) and the
            time-derivative weight (per-layer groups), both ≥ 0 (docs/algorithm.md §1).
    """

    def __init__(self, step, in_shape, layers: int, final_time: float, backend: Backend, head: Head,
                 opening: Opening | None = None, gamma_tik: float = 0.0, gamma_ddt: float = 0.0,
                 open_activation: str = "tanh"):
        self.layers = check_positive_int("layers", layers)
        self.final_time = check_positive_float("final_time", final_time)
        for name, g in (("gamma_tik", gamma_tik), ("gamma_ddt", gamma_ddt)):
            try:
                ok = float(g) >= 0 and math.isfinite(float(g))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UserError(f"{name} must be a finite number >= 0; got {g!r}")
        self.gamma_tik, self.gamma_ddt = float(gamma_tik), float(gamma_ddt)
        self.be, self.xp = backend, backend.xp
        self.step = step
        for attr in ("state_shape", "param_shapes", "forward", "adjoint", "param_grad"):
            if not hasattr(step, attr):
                raise UserError(f"step {type(step).__name__} lacks '{attr}' (see gpubraid.network.steps for the protocol)")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.state_shape = tuple(int(s) for s in step.state_shape)
        self.state_size = int(np.prod(self.state_shape))
        if opening is None:
            opening = default_opening(self.in_shape, self.state_shape, open_activation)
        self.opening = opening.bind(self.in_shape, self.state_shape, backend)
        self.head = head.bind(self.state_shape, backend)
        self.layer_names = _names(step, step.param_shapes)
        self.layer_init = _inits(step, step.param_shapes)
        self.open_names = tuple("open_" + n for n in _names(self.opening, self.opening.param_shapes))
        self.open_init = _inits(self.opening, self.opening.param_shapes)
        self.head_names = _names(self.head, self.head.param_shapes)
        self.head_init = _inits(self.head, self.head.param_shapes)
        allnames = self.open_names + self.layer_names + self.head_names
        if len(set(allnames)) != len(allnames):
            raise UserError(f"parameter group names must be distinct; got {allnames} "
                            "(rename the step's param_names)")
        self.h = np.full(self.layers, self.final_time / self.layers)  # host copy; per-step sizes
        self.step_spec = None  # set by network_from_spec: the spec the step was built from

    @property
    def task(self) -> str:
        return self.head.task

    @property
    def n_classes(self):
        return getattr(self.head, "n_classes", None)

    @property
    def n_out(self) -> int:
        return self.head.n_out

    def describe(self) -> dict:
        """JSON-able description of the architecture (stored with a model)."""
        if self.step_spec is not None:  # built from a spec: that spec builds it again
            step = dict(self.step_spec)
        else:
            step = dict(self.step.describe()) if hasattr(self.step, "describe") else {"name": type(self.step).__name__}
        if not isinstance(self.step, (DenseStep, ConvStep)) and step.get("name") != "torch":
            step.setdefault("factory", import_path(type(self.step)))
        return {"kind": getattr(self, "kind", "custom"), "task": self.task, "in_shape": list(self.in_shape),
                "state_shape": list(self.state_shape), "layers": self.layers, "final_time": self.final_time,
                "activation": step.get("activation"), "step": step,
                "param_shapes": {n: list(s) for n, s in zip(self.layer_names, self.step.param_shapes)},
                "opening": self.opening.describe(), "head": self.head.describe(),
                "n_classes": self.n_classes, "n_out": self.n_out,
                "gamma_tik": self.gamma_tik, "gamma_ddt": self.gamma_ddt}

    # -- parameters -------------------------------------------------------------------------------
    def layout(self, a: int = 0, b: int | None = None, has_open: bool | None = None,
               has_class: bool | None = None) -> ParamLayout:
        """Layout of the block [a, b); by default the opening goes with a == 0, the head with b == N."""
        b = self.layers if b is None else b
        return ParamLayout(self, a, b, a == 0 if has_open is None else has_open,
                           b == self.layers if has_class is None else has_class)

    def init_params(self, layout: ParamLayout, seed: int = 0, scale: float = 1.0):
        """Random initial parameters for ``layout``: the same numbers whatever the block split.

        Layer n draws its groups in order from the stream seeded by (seed, 1, n) (or calls the
        step's ``init_layer(rng, scale)``); the opening draws from (seed, 0), the head from
        (seed, 2).  So a layer's initial weights do not depend on which process holds it.
        ``scale`` multiplies the residual layers' draws.  Returns a vector on the backend.
        """
        vec = np.zeros(layout.size)
        host = layout.views(vec)
        init_layer = getattr(self.step, "init_layer", None)
        for i, n in enumerate(range(layout.a, layout.b)):
            rng = np.random.default_rng([seed, 1, n])
            if init_layer is not None:
                vals = init_layer(rng, scale)
            else:
                vals = [draw_group(spec, rng, shp, scale) for spec, shp in zip(self.layer_init, self.step.param_shapes)]
            for name, v in zip(self.layer_names, vals):
                host[name][i] = v
        if layout.has_open:
            rng = np.random.default_rng([seed, 0])
            for name, spec, shp in zip(self.open_names, self.open_init, self.opening.param_shapes):
                host[name][...] = draw_group(spec, rng, shp)
        if layout.has_class:
            rng = np.random.default_rng([seed, 2])
            for name, spec, shp in zip(self.head_names, self.head_init, self.head.param_shapes):
                host[name][...] = draw_group(spec, rng, shp)
        return self.be.asarray(vec)

    def held_bytes(self, n: int) -> int:
        """Bytes a sample holds between its forward and backward sweep through ``n`` layers when the
        step is ``cache_blocked`` (else 0): :func:`gpubraid.runtime.resources.held_bytes`."""
        return held_bytes(n, self.state_size * np.dtype(self.be.dtype).itemsize,
                          getattr(self.step, "cache_blocked", False))

    def step_sizes(self, a: int, b: int):
        """h_n for layers a..b-1 on the backend, shape (b - a,)."""
        return self.be.asarray(self.h[a:b])

    # -- opening layer ----------------------------------------------------------------------------
    def open_forward(self, x, P: Params):
        """u_0 = opening(x): x (B, *in_shape) -> (B, *state_shape)."""
        return self.opening.forward(x, P.opening())

    def open_grad(self, x, lam0, P: Params, G: Params) -> None:
        """Add the opening layer's gradient given λ_0 = ∂ℓ/∂u_0 (B, *state_shape) into G."""
        for g, d in zip(G.opening(), self.opening.grad(x, lam0, P.opening())):
            g += d

    # -- head and loss ----------------------------------------------------------------------------
    def logits(self, uN, P: Params):
        """The head's outputs W flatten(u_N) + c: (B, *state_shape) -> (B, n_out)."""
        return self.head.predict(uN, P.head())

    def loss(self, uN, y, P: Params, G: Params | None = None):
        """The head's loss on u_N against targets y (labels (B,) or values (B, n_out)).

        Returns ``(loss, n_correct, lam_N)``; ``lam_N`` = ∂ℓ/∂u_N (B, *state_shape) and the head's
        gradient is added into ``G`` when ``G`` is given (``lam_N`` is None otherwise).
        """
        loss, correct, lamN, grads = self.head.loss(uN, y, P.head(), G is not None)
        if G is not None:
            for g, d in zip(G.head(), grads):
                g += d
        return loss, correct, lamN

    # -- regulariser ------------------------------------------------------------------------------
    def regularizer(self, layout: ParamLayout, P: Params, G: Params | None = None,
                    left=None, right=None) -> float:
        """This block's share of R(θ); adds ∂R/∂θ of the block into G when given.

        ``left`` = the groups of layer a−1 and ``right`` = those of layer b (each shaped like one
        layer, or None at the ends of the network) couple the block to its neighbours through the
        ddt term γ_ddt/2 Σ_{n≥1} ‖θ_n − θ_{n−1}‖² / h_n.  The shares of all blocks add up to R.
        """
        xp = self.xp
        a, b, N = layout.a, layout.b, self.layers
        h = self.step_sizes(a, b)
        gt, gd = self.gamma_tik, self.gamma_ddt
        none = (None,) * len(self.layer_names)
        R = 0.0
        for p, gp in zip(P.layers(), G.layers() if G is not None else none):
            hb = h.reshape(-1, *(1,) * (p.ndim - 1))
            if gt:
                R += 0.5 * gt * float(xp.sum(hb * p * p))
                if gp is not None:
                    gp += gt * hb * p
        if gt:
            for name in self.open_names + self.head_names:
                p = P[name]
                if p is not None:
                    R += 0.5 * gt * float(xp.sum(p * p))
                    if G is not None:
                        G[name][...] += gt * p
        if gd and b > a:
            for j, (p, gp) in enumerate(zip(P.layers(), G.layers() if G is not None else none)):
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


class ResNetODE(Network):
    """A residual network read as forward Euler on u' = σ(K(t) u + b(t)) with a softmax classifier.

    Args:
        kind: ``"dense"`` (states (B, C)) or ``"conv"`` (states (B, C, H, W), 3×3 same padding).
        in_shape: per-sample input shape: (d_in,) for dense, (C_in, H, W) for conv.
        channels: C, the width of every residual layer.
        layers: N ≥ 1 residual steps.
        n_classes: number of output classes.
        final_time: T > 0; uniform step h = T / N.
        activation: ``tanh``, ``relu``, ``smoothrelu`` or ``identity`` (steps and opening layer).
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
        check_positive_int("layers", layers)
        head = Classifier(n_classes)
        check_positive_float("final_time", final_time)
        in_shape = tuple(int(s) for s in in_shape)
        C = self.channels
        if kind == "dense":
            if len(in_shape) != 1:
                raise UserError(f"dense networks take inputs of shape (d_in,); got {in_shape}")
            step = DenseStep(C, activation, backend)
            opening = DenseOpening(activation)
        else:
            if len(in_shape) != 3:
                raise UserError(f"conv networks take inputs of shape (C_in, H, W); got {in_shape}")
            _, H, W = in_shape
            step = ConvStep(C, H, W, activation, backend)
            opening = ConvOpening(activation)
        super().__init__(step, in_shape, layers, final_time, backend, head, opening, gamma_tik, gamma_ddt)
        self.activation = self.step.activation


def network_for_data(meta: dict, step, *, layers: int, final_time: float, backend: Backend,
                     gamma_tik: float = 0.0, gamma_ddt: float = 0.0, opening: Opening | None = None,
                     open_activation: str = "tanh") -> Network:
    """The network for a data set: ``meta`` has ``in_shape``, ``task`` ("classification" default or
    "regression") and ``n_classes`` (classification) or ``n_out`` (regression), as in
    :meth:`gpubraid.data.dataset.Dataset.meta`; the head follows the task."""
    heads = {"classification": lambda: Classifier(meta["n_classes"]), "regression": lambda: Regression(meta["n_out"])}
    task = meta.get("task", "classification")
    if task not in heads:
        raise UserError(f"task must be one of {', '.join(heads)}; got {task!r}")
    head = heads[task]()
    return Network(step, meta["in_shape"], layers, final_time, backend, head, opening, gamma_tik, gamma_ddt,
                   open_activation)
