"""Host allocator: glibc's defaults against gpubraid's (freed memory kept for reuse,
:mod:`gpubraid.runtime.allocator`), side by side in interleaved subprocesses.

    python -m bench.allocator [--quick] [--out DIR] [--no-plot] [--rounds 5] [--cases NAME,...]

Two measurements, one BLAS thread per process:

  fill    seconds to allocate and fill a state-sized array (n + 1 layers × micro-batch × 8 float64),
          the way the pipeline and the serial chain allocate states and adjoints every evaluation
  train   ms per objective/gradient evaluation of short training runs (``Trainer``): peaks full batch
          at 64 layers (serial; pipeline, 8 micro-batches, one rank), the mini-batch Adam workload
          (dense, 64 layers, 32 channels, float32) at batch 500 and 5000

Three variants:

  default    ``MALLOC_TRIM_THRESHOLD_=131072`` in the environment: glibc's own default value, which
             makes gpubraid leave the allocator alone (a user's tunables are respected)
  threshold  glibc told by the environment what gpubraid set before it also turned mappings off:
             mmap threshold 32 MiB, trim threshold 1 GiB (blocks above 32 MiB still fresh mappings)
  kept       gpubraid's setting: those thresholds and no mappings (every freed block reused)
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

FILLS = {"micro-batch 625 x 33 rows": [33, 625, 8], "batch 5000 x 65 rows": [65, 5000, 8],
         "batch 5000 x 257 rows (82 MB)": [257, 5000, 8]}
TRAINS = {
    "peaks-64 serial": dict(example="peaks", layers=64, method="serial", iterations=8),
    "peaks-64 pipeline M=8": dict(example="peaks", layers=64, method="pipeline", micro_batches=8, iterations=8),
    "adam dense 64x32 f32 B=500": dict(example="peaks", layers=64, channels=32, dtype="float32", optimizer="adam",
                                       lr=0.01, batch_size=500, method="serial", iterations=20),
    "adam dense 64x32 f32 B=5000": dict(example="peaks", layers=64, channels=32, dtype="float32", optimizer="adam",
                                        lr=0.01, batch_size=5000, n_train=5000, method="serial", iterations=8),
    "peaks-256 serial": dict(example="peaks", layers=256, method="serial", iterations=8),
    "paper-256 oneshot 2 levels": dict(example="peaks", layers=256, final_time=1.0, activation="smoothrelu",
                                       method="oneshot", monitor_every=0, iterations=6),
}
VARIANTS = {"default": {"MALLOC_TRIM_THRESHOLD_": "131072"},
            "threshold": {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"},
            "kept": {}}


def child(kind: str, spec: dict, variant: str) -> dict:
    env = {k: v for k, v in common.bench_env().items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env.update(VARIANTS[variant])
    out = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps(spec)], capture_output=True, text=True,
                         env=env, cwd=common.REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(path):
    doc = common.load_json(path)
    rows = doc["results"]
    fig, ax = common.subplots(1, 1, figsize=(8, 0.6 * len(rows) + 1.5))
    y = list(range(len(rows)))
    ax.barh([k + 0.2 for k in y], [r["speedup"] for r in rows], height=0.4, label="over glibc's default")
    ax.barh([k - 0.2 for k in y], [r.get("speedup_over_threshold", float("nan")) for r in rows], height=0.4,
            label="over thresholds alone (mappings above 32 MiB)")
    ax.set_yticks(y, [r["case"] for r in rows])
    ax.axvline(1.0, color="gray", ls=":")
    ax.set(xlabel="time ÷ gpubraid's setting's time (median of interleaved rounds)")
    ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cases", default=None, help="comma-separated subset of the case names")
    args = p.parse_args()
    rounds = 2 if args.quick else args.rounds
    cases = [("fill", name, {"shape": shape, "repeats": 50 if args.quick else 200}) for name, shape in FILLS.items()]
    trains = {k: {**v, "iterations": 3} for k, v in TRAINS.items()} if args.quick else TRAINS
    cases += [("train", name, spec) for name, spec in trains.items()]
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {name for _, name, _ in cases}
        if unknown:
            raise SystemExit(f"bench.allocator: --cases: unknown {sorted(unknown)}")
        cases = [c for c in cases if c[1] in wanted]
    results = []
    for kind, name, spec in cases:
        times = {v: [] for v in VARIANTS}
        loads = []
        for _ in range(rounds):
            for variant in VARIANTS:
                r = child(kind, spec, variant)
                assert r["kept"] == (variant == "kept"), r
                times[variant].append(r["value"])
                loads.append(os.getloadavg()[0])
        med = {k: common.median(v) for k, v in times.items()}
        row = {"case": name, "kind": kind, "unit": "ms per array" if kind == "fill" else "ms per evaluation",
               **times, **{f"median_{k}": v for k, v in med.items()},
               "speedup": med["default"] / med["kept"], "speedup_over_threshold": med["threshold"] / med["kept"],
               "load": loads}
        results.append(row)
        print(f"{name}: default {med['default']:.3f}, threshold {med['threshold']:.3f}, kept {med['kept']:.3f} "
              f"{row['unit']} ({row['speedup']:.2f}x default, {row['speedup_over_threshold']:.2f}x threshold), "
              f"load {min(loads):.1f}-{max(loads):.1f}")
    config = {"rounds": rounds, "fills": FILLS, "trains": trains, "variants": VARIANTS}
    common.finish("allocator", common.document("allocator", config, results), args, plot)


if __name__ == "__main__":
    main()
