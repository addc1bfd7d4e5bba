"""Ctrl-C and SIGTERM: every rank stops within seconds, with one line and status 130 / 143.

A rank may be blocked inside MPI (waiting for a neighbour) when the signal arrives, where Python
never runs its handlers.  So the signal is watched by a thread: every thread that receives it
writes its number to a wake-up pipe (``signal.set_wakeup_fd``), and the watcher thread, blocked on
that pipe, wakes up whatever the main thread is doing.

* The first signal sets a flag.  The training loop polls it at every iteration boundary through
  :meth:`Interrupts.poll`, which agrees across the ranks (an allreduce), so every rank raises
  :class:`Interrupted` at the same iteration and the run can end cleanly (and write a checkpoint).
* If the main thread has not finished within ``grace_s`` (blocked in MPI, or a long iteration),
  the watcher ends the process itself: the status is the same, rank 0 prints the line.
* A second signal ends the process at once.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interrupted(Exception):
    """Raised on every rank at an iteration boundary after a SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {NAMES.get(signum, signum)}")
        self.signum = signum
        self.status = EXIT_STATUS.get(signum, 128 + signum)


class Interrupts:
    """Context manager that owns SIGINT/SIGTERM for the duration of a command.

    Args:
        say: ``say(line)`` prints the one-line report (the CLI passes a rank-0-only printer).
        grace_s: how long the main thread has to stop by itself after the first signal.
    """

    def __init__(self, say, grace_s: float = 4.0):
        self.say = say
        self.grace_s = grace_s
        self.signum: int | None = None
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
            if self.signum is not None:
                self.exit_now(signum)
            self.signum = signum
            threading.Timer(self.grace_s, self.exit_now, args=(signum,)).start()

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
        self.report(signum)
        os._exit(EXIT_STATUS[signum])

    def poll(self, comm) -> None:
        """Raise :class:`Interrupted` on every rank when any rank has received a signal."""
        local = float(self.signum or 0)
        signum = int(comm.allreduce_max(local))
        if signum:
            raise Interrupted(signum)
