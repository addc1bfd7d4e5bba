"""Replayed against real wall time: every method at P = 1 and 2, and predictions for P = 4 and 8.

    python -m bench.replay_validation [--quick] [--rounds R] [--network measured]

On a shared machine run it as ``nice -n -10 python -m bench.replay_validation`` (root): other load
then barely delays the runs, and the real wall times approach those of a quiet machine.

Each round runs every configuration twice, interleaved: with ``--trace`` (the replay's input) and
without (the real wall time, untouched by tracing).  Per configuration: the training loop's wall
time without tracing (min and median over rounds; the min is the least disturbed by other load on
the machine) and with tracing; the replayed wall time with compute spans as thread CPU time (the
prediction for dedicated cores) and as wall time (which keeps this machine's contention in the
spans: compared with the traced run's own wall time it checks the replay's dependencies and
network model independently of the load); and the CPU share (thread / wall time of the compute
spans: 1 on a quiet machine).  P = 4 and 8 run oversubscribed: their replay is a prediction for 4
or 8 dedicated cores, their real wall time is not comparable.  Writes ``replay-validation.json``.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import document, load_json, parser, result_path, save_figure, train_cli, write_json
from bench.replay import network_model
from gpubraid.runtime.replay import replay
from gpubraid.runtime.trace import load

#: (name, ranks, arguments after the example); P > 2 are predictions only.
CONFIGS = [(m, p, a) for p in (1, 2) for m, a in (
    ("serial", ["--method", "serial"]), ("pipeline", ["--method", "pipeline", "--micro-batches", "4"]),
    ("exact", ["--method", "exact", "--tol", "1e-6", "--iterations", "3"]), ("oneshot", ["--method", "oneshot"]))] + [
    ("serial D=2", 2, ["--method", "serial", "--data-parallel", "2"]),
    ("oneshot D=2", 2, ["--method", "oneshot", "--data-parallel", "2"]),
    ("pipeline", 4, ["--method", "pipeline", "--micro-batches", "4"]), ("oneshot", 4, ["--method", "oneshot"]),
    ("pipeline", 8, ["--method", "pipeline", "--micro-batches", "4"]), ("oneshot", 8, ["--method", "oneshot"])]


def run(ranks: int, args: list[str], workdir: str, trace: bool) -> dict:
    """One ``gpubraid train`` run (:func:`bench.common.train_cli`, no validation passes): its loop
    wall time, the load average before it and its objective; the trace is ``<workdir>/t.json``."""
    load_before = os.getloadavg()[0]
    m = train_cli(ranks, [*args, "--val-every", "0"], workdir, trace, timeout=1200)
    return {"wall_s": m["wall_s"], "load": load_before, "objective": m["objective"]}


def plot(json_path, png_path=None):
    """Per configuration: the untraced runs' wall time (min, median), the quietest traced run's
    own wall time and its replay on dedicated cores; P = 4, 8: the replay is a prediction."""
    import matplotlib.pyplot as plt

    rows = load_json(json_path)["results"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    y = range(len(rows))
    q = [r["quietest_round"] for r in rows]
    ax.barh([k - 0.3 for k in y], [r["real_wall_median_s"] for r in rows], 0.2, color="tab:gray", label="real, median")
    ax.barh([k - 0.1 for k in y], [r["real_wall_min_s"] for r in rows], 0.2, color="silver", label="real, min")
    ax.barh([k + 0.1 for k in y], [x["traced_wall_s"] for x in q], 0.2, color="tab:orange", label="quietest traced run")
    ax.barh([k + 0.3 for k in y], [x["replay_s"] for x in q], 0.2, color="tab:blue", label="its replay (dedicated cores)")
    ax.set_yticks(list(y), [f"{r['method']} P={r['ranks']}" + (" (prediction)" if r["prediction_only"] else "")
                            for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("training loop wall time (s)")
    ax.legend(fontsize=7)
    ax.set_title("replay of traced runs vs real runs (peaks, 2-core vm)", fontsize=9)
    return save_figure(fig, json_path, png_path)


SAMPLES = ("plain", "traced", "replay", "replay_wall", "traced_wall", "cpu_share")


def summarize(entry: dict) -> dict:
    """``entry`` with its ratios, from its per-round ``samples``: real wall time (untraced runs)
    min and median; replayed time (thread clock) median; and the *quietest round* (the traced run
    with the largest CPU share): its replay against its own wall time and the untraced run's."""
    s = entry["samples"]
    real_min, real_med, rep = min(s["plain"]), statistics.median(s["plain"]), statistics.median(s["replay"])
    q = max(range(len(s["cpu_share"])), key=lambda k: s["cpu_share"][k])
    entry.update({
        "real_wall_min_s": real_min, "real_wall_median_s": real_med,
        "traced_wall_median_s": statistics.median(s["traced"]),
        "replay_s": rep, "replay_wall_clock_s": statistics.median(s["replay_wall"]),
        "ratio_replay_to_real_min": rep / real_min, "ratio_replay_to_real_median": rep / real_med,
        "ratio_traced_to_plain": statistics.median(s["traced"]) / real_med,
        "ratio_wall_clock_replay_to_traced": statistics.median([a / b for a, b in zip(s["replay_wall"], s["traced_wall"])]),
        "cpu_share": statistics.median(s["cpu_share"]),
        "quietest_round": {"round": q, "cpu_share": s["cpu_share"][q], "replay_s": s["replay"][q],
                           "traced_wall_s": s["traced_wall"][q], "ratio_replay_to_traced": s["replay"][q] / s["traced_wall"][q],
                           "real_wall_s": s["plain"][q], "ratio_replay_to_real": s["replay"][q] / s["plain"][q]}})
    return entry


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=20, help="optimisation steps (exact: 3)")
    p.add_argument("--network", default="measured")
    p.add_argument("--from", dest="resummarize", metavar="FILE",
                   help="recompute the ratios of an existing replay-validation.json from its samples")
    args = p.parse_args(argv)
    if args.resummarize:
        doc = json.loads(Path(args.resummarize).read_text())
        doc["benchmark"] = "replay_validation"   # the module that plots it
        doc["results"] = [summarize(e) for e in doc["results"]]
        write_json(args.resummarize, doc)
        print(plot(args.resummarize))
        return 0
    net = network_model(args.network)
    rounds, iters = (1, 3) if args.quick else (args.rounds, args.iterations)
    base = ["peaks", "--n-train", "1000", "--iterations", str(iters)]
    samples = {i: {"plain": [], "traced": [], "replay": [], "replay_wall": [], "traced_wall": [], "load": [],
                   "cpu_share": []}
               for i in range(len(CONFIGS))}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for i, (name, ranks, extra) in enumerate(CONFIGS):
                s = samples[i]
                plain = run(ranks, base + extra, tmp, False)
                traced = run(ranks, base + extra, tmp, True)
                doc = load(os.path.join(tmp, "t.json"))
                rp, rw = replay(doc, net, "thread"), replay(doc, net, "wall")
                s["plain"].append(plain["wall_s"])
                s["traced"].append(traced["wall_s"])
                s["replay"].append(rp.wall_s)
                s["replay_wall"].append(rw.wall_s)
                s["traced_wall"].append(rp.traced_wall_s)
                s["load"].append(plain["load"])
                s["cpu_share"].append(sum(t.compute_s for t in rp.ranks) / sum(t.compute_s for t in rw.ranks))
                s["same_objective"] = plain["objective"] == traced["objective"]
                s["breakdown"] = rp.as_dict()["ranks"]
                s["critical"] = rp.as_dict()["critical"]
                print(f"round {r} {name:12s} P={ranks}: wall {plain['wall_s']:.3f} s, traced {traced['wall_s']:.3f} s, "
                      f"replay {rp.wall_s:.3f} s (wall clock {rw.wall_s:.3f} s), load {plain['load']:.1f}", flush=True)
    results = [summarize({"method": name, "ranks": ranks, "args": base + extra, "prediction_only": ranks > 2,
                          "tracing_changes_result": not samples[i]["same_objective"], "load_avg": samples[i]["load"],
                          "samples": {k: samples[i][k] for k in SAMPLES},
                          "breakdown": samples[i]["breakdown"], "critical_path": samples[i]["critical"]})
               for i, (name, ranks, extra) in enumerate(CONFIGS)]
    path = result_path("replay-validation", args.out)
    write_json(path, document("replay_validation", {"rounds": rounds, "iterations": iters, "network": net.__dict__,
                                                   "niceness": os.nice(0)},
                              results))
    print(f"-> {path}")
    if not args.no_plot:
        print(plot(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
