"""Run under mpiexec: pipelined gradients against the serial reference; prints JSON on rank 0.

Usage: python pipeline_check.py KIND N D [BACKEND]
       python pipeline_check.py train METHOD OPTIMIZER MICRO_BATCHES SCHEDULE D

First form: for every micro-batch count M in {1, 3, 8} and every schedule, the pipelined objective
and gradient (D data groups of P/D layer ranks, each with a contiguous share of the batch) and, per
M, the pipeline after an MGRIT level choice that keeps one level (1F1B and Chimera).  Reports the
largest relative difference from :func:`gpubraid.network.reference.evaluate` of each, on BACKEND
(numpy, or cupy: every rank on the one GPU there is).
"""
import json
import sys

import entry
import numpy as np
from user_steps import resnet_problem

from gpubraid.network.reference import evaluate
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.objective.pipeline import SCHEDULES, PipelineOptions
from gpubraid.runtime.backend import resolve_backend
from gpubraid.runtime.comm import Comm, split_layers
from gpubraid.solver.options import MGRITOptions

SERIAL = MGRITOptions(max_levels=1)
#: MGRIT whose stability bound no coarse level meets: the solve keeps one level at run time.
ONE_LEVEL_AT_RUN_TIME = MGRITOptions(max_levels=3, cfactor=2, stability=1e-9, tol=1e-12)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-300))


def train():
    from gpubraid.training.config import TrainConfig
    from gpubraid.training.trainer import Trainer

    method, optimizer, M, schedule, D = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    extra = dict(batch_size=50, lr=0.01) if optimizer != "lbfgs" else {}
    cfg = TrainConfig(example="peaks", method=method, optimizer=optimizer, layers=16, iterations=6, n_train=200,
                      n_val=100, val_every=3, progress=False, micro_batches=M, schedule=schedule,
                      data_parallel=D, **extra)
    world = Comm.world()
    res = Trainer(cfg, world).run()
    if world.rank == 0:
        print(json.dumps(res.metrics()))


def main():
    if sys.argv[1] == "train":
        return train()
    kind, N, D = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    be = resolve_backend(sys.argv[4] if len(sys.argv) > 4 else "numpy")
    world = Comm.world()
    comm, data = world.grid(D)
    B = 23
    model, theta_full, x, y = resnet_problem(kind, N, B, be)
    x, y = be.asarray(x), be.xp.asarray(y)
    full = model.layout()
    share = split_layers(B, D)
    lo, hi = int(share[data.rank]), int(share[data.rank + 1])
    ref = evaluate(model, full, theta_full, x, y) if world.rank == 0 else None
    ref_grad = None if ref is None else be.to_host(ref.grad)
    out = {"ranks": world.size, "data_groups": D, "runs": {}}
    for M in (1, 3, 8):
        cases = [(f"M{M}-{s}", SERIAL, PipelineOptions(M, s)) for s in SCHEDULES]
        cases.append((f"M{M}-mgrit-one-level", ONE_LEVEL_AT_RUN_TIME, PipelineOptions(M)))
        cases.append((f"M{M}-mgrit-one-level-chimera", ONE_LEVEL_AT_RUN_TIME, PipelineOptions(M, "chimera")))
        for name, opts, pipe in cases:
            lp = LayerParallel(model, comm, opts, opts, data, pipe)
            theta = lp.scatter_params(theta_full)
            ev = lp.evaluate(theta, x[lo:hi] if lp.needs_inputs else None, y[lo:hi] if lp.needs_targets else None,
                             hi - lo)
            g = lp.gather_params(ev.grad)
            fst, bst = lp.last_stats
            if world.rank == 0:
                out["runs"][name] = {"objective_err": abs(ev.objective - ref.objective) / abs(ref.objective),
                                     "grad_err": rel(g, ref_grad), "levels": fst.levels,
                                     "pipelined": lp.pipelined, "n_samples": ev.n_samples,
                                     "peak_held": lp.pipe.peak_held}
    if world.rank == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    entry.run(main)
