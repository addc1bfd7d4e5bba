"""Smaller micro-batches at a 1F1B pipeline's ends against equal ones: traced runs replayed with
one core per rank, and real runs where the ranks fit the cores.

    python -m bench.pipeline_ramp [--rounds R] [--quick]

Each configuration (layer ranks P, layers, micro-batches M; peaks full batch, L-BFGS) runs twice
per round: as gpubraid cuts the batch (:func:`gpubraid.runtime.resources.micro_batch_bounds`:
the first two micro-batches 1/2 and 3/4 of the others, the last 1/2, on P ≥ 4 ranks only) and with
every micro-batch of the same size, which on P < 4 is what gpubraid does anyway (both rows
then measure the same code: the noise of the comparison).  "Equal" runs ``gpubraid train``
through this module's worker with :data:`~gpubraid.runtime.resources.FILL` and ``DRAIN`` set to
1.  Per run: the replay's steady-state seconds per iteration (measured network,
``bench/results/*/pingpong.json``); where P fits this host's cores, the untraced run's median
seconds per iteration too.  Medians over the rounds, and the ratio equal / ramp (above 1: the
ramp is faster).  Writes ``pipeline_ramp.json``.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile

from bench.common import document, finish, load_json, parser, save_figure, seconds_per_step, subplots, train_cli
from bench.replay import network_model
from gpubraid.runtime.replay import replay
from gpubraid.runtime.trace import load

#: (layer ranks, layers, micro-batches)
CONFIGS = [(2, 64, 8), (4, 64, 16), (2, 256, 16), (4, 256, 16), (8, 256, 16), (8, 256, 32)]
VARIANTS = ("ramp", "equal")


def worker(variant: str, argv: list) -> int:
    """``gpubraid`` with ``argv``; for "equal" every micro-batch of the same size."""
    from gpubraid.cli.main import main as cli
    from gpubraid.runtime import resources

    if variant == "equal":
        resources.FILL, resources.DRAIN = (1.0, 1.0), 1.0
    return cli(argv)


def run(variant: str, ranks: int, args: list, workdir: str, trace: bool) -> dict:
    """One training run (under mpiexec when ranks > 1): its metrics, and its trace when ``trace``."""
    metrics = train_cli(ranks, args, workdir, trace, entry=("-m", "bench.pipeline_ramp", "--worker", variant))
    return {"metrics": metrics, "trace": load(os.path.join(workdir, "t.json")) if trace else None}


def plot(json_path, png_path=None):
    rows = load_json(json_path)["results"]
    fig, ax = subplots(figsize=(7.5, 3.8))
    labels = [f"P={r['ranks']} N={r['layers']}\nM={r['micro_batches']}" for r in rows]
    ax.bar([i - 0.2 for i in range(len(rows))], [r["replay_equal_over_ramp"] for r in rows], 0.4, label="replayed")
    real = [(i, r["real_equal_over_ramp"]) for i, r in enumerate(rows) if r.get("real_equal_over_ramp")]
    ax.bar([i + 0.2 for i, _ in real], [v for _, v in real], 0.4, label="real (P fits the cores)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("time per iteration, equal / ramp")
    ax.set_title("1F1B micro-batch sizes: smaller ends (P ≥ 4) against equal sizes", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, json_path, png_path)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1], argv[2:])
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rounds, iters = (1, 4) if args.quick else (args.rounds, 21)
    configs = [(P, 16, M) for P, _, M in CONFIGS[:2]] if args.quick else CONFIGS
    net, cores = network_model("measured"), os.cpu_count() or 1
    samples = {(c, v): {"replay": [], "real": []} for c in configs for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for c in configs:
                P, N, M = c
                run_args = ["peaks", "--layers", str(N), "--method", "pipeline", "--micro-batches", str(M),
                            "--iterations", str(iters), "--val-every", "0"]
                for v in VARIANTS:
                    s = samples[(c, v)]
                    s["replay"].append(replay(run(v, P, run_args, tmp, True)["trace"], net, "thread").after_first()[1])
                    if P <= cores:
                        s["real"].append(seconds_per_step(run(v, P, run_args, tmp, False)["metrics"]))
                    print(f"round {r} P={P} N={N} M={M} {v:5s}: replay {s['replay'][-1] * 1e3:.2f} ms"
                          + (f", real {s['real'][-1] * 1e3:.2f} ms" if s["real"] else ""), flush=True)
    results = []
    for c in configs:
        ramp, equal = samples[(c, "ramp")], samples[(c, "equal")]
        row = {"ranks": c[0], "layers": c[1], "micro_batches": c[2], "ramped": c[0] >= 4,
               "replay_ms": {v: statistics.median(samples[(c, v)]["replay"]) * 1e3 for v in VARIANTS},
               "replay_equal_over_ramp": statistics.median(equal["replay"]) / statistics.median(ramp["replay"]),
               "samples": {v: samples[(c, v)] for v in VARIANTS}}
        if ramp["real"]:
            row["real_ms"] = {v: statistics.median(samples[(c, v)]["real"]) * 1e3 for v in VARIANTS}
            row["real_equal_over_ramp"] = statistics.median(equal["real"]) / statistics.median(ramp["real"])
        results.append(row)
        print(f"P={c[0]} N={c[1]} M={c[2]}: equal / ramp {row['replay_equal_over_ramp']:.3f} replayed"
              + (f", {row['real_equal_over_ramp']:.3f} real" if ramp["real"] else ""))
    doc = document("pipeline_ramp", {"configs": configs, "iterations": iters, "rounds": rounds,
                                     "network": net.name}, results)
    finish("pipeline_ramp", doc, args, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
