"""A traced run of D data groups whose ranks took turns, its spans set to one group's cost alone.

When P = D·L ranks are traced on fewer cores, they take turns (:mod:`gpubraid.runtime.trace`), and
a rank's compute costs more than on a core of its own: 1.4-1.6x for one data group's evaluation
at 256 layers on this project's VM (``python -m bench.gate_cost``).  Data groups do the same work
on equal shards, so one group can be run by itself: L ranks (fewer than the cores: nobody takes
turns) on the group's share of the batch.  Its compute per objective evaluation, rank by rank,
against the same ranks' in the D-group trace gives each rank's factor; the D-group trace with
every compute span scaled by it (all its messages and collectives kept) is replayed again.

This stands for P devices with memories of their own (GPUs, nodes); ranks that share a last-level
cache, as the cores of one CPU do, pay some of what taking turns costs here (two ranks side by
side: 1.0-1.14x their cost alone).  It applies where the group fits the cores (L ≤ cores) and
both runs kept the same levels (one-shot's level choice may differ between them).
"""
from __future__ import annotations

import copy
import math

from bench.common import train_cli
from gpubraid.runtime.trace import load


def group_args(base: list, extra: list, batch: int, D: int, minibatch: bool) -> list:
    """Train arguments of one of D groups alone: ``--data-parallel`` dropped, and its share of the
    ``batch`` samples of each step (``minibatch``: of every mini-batch, ``--batch-size``; else of
    the full batch, ``--n-train``; argparse keeps the last)."""
    out = list(extra)
    if "--data-parallel" in out:
        i = out.index("--data-parallel")
        del out[i:i + 2]
    share = str(math.ceil(batch / D))
    return base + out + ["--batch-size" if minibatch else "--n-train", share]


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


def compute_per_eval(doc: dict, metrics: dict) -> list[float]:
    """Each rank's compute seconds (thread CPU time) per objective evaluation after the first
    training iteration."""
    evals = [h.get("n_evals") or 1 for h in metrics["history"]]
    out = []
    for rank in doc["ranks"]:
        its = iteration_compute(rank)
        out.append(sum(its[1:]) / max(sum(evals[1:len(its)]), 1))
    return out


def scaled(doc: dict, factors: list[float]) -> dict:
    """``doc`` with every compute span of rank w scaled by ``factors[w]`` (both clocks)."""
    out = copy.deepcopy(doc)
    for rank, f in zip(out["ranks"], factors):
        for ev in rank["events"]:
            if ev[0] == "c":
                ev[1], ev[2] = int(ev[1] * f), int(ev[2] * f)
    return out


def alone_factors(doc: dict, metrics: dict, base: list, extra: list, batch: int, D: int, tmp: str,
                  median: int = 1) -> list[float] | None:
    """Per rank of the D-group trace ``doc`` (``metrics``: its run's), one group's compute per
    evaluation alone over the rank's own; None when the group's run kept other levels.  The group
    runs ``median`` times, each rank's cost the median of its runs."""
    P = len(doc["ranks"])
    L = P // D
    args = group_args(base, extra, batch, D, bool(metrics["config"].get("batch_size")))
    runs = []
    for _ in range(median):
        m = train_cli(L, args, tmp, True)
        if [h.get("levels") for h in m["history"]] != [h.get("levels") for h in metrics["history"]]:
            return None
        runs.append(compute_per_eval(load(f"{tmp}/t.json"), m))
    alone = [sorted(r[l] for r in runs)[len(runs) // 2] for l in range(L)]
    return [alone[w % L] / c for w, c in enumerate(compute_per_eval(doc, metrics))]
