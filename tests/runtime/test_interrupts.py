"""Ctrl-C and SIGTERM under mpiexec: every rank ends within seconds, status 130 / 143, one line."""
import os
import random
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.mpi

LONG_RUN = ["train", "peaks", "--iterations", "100000", "--no-progress", "--n-train", "500", "--n-val", "50"]


def start(mpirun, n: int, *extra: str) -> subprocess.Popen:
    """``mpiexec -n n gpubraid train ...`` in its own process group, once it has logged an iteration."""
    proc = subprocess.Popen(mpirun.gpubraid(n, *LONG_RUN, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=mpirun.env, start_new_session=True)
    line = proc.stdout.readline()  # the first iteration line: every rank is inside the training loop
    assert line.startswith("it "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def stop(proc: subprocess.Popen, sig: int, group: bool) -> tuple[int, float, str]:
    t0 = time.monotonic()
    if group:
        os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does: every process of the job
    else:
        proc.send_signal(sig)     # the launcher alone
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the job hung after {signal.Signals(sig).name}")
    return proc.returncode, time.monotonic() - t0, err


@pytest.mark.parametrize("n,trial", [(2, k) for k in range(5)] + [(3, k) for k in range(2)])
def test_ctrl_c_ends_every_rank(mpirun, n, trial):
    time.sleep(0.1 * trial)  # vary where in the iteration the signal lands
    rc, seconds, err = stop(start(mpirun, n), signal.SIGINT, group=True)
    assert rc == 130, err
    assert seconds <= 5, seconds
    assert "Traceback" not in err, err
    assert err.count("gpubraid: stopped: interrupted by SIGINT") == 1, err


def test_sigint_to_the_launcher_alone(mpirun):
    rc, seconds, err = stop(start(mpirun, 2), signal.SIGINT, group=False)
    assert rc == 130 and seconds <= 5, (rc, seconds, err)
    assert "Traceback" not in err, err


def test_sigterm_ends_every_rank(mpirun):
    proc = start(mpirun, 2)
    rc, seconds, err = stop(proc, signal.SIGTERM, group=True)
    assert rc == 143 and seconds <= 5, (rc, seconds, err)
    assert "Traceback" not in err, err


@pytest.mark.parametrize("method", [[], ["--method", "pipeline", "--micro-batches", "4"]], ids=["oneshot", "pipeline"])
def test_ctrl_c_writes_a_checkpoint_first(mpirun, tmp_path, method):
    rc, seconds, err = stop(start(mpirun, 2, "--checkpoint-dir", str(tmp_path), *method), signal.SIGINT, group=True)
    assert rc == 130 and seconds <= 5, (rc, seconds, err)
    assert err.strip() == "gpubraid: stopped: interrupted by SIGINT", err
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("checkpoint-"), files


def test_ten_ctrl_c_trials_to_the_process_group_give_one_line_each(mpirun):
    """A terminal's Ctrl-C (SIGINT to the job's process group) 0-0.5 s into training, 10 times:
    status 130 and exactly the one line every time (bench/interrupts.py runs 20 and more)."""
    line = "gpubraid: stopped: interrupted by SIGINT"
    rng, results = random.Random(0), []
    for delay in [rng.uniform(0.0, 0.5) for _ in range(10)]:
        proc = start(mpirun, 2)
        time.sleep(delay)
        rc, _, err = stop(proc, signal.SIGINT, group=True)
        results.append((delay, rc, err))
    bad = [(d, rc, err) for d, rc, err in results if rc != 130 or err.strip() != line]
    assert not bad, bad


@pytest.mark.parametrize("initialized", [False, True])
def test_ranks_other_than_0_wait_for_rank_0_only_once_mpi_is_initialised(monkeypatch, initialized):
    """Before MPI_Init every rank ends at once (a waiting rank entering MPI initialisation after
    rank 0 ended blocks Hydra); afterwards the others wait DEFER_S so that rank 0 prints first."""
    import sys
    import types

    from gpubraid.runtime import interrupts

    fake = types.SimpleNamespace(Is_initialized=lambda: initialized)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", fake)
    monkeypatch.setenv("PMI_RANK", "1")
    slept, ended = [], []
    monkeypatch.setattr(interrupts.time, "sleep", slept.append)
    monkeypatch.setattr(interrupts.os, "_exit", ended.append)
    assert interrupts.mpi_initialized() is initialized
    interrupts.Interrupts().exit_now(signal.SIGINT)
    assert ended == [130] and slept == ([interrupts.DEFER_S] if initialized else [])
