"""The network's step on every MGRIT level's feature maps (spatial coarsening, :mod:`gpubraid.solver.space`).

Levels that halve the maps run the step :meth:`resized` to their shape (the same parameters);
:class:`LevelSteps` picks it from the shape of the states it is handed.
"""
from __future__ import annotations

from ..errors import UserError
from ..solver.space import level_shapes


class LevelSteps:
    """``forward`` / ``adjoint`` of ``step`` on states of the fine shape or of any of the first
    ``spatial_levels`` halvings of its feature maps (UserError if ``step`` cannot be resized or
    its maps do not halve that often)."""

    def __init__(self, step, spatial_levels: int):
        if not hasattr(step, "resized"):
            raise UserError(f"spatial_levels needs a step on feature maps that can be resized (the conv "
                            f"step); {type(step).__name__} has no resized(state_shape)")
        shapes = level_shapes((1, *step.state_shape), spatial_levels, spatial_levels + 1)
        fine = tuple(step.state_shape)
        self.steps = {tuple(s[1:]): step if tuple(s[1:]) == fine else step.resized(s[1:]) for s in shapes}

    def _at(self, u):
        return self.steps[tuple(u.shape[2:])]

    def forward(self, u, params, h):
        """Φ(u): u (k, B, *S_l) on any level's maps."""
        return self._at(u).forward(u, params, h)

    def adjoint(self, u, lam, params, h):
        """(∂Φ/∂u)ᵀ λ linearised at u: u, λ (k, B, *S_l) on any level's maps."""
        return self._at(lam).adjoint(u, lam, params, h)
