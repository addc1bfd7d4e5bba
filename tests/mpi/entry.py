"""The entry point of the MPI check scripts: run ``main`` and, on any failure, stop every rank the
way gpubraid's own entry points do (one line naming the failing rank, no hang)."""
from mpi4py import MPI

from gpubraid.runtime.abort import abort_all


def run(main) -> None:
    try:
        main()
    except BaseException as exc:
        abort_all(MPI.COMM_WORLD, exc, 1)
