"""Relaxation on one level (docs/algorithm.md §3): F-relaxation and C-relaxation.

F-relaxation on a level is m − 1 batched ``phi`` calls, each advancing every local interval at
once with its own step data (written straight into the level's rows, the right-hand side added in
the same pass, when the callback has ``into``: :meth:`.state.SolveState.step_to`); the interval
before a rank's first C-point is finished after the ghost value arrives from the left neighbour.
XBraid's ``nrelax`` CF sweeps after the first F (0 → F, 1 → FCF) are spelled out by the cycle
(:mod:`.cycle`).
"""
from __future__ import annotations

from ..runtime.comm import Comm
from .state import SolveState


def f_relax(s: SolveState, l: int, zero: bool = False) -> None:
    """u_{c+j} = Φ(u_{c+j−1}) + g_{c+j} through every interval of level l; ends with fresh ghosts.

    ``zero``: the C-points hold zero corrections of a linear step, so the first F-points are
    u_{c+1} = g_{c+1} (Φ(0) = 0, not applied)."""
    lv = s.lv[l]
    if lv.rows == 0:
        return
    with s.timer("relax"):
        u, g = s.u[l], s.g[l]
        for j, tgt in enumerate(lv.f_slices):
            if zero and j == 0:
                u[tgt] = g[tgt]
                continue
            src = slice(tgt.start - 1, tgt.stop - 1, tgt.step)
            s.step_to(l, u[src], src, None if g is None else g[tgt], u[tgt])
        reqs = []
        s.exchange_ghost(l, lv.last_is_local, reqs)
        for r in lv.leading:
            s.step_to(l, u[r - 1:r], slice(r - 1, r), None if g is None else g[r:r + 1], u[r:r + 1])
        if not lv.last_is_local and lv.lay.next is not None:
            s.send_last(l, reqs)
        Comm.waitall(reqs)


def c_relax(s: SolveState, l: int) -> None:
    """u_c = Φ(u_{c−1}) + g_c at this rank's C-points of level l (ghosts are fresh after f_relax)."""
    lv = s.lv[l]
    if lv.c_rows is None or lv.c_rows.size == 0:
        return
    with s.timer("relax"):
        c, before = lv.c_sel, lv.c_prev
        u, g = s.u[l], s.g[l]
        if isinstance(c, slice):  # in one pass when the C-points are apart from the rows before them
            # (C-points one row apart, where the last point is appended, would be written while read)
            s.step_to(l, u[before], before, None if g is None else g[c], u[c], fused=(c.step or 0) != 1)
            return
        v = s.step(l, u[before], before)  # index arrays select a copy
        u[c] = v if g is None else v + g[c]
