"""bench.rerun: a traced run recorded, each rank run again alone, and the two replays; and the
strategies benchmark's replay with spans alone where the ranks took turns."""
import json
import os
import subprocess
import sys
from pathlib import Path

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
    rows = strategies.time_phase(TRAIN[:-4], 2, cands, 3, network_model("ideal"), str(tmp_path), median=2,
                                 batch=200)
    assert [r["label"] for r in rows] == ["data 2", "1x2 pipeline M=4"]
    for r in rows:
        alone = r["alone_spans"]
        assert alone["first_iteration_s"] > 0 and alone["s_per_eval"] > 0
        assert alone["s_per_eval"] < 10 * r["s_per_eval"] and r["s_per_eval"] < 10 * alone["s_per_eval"]
    assert sorted(os.listdir(tmp_path / "record")) == ["rank-0.rec", "rank-1.rec"]
