"""Run under mpiexec: three warm one-shot evaluations with the cheap cycle (adjoint in the correction
scheme, no final relaxation, coarse params COARSE); prints states, adjoints, gradient on rank 0.
With SPATIAL > 0: a conv network on 8×4 maps whose levels 1..SPATIAL halve them.

Usage: python oneshot_cycle_check.py N MAX_LEVELS COARSE [SPATIAL]
"""
import json
import sys

import entry
import numpy as np
from user_steps import resnet_problem

from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.runtime.backend import resolve_backend
from gpubraid.runtime.comm import Comm
from gpubraid.solver.options import MGRITOptions


def main():
    N, levels, coarse = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    spatial = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    be = resolve_backend("numpy")
    comm = Comm.world()
    B = 5
    if spatial:
        model, theta_full, x, y = resnet_problem("conv", N, B, be, in_shape=(2, 8, 4))
    else:
        model, theta_full, x, y = resnet_problem("dense", N, B, be)
    fwd = MGRITOptions(cfactor=2, nrelax=[0, 1], max_levels=levels, tol=0.0, max_iter=1, final_residual=False,
                       final_relax=False, coarse_params=coarse, spatial_levels=spatial)
    bwd = MGRITOptions(**{**fwd.__dict__, "linear": True})
    lp = LayerParallel(model, comm, fwd, bwd)
    out = {"objective": [], "grad": [], "states": [], "adjoints": []}
    for k in range(3):
        theta = lp.scatter_params(theta_full * (1 + 0.05 * k))
        ev = lp.evaluate(theta, x if lp.is_first else None, y if lp.is_last else None, B, warm=True)
        g = lp.gather_params(ev.grad)
        U, L = comm.gather_obj(lp.U, 0), comm.gather_obj(lp.Lam, 0)
        if comm.rank == 0:
            out["objective"].append(ev.objective)
            out["grad"].append(g.tolist())
            out["states"].append(np.concatenate([U[0]] + [u[1:] for u in U[1:]]).ravel().tolist())
            out["adjoints"].append(np.concatenate([L[-1]] + [v[1:] for v in L[-2::-1]]).ravel().tolist())
            out["steps"] = [st.total_steps for st in lp.last_stats]
    if comm.rank == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    entry.run(main)
