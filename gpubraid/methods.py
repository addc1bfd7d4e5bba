"""The three training methods (docs/algorithm.md §6) as objects.

A method owns everything that distinguishes it: the MGRIT options of its forward and adjoint
solves during training, whether those solves start from the previous step's states and adjoints,
and what happens when the L-BFGS line search fails.  (Validation and final scoring are forward
passes without MGRIT iterations, the same for every method: see ``Trainer.score``.)  The training loop (:mod:`gpubraid.train`) asks; it never tests the method's name.

    serial   layer-serial propagation and backprop (one level: the coarsest-grid solve is the
             whole chain, propagated layer by layer)
    exact    forward and adjoint MGRIT to a tight tolerance every step: serial's gradient
    oneshot  a fixed small number of forward and adjoint MGRIT iterations per step, warm-started
             from the previous step (full batch); the inexact gradient is what makes it cheap
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .config import TrainConfig
from .mgrit import MGRITOptions


@dataclass(frozen=True)
class Method:
    """What one training method does per optimisation step.

    Attributes:
        forward: MGRIT options of the state solve during training.
        adjoint: MGRIT options of the adjoint solve during training.
    """

    name: ClassVar[str]
    forward: MGRITOptions
    adjoint: MGRITOptions

    def warm(self, full_batch: bool) -> bool:
        """Whether each solve starts from the previous step's states and adjoints."""
        return False

    def go_on_after_failed_line_search(self, failures: int) -> bool:
        """After ``failures`` consecutive failed line searches: reset the optimiser and go on
        (True) or stop (False).  A converged gradient has reached its precision: stop."""
        return False


class Serial(Method):
    name = "serial"


class Exact(Method):
    name = "exact"


class OneShot(Method):
    name = "oneshot"

    def warm(self, full_batch: bool) -> bool:
        # With mini-batches the previous states belong to other samples.
        return full_batch

    def go_on_after_failed_line_search(self, failures: int) -> bool:
        # Inexact gradients can fail a line search on solver noise; forgetting the curvature pairs
        # and going on from steepest descent recovers, unless it keeps happening.
        return failures < 3


def make_method(cfg: TrainConfig) -> Method:
    """The method of a resolved configuration, with its solver options."""
    common = dict(cfactor=cfg.cfactor, max_levels=cfg.max_levels, nrelax=cfg.nrelax,
                  min_coarse=cfg.min_coarse)
    converged = MGRITOptions(tol=cfg.tol, max_iter=cfg.max_iter, **common).validate()
    if cfg.method == "serial":
        return Serial(SERIAL, SERIAL)
    if cfg.method == "exact":
        return Exact(converged, converged)
    fwd = MGRITOptions(tol=0.0, max_iter=cfg.fwd_iters, **common).validate()
    return OneShot(fwd, dataclasses.replace(fwd, max_iter=cfg.bwd_iters))


#: One level: the chain propagated layer by layer (serial training, and every scoring pass).
SERIAL = MGRITOptions(max_levels=1)
