"""Training time-to-accuracy: layer-serial vs exact vs one-shot MGRIT training, one process.

    python -m bench.training [--quick] [--out DIR]

Runs (float64, one process, one BLAS thread; NumPy, or CuPy on a GPU):
  peaks       TrainConfig(example="peaks") defaults (dense, 32 layers, 8 channels, T = 5, tanh,
              L-BFGS full batch, 5000 samples) but 40 iterations (quick: 3); cfactor etc. as TrainConfig has them at run time (recorded)
  peaks-deep  the same with 256 layers (deep narrow), serial and oneshot only, 8 iterations
              (skipped in quick mode)
  paper-256   the paper's settings (T = 1, smoothrelu) at 256 layers, serial and oneshot, 20
              iterations (skipped in quick mode): one-shot keeps two levels there
  mnist       TrainConfig(example="mnist") defaults (conv, 16 layers, 8 channels, Adam, batch 50)
              on the bundled subset with n_train 1000, n_val 500, 10 iterations (quick: 2)
Each run writes ``training-<example>-<method>-<host>-<date>.json`` (TrainResult.metrics() plus
machine/versions); the summary ``training-<host>-<date>.json`` holds wall seconds per iteration
and per objective/gradient evaluation side by side, and the serial/oneshot ratio.  ``s_per_iteration`` is loop wall time / iterations and includes the
validation passes (val_every; for exact and oneshot those are converged MGRIT forward solves);
``median_step_s`` is the median iteration without a validation pass (the fairer comparison).  Methods of one
example run back to back; the machine is shared, so the ratios carry the noise of that.
An optional PyTorch baseline (same network, ordinary backprop, the same optimiser) runs when torch
imports, on the GPU when gpubraid runs on one (``GPUBRAID_BACKEND=cupy`` or a visible GPU), else on the CPU.
On a GPU every method and the baseline first run one untimed iteration: the kernels' first-call
compilation (NVRTC, about 10 s on the H200 machine before CuPy's disk cache holds them) stays out of
the numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np  # noqa: E402

from bench import common
from gpubraid.runtime.backend import resolve_backend
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer  # noqa: E402

NAME = "training"


def runs(quick: bool, full: bool = False):
    if full:
        # the accuracy comparison of the methods at full length (peaks: 200
        # L-BFGS iterations; MNIST: 200 Adam steps = 2.5 epochs of the 4000-sample subset).  Exact
        # follows the serial trajectory (tests/training/test_methods.py), so it is timed in the default run only.
        return [("peaks-full", dict(example="peaks", iterations=200, val_every=20), ("serial", "oneshot")),
                ("mnist-full", dict(example="mnist", iterations=200, val_every=50), ("serial", "oneshot"))]
    if quick:
        return [("peaks", dict(example="peaks", iterations=3, val_every=1, n_train=500, n_val=200),
                 ("serial", "exact", "oneshot")),
                ("mnist", dict(example="mnist", iterations=2, val_every=1, n_train=100, n_val=50),
                 ("serial", "oneshot"))]
    return [("peaks", dict(example="peaks", iterations=40, val_every=5), ("serial", "exact", "oneshot")),
            ("peaks-deep", dict(example="peaks", layers=256, iterations=8, val_every=4), ("serial", "oneshot")),
            ("paper-256", dict(example="peaks", layers=256, final_time=1.0, activation="smoothrelu", iterations=20,
                               val_every=10), ("serial", "oneshot")),
            ("mnist", dict(example="mnist", iterations=10, val_every=5, n_train=1000, n_val=500),
             ("serial", "exact", "oneshot"))]


def torch_baseline(cfg_kwargs, device: str = "cpu"):
    """The same network trained by ordinary backprop in PyTorch (float64, same optimiser settings:
    L-BFGS full batch with a strong-Wolfe line search, or Adam on the same batch size) on ``device``
    ("cpu" or "cuda"), or None without torch (or without CUDA in torch when ``device`` is "cuda").
    The objective is the cross-entropy without gpubraid's regularisers."""
    try:
        import torch
    except Exception:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    import time

    from gpubraid.data.dataset import batches
    from gpubraid.data.examples import load_dataset
    cfg = TrainConfig(**cfg_kwargs, progress=False).resolved()
    ds = load_dataset(cfg.example, seed=cfg.seed, n_train=cfg.n_train, n_val=cfg.n_val)
    torch.manual_seed(cfg.seed)
    f64 = torch.float64
    dev = torch.device(device)
    x, y = torch.as_tensor(ds.x_train, dtype=f64, device=dev), torch.as_tensor(ds.y_train, device=dev)
    xv, yv = torch.as_tensor(ds.x_val, dtype=f64, device=dev), torch.as_tensor(ds.y_val, device=dev)
    C, N, h = cfg.channels, cfg.layers, cfg.final_time / cfg.layers
    act = _torch_activation(torch, cfg.activation)
    conv = ds.kind == "conv"
    kw = dict(dtype=f64, device=dev)
    mk = (lambda: torch.nn.Conv2d(C, C, 3, padding=1, **kw)) if conv else (lambda: torch.nn.Linear(C, C, **kw))
    opening = (torch.nn.Conv2d(ds.in_shape[0], C, 3, padding=1, **kw) if conv
               else torch.nn.Linear(ds.in_shape[0], C, **kw))
    layers = torch.nn.ModuleList([mk() for _ in range(N)])
    state = C * (ds.in_shape[1] * ds.in_shape[2] if conv else 1)
    classifier = torch.nn.Linear(state, ds.n_classes, **kw)
    params = [*opening.parameters(), *layers.parameters(), *classifier.parameters()]
    net = lambda xb: classifier(_res(act(opening(xb)), layers, act, h).flatten(1))  # noqa: E731
    lbfgs = cfg.optimizer == "lbfgs"
    opt = (torch.optim.LBFGS(params, lr=1.0, max_iter=1, history_size=cfg.memory, line_search_fn="strong_wolfe")
           if lbfgs else torch.optim.Adam(params, lr=cfg.lr))
    rng = np.random.default_rng([cfg.seed, 7])
    it_batches = None
    hist, t0 = [], time.perf_counter()
    for it in range(cfg.iterations):
        if lbfgs or not cfg.batch_size:
            xb, yb = x, y
        else:
            idx = next(it_batches, None) if it_batches is not None else None
            if idx is None:
                it_batches = batches(len(x), cfg.batch_size, rng)
                idx = next(it_batches)
            xb, yb = x[idx], y[idx]

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            return loss

        loss = opt.step(closure)
        hist.append({"iter": it, "objective": float(loss.detach()), "time_s": time.perf_counter() - t0})
    wall = time.perf_counter() - t0
    with torch.no_grad():
        val = float((net(xv).argmax(1) == yv).double().mean())
        train = float((net(x).argmax(1) == y).double().mean())
    return {"method": "torch-backprop", "wall_s": wall, "s_per_iteration": wall / cfg.iterations,
            "val_accuracy": val, "train_accuracy": train, "history": hist, "torch": torch.__version__,
            "optimizer": cfg.optimizer, "iterations": cfg.iterations, "device": device}


def _torch_activation(torch, name: str):
    """gpubraid's activation ``name`` (:mod:`gpubraid.network.activations`) on torch tensors."""
    from gpubraid.network.activations import SMOOTH_EPS as e
    acts = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda z: z,
            "smoothrelu": lambda z: torch.where(z <= -e, 0.0, torch.where(z >= e, z, (z + e) ** 2 / (4 * e)))}
    if name not in acts:
        raise ValueError(f"no torch baseline for activation {name!r}; it has {sorted(acts)}")
    return acts[name]


def _res(u, layers, act, h):
    for lay in layers:
        u = u + h * act(lay(u))
    return u


def step_seconds(history) -> float | None:
    """Median wall seconds of one optimisation iteration without validation passes: differences of
    consecutive ``time_s`` (taken before an iteration's own validation) whose earlier entry did not
    validate."""
    import statistics
    d = [b["time_s"] - a["time_s"] for a, b in zip(history, history[1:]) if "val_accuracy" not in a]
    return statistics.median(d) if d else None


def ratios_of(summary) -> dict:
    ratios = {}
    for tag in sorted({r["run"] for r in summary}):
        rows = {r["method"]: r for r in summary if r["run"] == tag and not r.get("skipped")}
        if "serial" in rows and "oneshot" in rows:
            ser = rows["serial"]
            ratios[tag] = {"oneshot_over_serial_per_iteration": rows["oneshot"]["s_per_iteration"] / ser["s_per_iteration"],
                           "oneshot_over_serial_per_eval": rows["oneshot"]["s_per_eval"] / ser["s_per_eval"]}
            if rows["oneshot"].get("median_step_s") and ser.get("median_step_s"):
                ratios[tag]["oneshot_over_serial_median_step_no_validation"] = \
                    rows["oneshot"]["median_step_s"] / ser["median_step_s"]
            if "exact" in rows:
                ratios[tag]["exact_over_serial_per_eval"] = rows["exact"]["s_per_eval"] / ser["s_per_eval"]
                if rows["exact"].get("median_step_s") and ser.get("median_step_s"):
                    ratios[tag]["exact_over_serial_median_step_no_validation"] = \
                        rows["exact"]["median_step_s"] / ser["median_step_s"]
    return ratios


def run(quick: bool, out_dir, full: bool = False) -> dict:
    summary, files = [], []
    backend = resolve_backend(None)
    device = "cuda" if backend.is_gpu else "cpu"
    for tag, kw, methods in runs(quick, full):
        for method in methods:
            cfg = TrainConfig(**kw, method=method, progress=False)
            if backend.is_gpu:  # first-call compilation outside the timing
                Trainer(TrainConfig(**{**kw, "iterations": 1, "val_every": 1}, method=method, progress=False)).run()
            res = Trainer(cfg).run()
            m = res.metrics()
            doc = common.document(NAME, {"run": tag, "method": method, **kw}, m)
            path = common.result_path(f"{NAME}-{tag}-{method}", out_dir)
            common.write_json(path, doc)
            files.append(path.name)
            n_iter = max(m["iterations"], 1)
            n_evals = sum(e.get("n_evals", 1) for e in m["history"])
            # time_s excludes the validation passes taken inside the loop only approximately:
            # the per-iteration figure uses the loop wall time (validation included, same for all)
            row = {"run": tag, "method": method, "layers": m["layers"], "iterations": m["iterations"],
                   "wall_s": m["wall_s"], "s_per_iteration": m["wall_s"] / n_iter,
                   "objective_gradient_evals": n_evals, "s_per_eval": m["wall_s"] / max(n_evals, 1),
                   "median_step_s": step_seconds(m["history"]),
                   "objective": m["objective"], "train_accuracy": m["train_accuracy"],
                   "val_accuracy": m["val_accuracy"], "stopped": m["stopped"], "file": path.name}
            summary.append(row)
            print(f"{tag:10s} {method:8s} {row['s_per_iteration']:.3f} s/it  {row['s_per_eval']:.3f} s/eval  "
                  f"obj {row['objective']:.4f} val {row['val_accuracy']:.3f}", flush=True)
        if device == "cuda":
            torch_baseline({**kw, "iterations": 1}, device)
        tb = torch_baseline(kw, device)
        summary.append({"run": tag, "method": "torch-backprop", "skipped": tb is None,
                        "reason": "torch not importable" if tb is None else None,
                        **({} if tb is None else {k: v for k, v in tb.items() if k != "history"})})
        if tb is not None:
            print(f"{tag:10s} torch    {tb['s_per_iteration']:.3f} s/it  val {tb['val_accuracy']:.3f} ({device})",
                  flush=True)
    ratios = ratios_of(summary)
    return common.document(NAME, {"quick": quick, "full": full, "runs": [(t, kw, list(m)) for t, kw, m in runs(quick, full)],
                                  "processes": 1, "backend": backend.name, "torch_device": device,
                                  "dtype": "float64"},
                           {"summary": summary, "ratios": ratios, "files": files})


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    d = Path(json_path).parent
    tags = sorted({r["run"] for r in doc["results"]["summary"]})
    fig, axes = common.subplots(len(tags), 3, figsize=(15, 3.8 * len(tags)), squeeze=False)
    for i, tag in enumerate(tags):
        for r in doc["results"]["summary"]:
            if r["run"] != tag or "file" not in r:  # torch rows carry no gpubraid run file
                continue
            run = common.load_json(d / r["file"])["results"]
            H = run["history"]
            it = [e["iter"] for e in H]
            ts = [e["time_s"] for e in H]
            axes[i, 0].semilogy(it, [e["objective"] for e in H], label=r["method"])
            axes[i, 1].semilogy(ts, [e["objective"] for e in H], label=r["method"])
            V = [(e["time_s"], e["val_accuracy"]) for e in H if "val_accuracy" in e]
            if V:
                axes[i, 2].plot(*zip(*V), "o-", label=r["method"])
        axes[i, 0].set_xlabel("optimisation iteration"); axes[i, 0].set_ylabel(f"{tag}: objective")
        axes[i, 1].set_xlabel("wall time [s]"); axes[i, 1].set_ylabel("objective")
        axes[i, 2].set_xlabel("wall time [s]"); axes[i, 2].set_ylabel("validation accuracy")
        for ax in axes[i]:
            ax.grid(True, alpha=0.3); ax.legend(fontsize=7)
    fig.suptitle(f"gpubraid training, one process — {doc['machine']['cpu_model']}, {doc['date'][:10]}", fontsize=9)
    return common.save_figure(fig, json_path, png_path, dpi=100)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true",
                   help="peaks and MNIST serial vs oneshot at full length (about 25 min here)")
    p.add_argument("--torch-only", action="store_true",
                   help="only the PyTorch backprop baselines of the selected runs (needs torch)")
    args = p.parse_args(argv)
    if args.torch_only:
        rows = [{"run": tag, **(torch_baseline(kw) or {"skipped": True})} for tag, kw, _ in runs(args.quick, args.full)]
        for r in rows:
            print(r["run"], {k: v for k, v in r.items() if k not in ("history", "run")})
        doc = common.document(NAME + "-torch", {"quick": args.quick, "full": args.full}, {"summary": rows})
        print(common.write_json(common.result_path(NAME + "-torch" + ("-full" if args.full else ""), args.out), doc))
        return
    doc = run(args.quick, args.out, args.full)
    path = common.write_json(common.result_path(NAME + ("-full" if args.full else ""), args.out), doc)
    print(path)
    print(doc["results"]["ratios"])
    if not args.no_plot:
        print(plot(path))


if __name__ == "__main__":
    main()
