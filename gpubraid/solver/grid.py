"""MGRIT grid hierarchy and its distribution over ranks (docs/algorithm.md §3, §4).

Everything here is in *solver order*: points 0..N with step s going from point s to s + 1.  The
forward solve uses layer order; the adjoint solve uses reversed layer order (solver point k is
λ_{N−k}), so the same code serves both.

Level l has points 0..N_l.  Its C-points are every m_l-th point and the last point; level l + 1
consists of level l's C-points.  ``fine[l][i]`` is the level-0 index of level-l point i, so the
coarse step starting at point i uses the level-0 step data at ``fine[l][i]`` (injection) and the
step size H = t(fine[l][i+1]) − t(fine[l][i]).

Distribution: position p (0..P−1, in solver order) owns the level-0 steps [a_p, a_{p+1}) and hence
the points (a_p, a_{p+1}]; on level l it owns the level-l points whose level-0 index lies in that
range.  Point 0 belongs to position 0.  Each position keeps its owned points plus the one point
before them (its *ghost*), as local rows 0..n.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import check_hierarchy


@dataclass
class LevelGrid:
    """One level of the hierarchy (the same on every rank).

    Attributes:
        N: number of steps (points 0..N).
        fine: (N + 1,) level-0 index of each point.
        H: (N,) step sizes.
        m: coarsening factor towards the next level (None on the coarsest level).
    """

    N: int
    fine: np.ndarray
    H: np.ndarray
    m: int | None

    def c_points(self) -> np.ndarray:
        idx = np.arange(0, self.N + 1, self.m)
        return idx if idx[-1] == self.N else np.append(idx, self.N)


def build_hierarchy(h: np.ndarray, cfactor, max_levels: int, min_coarse: int) -> list[LevelGrid]:
    """Levels 0..L-1 for step sizes ``h`` (N,) in solver order.

    Args:
        cfactor: coarsening factor m ≥ 2, one int or a list (one per level; the last entry repeats).
        max_levels: at most this many levels (≥ 1).
        min_coarse: a level with fewer than this many steps is not created (≥ 1).
    """
    factors = check_hierarchy(cfactor, max_levels, min_coarse)
    h = np.asarray(h, dtype=np.float64)
    N = len(h)
    t = np.concatenate([[0.0], np.cumsum(h)])
    fine = np.arange(N + 1)
    levels = []
    while True:
        lvl = len(levels)
        n = len(fine) - 1
        m = factors[min(lvl, len(factors) - 1)]
        grid = LevelGrid(n, fine, np.diff(t[fine]) if lvl else h.copy(), m)
        coarse = fine[grid.c_points()] if n >= 1 else fine
        if lvl + 1 >= max_levels or len(coarse) - 1 < min_coarse or len(coarse) == len(fine):
            grid.m = None
            levels.append(grid)
            return levels
        levels.append(grid)
        fine = coarse


@dataclass
class LevelLayout:
    """One position's share of one level.

    Attributes:
        lo, hi: owned points [lo, hi) (lo ≥ 1; empty when lo == hi).
        holds_origin: whether this position holds point 0 (position 0 on every level).
        rows: local rows (point lo − 1 .. hi − 1), 0 when the position holds nothing here.
        prev: position owning the ghost point lo − 1 (None if none or if it is this position).
        next: position whose ghost is point hi − 1 (None if none or if it is this position).
    """

    lo: int
    hi: int
    holds_origin: bool
    prev: int | None
    next: int | None

    @property
    def active(self) -> bool:
        return self.hi > self.lo or self.holds_origin

    @property
    def rows(self) -> int:
        return self.hi - self.lo + 1 if self.active else 0

    @property
    def n_owned(self) -> int:
        return self.hi - self.lo


class Distribution:
    """Ownership of every level's points by positions 0..P−1, from level-0 step bounds.

    Args:
        bounds: (P + 1,) increasing level-0 step boundaries, bounds[0] = 0, bounds[-1] = N; every
            position owns at least one level-0 step.
        levels: the hierarchy.
    """

    def __init__(self, bounds, levels: list[LevelGrid]):
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.P = len(self.bounds) - 1
        self.levels = levels
        if self.bounds[0] != 0 or self.bounds[-1] != levels[0].N or np.any(np.diff(self.bounds) < 1):
            raise ValueError(f"bad block bounds {self.bounds.tolist()} for N = {levels[0].N}")

    def owner(self, level: int, i):
        """Position owning level-``level`` point(s) ``i``."""
        f = self.levels[level].fine[np.asarray(i)]
        return np.maximum(np.searchsorted(self.bounds, f, side="left") - 1, 0)

    def step_owner(self, s):
        """Position owning level-0 step(s) s (those whose end point s + 1 it owns)."""
        return np.searchsorted(self.bounds, np.asarray(s), side="right") - 1

    def layout(self, level: int, p: int) -> LevelLayout:
        fine = self.levels[level].fine
        N = self.levels[level].N
        lo = max(int(np.searchsorted(fine, self.bounds[p], side="right")), 1)
        hi = int(np.searchsorted(fine, self.bounds[p + 1], side="right"))
        hi = max(hi, lo)
        origin = p == 0
        active = hi > lo or origin
        prev = nxt = None
        if active and lo >= 1 and not (origin and lo == 1):
            q = int(self.owner(level, lo - 1))
            prev = q if q != p else None
        if active and hi <= N:
            q = int(self.owner(level, hi))
            nxt = q if q != p else None
        return LevelLayout(lo, hi, origin, prev, nxt)
