"""Files are data, never code: model files, checkpoints and --init files that name import paths
are refused with one line (status 2) and run nothing unless the caller supplies the step or
trusts the file; their metadata is validated before anything is built.  Output paths are checked
completely before any work."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

import gpubraid
from gpubraid.cli import main as cli
from gpubraid.errors import UserError

TINY = ["--iterations", "2", "--n-train", "60", "--n-val", "20", "--no-progress", "--layers", "4"]


def model_file(path, step: dict, **network):
    """A model file for 2 features, 2 classes whose step spec is ``step``."""
    meta = {"format": 1, "version": "0.1.0",
            "network": {"step": step, "layers": 2, "final_time": 1.0, **network},
            "data": {"kind": "dense", "task": "classification", "in_shape": [2], "n_classes": 2,
                     "normalization": None}}
    save_file({"K": np.zeros((2, 4, 4))}, str(path), metadata={"gpubraid_model": json.dumps(meta)})
    return str(path)


EVIL = {"name": "torch", "factory": "subprocess:run", "kwargs": {"args": "touch PWNED", "shell": True},
        "state_shape": [4]}
TRAP = {"name": "mine", "factory": "trap:trap", "kwargs": {"state_shape": [4]}}


@pytest.fixture
def trap_mark(tmp_path, monkeypatch):
    """The file the trap module writes when imported or called (it must stay absent)."""
    mark = tmp_path / "TRAPPED"
    monkeypatch.setenv("GPUBRAID_TRAP", str(mark))
    sys.modules.pop("trap", None)
    return mark


def one_line(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_the_shell_command_file_is_refused_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = model_file(tmp_path / "evil.safetensors", EVIL)
    np.savez(tmp_path / "x.npz", x=np.ones((3, 2)))
    assert cli.main(["predict", evil, "--data", "x.npz", "--out", "p.npz"]) == 2
    one_line(capsys, "'subprocess:run'", "--trust", "--layer subprocess:run")
    with pytest.raises(UserError, match="subprocess:run"):
        gpubraid.load(evil)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "p.npz").exists()


@pytest.mark.parametrize("how", ["load", "predict", "init"])
def test_a_kwargs_only_callable_is_neither_imported_nor_called(tmp_path, capsys, trap_mark, how):
    path = model_file(tmp_path / "m.safetensors", TRAP)
    if how == "load":
        with pytest.raises(UserError, match="'trap:trap'.*trust=True"):
            gpubraid.load(path)
    elif how == "predict":
        np.savez(tmp_path / "x.npz", x=np.ones((3, 2)))
        assert cli.main(["predict", path, "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "p.npz")]) == 2
        one_line(capsys, "'trap:trap'")
    else:
        assert cli.main(["train", "peaks", *TINY, "--init", path]) == 2
        one_line(capsys, "init file", "'trap:trap'", "--trust")
    assert "trap" not in sys.modules and not trap_mark.exists()


def test_trust_imports_the_path_the_file_names(tmp_path, trap_mark):
    path = model_file(tmp_path / "m.safetensors", TRAP)
    with pytest.raises(Exception):  # trap returns no step: the network cannot be built
        gpubraid.load(path, trust=True)
    assert trap_mark.read_text().splitlines() == ["imported", "called ['backend', 'state_shape']"]


def test_a_checkpoint_naming_a_layer_path_needs_layer_or_trust(tmp_path, capsys, trap_mark):
    from user_steps import StateShapeStep  # noqa: F401  (importable for --layer)

    ck = tmp_path / "ck"
    argv = ["train", "peaks", *TINY, "--channels", "4", "--method", "exact"]
    assert cli.main([*argv, "--layer", "user_steps:StateShapeStep", "--checkpoint-dir", str(ck)]) == 0
    (name,) = os.listdir(ck)
    from safetensors import safe_open

    with safe_open(str(ck / name), framework="numpy") as f:
        meta, arrays = json.loads(f.metadata()["gpubraid"]), {k: f.get_tensor(k) for k in f.keys()}
    meta["config"]["layer"] = "trap:trap"
    meta.pop("format")
    from gpubraid.io import checkpoint

    checkpoint.save(str(ck), 99, arrays, meta)
    capsys.readouterr()
    assert cli.main([*argv, "--iterations", "3", "--resume", str(ck)]) == 2
    one_line(capsys, "checkpoint", "'trap:trap'", "--trust")
    assert "trap" not in sys.modules and not trap_mark.exists()


def test_user_and_torch_steps_load_from_the_step_the_caller_passes(tmp_path, capsys):
    pytest.importorskip("torch")
    from user_steps import StateShapeStep, TorchBlock

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((80, 2)), rng.integers(0, 2, 80)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=y)
    for layer, step in (("user_steps:StateShapeStep", StateShapeStep), ("user_steps:TorchBlock", TorchBlock)):
        m = str(tmp_path / "m.safetensors")
        assert cli.main(["train", "--data", str(tmp_path / "s.npz"), "--layer", layer, "--layers", "4",
                         "--channels", "4", "--iterations", "2", "--no-progress", "--method", "exact",
                         "--save", m]) == 0
        capsys.readouterr()
        with pytest.raises(UserError, match=layer):
            gpubraid.load(m)
        want = gpubraid.load(m, trust=True).predict(x)
        assert np.array_equal(gpubraid.load(m, step=step).predict(x), want)
        assert cli.main(["predict", m, "--data", str(tmp_path / "s.npz"), "--array", "x_train", "--layer", layer,
                         "--out", str(tmp_path / "p.npz")]) == 0
        assert np.array_equal(np.load(tmp_path / "p.npz")["labels"], want)
        # --init: refused without the step, taken from --layer, or from the file with --trust
        base = ["train", "--data", str(tmp_path / "s.npz"), "--layers", "4", "--channels", "4", "--iterations",
                "1", "--no-progress", "--method", "exact", "--init", m]
        capsys.readouterr()
        assert cli.main(base) == 2
        one_line(capsys, "init file", layer)
        assert cli.main([*base, "--layer", layer]) == 0
        assert cli.main([*base, "--trust"]) == 0


@pytest.mark.parametrize("network,data,word", [
    ({"layers": 10 ** 12}, {}, "layers"),
    ({"layers": "2"}, {}, "layers"),
    ({"final_time": float("nan")}, {}, "final_time"),
    ({"gamma_tik": -1.0}, {}, "gamma_tik"),
    ({}, {"in_shape": [10 ** 9]}, "in_shape"),
    ({}, {"in_shape": "2"}, "in_shape"),
    ({}, {"n_classes": 0}, "n_classes"),
    ({}, {"task": "poetry"}, "task"),
    ({}, {"normalization": {"mean": [0, 0], "std": [0, 1]}}, "normalization"),
    ({"step": {"name": "dense", "channels": 10 ** 10}}, {}, "channels"),
    ({"step": {"name": "dense", "channels": 4, "activation": "exec"}}, {}, "activation"),
    ({"step": "dense"}, {}, "step"),
])
def test_malformed_metadata_is_one_line_before_anything_is_built(tmp_path, capsys, network, data, word):
    meta = {"format": 1, "network": {"step": {"name": "dense", "channels": 4}, "layers": 2, "final_time": 1.0,
                                     **network},
            "data": {"task": "classification", "in_shape": [2], "n_classes": 2, **data}}
    save_file({"K": np.zeros((2, 4, 4))}, str(tmp_path / "m.safetensors"), metadata={"gpubraid_model": json.dumps(meta)})
    np.savez(tmp_path / "x.npz", x=np.ones((3, 2)))
    assert cli.main(["predict", str(tmp_path / "m.safetensors"), "--data", str(tmp_path / "x.npz"),
                     "--out", str(tmp_path / "p.npz")]) == 2
    one_line(capsys, word)


# -- output paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--metrics", "--save"])
@pytest.mark.parametrize("case", ["separator", "directory", "missing parent", "parent is a file"])
def test_output_paths_are_checked_before_any_work(tmp_path, capsys, option, case):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    path = {"separator": str(tmp_path / "newdir") + os.sep, "directory": str(tmp_path / "dir"),
            "missing parent": str(tmp_path / "missing" / "m.json"), "parent is a file": str(tmp_path / "file" / "m.json")}[case]
    assert cli.main(["train", "peaks", *TINY, option, path]) == 2
    err = one_line(capsys, option.lstrip("-"))
    assert "it " not in capsys.readouterr().out and not (tmp_path / "newdir").exists(), err


def read_only_dir(tmp_path):
    """A directory no file can be created in: a read-only tmpfs (root), else mode 0555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs")
    else:
        path.chmod(0o555)
    return path


def test_read_only_outputs_and_checkpoint_dir(tmp_path, capsys):
    ro = read_only_dir(tmp_path)
    try:
        for argv, word in ((["--metrics", str(ro / "m.json")], "metrics"), (["--save", str(ro / "m.st")], "save"),
                           (["--checkpoint-dir", str(ro)], "checkpoint_dir"),
                           (["--checkpoint-dir", str(ro / "sub")], "checkpoint_dir")):
            assert cli.main(["train", "peaks", *TINY, *argv]) == 2
            one_line(capsys, word, "ro")
        np.savez(tmp_path / "x.npz", x=np.ones((3, 2)))
        assert cli.main(["predict", "m.safetensors", "--data", str(tmp_path / "x.npz"), "--out", str(ro / "p.npz")]) == 2
        one_line(capsys, "out")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)])
        else:
            ro.chmod(0o755)


@pytest.mark.mpi
def test_output_paths_under_mpiexec_are_one_line(tmp_path, mpiexec):
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "gpubraid", "train", "peaks", *TINY, "--metrics",
           str(tmp_path / "newdir") + "/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "ends in a path separator" in out.stderr, out.stderr
