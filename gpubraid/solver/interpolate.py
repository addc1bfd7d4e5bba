"""The cheap end of a solve (``MGRITOptions.final_relax`` off, docs/algorithm.md §3.11): instead
of the last F-relaxation on level 0, every F-point is moved by the correction of the C-point that
starts its interval,

    u_{c+j} ← u_{c+j} + e_c,    e_c = v_new − u_c (the change the last coarse correction made),

no step applications.  Exact where ∂Φ^j/∂u = I; otherwise off by (∂Φ^j/∂u − I)·e_c = O(j·h·ρ)·e_c.

The interval before a rank's first C-point starts on a rank to the left: that rank sends its last
row and the correction of the interval its last row lies in, after its own rows are done (the
pipeline of :func:`.relax.f_relax`), so every rank count gives the same bits.
"""
from __future__ import annotations

from ..runtime import tags
from ..runtime.comm import Comm
from .state import SolveState


def interpolate(s: SolveState, l: int = 0) -> None:
    """u_f += e of its interval's start, at this rank's F-points of level ``l`` (uses ``s.e``)."""
    lv = s.lv[l]
    if lv.rows == 0:
        return
    xp, u = s.xp, s.u[l]
    e = s.e if s.e is not None else xp.zeros((0, *s.shape), dtype=s.be.dtype)
    # corrections of the interval starts: point 0 (never changes: nothing to add) when held, then the
    # owned C-points
    skip = 1 if lv.lay.holds_origin else 0
    lay = lv.lay
    with s.timer("interpolate"):
        for tgt in lv.f_slices:
            k = len(range(*tgt.indices(lv.rows)))
            if k > skip:
                u[tgt][skip:] += e[:k - skip]
        reqs = []
        if lv.last_is_local and lay.next is not None:
            last = e[-1] if len(e) else xp.zeros(s.shape, dtype=s.be.dtype)
            reqs.append(_send(s, last, u[lv.rows - 1], lay.next))
        if lay.prev is not None:
            buf = xp.empty((2, *s.shape), dtype=s.be.dtype)
            with s.timer("exchange"):
                s.comm.recv_into(buf, s.ranks[lay.prev], tags.INTERP)
            carry = buf[0]
            u[0] = buf[1]
            for r in lv.leading:
                u[r] += carry
            if not lv.last_is_local and lay.next is not None:
                reqs.append(_send(s, carry, u[lv.rows - 1], lay.next))
        Comm.waitall(reqs)


def _send(s: SolveState, e_last, u_last, dest: int):
    with s.timer("exchange"):
        return s.comm.isend(s.xp.ascontiguousarray(s.xp.stack([e_last, u_last])), s.ranks[dest], tags.INTERP)
