"""One serial optimisation step of gpubraid against the same network in plain PyTorch (CPU).

    python -m bench.steps --train-only [--quick] [--rounds R]

gpubraid's serial training step (``Trainer`` with method serial: forward sweep, adjoint sweep with
the layer gradients, Adam) on the dense peaks network (64 layers, 32 channels, T = 5, tanh, batch
50 / 500 / 5000) and the MNIST conv example (16 layers, 8 channels, ReLU, T = 2, batch 50), float32
and float64, no regulariser, against the same network in plain PyTorch (autograd,
``torch.optim.Adam`` default and ``fused=True``; for the conv network also fused Adam on channels-last
tensors, the layout gpubraid's torch engine keeps its states in) with the same initial weights, data
and batch order.  One thread everywhere (``torch.set_num_threads(1)``; BLAS threads by :mod:`bench.common`).
Rounds are interleaved (gpubraid, torch-adam, torch-fused, gpubraid, ...), each timing a few
optimisation steps of each; per contender the median over rounds, the ratio gpubraid / torch, and
the largest relative difference of the objectives the two computed along the way (the same
trajectory to round-off).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np


def train_cases(quick: bool):
    if quick:
        return [dict(kind="dense", B=50, dtype="float32", layers=4, channels=8),
                dict(kind="conv", B=8, dtype="float64", layers=2, channels=4)]
    out = []
    for dtype in ("float32", "float64"):
        for B in (50, 500, 5000):
            out.append(dict(kind="dense", B=B, dtype=dtype, layers=64, channels=32))
        out.append(dict(kind="conv", B=50, dtype=dtype, layers=16, channels=8))
    return out


def _trainer(case):
    from gpubraid.training.config import TrainConfig
    from gpubraid.training.trainer import Trainer
    kw = dict(method="serial", batch_size=case["B"], dtype=case["dtype"], gamma_tik=0.0, gamma_ddt=0.0,
              layers=case["layers"], channels=case["channels"], progress=False, val_every=0,
              backend="numpy", iterations=1, optimizer="adam")
    if case["kind"] == "dense":
        cfg = TrainConfig(example="peaks", final_time=5.0, activation="tanh", lr=1e-3,
                          n_train=max(case["B"], 5000), n_val=100, **kw)
    else:
        cfg = TrainConfig(example="mnist", n_train=1000, n_val=100, **kw)
    return Trainer(cfg)


def contenders(case):
    """{name: one optimisation step -> objective} for gpubraid serial and the two PyTorch Adams."""
    import torch
    import torch.nn.functional as F

    from gpubraid.training.trainer import RunState

    tr = _trainer(case)
    m = tr.model
    run_state = RunState(np.random.default_rng([tr.cfg.seed, 7]))

    def gpubraid_step():
        x, y, B = tr._batch(run_state)

        def closure(theta):
            ev = tr.lp.evaluate(theta, x, y, B, grad=True, warm=False)
            return ev.objective, ev.grad

        return tr.opt.step(tr.theta, closure).objective

    tdt = torch.float32 if case["dtype"] == "float32" else torch.float64
    x_all, y_all, _ = tr.data.take("train", None, np)
    X, Y = torch.tensor(np.asarray(x_all), dtype=tdt), torch.tensor(np.asarray(y_all))
    theta0 = np.asarray(tr.be.to_host(tr.theta), dtype=np.float64)
    h = [float(v) for v in np.asarray(tr.be.to_host(m.h))]
    act = {"tanh": torch.tanh, "relu": torch.relu}[tr.cfg.activation]
    conv = len(m.state_shape) == 3

    def torch_step_fn(fused: bool, channels_last: bool = False):
        P = m.layout().views(theta0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def par(a):
            t = torch.tensor(np.array(a), dtype=tdt)
            return torch.nn.Parameter(t.contiguous(memory_format=fmt) if t.ndim == 4 else t)

        oK, ob = (par(p) for p in P.opening())
        K = [par(P.K[i]) for i in range(m.layers)]
        b = [par(P.b[i]) for i in range(m.layers)]
        W, c = (par(p) for p in P.head())

        def net(x):
            u = act(F.conv2d(x, oK, ob, padding=1) if conv else F.linear(x, oK, ob))
            for i in range(m.layers):
                u = u + h[i] * act(F.conv2d(u, K[i], b[i], padding=1) if conv else F.linear(u, K[i], b[i]))
            return F.linear(u.flatten(1), W, c)

        params = [oK, ob, *K, *b, W, c]
        opt = torch.optim.Adam(params, lr=tr.cfg.lr, fused=fused)
        rs = RunState(np.random.default_rng([tr.cfg.seed, 7]))  # the batch order of Trainer._batch
        n, B = X.shape[0], case["B"]

        def step():
            if rs.order is None or rs.pos >= n:
                rs.order, rs.pos = rs.rng.permutation(n).astype(np.int64), 0
            idx = torch.from_numpy(rs.order[rs.pos:rs.pos + B])
            rs.pos += len(idx)
            opt.zero_grad()
            xb = X[idx]
            loss = F.cross_entropy(net(xb.contiguous(memory_format=fmt) if channels_last else xb), Y[idx])
            loss.backward()
            opt.step()
            return float(loss.detach())

        return step

    out = {"gpubraid": gpubraid_step, "torch-adam": torch_step_fn(False), "torch-fused": torch_step_fn(True)}
    if conv:  # what a PyTorch user who knows channels-last would run (gpubraid's torch engine stores states so)
        out["torch-fused-cl"] = torch_step_fn(True, channels_last=True)
    return out


def run_train(quick: bool, rounds: int, only=None):
    """(rows, status) of the serial-step comparison; ([], reason) without torch."""
    try:
        import torch
    except Exception:
        return [], "torch not importable: skipped"
    torch.set_num_threads(1)
    rows = []
    for case in train_cases(quick):
        if only and f"{case['kind']}-{case['B']}-{case['dtype']}" not in only:
            continue
        fns = contenders(case)
        steps = 1 if quick else (max(2, 2000 // case["B"]) if case["kind"] == "dense" else 4)
        samples = {k: [] for k in fns}
        objs = {k: [f()] for k, f in fns.items()}  # warmup step (also the first objective)
        load = []
        for _ in range(1 if quick else rounds):
            load.append(os.getloadavg()[0])
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    objs[k].append(f())
                samples[k].append((time.perf_counter() - t0) / steps)
        med = {k: statistics.median(v) for k, v in samples.items()}
        rel = max(abs(a - b) / abs(b) for a, b in zip(objs["gpubraid"], objs["torch-fused"]))
        fastest = min(med, key=med.get)
        row = {"bench": "train", **case, "steps_per_round": steps, "rounds": len(samples["gpubraid"]),
               **{f"{k}_ms": 1e3 * v for k, v in med.items()},
               **{f"{k}_samples_ms": [1e3 * x for x in v] for k, v in samples.items()},
               "ratio_vs_fused": med["gpubraid"] / med["torch-fused"],
               "ratio_vs_adam": med["gpubraid"] / med["torch-adam"],
               **({"ratio_vs_fused_channels_last": med["gpubraid"] / med["torch-fused-cl"]}
                  if "torch-fused-cl" in med else {}),
               "faster": fastest, "max_rel_objective_diff": rel, "loadavg_1min": load}
        rows.append(row)
        print(f"{case['kind']:5s} B={case['B']:5d} {case['dtype']}: gpubraid {row['gpubraid_ms']:.2f} ms, "
              f"torch adam {row['torch-adam_ms']:.2f}, fused {row['torch-fused_ms']:.2f}; "
              f"÷fused {row['ratio_vs_fused']:.2f}, ÷adam {row['ratio_vs_adam']:.2f}"
              + (f", ÷fused channels-last {row['ratio_vs_fused_channels_last']:.2f}"
                 if "ratio_vs_fused_channels_last" in row else "") + "; "
              f"max rel Δ objective {rel:.1e}; load {min(load):.1f}-{max(load):.1f}", flush=True)
    return rows, f"torch {torch.__version__} on cpu, 1 thread"


def plot(doc, json_path, png_path=None):
    """Bars of ms per optimisation step: gpubraid, torch Adam, torch fused Adam (and channels-last), per case."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench import common
    rows = doc.get("train") or []
    fig, ax = plt.subplots(figsize=(11, 4.5))
    names = [f"{r['kind']} B={r['B']}\n{r['dtype']}" for r in rows]
    x = np.arange(len(rows))
    for j, (k, label) in enumerate((("gpubraid", "gpubraid serial"), ("torch-adam", "torch Adam"),
                                    ("torch-fused", "torch Adam fused"),
                                    ("torch-fused-cl", "torch Adam fused, channels-last (conv)"))):
        ax.bar(x + (j - 1.5) * 0.2, [r.get(f"{k}_ms", 0.0) for r in rows], 0.2, label=label)
    for i, r in enumerate(rows):
        ax.text(i, r["gpubraid_ms"], f"{r['ratio_vs_fused']:.2f}×", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms per optimisation step (median)")
    ax.set_title("serial step, one thread: gpubraid vs plain PyTorch (label: gpubraid ÷ fused)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return common.save_figure(fig, json_path, png_path, dpi=110)
