"""Replay a run of P ranks with every rank's spans timed alone: record, rerun each rank by itself, replay.

    python -m bench.rerun --ranks P [--repeats K] [--network measured] [--json] -- TRAIN ARGS

1. ``mpiexec -n P python -m gpubraid train ARGS --trace`` with ``GPUBRAID_RECORD``: the traced run,
   which also records what MPI delivered to each rank (:mod:`gpubraid.runtime.rerun`).
2. Every rank w again, alone: ``python -m gpubraid train ARGS --trace`` with
   ``GPUBRAID_RERUN=DIR:w``, one process at a time, so that its spans run with the machine to
   themselves, as on a core or device of its own (``--repeats K``: K reruns, each span the median).
3. The traced run's events with those spans (:func:`gpubraid.runtime.rerun.with_spans`), replayed
   with the network model next to the plain replay of the traced run.

With more ranks than cores the traced run's ranks take turns, and their spans cost 1.4-1.6x what
they cost alone (:mod:`gpubraid.runtime.trace`); at P ≤ cores the two replays differ by what ranks
side by side cost each other (shared caches and memory).  One BLAS thread per rank, as every
benchmark here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from bench.common import run_checked, train_cli
from bench.replay import network_model
from gpubraid.runtime.replay import replay
from gpubraid.runtime.rerun import RECORD_ENV, RERUN_ENV, with_spans
from gpubraid.runtime.trace import load
from gpubraid.runtime.trace import median as trace_median


def record(ranks: int, args: list, workdir: str, timeout: float = 3600) -> str:
    """Run ``gpubraid train ARGS`` on ``ranks`` ranks traced (``workdir``/t.json, metrics m.json) and
    recorded (``workdir``/record); returns the record's directory."""
    rec = os.path.join(workdir, "record")
    train_cli(ranks, args, workdir, True, timeout, env={RECORD_ENV: rec})
    return rec


def alone(doc: dict, rec: str, args: list, workdir: str, repeats: int = 1, timeout: float = 3600) -> dict:
    """``doc`` (the trace of the run recorded in ``rec``) with every rank's compute spans from reruns
    of that rank alone, one process at a time; ``repeats`` reruns per rank, each span the median."""
    docs = []
    for _ in range(repeats):
        spans = {}
        for rank in doc["ranks"]:
            w = rank["rank"]
            path = os.path.join(workdir, f"alone-{w}.json")
            run_checked([sys.executable, "-m", "gpubraid", "train", *args, "--no-progress", "--trace", path],
                        {RERUN_ENV: f"{rec}:{w}"}, timeout)
            spans[w] = load(path)["ranks"][0]
        docs.append(with_spans(doc, spans))
    return trace_median(docs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, required=True, help="P, the ranks of the traced run")
    p.add_argument("--repeats", type=int, default=1, help="reruns per rank, each span the median (default 1)")
    p.add_argument("--network", default="measured", help="as bench.replay's (default measured)")
    p.add_argument("--json", action="store_true", help="print both replays as JSON")
    p.add_argument("train", nargs=argparse.REMAINDER, help="-- then the arguments of gpubraid train")
    args = p.parse_args(argv)
    train = args.train[1:] if args.train[:1] == ["--"] else args.train
    if args.ranks < 1 or args.repeats < 1 or not train:
        raise SystemExit("bench.rerun: --ranks and --repeats must be at least 1, and gpubraid train arguments "
                         "follow --")
    net = network_model(args.network)
    with tempfile.TemporaryDirectory() as tmp:
        rec = record(args.ranks, train, tmp)
        doc = load(os.path.join(tmp, "t.json"))
        results = {"traced": replay(doc, net, "thread"), "alone": replay(alone(doc, rec, train, tmp, args.repeats),
                                                                        net, "thread")}
    if args.json:
        print(json.dumps({k: r.as_dict() for k, r in results.items()}, indent=1))
    else:
        for name, r in results.items():
            print(f"-- spans {name} --\n{r.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
