"""The coarsest level: solved sequentially on the root position (docs/algorithm.md §3).

Every position sends its g rows (and the origin its u_0) to the root, the root steps
u_k = Φ_L(u_{k−1}) + g_k through all N_L steps and scatters the owned rows back.  A step
callback with a ``chain(prev, data, h, rhs, rows)`` attribute takes all N_L rows in one call (the
dense step: one C loop, or on a GPU one launch,
:meth:`~gpubraid.network.dispatch.CudaSweeps.forward_chain`); when it declines (returns False) the
rows are stepped one call each.  Either way each step is the same arithmetic, so the bits do not
depend on how many positions the rows came from.
"""
from __future__ import annotations

from ..runtime import tags
from ..runtime.comm import Comm
from .state import SolveState

ORIGIN = 0  # the position holding point 0


def coarse_solve(s: SolveState) -> None:
    """Sequential solve of the coarsest level s.L ≥ 1 on the root position (gather, step, scatter).

    The root receives every other position's g rows into their places in one array of all N_L
    rows, copies its own in, steps the whole chain in place (u_k = Φ(u_{k−1}) + g_k overwrites g_k)
    and sends each position its rows; when it holds every row itself it steps its level-L arrays
    in place."""
    L = s.L
    lv, u, g = s.lv[L], s.u[L], s.g[L]
    xp, comm, ranks = s.xp, s.comm, s.ranks
    layouts = s.layouts[L]
    with s.timer("coarse_solve"):
        if s.me != s.root:
            reqs = []
            with s.timer("exchange"):
                if s.me == ORIGIN:
                    reqs.append(comm.isend(u[0], ranks[s.root], tags.COARSE_U0))
                if lv.lay.n_owned:
                    reqs.append(comm.isend(g[1:], ranks[s.root], tags.COARSE_G))
                    if s.alias[L] is None:
                        comm.recv_into(u[1:], ranks[s.root], tags.COARSE_U)
                    else:  # u is a strided view of the finer level's rows: received apart, then put in
                        rows = xp.empty_like(g[1:])
                        comm.recv_into(rows, ranks[s.root], tags.COARSE_U)
                        u[1:] = rows
                Comm.waitall(reqs)
            return
        others = [p for p, lay in enumerate(layouts) if lay.n_owned and p != s.me]
        with s.timer("exchange"):
            if s.me == ORIGIN:
                prev = u[0]
            else:
                prev = xp.empty(s.shapes[L], dtype=s.be.dtype)
                comm.recv_into(prev, ranks[ORIGIN], tags.COARSE_U0)
            if others:  # row k − 1 of ``rows`` holds point k
                rows = xp.empty((s.grids[L].N, *s.shapes[L]), dtype=s.be.dtype)
                for p in others:
                    comm.recv_into(_part(rows, layouts[p]), ranks[p], tags.COARSE_G)
                if lv.lay.n_owned:
                    _part(rows, lv.lay)[...] = g[1:]
                rhs = rows
            else:
                rows, rhs = u[1:], g[1:]
        chain = getattr(s.phi, "chain", None)
        if not (chain and chain(prev, s.coarse_data, s.coarse_h, rhs, rows)):
            for k in range(rows.shape[0]):
                d = tuple(x[k:k + 1] for x in s.coarse_data)
                v = s.phi(prev[None], d, s.coarse_h[k:k + 1])[0]
                xp.add(v, rhs[k], out=rows[k])
                prev = rows[k]
        reqs = []
        with s.timer("exchange"):
            if others and lv.lay.n_owned:
                u[1:] = _part(rows, lv.lay)
            reqs += [comm.isend(_part(rows, layouts[p]), ranks[p], tags.COARSE_U) for p in others]
        s.coarse_steps += s.grids[L].N
        with s.timer("exchange"):
            Comm.waitall(reqs)


def _part(rows, lay):
    """The rows of ``rows`` (all of a level's points 1..N_L) that position layout ``lay`` owns."""
    return rows[lay.lo - 1:lay.lo - 1 + lay.n_owned]
