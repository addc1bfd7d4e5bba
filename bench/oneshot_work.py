"""Where one-shot training's step applications go, before and after issue 19 (docs/algorithm.md §5).

    python -m bench.oneshot_work [--quick] [--layers 32 64] [--iterations 130] [--variants ...]
                                 [--part train|grad] [--out DIR] [--no-plot]

The paper's peaks settings (T = 1, smoothrelu, width 8, 5000 samples, full-batch L-BFGS, cfactor 2,
seed 0), NumPy, one process, one BLAS thread.  Every evaluation (line-search trials included) is
counted: its forward and adjoint solve split by phase with :meth:`MGRIT.schedule` (the counter of
what ``solve`` executes; checked against the solve's own ``SolveStats``) into

    relax0     level-0 relaxation (F, C sweeps)           residual0  level-0 C-point residual
    restrict   coarse steps of the FAS restrictions        coarse     relaxation and residuals on levels ≥ 1
    solve_top  the coarsest solve                          estimate   the ρ estimate (samples/batch)
    serial     layer-serial propagation (one level)

Reported per evaluation and per optimisation iteration (all its evaluations), over serial's 2N.

``--part grad``: the relative gradient error of one-shot evaluations (levels 2..5 fixed or
automatic, coarse params injected or averaged) along 20 snapshots of a serial L-BFGS trajectory,
each warm-started from the variant's previous snapshot (as in training), against serial's gradient.

Variants: ``before`` is the landed cycle (FAS adjoint, final F-relaxation); the others are the
current code with TrainConfig overrides.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from bench import common
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer

NAME = "oneshot_work"
PAPER = dict(example="peaks", final_time=1.0, activation="smoothrelu", channels=8, n_train=5000,
             optimizer="lbfgs", cfactor=2, seed=0, progress=False, val_every=0)
#: name -> (TrainConfig overrides, landed cycle?)
VARIANTS = {
    "serial": (dict(method="serial"), False),
    "before": (dict(method="oneshot", nrelax=[0, 1], monitor_every=0, levels_for_ranks=False), True),
    "after (default)": (dict(method="oneshot"), False),
    "after, no level cap": (dict(method="oneshot", levels_for_ranks=False), False),
    "after, no monitor": (dict(method="oneshot", monitor_every=0, levels_for_ranks=False), False),
    "after, monitor tol 0.05": (dict(method="oneshot", monitor_tol=0.05, levels_for_ranks=False), False),
    "after, monitor tol 0.05 every 5": (dict(method="oneshot", monitor_tol=0.05, monitor_every=5,
                                             levels_for_ranks=False), False),
    "after, monitor every 5": (dict(method="oneshot", monitor_every=5, levels_for_ranks=False), False),
    # the monitor's checks as a measurement only (a tolerance it never exceeds)
    "after, checks every 5, no caps": (dict(method="oneshot", monitor_every=5, monitor_tol=1e9,
                                            levels_for_ranks=False), False),
    "after, max_levels 2, checks every 5": (dict(method="oneshot", max_levels=2, monitor_every=5, monitor_tol=1e9),
                                            False),
    "after, average": (dict(method="oneshot", coarse_params="average", monitor_every=0, levels_for_ranks=False),
                       False),
    "after, max_levels 2": (dict(method="oneshot", max_levels=2, monitor_every=0), False),
    "after, FCF below level 0": (dict(method="oneshot", nrelax=[0, 1], monitor_every=0, levels_for_ranks=False),
                                 False),
}
CATS = ("relax0", "residual0", "restrict", "coarse", "solve_top", "estimate", "serial")


def landed(tr: Trainer) -> None:
    """Rebuild the trainer's solvers with the landed cycle: FAS adjoint, final F-relaxation."""
    f = dataclasses.replace(tr.method.forward, final_relax=True)
    b = dataclasses.replace(tr.method.adjoint, final_relax=True, linear=False)
    tr.method = dataclasses.replace(tr.method, forward=f, adjoint=b)
    tr.lp = LayerParallel(tr.model, tr.comm, f, b, tr.data_comm, tr.method.pipeline)


def split(solver, st, warm: bool) -> dict:
    """Step applications of one solve by category (schedule of the solve it was)."""
    out = dict.fromkeys(CATS, 0.0)
    if not hasattr(solver, "schedule"):          # layer-serial chain
        out["serial"] = float(sum(st.steps_per_level) + st.coarse_steps)
        return out
    for phase, level, steps in solver.schedule(st.iterations, st.levels, warm=warm):
        if phase == "serial":
            key = "serial"
        elif phase == "coarse_solve":
            key = "solve_top"
        elif phase == "restrict":
            key = "restrict"
        elif level == 0:
            key = "residual0" if phase == "residual" else "relax0"
        else:
            key = "coarse"
        out[key] += steps
    out["estimate"] = st.estimate_steps
    assert abs(sum(out.values()) - st.total_steps) < 1e-9, (out, st.total_steps)
    return out


def run_variant(layers: int, iterations: int, name: str, seed: int = 0) -> dict:
    over, old = VARIANTS[name]
    tr = Trainer(TrainConfig(**{**PAPER, "seed": seed}, layers=layers, iterations=iterations, **over))
    if old:
        landed(tr)
    evals = []
    orig = tr.lp.evaluate

    def counted(theta, x, y, B, grad=True, warm=False):
        first = tr.lp.U is None
        ev = orig(theta, x, y, B, grad=grad, warm=warm)
        f, b = tr.lp.last_stats
        fw = split(tr.lp.fwd, f, warm and not first)
        bw = split(tr.lp.bwd, b, warm and not first) if b is not None else dict.fromkeys(CATS, 0.0)
        evals.append({"forward": fw, "adjoint": bw, "levels": f.levels})
        return ev

    tr.lp.evaluate = counted
    t0 = time.perf_counter()
    res = tr.run()
    wall = time.perf_counter() - t0
    N2 = 2.0 * layers
    per_eval = {s: {c: float(np.mean([e[s][c] for e in evals])) / N2 for c in CATS} for s in ("forward", "adjoint")}
    total = [sum(e["forward"].values()) + sum(e["adjoint"].values()) for e in evals]
    n_evals = [h["n_evals"] for h in res.history]
    monitor = [h["monitor"] for h in res.history if "monitor" in h]  # its serial evaluations count too
    per_iter = (float(np.sum(total)) + sum(m["steps"] for m in monitor)) / len(res.history) / N2
    levels = [e["levels"] for e in evals]
    row = {"layers": layers, "variant": name, "seed": seed, "overrides": over, "landed_cycle": old,
           "val_accuracy": res.val_accuracy, "train_accuracy": res.train_accuracy, "objective": res.objective,
           "iterations": len(res.history), "evaluations": len(evals), "mean_n_evals": float(np.mean(n_evals)),
           "per_eval_over_serial": float(np.mean(total)) / N2, "per_iteration_over_serial": per_iter,
           "history_steps_over_serial": float(np.mean([h["steps"] for h in res.history])) / N2,
           "breakdown_per_eval_over_serial": per_eval,
           "levels_hist": {str(k): levels.count(k) for k in sorted(set(levels))},
           "monitor": monitor, "objectives": [h["objective"] for h in res.history],
           "wall_s": wall}
    print(f"N={layers:4d} seed {seed} {name:26s} val {res.val_accuracy:.3f} J {res.objective:.4f} per eval {row['per_eval_over_serial']:.2f}x "
          f"per iter {per_iter:.2f}x evals/it {row['mean_n_evals']:.2f} levels {row['levels_hist']} "
          f"{wall:.0f} s", flush=True)
    return row


#: gradient-error variants: name -> TrainConfig overrides (one-shot, the current cycle)
GRAD_VARIANTS = {f"{lv} levels, FCF below, {cp}": dict(max_levels=lv, conv_bound=0.0, coarse_params=cp,
                                                      nrelax=[0, 1])
                 for lv in (2, 3, 4, 5) for cp in ("inject", "average")}
GRAD_VARIANTS["auto levels, FCF below, inject"] = dict(nrelax=[0, 1])
GRAD_VARIANTS["auto levels, FCF below, average"] = dict(coarse_params="average", nrelax=[0, 1])
GRAD_VARIANTS.update({f"{lv} levels, F everywhere": dict(max_levels=lv, conv_bound=0.0, nrelax=0) for lv in (3, 4, 5)})
GRAD_VARIANTS["auto levels (default: F everywhere)"] = dict()


def grad_study(layers: int, snapshots: int, names=None, variants=None, **paper) -> list:
    """Relative gradient error ‖g − g*‖/‖g*‖ of each variant's one-shot gradient along a serial
    L-BFGS trajectory (warm-started from its own previous snapshot, as in training).  ``variants``:
    name -> TrainConfig overrides (default :data:`GRAD_VARIANTS`); ``paper``: overrides of
    :data:`PAPER` for every run (``channels=32``)."""
    variants = GRAD_VARIANTS if variants is None else variants
    base = {**PAPER, **paper}
    ser = Trainer(TrainConfig(**base, layers=layers, iterations=snapshots, method="serial"))
    snaps = []
    orig_step = ser.opt.step

    def rec(theta, closure):
        snaps.append(ser.be.to_host(theta).copy())
        return orig_step(theta, closure)

    ser.opt.step = rec
    ser.run()
    d = ser.data
    x, y, B = d.x_train, d.y_train, d.n_train
    refs = [ser.be.to_host(ser.lp.evaluate(ser.be.asarray(th), x, y, B).grad) for th in snaps]
    rows = []
    for name, over in variants.items():
        if names and name not in names:
            continue
        tr = Trainer(TrainConfig(**{**base, **over}, layers=layers, iterations=1, method="oneshot"))
        errs, levels, steps, coarse = [], [], [], []
        for th, gs in zip(snaps, refs):
            ev = tr.lp.evaluate(tr.be.asarray(th), x, y, B, warm=True)
            g = tr.be.to_host(ev.grad)
            errs.append(float(np.linalg.norm(g - gs) / np.linalg.norm(gs)))
            f, b = tr.lp.last_stats
            levels.append(f.levels)
            steps.append((f.total_steps + b.total_steps) / (2.0 * layers))
            coarse.append((f.coarse_steps + b.coarse_steps) / (2.0 * layers))
        row = {"layers": layers, "channels": base["channels"], "variant": name, "overrides": over,
               "grad_rel_error": errs, "median_grad_rel_error": float(np.median(errs[1:])), "levels": levels,
               "per_eval_over_serial": float(np.mean(steps[1:])), "coarsest_over_serial": float(np.mean(coarse[1:]))}
        print(f"N={layers:4d} {name:30s} grad err median {row['median_grad_rel_error']:.3e} levels {levels[-1]} "
              f"per eval {row['per_eval_over_serial']:.2f}x", flush=True)
        rows.append(row)
    return rows


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    if doc["config"].get("part") == "grad":
        return plot_grad(doc, json_path, png_path)
    rows = doc["results"]
    fig, ax = common.subplots(1, 1, figsize=(11, 0.45 * len(rows) + 1.5))
    colors = dict(zip(CATS, ("C0", "C1", "C2", "C3", "C4", "C5", "0.5")))
    labelled = set()
    for i, r in enumerate(rows):
        left = 0.0
        for s, hatch in (("forward", ""), ("adjoint", "//")):
            for c in CATS:
                w = r["breakdown_per_eval_over_serial"][s][c]
                if w > 0:
                    ax.barh(i, w, left=left, color=colors[c], hatch=hatch, edgecolor="w",
                            label=None if c in labelled else c)
                    labelled.add(c)
                    left += w
        ax.text(left + 0.03, i, f"val {r['val_accuracy']:.3f}, {r['per_iteration_over_serial']:.2f}× per iteration",
                va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [f"N={r['layers']} {r['variant']}" for r in rows], fontsize=7)
    ax.set_xlabel("step applications per evaluation / serial's 2N (forward plain, adjoint hatched)")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="lower right")
    ax.invert_yaxis()
    return common.save_figure(fig, json_path, png_path)


def plot_grad(doc, json_path, png_path=None):
    rows = doc["results"]
    fig, ax = common.subplots(1, 1, figsize=(8, 4.5))
    for r in rows:
        ax.semilogy(r["grad_rel_error"][1:], label=f"N={r['layers']} {r['variant']}",
                    ls="--" if "average" in r["variant"] else "-")
    ax.set_xlabel("snapshot of the serial L-BFGS trajectory")
    ax.set_ylabel("‖g_oneshot − g_serial‖ / ‖g_serial‖")
    ax.legend(fontsize=6)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--layers", type=int, nargs="+", default=[32])
    ap.add_argument("--iterations", type=int, default=130)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="--part train: one run per seed")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--part", choices=("train", "grad"), default="train",
                    help="train: training runs counted; grad: gradient error along a serial trajectory")
    ap.add_argument("--grad-variants", nargs="+", default=None, choices=list(GRAD_VARIANTS),
                    help="--part grad: only these variants")
    args = ap.parse_args(argv)
    its = 10 if args.quick else args.iterations
    if args.part == "grad":
        rows = [r for N in args.layers for r in grad_study(N, 4 if args.quick else 20, args.grad_variants)]
        name, variants = NAME + "_grad", GRAD_VARIANTS
    else:
        rows = [run_variant(N, its, v, seed) for N in args.layers for seed in args.seeds for v in args.variants]
        name, variants = NAME, {v: VARIANTS[v] for v in args.variants}
    doc = common.document(name, {"paper": PAPER, "iterations": its, "layers": args.layers, "part": args.part,
                                 "seeds": args.seeds,
                                 "variants": variants}, rows)
    common.finish(name, doc, args, plot)


if __name__ == "__main__":
    main()
