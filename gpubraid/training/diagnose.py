"""Why a run went wrong, in one line: divergence (what blew up, and the option that causes it)
and a stalled objective (what keeps it from moving).

Divergence (:func:`diverged`) is blamed on the first of these that holds:

* the initial parameters (iteration 1): not finite or above :data:`HUGE` (``--init-scale``, ``--init``);
* the regulariser: R(θ) not finite or itself exploding while the loss is not (``--gamma-tik``,
  ``--gamma-ddt``);
* the step size h = T/N: at iteration 1, the forward states blow up through the layers
  (``--final-time``, ``--layers``, ``--init-scale``);
* the optimiser's steps: later, the parameters or the states it produced blow up (``--lr`` for
  SGD/Adam; L-BFGS: ``--final-time``, the regularisers).

Numerical warnings of the library (NumPy overflow) are kept off stderr: the cause goes into the
one line instead.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import Diverged

#: An objective this many times larger than the first one (and than 1) counts as divergence.
EXPLOSION_FACTOR = 1e4


#: Values above this count as blown up (their squares overflow float64 long before 1e308).
HUGE = 1e30


#: A stall: over the last :data:`STALL_ITERS` iterations the objective changed by at most
#: :data:`STALL_RTOL` of itself, and since the first iteration by less than half (a run that has
#: converged after real progress is no stall).
STALL_ITERS = 10


STALL_RTOL = 1e-2


def _first_bad(trainer, rows, first_layer: int) -> float:
    """Global index of the first non-finite or huge row of ``rows`` (inf when none), all ranks."""
    xp = trainer.be.xp
    flat = rows.reshape(rows.shape[0], -1)
    bad = ~xp.isfinite(flat).all(axis=1) | (xp.abs(xp.nan_to_num(flat)).max(axis=1) > HUGE)
    where = np.flatnonzero(trainer.be.to_host(bad))
    local = first_layer + int(where[0]) if where.size else math.inf
    return -trainer.comm.allreduce_max(-local)


def _largest(trainer) -> float:
    """max |θ| over all ranks (inf when some value is not finite)."""
    xp, be = trainer.be.xp, trainer.be
    local = float(be.scalar(xp.abs(trainer.theta).max())) if trainer.theta.size else 0.0
    if not math.isfinite(float(be.scalar(xp.abs(trainer.theta).sum()))):
        local = math.inf
    return trainer.comm.allreduce_max(local)


def cause(trainer, it: int) -> str:
    """The one-line cause of a divergence at (0-based) iteration ``it``; every rank takes part."""
    cfg, model = trainer.cfg, trainer.model
    h = model.final_time / model.layers
    big = _largest(trainer)
    init = f"--init {cfg.init}" if cfg.init else f"--init-scale {cfg.init_scale:g}"
    if it == 0 and not big <= HUGE:
        return (f"the initial parameters are too large (largest parameter {big:.1e}); option that matters: {init}")
    lr = ("--lr " + format(cfg.lr, "g")) if cfg.optimizer != "lbfgs" else "--final-time, --gamma-tik"
    if not big <= HUGE:
        return (f"the optimiser's step made the parameters blow up (largest parameter {big:.1e}); options that "
                f"matter: {lr}")
    lp, data = trainer.lp_serial, trainer.data
    k = min(data.n_train, 256)
    x = None if data.x_train is None else data.x_train[:k]
    y = None if data.y_train is None else data.y_train[:k]
    with np.errstate(all="ignore"):
        lp.evaluate(trainer.theta, x, y, k, grad=True)
    layer = _first_bad(trainer, lp.U[1:], lp.a + 1)
    if math.isfinite(layer):
        where = f"the forward states blow up from layer {int(layer)} of {model.layers}"
        if it == 0:
            return (f"{where} at the initial parameters (largest parameter {big:.1e}): the step size h = T/N = "
                    f"{h:.3g} is too large for them; options that matter: --final-time, --layers, {init.split()[0]}")
        return f"{where} after the optimiser's steps (largest parameter {big:.1e}); options that matter: {lr}"
    with np.errstate(all="ignore"):
        reg = trainer.lp.regularizer(trainer.theta)
    if not (math.isfinite(reg) and abs(reg) <= HUGE):
        return (f"the regulariser overflowed (R(θ) = {reg:.3g} with gamma_tik {model.gamma_tik:g}, "
                f"gamma_ddt {model.gamma_ddt:g}, largest parameter {big:.1e}); options that matter: --gamma-tik, "
                f"--gamma-ddt")
    layer = _first_bad(trainer, lp.Lam[::-1][:-1], lp.a)
    if math.isfinite(layer):
        return (f"the adjoints blow up from layer {int(layer)} of {model.layers} (h = T/N = {h:.3g}); "
                f"options that matter: --final-time, --layers, {lr if it else init.split()[0]}")
    if it == 0:
        return f"the loss at the initial parameters is not finite; option that matters: {init}"
    return (f"the optimiser's steps grew the weights (largest parameter {big:.1e}, states finite); options "
            f"that matter: {lr}")


def check_divergence(trainer, it: int, objective: float, first: float) -> None:
    """Raise :class:`Diverged` on a non-finite or exploding objective, naming the cause."""
    if math.isfinite(objective) and objective <= EXPLOSION_FACTOR * max(abs(first), 1.0):
        return
    what = ("not finite" if not math.isfinite(objective)
            else f"{objective / max(abs(first), 1.0):.1e} times the first")
    raise Diverged(f"objective {objective:.6g} at iteration {it + 1} is {what}: {cause(trainer, it)}")


def stall(trainer, history: list) -> str | None:
    """A warning line when the objective has not moved (see :data:`STALL_ITERS`) in ``history``,
    naming the likely cause; else None."""
    if len(history) < STALL_ITERS + 1:
        return None
    js = [e["objective"] for e in history[-STALL_ITERS - 1:]]
    first, now = history[0]["objective"], js[-1]
    if max(js) - min(js) > STALL_RTOL * abs(now) or first - now > 0.5 * abs(first):
        return None
    cfg, model = trainer.cfg, trainer.model
    h = model.final_time / model.layers
    head = (f"the objective has stayed near {now:.6g} for {STALL_ITERS} iterations (first {first:.6g}, "
            f"|g| {history[-1]['grad_norm']:.1e})")
    if h > 1.0:
        return (f"{head}: the step size h = T/N = {h:.3g} is large, likely saturated activations; options "
                f"that matter: --final-time, --layers")
    if cfg.optimizer != "lbfgs":
        return f"{head}: the steps are too small or too large; option that matters: --lr {cfg.lr:g}"
    return (f"{head}: the line search finds little decrease; options that matter: --init-scale, "
            f"--gamma-tik, --gamma-ddt")
