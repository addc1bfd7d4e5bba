"""A network as an ODE (docs/algorithm.md §1): opening layer, N residual steps, head, regulariser.

A :class:`Network` is three objects with small protocols plus the time grid:

    opening   x (B, *in_shape) -> u_0 (B, *S)             :class:`Opening` (default: σ(K x + b))
    step      u_{n+1} = u_n + h_n f(u_n; θ_n), batched over layers; the protocol of
              :mod:`gpubraid.steps` with any number of parameter groups and any state shape S
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

import copy
import importlib
import math
import sys
from dataclasses import dataclass

import numpy as np

from .activations import get_activation
from .backend import Backend
from .errors import UserError, check_positive_float, check_positive_int
from .steps import ConvStep, DenseStep, conv3x3, conv3x3_grad

KINDS = ("dense", "conv")
TASKS = ("classification", "regression")


# -- initialisation ---------------------------------------------------------------------------------
def _fan_in(shape) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _default_init(shape) -> str:
    return "normal" if len(shape) >= 2 else "zeros"


def draw_group(spec, rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """One parameter group's initial values (float64 host array of ``shape``).

    ``spec``: ``"normal"`` draws N(0, scale²/fan_in) with fan_in = prod(shape[1:]); ``"zeros"``
    draws nothing; a callable ``(rng, shape) -> array`` is called and its result times ``scale``.
    """
    shape = tuple(int(s) for s in shape)
    if callable(spec):
        out = np.asarray(spec(rng, shape), dtype=np.float64)
        if out.shape != shape:
            raise UserError(f"param_init callable returned shape {out.shape}; expected {shape}")
        return out * scale if scale != 1.0 else out
    if spec == "normal":
        return rng.standard_normal(shape) * scale / math.sqrt(_fan_in(shape))
    if spec == "zeros":
        return np.zeros(shape)
    raise UserError(f"param_init must be 'normal', 'zeros' or a callable (rng, shape); got {spec!r}")


def _inits(obj, shapes):
    specs = getattr(obj, "param_init", None)
    if specs is None:
        return tuple(_default_init(s) for s in shapes)
    if isinstance(specs, str) or callable(specs):
        specs = (specs,) * len(shapes)
    specs = tuple(specs)
    if len(specs) != len(shapes):
        raise UserError(f"{type(obj).__name__}.param_init has {len(specs)} entries for {len(shapes)} groups")
    return specs


def _names(obj, shapes):
    names = getattr(obj, "param_names", None)
    if names is None:
        return tuple(f"p{i}" for i in range(len(shapes)))
    names = tuple(names)
    if len(names) != len(shapes):
        raise UserError(f"{type(obj).__name__}.param_names has {len(names)} names for {len(shapes)} groups")
    return names


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


# -- heads ------------------------------------------------------------------------------------------
class Head:
    """Protocol of a head (output layer and loss) on u_N.

    Members (after :meth:`bind`): ``param_names``, ``param_shapes``, ``param_init``, ``task``,
    ``n_out``, and ``loss(uN, y, params, want_grad) -> (loss, n_correct, lamN, grads)``:
    uN (B, *state_shape); y the targets; ``loss`` a float (the mean over samples), ``n_correct`` an
    int (0 for regression), and when ``want_grad`` is true ``lamN`` = ∂loss/∂u_N (B, *state_shape)
    and ``grads`` a tuple of ∂loss/∂θ_head, else both None.  ``predict(uN, params)`` gives the outputs.
    """

    param_names = ("W", "c")
    param_init = ("normal", "zeros")

    def bind(self, state_shape, backend: Backend) -> "Head":
        h = copy.copy(self)
        h.state_shape = tuple(state_shape)
        h.state_size = int(np.prod(h.state_shape))
        h.be, h.xp = backend, backend.xp
        h.param_shapes = ((h.n_out, h.state_size), (h.n_out,))
        return h

    def predict(self, uN, params):
        """W flatten(u_N) + c: (B, *state_shape) -> (B, n_out)."""
        W, c = params
        return uN.reshape(uN.shape[0], -1) @ W.T + c


class Classifier(Head):
    """Softmax cross-entropy on logits W flatten(u_N) + c; targets integer labels (B,) in 0..n_classes−1.
    W (n_classes, prod(S)) ~ N(0, 1/prod(S)), c zeros."""

    task = "classification"

    def __init__(self, n_classes: int):
        self.n_classes = self.n_out = check_positive_int("n_classes", n_classes, 2)

    def loss(self, uN, y, params, want_grad=True):
        xp = self.xp
        W, _ = params
        B = uN.shape[0]
        if y.shape != (B,):
            raise UserError(f"classification targets must be integer labels of shape ({B},); got {tuple(y.shape)}")
        if B and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise UserError(f"labels must lie in 0..{self.n_classes - 1}; got {int(y.min())}..{int(y.max())}")
        z = self.predict(uN, params)
        z = z - z.max(axis=1, keepdims=True)
        ez = xp.exp(z)
        s = ez.sum(axis=1, keepdims=True)
        rows = xp.arange(B)
        loss = float(xp.mean(xp.log(s[:, 0]) - z[rows, y]))
        correct = int((z.argmax(axis=1) == y).sum())
        if not want_grad:
            return loss, correct, None, None
        p = ez / s
        p[rows, y] -= 1
        p /= B
        flat = uN.reshape(B, -1)
        return loss, correct, (p @ W).reshape(uN.shape), (p.T @ flat, p.sum(axis=0))

    def describe(self):
        return {"name": "classifier", "task": self.task, "n_classes": self.n_classes}


class Regression(Head):
    """Mean squared error of W flatten(u_N) + c against float targets y (B, n_out):
    ℓ = mean over all B·n_out entries of (pred − y)².  W ~ N(0, 1/prod(S)), c zeros."""

    task = "regression"

    def __init__(self, n_out: int):
        self.n_out = check_positive_int("n_out", n_out)

    def loss(self, uN, y, params, want_grad=True):
        xp = self.xp
        W, _ = params
        B = uN.shape[0]
        if y.size != B * self.n_out:
            raise UserError(f"regression targets must have shape ({B}, {self.n_out}); got {tuple(y.shape)}")
        y = y.reshape(B, self.n_out)
        r = self.predict(uN, params) - y
        loss = float(xp.mean(r * r))
        if not want_grad:
            return loss, 0, None, None
        p = r * (2.0 / r.size)
        flat = uN.reshape(B, -1)
        return loss, 0, (p @ W).reshape(uN.shape), (p.T @ flat, p.sum(axis=0))

    def describe(self):
        return {"name": "regression", "task": self.task, "n_out": self.n_out}


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


# -- parameter layout -------------------------------------------------------------------------------
class Params:
    """Named views into a flat parameter vector; groups a process does not hold are None.

    ``P.<name>`` for every group name of the network (``open_K``, ``K``, ``W`` ...);
    :meth:`layers`, :meth:`opening` and :meth:`head` give the groups as the tuples the step,
    opening and head protocols take.
    """

    def __init__(self, groups: dict, open_names, layer_names, head_names):
        self.__dict__["_g"] = groups
        self.__dict__["_names"] = (tuple(open_names), tuple(layer_names), tuple(head_names))

    def __getattr__(self, name):
        g = self.__dict__.get("_g", {})
        if name in g:
            return g[name]
        if any(name in n for n in self.__dict__.get("_names", ())):
            return None
        raise AttributeError(name)

    def __setattr__(self, name, value):
        raise AttributeError("Params views are read-only attributes; write into them with P.name[...] = ...")

    def __getitem__(self, name):
        return self._g.get(name)

    def names(self):
        return tuple(self._g)

    def layers(self):
        """The residual-layer parameters as the tuple the step protocol takes."""
        return tuple(self._g.get(n) for n in self._names[1])

    def opening(self):
        return tuple(self._g.get(n) for n in self._names[0])

    def head(self):
        return tuple(self._g.get(n) for n in self._names[2])


class ParamLayout:
    """Offsets of the parameter groups of layers [a, b) (+ opening, + head) in a flat vector."""

    def __init__(self, model: "Network", a: int, b: int, has_open: bool, has_class: bool):
        if not 0 <= a <= b <= model.layers:
            raise ValueError(f"layer block [{a}, {b}) outside [0, {model.layers})")
        self.model, self.a, self.b = model, a, b
        self.has_open, self.has_class = has_open, has_class
        L = b - a
        shapes = []
        if has_open:
            shapes += list(zip(model.open_names, model.opening.param_shapes))
        shapes += [(n, (L, *s)) for n, s in zip(model.layer_names, model.step.param_shapes)]
        if has_class:
            shapes += list(zip(model.head_names, model.head.param_shapes))
        self.shapes = {n: tuple(int(d) for d in s) for n, s in shapes}
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
        groups = {name: vec[lo:hi].reshape(self.shapes[name]) for name, (lo, hi) in self.offsets.items()}
        m = self.model
        return Params(groups, m.open_names, m.layer_names, m.head_names)


# -- the network ------------------------------------------------------------------------------------
class Network:
    """Opening layer, N forward-Euler residual steps u + h f(u; θ_n) on [0, T], and a head.

    Args:
        step: a residual step (protocol of :mod:`gpubraid.steps`; any number of parameter groups).
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
                raise UserError(f"step {type(step).__name__} lacks '{attr}' (see gpubraid.steps for the protocol)")
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
        self.open_shape = self.opening.param_shapes[0]


def network_for_data(meta: dict, step, *, layers: int, final_time: float, backend: Backend,
                     gamma_tik: float = 0.0, gamma_ddt: float = 0.0, opening: Opening | None = None,
                     open_activation: str = "tanh") -> Network:
    """The network for a data set: ``meta`` has ``in_shape``, ``task`` ("classification" default or
    "regression") and ``n_classes`` (classification) or ``n_out`` (regression), as in
    :meth:`gpubraid.data.Dataset.meta`; the head follows the task."""
    task = meta.get("task", "classification")
    if task == "classification":
        head = Classifier(meta["n_classes"])
    elif task == "regression":
        head = Regression(meta["n_out"])
    else:
        raise UserError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return Network(step, meta["in_shape"], layers, final_time, backend, head, opening, gamma_tik, gamma_ddt,
                   open_activation)


def import_path(obj) -> str | None:
    """``"module:qualname"`` of a class or function importable by that name, else None."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not qual or "<" in qual or mod == "__main__":
        return None
    return f"{mod}:{qual}"


def _import(path: str, what: str):
    if not isinstance(path, str) or ":" not in path:
        raise UserError(f"{what} must be an import path 'module:name'; got {path!r}")
    mod, _, qual = path.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import {what} {path!r}: {exc}") from None
    return obj


def step_from_spec(spec: dict, in_shape, backend: Backend):
    """A step from a JSON-able spec (as :meth:`Network.describe` records it under ``"step"``):

    ``{"name": "dense", "channels": C, "activation": a}``; ``{"name": "conv", "channels": C,
    "activation": a}`` (H, W from ``in_shape`` (C_in, H, W)); ``{"name": "torch", "factory":
    "module:Module", "kwargs": {...}, "state_shape": [...]}`` (a :class:`~gpubraid.torch_step.TorchStep`);
    any other name with ``"factory": "module:Class"`` and optional ``"kwargs"``: a user step built as
    ``Class(backend=backend, **kwargs)``.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise UserError(f"a step spec must be a dict with a 'name'; got {spec!r}")
    name = spec["name"]
    if name == "dense":
        return DenseStep(check_positive_int("channels", spec.get("channels")), spec.get("activation", "tanh"), backend)
    if name == "conv":
        if len(tuple(in_shape)) != 3:
            raise UserError(f"conv steps take image inputs (C_in, H, W); got {tuple(in_shape)}")
        _, H, W = in_shape
        return ConvStep(check_positive_int("channels", spec.get("channels")), H, W,
                        spec.get("activation", "tanh"), backend)
    if name == "torch":
        from .torch_step import TorchStep

        factory = _import(spec.get("factory"), "the torch step's factory")
        if "state_shape" not in spec:
            raise UserError("a torch step spec needs 'state_shape'")
        return TorchStep(factory, spec["state_shape"], backend, spec.get("module"), spec.get("kwargs"))
    if "factory" not in spec:
        raise UserError(f"step {name!r} is not built in (dense, conv, torch); give its 'factory' ('module:Class')")
    factory = _import(spec["factory"], f"the factory of step {name!r}")
    return factory(backend=backend, **dict(spec.get("kwargs") or {}))


def layer_spec(cfg, meta: dict) -> dict:
    """The step spec (see :func:`step_from_spec`) of the settings ``cfg.layer``, ``cfg.channels``
    and ``cfg.activation`` for data described by ``meta``.

    ``cfg.layer``: ``dense`` or ``conv`` (None: by the data's kind); or ``module:attr`` naming a
    ``torch.nn.Module`` class (one layer's f, built with no arguments) or a step class or factory
    called as ``attr(backend=..., state_shape=S)``, with S = (channels,) for features and
    (channels, H, W) for images (H, W those of the inputs).
    """
    name = cfg.layer or meta["kind"]
    if name in ("dense", "conv"):
        return {"name": name, "channels": cfg.channels, "activation": cfg.activation}
    in_shape = tuple(meta["in_shape"])
    state = [cfg.channels] if len(in_shape) == 1 else [cfg.channels, *in_shape[1:]]
    obj = _import(name, "layer")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        return {"name": "torch", "factory": name, "state_shape": state, "module": obj.__name__}
    return {"name": name, "factory": name, "kwargs": {"state_shape": state}}


def network_from_spec(meta: dict, spec: dict, backend: Backend) -> Network:
    """The network for a data set (``meta`` as :meth:`gpubraid.data.Dataset.meta`) from a spec.

    ``spec``: ``{"step": <step spec, see step_from_spec>, "layers": N, "final_time": T,
    "gamma_tik": 0, "gamma_ddt": 0, "opening": {"name": "dense" | "conv" | "identity",
    "activation": a}}`` (the last three optional; no opening name: :func:`default_opening`).
    :meth:`Network.describe` output is such a spec, so a described network can be rebuilt.
    For the built-in dense/conv steps the opening's activation defaults to the step's, which
    makes the network the :class:`ResNetODE` of the same settings, bit for bit.
    """
    step_spec = spec.get("step")
    step = step_from_spec(step_spec, meta["in_shape"], backend)
    ospec = spec.get("opening") or {}
    open_act = ospec.get("activation") or (
        step_spec.get("activation") if step_spec.get("name") in ("dense", "conv") else None) or "tanh"
    openings = {"dense": DenseOpening, "conv": ConvOpening}
    if ospec.get("name") in openings:
        opening = openings[ospec["name"]](open_act)
    elif ospec.get("name") == "identity":
        opening = IdentityOpening()
    elif ospec.get("name") is None:
        opening = None
    else:
        raise UserError(f"opening must be one of dense, conv, identity; got {ospec.get('name')!r}")
    net = network_for_data(meta, step, layers=spec.get("layers"), final_time=spec.get("final_time"),
                           backend=backend, gamma_tik=spec.get("gamma_tik", 0.0),
                           gamma_ddt=spec.get("gamma_ddt", 0.0), opening=opening, open_activation=open_act)
    net.step_spec = dict(step_spec)  # how to build the step again (model files)
    return net
