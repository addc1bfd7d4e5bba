"""The replay (gpubraid.runtime.replay) of hand-made traces against hand-computed wall times."""
import json
import math
from dataclasses import asdict

import pytest

from gpubraid.runtime.replay import PRESETS, NetworkModel, replay

S = 1_000_000_000  # ns per second


def c(seconds, wall=None):
    """A compute span of ``seconds`` thread time (and ``wall`` wall time, default the same)."""
    return ["c", int(seconds * S), int((seconds if wall is None else wall) * S)]


def send(dest, nbytes, seq=0, tag=5):
    return ["s", 0, dest, tag, nbytes, seq, 0, 0]


def recv(source, nbytes, seq=0, tag=5):
    return ["r", 0, source, tag, nbytes, seq, 0]


def trace(*ranks, groups=((0, 1),), clock="thread"):
    return {"format": "gpubraid-trace", "version": 1, "clock": clock, "meta": {},
            "ranks": [{"rank": r, "groups": [list(g) for g in groups], "events": ev} for r, ev in enumerate(ranks)]}


NET = NetworkModel("test", latency_s=0.1, bandwidth_Bps=1000.0)


def test_two_ranks_exchange_hand_computed():
    """Rank 0: 1 s, send 1000 B, 2 s, receive; rank 1: 0.5 s, receive, 1 s, send 500 B back.

    Rank 1 receives at 1 + 0.1 + 1 = 2.1 (waited 1.6), sends at 3.1; rank 0's reply arrives at
    3.1 + 0.1 + 0.5 = 3.7 (it waited from 3.0).  Critical path: r0's 1 s, message, r1's 1 s, message."""
    t = trace([c(1.0), send(1, 1000), c(2.0), recv(1, 500)],
              [c(0.5), recv(0, 1000), c(1.0), send(0, 500)])
    res = replay(t, NET)
    assert res.wall_s == pytest.approx(3.7)
    r0, r1 = res.ranks
    assert (r0.compute_s, r0.wait_s, r0.end_s) == pytest.approx((3.0, 0.7, 3.7))
    assert (r1.compute_s, r1.wait_s, r1.end_s) == pytest.approx((1.5, 1.6, 3.1))
    cp = res.critical
    assert (cp.compute_s, cp.comm_s, cp.hops) == pytest.approx((2.0, 1.7, 2))
    assert cp.compute_by_rank == pytest.approx({0: 1.0, 1: 1.0})
    assert res.traced_wall_s == pytest.approx(3.0)


def test_overheads_and_send_costs_count_as_comm():
    """o = 0.05 per receive; the send call's recorded 0.2 s delays the departure."""
    net = NetworkModel("o", 0.1, 1000.0, overhead_s=0.05)
    t = trace([c(1.0), ["s", 0, 1, 5, 100, 0, int(0.2 * S), int(0.2 * S)]], [recv(0, 100), c(1.0)])
    res = replay(t, net)
    # departs 1.2, arrives 1.2 + 0.1 + 0.1 = 1.4, receive done 1.45, then 1 s
    assert res.ranks[1].end_s == pytest.approx(2.45)
    assert res.ranks[1].comm_s == pytest.approx(0.05) and res.ranks[1].wait_s == pytest.approx(1.4)
    assert res.ranks[0].comm_s == pytest.approx(0.2)


def test_collective_waits_for_the_last_member():
    """Three ranks arrive at 1, 2, 3 s; an allreduce of 8 B over 3 ranks costs ⌈log2 3⌉·α = 1 s."""
    net = NetworkModel("c", 0.5, math.inf, overhead_s=0.1)
    t = trace(*[[c(s), ["k", "allreduce", 0, 8, 0, 0], c(1.0)] for s in (1.0, 2.0, 3.0)], groups=((0, 1, 2),))
    res = replay(t, net)
    assert res.wall_s == pytest.approx(3.0 + 1.0 + 0.1 + 1.0)
    assert [r.wait_s for r in res.ranks] == pytest.approx([3.0, 2.0, 1.0])
    assert res.critical.compute_by_rank == pytest.approx({0: 1.0, 2: 3.0})  # ends tie: rank 0; then rank 2 arrived last


def test_rendezvous_message_waits_for_the_receive():
    """A message above the eager limit moves only once the receive is posted (at 5 s); the sender's
    wait ends when it has arrived, 5 + 0.1 + 2 = 7.1 s."""
    net = NetworkModel("r", 0.1, 1000.0, eager_limit=1000)
    t = trace([c(1.0), send(1, 2000), ["w", [1], 0]], [c(5.0), recv(0, 2000)])
    res = replay(t, net)
    assert res.ranks[0].end_s == pytest.approx(7.1) and res.ranks[1].end_s == pytest.approx(7.1)
    eager = replay(t, NetworkModel("e", 0.1, 1000.0))
    assert eager.ranks[0].end_s == pytest.approx(1.0) and eager.ranks[1].end_s == pytest.approx(5.0)


def test_messages_match_by_sequence_and_world_ranks_of_sub_communicators():
    """Two messages with one tag arrive in order; a communicator listed in another order per rank
    (index 1 on rank 0, index 0 on rank 1) still matches."""
    groups0, groups1 = [[0], [0, 1]], [[0, 1]]
    t = {"format": "gpubraid-trace", "version": 1, "clock": "thread", "meta": {}, "ranks": [
        {"rank": 0, "groups": groups0, "events": [["s", 1, 1, 5, 0, 0, 0, 0], c(1.0), ["s", 1, 1, 5, 0, 1, 0, 0]]},
        {"rank": 1, "groups": groups1, "events": [recv(0, 0, 0), recv(0, 0, 1)]}]}
    res = replay(t, PRESETS["ideal"])
    assert res.ranks[1].end_s == pytest.approx(1.0)


def test_wall_clock_spans_and_the_breakdown_adds_up():
    t = trace([c(1.0, 2.0), send(1, 10), c(0.5, 1.0)], [c(0.2, 0.3), recv(0, 10), c(1.0, 1.5)])
    res = replay(t, NET, clock="wall")
    assert res.ranks[1].end_s == pytest.approx(2.0 + 0.1 + 0.01 + 1.5)
    for r in res.ranks:
        assert r.compute_s + r.comm_s + r.wait_s == pytest.approx(r.end_s)
    assert res.critical.compute_s + res.critical.comm_s == pytest.approx(res.wall_s)


def test_without_async_progress_a_large_message_moves_when_its_sender_calls_mpi():
    """Rank 0 sends 2000 B at 1 s, computes until 4 s, waits; rank 1 posts at 2 s.  With
    asynchronous progress it arrives at 2 + 0.1 + 2 = 4.1 s; without, from the wait at 4 s: 6.1 s."""
    t = trace([c(1.0), send(1, 2000), c(3.0), ["w", [1], 0]], [c(2.0), recv(0, 2000)])
    fast = replay(t, NetworkModel("a", 0.1, 1000.0, eager_limit=1000))
    assert [r.end_s for r in fast.ranks] == pytest.approx([4.1, 4.1])
    slow = replay(t, NetworkModel("p", 0.1, 1000.0, eager_limit=1000, async_progress=False))
    assert [r.end_s for r in slow.ranks] == pytest.approx([6.1, 6.1])
    assert slow.critical.compute_by_rank == pytest.approx({0: 4.0})


@pytest.mark.parametrize("ranks, message", [
    (([send(1, 8)], [c(1.0)]), "unmatched message"),
    (([recv(1, 8), send(1, 8)], [recv(0, 8), send(0, 8)]), "deadlocks"),
    (([["k", "allreduce", 0, 8, 0, 0]], [c(1.0)]), "not recorded on all"),
])
def test_inconsistent_traces_are_refused(ranks, message):
    with pytest.raises(ValueError, match=message):
        replay(trace(*ranks), NET)


@pytest.mark.parametrize("fields, words", [
    (dict(latency_s=-1.0, bandwidth_Bps=1e9), "latency_s must be"),
    (dict(latency_s=1e-6, bandwidth_Bps=0.0), "bandwidth_Bps must be"),
    (dict(latency_s=1e-6, bandwidth_Bps=float("nan")), "bandwidth_Bps must be"),
    (dict(latency_s=1e-6, bandwidth_Bps=1e9, overhead_s=float("inf")), "overhead_s must be"),
    (dict(latency_s=1e-6, bandwidth_Bps=1e9, eager_limit=-1), "eager_limit must be"),
])
def test_network_models_that_cannot_price_a_message_are_refused(fields, words):
    with pytest.raises(ValueError, match=words):
        NetworkModel("bad", **fields)
    assert NetworkModel("free", 0.0, math.inf).transfer(10**9) == 0.0


def test_a_measured_transfer_table_prices_messages_between_and_beyond_its_sizes(tmp_path):
    """Table (100 B: 0.1 s, 1100 B: 0.3 s, 2100 B: 0.4 s): 600 B lies halfway on the first segment
    (0.2 s), 3100 B one step past the last on its line (0.5 s), 10 B at the first time (0.1 s); the
    message of the hand-computed exchange above (1000 B) takes 0.28 s instead of α + n/β = 1.1 s."""
    table = [[100, 0.1], [1100, 0.3], [2100, 0.4]]
    net = NetworkModel("t", 0.1, 1000.0, transfer_table=table)
    assert [net.transfer(n) for n in (10, 100, 600, 1100, 3100)] == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.5])
    t = trace([c(1.0), send(1, 1000)], [c(0.5), recv(0, 1000)])
    assert replay(t, net).ranks[1].end_s == pytest.approx(1.28)
    path = tmp_path / "pingpong.json"
    path.write_text(json.dumps({"network": {**asdict(net)}}))
    assert NetworkModel.from_json(str(path)) == net
    for bad in ([[100, 0.1]], [[100, 0.1], [50, 0.2]], [[100, 0.3], [200, 0.2]], [[100, -1.0], [200, 0.2]],
                [[100.5, 0.1], [200, 0.2]], [[100, 0.1, 7], [200, 0.2]], 5, [[100, float("nan")], [200, 0.2]]):
        with pytest.raises(ValueError, match="transfer_table must be"):
            NetworkModel("bad", 0.1, 1000.0, transfer_table=bad)


def test_gathers_and_scatters_move_p_minus_one_blocks():
    """A gather (scatter, allgather) over 4 ranks: ⌈log2 4⌉ = 2 latencies and 3 blocks, each block
    priced as a message of its bytes less the latency: 2·α + 3·n/β with α + n/β, and with a table
    (whose empty message is free) 3 of its messages, as the same blocks sent one by one would be."""
    net = NetworkModel("g", 0.1, 1000.0)
    for kind in ("gather", "scatter", "allgather"):
        assert net.collective(kind, 500, 4) == pytest.approx(2 * 0.1 + 3 * 0.5)
    table = NetworkModel("t", 0.0, 1000.0, transfer_table=[[0, 0.0], [1000, 0.3]])
    assert table.collective("gather", 500, 4) == pytest.approx(3 * table.transfer(500)) == pytest.approx(0.45)
    assert table.collective("gather", 500, 1) == 0.0


def test_files_that_are_not_network_models_or_traces_are_value_errors(tmp_path):
    from gpubraid.runtime.trace import load

    for text in ("not json", "[1, 2]", json.dumps({"network": {"name": "x"}}),
                 json.dumps({"network": {"name": "x", "latency_s": 0, "bandwidth_Bps": 0}})):
        path = tmp_path / "net.json"
        path.write_text(text)
        with pytest.raises(ValueError):
            NetworkModel.from_json(str(path))
        with pytest.raises(ValueError, match="not a gpubraid trace"):
            load(str(path))


def test_marks_are_passed_when_the_last_rank_reaches_them():
    """Two iterations: rank 0 computes 1 s and sends 1000 B to rank 1 (arrives 1.1 s later), rank 1
    computes 0.5 s, receives, 1 s more; both mark the iteration, then do it again.  Rank 1's first
    ends at 2.1 + 1 = 3.1 (rank 0's at 1.0); the second message arrives at 3.1, when rank 1 is
    still computing (to 3.6): its second ends at 4.6."""
    def rank0(seq):
        return [c(1.0), send(1, 1000, seq)]

    def rank1(seq):
        return [c(0.5), recv(0, 1000, seq), c(1.0)]

    m = ["m", "iteration"]
    res = replay(trace([*rank0(0), m, *rank0(1), m], [*rank1(0), m, *rank1(1), m]), NET)
    assert res.marks == {"iteration": pytest.approx([3.1, 4.6])}
    assert res.wall_s == pytest.approx(4.6) and res.ranks[1].compute_s == pytest.approx(3.0)
    assert res.after_first() == pytest.approx((3.1, 1.5, 2))
    assert res.after_first("epoch") is None
    assert "2 iterations: the first ends at 3.1000 s, then 1.5000 s each" in res.summary()


def test_median_of_repeats_takes_each_span_median_and_refuses_other_runs():
    """Three repeats of one 2-rank run; rank 1's middle span was stretched in one repeat, rank 0's
    first in another: the median trace has each span's middle value, so the replay is the
    undisturbed run's (a stretched span on either rank would have delayed both)."""
    from gpubraid.runtime.trace import median

    def run(a, b):
        return trace([c(a), send(1, 1000), c(2.0), recv(1, 500)],
                     [c(0.5), recv(0, 1000), c(b), ["s", 0, 0, 5, 500, 0, int(0.01 * S), int(0.01 * S)]])

    repeats = [run(1.0, 1.0), run(1.0, 3.0), run(2.5, 1.0)]
    merged = median(repeats)
    assert merged["meta"]["median_of"] == 3
    assert replay(merged, NET).wall_s == pytest.approx(3.71)
    assert [replay(t, NET).wall_s for t in repeats] == pytest.approx([3.71, 5.71, 5.21])
    assert merged["ranks"][1]["events"][3] == repeats[0]["ranks"][1]["events"][3]
    assert median(repeats[1:2]) is repeats[1]   # one repeat is its own median
    marked = [run(a, 1.0) for a in (3.0, 1.0, 1.0)]  # the first repeat disturbed
    for t in marked:
        for r in t["ranks"]:
            r["events"].append(["m", "iteration"])
    assert replay(median(marked), NET).marks == {"iteration": pytest.approx([3.71])}
    relabelled = run(1.0, 1.0)
    for r in relabelled["ranks"]:
        r["events"].append(["m", "epoch"])
    with pytest.raises(ValueError, match="rank 0, event 4 differs"):
        median([marked[0], relabelled])
    longer, moved = run(1.0, 1.0), run(1.0, 1.0)
    longer["ranks"][1]["events"].append(c(1.0))
    moved["ranks"][0]["events"][1] = send(1, 999)
    for other, says in ((trace([c(1.0)]), "rank counts differ"), (longer, "rank 1 has other event counts"),
                        (moved, "rank 0, event 1 differs")):
        with pytest.raises(ValueError, match=says):
            median([repeats[0], other])


def test_bench_replay_takes_repeats_of_one_run_and_refuses_others(tmp_path, capsys):
    import json

    from bench import replay as bench_replay

    paths = []
    for i, t in enumerate((trace([c(1.0)], [c(3.0)]), trace([c(2.0)], [c(1.0)]), trace([c(1.0), c(1.0)], [c(1.0)]))):
        paths.append(str(tmp_path / f"t{i}.json"))
        (tmp_path / f"t{i}.json").write_text(json.dumps(t))
    assert bench_replay.main([paths[0], paths[1], "--network", "ideal", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wall_s"] == pytest.approx(2.0) and out["meta"]["median_of"] == 2
    with pytest.raises(SystemExit, match="bench.replay: the traces are not repeats of one run"):
        bench_replay.main([paths[0], paths[2]])
