"""One rank's share of one MGRIT level: its rows and the index sets the sweeps use (built once).

The arrays of a solve (u, g, step data) live in the per-solve state (:mod:`.state`); a
:class:`Level` holds only what the grid and the distribution fix: O(1) Python work per level.
"""
from __future__ import annotations

import numpy as np

from ..runtime.backend import Backend
from .grid import LevelGrid, LevelLayout


class Level:
    """This rank's rows of one level and the index sets of its sweeps.

    Attributes:
        grid, lay: the level and this position's share of it.
        rows: local rows (ghost point first), 0 when the position holds nothing here.
        c_rows: (n_c,) int64 device array of the owned C-point rows (None on the hierarchy's
            coarsest level or when the position holds nothing); ``c_rows_host`` the same on the host.
        c_sel, c_prev: the C-point rows and the rows before them as indices of the sweeps: slices
            when the rows are evenly spaced (every m-th row, the usual case), so that ``u[c_sel]``
            is a view and not a copy of the level's rows; else ``c_rows`` and ``c_rows − 1``.
        f_slices: one slice of F-point target rows per offset j = 1..m−1 over the intervals that
            start at a C-point this rank holds (each one batched step call).
        leading: F-point rows before the first such C-point (their interval starts at or left of
            the ghost): stepped one at a time once the ghost has arrived.
        last_is_local: whether the last row is final after the F-slices (else after ``leading``).
    """

    def __init__(self, grid: LevelGrid, lay: LevelLayout, be: Backend, is_coarsest: bool):
        self.grid, self.lay = grid, lay
        self.rows = lay.rows
        n, first_pt = self.rows, lay.lo - 1
        if n == 0 or is_coarsest:
            self.c_rows = self.c_sel = self.c_prev = None
            self.c_rows_host = np.zeros(0, dtype=np.int64)
            self.f_slices, self.leading, self.last_is_local = [], range(0), True
            return
        m = grid.m
        # owned C-points: local rows r in 1..n-1 with (first_pt + r) % m == 0, plus the last point
        r0 = (-first_pt) % m
        r0 = r0 if r0 >= 1 else m
        owned_c = np.arange(r0, n, m, dtype=np.int64)
        last_row = grid.N - first_pt
        if 1 <= last_row < n and grid.N % m != 0:
            owned_c = np.append(owned_c, last_row)
        self.c_rows_host = owned_c
        self.c_rows = be.xp.asarray(owned_c)
        self.c_sel, self.c_prev = _selectors(owned_c, self.c_rows)
        # Intervals that start at a C-point this rank may relax without waiting: its own C-points,
        # and point 0 when it holds it.  F-point targets with offset j are every m-th row.
        f_start = 0 if lay.holds_origin else (int(owned_c[0]) if owned_c.size else None)
        stop = n - 1 if lay.hi == grid.N + 1 else n  # never step onto the last point as an F-point
        self.f_slices = []
        if f_start is not None:
            for j in range(1, m):
                if f_start + j < stop:
                    self.f_slices.append(slice(f_start + j, stop, m))
        # F-points before the first such C-point: their interval starts at or left of the ghost.
        first = f_start if f_start is not None else n
        self.leading = range(1, first) if not lay.holds_origin else range(0)
        # The last row is final after the local intervals unless it belongs to the leading ones.
        self.last_is_local = f_start is not None

    # step applications of each phase on this rank (the cycle's schedule counts with these)
    def f_relax_steps(self, zero: bool = False) -> int:
        """Steps of an F-sweep (``zero``: from zero C-points, the first offset's steps skipped)."""
        slices = self.f_slices[1:] if zero else self.f_slices
        return sum(len(range(*s.indices(self.rows))) for s in slices) + len(self.leading)

    def c_steps(self) -> int:
        return int(self.c_rows_host.size)

    def restrict_steps(self) -> int:
        """Coarse steps of the FAS restriction onto this level (it being the coarse one)."""
        return self.rows - 1 if self.rows > 1 else 0


def coarse_rows_in_fine(fine: Level, coarse: Level) -> slice | None:
    """The slice of ``fine``'s local rows that are ``coarse``'s rows (the next level, same feature
    maps), when they are: the coarse rows are the fine C-points this position owns, after the C-point
    before the first of them (row 0 of both: the origin, or a ghost point that is a C-point), every
    m-th fine row from row 0 (always so on one position).  The coarse level's states can then be
    that view of the fine level's, and the restriction's injection and the correction's copy
    vanish (:mod:`.restrict`).  None otherwise."""
    m, c = fine.grid.m, fine.c_rows_host
    if fine.rows == 0 or coarse.rows < 2 or c.size != coarse.rows - 1 or int(c[0]) != m:
        return None
    if not np.array_equal(c, m * np.arange(1, c.size + 1)):
        return None
    return slice(0, int(c[-1]) + 1, m)


def _selectors(rows: np.ndarray, device_rows):
    """(rows, rows − 1) as slices when ``rows`` (host, ascending, ≥ 1) are evenly spaced; else as
    the device index arrays."""
    if rows.size == 1:
        r = int(rows[0])
        return slice(r, r + 1), slice(r - 1, r)
    if rows.size > 1:
        step = int(rows[1] - rows[0])
        if step > 0 and np.all(np.diff(rows) == step):
            first, last = int(rows[0]), int(rows[-1])
            return slice(first, last + 1, step), slice(first - 1, last, step)
    return device_rows, device_rows - 1


def level_plan(grid: LevelGrid, lay: LevelLayout, coarse_lay: LevelLayout, backend: Backend) -> dict | None:
    """What one position does on one non-coarsest level, as the solver's sweeps issue it (public,
    for cost models): F-relaxation calls (intervals per F-slice call, single-point leading calls),
    C-points (one c_relax / residual call over them), whether the last row is final after the
    local slices, and the restriction's coarse-step call.  None when the position holds nothing."""
    lv = Level(grid, lay, backend, False)
    if lv.rows == 0:
        return None
    return {"slices": [len(range(*s.indices(lv.rows))) for s in lv.f_slices], "leading": len(lv.leading),
            "nc": lv.c_steps(), "last_local": bool(lv.last_is_local), "has_prev": lay.prev is not None,
            "restrict": coarse_lay.rows - 1 if coarse_lay.rows > 1 else 0,
            "restrict_prev": coarse_lay.rows > 0 and coarse_lay.prev is not None}
