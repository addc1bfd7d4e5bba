"""Ctrl-C and SIGTERM: every rank stops within seconds, with exactly one line and status 130 / 143.

The command line owns SIGINT/SIGTERM from its first line to its last (:class:`Interrupts` around
the whole command, before the heavy imports), so a signal during start-up, MPI set-up, data
loading, training or the final report is handled the same way: never a ``KeyboardInterrupt``
traceback, never silence.  A rank may be blocked inside MPI (waiting for a neighbour) when the
signal arrives, where Python never runs its handlers.  So the signal is watched by a thread: every
thread that receives it writes its number to a wake-up pipe (``signal.set_wakeup_fd``), and the
watcher thread, blocked on that pipe, acts whatever the main thread is doing.

* Inside the training loop (:attr:`Interrupts.polling`) the first signal sets a flag.  The loop
  polls it at every iteration boundary through :meth:`Interrupts.poll`, which agrees across the
  ranks (an allreduce), so every rank raises :class:`Interrupted` at the same iteration and the
  run can end cleanly (and write a checkpoint).  If the main thread has not stopped within
  ``grace_s`` (blocked in MPI, or a long iteration), the watcher ends the process itself.
* Outside the loop nothing would see the flag: the watcher ends the process at once.
* A second signal ends the process at once.

The line is printed by the process of launcher rank 0 (:func:`launcher_rank`) only; the other
ranks, when they end the process themselves after MPI is initialised, first wait :data:`DEFER_S`
so that rank 0 (which a signal to the job's process group reaches too) prints it before the
launcher tears the job down.  Before MPI is initialised every rank ends at once: a rank still
alive that enters MPI initialisation after another has ended makes MPICH's Hydra launcher hang
(11 of 16 trials of a minimal mpi4py program that waited as the other ranks do, 0 of 16 when every
rank ended at once).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


#: Seconds a rank other than 0 waits before ending itself on a signal (rank 0 prints first).
DEFER_S = 1.0


# Launcher variables that carry the MPI rank before MPI is initialised.
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "PALS_RANKID",
              "SLURM_PROCID")


def launcher_rank() -> int:
    """This process's MPI rank as the launcher advertises it (0 when not launched by one)."""
    for var in _RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def mpi_initialized() -> bool:
    """Whether this process has finished initialising MPI (mpi4py imported and MPI_Init done)."""
    is_initialized = getattr(sys.modules.get("mpi4py.MPI"), "Is_initialized", None)
    try:
        return bool(is_initialized and is_initialized())
    except Exception:  # a half-imported module
        return False


def _say_stopped(line: str) -> None:
    if launcher_rank() == 0:
        print(f"gpubraid: stopped: {line}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    """Raised on every rank at an iteration boundary after a SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {NAMES.get(signum, signum)}")
        self.signum = signum
        self.status = EXIT_STATUS.get(signum, 128 + signum)


class Interrupts:
    """Context manager that owns SIGINT/SIGTERM for the duration of a command.

    Args:
        say: ``say(line)`` prints the one-line report (default: ``gpubraid: stopped: <line>`` on
            stderr, launcher rank 0 only).
        grace_s: how long the main thread has to stop by itself after the first signal while
            :attr:`polling`.

    Attributes:
        polling: True while a loop polls :meth:`poll` (set by the training loop); otherwise a
            signal ends the process at once.
        signum: the first signal received, or None.
    """

    def __init__(self, say=None, grace_s: float = 4.0):
        self.say = say or _say_stopped
        self.grace_s = grace_s
        self.signum: int | None = None
        self.polling = False
        self._reported = threading.Lock()
        self._done = threading.Event()

    def __enter__(self) -> "Interrupts":
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old = {s: signal.signal(s, lambda *_: None) for s in EXIT_STATUS}
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="gpubraid-interrupts", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        signal.set_wakeup_fd(self._old_fd)
        for s, handler in self._old.items():
            signal.signal(s, handler)
        os.close(self._w)

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._r, 1)
            except OSError:
                return
            if not data or self._done.is_set():
                return
            signum = data[0]
            if signum not in EXIT_STATUS:
                continue
            if self.signum is not None or not self.polling:
                self.signum = signum
                self.exit_now(signum)
                continue
            self.signum = signum
            timer = threading.Timer(self.grace_s, self.exit_now, args=(signum,))
            timer.daemon = True
            timer.start()

    def report(self, signum: int) -> bool:
        """Print the interrupt line once per process; True for the caller that printed it."""
        if not self._reported.acquire(blocking=False):
            return False
        self.say(f"interrupted by {NAMES[signum]}")
        sys.stdout.flush()
        sys.stderr.flush()
        return True

    def exit_now(self, signum: int) -> None:
        """End this process with the signal's status (from the watcher thread)."""
        if self._done.is_set():
            return
        if launcher_rank() != 0 and mpi_initialized():
            time.sleep(DEFER_S)
        self.report(signum)
        os._exit(EXIT_STATUS[signum])

    def poll(self, comm) -> None:
        """Raise :class:`Interrupted` on every rank when any rank has received a signal."""
        local = float(self.signum or 0)
        signum = int(comm.allreduce_max(local))
        if signum:
            raise Interrupted(signum)
