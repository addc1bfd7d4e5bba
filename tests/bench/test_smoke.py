"""Smoke tests of the benchmarks in bench/: each module's --quick mode into a temporary directory.

Each script must write its JSON (machine, versions, date, config, results) and a PNG made from it.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMON_KEYS = {"benchmark", "date", "machine", "versions", "config", "results"}


def _run(name, out, *extra, timeout=240) -> dict:
    """Run ``python -m bench.<name> --quick --out out EXTRA``; its checked result document."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GPUBRAID_BACKEND="numpy")
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _doc(out, name)


def _doc(out, name):
    path = Path(out) / f"{name}.json"
    assert path.exists(), f"no {name} JSON in {out}"
    doc = json.loads(path.read_text())
    assert COMMON_KEYS <= set(doc)
    assert {"hostname", "cpu_model", "cores", "device"} <= set(doc["machine"])
    assert {"gpubraid", "numpy", "mpi4py", "mpi_library"} <= set(doc["versions"])
    assert path.with_suffix(".png").exists()
    return doc


def test_steps_quick(tmp_path):
    doc = _run("steps", tmp_path)
    row = doc["results"][0]
    assert {"kind", "C", "B", "L", "op", "backend", "median_s", "bytes", "GBs"} <= set(row)
    assert {r["op"] for r in doc["results"]} == {"forward", "adjoint", "param_grad"}


def test_mgrit_phases_quick(tmp_path):
    row = _run("mgrit_phases", tmp_path)["results"][0]
    assert row["evaluations"] >= 2 and max(row["levels"]) == 2
    for k in ("forward", "adjoint"):
        phases = row[k + "_phases_ms"]
        assert {"relax", "residual", "coarse_solve"} <= set(phases)
        assert all(t >= 0 for t in phases.values()) and row[k + "_ms"] > 0


def test_spatial_quick(tmp_path):
    doc = _run("spatial", tmp_path, "--layers", "8", "--variants", "serial", "2 levels", "2 levels, spatial 1")
    grad = {r["variant"]: r for r in doc["results"] if "median_grad_rel_error" in r}
    assert set(grad) == {"2 levels", "2 levels, spatial 1"}
    # a quarter of the coarse work: 2 levels at m = 2 cost more than the same cycle on halved maps
    assert grad["2 levels, spatial 1"]["work_over_serial"] < grad["2 levels"]["work_over_serial"]
    assert all(0 < r["median_grad_rel_error"] < 10 for r in grad.values())
    assert {r["variant"] for r in doc["results"] if "val_accuracy" in r} == {"serial", "2 levels",
                                                                             "2 levels, spatial 1"}


def test_oneshot_table_quick(tmp_path):
    rows = _run("oneshot_table", tmp_path)["results"]
    assert len(rows) == 1 and rows[0]["ranks"] == 16
    r = rows[0]
    assert r["winner"] in ("oneshot", "pipeline", "data")
    assert r[r["winner"]]["accuracy_s"] == min(r[k]["accuracy_s"] for k in ("oneshot", "pipeline", "data") if k in r)
    # without calls' and the solver's own costs one-shot can only be faster than as priced
    free = r["oneshot_overhead_free"]
    best_other = min(r[k]["accuracy_s"] for k in ("pipeline", "data") if k in r)
    assert 0 < free["accuracy_s"] <= r["oneshot"]["accuracy_s"]
    assert free["over_best_other"] == pytest.approx(free["accuracy_s"] / best_other)
    # one-shot is the best of its coarsening factors, each probed on its own
    by_m = r["by_cfactor"]
    assert set(by_m) == {"2", "4"}
    assert r["oneshot"]["accuracy_s"] == min(e["oneshot"]["accuracy_s"] for e in by_m.values() if "oneshot" in e)
    assert r["oneshot_probe"] == by_m[str(r["oneshot"]["cfactor"])]["probe"]


def test_oneshot_bound_quick(tmp_path):
    """Each cycle's counted work and its ideal speedup; a table row is set against the best admissible cycle."""
    from bench.oneshot_bound import best_others, ideal_speedup, summary

    table = tmp_path / "table.json"
    table.write_text(json.dumps({"results": [
        {"depth": 32, "width": 8, "full_batch": True, "network": "shm", "serial_1rank_eval_s": 1.0,
         "pipeline": {"label": "pipeline M=2 on 8x2", "step_s": 0.25}, "data": {"label": "data", "step_s": 0.125}},
        {"depth": 32, "width": 8, "full_batch": False, "network": "shm", "serial_1rank_eval_s": 1.0,
         "pipeline": {"label": "pipeline M=1 on 8x2", "step_s": 2.0}}]}))
    doc = _run("oneshot_bound", tmp_path, "--layers", "32", "--table", str(table))
    rows = {r["variant"]: r for r in doc["results"]}
    assert set(rows) == {"m=2, 2 levels", "m=2, 3 levels", "m=4, 2 levels"}
    two = rows["m=2, 2 levels"]  # §3.11's floor: 2N forward + 1.5N adjoint, N/2 + N/2 of it the coarsest solves
    assert two["per_eval_over_serial"] == 1.75 and two["coarsest_over_serial"] == 0.5 and set(two["levels"]) == {2}
    assert rows["m=4, 2 levels"]["per_eval_over_serial"] == 1.375
    assert two["ideal_speedup"] == 8 / (1.25 / 2 + 0.5) and two["ideal_layer_ranks"] == 2  # 8x2 beats 4x4 ... 1x16
    assert ideal_speedup({"per_eval_over_serial": 1.0, "coarsest_over_serial": 0.0}, 16)[0] == 16.0  # no work added
    assert all(0 < r["median_grad_rel_error"] < 1 for r in rows.values())
    others = best_others(json.loads(table.read_text()), [32], [8])
    assert others == [dict(depth=32, width=8, network="shm", label="data", speedup=8.0)]  # full batch only
    s = summary(doc["results"], 16, 1.0, others)[0]  # every cycle admissible at tol 1
    assert s["best_admissible"] == "m=4, 2 levels" and s["rows"][0]["oneshot_can_win"] is (
        rows["m=4, 2 levels"]["ideal_speedup"] > 8.0)
    assert summary(doc["results"], 16, 1e-9, others)[0]["best_admissible"] is None


def test_sweeps_quick(tmp_path):
    from gpubraid.runtime import host

    if host.library() is None:
        pytest.skip(f"host kernels unavailable: {host.status()}")
    doc = _run("sweeps", tmp_path)
    for row in doc["results"]:
        assert row["max_rel_diff"] <= (1e-12 if row["dtype"] == "float64" else 1e-4)
        assert row["host"]["ns_per_sample_layer"] > 0 and row["numpy"]["ns_per_sample_layer"] > 0


@pytest.mark.slow
def test_solves_quick(tmp_path):
    doc = _run("solves", tmp_path)
    r = doc["results"][0]
    assert {"N", "median_s", "ratios", "work", "stats"} <= set(r)
    for key in ("FCF_forward", "FCF_adjoint", "F_forward", "F_adjoint"):
        assert r["stats"][key]["converged"]
        assert r["max_rel_error_vs_serial"][key] < 1e-6
        assert {"iterations", "per_iteration_over_N", "total_steps_over_N"} <= set(r["work"][key])


@pytest.mark.mpi
@pytest.mark.usefixtures("mpiexec")
def test_inference_quick(tmp_path):
    res = _run("inference", tmp_path)["results"]
    assert [r["ranks"] for r in res["runs"]] == [1, 2]
    assert {"pipeline", "serial_forward", "mgrit_exact"} == set(res["runs"][0]["median_s"])
    assert all(v > 0 for v in res["summary"].values())


@pytest.mark.mpi
@pytest.mark.usefixtures("mpiexec")
def test_data_parallel_quick(tmp_path):
    res = _run("data_parallel", tmp_path)["results"]
    assert {(r["ranks"], r["data_parallel"], r["method"]) for r in res} == {
        (p, d, m) for p, d in ((1, 1), (2, 1), (2, 2)) for m in ("exact", "oneshot")}
    assert all(r["objective_rel_diff_vs_1_rank"] <= (1e-8 if r["method"] == "exact" else 1e-10)  # exact: to its tol
               and r["s_per_iteration"] > 0 for r in res)


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.usefixtures("mpiexec")
def test_scaling_quick(tmp_path):
    res = _run("scaling", tmp_path)["results"]
    assert [r["P"] for r in res["strong"]] == [1, 2, 4]
    assert {"median_s", "fwd_iterations", "bwd_iterations", "messages_total", "bytes_total"} <= set(res["strong"][1])
    assert res["strong"][0]["grad_rel_error_vs_serial"] < 1e-6
    assert res["strong"][1]["messages_total"] > 0
    assert "strong_ratio_P1_over_P2" in res["summary"]
    m = _run("perf_model", tmp_path, "--scaling", tmp_path / "scaling.json")
    assert {"validation", "projection", "network", "validation_summary"} <= set(m["results"])
    assert all("error" in v for v in m["results"]["validation"])
    assert {r["limiting"] for r in m["results"]["projection"]} <= {"per-rank work", "communication", "coarsest solve"}


@pytest.mark.slow
def test_training_quick(tmp_path):
    res = _run("training", tmp_path)["results"]
    assert {"summary", "ratios", "files"} <= set(res)
    assert "oneshot_over_serial_per_iteration" in res["ratios"]["peaks"]
    for f in res["files"]:
        run = json.loads((tmp_path / f).read_text())
        assert {"method", "objective", "val_accuracy", "wall_s", "history"} <= set(run["results"])


@pytest.mark.slow
def test_oneshot_study_quick(tmp_path):
    res = _run("oneshot_study", tmp_path)["results"]
    assert {"setup", "variant", "grad_rel_error", "steps_over_N", "levels", "max_h_rho"} <= set(res["grad"][0])
    assert {"setup", "variant", "val_accuracy", "steps_per_eval_over_N"} <= set(res["train"][0])
    serial = [r for r in res["train"] if r["variant"] == "serial"]
    assert serial and all(abs(r["steps_per_eval_over_N"] - 2.0) < 1e-12 for r in serial)


@pytest.mark.slow
def test_time_to_accuracy_quick(tmp_path):
    res = _run("time_to_accuracy", tmp_path)["results"]
    assert {"target_val_accuracy", "runs", "projection"} <= set(res)
    assert {"serial-1", "oneshot-1"} <= {r["run"] for r in res["runs"]}


def test_evaluation_parts_quick(tmp_path):
    rows = _run("evaluation_parts", tmp_path)["results"]
    assert [r["micro_batches"] for r in rows] == [1, 8]
    for r in rows:
        ms = r["ms"]
        assert {"forward sweep", "backward sweep", "head", "opening", "new arrays", "rest", "evaluation"} <= set(ms)
        assert ms["forward sweep"] > 0 and ms["backward sweep"] > 0
        assert ms["evaluation"] >= ms["forward sweep"] + ms["backward sweep"]


def test_strategies_quick(tmp_path):
    doc = _run("strategies", tmp_path, "--trace-median", "2", "--no-model")
    assert doc["config"]["trace_median"] == 2
    w = doc["results"][0]
    labels = {(r["P"], r["label"]) for r in w["timing"]}
    assert {(1, "serial"), (2, "data 2"), (2, "1x2 pipeline M=4")} <= labels
    for r in w["timing"]:  # every P ≤ 2 candidate replayed and run for real, two twins each
        assert r["replay_s"] > 0 and r["s_per_eval"] >= 0
        assert r["real_wall_s"] > 0 and len(r["real_walls_s"]) == 1
        assert r["replay_over_real"] == pytest.approx(r["replay_s"] / r["real_wall_s"])
    assert w["best"]["1"]["label"] and set(w["plans"]) == {"1", "2"}


def test_gate_cost_quick(mpirun, tmp_path):
    from bench.gate_cost import CONFIGS

    rows = _run("gate_cost", tmp_path)["results"]
    assert {(r["label"], r["M"]) for r in rows} == {(c[0], M) for c in CONFIGS for M in (1, 8)}
    by = {(r["label"], r["M"]): r for r in rows}
    assert by[("alone", 1)]["over_alone"] == 1.0 and not by[("alone", 1)]["gated"]
    assert by[("2 gated on 1 core", 1)]["gated"] and by[("8 gated on 2 cores", 8)]["gated"] is ((os.cpu_count() or 1) < 8)
    assert all(r["compute_ms"] > 0 and r["replay_ms_per_iteration"] > 0 for r in rows)


def test_pingpong_quick_writes_a_network_model_with_a_transfer_table(mpirun, tmp_path):
    """Two ranks: a model the replay loads, with a transfer time for every size from 8 B to 32 MiB
    (not decreasing), and a one-line refusal of zero passes."""
    from gpubraid.runtime.replay import NetworkModel

    proc = subprocess.run(mpirun.command(2, "-m", "bench.pingpong", "--quick", "--out", tmp_path), capture_output=True,
                          text=True, timeout=240, env=mpirun.env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    net = NetworkModel.from_json(str(tmp_path / "pingpong.json"))
    assert [n for n, _ in net.transfer_table] == [8 << (2 * k) for k in range(12)]
    assert net.transfer(20_000_000) >= net.transfer(1 << 20) >= 0.0
    bad = subprocess.run([sys.executable, "-m", "bench.pingpong", "--sweeps", "0"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "--sweeps must be at least 1" in bad.stderr


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy present: the script would run")
def test_gpu_script_stops_in_one_line_without_cupy_or_with_wheels_it_cannot_install(tmp_path):
    """bench/gpu.sh on a machine without CuPy runs nothing and fails (exit 1, one line); a .whl/
    folder whose wheels do not install stops it before anything runs."""
    (tmp_path / "bench").mkdir()
    for script in ("gpu.sh", "gpu_env.sh"):
        shutil.copy(REPO / "bench" / script, tmp_path / "bench" / script)
    env = dict(os.environ, OUT=str(tmp_path), GPUBRAID_ENV=str(tmp_path / "env"))
    run = [shutil.which("bash"), str(tmp_path / "bench" / "gpu.sh"), sys.executable]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and proc.stdout.strip().splitlines()[-1] == "no CuPy / GPU: nothing to do"
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "broken-1.0-py3-none-any.whl").write_bytes(b"not a wheel")
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and f"installing .whl/ into {tmp_path / 'env'} failed" in proc.stdout
    assert "CuPy" not in proc.stdout and not (tmp_path / "gpu-results.tgz").exists()


@pytest.mark.parametrize("name", ["tanh", "relu", "identity", "smoothrelu"])
def test_training_baseline_activations_are_gpubraids(name):
    """bench.training's PyTorch baseline uses the run's own activation (smoothrelu had fallen back to
    tanh), equal to gpubraid's on both sides of smoothrelu's kinks and between them."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from bench.training import _torch_activation
    from gpubraid.network.activations import ACTIVATIONS
    z = np.linspace(-0.5, 0.5, 101)
    got = _torch_activation(torch, name)(torch.tensor(z)).numpy()
    assert np.allclose(got, ACTIVATIONS[name].sigma(np, z), rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="no torch baseline for activation 'swish'"):
        _torch_activation(torch, "swish")


def test_pipeline_ramp_quick_compares_the_ramp_with_equal_micro_batches(mpirun, tmp_path):
    """Both variants of every configuration replayed, real runs where the ranks fit the cores; and the
    worker's "equal" really sends micro-batches of one size where gpubraid ramps (4 ranks)."""
    from bench.pipeline_ramp import run
    from gpubraid.runtime import tags

    rows = _run("pipeline_ramp", tmp_path)["results"]
    assert [(r["ranks"], r["ramped"]) for r in rows] == [(2, False), (4, True)]
    for r in rows:
        assert set(r["replay_ms"]) == {"ramp", "equal"} and min(r["replay_ms"].values()) > 0
        assert r["replay_equal_over_ramp"] == pytest.approx(r["replay_ms"]["equal"] / r["replay_ms"]["ramp"])
    assert ("real_ms" in rows[0]) is ((os.cpu_count() or 1) >= 2)
    args = ["peaks", "--layers", "8", "--n-train", "400", "--method", "pipeline", "--micro-batches", "8",
            "--iterations", "1", "--val-every", "0"]
    sizes = {}
    for variant in ("ramp", "equal"):
        trace = run(variant, 4, args, str(tmp_path), True)["trace"]
        sent = [e[4] for e in trace["ranks"][0]["events"] if e[0] == "s" and e[3] == tags.PIPE_STATE]
        sizes[variant] = sent[:8]
    row = 8 * 8   # bytes of one sample's state
    assert sizes["equal"] == [50 * row] * 8
    assert sizes["ramp"] == [s * row for s in (29, 44, 60, 60, 60, 59, 59, 29)]


def test_kernel_revisions_quick(tmp_path):
    from gpubraid.runtime import host

    if host.library() is None or shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the host kernels and a git checkout")
    res = _run("kernel_revisions", tmp_path, "--against", "HEAD", timeout=600)["results"]
    row = res["kernels"][0]
    assert row["same_bits"] and {res["against"], "working tree"} <= set(row)
    assert all(row[k]["forward_ns"] > 0 and row[k]["backward_ns"] > 0 for k in (res["against"], "working tree"))
    (train,) = res["training"]
    assert train["same_history"] and train["ratio"] > 0
    assert len(train["working tree"]["rounds"]) == len(train[res["against"]]["rounds"]) == 2
