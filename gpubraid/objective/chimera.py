"""Chimera: two pipelines in opposite directions over the same layer ranks (Li and Hoefler, SC '21).

With 1F1B a rank r waits r micro-batch steps before its first forward and P − 1 − r after its last
backward: on two ranks, one step in nine at M = 8.  Chimera streams the first ⌈M/2⌉ micro-batches
*down* (layer block s on rank s, as 1F1B does) and the others *up* (block s on rank P − 1 − s).  Rank
r so holds two blocks, its own and its mirror's (rank P − 1 − r's: a replica, received at the start
of every evaluation, whose gradient part goes back at the end and is added in by its owner), and
each pipeline's idle ends are the other's busy ones.  On two ranks nothing is left idle but the
messages; on P ranks the idle share is about half of 1F1B's.

Costs against 1F1B: a replica of the mirror's parameters (none on the middle rank of an odd P,
which runs its own block both ways), one parameter and one gradient message per evaluation between
mirrored ranks, the inputs and the targets on both end ranks, and at most P + 1 micro-batches held
per rank instead of P.  The gradient is the same sum over the samples (round-off apart).

Each rank runs its steps in the order of one list schedule simulated for all ranks alike
(:func:`chimera_order`); every step's inputs come from steps that end before it starts in the
simulation, so the blocking receives cannot deadlock whatever the real times are.
"""
from __future__ import annotations

import functools
import heapq

from ..runtime import tags
from ..runtime.comm import Comm
from ..runtime.resources import micro_batch_bounds
from .pipeline import TrainingPipeline


def down_count(M: int) -> int:
    """Micro-batches 0..down_count − 1 stream down (block s on rank s), the rest up."""
    return (M + 1) // 2


@functools.lru_cache(maxsize=64)
def chimera_order(M: int, P: int) -> tuple[tuple[tuple[str, int, int], ...], ...]:
    """For each of P ranks, its (kind, micro-batch, block) steps, kind "F" (forward) or "B" (backward).

    A list schedule, simulated with one time unit per step: a rank that is free starts the step
    that can start soonest (a backward before a forward, a forward further along its pipeline
    first, then the lower micro-batch), each block's micro-batches of one direction in order (MPI
    delivers one channel's messages in order), and a forward only while its block holds fewer
    than P − s micro-batches of that direction (1F1B's bound).
    """
    down = down_count(M)
    first = {False: 0, True: down}
    limit = {False: down, True: M}
    # per rank, the (up, block) pairs it runs: its own block down, its mirror's up
    runs = [sorted({(False, r), (True, P - 1 - r)}) for r in range(P)]
    runner = {(up, s): P - 1 - s if up else s for up in (False, True) for s in range(P)}
    nxt = {(kind, up, s): first[up] for up in (False, True) for s in range(P) for kind in "FB"}
    end, free, held = {}, [0] * P, {(up, s): 0 for up in (False, True) for s in range(P)}
    orders = [[] for _ in range(P)]

    def rank_best(q):
        """The step rank q would start first, (key, q, step, up), or None."""
        best = None
        for up, s in runs[q]:
            for kind in "BF":
                k = nxt[kind, up, s]
                if k >= limit[up] or (kind == "F" and held[up, s] >= P - s):
                    continue
                deps = ([("F", k, s - 1)] if s else []) if kind == "F" else \
                    [("F", k, s)] + ([("B", k, s + 1)] if s < P - 1 else [])
                if any(d not in end for d in deps):
                    continue
                key = (max([free[q], *(end[d] for d in deps)]), kind == "F", -s if kind == "F" else s, k, q)
                if best is None or key < best[0]:
                    best = (key, q, (kind, k, s), up)
        return best

    # the soonest step of all ranks, each rank's own soonest kept in a heap (keys are unique: they
    # end in the rank); a step changes only its rank's candidates and those of the ranks that run
    # its block's neighbours in its direction (their steps may depend on it)
    cached = [rank_best(q) for q in range(P)]
    heap = [(c[0], q) for q, c in enumerate(cached) if c is not None]
    heapq.heapify(heap)
    for _ in range(2 * M * P):
        while True:
            key, q = heapq.heappop(heap)
            if cached[q] is not None and cached[q][0] == key:
                break
        (t, *_), q, step, up = cached[q]
        kind, k, s = step
        orders[q].append(step)
        end[step] = free[q] = t + 1
        nxt[kind, up, s] += 1
        held[up, s] += 1 if kind == "F" else -1
        for r in {q, *(runner[up, b] for b in (s - 1, s + 1) if 0 <= b < P)}:
            cached[r] = rank_best(r)
            if cached[r] is not None:
                heapq.heappush(heap, (cached[r][0], r))
    return tuple(tuple(o) for o in orders)


class ChimeraPipeline(TrainingPipeline):
    """:class:`TrainingPipeline` with the Chimera schedule: this rank runs its own block for the
    micro-batches streamed down and its mirror's (rank P − 1 − r's) for those streamed up.  Inputs
    ``x`` are needed on the first and the last rank, targets ``y`` likewise (:attr:`both_ends`)."""

    def __init__(self, model, comm, bounds, options):
        super().__init__(model, comm, bounds, options)
        self.partner = self.P - 1 - self.rank
        self.both_ends = self.P > 1
        # the up pipeline's block on this rank: its states come from the next rank, go to the previous
        self.mirror = self.stage_on(self.partner, self.rank + 1, self.rank - 1)
        self.mirror_layout = model.layout(self.mirror.a, self.mirror.b)

    def _replica(self, P, G):
        """(Q, GQ, sends): the mirror block's parameter views (its flat vector received from the
        partner in one message) and zero gradient views (None without ``G``); on the middle rank P
        and G themselves.  P and G: views of flat vectors (:meth:`Params.vector`)."""
        if self.partner == self.rank:
            return P, G, []
        comm, xp, dtype, lay = self.comm, self.model.xp, self.model.be.dtype, self.mirror_layout
        sends = [comm.isend(P.vector(), self.partner, tags.PIPE_PARAMS)]
        mirror = xp.empty(lay.size, dtype=dtype)
        comm.recv_into(mirror, self.partner, tags.PIPE_PARAMS)
        return lay.views(mirror), None if G is None else lay.views(xp.zeros(lay.size, dtype=dtype)), sends

    def _return_gradient(self, G, GQ, pending) -> None:
        """Send the mirror block's gradient part to its owner and add the partner's part of this
        rank's block into G (after this rank's own parts: the same order on every run)."""
        pending.append(self.comm.isend(GQ.vector(), self.partner, tags.PIPE_GRADS))
        g = G.vector()
        part = self.model.xp.empty_like(g)
        self.comm.recv_into(part, self.partner, tags.PIPE_GRADS)
        g += part

    def run(self, P, G, x, y, batch: int, u0=None, idle=None, opened: int | None = None):
        """As :meth:`TrainingPipeline.run`, with ``x`` and ``y`` on both end ranks; ``u0`` (rank 0's
        first ``opened`` rows of the opening layer's output) serves the micro-batches streamed down."""
        if self.P == 1:
            return super().run(P, G, x, y, batch, u0, idle, opened)
        m, comm = self.model, self.comm
        M = self.micro_batches(batch)
        cut = micro_batch_bounds(batch, M, self.P, self.options.schedule)
        down = down_count(M)
        Q, GQ, pending = self._replica(P, G)
        if idle is not None:
            idle()
        views = {False: (self.stage, P, G), True: (self.mirror, Q, GQ)}
        order = [step for step in chimera_order(M, self.P)[self.rank] if G is not None or step[0] == "F"]
        opened = 0 if u0 is None else batch if opened is None else opened
        opens = G is not None and (self.stage.first or self.mirror.first)   # an end rank: λ_0 of its direction
        lam0 = m.xp.empty((batch, *m.state_shape), dtype=m.be.dtype) if opens else None
        held, heads, spares = {}, {}, []
        loss, correct = 0.0, 0
        self.peak_held = 0
        for kind, k, _ in order:
            up = k >= down
            st, Ps, Gs = views[up]
            lo, hi = int(cut[k]), int(cut[k + 1])
            if kind == "B":
                U, kept = held.pop(k)
                spares += [U, *self._backward_step(U, kept, heads.pop(k, None), lam0, lo, hi, Ps, Gs, pending,
                                                   spares=spares, st=st)]
                if st.first and k in (down - 1, M - 1):   # the opening's gradient: one call per direction
                    a = int(cut[down if up else 0])
                    m.open_grad(x[a:hi], lam0[a:hi], Ps, Gs)
                continue
            U = self._empty((st.b - st.a + 1, hi - lo, *m.state_shape), m.be.dtype, spares)
            if not st.first:
                comm.recv_into(U[0], st.prev, tags.PIPE_STATE)
            else:
                U[0] = u0[lo:hi] if not up and hi <= opened else m.open_forward(x[lo:hi], Ps)
            kept = self._forward(U, Ps.layers(), G is not None, st)
            if not st.last:
                pending.append(comm.isend(U[-1], st.next, tags.PIPE_STATE))
            else:
                loss_k, ok, heads[k] = self._head(U[-1], y[lo:hi], Ps, Gs, (hi - lo) / batch)
                loss += loss_k
                correct += ok
            self._hold(k, U, kept, held, spares, G is not None)
        if G is not None and GQ is not G:
            self._return_gradient(G, GQ, pending)
        Comm.waitall(pending)
        return loss, correct, self._stats(M), None if G is None else self._stats(M)
