"""Distributed MGRIT with FAS (docs/algorithm.md §3): the solver that replaces serial propagation.

The solver knows nothing about networks.  A problem hands it, in solver order (see grid.py):

    phi(u, data, h) -> Φ(u)   batched step: u (k, B, *S), data a tuple of (k, ...) arrays, h (k,)
    data                      this rank's level-0 step data, one row per owned level-0 step
    u0                        the value at point 0 (on the rank that holds point 0)

Level l solves u_i = Φ_{l,i−1}(u_{i−1}) + g_{l,i}.  One iteration, with the names of the math:

    f_relax / c_relax      relaxation (F or FCF; ``nrelax`` CF sweeps after the first F)
    restrict               C-point residual r, injection v = u_c, g_{l+1} = r + v − Φ_{l+1}(v)
    coarse_solve           sequential stepping on the coarsest level, gathered to rank 0
    correct                u_c ← v_new, then f_relax (on level 0 folded into the next iteration)

F-relaxation on a level is m − 1 batched ``phi`` calls, each advancing every local interval at
once with its own step data; the interval before a rank's first C-point is finished after the
ghost value arrives from the left neighbour.

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
from ..runtime.profiling import PhaseTimer
from .grid import Distribution, LevelGrid, build_hierarchy
from .options import MGRITOptions, SolveStats

TAG_GHOST, TAG_FETCH, TAG_GATHER, TAG_SCATTER, TAG_SETUP = 100, 200, 300, 400, 500


class _Level:
    """This rank's rows of one level and the index sets the sweeps use (O(1) Python work)."""

    def __init__(self, grid: LevelGrid, lay, be: Backend, is_coarsest: bool):
        self.grid, self.lay = grid, lay
        self.rows = lay.rows
        self.u = self.g = self.data = self.h = None
        n, first_pt = self.rows, lay.lo - 1
        if n == 0 or is_coarsest:
            self.c_rows = None
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

    # step applications of each building block on this rank (the cycle schedule counts with these)
    def f_relax_steps(self) -> int:
        return sum(len(range(*s.indices(self.rows))) for s in self.f_slices) + len(self.leading)

    def c_steps(self) -> int:
        return int(self.c_rows_host.size)


def level_plan(grid: LevelGrid, lay, coarse_lay, backend: Backend) -> dict | None:
    """What one position does on one non-coarsest level, as the solver's sweeps issue it (public,
    for cost models): F-relaxation calls (intervals per F-slice call, single-point leading calls),
    C-points (one c_relax / residual call over them), whether the last row is final after the
    local slices, and the restriction's coarse-step call.  None when the position holds nothing."""
    lv = _Level(grid, lay, backend, False)
    if lv.rows == 0:
        return None
    return {"slices": [len(range(*s.indices(lv.rows))) for s in lv.f_slices], "leading": len(lv.leading),
            "nc": lv.c_steps(), "last_local": bool(lv.last_is_local), "has_prev": lay.prev is not None,
            "restrict": coarse_lay.rows - 1 if coarse_lay.rows > 1 else 0,
            "restrict_prev": coarse_lay.rows > 0 and coarse_lay.prev is not None}


class MGRIT:
    """MGRIT solver for one distributed chain of N steps in solver order.

    Args:
        comm: communicator (None: one process).
        ranks: MPI rank of each position 0..P−1 in solver order (reversed for the adjoint).
        bounds: (P + 1,) level-0 step boundaries of the positions.
        h: (N,) step sizes in solver order (host floats).
        options: MGRITOptions.
        backend: array backend of the states.
    """

    def __init__(self, comm: Comm | None, ranks, bounds, h, options: MGRITOptions, backend: Backend):
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
        self.coarsest = self.n_levels - 1
        self.layouts = [[self.dist.layout(l, p) for p in range(self.dist.P)] for l in range(self.n_levels)]
        self.lv = [_Level(g, self.layouts[l][self.me], backend, l == self.coarsest)
                   for l, g in enumerate(self.levels)]
        self.a = int(self.dist.bounds[self.me])
        self.b = int(self.dist.bounds[self.me + 1])
        from .chain import SerialChain  # serial.py builds on this module's SolveStats

        self._serial = SerialChain(comm, self.ranks, bounds, h, backend)
        self._plan_fetch()
        self.T = float(np.sum(self.levels[0].H))
        self.H_max = [float(g.H.max()) if g.N else 0.0 for g in self.levels]
        self.timer = PhaseTimer(backend.synchronize if options.sync_timing else None)
        self.steps = [0] * self.n_levels
        self.coarse_steps = 0
        self.phi = None

    # -- setup ----------------------------------------------------------------------------------
    def _needed_steps(self, level: int, p: int) -> np.ndarray:
        """Level-0 step indices whose data position p needs for its steps on ``level``."""
        lay = self.layouts[level][p]
        if lay.hi <= lay.lo:
            return np.zeros(0, dtype=np.int64)
        return self.levels[level].fine[np.arange(lay.lo - 1, lay.hi - 1)]

    def _plan_fetch(self) -> None:
        """Which level-0 step data each position sends where, for all coarse levels (vectorised)."""
        P = self.dist.P
        send = {}   # dest position -> [arrays of local level-0 step rows (s − a)], level order
        recv = {}   # src position -> [(level, local data rows k, level-0 steps s)], level order
        for p in range(P):
            for l in range(1, self.n_levels):
                steps = self._needed_steps(l, p)
                if steps.size == 0:
                    continue
                own = self.dist.step_owner(steps)
                if p != self.me:
                    mine = own == self.me
                    if mine.any():
                        send.setdefault(p, []).append(steps[mine] - self.a)
                else:
                    k_all = np.arange(steps.size)
                    for o in np.unique(own):
                        sel = own == o
                        recv.setdefault(int(o), []).append((l, k_all[sel], steps[sel]))
        self.fetch_send = {p: np.concatenate(v) for p, v in send.items()}
        self.fetch_recv = recv

    def _setup(self, data) -> None:
        """Step data and step sizes of every level on this rank (level 0: ``data``)."""
        xp = self.xp
        for p_arr in data:
            if p_arr.shape[0] != self.b - self.a:
                raise UserError(f"data: step data must have {self.b - self.a} rows (this rank's steps); "
                                f"got {p_arr.shape[0]}")
        lv0 = self.lv[0]
        lv0.data = tuple(data)
        lv0.h = self.be.asarray(self.levels[0].H[self.a:self.b])
        for l in range(1, self.n_levels):
            lv, lay = self.lv[l], self.layouts[l][self.me]
            k = max(lay.hi - lay.lo, 0)
            lv.data = tuple(xp.empty((k, *d.shape[1:]), dtype=d.dtype) for d in data)
            lv.h = self.be.asarray(self.levels[l].H[lay.lo - 1:lay.hi - 1]) if k else self.be.zeros(0)
        # local copies first, then messages
        for l, k, s in self.fetch_recv.get(self.me, []):
            kk, ss = xp.asarray(k), xp.asarray(s - self.a)
            for dst, src in zip(self.lv[l].data, data):
                dst[kk] = src[ss]
        with self.timer("exchange"):
            reqs = []
            for p, rows in sorted(self.fetch_send.items()):
                idx = xp.asarray(rows)
                for j, d in enumerate(data):
                    reqs.append(self.comm.isend(xp.ascontiguousarray(d[idx]), self.ranks[p], TAG_FETCH + j))
            for o, items in sorted(self.fetch_recv.items()):
                if o == self.me:
                    continue
                total = sum(k.size for _, k, _ in items)
                for j, d in enumerate(data):
                    buf = xp.empty((total, *d.shape[1:]), dtype=d.dtype)
                    self.comm.recv_into(buf, self.ranks[o], TAG_FETCH + j)
                    off = 0
                    for l, k, _ in items:
                        self.lv[l].data[j][xp.asarray(k)] = buf[off:off + k.size]
                        off += k.size
            Comm.waitall(reqs)

    def _setup_coarsest(self, data) -> None:
        """Gather the coarsest level's step data on the root position."""
        L = self.coarsest
        lv = self.lv[L]
        if self.me != self.root:
            if lv.lay.n_owned > 0:
                with self.timer("exchange"):
                    reqs = [self.comm.isend(self.xp.ascontiguousarray(d), self.ranks[self.root], TAG_SETUP + j)
                            for j, d in enumerate(lv.data)]
                    Comm.waitall(reqs)
            return
        N = self.levels[L].N
        full = tuple(self.xp.empty((N, *d.shape[1:]), dtype=d.dtype) for d in data)
        with self.timer("exchange"):
            for p, lay in enumerate(self.layouts[L]):
                if lay.n_owned == 0:
                    continue
                sl = slice(lay.lo - 1, lay.hi - 1)
                for j in range(len(full)):
                    if p == self.me:
                        full[j][sl] = lv.data[j]
                    else:
                        buf = self.xp.empty((lay.n_owned, *full[j].shape[1:]), dtype=full[j].dtype)
                        self.comm.recv_into(buf, self.ranks[p], TAG_SETUP + j)
                        full[j][sl] = buf
        self.coarse_data = full
        self.coarse_h = self.be.asarray(self.levels[L].H)

    # -- the building blocks ----------------------------------------------------------------------
    def _step(self, l: int, u, idx):
        """Φ on level l for the local data rows ``idx`` (slice or index array) applied to u."""
        lv = self.lv[l]
        data = tuple(d[idx] for d in lv.data)
        self.steps[l] += u.shape[0]
        return self.phi(u, data, lv.h[idx])

    def _exchange_ghost(self, l: int, send_now: bool, reqs: list) -> None:
        """Send the last row to the next position (if ``send_now``) and receive the ghost row."""
        lv = self.lv[l]
        lay = lv.lay
        with self.timer("exchange"):
            if send_now and lay.next is not None:
                reqs.append(self.comm.isend(lv.u[lv.rows - 1], self.ranks[lay.next], TAG_GHOST + l))
            if lay.prev is not None:
                self.comm.recv_into(lv.u[0], self.ranks[lay.prev], TAG_GHOST + l)

    def f_relax(self, l: int) -> None:
        """u_{c+j} = Φ(u_{c+j−1}) + g_{c+j} through every interval; ends with fresh ghosts."""
        lv = self.lv[l]
        if lv.rows == 0:
            return
        with self.timer("relax"):
            u, g = lv.u, lv.g
            for tgt in lv.f_slices:
                src = slice(tgt.start - 1, tgt.stop - 1, tgt.step)
                v = self._step(l, u[src], src)
                u[tgt] = v if g is None else v + g[tgt]
            reqs = []
            self._exchange_ghost(l, lv.last_is_local, reqs)
            for r in lv.leading:
                v = self._step(l, u[r - 1:r], slice(r - 1, r))[0]
                u[r] = v if g is None else v + g[r]
            if not lv.last_is_local and lv.lay.next is not None:
                with self.timer("exchange"):
                    reqs.append(self.comm.isend(u[lv.rows - 1], self.ranks[lv.lay.next], TAG_GHOST + l))
            Comm.waitall(reqs)

    def c_relax(self, l: int) -> None:
        """u_c = Φ(u_{c−1}) + g_c at this rank's C-points (ghosts are fresh after f_relax)."""
        lv = self.lv[l]
        if lv.c_rows is None or lv.c_rows.size == 0:
            return
        with self.timer("relax"):
            c = lv.c_rows
            v = self._step(l, lv.u[c - 1], c - 1)
            lv.u[c] = v if lv.g is None else v + lv.g[c]

    def relax(self, l: int) -> None:
        """F, then ``nrelax`` CF sweeps (XBraid's nrelax: 0 → F, 1 → FCF)."""
        self.f_relax(l)
        for _ in range(self.opts.nrelax_at(l)):
            self.c_relax(l)
            self.f_relax(l)

    def residual(self, l: int):
        """r_c = g_c + Φ(u_{c−1}) − u_c at this rank's C-points, shape (n_c, B, *S)."""
        lv = self.lv[l]
        with self.timer("residual"):
            c = lv.c_rows
            if c is None or c.size == 0:
                return self.xp.empty((0, *self.sample_shape), dtype=self.be.dtype)
            r = self._step(l, lv.u[c - 1], c - 1) - lv.u[c]
            return r if lv.g is None else r + lv.g[c]

    def restrict(self, l: int, r, consistent: bool = False) -> None:
        """FAS restriction to level l + 1: v = u_c, g = r + v − Φ_{l+1}(v_prev).

        ``consistent``: the C-point values already satisfy v = Φ_{l+1}(v_prev) + g_old with
        g_old = 0 (right after a nested-iteration guess whose coarse level is solved exactly), so
        g = r without applying Φ_{l+1} (saves the coarse steps, identical result)."""
        lv, co = self.lv[l], self.lv[l + 1]
        if co.rows == 0:
            return
        with self.timer("restrict"):
            if co.lay.holds_origin:
                co.u[0] = lv.u[0]
            if co.rows > 1:
                co.u[1:] = lv.u[lv.c_rows]
            reqs = []
            self._exchange_ghost(l + 1, True, reqs)
            if co.rows > 1:
                if consistent:
                    co.g[1:] = r
                else:
                    co.g[1:] = r + co.u[1:] - self._step(l + 1, co.u[:-1], slice(0, co.rows - 1))
            Comm.waitall(reqs)

    def correct(self, l: int) -> None:
        """u_c ← v_new at this rank's C-points of level l (injection's ideal interpolation)."""
        lv, co = self.lv[l], self.lv[l + 1]
        if co.rows > 1:
            with self.timer("correct"):
                lv.u[lv.c_rows] = co.u[1:]

    def coarse_solve(self) -> None:
        """Sequential solve of the coarsest level on the root position (gather, step, scatter)."""
        L = self.coarsest
        lv = self.lv[L]
        xp = self.xp
        layouts = self.layouts[L]
        origin = 0  # position holding point 0
        with self.timer("coarse_solve"):
            if self.me != self.root:
                reqs = []
                with self.timer("exchange"):
                    if self.me == origin:
                        reqs.append(self.comm.isend(lv.u[0], self.ranks[self.root], TAG_GATHER))
                    if lv.lay.n_owned and lv.g is not None:
                        reqs.append(self.comm.isend(lv.g[1:], self.ranks[self.root], TAG_GATHER + 1))
                    if lv.lay.n_owned:
                        self.comm.recv_into(lv.u[1:], self.ranks[self.root], TAG_SCATTER)
                    Comm.waitall(reqs)
                return
            N = self.levels[L].N
            shape = self.sample_shape
            U = xp.empty((N + 1, *shape), dtype=self.be.dtype)
            G = xp.zeros((N + 1, *shape), dtype=self.be.dtype) if L > 0 else None
            with self.timer("exchange"):
                if self.me == origin:
                    U[0] = lv.u[0]
                else:
                    self.comm.recv_into(U[0], self.ranks[origin], TAG_GATHER)
                if G is not None:
                    for p, lay in enumerate(layouts):
                        if lay.n_owned == 0:
                            continue
                        if p == self.me:
                            G[lay.lo:lay.hi] = lv.g[1:]
                        else:
                            self.comm.recv_into(G[lay.lo:lay.hi], self.ranks[p], TAG_GATHER + 1)
            for k in range(1, N + 1):
                d = tuple(x[k - 1:k] for x in self.coarse_data)
                v = self.phi(U[k - 1:k], d, self.coarse_h[k - 1:k])[0]
                U[k] = v if G is None else v + G[k]
            self.coarse_steps += N
            with self.timer("exchange"):
                reqs = []
                for p, lay in enumerate(layouts):
                    if lay.n_owned == 0:
                        continue
                    if p == self.me:
                        lv.u[1:] = U[lay.lo:lay.hi]
                    else:
                        reqs.append(self.comm.isend(U[lay.lo:lay.hi], self.ranks[p], TAG_SCATTER))
                Comm.waitall(reqs)

    # -- cycles -----------------------------------------------------------------------------------
    def _visit(self, l: int, kind: str) -> None:
        """Cycle from level l ≥ 1 down and back up (V, or F with an extra V at the next level)."""
        if l == self.coarsest:
            self.coarse_solve()
            return
        self.relax(l)
        self.restrict(l, self.residual(l))
        self._visit(l + 1, kind)
        if kind == "F" and l + 1 < self.coarsest:
            self._visit(l + 1, "V")
        self.correct(l)
        self.f_relax(l)

    def _norm(self, r) -> float:
        local = float(self.be.scalar((r * r).sum())) if r.size else 0.0
        return self.comm.allreduce_sum(local) ** 0.5

    # -- the cycle schedule (public) -------------------------------------------------------------
    def schedule(self, iterations: int, levels: int | None = None, warm: bool = True,
                 converged_early: bool = False):
        """The phases one solve issues on this rank, in order, with their step applications.

        Yields ``(phase, level, steps)`` with phase one of ``f_relax``, ``c_relax``, ``residual``,
        ``restrict`` (steps counted on the coarse level ``level``), ``correct``, ``coarse_solve``
        (steps on the root position only) and ``nested`` markers.  It mirrors :meth:`solve` for a
        solve that runs ``iterations`` coarse corrections (``max_iter``; ``converged_early``: it
        stopped on the tolerance instead, so the final residual is always computed) with
        ``levels`` levels (default: the whole hierarchy), from a warm start (``warm``) or from the
        initial guess of the options (``nested`` or u_0 everywhere).  The stability estimate is not
        included.  Summing ``steps`` per level gives ``SolveStats.steps_per_level`` (+ coarse).
        """
        L = (levels if levels is not None else self.n_levels) - 1
        opts = self.opts
        lv = self.lv

        def relax(l, first_f=True):
            if first_f:
                yield ("f_relax", l, lv[l].f_relax_steps())
            for _ in range(opts.nrelax_at(l)):
                yield ("c_relax", l, lv[l].c_steps())
                yield ("f_relax", l, lv[l].f_relax_steps())

        def coarse():
            yield ("coarse_solve", L, self.levels[L].N if self.me == self.root else 0)

        def visit(l, kind):
            if l == L:
                yield from coarse()
                return
            yield from relax(l)
            yield ("residual", l, lv[l].c_steps())
            co = lv[l + 1]
            yield ("restrict", l + 1, co.rows - 1 if co.rows > 1 else 0)
            yield from visit(l + 1, kind)
            if kind == "F" and l + 1 < L:
                yield from visit(l + 1, "V")
            yield ("correct", l, 0)
            yield ("f_relax", l, lv[l].f_relax_steps())

        if L == 0:
            yield from coarse()
            return
        nested = opts.nested and not warm
        if nested:
            yield ("nested", L, 0)
            yield from coarse()
            for l in range(L - 1, -1, -1):
                yield ("correct", l, 0)
                yield ("f_relax", l, lv[l].f_relax_steps())
        kind = "F" if opts.fmg else "V"
        for it in range(iterations + 1):
            last = it == iterations
            if it == 0 and (nested or (opts.skip and not warm)):
                if nested:
                    yield from relax(0, first_f=False)
            else:
                yield from relax(0)
            if last and not (opts.final_residual or converged_early):
                return
            yield ("residual", 0, lv[0].c_steps())
            if last:
                return
            co = lv[1]
            skip_restrict = nested and it == 0 and L == 1
            yield ("restrict", 1, co.rows - 1 if co.rows > 1 and not skip_restrict else 0)
            yield from visit(1, kind)
            if kind == "F" and 1 < L:
                yield from visit(1, "V")
            yield ("correct", 0, 0)

    # -- stability-based level choice ------------------------------------------------------------
    def estimate_rho(self, phi, u_lin):
        """Spectral scale ρ of ∂f/∂u over this chain (global max over layers), generic in ``phi``.

        Power iteration per step on J v ≈ (Φ(u + εv) − Φ(u) − εv) / (ε h) at the linearisation
        states ``u_lin`` (this rank's level-0 rows before each owned step, a few samples).  The
        start vectors depend only on the global step index, so the result does not depend on the
        number of ranks.  Returns (ρ, step calls made, samples used).
        """
        xp, be = self.xp, self.be
        lv0 = self.lv[0]
        n = self.b - self.a
        if n == 0:
            return self.comm.allreduce_max(0.0), 0, 0
        s = min(self.opts.stability_samples, u_lin.shape[1])
        u = xp.ascontiguousarray(u_lin[:n, :s])
        size = int(np.prod(u.shape[1:]))
        k = np.arange(self.a, self.b, dtype=np.float64)[:, None]
        i = np.arange(size, dtype=np.float64)[None, :]
        v = be.asarray((np.cos(0.37 * k + 1.13 * i + 0.3) + 0.5).reshape(u.shape))
        axes = tuple(range(1, u.ndim))
        hb = lv0.h.reshape((n,) + (1,) * (u.ndim - 1))
        # per-step ε from that step's own state (a global or per-rank scale would make ρ depend on
        # the distribution)
        eps = float(np.sqrt(np.finfo(np.dtype(be.dtype)).eps)) * (1.0 + xp.abs(u).max(axis=axes, keepdims=True))
        base = phi(u, lv0.data, lv0.h)
        rho_k = None
        for _ in range(self.opts.stability_iters):
            v = v / xp.maximum(xp.sqrt((v * v).sum(axis=axes, keepdims=True)), 1e-300)
            w = (phi(u + eps * v, lv0.data, lv0.h) - base - eps * v) / (eps * hb)
            rho_k = xp.sqrt((w * w).sum(axis=axes))
            v = w
        # with data groups, the first group's samples are the batch's first: only its estimate
        # counts, so the choice is that of one group holding the whole batch
        rho = float(be.scalar(rho_k.max())) if self.comm.first_data_group else 0.0
        return self.comm.allreduce_max(rho), (self.opts.stability_iters + 1) * n, s

    def choose_levels(self, rho: float) -> tuple[int, list]:
        """Levels to use for spectral scale ρ: coarsen while max(H_l)·ρ ≤ ``stability`` and
        ½·T·ρ²·max(H_l) ≤ ``conv_bound`` (when set).  Returns (levels, [max(H_l)·ρ per level ≥ 1])."""
        bound, cb = self.opts.stability, self.opts.conv_bound
        T = self.T
        hr = []
        for l in range(1, self.n_levels):
            x = self.H_max[l] * rho
            if (bound > 0 and x > bound) or (cb > 0 and 0.5 * T * rho * x > cb):
                break
            hr.append(x)
        return 1 + len(hr), hr

    # -- solve ----------------------------------------------------------------------------------
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

    def solve(self, phi, data, u0, sample_shape, warm=None, access=None, levels=None,
              tol=None, max_iter=None):
        """Solve the chain; returns (u, SolveStats).

        Args:
            phi: batched step, see the module docstring.
            data: tuple of this rank's level-0 step data, each (b − a, ...).
            u0: (B, *S) value at point 0 on the position holding it (ignored elsewhere).
            sample_shape: (B, *S), the same on every rank.
            warm: this rank's level-0 rows from a previous solve, (rows, B, *S), or None for the
                initial guess (u_0 at every point, or nested iteration with ``options.nested``).
            access: optional callback ``access(k, u)`` after the k-th coarse correction on level 0
                (XBraid's access): ``u`` is this rank's level-0 rows, C-points corrected, F-points
                not yet relaxed.  Read-only.
            levels: use this many levels (≤ the hierarchy's) instead of the options' choice, e.g.
                the forward solve's choice for the adjoint solve.
            tol, max_iter: override the options' tolerance / iteration cap for this solve
                (adaptive iteration control).

        Returns:
            u: (rows, B, *S) this rank's level-0 rows: its ghost point a followed by its points
               a+1..b (position 0: point 0 first).
        """
        t0 = time.perf_counter()
        xp, be = self.xp, self.be
        self.sample_shape = self._check_inputs(data, u0, sample_shape, warm)
        self.phi = phi
        self.steps = [0] * self.n_levels
        self.coarse_steps = 0
        self.timer = PhaseTimer(be.synchronize if self.opts.sync_timing else None)
        comm_before = (self.comm.stats.messages, self.comm.stats.bytes)
        opts = self.opts
        tol = opts.tol if tol is None else float(tol)
        max_iter = opts.max_iter if max_iter is None else int(max_iter)
        self._setup(data)
        lv0 = self.lv[0]
        if warm is not None:
            lv0.u = warm
            if lv0.lay.holds_origin:
                lv0.u[0] = u0
        else:
            if self.comm.size > 1:
                u0 = self.comm.bcast_array(u0 if self.me == 0 else None, self.ranks[0],
                                           self.sample_shape, np.dtype(be.dtype), xp)
            lv0.u = xp.empty((lv0.rows, *self.sample_shape), dtype=be.dtype)
            lv0.u[...] = u0
        stats = SolveStats()
        if levels is not None:
            n_lv = max(1, min(int(levels), self.n_levels))
        elif (opts.stability > 0 or opts.conv_bound > 0) and self.n_levels > 1:
            rho, calls, s = self.estimate_rho(phi, lv0.u)
            stats.estimate_steps = calls * s / self.sample_shape[0]
            n_lv, stats.h_rho = self.choose_levels(rho)
            stats.rho = rho
        else:
            n_lv = self.n_levels
        if stats.rho is None and n_lv > 1:
            stats.h_rho = []
        self.coarsest = n_lv - 1
        stats.levels = n_lv
        self._setup_coarsest(data)
        for l in range(1, n_lv):
            lv = self.lv[l]
            lv.u = xp.empty((lv.rows, *self.sample_shape), dtype=be.dtype)
            lv.g = xp.zeros_like(lv.u)
            if lv.lay.holds_origin and lv.rows:
                lv.u[0] = lv0.u[0]
        if n_lv == 1:  # no useful coarsening: layer-serial propagation, pipelined over the ranks
            lv0.u, _ = self._serial.solve(phi, data, u0, self.sample_shape)
            self.steps[0] += self.b - self.a
            stats.residuals = [0.0]
            stats.converged = True
        else:
            nested = opts.nested and warm is None
            if nested:
                # nested iteration: coarsest solve from u_0 (g = 0), interpolation by F-relaxation
                self.coarse_solve()
                for l in range(self.coarsest - 1, -1, -1):
                    self.correct(l)
                    self.f_relax(l)
            kind = "F" if opts.fmg else "V"
            it = 0
            while True:
                if it == 0 and (nested or (opts.skip and warm is None)):
                    for _ in range(opts.nrelax_at(0) if nested else 0):
                        self.c_relax(0)
                        self.f_relax(0)
                else:
                    self.relax(0)
                if it == max_iter and not opts.final_residual and tol <= 0 and opts.rtol <= 0:
                    break
                r = self.residual(0)
                norm = self._norm(r)
                stats.residuals.append(norm)
                if norm <= tol or (opts.rtol > 0 and norm <= opts.rtol * stats.residuals[0]):
                    stats.converged = True
                    break
                if it == max_iter:
                    break
                self.restrict(0, r, consistent=nested and it == 0 and self.coarsest == 1)
                self._visit(1, kind)
                if kind == "F" and 1 < self.coarsest:
                    self._visit(1, "V")
                self.correct(0)
                it += 1
                if access is not None:
                    access(it, lv0.u)
            stats.iterations = it
        self.coarsest = self.n_levels - 1
        stats.steps_per_level = list(self.steps)
        stats.coarse_steps = self.coarse_steps
        stats.phase_seconds = self.timer.as_dict()
        stats.messages = self.comm.stats.messages - comm_before[0]
        stats.bytes = self.comm.stats.bytes - comm_before[1]
        stats.wall_s = time.perf_counter() - t0
        return lv0.u, stats
