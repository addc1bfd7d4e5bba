"""One-shot MGRIT training: what its accuracy and gradient error depend on.

    python -m bench.oneshot_study [--quick] [--out DIR] [--no-plot] [--part grad|train|all]

Two measurements, NumPy, one process, one BLAS thread:

  grad   Gradient error along a trajectory.  A layer-serial L-BFGS run on peaks (64 and 256 layers)
         gives parameter
         snapshots θ_0..θ_K; at each snapshot every variant computes its one-shot gradient (full
         batch: warm-started from its own states/adjoints at the previous snapshot, as in training;
         mini-batch: a fresh batch of 50 samples, no warm start) and is compared with the exact
         (serial) gradient at the same θ and batch: relative error ‖g − g*‖/‖g*‖, the levels the
         solver chose, ρ, max H·ρ and the step applications per evaluation (total_steps, serial = 2N).
  train  Validation accuracy of short training runs per variant, serial as the reference:
         peaks full batch (L-BFGS) and peaks mini-batch (Adam, batch 50, width 32, float32).

Variants are TrainConfig overrides: number of levels (max_levels / stability bound), cfactor,
relaxation (nrelax per level), iteration counts, initial guess (nested iteration vs u_0 at every
point) — which also sets the coarse step size H = m^l·T/N the hierarchy reaches.

Where CuPy finds a GPU the same runs use it, and every training row first runs one untimed iteration,
so the kernels' first-call compilation is not charged to whichever row comes first.
"""
from __future__ import annotations

import time

import numpy as np  # noqa: E402

from bench import common
from gpubraid.runtime.backend import resolve_backend
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer  # noqa: E402

NAME = "oneshot_study"

# the landed defaults before issue 9: all levels (up to 10), FCF everywhere, u_0 guess, 2 + 2
OLD = dict(stability=0.0, conv_bound=0.0, nrelax=1, nested=False, fwd_iters=2, bwd_iters=2)
NEW = "default: auto levels (c=0.15), F/FCF, nested, 1+1"
VARIANTS = {
    "old default: 10 lv, FCF, 2+2": dict(OLD),
    "old, max_levels=2": dict(OLD, max_levels=2),
    "old, max_levels=3": dict(OLD, max_levels=3),
    NEW: dict(),
    "auto c=1, F/FCF, 1+1": dict(conv_bound=1.0),
    "auto c=1, F/FCF, 2+2": dict(conv_bound=1.0, fwd_iters=2, bwd_iters=2),
    "auto c=1, F/FCF, 2+1": dict(conv_bound=1.0, fwd_iters=2),
    "auto stability only (Hρ≤1), 1+1": dict(conv_bound=0.0),
    "auto c=0.25, FCF on level 0, 1+1": dict(conv_bound=0.25, nrelax=1),
    "auto c=0.25, m0=4, 1+1": dict(conv_bound=0.25, cfactor=[4, 2]),
    "auto c=0.25, u_0 guess, 1+1": dict(conv_bound=0.25, nested=False),
    "auto c=0.25, nested only (0+0)": dict(conv_bound=0.25, fwd_iters=0, bwd_iters=0),
}
TRAIN_VARIANTS = ["old default: 10 lv, FCF, 2+2", "old, max_levels=2", NEW, "auto c=1, F/FCF, 1+1",
                  "auto c=1, F/FCF, 2+1", "auto c=0.25, u_0 guess, 1+1"]


def _trainer(base, **kw):
    return Trainer(TrainConfig(**{**base, **kw, "progress": False}))


def grad_study(quick: bool, only=None):
    out = []
    setups = [("peaks-fullbatch-64", dict(example="peaks", layers=64, n_train=1000 if quick else 2000,
                                         n_val=200, val_every=0), 0),
              ("peaks-minibatch-64x32", dict(example="peaks", layers=64, channels=32, optimizer="adam",
                                             lr=1e-2, batch_size=50, gamma_tik=0.0, gamma_ddt=0.0,
                                             n_train=1000, n_val=200, val_every=0), 50)]
    if not quick:
        # deeper: here the automatic choice (c = 0.25) coarsens, so its variants differ
        setups.append(("peaks-fullbatch-256", dict(example="peaks", layers=256, n_train=1000, n_val=200,
                                                   val_every=0), 0))
    K = 4 if quick else 12
    names = list(VARIANTS) if not quick else ["old default: 10 lv, FCF, 2+2", NEW]
    for tag, base, batch in setups:
        if only is not None and tag not in only:
            continue
        ser = _trainer(base, method="serial", iterations=K)
        snaps = []
        orig_step = ser.opt.step

        def rec(theta, closure, _o=orig_step):
            snaps.append(ser.be.to_host(theta).copy())
            return _o(theta, closure)
        ser.opt.step = rec
        ser.run()
        d = ser.data
        rng = np.random.default_rng(3)
        idxs = [rng.choice(d.n_train, batch, replace=False) if batch else None for _ in snaps]
        N = base["layers"]
        for name in names:
            tr = _trainer(base, method="oneshot", iterations=1, **VARIANTS[name])
            errs, steps, levels, hr, rho = [], [], [], [], []
            for th, idx in zip(snaps, idxs):
                theta = tr.be.asarray(th)
                x = d.x_train if idx is None else d.x_train[idx]
                y = d.y_train if idx is None else d.y_train[idx]
                B = d.n_train if idx is None else len(idx)
                ref = ser.lp.evaluate(theta, x, y, B)
                ev = tr.lp.evaluate(theta, x, y, B, warm=batch == 0 or tr.cfg.minibatch_warm)
                g, gs = tr.be.to_host(ev.grad), tr.be.to_host(ref.grad)
                errs.append(float(np.linalg.norm(g - gs) / max(np.linalg.norm(gs), 1e-300)))
                f, b = tr.lp.last_stats
                steps.append((f.total_steps + b.total_steps) / N)
                levels.append(f.levels)
                rho.append(f.rho)
                hr.append(max(f.h_rho) if f.h_rho else 0.0)
            row = {"setup": tag, "variant": name, "overrides": VARIANTS[name], "grad_rel_error": errs,
                   "median_grad_rel_error": float(np.median(errs)), "steps_over_N": float(np.mean(steps)),
                   "levels": levels, "rho": rho, "max_h_rho": hr}
            print(f"{tag:24s} {name:32s} grad err median {row['median_grad_rel_error']:.3e} "
                  f"steps/N {row['steps_over_N']:.2f} levels {levels[-1]} maxHρ {hr[-1]:.2f}", flush=True)
            out.append(row)
    return out


def train_study(quick: bool):
    out = []
    setups = [("peaks-fullbatch-64", dict(example="peaks", layers=64, seed=11, iterations=8 if quick else 60,
                                         val_every=0, n_train=500 if quick else 2000, n_val=200 if quick else 1000)),
              ("peaks-minibatch-64x32", dict(example="peaks", layers=64, channels=32, optimizer="adam", lr=1e-2,
                                             batch_size=50, gamma_tik=0.0, gamma_ddt=0.0, dtype="float32",
                                             iterations=10 if quick else 200, val_every=0,
                                             n_train=500 if quick else 5000, n_val=200 if quick else 1000))]
    gpu = resolve_backend(None).is_gpu
    names = ["serial"] + (["old default: 10 lv, FCF, 2+2", NEW] if quick else TRAIN_VARIANTS)
    for tag, base in setups:
        for name in names:
            kw = dict(method="serial") if name == "serial" else dict(VARIANTS[name], method="oneshot")
            if gpu:  # first-call compilation outside the timing (it went to whichever row ran first)
                _trainer({**base, "iterations": 1}, **kw).run()
            t0 = time.perf_counter()
            res = _trainer(base, **kw).run()
            h = res.history
            row = {"setup": tag, "variant": name, "val_accuracy": res.val_accuracy,
                   "objective": res.objective, "wall_s": time.perf_counter() - t0,
                   "s_per_iteration": res.wall_s / len(h),
                   "steps_per_eval_over_N": float(np.mean([e["steps"] for e in h])) / base["layers"],
                   "levels": [e.get("levels") for e in h]}
            print(f"{tag:24s} {name:32s} val {res.val_accuracy:.3f} s/it {row['s_per_iteration']:.3f} "
                  f"steps/N {row['steps_per_eval_over_N']:.2f}", flush=True)
            out.append(row)
    return out


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    res = doc["results"]
    fig, axes = common.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    for r in res.get("grad", []):
        ax.semilogy(r["grad_rel_error"], label=f"{r['setup'][:10]} {r['variant']}",
                    ls="-" if "full" in r["setup"] else "--")
    ax.set_xlabel("snapshot of the serial trajectory")
    ax.set_ylabel("‖g_oneshot − g_exact‖ / ‖g_exact‖")
    ax.legend(fontsize=5)
    ax = axes[1]
    rows = res.get("train", [])
    for i, r in enumerate(rows):
        ax.barh(i, r["val_accuracy"], color="k" if r["variant"] == "serial" else "C0")
        ax.text(0.01, i, f"{r['setup'][:14]} {r['variant']}  {r['val_accuracy']:.3f}  "
                f"{r['steps_per_eval_over_N']:.1f}N", va="center", fontsize=6, color="w")
    ax.set_xlabel("validation accuracy")
    ax.set_yticks([])
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--part", choices=("grad", "train", "all"), default="all")
    args = ap.parse_args(argv)
    results = {}
    if args.part in ("grad", "all"):
        results["grad"] = grad_study(args.quick)
    if args.part in ("train", "all"):
        results["train"] = train_study(args.quick)
    doc = common.document(NAME, {"quick": args.quick, "part": args.part, "variants": VARIANTS}, results)
    common.finish(NAME, doc, args, plot)


if __name__ == "__main__":
    main()
