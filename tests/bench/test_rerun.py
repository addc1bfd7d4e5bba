"""bench.rerun: a traced run recorded, each rank run again alone, and the two replays; and the
strategies benchmark's replay with spans alone where the ranks took turns."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["peaks", "--layers", "8", "--n-train", "200", "--n-val", "50", "--iterations", "4", "--val-every", "0"]


def test_bench_rerun_prints_both_replays_of_the_same_iterations(mpirun):
    proc = subprocess.run([sys.executable, "-m", "bench.rerun", "--ranks", "2", "--json", "--",
                           *TRAIN, "--method", "pipeline", "--micro-batches", "2"],
                          capture_output=True, text=True, timeout=240, env=mpirun.env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    both = json.loads(proc.stdout)
    assert set(both) == {"traced", "alone"}
    for r in both.values():
        assert r["wall_s"] > 0 and len(r["marks"]["iteration"]) == 4
        assert [x["rank"] for x in r["ranks"]] == [0, 1]


def test_bench_rerun_refuses_a_missing_command():
    proc = subprocess.run([sys.executable, "-m", "bench.rerun", "--ranks", "2"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode != 0 and "gpubraid train arguments follow --" in proc.stderr


def test_strategies_replays_every_candidate_with_spans_alone_where_ranks_took_turns(mpirun, tmp_path, monkeypatch):
    """Two ranks on what the benchmark takes for a one-core host: each candidate is recorded, its
    ranks rerun alone, and the replay with their spans kept next to the plain one."""
    from bench import strategies
    from bench.replay import network_model

    monkeypatch.setattr(strategies, "host_cores", lambda: 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cands = [c for c in strategies.candidates(2, 8, 200) if c[0] in ("data 2", "1x2 pipeline M=4")]
    rows = strategies.time_phase(TRAIN[:-4], 2, cands, 3, network_model("ideal"), str(tmp_path), median=2)
    assert [r["label"] for r in rows] == ["data 2", "1x2 pipeline M=4"]
    for r in rows:
        alone = r["alone_spans"]
        assert alone["first_iteration_s"] > 0 and alone["s_per_eval"] > 0
        assert alone["s_per_eval"] < 10 * r["s_per_eval"] and r["s_per_eval"] < 10 * alone["s_per_eval"]
    assert sorted(os.listdir(tmp_path / "record")) == ["rank-0.rec", "rank-1.rec"]


def test_strategies_measures_the_candidates_side_by_side_in_rounds(tmp_path, monkeypatch):
    """Each round runs every candidate once (one untimed iteration, traced, then its untraced twin;
    where ranks take turns its reruns alone), so a slow spell of the machine falls on all of them; each candidate's median
    is over its own rounds, and ``repeats`` keeps each candidate's least disturbed set of rounds."""
    from types import SimpleNamespace

    from bench import strategies

    calls, walls = [], iter(range(1, 100))

    def train_cli(ranks, args, workdir, trace=False, timeout=0, env=None):
        warm = args[args.index("--iterations") + 1] == "1"
        calls.append(("warm" if warm else "traced" if trace else "twin", args[args.index("--method") + 1]))
        return {"history": [{"iter": 0, "n_evals": 1}, {"iter": 1, "n_evals": 2}], "wall_s": float(next(walls))}

    def alone(doc, rec, args, workdir, repeats=1):
        calls.append(("alone", args[args.index("--method") + 1]))
        return {**doc, "alone": True}

    def median(docs):
        return {"method": docs[0]["method"], "n": len(docs), "alone": docs[0].get("alone", False)}

    def replay(doc, net, clock):
        assert doc["n"] == 3, "every span the median of the candidate's 3 rounds"
        wall = {"serial": 2.0, "pipeline": 1.0}[doc["method"]] / (4 if doc["alone"] else 1)
        return SimpleNamespace(wall_s=wall, traced_wall_s=2 * wall, marks={"iteration": [0.1 * wall, wall]})

    monkeypatch.setattr(strategies, "train_cli", train_cli)
    monkeypatch.setattr(strategies, "load", lambda path: {"method": calls[-1][1]})
    monkeypatch.setattr(strategies, "alone", alone)
    monkeypatch.setattr(strategies, "trace_median", median)
    monkeypatch.setattr(strategies, "replay", replay)
    cands = [("data 2", ["--method", "serial"], 2), ("1x2 pipeline M=4", ["--method", "pipeline"], 2)]

    monkeypatch.setattr(strategies, "host_cores", lambda: 2)
    rows = strategies.time_phase(["peaks"], 2, cands, 1, None, str(tmp_path), median=3)
    assert calls == [("warm", "serial"), ("traced", "serial"), ("twin", "serial"),
                     ("warm", "pipeline"), ("traced", "pipeline"), ("twin", "pipeline")] * 3
    # the runs' wall times count up: the twins' are 3, 9, 15 (serial) and 6, 12, 18 (pipeline)
    assert [r["real_walls_s"] for r in rows] == [[9.0], [12.0]]
    assert [r["s_per_eval"] for r in rows] == pytest.approx([0.9 * 2.0 / 2, 0.9 * 1.0 / 2])  # 2 evaluations
    assert all("alone_spans" not in r for r in rows)

    calls.clear()
    monkeypatch.setattr(strategies, "host_cores", lambda: 1)
    rows = strategies.time_phase(["peaks"], 2, cands, 1, None, str(tmp_path), median=3, repeats=2)
    assert calls == [("warm", "serial"), ("traced", "serial"), ("twin", "serial"), ("alone", "serial"),
                     ("warm", "pipeline"), ("traced", "pipeline"), ("twin", "pipeline"), ("alone", "pipeline")] * 6
    assert [r["alone_spans"]["s_per_eval"] for r in rows] == pytest.approx([0.9 * 0.5 / 2, 0.9 * 0.25 / 2])
    assert [len(r["replays_s"]) for r in rows] == [2, 2]


def test_strategies_measures_exact_only_when_asked_and_under_the_planners_labels():
    from bench import strategies

    def labels(P, **kw):
        return [c[0] for c in strategies.candidates(P, 8, 200, **kw)]

    assert not any("exact" in x for P in (1, 2, 8) for x in labels(P))
    assert [x for x in labels(1, exact=True) if "exact" in x] == ["exact"]
    cands = {c[0]: c for c in strategies.candidates(2, 8, 200, exact=True)}
    assert cands["2x1 exact"][1:] == (["--method", "exact", "--data-parallel", "2"], 2)
    assert cands["1x2 exact"][1:] == (["--method", "exact"], 2)
    for D, L in ((2, 1), (1, 2)):   # the planner's exact candidates are measured as these rows
        assert strategies.plan_label({"D": D, "L": L, "method": "exact", "M": 1}, 2) == f"{D}x{L} exact"
    assert "1x16 exact" not in labels(16, exact=True)   # more layer ranks than the 8 layers
