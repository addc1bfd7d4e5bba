"""Optimisers on a flat parameter vector: L-BFGS with a backtracking Armijo line search, SGD, Adam.

``theta`` is a 1-D array on a gpubraid :class:`~gpubraid.runtime.backend.Backend` (NumPy or CuPy, float64
or float32).  The optimisers use only array operators and methods (``+``, ``*``, ``**``, ``copy``,
``fill``, in-place updates), so they work on either library without importing it.

Every inner product and norm goes through the ``dot`` callable given at construction (default
:func:`local_dot`).  Distributed training, where each rank holds a slice of ``theta``, passes a dot
that sums the local products with an MPI allreduce, and ``sums``, the same reduction for a vector of
local products; the optimisers do no other reductions, so all ranks take identical decisions
(line-search acceptance, curvature-pair skipping).  L-BFGS takes its inner products in two ``sums``
calls per step (:mod:`gpubraid.training.lbfgs_memory`); given a ``dot`` but no ``sums``, one ``dot``
call per product.

A *closure* evaluates the objective: ``closure(theta) -> (f, g)`` or ``(f, g, info)``, with ``f``
a float (or 0-d array), ``g`` an array like ``theta`` and ``info`` anything the caller wants back
about that evaluation (gpubraid passes the solver statistics): :attr:`StepInfo.start` is the
``info`` of the point the step started from, also when L-BFGS reuses its cached evaluation.
:meth:`Optimizer.step` updates ``theta`` in place.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import UserError, check_positive_float, check_positive_int
from .lbfgs_memory import CurvatureMemory, host_values

Dot = Callable[[Any, Any], float]
Sums = Callable[[Any], Any]   # local values (1-D float64) -> their sums over the ranks, one reduction
Closure = Callable[[Any], tuple]

OPTIMIZERS = ("lbfgs", "sgd", "adam")


def local_dot(a, b) -> float:
    """Inner product of two arrays of equal shape on one process, as a Python float."""
    return float((a * b).sum())


@dataclass
class StepInfo:
    """What one optimiser step did.

    Attributes:
        objective: objective at the point where the step started.
        grad_norm: Euclidean norm (through ``dot``) of the gradient at that point.
        n_evals: closure calls made by this step.
        step_size: accepted line-search step (L-BFGS; 0.0 when the line search failed or the
            gradient was zero, and theta was left unchanged) or the learning rate (SGD, Adam).
        start: the closure's ``info`` at the start point (None if it returned none).
    """

    objective: float
    grad_norm: float
    n_evals: int
    step_size: float
    start: Any = None


def _check_unit_interval(name: str, value, *, closed_low: bool = True) -> float:
    """``value`` as a float in [0, 1) (or (0, 1) when ``closed_low`` is False), else UserError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    ok = (0.0 <= v < 1.0) if closed_low else (0.0 < v < 1.0)
    if not ok:
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise UserError(f"{name} must be a number in {interval}; got {value!r}")
    return v


def _evaluate(closure: Closure, theta) -> tuple[float, Any, Any]:
    out = closure(theta)
    return float(out[0]), out[1], (out[2] if len(out) > 2 else None)


class Optimizer:
    """Base class: holds the ``dot`` hook; subclasses implement :meth:`step`."""

    name = ""

    def __init__(self, dot: Dot | None = None, sums: Sums | None = None):
        if dot is not None and not callable(dot):
            raise UserError(f"dot must be a callable (a, b) -> float; got {type(dot).__name__}")
        if sums is not None and not callable(sums):
            raise UserError(f"sums must be a callable (values) -> values; got {type(sums).__name__}")
        self.dot: Dot = local_dot if dot is None else dot
        self.sums = sums

    def products(self, blocks) -> np.ndarray:
        """Inner products of ``blocks`` [(A, b), ...] (A a vector like ``theta``, or rows of them: one
        per row), float64 in order, in one ``sums`` reduction (a ``dot`` but no ``sums``: ``dot`` each)."""
        if self.sums is None and self.dot is not local_dot:
            return np.array([self.dot(a, b) for A, b in blocks for a in (A if A.ndim == 2 else (A,))], float)
        local = np.concatenate([np.atleast_1d(host_values(A @ b)) for A, b in blocks] or [np.zeros(0)])
        return local if self.sums is None else np.asarray(self.sums(local), float)

    def norm(self, a) -> float:
        """Euclidean norm of ``a`` through the ``dot`` hook."""
        return math.sqrt(max(self.dot(a, a), 0.0))

    def step(self, theta, closure: Closure) -> StepInfo:
        """Take one step, updating ``theta`` (1-D array) in place."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget all state (memory, momenta, cached evaluations)."""

    def state(self) -> tuple[dict, dict]:
        """The optimiser's state as (vectors, scalars): ``vectors`` maps names to arrays laid out
        like ``theta`` (so a caller can gather or re-split them), ``scalars`` is JSON-able."""
        return {}, {}

    def load_state(self, vectors: dict, scalars: dict, theta) -> None:
        """Restore :meth:`state` (vectors already in this process's layout); ``theta`` is the
        array that later :meth:`step` calls will receive."""


class LBFGS(Optimizer):
    """Limited-memory BFGS with a backtracking Armijo line search.

    The direction is ``-H g`` for the inverse-Hessian approximation of the last ``memory`` pairs
    ``(s, y)`` with initial matrix ``gamma I``, ``gamma = s.y / y.y`` of the newest pair, in compact
    form (:class:`~gpubraid.training.lbfgs_memory.CurvatureMemory`: two reductions a step, where
    the two-loop recursion makes 2 ``memory`` reductions in a row; the same H g).  Without
    pairs the direction is ``-g`` and the first trial step is ``initial_step * min(1, 1/|g|)``.
    A direction that is not a descent direction (``g.d >= 0`` or not finite) clears the memory
    and falls back to ``-g``.  The line search tries ``alpha = alpha0, alpha0 * backtrack, ...``
    (at most ``max_backtracks`` reductions) until ``f(x + alpha d) <= f(x) + c1 alpha g.d``.  A
    pair with ``s.y <= eps |s| |y|`` (eps = 1e-10) is not stored.

    The trial points are evaluated *in* ``theta`` (it is overwritten, then restored if the search
    fails), so a closure that reads parameters through views of ``theta`` works too.  The accepted
    point's ``(f, g)`` is cached and reused by the next :meth:`step` when it is called on the same
    ``theta`` array: call :meth:`reset` after changing ``theta`` outside the optimiser or changing
    the objective (e.g. a new mini-batch).
    """

    name = "lbfgs"
    curvature_eps = 1e-10

    def __init__(self, memory: int = 10, c1: float = 1e-4, backtrack: float = 0.5,
                 max_backtracks: int = 20, initial_step: float = 1.0, dot: Dot | None = None,
                 sums: Sums | None = None):
        super().__init__(dot, sums)
        self.memory = check_positive_int("memory", memory)
        self.c1 = _check_unit_interval("c1", c1, closed_low=False)
        self.backtrack = _check_unit_interval("backtrack", backtrack, closed_low=False)
        self.max_backtracks = check_positive_int("max_backtracks", max_backtracks, minimum=0)
        self.initial_step = check_positive_float("initial_step", initial_step)
        self.reset()

    def reset(self) -> None:
        self._memory = CurvatureMemory(self.memory)
        self._cache: tuple | None = None  # (theta object, f, g, info) at theta

    def state(self) -> tuple[dict, dict]:
        vectors, scalars = self._memory.state()
        scalars["cached"] = self._cache is not None
        if self._cache is not None:
            vectors["cache_g"] = self._cache[2]
            scalars.update(cache_f=self._cache[1], cache_info=self._cache[3])
        return vectors, scalars

    def load_state(self, vectors: dict, scalars: dict, theta) -> None:
        self.reset()
        self._memory.load(vectors, scalars, self.products)
        if scalars["cached"]:
            self._cache = (theta, scalars["cache_f"], vectors["cache_g"], scalars["cache_info"])

    def step(self, theta, closure: Closure) -> StepInfo:
        """One L-BFGS iteration on ``theta`` (1-D array, updated in place).

        Returns:
            :class:`StepInfo`; ``step_size`` is 0.0 when the gradient is zero or the line search
            found no acceptable point within ``max_backtracks`` reductions (theta is then left
            unchanged and the memory cleared; near the minimiser this happens when objective
            differences reach roundoff, and a caller should stop).

        Raises:
            FloatingPointError: the objective or gradient at the start point is not finite.
        """
        n_evals = 0
        if self._cache is not None and self._cache[0] is theta:
            f, g, info = self._cache[1:]
        else:
            f, g, info = _evaluate(closure, theta)
            g = g.copy()
            n_evals = 1
        self._cache = None
        memory = self._memory
        products = self.products([(g, g)] + memory.gradient_products(g))
        gnorm = math.sqrt(max(products[0], 0.0))
        if not math.isfinite(f) or not math.isfinite(gnorm):
            raise FloatingPointError(f"L-BFGS: objective or gradient is not finite at the current "
                                     f"point (f = {f}, |g| = {gnorm})")
        if gnorm == 0.0:
            self._cache = (theta, f, g, info)
            return StepInfo(f, 0.0, n_evals, 0.0, info)

        if memory:
            d, gd = memory.direction(g, products[0], products[1:])
            alpha = self.initial_step
            if not (math.isfinite(gd) and gd < 0.0):
                memory.clear()
        if not memory:
            d = -g
            gd = -gnorm * gnorm
            alpha = self.initial_step * min(1.0, 1.0 / gnorm)

        x0 = theta.copy()
        accepted = False
        for _ in range(self.max_backtracks + 1):
            theta[...] = x0 + alpha * d
            f_new, g_new, info_new = _evaluate(closure, theta)
            n_evals += 1
            if math.isfinite(f_new) and f_new <= f + self.c1 * alpha * gd:
                accepted = True
                break
            alpha *= self.backtrack
        if not accepted:
            theta[...] = x0
            self.reset()
            self._cache = (theta, f, g, info)
            return StepInfo(f, gnorm, n_evals, 0.0, info)

        g_new = g_new.copy()
        s = alpha * d
        y = g_new - g
        products = self.products(memory.pair_products(s, y))
        if memory.curvature_ok(products, self.curvature_eps):
            memory.add(s, y, products)
        self._cache = (theta, f_new, g_new, info_new)
        return StepInfo(f, gnorm, n_evals, alpha, info)


class SGD(Optimizer):
    """Stochastic gradient descent with (optionally Nesterov) momentum and L2 weight decay.

    With ``g' = g + weight_decay * theta``: ``v <- momentum v + g'``, then
    ``theta <- theta - lr (g' + momentum v)`` (Nesterov) or ``theta <- theta - lr v``; the
    convention of PyTorch's ``torch.optim.SGD`` (no dampening).  One closure call per step;
    ``StepInfo.objective`` and ``grad_norm`` are those of the closure (without the decay term).
    """

    name = "sgd"

    def __init__(self, lr: float, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, dot: Dot | None = None, sums: Sums | None = None):
        super().__init__(dot, sums)
        self.lr = check_positive_float("lr", lr)
        self.momentum = _check_unit_interval("momentum", momentum)
        if not isinstance(nesterov, bool):
            raise UserError(f"nesterov must be true or false; got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise UserError("nesterov=True needs momentum > 0")
        self.nesterov = nesterov
        try:
            wd = float(weight_decay)
        except (TypeError, ValueError):
            wd = float("nan")
        if not (0.0 <= wd < float("inf")):
            raise UserError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")
        self.weight_decay = wd
        self.reset()

    def reset(self) -> None:
        self._velocity = None

    def state(self) -> tuple[dict, dict]:
        return ({} if self._velocity is None else {"velocity": self._velocity}), {}

    def load_state(self, vectors: dict, scalars: dict, theta) -> None:
        self._velocity = vectors.get("velocity")

    def step(self, theta, closure: Closure) -> StepInfo:
        f, g, info = _evaluate(closure, theta)
        gnorm = self.norm(g)
        update = g + self.weight_decay * theta if self.weight_decay else g.copy()
        if self.momentum:
            if self._velocity is None:
                self._velocity = update.copy()
            else:
                self._velocity *= self.momentum
                self._velocity += update
            if self.nesterov:
                update += self.momentum * self._velocity
            else:
                update = self._velocity
        theta -= self.lr * update
        return StepInfo(f, gnorm, 1, self.lr, info)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction.

    ``m <- beta1 m + (1 - beta1) g``, ``v <- beta2 v + (1 - beta2) g^2``,
    ``theta <- theta - lr m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - beta1^t)``,
    ``v_hat = v / (1 - beta2^t)``.  One closure call per step.
    """

    name = "adam"

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 dot: Dot | None = None, sums: Sums | None = None):
        super().__init__(dot, sums)
        self.lr = check_positive_float("lr", lr)
        self.beta1 = _check_unit_interval("beta1", beta1)
        self.beta2 = _check_unit_interval("beta2", beta2)
        self.eps = check_positive_float("eps", eps)
        self.reset()

    def reset(self) -> None:
        self._m = None
        self._v = None
        self._t = 0
        self._work = None  # two scratch vectors like theta: no temporaries per step

    def state(self) -> tuple[dict, dict]:
        return ({} if self._m is None else {"m": self._m, "v": self._v}), {"t": self._t}

    def load_state(self, vectors: dict, scalars: dict, theta) -> None:
        self._m, self._v, self._t = vectors.get("m"), vectors.get("v"), scalars["t"]
        self._work = None

    def step(self, theta, closure: Closure) -> StepInfo:
        f, g, info = _evaluate(closure, theta)
        gnorm = self.norm(g)
        if self._m is None:
            self._m = theta.copy()
            self._m.fill(0)
            self._v = theta.copy()
            self._v.fill(0)
        if self._work is None or self._work[0].shape != theta.shape or self._work[0].dtype != theta.dtype:
            self._work = (theta.copy(), theta.copy())
        w1, w2 = self._work
        self._t += 1  # below: the formulas' operations in their order (same bits), into scratch vectors
        self._m *= self.beta1
        w1[...] = g
        w1 *= 1.0 - self.beta1
        self._m += w1                    # m = beta1 m + (1 - beta1) g
        self._v *= self.beta2
        w1[...] = g
        w1 *= g
        w1 *= 1.0 - self.beta2
        self._v += w1                    # v = beta2 v + (1 - beta2) g²
        m_scale, v_scale = 1.0 / (1.0 - self.beta1 ** self._t), 1.0 / (1.0 - self.beta2 ** self._t)
        w2[...] = self._v
        w2 *= v_scale
        w2 **= 0.5
        w2 += self.eps                   # sqrt(v v_scale) + eps
        w1[...] = self._m
        w1 *= self.lr * m_scale
        w1 /= w2
        theta -= w1                      # theta -= (lr m_scale) m / (sqrt(v v_scale) + eps)
        return StepInfo(f, gnorm, 1, self.lr, info)


_CLASSES = {"lbfgs": LBFGS, "sgd": SGD, "adam": Adam}


def optimizer_settings(name: str) -> dict[str, Any]:
    """The settings ``make_optimizer(name, ...)`` accepts, with their defaults
    (``inspect.Parameter.empty`` for required ones)."""
    if name not in _CLASSES:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    params = inspect.signature(_CLASSES[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "dot", "sums")}


def make_optimizer(name: str, dot: Dot | None = None, sums: Sums | None = None, **settings) -> Optimizer:
    """Build an optimiser by name.

    Args:
        name: one of :data:`OPTIMIZERS`.
        dot: inner product ``(a, b) -> float`` used for every reduction (default :func:`local_dot`).
        sums: the reduction of a vector of local inner products (default: none, or ``dot`` per product).
        **settings: constructor arguments of :class:`LBFGS`, :class:`SGD` or :class:`Adam`.

    Raises:
        UserError: unknown name, unknown or missing setting, or a setting out of range.
    """
    allowed = optimizer_settings(name)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)} for optimizer {name!r}; allowed: "
                        f"{', '.join(allowed)}")
    missing = [k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in settings]
    if missing:
        raise UserError(f"optimizer {name!r} needs the setting(s) {', '.join(missing)}")
    return _CLASSES[name](dot=dot, sums=sums, **settings)
