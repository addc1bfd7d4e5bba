"""The dense step's layer sweeps: compiled host loops against NumPy, per layer and per sample.

    python -m bench.sweeps [--quick] [--out DIR] [--no-plot]

One forward sweep (σ' kept) and one backward sweep (adjoints and gradients) through a block of
``n`` layers, as serial training and every pipeline micro-batch run them
(:mod:`gpubraid.network.sweep`), with the host kernels of ``kernels/dense_host.c`` and with them
switched off (the per-layer NumPy calls), interleaved; median of the repeats.  Widths C = 8 (peaks)
and 32 (the mini-batch workload), batches from 1 sample to peaks' full 5000, tanh and smoothrelu,
float64 and float32.  Reported: µs per layer (forward, backward), ns per sample and layer, and
NumPy ÷ host; every case checks that both give the same states, adjoints and gradients (relative
difference).
"""
from __future__ import annotations

import time

import numpy as np

from bench import common  # first: sets BLAS threads before NumPy loads

NAME = "sweeps"


def cases(quick: bool) -> list[tuple[int, int, str, str]]:
    """(C, B, activation, dtype) of every case."""
    if quick:
        return [(8, 64, "tanh", "float64"), (8, 625, "smoothrelu", "float32")]
    out = [(8, B, act, "float64") for act in ("tanh", "smoothrelu") for B in (1, 64, 625, 1250, 5000)]
    out += [(32, B, "tanh", dt) for dt in ("float32", "float64") for B in (1, 50, 625, 5000)]
    return out


def measure(C: int, B: int, act: str, dtype: str, layers: int, repeats: int) -> dict:
    from gpubraid.network.steps import DenseStep
    from gpubraid.network.sweep import backward_sweep, forward_sweep
    from gpubraid.runtime import host
    from gpubraid.runtime.backend import resolve_backend

    step = DenseStep(C, act, resolve_backend("numpy", dtype))
    rng = np.random.default_rng(0)
    K = (rng.standard_normal((layers, C, C)) / np.sqrt(C)).astype(dtype)
    b = (0.1 * rng.standard_normal((layers, C))).astype(dtype)
    h = np.full(layers, 5.0 / 256, dtype)
    u0, lamN = (rng.standard_normal((B, C)).astype(dtype) for _ in range(2))
    lib = host.library()
    times = {"host": ([], []), "numpy": ([], [])}
    results = {}
    for _ in range(repeats):
        for engine in times:
            host.library = (lambda: lib) if engine == "host" else (lambda: None)
            U = np.empty((layers + 1, B, C), dtype)
            U[0] = u0
            Lam = np.empty_like(U)
            Lam[-1] = lamN
            grads = (np.zeros_like(K), np.zeros_like(b))
            t0 = time.perf_counter()
            kept = forward_sweep(step, U, (K, b), h, keep=True)
            t1 = time.perf_counter()
            backward_sweep(step, U, Lam, (K, b), h, grads, kept)
            t2 = time.perf_counter()
            times[engine][0].append(t1 - t0)
            times[engine][1].append(t2 - t1)
            results[engine] = (U, Lam, *grads)
    host.library = lambda: lib
    diff = max(float(np.abs(a.astype(np.float64) - c).max() / max(np.abs(c).max(), 1e-300))
               for a, c in zip(results["host"], results["numpy"]))
    row = {"C": C, "B": B, "activation": act, "dtype": dtype, "layers": layers, "max_rel_diff": diff}
    for engine, (f, bw) in times.items():
        fw_us, bw_us = 1e6 * common.median(f) / layers, 1e6 * common.median(bw) / layers
        row[engine] = {"forward_us_per_layer": fw_us, "backward_us_per_layer": bw_us,
                       "ns_per_sample_layer": 1e3 * (fw_us + bw_us) / B}
    row["numpy_over_host"] = row["numpy"]["ns_per_sample_layer"] / row["host"]["ns_per_sample_layer"]
    return row


def run(quick: bool) -> dict:
    from gpubraid.runtime import host

    if host.library() is None:
        raise SystemExit(f"host kernels unavailable: {host.status()}")
    layers, repeats = (8, 3) if quick else (64, 7)
    rows = [measure(C, B, act, dt, layers, repeats) for C, B, act, dt in cases(quick)]
    return common.document(NAME, {"layers": layers, "repeats": repeats, "host_kernels": host.status()}, rows)


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    fig, ax = common.subplots(figsize=(7, 4))
    groups = {}
    for r in doc["results"]:
        groups.setdefault((r["C"], r["activation"], r["dtype"]), []).append(r)
    for (C, act, dt), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["B"])
        line, = ax.plot([r["B"] for r in rs], [r["host"]["ns_per_sample_layer"] for r in rs], "o-",
                        label=f"host C={C} {act} {dt}")
        ax.plot([r["B"] for r in rs], [r["numpy"]["ns_per_sample_layer"] for r in rs], "x--", color=line.get_color(),
                label=f"numpy C={C} {act} {dt}")
    ax.set(xscale="log", yscale="log", xlabel="samples per call (B)", ylabel="ns per sample and layer (fwd + bwd)",
           title="dense layer sweeps: host kernels (o) vs NumPy (x)")
    ax.legend(fontsize=6)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.finish(NAME, run(args.quick), args, plot)


if __name__ == "__main__":
    main()
