"""Where the seconds of one-shot's MGRIT solves go: wall time per evaluation and each solve's phases.

    python -m bench.mgrit_phases [--quick] [--layers 256] [--iterations 6] [--rounds 3] [--out DIR]

The paper's peaks settings (T = 1, smoothrelu, width 8, 5000 samples, full-batch L-BFGS), one-shot
without the convergence monitor, one process, NumPy; at 256 layers the solver keeps 2 levels on
one rank.  Every objective evaluation's forward and adjoint :class:`SolveStats` are summed: the
solve's wall time and its ``phase_seconds`` (relax, residual, restrict, correct, interpolate,
coarse_solve, exchange: data movement between positions and into the coarsest solve).  Reported
per evaluation, one row per round (a fresh ``Trainer`` each).  To compare two commits, run it in a
worktree of each, interleaved.  Writes ``mgrit_phases.json`` and a plot of the phases per round.
"""
from __future__ import annotations

from bench import common
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer

PAPER = dict(example="peaks", final_time=1.0, activation="smoothrelu", method="oneshot", monitor_every=0,
             progress=False, val_every=0)


def measure(layers: int, iterations: int) -> dict:
    """One training run: ms per evaluation, and per solve (forward, adjoint) its wall and phases."""
    acc = {"forward": {}, "adjoint": {}}
    walls = {"forward": 0.0, "adjoint": 0.0}
    count = [0]
    evaluate = LayerParallel.evaluate

    def hooked(self, *args, **kwargs):
        out = evaluate(self, *args, **kwargs)
        count[0] += 1
        for name, st in zip(("forward", "adjoint"), self.last_stats):
            if st is not None:
                walls[name] += st.wall_s
                for phase, t in (st.phase_seconds or {}).items():
                    acc[name][phase] = acc[name].get(phase, 0.0) + t
        return out

    LayerParallel.evaluate = hooked
    try:
        tr = Trainer(TrainConfig(layers=layers, iterations=iterations, **PAPER))
        tr.run()
    finally:
        LayerParallel.evaluate = evaluate
    n = count[0]
    evals = sum(e["n_evals"] for e in tr.result.history)
    return {"evaluations": n, "ms_per_evaluation": tr.result.wall_s / evals * 1e3,
            "levels": [h.get("levels") for h in tr.result.history],
            **{f"{k}_ms": walls[k] / n * 1e3 for k in walls},
            **{f"{k}_phases_ms": {p: t / n * 1e3 for p, t in sorted(acc[k].items(), key=lambda x: -x[1])}
               for k in acc}}


def plot(path):
    """Per round: the forward and the adjoint solve's milliseconds per evaluation, stacked by phase."""
    rows = common.load_json(path)["results"]
    phases = sorted({ph for r in rows for k in ("forward", "adjoint") for ph in r[k + "_phases_ms"]})
    fig, ax = common.subplots(1, 1, figsize=(8, 0.5 * len(rows) * 2 + 1.5))
    labels, left = [], []
    for r in rows:
        for k in ("forward", "adjoint"):
            labels.append(f"round {r['round']} {k}")
            left.append((r[k + "_phases_ms"], len(labels) - 1))
    for ph in phases:
        starts = [sum(v for q, v in d.items() if phases.index(q) < phases.index(ph)) for d, _ in left]
        ax.barh([y for _, y in left], [d.get(ph, 0.0) for d, _ in left], left=starts, label=ph)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="ms per evaluation")
    ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=256)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    layers, its, rounds = (32, 2, 1) if args.quick else (args.layers, args.iterations, args.rounds)
    rows = []
    for r in range(rounds):
        row = {"round": r, **measure(layers, its)}
        rows.append(row)
        print(f"round {r}: {row['ms_per_evaluation']:.1f} ms per evaluation, levels {row['levels']}", flush=True)
        for k in ("forward", "adjoint"):
            print(f"  {k} solve {row[k + '_ms']:.1f} ms: "
                  + ", ".join(f"{ph} {t:.1f}" for ph, t in row[k + "_phases_ms"].items()), flush=True)
    doc = common.document("mgrit_phases", {"layers": layers, "iterations": its, "rounds": rounds, **PAPER}, rows)
    common.finish("mgrit_phases", doc, args, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
