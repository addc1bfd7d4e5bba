"""Run under mpiexec: layer-parallel objective/gradient vs the serial reference; prints JSON on rank 0.

Usage: python lp_check.py KIND N CFACTOR NRELAX MAX_LEVELS [TOL] [MAX_ITER] [FLAGS]

FLAGS, comma-separated: auto: automatic level choice (stability 1), nested-iteration guess, FCF below
level 0; chain: the step's forward_chain / adjoint_chain set to user_steps.numpy_chains (the coarsest
solve then takes each position's rows in one call); "chain_calls" counts them on rank 0; nochain: the
step without them (the coarsest solve's row loop; by default the dense step's compiled chains run).
"""
import json
import sys

import entry
import numpy as np
from user_steps import numpy_chains, resnet_problem

from gpubraid.network.reference import evaluate
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.runtime.backend import resolve_backend
from gpubraid.runtime.comm import Comm
from gpubraid.solver.options import MGRITOptions


def main():
    kind, N, m, nrelax, levels = sys.argv[1], *map(int, sys.argv[2:6])
    tol = float(sys.argv[6]) if len(sys.argv) > 6 else 1e-12
    max_iter = int(sys.argv[7]) if len(sys.argv) > 7 else 100
    be = resolve_backend("numpy")
    comm = Comm.world()
    B = 5
    model, theta_full, x, y = resnet_problem(kind, N, B, be)
    full = model.layout()
    flags = set(sys.argv[8].split(",")) if len(sys.argv) > 8 else set()
    auto = "auto" in flags
    calls = numpy_chains(model.step) if "chain" in flags else []
    if "nochain" in flags:
        model.step.forward_chain = model.step.adjoint_chain = None
    extra = dict(stability=1.0, nested=True, nrelax=[nrelax, 1], final_residual=False) if auto else {}
    opts = MGRITOptions(**{**dict(cfactor=m, nrelax=nrelax, max_levels=levels, tol=tol, max_iter=max_iter),
                           **extra})
    lp = LayerParallel(model, comm, opts, opts)
    theta = lp.scatter_params(theta_full)
    ev = lp.evaluate(theta, x if lp.is_first else None, y if lp.is_last else None, B)
    fst, bst = lp.last_stats
    g_full = lp.gather_params(ev.grad)
    U = comm.gather_obj(lp.U, 0)
    if comm.rank == 0:
        ref = evaluate(model, full, theta_full, x, y)
        from gpubraid.network.reference import forward_states
        Uref = forward_states(model, full.views(theta_full), x)
        states = np.concatenate([U[0]] + [u[1:] for u in U[1:]])
        out = {
            "objective": ev.objective, "ref_objective": ref.objective,
            "state_err": float(np.abs(states - Uref).max() / np.abs(Uref).max()),
            "grad_err": float(np.linalg.norm(g_full - ref.grad) / np.linalg.norm(ref.grad)),
            "fwd": fst.as_dict(), "bwd": bst.as_dict(), "levels": len(lp.fwd.levels),
            "grad": g_full.tolist(), "states": states.ravel().tolist(), "chain_calls": len(calls),
        }
        print(json.dumps(out))


if __name__ == "__main__":
    entry.run(main)
