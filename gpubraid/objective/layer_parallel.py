"""Layer-parallel objective and gradient: forward MGRIT for the states, adjoint MGRIT for λ.

Rank r holds the layers of its block [a, b) (contiguous, as even as possible), the states
u_a..u_b (u_a is its ghost, the left neighbour's last point) and the adjoints λ_a..λ_b (λ_b its
ghost).  Rank 0 also holds the opening layer and the inputs x, the last rank the head and the
labels y (with the Chimera pipeline both end ranks hold x and y).  The forward solve runs in layer
order; the adjoint solve runs the same MGRIT code in reversed order (solver point k is λ_{N−k}),
linearised at the forward states, with coarse adjoint steps using injected states and parameters.
All N layer gradients are then one batched :meth:`param_grad` call per rank.

Solves that keep one level are layer-serial propagation; given :class:`PipelineOptions`, those
run as the micro-batch pipeline of :mod:`gpubraid.objective.pipeline` (forward and backward
streamed through the ranks, GPipe or 1F1B) instead of passing the whole batch from rank to rank.
When the level choice of the forward solve is made at run time (from the estimated ρ), it is made
first (:meth:`MGRIT.choose`); when it keeps one level, the whole evaluation is that pipeline too,
serial's evaluation plus the estimate.  It keeps no rows: writing the whole batch's states and
adjoints for a later multi-level solve's warm start would undo the micro-batches' caching (at peaks
256 layers 63–68 against 46–51 ms per step), so a multi-level solve after one-level ones starts as a
first solve does; the choice therefore moves there only when the estimate allows the levels with a
margin (:data:`ENTER_MARGIN`).
"""
from __future__ import annotations

import functools

import numpy as np

from ..network.network import Evaluation, Network
from ..runtime import tags
from ..runtime.comm import Comm, split_layers
from ..runtime.resources import micro_batch_count
from ..solver.chain import SerialChain
from ..solver.mgrit import MGRIT
from ..solver.options import MGRITOptions, SolveStats
from .chimera import ChimeraPipeline
from .level_steps import LevelSteps
from .pipeline import PipelineOptions, TrainingPipeline
from .propagators import propagators

#: A warm-started run (one-shot on the full batch) whose last solve kept one level moves to more only
#: when the estimate allows them for a spectral scale this much larger: a multi-level solve without
#: rows to start from is a cold start (nested iteration, the hierarchy's arrays allocated and first
#: touched), which at peaks 256 layers (T = 5, 5000 samples) took 1.0 s against 0.05 s per step,
#: and ρ hovering at the bound (0.995, 1.008 against 1.07-1.13 around them) flipped one-shot to two
#: levels for two steps and back.  Fewer levels are always taken at once.
ENTER_MARGIN = 0.1


def chain_solver(comm: Comm, ranks, bounds, h, options: MGRITOptions, backend, micro_batches: int = 1):
    """The solver of one chain: layer-serial propagation (``micro_batches`` sample blocks streamed
    through the ranks) for one level, MGRIT otherwise."""
    if options.max_levels == 1:
        return SerialChain(comm, ranks, bounds, h, backend, micro_batches)
    return MGRIT(comm, ranks, bounds, h, options, backend, micro_batches)


def _as_stepped(be, rows):
    """Rows in solver order (a reversed view, or None) as the steps take them: the view itself on the
    host (its kernels take a negative layer stride; the torch engines copy what they are handed),
    a contiguous copy for the GPU launchers."""
    return be.xp.ascontiguousarray(rows) if be.is_gpu and rows is not None else rows


def neighbour_layers(comm: Comm, P, model):
    """(θ_{a−1}, θ_b): the last layer of the left neighbour's block and the first of the right one's
    (each a list over the layer parameter groups; None at the ends, and both without ddt regulariser)."""
    if model.gamma_ddt == 0 or comm.size == 1:
        return None, None
    rank, last, xp = comm.rank, comm.rank == comm.size - 1, model.xp
    reqs = []
    if rank:
        reqs += [comm.isend(p[0], rank - 1, tags.PARAMS_LEFT) for p in P.layers()]
    if not last:
        reqs += [comm.isend(p[-1], rank + 1, tags.PARAMS_RIGHT) for p in P.layers()]
    left = right = None
    if rank:
        left = [xp.empty(p.shape[1:], p.dtype) for p in P.layers()]
        for buf in left:
            comm.recv_into(buf, rank - 1, tags.PARAMS_RIGHT)
    if not last:
        right = [xp.empty(p.shape[1:], p.dtype) for p in P.layers()]
        for buf in right:
            comm.recv_into(buf, rank + 1, tags.PARAMS_LEFT)
    Comm.waitall(reqs)
    return left, right


def make_pipeline(model, comm: Comm, bounds, options: PipelineOptions) -> TrainingPipeline:
    """The micro-batch pipeline of ``options.schedule`` (Chimera's: :class:`ChimeraPipeline`)."""
    return (ChimeraPipeline if options.schedule == "chimera" else TrainingPipeline)(model, comm, bounds, options)


class LayerParallel:
    """Objective and gradient of a Network with layers distributed over the ranks of ``comm``.

    Args:
        model: the network.
        comm: layer communicator (None: one process).
        forward: MGRIT options of the state solve (``max_levels=1``: layer-serial propagation).
        adjoint: MGRIT options of the adjoint solve (likewise).
        data: communicator across data groups (ranks holding the same layer block for other
            samples); objective and gradient are their sample-weighted sums, added in group order,
            and the solvers' norms and estimates are reduced over it too (default: one group).
        pipeline: micro-batches and schedule of one-level (layer-serial) solves; None: they pass the
            whole batch from rank to rank (and keep ``U`` and ``Lam`` of the whole batch).
    """

    def __init__(self, model: Network, comm: Comm | None, forward: MGRITOptions, adjoint: MGRITOptions,
                 data: Comm | None = None, pipeline: PipelineOptions | None = None):
        self.comm = comm = comm if comm is not None else Comm.single()
        self.data = data if data is not None else Comm.single()
        solver_comm = comm.reducing_also(self.data)
        self.model = model
        self.be, self.xp = model.be, model.xp
        self.rank, self.n_ranks = comm.rank, comm.size
        P = self.n_ranks
        N = model.layers
        self.bounds = split_layers(N, P)
        self.a, self.b = int(self.bounds[self.rank]), int(self.bounds[self.rank + 1])
        self.layout = model.layout(self.a, self.b)
        self.is_first, self.is_last = self.rank == 0, self.rank == P - 1
        # one-level solves, also those whose level choice is made per solve, stream micro-batches
        M = 1 if pipeline is None else micro_batch_count(pipeline.micro_batches, P, 2 ** 62)
        self.fwd = chain_solver(solver_comm, list(range(P)), self.bounds, model.h, forward, model.be, M)
        rev_bounds = N - self.bounds[::-1]
        self.bwd = chain_solver(solver_comm, list(range(P - 1, -1, -1)), rev_bounds, model.h[::-1].copy(),
                                adjoint, model.be, M)
        self.h_local = model.step_sizes(self.a, self.b)
        # the solvers' steps: on halved feature maps too when coarse levels coarsen in space
        spatial = max(forward.spatial_levels, adjoint.spatial_levels)
        self.steps = LevelSteps(model.step, spatial) if spatial else model.step
        self.phi, self.psi = propagators(self.steps)
        self.U = None     # forward rows u_a..u_b of the last solve (warm start)
        self.Lam = None   # adjoint rows in solver order of the last solve (warm start; may be a reversed view)
        self.last_stats: tuple[SolveStats, SolveStats | None] | None = None
        self._steps = 0.0  # the last evaluation's step applications (solve_stats)
        self.fwd_tol = self.bwd_tol = None   # per-solve tolerance overrides (adaptive one-shot)
        self.level_cap: int | None = None    # at most this many levels per solve (the convergence monitor)
        self.estimate_every = 1              # ρ estimated at every this many steps, held between (new_step)
        self.held_rho: float | None = None   # the ρ they reuse (None: the next choice estimates)
        self.rho_reused = False              # whether the last evaluation's levels came from held_rho
        self.pipe = None if pipeline is None else make_pipeline(model, comm, self.bounds, pipeline)
        # whether this rank's evaluations take the inputs x and the targets y (Chimera: both end ranks)
        both = self.pipe is not None and self.pipe.both_ends
        self.needs_inputs, self.needs_targets = self.is_first or both and self.is_last, self.is_last or both and self.is_first

    @staticmethod
    def _one_level(solver) -> bool:
        """Whether a chain solver can only propagate layer by layer (one level in its hierarchy)."""
        return isinstance(solver, SerialChain) or solver.n_levels == 1

    @property
    def pipelined(self) -> bool:
        """Whether both solves are the micro-batch pipeline (no MGRIT level above the finest)."""
        return self.pipe is not None and self._one_level(self.fwd) and self._one_level(self.bwd)

    # -- reductions ---------------------------------------------------------------------------------
    def dots(self, pairs) -> list[float]:
        """Global dot products of pairs of distributed parameter vectors (1-D), in one allreduce."""
        return self.comm.allreduce_sums([float(self.be.scalar(x @ y)) for x, y in pairs])

    def dot(self, x, y) -> float:
        return self.dots(((x, y),))[0]

    # -- pieces ---------------------------------------------------------------------------------------
    def regularizer(self, theta) -> float:
        """R(θ) of the whole network (every rank takes part; the same value on every rank)."""
        P = self.layout.views(theta)
        left, right = neighbour_layers(self.comm, P, self.model)
        return self.comm.allreduce_sum(self.model.regularizer(self.layout, P, None, left, right))

    def forward_states(self, P, x, batch: int, warm: bool = False, u0=None, choice=None):
        """Forward MGRIT: this rank's states u_a..u_b, shape (b − a + 1, B, *S).  ``u0``: the opening
        layer's output on rank 0 when already computed; ``choice``: the solver's level choice for
        this solve when already made (see :meth:`_level_choice`)."""
        m = self.model
        if self.is_first and u0 is None:
            u0 = m.open_forward(x, P)
        return self.fwd.solve(self.phi, P.layers(), u0, (batch, *m.state_shape),
                              warm=self._warm(self.U, batch) if warm else None, tol=self.fwd_tol, choice=choice)

    @staticmethod
    def _warm(rows, batch: int):
        """The previous solve's rows as a warm start when they are of this batch's size."""
        return rows if rows is not None and rows.shape[1] == batch else None

    def _level_choice(self, P, u0, batch: int, warm: bool):
        """The forward solve's level choice made before solving (at most ``level_cap`` levels; more than
        one from no rows to warm-start from only with :data:`ENTER_MARGIN`), so that a choice of one
        level runs the whole evaluation as the pipeline; None when there is no choice to make first
        (no pipeline, one level by construction, or levels fixed by the options and not capped).
        With :attr:`estimate_every` > 1 the estimate is kept in :attr:`held_rho` and later choices
        take their levels from it without estimating, until :meth:`new_step` clears it."""
        self.rho_reused = False
        if self.pipe is None or self._one_level(self.fwd):
            return None
        m = self.model
        rows = self._warm(self.U, batch) if warm else None
        self.rho_reused = self.held_rho is not None
        if self.rho_reused:
            choice = self.fwd.choice_from(self.held_rho)
        else:
            choice = self.fwd.choose(self.phi, P.layers(), u0, (batch, *m.state_shape), warm=rows)
            if self.estimate_every > 1:
                self.held_rho = choice.rho
        if warm and rows is None and choice.rho is not None and choice.levels > 1:
            # a warm-started run without rows (its first solve, or after one-level ones) would start
            # the hierarchy cold: only when the levels also hold for a ρ ENTER_MARGIN larger
            entered = self.fwd.choose_levels(choice.rho * (1 + ENTER_MARGIN))[0]
            if entered < choice.levels:
                choice.allowed, choice.levels, choice.h_rho = choice.levels, entered, choice.h_rho[:entered - 1]
        if self.level_cap is not None and self.level_cap < choice.levels:
            choice.levels = self.level_cap
        elif choice.rho is None:
            return None
        return choice

    def new_step(self, it: int) -> None:
        """The optimiser starts step ``it``: at every :attr:`estimate_every`-th step ρ is estimated afresh."""
        if it % self.estimate_every == 0:
            self.held_rho = None

    def evaluate_exact(self, theta, x, y, batch: int) -> Evaluation:
        """J(θ) and serial's gradient by the micro-batch pipeline, whatever the solves' options, with
        the warm-start rows and the last solves' stats left alone (what the convergence monitor
        compares one-shot's gradient with).  Arguments as :meth:`evaluate`."""
        P, gvec, G, R_share = self._start(theta, True)
        pipe = self.pipe or make_pipeline(self.model, self.comm, self.bounds, PipelineOptions())
        loss_share, correct_share, _, _ = pipe.run(P, G, x, y, batch, idle=R_share)
        return self._totals(gvec, loss_share, correct_share, R_share(), batch, keep_steps=False)

    def _start(self, theta, grad: bool):
        """(P, gvec, G, R_share) of an evaluation: parameter views, a zero gradient vector and its
        views (None without ``grad``), and this rank's share of the regulariser as a callable: its
        first call computes it (adding its gradient into G, before any other part), later calls
        return it.  The pipeline calls it where the rank would wait anyway (``idle``)."""
        P = self.layout.views(theta)
        gvec = self.xp.zeros_like(theta) if grad else None
        G = self.layout.views(gvec) if grad else None
        left, right = neighbour_layers(self.comm, P, self.model)
        return P, gvec, G, functools.cache(lambda: self.model.regularizer(self.layout, P, G, left, right))

    def _open_for_choice(self, P, x, batch: int):
        """(u0, opened): rank 0's opening output (batch, *S), its first ``opened`` rows computed: those
        a level choice reads (the estimate's samples), so that a one-level choice's pipeline streams
        the rest (rank 1 starts after one micro-batch, not the whole opening); all where no choice is
        made.  (None, batch) elsewhere."""
        m = self.model
        if not self.is_first or self.pipe is None or self._one_level(self.fwd) or self.is_last:
            return (m.open_forward(x, P) if self.is_first else None), batch
        opened = self.fwd.opts.estimate_samples(batch)
        u0 = m.xp.empty((batch, *m.state_shape), dtype=m.be.dtype)
        u0[:opened] = m.open_forward(x[:opened], P)
        return u0, opened

    def evaluate(self, theta, x, y, batch: int, grad: bool = True, warm: bool = False) -> Evaluation:
        """J(θ) (and ∇J) with states and adjoints from MGRIT.

        Args:
            theta: this rank's flat parameter vector (layout.size,).
            x: inputs (B, *in_shape) where :attr:`needs_inputs` (None elsewhere).
            y: targets (labels (B,) or values (B, n_out)) where :attr:`needs_targets` (None elsewhere).
            batch: B, known on every rank.
            warm: start both solves from the previous solve's states and adjoints (one-shot).

        Returns:
            Evaluation with global objective, loss and correct count on every rank, and this
            rank's gradient block; ``self.last_stats`` holds the two SolveStats.
        """
        m = self.model
        P, gvec, G, R_share = self._start(theta, grad)
        u0 = opened = choice = None
        if not self.pipelined:
            u0, opened = self._open_for_choice(P, x, batch)
            choice = self._level_choice(P, u0, batch, warm)
        if self.pipelined or (choice is not None and choice.levels == 1):
            # the whole evaluation as the micro-batch pipeline; a choice's estimate goes into the
            # forward stats, the rows of an earlier multi-level solve are dropped (stale now)
            loss_share, correct_share, fstats, bstats = self.pipe.run(P, G, x, y, batch, u0=u0, idle=R_share,
                                                                      opened=opened)
            if choice is not None:
                fstats.adopt(choice)
            self.U = self.Lam = None
            self.last_stats = (fstats, bstats)
            return self._totals(gvec, loss_share, correct_share, R_share(), batch)
        if opened < batch:
            u0[opened:] = m.open_forward(x[opened:], P)
        R_share()
        U, fstats = self.forward_states(P, x, batch, warm, u0, choice)
        self.U = U
        loss_share, correct_share, lamN = 0.0, 0, None
        if self.is_last:
            loss_share, correct_share, lamN = m.loss(U[-1], y, P, G)
        self.last_stats = (fstats, None)
        if not grad:
            return self._totals(gvec, loss_share, correct_share, R_share(), batch)
        # the adjoint step's Jacobian is the transpose of the forward one: same spectral scale, so
        # the adjoint solve uses the levels the forward solve chose (no second estimate)
        chosen = self.bwd.opts.stability > 0 or self.bwd.opts.conv_bound > 0 or self.level_cap is not None
        levels = fstats.levels if chosen else None
        if self.pipe is not None and (levels == 1 or self._one_level(self.bwd)):
            Lam, bstats = self.pipe.backward(U, lamN, P, G, x, batch)
            self.Lam = Lam[::-1]  # solver order, a view: copied only when a warm MGRIT solve takes it
        else:
            Lam, bstats = self._adjoint(P, G, U, lamN, x, batch, warm, levels)
        self.last_stats = (fstats, bstats)
        return self._totals(gvec, loss_share, correct_share, R_share(), batch)

    def _adjoint(self, P, G, U, lamN, x, batch: int, warm: bool, levels):
        """Adjoint solve in reversed layer order, then the rank's gradient parts added into G.
        Returns (λ_a..λ_b (n + 1, B, *S), SolveStats)."""
        m, be = self.model, self.be
        data = tuple(_as_stepped(be, p[::-1]) for p in P.layers()) + (_as_stepped(be, U[:-1][::-1]),)

        warm_lam = _as_stepped(be, self._warm(self.Lam, batch) if warm else None)
        Lam_s, bstats = self.bwd.solve(self.psi, data, lamN, (batch, *m.state_shape), warm=warm_lam,
                                       levels=levels, tol=self.bwd_tol, max_iter=None,
                                       sample_data=(len(data) - 1,))
        self.Lam = Lam_s
        Lam = Lam_s[::-1]  # λ_a..λ_b
        grads = m.step.param_grad(U[:-1], Lam[1:], P.layers(), self.h_local)
        for g, d in zip(G.layers(), grads):
            g += d
        if self.is_first:
            m.open_grad(x, Lam[0], P, G)
        return Lam, bstats

    def solve_stats(self) -> dict:
        """What the last evaluation's solves did, the same on every rank: iterations, final residuals,
        levels (and the estimated spectral scale), and every step application, forward and adjoint,
        summed over the layer ranks and averaged over the data groups (serial: 2N)."""
        f, b = self.last_stats
        out = {"fwd_iters": f.iterations, "fwd_residual": f.residuals[-1] if f.residuals else None,
               "levels": f.levels}
        if b is not None:
            out.update(bwd_iters=b.iterations, bwd_residual=b.residuals[-1] if b.residuals else None)
        if f.rho is not None:
            out.update(rho=f.rho, h_rho=f.h_rho[-1] if f.h_rho else 0.0)
            if self.rho_reused:  # held from an earlier step's estimate (--estimate-every)
                out["rho_reused"] = True
        if f.allowed:   # levels the estimate allowed, held back by ENTER_MARGIN
            out["levels_allowed"] = f.allowed
        if f.micro_batches:  # the pipeline's (rank 0's data group's, when the groups' shares differ)
            out["micro_batches"] = f.micro_batches
        return {**out, "steps": self._steps}

    def _totals(self, gvec, loss_share: float, correct_share: int, R_share: float, batch: int,
                keep_steps: bool = True) -> Evaluation:
        """The evaluation from this rank's shares: global objective, loss and count, and (with
        ``keep_steps``) the step applications of :attr:`last_stats` for :meth:`solve_stats` (one
        allreduce over the layer ranks; across data groups one allgather of these, one of the gradient)."""
        steps = sum(s.total_steps for s in self.last_stats if s is not None) if keep_steps else 0.0
        loss, correct, objective, steps = self.comm.allreduce_sums(
            (loss_share, correct_share, loss_share + R_share, steps))
        d = self.data
        if d.size > 1:  # every group's (samples, objective, loss, count, steps): means weighted by the
            # groups' sample counts, added in group order (identical bits in every group); R is the
            # same in every group and the weights add up to 1, so J = Σ w_g (ℓ_g + R)
            n, J, L, k, s = d.allgather((batch, objective, loss, correct, steps)).T.tolist()
            total = int(round(sum(n)))
            gvec = None if gvec is None else d.sum_in_rank_order(batch / total * gvec)
            objective, loss = (sum(ni / total * v for ni, v in zip(n, vals)) for vals in (J, L))
            correct, steps, batch = sum(k), sum(s) / d.size, total
        if keep_steps:
            self._steps = steps
        return Evaluation(objective, loss, int(round(correct)), batch, grad=gvec)

    def gather_params(self, theta):
        """The full parameter vector (serial layout) on rank 0; None elsewhere."""
        host = self.be.to_host(theta)
        parts = self.comm.gather_obj(host, 0)
        if self.rank != 0:
            return None
        full = self.model.layout()
        vec = np.zeros(full.size)
        F = full.views(vec)
        for r, part in enumerate(parts):
            a, b = int(self.bounds[r]), int(self.bounds[r + 1])
            Q = self.model.layout(a, b).views(part)
            for name in Q.names():  # layer groups into their rows, the others whole
                (F[name][a:b] if name in self.model.layer_names else F[name])[...] = Q[name]
        return vec

    def scatter_params(self, full_vec):
        """This rank's block of a full (serial-layout) parameter vector given on every rank."""
        full = self.model.layout()
        F = full.views(self.be.asarray(full_vec))
        vec = self.xp.zeros(self.layout.size, dtype=self.be.dtype)
        Q = self.layout.views(vec)
        for name in Q.names():
            Q[name][...] = F[name][self.a:self.b] if name in self.model.layer_names else F[name]
        return vec
