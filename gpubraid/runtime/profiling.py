"""NVTX ranges and per-phase wall time.

Every solver phase runs inside ``timer("relax")`` etc.: an NVTX range in the ``gpubraid`` domain
(so Nsight Systems shows the algorithm on its timeline) plus accumulated wall time.  On a GPU the
timer synchronises the device at the end of a phase only when ``sync`` is set, because a
synchronisation costs a little; without it the times are host-side launch times.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import nvtx

DOMAIN = "gpubraid"


class PhaseTimer:
    """Accumulates seconds per phase name; phases may nest (a parent includes its children)."""

    def __init__(self, sync=None):
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        with nvtx.annotate(name, domain=DOMAIN):
            try:
                yield
            finally:
                if self.sync is not None:
                    self.sync()
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

    def as_dict(self) -> dict:
        return {k: round(v, 6) for k, v in sorted(self.seconds.items())}
