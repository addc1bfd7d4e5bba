"""Distributed MGRIT with FAS (docs/algorithm.md §3): the solver that replaces serial propagation.

The solver knows nothing about networks.  A problem hands it, in solver order (see grid.py):

    phi(u, data, h) -> Φ(u)   batched step: u (k, B, *S), data a tuple of (k, ...) arrays, h (k,)
                              (with spatial coarsening, S is the level's: see space.py); optional
                              attribute phi.chain(prev, data, h, rhs, rows) -> bool: rows[i] =
                              Φ(rows[i − 1]) + rhs[i] from rows[−1] = prev in one call (the coarsest
                              solve), False when it declines
    data                      this rank's level-0 step data, one row per owned level-0 step
    u0                        the value at point 0 (on the rank that holds point 0)

Level l solves u_i = Φ_{l,i−1}(u_{i−1}) + g_{l,i}.  The solver is split by phase, as XBraid is:

    grid.py, level.py      the hierarchy, its distribution, this rank's index sets per level
    stepdata.py            step data of the coarse levels (planned once, moved per solve)
    relax.py               f_relax, c_relax
    restrict.py            residual, restrict, correct
    space.py               spatial coarsening: level shapes, restriction and interpolation in space
    interpolate.py         interpolate (the cheap end of a solve without final relaxation)
    coarse.py              coarse_solve (gathered to rank 0)
    cycle.py               the cycle: the order of the phases, defined once
    levels.py              the level choice (estimate_rho, choose_levels)
    state.py               the per-solve state
    mgrit.py               this facade: setup, solve (executes the cycle), schedule (counts it)

Residual convention (XBraid's): ``residuals[k]`` is the C-point residual norm on level 0 after
the relaxation of iteration k, computed before that iteration's coarse correction; the solve stops
as soon as it is ≤ tol (or ≤ rtol·residuals[0]), and returns that relaxed iterate, so the last
entry is the residual of the returned solution.  ``iterations`` counts coarse corrections.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import UserError
from ..runtime.backend import Backend
from ..runtime.comm import Comm
from .chain import SerialChain
from .coarse import coarse_solve, row_spec
from .cycle import Visit, phases
from .grid import Distribution, build_hierarchy
from .interpolate import interpolate
from .level import Level, coarse_rows_in_fine
from .levels import choose_levels, estimate_rho, given_levels
from .options import MGRITOptions, SolveStats
from .relax import c_relax, f_relax
from .restrict import correct, residual, restrict
from .state import SolveState
from .stepdata import StepDataPlan


class MGRIT:
    """MGRIT solver for one distributed chain of N steps in solver order.

    Holds only what construction fixes (hierarchy, distribution, index sets, communication plan);
    each :meth:`solve` keeps its own state in a :class:`~.state.SolveState`.

    Args:
        comm: communicator (None: one process).
        ranks: MPI rank of each position 0..P−1 in solver order (reversed for the adjoint).
        bounds: (P + 1,) level-0 step boundaries of the positions.
        h: (N,) step sizes in solver order (host floats).
        options: MGRITOptions.
        backend: array backend of the states.
        micro_batches: sample blocks that a one-level solve streams through the positions.
    """

    def __init__(self, comm: Comm | None, ranks, bounds, h, options: MGRITOptions, backend: Backend,
                 micro_batches: int = 1):
        self.opts = options.validate()
        self.be, self.xp = backend, backend.xp
        self.comm = comm = comm if comm is not None else Comm.single()
        self.ranks = [int(r) for r in ranks]
        if comm.rank not in self.ranks:
            raise UserError(f"ranks must list this process's rank {comm.rank}; got {self.ranks}")
        self.me = self.ranks.index(comm.rank)
        self.root = self.ranks.index(0)  # the position that solves the coarsest level
        self.levels = build_hierarchy(h, options.cfactor, options.max_levels, options.min_coarse)
        self.dist = Distribution(bounds, self.levels)
        self.n_levels = len(self.levels)
        self.layouts = [[self.dist.layout(l, p) for p in range(self.dist.P)] for l in range(self.n_levels)]
        self.lv = [Level(g, self.layouts[l][self.me], backend, l == self.n_levels - 1)
                   for l, g in enumerate(self.levels)]
        # level l's states as a view of level l − 1's C-point rows where they are those rows (on the
        # host: a GPU's per-layer launchers would copy a strided view at every call); not where the
        # maps halve or the coarse levels carry corrections (linear)
        self.alias = [None] + [None if backend.is_gpu or options.linear or l <= options.spatial_levels
                               else coarse_rows_in_fine(self.lv[l - 1], self.lv[l]) for l in range(1, self.n_levels)]
        # each level's owned rows per rank, as the coarsest solve gathers and scatters them
        self.row_specs = [row_spec(lay, self.ranks, self.root) for lay in self.layouts]
        self.a = int(self.dist.bounds[self.me])
        self.b = int(self.dist.bounds[self.me + 1])
        self._serial = SerialChain(comm, self.ranks, bounds, h, backend, micro_batches)
        self.plan = StepDataPlan(self.levels, self.dist, self.layouts, self.me, self.a, self.b,
                                 average=self.opts.coarse_params == "average")
        self.T = float(np.sum(self.levels[0].H))
        self.H_max = [float(g.H.max()) if g.N else 0.0 for g in self.levels]

    def choose_levels(self, rho: float) -> tuple[int, list]:
        """Levels for spectral scale ρ by the options' stability bounds (see levels.choose_levels)."""
        return choose_levels(rho, self.H_max, self.T, self.opts)

    def choose(self, phi, data, u0, sample_shape, warm=None) -> SolveStats:
        """The level choice that :meth:`solve` with these arguments makes, without solving.

        Every position of the chain takes part (the estimate reduces over them).  Returns
        SolveStats with ``levels`` and, when the options choose by stability, ``rho``, ``h_rho``
        and ``estimate_steps``: pass it to :meth:`solve` as ``choice`` to solve with those levels
        (the same numbers as a solve that chooses itself), or propagate layer by layer elsewhere
        when it keeps one level.  ``warm`` is not modified.
        """
        shape = self._check_inputs(data, u0, sample_shape, warm)
        stats = SolveStats(levels=given_levels(None, self.opts, self.n_levels))
        if stats.levels is not None:
            return stats
        xp, be, n = self.xp, self.be, self.b - self.a
        k = self.opts.estimate_samples(shape[0])
        if warm is not None:
            u_lin = xp.array(warm[:n, :k])
            if self.lv[0].lay.holds_origin and n:
                u_lin[0] = u0[:k]
        else:
            first = u0[:k] if self.me == 0 else None
            if self.comm.size > 1:
                first = self.comm.bcast_array(first, self.ranks[0], (k, *shape[1:]), np.dtype(be.dtype), xp)
            u_lin = xp.empty((n, k, *shape[1:]), dtype=be.dtype)
            u_lin[...] = first
        self._estimate(stats, phi, u_lin, data, be.asarray(self.levels[0].H[self.a:self.b]), shape[0])
        return stats

    def choice_from(self, rho: float) -> SolveStats:
        """The level choice :meth:`choose` makes when its estimate gives ``rho``, without estimating
        (a ρ estimated a few steps before, reused): no estimate steps, the same levels and ``h_rho``."""
        stats = SolveStats(levels=given_levels(None, self.opts, self.n_levels))
        if stats.levels is None:
            stats.levels, stats.h_rho = self.choose_levels(rho)
            stats.rho = rho
        return stats

    def _estimate(self, stats: SolveStats, phi, u_lin, data, h, batch: int) -> None:
        """ρ at the linearisation rows ``u_lin`` and the levels it allows, into ``stats``."""
        rho, calls, samples = estimate_rho(self.comm, self.be, self.opts, phi, u_lin, data, h, self.a, self.b)
        stats.estimate_steps = calls * samples / batch
        stats.levels, stats.h_rho = self.choose_levels(rho)
        stats.rho = rho

    # -- the cycle counted ------------------------------------------------------------------------
    def schedule(self, iterations: int, levels: int | None = None, warm: bool = True,
                 converged_early: bool = False):
        """The phases one solve issues on this rank, in order, with their step applications.

        Yields ``(phase, level, steps)`` for each visit of the cycle (:func:`.cycle.phases`, the one
        :meth:`solve` executes): ``f_relax``, ``c_relax``, ``residual``, ``restrict`` (steps
        counted on the coarse level ``level``), ``correct``, ``coarse_solve`` (steps on the root
        position only), ``serial`` (one level: layer-serial propagation) and the markers ``nested``
        and ``iterated`` (no steps).  It is the solve that runs ``iterations`` coarse corrections
        (``max_iter``; ``converged_early``: it stopped on the tolerance instead, so the final
        residual is always computed) with ``levels`` levels (default: the whole hierarchy), from a
        warm start (``warm``) or from the initial guess of the options (``nested`` or u_0
        everywhere).  The stability estimate is not included.  Summing ``steps`` per level gives
        ``SolveStats.steps_per_level`` (+ ``coarse_steps``).
        """
        opts = self.opts
        L = given_levels(self.n_levels if levels is None else levels, opts, self.n_levels) - 1
        final = opts.final_residual or opts.tol > 0 or opts.rtol > 0 or converged_early
        for v in phases(L, opts, max_iter=iterations, cold=not warm, final_residual=final,
                        converged=lambda it: converged_early and it == iterations):
            yield v.phase, v.level, self._steps(v, L)

    def _steps(self, v: Visit, L: int) -> int:
        """Step applications of visit ``v`` on this rank in a solve with coarsest level L."""
        lv = self.lv[v.level]
        if v.phase == "f_relax":
            return lv.f_relax_steps(v.zero)
        if v.phase in ("c_relax", "residual"):
            return lv.c_steps()
        if v.phase == "restrict":
            return 0 if (v.consistent or self.opts.linear) else lv.restrict_steps()
        if v.phase == "coarse_solve":
            return self.levels[L].N if self.me == self.root else 0
        if v.phase == "serial":
            return self.b - self.a
        return 0

    # -- the cycle executed -----------------------------------------------------------------------
    def _check_inputs(self, data, u0, sample_shape, warm):
        shape = tuple(sample_shape)
        if len(shape) < 1 or any(isinstance(x, bool) or int(x) != x or x < 1 for x in shape):
            raise UserError(f"sample_shape must be a tuple of positive integers (B, *S); got {sample_shape!r}")
        if not isinstance(data, (tuple, list)) or not data:
            raise UserError("data must be a non-empty tuple of step-data arrays")
        for d in data:
            if d.shape[0] != self.b - self.a:
                raise UserError(f"data: step data must have {self.b - self.a} rows (this rank's steps "
                                f"{self.a}..{self.b - 1}); got {d.shape[0]}")
        holds = self.lv[0].lay.holds_origin
        if holds and u0 is None:
            raise UserError("u0 is None on the rank holding point 0: the initial value is required"
                            + (" (also with a warm start)" if warm is not None else ""))
        if u0 is not None and holds and tuple(u0.shape) != shape:
            raise UserError(f"u0 must have shape sample_shape = {shape}; got {tuple(u0.shape)}")
        if warm is not None and tuple(warm.shape) != (self.lv[0].rows, *shape):
            raise UserError(f"warm must have shape (rows = {self.lv[0].rows}, *sample_shape = {shape}); "
                            f"got {tuple(warm.shape)}")
        return shape

    def _initial_guess(self, s: SolveState, u0, warm, nested: bool):
        """Level-0 rows to start from: ``warm`` with u_0 put in, or u_0 at every point.

        ``nested``: the nested start writes every row before any is read (its coarse solve from
        u_0, the C-points' values and an F-relaxation), so only point 0 is put in."""
        if warm is not None:
            if self.lv[0].lay.holds_origin:
                warm[0] = u0
            return warm
        xp, be = self.xp, self.be
        u = xp.empty((self.lv[0].rows, *s.shape), dtype=be.dtype)
        if nested:
            if self.lv[0].lay.holds_origin:
                u[0] = u0
            return u
        if self.comm.size > 1:
            u0 = self.comm.bcast_array(u0 if self.me == 0 else None, self.ranks[0], s.shape, np.dtype(be.dtype), xp)
        u[...] = u0
        return u

    def solve(self, phi, data, u0, sample_shape, warm=None, access=None, levels=None,
              tol=None, max_iter=None, sample_data=(), choice: SolveStats | None = None):
        """Solve the chain; returns (u, SolveStats).

        Args:
            phi: batched step, see the module docstring.
            data: tuple of this rank's level-0 step data, each (b − a, ...).
            u0: (B, *S) value at point 0 on the position holding it (ignored elsewhere).
            sample_shape: (B, *S), the same on every rank.
            warm: this rank's level-0 rows from a previous solve, (rows, B, *S), or None for the
                initial guess (u_0 at every point, or nested iteration with ``options.nested``).
                Its row 0 is overwritten with u0 on the position holding point 0.
            access: optional callback ``access(k, u)`` after the k-th coarse correction on level 0
                (XBraid's access): ``u`` is this rank's level-0 rows, C-points corrected, F-points
                not yet relaxed.  Read-only.
            levels: use this many levels (≤ the hierarchy's) instead of the options' choice, e.g.
                the forward solve's choice for the adjoint solve.
            tol, max_iter: override the options' tolerance / iteration cap for this solve
                (adaptive iteration control).
            sample_data: indices of the ``data`` arrays with per-sample rows (b − a, B, ...), cut
                into micro-batches when one level is in use (see :class:`SerialChain`).
            choice: :meth:`choose`'s result for these arguments: its levels (and estimate) are
                used instead of estimating again.

        Returns:
            u: (rows, B, *S) this rank's level-0 rows: its ghost point a followed by its points
               a+1..b (position 0: point 0 first).
        """
        t0 = time.perf_counter()
        opts = self.opts
        shape = self._check_inputs(data, u0, sample_shape, warm)
        tol = opts.tol if tol is None else float(tol)
        max_iter = opts.max_iter if max_iter is None else int(max_iter)
        s = SolveState(self, phi, shape, opts.sync_timing)
        stats = s.stats
        comm_before = (self.comm.stats.messages, self.comm.stats.bytes)
        n_lv = given_levels(levels, opts, self.n_levels) if choice is None else choice.levels
        if choice is not None:
            stats.adopt(choice)
        if n_lv != 1:
            self.plan.distribute(s, data, sample_data)
            # the nested start's correction reads level 0's guess only where the maps halve
            nested = opts.nested and n_lv is not None and not s.halves(0)
            s.u[0] = self._initial_guess(s, u0, warm, nested)
        if n_lv is None:
            self._estimate(stats, phi, s.u[0], s.data[0], s.h[0], shape[0])
            n_lv = stats.levels
        s.L = n_lv - 1
        stats.levels = n_lv
        if n_lv > 1:
            self.plan.gather_coarsest(s)
            # g_l is written by every restriction before it is read; only the nested start, which
            # solves and relaxes the coarse levels before any restriction, reads g = 0
            fill = self.xp.zeros if opts.nested and warm is None else self.xp.empty
            for l in range(1, n_lv):
                shape = (self.lv[l].rows, *s.shapes[l])
                s.g[l] = fill(shape, dtype=self.be.dtype)
                if s.alias[l] is not None:
                    s.u[l] = s.u[l - 1][s.alias[l]]
                    continue
                s.u[l] = self.xp.empty(shape, dtype=self.be.dtype)
                if self.lv[l].lay.holds_origin and self.lv[l].rows:
                    s.to_coarse(l - 1, s.u[l - 1][0:1], out=s.u[l][0:1])
        final = opts.final_residual or tol > 0 or opts.rtol > 0
        for v in phases(s.L, opts, max_iter=max_iter, cold=warm is None, final_residual=final,
                        converged=lambda it: stats.converged):
            l = v.level
            if v.phase == "f_relax":
                f_relax(s, l, v.zero)
            elif v.phase == "c_relax":
                c_relax(s, l)
            elif v.phase == "residual":
                s.r = residual(s, l)
                if l == 0:
                    norm = s.norm(s.r)
                    stats.residuals.append(norm)
                    stats.converged = norm <= tol or (opts.rtol > 0 and norm <= opts.rtol * stats.residuals[0])
            elif v.phase == "restrict":
                restrict(s, l - 1, s.r, consistent=v.consistent)
            elif v.phase == "correct":
                correct(s, l, values=v.values)
            elif v.phase == "interpolate":
                interpolate(s, l)
            elif v.phase == "coarse_solve":
                coarse_solve(s, zero_rhs=v.zero)
            elif v.phase == "iterated":
                stats.iterations += 1
                if access is not None:
                    access(stats.iterations, s.u[0])
            elif v.phase == "serial":  # one level: layer-serial propagation, pipelined over the ranks
                s.u[0], _ = self._serial.solve(phi, data, u0, shape, sample_data=sample_data)
                s.steps[0] += self.b - self.a
                stats.residuals = [0.0]
                stats.converged = True
        stats.steps_per_level = list(s.steps)
        stats.coarse_steps = s.coarse_steps
        stats.phase_seconds = s.timer.as_dict()
        stats.messages = self.comm.stats.messages - comm_before[0]
        stats.bytes = self.comm.stats.bytes - comm_before[1]
        stats.wall_s = time.perf_counter() - t0
        return s.u[0], stats
