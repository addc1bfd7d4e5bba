"""NVTX ranges and per-phase wall time.

Every solver phase runs inside ``timer("relax")`` etc.: an NVTX range in the ``gpubraid`` domain
(so Nsight Systems shows the algorithm on its timeline) plus accumulated wall time.  On a GPU the
timer synchronises the device at the end of a phase only when ``sync`` is set, because a
synchronisation costs a little; without it the times are host-side launch times.
"""
from __future__ import annotations

import time

import nvtx

DOMAIN = "gpubraid"


class PhaseTimer:
    """Accumulates seconds per phase name; phases may nest (a parent includes its children).

    ``timer(name)`` is a context manager made once per name and reused: a solve enters a few hundred
    phases, and a fresh range and generator each time cost microseconds a small batch notices."""

    def __init__(self, sync=None):
        self.sync = sync
        self._phases: dict[str, _Phase] = {}

    def __call__(self, name: str) -> "_Phase":
        phase = self._phases.get(name)
        if phase is None:
            phase = self._phases[name] = _Phase(self, name)
        return phase

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per phase entered so far."""
        return {name: phase.seconds for name, phase in self._phases.items()}

    def as_dict(self) -> dict:
        return {k: round(v, 6) for k, v in sorted(self.seconds.items())}


class _Phase:
    """One phase's context manager: its NVTX range around the phase, then the seconds added."""

    __slots__ = ("sync", "range", "starts", "seconds")

    def __init__(self, timer: PhaseTimer, name: str):
        self.sync = timer.sync
        self.range = nvtx.annotate(name, domain=DOMAIN)
        self.starts: list[float] = []   # a stack: the same phase may nest
        self.seconds = 0.0

    def __enter__(self):
        self.starts.append(time.perf_counter())
        self.range.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            if self.sync is not None:
                self.sync()
        finally:
            self.range.__exit__(*exc)
            self.seconds += time.perf_counter() - self.starts.pop()
        return False
