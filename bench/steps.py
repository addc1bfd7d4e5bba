"""Step-kernel benchmark: forward / adjoint / param_grad of the dense and conv residual steps.

    python -m bench.steps [--quick] [--out DIR] [--train-only | --kernels-only] [--rounds R]

With torch importable it also times one serial optimisation step of gpubraid against the same
network in plain PyTorch (both Adams, batch 50/500/5000 dense and the MNIST conv example, float32
and float64; :mod:`bench.steps_train`); those rows are the document's ``train`` list.

Backends: NumPy always; CuPy (gpubraid's fused CUDA kernels) when a GPU is visible; PyTorch's
conv2d + bias + activation + add (dense: bmm + bias + activation + add) for the same step when
torch imports (skipped cleanly otherwise).  Per case: median wall time over repeats (after a
warmup), achieved GB/s under a minimal-traffic byte model, GFLOP/s, and % of HBM peak on a GPU.

Minimal-traffic byte model (itemsize s, L intervals, B samples, S = state size per sample,
p = parameters per layer = |K| + C):
    forward     s·(2·L·B·S + L·p)       read u and θ, write u_next
    adjoint     s·(3·L·B·S + L·p)       read u, λ and θ, write λ_prev
    param_grad  s·(2·L·B·S + 2·L·p)     read u, λ and θ, write ∂θ
FLOPs (multiply-add = 2): forward 2·L·B·C·S_in-per-output (dense 2LBC², conv 2LBC²·9·H·W);
adjoint twice that (K u for σ'(z), Kᵀ a), param_grad twice that (K u, a ⋆ u).
"""
from __future__ import annotations

import numpy as np  # noqa: E402

from bench import (
    common,  # first: sets BLAS threads before NumPy loads
    steps_train,  # noqa: E402
)
from gpubraid.network.steps import ConvStep, DenseStep  # noqa: E402
from gpubraid.runtime.backend import gpu_available, resolve_backend  # noqa: E402

NAME = "steps"
HBM_PEAK_GBS = {"H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H100": 3350.0,
                "H200": 4800.0, "A100-SXM4-80GB": 2039.0, "A100-SXM4-40GB": 1555.0,
                "A100-PCIE-40GB": 1555.0, "A100": 1555.0, "L40S": 864.0, "V100": 900.0}


def hbm_peak(name: str | None):
    if not name:
        return None
    for key in sorted(HBM_PEAK_GBS, key=len, reverse=True):
        if key.replace("-", " ").lower() in name.replace("-", " ").lower():
            return HBM_PEAK_GBS[key]
    return None


def cases(quick: bool):
    if quick:
        return [dict(kind="dense", C=8, HW=None, B=64, L=1), dict(kind="dense", C=32, HW=None, B=256, L=4),
                dict(kind="conv", C=4, HW=28, B=64, L=1)]
    out = []
    for C in (4, 8, 16, 32):
        for B in (64, 1024):
            for L in (1, 16, 64):
                out.append(dict(kind="dense", C=C, HW=None, B=B, L=L))
    for C in (4, 8, 16, 32):
        for HW in (28, 32):
            Ls = (1, 4) if C <= 8 else (1,)
            for L in Ls:
                out.append(dict(kind="conv", C=C, HW=HW, B=64, L=L))
    return out


def model(case, itemsize):
    C, B, L = case["C"], case["B"], case["L"]
    if case["kind"] == "dense":
        S, kp, flop1 = C, C * C, 2 * B * C * C
    else:
        HW = case["HW"]
        S, kp, flop1 = C * HW * HW, C * C * 9, 2 * B * C * C * 9 * HW * HW
    p = kp + C
    return {"bytes": {"forward": itemsize * (2 * L * B * S + L * p),
                      "adjoint": itemsize * (3 * L * B * S + L * p),
                      "param_grad": itemsize * (2 * L * B * S + 2 * L * p)},
            "flops": {"forward": L * flop1, "adjoint": 2 * L * flop1, "param_grad": 2 * L * flop1}}


def make_step(case, be):
    if case["kind"] == "dense":
        return DenseStep(case["C"], "tanh", be)
    return ConvStep(case["C"], case["HW"], case["HW"], "tanh", be)


def inputs(case, step, xp, dtype, seed=0):
    rng = np.random.default_rng(seed)
    L, B = case["L"], case["B"]
    u = rng.standard_normal((L, B, *step.state_shape))
    lam = rng.standard_normal((L, B, *step.state_shape))
    K = rng.standard_normal((L, *step.param_shapes[0])) / np.sqrt(np.prod(step.param_shapes[0][1:]))
    b = 0.1 * rng.standard_normal((L, *step.param_shapes[1]))
    h = np.full(L, 0.1)
    return tuple(xp.asarray(a, dtype=dtype) for a in (u, lam, K, b, h))


def torch_funcs(case, dtype_name):
    """PyTorch versions of forward/adjoint/param_grad (autograd for the latter two), or None."""
    try:
        import torch
        import torch.nn.functional as F
    except Exception:
        return None
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tdt = torch.float64 if dtype_name == "float64" else torch.float32
    conv = case["kind"] == "conv"

    def fwd_one(u, K, b, h):
        z = F.conv2d(u, K, b, padding=1) if conv else u @ K.T + b
        return u + h * torch.tanh(z)

    def prepare(u, lam, K, b, h):
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=tdt, device=dev)  # noqa: E731
        return t(u), t(lam), t(K), t(b), [float(x) for x in np.asarray(h)]

    def forward(T):
        u, _, K, b, h = T
        with torch.no_grad():
            return [fwd_one(u[i], K[i], b[i], h[i]) for i in range(u.shape[0])]

    def adjoint(T):
        u, lam, K, b, h = T
        out = []
        for i in range(u.shape[0]):
            ui = u[i].detach().requires_grad_(True)
            out.append(torch.autograd.grad(fwd_one(ui, K[i], b[i], h[i]), ui, lam[i])[0])
        return out

    def param_grad(T):
        u, lam, K, b, h = T
        out = []
        for i in range(u.shape[0]):
            Ki, bi = K[i].detach().requires_grad_(True), b[i].detach().requires_grad_(True)
            out.append(torch.autograd.grad(fwd_one(u[i], Ki, bi, h[i]), (Ki, bi), lam[i]))
        return out

    sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)
    return {"prepare": prepare, "forward": forward, "adjoint": adjoint, "param_grad": param_grad,
            "sync": sync, "device": dev, "version": torch.__version__}


def run(quick: bool, kernels: bool = True, train: bool = True, rounds: int = 3) -> dict:
    dtype = "float64"
    backends = [("numpy", resolve_backend("numpy", dtype))]
    if gpu_available():
        backends.append(("cupy", resolve_backend("cupy", dtype)))
    peak = hbm_peak(common.gpu_name())
    repeats = 3 if quick else 5
    min_time = 0.005 if quick else 0.02
    rows, torch_status = [], "not importable: skipped"
    for case in (cases(quick) if kernels else []):
        mdl = model(case, 8)
        for bname, be in backends:
            step = make_step(case, be)
            u, lam, K, b, h = inputs(case, step, be.xp, be.dtype)
            sync = common.sync_of(be.xp)
            fns = {"forward": lambda: step.forward(u, (K, b), h),
                   "adjoint": lambda: step.adjoint(u, lam, (K, b), h),
                   "param_grad": lambda: step.param_grad(u, lam, (K, b), h)}
            for op, fn in fns.items():
                t = common.time_it(fn, repeats=repeats, warmup=1, sync=sync, min_time=min_time)
                gbs = mdl["bytes"][op] / t["median_s"] / 1e9
                rows.append({**case, "backend": bname, "op": op, "median_s": t["median_s"],
                             "min_s": t["min_s"], "max_s": t["max_s"], "bytes": mdl["bytes"][op],
                             "flops": mdl["flops"][op], "GBs": gbs,
                             "GFLOPs": mdl["flops"][op] / t["median_s"] / 1e9,
                             "pct_hbm_peak": (100 * gbs / peak) if (bname == "cupy" and peak) else None,
                             "s_per_interval": t["median_s"] / case["L"]})
        tf = torch_funcs(case, dtype)
        if tf is not None:
            torch_status = f"torch {tf['version']} on {tf['device']}"
            T = tf["prepare"](*inputs(case, make_step(case, backends[0][1]), np, np.float64))
            for op in ("forward", "adjoint", "param_grad"):
                t = common.time_it(lambda: tf[op](T), repeats=repeats, warmup=1, sync=tf["sync"],
                                   min_time=min_time)
                gbs = mdl["bytes"][op] / t["median_s"] / 1e9
                rows.append({**case, "backend": "torch-" + tf["device"], "op": op, "median_s": t["median_s"],
                             "min_s": t["min_s"], "max_s": t["max_s"], "bytes": mdl["bytes"][op],
                             "flops": mdl["flops"][op], "GBs": gbs,
                             "GFLOPs": mdl["flops"][op] / t["median_s"] / 1e9,
                             "pct_hbm_peak": (100 * gbs / peak) if (tf["device"] == "cuda" and peak) else None,
                             "s_per_interval": t["median_s"] / case["L"]})
    config = {"quick": quick, "dtype": dtype, "activation": "tanh", "repeats": repeats,
              "min_time_per_sample_s": min_time, "backends": [b for b, _ in backends],
              "torch": torch_status, "hbm_peak_GBs": peak,
              "byte_model": "forward s(2LBS+Lp); adjoint s(3LBS+Lp); param_grad s(2LBS+2Lp); s=8 (float64)",
              "blas_threads": 1}
    train_rows, train_status = steps_train.run_train(quick, rounds) if train else ([], "not run")
    config["train"] = train_status
    return common.document(NAME, config, rows, train=train_rows)


def plot(json_path, png_path=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    doc = common.load_json(json_path)
    rows = doc["results"]
    if not rows:
        return steps_train.plot(doc, json_path, png_path)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("dense", "conv")):
        sel = [r for r in rows if r["kind"] == kind]
        for backend in sorted({r["backend"] for r in sel}):
            for op, mk in (("forward", "o"), ("adjoint", "s"), ("param_grad", "^")):
                pts = sorted((r["bytes"], r["GBs"]) for r in sel if r["backend"] == backend and r["op"] == op)
                if pts:
                    ax.loglog(*zip(*pts), mk, label=f"{backend} {op}", alpha=0.7)
        ax.set_xlabel("bytes moved per call (minimal-traffic model)")
        ax.set_ylabel("achieved GB/s")
        ax.set_title(f"{kind} step kernels ({doc['machine']['device']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"gpubraid steps — {doc['machine']['cpu_model']}, {doc['date'][:10]}", fontsize=9)
    return common.save_figure(fig, json_path, png_path, dpi=110)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--train-only", action="store_true", help="only the serial step against PyTorch")
    g.add_argument("--kernels-only", action="store_true", help="only the step kernels")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the serial-step comparison")
    args = p.parse_args(argv)
    doc = run(args.quick, kernels=not args.train_only, train=not args.kernels_only, rounds=args.rounds)
    common.finish(NAME, doc, args, plot)


if __name__ == "__main__":
    main()
