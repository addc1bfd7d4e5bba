"""One-shot against the pipeline and data groups on P = 16 ranks, over batch × width × depth (issue 19).

    python -m bench.oneshot_table [--quick] [--ranks 16] [--depths 256 1024] [--widths 8 32]
                                  [--batches 8 50 0] [--networks shm nvlink] [--cfactors 2 4 8]
                                  [--out DIR] [--no-plot]

Peaks at the paper's settings (T = 1, smoothrelu, 5000 samples; batch 0 = the full batch with
L-BFGS, otherwise Adam on mini-batches), NumPy float64.  Each row is one ``gpubraid plan``
(:func:`gpubraid.training.plan.make_plan`): a probe of the job's step calls on this machine (one
process, thread CPU time), then every data × layer × method split of P ranks priced by the
planner's cost model on a network model (validated against traced 2-rank runs, ``bench/README.md``).
Per row: the best candidate of each kind (data groups: serial on D × 1; the pipeline: L > 1 layer
ranks, M micro-batches; one-shot: any D × L, the levels it keeps, the best of the coarsening factors
``--cfactors``, each probed for its own costs and gradient error), its seconds per step and to
accuracy (the run's steps, one-shot's divided by 1 − e with e its probed gradient error), and the
probe's one-shot levels, ρ and gradient error: why one-shot wins or loses the row; and one-shot's
best with every call free and no solver overhead (:func:`overhead_free`) over the best other
strategy: whether any implementation of its cycle could win the row.
"""
from __future__ import annotations

import dataclasses
import itertools
import time

from bench import common  # first: sets BLAS threads before NumPy loads
from gpubraid.runtime.comm import Comm
from gpubraid.training.config import TrainConfig
from gpubraid.training.plan import candidates, network, probe_job
from gpubraid.training.trainer import Trainer

NAME = "oneshot_table"
PAPER = dict(example="peaks", final_time=1.0, activation="smoothrelu", n_train=5000, seed=0, progress=False,
             val_every=0)


def config(depth: int, width: int, batch: int, cfactor: int = 2) -> TrainConfig:
    """The paper's peaks job at this depth, width and batch (0: full batch, L-BFGS; else Adam), with
    MGRIT coarsening factor ``cfactor``."""
    opt = dict(optimizer="lbfgs", batch_size=0, iterations=130) if batch == 0 else \
        dict(optimizer="adam", batch_size=batch, iterations=1000, lr=1e-2)
    return TrainConfig(**PAPER, layers=depth, channels=width, cfactor=cfactor, **opt)


def kind(c) -> str:
    if c.method == "oneshot" and c.levels > 1:
        return "oneshot"
    if c.method in ("pipeline", "serial", "oneshot") and c.L > 1:
        return "pipeline"
    if c.method in ("serial", "oneshot"):
        return "data"
    return c.method


def overhead_free(probe):
    """The probe with every call free and no solver overhead beyond the steps: one-shot's time is
    then its step work, its messages, its ρ estimate and the step's fixed costs (optimiser,
    reductions), what a compiled per-rank cycle could at best reach."""
    return dataclasses.replace(probe, calls={k: (0.0, *v[1:]) for k, v in probe.calls.items()}, solve_call=(0.0, 0.0),
                               block=(probe.block[0], (0.0, 0.0), probe.block[2]))


def _entry(c, cfactor: int) -> dict:
    return {"label": c.label(), "D": c.D, "L": c.L, "M": c.M, "levels": c.levels, "cfactor": cfactor,
            "step_s": c.step_s, "accuracy_s": c.accuracy_s, "grad_error": c.grad_error}


def rows_for(depth: int, width: int, batch: int, ranks: int, net_names, cfactors=(2,)) -> list[dict]:
    """One probe of the job per coarsening factor, its candidates ranked on each network model: one
    row per network.  The pipeline and data groups come from the first factor's probe (they do not
    coarsen); one-shot is the best over every factor, each with the gradient error probed at it."""
    probes = []
    for m in cfactors:
        t0 = time.perf_counter()
        probe, cfg, h = probe_job(config(depth, width, batch, m), lambda c: Trainer(c, Comm.single()))
        probes.append((m, probe, cfg, h, time.perf_counter() - t0))
    out = []
    for net_name in net_names:
        net = network(net_name)
        m0, probe0, cfg0, h, _ = probes[0]
        best = {}
        for c in candidates(probe0, cfg0, ranks, net, h):  # best first
            if kind(c) != "oneshot":
                best.setdefault(kind(c), (c, m0))
        r = {"depth": depth, "width": width, "batch": probe0.batch, "full_batch": batch == 0, "ranks": ranks,
             "network": net_name, "probe_s": sum(p[-1] for p in probes), "serial_1rank_eval_s": probe0.evaluate_s,
             "oneshot_probe": probe0.oneshot, "by_cfactor": {}}
        others = min(c.accuracy_s for c, _ in best.values())
        for m, probe, cfg, h, _ in probes:
            shot = [c for c in candidates(probe, cfg, ranks, net, h) if kind(c) == "oneshot"]
            free = [c for c in candidates(overhead_free(probe), cfg, ranks, net, h) if kind(c) == "oneshot"]
            entry = {"probe": probe.oneshot}
            if shot:
                entry["oneshot"] = _entry(shot[0], m)
                if "oneshot" not in best or shot[0].accuracy_s < best["oneshot"][0].accuracy_s:
                    best["oneshot"] = (shot[0], m)
            if free:
                entry["overhead_free"] = {**_entry(free[0], m), "over_best_other": free[0].accuracy_s / others}
            r["by_cfactor"][str(m)] = entry
        for k, (c, m) in best.items():
            r[k] = _entry(c, m)
        r["winner"] = min(best, key=lambda k: best[k][0].accuracy_s)
        if "oneshot" in best:
            r["oneshot_probe"] = r["by_cfactor"][str(best["oneshot"][1])]["probe"]
            if "pipeline" in best:
                r["oneshot_over_pipeline"] = best["oneshot"][0].accuracy_s / best["pipeline"][0].accuracy_s
        frees = [e["overhead_free"] for e in r["by_cfactor"].values() if "overhead_free" in e]
        if frees:
            r["oneshot_overhead_free"] = min(frees, key=lambda e: e["accuracy_s"])
        out.append(r)
    return out


def markdown(rows) -> str:
    lines = ["| depth | width | batch | network | one-shot (levels, grad err) | s to acc. | pipeline | s to acc. "
             "| data | s to acc. | fastest | one-shot overhead-free / best other |", "|---" * 12 + "|"]
    for r in rows:
        def cell(k):
            c = r.get(k)
            return ("–", "–") if c is None else (c["label"].replace(" (data x layer)", ""), f"{c['accuracy_s']:.3g}")
        os_, pl, da = cell("oneshot"), cell("pipeline"), cell("data")
        probe = r["oneshot_probe"]
        free = f"{r['oneshot_overhead_free']['over_best_other']:.2f}" if "oneshot_overhead_free" in r else "–"
        extra = f" (m = {r['oneshot']['cfactor']}, {r['oneshot']['levels']} lv, {100 * probe['grad_error']:.2g} %)" \
            if "oneshot" in r else \
            f" (keeps {probe['levels']} level)"
        lines.append(f"| {r['depth']} | {r['width']} | {'full' if r['full_batch'] else r['batch']} | {r['network']} "
                     f"| {os_[0]}{extra} | {os_[1]} | {pl[0]} | {pl[1]} | {da[0]} | {da[1]} | {r['winner']} "
                     f"| {free} |")
    return "\n".join(lines)


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    rows = [r for r in doc["results"] if "oneshot_over_pipeline" in r]
    fig, ax = common.subplots(1, 1, figsize=(9, 4))
    labels = [f"N{r['depth']} C{r['width']} B{'full' if r['full_batch'] else r['batch']} {r['network']}" for r in rows]
    ax.barh(labels, [r["oneshot_over_pipeline"] for r in rows])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="one-shot time to accuracy / pipeline's (< 1: one-shot faster)",
           title=f"P = {doc['config']['ranks']}, predicted by the planner")
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--ranks", type=int, default=16)
    ap.add_argument("--depths", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 50, 0], help="0: the full batch")
    ap.add_argument("--networks", nargs="+", default=["shm", "nvlink"])
    ap.add_argument("--cfactors", type=int, nargs="+", default=[2, 4, 8],
                    help="one-shot's coarsening factors, each probed (the first also prices the others)")
    args = ap.parse_args(argv)
    if args.quick:
        args.depths, args.widths, args.batches, args.networks, args.cfactors = [32], [8], [50], ["shm"], [2, 4]
    rows = []
    for d, w, b in itertools.product(args.depths, args.widths, args.batches):
        new = rows_for(d, w, b, args.ranks, args.networks, args.cfactors)
        rows += new
        print("\n".join(markdown(new).splitlines()[2:]), flush=True)
    print(markdown(rows))
    doc = common.document(NAME, {"paper": PAPER, "ranks": args.ranks, "depths": args.depths, "widths": args.widths,
                                 "batches": args.batches, "networks": args.networks,
                                 "cfactors": args.cfactors}, rows)
    common.finish(NAME, doc, args, plot)


if __name__ == "__main__":
    main()
