"""MGRIT settings (:class:`MGRITOptions`) and the statistics of one solve (:class:`SolveStats`)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from ..errors import UserError, check_positive_int


def per_level(name: str, value, minimum: int) -> list[int]:
    """``value`` (an integer ≥ ``minimum``, or a non-empty list of them, one per level, the last
    repeating) as a list of ints, or a UserError naming ``name``."""
    vals = list(value) if isinstance(value, (list, tuple)) else [value]

    def ok(x):
        return (isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
                and int(x) == x and x >= minimum)

    if not vals or not all(ok(x) for x in vals):
        raise UserError(f"{name} must be an integer >= {minimum} or a list of them; got {value!r}")
    return [int(x) for x in vals]


def check_hierarchy(cfactor, max_levels, min_coarse) -> list[int]:
    """The one check of the hierarchy's settings (MGRITOptions.validate, build_hierarchy):
    returns the coarsening factors, one per level (the last repeats)."""
    check_positive_int("max_levels", max_levels)
    check_positive_int("min_coarse", min_coarse)
    return per_level("cfactor", cfactor, 2)


#: How a coarse step's data are made from the level-0 rows it spans (MGRITOptions.coarse_params).
COARSE_PARAMS = ("inject", "average")


@dataclass
class MGRITOptions:
    """Solver options, named as in XBraid.

    Attributes:
        max_levels: at most this many levels (1 = sequential solve on rank 0).
        min_coarse: do not create a level with fewer steps than this.
        cfactor: coarsening factor m ≥ 2, or one per level (the last repeats).
        nrelax: CF sweeps after the first F-relaxation (0: F, 1: FCF), or one per level.
        max_iter: at most this many iterations (coarse corrections).
        tol: absolute tolerance on the level-0 C-point residual 2-norm (0: none).
        rtol: relative tolerance, residual / first residual (0: none).
        skip: skip the level-0 relaxation of the first iteration (not for warm starts).
        fmg: F-cycles instead of V-cycles.
        sync_timing: synchronise the device at phase ends so phase times are device times.
        stability: automatic level choice (0: off).  Before each solve the spectral scale ρ of the
            step Jacobian ∂f/∂u is estimated from the current step data (power iteration on finite
            differences of ``phi``, a few samples); level l ≥ 1 is used only while
            max(H_l)·ρ ≤ ``stability``, so coarse forward-Euler steps stay in their stability region
            and the coarsest grid has about T·ρ/stability steps, independent of N.
        conv_bound: a level l ≥ 1 is used only while also ½·T·ρ²·max(H_l) ≤ ``conv_bound`` (0: no
            such limit), T the chain's length: the estimated two-grid error reduction of one
            F-relaxation iteration, Σ_k ‖Φ^m − Φ_H‖ ≈ (T/H)·(Hρ)²/2, for a chain whose Jacobians are
            not dissipative (|1 + hλ| ≈ 1), as a trained ResNet's are.  Without it coarse grids that
            are stable but too coarse make one-shot's few iterations useless.
        stability_samples, stability_iters: samples and power iterations of that estimate.
        nested: without a warm start, start from nested iteration (solve the coarsest level from
            u_0, interpolate down with F-relaxation) instead of u_0 at every point.
        final_residual: compute the level-0 residual of the returned iterate when the solve stops at
            ``max_iter`` (costs N/m steps that change nothing; off for fixed-iteration one-shot).
        final_relax: after the last coarse correction of a solve that stops at ``max_iter`` without
            a final residual, F-relax level 0 (True), or move every level-0 F-point by the
            correction of the C-point that starts its interval (False: no steps, N(1 − 1/m) fewer;
            the returned F-points are then off by (∂Φ^j/∂u − I)·e, O(j·h·ρ) times the correction e.
            For one-shot: its next warm solve F-relaxes from the C-points anyway).
        linear: the step is linear in u (phi(u + v) = phi(u) + phi(v), e.g. an adjoint): coarse
            levels solve for the correction (correction scheme) instead of FAS, so the restriction
            applies no coarse steps (N_l fewer per level); identical iterates in exact arithmetic.
        coarse_params: step data of a coarse step: ``"inject"`` the level-0 rows at the step's start,
            or ``"average"`` the level-0 rows over the coarse step weighted by their step sizes
            (Σ h_s d_s / H), for every data array except per-sample ones (``sample_data`` of
            :meth:`~gpubraid.solver.mgrit.MGRIT.solve`, e.g. an adjoint's states, still injected).
        spatial_levels: levels 1..k also halve the feature maps (the last two axes of the sample
            shape; 2×2 mean down, copy up: :mod:`~gpubraid.solver.space`), so their steps cost a
            quarter per halving; per-sample step data are halved with them.  ``phi`` must take
            states of every level's shape.  0: every level keeps the fine maps.
    """

    max_levels: int = 10
    min_coarse: int = 2
    cfactor: int | list = 4
    nrelax: int | list = 1
    max_iter: int = 50
    tol: float = 1e-9
    rtol: float = 0.0
    skip: bool = True
    fmg: bool = False
    sync_timing: bool = False
    stability: float = 0.0
    conv_bound: float = 0.0
    stability_samples: int = 2
    stability_iters: int = 4
    nested: bool = False
    final_residual: bool = True
    final_relax: bool = True
    linear: bool = False
    coarse_params: str = "inject"
    spatial_levels: int = 0

    def validate(self) -> "MGRITOptions":
        check_hierarchy(self.cfactor, self.max_levels, self.min_coarse)
        per_level("nrelax", self.nrelax, 0)
        check_positive_int("max_iter", self.max_iter, 0)
        check_positive_int("stability_samples", self.stability_samples)
        check_positive_int("stability_iters", self.stability_iters)
        check_positive_int("spatial_levels", self.spatial_levels, 0)
        if self.coarse_params not in COARSE_PARAMS:
            raise UserError(f"coarse_params must be one of {', '.join(COARSE_PARAMS)}; got {self.coarse_params!r}")
        for name in ("tol", "rtol", "stability", "conv_bound"):
            if not float(getattr(self, name)) >= 0:
                raise UserError(f"{name} must be >= 0; got {getattr(self, name)!r}")
        return self

    def estimate_samples(self, batch: int) -> int:
        """Samples of a batch of ``batch`` that the spectral estimate reads (the first ones)."""
        return min(self.stability_samples, int(batch))

    def nrelax_at(self, level: int) -> int:
        v = self.nrelax
        return int(v[min(level, len(v) - 1)] if isinstance(v, (list, tuple)) else v)


@dataclass
class SolveStats:
    """What one solve did on this rank (``residuals`` are global)."""

    iterations: int = 0
    residuals: list = field(default_factory=list)
    converged: bool = False
    steps_per_level: list = field(default_factory=list)   # step applications (intervals), this rank
    coarse_steps: int = 0                                  # sequential steps of the coarsest solve
    estimate_steps: float = 0.0      # stability estimate: step calls × (samples used / batch)
    levels: int = 0                  # levels used by this solve
    rho: float | None = None         # estimated spectral scale of ∂f/∂u (None: not estimated)
    h_rho: list = field(default_factory=list)   # max(H_l)·ρ of each level used (l ≥ 1)
    phase_seconds: dict = field(default_factory=dict)
    messages: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    micro_batches: int = 0           # the batch's micro-batches when the solve was the pipeline's
    allowed: int = 0                 # levels the estimate allowed when the caller took fewer (0: it did not)

    def adopt(self, choice: SolveStats) -> None:
        """Take a level choice made before the solve (:meth:`gpubraid.solver.mgrit.MGRIT.choose`): its
        estimate (ρ, max(H_l)·ρ, the estimate's steps) and the levels it allowed."""
        self.rho, self.h_rho, self.estimate_steps = choice.rho, list(choice.h_rho), choice.estimate_steps
        self.allowed = choice.allowed

    @property
    def convergence_factors(self) -> list:
        r = self.residuals
        return [r[k + 1] / r[k] if r[k] > 0 else 0.0 for k in range(len(r) - 1)]

    @property
    def total_steps(self) -> float:
        """Every step application of this solve on this rank: all levels, the coarsest solve and
        the stability estimate (serial propagation of N steps counts N)."""
        return float(sum(self.steps_per_level) + self.coarse_steps + self.estimate_steps)

    def as_dict(self) -> dict:
        return {"iterations": self.iterations, "levels": self.levels, "rho": self.rho,
                "h_rho": list(self.h_rho), "total_steps": self.total_steps,
                "estimate_steps": self.estimate_steps, "residuals": [float(x) for x in self.residuals],
                "converged": self.converged, "convergence_factors": self.convergence_factors,
                "steps_per_level": list(self.steps_per_level), "coarse_steps": self.coarse_steps,
                "phase_seconds": self.phase_seconds, "messages": self.messages, "bytes": self.bytes,
                "wall_s": self.wall_s}
