"""The index sets of one rank's share of a level (gpubraid/solver/level.py): the C-point selectors
the sweeps use pick the same rows as the C-point index arrays, as views where the rows are evenly
spaced (not where the last point, N not a multiple of m, is appended), on every position of every
level."""
import numpy as np
import pytest

from gpubraid.runtime.backend import resolve_backend
from gpubraid.runtime.comm import split_layers
from gpubraid.solver.level import Level
from gpubraid.solver.mgrit import MGRIT
from gpubraid.solver.options import MGRITOptions

HOST = resolve_backend("numpy", "float64")


@pytest.mark.parametrize("N, P, m", [(16, 1, 2), (17, 1, 2), (30, 3, 4), (31, 4, 2), (9, 2, 3), (64, 4, 2),
                                     (13, 5, 3)])
def test_c_point_selectors_pick_the_c_rows(N, P, m):
    solver = MGRIT(None, list(range(P)), split_layers(N, P), np.full(N, 1.0 / N),
                   MGRITOptions(cfactor=m, max_levels=4, min_coarse=1), HOST)
    views = 0
    for lv_index in range(solver.n_levels - 1):
        for p in range(P):
            lv = Level(solver.levels[lv_index], solver.layouts[lv_index][p], HOST, False)
            if lv.c_rows is None:
                assert lv.c_sel is None and lv.c_prev is None
                continue
            u = np.arange(max(lv.rows, 1) * 2, dtype=float).reshape(-1, 2)[:lv.rows]
            assert np.array_equal(u[lv.c_sel], u[lv.c_rows])
            assert np.array_equal(u[lv.c_prev], u[lv.c_rows - 1])
            if isinstance(lv.c_sel, slice):
                views += 1
                assert np.shares_memory(u[lv.c_sel], u) or lv.c_rows.size == 0
    if N % m == 0:  # every rank's C-points evenly spaced on level 0 at least
        assert views > 0


@pytest.mark.parametrize("N, P, m", [(16, 1, 2), (64, 1, 4), (17, 1, 2), (64, 4, 2), (30, 3, 4), (31, 4, 2), (13, 5, 3)])
def test_coarse_rows_are_a_view_of_the_fine_c_points_exactly_where_they_are_those_rows(N, P, m):
    """Where :func:`coarse_rows_in_fine` gives a slice, the coarse rows it selects are the rows the
    restriction injects (row 0: the origin or the ghost C-point, then the owned C-points); on one
    position it gives one for every level whose fine level divides evenly."""
    from gpubraid.solver.level import coarse_rows_in_fine

    solver = MGRIT(None, list(range(P)), split_layers(N, P), np.full(N, 1.0 / N),
                   MGRITOptions(cfactor=m, max_levels=4, min_coarse=1), HOST)
    for l in range(1, solver.n_levels):
        for p in range(P):
            fine = Level(solver.levels[l - 1], solver.layouts[l - 1][p], HOST, False)
            coarse = Level(solver.levels[l], solver.layouts[l][p], HOST, l == solver.n_levels - 1)
            view = coarse_rows_in_fine(fine, coarse)
            if view is None:
                continue
            points = np.arange(fine.rows) + solver.layouts[l - 1][p].lo - 1   # fine rows' global points
            coarse_points = np.arange(coarse.rows) + solver.layouts[l][p].lo - 1
            assert np.array_equal(points[view], coarse_points * m)
            assert np.array_equal(points[view][1:], points[fine.c_rows_host])
        if P == 1:
            assert (solver.alias[l] is not None) == (solver.levels[l - 1].N % m == 0), l
