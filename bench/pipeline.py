"""Pipeline-parallel training against serial and data groups, and against PyTorch's own.

    python -m bench.pipeline [--quick] [--out DIR] [--no-plot] [--no-torch]

Speed (``gpubraid train`` under mpiexec, interleaved over repeats): per workload, seconds per
optimisation step (median of the history's ``time_s`` differences, first step dropped, validation
off) of

    serial-1           --method serial on 1 rank (automatic M: micro-batches that stay in cache)
    serial-1-unsplit   --method serial --micro-batches 1 on 1 rank (the whole batch, layer by layer)
    serial-2           --method serial on 2 layer ranks (now the pipeline, automatic M)
    pipeline-2-M<m>    --method pipeline on 2 layer ranks, m micro-batches, 1F1B (and GPipe at one m)
    pipeline-2-chimera --method pipeline --schedule chimera on 2 layer ranks (automatic M; and at each m)
    oneshot-2          --method oneshot on 2 layer ranks (peaks: its level choice keeps one level)
    data-2             --method serial --data-parallel 2 (two data groups of one layer rank)

on peaks full batch (L-BFGS, 64 and 256 layers), the mini-batch Adam workload (dense, 64 layers,
32 channels, batch 50, float32) and MNIST conv (the example's defaults).  With torch installed,
``bench/pipeline_torch.py`` (``python -m bench.pipeline_torch``) runs plain PyTorch, DDP and ``torch.distributed.pipelining`` (GPipe,
1F1B, gloo on CPU) on the mini-batch workload's network with the same micro-batch counts.

Memory: the peak of traced allocations (tracemalloc) during one gradient evaluation, per rank,
for the dense 64-layer, 32-channel network, every schedule, M swept with the micro-batch size
fixed (64 samples) and with the batch fixed (1024 samples), on 1, 2 and 4 layer ranks.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import common  # first: sets BLAS threads before NumPy loads

NAME = "pipeline"
MINIBATCH = ["peaks", "--layers", "64", "--channels", "32", "--optimizer", "adam", "--lr", "1e-2",
             "--batch-size", "50", "--dtype", "float32"]


def workloads(quick: bool) -> dict:
    n = ["--n-train", "500"] if quick else []
    return {
        "peaks-64": dict(args=["peaks", "--layers", "64", *n], iterations=3 if quick else 30, M=[2, 8] if quick else [2, 4, 8, 16], oneshot=True),
        "peaks-256": dict(args=["peaks", "--layers", "256", *n], iterations=3 if quick else 6, M=[8] if quick else [4, 8, 16], oneshot=True),
        "minibatch-64x32": dict(args=MINIBATCH, iterations=6 if quick else 60, M=[2, 5] if quick else [2, 5, 10, 25]),
        "mnist-conv": dict(args=["mnist", *(["--n-train", "500"] if quick else [])], iterations=6 if quick else 60,
                           M=[2] if quick else [2, 5, 10]),
    }


def variants(w: dict) -> dict:
    out = {"serial-1": (1, ["--method", "serial"]), "serial-1-unsplit": (1, ["--method", "serial", "--micro-batches", "1"]),
           "serial-2": (2, ["--method", "serial"])}
    for m in w["M"]:
        out[f"pipeline-2-M{m}"] = (2, ["--method", "pipeline", "--micro-batches", str(m)])
    m = w["M"][-1] if len(w["M"]) < 3 else w["M"][2]
    out[f"pipeline-2-M{m}-gpipe"] = (2, ["--method", "pipeline", "--micro-batches", str(m), "--schedule", "gpipe"])
    out["pipeline-2-chimera"] = (2, ["--method", "pipeline", "--schedule", "chimera"])
    for m in w["M"]:
        out[f"pipeline-2-M{m}-chimera"] = (2, ["--method", "pipeline", "--micro-batches", str(m), "--schedule", "chimera"])
    if w.get("oneshot"):
        out["oneshot-2"] = (2, ["--method", "oneshot"])
    out["data-2"] = (2, ["--method", "serial", "--data-parallel", "2"])
    return out


def run_once(mpiexec, ranks: int, args: list, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.json"
        cmd = [mpiexec, "-n", str(ranks), *common.mpi_oversubscribe_args(mpiexec, ranks), sys.executable, "-m",
               "gpubraid", "train", *args, "--iterations", str(iterations), "--val-every", "0", "--no-progress",
               "--metrics", str(metrics)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=common.bench_env(), timeout=3600)
        if out.returncode:
            raise RuntimeError(" ".join(cmd) + "\n" + out.stderr[-2000:])
        m = json.loads(metrics.read_text())
    t = [h["time_s"] for h in m["history"]]
    per_it = [b - a for a, b in zip(t, t[1:])] or [t[-1]]
    return {"s_per_iteration": common.median(per_it), "history_objective": [h["objective"] for h in m["history"]]}


def speed(quick: bool, repeats: int, only=None, iterations: int | None = None) -> list:
    mpiexec = common.mpiexec()
    if mpiexec is None:
        raise SystemExit("mpiexec not found (pip install mpich)")
    rows = []
    for name, w in workloads(quick).items():
        if only and name not in only:
            continue
        runs = {v: [] for v in variants(w)}
        for _ in range(repeats):  # interleaved: every variant sees the same machine load
            for v, (ranks, extra) in variants(w).items():
                runs[v].append(run_once(mpiexec, ranks, [*w["args"], *extra], iterations or w["iterations"]))
        base = common.median([r["s_per_iteration"] for r in runs["serial-1"]])
        ref = runs["serial-1"][0]["history_objective"]
        for v, rs in runs.items():
            s = common.median([r["s_per_iteration"] for r in rs])
            obj = rs[0]["history_objective"]
            per_round = [a["s_per_iteration"] / r["s_per_iteration"] for a, r in zip(runs["serial-1"], rs)]
            rows.append({"workload": name, "variant": v, "ranks": variants(w)[v][0], "s_per_iteration": s,
                         "repeats_s": [r["s_per_iteration"] for r in rs], "speedup_vs_serial_1": base / s,
                         "speedup_per_round": per_round, "median_speedup_per_round": common.median(per_round),
                         "max_rel_objective_diff_vs_serial_1": max(abs(a - b) / abs(b) for a, b in zip(obj, ref))})
    return rows


def torch_rows(quick: bool, repeats: int) -> list:
    try:
        import torch.distributed.pipelining  # noqa: F401
    except Exception as exc:  # torch missing or too old: the comparison is left out
        return [{"skipped": f"torch.distributed.pipelining unavailable: {exc}"}]
    steps = 8 if quick else 40
    jobs = [("plain", 1), ("ddp", 1)] + [(s, m) for m in workloads(quick)["minibatch-64x32"]["M"]
                                         for s in ("gpipe", "1f1b")]
    got = {j: [] for j in jobs}
    for _ in range(repeats):
        for variant, m in jobs:
            out = subprocess.run([sys.executable, "-m", "bench.pipeline_torch", variant, str(steps), str(m)], capture_output=True,
                                 text=True, env=common.bench_env(), timeout=3600)
            if out.returncode:
                return [{"skipped": f"torch {variant} failed: {out.stderr[-500:]}"}]
            got[(variant, m)].append(json.loads(out.stdout.strip().splitlines()[-1])["s_per_step"])
    return [{"workload": "minibatch-64x32", "variant": f"torch-{v}" + (f"-M{m}" if v in ("gpipe", "1f1b") else ""),
             "ranks": 1 if v == "plain" else 2, "micro_batches": m, "s_per_iteration": common.median(ts),
             "repeats_s": ts} for (v, m), ts in got.items()]


def memory_worker(batch_sizes: str) -> None:
    """Under mpiexec: the per-rank peak of traced memory of one gradient evaluation (JSON on rank 0)."""
    import tracemalloc

    import numpy as np

    from gpubraid.network.network import ResNetODE
    from gpubraid.objective.layer_parallel import LayerParallel
    from gpubraid.objective.pipeline import PipelineOptions
    from gpubraid.runtime.backend import resolve_backend
    from gpubraid.runtime.comm import Comm
    from gpubraid.solver.options import MGRITOptions

    comm, be = Comm.world(), resolve_backend("numpy")
    model = ResNetODE("dense", (2,), 32, 64, 5, 5.0, "tanh", be)
    one = MGRITOptions(max_levels=1)
    out = []
    for mode in batch_sizes.split(","):
        for schedule in ("gpipe", "1f1b", "chimera"):
            for M in (1, 2, 4, 8, 16):
                B = 64 * M if mode == "micro64" else 1024
                lp = LayerParallel(model, comm, one, one, pipeline=PipelineOptions(M, schedule))
                theta = lp.scatter_params(model.init_params(model.layout(), 0))
                rng = np.random.default_rng(0)
                x, y = rng.uniform(-3, 3, (B, 2)), rng.integers(0, 5, B)
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
                lp.evaluate(theta, x if lp.needs_inputs else None, y if lp.needs_targets else None, B)
                peak = tracemalloc.get_traced_memory()[1] - base
                tracemalloc.stop()
                peaks = comm.gather_obj(peak, 0)
                if comm.rank == 0:
                    out.append({"mode": mode, "schedule": schedule, "ranks": comm.size, "micro_batches": M,
                                "batch": B, "peak_mib_per_rank": [p / 2**20 for p in peaks]})
    if comm.rank == 0:
        print(json.dumps(out))


def memory(quick: bool) -> list:
    mpiexec = common.mpiexec()
    rows = []
    for ranks in (1, 2) if quick else (1, 2, 4):
        cmd = [mpiexec, "-n", str(ranks), *common.mpi_oversubscribe_args(mpiexec, ranks), sys.executable,
               "-m", "bench.pipeline", "--memory-worker", "micro64" if quick else "micro64,batch1024"]
        out = subprocess.run(cmd, capture_output=True, text=True, env=common.bench_env(), timeout=3600)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def run(quick: bool, with_torch: bool, only=None, with_memory: bool = True, repeats: int | None = None,
        iterations: int | None = None) -> dict:
    repeats = repeats or (1 if quick else 3)
    cfg = {"repeats": repeats, "iterations": iterations,
           "workloads": {k: {**w, "variants": {v: a for v, a in variants(w).items()}}
                         for k, w in workloads(quick).items() if not only or k in only}}
    rows = speed(quick, repeats, only, iterations)
    rows += torch_rows(quick, repeats) if with_torch else [{"skipped": "--no-torch"}]
    summary = {}
    for r in rows:
        if r.get("workload") and r["variant"] in ("serial-2", "data-2", "oneshot-2") or "pipeline-2" in r.get("variant", ""):
            summary[f"{r['workload']}/{r['variant']}"] = round(r["speedup_vs_serial_1"], 3)
    return common.document(NAME, cfg, rows, memory=memory(quick) if with_memory else None,
                           speedups_vs_serial_1=summary)


def plot(json_path, png_path=None):
    import matplotlib.pyplot as plt

    doc = common.load_json(json_path)
    rows = [r for r in doc["results"] if "workload" in r]
    names = list(dict.fromkeys(r["workload"] for r in rows))
    mem = doc.get("memory") or []   # empty with --no-memory: no panel for it
    panels = len(names) + bool(mem)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4), squeeze=False)
    axes = axes[0]
    for ax, name in zip(axes, names):
        sub = [r for r in rows if r["workload"] == name]
        colors = ["tab:red" if r["variant"].startswith("torch") else "tab:green" if "data" in r["variant"]
                  else "tab:blue" if "pipeline" in r["variant"] else "tab:gray" for r in sub]
        ax.barh(range(len(sub)), [r["s_per_iteration"] for r in sub], color=colors)
        ax.set_yticks(range(len(sub)), [r["variant"] for r in sub], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("s / step (median)")
        ax.set_title(name, fontsize=9)
    if not mem:
        return common.save_figure(fig, json_path, png_path)
    ax = axes[-1]
    for mode, style in (("micro64", "-"), ("batch1024", ":")):
        for schedule, marker in (("gpipe", "s"), ("1f1b", "o"), ("chimera", "^")):
            for ranks in (1, 2, 4):
                pts = [m for m in mem if (m["mode"], m["schedule"], m["ranks"]) == (mode, schedule, ranks)]
                if pts:
                    ax.plot([p["micro_batches"] for p in pts], [max(p["peak_mib_per_rank"]) for p in pts], style,
                            marker=marker, label=f"{schedule} P={ranks} {mode}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("micro-batches M")
    ax.set_ylabel("peak MiB per rank (tracemalloc)")
    ax.legend(fontsize=6)
    ax.set_title("memory of one gradient evaluation", fontsize=9)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--memory-worker":
        return memory_worker(argv[1])
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch comparison")
    p.add_argument("--no-memory", action="store_true", help="leave out the memory measurement")
    p.add_argument("--workloads", type=lambda s: s.split(","), default=None,
                   help="comma-separated workload names (default: all): " + ", ".join(workloads(False)))
    p.add_argument("--repeats", type=int, default=None, help="interleaved runs per variant (default 3; --quick 1)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training steps per run instead of each workload's own (peaks-64: 30)")
    args = p.parse_args(argv)
    common.finish(NAME, run(args.quick, not args.no_torch, args.workloads, not args.no_memory, args.repeats,
                            args.iterations), args, plot)


if __name__ == "__main__":
    main()
