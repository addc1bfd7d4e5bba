"""Time to accuracy: wall time for layer-serial and one-shot training to reach serial's final
validation accuracy − 0.01, at 1 and 2 MPI ranks, projected to P = 1…1024 by the performance model.

    python -m bench.time_to_accuracy [--quick] [--out DIR] [--no-plot] [--layers N] [--iterations K]

Runs ``gpubraid train peaks`` (TrainConfig defaults, so one-shot uses the default MGRIT settings;
seed 11, validation every ``val_every`` iterations) as subprocesses: serial on 1 rank, oneshot on 1
rank and on 2 ranks (mpiexec; skipped without it).  Target = serial's final validation accuracy −
0.01.  Time to target = training wall time up to the first validation point at or above the target,
without the validation passes themselves (their cost is estimated per run as the median extra time of
iterations that ran one).  Projection: the measured one-rank time per iteration of each method
times the performance model's (bench/perf_model.py, newest perf_model JSON calibration when present, else
per-iteration ratios only) predicted time ratio T(P)/T(1) for oneshot (serial does not scale with P),
times the iterations to target measured at one rank.  On a GPU one untimed one-iteration run per
method fills CuPy's kernel cache first, so no timed process compiles what another did not.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np  # noqa: E402

from bench import common
from gpubraid.runtime.backend import resolve_backend

NAME = "time_to_accuracy"


def train(method, ranks, layers, iterations, val_every, n_train, seed, tmp):
    out = Path(tmp) / f"{method}-{ranks}.json"
    cmd = [sys.executable, "-m", "gpubraid", "train", "peaks", "--layers", str(layers), "--method", method,
           "--iterations", str(iterations), "--seed", str(seed), "--val-every", str(val_every),
           "--metrics", str(out), "--no-progress"]
    if n_train:
        cmd += ["--n-train", str(n_train), "--n-val", str(max(200, n_train // 5))]
    if ranks > 1:
        mpx = common.mpiexec()
        if mpx is None:
            return None
        cmd = [mpx, *common.mpi_oversubscribe_args(mpx, ranks), "-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=common.bench_env(), cwd=common.REPO, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(out.read_text())


def time_to(run, target):
    """(seconds without validation passes, iteration) to the first validation ≥ target, or (None, None)."""
    h = run["history"]
    t = np.array([e["time_s"] for e in h])
    dt = np.diff(np.concatenate([[0.0], t]))
    has_val = np.array(["val_accuracy" in e for e in h])
    # time_s of entry k is taken before entry k's validation pass, so entry k+1 carries it
    after_val = np.concatenate([[False], has_val[:-1]])
    plain = dt[~after_val][1:] if (~after_val).sum() > 1 else dt
    val_cost = max(float(np.median(dt[after_val]) - np.median(plain)), 0.0) if after_val.any() else 0.0
    per_it = float(np.median(plain))
    for k, e in enumerate(h):
        if e.get("val_accuracy", -1) >= target:
            n_val_before = int(has_val[:k].sum())
            return float(t[k] - n_val_before * val_cost), k + 1, per_it
    return None, None, per_it


def run(quick, layers, iterations):
    val_every = 2 if quick else 5
    n_train = 300 if quick else None
    seed = 11
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if resolve_backend(None).is_gpu:  # CuPy's kernel cache filled before any timed run (not only the first's)
            for method in ("serial", "oneshot"):
                train(method, 1, layers, 1, val_every, n_train, seed, tmp)
        for method, ranks in (("serial", 1), ("oneshot", 1), ("oneshot", 2)):
            r = train(method, ranks, layers, iterations, val_every, n_train, seed, tmp)
            if r is not None:
                runs[f"{method}-{ranks}"] = r
                print(f"{method} {ranks} rank(s): val {r['val_accuracy']:.3f} wall {r['wall_s']:.1f} s", flush=True)
    target = runs["serial-1"]["val_accuracy"] - 0.01
    rows = []
    for key, r in runs.items():
        secs, its, per_it = time_to(r, target)
        rows.append({"run": key, "method": r["method"], "ranks": r["ranks"], "final_val_accuracy": r["val_accuracy"],
                     "wall_s": r["wall_s"], "time_to_target_s": secs, "iterations_to_target": its,
                     "s_per_iteration": per_it,
                     "val_curve": [(e["iter"] + 1, e["val_accuracy"]) for e in r["history"] if "val_accuracy" in e]})
        print(f"  {key}: time to {target:.3f}: {secs} s ({its} iterations), {per_it:.3f} s/iteration", flush=True)
    # projection with the performance model (oneshot settings of TrainConfig, warm start)
    proj = []
    try:
        from bench import perf_model as pm
        mj = common.latest("perf_model")
        cal = None
        if mj is not None:
            cal = common.load_json(mj)["results"].get("calibration", {}).get("scaling")
        if cal is not None:
            os_iters, kw = pm.oneshot_settings(layers)
            net = pm.NET_MEASURED
            t1 = pm.predict_evaluate(layers, 1, *os_iters, cal, net, None, **kw)["total_s"]
            by = {r["run"]: r for r in rows}
            s1, o1 = by["serial-1"], by["oneshot-1"]
            for P in [2 ** i for i in range(11)]:
                if P > layers:
                    break
                tp = pm.predict_evaluate(layers, P, *os_iters, cal, net, None, **kw)["total_s"]
                proj.append({"P": P, "model_ratio_T_P_over_T_1": tp / t1,
                             "oneshot_time_to_target_s": (o1["time_to_target_s"] * tp / t1
                                                          if o1["time_to_target_s"] else None),
                             "serial_time_to_target_s": s1["time_to_target_s"]})
    except Exception as exc:  # the projection is optional (needs a model JSON)
        proj = [{"error": repr(exc)}]
    return {"target_val_accuracy": target, "runs": rows, "projection": proj}


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    res = doc["results"]
    fig, axes = common.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for r in res["runs"]:
        its, acc = zip(*r["val_curve"]) if r["val_curve"] else ((), ())
        ax.plot(np.array(its) * r["s_per_iteration"], acc, marker=".", label=f"{r['run']} ({r['s_per_iteration']:.3f} s/it)")
    ax.axhline(res["target_val_accuracy"], color="k", ls=":", label="target = serial final − 0.01")
    ax.set_xlabel("training wall time without validation passes [s] (≈ iterations × s/iteration)")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=7)
    ax = axes[1]
    pr = [p for p in res["projection"] if "P" in p and p.get("oneshot_time_to_target_s")]
    if pr:
        Ps = [p["P"] for p in pr]
        ax.loglog(Ps, [p["oneshot_time_to_target_s"] for p in pr], "o-", label="oneshot (model)")
        ax.loglog(Ps, [p["serial_time_to_target_s"] for p in pr], "k--", label="serial (1 rank, measured)")
        meas = [r for r in res["runs"] if r["method"] == "oneshot" and r["time_to_target_s"]]
        ax.loglog([r["ranks"] for r in meas], [r["time_to_target_s"] for r in meas], "rs", label="oneshot measured")
        ax.set_xlabel("ranks P")
        ax.set_ylabel("time to target [s]")
        ax.legend(fontsize=7)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None)
    args = ap.parse_args(argv)
    layers = args.layers or (16 if args.quick else 64)
    iterations = args.iterations or (6 if args.quick else 150)
    res = run(args.quick, layers, iterations)
    doc = common.document(NAME, {"quick": args.quick, "layers": layers, "iterations": iterations,
                                 "example": "peaks", "seed": 11}, res)
    common.finish(NAME, doc, args, plot)


if __name__ == "__main__":
    main()
