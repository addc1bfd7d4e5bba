"""Performance model of layer-parallel MGRIT: calls × (α + β·L), calibrated on a subset of the
measured solves.py / scaling.py configurations and validated on the others (held out).

    python -m bench.perf_model [--quick] [--out DIR] [--solves JSON] [--scaling JSON] [--steps-gpu JSON]
                          [--pingpong]

Cost of one call.  A batched step call advancing L intervals costs t(L) = α + β·L, per operation
(forward, adjoint) and per problem size (C, B): α is the per-call overhead (Python, building the
sliced step data, the g-add's call overhead, phase timers), β the per-interval cost in situ
(arithmetic plus the strided gathers/scatters and the g-add traffic of SolveState.step / f_relax).
The layer-serial loop is N calls with L = 1 and its own per-call overhead α_s (it slices but does
not add g).

Work counting.  Calls, not only steps, are counted from gpubraid's own hierarchy
(gpubraid.solver.grid.build_hierarchy, Distribution, gpubraid.solver.level.level_plan) and in the
order of the solver's public cycle schedule (gpubraid.solver.mgrit.MGRIT.schedule, which walks the
cycle of gpubraid/solver/cycle.py that MGRIT.solve executes), exactly as the solver issues them:
f_relax = one call per F-slice (m − 1 on a full interval set; fewer when a slice is empty) + one
L = 1 call per leading F-point; c_relax and residual one call over the local C-points; restriction
one call of (coarse rows − 1) on the coarse level; the coarsest solve N_L calls of L = 1 on the
root; one level in use: the layer-serial chain, N/P calls of L = 1 per rank, pipelined; a solve
with `it` corrections = it relax(0) (the first relaxation is skipped) + (it + 1) residual(0) +
it × (restrict(0) + V-cycle from level 1).  The counted intervals are checked against
SolveStats.steps_per_level / coarse_steps recorded by solves.py and scaling.py.

MPI critical path.  Per phase, the slowest rank.  An F-relaxation sweep is a pipeline: every rank
steps its own F-slices, then waits for its left neighbour's last row (sent as soon as that is final:
after the neighbour's own slices, or after its leading points when it owns no C-point), then
steps its leading points; the idle time of that wait is part of the sweep.  Every ghost message
costs latency + bytes/bandwidth (2-rank ping-pong, shared memory); the coarsest level adds the
gather of g and the scatter of u (root receives/sends one message per other rank); every level-0
residual norm an allreduce (2·log2 P latencies).  With P > cores the compute is stretched by
P/cores (oversubscription; the measured P = 4 runs on 2 cores).  Reported terms: "per-rank work"
(slowest rank's calls), "communication" (messages plus waiting for the left neighbour), "coarsest
solve" (the sequential coarse stepping on the root).

Calibration (least squares on relative errors, see CAL_* below and the JSON's "calibration"):
  solves (C = 8, B = 8): α, β per operation from the MGRIT FCF and F solves at N ∈ CAL_SOLVES_N,
  α_s from the serial solves at the same N; held out: every other N.
  scaling (C = 64, B = 256): α as for C = 8 (per-call overhead, size-independent: an assumption),
  β per operation from the P = 1 strong run's forward and adjoint solve times, γ (gradient +
  solve setup + copies, per local layer) from the rest of that evaluate, σ (layer-serial evaluate
  per layer) from its serial evaluate; held out: strong P = 2, 4 and all weak runs.
  (The per-solve times are from the last repeat; they are scaled by median/last-repeat so the
  three parts add up to the median evaluate.)
GPU projection: from a GPU steps JSON when one exists, else an explicit ASSUMPTION (H100 SXM:
α = 20 µs per call (Python + launch), β = bytes per interval / (0.6 · 3.35 TB/s); host-staged
MPI: 15 µs latency, 20 GB/s).  Iteration counts for projections: solves.py FCF at the nearest N.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np  # noqa: E402

from bench import common
from gpubraid.runtime.backend import resolve_backend  # noqa: E402
from gpubraid.runtime.comm import split_layers  # noqa: E402
from gpubraid.solver.grid import Distribution, build_hierarchy  # noqa: E402
from gpubraid.solver.level import level_plan  # noqa: E402
from gpubraid.solver.mgrit import MGRIT  # noqa: E402
from gpubraid.solver.options import MGRITOptions  # noqa: E402

NAME = "perf_model"
BE = resolve_backend("numpy", "float64")
CAL_SOLVES_N = (256, 4096)      # solves.py configurations used for calibration; the rest is held out
CAL_SCALING = ("strong", 1)     # scaling.py (kind, P) used for calibration; the rest is held out
# 2-rank ping-pong on this machine (mpiexec, shared memory), from the model run of commit b112474;
# --pingpong re-measures (needs 2 free cores)
NET_MEASURED = {"latency_s": 6.1915e-06, "bandwidth_Bps": 8.2569e9,
                "source": "2-rank ping-pong here (mpiexec, shared memory), model run of commit b112474"}

PINGPONG = r"""
import sys, time, json, numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD; r = c.Get_rank(); out = {}
for n in [1, 64, 1024, 16384, 131072]:
    a = np.zeros(n); reps = 200 if n < 16384 else 50
    for it in range(2):
        c.Barrier(); t0 = time.perf_counter()
        for _ in range(reps):
            if r == 0: c.Send(a, 1, 0); c.Recv(a, 1, 0)
            else: c.Recv(a, 0, 0); c.Send(a, 0, 0)
        dt = (time.perf_counter() - t0) / reps / 2
    out[8 * n] = dt
if r == 0: print("RESULT " + json.dumps(out))
"""


def pingpong():
    mpx = common.mpiexec()
    if mpx is None:
        return None
    proc = subprocess.run([mpx, "-n", "2", sys.executable, "-c", PINGPONG], capture_output=True, text=True,
                          timeout=300, env=common.bench_env())
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return None
    d = {int(k): v for k, v in json.loads(line[7:]).items()}
    sizes = np.array(sorted(d), float)
    times = np.array([d[int(s)] for s in sizes])
    beta, alpha = np.polyfit(sizes, times, 1)
    return {"one_way_s_by_bytes": {str(int(s)): t for s, t in zip(sizes, times)},
            "latency_s": float(max(alpha, times[0] * 0.5)), "bandwidth_Bps": float(1.0 / max(beta, 1e-12)),
            "source": "2-rank ping-pong here (mpiexec, shared memory), this run"}


# -- work accounting: the calls gpubraid/solver/ issues --------------------------------------------------------
_HIER_CACHE = {}
# one-shot projection: spectral scale ρ of the trained deep peaks network's step Jacobian and the
# peaks horizon T.  Measured (SolveStats.rho): 1.2–1.5 at 64 layers (oneshot_study), ≤ 1.01 in 134
# of 150 L-BFGS iterations at 256 layers (default training run, where conv_bound 0.1 chose 2 levels);
# the deepest measurement is taken for N = 4096.  The level choice depends on conv_bound/ρ², so the
# projection with ρ = 1.5 chooses 4 levels instead of 6 (coarsest 512 steps): 8.0x at P = 64.
ONESHOT_RHO = 1.0
ONESHOT_T = 5.0


def hierarchy(N, P, m=4, max_levels=10, min_coarse=2):
    """Per level and rank: the calls of each building block (lists of interval counts L)."""
    key = (N, P, str(m), max_levels, min_coarse)
    if key in _HIER_CACHE:
        return _HIER_CACHE[key]
    levels = build_hierarchy(np.full(N, 1.0 / N), m, max_levels, min_coarse)
    dist = Distribution(split_layers(N, P), levels)
    Lc = len(levels) - 1
    per_level = [[level_plan(levels[l], dist.layout(l, p), dist.layout(l + 1, p), BE) for p in range(P)]
                 for l in range(Lc)]
    owned = [[dist.layout(l, p).n_owned for p in range(P)] for l in range(Lc + 1)]
    info = {"levels": [g.N for g in levels], "coarsest_steps": levels[-1].N, "per_level": per_level,
            "coarse_owned": owned[-1], "owned": owned}
    _HIER_CACHE[key] = info
    return info


_SOLVER_CACHE = {}


def solver_view(N, P, opts: MGRITOptions) -> MGRIT:
    """Rank 0's view of the solver for N steps on P positions (no communication: setup only)."""
    key = (N, P, repr(opts))
    if key not in _SOLVER_CACHE:
        _SOLVER_CACHE[key] = MGRIT(None, list(range(P)), split_layers(N, P), np.full(N, 1.0 / N), opts, BE)
    return _SOLVER_CACHE[key]


def _opts(m, nrelax, **kw):
    return MGRITOptions(cfactor=m, nrelax=nrelax, max_levels=kw.pop("max_levels", 10), tol=0.0, **kw)


def count_solve(N, P, it, nrelax, m=4, levels=None, warm=False, **kw):
    """Calls and intervals of one solve on rank 0 (P = 1: the whole solve), per level, by walking
    the solver's own cycle schedule (MGRIT.schedule)."""
    opts = _opts(m, nrelax, **kw)
    info = hierarchy(N, P, m, opts.max_levels, opts.min_coarse)
    solver = solver_view(N, P, opts)
    nl = len(info["levels"])
    steps, calls = [0] * nl, [0] * nl
    coarse = 0
    for phase, l, n in solver.schedule(it, levels=levels, warm=warm):
        if phase == "coarse_solve":
            coarse += n
        elif n:
            steps[l] += n
            if phase == "f_relax":
                r = info["per_level"][l][0]
                sl = _sweep_slices(r, n)
                calls[l] += sum(1 for k in sl if k > 0) + r["leading"]
            elif phase == "serial":     # layer-serial propagation: one call per step
                calls[l] += n
            else:
                calls[l] += 1
    return {"steps_per_level": steps, "calls_per_level": calls, "coarse_steps": coarse,
            "calls": sum(calls) + coarse, "intervals": sum(steps) + coarse}


# -- cost of one solve ------------------------------------------------------------------------------
def t_call(L, fit):
    return fit["alpha_s"] + fit["beta_s"] * L if L > 0 else 0.0


class CriticalPath:
    """Accumulates the critical path of a solve in the three reported terms."""

    def __init__(self):
        self.work = self.comm = self.coarse = 0.0

    def add(self, work=0.0, comm=0.0, coarse=0.0, n=1):
        self.work += n * work
        self.comm += n * comm
        self.coarse += n * coarse

    @property
    def total(self):
        return self.work + self.comm + self.coarse


def _sweep_slices(r, n):
    """The F-slice calls of a sweep of n steps on rank 0's level plan r: all of them, or without the
    first (a correction-scheme sweep from zero C-points skips Φ(0) = 0)."""
    full = sum(r["slices"]) + r["leading"]
    return r["slices"][1:] if n < full and r["slices"] else r["slices"]


def sweep_f(ranks, fit, msg, stretch, zero=False):
    """(busy of slowest rank, critical-path time) of one F-relaxation pipeline over the ranks
    (``zero``: the first offset's calls skipped)."""
    send_prev, done, busy = None, [], []
    for r in ranks:
        if r is None:
            continue
        own = sum(t_call(k, fit) for k in (r["slices"][1:] if zero else r["slices"])) * stretch
        lead = r["leading"] * t_call(1, fit) * stretch
        start = own
        if r["has_prev"] and send_prev is not None:
            start = max(own, send_prev + msg)
        d = start + lead
        send_prev = own if r["last_local"] else d
        done.append(d)
        busy.append(own + lead)
    return max(busy), max(done)


def predict_solve(N, P, it, fit, C, B, net, cores, m=4, nrelax=1, levels=None, warm=False, **kw):
    opts = _opts(m, nrelax, **kw)
    info = hierarchy(N, P, m, opts.max_levels, opts.min_coarse)
    solver = solver_view(N, P, opts)
    nbytes = 8 * B * C
    stretch = max(1.0, P / cores) if cores else 1.0
    msg = (net["latency_s"] + nbytes / net["bandwidth_Bps"]) if P > 1 else 0.0
    lat = net["latency_s"] if P > 1 else 0.0

    def live(l):
        return [r for r in info["per_level"][l] if r is not None]

    path = CriticalPath()
    for phase, l, n in solver.schedule(it, levels=levels, warm=warm):
        if phase == "f_relax":
            r0 = info["per_level"][l][0]
            zero = r0 is not None and n < sum(r0["slices"]) + r0["leading"]
            b, d = sweep_f(info["per_level"][l], fit, msg, stretch, zero)
            path.add(work=b, comm=d - b)
        elif phase == "interpolate":   # no steps; the corrections pass along the ranks
            path.add(comm=msg)
        elif phase in ("c_relax", "residual"):   # one call over the local C-points
            path.add(work=max(t_call(r["nc"], fit) for r in live(l)) * stretch)
            if phase == "residual" and l == 0:
                path.add(comm=2 * math.log2(P) * lat)   # residual norm allreduce
        elif phase == "restrict" and n:
            rs = live(l - 1)
            path.add(work=max(t_call(r["restrict"], fit) for r in rs) * stretch,
                     comm=msg if any(r["restrict_prev"] for r in rs) else 0.0)
        elif phase == "serial":   # the blocks one after another, a message between neighbours
            path.add(work=N * t_call(1, fit) * stretch, comm=(P - 1) * msg)
        elif phase == "coarse_solve":
            Nc = info["levels"][l]
            others = [k for k in info["owned"][l][1:] if k > 0]
            gather = sum(2 * lat + k * nbytes / net["bandwidth_Bps"] for k in others) + (lat if P > 1 else 0.0)
            path.add(coarse=Nc * t_call(1, fit) * stretch, comm=gather)
    return {"total_s": path.total, "terms": {"per-rank work": path.work, "communication": path.comm,
                                             "coarsest solve": path.coarse},
            "levels": info["levels"]}


def oneshot_settings(N, rho=None, T=None):
    """The one-shot solve settings of TrainConfig's defaults for N layers, with the number of levels
    that the solver's automatic choice (MGRIT.choose_levels) makes for spectral scale ρ over [0, T]."""
    from gpubraid.training.config import TrainConfig
    from gpubraid.training.methods import make_method
    cfg = TrainConfig(example="peaks").resolved()
    o = make_method(cfg).forward
    rho = ONESHOT_RHO if rho is None else rho
    T = ONESHOT_T if T is None else T
    probe = MGRIT(None, [0], [0, N], np.full(N, T / N), o, BE)
    levels = probe.choose_levels(rho)[0] if (o.stability > 0 or o.conv_bound > 0) else None
    kw = dict(m=o.cfactor, nrelax=o.nrelax, levels=levels, warm=True, final_residual=o.final_residual,
              final_relax=o.final_relax, max_levels=o.max_levels, min_coarse=o.min_coarse,
              adjoint=dict(linear=make_method(cfg).adjoint.linear))
    return (cfg.fwd_iters, cfg.bwd_iters), kw


def predict_evaluate(N, P, it_f, it_b, cal, net, cores, adjoint=None, **solve_kw):
    """``adjoint``: options of the adjoint solve on top of ``solve_kw`` (e.g. linear=True)."""
    f = predict_solve(N, P, it_f, cal["fits"]["forward"], cal["C"], cal["B"], net, cores, **solve_kw)
    b = predict_solve(N, P, it_b, cal["fits"]["adjoint"], cal["C"], cal["B"], net, cores,
                      **{**solve_kw, **(adjoint or {})})
    stretch = max(1.0, P / cores) if cores else 1.0
    grad = (cal.get("grad_alpha_s", 0.0) + cal["grad_per_layer_s"] * math.ceil(N / P)) * stretch
    terms = {k: f["terms"][k] + b["terms"][k] for k in f["terms"]}
    terms["per-rank work"] += grad
    return {"total_s": f["total_s"] + b["total_s"] + grad, "forward_s": f["total_s"], "adjoint_s": b["total_s"],
            "grad_s": grad, "terms": terms}


# -- calibration --------------------------------------------------------------------------------------
def fit_solves(S):
    """α, β per operation (MGRIT) and α_s (serial) from the solves.py runs at N ∈ CAL_SOLVES_N."""
    rows = [r for r in S["results"] if r["N"] in CAL_SOLVES_N] or S["results"][:1]
    fits = {}
    for w in ("forward", "adjoint"):
        A, y = [], []
        for r in rows:
            for v, nr in (("FCF", 1), ("F", 0)):
                c = count_solve(r["N"], 1, r["stats"][f"{v}_{w}"]["iterations"], nr)
                meas = r["median_s"][f"mgrit_{v}_{w}"]
                A.append([c["calls"] / meas, c["intervals"] / meas]); y.append(1.0)
        (alpha, beta), *_ = np.linalg.lstsq(np.array(A), np.array(y), rcond=None)
        alpha, beta = max(float(alpha), 1e-7), max(float(beta), 0.0)
        alpha_s = float(np.mean([r["median_s"][f"serial_{w}"] / r["N"] - beta for r in rows]))
        fits[w] = {"alpha_s": alpha, "beta_s": beta, "serial_alpha_s": max(alpha_s, 1e-7)}
    return {"C": S["config"]["channels"], "B": S["config"]["batch"], "fits": fits,
            "calibrated_on": [f"solves N={r['N']}: serial, MGRIT FCF and F (forward and adjoint)" for r in rows],
            "method": "least squares on relative error: measured = calls·α + intervals·β (MGRIT, P = 1); "
                      "serial = N·(α_s + β)"}


def fit_scaling(Sc, small):
    """β per operation, γ (gradient etc. per layer) and σ (serial per layer) from one scaling run."""
    kind, P = CAL_SCALING
    rows = [r for r in Sc["results"][kind] if r["P"] == P] or Sc["results"]["strong"][:1]
    r = rows[0]
    pr = r["per_rank"][0]
    last = r["evaluate_s"][-1]
    scale = r["median_s"] / last
    t_f, t_b = pr["fwd"]["wall_s"] * scale, pr["bwd"]["wall_s"] * scale
    fits = {}
    for w, t, key, nr in (("forward", t_f, "fwd", 1), ("adjoint", t_b, "bwd", 1)):
        c = count_solve(r["N"], P, pr[key]["iterations"], nr)
        alpha = small["fits"][w]["alpha_s"] if small else 20e-6
        fits[w] = {"alpha_s": alpha, "beta_s": max((t - c["calls"] * alpha) / c["intervals"], 0.0)}
    grad = max(r["median_s"] - t_f - t_b, 0.0) / r["N"]
    serial = r["serial_median_s"] / r["N"] if r.get("serial_median_s") else None
    return {"C": Sc["config"]["channels"], "B": Sc["config"]["batch"], "fits": fits, "grad_per_layer_s": grad,
            "serial_per_layer_s": serial,
            "calibrated_on": [f"scaling-{kind} N={r['N']} P={P}: evaluate median split into forward solve, "
                              f"adjoint solve (per-rank wall_s × median/last repeat = {scale:.3f}) and the rest; "
                              "serial evaluate"],
            "method": "α from the C = 8 fit (assumed size-independent); β = (solve time − calls·α)/intervals; "
                      "γ = rest/N; σ = serial/N"}


# -- data x layer splits ------------------------------------------------------------------------------
def predict_split(N, P, D, itf, itb, cal, net, **solve_kw):
    """A training step on P = D × L ranks: D data groups of L layer ranks, each group a layer-parallel
    evaluate on B/D samples, then one allreduce of each rank's gradient block across the groups.

    Per-interval and gradient costs scale with the samples (β, γ × 1/D; the per-call overhead α
    does not); ghost messages carry B/D samples; the allreduce is a ring (2 (D−1)/D of the block's
    bytes, 2 log2 D latencies)."""
    L = P // D
    fits = {w: {**f, "beta_s": f["beta_s"] / D} for w, f in cal["fits"].items()}
    cal_d = {**cal, "fits": fits, "B": max(1, cal["B"] // D), "grad_per_layer_s": cal["grad_per_layer_s"] / D}
    ev = predict_evaluate(N, L, itf, itb, cal_d, net, cores=None, **solve_kw)
    C = cal["C"]
    block = 8 * (C * C + C) * math.ceil(N / L)
    reduce = (2 * math.log2(D) * net["latency_s"] + 2 * (D - 1) / D * block / net["bandwidth_Bps"]) if D > 1 else 0.0
    return {"D": D, "L": L, "step_s": ev["total_s"] + reduce, "allreduce_s": reduce}


def best_splits(N, Ps, itf, itb, cal, net, serial_s, method, target, **solve_kw):
    """For each P, every power-of-two D (L = P/D ≥ 1, at most N/4 layers' worth of ranks, B/D ≥ 1)
    and the fastest split."""
    rows = []
    for P in Ps:
        splits = [predict_split(N, P, D, itf, itb, cal, net, **solve_kw)
                  for D in (2 ** k for k in range(int(math.log2(P)) + 1))
                  if P // D <= max(1, N // 4) and cal["B"] // D >= 1]
        if not splits:
            continue
        best = min(splits, key=lambda r: r["step_s"])
        layer_only = next((r for r in splits if r["D"] == 1), None)
        rows.append({"target": target, "method": method, "N": N, "P": P, "splits": splits,
                     "best_D": best["D"], "best_L": best["L"], "best_step_s": best["step_s"],
                     "best_speedup": serial_s / best["step_s"] if serial_s else None,
                     "layer_only_speedup": serial_s / layer_only["step_s"] if serial_s and layer_only else None})
    return rows


# -- GPU assumption ----------------------------------------------------------------------------------
def gpu_calibration(C, B, steps_gpu):
    if steps_gpu is not None:
        rows = [r for r in common.load_json(steps_gpu)["results"] if r["backend"] == "cupy" and r["kind"] == "dense"]
        fits = {}
        for op in ("forward", "adjoint", "param_grad"):
            pts = sorted((r["L"], r["median_s"]) for r in rows if r["op"] == op and r["C"] == C and r["B"] == B)
            if len(pts) >= 2:
                beta, alpha = np.polyfit(*zip(*pts), 1)
                fits[op] = {"alpha_s": max(float(alpha), 1e-6), "beta_s": max(float(beta), 0.0)}
        if len(fits) == 3:
            return {"C": C, "B": B, "fits": fits, "source": str(steps_gpu)}
    bw = 0.6 * 3.35e12
    per = {"forward": 8 * (2 * B * C + C * C + C), "adjoint": 8 * (3 * B * C + C * C + C),
           "param_grad": 8 * (2 * B * C + 2 * (C * C + C))}
    return {"C": C, "B": B, "fits": {op: {"alpha_s": 20e-6, "beta_s": per[op] / bw} for op in per},
            "source": "ASSUMPTION: H100 SXM roofline, 60% of 3.35 TB/s on the minimal-traffic byte model, 20 us per call"}


def gpu_as_cal(g):
    """GPU fits in the shape predict_evaluate expects (gradient: one param_grad call per layer block)."""
    pg = g["fits"]["param_grad"]
    return {**g, "grad_per_layer_s": pg["beta_s"], "grad_alpha_s": pg["alpha_s"]}


GPU_NET = {"latency_s": 15e-6, "bandwidth_Bps": 20e9,
           "source": "ASSUMPTION: host-staged MPI between GPUs (not CUDA-aware): 15 us, 20 GB/s"}


# -- driver -------------------------------------------------------------------------------------------
def run(quick, solves_json, scaling_json, steps_gpu, measure_net=False):
    cores = common.machine_info()["cores"] or 1
    net = (pingpong() if measure_net else None) or dict(NET_MEASURED)
    validation, counts_check = [], []
    small = big = None
    if solves_json:
        S = common.load_json(solves_json)
        small = fit_solves(S)
        for r in S["results"]:
            cal = r["N"] in CAL_SOLVES_N
            for w in ("forward", "adjoint"):
                f = small["fits"][w]
                validation.append({"source": "solves", "config": f"serial {w} N={r['N']} P=1",
                                   "calibration": cal, "measured_s": r["median_s"][f"serial_{w}"],
                                   "predicted_s": r["N"] * (f["serial_alpha_s"] + f["beta_s"])})
                for v, nr in (("FCF", 1), ("F", 0)):
                    key = f"{v}_{w}"
                    st = r["stats"][key]
                    it = st["iterations"]
                    pr = predict_solve(r["N"], 1, it, f, small["C"], small["B"], net, cores, nrelax=nr)
                    c = count_solve(r["N"], 1, it, nr)
                    counts_check.append({"config": f"solves {key} N={r['N']}", "counted": c["steps_per_level"],
                                         "recorded": st["steps_per_level"], "calls": c["calls"],
                                         "match": c["steps_per_level"] == st["steps_per_level"]
                                         and c["coarse_steps"] == st["coarse_steps"]})
                    validation.append({"source": "solves", "config": f"MGRIT {v} {w} N={r['N']} P=1 it={it}",
                                       "calibration": cal, "measured_s": r["median_s"][f"mgrit_{key}"],
                                       "predicted_s": pr["total_s"], "calls": c["calls"],
                                       "intervals": c["intervals"]})
    if scaling_json:
        Sc = common.load_json(scaling_json)
        big = fit_scaling(Sc, small)
        for kind in ("strong", "weak"):
            for r in Sc["results"][kind]:
                cal = (kind, r["P"]) == CAL_SCALING
                pr = predict_evaluate(r["N"], r["P"], r["fwd_iterations"], r["bwd_iterations"], big, net, cores)
                for pk in r["per_rank"][:1]:
                    for key, w in (("fwd", "forward"), ("bwd", "adjoint")):
                        c = count_solve(r["N"], r["P"], pk[key]["iterations"], 1)
                        counts_check.append({"config": f"scaling-{kind} {key} N={r['N']} P={r['P']} rank 0",
                                             "counted": c["steps_per_level"],
                                             "recorded": pk[key]["steps_per_level"], "calls": c["calls"],
                                             "match": c["steps_per_level"] == pk[key]["steps_per_level"]})
                validation.append({"source": f"scaling-{kind}", "calibration": cal,
                                   "config": f"evaluate N={r['N']} P={r['P']} it={r['fwd_iterations']}/{r['bwd_iterations']}",
                                   "measured_s": r["median_s"], "predicted_s": pr["total_s"], "terms_s": pr["terms"]})
                if r.get("serial_median_s") and big["serial_per_layer_s"]:
                    validation.append({"source": f"scaling-{kind}", "calibration": cal,
                                       "config": f"serial evaluate N={r['N']} P=1", "measured_s": r["serial_median_s"],
                                       "predicted_s": big["serial_per_layer_s"] * r["N"]})
    for v in validation:
        v["error"] = v["predicted_s"] / v["measured_s"] - 1.0
    # iteration counts for projections: solves.py FCF at the nearest N
    its = {}
    if solves_json:
        for r in common.load_json(solves_json)["results"]:
            its[r["N"]] = (r["stats"]["FCF_forward"]["iterations"], r["stats"]["FCF_adjoint"]["iterations"])

    def iters(N):
        if not its:
            return (12, 12)
        return its[min(its, key=lambda n: abs(math.log(n / N)))]
    gpu = gpu_calibration(big["C"] if big else 64, big["B"] if big else 256, steps_gpu)
    gpu_cal = gpu_as_cal(gpu)
    Ps = [2 ** i for i in range(0, 11)]
    Ns = [256, 1024, 4096, 16384] if not quick else [256, 4096]
    projection, splits = [], []
    targets = ([("cpu", big, net)] if big else []) + [("gpu", gpu_cal, GPU_NET)]
    for target, cal, nt in targets:
        for N in Ns:
            if target == "cpu":
                serial_total = big["serial_per_layer_s"] * N if big["serial_per_layer_s"] else None
            else:
                f = gpu["fits"]
                serial_total = N * (t_call(1, f["forward"]) + t_call(1, f["adjoint"])) + t_call(N, f["param_grad"])
            os_iters, os_kw = oneshot_settings(N)
            if N == 4096:
                for method, (itf, itb), kw in (("exact", iters(N), {}), ("oneshot", os_iters, os_kw)):
                    splits += best_splits(N, Ps, itf, itb, cal, nt, serial_total, method, target, **kw)
            for method, (itf, itb), kw in (("exact", iters(N), {}), ("oneshot", os_iters, os_kw)):
                for P in Ps:
                    if P > N // 4:
                        continue
                    pr = predict_evaluate(N, P, itf, itb, cal, nt, cores=None, **kw)
                    lim = max(pr["terms"], key=pr["terms"].get)
                    projection.append({"target": target, "N": N, "P": P, "method": method,
                                       "iterations": [itf, itb], "step_s": pr["total_s"],
                                       "levels_used": kw.get("levels"),
                                       "serial_step_s": serial_total,
                                       "speedup": serial_total / pr["total_s"] if serial_total else None,
                                       "terms_s": pr["terms"], "limiting": lim})
    config = {"quick": quick, "solves_json": str(solves_json) if solves_json else None,
              "scaling_json": str(scaling_json) if scaling_json else None,
              "steps_gpu_json": str(steps_gpu) if steps_gpu else None, "cores": cores,
              "calibration_subset": {"solves_N": list(CAL_SOLVES_N), "scaling": list(CAL_SCALING)},
              "model": "t(L) = alpha + beta*L per call; calls counted from the hierarchy as gpubraid/solver/ issues "
                       "them; MPI critical path: slowest rank per phase, F-sweep pipeline with neighbour waits, "
                       "ghost/gather/scatter messages, allreduce; compute stretched by P/cores when P > cores",
              "projection_assumes": "one core (CPU) or one GPU per rank, no oversubscription; "
                                    "exact: cfactor 4, FCF, max_levels 10, min_coarse 2; oneshot: TrainConfig's "
                                    "defaults (warm start, levels by the automatic choice for rho = ONESHOT_RHO "
                                    "over T = ONESHOT_T); C, B of the scaling run; "
                                    "GPU costs are ASSUMPTIONS unless steps_gpu_json is set"}

    def summary(vs):
        errs = [abs(v["error"]) for v in vs]
        return {"n": len(errs), "median_abs_error": common.median(errs) if errs else None,
                "max_abs_error": max(errs) if errs else None, "within_25pct": sum(e <= 0.25 for e in errs)}
    return common.document(NAME, config, {
        "network": net, "calibration": {"solves": small, "scaling": big},
        "gpu_calibration": gpu, "gpu_network": GPU_NET, "validation": validation,
        "validation_summary": {**summary(validation),
                               "calibration": summary([v for v in validation if v["calibration"]]),
                               "held_out": summary([v for v in validation if not v["calibration"]])},
        "work_count_check": {"all_match": all(c["match"] for c in counts_check), "rows": counts_check},
        "projection": projection, "splits": splits})


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    R = doc["results"]
    fig, axes = common.subplots(1, 3, figsize=(18, 6))
    ax = axes[0]
    N = 4096
    for target, col in (("cpu", "C0"), ("gpu", "C3")):
        for method, ls in (("exact", "-"), ("oneshot", "--")):
            rows = [r for r in R["projection"] if r["target"] == target and r["method"] == method and r["N"] == N
                    and r["speedup"]]
            if not rows:
                continue
            Ps = [r["P"] for r in rows]
            ax.loglog(Ps, [r["speedup"] for r in rows], ls, color=col, marker="o", ms=3,
                      label=f"{target} {method} (it {rows[0]['iterations'][0]}/{rows[0]['iterations'][1]})")
            prev = None
            for r in rows:
                if r["limiting"] != prev:
                    ax.annotate(r["limiting"], (r["P"], r["speedup"]), fontsize=6, color=col, rotation=20)
                    prev = r["limiting"]
    ax.axhline(1, color="k", lw=0.6)
    ax.set_xlabel("ranks P"); ax.set_ylabel("predicted speedup over layer-serial (training step)")
    gsrc = "measured" if "ASSUMPTION" not in R["gpu_calibration"]["source"] else "ASSUMED"
    ax.set_title(f"projection, N = {N} (labels: limiting term; GPU costs {gsrc})", fontsize=8)
    ax.grid(True, which="both", alpha=0.3); ax.legend(fontsize=7)
    ax = axes[1]
    V = R["validation"]
    cols = [("C1" if v["calibration"] else "C0") if v["source"] == "solves" else ("C1" if v["calibration"] else "C2")
            for v in V]
    ax.barh(range(len(V)), [100 * v["error"] for v in V], color=cols)
    ax.set_yticks(range(len(V)))
    ax.set_yticklabels([f"{'[cal] ' if v['calibration'] else ''}{v['source']}: {v['config']}" for v in V], fontsize=5)
    ax.axvline(25, color="r", lw=0.6); ax.axvline(-25, color="r", lw=0.6)
    s = R["validation_summary"]
    ax.set_xlabel("prediction error [%] (predicted/measured − 1); orange: calibration subset")
    ax.set_title(f"validation: held out max |err| {100 * (s['held_out']['max_abs_error'] or 0):.0f}% "
                 f"({s['held_out']['within_25pct']}/{s['held_out']['n']} within 25%)", fontsize=9)
    ax = axes[2]
    for target, col in (("cpu", "C0"), ("gpu", "C3")):
        for method, ls in (("exact", "-"), ("oneshot", "--")):
            rows = [r for r in R.get("splits", []) if r["target"] == target and r["method"] == method
                    and r["best_speedup"]]
            if not rows:
                continue
            ax.loglog([r["P"] for r in rows], [r["best_speedup"] for r in rows], ls, color=col, marker="o", ms=3,
                      label=f"{target} {method}: best D x L")
            ax.loglog([r["P"] for r in rows], [r["layer_only_speedup"] or np.nan for r in rows], ls, color=col,
                      alpha=0.3, label=f"{target} {method}: layers only (D = 1)")
            for r in rows[::2]:
                ax.annotate(f"{r['best_D']}x{r['best_L']}", (r["P"], r["best_speedup"]), fontsize=6, color=col)
    ax.axhline(1, color="k", lw=0.6)
    ax.set_xlabel("ranks P = D x L"); ax.set_ylabel("predicted speedup over layer-serial")
    ax.set_title("best data x layer split (labels D x L), N = 4096, the scaling run's C and B", fontsize=8)
    ax.grid(True, which="both", alpha=0.3); ax.legend(fontsize=6)
    fig.suptitle(f"gpubraid performance model — {doc['machine']['cpu_model']} x{doc['machine']['cores']}, {doc['date'][:10]}", fontsize=9)
    return common.save_figure(fig, json_path, png_path, dpi=110)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--solves", default=None, help="solves JSON (default: the newest under bench/results)")
    p.add_argument("--scaling", default=None, help="scaling JSON (default: the newest under bench/results)")
    p.add_argument("--steps-gpu", default=None, help="steps.py JSON from a GPU (default: newest with a GPU device)")
    p.add_argument("--pingpong", action="store_true", help="re-measure latency/bandwidth (mpiexec -n 2)")
    args = p.parse_args(argv)
    solves = args.solves or common.latest("solves")
    scaling = args.scaling or common.latest("scaling")
    gpu = args.steps_gpu
    if gpu is None:
        for f in common.runs_of("steps"):
            if common.load_json(f)["machine"]["device"] != "cpu":
                gpu = f
    doc = run(args.quick, solves, scaling, gpu, args.pingpong)
    path = common.write_json(common.result_path(NAME, args.out), doc)
    print(path)
    print(json.dumps(doc["results"]["validation_summary"]))
    print("work counts match the solver's counters:", doc["results"]["work_count_check"]["all_match"])
    for v in doc["results"]["validation"]:
        print(f"{v['error']*100:+7.1f}%  {'cal ' if v['calibration'] else 'held'} {v['source']:14s} {v['config']}")
    for r in doc["results"]["projection"]:
        if r["N"] == 4096 and r["method"] == "exact":
            sp = f"{r['speedup']:.2f}" if r["speedup"] else "-"
            print(f"  proj {r['target']} N=4096 P={r['P']:5d} step {r['step_s']:.4g}s speedup {sp}  limit: {r['limiting']}")
    if not args.no_plot:
        print(plot(path))


if __name__ == "__main__":
    main()
