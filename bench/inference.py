"""Scoring cost: the pipelined forward pass against a plain serial forward pass and against the
converged-MGRIT scoring gpubraid used before, on 1 and 2 ranks.

    python -m bench.inference [--quick] [--out DIR] [--no-plot]

Network and data: the MNIST example (16 conv layers, 8 channels, the bundled 4000 training
digits; ``--quick``: 4 layers, 400 digits), float64, NumPy, one BLAS thread per rank.  Per rank
count (``mpiexec -n P``), interleaved over repeats, the median wall time (slowest rank) of

    pipeline        Trainer.score("train"): loss and accuracy by layer-serial propagation of sample
                    chunks pipelined over the ranks (gpubraid.objective.inference.Pipeline) plus R(θ)
    serial_forward  (1 rank) the states alone: opening and N steps, one chunk at a time, no head
    mgrit_exact     (1 rank) the former scoring: a converged forward MGRIT solve (FCF, cfactor 2,
                    tol 1e-9) per chunk; slow, so timed once after the others

Reported: pipeline / serial_forward on one process (the issue's bound is 1.2×) and the 1-rank /
2-rank ratio of the pipeline.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

from bench import common

NAME = "inference"


def worker(layers: int, n_train: int, repeats: int) -> None:
    from mpi4py import MPI

    from gpubraid.objective.layer_parallel import LayerParallel
    from gpubraid.runtime.comm import Comm
    from gpubraid.solver.options import MGRITOptions
    from gpubraid.training.config import TrainConfig
    from gpubraid.training.trainer import Trainer

    comm = Comm.world()
    cfg = TrainConfig(example="mnist", layers=layers, n_train=n_train, n_val=100, iterations=1,
                      progress=False, backend="numpy")
    tr = Trainer(cfg, comm)
    P = tr.lp.layout.views(tr.theta)
    x, n = tr.data.x_train, tr.data.n_train
    variants = {"pipeline": lambda: tr.score("train")}
    if comm.size == 1:
        chunk = tr.pipeline.chunk_size(n)

        def serial_forward():
            for lo in range(0, n, chunk):
                tr.pipeline._propagate(tr.model.open_forward(x[lo:lo + chunk], P), P.layers())

        exact = MGRITOptions(cfactor=2, nrelax=1, tol=1e-9, max_iter=50)
        lp = LayerParallel(tr.model, comm, exact, exact)

        def mgrit_exact():
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                lp.evaluate(tr.theta, x[lo:hi], tr.data.y_train[lo:hi], hi - lo, grad=False)

        variants["serial_forward"] = serial_forward
    times = {k: [] for k in variants}

    def timed(fn) -> float:
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        return MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX)

    for rep in range(repeats + 1):
        for name, fn in variants.items():  # interleaved
            dt = timed(fn)
            if rep:
                times[name].append(dt)
    if comm.size == 1:
        times["mgrit_exact"] = [timed(mgrit_exact)]
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "samples": n, "chunk": tr.pipeline.chunk_size(n),
                          "times": times, "median_s": {k: common.median(v) for k, v in times.items()}}))


def run(quick: bool) -> dict:
    mpiexec = common.mpiexec()
    cfg = dict(layers=4 if quick else 16, n_train=400 if quick else 4000, repeats=2 if quick else 5)
    rows = []
    for P in (1, 2):
        cmd = [mpiexec, "-n", str(P), *common.mpi_oversubscribe_args(mpiexec, P), sys.executable, "-m", "bench.inference",
               "--worker", str(cfg["layers"]), str(cfg["n_train"]), str(cfg["repeats"])]
        out = subprocess.run(cmd, capture_output=True, text=True, env=common.bench_env(), timeout=3600)
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    one, two = rows
    m = one["median_s"]
    summary = {"pipeline_over_serial_forward_1_rank": m["pipeline"] / m["serial_forward"],
               "mgrit_exact_over_serial_forward_1_rank": m["mgrit_exact"] / m["serial_forward"],
               "pipeline_1_rank_over_2_ranks": m["pipeline"] / two["median_s"]["pipeline"]}
    return common.document(NAME, cfg, {"runs": rows, "summary": summary})


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    runs = doc["results"]["runs"]
    labels, values = [], []
    for r in runs:
        for k, v in r["median_s"].items():
            labels.append(f"{k}\n{r['ranks']} rank(s)")
            values.append(v)
    fig, ax = common.subplots(figsize=(6, 3.5))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("s per pass over the training set (median)")
    s = doc["results"]["summary"]
    ax.set_title(f"pipeline/serial forward {s['pipeline_over_serial_forward_1_rank']:.2f}x, "
                 f"1 rank/2 ranks {s['pipeline_1_rank_over_2_ranks']:.2f}x", fontsize=9)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*map(int, sys.argv[2:5]))
        return
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.finish(NAME, run(args.quick), args, plot)


if __name__ == "__main__":
    main()
