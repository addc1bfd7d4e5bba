"""The coarsest level: solved sequentially on the root position (docs/algorithm.md §3).

Every position sends its g rows (and the origin its u_0) to the root, the root steps
u_k = Φ_L(u_{k−1}) + g_k through all N_L steps and scatters the owned rows back.
"""
from __future__ import annotations

from ..runtime import tags
from ..runtime.comm import Comm
from .state import SolveState

ORIGIN = 0  # the position holding point 0


def coarse_solve(s: SolveState) -> None:
    """Sequential solve of the coarsest level s.L ≥ 1 on the root position (gather, step, scatter)."""
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
                    comm.recv_into(u[1:], ranks[s.root], tags.COARSE_U)
                Comm.waitall(reqs)
            return
        N = s.grids[L].N
        U = xp.empty((N + 1, *s.shape), dtype=s.be.dtype)
        G = xp.zeros((N + 1, *s.shape), dtype=s.be.dtype)
        with s.timer("exchange"):
            if s.me == ORIGIN:
                U[0] = u[0]
            else:
                comm.recv_into(U[0], ranks[ORIGIN], tags.COARSE_U0)
            for p, lay in enumerate(layouts):
                if lay.n_owned == 0:
                    continue
                if p == s.me:
                    G[lay.lo:lay.hi] = g[1:]
                else:
                    comm.recv_into(G[lay.lo:lay.hi], ranks[p], tags.COARSE_G)
        for k in range(1, N + 1):
            d = tuple(x[k - 1:k] for x in s.coarse_data)
            v = s.phi(U[k - 1:k], d, s.coarse_h[k - 1:k])[0]
            U[k] = v + G[k]
        s.coarse_steps += N
        with s.timer("exchange"):
            reqs = []
            for p, lay in enumerate(layouts):
                if lay.n_owned == 0:
                    continue
                if p == s.me:
                    u[1:] = U[lay.lo:lay.hi]
                else:
                    reqs.append(comm.isend(U[lay.lo:lay.hi], ranks[p], tags.COARSE_U))
            Comm.waitall(reqs)
