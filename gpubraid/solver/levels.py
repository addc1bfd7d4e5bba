"""How many levels a solve uses (docs/algorithm.md §3.8): a caller's choice, the whole hierarchy, or
the stability-based choice from the spectral scale ρ of the step Jacobian.

One level means no coarse grid: the solve is layer-serial propagation (see :mod:`.cycle`).
"""
from __future__ import annotations

import numpy as np

from ..runtime.backend import Backend
from ..runtime.comm import Comm
from .options import MGRITOptions


def given_levels(levels: int | None, opts: MGRITOptions, n_levels: int) -> int | None:
    """Levels of a solve when known without an estimate: ``levels`` (clamped to 1..n_levels) if
    given, else the whole hierarchy unless the options choose by stability (then None)."""
    if levels is not None:
        return max(1, min(int(levels), n_levels))
    if (opts.stability > 0 or opts.conv_bound > 0) and n_levels > 1:
        return None
    return n_levels


def estimate_rho(comm: Comm, be: Backend, opts: MGRITOptions, phi, u_lin, data, h, a: int, b: int):
    """Spectral scale ρ of ∂f/∂u over this chain (global max over layers), generic in ``phi``.

    Power iteration per step on J v ≈ (Φ(u + εv) − Φ(u) − εv) / (ε h) at the linearisation
    states ``u_lin`` (this rank's level-0 rows before each owned step, a few samples), with this
    rank's level-0 step data ``data`` and step sizes ``h`` (b − a,) of its steps [a, b).  The start
    vectors depend only on the global step index, so the result does not depend on the number of
    ranks.  Returns (ρ, step calls made, samples used).
    """
    xp = be.xp
    n = b - a
    if n == 0:
        return comm.allreduce_max(0.0), 0, 0
    s = opts.estimate_samples(u_lin.shape[1])
    u = xp.ascontiguousarray(u_lin[:n, :s])
    size = int(np.prod(u.shape[1:]))
    k = np.arange(a, b, dtype=np.float64)[:, None]
    i = np.arange(size, dtype=np.float64)[None, :]
    v = be.asarray((np.cos(0.37 * k + 1.13 * i + 0.3) + 0.5).reshape(u.shape))
    axes = tuple(range(1, u.ndim))
    hb = h.reshape((n,) + (1,) * (u.ndim - 1))
    # per-step ε from that step's own state (a global or per-rank scale would make ρ depend on
    # the distribution)
    eps = float(np.sqrt(np.finfo(np.dtype(be.dtype)).eps)) * (1.0 + xp.abs(u).max(axis=axes, keepdims=True))
    base = phi(u, data, h)
    rho_k = None
    for _ in range(opts.stability_iters):
        v = v / xp.maximum(xp.sqrt((v * v).sum(axis=axes, keepdims=True)), 1e-300)
        w = (phi(u + eps * v, data, h) - base - eps * v) / (eps * hb)
        rho_k = xp.sqrt((w * w).sum(axis=axes))
        v = w
    # with data groups, the first group's samples are the batch's first: only its estimate
    # counts, so the choice is that of one group holding the whole batch
    rho = float(be.scalar(rho_k.max())) if comm.first_data_group else 0.0
    return comm.allreduce_max(rho), (opts.stability_iters + 1) * n, s


def choose_levels(rho: float, H_max: list, T: float, opts: MGRITOptions) -> tuple[int, list]:
    """Levels to use for spectral scale ρ: coarsen while max(H_l)·ρ ≤ ``stability`` and
    ½·T·ρ²·max(H_l) ≤ ``conv_bound`` (when set), ``H_max[l]`` = max(H_l), T the chain's length.
    Returns (levels, [max(H_l)·ρ per level ≥ 1])."""
    bound, cb = opts.stability, opts.conv_bound
    hr = []
    for l in range(1, len(H_max)):
        x = H_max[l] * rho
        if (bound > 0 and x > bound) or (cb > 0 and 0.5 * T * rho * x > cb):
            break
        hr.append(x)
    return 1 + len(hr), hr
