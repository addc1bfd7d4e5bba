"""Layer-parallel objective and gradient: forward MGRIT for the states, adjoint MGRIT for λ.

Rank r holds the layers of its block [a, b) (contiguous, as even as possible), the states
u_a..u_b (u_a is its ghost, the left neighbour's last point) and the adjoints λ_a..λ_b (λ_b its
ghost).  Rank 0 also holds the opening layer and the inputs x; the last rank holds the classifier
and the labels y.  The forward solve runs in layer order; the adjoint solve runs the same MGRIT
code in reversed order (solver point k is λ_{N−k}), linearised at the forward states, with coarse
adjoint steps using injected states and parameters.  All N layer gradients are then one batched
:meth:`param_grad` call per rank.
"""
from __future__ import annotations

import numpy as np

from .mgrit import MGRIT, MGRITOptions, SolveStats
from .model import ResNetODE
from .parallel import Comm, split_layers
from .serial import Evaluation

TAG_PARAMS, TAG_REDUCE = 600, 700


class LayerParallel:
    """Objective and gradient of a ResNetODE with layers distributed over the ranks of ``comm``.

    Args:
        model: the network.
        comm: layer communicator (None: one process).
        forward: MGRIT options of the state solve.
        adjoint: MGRIT options of the adjoint solve.
    """

    def __init__(self, model: ResNetODE, comm: Comm | None, forward: MGRITOptions, adjoint: MGRITOptions):
        self.model, self.comm = model, comm
        self.be, self.xp = model.be, model.xp
        P = comm.size if comm is not None else 1
        self.rank = comm.rank if comm is not None else 0
        self.P = P
        N = model.layers
        self.bounds = split_layers(N, P)
        self.a, self.b = int(self.bounds[self.rank]), int(self.bounds[self.rank + 1])
        self.layout = model.layout(self.a, self.b)
        self.is_first, self.is_last = self.rank == 0, self.rank == P - 1
        self.fwd = MGRIT(comm, list(range(P)), self.bounds, model.h, forward, model.be)
        rev_bounds = N - self.bounds[::-1]
        self.bwd = MGRIT(comm, list(range(P - 1, -1, -1)), rev_bounds, model.h[::-1].copy(), adjoint, model.be)
        self.h_local = model.step_sizes(self.a, self.b)
        self.U = None     # forward rows u_a..u_b of the last solve (warm start)
        self.Lam = None   # adjoint rows in solver order of the last solve (warm start)
        self.last_stats: tuple[SolveStats, SolveStats | None] | None = None
        self.fwd_tol = self.bwd_tol = None   # per-solve tolerance overrides (adaptive one-shot)

    # -- reductions ---------------------------------------------------------------------------------
    def dot(self, x, y) -> float:
        """Global dot product of two distributed parameter vectors (allreduce)."""
        local = float(self.be.scalar((x * y).sum()))
        return self.comm.allreduce_sum(local) if self.comm is not None else local

    def allreduce(self, v: float) -> float:
        return self.comm.allreduce_sum(v) if self.comm is not None else float(v)

    # -- pieces ---------------------------------------------------------------------------------------
    def _neighbour_layers(self, P):
        """(θ_{a−1}, θ_b) from the neighbouring ranks for the ddt regulariser (None at the ends)."""
        if self.model.gamma_ddt == 0 or self.comm is None or self.P == 1:
            return None, None
        comm, xp = self.comm, self.xp
        reqs = []
        if not self.is_first:
            reqs += [comm.isend(p[0], self.rank - 1, TAG_PARAMS + j) for j, p in enumerate(P.layers())]
        if not self.is_last:
            reqs += [comm.isend(p[-1], self.rank + 1, TAG_PARAMS + 10 + j) for j, p in enumerate(P.layers())]
        left = right = None
        if not self.is_first:
            left = [xp.empty(p.shape[1:], p.dtype) for p in P.layers()]
            for j, buf in enumerate(left):
                comm.recv_into(buf, self.rank - 1, TAG_PARAMS + 10 + j)
        if not self.is_last:
            right = [xp.empty(p.shape[1:], p.dtype) for p in P.layers()]
            for j, buf in enumerate(right):
                comm.recv_into(buf, self.rank + 1, TAG_PARAMS + j)
        Comm.waitall(reqs)
        return left, right

    def forward_states(self, P, x, batch: int, warm: bool = False):
        """Forward MGRIT: this rank's states u_a..u_b, shape (b − a + 1, B, *S)."""
        m = self.model
        u0 = m.open_forward(x, P) if self.is_first else None
        phi = m.step.forward
        U, stats = self.fwd.solve(phi, P.layers(), u0, (batch, *m.state_shape),
                                  warm=self.U if (warm and self.U is not None and self.U.shape[1] == batch) else None,
                                  tol=self.fwd_tol)
        return U, stats

    def evaluate(self, theta, x, y, batch: int, grad: bool = True, warm: bool = False) -> Evaluation:
        """J(θ) (and ∇J) with states and adjoints from MGRIT.

        Args:
            theta: this rank's flat parameter vector (layout.size,).
            x: inputs (B, *in_shape) on rank 0 (None elsewhere).
            y: labels (B,) on the last rank (None elsewhere).
            batch: B, known on every rank.
            warm: start both solves from the previous solve's states and adjoints (one-shot).

        Returns:
            Evaluation with global objective, loss and correct count on every rank, and this
            rank's gradient block; ``self.last_stats`` holds the two SolveStats.
        """
        m, xp = self.model, self.xp
        P = self.layout.views(theta)
        U, fstats = self.forward_states(P, x, batch, warm)
        self.U = U
        gvec = xp.zeros_like(theta) if grad else None
        G = self.layout.views(gvec) if grad else None
        loss_share, correct_share, lamN = 0.0, 0, None
        if self.is_last:
            loss_share, correct_share, lamN = m.loss(U[-1], y, P, G)
        left, right = self._neighbour_layers(P)
        R_share = m.regularizer(self.layout, P, G, left, right)
        loss = self.allreduce(loss_share)
        correct = int(round(self.allreduce(float(correct_share))))
        objective = self.allreduce(loss_share + R_share)
        if not grad:
            self.last_stats = (fstats, None)
            return Evaluation(objective, loss, correct, batch)
        K, bias = P.layers()
        data = (xp.ascontiguousarray(K[::-1]), xp.ascontiguousarray(bias[::-1]),
                xp.ascontiguousarray(U[:-1][::-1]))

        def psi(w, d, h):
            return m.step.adjoint(d[2], w, d[:2], h)

        warm_lam = self.Lam if (warm and self.Lam is not None and self.Lam.shape[1] == batch) else None
        # the adjoint step's Jacobian is the transpose of the forward one: same spectral scale, so
        # the adjoint solve uses the levels the forward solve chose (no second estimate)
        levels = fstats.levels if (self.bwd.opts.stability > 0 or self.bwd.opts.conv_bound > 0) else None
        Lam_s, bstats = self.bwd.solve(psi, data, lamN, (batch, *m.state_shape), warm=warm_lam,
                                       levels=levels, tol=self.bwd_tol, max_iter=None)
        self.Lam = Lam_s
        Lam = Lam_s[::-1]  # λ_a..λ_b
        dK, db = m.step.param_grad(U[:-1], Lam[1:], P.layers(), self.h_local)
        G.K += dK
        G.b += db
        if self.is_first:
            m.open_grad(x, Lam[0], P, G)
        self.last_stats = (fstats, bstats)
        return Evaluation(objective, loss, correct, batch, grad=gvec)

    def gather_params(self, theta):
        """The full parameter vector (serial layout) on rank 0; None elsewhere."""
        host = self.be.to_host(theta)
        parts = self.comm.gather_obj(host, 0) if self.comm is not None else [host]
        if self.rank != 0:
            return None
        full = self.model.layout()
        vec = np.zeros(full.size)
        F = full.views(vec)
        for r, part in enumerate(parts):
            a, b = int(self.bounds[r]), int(self.bounds[r + 1])
            lay = self.model.layout(a, b)
            Q = lay.views(part)
            F.K[a:b], F.b[a:b] = Q.K, Q.b
            if lay.has_open:
                F.open_K[...], F.open_b[...] = Q.open_K, Q.open_b
            if lay.has_class:
                F.W[...], F.c[...] = Q.W, Q.c
        return vec

    def scatter_params(self, full_vec):
        """This rank's block of a full (serial-layout) parameter vector given on every rank."""
        full = self.model.layout()
        F = full.views(self.be.asarray(full_vec))
        vec = self.xp.zeros(self.layout.size, dtype=self.be.dtype)
        Q = self.layout.views(vec)
        Q.K[...], Q.b[...] = F.K[self.a:self.b], F.b[self.a:self.b]
        if self.layout.has_open:
            Q.open_K[...], Q.open_b[...] = F.open_K, F.open_b
        if self.layout.has_class:
            Q.W[...], Q.c[...] = F.W, F.c
        return vec
