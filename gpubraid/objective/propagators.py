"""The solver's step callbacks for a network's step: what :class:`~gpubraid.solver.mgrit.MGRIT` calls
``phi`` (forward) and, for the adjoint solve, ``psi``, with the optional one-call paths the step
offers (the coarsest solve's chain, a relaxation written into the level's rows)."""
from __future__ import annotations


def propagators(steps):
    """The solver's step callbacks for ``steps`` (a step, or :class:`LevelSteps`): ``phi(u, data, h)``,
    the forward step with data = the layers' parameter groups, and ``psi(w, data, h)``, the adjoint
    step in the adjoint solve's order with data = the parameter groups and then the states it is
    linearised at (all reversed).  Each carries ``chain`` (the coarsest solve's rows in one call)
    when the step has ``forward_chain`` / ``adjoint_chain``, and ``into`` (a relaxation's batch
    written into the level's rows, the right-hand side added: ``into(u, data, h, rhs, out) -> bool``)
    when it has ``forward_rhs`` / ``adjoint_rhs``."""

    def phi(u, d, h):
        return steps.forward(u, d, h)

    def psi(w, d, h):
        return steps.adjoint(d[-1], w, d[:-1], h)

    forward_chain, adjoint_chain = getattr(steps, "forward_chain", None), getattr(steps, "adjoint_chain", None)
    if forward_chain is not None:
        phi.chain = lambda prev, d, h, rhs, rows: forward_chain(prev, rows, d, h, rhs)
    if adjoint_chain is not None:
        psi.chain = lambda prev, d, h, rhs, rows: adjoint_chain(prev, rows, d[-1], d[:-1], h, rhs)
    forward_rhs, adjoint_rhs = getattr(steps, "forward_rhs", None), getattr(steps, "adjoint_rhs", None)
    if forward_rhs is not None:
        phi.into = lambda u, d, h, rhs, out: forward_rhs(u, d, h, out, rhs)
    if adjoint_rhs is not None:
        psi.into = lambda w, d, h, rhs, out: adjoint_rhs(d[-1], w, d[:-1], h, out, rhs)
    return phi, psi
