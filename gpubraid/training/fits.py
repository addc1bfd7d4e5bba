"""The planner's probe's instruments (:mod:`gpubraid.training.probe`): its clock, its least-squares
fits of timings, and the footprint's factor on per-sample costs.

    Clock            CPU time of the process (CPU backends) or synchronised wall time (GPU), the
                     shortest of repeated timings
    fit_line         a + b·x, both ≥ 0 (a per-call and a per-sample cost)
    fit_calls        α + L·(a + b·m), all ≥ 0 (a batched call over L layers of m samples)
    footprint_scale  the factor on per-sample costs for the states a rank holds (beyond the caches)
"""
from __future__ import annotations

import math
import time

import numpy as np


def footprint_scale(footprint, cells: float, backward: bool) -> float:
    """Factor on per-sample costs at ``cells`` = layers × samples of states held, from ``footprint``
    points (cells, forward ratio, backward ratio), cells ascending: 1 up to the first point, the
    measured ratios at the points, log-linear in cells between them, the last one beyond."""
    d = 2 if backward else 1
    if not footprint or cells <= footprint[0][0]:
        return 1.0
    for lo, hi in zip(footprint, footprint[1:]):
        if cells < hi[0]:
            return lo[d] + (hi[d] - lo[d]) * math.log(cells / lo[0]) / math.log(hi[0] / lo[0])
    return footprint[-1][d]


class Clock:
    """Seconds of CPU time of this process (CPU backends) or synchronised wall time (GPU)."""

    def __init__(self, be):
        self.be = be
        self.name = "wall" if be.is_gpu else "cpu"

    def now(self) -> float:
        if self.be.is_gpu:
            self.be.synchronize()
            return time.perf_counter()
        return time.process_time()

    def best(self, fn, repeats: int = 3) -> float:
        """The shortest of ``repeats`` timed calls of ``fn()`` after one untimed warm-up call."""
        fn()
        out = math.inf
        for _ in range(repeats):
            t0 = self.now()
            fn()
            out = min(out, self.now() - t0)
        return out


def fit_line(xs, ts) -> tuple:
    """(a, b) of a + b·x fitted to the timings ``ts`` at ``xs`` (least squares on relative error,
    so small and large calls count alike), both ≥ 0."""
    A = np.array([[1.0 / t, x / t] for x, t in zip(xs, ts)])
    (a, b), *_ = np.linalg.lstsq(A, np.ones(len(ts)), rcond=None)
    if a < 0 or b < 0:  # one of the two terms is lost in the noise: fit the other alone
        a, b = (0.0, float(np.mean([t / x for x, t in zip(xs, ts)]))) if a < 0 else (float(np.mean(ts)), 0.0)
    return float(a), float(b)


def fit_calls(points, ts) -> tuple:
    """(α, a, b) of α + L·(a + b·m) fitted to the timings ``ts`` of calls over (L, m) = ``points``
    (least squares on relative error), all ≥ 0: of the fits with some terms left out, the closest
    whose terms are all ≥ 0 (a term lost in the noise would otherwise come out negative)."""
    X = np.array([[1.0, L, L * m] for L, m in points]) / np.array(ts)[:, None]
    best, out = math.inf, (0.0, 0.0, float(np.mean([t / (L * m) for (L, m), t in zip(points, ts)])))
    for keep in ((0, 1, 2), (0, 1), (0, 2), (1, 2), (0,), (1,), (2,)):
        coef, *_ = np.linalg.lstsq(X[:, keep], np.ones(len(ts)), rcond=None)
        err = float(np.sum((X[:, keep] @ coef - 1.0) ** 2))
        if np.all(coef >= 0) and err < best - 1e-12:
            best, full = err, [0.0, 0.0, 0.0]
            for k, c in zip(keep, coef):
                full[k] = float(c)
            out = tuple(full)
    return out
