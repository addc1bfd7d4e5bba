"""Run under mpiexec: rank 1 raises in the middle of a forward MGRIT solve; every rank must stop."""
import sys

from mpi4py import MPI

from gpubraid.network.network import ResNetODE
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.runtime.abort import abort_all
from gpubraid.runtime.backend import resolve_backend
from gpubraid.runtime.comm import Comm
from gpubraid.solver.options import MGRITOptions


def main():
    be = resolve_backend("numpy")
    comm = Comm.world()
    model = ResNetODE("dense", (2,), 4, 32, 3, 1.0, "tanh", be)
    opts = MGRITOptions(cfactor=2, tol=1e-12)
    lp = LayerParallel(model, comm, opts, opts)
    theta = lp.scatter_params(model.init_params(model.layout(), seed=0))
    calls = 0
    forward = model.step.forward

    def failing_forward(u, params, h):
        nonlocal calls
        calls += 1
        if comm.rank == 1 and calls == 5:
            raise RuntimeError("planted failure in a step")
        return forward(u, params, h)

    model.step.forward = failing_forward
    import numpy as np

    x = np.ones((3, 2))
    lp.evaluate(theta, x if lp.is_first else None, np.zeros(3, int) if lp.is_last else None, 3)
    print("unreachable: the solve finished", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # the pattern every gpubraid entry point uses
        abort_all(MPI.COMM_WORLD, exc, 1)
    sys.exit(0)
