"""``--trace``: what the tracer records (gpubraid.runtime.trace), on one process and under mpiexec."""
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from gpubraid.cli import main as cli
from gpubraid.runtime import trace
from gpubraid.runtime.comm import Comm
from gpubraid.runtime.replay import PRESETS, replay

RUN = ["peaks", "--n-train", "200", "--n-val", "50", "--layers", "8", "--iterations", "3", "--val-every", "2",
       "--no-progress"]


def test_one_process_records_compute_spans_and_iteration_marks_and_replays_to_its_cpu_time(tmp_path):
    path = tmp_path / "t.json"
    assert cli.main(["train", *RUN, "--trace", str(path)]) == 0
    doc = trace.load(str(path))
    assert trace.ACTIVE is None
    (rank,) = doc["ranks"]
    assert {e[0] for e in rank["events"]} == {"c", "m"} and doc["clock"] == "thread"
    assert [e for e in rank["events"] if e[0] == "m"] == [["m", "iteration"]] * 3  # one per iteration
    assert doc["meta"]["steps"] == 3 and doc["meta"]["config"]["trace"] == str(path)
    res = replay(doc, PRESETS["ib"])
    spans = [e[1] * 1e-9 for e in rank["events"] if e[0] == "c"]
    assert res.wall_s == pytest.approx(sum(spans))
    assert 0 < res.wall_s <= res.traced_wall_s * 1.05 + 0.01
    ends = [i for i, e in enumerate(rank["events"]) if e[0] == "m"]  # each mark: the spans before it
    assert res.marks["iteration"] == pytest.approx([sum(spans[:i - k]) for k, i in enumerate(ends)])
    first, per_iteration, marks = res.after_first()
    assert (first, marks) == (res.marks["iteration"][0], 3)
    assert per_iteration == pytest.approx((res.marks["iteration"][2] - first) / 2)


def test_tracer_numbers_messages_and_waits_on_its_sends():
    """Without MPI: the events a send, a receive, a wait and a collective leave (world ranks of
    the one-process communicator)."""
    t = trace.Tracer(0)
    t.begin()
    i = t.send(None, 0, 9, 16)
    t.begin()
    t.send(None, 0, 9, 16)
    t.begin()
    t.recv(None, 0, 9, 16)
    t.begin()
    t.wait([i])
    t.begin()
    t.collective("allreduce", None, 8)
    t.mark("step")
    rec = t.close()
    kinds = [e[0] for e in rec["events"]]
    assert kinds == ["c", "s", "c", "s", "c", "r", "c", "w", "c", "k", "c", "m", "c"]
    assert rec["events"][11] == ["m", "step"]
    s0, s1 = rec["events"][1], rec["events"][3]
    assert (s0[2], s0[3], s0[4], s0[5], s1[5]) == (0, 9, 16, 0, 1)
    assert rec["events"][7][1] == [1] and rec["groups"] == [[0]]


def test_stopped_trace_writes_nothing(tmp_path):
    tracer = trace.start(Comm.single())
    assert trace.ACTIVE is tracer
    trace.stop()
    assert trace.ACTIVE is None and not list(tmp_path.iterdir())


def traced_and_untraced(mpirun, tmp_path, ranks: int, method: list, env: dict | None = None) -> dict:
    """Train ``method`` on ``ranks`` ranks without and with --trace (``env``: more environment); the
    histories must be the same bits.  Returns the trace."""
    histories = []
    for traced in (False, True):
        out = tmp_path / f"m{traced}.json"
        args = [*RUN, *method, "--metrics", out] + (["--trace", tmp_path / "t.json"] if traced else [])
        p = subprocess.run(mpirun.gpubraid(ranks, "train", *args), capture_output=True, text=True, timeout=300,
                           env={**mpirun.env, **(env or {})})
        assert p.returncode == 0, p.stderr[-3000:]
        histories.append([{k: v for k, v in e.items() if k != "time_s"} for e in json.loads(out.read_text())["history"]])
    assert histories[0] == histories[1]
    return trace.load(str(tmp_path / "t.json"))


@pytest.mark.parametrize("method", [["--method", "oneshot"], ["--method", "pipeline", "--micro-batches", "2"],
                                    ["--method", "serial", "--data-parallel", "2"]])
def test_two_ranks_match_and_tracing_does_not_change_the_run(mpirun, tmp_path, method):
    """Under mpiexec -n 2: every send has its receive and every collective all its members (the
    replay refuses anything else), and the history is the same bits with and without --trace."""
    doc = traced_and_untraced(mpirun, tmp_path, 2, method)
    assert [r["rank"] for r in doc["ranks"]] == [0, 1] and doc["meta"]["ranks"] == 2
    sends = [(r["rank"], e[2], e[3]) for r in doc["ranks"] for e in r["events"] if e[0] == "s"]
    recvs = [(e[2], r["rank"], e[3]) for r in doc["ranks"] for e in r["events"] if e[0] == "r"]
    assert sorted(sends) == sorted(recvs)
    collectives = [[e[1] for e in r["events"] if e[0] == "k"] for r in doc["ranks"]]
    assert collectives[0] == collectives[1] and collectives[0]
    if "--data-parallel" not in method:
        assert sends
    res = replay(doc, PRESETS["ib"])
    assert 0 < res.wall_s and res.critical.compute_s + res.critical.comm_s == pytest.approx(res.wall_s)


def test_core_gate_lets_one_holder_compute(tmp_path):
    """Two openings of the gate file (as two ranks have): while one holds it the other cannot take
    it; released, it can; closing removes the file."""
    import fcntl

    a, b = trace.CoreGate(str(tmp_path / "gate")), trace.CoreGate(str(tmp_path / "gate"))
    a.acquire()
    with pytest.raises(BlockingIOError):
        fcntl.flock(b._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    a.release()
    b.acquire()
    b.close()
    a.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method", [["--method", "pipeline", "--micro-batches", "3"], ["--method", "oneshot"]])
def test_more_ranks_than_cores_are_traced_one_at_a_time(mpirun, tmp_path, method):
    """3 ranks on 2 cores (GPUBRAID_TRACE_CORES=2 on any host): the trace says it was gated, its
    spans replay, and the run's history is the untraced run's (pipeline: messages and sums;
    oneshot: broadcasts and gathers)."""
    before = set(Path(tempfile.gettempdir()).glob("gpubraid-gate-*"))  # a killed run's stay
    doc = traced_and_untraced(mpirun, tmp_path, 3, method, {trace.CORES_ENV: "2"})
    assert doc["meta"]["gated"] is True and len(doc["ranks"]) == 3
    assert replay(doc, PRESETS["ib"]).wall_s > 0
    assert set(Path(tempfile.gettempdir()).glob("gpubraid-gate-*")) == before


@pytest.mark.parametrize("path, says", [("{tmp}/no/such/dir/t.json", "does not exist"),
                                        ("{tmp}", "is a directory")])
def test_bad_trace_path_is_one_line_exit_2(tmp_path, capsys, path, says):
    rc = cli.main(["train", *RUN, "--trace", path.format(tmp=tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("gpubraid: error: trace: ") and says in err[0]


def test_cores_per_host_for_the_gate_come_from_the_environment_when_set():
    from gpubraid.errors import UserError

    assert trace.host_cores({}) == (os.cpu_count() or 1) and trace.host_cores({trace.CORES_ENV: "3"}) == 3
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(UserError, match=f"^{trace.CORES_ENV} must be a positive integer"):
            trace.host_cores({trace.CORES_ENV: bad})


def test_bad_trace_cores_stop_the_run_before_it_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(trace.CORES_ENV, "0")
    rc = cli.main(["train", *RUN, "--trace", str(tmp_path / "t.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and trace.CORES_ENV in err[0] and not list(tmp_path.iterdir())


def test_trace_option_is_in_the_schema():
    from gpubraid.errors import UserError
    from gpubraid.training.config import TrainConfig

    assert TrainConfig(trace="x.json").trace == "x.json"
    with pytest.raises(UserError, match="^trace must be a non-empty string"):
        TrainConfig(trace="")
