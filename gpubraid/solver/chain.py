"""Layer-serial propagation of one chain across the ranks that hold its blocks.

:class:`SerialChain` has the solver interface of :class:`~gpubraid.solver.mgrit.MGRIT`, so the
serial method and every one-level solve are the same objective code with this chain in place
of MGRIT (docs/algorithm.md §2).
"""
from __future__ import annotations

import numpy as np

from ..runtime import tags
from ..runtime.comm import Comm
from .options import MGRITOptions, SolveStats


class SerialChain:
    """One chain of N steps in solver order, propagated step by step across its positions.

    Position p owns steps [bounds[p], bounds[p + 1]) and waits for its left neighbour's last
    point before stepping.  Same arguments and :meth:`solve` as :class:`~gpubraid.solver.mgrit.MGRIT`
    (the MGRIT-only ones are accepted and ignored); rows returned: the ghost point followed by
    the owned points, as MGRIT returns them.
    """

    opts = MGRITOptions(max_levels=1)

    def __init__(self, comm: Comm, ranks, bounds, h, backend):
        self.comm, self.be = comm, backend
        self.ranks = [int(r) for r in ranks]
        self.me = self.ranks.index(comm.rank)
        self.a, self.b = int(bounds[self.me]), int(bounds[self.me + 1])
        self.h = backend.asarray(np.asarray(h)[self.a:self.b])

    def solve(self, phi, data, u0, sample_shape, warm=None, access=None, **_):
        """Rows (b − a + 1, *sample_shape) of u_a..u_b and SolveStats (0 iterations)."""
        xp, n = self.be.xp, self.b - self.a
        U = xp.empty((n + 1, *sample_shape), dtype=self.be.dtype)
        if self.me == 0:
            U[0] = u0
        else:
            self.comm.recv_into(U[0], self.ranks[self.me - 1], tags.CHAIN)
        for i in range(n):
            U[i + 1] = phi(U[i:i + 1], tuple(d[i:i + 1] for d in data), self.h[i:i + 1])[0]
        if self.me + 1 < len(self.ranks):
            Comm.waitall([self.comm.isend(U[-1], self.ranks[self.me + 1], tags.CHAIN)])
        stats = SolveStats(converged=True, residuals=[0.0], steps_per_level=[n], levels=1)
        return U, stats
