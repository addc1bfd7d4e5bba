"""Step data and step sizes of every level (docs/algorithm.md §3.4): planned once, moved per solve.

The coarse step starting at level-l point i uses the level-0 step data at ``fine[l][i]``
(injection), or the mean of the level-0 rows fine[l][i] .. fine[l][i+1] − 1 weighted by their step
sizes (``MGRITOptions.coarse_params = "average"``), which may belong to other positions.  :class:`StepDataPlan` works out once which
level-0 rows each position sends where; :meth:`StepDataPlan.distribute` moves them for one solve
and :meth:`StepDataPlan.gather_coarsest` collects the coarsest level's on the root position.
"""
from __future__ import annotations

import numpy as np

from ..runtime import tags
from ..runtime.comm import Comm
from .grid import Distribution, LevelGrid
from .state import SolveState


class StepDataPlan:
    """Which level-0 step data each position sends where, for all coarse levels (vectorised).

    Args:
        levels: the hierarchy; dist: its distribution; layouts[l][p]: position p's share of level l;
        me: this position; a, b: this position's level-0 steps [a, b).
    """

    def __init__(self, levels: list[LevelGrid], dist: Distribution, layouts, me: int, a: int, b: int,
                 average: bool = False):
        self.levels, self.layouts = levels, layouts
        self.me, self.a, self.b = me, a, b
        self.inject = self._moves(dist, self._start_steps)
        # averaging: every level-0 step a coarse step spans, and per local coarse step the rows of
        # those steps (padded with weight 0) and their weights h_s / Σ h_s
        self.span = self._moves(dist, self._span_steps) if average else None
        self.segments = [self._segments(l) for l in range(len(levels))] if average else None

    def _moves(self, dist: Distribution, needed) -> tuple[dict, dict]:
        """(send, recv) of the level-0 rows ``needed(l, p)`` (level-0 step indices, in the order
        position p stores them on level l): send[dest] = local rows, level order; recv[src] =
        [(level, stored rows k, level-0 steps s)], level order."""
        me, a = self.me, self.a
        send, recv = {}, {}
        for p in range(dist.P):
            for l in range(1, len(self.levels)):
                steps = needed(l, p)
                if steps.size == 0:
                    continue
                own = dist.step_owner(steps)
                if p != me:
                    mine = own == me
                    if mine.any():
                        send.setdefault(p, []).append(steps[mine] - a)
                else:
                    k_all = np.arange(steps.size)
                    for o in np.unique(own):
                        sel = own == o
                        recv.setdefault(int(o), []).append((l, k_all[sel], steps[sel]))
        return {p: np.concatenate(v) for p, v in send.items()}, recv

    def _coarse_steps(self, level: int, p: int) -> np.ndarray:
        """Position p's steps on ``level`` (indices of the level's steps)."""
        lay = self.layouts[level][p]
        return np.arange(lay.lo - 1, lay.hi - 1) if lay.hi > lay.lo else np.zeros(0, dtype=np.int64)

    def _start_steps(self, level: int, p: int) -> np.ndarray:
        """Level-0 steps whose data position p injects into its steps on ``level``."""
        return self.levels[level].fine[self._coarse_steps(level, p)]

    def _span_steps(self, level: int, p: int) -> np.ndarray:
        """Every level-0 step spanned by position p's steps on ``level``, in order."""
        fine = self.levels[level].fine
        k = self._coarse_steps(level, p)
        if k.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.arange(fine[k[0]], fine[k[-1] + 1])

    def _segments(self, level: int):
        """(rows (K, J), weights (K, J)) of this position's K steps on ``level``: the rows of
        :meth:`_span_steps` each one spans (J the longest span, shorter ones padded with weight 0)."""
        fine, h = self.levels[level].fine, self.levels[0].H
        k = self._coarse_steps(level, self.me)
        if level == 0 or k.size == 0:
            return None
        lo, hi = fine[k], fine[k + 1]
        J = int((hi - lo).max())
        j = np.arange(J)[None, :]
        steps = np.minimum(lo[:, None] + j, hi[:, None] - 1)
        w = np.where(lo[:, None] + j < hi[:, None], h[steps], 0.0)
        return steps - lo[0], w / w.sum(axis=1, keepdims=True)

    def distribute(self, s: SolveState, data, sample_data=()) -> None:
        """Fill s.data and s.h of every level on this rank (level 0: ``data`` itself): injected
        rows, or with averaging the weighted mean over each coarse step of every array not listed
        in ``sample_data``.  Per-sample arrays (rows (k, B, *S)) are restricted in space to the
        level's feature maps when it halves them (:mod:`.space`)."""
        xp, a, me = s.xp, self.a, self.me
        s.data[0] = tuple(data)
        s.h[0] = s.be.asarray(self.levels[0].H[a:self.b])
        averaged = [self.span is not None and j not in sample_data for j in range(len(data))]
        inj = [d for d, av in zip(data, averaged) if not av]
        avg = [d for d, av in zip(data, averaged) if av]
        bufs_inj, bufs_avg = [None] * len(self.levels), [None] * len(self.levels)
        for l in range(1, len(self.levels)):
            lay = self.layouts[l][me]
            k = max(lay.hi - lay.lo, 0)
            bufs_inj[l] = [xp.empty((k, *d.shape[1:]), dtype=d.dtype) for d in inj]
            if avg:
                n = self._span_steps(l, me).size
                bufs_avg[l] = [xp.empty((n, *d.shape[1:]), dtype=d.dtype) for d in avg]
            s.h[l] = s.be.asarray(self.levels[l].H[lay.lo - 1:lay.hi - 1]) if k else s.be.zeros(0)
        self._move(s, inj, bufs_inj, *self.inject)
        if avg:
            self._move(s, avg, bufs_avg, *self.span)
        for l in range(1, len(self.levels)):
            it_inj, it_avg = iter(bufs_inj[l]), iter(self._mean(s, l, bufs_avg[l]) if avg else ())
            s.data[l] = tuple(next(it_avg) if av else next(it_inj) for av in averaged)
            if s.shapes[l] != s.shapes[0]:  # per-sample rows hold states: halve them with the level's
                s.data[l] = tuple(_to_level(s, l, d) if j in sample_data else d for j, d in enumerate(s.data[l]))

    def _mean(self, s: SolveState, l: int, raws):
        """Σ_j w_kj raw[rows_kj] per step k of level l, in the same order on every rank count."""
        seg = self.segments[l]
        if seg is None:
            return [r[:0] for r in raws]
        rows, w = seg
        out = []
        for raw in raws:
            wj = s.be.asarray(w).reshape(w.shape + (1,) * (raw.ndim - 1))
            acc = wj[:, 0] * raw[s.xp.asarray(rows[:, 0])]
            for j in range(1, rows.shape[1]):
                acc += wj[:, j] * raw[s.xp.asarray(rows[:, j])]
            out.append(acc.astype(raw.dtype, copy=False))
        return out

    def _move(self, s: SolveState, data, bufs, send, recv) -> None:
        """Fill bufs[l][j] (rows k) with the level-0 rows of ``data[j]`` that ``(send, recv)`` plan."""
        if not data:
            return
        xp, a, me = s.xp, self.a, self.me
        # local rows first (on the host views when they fill a level's rows at one stride; a GPU's
        # per-layer launchers would copy a strided view at every call), then messages
        for l, k, st in recv.get(me, []):
            rows = None if s.be.is_gpu else _strided(k, st - a, len(bufs[l][0]))
            if rows is not None:
                bufs[l] = [src[rows] for src in data]
                continue
            kk, ss = xp.asarray(k), xp.asarray(st - a)
            for dst, src in zip(bufs[l], data):
                dst[kk] = src[ss]
        with s.timer("exchange"):
            reqs = []
            for p, rows in sorted(send.items()):
                idx = xp.asarray(rows)
                for d in data:
                    reqs.append(s.comm.isend(xp.ascontiguousarray(d[idx]), s.ranks[p], tags.STEP_DATA))
            for o, items in sorted(recv.items()):
                if o == me:
                    continue
                total = sum(k.size for _, k, _ in items)
                for j, d in enumerate(data):
                    buf = xp.empty((total, *d.shape[1:]), dtype=d.dtype)
                    s.comm.recv_into(buf, s.ranks[o], tags.STEP_DATA)
                    off = 0
                    for l, k, _ in items:
                        bufs[l][j][xp.asarray(k)] = buf[off:off + k.size]
                        off += k.size
            Comm.waitall(reqs)

    def gather_coarsest(self, s: SolveState) -> None:
        """Gather the step data and step sizes of this solve's coarsest level s.L on the root (one
        collective per data array)."""
        L = s.L
        mine = s.data[L]
        spec = s.row_specs[L]
        if s.me == s.root:
            s.coarse_h = s.be.asarray(self.levels[L].H)
            s.coarse_data = mine
        if spec is None:  # the root holds every step: its own rows are the data
            return
        N = self.levels[L].N
        full = tuple(s.xp.empty((N, *d.shape[1:]), dtype=d.dtype) if s.me == s.root else None for d in mine)
        with s.timer("exchange"):
            for d, out in zip(mine, full):
                s.comm.gather_rows(s.xp.ascontiguousarray(d), out, spec, s.ranks[s.root])
        if s.me == s.root:
            s.coarse_data = full


def _to_level(s: SolveState, l: int, rows):
    """Level-0 shaped per-sample rows (k, B, *S) restricted in space to level l's maps."""
    for k in range(l):
        rows = s.to_coarse(k, rows)
    return rows


def _strided(k, src, n: int):
    """The slice that selects rows ``src`` of the level-0 data when they fill all ``n`` rows of a
    coarse level's buffer in order (``k`` = 0..n − 1) at one stride, else None: the buffer is then
    that view, no copy (the adjoint's linearisation states: 41 MB a level at peaks' 256 layers)."""
    k, src = np.asarray(k), np.asarray(src)
    if n < 1 or k.size != n or not np.array_equal(k, np.arange(n)):
        return None
    step = int(src[1] - src[0]) if n > 1 else 1
    if step < 1 or not np.array_equal(src, src[0] + step * np.arange(n)):
        return None
    return slice(int(src[0]), int(src[-1]) + 1, step)
