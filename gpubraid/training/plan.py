"""The planner: every way to spend P ranks on a run, its predicted time, and the fastest.

A candidate is D data groups × L layer ranks (P = D·L) with a method: the layer-serial pipeline
(``serial`` on one layer rank, with M = 1, 2, 4 or 8 micro-batches one after the other, or the
automatic M: smaller ones may keep their states in the caches; ``pipeline`` with M = L, 2L, 4L, 8L
or the automatic M micro-batches on several, 1F1B and, on an even number of layer ranks, Chimera),
``oneshot`` or ``exact`` MGRIT with the levels the solver's own choice keeps on the initial parameters
(exact is left out when that is one level: it is then serial; one-shot on one level is the
layer-serial sweep it then runs: all micro-batches forward, then all backward).  Its seconds per training step come from
the probe (:mod:`.probe`, the run's step calls timed here) and the counting of
:mod:`.costmodel`; its time to accuracy is the run's ``iterations`` steps, divided for one-shot by
1 − e, e the probe's relative error of the one-shot gradient (a gradient with relative error e < 1
is still a descent direction; steepest descent's rate shrinks by about 1 − e): an estimate of the
price of the inexact gradient, not a measurement.  One-shot's steps also carry its convergence
monitor's serial evaluations (:func:`monitor_share` of them per step, each priced as the pipeline).
What grows with the layers a process holds (the solver's own cost per call, the optimiser's work
beyond the evaluation) is probed again on a 16th of a deep network and priced for each candidate's
block of layers (:meth:`~.probe.Probe.at_block`).

``--method auto`` (:func:`resolve_auto`) trains with the best candidate for the run's own ranks:
rank 0 probes, every rank gets its choice.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from ..errors import UserError
from ..runtime.comm import Comm
from ..runtime.replay import PRESETS, NetworkModel
from ..runtime.resources import held_bytes, micro_batch_count
from . import costmodel as cm
from .config import TrainConfig
from .methods import make_method
from .monitor import Monitor

#: Shared-memory MPI on one host as measured on the development VM (python -m bench.pingpong with
#: buffers out of cache; five runs on 2026-12-04, bench/results/2026-12-04-vm/pingpong.json one of
#: them: α ≈ 0–0.2 µs, o ≈ 1–2 µs, eager 4 KiB, and each size's transfer time, the median of the
#: five): the default network of the planner (ranks of one machine).
SHARED_MEMORY = NetworkModel("shared memory (one host)", 1.0e-6, 2.25e9, 1.5e-6, 4096, True, (
    (2048, 0.2e-6), (8192, 2.7e-6), (32768, 5.4e-6), (131072, 33e-6), (524288, 172e-6), (2097152, 847e-6),
    (8388608, 1.87e-3), (33554432, 2.65e-3)))
NETWORKS = {"shm": SHARED_MEMORY, **PRESETS}

#: A Chimera candidate ranks as if this much slower than predicted: the model prices its messages
#: and its mirror exchange as transfers, and measured it 1.15× its prediction where data groups
#: measured 1.06× (2 ranks on a 1250-sample group's share, 2026-12-05); at P = 8 its pick of a 4 × 2
#: Chimera pipeline, predicted 4 % ahead of data groups, measured 1.16–1.20× the best with every
#: rank's spans alone (two runs; bench/README.md, "Chimera").  The predicted times stay as they are.
CHIMERA_MARGIN = 0.15
#: The probe runs again on a network of N/BLOCK_SHARE layers (at least BLOCK_LAYERS), so that what grows
#: with the layers a process holds is priced for each candidate's block (:meth:`Probe.at_block`).
BLOCK_SHARE = 16
BLOCK_LAYERS = 16


def rank_key(c: "Candidate"):
    """The order of the candidates: time to accuracy (Chimera's with :data:`CHIMERA_MARGIN`), then
    seconds per step; on a tie the fewer layer ranks (the fewer messages)."""
    margin = 1 + CHIMERA_MARGIN if c.schedule == "chimera" else 1
    return c.accuracy_s * margin, c.step_s * margin, c.L


def network(name: str) -> NetworkModel:
    """A network model by name (``shm``, ``ib``, ``nvlink``, ``ideal``) or from a ping-pong JSON file."""
    if name in NETWORKS:
        return NETWORKS[name]
    try:
        return NetworkModel.from_json(name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"network: {name!r} is neither one of {', '.join(NETWORKS)} nor a readable "
                        f"ping-pong JSON file ({exc})") from None


@dataclass
class Candidate:
    """One way to run on P = D × L ranks, with its predicted seconds per step and to accuracy."""

    D: int
    L: int
    method: str
    levels: int
    M: int
    step_s: float
    accuracy_s: float
    grad_error: float = 0.0
    schedule: str = "1f1b"

    def label(self) -> str:
        chimera = " chimera" if self.schedule == "chimera" else ""
        what = {"serial": "serial" if self.M == 1 else f"serial M={self.M}", "pipeline": f"pipeline M={self.M}{chimera}"}.get(
            self.method, f"{self.method} {self.levels} level{'s' if self.levels > 1 else ''}")
        return f"{what} on {self.D}x{self.L} (data x layer)"

    def settings(self) -> dict:
        """The TrainConfig values that run this candidate (Chimera's schedule, else the run's own:
        GPipe and 1F1B take the same time, 1F1B less memory; one-shot's levels as ``max_levels``)."""
        out = {"method": self.method, "data_parallel": self.D}
        if self.method in ("serial", "pipeline"):   # M = 1 too: without it a run may cut for the caches
            out.update(micro_batches=self.M)
        if self.method == "oneshot" and self.levels > 1:   # at most the levels it was priced with
            out.update(max_levels=self.levels)
        return out | ({"schedule": "chimera"} if self.schedule == "chimera" else {})


def _mgrit_step(probe, method, levels, its, warm, D, L, net, h) -> float:
    """Seconds of one MGRIT evaluation (forward solve with its ρ estimate, adjoint solve, gradient,
    the rest) on one data group's ⌈B/D⌉ samples over L layer ranks."""
    m = cm.ceil_div(probe.batch, D)
    n = cm.layer_block(probe.layers, L)
    row = m * probe.state_bytes
    msg = net.transfer(row) + net.overhead_s if L > 1 else 0.0
    red = cm.reduce_s(net, L, D)
    total = 0.0
    opts = method.forward
    solve_call = probe.at_block(n)[0]
    for op, it, o in (("forward", its[0], method.forward), ("adjoint", its[1], method.adjoint)):
        scale = probe.per_sample_scale(n * m, op == "adjoint")
        alpha, a, b = probe.calls[op]
        chain = probe.calls.get(f"{op}_chain")
        total += cm.mgrit_solve_s(o, h, L, levels, warm, it, alpha + solve_call[0],
                                  b * scale + solve_call[1], m, msg, red, net, row, coarse_alpha=alpha,
                                  chain=None if chain is None else (chain[0], chain[1], chain[2] * scale),
                                  per_interval=a, data=(probe.param_bytes, probe.param_arrays) if op == "forward"
                                  else (probe.param_bytes + row, probe.param_arrays + 1))
    if opts.stability > 0 or opts.conv_bound > 0:  # at every estimate_every-th step's first evaluation
        total += (probe.estimate[0] + n * probe.estimate[1] + red) / probe.estimate_every
    alpha, a, b = probe.calls["param_grad"]
    b *= probe.per_sample_scale(n * m, True)
    return total + alpha + n * (a + b * m) + probe.ends[0] + probe.ends[1] * m


def schedules(L: int, fixed: str | None) -> tuple:
    """The pipeline schedules priced on L layer ranks: 1F1B (GPipe takes as long), and Chimera on an
    even L; only the ``fixed`` one when the user gave one (GPipe priced as 1F1B)."""
    if fixed is not None:
        return ("chimera",) if fixed == "chimera" and L > 1 else ("1f1b",)
    return ("1f1b", "chimera") if L % 2 == 0 else ("1f1b",)


def candidates(probe, cfg: TrainConfig, P: int, net: NetworkModel, h, fixed: dict | None = None) -> list[Candidate]:
    """Every candidate on P ranks, best first (:func:`rank_key`).
    ``cfg``: the run's resolved settings; ``h``: the step sizes; ``fixed``: what the user fixed
    (:func:`fixed_by`): only D = ``data_parallel``, the layer-serial candidates only with M =
    ``micro_batches``, the pipeline only with ``schedule``."""
    out = []
    N, B = probe.layers, probe.batch
    its = cfg.iterations
    reductions = cm.reductions_per_step(cfg.optimizer)
    fixed = fixed or {}
    for D in (d for d in range(1, P + 1) if P % d == 0 and d == fixed.get("data_parallel", d)):
        L = P // D
        m = cm.ceil_div(B, D)
        if L > N or B < D:
            continue
        fixed_s = reductions * cm.reduce_s(net, L, D) + cm.group_sum_s(net, D, cm.layer_block(N, L) * probe.param_bytes)
        fixed_s += probe.at_block(cm.layer_block(N, L))[1] + probe.regularizer_s * cm.layer_block(N, L) / N
        held = held_bytes(cm.layer_block(N, L), probe.state_bytes, probe.cache_blocked)
        Mo = micro_batch_count(fixed.get("micro_batches"), L, m, held)   # a one-shot run's layer-serial pipeline
        block = cm.layer_block(N, L) * probe.param_bytes   # Chimera: a mirror block's parameters and gradient
        swap_s = 2 * (net.transfer(block) + net.overhead_s)
        for schedule in schedules(L, fixed.get("schedule")):
            auto = micro_batch_count(None, L, m, held, schedule)   # what a run without --micro-batches streams
            Ms = sorted({min(k * L, m) for k in (1, 2, 4, 8)} | {auto}) if "micro_batches" not in fixed else \
                [micro_batch_count(fixed["micro_batches"], L, m)]
            for M in Ms:
                t = cm.pipeline_s(schedule, L, M, m, N, probe.sweep_fwd, probe.sweep_bwd, probe.ends, probe.state_bytes,
                                  net, probe.per_sample_scale, probe.sweep_call) + fixed_s
                t += swap_s if schedule == "chimera" else 0.0
                out.append(Candidate(D, L, "serial" if L == 1 else "pipeline", 1, M, t, its * t, schedule=schedule))
        for name, info, method, warm in (("oneshot", probe.oneshot, cfg_method(cfg, "oneshot", L), probe.warm),
                                         ("exact", probe.exact, cfg_method(cfg, "exact", L), False)):
            if info["levels"] < 2:
                if name == "oneshot":  # the pipeline at its automatic M, at the probe's cost ratio to
                    r = info.get("serial_ratio", 1.0)  # serial's evaluation (+ the ρ estimate)
                    fwd, bwd, call = ((r * a, r * b) for a, b in (probe.sweep_fwd, probe.sweep_bwd, probe.sweep_call))
                    t = cm.pipeline_s("1f1b", L, Mo, m, N, fwd, bwd, probe.ends, probe.state_bytes, net,
                                      probe.per_sample_scale, tuple(call)) + fixed_s
                    out.append(Candidate(D, L, name, 1, Mo, t, its * t))
                continue
            # one-shot at every level count up to the solver's choice (capped for the layer ranks):
            # fewer levels make the coarsest chain longer, which pays where a step is cheap against
            # a phase's calls (small batches); the gradient error probed at the most levels is kept
            # for fewer, whose error is smaller
            cap = min(info["levels"], method.forward.max_levels)
            e = info.get("grad_error", 0.0)
            monitor_s = 0.0
            if name == "oneshot":  # the convergence monitor: now and then serial's gradient by the pipeline
                monitor_s = monitor_share(cfg.monitor_every, its, e <= cfg.monitor_tol / 4) * cm.pipeline_s(
                    "1f1b", L, Mo, m, N, probe.sweep_fwd, probe.sweep_bwd, probe.ends, probe.state_bytes, net,
                    probe.per_sample_scale, probe.sweep_call)
            for levels in range(2, cap + 1) if name == "oneshot" and cap > 1 else (cap,):
                t = _mgrit_step(probe, method, levels, info["iterations"], warm, D, L, net, h) + fixed_s + monitor_s
                acc = its * t / (1.0 - e) if e < 1.0 else math.inf
                out.append(Candidate(D, L, name, levels, 1, t, acc, e))
    return sorted(out, key=rank_key)


def monitor_share(every: int, steps: int, small: bool = True) -> float:
    """Checks per step of one-shot's convergence monitor over a run of ``steps`` steps in which no
    line search fails and the gradient error stays within a quarter of the tolerance (``small``: the
    checks thin out, :meth:`~.monitor.Monitor.due`), or above it (every ``every`` steps)."""
    m = Monitor(every, 0.0, 2)
    m.capped = not small
    return sum(m.due(it, 0) for it in range(steps)) / steps if steps > 0 else 0.0


def cfg_method(cfg: TrainConfig, method: str, layer_ranks: int | None = None):
    """The :class:`~gpubraid.training.methods.Method` of ``cfg`` run as ``method`` on ``layer_ranks``."""
    return make_method(cfg.model_copy(update={"method": method}), layer_ranks)


def probe_config(cfg: TrainConfig) -> TrainConfig:
    """The single-rank, output-free settings the probe's trainer is built with."""
    return cfg.model_copy(update=dict(method="serial", data_parallel=1, micro_batches=None, trace=None,
                                      metrics=None, save=None, checkpoint_dir=None, resume=None,
                                      depth_levels=0, progress=False))


@dataclass
class Plan:
    """The probe, the candidates on ``ranks``, the best ones on more ranks (``more``: P -> best),
    and the network's step sizes ``h``."""

    config: dict
    ranks: int
    network: NetworkModel
    probe: object
    candidates: list
    more: dict
    h: tuple
    fixed: dict = field(default_factory=dict)   #: what the user fixed of the choice (fixed_by)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def as_dict(self, top: int | None = None) -> dict:
        return {"ranks": self.ranks, "network": asdict(self.network), "probe": self.probe.as_dict(),
                "choice": asdict(self.best), "why": self.reason(), "fixed": self.fixed,
                "candidates": [asdict(c) for c in self.candidates[:top]],
                "more_ranks": {str(p): asdict(c) for p, c in self.more.items()}}

    def reason(self) -> str:
        """Why the best candidate: its time against the runner-up's and the level choice."""
        best = self.best
        why = [f"predicted {best.step_s:.3g} s/step, {best.accuracy_s:.3g} s for {self.config['iterations']} steps"]
        if self.fixed:
            why.append("as you fixed " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.fixed.items()))
        others = [c for c in self.candidates[1:] if (c.D, c.L, c.step_s) != (best.D, best.L, best.step_s)]
        if others:
            nxt = others[0]
            why.append(f"next {nxt.label()} {nxt.step_s:.3g} s/step")
        os_ = self.probe.oneshot
        if os_["levels"] < 2:
            why.append(f"oneshot keeps 1 level here (rho {os_['rho']:.3g}): the layer-serial sweep"
                       if os_["rho"] is not None else "oneshot keeps 1 level here")
        else:
            why.append(f"oneshot {os_['levels']} levels, gradient error {100 * os_['grad_error']:.2g} %")
        return "; ".join(why)

    def line(self) -> str:
        """One line for the log: the choice, why, and the best use of more ranks."""
        more = ", ".join(f"{p}: {c.label().replace(' (data x layer)', '')} {c.step_s:.3g} s/step"
                         for p, c in self.more.items())
        text = f"plan: {self.best.label()}, {self.ranks} rank(s): {self.reason()}"
        return text + (f"; more ranks (predicted, one core each): {more}" if more else "")

    def table(self) -> str:
        """Every candidate, best first."""
        p = self.probe
        rows = [f"{'D x L':>9}  {'method':<16} {'levels':>6} {'M':>4}  {'s/step':>10}  {'s to accuracy':>13}"
                f"  {'grad err':>8}"]
        for c in self.candidates:
            acc = f"{c.accuracy_s:13.4g}" if math.isfinite(c.accuracy_s) else f"{'inf':>13}"
            method = c.method + ("/chimera" if c.schedule == "chimera" else "")
            rows.append(f"{c.D:>4} x {c.L:<3}  {method:<16} {c.levels:>6} {c.M:>4}  {c.step_s:10.4g}  {acc}"
                        f"  {100 * c.grad_error:7.2g}%")
        head = [f"probe ({p.clock} time, {p.probe_s:.1f} s): batch {p.batch}, {p.layers} layers; layer-serial "
                f"evaluation {p.evaluate_s:.4g} s on 1 rank; oneshot: {p.oneshot['levels']} level(s)"
                + (f", rho {p.oneshot['rho']:.3g}" if p.oneshot["rho"] is not None else "")
                + f", first-step gradient error {100 * p.oneshot['grad_error']:.2g} %; exact: "
                + (f"{p.exact['levels']} level(s), {p.exact['iterations'][0]}/{p.exact['iterations'][1]} iterations"
                   if p.exact["levels"] else "not probed (an evaluation is expensive; its solves take tens)"),
                f"candidates on {self.ranks} rank(s), network {self.network.name}, best first"
                + (f" (Chimera ranked as if {100 * CHIMERA_MARGIN:.0f} % slower):"
                   if any(c.schedule == "chimera" for c in self.candidates) else ":")]
        return "\n".join(head + rows)


def probe_job(cfg: TrainConfig, build_trainer):
    """The probe of the run ``cfg`` (``build_trainer(cfg)``: a single-rank trainer): (probe, the
    resolved settings with ``cfg``'s method, the step sizes), what :func:`candidates` prices."""
    from .probe import run_probe

    trainer = build_trainer(probe_config(cfg))
    cfg = trainer.cfg.model_copy(update={"method": cfg.method})
    probe = run_probe(trainer, cfg_method(cfg, "oneshot"), cfg_method(cfg, "exact"))
    n = cfg.layers // BLOCK_SHARE
    if n >= BLOCK_LAYERS:  # the overheads that grow with a rank's layers, again on a 16th of them
        sub_cfg = cfg.model_copy(update={"layers": n})
        sub = run_probe(build_trainer(probe_config(sub_cfg)), cfg_method(sub_cfg, "oneshot"), cfg_method(sub_cfg, "exact"))
        probe = dataclasses.replace(probe, block=(n, sub.solve_call if sub.oneshot["levels"] > 1 else probe.solve_call,
                                                  sub.step_overhead if probe.step_overhead > 0 else 0.0))
    return probe, cfg, tuple(float(v) for v in trainer.model.h)


def make_plan(cfg: TrainConfig, ranks: int, net: NetworkModel, build_trainer, more=(), fixed=None) -> Plan:
    """Probe the run ``cfg`` (``build_trainer(cfg)``: a single-rank trainer) and rank every
    candidate on ``ranks`` that keeps ``fixed`` (see :func:`candidates`); ``more``: factors of
    ``ranks`` whose best candidates (any) are also given."""
    if ranks < 1:
        raise UserError(f"ranks must be an integer >= 1; got {ranks}")
    fixed = dict(fixed or {})
    if ranks % fixed.get("data_parallel", 1):
        raise UserError(f"data_parallel must divide the number of MPI ranks ({ranks}); got {fixed['data_parallel']}")
    probe, cfg, h = probe_job(cfg, build_trainer)
    ranked = candidates(probe, cfg, ranks, net, h, fixed)
    if not ranked:
        given = "".join(f" with --{k.replace('_', '-')} {v}" for k, v in fixed.items())
        raise UserError(f"ranks: no way to run {probe.layers} layers on a batch of {probe.batch} over {ranks} "
                        f"ranks{given}")
    bigger = {}
    for k in more:
        options = candidates(probe, cfg, ranks * k, net, h)
        if options and ranks * k <= probe.layers * probe.batch:
            bigger[ranks * k] = options[0]
    return Plan(cfg.model_dump(), ranks, net, probe, ranked, bigger, h, fixed)


def fixed_by(cfg: TrainConfig) -> dict:
    """What the user fixed of ``--method auto``'s choice: ``data_parallel`` when not 1,
    ``micro_batches`` (of the layer-serial candidates: serial, the pipeline) when given, and the
    ``schedule`` when not the default 1F1B (then no Chimera candidate: the run keeps its own)."""
    out = {"data_parallel": cfg.data_parallel} if cfg.data_parallel != 1 else {}
    out |= {"schedule": cfg.schedule} if cfg.schedule != "1f1b" else {}
    return out | ({"micro_batches": cfg.micro_batches} if cfg.micro_batches is not None else {})


def resolve_auto(cfg: TrainConfig, world: Comm, build_trainer, net: NetworkModel = SHARED_MEMORY):
    """``cfg`` with ``method`` "auto" replaced by the planner's choice for ``world``'s ranks among
    the candidates that keep what the user fixed (:func:`fixed_by`), and the plan's record (a dict,
    the same on every rank).  Rank 0 probes; a UserError there is raised on every rank."""
    plan, err = None, None
    if world.rank == 0:
        try:
            made = make_plan(cfg, world.size, net, build_trainer, more=(2, 4, 8), fixed=fixed_by(cfg))
            plan = {**made.as_dict(top=8), "line": made.line()}
        except UserError as exc:
            err = str(exc)
    plan, err = world.bcast_obj((plan, err), 0)
    if err is not None:
        raise UserError(err)
    choice = Candidate(**plan["choice"])
    return cfg.model_copy(update=choice.settings()), plan
