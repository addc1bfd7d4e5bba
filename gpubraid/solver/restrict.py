"""Residual, FAS restriction and correction between level l and level l + 1 (docs/algorithm.md §3).

    residual   r_c = g_c + Φ_l(u_{c−1}) − u_c at the C-points of level l
    restrict   v = R u_c onto level l + 1, g_{l+1} = R r + v − Φ_{l+1}(v_prev)
    correct    u_c ← u_c + P(v_new − R u_c) at the C-points of level l (the F-relaxation that
               completes it is the cycle's next phase)

R and P are the identity (injection, and u_c ← v_new: its ideal interpolation) unless level l + 1
halves the feature maps (``MGRITOptions.spatial_levels``: the 2×2 mean and its piecewise-constant
interpolation of :mod:`.space`).  Where level l + 1's states are a view of level l's C-point rows
(``SolveState.alias``; on one position always), the injection and u_c ← v_new are no copies: the
coarse levels work on those rows in place.

For a linear step (``MGRITOptions.linear``) the coarse levels carry corrections instead (the
correction scheme, the same iterates): restrict sets v = 0, g_{l+1} = R r (no coarse steps) and
correct adds, u_c ← u_c + P v_new.
"""
from __future__ import annotations

from ..runtime.comm import Comm
from .state import SolveState


def residual(s: SolveState, l: int):
    """r_c = g_c + Φ(u_{c−1}) − u_c at this rank's C-points of level l, shape (n_c, B, *S_l): written
    into level l + 1's g rows 1.. where it fits them (same maps; the restriction that follows then
    builds g there in place, ``s.r_in_g``), else a new array."""
    lv = s.lv[l]
    u, g = s.u[l], s.g[l]
    s.r_in_g = False
    with s.timer("residual"):
        if lv.c_rows is None or lv.c_rows.size == 0:
            return s.xp.empty((0, *s.shapes[l]), dtype=s.be.dtype)
        c, before = lv.c_sel, lv.c_prev
        cg = s.g[l + 1] if l < s.L and not s.halves(l) else None
        s.r_in_g = cg is not None and cg.shape[0] == lv.c_rows.size + 1
        # r = Φ(u_{c−1}) + (g_c − u_c): the step adds the difference in its own pass (no Φ temporary)
        r = cg[1:] if s.r_in_g else s.xp.empty_like(u[c])
        if g is None:
            s.xp.negative(u[c], out=r)
        else:
            s.xp.subtract(g[c], u[c], out=r)
        if isinstance(before, slice):
            s.step_to(l, u[before], before, r, r)
        else:  # index arrays select a copy; the same sum, so that every rank count gives the same bits
            s.xp.add(s.step(l, u[before], before), r, out=r)
        return r


def restrict(s: SolveState, l: int, r, consistent: bool = False) -> None:
    """FAS restriction of level l's residual ``r`` to level l + 1: v = R u_c, g = R r + v − Φ_{l+1}(v_prev).

    ``consistent``: the C-point values already satisfy v = Φ_{l+1}(v_prev) + g_old with g_old = 0
    (right after a nested-iteration guess whose coarse level is solved exactly), so g = r without
    applying Φ_{l+1} (saves the coarse steps, identical result)."""
    lv, co = s.lv[l], s.lv[l + 1]
    if co.rows == 0:
        return
    u, cu, cg = s.u[l], s.u[l + 1], s.g[l + 1]
    with s.timer("restrict"):
        if s.linear:   # correction scheme: the coarse unknown is the correction, starting at 0
            cu[...] = 0
            if co.rows > 1 and not s.r_in_g:
                s.to_coarse(l, r, out=cg[1:])
            return
        if s.alias[l + 1] is None:
            if co.lay.holds_origin:
                s.to_coarse(l, u[0:1], out=cu[0:1])
            if co.rows > 1:
                s.to_coarse(l, u[lv.c_sel], out=cu[1:])
        elif l == 0 and s.keep_correction:  # cu is u's C-points: the correction needs them as they are
            s.c_old = u[lv.c_sel].copy()
        reqs = []
        s.exchange_ghost(l + 1, True, reqs)
        if co.rows > 1:
            if consistent:
                if not s.r_in_g:
                    s.to_coarse(l, r, out=cg[1:])
            else:
                coarse = s.step(l + 1, cu[:-1], slice(0, co.rows - 1))
                if s.r_in_g:  # r is cg[1:]
                    cg[1:] += cu[1:]
                else:
                    s.xp.add(s.to_coarse(l, r), cu[1:], out=cg[1:])
                cg[1:] -= coarse
        Comm.waitall(reqs)


def correct(s: SolveState, l: int, values: bool = False) -> None:
    """u_c ← u_c + P(v_new − R u_c) (correction scheme: u_c + P v_new) at this rank's C-points of
    level l from level l + 1; without spatial coarsening (R = P = I) that is u_c ← v_new.
    ``values``: the coarse level holds values even in the correction scheme (nested start: on
    levels ≥ 1, whose C-points hold nothing yet, u_c ← P v_new).
    On level 0, when the solve ends by :func:`.interpolate.interpolate`, the change of each C-point
    is kept in ``s.e``."""
    lv, co = s.lv[l], s.lv[l + 1]
    if co.rows <= 1:
        return
    with s.timer("correct"):
        u, v, c = s.u[l], s.u[l + 1][1:], lv.c_sel
        add = s.linear and not values
        keep = l == 0 and s.keep_correction
        if s.alias[l + 1] is not None:  # the coarse level changed these rows in place: u_c is v_new
            if keep and s.c_old is not None:
                s.e = s.xp.subtract(u[c], s.c_old, out=s.c_old)
                s.c_old = None
            return
        if not s.halves(l):
            if keep:  # (a view of level 1, which nothing changes before interpolate reads it)
                s.e = v if add else v - u[c]
            if add:
                u[c] += v
            else:
                u[c] = v
            return
        if values and l > 0:  # nested start: this level's C-points hold nothing yet (level 0: the guess)
            u[c] = 0
        d = v if add or (values and l > 0) else v - s.to_coarse(l, u[c])
        if keep:
            s.e = s.xp.zeros(u[c].shape, dtype=u.dtype)
            s.add_to_fine(l, s.e, d)
            u[c] += s.e
        elif isinstance(c, slice):
            s.add_to_fine(l, u[c], d)
        else:  # index arrays select a copy
            uc = u[c]
            s.add_to_fine(l, uc, d)
            u[c] = uc
