"""Multilevel initialisation in depth (``--depth-levels k``): time and work to reach the plain run's
final validation accuracy − 0.01.

    python -m bench.depth_init [--quick] [--out DIR] [--no-plot] [--method serial] [--levels 0 1 2 3]

Peaks, full-batch L-BFGS, one process, one BLAS thread, the example's settings at 64 layers (and
the paper's: T = 1, smoothrelu).  Each variant trains the coarse networks first (``--depth-iterations``
steps each) and then the 64 layers for the same number of steps as the plain run.  Work is counted in
fine-network evaluations: a step of an n-layer network costs its objective/gradient evaluations
times n/N (deterministic, unlike the wall time on a shared machine).  Reported per variant: the
validation accuracy along the way, and the work and seconds until it first reaches the target.
"""
from __future__ import annotations

import time

from bench import common
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer

WORKLOADS = {
    "peaks-64": dict(example="peaks", layers=64),
    "peaks-64-paper": dict(example="peaks", layers=64, final_time=1.0, activation="smoothrelu"),
}


def run(workload: dict, method: str, levels: int, iterations: int, depth_iterations: int) -> dict:
    cfg = TrainConfig(method=method, iterations=iterations, depth_levels=levels, depth_iterations=depth_iterations,
                      val_every=5, progress=False, **workload)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    res = trainer.run()
    wall = time.perf_counter() - t0
    N, curve, work = cfg.layers, [], 0.0
    for e in res.depth_history:
        work += e["n_evals"] * e["layers"] / N
    for e in res.history:
        work += e["n_evals"]
        if "val_accuracy" in e:
            curve.append({"iteration": e["iter"] + 1, "work": work, "seconds": e["time_s"],
                          "val_accuracy": e["val_accuracy"]})
    return {"levels": levels, "curve": curve, "final_val": res.val_accuracy, "total_work": work, "wall_s": wall,
            "coarse_work": sum(e["n_evals"] * e["layers"] / N for e in res.depth_history)}


def to_target(variant: dict, target: float) -> dict:
    """Work and seconds at the first validation point at or above ``target`` (None: never)."""
    hit = next((p for p in variant["curve"] if p["val_accuracy"] >= target), None)
    return {"work": hit and hit["work"], "seconds": hit and hit["seconds"], "iteration": hit and hit["iteration"]}


def plot(path):
    doc = common.load_json(path)
    fig, axes = common.subplots(1, len(doc["results"]), figsize=(6 * len(doc["results"]), 4))
    for ax, (name, w) in zip(axes.flat if hasattr(axes, "flat") else [axes], doc["results"].items()):
        for v in w["variants"]:
            ax.plot([p["work"] for p in v["curve"]], [p["val_accuracy"] for p in v["curve"]],
                    label=f"depth levels {v['levels']}")
        ax.axhline(w["target"], color="gray", ls=":", label="plain final − 0.01")
        ax.set(title=name, xlabel="work (fine-network evaluations)", ylabel="validation accuracy")
        ax.legend()
    return common.save_figure(fig, path)


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--method", default="serial")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3])
    args = p.parse_args()
    iterations, depth_iterations = (40, 20) if args.quick else (150, 40)
    workloads = {k: {**w, "layers": 16} for k, w in WORKLOADS.items()} if args.quick else WORKLOADS
    results = {}
    for name, workload in workloads.items():
        variants = [run(workload, args.method, k, iterations, depth_iterations) for k in args.levels]
        target = variants[0]["final_val"] - 0.01
        for v in variants:
            v["to_target"] = to_target(v, target)
            print(f"{name} depth levels {v['levels']}: final val {v['final_val']:.4f}, to {target:.4f}: "
                  f"work {v['to_target']['work']}, {v['to_target']['seconds']} s; coarse work {v['coarse_work']:.0f}")
        results[name] = {"target": target, "variants": variants}
    config = {"method": args.method, "iterations": iterations, "depth_iterations": depth_iterations,
              "levels": args.levels, "workloads": workloads}
    common.finish("depth_init", common.document("depth_init", config, results), args, plot)


if __name__ == "__main__":
    main()
