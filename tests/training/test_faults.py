"""Faults end with one line and the documented status, losing nothing already saved: a truncated
newest checkpoint (resume falls back), a full file system (status 4, the last checkpoint kept),
divergence named by its cause (status 3, no library warnings), a stalled objective (a warning),
and Ctrl-C to the job's process group under mpiexec (status 130, exactly one line)."""
import os
import subprocess

import pytest

from gpubraid.cli import main as cli
from gpubraid.io import checkpoint

RUN = ["train", "peaks", "--n-train", "100", "--n-val", "20", "--no-progress", "--layers", "8"]


def one_line(capsys, prefix, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(prefix) and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert cli.main([*RUN, "--iterations", "4", "--checkpoint-dir", str(ck), "--checkpoint-every", "2"]) == 0
    old, new = sorted(os.listdir(ck))
    data = (ck / new).read_bytes()
    (ck / new).write_bytes(data[: len(data) // 2])  # a crash while flushing, a copy cut short
    capsys.readouterr()
    assert cli.main([*RUN, "--iterations", "6", "--resume", str(ck), "--metrics", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith("gpubraid: warning: resume:"), out.err
    assert new in out.err and old in out.err and "iteration 2" in out.err
    assert out.out.splitlines()[0].startswith("it     3"), out.out
    (ck / old).write_bytes(b"")  # nothing readable left: one line naming both
    assert cli.main([*RUN, "--iterations", "6", "--resume", str(ck)]) == 2
    one_line(capsys, "gpubraid: error: resume: no readable checkpoint", old, new)


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "fs"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs")
    yield path
    subprocess.run(["umount", str(path)])


def test_a_full_file_system_stops_with_status_4_and_keeps_the_last_checkpoint(small_fs, capsys):
    ck = small_fs / "ck"
    assert cli.main([*RUN, "--iterations", "2", "--checkpoint-dir", str(ck)]) == 0
    (good,) = os.listdir(ck)
    before = (ck / good).read_bytes()
    _fill(small_fs)
    capsys.readouterr()
    rc = cli.main([*RUN, "--iterations", "4", "--resume", str(ck), "--checkpoint-dir", str(ck),
                   "--checkpoint-every", "1", "--metrics", str(small_fs / "m.json")])
    assert rc == 4
    one_line(capsys, "gpubraid: error: checkpoint_dir: cannot write", str(ck / "checkpoint-00000003"),
             "No space left on device", "needed", good)
    assert os.listdir(ck) == [good] and (ck / good).read_bytes() == before
    assert not os.path.exists(small_fs / "m.json")


def test_checkpoint_write_errors_name_the_bytes_and_the_last_good_one(tmp_path, monkeypatch):
    import errno

    from gpubraid.runtime import atomic

    checkpoint.save(str(tmp_path), 1, {"x": __import__("numpy").zeros(3)}, {"it": 1})

    def quota(path, write, binary=False):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(atomic, "write_atomic", quota)
    with pytest.raises(atomic.WriteError, match=r"quota.*\d+ bytes needed.*checkpoint-00000001"):
        checkpoint.save(str(tmp_path), 2, {"x": __import__("numpy").zeros(3)}, {"it": 2})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000001.safetensors"]


def _fill(directory):
    """Fill the file system of ``directory`` to the last byte."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    for block in (65536, 4096, 1):
        try:
            while True:
                os.write(fd, b"\0" * block)
        except OSError:
            pass
    os.close(fd)


@pytest.mark.parametrize("full", ["save", "metrics"])
def test_a_model_or_metrics_file_on_a_full_file_system_is_one_line_after_the_summary(small_fs, tmp_path, capsys,
                                                                                     full):
    """The end-of-run outputs: the summary is printed, the output with room is written, the other
    is one line (status 4) and leaves nothing behind."""
    paths = {"save": tmp_path / "model.safetensors", "metrics": tmp_path / "m.json"}
    paths[full] = small_fs / paths[full].name
    _fill(small_fs)
    rc = cli.main([*RUN, "--iterations", "2", "--save", str(paths["save"]), "--metrics", str(paths["metrics"])])
    assert rc == 4
    out = capsys.readouterr()
    assert "val accuracy" in out.out, out.out
    assert out.err.count("\n") == 1 and out.err.startswith(f"gpubraid: error: {full}: cannot write"), out.err
    assert str(paths[full]) in out.err and "No space left on device" in out.err
    assert not paths[full].exists() and os.listdir(small_fs) == ["filler"]
    other = paths["metrics" if full == "save" else "save"]
    assert other.stat().st_size > 0


@pytest.mark.parametrize("argv,cause", [
    (["--init-scale", "1e308"], "the initial parameters are too large"),
    (["--gamma-tik", "1e308"], "the regulariser overflowed"),
    (["--gamma-ddt", "1e308"], "the regulariser overflowed"),
    (["--final-time", "1e200", "--activation", "relu"], "the step size h = T/N"),
    (["--optimizer", "sgd", "--lr", "1e8"], "--lr 1e+08"),
], ids=["init-scale", "gamma-tik", "gamma-ddt", "step size", "lr"])
def test_divergence_names_the_cause_in_one_line(capsys, argv, cause):
    assert cli.main([*RUN, "--iterations", "4", *argv]) == 3
    one_line(capsys, "gpubraid: diverged:", cause)


def test_a_stalled_objective_gives_a_warning_naming_the_cause(capsys):
    assert cli.main([*RUN, "--iterations", "14", "--final-time", "1e4", "--val-every", "0"]) == 0
    one_line(capsys, "gpubraid: warning: the objective has stayed near", "h = T/N", "--final-time")
    assert cli.main([*RUN, "--iterations", "14", "--val-every", "0"]) == 0
    assert capsys.readouterr().err == ""


def test_predict_to_a_full_file_system_is_one_line_with_status_4(small_fs, tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    assert cli.main([*RUN, "--iterations", "1", "--save", str(model)]) == 0
    import numpy as np

    np.savez(tmp_path / "x.npz", x=np.zeros((4000, 2)))
    _fill(small_fs)
    capsys.readouterr()
    out = small_fs / "pred.npz"
    assert cli.main(["predict", str(model), "--data", str(tmp_path / "x.npz"), "--out", str(out)]) == 4
    one_line(capsys, "gpubraid: error: out: cannot write", str(out), "No space left on device", "needed")
    assert os.listdir(small_fs) == ["filler"]
