"""Run under mpiexec: layer-parallel objective/gradient vs the serial reference; prints JSON on rank 0.

Usage: python lp_check.py KIND N CFACTOR NRELAX MAX_LEVELS [TOL] [MAX_ITER] [auto]

auto: automatic level choice (stability 1), nested-iteration guess, FCF below level 0.
"""
import json
import sys

import numpy as np

from gpubraid.network.network import ResNetODE
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
    in_shape = (3,) if kind == "dense" else (2, 5, 4)
    model = ResNetODE(kind, in_shape, 4, N, 3, 2.0, "tanh", be, gamma_tik=1e-2, gamma_ddt=1e-2)
    full = model.layout()
    theta_full = model.init_params(full, seed=3, scale=2.0)
    rng = np.random.default_rng(0)
    B = 5
    x = rng.standard_normal((B, *in_shape))
    y = rng.integers(0, 3, B)
    auto = len(sys.argv) > 8 and sys.argv[8] == "auto"
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
            "grad": g_full.tolist(), "states": states.ravel().tolist(),
        }
        print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        from mpi4py import MPI

        from gpubraid.runtime.comm import abort_all

        abort_all(MPI.COMM_WORLD, exc, 1)
