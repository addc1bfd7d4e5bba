"""Layer-serial propagation of one chain across the ranks that hold its blocks.

:class:`SerialChain` has the solver interface of :class:`~gpubraid.solver.mgrit.MGRIT`, so the
serial method and every one-level solve are the same objective code with this chain in place
of MGRIT (docs/algorithm.md §2).

With ``micro_batches`` M > 1 the batch is cut into M contiguous sample blocks that stream through
the positions (GPipe in one direction): position p steps block k while position p + 1 steps block
k − 1, so P positions take M + P − 1 block times instead of M·P.  Per-sample work does not depend
on the split: the rows equal the unsplit chain's to round-off.
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
    the owned points, as MGRIT returns them.  ``micro_batches``: sample blocks streamed through
    the positions (1: the whole batch at once).
    """

    opts = MGRITOptions(max_levels=1)

    def __init__(self, comm: Comm, ranks, bounds, h, backend, micro_batches: int = 1):
        self.comm, self.be = comm, backend
        self.micro_batches = int(micro_batches)
        self.ranks = [int(r) for r in ranks]
        self.me = self.ranks.index(comm.rank)
        self.a, self.b = int(bounds[self.me]), int(bounds[self.me + 1])
        self.h = backend.asarray(np.asarray(h)[self.a:self.b])

    def solve(self, phi, data, u0, sample_shape, warm=None, access=None, sample_data=(), **_):
        """Rows (b − a + 1, *sample_shape) of u_a..u_b and SolveStats (0 iterations).

        ``sample_shape`` is (B, *S); ``sample_data``: indices of the step-data arrays that hold
        per-sample rows (k, B, ...) (e.g. the forward states an adjoint is linearised at), cut into
        the same sample blocks as the states; the other arrays are per step only.
        """
        xp, n = self.be.xp, self.b - self.a
        U = xp.empty((n + 1, *sample_shape), dtype=self.be.dtype)
        first, last = self.me == 0, self.me + 1 == len(self.ranks)
        blocks = np.linspace(0, sample_shape[0], min(self.micro_batches, sample_shape[0]) + 1).astype(int)
        pending = []
        for lo, hi in zip(blocks[:-1], blocks[1:]):
            if first:
                U[0, lo:hi] = u0[lo:hi]
            else:
                self.comm.recv_into(U[0, lo:hi], self.ranks[self.me - 1], tags.CHAIN)
            whole = hi - lo == sample_shape[0]
            for i in range(n):
                d = tuple(x[i:i + 1] if whole or j not in sample_data else x[i:i + 1, lo:hi]
                          for j, x in enumerate(data))
                U[i + 1, lo:hi] = phi(U[i:i + 1, lo:hi], d, self.h[i:i + 1])[0]
            if not last:
                pending.append(self.comm.isend(U[-1, lo:hi], self.ranks[self.me + 1], tags.CHAIN))
        Comm.waitall(pending)
        stats = SolveStats(converged=True, residuals=[0.0], steps_per_level=[n], levels=1)
        return U, stats
