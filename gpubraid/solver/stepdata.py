"""Step data and step sizes of every level (docs/algorithm.md §3.4): planned once, moved per solve.

The coarse step starting at level-l point i uses the level-0 step data at ``fine[l][i]``
(injection), which may belong to another position.  :class:`StepDataPlan` works out once which
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

    def __init__(self, levels: list[LevelGrid], dist: Distribution, layouts, me: int, a: int, b: int):
        self.levels, self.layouts = levels, layouts
        self.me, self.a, self.b = me, a, b
        send = {}   # dest position -> [arrays of local level-0 step rows (s − a)], level order
        recv = {}   # src position -> [(level, local data rows k, level-0 steps s)], level order
        for p in range(dist.P):
            for l in range(1, len(levels)):
                steps = self._needed_steps(l, p)
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
        self.send = {p: np.concatenate(v) for p, v in send.items()}
        self.recv = recv

    def _needed_steps(self, level: int, p: int) -> np.ndarray:
        """Level-0 step indices whose data position p needs for its steps on ``level``."""
        lay = self.layouts[level][p]
        if lay.hi <= lay.lo:
            return np.zeros(0, dtype=np.int64)
        return self.levels[level].fine[np.arange(lay.lo - 1, lay.hi - 1)]

    def distribute(self, s: SolveState, data) -> None:
        """Fill s.data and s.h of every level on this rank (level 0: ``data`` itself)."""
        xp, a, me = s.xp, self.a, self.me
        s.data[0] = tuple(data)
        s.h[0] = s.be.asarray(self.levels[0].H[a:self.b])
        for l in range(1, len(self.levels)):
            lay = self.layouts[l][me]
            k = max(lay.hi - lay.lo, 0)
            s.data[l] = tuple(xp.empty((k, *d.shape[1:]), dtype=d.dtype) for d in data)
            s.h[l] = s.be.asarray(self.levels[l].H[lay.lo - 1:lay.hi - 1]) if k else s.be.zeros(0)
        # local copies first, then messages
        for l, k, st in self.recv.get(me, []):
            kk, ss = xp.asarray(k), xp.asarray(st - a)
            for dst, src in zip(s.data[l], data):
                dst[kk] = src[ss]
        with s.timer("exchange"):
            reqs = []
            for p, rows in sorted(self.send.items()):
                idx = xp.asarray(rows)
                for d in data:
                    reqs.append(s.comm.isend(xp.ascontiguousarray(d[idx]), s.ranks[p], tags.STEP_DATA))
            for o, items in sorted(self.recv.items()):
                if o == me:
                    continue
                total = sum(k.size for _, k, _ in items)
                for j, d in enumerate(data):
                    buf = xp.empty((total, *d.shape[1:]), dtype=d.dtype)
                    s.comm.recv_into(buf, s.ranks[o], tags.STEP_DATA)
                    off = 0
                    for l, k, _ in items:
                        s.data[l][j][xp.asarray(k)] = buf[off:off + k.size]
                        off += k.size
            Comm.waitall(reqs)

    def gather_coarsest(self, s: SolveState) -> None:
        """Gather the step data and step sizes of this solve's coarsest level s.L on the root."""
        L = s.L
        mine = s.data[L]
        if s.me != s.root:
            if self.layouts[L][s.me].n_owned > 0:
                with s.timer("exchange"):
                    reqs = [s.comm.isend(s.xp.ascontiguousarray(d), s.ranks[s.root], tags.COARSE_DATA)
                            for d in mine]
                    Comm.waitall(reqs)
            return
        N = self.levels[L].N
        full = tuple(s.xp.empty((N, *d.shape[1:]), dtype=d.dtype) for d in mine)
        with s.timer("exchange"):
            for p, lay in enumerate(self.layouts[L]):
                if lay.n_owned == 0:
                    continue
                sl = slice(lay.lo - 1, lay.hi - 1)
                for j in range(len(full)):
                    if p == s.me:
                        full[j][sl] = mine[j]
                    else:
                        buf = s.xp.empty((lay.n_owned, *full[j].shape[1:]), dtype=full[j].dtype)
                        s.comm.recv_into(buf, s.ranks[p], tags.COARSE_DATA)
                        full[j][sl] = buf
        s.coarse_data = full
        s.coarse_h = s.be.asarray(self.levels[L].H)
