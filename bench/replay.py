"""Predict the wall time of a traced run with one core or GPU per rank.

    python -m gpubraid train peaks --trace run.json            # or under mpiexec -n P
    python -m bench.replay run.json [run2.json ...] [--network ib|nvlink|ideal|measured|FILE] [--clock thread|wall] [--json]

Several traces of the same command are replayed as one: each compute span the median of its
repeats (:func:`gpubraid.runtime.trace.median`).

``--network``: the documented InfiniBand HDR or NVLink parameters, free communication (``ideal``),
``measured`` (the newest bench/results/*/pingpong.json of ``python -m bench.pingpong``) or such a
file.  The replay itself is :func:`gpubraid.runtime.replay.replay`.
"""
from __future__ import annotations

import argparse
import json
import sys

from bench.common import RESULTS
from gpubraid.runtime.replay import PRESETS, NetworkModel, replay
from gpubraid.runtime.trace import load, median


def iteration_compute(rank: dict) -> list[float]:
    """One rank's compute seconds (thread CPU time of its spans) in each training iteration, from
    the trace's iteration marks (what follows the last mark is left out)."""
    out, ns = [], 0
    for ev in rank["events"]:
        if ev[0] == "c":
            ns += ev[1]
        elif ev[0] == "m" and ev[1] == "iteration":
            out.append(ns * 1e-9)
            ns = 0
    return out


def network_model(name: str) -> NetworkModel:
    """A preset by name, the newest measured ping-pong (``measured``), or a ping-pong JSON file."""
    if name in PRESETS:
        return PRESETS[name]
    if name == "measured":
        found = sorted(RESULTS.glob("*/pingpong.json"))
        if not found:
            raise SystemExit("bench.replay: no bench/results/*/pingpong.json; run mpiexec -n 2 python -m bench.pingpong")
        name = str(found[-1])
    return NetworkModel.from_json(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", nargs="+", help="a trace file of gpubraid train --trace (several: repeats of one run, "
                   "each span their median)")
    p.add_argument("--network", default="ib", help="ib, nvlink, ideal, measured or a pingpong JSON file (default ib)")
    p.add_argument("--clock", choices=("thread", "wall"), default=None,
                   help="compute spans as thread CPU time or wall time (default: the trace's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        docs, net = [load(path) for path in args.trace], network_model(args.network)
        trace = median(docs)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench.replay: {exc}") from None
    result = replay(trace, net, args.clock)
    print(json.dumps(result.as_dict(), indent=1) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
