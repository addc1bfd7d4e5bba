"""Ctrl-C trials: ``mpiexec -n P gpubraid train`` in its own session, SIGINT to its process group
(what a terminal's Ctrl-C does) or to the launcher alone; counts the trials that ended with
status 130 and exactly one ``gpubraid: stopped`` line and nothing else on stderr.

The signal lands at a seeded random time after the launch (``--from-launch``: anywhere in
start-up, MPI set-up, data loading or training) or after the first iteration line (default).

    python -m bench.interrupts [--trials 20] [--ranks 2] [--launcher] [--from-launch] [--minimal]
                               [--out FILE.json]

``--minimal`` runs the same trials on a five-line mpi4py program that ignores SIGINT instead of
gpubraid (implies ``--from-launch``, delays 0.1-0.6 s): every trial should end with status 0 after
the program's 3 s; one that does not end is the launcher's own hang, with no gpubraid code involved.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

LINE = "gpubraid: stopped: interrupted by SIGINT"


MINIMAL = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nfrom mpi4py import MPI\n"
           "MPI.COMM_WORLD.Barrier()\ntime.sleep(3)\n")


def trial(ranks: int, delay: float, group: bool, from_launch: bool, minimal: bool = False) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "gpubraid", "train", "peaks", "--iterations",
           "100000", "--no-progress", "--n-train", "500", "--n-val", "50"]
    if minimal:
        cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-c", MINIMAL]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    first = "it " if from_launch else proc.stdout.readline()
    if not first.startswith("it "):
        proc.kill()
        return {"status": proc.wait(), "lines": -1, "seconds": 0.0, "stderr": proc.stderr.read()[-500:]}
    time.sleep(delay)
    t0 = time.monotonic()
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return {"delay": delay, "status": None, "lines": err.count(LINE), "seconds": 30.0, "stderr": err[-500:]}
    return {"delay": delay, "status": proc.returncode, "lines": err.count(LINE), "seconds": time.monotonic() - t0,
            "other_stderr_lines": [ln for ln in err.splitlines() if ln.strip() and LINE not in ln]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--launcher", action="store_true", help="signal the launcher alone, not the group")
    ap.add_argument("--from-launch", action="store_true", help="signal at a random time after the launch")
    ap.add_argument("--minimal", action="store_true", help="a five-line mpi4py program instead of gpubraid")
    ap.add_argument("--out", help="write the trials as JSON")
    args = ap.parse_args()
    rng = random.Random(1)
    if args.minimal:
        delays = [rng.uniform(0.1, 0.6) for _ in range(args.trials)]
        runs = [trial(args.ranks, d, not args.launcher, True, minimal=True) for d in delays]
        hangs = sum(r["status"] is None for r in runs)
        print(f"{args.trials} trials of a minimal mpi4py program under mpiexec -n {args.ranks}, SIGINT 0.1-0.6 s "
              f"after the launch: {hangs} launcher hangs; statuses {[r['status'] for r in runs]}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"ranks": args.ranks, "minimal": True, "hangs": hangs, "trials": runs}, f, indent=1)
        return
    delays = [rng.uniform(0.2, 6.0) if args.from_launch else 0.05 * (k % 7) for k in range(args.trials)]
    runs = [trial(args.ranks, d, not args.launcher, args.from_launch) for d in delays]
    good = sum(r["status"] == 130 and r["lines"] == 1 and not r.get("other_stderr_lines") for r in runs)
    when = "at random times after the launch" if args.from_launch else "after the first iteration"
    print(f"{args.trials} trials, SIGINT {when} to the {'launcher' if args.launcher else 'process group'} of "
          f"mpiexec -n {args.ranks}: {good} ended with status 130 and exactly one line; "
          f"statuses {sorted(set(str(r['status']) for r in runs))}, lines {[r['lines'] for r in runs]}, "
          f"max {max(r['seconds'] for r in runs):.2f} s")
    for r in runs:
        if r.get("other_stderr_lines") or r.get("stderr"):
            print(r)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"ranks": args.ranks, "group": not args.launcher, "from_launch": args.from_launch,
                       "trials": runs}, f, indent=1)


if __name__ == "__main__":
    main()
