"""The dense step's layer sweeps on a GPU: one kernel launch per sweep against launches per layer, and PyTorch.

    python -m bench.gpu_sweeps [--quick] [--out DIR] [--no-plot] [--rounds R]

One forward sweep (σ' kept) and one backward sweep (adjoints and gradients) through n layers of the
dense step on CuPy, as serial training and every pipeline micro-batch run them
(:mod:`gpubraid.network.sweep`): with the block kernels of ``kernels/dense.cu``
(``dense_sweep_forward_kernel`` / ``dense_sweep_backward_kernel``: one launch each way, then one
batched GEMM and one bias-sum launch for the gradients) and with the per-layer launchers (a cuBLAS
GEMM and the fused epilogue per layer and direction), interleaved; and the same network in plain
PyTorch on the GPU (u ← u + h·tanh(u Kᵀ + b) layer by layer, autograd backward) when torch sees
the GPU.  Synchronised wall time, median over ``--rounds``.  Widths 8 and 32, batches 625 and 5000,
64 and 256 layers, float64 and float32, tanh.  Every case reports how far the block sweeps are from
the per-layer ones (relative difference of states, adjoints and gradients).  Needs CuPy and a CUDA
GPU; exits 1 with one line otherwise.
"""
from __future__ import annotations

import sys

import numpy as np

from bench import common  # first: sets BLAS threads before NumPy loads

NAME = "gpu_sweeps"


def cases(quick: bool) -> list[tuple[int, int, int, str]]:
    """(C, B, n, dtype) of every case."""
    if quick:
        return [(8, 625, 64, "float64")]
    return [(C, B, n, dt) for dt in ("float64", "float32") for C in (8, 32) for B in (625, 5000) for n in (64, 256)]


def _torch_sweep(C, B, n, dtype):
    """A callable running forward and backward of the same network in PyTorch on the GPU, or None."""
    try:
        import torch
    except Exception:
        return None
    if not torch.cuda.is_available():
        return None
    tdt = torch.float64 if dtype == "float64" else torch.float32
    g = torch.Generator(device="cuda").manual_seed(0)
    K = (torch.randn(n, C, C, generator=g, device="cuda", dtype=tdt) / C ** 0.5).requires_grad_(True)
    b = (0.1 * torch.randn(n, C, generator=g, device="cuda", dtype=tdt)).requires_grad_(True)
    u0, lam = (torch.randn(B, C, generator=g, device="cuda", dtype=tdt) for _ in range(2))
    h = 5.0 / n

    def run():
        K.grad = b.grad = None
        u = u0
        for i in range(n):
            u = u + h * torch.tanh(u @ K[i].T + b[i])
        u.backward(lam)
        torch.cuda.synchronize()

    return run


def measure(C: int, B: int, n: int, dtype: str, rounds: int) -> dict:
    import cupy as cp

    from gpubraid.network.steps import DenseStep
    from gpubraid.network.sweep import backward_sweep, forward_sweep
    from gpubraid.runtime.backend import Backend

    be = Backend("cupy", cp, np.dtype(dtype), cp.cuda.Device().id)
    block = DenseStep(C, "tanh", be)
    per_layer = DenseStep(C, "tanh", be)
    per_layer.forward_block = per_layer.backward_block = None  # the sweeps then call the step per layer
    rng = np.random.default_rng(0)
    K = cp.asarray(rng.standard_normal((n, C, C)) / np.sqrt(C), dtype=dtype)
    b = cp.asarray(0.1 * rng.standard_normal((n, C)), dtype=dtype)
    h = cp.full(n, 5.0 / n, dtype=dtype)
    u0, lam_n = (cp.asarray(rng.standard_normal((B, C)), dtype=dtype) for _ in range(2))

    def sweep(step):
        U = cp.empty((n + 1, B, C), dtype=dtype)
        U[0] = u0
        Lam = cp.empty_like(U)
        Lam[-1] = lam_n
        grads = (cp.zeros_like(K), cp.zeros_like(b))
        backward_sweep(step, U, Lam, (K, b), h, grads, forward_sweep(step, U, (K, b), h, keep=True))
        cp.cuda.get_current_stream().synchronize()
        return U, Lam, *grads

    ours, theirs = sweep(block), sweep(per_layer)  # also the warm-up (NVRTC compiles on first use)
    diff = max(float(cp.abs(x - y).max() / max(float(cp.abs(y).max()), 1e-300)) for x, y in zip(ours, theirs))
    torch_run = _torch_sweep(C, B, n, dtype)
    runs = {"block": lambda: sweep(block), "per_layer": lambda: sweep(per_layer)}
    if torch_run is not None:
        torch_run()
        runs["torch"] = torch_run
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            times[k].append(common.time_it(fn, repeats=1, warmup=0)["median_s"])
    ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    row = {"C": C, "B": B, "layers": n, "dtype": dtype, "rel_diff": diff,
           **{f"{k}_ms": v for k, v in ms.items()}, "per_layer_over_block": ms["per_layer"] / ms["block"]}
    if "torch" in ms:
        row["torch_over_block"] = ms["torch"] / ms["block"]
    print(f"  C={C:2d} B={B:4d} n={n:3d} {dtype}: block {ms['block']:.3f} ms, per layer {ms['per_layer']:.3f} ms"
          + (f", torch {ms['torch']:.3f} ms" if "torch" in ms else "") + f"; rel. diff {diff:.1e}", flush=True)
    return row


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    rows = doc["results"]
    fig, ax = common.subplots(1, 1, figsize=(11, 4.5))
    labels = [f"C{r['C']} B{r['B']} n{r['layers']} {r['dtype'][-2:]}" for r in rows]
    x = np.arange(len(rows))
    for k, (key, name) in enumerate((("block_ms", "gpubraid, one launch"), ("per_layer_ms", "gpubraid, per layer"),
                                     ("torch_ms", "PyTorch"))):
        if any(key in r for r in rows):
            ax.bar(x + 0.27 * (k - 1), [r.get(key, 0.0) for r in rows], 0.27, label=name)
    ax.set_xticks(x, labels, rotation=60, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms per forward + backward sweep")
    ax.set_title(f"dense layer sweeps on {doc['machine'].get('device')}, {doc['date'][:10]}", fontsize=9)
    ax.legend(fontsize=8)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds per case (median)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    from gpubraid.runtime.backend import gpu_available

    if not gpu_available():
        print("bench.gpu_sweeps: needs CuPy and a CUDA GPU", file=sys.stderr)
        return 1
    rows = [measure(*case, 1 if args.quick else args.rounds) for case in cases(args.quick)]
    common.finish(NAME, common.document(NAME, {"quick": args.quick, "rounds": args.rounds, "activation": "tanh"},
                                        rows), args, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
