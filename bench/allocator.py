"""Host allocator: glibc's defaults against gpubraid's (freed memory kept for reuse,
:mod:`gpubraid.runtime.allocator`), side by side in interleaved subprocesses.

    python -m bench.allocator [--quick] [--out DIR] [--no-plot] [--rounds 5]

Two measurements, one BLAS thread per process:

  fill    seconds to allocate and fill a state-sized array (n + 1 layers × micro-batch × 8 float64),
          the way the pipeline and the serial chain allocate states and adjoints every evaluation
  train   ms per objective/gradient evaluation of short training runs (``Trainer``): peaks full batch
          at 64 layers (serial; pipeline, 8 micro-batches, one rank), the mini-batch Adam workload
          (dense, 64 layers, 32 channels, float32) at batch 500 and 5000

"default" runs with ``MALLOC_TRIM_THRESHOLD_=131072`` in the environment: glibc's own default
value, which makes gpubraid leave the allocator alone (a user's tunables are respected).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import common

CHILD = r"""
import json, sys, time
import numpy as np
from gpubraid.runtime.allocator import keep_freed_memory
kind, spec = sys.argv[1], json.loads(sys.argv[2])
if kind == "fill":
    kept = keep_freed_memory()
    shape = tuple(spec["shape"])
    for _ in range(3):
        np.empty(shape).fill(1.0)
    t = time.perf_counter()
    for _ in range(spec["repeats"]):
        a = np.empty(shape)
        a.fill(1.0)
        del a
    print(json.dumps({"kept": kept, "value": (time.perf_counter() - t) / spec["repeats"] * 1e3}))
else:
    from gpubraid.training.config import TrainConfig
    from gpubraid.training.trainer import Trainer
    tr = Trainer(TrainConfig(progress=False, val_every=0, **spec))
    kept = keep_freed_memory()
    tr.run()
    evals = sum(e["n_evals"] for e in tr.result.history)
    print(json.dumps({"kept": kept, "value": tr.result.wall_s / evals * 1e3}))
"""

FILLS = {"micro-batch 625, 33 rows": [33, 625, 8], "batch 5000, 65 rows": [65, 5000, 8]}
TRAINS = {
    "peaks-64 serial": dict(example="peaks", layers=64, method="serial", iterations=8),
    "peaks-64 pipeline M=8": dict(example="peaks", layers=64, method="pipeline", micro_batches=8, iterations=8),
    "adam dense 64x32 f32 B=500": dict(example="peaks", layers=64, channels=32, dtype="float32", optimizer="adam",
                                       lr=0.01, batch_size=500, method="serial", iterations=20),
    "adam dense 64x32 f32 B=5000": dict(example="peaks", layers=64, channels=32, dtype="float32", optimizer="adam",
                                        lr=0.01, batch_size=5000, n_train=5000, method="serial", iterations=8),
}


def child(kind: str, spec: dict, default: bool) -> dict:
    env = common.bench_env()
    if default:
        env["MALLOC_TRIM_THRESHOLD_"] = "131072"
    else:
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps(spec)], capture_output=True, text=True,
                         env=env, cwd=common.REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(path):
    doc = common.load_json(path)
    rows = doc["results"]
    fig, ax = common.subplots(1, 1, figsize=(8, 0.5 * len(rows) + 1.5))
    names = [r["case"] for r in rows]
    ax.barh(names, [r["speedup"] for r in rows])
    ax.axvline(1.0, color="gray", ls=":")
    ax.set(xlabel="glibc default time ÷ freed memory kept (median of interleaved rounds)")
    return common.save_figure(fig, path)


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    rounds = 2 if args.quick else args.rounds
    cases = [("fill", name, {"shape": shape, "repeats": 50 if args.quick else 200}) for name, shape in FILLS.items()]
    trains = {k: {**v, "iterations": 3} for k, v in TRAINS.items()} if args.quick else TRAINS
    cases += [("train", name, spec) for name, spec in trains.items()]
    results = []
    for kind, name, spec in cases:
        times = {"default": [], "kept": []}
        loads = []
        for _ in range(rounds):
            for variant in ("default", "kept"):
                r = child(kind, spec, variant == "default")
                assert r["kept"] == (variant == "kept"), r
                times[variant].append(r["value"])
                loads.append(os.getloadavg()[0])
        med = {k: common.median(v) for k, v in times.items()}
        row = {"case": name, "kind": kind, "unit": "ms per array" if kind == "fill" else "ms per evaluation",
               "default": times["default"], "kept": times["kept"], "median_default": med["default"],
               "median_kept": med["kept"], "speedup": med["default"] / med["kept"], "load": loads}
        results.append(row)
        print(f"{name}: default {med['default']:.3f}, kept {med['kept']:.3f} {row['unit']} "
              f"({row['speedup']:.2f}x), load {min(loads):.1f}-{max(loads):.1f}")
    config = {"rounds": rounds, "fills": FILLS, "trains": trains}
    common.finish("allocator", common.document("allocator", config, results), args, plot)


if __name__ == "__main__":
    main()
