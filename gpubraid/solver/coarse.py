"""The coarsest level: solved sequentially on the root position (docs/algorithm.md §3).

Every position's g rows are gathered to the root (one collective; the origin also sends its u_0),
the root steps u_k = Φ_L(u_{k−1}) + g_k through all N_L steps, and the rows are scattered back (one
collective).  The nested start's coarsest solve has g = 0 everywhere: nothing is gathered then.  A
step callback with a ``chain(prev, data, h, rhs, rows)`` attribute takes all N_L rows in one call
(the dense step: one C loop, or on a GPU one launch,
:meth:`~gpubraid.network.dispatch.CudaSweeps.forward_chain`); when it declines (returns False) the
rows are stepped one call each.  Either way each step is the same arithmetic, so the bits do not
depend on how many positions the rows came from.
"""
from __future__ import annotations

from ..runtime import tags
from ..runtime.comm import Comm
from .state import SolveState

ORIGIN = 0  # the position holding point 0


def row_spec(layouts, ranks, root: int) -> tuple[list, list] | None:
    """((rows), (offsets)) of a level's owned points per rank of the communicator (``ranks``: the MPI
    rank of each position, ``root``: the root position), offsets into the array of its points 1..N
    (what :meth:`Comm.gather_rows` takes); None when only the root owns points there (nothing to
    move: every position knows it).  The solver computes it once per level (``MGRIT.row_specs``)."""
    if not any(lay.n_owned for p, lay in enumerate(layouts) if p != root):
        return None
    counts, offsets = [0] * len(layouts), [0] * len(layouts)
    for p, lay in enumerate(layouts):
        counts[ranks[p]], offsets[ranks[p]] = lay.n_owned, lay.lo - 1
    return counts, offsets


def coarse_solve(s: SolveState, zero_rhs: bool = False) -> None:
    """Sequential solve of the coarsest level s.L ≥ 1 on the root position (gather, step, scatter).

    The root gathers every position's g rows into one array of all N_L rows (``zero_rhs``: g = 0,
    the nested start, so it takes zeros and gathers nothing), steps the whole chain in place
    (u_k = Φ(u_{k−1}) + g_k overwrites g_k) and scatters each position its rows; when it holds every
    row itself it steps its level-L arrays (u from g) in place."""
    L = s.L
    u, g = s.u[L], s.g[L]
    xp, comm = s.xp, s.comm
    spec = s.row_specs[L]
    root = s.ranks[s.root]
    with s.timer("coarse_solve"):
        reqs, prev, rows, rhs = [], None, u[1:], g[1:]
        with s.timer("exchange"):
            if s.me == ORIGIN and s.me != s.root:
                reqs.append(comm.isend(u[0], root, tags.COARSE_U0))
            elif s.me == s.root:
                prev = u[0] if s.me == ORIGIN else xp.empty(s.shapes[L], dtype=s.be.dtype)
                if s.me != ORIGIN:
                    comm.recv_into(prev, s.ranks[ORIGIN], tags.COARSE_U0)
            if spec is not None:  # row k − 1 of ``rows`` holds point k
                if s.me == s.root:
                    rows = rhs = (xp.zeros if zero_rhs else xp.empty)((s.grids[L].N, *s.shapes[L]),
                                                                      dtype=s.be.dtype)
                if not zero_rhs:
                    comm.gather_rows(g[1:], rows, spec, root)
        if s.me == s.root:
            _chain(s, prev, rhs, rows)
            s.coarse_steps += s.grids[L].N
        with s.timer("exchange"):
            if spec is not None:
                own = u[1:]
                part = own if s.alias[L] is None else xp.empty_like(g[1:])
                comm.scatter_rows(rows, part, spec, root)
                if part is not own:  # u is a strided view of the finer level's rows: put in
                    own[...] = part
            Comm.waitall(reqs)


def _chain(s: SolveState, prev, rhs, rows) -> None:
    """rows[k] = Φ(rows[k − 1]) + rhs[k] through all N_L steps from ``prev`` (the root's chain;
    ``rhs`` may be ``rows``)."""
    chain = getattr(s.phi, "chain", None)
    if chain and chain(prev, s.coarse_data, s.coarse_h, rhs, rows):
        return
    for k in range(rows.shape[0]):
        d = tuple(x[k:k + 1] for x in s.coarse_data)
        v = s.phi(prev[None], d, s.coarse_h[k:k + 1])[0]
        s.xp.add(v, rhs[k], out=rows[k])
        prev = rows[k]
