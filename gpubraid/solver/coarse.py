"""The coarsest level: solved sequentially on the root position (docs/algorithm.md §3).

Every position sends its g rows (and the origin its u_0) to the root, the root steps
u_k = Φ_L(u_{k−1}) + g_k through all N_L steps and scatters the owned rows back.  A step
callback with a ``chain(prev, data, h, rhs, rows)`` attribute takes each position's rows in one
call (the dense step on a GPU: one launch, :meth:`~gpubraid.network.dispatch.CudaSweeps.forward_chain`);
when it declines (returns False) the rows are stepped one call each.
"""
from __future__ import annotations

from ..runtime import tags
from ..runtime.comm import Comm
from .state import SolveState

ORIGIN = 0  # the position holding point 0


def coarse_solve(s: SolveState) -> None:
    """Sequential solve of the coarsest level s.L ≥ 1 on the root position (gather, step, scatter).

    The root steps its own rows in place in its level-L arrays; every other position's g rows are
    received into one buffer each, stepped in place there (u_k = Φ(u_{k−1}) + g_k overwrites g_k)
    and sent back as soon as that position's last row is done."""
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
        segments = []  # (position, first point, its received g rows to step in place; None: the root's own)
        with s.timer("exchange"):
            if s.me == ORIGIN:
                prev = u[0]
            else:
                prev = xp.empty(s.shapes[L], dtype=s.be.dtype)
                comm.recv_into(prev, ranks[ORIGIN], tags.COARSE_U0)
            for p, lay in enumerate(layouts):
                if lay.n_owned == 0:
                    continue
                if p == s.me:
                    segments.append((p, lay.lo, None))
                else:
                    buf = xp.empty((lay.n_owned, *s.shapes[L]), dtype=s.be.dtype)
                    comm.recv_into(buf, ranks[p], tags.COARSE_G)
                    segments.append((p, lay.lo, buf))
        reqs = []
        chain = getattr(s.phi, "chain", None)
        for p, lo, buf in sorted(segments, key=lambda seg: seg[1]):
            rows, rhs = (u[1:], g[1:]) if buf is None else (buf, buf)
            n = rows.shape[0]
            if not (chain and chain(prev, tuple(x[lo - 1:lo - 1 + n] for x in s.coarse_data),
                                    s.coarse_h[lo - 1:lo - 1 + n], rhs, rows)):
                for i in range(n):
                    k = lo + i
                    d = tuple(x[k - 1:k] for x in s.coarse_data)
                    v = s.phi(prev[None], d, s.coarse_h[k - 1:k])[0]
                    xp.add(v, rhs[i], out=rows[i])
                    prev = rows[i]
            prev = rows[-1]
            if buf is not None:
                with s.timer("exchange"):
                    reqs.append(comm.isend(buf, ranks[p], tags.COARSE_U))
        s.coarse_steps += s.grids[L].N
        with s.timer("exchange"):
            Comm.waitall(reqs)
