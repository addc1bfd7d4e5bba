"""The planner's probe: what one run's step calls cost on this machine and backend, and what the
one-shot solver would do on its network (:mod:`gpubraid.training.plan` turns it into times).

The probe runs on one process, on a single-rank trainer of the run's settings (method serial), for
the run's batch (the full training set or one mini-batch of ``batch_size``) at the initial
parameters.  Every cost is a fit ``a + b·m`` (seconds; m: samples in the call) or ``α + L·(a + b·m)``
(L layers in one batched call), timed as the process's CPU time on a CPU (robust to other jobs on
a shared machine, as the trace's spans are) and as synchronised wall time on a GPU:

    sweep_fwd, sweep_bwd   one layer of the layer-serial sweeps (serial and pipeline training:
                           forward keeping σ'(z), adjoint + gradient) per micro-batch of m samples
    sweep_call             each sweep call's own cost (forward, backward): a block of n layers
                           costs sweep_call + n·(a + b·m), from sweeps of 1 and SWEEP_LAYERS layers
                           (more at a few samples: FIT_LAYERS)
    ends                   opening and head of m samples (per micro-batch of the pipeline)
    regularizer_s          the regulariser and its gradient over all layers (once per evaluation)
    forward, adjoint       one batched step call over L layers (MGRIT's relaxation and restriction)
    forward_chain, adjoint_chain
                           where the step has chains: one call over a chain of L steps (MGRIT's
                           coarsest solve), else absent (the coarsest solve is one call per step)
    param_grad             one batched gradient call over L layers
    solve_call             each MGRIT call's own cost in situ (slicing, gathers and scatters, the
                           g-add, timers), (per call, per interval·sample): the one-shot evaluation's
                           measured time less its calls' step costs, at SOLVE_SAMPLES and the batch,
                           per call other than the coarsest solve's single steps
    footprint              the per-sample costs of the larger sweeps (sizes above the fit's two, whose
                           states stay in the caches; the batch; the whole network at the batch)
                           against the fit's, by the states they hold (caches)
    step_overhead          a training step beyond its evaluation (optimiser, batch, statistics)
    cache_blocked          the step's ``cache_blocked``: a run's automatic M depends on it
    param_arrays           the step's parameter arrays per layer (messages of the coarsest solve's gather)
    estimate               the ρ estimate of a solve that chooses its levels, (its calls, per layer):
                           timed over the network's layers as the solver runs it
    estimate_every         the run's steps per estimate (the steps between reuse it)

and the one-shot solver's level choice on the initial parameters (levels, ρ), the relative error
of the one-shot gradient of the first step (nested start) against the exact one (on one level: its
evaluation's time over serial's, ``serial_ratio``), and the exact
method's iteration counts to its tolerance (on MGRIT_SAMPLES samples).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..network.sweep import backward_sweep, forward_sweep
from ..objective.layer_parallel import LayerParallel
from ..runtime.comm import Comm
from ..runtime.resources import HELD_BYTES
from .costmodel import mgrit_calls
from .fits import Clock, fit_calls, fit_line, footprint_scale

#: Samples of the probe's MGRIT solves (the level choice uses ``stability_samples`` of them;
#: iteration counts and the gradient error barely depend on how many).
MGRIT_SAMPLES = 256


#: Samples of the smaller of the two timed one-shot evaluations (the other: the run's batch; a
#: quarter of it when that is smaller), from which the solver's own cost per call and per
#: interval·sample come.
SOLVE_SAMPLES = 128


#: Samples of the exact method's probe solve.
EXACT_SAMPLES = 64


#: Real training steps the probe times (their median beyond the evaluation is the step overhead),
#: when they and the final scoring of the run are predicted to take at most PROBE_BUDGET_S seconds.
PROBE_STEPS = 4
PROBE_BUDGET_S = 2.0


#: Seconds of one layer-serial evaluation beyond which the probe times each thing once, not best of
#: ``repeats``, and leaves exact out (its solves to the tolerance cost tens of evaluations).
EXPENSIVE_S = 0.1


#: Layers of the probe's layer-serial sweeps (a cost per layer).
SWEEP_LAYERS = 16


#: The fitted sweeps' layers are doubled from SWEEP_LAYERS (up to FIT_LAYERS and the network's) until
#: they take SWEEP_WORK times a one-layer sweep: on a few samples a layer of the dense step costs
#: 0.1-0.3 µs against 30 µs of call, which 16 layers cannot resolve (it priced serial's evaluation
#: at batch 8 and 1024 layers at 3.0 ms, measured 1.0 ms).
FIT_LAYERS = 1024
SWEEP_WORK = 4.0


#: Timed repeats of each layer-serial sweep (the shortest kept) unless the network is expensive:
#: the sweeps decide between micro-batch counts whose costs differ by a few per cent, where the
#: shorter of two timings on a shared machine picked a count 1.3x slower than another.
SWEEP_REPEATS = 5


@dataclass
class Probe:
    """What a run's network costs here (seconds) and what its solvers do; see the module docstring.

    ``sweep_fwd``, ``sweep_bwd``, ``ends``: (a, b) of a + b·m (``ends``: opening and head per
    micro-batch, the regulariser is ``regularizer_s`` per evaluation; the sweeps: per layer, besides
    ``sweep_call`` (forward, backward) per call of a block of layers); ``calls``: per operation (α, a, b) of
    α + L·(a + b·m) (measured on 1 and 8 layers, 64 at a few samples); ``solve_call``: (α, β) the solver
    adds to each MGRIT call; ``footprint``: points (cells, forward ratio, backward ratio), cells
    ascending: a sweep holding cells = layers × samples of states costs that ratio times the fit's
    per-sample cost (memory traffic beyond the caches; the first point, ratio 1, is the fit's larger
    sweep; see :meth:`per_sample_scale`); ``step_overhead``:
    seconds per training step beyond the evaluation (optimiser, batch, statistics:
    a few real steps' median less the predicted evaluation).  ``oneshot`` / ``exact``:
    levels (the solver's choice on the initial parameters), ρ, iterations per solve (forward,
    adjoint), and for one-shot the relative gradient error of the first step (exact: levels 0 when
    not probed, see EXPENSIVE_S).  ``block``: (layers n_s, solve_call, step_overhead) of the same probe
    on a network of n_s < N layers (0: none), so that both, which grow with the layers a process
    holds (the solver's slicing per call, the optimiser's vectors), are priced for a rank's block
    (:meth:`at_block`).
    """

    batch: int
    layers: int
    state_bytes: int
    param_bytes: int
    warm: bool
    clock: str
    sweep_fwd: tuple
    sweep_bwd: tuple
    ends: tuple
    calls: dict
    solve_call: tuple
    oneshot: dict
    exact: dict
    footprint: tuple = ()
    step_overhead: float = 0.0
    probe_s: float = 0.0
    evaluate_s: float = 0.0
    sweep_call: tuple = (0.0, 0.0)
    regularizer_s: float = 0.0
    cache_blocked: bool = False
    param_arrays: int = 1
    estimate: tuple = (0.0, 0.0)
    estimate_every: int = 1
    block: tuple = (0, (0.0, 0.0), 0.0)

    def as_dict(self) -> dict:
        return asdict(self)

    def at_block(self, n: int) -> tuple[tuple, float]:
        """(solve_call, step_overhead) on a rank holding ``n`` of the network's layers: linear in the
        layers between the smaller network's probe (:attr:`block`) and this one's, the smaller one's
        below it; this probe's alone without a smaller one."""
        n_s, call_s, over_s = self.block
        if n_s <= 0 or n >= self.layers:
            return self.solve_call, self.step_overhead
        w = max(n - n_s, 0) / (self.layers - n_s)
        return tuple(a + w * (b - a) for a, b in zip(call_s, self.solve_call)), over_s + w * (self.step_overhead - over_s)

    def per_sample_scale(self, cells: float, backward: bool) -> float:
        """Factor on the per-sample costs of a sweep or call whose rank holds ``cells`` = layers ×
        samples of states (:func:`footprint_scale` of the probe's footprint)."""
        return footprint_scale(self.footprint, cells, backward)


def sweep_sizes(B: int, in_cache: int) -> list:
    """Micro-batch sizes of the probe's sweeps, ascending, for a batch of ``B`` samples of which
    ``in_cache`` keep their states in the caches (at most HELD_BYTES over the probe's layers for a
    cache-blocked step, else B): the first two give the per-sample fit and stay in the caches (16 and
    B/8 where they do; for wider states in_cache/4 and in_cache: 1 and 5 samples of MNIST's maps),
    the larger of 16, B/8 and B are the footprint's points above them."""
    small, eighth = min(B, 16), max(1, B // 8)
    if in_cache < B and in_cache <= small:   # 16 samples already fill the caches
        fit = {max(1, in_cache // 4), in_cache}
    else:
        fit = {small, min(eighth, in_cache)}
    return sorted(fit | {m for m in (small, eighth, B) if m > max(fit)})


def run_probe(trainer, oneshot, exact, repeats: int = 2) -> Probe:
    """Probe ``trainer`` (a single-rank :class:`~gpubraid.training.trainer.Trainer` of the run's
    settings) for the one-shot and exact methods ``oneshot``, ``exact``
    (:class:`~gpubraid.training.methods.Method`)."""
    t_start = time.perf_counter()
    model, be, xp = trainer.model, trainer.be, trainer.be.xp
    clock = Clock(be)
    B = trainer.data.n_train if trainer.full_batch else trainer.cfg.batch_size
    x, y, B = trainer.data.take("train", None if trainer.full_batch else np.arange(B), xp)
    theta = trainer.theta
    P = trainer.lp.layout.views(theta)
    layers = P.layers()
    N, S = model.layers, model.state_shape
    h = model.step_sizes(0, N)
    n = min(N, SWEEP_LAYERS)
    held = model.held_bytes(n)
    sizes = sweep_sizes(B, max(1, min(HELD_BYTES // held, B)) if held else B)

    # layer-serial sweeps: a + b·m per layer, forward and backward, at each micro-batch size m
    def sweeps(m, k):
        block = tuple(p[:k] for p in layers)
        t0 = clock.now()
        U = xp.empty((k + 1, m, *S), dtype=be.dtype)
        U[0] = model.open_forward(x[:m], P)
        kept = forward_sweep(model.step, U, block, h[:k], True)
        t1 = clock.now()
        Lam = xp.empty_like(U)
        G = [xp.zeros_like(p) for p in block]
        Lam[-1] = U[-1]
        backward_sweep(model.step, U, Lam, block, h[:k], G, kept)
        return t1 - t0, clock.now() - t1

    # the fit's two sizes take as many layers (SWEEP_LAYERS doubled, up to FIT_LAYERS) as it needs for
    # the layers' work to be at least SWEEP_WORK times one layer's sweep (its call): at a few samples
    # a layer costs a fraction of a microsecond against tens for the call
    fitted, reps = sizes[:2], max(repeats, SWEEP_REPEATS)
    one, lay = {}, {m: n for m in sizes}
    for m in fitted:
        one[m] = [sweeps(m, 1) for _ in range(reps + 1)][1:]
        t1 = min(sum(t) for t in one[m])
        while lay[m] < min(N, FIT_LAYERS) and min(sum(sweeps(m, lay[m])) for _ in range(2)) < SWEEP_WORK * t1:
            lay[m] = min(2 * lay[m], N, FIT_LAYERS)
    timed = {}
    for m in sorted(sizes, reverse=True):
        timed[m] = [sweeps(m, lay[m]) for _ in range(2)][1:]  # after a warm-up
        if m == B and N / lay[m] * sum(timed[m][0]) > EXPENSIVE_S:  # an expensive network: time everything once
            repeats = reps = 1
        timed[m] += [sweeps(m, lay[m]) for _ in range(reps - 1)]
    # a call's own cost (a block sweep is one call for all its layers): from one layer against lay[m]
    # at the smallest size, at most half of the fitted sweeps (where the layers' work is lost in the
    # noise of the calls, a layer would otherwise cost nothing); then the per-layer fit a + b·m from
    # the two smallest sizes (micro-batches whose states stay in the caches), the call taken out;
    # the larger sweeps give the footprint's ratios
    best = {m: [min(t[d] for t in timed[m]) for d in (0, 1)] for m in timed}
    sweep_call, m0 = (0.0, 0.0), sizes[0]
    if lay[m0] > 1:
        k = lay[m0]
        sweep_call = tuple(min(max((k * min(t[d] for t in one[m0]) - best[m0][d]) / (k - 1), 0.0),
                               min(best[m][d] for m in fitted) / 2) for d in (0, 1))
    sweep_fwd, sweep_bwd = (fit_line(fitted, [(best[m][d] - sweep_call[d]) / lay[m] for m in fitted]) for d in (0, 1))

    def point(runs, k, m):
        """(cells, forward ratio, backward ratio) of ``runs``: sweeps of k layers and m samples."""
        return (k * m, *(max(((min(t[d] for t in runs) - sweep_call[d]) / k - fit[0]) / m / fit[1], 1.0)
                         if fit[1] > 0 else 1.0 for d, fit in ((0, sweep_fwd), (1, sweep_bwd))))

    footprint = [(lay[fitted[-1]] * fitted[-1], 1.0, 1.0)] + [point(timed[m], n, m) for m in sizes[2:]]
    if N > n:  # the whole network at the full batch, once its memory is faulted in (the first
        # sweep's page faults are a run's once, not every evaluation's)
        footprint.append(point([sweeps(B, N) for _ in range(reps + 1)][1:], N, B))
    footprint = tuple(footprint)
    ratios = tuple(footprint_scale(footprint, N * B, d) for d in (False, True))

    # the rest of an evaluation: opening forward and gradient, head, regulariser
    G = trainer.lp.layout.views(xp.zeros_like(theta))

    def ends(m):
        u0 = model.open_forward(x[:m], P)
        lam = model.loss(u0, y[:m], P, G)[2]  # the head on a state of the right shape
        model.open_grad(x[:m], lam, P, G)

    ends_fit = fit_line(sizes, [clock.best(lambda m=m: ends(m), repeats) for m in sizes])
    regularizer_s = clock.best(lambda: model.regularizer(trainer.lp.layout, P, G), repeats)
    per_layer = sweep_fwd[0] + sweep_bwd[0] + B * (sweep_fwd[1] * ratios[0] + sweep_bwd[1] * ratios[1])
    evaluate_s = sum(sweep_call) + N * per_layer
    evaluate_s += ends_fit[0] + ends_fit[1] * B + regularizer_s

    # batched step calls (and the chains of the coarsest solve, where the step has them)
    # over 1 and L_op layers, L_op = 8, or 64 where the sweeps needed more layers (a layer's work is
    # then small against a call's, and the one-shot calls span many layers)
    L_op = min(N, 64) if max(lay.values()) > n else min(n, 8)
    U = xp.ascontiguousarray(xp.broadcast_to(model.open_forward(x, P), (max(n, L_op), B, *S)))
    ops = {"forward": lambda L, m: model.step.forward(U[:L, :m], tuple(p[:L] for p in layers), h[:L]),
           "adjoint": lambda L, m: model.step.adjoint(U[:L, :m], U[:L, :m], tuple(p[:L] for p in layers), h[:L]),
           "param_grad": lambda L, m: model.step.param_grad(U[:L, :m], U[:L, :m], tuple(p[:L] for p in layers),
                                                            h[:L])}
    step = model.step
    if callable(getattr(step, "forward_chain", None)) and callable(getattr(step, "adjoint_chain", None)):
        V = xp.empty_like(U)
        chains = {"forward_chain": lambda L, m: step.forward_chain(U[0, :m], V[:L, :m], tuple(p[:L] for p in layers),
                                                                   h[:L], None),
                  "adjoint_chain": lambda L, m: step.adjoint_chain(U[0, :m], V[:L, :m], U[:L, :m],
                                                                   tuple(p[:L] for p in layers), h[:L], None)}
        if all(op(1, 1) for op in chains.values()):  # it takes such rows (else: one call per step)
            ops.update(chains)
    # α + L·(a + b·m) from one and L_op layers at one sample and the batch
    points = sorted({(1, 1), (1, B), (L_op, 1), (L_op, B)})
    calls = {name: fit_calls(points, [clock.best(lambda L=L, m=m: op(L, m), repeats) for L, m in points])
             for name, op in ops.items()}

    # the solvers on s samples: one-shot's level choice, its first step's gradient error and its
    # calls' own overhead; exact's iterations to its tolerance (scaled to the samples' share: the
    # residual is a 2-norm over the samples)
    s = min(B, MGRIT_SAMPLES)
    xs, ys = x[:s], y[:s]
    g_ref = be.to_host(trainer.lp.evaluate(theta, xs, ys, s, grad=True).grad)
    single = Comm.single()
    os_lp = LayerParallel(model, single, oneshot.forward, oneshot.adjoint, None, oneshot.pipeline)
    ev = os_lp.evaluate(theta, xs, ys, s, grad=True, warm=False)
    f, b = os_lp.last_stats
    err = float(np.linalg.norm(be.to_host(ev.grad) - g_ref) / max(np.linalg.norm(g_ref), 1e-300))
    warm = oneshot.warm(trainer.full_batch)
    os_info = {"levels": f.levels, "rho": f.rho, "grad_error": err, "iterations": [f.iterations, b.iterations]}
    if f.levels == 1:  # its layer-serial sweep: plain forward steps, σ' recomputed backward, the ρ estimate
        # (the shortest of three: one timing of a millisecond caught a pause and made it 17)
        k = 3 if repeats > 1 else 1
        os_info["serial_ratio"] = clock.best(lambda: os_lp.evaluate(theta, xs, ys, s, grad=True, warm=warm), k) \
            / clock.best(lambda: trainer.lp.evaluate(theta, xs, ys, s, grad=True), k)
    # the ρ estimate of a solve that chooses its levels (each evaluation's first step), as the solver
    # runs it: its power iteration's step calls, then its elementwise work per layer
    estimate = (0.0, 0.0)
    if oneshot.forward.stability > 0 or oneshot.forward.conv_bound > 0:
        u0s = model.open_forward(xs, P)
        t_est = clock.best(lambda: os_lp.fwd.choose(os_lp.phi, layers, u0s, (s, *S)), repeats)
        fixed = (oneshot.forward.stability_iters + 1) * calls["forward"][0]
        estimate = (fixed, max(t_est - fixed, 0.0) / N)
    solve_call = (0.0, 0.0)
    if f.levels > 1:  # the solver's own cost per call and per interval·sample, at two batch sizes
        def extra(mm):
            xm, ym = x[:mm], y[:mm]
            os_lp.evaluate(theta, xm, ym, mm, grad=True, warm=False)  # the warm start of this size
            wall = clock.best(lambda: os_lp.evaluate(theta, xm, ym, mm, grad=True, warm=warm), repeats)
            pg = calls["param_grad"]
            wall -= pg[0] + N * (pg[1] + pg[2] * mm) + ends_fit[0] + ends_fit[1] * mm + regularizer_s
            wall -= estimate[0] + N * estimate[1]
            fs, bs = os_lp.last_stats
            counted = mgrit_calls(oneshot.forward, oneshot.adjoint, h, 1, fs.levels, warm, fs.iterations,
                                  bs.iterations, chain="forward_chain" in calls)
            step_cost = 0.0
            for op in ("forward", "adjoint"):
                c, (alpha, a, b) = counted[op], calls[op]
                alpha_c, a_c, b_c = calls.get(f"{op}_chain", (alpha, a, b))
                step_cost += (c.calls - c.coarse_calls) * alpha + (c.steps - c.coarse) * a + (c.work - c.coarse_work) * mm * b
                step_cost += c.coarse_calls * alpha_c + c.coarse * a_c + c.coarse_work * mm * b_c
            # the coarsest solve's calls carry the step's own cost only (one chain, or one step per
            # call and an add): the solver's own cost is that of the other calls
            n_calls = sum(counted[op].calls - counted[op].coarse_calls for op in ("forward", "adjoint"))
            return wall - step_cost, n_calls, counted["forward"].work + counted["adjoint"].work

        m1, m2 = min(SOLVE_SAMPLES, max(1, B // 4)), B   # two sizes also for a small batch
        (e1, n_calls, steps), (e2, _, _) = extra(m1), extra(m2)
        beta_x = max((e2 - e1) / (steps * (m2 - m1)), 0.0) if m2 > m1 else 0.0
        solve_call = (max(e1 - steps * m1 * beta_x, 0.0) / max(n_calls, 1), beta_x)
    ex_info = {"levels": 0, "rho": None, "iterations": [0, 0]}   # not probed: an expensive network
    if repeats > 1:
        k = min(s, EXACT_SAMPLES)
        fo, bo = (dataclasses.replace(o, tol=o.tol * math.sqrt(k / B)) for o in (exact.forward, exact.adjoint))
        ex_lp = LayerParallel(model, single, fo, bo, None, exact.pipeline)
        ex_lp.evaluate(theta, xs[:k], ys[:k], k, grad=True)
        f, b = ex_lp.last_stats
        ex_info = {"levels": f.levels, "rho": f.rho, "iterations": [f.iterations, b.iterations]}
    # a few real training steps (the last probe: it trains the probe's parameters): what a step
    # costs beyond its evaluation, from the steps with one evaluation after the first
    # (left out when they and the run's final scoring would take over PROBE_BUDGET_S: the
    # evaluation then dwarfs the rest)
    step_overhead = 0.0
    scoring = N * (2 * sweep_fwd[0] + sweep_fwd[1] * (trainer.data.n_train + trainer.data.n_val))
    if PROBE_STEPS * evaluate_s + scoring <= PROBE_BUDGET_S:
        # each step's time less its own evaluation's, both measured (not the predicted evaluation:
        # the machine's speed moves between the probe's parts, and the difference would carry it)
        spent, evaluate, own = [0.0], trainer.lp.evaluate, vars(trainer.lp).get("evaluate")

        def timed(*args, **kwargs):
            t0 = clock.now()
            try:
                return evaluate(*args, **kwargs)
            finally:
                spent[0] += clock.now() - t0

        trainer.lp.evaluate = timed
        marks = [(clock.now(), 0, 0.0)]
        trainer.cfg = trainer.cfg.model_copy(update={"iterations": PROBE_STEPS, "val_every": 0})
        try:
            trainer.run(progress=lambda e: marks.append((clock.now(), e["n_evals"], spent[0])))
        finally:
            if own is None:
                del trainer.lp.evaluate
            else:
                trainer.lp.evaluate = own
        steps = [(t1 - t0) - (s1 - s0) for (t0, _, s0), (t1, k, s1) in zip(marks[1:], marks[2:]) if k == 1]
        step_overhead = max(float(np.median(steps)), 0.0) if steps else 0.0
    itemsize = np.dtype(be.dtype).itemsize
    param_bytes = sum(int(np.prod(p)) for p in model.step.param_shapes) * itemsize
    return Probe(B, N, int(np.prod(S)) * itemsize, param_bytes, warm, clock.name, sweep_fwd, sweep_bwd, ends_fit,
                 calls, solve_call, os_info, ex_info, footprint, step_overhead, time.perf_counter() - t_start,
                 evaluate_s, sweep_call, regularizer_s, bool(getattr(model.step, "cache_blocked", False)),
                 len(model.step.param_shapes), estimate, trainer.lp.estimate_every)
