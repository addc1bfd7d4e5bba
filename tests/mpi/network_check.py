"""Run under mpiexec: train a user network (three-group step or torch block) for 10 L-BFGS steps
through LayerParallel; rank 0 prints the objective history and the final parameters as JSON.

Usage: python network_check.py {three,torch} {serial,exact} [ITERATIONS]
"""
import json
import sys

import numpy as np


def main():
    from user_steps import build, lbfgs_history

    from gpubraid.objective.layer_parallel import LayerParallel
    from gpubraid.runtime.backend import resolve_backend
    from gpubraid.runtime.comm import Comm
    from gpubraid.solver.options import MGRITOptions

    which, method = sys.argv[1], sys.argv[2]
    iters = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    be = resolve_backend("numpy", "float64")
    comm = Comm.world()
    net, ds = build(which, be)
    if method == "serial":
        opts = MGRITOptions(max_levels=1, tol=1e-10, max_iter=100)
    else:
        opts = MGRITOptions(cfactor=2, max_levels=10, nrelax=1, tol=1e-10, max_iter=100)
    lp = LayerParallel(net, comm, opts, opts)
    theta = lp.scatter_params(net.init_params(net.layout(), seed=0))
    hist = lbfgs_history(lp, theta, ds.x_train if lp.is_first else None, ds.y_train if lp.is_last else None,
                         ds.n_train, iters)
    full = lp.gather_params(theta)
    if comm.rank == 0:
        print(json.dumps({"history": hist, "theta": np.asarray(full).tolist(),
                          "fwd_iters": lp.last_stats[0].iterations}))


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        from mpi4py import MPI

        from gpubraid.runtime.comm import abort_all

        abort_all(MPI.COMM_WORLD, exc, 1)
