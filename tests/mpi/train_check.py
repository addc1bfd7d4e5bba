"""Run under mpiexec: a short training run; rank 0 prints the objective history as JSON."""
import json
import sys

from mpi4py import MPI

from gpubraid.runtime.abort import abort_all
from gpubraid.runtime.comm import Comm
from gpubraid.training.config import TrainConfig
from gpubraid.training.trainer import Trainer


def main():
    method, optimizer = sys.argv[1], sys.argv[2]
    layers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    data_parallel = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    extra = dict(batch_size=50, lr=0.01) if optimizer != "lbfgs" else {}
    cfg = TrainConfig(example="peaks", method=method, optimizer=optimizer, layers=layers, iterations=6,
                      n_train=200, n_val=100, val_every=3, progress=False, cfactor=2,
                      data_parallel=data_parallel, **extra)
    res = Trainer(cfg, Comm.world()).run()
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(json.dumps(res.metrics()))


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        abort_all(MPI.COMM_WORLD, exc, 1)
