"""The Chimera schedule: two pipelines in opposite directions, every step once, no deadlock whatever
the step times, no idle ends on two ranks; its micro-batches and memory.  (Its gradients against
serial's, on 1-4 ranks and with data groups: tests/objective/test_pipeline.py under mpiexec.)"""

import numpy as np
import pytest

from gpubraid.objective.chimera import chimera_order, down_count
from gpubraid.objective.pipeline import schedule_order
from gpubraid.runtime import resources
from gpubraid.runtime.backend import resolve_backend
from gpubraid.training.config import TrainConfig

CASES = [(P, M) for P in range(1, 7) for M in (1, 2, 3, 4, 7, 8, 12)]


def deps(step, P: int):
    """The steps whose results ``step`` = (kind, k, s) takes: the block before (forward) or after
    (backward) in its micro-batch's direction, and a backward its own forward."""
    kind, k, s = step
    if kind == "F":
        return [("F", k, s - 1)] if s else []
    return [("F", k, s)] + ([("B", k, s + 1)] if s < P - 1 else [])


def execute(orders, P: int, time):
    """Run every rank's steps in its order, each starting when its inputs are there and its rank is
    free, a step lasting ``time(step)``; the finishing time of every rank, or None on a deadlock."""
    end, clock, pos = {}, [0.0] * len(orders), [0] * len(orders)
    while any(p < len(o) for p, o in zip(pos, orders)):
        moved = False
        for q, order in enumerate(orders):
            while pos[q] < len(order) and all(d in end for d in deps(order[pos[q]], P)):
                step = order[pos[q]]
                clock[q] = end[step] = max([clock[q], *(end[d] for d in deps(step, P))]) + time(step)
                pos[q] += 1
                moved = True
        if not moved:
            return None
    return clock


@pytest.mark.parametrize("P,M", CASES)
def test_every_step_once_on_the_rank_of_its_direction_in_order(P, M):
    orders = chimera_order(M, P)
    down = down_count(M)
    assert len(orders) == P and down == (M + 1) // 2
    every = sorted(step for order in orders for step in order)
    assert every == sorted((kind, k, s) for kind in "FB" for k in range(M) for s in range(P))
    for r, order in enumerate(orders):
        assert all(s == (r if k < down else P - 1 - r) for _, k, s in order)   # its block down, its mirror's up
        for kind in "FB":
            for up in (False, True):
                for s in range(P):
                    ks = [k for kd, k, b in order if kd == kind and b == s and (k >= down) == up]
                    assert ks == sorted(ks)   # one channel's messages in the order they are sent
        live, most = set(), 0
        for kind, k, s in order:
            (live.add if kind == "F" else live.remove)((k, s))
            most = max(most, len(live))
        assert most <= min(P + 1, M)


@pytest.mark.parametrize("P,M", CASES)
def test_no_deadlock_whatever_the_step_times(P, M):
    orders = chimera_order(M, P)
    rng = np.random.default_rng([P, M])
    for _ in range(20):
        times = {step: rng.uniform(0.1, 3.0) for order in orders for step in order}
        assert execute(orders, P, times.__getitem__) is not None
    # objective only: the forward steps alone, in the same order
    assert execute([[s for s in o if s[0] == "F"] for o in orders], P, lambda s: 1.0) is not None


def list_schedule(M: int, P: int):
    """The schedule chimera_order computes, the plain way: at every step, of all ranks' startable
    steps the one with the least (start, forward?, ±block, micro-batch, rank)."""
    down = down_count(M)
    first, limit = {False: 0, True: down}, {False: down, True: M}
    runs = [sorted({(False, r), (True, P - 1 - r)}) for r in range(P)]
    nxt = {(kind, up, s): first[up] for up in (False, True) for s in range(P) for kind in "FB"}
    end, free, held = {}, [0] * P, {(up, s): 0 for up in (False, True) for s in range(P)}
    orders = [[] for _ in range(P)]
    for _ in range(2 * M * P):
        best = None
        for q in range(P):
            for up, s in runs[q]:
                for kind in "BF":
                    k = nxt[kind, up, s]
                    if k >= limit[up] or (kind == "F" and held[up, s] >= P - s):
                        continue
                    ds = deps((kind, k, s), P)
                    if all(d in end for d in ds):
                        key = (max([free[q], *(end[d] for d in ds)]), kind == "F", -s if kind == "F" else s, k, q)
                        best = min(best or (key, q, (kind, k, s), up), (key, q, (kind, k, s), up))
        (t, *_), q, (kind, k, s), up = best
        orders[q].append((kind, k, s))
        end[kind, k, s] = free[q] = t + 1
        nxt[kind, up, s] += 1
        held[up, s] += 1 if kind == "F" else -1
    return tuple(tuple(o) for o in orders)


@pytest.mark.parametrize("P", [1, 2, 3, 5, 8, 11])
def test_the_schedule_is_the_plain_list_schedule(P):
    """chimera_order keeps each rank's soonest step in a heap and recomputes only the ranks a step
    can change: the same schedule as scanning every rank at every step (which took minutes at P = 128)."""
    for M in (1, 2, 3, 7, 8, 16, 33):
        assert chimera_order(M, P) == list_schedule(M, P)


def test_two_ranks_have_no_idle_ends_and_more_ranks_less_than_1f1b():
    unit = lambda step: 1.0   # noqa: E731
    for M in (2, 4, 8, 16):
        assert max(execute(chimera_order(M, 2), 2, unit)) == 2 * M   # each rank's work, nothing idle
    for P, M in ((4, 8), (4, 16), (6, 12), (8, 16)):
        chimera = max(execute(chimera_order(M, P), P, unit))
        gpipe_1f1b = max(execute([[(kind, k, r) for kind, k in schedule_order("1f1b", M, P, r)] for r in range(P)],
                                 P, unit))
        assert chimera < gpipe_1f1b and chimera - 2 * M < 0.6 * (gpipe_1f1b - 2 * M), (P, M)
    # idle least at multiples of P (the automatic M's): on 4 ranks a quarter at M = 6, a ninth at M = 8
    assert [max(execute(chimera_order(M, 4), 4, unit)) for M in (6, 8)] == [16, 18]


def test_automatic_micro_batches_and_memory(monkeypatch):
    count = resources.micro_batch_count
    assert [count(None, P, 5000, 0, "chimera") for P in (1, 2, 3, 4, 8)] == [1, 2, 6, 8, 16]
    assert count(None, 2, 5000, 0, "1f1b") == 8
    held = resources.held_bytes(64, 64, True)   # peaks, 256 layers on 4 ranks: cut for the caches (5), then 2P
    assert count(None, 4, 5000, held, "chimera") == 8 and count(None, 2, 5000, 2 * held, "chimera") == 10
    cfg = TrainConfig(example="peaks", method="pipeline", layers=64, micro_batches=16, schedule="chimera").resolved()
    assert resources.in_flight(cfg, 2, 1600) == (3, 100) and resources.in_flight(cfg, 4, 1600) == (5, 100)
    assert resources.in_flight(cfg, 1, 1600) == (1, 100)
    # the mirror block's parameters and gradient: two vectors more than 1F1B's on several ranks
    be = resolve_backend("numpy")
    lbfgs = (2 * cfg.memory + 4) * 32 * 72 * 8
    states = ((2 * 3 + resources.PIPELINE_WORK) * 33 * 100 + 2 * 1600) * 8 * 8
    monkeypatch.setattr(resources, "available_bytes", lambda backend: states + lbfgs + 2 * 32 * 72 * 8)
    resources.check_memory(cfg, (8,), 72, 1600, 2, be)
    monkeypatch.setattr(resources, "available_bytes", lambda backend: states + lbfgs + 32 * 72 * 8)
    with pytest.raises(resources.UserError, match="memory: the states need"):
        resources.check_memory(cfg, (8,), 72, 1600, 2, be)
