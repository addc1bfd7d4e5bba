"""Run under mpiexec: train a user network (three-group step or torch block) for 10 L-BFGS steps
through LayerParallel; rank 0 prints the objective history and the final parameters as JSON.

Usage: python network_check.py {three,torch} {serial,pipeline,chimera,exact} [ITERATIONS]
"""
import json
import sys

import entry
import numpy as np


def main():
    from user_steps import train_history

    from gpubraid.runtime.backend import resolve_backend
    from gpubraid.runtime.comm import Comm

    which, method = sys.argv[1], sys.argv[2]
    iters = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    comm = Comm.world()
    hist, lp, theta = train_history(which, method, resolve_backend("numpy", "float64"), comm, iters)
    full = lp.gather_params(theta)
    if comm.rank == 0:
        print(json.dumps({"history": hist, "theta": np.asarray(full).tolist(),
                          "fwd_iters": lp.last_stats[0].iterations}))


if __name__ == "__main__":
    entry.run(main)
