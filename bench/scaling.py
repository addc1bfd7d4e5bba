"""MPI strong and weak scaling of the layer-parallel forward + adjoint MGRIT solve.

    python -m bench.scaling [--quick] [--out DIR]

The driver launches ``mpiexec -n P python -m bench.scaling --worker ...`` for P = 1, 2, 4 and
collects one JSON line from rank 0 of each.  Network: dense, C = 64 channels, batch B = 256,
tanh, T = 5, init_scale 1 (compute-heavy per step for a dense layer); strong scaling at N = 256
layers, weak scaling at N = 64·P.  Solver: FCF, cfactor 4, max_levels 10, tol 1e-9 (both solves,
i.e. the "exact" method).  Per P: median (over repeats, of the slowest rank) wall time of one
LayerParallel.evaluate (forward MGRIT + loss + adjoint MGRIT + batched gradients), iterations,
messages and bytes per rank, step applications per level per rank, phase seconds of rank 0;
plus the layer-serial evaluate (gpubraid.network.reference) on one rank.  One BLAS thread per rank.

On this 2-core machine 4 ranks are oversubscribed (2 ranks per core), and the machine is shared
with other work: compare the P = 1 and P = 2 rows, and read P = 4 as a correctness/traffic check.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np  # noqa: E402

from bench import common

NAME = "scaling"


def worker(N, C, B, repeats):
    from gpubraid.network.network import ResNetODE
    from gpubraid.network.reference import evaluate
    from gpubraid.objective.layer_parallel import LayerParallel
    from gpubraid.runtime.backend import resolve_backend
    from gpubraid.runtime.comm import Comm
    from gpubraid.solver.options import MGRITOptions

    comm = Comm.world()
    be = resolve_backend("numpy", "float64")
    model = ResNetODE("dense", (C,), C, N, 10, 5.0, "tanh", be)
    full = model.layout()
    theta_full = model.init_params(full, seed=0, scale=1.0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, C))
    y = rng.integers(0, 10, B)
    opts = MGRITOptions(cfactor=4, nrelax=1, max_levels=10, min_coarse=2, tol=1e-9, max_iter=50)
    lp = LayerParallel(model, comm, opts, opts)
    theta = lp.scatter_params(theta_full)
    xr = x if lp.is_first else None
    yr = y if lp.is_last else None
    times, serial_times = [], []
    for rep in range(repeats + 1):
        comm.barrier()
        t0 = time.perf_counter()
        ev = lp.evaluate(theta, xr, yr, B)
        dt = comm.comm.allreduce(time.perf_counter() - t0, op=__import__("mpi4py").MPI.MAX)
        if rep:
            times.append(dt)
        if comm.size == 1:
            t0 = time.perf_counter()
            ref = evaluate(model, full, theta_full, x, y)
            if rep:
                serial_times.append(time.perf_counter() - t0)
    f, b = lp.last_stats
    per_rank = comm.gather_obj({"rank": comm.rank, "layers": lp.b - lp.a, "fwd": f.as_dict(), "bwd": b.as_dict()}, 0)
    g = lp.gather_params(ev.grad)
    if comm.rank == 0:
        ref = evaluate(model, full, theta_full, x, y)
        out = {"P": comm.size, "N": N, "C": C, "B": B, "repeats": repeats,
               "evaluate_s": times, "median_s": float(np.median(times)),
               "serial_s": serial_times, "serial_median_s": float(np.median(serial_times)) if serial_times else None,
               "fwd_iterations": f.iterations, "bwd_iterations": b.iterations,
               "fwd_residuals": f.residuals, "bwd_residuals": b.residuals,
               "grad_rel_error_vs_serial": float(np.linalg.norm(g - ref.grad) / np.linalg.norm(ref.grad)),
               "levels": [gr.N for gr in lp.fwd.levels], "per_rank": per_rank,
               "messages_total": sum(r["fwd"]["messages"] + r["bwd"]["messages"] for r in per_rank),
               "bytes_total": sum(r["fwd"]["bytes"] + r["bwd"]["bytes"] for r in per_rank)}
        print("RESULT " + json.dumps(out, default=float), flush=True)


def launch(P, N, C, B, repeats, timeout=600):
    mpx = common.mpiexec()
    if mpx is None:
        raise RuntimeError("mpiexec not found")
    cmd = [mpx, "-n", str(P), *common.mpi_oversubscribe_args(mpx, P), sys.executable, "-m", "bench.scaling",
           "--worker", "--N", str(N), "--C", str(C), "--B", str(B), "--repeats", str(repeats)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=common.bench_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    out["launch_wall_s"] = time.perf_counter() - t0
    return out


def run(quick: bool) -> dict:
    C, B = (16, 64) if quick else (64, 256)
    N_strong = 64 if quick else 256
    n_per_rank = 16 if quick else 64
    repeats = 2 if quick else 5
    Ps = [1, 2, 4]
    strong = [launch(P, N_strong, C, B, repeats) for P in Ps]
    weak = [launch(P, n_per_rank * P, C, B, repeats) for P in Ps]
    base = strong[0]["median_s"]
    summary = {"serial_1rank_s": strong[0]["serial_median_s"],
               "strong_speedup_vs_P1": {str(r["P"]): base / r["median_s"] for r in strong},
               "strong_ratio_P1_over_P2": strong[0]["median_s"] / strong[1]["median_s"],
               "strong_speedup_vs_serial": {str(r["P"]): strong[0]["serial_median_s"] / r["median_s"] for r in strong},
               "weak_efficiency": {str(r["P"]): weak[0]["median_s"] / r["median_s"] for r in weak}}
    config = {"quick": quick, "kind": "dense", "channels": C, "batch": B, "activation": "tanh", "final_time": 5.0,
              "N_strong": N_strong, "N_weak_per_rank": n_per_rank, "ranks": Ps, "repeats": repeats,
              "mgrit": {"cfactor": 4, "nrelax": 1, "max_levels": 10, "min_coarse": 2, "tol": 1e-9, "max_iter": 50},
              "cores": common.machine_info()["cores"],
              "oversubscribed": [P for P in Ps if P > (common.machine_info()["cores"] or 1)],
              "blas_threads_per_rank": 1, "timed": "LayerParallel.evaluate (fwd MGRIT + adjoint MGRIT + gradient), max over ranks"}
    return common.document(NAME, config, {"strong": strong, "weak": weak, "summary": summary})


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    R = doc["results"]
    fig, axes = common.subplots(1, 2, figsize=(11, 4.5))
    for ax, key in zip(axes, ("strong", "weak")):
        rows = R[key]
        Ps = [r["P"] for r in rows]
        ax.plot(Ps, [r["median_s"] for r in rows], "o-", label="MGRIT evaluate (fwd+adj)")
        ser = [r["serial_median_s"] for r in rows]
        if ser[0] is not None:
            ax.axhline(ser[0], color="k", ls="--", label=f"serial, 1 rank (N={rows[0]['N']})")
        for r in rows:
            ax.annotate(f"it {r['fwd_iterations']}/{r['bwd_iterations']}\n{r['messages_total']} msg",
                        (r["P"], r["median_s"]), fontsize=7)
        ax.set_xscale("log", base=2); ax.set_xticks(Ps); ax.set_xticklabels(Ps)
        ax.set_xlabel("MPI ranks (P > cores: oversubscribed)"); ax.set_ylabel("median wall time [s]")
        ax.set_title(f"{key} scaling, N = " + ", ".join(str(r["N"]) for r in rows))
        ax.grid(True, alpha=0.3); ax.legend(fontsize=7); ax.set_ylim(bottom=0)
    fig.suptitle(f"gpubraid scaling — dense C={doc['config']['channels']} B={doc['config']['batch']}, "
                 f"{doc['machine']['cpu_model']} x{doc['machine']['cores']}, {doc['date'][:10]}", fontsize=9)
    return common.save_figure(fig, json_path, png_path, dpi=110)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse_hidden())
    p.add_argument("--N", type=int, default=256)
    p.add_argument("--C", type=int, default=64)
    p.add_argument("--B", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.N, args.C, args.B, args.repeats)
        return
    doc = run(args.quick)
    path = common.write_json(common.result_path(NAME, args.out), doc)
    print(path)
    s = doc["results"]["summary"]
    print(json.dumps(s, indent=1))
    if not args.no_plot:
        print(plot(path))


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
