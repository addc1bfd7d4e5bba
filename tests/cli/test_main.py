"""The ``gpubraid`` command line: training runs and their metrics, config files, every kind of bad
input (status 2, one line, no traceback), MPI launches.

Training runs go through real subprocesses (``python -m gpubraid``); bad-input cases call
:func:`gpubraid.cli.main` in-process, which is much cheaper.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpubraid.cli import main as cli
from tests.cli.launch import run_cli

TINY = ["--layers", "4", "--iterations", "3", "--n-train", "200", "--n-val", "100", "--no-progress"]
METRIC_KEYS = {"method", "ranks", "backend", "dtype", "layers", "iterations", "objective",
               "train_accuracy", "val_accuracy", "wall_s", "history"}


def check_metrics(path: Path, method: str, ranks: int = 1) -> dict:
    m = json.loads(path.read_text())
    assert METRIC_KEYS <= set(m)
    assert (m["method"], m["ranks"], m["backend"], m["dtype"], m["layers"]) == \
        (method, ranks, "numpy", "float64", 4)
    assert m["iterations"] == len(m["history"]) and 1 <= m["iterations"] <= 3
    for k in ("train_accuracy", "val_accuracy"):
        assert 0.0 <= m[k] <= 1.0
    assert np.isfinite(m["objective"]) and m["wall_s"] > 0
    for entry in m["history"]:
        assert {"iter", "objective", "grad_norm"} <= set(entry)
        if method != "serial":
            assert {"fwd_iters", "bwd_iters", "fwd_residual", "bwd_residual"} <= set(entry)
    return m


@pytest.mark.parametrize("method", ["serial", "oneshot"])
def test_train_writes_metrics(tmp_path, method):
    out = tmp_path / "m.json"
    res = run_cli("train", "peaks", *TINY, "--method", method, "--metrics", out)
    assert res.returncode == 0, res.stderr
    check_metrics(out, method)
    assert "train accuracy" in res.stdout and "it     1" in res.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left behind


def test_help_does_not_start_mpi():
    code = ("import sys\nfrom gpubraid.cli.main import main\n"
            "assert main(['--help']) == 0 and main(['train', '--help']) == 0\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported by --help'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--final-time" in res.stdout and "per example" in res.stdout


def test_config_file_and_override(tmp_path):
    cfg = tmp_path / "run.toml"
    out = tmp_path / "m.json"
    cfg.write_text('example = "peaks"\nlayers = 4\niterations = 2\nn-train = 200\nn_val = 100\n'
                   'method = "serial"\nfinal_time = 3\nprogress = false\n'
                   f'metrics = "{out.as_posix()}"\n')
    assert cli.main(["train", "--config", str(cfg), "--iterations", "3", "--method", "oneshot"]) == 0
    m = check_metrics(out, "oneshot")
    assert m["config"]["iterations"] == 3 and m["config"]["final_time"] == 3.0
    assert m["config"]["n_train"] == 200 and m["config"]["layers"] == 4


def _write_pines(directory: Path, nan: bool) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    cube = rng.random((10, 12, 20))
    gt = np.zeros((10, 12), dtype=np.int64)
    gt[:5, :8], gt[5:, :4], gt[5:, 4:8] = 1, 3, 16
    if nan:
        cube[0, 0, 3] = np.nan
    savemat(directory / "Indian_pines_corrected.mat", {"indian_pines_corrected": cube})
    savemat(directory / "Indian_pines_gt.mat", {"indian_pines_gt": gt})


BAD = {
    "unknown example": (["train", "cifar"], "EXAMPLE"),
    "unknown activation": (["train", "peaks", "--activation", "sigmoid"], "--activation"),
    "unknown optimizer": (["train", "peaks", "--optimizer", "rmsprop"], "--optimizer"),
    "unknown method": (["train", "peaks", "--method", "parareal"], "--method"),
    "zero layers": (["train", "peaks", "--layers", "0"], "--layers"),
    "zero final time": (["train", "peaks", "--final-time", "0"], "--final-time"),
    "negative final time": (["train", "peaks", "--final-time", "-1"], "--final-time"),
    "nan final time": (["train", "peaks", "--final-time", "nan"], "--final-time"),
    "inf lr": (["train", "peaks", "--optimizer", "adam", "--lr", "inf"], "--lr"),
    "missing lr": (["train", "peaks", "--optimizer", "sgd"], "lr"),
    "non-integer layers": (["train", "peaks", "--layers", "2.5"], "--layers"),
    "unknown command": (["fly"], "COMMAND"),
    "no example": (["train"], "example"),
    "missing config": (["train", "peaks", "--config", "/nonexistent/run.toml"], "run.toml"),
    "layer not callable": (["train", "peaks", "--layer", "math:pi"], "'math:pi' is a float"),
    "layer of another signature": (["train", "peaks", "--layer", "builtins:object"], "cannot be called as"),
}


def _assert_one_line_error(capsys, rc: int, name: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("gpubraid: error: "), err
    assert name in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_options(capsys, case):
    argv, name = BAD[case]
    _assert_one_line_error(capsys, cli.main(argv), name)


@pytest.mark.parametrize("text,name", [
    ("layers = [4\n", "not valid TOML"),
    ("layerz = 4\n", "layerz"),
    ('layers = "four"\n', "layers"),
    ("layers = true\n", "layers"),
    ("final_time = nan\n", "final_time"),
    ("final_time = -2.0\n", "final_time"),
    ('activation = "sigmoid"\n', "activation"),
])
def test_bad_config(tmp_path, capsys, text, name):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    line = _assert_one_line_error(capsys, cli.main(["train", "peaks", "--config", str(cfg)]), name)
    assert "bad.toml" in line


def test_labels_that_would_need_a_huge_head_are_refused_before_allocating(tmp_path, capsys):
    """A label of 10^12 (an ID, not a class index) would make a head of 10^13 numbers: the memory check
    counts the head and its outputs and names the targets, instead of a MemoryError traceback."""
    data = tmp_path / "ids.npz"
    np.savez(data, x_train=np.random.default_rng(0).random((10, 2)), y_train=np.array([0, 10**12] * 5))
    line = _assert_one_line_error(capsys, cli.main(["train", "--data", str(data), "--iterations", "1"]), "memory")
    assert "head" in line and "y_train" in line


def test_metrics_directory_missing(tmp_path, capsys):
    target = tmp_path / "missing" / "m.json"
    rc = cli.main(["train", "peaks", *TINY, "--metrics", str(target)])
    _assert_one_line_error(capsys, rc, "metrics")
    assert list(tmp_path.iterdir()) == []


def test_missing_data_files(tmp_path, capsys):
    rc = cli.main(["train", "indianpines", *TINY, "--data-dir", str(tmp_path)])
    _assert_one_line_error(capsys, rc, "Indian_pines")


def test_non_finite_data(tmp_path, capsys):
    pytest.importorskip("scipy")
    _write_pines(tmp_path, nan=True)
    rc = cli.main(["train", "indianpines", "--layers", "4", "--iterations", "2", "--no-progress",
                   "--data-dir", str(tmp_path)])
    line = _assert_one_line_error(capsys, rc, "Indian_pines_corrected.mat")
    assert "non-finite" in line


@pytest.mark.mpi
def test_mpi_train_writes_metrics_once(mpiexec, tmp_path):
    out = tmp_path / "m.json"
    res = run_cli("train", "peaks", *TINY, "--metrics", out, launcher=[mpiexec, "-n", "2"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    check_metrics(out, "oneshot", ranks=2)
    assert res.stdout.count("train accuracy") == 1  # one summary, from rank 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.mpi
@pytest.mark.parametrize("argv", [["--layers", "0"], ["--data-dir", "EMPTY"]], ids=["option", "data"])
def test_mpi_bad_input_exits_2(mpiexec, tmp_path, argv):
    argv = [str(tmp_path) if a == "EMPTY" else a for a in argv]
    res = run_cli("train", "indianpines", "--no-progress", *argv, launcher=[mpiexec, "-n", "2"], timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("gpubraid: error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("argv,expect", [(["--cfactor", "4,2", "--nrelax", "0,1"], ([4, 2], [0, 1])),
                                         (["--cfactor", "3"], (3, None))])  # None: per method
def test_per_level_lists_from_the_command_line(argv, expect):
    args = cli.build_parser().parse_args(["train", "peaks", *argv])
    cfg = cli.train_config(args)
    assert (cfg.cfactor, cfg.nrelax) == expect


def test_per_level_lists_from_toml_reach_the_solver(tmp_path):
    from gpubraid.training.methods import make_method

    f = tmp_path / "c.toml"
    f.write_text('example = "peaks"\ncfactor = [4, 2]\nnrelax = [0, 1]\nmin_coarse = 3\n')
    cfg = cli.train_config(cli.build_parser().parse_args(["train", "--config", str(f)]))
    fwd = make_method(cfg).forward
    assert (fwd.cfactor, fwd.nrelax, fwd.min_coarse) == ([4, 2], [0, 1], 3)


@pytest.mark.parametrize("argv,name", [(["--cfactor", "4,1"], "cfactor"), (["--nrelax", "0,x"], "nrelax"),
                                       (["--layers", "100000000000000000000"], "layers"),
                                       (["--cfactor", "100000000000000000000"], "cfactor")])
def test_bad_per_level_and_huge_integers(capsys, argv, name):
    _assert_one_line_error(capsys, cli.main(["train", "peaks", *argv]), name)


@pytest.mark.parametrize("argv,name", [(["--layers", "10000000"], "--layers"),
                                       (["--channels", "1000000"], "--channels")])
def test_sizes_beyond_memory_are_refused_before_allocating(capsys, argv, name):
    line = _assert_one_line_error(capsys, cli.main(["train", "peaks", *argv]), name)
    assert "available" in line


def test_divergence_stops_with_its_own_status_and_location(capsys):
    rc = cli.main(["train", "peaks", "--optimizer", "sgd", "--lr", "1e8", "--layers", "4", "--iterations", "6",
                   "--n-train", "200", "--n-val", "50", "--no-progress", "--batch-size", "0"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == cli.EXIT_DIVERGED, err
    assert len(lines) == 1 and lines[0].startswith("gpubraid: diverged: objective"), err
    assert "iteration 2" in lines[0] and "--lr" in lines[0] and "largest parameter" in lines[0], err


@pytest.mark.parametrize("argv", [["info"], ["train", "peaks", "--layers", "4", "--iterations", "3", "--no-progress"]],
                         ids=["info", "train"])
def test_a_closed_stdout_ends_quietly_with_status_141(argv):
    """``gpubraid ... | head -1``: once the reader is gone the command ends as SIGPIPE would, with
    nothing on stderr (no BrokenPipeError traceback)."""
    import os
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first line
    proc = subprocess.run([sys.executable, "-m", "gpubraid", *argv], stdout=w, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    os.close(w)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_iteration_lines_say_whether_a_solve_was_layer_parallel():
    base = {"iter": 0, "objective": 1.5, "grad_norm": 0.5, "time_s": 0.25, "fwd_iters": 1, "fwd_residual": 0.1,
            "bwd_iters": 1, "bwd_residual": 0.01}
    assert "1 level: layer-serial sweep" in cli.iteration_line({**base, "levels": 1}, "oneshot")
    line = cli.iteration_line({**base, "levels": 3}, "oneshot")
    assert "3 levels  fwd 1 it r 1.00e-01  bwd 1 it r 1.00e-02" in line and "layer-serial" not in line
    assert "level" not in cli.iteration_line({**base, "levels": 1}, "pipeline")
    assert cli.iteration_line({**base, "layers": 8}, "serial").startswith("[8 layers]  it     1")
    # the micro-batches a pipelined evaluation streamed, when it cut the batch at all
    assert "  M 20  " in cli.iteration_line({**base, "levels": 1, "micro_batches": 20}, "serial")
    assert " M " not in cli.iteration_line({**base, "levels": 1, "micro_batches": 1}, "serial")
    one = cli.iteration_line({**base, "levels": 1, "micro_batches": 1}, "oneshot")
    assert "1 level: layer-serial sweep" in one and "levels" not in one and "fwd" not in one
