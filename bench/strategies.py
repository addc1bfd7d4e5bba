"""Which strategy when: every way to spend P ranks on a workload, head to head, by time to accuracy.

    python -m bench.strategies [--quick] [--workloads NAME,...] [--ranks 1,2,4,8,16] [--out DIR]

Per workload (:data:`WORKLOADS`):

1. **Evaluations to accuracy** (one process).  Serial and oneshot train the workload's iterations,
   validating every ``val_every``; target = serial's final validation accuracy − 0.01; each method's
   objective evaluations up to its first validation at or above it (L-BFGS's line search evaluates
   more than once in some iterations).  Data groups and the pipeline follow
   serial's trajectory (the same gradient to round-off, tested), so they share its count; oneshot's
   results are identical on every rank count (tested), so its one-process count holds at every P.
2. **Seconds on P ranks** (replay).  Every candidate (D data groups × L layer ranks, method,
   micro-batches M; :func:`candidates`) trains 1 + ``probe_iterations`` iterations traced
   (``--trace``; P > 2 oversubscribes this machine's cores; ``--trace-median K``: traced K
   times, each span the median of the K) and :mod:`gpubraid.runtime.replay`
   predicts its wall time with one core per rank and the measured network (``bench.pingpong``),
   and when the ranks pass each iteration's end (the trace's marks): the first iteration's time,
   and the seconds per objective evaluation after it (so that first touches and start-up do not
   count as steady-state cost).  Where the ranks took turns, every candidate is also replayed with
   every rank's spans timed alone (:mod:`bench.rerun`: the traced run records what MPI delivered
   to each rank, and each rank is run again by itself from that; ``best_alone_spans``).  Time to
   target = first iteration + the further evaluations to target (from step 1) × seconds per
   evaluation.
3. **Real runs at P = 1 and 2**: the same candidates untraced, each right after its traced twin
   (``--trace-median K``: K twins, their median wall time); their loop wall time against the
   replay of the traced run (``replay / real``: the shortest of each; and the median over the
   repeats of each traced run against its twin), and the replay against the traced run's own wall
   time (``replay / traced``).
4. **The planner** (``gpubraid plan --ranks P --json``, P = 1, 2, 8; asked first, and its first
   candidate measured with the others when it is none of them) against the fastest measured
   (``auto / best``).
5. **Beyond the measurements**: the planner's predicted time to accuracy of its best data-parallel,
   pipeline and oneshot candidates at P = 16 … 1024.

Writes ``strategies.json`` (and ``.png``: time to target against P per workload).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import CLI_ENV, document, load_json, parser, result_path, save_figure, train_cli, write_json
from bench.replay import network_model
from bench.rerun import alone
from gpubraid.runtime.replay import replay
from gpubraid.runtime.rerun import RECORD_ENV
from gpubraid.runtime.trace import host_cores, load
from gpubraid.runtime.trace import median as trace_median

#: name -> (train arguments, iterations, validate every, iterations per traced probe).  The probes
#: run at least ~0.5 s on one rank: shorter ones (paper-32 at 30 iterations, 0.2-0.3 s) differed
#: by 20-30 % between a traced run and its untraced twins on the shared VM.
WORKLOADS = {
    "peaks-64": (["peaks", "--layers", "64"], 100, 5, 30),
    "peaks-256": (["peaks", "--layers", "256"], 100, 5, 30),
    "paper-32": (["peaks", "--layers", "32", "--final-time", "1", "--activation", "smoothrelu"], 130, 5, 60),
    "paper-256": (["peaks", "--layers", "256", "--final-time", "1", "--activation", "smoothrelu"], 130, 5, 30),
    "adam-dense": (["peaks", "--layers", "64", "--channels", "32", "--optimizer", "adam", "--lr", "1e-3",
                    "--batch-size", "50", "--dtype", "float32"], 600, 50, 400),
    "mnist-conv": (["mnist", "--n-train", "4000", "--n-val", "1000"], 300, 50, 6),
}
QUICK = {"peaks-64": (["peaks", "--layers", "16", "--n-train", "500"], 10, 5, 2)}


#: Micro-batches of the serial candidates on one layer rank (the planner's choices there).
SERIAL_MICRO_BATCHES = (1, 2, 4, 8)


def candidates(P: int, N: int, batch: int, exact: bool = False) -> list[tuple[str, list[str], int]]:
    """(label, train arguments, ranks) of every strategy measured on P ranks for N layers and
    ``batch`` samples per step: data groups alone (serial with M = 1, 2, 4, 8 micro-batches one
    after the other, and oneshot in each group), the layer pipeline (1F1B with M = 2L and 4L, Chimera
    with M = L and 2L on an even L), oneshot on the layer ranks, and D = 2 (P ≥ 4) and D = P/2 (P ≥ 8) groups of each; with ``exact`` also exact
    MGRIT in P data groups and on P layer ranks (its solves to the tolerance cost tens of serial
    evaluations each, so it is left out by default)."""
    out = []
    if exact:
        out += [("exact" if P == 1 else f"{P}x1 exact", ["--method", "exact", *(["--data-parallel", str(P)]
                                                                          if P > 1 else [])], P)]
        out += [(f"1x{P} exact", ["--method", "exact"], P)] if 1 < P <= N else []
    if batch >= P:
        name = "serial" if P == 1 else f"data {P}"
        grp = ["--data-parallel", str(P)] if P > 1 else []
        for M in sorted({min(k, -(-batch // P)) for k in SERIAL_MICRO_BATCHES}):
            out.append((name if M == 1 else f"{name} M={M}",
                        ["--method", "serial", *grp, *(["--micro-batches", str(M)] if M > 1 else [])], P))
        out.append(("oneshot" if P == 1 else f"{P}x1 oneshot", ["--method", "oneshot", *grp], P))
    for D in sorted({1, 2, P // 2} if P >= 8 else ({1, 2} if P >= 4 else {1})):
        L = P // D
        if L < 2 or L > N or batch < D:
            continue
        grp = ["--data-parallel", str(D)] if D > 1 else []
        per_group = -(-batch // D)
        for M in sorted({min(k * L, per_group) for k in (2, 4)}):
            out.append((f"{D}x{L} pipeline M={M}", ["--method", "pipeline", "--micro-batches", str(M), *grp], P))
        for M in sorted({min(k * L, per_group) for k in (1, 2)} if L % 2 == 0 else ()):
            out.append((f"{D}x{L} chimera M={M}", ["--method", "pipeline", "--schedule", "chimera", "--micro-batches",
                                                   str(M), *grp], P))
        out.append((f"{D}x{L} oneshot", ["--method", "oneshot", *grp], P))
    return out


def to_target(history: list, target: float):
    """(iterations, objective evaluations, seconds) up to the first validation at or above
    ``target``; Nones if none reached it."""
    evals = 0
    for h in history:
        evals += h.get("n_evals") or 1
        if h.get("val_accuracy") is not None and h["val_accuracy"] >= target:
            return h["iter"] + 1, evals, h["time_s"]
    return None, None, None


def accuracy_phase(base: list, iterations: int, val_every: int, tmp: str) -> dict:
    """Serial and oneshot on one process: final accuracies, the target and evaluations to it."""
    out = {}
    for method in ("serial", "oneshot"):
        m = train_cli(1, base + ["--method", method, "--iterations", str(iterations), "--val-every", str(val_every)],
                  tmp, False)
        out[method] = {"val_accuracy": m["val_accuracy"], "wall_s": m["wall_s"], "history": [
            {k: h.get(k) for k in ("iter", "objective", "val_accuracy", "time_s", "levels", "n_evals")}
            for h in m["history"]]}
        print(f"  {method}: val {m['val_accuracy']:.3f} after {iterations} iterations, {m['wall_s']:.1f} s", flush=True)
    target = out["serial"]["val_accuracy"] - 0.01
    for method in ("serial", "oneshot"):
        its, evals, secs = to_target(out[method]["history"], target)
        out[method].update(iterations_to_target=its, evals_to_target=evals, one_process_s_to_target=secs)
    out["target"] = target
    return out


def _evals(metrics: dict) -> int:
    return sum(h.get("n_evals") or 1 for h in metrics["history"])


def time_phase(base: list, P: int, cands: list, probe_its: int, net, tmp: str, repeats: int = 1,
               median: int = 1) -> list:
    """Every candidate of ``cands`` (:func:`measured`) on P ranks, replayed: a (1 + ``probe_its``)-
    iteration run traced, its first iteration (startup: first touches, the optimiser's first line
    search) and the seconds per objective evaluation after it, both from the replay's iteration
    marks (one run: a disturbance of the first iteration cannot leak into the steady state, as it
    did when they came from the difference of two runs).  At P ≤ 2 also the run untraced, each
    right after a traced twin (so that both see the same load): its real loop wall time against
    the replay (``replay / real``), and the replay against the traced run's own wall time
    (``replay / traced``: the model alone, without run-to-run noise).

    The candidates are measured side by side, in rounds: each round runs every candidate once, so
    that a slow spell of the shared machine falls on all of them, not on the one that ran then;
    each candidate's turn starts with one untimed iteration of it (a run that follows another
    candidate's pays a cold start of up to seconds in its first iteration, which its twin right
    after it would not).
    With ``median`` > 1 there are that many rounds; each candidate's traced runs are replayed as one
    trace whose spans are the median of theirs (:func:`gpubraid.runtime.trace.median`), and its
    untraced twins' wall time is the median of theirs: the same statistic on both sides of
    ``replay / real``.  With ``repeats`` > 1 the rounds are made that many times over and each
    candidate's least disturbed (shortest replay, shortest real run) kept.  At P > cores, where the
    ranks took turns, every candidate is replayed again with each rank's spans timed alone, from
    a rerun of each rank (:mod:`bench.rerun`) after each of its traced runs, the spans the median
    over the rounds (``alone_spans``)."""
    crowded = P > host_cores()  # as the tracer's gate counts them
    rec = os.path.join(tmp, "record")   # one record at a time: its reruns follow at once
    runs = {label: [{"docs": [], "walls": [], "alone": []} for _ in range(repeats)] for label, _, _ in cands}
    for rep in range(repeats):
        for _ in range(median):
            for label, extra, ranks in cands:
                head = base + extra + ["--val-every", "0", "--iterations"]
                args = head + [str(1 + probe_its)]
                run = runs[label][rep]
                # a first run after another candidate's pays a cold start (paper-256 one-shot after
                # serial M = 8: first iteration 1.2-2.1 s, against 0.5 s right after its own): one
                # untimed iteration first, so that traced run and twin start as warm as each other
                train_cli(ranks, head + ["1"], tmp, False)
                run["metrics"] = train_cli(ranks, args, tmp, True, env={RECORD_ENV: rec} if crowded else None)
                run["docs"].append(load(os.path.join(tmp, "t.json")))
                if P <= 2:
                    run["walls"].append(train_cli(ranks, args, tmp, False)["wall_s"])
                if crowded:
                    run["alone"].append(alone(run["docs"][-1], rec, args, tmp))
    return [_timing_row(P, label, extra, runs[label], net) for label, extra, _ in cands]


def _timing_row(P: int, label: str, extra: list, runs: list, net) -> dict:
    """The row of one candidate from its ``runs`` (per repeat: traced docs, twins' wall times,
    docs with the spans alone, the last metrics): see :func:`time_phase`."""
    longs = [(replay(trace_median(r["docs"]), net, "thread"), r) for r in runs]
    reals = [statistics.median(r["walls"]) for r in runs if r["walls"]]
    r2, run = min(longs, key=lambda x: x[0].wall_s)
    m2 = run["metrics"]
    ends = r2.marks.get("iteration", [])  # when every rank finished each iteration
    if len(ends) < 2:
        raise SystemExit(f"bench.strategies: {label} on {P} ranks stopped before its second iteration")
    first = ends[0]
    e1, e2 = m2["history"][0].get("n_evals") or 1, _evals(m2)
    per_eval = (ends[-1] - first) / max(e2 - e1, 1)
    row = {"P": P, "label": label, "method": extra[1], "args": extra, "first_iteration_s": first,
           "first_iteration_evals": e1, "s_per_eval": per_eval, "probe_evals": e2,
           "replay_s": r2.wall_s, "traced_wall_s": r2.traced_wall_s,
           "replay_over_traced": r2.wall_s / r2.traced_wall_s, "replays_s": [t[0].wall_s for t in longs],
           "levels": m2["history"][-1].get("levels")}
    if reals:
        real = min(reals)
        pairs = [t[0].wall_s / w for t, w in zip(longs, reals)]  # each traced run against its twin
        row.update(real_wall_s=real, real_walls_s=reals, replay_over_real=r2.wall_s / real,
                   replay_over_real_pairs=pairs, replay_over_real_median=statistics.median(pairs))
    if run["alone"]:  # the spans of the traced runs' events (the same in each) from reruns alone
        t3 = replay(trace_median(run["alone"]), net, "thread").marks["iteration"]
        row["alone_spans"] = {"first_iteration_s": t3[0], "s_per_eval": (t3[-1] - t3[0]) / max(e2 - e1, 1)}
    print(f"  P={P} {label:26s} first it {first:.3f} s, {per_eval:.4f} s/eval"
          + (f"; {1 + m2['history'][-1]['iter']} its replay {r2.wall_s:.3f} s, real {row['real_wall_s']:.3f} s "
             f"({row['replay_over_real']:.2f}; pairs {row['replay_over_real_median']:.2f}; "
             f"traced {row['replay_over_traced']:.2f})" if reals else "")
          + (f" ({row['alone_spans']['s_per_eval']:.4f} with spans alone)" if "alone_spans" in row else "")
          + f", levels {row['levels']}", flush=True)
    return row


def planner_phase(base: list, P: int, tmp: str) -> dict:
    """``gpubraid plan --ranks P``: its candidates, best first; ``{"error": ...}`` when the job
    cannot use P ranks (e.g. more ranks than samples × layers)."""
    path = os.path.join(tmp, "plan.json")
    cmd = [sys.executable, "-m", "gpubraid", "plan", *base, "--ranks", str(P), "--json", path]
    out = subprocess.run(cmd, capture_output=True, text=True, env=CLI_ENV, timeout=1200)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(Path(path).read_text())


def plan_label(plan_cand: dict, P: int) -> str:
    """The label :func:`candidates` gives the planner's candidate on P ranks (D, L, method and
    micro-batches; one-shot's own micro-batches are its automatic ones)."""
    D, L, method, M = plan_cand["D"], plan_cand["L"], plan_cand["method"], plan_cand.get("M") or 1
    if method == "serial":  # data groups (L = 1), micro-batches one after the other
        return ("serial" if P == 1 else f"data {D}") + (f" M={M}" if M > 1 else "")
    if method == "pipeline":
        return f"{D}x{L} {'chimera' if plan_cand.get('schedule') == 'chimera' else 'pipeline'} M={M}"
    return method if P == 1 else f"{D}x{L} {method}"


def plan_args(plan_cand: dict) -> list:
    """The train arguments of a planner candidate."""
    out = ["--method", plan_cand["method"]]
    if plan_cand["D"] > 1:
        out += ["--data-parallel", str(plan_cand["D"])]
    if plan_cand["method"] == "pipeline" or (plan_cand["method"] == "serial" and plan_cand["M"] > 1):
        out += ["--micro-batches", str(plan_cand["M"])]
    return out + (["--schedule", "chimera"] if plan_cand.get("schedule") == "chimera" else [])


def measured(P: int, N: int, batch: int, plan: dict | None, exact: bool = False) -> list:
    """:func:`candidates` on P ranks, and the planner's choice when it is none of them."""
    cands = candidates(P, N, batch, exact)
    if plan and "error" not in plan:
        first = plan["candidates"][0]
        label = plan_label(first, P)
        if label not in {c[0] for c in cands}:
            cands.append((label, plan_args(first), P))
    return cands


def matches(plan_cand: dict, row: dict) -> bool:
    """Whether a planner candidate is the measured strategy ``row``."""
    return row["label"] == plan_label(plan_cand, row["P"])


def summarize(w: dict) -> dict:
    """Per P: time to target of every candidate, the best, its speedup over serial on one rank."""
    acc = w["accuracy"]
    evals = {"serial": acc["serial"]["evals_to_target"], "oneshot": acc["oneshot"]["evals_to_target"]}
    serial_1 = None
    by_P = {}
    for row in w["timing"]:
        k = evals["oneshot" if row["method"] == "oneshot" else "serial"]
        for r in (row, row.get("alone_spans")):   # the replay, and with every rank's spans alone
            if r is not None:
                r["s_to_target"] = None if k is None else \
                    r["first_iteration_s"] + max(k - row["first_iteration_evals"], 0) * r["s_per_eval"]
        if row["P"] == 1 and row["label"] == "serial":
            serial_1 = row["s_to_target"]
        by_P.setdefault(row["P"], []).append(row)
    best, w["best_alone_spans"] = {}, {}
    for P, rows in sorted(by_P.items()):
        done = [r for r in rows if r["s_to_target"] is not None]
        if not done:
            continue
        for out, pick in ((best, lambda r: r), (w["best_alone_spans"], lambda r: r.get("alone_spans", r))):
            b = min(done, key=lambda r: pick(r)["s_to_target"])
            out[P] = {"label": b["label"], "s_to_target": pick(b)["s_to_target"],
                      "speedup_over_serial_1": serial_1 / pick(b)["s_to_target"] if serial_1 else None}
    w["best"] = best
    for P, plan in w.get("plans", {}).items():
        if "error" in plan:
            continue
        rows = [r for r in by_P.get(int(P), []) if r["s_to_target"] is not None]
        first = plan["candidates"][0]
        hit = next((r for r in rows if matches(first, r)), None)
        alone = hit.get("alone_spans") if hit else None
        plan["choice"] = {"D": first["D"], "L": first["L"], "method": first["method"], "M": first.get("M"),
                          "measured_as": hit["label"] if hit else None,
                          "auto_over_best": (hit["s_to_target"] / best[int(P)]["s_to_target"])
                          if hit and int(P) in best else None,
                          "auto_over_best_alone_spans": (alone["s_to_target"] / w["best_alone_spans"][int(P)]
                                                         ["s_to_target"]) if alone else None}
    return w


def model_phase(base: list, tmp: str, ranks=(16, 64, 256, 1024)) -> list:
    """The planner's best data, pipeline and oneshot candidates at large P (seconds to accuracy)."""
    out = []
    for P in ranks:
        plan = planner_phase(base, P, tmp)
        row = {"P": P}
        if "error" in plan:
            out.append({**row, "error": plan["error"]})
            continue
        for fam in ("serial", "pipeline", "oneshot"):
            cs = [c for c in plan["candidates"] if c["method"] == fam]
            if cs:
                c = min(cs, key=lambda c: c["accuracy_s"])
                row[fam] = {"D": c["D"], "L": c["L"], "M": c.get("M"), "levels": c.get("levels"),
                            "step_s": c["step_s"], "accuracy_s": c["accuracy_s"]}
        out.append(row)
    return out


def plot(json_path, png_path=None):
    """Per workload: the fastest replayed time to target against P, per family (data, pipeline,
    oneshot), and serial on one rank."""
    import matplotlib.pyplot as plt

    doc = load_json(json_path)
    ws = doc["results"]
    fig, axes = plt.subplots(1, len(ws), figsize=(4 * len(ws), 3.6), squeeze=False)
    for ax, w in zip(axes[0], ws):
        fams = {"data": lambda r: r["label"].startswith(("data", "serial")),
                "pipeline": lambda r: "pipeline" in r["label"] or "chimera" in r["label"],
                "oneshot": lambda r: "oneshot" in r["label"]}
        for fam, pick in fams.items():
            pts = {}
            for r in w["timing"]:
                if pick(r) and r.get("s_to_target") is not None:
                    pts[r["P"]] = min(pts.get(r["P"], float("inf")), r["s_to_target"])
            if pts:
                Ps = sorted(pts)
                ax.plot(Ps, [pts[p] for p in Ps], "o-", label=fam)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("ranks P (replayed, one core each)")
        ax.set_title(w["name"], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("seconds to serial's val − 0.01")
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, json_path, png_path)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--workloads", default=None, help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    p.add_argument("--ranks", default="1,2,4,8,16", help="rank counts to measure (default 1,2,4,8,16)")
    p.add_argument("--plan-ranks", default="1,2,8", help="rank counts to ask the planner about (default 1,2,8)")
    p.add_argument("--network", default="measured")
    p.add_argument("--no-model", action="store_true", help="skip the planner's predictions to P = 1024")
    p.add_argument("--exact", action="store_true", help="also measure exact MGRIT in P data groups and on P layer ranks")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure every candidate this many times over, the least disturbed kept (default 1)")
    p.add_argument("--trace-median", type=int, default=1, metavar="K",
                   help="K rounds of every candidate side by side, each span the median of its K (default 1)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.trace_median < 1:
        raise SystemExit("bench.strategies: --repeats and --trace-median must be at least 1")
    table = QUICK if args.quick else WORKLOADS
    names = args.workloads.split(",") if args.workloads else list(table)
    ranks = [1, 2] if args.quick else [int(x) for x in args.ranks.split(",")]
    plan_ranks = [1, 2] if args.quick else [int(x) for x in args.plan_ranks.split(",")]
    net = network_model(args.network)
    path = result_path("strategies", args.out)
    results = []

    def save():  # after every workload, so that a later failure keeps what was measured
        write_json(path, document("strategies", {"network": net.__dict__, "ranks": ranks, "repeats": args.repeats,
                                                 "trace_median": args.trace_median, "exact": args.exact}, results))
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            base, iterations, val_every, probe_its = table[name]
            print(f"{name}: {' '.join(base)}", flush=True)
            w = {"name": name, "args": base, "iterations": iterations, "val_every": val_every,
                 "probe_iterations": probe_its}
            w["accuracy"] = accuracy_phase(base, iterations, val_every, tmp)
            meta = train_cli(1, base + ["--iterations", "1", "--val-every", "0"], tmp, False)
            N = meta["layers"]
            batch = meta["config"]["batch_size"] or meta["config"]["n_train"] or 5000
            w["layers"], w["batch"] = N, batch
            w["plans"] = {str(P): planner_phase(base + ["--iterations", str(iterations)], P, tmp) for P in plan_ranks}
            w["timing"] = [row for P in ranks for row in time_phase(
                base, P, measured(P, N, batch, w["plans"].get(str(P)), args.exact), probe_its, net, tmp, args.repeats,
                args.trace_median)]
            results.append(summarize(w))
            save()
            if not args.no_model and not args.quick:
                w["model"] = model_phase(base + ["--iterations", str(iterations)], tmp)
            for P, b in w["best"].items():
                a = w["best_alone_spans"][P]
                print(f"  best at P={P}: {b['label']}, {b['s_to_target']:.2f} s to target"
                      + (f", {b['speedup_over_serial_1']:.2f}x serial on 1 rank" if b["speedup_over_serial_1"] else "")
                      + (f"; with spans alone: {a['label']}, {a['speedup_over_serial_1']:.2f}x" if a != b else ""),
                      flush=True)
            for P, plan in w["plans"].items():
                if "error" in plan:
                    print(f"  plan P={P}: {plan['error']}", flush=True)
                    continue
                c = plan["choice"]
                print(f"  plan P={P}: {c['method']} {c['D']}x{c['L']} M={c['M']} -> measured as {c['measured_as']}, "
                      f"auto / best {c['auto_over_best']}"
                      + (f" (spans alone {c['auto_over_best_alone_spans']:.3f})" if c["auto_over_best_alone_spans"] else ""),
                      flush=True)
            save()
    print(f"-> {path}")
    if not args.no_plot:
        print(plot(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
