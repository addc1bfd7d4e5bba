"""The MGRIT cycle, defined once: the sequence of phase visits of one solve (docs/algorithm.md §3).

:func:`phases` yields :class:`Visit` s in the order a solve performs them.
:meth:`~gpubraid.solver.mgrit.MGRIT.solve` executes each visit; :meth:`~gpubraid.solver.mgrit.MGRIT.schedule`
(and through it bench/model.py) counts them, so the two cannot drift apart.

One iteration on level 0, with the names of the math:

    relax          f_relax, then ``nrelax`` × (c_relax, f_relax)   (skipped/shortened on iteration 0
                   with ``skip`` or nested iteration)
    residual       C-point residual on level 0 (its norm decides whether the solve stops)
    restrict       FAS restriction to level 1
    visit(1)       the V-cycle (F-cycle: V-cycle then another V-cycle from level 1) down to the
                   coarsest level, where coarse_solve runs
    correct        u_c ← v_new on level 0 (its F-relaxation is the next iteration's first phase)

A solve that stops at ``max_iter`` without a final residual ends with the relaxation of the last
iteration, or, with ``final_relax`` off, with ``interpolate`` on level 0 (each F-point moved by its
interval's C-point correction, no steps).

With one level in use there is no cycle: the solve is layer-serial propagation (``serial``).
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

from .options import MGRITOptions


class Visit(NamedTuple):
    """One phase visit.

    Attributes:
        phase: a phase of the math (``f_relax``, ``c_relax``, ``residual``, ``restrict``,
            ``correct``, ``interpolate``, ``coarse_solve``, ``serial``: layer-serial propagation when
            one level is in use) or a marker: ``nested`` (the nested-iteration start follows), ``iterated`` (a
            coarse correction on level 0 is complete).
        level: the level it works on (``restrict``: the coarse level it restricts to).
        consistent: ``restrict`` only: g = r without the coarse steps (see :func:`.restrict.restrict`).
        values: ``correct`` only: the coarse level holds values, not corrections (the nested start;
            matters for the correction scheme of ``linear`` solves).
        zero: ``f_relax``: the level's C-points hold zero corrections (first sweep after a
            correction-scheme restriction), so the steps from them, Φ(0) = 0, are skipped;
            ``coarse_solve``: g = 0 (the nested start), so no rows are gathered.
    """

    phase: str
    level: int
    consistent: bool = False
    values: bool = False
    zero: bool = False


def relax(l: int, opts: MGRITOptions, first_f: bool = True, zero: bool = False) -> Iterator[Visit]:
    """F, then ``nrelax`` CF sweeps (XBraid's nrelax: 0 → F, 1 → FCF); ``first_f`` False: no first F;
    ``zero``: the first F starts from zero C-points."""
    if first_f:
        yield Visit("f_relax", l, zero=zero)
    for _ in range(opts.nrelax_at(l)):
        yield Visit("c_relax", l)
        yield Visit("f_relax", l)


def visit(l: int, kind: str, L: int, opts: MGRITOptions, restricted: bool = True) -> Iterator[Visit]:
    """Cycle from level l ≥ 1 down to the coarsest level L and back up (V, or F with an extra V at
    the next level); ``restricted``: level l was just restricted to (not an F-cycle's second V)."""
    if l == L:
        yield Visit("coarse_solve", L)
        return
    yield from relax(l, opts, zero=opts.linear and restricted)
    yield Visit("residual", l)
    yield Visit("restrict", l + 1)
    yield from visit(l + 1, kind, L, opts)
    if kind == "F" and l + 1 < L:
        yield from visit(l + 1, "V", L, opts, restricted=False)
    yield Visit("correct", l)
    yield Visit("f_relax", l)


def phases(L: int, opts: MGRITOptions, *, max_iter: int, cold: bool, final_residual: bool,
           converged: Callable[[int], bool]) -> Iterator[Visit]:
    """The visits of one solve with levels 0..L.

    Args:
        L: the coarsest level in use (0: layer-serial propagation, one ``serial`` visit).
        opts: the options (nrelax, skip, fmg, nested).
        max_iter: at most this many coarse corrections.
        cold: no warm start (the first iteration may skip relaxation; nested iteration applies).
        final_residual: compute the level-0 residual also after the last allowed iteration.
        converged: ``converged(it)``, asked right after the level-0 residual of iteration ``it``:
            whether the solve stops there.
    """
    if L == 0:
        yield Visit("serial", 0)
        return
    nested = opts.nested and cold
    if nested:
        # nested iteration: coarsest solve from u_0 (g = 0), interpolation by F-relaxation
        yield Visit("nested", L)
        yield Visit("coarse_solve", L, zero=True)
        for l in range(L - 1, -1, -1):
            yield Visit("correct", l, values=True)
            yield Visit("f_relax", l)
    kind = "F" if opts.fmg else "V"
    it = 0
    while True:
        last = it == max_iter and not final_residual
        if last and it > 0 and not opts.final_relax:
            yield Visit("interpolate", 0)
            return
        if it == 0 and (nested or (opts.skip and cold)):
            if nested:
                yield from relax(0, opts, first_f=False)
        else:
            yield from relax(0, opts)
        if last:
            return
        yield Visit("residual", 0)
        if converged(it) or it == max_iter:
            return
        yield Visit("restrict", 1, consistent=nested and it == 0 and L == 1)
        yield from visit(1, kind, L, opts)
        if kind == "F" and 1 < L:
            yield from visit(1, "V", L, opts, restricted=False)
        yield Visit("correct", 0)
        it += 1
        yield Visit("iterated", 0)
