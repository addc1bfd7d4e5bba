"""Performance model of layer-parallel MGRIT, calibrated on this machine and validated against
the measured solves.py and scaling.py results.

    python bench/model.py [--quick] [--out DIR] [--solves JSON] [--scaling JSON] [--steps-gpu JSON]

Model.  A step call advancing k intervals costs t(k) (measured at k = 1…256 and interpolated,
α + β·k beyond; per operation — forward, adjoint, param_grad — and per (C, B), from a calibration
run here that slices its inputs and adds a right-hand side as the solver does).  The solver's work is counted
exactly from gpubraid's own hierarchy: for every level and rank, gpubraid.mgrit._Level gives the
F-relaxation slices, the leading F-points, the C-points; from them the calls of one V-cycle
(relax = F + nrelax·(C + F), residual, restriction, correction + F-relax on levels ≥ 1) and the
sequential coarsest solve on rank 0.  Critical path of one iteration = Σ_levels max_ranks(call
time) + ghost messages per sweep·(latency + bytes/bandwidth) + gather/scatter of the coarsest
level (2(P−1) messages) + coarsest steps·t(1) + the residual-norm allreduce (2·log2 P latencies).
A solve with `it` iterations = it × (cycle incl. level-0 relaxation) + (it + 1) level-0
residuals (the first relaxation is skipped, the last one returned).  A training step (exact or
one-shot) = forward solve + adjoint solve + one param_grad call over the N/P local layers.
With P > cores the compute is stretched by P/cores (oversubscription).  Latency and bandwidth
come from a 2-rank ping-pong here (mpiexec, shared memory).  Iteration counts: measured (for
validation) or taken from solves.py at the nearest N (for projections).
GPU projection: from a GPU steps JSON when one exists, else an explicit ASSUMPTION (H100 SXM:
α = 20 µs per call (Python + launch), β = bytes per interval / (0.6 · 3.35 TB/s); host-staged
MPI: 15 µs latency, 20 GB/s).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402

from gpubraid.backend import resolve_backend  # noqa: E402
from gpubraid.grid import Distribution, build_hierarchy  # noqa: E402
from gpubraid.mgrit import _Level  # noqa: E402
from gpubraid.parallel import split_layers  # noqa: E402
from gpubraid.steps import DenseStep  # noqa: E402

NAME = "model"
BE = resolve_backend("numpy", "float64")


# -- calibration -------------------------------------------------------------------------------------
def calibrate(C, B, ks=(1, 2, 4, 16, 64, 256), repeats=5):
    """Fit t(k) = α + β k for forward/adjoint/param_grad of a dense tanh step (C, B)."""
    step = DenseStep(C, "tanh", BE)
    rng = np.random.default_rng(0)
    fits, raw = {}, {}
    for op in ("forward", "adjoint", "param_grad"):
        ts = []
        for k in ks:
            # arrays twice the size, sliced per call as MGRIT._step / the serial loop do
            n = 2 * k + 1
            U, LAM = rng.standard_normal((n, B, C)), rng.standard_normal((n, B, C))
            KK, bb, hh = rng.standard_normal((n, C, C)) / math.sqrt(C), np.zeros((n, C)), np.full(n, 0.01)
            sl = slice(1, 2 * k + 1, 2) if k > 1 else slice(1, 2)
            out = np.empty((n, B, C))
            G = rng.standard_normal((n, B, C))  # the FAS right-hand side added after every step

            def data():
                return U[sl], LAM[sl], tuple(d[sl] for d in (KK, bb)), hh[sl]

            def fwd():
                u, _, th, h = data()
                out[sl] = step.forward(u, th, h) + G[sl]

            def adj():
                u, lam, th, h = data()
                out[sl] = step.adjoint(u, lam, th, h) + G[sl]

            def pg():
                u, lam, th, h = data()
                return step.param_grad(u, lam, th, h)

            fn = {"forward": fwd, "adjoint": adj, "param_grad": pg}[op]
            ts.append(common.time_it(fn, repeats=repeats, warmup=2, min_time=0.01)["median_s"])
        beta, alpha = np.polyfit(np.array(ks, float), np.array(ts), 1)
        fits[op] = {"alpha_s": max(float(alpha), 1e-7), "beta_s": max(float(beta), 0.0),
                    "ks": list(ks), "ts": ts}  # t(k): interpolated in the measured points
        raw[op] = dict(zip(map(str, ks), ts))
    return {"C": C, "B": B, "fits": fits, "raw": raw}


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
            "latency_s": float(max(alpha, times[0] * 0.5)), "bandwidth_Bps": float(1.0 / max(beta, 1e-12))}


# -- work accounting -------------------------------------------------------------------------------
def hierarchy_calls(N, P, m=4, nrelax=1, max_levels=10, min_coarse=2, h=None):
    """Per level, per rank: interval counts of the calls of one V-cycle, plus coarsest size."""
    h = np.full(N, 1.0 / N) if h is None else h
    levels = build_hierarchy(h, m, max_levels, min_coarse)
    bounds = split_layers(N, P)
    dist = Distribution(bounds, levels)
    L = len(levels)
    info = {"levels": [g.N for g in levels], "coarsest_steps": levels[-1].N, "per_level": []}
    for l in range(L - 1):
        relax, res, restrict_next, frelax = [], [], [], []
        for p in range(P):
            lv = _Level(levels[l], dist.layout(l, p), BE, False)
            if lv.rows == 0:
                relax.append([]); res.append([]); restrict_next.append([]); frelax.append([])
                continue
            F = [len(range(*s.indices(lv.rows))) for s in lv.f_slices] + [1] * len(lv.leading)
            F = [k for k in F if k > 0]
            nc = int(lv.c_rows_host.size)
            Cc = [nc] if nc else []
            relax.append(F + nrelax * (Cc + F))
            res.append(Cc)
            co = dist.layout(l + 1, p)
            rows = co.rows
            restrict_next.append([rows - 1] if rows > 1 else [])
            frelax.append(F)
        info["per_level"].append({"relax": relax, "residual": res, "restrict": restrict_next, "f_relax": frelax})
    return info


def t_one(k, fit):
    if "ks" in fit and k <= fit["ks"][-1]:
        return float(np.interp(k, fit["ks"], fit["ts"]))
    if "ks" in fit:
        return fit["ts"][-1] + fit["beta_s"] * (k - fit["ks"][-1])
    return fit["alpha_s"] + fit["beta_s"] * k


def t_calls(calls, fit):
    return sum(t_one(k, fit) for k in calls)


def iteration_terms(info, fit, msg_bytes, net, P, stretch):
    """(work, comm, coarse) seconds of one V-cycle excluding the level-0 relax/residual."""
    lat, bw = (net["latency_s"], net["bandwidth_Bps"]) if P > 1 else (0.0, float("inf"))
    msg = lat + msg_bytes / bw
    work = comm = 0.0
    for l, d in enumerate(info["per_level"]):
        per_rank = []
        for p in range(P):
            calls = d["restrict"][p] + ([] if l == 0 else d["relax"][p] + d["residual"][p] + d["f_relax"][p])
            per_rank.append(t_calls(calls, fit))
        work += max(per_rank) * stretch
        n_msgs = 1 if l == 0 else (2 + 2)  # restrict ghost (+ relax F,F + f_relax after correction)
        comm += n_msgs * msg if P > 1 else 0.0
    Nc = info["coarsest_steps"]
    coarse = Nc * t_one(1, fit) * stretch
    if P > 1:
        comm_coarse = 2 * (min(P, Nc) - 1) * lat + 2 * Nc * msg_bytes / bw
        comm += comm_coarse
    return work, comm, coarse


def level0_terms(info, fit, msg_bytes, net, P, stretch, nrelax):
    d = info["per_level"][0]
    lat, bw = (net["latency_s"], net["bandwidth_Bps"]) if P > 1 else (0.0, float("inf"))
    relax = max(t_calls(d["relax"][p], fit) for p in range(P)) * stretch
    res = max(t_calls(d["residual"][p], fit) for p in range(P)) * stretch
    comm_relax = (1 + nrelax) * (lat + msg_bytes / bw) if P > 1 else 0.0
    allreduce = 2 * math.log2(P) * lat if P > 1 else 0.0
    return relax, res, comm_relax, allreduce


def predict_solve(N, P, it, fit, C, B, net, cores, m=4, nrelax=1):
    info = hierarchy_calls(N, P, m, nrelax)
    msg_bytes = 8 * B * C
    stretch = max(1.0, P / cores) if cores else 1.0
    work, comm, coarse = iteration_terms(info, fit, msg_bytes, net, P, stretch)
    relax0, res0, comm0, allred = level0_terms(info, fit, msg_bytes, net, P, stretch, nrelax)
    total = it * (relax0 + comm0 + work + comm + coarse) + (it + 1) * (res0 + allred)
    return {"total_s": total, "per_iteration_s": relax0 + comm0 + work + comm + coarse + res0 + allred,
            "terms_per_iteration": {"per-rank work": relax0 + res0 + work, "communication": comm + comm0 + allred,
                                    "coarsest solve": coarse},
            "levels": info["levels"]}


def predict_serial(N, fits):
    return {"forward": N * t_one(1, fits["forward"]), "adjoint": N * t_one(1, fits["adjoint"]),
            "param_grad": t_one(N, fits["param_grad"])}


def predict_step(N, P, it_f, it_b, cal, net, cores, nrelax=1):
    f = predict_solve(N, P, it_f, cal["fits"]["forward"], cal["C"], cal["B"], net, cores, nrelax=nrelax)
    b = predict_solve(N, P, it_b, cal["fits"]["adjoint"], cal["C"], cal["B"], net, cores, nrelax=nrelax)
    pg = cal["fits"]["param_grad"]
    stretch = max(1.0, P / cores) if cores else 1.0
    grad = t_one(math.ceil(N / P), pg) * stretch
    terms = {k: f["terms_per_iteration"][k] * it_f + b["terms_per_iteration"][k] * it_b for k in f["terms_per_iteration"]}
    return {"total_s": f["total_s"] + b["total_s"] + grad, "forward_s": f["total_s"], "adjoint_s": b["total_s"],
            "grad_s": grad, "per_iteration_forward_s": f["per_iteration_s"], "terms": terms}


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


GPU_NET = {"latency_s": 15e-6, "bandwidth_Bps": 20e9,
           "source": "ASSUMPTION: host-staged MPI between GPUs (not CUDA-aware): 15 us, 20 GB/s"}


# -- driver -------------------------------------------------------------------------------------------
def run(quick, solves_json, scaling_json, steps_gpu):
    cores = common.machine_info()["cores"] or 1
    net = pingpong() or {"latency_s": 5e-6, "bandwidth_Bps": 5e9, "source": "fallback (no mpiexec)"}
    net.setdefault("source", "2-rank ping-pong here (mpiexec, shared memory)")
    cal_small = calibrate(8, 8, repeats=3 if quick else 5)
    validation = []
    if solves_json:
        S = common.load_json(solves_json)
        for r in S["results"]:
            ser = predict_serial(r["N"], cal_small["fits"])
            for w in ("forward", "adjoint"):
                validation.append({"source": "solves", "config": f"serial {w} N={r['N']} P=1",
                                   "measured_s": r["median_s"][f"serial_{w}"], "predicted_s": ser[w]})
                for v, nr in (("FCF", 1), ("F", 0)):
                    key = f"{v}_{w}"
                    it = r["stats"][key]["iterations"]
                    pr = predict_solve(r["N"], 1, it, cal_small["fits"][w], 8, 8, net, cores, nrelax=nr)
                    validation.append({"source": "solves", "config": f"MGRIT {v} {w} N={r['N']} P=1 it={it}",
                                       "measured_s": r["median_s"][f"mgrit_{key}"], "predicted_s": pr["total_s"]})
    cal_big = None
    if scaling_json:
        Sc = common.load_json(scaling_json)
        C, B = Sc["config"]["channels"], Sc["config"]["batch"]
        cal_big = calibrate(C, B, repeats=3 if quick else 5)
        for kind in ("strong", "weak"):
            for r in Sc["results"][kind]:
                pr = predict_step(r["N"], r["P"], r["fwd_iterations"], r["bwd_iterations"], cal_big, net, cores)
                validation.append({"source": f"scaling-{kind}", "config": f"evaluate N={r['N']} P={r['P']} "
                                   f"it={r['fwd_iterations']}/{r['bwd_iterations']}",
                                   "measured_s": r["median_s"], "predicted_s": pr["total_s"]})
                if r.get("serial_median_s"):
                    s = predict_serial(r["N"], cal_big["fits"])
                    validation.append({"source": f"scaling-{kind}", "config": f"serial evaluate N={r['N']} P=1",
                                       "measured_s": r["serial_median_s"],
                                       "predicted_s": s["forward"] + s["adjoint"] + s["param_grad"]})
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
    cal_proj = cal_big or calibrate(64, 256, repeats=3)
    gpu_cal = gpu_calibration(cal_proj["C"], cal_proj["B"], steps_gpu)
    Ps = [2 ** i for i in range(0, 11)]
    Ns = [256, 1024, 4096, 16384] if not quick else [256, 4096]
    projection = []
    for target, cal, nt in (("cpu", cal_proj, net), ("gpu", gpu_cal, GPU_NET)):
        for N in Ns:
            ser = predict_serial(N, cal["fits"])
            serial_total = ser["forward"] + ser["adjoint"] + ser["param_grad"]
            for method, (itf, itb) in (("exact", iters(N)), ("oneshot", (2, 2))):
                for P in Ps:
                    if P > N // 4:
                        continue
                    pr = predict_step(N, P, itf, itb, cal, nt, cores=None)
                    lim = max(pr["terms"], key=pr["terms"].get)
                    projection.append({"target": target, "N": N, "P": P, "method": method,
                                       "iterations": [itf, itb], "step_s": pr["total_s"],
                                       "per_iteration_forward_s": pr["per_iteration_forward_s"],
                                       "serial_step_s": serial_total, "speedup": serial_total / pr["total_s"],
                                       "terms_s": pr["terms"], "limiting": lim})
    config = {"quick": quick, "solves_json": str(solves_json) if solves_json else None,
              "scaling_json": str(scaling_json) if scaling_json else None,
              "steps_gpu_json": str(steps_gpu) if steps_gpu else None, "cores": cores,
              "projection_assumes": "one core (CPU) or one GPU per rank, no oversubscription; "
                                    "cfactor 4, FCF, max_levels 10, min_coarse 2; C, B of the scaling run"}
    errs = [abs(v["error"]) for v in validation]
    return common.document(NAME, config, {"network": net, "calibration_small": cal_small, "calibration_big": cal_big,
                                          "gpu_calibration": gpu_cal, "gpu_network": GPU_NET,
                                          "validation": validation,
                                          "validation_summary": {"n": len(errs), "median_abs_error": common.median(errs),
                                                                 "max_abs_error": max(errs) if errs else None,
                                                                 "within_25pct": sum(e <= 0.25 for e in errs)},
                                          "projection": projection})


def plot(json_path, png_path=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    doc = common.load_json(json_path)
    R = doc["results"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    N = 4096
    for target, col in (("cpu", "C0"), ("gpu", "C3")):
        for method, ls in (("exact", "-"), ("oneshot", "--")):
            rows = [r for r in R["projection"] if r["target"] == target and r["method"] == method and r["N"] == N]
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
    ax.set_title(f"projection, N = {N} (labels: limiting term; GPU: {'measured' if 'ASSUMPTION' not in R['gpu_calibration']['source'] else 'assumed'} costs)",
                 fontsize=8)
    ax.grid(True, which="both", alpha=0.3); ax.legend(fontsize=7)
    ax = axes[1]
    V = R["validation"]
    ax.barh(range(len(V)), [100 * v["error"] for v in V], color=["C0" if v["source"] == "solves" else "C2" for v in V])
    ax.set_yticks(range(len(V))); ax.set_yticklabels([f"{v['source']}: {v['config']}" for v in V], fontsize=5)
    ax.axvline(25, color="r", lw=0.6); ax.axvline(-25, color="r", lw=0.6)
    ax.set_xlabel("prediction error [%] (predicted/measured − 1)"); ax.set_title("validation on this machine", fontsize=9)
    fig.suptitle(f"gpubraid performance model — {doc['machine']['cpu_model']} x{doc['machine']['cores']}, {doc['date'][:10]}", fontsize=9)
    fig.tight_layout()
    png = Path(png_path) if png_path else Path(json_path).with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--solves", default=None, help="solves.py JSON (default: newest in bench/results)")
    p.add_argument("--scaling", default=None, help="scaling.py JSON (default: newest in bench/results)")
    p.add_argument("--steps-gpu", default=None, help="steps.py JSON from a GPU (default: newest with a GPU device)")
    args = p.parse_args(argv)
    solves = args.solves or common.latest("solves")
    scaling = args.scaling or common.latest("scaling")
    gpu = args.steps_gpu
    if gpu is None:
        for f in sorted(common.RESULTS.glob("steps-*.json")):
            if common.load_json(f)["machine"]["device"] != "cpu":
                gpu = f
    doc = run(args.quick, solves, scaling, gpu)
    path = common.write_json(common.result_path(NAME, args.out), doc)
    print(path)
    print(json.dumps(doc["results"]["validation_summary"]))
    for v in doc["results"]["validation"]:
        print(f"{v['error']*100:+7.1f}%  {v['source']:14s} {v['config']}")
    if not args.no_plot:
        print(plot(path))


if __name__ == "__main__":
    main()
