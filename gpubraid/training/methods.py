"""The training methods (docs/algorithm.md §6) as objects.

A method owns everything that distinguishes it: the MGRIT options of its forward and adjoint
solves during training, how its one-level (layer-serial) solves are pipelined, whether those
solves start from the previous step's states and adjoints, and what happens when the L-BFGS line
search fails.  (Validation and final scoring are forward passes without MGRIT iterations, the
same for every method: see ``Trainer.score``.)  The training loop
(:mod:`gpubraid.training.trainer`) asks; it never tests the method's name.

    serial   layer-serial propagation and backprop (one level: the coarsest-grid solve is the
             whole chain, propagated layer by layer), micro-batches pipelined over the layer ranks
    pipeline the same (serial's gradient by micro-batches, :mod:`gpubraid.objective.pipeline`),
             under the name that says how it runs
    exact    forward and adjoint MGRIT to a tight tolerance every step: serial's gradient
    oneshot  a fixed small number of forward and adjoint MGRIT iterations per step, warm-started
             from the previous step (full batch); the inexact gradient is what makes it cheap
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..objective.pipeline import PipelineOptions
from ..solver.options import MGRITOptions
from .config import TrainConfig


@dataclass(frozen=True)
class Method:
    """What one training method does per optimisation step.

    Attributes:
        forward: MGRIT options of the state solve during training.
        adjoint: MGRIT options of the adjoint solve during training.
        pipeline: micro-batches and schedule of the solves that keep one level (layer-serial).
    """

    forward: MGRITOptions
    adjoint: MGRITOptions
    pipeline: PipelineOptions = PipelineOptions()

    def warm(self, full_batch: bool) -> bool:
        """Whether each solve starts from the previous step's states and adjoints."""
        return False

    def go_on_after_failed_line_search(self, failures: int) -> bool:
        """After ``failures`` consecutive failed line searches: reset the optimiser and go on
        (True) or stop (False).  A converged gradient has reached its precision: stop."""
        return False

    def tolerance(self, grad_norm: float) -> float | None:
        """The residual tolerance of the next step's solves (None: the options' own)."""
        return None


class Serial(Method):
    """Layer-serial propagation and backprop (serial's gradient)."""


class Pipelined(Method):
    """Serial's gradient by micro-batches streamed through the layer ranks."""


class Exact(Method):
    """MGRIT to a tight tolerance every step (serial's gradient to that tolerance)."""


@dataclass(frozen=True)
class OneShot(Method):
    """Fixed iteration counts (the caps, with ``adaptive`` > 0: a solve also stops once its
    residual is at most ``adaptive`` × the last gradient norm)."""

    minibatch_warm: bool = False
    adaptive: float = 0.0

    def tolerance(self, grad_norm: float) -> float | None:
        """The residual tolerance of the next step's solves (None: run the fixed counts)."""
        return self.adaptive * grad_norm if self.adaptive > 0 else None

    def warm(self, full_batch: bool) -> bool:
        # With mini-batches the previous states belong to other samples: the nested-iteration
        # guess is better (bench/oneshot_study.py), unless asked for.
        return full_batch or self.minibatch_warm

    def go_on_after_failed_line_search(self, failures: int) -> bool:
        # Inexact gradients can fail a line search on solver noise; forgetting the curvature pairs
        # and going on from steepest descent recovers, unless it keeps happening.
        return failures < 3


def levels_for_ranks(layer_ranks: int) -> int:
    """The most levels one-shot uses on P layer ranks: 2 up to 2 ranks, 1 + ⌈log₂ P⌉ beyond.

    One iteration relaxes the whole fine level (N steps over P ranks) and solves the coarsest level
    sequentially (N / 2^(L−1) steps at m = 2); each further level adds work and gradient error and
    pays only by shortening that sequential solve, which matters once the fine work is split P ways:
    the coarsest solve is then about as long as one rank's share of a sweep.  (Calibrated model,
    ``bench/README.md`` "One-shot at less work": 2 levels fastest up to 2 ranks, 5 at 16.)"""
    P = max(int(layer_ranks), 1)
    return 2 if P <= 2 else 1 + math.ceil(math.log2(P))


def level_cap_note(cfg: TrainConfig, method: Method, layer_ranks: int) -> dict | None:
    """What the metrics record (``level_cap``) when :func:`levels_for_ranks` capped one-shot's levels
    below ``cfg.max_levels``; None otherwise."""
    k = method.forward.max_levels
    if cfg.method != "oneshot" or k >= cfg.max_levels:
        return None
    return {"levels": k, "layer_ranks": int(layer_ranks),
            "why": f"at most {k} levels on {layer_ranks} layer rank(s): more pay only by shortening the "
                   "sequential coarsest solve (--no-levels-for-ranks: the solver's choice alone)"}


def make_method(cfg: TrainConfig, layer_ranks: int | None = None) -> Method:
    """The method of a resolved configuration, with its solver options; ``layer_ranks``: the run's
    layer ranks, whose :func:`levels_for_ranks` caps one-shot's levels when ``cfg.levels_for_ranks``
    (None: no cap)."""
    assert cfg.method != "auto", "method auto is resolved by gpubraid.training.plan.resolve_auto first"
    nrelax = cfg.nrelax if cfg.nrelax is not None else (0 if cfg.method == "oneshot" else [0, 1])
    max_levels = cfg.max_levels
    if cfg.method == "oneshot" and cfg.levels_for_ranks and layer_ranks is not None:
        max_levels = min(max_levels, levels_for_ranks(layer_ranks))
    common = dict(cfactor=cfg.cfactor, max_levels=max_levels, nrelax=nrelax,
                  min_coarse=cfg.min_coarse, stability=cfg.stability, nested=cfg.nested,
                  coarse_params=cfg.coarse_params, spatial_levels=cfg.spatial_levels)
    pipe = PipelineOptions(cfg.micro_batches, cfg.schedule)
    if cfg.method in ("serial", "pipeline"):
        return (Serial if cfg.method == "serial" else Pipelined)(SERIAL, SERIAL, pipe)
    if cfg.method == "exact":
        # converged solves: every stable level helps (conv_bound is about one-shot's few iterations)
        converged = MGRITOptions(tol=cfg.tol, max_iter=cfg.max_iter, **common).validate()
        # the adjoint step is linear in λ: correction scheme, no coarse steps in the restriction
        return Exact(converged, dataclasses.replace(converged, linear=True), pipe)
    # one-shot: a fixed-count solve ends by moving the F-points with their C-point's correction
    # instead of a last F-relaxation (the next warm solve F-relaxes from the C-points anyway)
    fwd = MGRITOptions(tol=0.0, max_iter=cfg.fwd_iters, conv_bound=cfg.conv_bound, final_residual=False,
                       final_relax=False, **common).validate()
    return OneShot(fwd, dataclasses.replace(fwd, max_iter=cfg.bwd_iters, linear=True), pipe,
                   cfg.minibatch_warm, cfg.adaptive)


#: One level: the chain propagated layer by layer (serial and pipeline training).
SERIAL = MGRITOptions(max_levels=1)
