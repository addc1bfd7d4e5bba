"""The planner (``gpubraid plan``, ``--method auto``) against real runs on 1 and 2 ranks.

    python -m bench.plan_validation [--workloads peaks-64,peaks-256,minibatch] [--repeats 2] [--out DIR]

For each workload: the plan's predicted seconds per step of every candidate on P = 1 and 2 (one
probe, ``gpubraid.training.plan``); real runs of the candidates that differ (serial on 1 rank;
on 2: data groups, the pipeline at the planner's M and at the automatic M, one-shot on 2 layer
ranks) and of ``--method auto`` on 1 and 2 ranks, interleaved over ``--repeats`` rounds, each
traced (``--trace``) and replayed on the planner's network model (thread CPU time: one core per
rank, robust to the other jobs on a shared machine).  Per run: the median seconds per step of its
history (first step left out), the loop's mean, the replay's mean, the load average.  Reported:
predicted / measured (median step: one evaluation) and predicted / replayed (the mean step,
the prediction scaled to the run's evaluations per step) per candidate, and whether auto's choice is within
10 % of the best measured variant on its rank count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import common  # first: sets BLAS threads before NumPy loads
from gpubraid.training.costmodel import layer_block
from gpubraid.training.probe import Probe

NAME = "plan_validation"
MINIBATCH = ["peaks", "--layers", "64", "--channels", "32", "--optimizer", "adam", "--lr", "1e-2",
             "--batch-size", "50", "--dtype", "float32"]
WORKLOADS = {
    "peaks-64": dict(args=["peaks", "--layers", "64"], iterations=12),
    "peaks-256": dict(args=["peaks", "--layers", "256"], iterations=6),
    "minibatch": dict(args=MINIBATCH, iterations=40),
    "paper-32": dict(args=["peaks", "--layers", "32", "--final-time", "1", "--activation", "smoothrelu"], iterations=12),
    "paper-256": dict(args=["peaks", "--layers", "256", "--final-time", "1", "--activation", "smoothrelu"],
                      iterations=6),
    "mnist": dict(args=["mnist"], iterations=30),
}


def predictions(args: list) -> dict:
    """The plan of ``args`` on 1 and 2 ranks: {P: [candidate dicts, best first]}, the probe."""
    from dataclasses import asdict

    from gpubraid.cli.main import build_parser, train_config
    from gpubraid.runtime.comm import Comm
    from gpubraid.training import plan
    from gpubraid.training.config import TrainConfig
    from gpubraid.training.trainer import Trainer

    cfg = train_config(build_parser().parse_args(["train", *args]))
    made = plan.make_plan(cfg, 1, plan.SHARED_MEMORY, lambda c: Trainer(c, Comm.single()))
    two = plan.candidates(made.probe, TrainConfig(**made.config), 2, plan.SHARED_MEMORY, made.h)
    return {"probe": made.probe.as_dict(), "1": [asdict(c) for c in made.candidates],
            "2": [asdict(c) for c in two]}


def variants(pred: dict) -> dict:
    """name -> (ranks, train options) of the runs to measure."""
    two = pred["2"]
    pipe = next(c for c in two if c["method"] == "pipeline")
    out = {"serial-1": (1, ["--method", "serial"]), "data-2": (2, ["--method", "serial", "--data-parallel", "2"]),
           f"pipeline-2-M{pipe['M']}": (2, ["--method", "pipeline", "--micro-batches", str(pipe["M"])]),
           "oneshot-2": (2, ["--method", "oneshot"]), "auto-1": (1, ["--method", "auto"]),
           "auto-2": (2, ["--method", "auto"])}
    if pipe["M"] != 8:
        out["pipeline-2-M8"] = (2, ["--method", "pipeline", "--micro-batches", "8"])
    return out


def run_once(ranks: int, args: list, iterations: int) -> dict:
    from gpubraid.runtime.replay import replay
    from gpubraid.runtime.trace import load
    from gpubraid.training.plan import SHARED_MEMORY

    with tempfile.TemporaryDirectory() as tmp:
        metrics, trace = Path(tmp) / "m.json", Path(tmp) / "t.json"
        cmd = [sys.executable, "-m", "gpubraid", "train", *args, "--iterations", str(iterations), "--val-every", "0",
               "--no-progress", "--metrics", str(metrics), "--trace", str(trace)]
        if ranks > 1:
            cmd = [common.mpiexec(), "-n", str(ranks), *cmd]
        load_avg = os.getloadavg()[0]
        out = subprocess.run(cmd, capture_output=True, text=True, env=common.bench_env(), timeout=3600)
        if out.returncode:
            raise RuntimeError(" ".join(cmd) + "\n" + out.stderr[-2000:])
        m = json.loads(metrics.read_text())
        doc = load(str(trace))
        rep = replay(doc, SHARED_MEMORY)
    t = [h["time_s"] for h in m["history"]]
    per = [b - a for a, b in zip(t, t[1:])]
    plan = m.get("plan")
    return {"s_per_step": common.median(per[1:] or per), "loop_mean_s": doc["meta"]["loop_s"] / iterations,
            "replay_mean_s": rep.wall_s / iterations, "load": load_avg, "objective": m["objective"],
            "choice": None if plan is None else {k: plan["choice"][k] for k in ("D", "L", "method", "levels", "M")},
            "plan_line": None if plan is None else plan["line"], "n_evals": [h["n_evals"] for h in m["history"]]}


def matches(cand: dict, name: str, ranks: int, opts: list) -> bool:
    """Whether candidate ``cand`` is the run ``name`` (ranks, options)."""
    method = opts[opts.index("--method") + 1]
    D = int(opts[opts.index("--data-parallel") + 1]) if "--data-parallel" in opts else 1
    M = int(opts[opts.index("--micro-batches") + 1]) if "--micro-batches" in opts else None
    if (cand["D"], cand["L"]) != (D, ranks // D):
        return False
    if method == "serial":
        return cand["method"] in ("serial", "pipeline") and (cand["L"] == 1 or cand["M"] == 4 * cand["L"])
    return cand["method"] == method and (M is None or cand["M"] == M)


def replayed_ranks(name: str, P: int, iterations: int) -> dict:
    """Oversubscribed traced runs on P ranks of the plan's best candidate per method family,
    replayed on the planner's network (one core per rank): predicted / replayed per candidate."""
    from dataclasses import asdict

    from gpubraid.cli.main import build_parser, train_config
    from gpubraid.runtime.comm import Comm
    from gpubraid.training import plan
    from gpubraid.training.trainer import Trainer

    args = WORKLOADS[name]["args"]
    cfg = train_config(build_parser().parse_args(["train", *args]))
    made = plan.make_plan(cfg, P, plan.SHARED_MEMORY, lambda c: Trainer(c, Comm.single()))
    picks, seen = [], set()
    for c in (c for c in made.candidates if c.method != "exact"):
        key = (c.method, c.D == P, c.L == P)
        if key not in seen:
            seen.add(key)
            picks.append(c)
    rows = []
    for c in picks:
        extra = [f"--{k.replace('_', '-')}={v}" for k, v in c.settings().items()]
        r = run_once(P, [*args, *extra], iterations)
        evals = sum(r["n_evals"]) / len(r["n_evals"])
        over = made.probe.at_block(layer_block(made.probe.layers, c.L))[1]
        pred = c.step_s + (evals - 1) * (c.step_s - over)
        rows.append({"candidate": asdict(c), "replayed_s": r["replay_mean_s"], "loop_mean_s": r["loop_mean_s"],
                     "evals_per_step": evals, "predicted_mean_s": pred, "ratio_replayed": pred / r["replay_mean_s"],
                     "load": r["load"]})
        print(f"{name} P={P} {c.label():40s} predicted {pred:.4f} replayed {r['replay_mean_s']:.4f} "
              f"({pred / r['replay_mean_s']:.2f}) oversubscribed wall {r['loop_mean_s']:.3f}", flush=True)
    return {"workload": name, "ranks": P, "iterations": iterations, "probe": made.probe.as_dict(), "rows": rows}


def runs_choice(opts: list, P: int) -> tuple:
    """(method, D, M) that the train options ``opts`` run on P ranks (serial on one layer rank: M 1)."""
    def get(name, default):
        return opts[opts.index(name) + 1] if name in opts else default
    method, D = get("--method", "oneshot"), int(get("--data-parallel", 1))
    if method == "serial" and P // D > 1:
        method = "pipeline"
    M = int(get("--micro-batches", 4 * (P // D) if P // D > 1 else 1))
    return method, D, M if method != "oneshot" else 1


def judge(entry: dict, vs: dict) -> dict:
    """Per rank count: auto's choice, the variant that runs it, and how its time (wall median and
    replay) compares with the best variant's; also the auto run's own wall time."""
    for P in (1, 2):
        real = [c for c in entry["compare"] if c["ranks"] == P and not c["variant"].startswith("auto")]
        auto = next(c for c in entry["compare"] if c["variant"] == f"auto-{P}")
        choice = entry["runs"][f"auto-{P}"][0]["choice"]
        same = next((c for c in real if runs_choice(vs[c["variant"]][1], P) == (choice["method"], choice["D"],
                                                                                 choice["M"])), None)
        out = {"choice": choice, "variant": same["variant"] if same else None, "auto_run_measured_s": auto["measured_s"]}
        for key in ("measured_s", "replayed_s"):
            best = min(real, key=lambda c: c[key])
            out[f"best_by_{key}"] = best["variant"]
            out[f"choice_over_best_{key}"] = same[key] / best[key] if same else None
        entry[f"auto_{P}"] = out
    return entry


def plot(json_path, png_path=None):
    """Per workload: predicted against replayed and measured seconds per step of every variant."""
    doc = common.load_json(json_path)
    rows = doc["results"]
    fig, axes = common.subplots(1, len(rows), figsize=(5 * len(rows), 4.5), squeeze=False)
    for ax, e in zip(axes[0], rows):
        cs = e["compare"]
        xs = range(len(cs))
        ax.bar([x - 0.27 for x in xs], [c["predicted_mean_s"] or 0 for c in cs], 0.27, label="predicted (mean step)")
        ax.bar(list(xs), [c["replayed_s"] for c in cs], 0.27, label="replayed trace (CPU time)")
        ax.bar([x + 0.27 for x in xs], [c["measured_s"] for c in cs], 0.27, label="measured wall (median step)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([c["variant"] for c in cs], rotation=35, fontsize=7, ha="right")
        ax.set_ylabel("s per training step")
        ax.set_title(f"{e['workload']}: auto picks {e['auto_1']['variant']} (P=1), {e['auto_2']['variant']} "
                     f"(P=2)", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(f"planner validation, {doc['machine']['cpu_model']} x{doc['machine']['cores']} (shared), "
                 f"{doc['date'][:10]}", fontsize=9)
    return common.save_figure(fig, json_path, png_path)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workloads", type=lambda s: s.split(","), default=["peaks-64", "peaks-256", "minibatch"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--replay-ranks", type=int, default=0, help="instead: traced runs on this many ranks "
                   "(oversubscribed), the plan against their replay")
    p.add_argument("--from", dest="from_json", default=None, help="judge and plot an existing result JSON")
    args = p.parse_args(argv)
    if args.from_json:
        doc = common.load_json(args.from_json)
        for e in doc["results"]:
            judge(e, variants(e["predicted"]))
        common.write_json(args.from_json, doc)
        print(plot(args.from_json))
        for e in doc["results"]:
            print(e["workload"], e["auto_1"], e["auto_2"])
        return 0
    if args.replay_ranks:
        rows = [replayed_ranks(w, args.replay_ranks, max(2, WORKLOADS[w]["iterations"] // 3)) for w in args.workloads]
        doc = common.document(NAME + "_replay", {"workloads": args.workloads, "ranks": args.replay_ranks}, rows)
        print(common.write_json(common.result_path(NAME + f"-P{args.replay_ranks}", args.out), doc))
        return 0
    rows = []
    for name in args.workloads:
        w = WORKLOADS[name]
        pred = predictions(w["args"])
        vs = variants(pred)
        runs = {v: [] for v in vs}
        for _ in range(args.repeats):
            for v, (ranks, extra) in vs.items():
                runs[v].append(run_once(ranks, [*w["args"], *extra], w["iterations"]))
                r = runs[v][-1]
                print(f"{name:10s} {v:16s} {r['s_per_step']:.4f} s/step (loop {r['loop_mean_s']:.4f}, replay "
                      f"{r['replay_mean_s']:.4f}) load {r['load']:.1f} {r['choice'] or ''}", flush=True)
        pred_probe = pred["probe"]
        entry = {"workload": name, "args": w["args"], "iterations": w["iterations"], "probe": pred["probe"],
                 "predicted": {"1": pred["1"], "2": pred["2"]}, "runs": runs, "compare": []}
        for v, (ranks, extra) in vs.items():
            measured = common.median([r["s_per_step"] for r in runs[v]])
            replayed = common.median([r["replay_mean_s"] for r in runs[v]])
            cand = next((c for c in pred[str(ranks)] if not v.startswith("auto") and matches(c, v, ranks, extra)), None)
            if v.startswith("auto"):
                choice = runs[v][0]["choice"]
                cand = next((c for c in pred[str(ranks)] if all(c[k] == choice[k] for k in choice)), None)
            # the replay's mean counts every evaluation (L-BFGS: two in the first step and a few others):
            # the prediction of one step times the mean evaluations per step, the step overhead once
            evals = common.median([sum(r["n_evals"]) / len(r["n_evals"]) for r in runs[v]])
            ps = cand["step_s"] if cand else None
            over = Probe(**pred_probe).at_block(layer_block(pred_probe["layers"], cand["L"]))[1] if cand else 0.0
            pred_mean = ps + (evals - 1) * (ps - over) if cand else None
            entry["compare"].append({"variant": v, "ranks": ranks, "measured_s": measured, "replayed_s": replayed,
                                     "predicted_s": ps, "evals_per_step": evals, "predicted_mean_s": pred_mean,
                                     "ratio_measured": ps / measured if cand else None,
                                     "ratio_replayed": pred_mean / replayed if cand else None})
        rows.append(judge(entry, vs))
    doc = common.document(NAME, {"workloads": args.workloads, "repeats": args.repeats,
                                 "loadavg_at_end": os.getloadavg()}, rows)
    path = common.write_json(common.result_path(NAME, args.out), doc)
    print(path)
    if not args.no_plot:
        print(plot(path))
    for e in rows:
        for c in e["compare"]:
            rm = f"{c['ratio_measured']:.2f}" if c["ratio_measured"] else "-"
            rr = f"{c['ratio_replayed']:.2f}" if c["ratio_replayed"] else "-"
            ps = f"{c['predicted_s']:.4f}" if c["predicted_s"] else "-"
            print(f"{e['workload']:10s} {c['variant']:16s} P={c['ranks']} measured {c['measured_s']:.4f} replayed "
                  f"{c['replayed_s']:.4f} predicted {ps}  pred/meas {rm}  pred/replay {rr}")
        for P in (1, 2):
            a = e[f"auto_{P}"]
            print(f"{e['workload']:10s} auto P={P}: {a['variant']}; over the best: wall {a['choice_over_best_measured_s']} "
                  f"({a['best_by_measured_s']}), replay {a['choice_over_best_replayed_s']} ({a['best_by_replayed_s']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
