"""Reruns of one recorded rank alone (gpubraid.runtime.rerun): the record, its replay in one process,
the spans put back into the recorded trace, and what a rerun of another command does."""
import json
import subprocess

import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.runtime import rerun
from gpubraid.runtime.replay import PRESETS, replay
from gpubraid.runtime.trace import load


class FakeMPI:
    """What a rank of two would get from MPI: fixed values for each call that delivers data."""

    def __init__(self, rank=1, size=2):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def world_ranks(self):
        return tuple(range(self.size))

    def Split(self, color, key):
        return FakeMPI(0, 1)

    def Isend(self, buf, dest, tag):
        return None

    def Recv(self, buf, source, tag):
        buf[...] = np.arange(buf.size).reshape(buf.shape) + source

    def Allreduce(self, x, out, op):
        out[...] = 2 * x

    def bcast(self, obj, root=0):
        return {"from": root}


def test_a_record_read_back_delivers_the_same_values_in_order_and_sends_go_nowhere(tmp_path):
    writer = rerun._Writer(str(tmp_path / "rank-1.rec"))
    comm = rerun.RecordingComm(FakeMPI(), writer)
    writer.put("start", (1, 2, None))
    comm.Isend(np.ones(3), dest=0, tag=4)
    got = np.empty((2, 3))
    comm.Recv(got, source=0, tag=5)
    sub = comm.Split(1, 0)
    total = np.empty(1)
    sub.Allreduce(np.array([4.0]), total, op=None)
    obj = comm.bcast(None, root=0)
    writer.file.close()

    reader = rerun._Reader(str(tmp_path / "rank-1.rec"), 1)
    assert reader.take("start") == (1, 2, None)
    again = rerun.ReplayComm(reader, 1, 2, (0, 1))
    assert (again.Get_rank(), again.Get_size(), again.world_ranks()) == (1, 2, (0, 1))
    back = np.zeros((2, 3))
    again.Isend(np.ones(3), dest=0, tag=4)        # goes nowhere: the recorded send's peer, tag and values
    again.Recv(back, source=0, tag=5)
    np.testing.assert_array_equal(back, got)
    sub2 = again.Split(1, 0)
    assert (sub2.Get_rank(), sub2.Get_size()) == (0, 1)
    out = np.empty(1)
    sub2.Allreduce(np.array([0.0]), out, op=None)   # what was delivered, not what is computed now
    assert out[0] == total[0] == 8.0
    assert again.bcast("mine", root=1) == obj == {"from": 0}
    with pytest.raises(rerun.RerunDiverged, match="call 6: Recv, where the recorded run made the end"):
        again.Recv(back, source=0, tag=5)


def test_gathers_and_scatters_of_rows_are_recorded_and_read_back(tmp_path):
    """Gatherv delivers the rows to the root only (nothing elsewhere), Scatterv each rank its part."""

    class Rows(FakeMPI):
        def Gatherv(self, sendbuf, recvbuf, root=0):
            if recvbuf is not None:
                recvbuf[0][...] = 7.0

        def Scatterv(self, sendbuf, recvbuf, root=0):
            recvbuf[...] = 3.0 + self.rank

    for rank in (0, 1):
        writer = rerun._Writer(str(tmp_path / f"rank-{rank}.rec"))
        comm = rerun.RecordingComm(Rows(rank), writer)
        full = np.zeros((3, 2)) if rank == 0 else None
        comm.Gatherv(np.ones((1, 2)), None if full is None else [full, ([2, 4], [0, 2])], root=0)
        part = np.zeros((1, 2))
        comm.Scatterv(None, part, root=0)
        writer.file.close()
        again = rerun.ReplayComm(rerun._Reader(str(tmp_path / f"rank-{rank}.rec"), rank), rank, 2, (0, 1))
        back = np.zeros((3, 2)) if rank == 0 else None
        again.Gatherv(np.ones((1, 2)), None if back is None else [back, ([2, 4], [0, 2])], root=0)
        mine = np.zeros((1, 2))
        again.Scatterv(None, mine, root=0)
        if rank == 0:
            np.testing.assert_array_equal(back, np.full((3, 2), 7.0))
        np.testing.assert_array_equal(mine, np.full((1, 2), 3.0 + rank))


def test_a_call_of_another_kind_or_shape_is_a_divergence(tmp_path):
    writer = rerun._Writer(str(tmp_path / "rank-0.rec"))
    comm = rerun.RecordingComm(FakeMPI(0), writer)
    comm.Recv(np.empty(3), source=1, tag=0)
    comm.Recv(np.empty(3), source=1, tag=0)
    comm.Isend(np.arange(3.0), dest=1, tag=2)
    writer.file.close()
    again = rerun.ReplayComm(rerun._Reader(str(tmp_path / "rank-0.rec"), 0), 0, 2, (0, 1))
    with pytest.raises(rerun.RerunDiverged, match=r"call 1: Allreduce, where the recorded run made Recv"):
        again.Allreduce(np.empty(3), np.empty(3), op=None)
    with pytest.raises(rerun.RerunDiverged, match=r"call 2: Recv of float64 \(4,\).*float64 \(3,\)"):
        again.Recv(np.empty(4), source=1, tag=0)
    with pytest.raises(rerun.RerunDiverged, match="call 3: it sends other values to rank 1 .tag 2."):
        again.Isend(np.arange(3.0) + 1, dest=1, tag=2)


@pytest.mark.parametrize("env, says", [
    ({rerun.RECORD_ENV: "a", rerun.RERUN_ENV: "b:0"}, "not both"),
    ({rerun.RERUN_ENV: "dir"}, "DIR:RANK"),
    ({rerun.RERUN_ENV: "dir:x"}, "DIR:RANK"),
    ({rerun.RERUN_ENV: "/nonexistent/dir:0"}, "cannot read the record of rank 0"),
])
def test_bad_settings_are_one_line_errors(env, says):
    with pytest.raises(UserError, match=says):
        rerun.wrap_world(FakeMPI(0, 1), env)


def test_without_the_settings_the_world_is_itself():
    world = FakeMPI(0, 1)
    assert rerun.wrap_world(world, {}) is world


def _doc(events_per_rank):
    return {"format": "gpubraid-trace", "version": 2, "clock": "thread", "meta": {},
            "ranks": [{"rank": r, "groups": [[0, 1]], "events": ev} for r, ev in enumerate(events_per_rank)]}


def test_with_spans_takes_the_reruns_spans_and_send_costs_and_keeps_the_messages():
    traced = _doc([[["c", 900, 950], ["s", 0, 1, 7, 80, 0, 30, 40], ["w", [1], 5], ["m", "iteration"]],
                   [["c", 100, 120], ["r", 0, 0, 7, 80, 0, 700], ["c", 800, 810], ["m", "iteration"]]])
    alone1 = {"rank": 1, "events": [["c", 90, 95], ["r", 0, 0, 7, 80, 0, 1], ["c", 500, 505], ["m", "iteration"]]}
    out = rerun.with_spans(traced, {1: alone1})
    assert out["ranks"][0]["events"] == traced["ranks"][0]["events"]          # no rerun of rank 0: as traced
    assert out["ranks"][1]["events"][2] == ["c", 500, 505]
    assert out["ranks"][1]["events"][1] == ["r", 0, 0, 7, 80, 0, 700]          # the message as traced
    assert traced["ranks"][1]["events"][2] == ["c", 800, 810]                  # the input is not changed
    alone0 = {"rank": 0, "events": [["c", 400, 410], ["s", 0, 1, 7, 80, 0, 3, 4], ["w", [1], 0], ["m", "iteration"]]}
    both = rerun.with_spans(traced, {0: alone0, 1: alone1})
    assert both["ranks"][0]["events"][1] == ["s", 0, 1, 7, 80, 0, 3, 4] and both["meta"]["spans"] == "alone"
    assert replay(both, PRESETS["ideal"]).wall_s < replay(traced, PRESETS["ideal"]).wall_s
    other = {"rank": 1, "events": [["c", 90, 95], ["r", 0, 0, 8, 80, 0, 1], ["c", 500, 505], ["m", "iteration"]]}
    with pytest.raises(ValueError, match="rank 1, event 1"):
        rerun.with_spans(traced, {1: other})
    with pytest.raises(ValueError, match="rank 1: the rerun has 2 events, the trace 4"):
        rerun.with_spans(traced, {1: {"rank": 1, "events": alone1["events"][:2]}})


RUN = ["train", "peaks", "--n-train", "300", "--n-val", "50", "--layers", "8", "--iterations", "4", "--val-every", "2",
       "--no-progress"]


@pytest.mark.parametrize("method", [["--method", "pipeline", "--micro-batches", "3"],
                                    ["--method", "oneshot", "--max-levels", "2", "--data-parallel", "1"]])
def test_each_rank_rerun_alone_computes_what_it_computed_and_its_spans_fit_the_trace(mpirun, tmp_path, method):
    rec = tmp_path / "rec"
    env = {**mpirun.env, rerun.RECORD_ENV: str(rec)}
    real = subprocess.run(mpirun.gpubraid(2, *RUN, *method, "--trace", tmp_path / "t.json", "--metrics",
                                          tmp_path / "m.json"), capture_output=True, text=True, env=env, timeout=180)
    assert real.returncode == 0, real.stderr[-3000:]
    doc, spans = load(str(tmp_path / "t.json")), {}
    for w in (0, 1):
        env = {**mpirun.env, rerun.RERUN_ENV: f"{rec}:{w}"}
        one = subprocess.run(mpirun.command(1, "-m", "gpubraid", *RUN, *method, "--trace", tmp_path / f"a{w}.json",
                                            "--metrics", tmp_path / f"m{w}.json")[3:],   # no mpiexec: one process
                             capture_output=True, text=True, env=env, timeout=180)
        assert one.returncode == 0, one.stderr[-3000:]
        alone = load(str(tmp_path / f"a{w}.json"))
        assert [r["rank"] for r in alone["ranks"]] == [w]
        spans[w] = alone["ranks"][0]
    a, b = (json.loads((tmp_path / n).read_text())["history"] for n in ("m.json", "m0.json"))
    for key in ("objective", "grad_norm", "step_size", "n_evals", "levels"):   # to the bit
        assert [h[key] for h in a] == [h[key] for h in b], key
    assert not (tmp_path / "m1.json").exists()                               # rank 1 writes no metrics
    merged = rerun.with_spans(doc, spans)
    assert replay(merged, PRESETS["ib"]).marks["iteration"][-1] > 0


def test_a_rerun_of_another_command_stops_with_one_line(mpirun, tmp_path):
    rec = tmp_path / "rec"
    real = subprocess.run(mpirun.gpubraid(2, *RUN, "--method", "serial"), capture_output=True, text=True,
                          env={**mpirun.env, rerun.RECORD_ENV: str(rec)}, timeout=180)
    assert real.returncode == 0, real.stderr[-3000:]
    other = [a if a != "8" else "6" for a in RUN]   # 6 layers, not 8: the messages differ
    one = subprocess.run(mpirun.command(1, "-m", "gpubraid", *other, "--method", "serial")[3:], capture_output=True,
                         text=True, env={**mpirun.env, rerun.RERUN_ENV: f"{rec}:1"}, timeout=180)
    assert one.returncode != 0
    assert "rerun of rank 1 diverged at MPI call" in one.stderr
