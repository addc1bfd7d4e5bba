"""Pipeline-parallel exact gradients: micro-batches streamed through the layer ranks.

A layer-serial pass over P ranks that hands the whole batch from rank to rank keeps one rank busy at
a time.  Here the batch of B samples is cut into M contiguous micro-batches (as even as possible, the ends
smaller with 1F1B on four or more ranks: :func:`~gpubraid.runtime.resources.micro_batch_bounds`).
Rank r, holding layers a..b−1, receives micro-batch k's state u_a from rank r − 1 (rank 0: its rows
of the opening layer's output, computed for the first micro-batch and then, once that is sent, for
the rest of the batch in one call; on a single layer rank for the whole batch at once), propagates
it through its layers keeping the states u_a..u_b, and sends u_b on; the last rank evaluates the
head on it, weighted by the micro-batch's share m_k / B of the batch, which gives λ_b.  Backward,
rank r receives λ_b from rank r + 1, runs the adjoint steps λ_i = λ_{i+1} + h_i (∂f/∂u)ᵀ λ_{i+1}
down to λ_a, adds its layers' gradient parts (one batched ``param_grad`` over its layers) and sends
λ_a back; rank 0 collects λ_0 and adds the opening layer's part in two calls, not M: for the
micro-batches before the last while the last one's λ is on its way, then for the last (the opening
costs serial's, its per-call overhead is not paid M times, and little of it is left on the critical
path at the end).  Per-sample work is independent of the split, so objective and gradient are
serial's up to the summation order of the micro-batch parts (round-off).

Schedules (the order in which each rank runs its forward (F) and backward (B) micro-batch steps;
sends are non-blocking, receives blocking, so a rank goes on as soon as its input is there):

    gpipe   F_0 … F_{M−1}, then B_0 … B_{M−1}: every rank holds the states of all M micro-batches
    1f1b    min(P − r − 1, M) forwards, then alternately one forward and one backward, then the
            remaining backwards: rank r holds at most min(P − r, M) micro-batches of states

A backward step frees its micro-batch's states, so with 1F1B the memory per rank grows with P,
not with M.  The pipeline takes (M + P − 1) micro-batch block times per direction instead of M·P.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..network.sweep import backward_sweep, backward_through, empty_states, forward_sweep
from ..runtime import tags
from ..runtime.allocator import empty_aligned, empty_aligned_like
from ..runtime.comm import Comm
from ..runtime.resources import micro_batch_bounds, micro_batch_count
from ..solver.options import SolveStats

SCHEDULES = ("gpipe", "1f1b", "chimera")


@dataclass(frozen=True)
class Stage:
    """A layer block (layers a..b − 1, step sizes ``h`` (b − a,)) as one rank runs it: its states
    come from rank ``prev`` and go on to rank ``next`` (None: the opening layer's output, the head)."""

    a: int
    b: int
    h: np.ndarray
    prev: int | None
    next: int | None

    @property
    def first(self) -> bool:
        return self.prev is None

    @property
    def last(self) -> bool:
        return self.next is None


@dataclass(frozen=True)
class PipelineOptions:
    """How layer-serial propagation runs: ``micro_batches`` per batch (None: automatic, see
    :func:`gpubraid.runtime.resources.micro_batch_count`) in the order of ``schedule``."""

    micro_batches: int | None = None
    schedule: str = "1f1b"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")


def schedule_order(schedule: str, M: int, P: int, r: int) -> list[tuple[str, int]]:
    """The (kind, micro-batch) steps rank ``r`` of ``P`` runs, kind "F" (forward) or "B" (backward)."""
    if schedule == "gpipe":
        return [("F", k) for k in range(M)] + [("B", k) for k in range(M)]
    warm = min(P - r - 1, M)
    order = [("F", k) for k in range(warm)]
    for k in range(M - warm):
        order += [("F", warm + k), ("B", k)]
    return order + [("B", k) for k in range(M - warm, M)]


class TrainingPipeline:
    """Objective and gradient parts of one rank's layer block by micro-batches streamed over ``comm``.

    Args:
        model: the network.
        comm: the layer communicator (rank r holds layers bounds[r]..bounds[r + 1] − 1).
        bounds: (P + 1,) layer block boundaries.
        options: micro-batches and schedule.
    """

    #: Whether the inputs and the targets are needed on both end ranks (:mod:`~gpubraid.objective.chimera`).
    both_ends = False

    def __init__(self, model, comm: Comm, bounds, options: PipelineOptions):
        self.model, self.comm, self.options = model, comm, options
        self.rank, self.P = comm.rank, comm.size
        self.bounds = np.asarray(bounds)
        self.block = int(np.max(np.diff(bounds)))   # the largest layer block: M is the same on every rank
        self.stage = self.stage_on(self.rank, self.rank - 1, self.rank + 1)
        self.peak_held = 0   # most micro-batches whose states this rank held at once (last run)

    def stage_on(self, index: int, prev: int, next_: int) -> Stage:
        """Layer block ``index`` as this rank runs it, its states from rank ``prev`` and on to rank
        ``next_`` (at the ends of the network: neither)."""
        a, b = int(self.bounds[index]), int(self.bounds[index + 1])
        return Stage(a, b, self.model.step_sizes(a, b), None if index == 0 else prev,
                     None if index == self.P - 1 else next_)

    def micro_batches(self, batch: int) -> int:
        """M for a batch of ``batch`` samples (automatic: also cut for the caches, see
        :data:`gpubraid.runtime.resources.HELD_BYTES`)."""
        return micro_batch_count(self.options.micro_batches, self.P, batch, self.model.held_bytes(self.block),
                                 self.options.schedule)

    def _forward(self, U, layers, keep: bool, st: Stage | None = None):
        """U[1..n] from U[0] through the layers of stage ``st`` (default: this rank's block): U (n + 1, m,
        *S), filled in place; returns what the backward sweep reuses
        (:func:`~gpubraid.network.sweep.forward_sweep`)."""
        return forward_sweep(self.model.step, U, layers, (st or self.stage).h, keep)

    def run(self, P, G, x, y, batch: int, u0=None, idle=None, opened: int | None = None):
        """Stream the batch through the layer ranks: forward, head, and (with ``G``) backward.

        Args:
            P: this rank's parameter views.
            G: this rank's gradient views (parts are added into them), or None for the objective only.
            x: inputs (batch, *in_shape) on rank 0 (ignored elsewhere).
            y: targets on the last rank (ignored elsewhere).
            batch: B, the same on every rank.
            u0: the opening layer's output (batch, *S) on rank 0 when the caller has it (else
                computed here, once for the whole batch).
            opened: with ``u0``, how many of its first rows are computed (None: all); the rest
                are computed here as if there were no ``u0``.
            idle: work of this rank for a moment it would wait anyway, called once before any
                gradient part is added into ``G`` (the regulariser's share): on the first of
                several ranks (with ``G``) at its first backward step, where it waits for the first
                λ; elsewhere at the start (the others wait for their first state; one rank waits
                for nothing).

        Each micro-batch's states are dropped after its backward step (their arrays serve the next).

        Returns:
            ``(loss_share, correct_share, forward_stats, backward_stats)``: the mean loss over
            the batch and the number classified correctly on the last rank (0 elsewhere), and
            what the forward and backward passes did (backward None without ``G``).
        """
        m, comm = self.model, self.comm
        M = self.micro_batches(batch)
        cut = micro_batch_bounds(batch, M, self.P, self.options.schedule)
        st, layers = self.stage, P.layers()
        first, last, n = st.first, st.last, st.b - st.a
        order = schedule_order(self.options.schedule, M, self.P, self.rank) if G is not None else \
            [("F", k) for k in range(M)]
        # rank 0: samples of u0 computed (the first micro-batch's first, so rank 1 starts; on one
        # layer rank no one waits: the whole batch at once)
        opened = batch if opened is None else opened
        if first and u0 is None:
            u0, opened = (m.open_forward(x, P), batch) if last else \
                (m.xp.empty((batch, *m.state_shape), dtype=m.be.dtype), 0)
        elif first and last and opened < batch:
            u0[opened:], opened = m.open_forward(x[opened:], P), batch
        lam0 = None
        if first and G is not None:
            lam0 = m.xp.empty_like(u0)
        held, heads, pending = {}, {}, []
        spares = []  # arrays of finished micro-batches (their sends copied what they read): taken again
        loss, correct = 0.0, 0
        self.peak_held = 0
        if idle is not None and not (first and not last and G is not None):
            idle()
            idle = None
        for kind, k in order:
            lo, hi = int(cut[k]), int(cut[k + 1])
            if kind == "B" and idle is not None:  # the first rank: before its first λ arrives
                idle()
                idle = None
            if kind == "F":
                U = self._empty((n + 1, hi - lo, *m.state_shape), m.be.dtype, spares)
                if first:
                    if opened < hi:
                        u0[lo:hi], opened = m.open_forward(x[lo:hi], P), hi
                    U[0] = u0[lo:hi]
                else:
                    comm.recv_into(U[0], st.prev, tags.PIPE_STATE)
                kept = self._forward(U, layers, G is not None)
                if not last:
                    pending.append(comm.isend(U[-1], st.next, tags.PIPE_STATE))
                    if opened < batch:  # the rest of the batch at once, while rank 1 starts
                        u0[opened:], opened = m.open_forward(x[opened:], P), batch
                else:
                    loss_k, ok, heads[k] = self._head(U[-1], y[lo:hi], P, G, (hi - lo) / batch)
                    loss += loss_k
                    correct += ok
                self._hold(k, U, kept, held, spares, G is not None)
                continue
            if lam0 is not None and k == M - 1 and lo > 0:  # while the last λ_0 is on its way
                m.open_grad(x[:lo], lam0[:lo], P, G)
            U, kept = held.pop(k)
            spares += [U, *self._backward_step(U, kept, heads.pop(k, None), lam0, lo, hi, P, G, pending,
                                               spares=spares)]
        if lam0 is not None:
            lo = int(cut[M - 1])
            m.open_grad(x[lo:], lam0[lo:], P, G)
        Comm.waitall(pending)
        fstats = self._stats(M)
        return loss, correct, fstats, None if G is None else self._stats(M)

    def _head(self, u, y, P, G, w: float):
        """The head on a micro-batch's last states u (m, *S) with its targets y, weighted by its share
        w of the batch: (w · loss, number correct, w · λ_N or None); with G the head's gradient parts
        (times w) are added into G."""
        loss, ok, lam, grads = self.model.head.loss(u, y, P.head(), G is not None)
        if G is not None:
            for g, d in zip(G.head(), grads):
                g += w * d
            lam *= w
        return w * loss, ok, lam

    def _hold(self, k: int, U, kept, held: dict, spares: list, backward: bool) -> None:
        """Keep micro-batch k's states U and what its forward sweep kept for its backward step, or,
        without one, hand U back as a spare."""
        if backward:
            held[k] = (U, kept)
            self.peak_held = max(self.peak_held, len(held))
        else:
            spares.append(U)

    def _stats(self, M: int) -> SolveStats:
        """A pipelined pass's stats: one level, n steps on this rank, M micro-batches."""
        return SolveStats(converged=True, residuals=[0.0], steps_per_level=[self.stage.b - self.stage.a], levels=1,
                          micro_batches=M)

    def _empty(self, shape, dtype, spares=None):
        """States (n + 1, B, *S) in the step's layout (adjoints: like them), or one contiguous row (B, *S):
        one of ``spares`` (arrays a finished micro-batch handed back) of this shape and dtype when there
        is one, taken from it."""
        for i, a in enumerate(spares or ()):
            if a.shape == shape and a.dtype == dtype:
                return spares.pop(i)
        if len(shape) == len(self.model.state_shape) + 1:
            return empty_aligned(self.model.xp, shape, dtype)
        return empty_states(self.model.step, self.model.xp, shape, dtype)

    def _backward_step(self, U, kept, lam_b, lam0, lo: int, hi: int, P, G, pending: list, Lam=None, spares=None,
                       st: Stage | None = None):
        """One micro-batch backward: λ_b (``lam_b`` on the last rank, received elsewhere), the
        adjoints down to λ_a, the gradient parts added into G, λ_a sent (rank 0: copied into
        ``lam0[lo:hi]`` unless None, when ``Lam`` is already the caller's rows; the caller adds the
        opening layer's gradient from them); ``kept``: what the forward sweep kept for it (or None);
        ``st``: the stage it runs (default: this rank's block), P and G its views.

        With ``Lam`` (n + 1, m, *S) every adjoint is written into it.  Without, only λ_a is needed:
        the step's ``backward_through`` carries λ down in one (m, *S) array when it can (the
        adjoints in between never reach memory), else they go into an array like ``U``; either is
        one of ``spares`` when one fits.  Returns the arrays this made (the caller's to reuse)."""
        m, layers, grads, st = self.model, P.layers(), G.layers(), st or self.stage
        made = []
        if Lam is None:
            if st.last:   # the head's λ_N, this micro-batch's own array: carried down in place (and
                lam = lam_b   # dropped after it, not kept as a spare: the last rank takes no rows)
            else:
                lam = self._empty(U.shape[1:], U.dtype, spares)
                made.append(lam)
                self.comm.recv_into(lam, st.next, tags.PIPE_ADJOINT)
            if backward_through(m.step, U, lam, layers, st.h, grads, kept):
                lam_a = lam
            else:
                Lam = self._empty(U.shape, U.dtype, spares)
                made.append(Lam)
                Lam[-1] = lam
        elif st.last:
            Lam[-1] = lam_b
        else:
            self.comm.recv_into(Lam[-1], st.next, tags.PIPE_ADJOINT)
        if Lam is not None:
            backward_sweep(m.step, U, Lam, layers, st.h, grads, kept)
            lam_a = Lam[0]
        if st.first:
            if lam0 is not None:
                lam0[lo:hi] = lam_a
        else:
            pending.append(self.comm.isend(lam_a, st.prev, tags.PIPE_ADJOINT))
        return made

    def backward(self, U, lam_N, P, G, x, batch: int):
        """The backward half alone, streamed by micro-batches, from forward states already computed
        for the whole batch (a forward solve that kept one level).

        Args:
            U: this rank's states u_a..u_b of the whole batch, (n + 1, B, *S).
            lam_N: ∂ℓ/∂u_N (B, *S) on the last rank (ignored elsewhere).
            P, G, x, batch: as in :meth:`run` (G required).

        Returns:
            ``(Lam, stats)``: this rank's adjoints λ_a..λ_b of the whole batch, (n + 1, B, *S),
            and the backward SolveStats.
        """
        M = self.micro_batches(batch)
        cut = micro_batch_bounds(batch, M, self.P, self.options.schedule)
        Lam = empty_aligned_like(self.model.xp, U)
        pending = []
        for k in range(M):
            lo, hi = int(cut[k]), int(cut[k + 1])
            lam_b = lam_N[lo:hi] if self.stage.last else None
            self._backward_step(U[:, lo:hi], None, lam_b, None, lo, hi, P, G, pending, Lam[:, lo:hi])
        if self.stage.first:
            self.model.open_grad(x, Lam[0], P, G)
        Comm.waitall(pending)
        return Lam, self._stats(M)
