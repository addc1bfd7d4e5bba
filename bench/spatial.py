"""Spatial coarsening for conv steps (issue 19, point 4b): gradient error and accuracy against plain coarsening.

    python -m bench.spatial [--quick] [--layers 16 64] [--part grad|train|both] [--iterations 300]
                            [--snapshots 8] [--variants NAME ...] [--out DIR] [--no-plot]

MNIST conv (the bundled digits, 28×28, 8 channels, relu, T = 2, Adam batch 50: the example's
defaults) in float32 (convolutions on torch's CPU kernels when torch is installed), one process.  One-shot with a fixed hierarchy (no
automatic level choice, no level cap, no convergence monitor) and ``spatial_levels`` k: levels
1..k hold the feature maps halved (14×14, then 7×7), so their steps cost a quarter (a sixteenth).

``grad``: along snapshots of a serial Adam trajectory, each variant's one-shot gradient of the
snapshot's mini-batch against serial's, ‖g − g*‖/‖g*‖, with its time per evaluation and its
work per evaluation over serial's 2N fine steps (coarse steps weighted by their pixels).
``train``: each variant trained for ``--iterations`` steps: validation accuracy, wall time.
"""
from __future__ import annotations

import time

import numpy as np

from bench import common
from gpubraid.training.config import TrainConfig
from gpubraid.training.costmodel import pixel_share
from gpubraid.training.trainer import Trainer

NAME = "spatial"
MNIST = dict(example="mnist", dtype="float32", seed=0, progress=False, val_every=0)
ONESHOT = dict(method="oneshot", stability=0.0, conv_bound=0.0, monitor_every=0, levels_for_ranks=False)
#: name -> TrainConfig overrides
VARIANTS = {
    "serial": dict(method="serial"),
    "2 levels": dict(ONESHOT, max_levels=2),
    "2 levels, spatial 1": dict(ONESHOT, max_levels=2, spatial_levels=1),
    "3 levels": dict(ONESHOT, max_levels=3),
    "3 levels, spatial 1": dict(ONESHOT, max_levels=3, spatial_levels=1),
    "3 levels, spatial 2": dict(ONESHOT, max_levels=3, spatial_levels=2),
}


def work_over_serial(stats, layers: int, opts) -> float:
    """Fine-step equivalents of one evaluation's solves over serial's 2N: each level's step
    applications weighted by its pixels (:func:`~gpubraid.training.costmodel.pixel_share`)."""
    total = 0.0
    for st in (s for s in stats if s is not None):
        total += sum(n * pixel_share(opts, l) for l, n in enumerate(st.steps_per_level))
        total += st.coarse_steps * pixel_share(opts, st.levels - 1) + st.estimate_steps
    return total / (2.0 * layers)


def snapshots(layers: int, count: int, its: int):
    """(θ, x, y, B) at ``count`` evenly spaced steps of a serial Adam run of ``its`` steps."""
    tr = Trainer(TrainConfig(**MNIST, layers=layers, iterations=its, method="serial"))
    every = max(its // count, 1)
    snaps, orig, steps = [], tr.opt.step, [0]

    def rec(theta, closure):
        if len(snaps) < count and steps[0] % every == 0:
            snaps.append(theta.copy())
        steps[0] += 1
        return orig(theta, closure)

    tr.opt.step = rec
    tr.run()
    return tr, snaps


def grad_study(layers: int, count: int, its: int, names) -> list:
    ser, snaps = snapshots(layers, count, its)
    rng = np.random.default_rng(1)
    batches = [ser.data.take("train", np.sort(rng.choice(ser.data.n_train, 50, replace=False)), ser.be.xp)
               for _ in snaps]
    refs = [ser.lp.evaluate(th, x, y, B).grad for th, (x, y, B) in zip(snaps, batches)]
    rows = []
    for name, over in VARIANTS.items():
        if name == "serial" or name not in names:
            continue
        tr = Trainer(TrainConfig(**MNIST, layers=layers, iterations=1, **over))
        errs, work, secs = [], [], []
        for th, (x, y, B), gs in zip(snaps, batches, refs):
            t0 = time.perf_counter()
            g = tr.lp.evaluate(th, x, y, B).grad
            secs.append(time.perf_counter() - t0)
            errs.append(float(np.linalg.norm(g - gs) / np.linalg.norm(gs)))
            work.append(work_over_serial(tr.lp.last_stats, layers, tr.lp.fwd.opts))
        row = {"layers": layers, "variant": name, "overrides": over, "grad_rel_error": errs,
               "median_grad_rel_error": float(np.median(errs)), "work_over_serial": float(np.mean(work)),
               "median_eval_s": float(np.median(secs))}
        print(f"N={layers:3d} {name:22s} grad err median {row['median_grad_rel_error']:.3e} "
              f"work {row['work_over_serial']:.2f}x serial  {1e3 * row['median_eval_s']:.1f} ms/eval", flush=True)
        rows.append(row)
    return rows


def train_study(layers: int, its: int, names) -> list:
    rows = []
    for name, over in VARIANTS.items():
        if name not in names:
            continue
        tr = Trainer(TrainConfig(**MNIST, layers=layers, iterations=its, **over))
        t0 = time.perf_counter()
        tr.run()
        wall = time.perf_counter() - t0
        val = tr.score("val")["accuracy"]
        rows.append({"layers": layers, "variant": name, "overrides": over, "iterations": its,
                     "val_accuracy": val, "wall_s": wall})
        print(f"N={layers:3d} {name:22s} val {val:.4f}  {wall:.1f} s", flush=True)
    return rows


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    grad = [r for r in doc["results"] if "median_grad_rel_error" in r]
    train = [r for r in doc["results"] if "val_accuracy" in r]
    fig, axes = common.subplots(1, 2, figsize=(11, 4))
    for N in sorted({r["layers"] for r in grad}):
        rs = [r for r in grad if r["layers"] == N]
        axes[0].scatter([r["work_over_serial"] for r in rs], [r["median_grad_rel_error"] for r in rs], label=f"N={N}")
        for r in rs:
            axes[0].annotate(r["variant"], (r["work_over_serial"], r["median_grad_rel_error"]), fontsize=7)
    axes[0].set(xlabel="work per evaluation / serial's", ylabel="median gradient error", yscale="log",
                title="one-shot gradient error")
    axes[0].legend()
    for N in sorted({r["layers"] for r in train}):
        rs = [r for r in train if r["layers"] == N]
        axes[1].barh([f"N={N} {r['variant']}" for r in rs], [r["val_accuracy"] for r in rs])
    axes[1].set(xlabel="validation accuracy", title="after training")
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--layers", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--part", choices=("grad", "train", "both"), default="both")
    ap.add_argument("--iterations", type=int, default=300, help="train: Adam steps per run")
    ap.add_argument("--snapshots", type=int, default=8, help="grad: snapshots of the serial trajectory")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args(argv)
    its = 6 if args.quick else args.iterations
    count = 2 if args.quick else args.snapshots
    rows = []
    for N in args.layers:
        if args.part in ("grad", "both"):
            rows += grad_study(N, count, its, args.variants)
        if args.part in ("train", "both"):
            rows += train_study(N, its, args.variants)
    doc = common.document(NAME, {"mnist": MNIST, "variants": VARIANTS, "iterations": its, "snapshots": count,
                                 "layers": args.layers, "part": args.part,
                                 "run_variants": args.variants}, rows)
    common.finish(NAME, doc, args, plot)


if __name__ == "__main__":
    main()
