"""Where one evaluation's time goes with M micro-batches on one layer rank: thread time per part.

    python -m bench.evaluation_parts [--quick] [--out DIR] [--no-plot] [--layers 256] [--samples 5000]
                                     [--micro-batches 1 8] [--rounds 12]

Peaks (8 channels, tanh), one process, one BLAS thread.  One trainer per M is built in the same
process and their evaluations (objective and gradient) alternate, round by round, so every M meets
the same moments of a machine whose speed moves.  Each part is timed by the thread's CPU time
around the calls the micro-batch pipeline makes (:mod:`gpubraid.objective.pipeline`): the forward
and backward sweeps (the C kernels), the head, the opening layer and its gradient, the regulariser,
the allocation of states and adjoints; ``rest`` is the evaluation less those.  Medians over the
rounds after the first two, in ms.  M > 1 on one rank is what data groups with micro-batches and
every rank of the pipeline run.
"""
from __future__ import annotations

import collections
import statistics
import time

from bench import common
from gpubraid.objective import pipeline
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer

#: The pipeline module's functions timed (module-level names it calls) and their part.
SWEEPS = {"forward_sweep": "forward sweep", "backward_sweep": "backward sweep", "backward_through": "backward sweep",
          "empty_states": "new arrays", "empty_aligned": "new arrays", "empty_aligned_like": "new arrays"}
#: The network's methods timed (bound per trainer) and their part.
NETWORK = {"open_forward": "opening", "open_grad": "opening gradient", "regularizer": "regulariser"}


class Clock:
    """Thread-time accumulators by part, filled by wrappers around the timed callables."""

    def __init__(self):
        self.parts = collections.defaultdict(float)

    def wrap(self, owner, attr: str, part: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[part] += time.thread_time() - t

        setattr(owner, attr, timed)


def measure(layers: int, samples: int, micro_batches: list[int], rounds: int) -> list[dict]:
    clock = Clock()
    for attr, part in SWEEPS.items():
        if hasattr(pipeline, attr):
            clock.wrap(pipeline, attr, part)
    jobs = {}
    for M in micro_batches:
        trainer = Trainer(TrainConfig(example="peaks", layers=layers, n_train=samples, method="serial",
                                      micro_batches=M, iterations=1, progress=False))
        for attr, part in NETWORK.items():
            clock.wrap(trainer.model, attr, part)
        clock.wrap(trainer.model.head, "loss", "head")
        jobs[M] = (trainer, trainer.data.take("train", None, trainer.be.xp))
    seen = {M: collections.defaultdict(list) for M in jobs}
    for r in range(rounds):
        for M, (trainer, (x, y, B)) in jobs.items():
            clock.parts.clear()
            t = time.thread_time()
            trainer.lp.evaluate(trainer.theta, x, y, B)
            total = time.thread_time() - t
            if r < 2:
                continue
            for part, s in clock.parts.items():
                seen[M][part].append(s)
            seen[M]["rest"].append(total - sum(clock.parts.values()))
            seen[M]["evaluation"].append(total)
    return [{"micro_batches": M, "layers": layers, "samples": samples,
             "ms": {part: round(1e3 * statistics.median(v), 3) for part, v in parts.items()}}
            for M, parts in seen.items()]


def plot(path):
    doc = common.load_json(path)
    rows = doc["results"]
    parts = [p for p in rows[0]["ms"] if p != "evaluation"]
    fig, ax = common.subplots(1, 1, figsize=(9, 1.4 + 0.6 * len(rows)))
    for i, row in enumerate(rows):
        left = 0.0
        for j, part in enumerate(parts):
            width = row["ms"].get(part, 0.0)
            ax.barh(i, width, left=left, color=f"C{j}", label=part if i == 0 else None)
            left += width
    ax.set_yticks(range(len(rows)), [f"M = {r['micro_batches']}" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms per evaluation (thread time, median)")
    ax.set_title(f"peaks, {rows[0]['layers']} layers, {rows[0]['samples']} samples, one rank", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return common.save_figure(fig, path)


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=256)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--micro-batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=12)
    args = p.parse_args()
    layers, samples, rounds = (16, 400, 4) if args.quick else (args.layers, args.samples, args.rounds)
    rows = measure(layers, samples, args.micro_batches, rounds)
    for row in rows:
        print(f"M = {row['micro_batches']}: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ms"].items()))
    config = {"layers": layers, "samples": samples, "micro_batches": args.micro_batches, "rounds": rounds,
              "clock": "thread"}
    common.finish("evaluation_parts", common.document("evaluation_parts", config, rows), args, plot)


if __name__ == "__main__":
    main()
