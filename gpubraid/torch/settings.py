"""The method and solver settings of :class:`gpubraid.torch.LayerParallel`, from gpubraid's schema.

The settings are those of ``gpubraid train`` (:class:`gpubraid.training.config.TrainConfig`):
``method`` and every field of its MGRIT group (cfactor, nrelax, max_levels, min_coarse, stability,
conv_bound, nested, minibatch_warm, adaptive, fwd_iters, bwd_iters, levels_for_ranks, tol,
max_iter, and whatever that group gains) but the training loop's convergence monitor, the ρ
estimate's interval and
``spatial_levels`` (the conv step's coarse feature maps: :data:`REFUSED`), validated by
the same schema with the same one-line messages, and turned into solver options by the same
:func:`gpubraid.training.methods.make_method`, with the same level cap for the layer ranks.  A method added there is
reachable here without a change.  Two more settings belong to the initialisation: ``seed`` and
``init_scale`` (as in ``gpubraid train``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..training.config import FIELDS, TrainConfig
from ..training.methods import SERIAL, Method, make_method

#: Settings of the MGRIT group that belong to ``gpubraid train``'s training loop, not to the solves:
#: the convergence monitor compares gradients between optimiser steps, and a ρ estimate is held from
#: one step to the next, steps which your loop makes.
LOOP_FIELDS = ("monitor_every", "monitor_tol", "estimate_every")
#: Settings of the MGRIT group a torch module cannot take, and why.
REFUSED = {"spatial_levels": "coarse levels on halved feature maps need gpubraid's conv step; a torch "
                             "module's layers keep the shape they were built for"}
#: The ``gpubraid train`` settings a LayerParallel takes as keywords (besides ``method``).
SOLVER_FIELDS = tuple(n for n, f in FIELDS.items()
                      if (f.json_schema_extra or {}).get("group") == "MGRIT" and n not in LOOP_FIELDS + tuple(REFUSED))
INIT_FIELDS = ("seed", "init_scale")
#: Micro-batches streamed through the ranks by one-level (layer-serial) solves: serial, pipeline,
#: and exact/oneshot with ``max_levels=1`` (GPipe in each direction: the loss is the caller's).
PIPELINE_FIELDS = ("micro_batches",)
EVALUATIONS = ("pipeline", "converged")


@dataclass(frozen=True)
class Settings:
    """A validated method with its solver options.

    Attributes:
        cfg: the settings as a :class:`TrainConfig` (only ``method`` and the MGRIT/initialisation
            fields are set; the rest keep their defaults and are not used).
        method: the :class:`~gpubraid.training.methods.Method` (forward/adjoint MGRITOptions,
            warm-start policy, adaptive tolerance).
        full_batch: every forward sees the same samples (the method's warm-start policy uses it).
        evaluation: forward passes in ``eval()`` mode: ``pipeline`` (layer-serial propagation of
            sample chunks, pipelined across the ranks) or ``converged`` (MGRIT to ``tol``).
    """

    cfg: TrainConfig
    method: Method
    full_batch: bool
    evaluation: str

    @property
    def evaluation_options(self):
        """MGRIT options of the ``eval()`` solves (serial propagation, or exact's converged solves)."""
        if self.evaluation == "pipeline":
            return SERIAL
        return make_method(self.cfg.model_copy(update={"method": "exact"})).forward


def make_settings(method: str, options: dict, full_batch: bool = False, evaluation: str = "pipeline",
                  layer_ranks: int | None = None) -> Settings:
    """Settings from keyword arguments; UserError (one line naming the setting) otherwise.
    ``layer_ranks``: the ranks the layers are split over, whose level cap one-shot keeps when
    ``levels_for_ranks`` is on (as ``gpubraid train`` does)."""
    allowed = SOLVER_FIELDS + PIPELINE_FIELDS + INIT_FIELDS
    for name in options:
        if name in REFUSED:
            raise UserError(f"{name} is not a LayerParallel setting: {REFUSED[name]}")
        if name not in allowed:
            raise UserError(f"unknown LayerParallel setting {name!r}; allowed: method, full_batch, evaluation, "
                            + ", ".join(allowed))
    if evaluation not in EVALUATIONS:
        raise UserError(f"evaluation must be one of {', '.join(EVALUATIONS)}; got {evaluation!r}")
    if not isinstance(full_batch, bool):
        raise UserError(f"full_batch must be true or false; got {full_batch!r}")
    cfg = TrainConfig(method=method, **options)
    return Settings(cfg, make_method(cfg, layer_ranks), full_batch, evaluation)
