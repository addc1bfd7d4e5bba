"""Seconds per training step of each way to spend P ranks, from the probe's costs (:mod:`.probe`)
and a network model (:class:`~gpubraid.runtime.replay.NetworkModel`), counted the way the code runs.

* **MGRIT** (one-shot, exact): the phases of one solve are :meth:`MGRIT.schedule
  <gpubraid.solver.mgrit.MGRIT.schedule>` (the cycle :meth:`~gpubraid.solver.mgrit.MGRIT.solve`
  executes); what each position does in a phase is :func:`~gpubraid.solver.level.level_plan`
  (F-relaxation: one batched call per F-slice plus one per leading point; C-relaxation and residual
  one call over the C-points; restriction one call).  A phase costs its slowest position; an
  F-relaxation is a pipeline (each position waits for its left neighbour's last row, one message);
  the coarsest level (its rows and its step data) is gathered to rank 0, stepped there (in one
  call when the step has a chain, else one step per call) and scattered back;
  every level-0 residual norm is an allreduce; a solve that chooses its levels first estimates ρ
  (the probe's timing of it: ``stability_iters`` + 1 calls and its work per layer).
  A call over L intervals of m samples costs α + L·(a + b·m) plus the solver's own per-call overhead;
  on a level that halves the feature maps l times (``spatial_levels``) L·b·m and its messages
  shrink by 4^l.
* **Layer-serial pipeline** (serial, pipeline): each layer rank runs
  :func:`~gpubraid.objective.pipeline.schedule_order` (1F1B or GPipe) or
  :func:`~gpubraid.objective.chimera.chimera_order`, a forward (backward) step of a micro-batch of
  m samples costing n·(a + b·m) on a block of n layers; a micro-batch's state (adjoint) moves to
  the rank of the next (previous) block in one message; the ranks are simulated in order, so the
  bubble (with 1F1B M + L − 1 block times per direction) comes out of the simulation.
* **Data groups**: each of the D groups holds ⌈B/D⌉ samples; the gradient blocks are summed across
  the groups (an allgather of the block), and every reduction (objective, solver norms, the
  optimiser's inner products) also runs across them.
"""
from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import numpy as np

from ..objective.chimera import chimera_order, down_count
from ..objective.pipeline import schedule_order
from ..runtime.backend import resolve_backend
from ..runtime.comm import split_layers
from ..runtime.replay import NetworkModel
from ..runtime.resources import micro_batch_bounds
from ..solver.level import level_plan
from ..solver.mgrit import MGRIT
from ..solver.options import MGRITOptions

_HOST = resolve_backend("numpy", "float64")


_VIEWS: dict = {}


def pixel_share(opts: MGRITOptions, level: int) -> float:
    """A level's state size over the finest level's: 4^−l on the levels that halve the maps."""
    return 0.25 ** min(level, opts.spatial_levels)


def _view(opts: MGRITOptions, h: tuple, L: int):
    """(rank 0's solver view of N steps on L positions, per level and position the level_plan)."""
    key = (repr(opts), h, L)
    if key in _VIEWS:
        return _VIEWS[key]
    N = len(h)
    solver = MGRIT(None, list(range(L)), split_layers(N, L), np.array(h), opts, _HOST)
    plans = [[level_plan(solver.levels[l], solver.layouts[l][p], solver.layouts[l + 1][p], _HOST)
              for p in range(L)] for l in range(solver.n_levels - 1)]
    if len(_VIEWS) > 64:
        _VIEWS.clear()
    _VIEWS[key] = solver, plans
    return solver, plans


class Counted(NamedTuple):
    """What rank 0 issues in one solve (:func:`mgrit_calls`)."""

    calls: int          #: calls, the coarsest solve's among them
    steps: int          #: step applications (intervals)
    coarse: int         #: the coarsest solve's step applications
    work: float         #: intervals weighted by :func:`pixel_share`
    coarse_calls: int   #: the coarsest solve's calls: one per solve with a chain, else one per step
    coarse_work: float  #: its intervals weighted by :func:`pixel_share`


def mgrit_calls(opts: MGRITOptions, adjoint: MGRITOptions, h, L: int, levels: int, warm: bool, it_f: int,
                it_b: int, chain: bool = False) -> dict:
    """Calls and intervals rank 0 of L issues in one forward solve (options ``opts``) and one
    adjoint solve (``adjoint``): ``{"forward": Counted, "adjoint": Counted}``.  ``chain``: the step
    takes the coarsest level's rows in one call (:func:`gpubraid.solver.coarse.coarse_solve`), else
    one call per step."""
    out = {}
    for name, it, o in (("forward", it_f, opts), ("adjoint", it_b, adjoint)):
        solver, plans = _view(o, tuple(float(v) for v in h), L)
        calls = steps = coarse = coarse_calls = 0
        work = coarse_work = 0.0
        for phase, l, n in solver.schedule(it, levels=levels, warm=warm):
            steps += n
            work += n * pixel_share(o, l)
            if phase == "f_relax" and n:
                r = plans[l][0]
                calls += sum(1 for k in r["slices"] if k > 0) + r["leading"]
            elif phase == "coarse_solve" and n:
                k = 1 if chain else n
                calls, coarse_calls = calls + k, coarse_calls + k
                coarse += n
                coarse_work += n * pixel_share(o, l)
            elif phase == "serial":
                calls += n
            elif n:
                calls += 1
        out[name] = Counted(calls, steps, coarse, work, coarse_calls, coarse_work)
    return out


def mgrit_solve_s(opts: MGRITOptions, h, L: int, levels: int, warm: bool, iters: int, alpha: float,
                  beta: float, m: int, msg_s: float, reduce_s: float, net: NetworkModel, row_bytes: int,
                  coarse_alpha: float | None = None, chain: tuple | None = None, per_interval: float = 0.0,
                  data: tuple = (0, 0)) -> float:
    """Critical-path seconds of one MGRIT solve on L positions (see the module docstring): a call
    over k intervals of m samples costs ``alpha`` + k·(``per_interval`` + ``beta``·m).  The coarsest
    solve of N_L steps costs, with a ``chain`` (α, a, b) (the step takes all its rows in one call),
    α + N_L·(a + b·m), else N_L × (``coarse_alpha`` (default ``alpha``) + ``per_interval`` +
    ``beta``·m); the per-sample terms times the level's :func:`pixel_share`.  Its step data come to
    rank 0 from the other positions: ``data`` = (bytes of one step's data, arrays)."""
    solver, plans = _view(opts, tuple(float(v) for v in h), L)
    coarse_alpha = alpha if coarse_alpha is None else coarse_alpha

    def call(k, share):
        return alpha + k * (per_interval + beta * m * share) if k > 0 else 0.0

    total, zero_rhs, gathered = 0.0, False, False
    for phase, l, n in solver.schedule(iters, levels=levels, warm=warm):
        share = pixel_share(opts, l)
        if share < 1.0 and msg_s > 0:   # a coarse row on halved maps: a smaller message
            msg_s_l = net.transfer(int(row_bytes * share)) + net.overhead_s
        else:
            msg_s_l = msg_s
        if phase == "f_relax":
            prev_sent, done = None, []
            for r in plans[l]:
                if r is None:
                    continue
                own = sum(call(k, share) for k in r["slices"])
                start = max(own, prev_sent + msg_s_l) if (r["has_prev"] and prev_sent is not None) else own
                end = start + r["leading"] * call(1, share)
                prev_sent = own if r["last_local"] else end
                done.append(end)
            total += max(done)
        elif phase in ("c_relax", "residual"):
            total += max(call(r["nc"], share) for r in plans[l] if r is not None)
            total += reduce_s if (phase == "residual" and l == 0) else 0.0
        elif phase == "restrict" and n:
            rs = [r for r in plans[l - 1] if r is not None]
            total += max(call(r["restrict"], share) for r in rs)
            total += msg_s_l if any(r["restrict_prev"] for r in rs) else 0.0
        elif phase == "coarse_solve":
            N_L = solver.levels[l].N
            total += chain[0] + N_L * (chain[1] + chain[2] * m * share) if chain is not None else \
                N_L * (coarse_alpha + per_interval + beta * m * share)
            k = max((lay.n_owned for lay in solver.layouts[l][1:]), default=0)
            if k > 0 and L > 1:  # g gathered (not in the nested start: g = 0) and u scattered, one
                # collective each; the step data of the coarsest steps once a solve, one gather per array
                rows = int(k * row_bytes * share)
                total += (1 + (not zero_rhs)) * (net.collective("gather", rows, L) + net.overhead_s)
                if not gathered:
                    block = int(k * data[0] / max(data[1], 1))
                    total += data[1] * (net.collective("gather", block, L) + net.overhead_s)
                gathered = True
        zero_rhs = phase == "nested"
    return total


def pipeline_steps(schedule: str, M: int, L: int):
    """(orders, rank): each layer rank's (kind, micro-batch, block) steps in the order it runs them,
    and ``rank(k, s)``, the rank that runs block s of micro-batch k."""
    if schedule == "chimera" and L > 1:
        down = down_count(M)
        return chimera_order(M, L), lambda k, s: s if k < down else L - 1 - s
    return [[(kind, k, r) for kind, k in schedule_order(schedule, M, L, r)] for r in range(L)], lambda k, s: s


def pipeline_s(schedule: str, L: int, M: int, m_total: int, N: int, fwd: tuple, bwd: tuple, ends: tuple,
               row_bytes: int, net: NetworkModel, scale=None, call: tuple = (0.0, 0.0)) -> float:
    """Seconds of one pipelined evaluation (forward and backward of M micro-batches over L layer
    ranks): every rank's steps (:func:`pipeline_steps`) simulated, a step of n layers and m samples
    costing call + n·(a + b·m) (``call``: (forward, backward) per sweep call), messages α + n/β + o
    between ranks, the opening and the head (``ends``) on the forward steps of the last block.
    ``scale(cells, backward)``: factor on the per-sample costs when a rank holds ``cells`` = layers ×
    samples of states (the micro-batches in flight: all M with GPipe, at most L with 1F1B, L + 1
    with Chimera); None: 1.  Chimera's exchange of the mirror blocks' parameters and gradients is
    not counted here."""
    bounds = split_layers(N, L)
    cut = micro_batch_bounds(m_total, M, L, schedule)
    sizes = [int(cut[k + 1] - cut[k]) for k in range(M)]
    msg = [net.transfer(m * row_bytes) + net.overhead_s if L > 1 else 0.0 for m in sizes]
    orders, rank = pipeline_steps(schedule, M, L)
    done = {}
    clock, pos = [0.0] * L, [0] * L
    queue, queued = deque(range(L)), [True] * L
    held = {"gpipe": M, "chimera": min(L + (L > 1), M)}.get(schedule, min(L, M))
    while queue:
        r = queue.popleft()
        queued[r] = False
        moved = False
        while pos[r] < len(orders[r]):
            kind, k, s = orders[r][pos[r]]
            before = ("F", k, s - 1) if kind == "F" else ("B", k, s + 1)
            start = clock[r]
            if 0 <= before[2] < L:
                if before not in done:
                    break
                start = max(start, done[before] + (msg[k] if rank(k, before[2]) != r else 0.0))
            n = int(bounds[s + 1] - bounds[s])
            a, b = fwd if kind == "F" else bwd
            if scale is not None:
                b *= scale(n * sizes[k] * held, kind == "B")
            work = call[kind == "B"] + n * (a + b * sizes[k])
            if kind == "F" and s == L - 1:
                work += ends[0] + ends[1] * sizes[k]
            clock[r] = done[kind, k, s] = start + work
            pos[r] += 1
            moved = True
        for q in (r - 1, r + 1) if moved else ():
            if 0 <= q < L and not queued[q] and pos[q] < len(orders[q]):
                queue.append(q)
                queued[q] = True
    return max(clock)


def reductions_per_step(optimizer: str) -> int:
    """Reductions of one training step (each of a few numbers): the evaluation's (objective, loss,
    count and step count), the interrupt check and the optimiser's (L-BFGS: the gradient's and the
    new pair's inner products; SGD, Adam: |g|)."""
    return 4 if optimizer == "lbfgs" else 3


def reduce_s(net: NetworkModel, L: int, D: int) -> float:
    """One scalar reduction over the L layer ranks and (allgathered) across the D data groups."""
    t = net.collective("allreduce", 8, L) + net.overhead_s if L > 1 else 0.0
    return t + (net.collective("allgather", 8, D) + net.overhead_s if D > 1 else 0.0)


def group_sum_s(net: NetworkModel, D: int, nbytes: int) -> float:
    """Summing a gradient block of ``nbytes`` across D data groups (an allgather, added in order)."""
    return net.collective("allgather", nbytes, D) + net.overhead_s if D > 1 else 0.0


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def layer_block(N: int, L: int) -> int:
    """Layers of the largest block of N layers over L ranks."""
    return math.ceil(N / L)
