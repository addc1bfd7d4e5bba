"""The state of one MGRIT solve, created by :meth:`~gpubraid.solver.mgrit.MGRIT.solve` and dropped
after it: the levels in use, every level's arrays, the step counters and the phase timer.

The solver object itself holds only what its construction fixed (grid, distribution, index sets,
communication plan) and is never changed by a solve, so a solve that raises leaves it intact.
"""
from __future__ import annotations

from ..runtime import tags
from ..runtime.profiling import PhaseTimer
from .options import SolveStats
from .space import add_interpolated, level_shapes, restrict_space


class SolveState:
    """One solve on this rank.

    Attributes:
        phi: the batched step ``phi(u, data, h)``.
        shape: sample shape (B, *S) of level 0.
        shapes: sample shape (B, *S_l) of each level (S_l = S unless spatial coarsening halves the
            feature maps: :mod:`.space`).
        L: the coarsest level of this solve (levels 0..L are in use).
        u, g: per level l, (rows_l, B, *S_l) state and FAS right-hand side (g[0] is None).
        alias: per level l, the slice of level l − 1's rows that u[l] is a view of (the solver's
            :func:`~.level.coarse_rows_in_fine`), or None when u[l] is an array of its own.
        data, h: per level l, this rank's step data (tuple of (k_l, ...) arrays) and step sizes (k_l,).
        coarse_data, coarse_h: level L's step data and step sizes of all its steps (root only).
        row_specs: per level, its owned rows per rank for the coarsest solve's gather and scatter
            (:func:`.coarse.row_spec`; None where only the root owns rows).
        r: the last residual (n_c, B, *S_l), handed from ``residual`` to ``restrict``; ``r_in_g``: it
            lies in the next level's g rows 1.. (the restriction builds g there in place).
        linear: the correction scheme is in use (``MGRITOptions.linear``).
        keep_correction, e: level 0's last C-point correction (n_c, B, *S) is kept in ``e`` (for
            :func:`.interpolate.interpolate`); ``c_old``: level 0's C-points before the coarse levels
            changed them in place (when level 1 is their view), for ``e``.
        steps: step applications per level; coarse_steps: those of the coarsest solve.
        stats: the SolveStats being filled.
    """

    def __init__(self, solver, phi, shape: tuple, sync_timing: bool):
        self.comm, self.ranks, self.me, self.root = solver.comm, solver.ranks, solver.me, solver.root
        self.be, self.xp = solver.be, solver.xp
        self.grids, self.layouts, self.lv, self.alias = solver.levels, solver.layouts, solver.lv, solver.alias
        self.row_specs = solver.row_specs
        self.phi, self.shape = phi, shape
        self.shapes = level_shapes(shape, solver.opts.spatial_levels, len(solver.lv))
        n = len(self.lv)
        self.L = n - 1
        self.u = [None] * n
        self.g = [None] * n
        self.data = [None] * n
        self.h = [None] * n
        self.coarse_data = self.coarse_h = None
        self.r, self.r_in_g = None, False
        self.linear = solver.opts.linear
        self.keep_correction = not solver.opts.final_relax
        self.e = self.c_old = None
        self.steps = [0] * n
        self.coarse_steps = 0
        self.timer = PhaseTimer(self.be.synchronize if sync_timing else None)
        self.stats = SolveStats()

    def step(self, l: int, u, idx):
        """Φ on level l for the local data rows ``idx`` (slice or index array) applied to u."""
        data = tuple(d[idx] for d in self.data[l])
        self.steps[l] += u.shape[0]
        return self.phi(u, data, self.h[l][idx])

    def step_to(self, l: int, u, idx, rhs, out, fused: bool = True) -> None:
        """out = Φ(u) + rhs (rhs None: Φ(u)) on level l for the local data rows ``idx`` (a slice), ``out``
        rows of the level: in one pass by the step callback's ``into`` when it has one and takes these
        arrays (``fused``; its layers run in order, each writing before the next reads, so ``out`` must
        hold none of ``u``'s rows), else computed, then added or copied in."""
        into = getattr(self.phi, "into", None) if fused else None
        if into is not None and into(u, tuple(d[idx] for d in self.data[l]), self.h[l][idx], rhs, out):
            self.steps[l] += u.shape[0]
            return
        v = self.step(l, u, idx)
        if rhs is None:
            out[...] = v
        else:
            self.xp.add(v, rhs, out=out)

    def halves(self, l: int) -> bool:
        """Whether level l + 1 holds level l's feature maps halved (spatial coarsening)."""
        return self.shapes[l + 1] != self.shapes[l]

    def to_coarse(self, l: int, x, out=None):
        """Level-l rows ``x`` (k, B, *S_l) as level l + 1 holds them: R x when the maps halve (into
        ``out`` if given), else ``x`` itself (copied into ``out`` if given)."""
        if self.halves(l):
            return restrict_space(self.xp, x, out)
        if out is None:
            return x
        out[...] = x
        return out

    def add_to_fine(self, l: int, target, v) -> None:
        """target += P v: level-(l + 1) rows ``v`` added to level-l rows ``target`` (a view)."""
        if self.halves(l):
            add_interpolated(self.xp, target, v)
        else:
            target += v

    def exchange_ghost(self, l: int, send_now: bool, reqs: list) -> None:
        """Send the last row to the next position (if ``send_now``) and receive the ghost row."""
        lv, u = self.lv[l], self.u[l]
        lay = lv.lay
        with self.timer("exchange"):
            if send_now and lay.next is not None:
                reqs.append(self.comm.isend(u[lv.rows - 1], self.ranks[lay.next], tags.ghost(l)))
            if lay.prev is not None:
                self.comm.recv_into(u[0], self.ranks[lay.prev], tags.ghost(l))

    def send_last(self, l: int, reqs: list) -> None:
        """Send the last row of level l to the next position (no receive)."""
        lv = self.lv[l]
        with self.timer("exchange"):
            reqs.append(self.comm.isend(self.u[l][lv.rows - 1], self.ranks[lv.lay.next], tags.ghost(l)))

    def norm(self, r) -> float:
        """Global 2-norm of the distributed residual ``r``."""
        local = float(self.be.scalar(self.xp.vdot(r, r))) if r.size else 0.0  # no r * r temporary
        return self.comm.allreduce_sum(local) ** 0.5
