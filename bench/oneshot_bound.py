"""Can one-shot win on P ranks?  Each MGRIT cycle's best possible speedup against its gradient error (issue 19).

    python -m bench.oneshot_bound [--quick] [--layers 256 1024] [--channels 8] [--ranks 16] [--steps 20]
                                  [--tol 0.1] [--table FILE] [--out DIR] [--no-plot]

Peaks at the paper's settings (T = 1, smoothrelu, 5000 samples, full batch), NumPy, one process.
Only the full batch: on mini-batches of 8 or 50 the step's time is not proportional to its samples
(calls and messages dominate it), and there the bound says nothing.  For
each one-shot cycle (coarsening factor m, K levels; F-relaxation on every level and one warm iteration
per solve, one-shot's default cycle, with the levels fixed instead of chosen):

- its gradient error ‖g − g*‖ / ‖g*‖ against serial's gradient g* at the first ``--steps`` points of a
  serial L-BFGS trajectory, each one-shot evaluation warm-started from the previous point's, as in
  training (:func:`bench.oneshot_work.grad_study`); the median over the points after the first;
- its step applications per evaluation W and those of its coarsest solves C, over serial's 2N (the
  solver's own counters);
- its **ideal speedup on P ranks** split into D data groups × L ≥ 2 layer ranks, D / ((W − C) / L + C),
  the best such split: every step applied as fast as serial applies it, a group's share of the
  batch costing 1/D of the whole's, all but the coarsest solves spread evenly over the L layer
  ranks, no message, no call overhead, no idle rank.  The coarsest solve is a chain of steps, which
  no implementation of the cycle runs in parallel, so this bounds what any implementation of that
  cycle can reach.  (On one layer rank, L = 1, one-shot only adds work to serial's data groups, whose
  own ideal is P: any W > 1 loses to them there.)

A cycle is admissible when its median error is at most ``--tol`` (the convergence monitor's default:
above it the monitor takes the level off).  With ``--table`` (a ``bench.oneshot_table`` JSON), each
full-batch row at these depths and widths sets its best other strategy (predicted by the planner's
cost model, over serial's evaluation on one rank) against the best admissible cycle's ideal speedup:
a row that one-shot cannot win even so is lost by the cycle, not by its implementation.
"""
from __future__ import annotations

from bench import common
from bench.oneshot_work import grad_study

NAME = "oneshot_bound"
#: one-shot with the levels fixed: no stability or convergence bound, no cap for the rank count
FIXED = dict(stability=0.0, conv_bound=0.0, levels_for_ranks=False, nrelax=0)


def cycles(N: int, quick: bool = False) -> dict:
    """name -> TrainConfig overrides: m = 2 with 2..7 levels, m = 4 with 2..5, m = 8 with 2..4, each
    while the coarsest level keeps at least 2 steps."""
    most = {2: 7, 4: 5, 8: 4} if not quick else {2: 3, 4: 2}
    out = {}
    for m, top in most.items():
        for K in range(2, top + 1):
            if N // m ** (K - 1) >= 2:
                out[f"m={m}, {K} levels"] = dict(FIXED, cfactor=m, max_levels=K)
    return out


def ideal_speedup(row: dict, P: int) -> tuple[float, int]:
    """The cycle's ideal speedup over serial on one rank on its best split of P ranks into D data
    groups × L ≥ 2 layer ranks, and that L: D / ((W − C) / L + C), W and C per evaluation over serial's
    2N (each group's share of the full batch costs 1/D of the whole's; one layer rank, L = 1, would
    only add work to serial's data groups)."""
    W, C = row["per_eval_over_serial"], row["coarsest_over_serial"]
    return max(((P // L) / ((W - C) / L + C), L) for L in range(2, P + 1) if P % L == 0)


def best_others(table: dict, layers, channels) -> list:
    """The full-batch rows of a bench.oneshot_table document at these depths and widths: (depth,
    width, network, label, speedup of the best strategy that is not one-shot over serial's
    evaluation on one rank)."""
    out = []
    for r in table["results"]:
        if not r["full_batch"] or r["depth"] not in layers or r["width"] not in channels:
            continue
        others = [r[k] for k in ("pipeline", "data") if k in r]
        best = min(others, key=lambda c: c["step_s"])
        out.append(dict(depth=r["depth"], width=r["width"], network=r["network"], label=best["label"],
                        speedup=r["serial_1rank_eval_s"] / best["step_s"]))
    return out


def summary(rows: list, P: int, tol: float, others: list) -> list:
    """Per (depth, width): the best admissible cycle, its ideal speedup, and each table row's verdict."""
    out = []
    for N, width in sorted({(r["layers"], r["channels"]) for r in rows}):
        mine = [r for r in rows if (r["layers"], r["channels"]) == (N, width)]
        ok = [r for r in mine if r["median_grad_rel_error"] <= tol]
        best = max(ok, key=lambda r: r["ideal_speedup"]) if ok else None
        top = max(mine, key=lambda r: r["ideal_speedup"])
        s = {"layers": N, "channels": width, "ranks": P, "tol": tol,
             "best_admissible": None if best is None else best["variant"],
             "best_admissible_speedup": None if best is None else best["ideal_speedup"],
             "best_any": top["variant"], "best_any_speedup": top["ideal_speedup"],
             "best_any_error": top["median_grad_rel_error"], "rows": []}
        for o in others:
            if (o["depth"], o["width"]) == (N, width):
                s["rows"].append(dict(o, oneshot_can_win=best is not None and best["ideal_speedup"] > o["speedup"]))
        out.append(s)
    return out


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    groups = sorted({(r["layers"], r["channels"]) for r in doc["results"]})
    fig, axes = common.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (N, width) in zip(axes[0], groups):
        for m, mark in ((2, "o"), (4, "s"), (8, "^")):
            rs = [r for r in doc["results"] if (r["layers"], r["channels"]) == (N, width) and r["overrides"]["cfactor"] == m]
            if rs:
                ax.plot([r["median_grad_rel_error"] for r in rs], [r["ideal_speedup"] for r in rs], mark + "-",
                        label=f"m = {m} (2, 3, ... levels)")
        ax.axvline(doc["config"]["tol"], color="k", lw=0.8, ls=":")
        for s in doc["summary"]:
            for o in s["rows"] if (s["layers"], s["channels"]) == (N, width) else ():
                ax.axhline(o["speedup"], color="C3" if o["network"] == "shm" else "C4", lw=0.8,
                           label=f"best other, {o['network']} (modelled)")
        ax.set(xscale="log", xlabel="median gradient error of one iteration", ylabel="ideal speedup on P ranks",
               title=f"N = {N}, width {width}, P = {doc['config']['ranks']}")
        ax.xaxis.set_minor_formatter("")   # (after the log scale, which sets its own)
        ax.legend(fontsize=7)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--layers", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--channels", type=int, nargs="+", default=[8])
    ap.add_argument("--ranks", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="points of the serial trajectory")
    ap.add_argument("--tol", type=float, default=0.1, help="largest admissible median gradient error")
    ap.add_argument("--table", default=None, help="a bench.oneshot_table JSON: its full-batch rows")
    args = ap.parse_args(argv)
    steps = 4 if args.quick else args.steps
    rows = []
    for N in args.layers:
        for width in args.channels:
            for r in grad_study(N, steps, variants=cycles(N, args.quick), channels=width):
                r["ideal_speedup"], r["ideal_layer_ranks"] = ideal_speedup(r, args.ranks)
                print(f"N={N} width={width} {r['variant']:16s} error {r['median_grad_rel_error']:.3f} W {r['per_eval_over_serial']:.2f} "
                      f"C {r['coarsest_over_serial']:.3f} ideal x{r['ideal_speedup']:.2f} "
                      f"on {args.ranks // r['ideal_layer_ranks']}x{r['ideal_layer_ranks']}", flush=True)
                rows.append(r)
    others = best_others(common.load_json(args.table), args.layers, args.channels) if args.table else []
    doc = common.document(NAME, {"ranks": args.ranks, "steps": steps, "tol": args.tol, "layers": args.layers,
                                 "channels": args.channels, "table": args.table}, rows,
                          summary=summary(rows, args.ranks, args.tol, others))
    common.finish(NAME, doc, args, plot)


if __name__ == "__main__":
    main()
