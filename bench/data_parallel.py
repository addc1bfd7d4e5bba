"""Data × layer parallelism: the same ranks split as data groups or as layer blocks, side by side.

    python -m bench.data_parallel [--quick] [--out DIR] [--no-plot]

Runs ``gpubraid train`` (peaks data, dense network, full batch, L-BFGS) on 1 rank and on 2 ranks
as 1×2 (one data group, two layer blocks: ``--data-parallel 1``) and as 2×1 (two data groups of
one layer block each: ``--data-parallel 2``), for the exact and the one-shot method, interleaved
over repeats.  Per run: the median seconds per optimisation iteration (differences of the
history's ``time_s``, first iteration dropped; validation off), the final objective (the splits
must agree to round-off).  One BLAS thread per rank.  Data parallelism does the same work per
sample on each group and only adds one gradient allreduce per evaluation, so on a machine with
as many cores as ranks 2×1 should approach 2× over one rank; 1×2 pays MGRIT's extra work and its
pipeline waits.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import common

NAME = "data_parallel"
SPLITS = [(1, 1), (2, 1), (2, 2)]  # (ranks, data groups)


def run_once(mpiexec, ranks, groups, method, cfg) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.json"
        cmd = [mpiexec, "-n", str(ranks), *common.mpi_oversubscribe_args(mpiexec, ranks),
               sys.executable, "-m", "gpubraid", "train", "peaks", "--method", method,
               "--data-parallel", str(groups), "--layers", str(cfg["layers"]), "--channels", str(cfg["channels"]),
               "--n-train", str(cfg["n_train"]), "--n-val", "100", "--iterations", str(cfg["iterations"]),
               "--val-every", "0", "--no-progress", "--metrics", str(metrics)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=common.bench_env(), timeout=1800)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        m = json.loads(metrics.read_text())
    t = [h["time_s"] for h in m["history"]]
    per_it = [b - a for a, b in zip(t[1:], t[2:])] or [t[-1]]
    return {"s_per_iteration": common.median(per_it), "objective": m["objective"],
            "history_objective": [h["objective"] for h in m["history"]]}


def run(quick: bool) -> dict:
    mpiexec = common.mpiexec()
    if mpiexec is None:
        raise SystemExit("mpiexec not found (pip install mpich)")
    cfg = dict(layers=32, channels=16, n_train=600 if quick else 4000, iterations=4 if quick else 12,
               repeats=1 if quick else 3)
    rows = {(r, g, m): [] for r, g in SPLITS for m in ("exact", "oneshot")}
    for _ in range(cfg["repeats"]):  # interleaved: every variant sees the same machine load
        for key in rows:
            rows[key].append(run_once(mpiexec, *key, cfg))
    results = []
    for (ranks, groups, method), runs in rows.items():
        results.append({"ranks": ranks, "data_parallel": groups, "layer_ranks": ranks // groups,
                        "method": method, "s_per_iteration": common.median([r["s_per_iteration"] for r in runs]),
                        "repeats": [r["s_per_iteration"] for r in runs], "objective": runs[0]["objective"],
                        "history_objective": runs[0]["history_objective"]})
    for r in results:
        one = next(x for x in results if x["method"] == r["method"] and x["ranks"] == 1)
        r["speedup_vs_1_rank"] = one["s_per_iteration"] / r["s_per_iteration"]
        r["objective_rel_diff_vs_1_rank"] = abs(r["objective"] - one["objective"]) / abs(one["objective"])
    return common.document(NAME, cfg, results)


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    fig, ax = common.subplots(figsize=(6, 3.5))
    labels, values, colors = [], [], []
    for r in doc["results"]:
        labels.append(f"{r['method']}\n{r['data_parallel']}x{r['layer_ranks']}")
        values.append(r["s_per_iteration"])
        colors.append("tab:blue" if r["method"] == "exact" else "tab:orange")
    ax.bar(range(len(values)), values, color=colors)
    for i, r in enumerate(doc["results"]):
        ax.text(i, values[i], f"{r['speedup_vs_1_rank']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("s / iteration (median)")
    ax.set_title("D data groups x L layer ranks (DxL); label: speedup over 1 rank", fontsize=9)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.finish(NAME, run(args.quick), args, plot)


if __name__ == "__main__":
    main()
