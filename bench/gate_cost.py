"""What taking turns costs a traced rank: the same data-parallel shard timed alone, beside one
other rank, and gated with 2, 4 and 8 ranks on this host's cores.

    python -m bench.gate_cost [--rounds R] [--quick]

Every configuration gives each rank the same work: 625 samples of peaks through 256 layers, the
data-parallel evaluation of one group (``--data-parallel P`` with 625·P samples), with M = 1 and
M = 8 micro-batches.  Per run (traced): each rank's compute time per training iteration (its
spans' thread CPU time between two iteration marks, the first iteration left out), the median over
ranks and iterations, and the replay's steady-state seconds per iteration.  "2 gated on 1 core"
forces the gate onto one core at P = 2 (``GPUBRAID_TRACE_CORES=1``); at P = 4 and 8 a 2-core
host gates by itself.  With one core per rank every row would equal "alone": the ratio to it is
what tracing more ranks than cores adds to the replay.  Writes ``gate_cost.json``.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile

from bench.common import document, finish, load_json, parser, save_figure, subplots, train_cli
from bench.replay import iteration_compute, network_model
from gpubraid.runtime.replay import replay
from gpubraid.runtime.trace import CORES_ENV, load

SHARD = 625
#: (label, ranks, forced cores per host or None)
CONFIGS = [("alone", 1, None), ("2 side by side", 2, None), ("2 gated on 1 core", 2, 1),
           ("4 gated on 2 cores", 4, None), ("8 gated on 2 cores", 8, None)]


def plot(json_path, png_path=None):
    """One rank's compute per iteration in every configuration, M = 1 and M = 8 side by side."""
    rows = load_json(json_path)["results"]
    fig, ax = subplots(figsize=(8, 3.8))
    labels = [r["label"] for r in rows if r["M"] == 1]
    for k, M in enumerate((1, 8)):
        sub = [r for r in rows if r["M"] == M]
        ax.bar([i + (k - 0.5) * 0.38 for i in range(len(sub))], [r["compute_ms"] for r in sub], 0.38,
               label=f"M = {M}")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("one rank's compute per iteration (ms)")
    ax.set_title(f"the same {SHARD}-sample shard, 256 layers: alone and traced in turns", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, json_path, png_path)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rounds, iters, layers = (1, 4, 16) if args.quick else (args.rounds, 31, 256)
    net = network_model("measured")
    samples = {(label, M): {"compute": [], "replay": []} for label, _, _ in CONFIGS for M in (1, 8)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for label, P, cores in CONFIGS:
                for M in (1, 8):
                    run_args = ["peaks", "--layers", str(layers), "--n-train", str(SHARD * P), "--method", "serial",
                                "--micro-batches", str(M), "--iterations", str(iters), "--val-every", "0",
                                *(["--data-parallel", str(P)] if P > 1 else [])]
                    train_cli(P, run_args, tmp, True, env={CORES_ENV: str(cores)} if cores else None)
                    doc = load(os.path.join(tmp, "t.json"))
                    s = samples[(label, M)]
                    s["compute"].append(statistics.median(x for rank in doc["ranks"]
                                                          for x in iteration_compute(rank)[1:]))
                    s["replay"].append(replay(doc, net, "thread").after_first()[1])
                    s["gated"] = doc["meta"].get("gated")
                    print(f"round {r} {label:20s} M={M}: compute {s['compute'][-1] * 1e3:.2f} ms, "
                          f"replay {s['replay'][-1] * 1e3:.2f} ms per iteration", flush=True)
    results = []
    for (label, M), s in samples.items():
        alone = statistics.median(samples[("alone", M)]["compute"])
        c = statistics.median(s["compute"])
        results.append({"label": label, "M": M, "gated": s["gated"], "compute_ms": c * 1e3,
                        "over_alone": c / alone, "replay_ms_per_iteration": statistics.median(s["replay"]) * 1e3,
                        "samples": s})
    for row in results:
        print(f"{row['label']:20s} M={row['M']}: {row['compute_ms']:.2f} ms ({row['over_alone']:.2f}x alone)")
    doc = document("gate_cost", {"shard": SHARD, "layers": layers, "iterations": iters, "rounds": rounds}, results)
    finish("gate_cost", doc, args, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
