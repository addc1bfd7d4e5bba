"""Checkpoints: atomic files, exact resume after kill -9 (1 and 2 ranks, and the Chimera pipeline), resume on
another rank count."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest

from gpubraid.cli import main as cli
from gpubraid.io import checkpoint
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer

RUN = ["train", "peaks", "--iterations", "30", "--n-train", "400", "--n-val", "100", "--no-progress",
       "--checkpoint-every", "5"]


def strip(history):
    """A history without wall times (the only thing that may differ after a resume)."""
    return [{k: v for k, v in e.items() if k != "time_s"} for e in history]


def gpubraid(mpirun, ranks: int, *argv) -> list[str]:
    """``python -m gpubraid ARGV``, under ``mpiexec -n ranks`` when ranks > 1."""
    return mpirun.gpubraid(ranks, *argv) if ranks > 1 else [sys.executable, "-m", "gpubraid", *argv]


def run_to_end(mpirun, ranks: int, *argv) -> int:
    cmd = gpubraid(mpirun, ranks, *argv)
    return subprocess.run(cmd, env=mpirun.env, capture_output=True, text=True, timeout=300).returncode


def kill_at(mpirun, ranks: int, iteration: int, *argv) -> None:
    """Start a run and kill -9 every process of it once iteration ``iteration`` is logged."""
    proc = subprocess.Popen(gpubraid(mpirun, ranks, *argv), env=mpirun.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith(f"it {iteration:5d}"):
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the run finished before it could be killed"


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,extra", [(1, ()), (2, ()), (2, ("--method", "pipeline", "--schedule", "chimera"))])
def test_resume_after_kill_9_equals_the_uninterrupted_run(mpirun, tmp_path, ranks, extra):
    ref, got = tmp_path / "ref.json", tmp_path / "got.json"
    ckpt = tmp_path / "ckpt"
    run = [*RUN, *extra]
    assert run_to_end(mpirun, ranks, *run, "--checkpoint-dir", str(tmp_path / "ref-ckpt"), "--metrics", str(ref)) == 0
    k = random.Random(ranks + len(extra)).randint(6, 28)
    kill_at(mpirun, ranks, k, *run, "--checkpoint-dir", str(ckpt))
    assert not [f for f in os.listdir(ckpt) if not f.startswith("checkpoint-")]  # nothing half-written
    assert run_to_end(mpirun, ranks, *run, "--checkpoint-dir", str(ckpt), "--resume", str(ckpt),
                      "--metrics", str(got)) == 0
    a, b = json.loads(ref.read_text()), json.loads(got.read_text())
    assert strip(b["history"]) == strip(a["history"]), k
    assert (b["objective"], b["train_accuracy"], b["val_accuracy"]) == (a["objective"], a["train_accuracy"],
                                                                          a["val_accuracy"])


@pytest.mark.parametrize("extra", [dict(method="oneshot"),
                                   dict(method="serial", optimizer="adam", lr=0.01, batch_size=64),
                                   dict(method="oneshot", optimizer="sgd", lr=0.05, batch_size=100)])
def test_resume_in_process_is_exact_for_every_optimiser(tmp_path, extra):
    common = dict(example="peaks", n_train=300, n_val=50, val_every=4, progress=False, **extra)
    full = Trainer(TrainConfig(iterations=9, **common)).run()
    part = Trainer(TrainConfig(iterations=4, checkpoint_dir=str(tmp_path), **common)).run()
    assert strip(part.history) == strip(full.history[:4])
    rest = Trainer(TrainConfig(iterations=9, resume=str(tmp_path), **common)).run()
    assert strip(rest.history) == strip(full.history)
    assert rest.objective == full.objective


def test_checkpoints_keep_the_last_two_and_never_leave_temporaries(tmp_path):
    for it in (5, 10, 15):
        checkpoint.save(str(tmp_path), it, {"x": __import__("numpy").arange(3.0)}, {"it": it})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000010.safetensors", "checkpoint-00000015.safetensors"]
    arrays, meta, _ = checkpoint.load_latest(str(tmp_path))
    assert meta["it"] == 15 and list(arrays["x"]) == [0.0, 1.0, 2.0]


def test_resume_refuses_other_settings_and_missing_checkpoints(tmp_path, capsys):
    argv = ["train", "peaks", "--iterations", "3", "--n-train", "100", "--n-val", "20", "--no-progress"]
    assert cli.main([*argv, "--checkpoint-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--layers", "8", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resume: layers is 8 here but 32" in err
    assert cli.main([*argv, "--resume", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.mpi
def test_resume_on_another_rank_count_continues_from_parameters(mpirun, tmp_path):
    ref, got = tmp_path / "ref.json", tmp_path / "got.json"
    argv = ["train", "peaks", "--iterations", "6", "--n-train", "300", "--n-val", "50", "--no-progress",
            "--method", "exact"]
    assert run_to_end(mpirun, 1, *argv, "--metrics", str(ref)) == 0
    assert run_to_end(mpirun, 2, *argv[:3], "3", *argv[4:], "--checkpoint-dir", str(tmp_path / "c")) == 0
    assert run_to_end(mpirun, 1, *argv, "--resume", str(tmp_path / "c"), "--metrics", str(got)) == 0
    a, b = json.loads(ref.read_text())["history"], json.loads(got.read_text())["history"]
    assert len(b) == 6
    for x, y in zip(a, b):  # exact MGRIT on 2 ranks vs 1: equal to the solver tolerance
        assert abs(x["objective"] - y["objective"]) <= 1e-8 * abs(x["objective"])
