"""PyTorch on the mini-batch workload of bench/pipeline.py: plain, DDP and torch.distributed.pipelining.

    python -m bench.pipeline_torch VARIANT STEPS [M]      (prints one JSON line)

VARIANT: ``plain`` (one process), ``ddp`` (2 processes, gloo, 25 samples each) or ``gpipe`` /
``1f1b`` (2 processes, gloo: ``torch.distributed.pipelining`` with ``ScheduleGPipe`` /
``Schedule1F1B`` and M micro-batches; stage 0 holds the opening layer and the first half of the
residual layers, stage 1 the rest and the head).  The network is gpubraid's dense ResNet: 2 inputs,
64 layers u + h·tanh(K u + b) of 32 features (h = T/N, T = 5), a linear head on 5 classes,
float32, Adam 1e-2, batch 50, one thread per process.  Reported: the median seconds per
optimisation step (steps after the first two), the slowest process's.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time

LAYERS, WIDTH, CLASSES, BATCH, T = 64, 32, 5, 50, 5.0


def _torch():
    import torch

    torch.set_num_threads(1)
    return torch


class Residual:
    """Factory of the residual layer module (a class inside a function: torch imported lazily)."""

    @staticmethod
    def make(torch):
        class Layer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(WIDTH, WIDTH)

            def forward(self, u):
                return u + (T / LAYERS) * torch.tanh(self.lin(u))

        return Layer


def network(torch, part: str):
    """The whole network (``all``) or one pipeline stage (``first`` / ``second``)."""
    Layer = Residual.make(torch)
    torch.manual_seed(0)
    opening = [torch.nn.Linear(2, WIDTH), torch.nn.Tanh()]
    layers = [Layer() for _ in range(LAYERS)]
    head = [torch.nn.Linear(WIDTH, CLASSES)]
    half = LAYERS // 2
    mods = {"all": opening + layers + head, "first": opening + layers[:half], "second": layers[half:] + head}[part]
    return torch.nn.Sequential(*mods)


def batches(torch, steps: int, share=slice(None)):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(BATCH, 2, generator=g) * 6 - 3
        y = torch.randint(0, CLASSES, (BATCH,), generator=g)
        yield x[share], y[share]


def timed(steps: int, step) -> list[float]:
    out = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(i)
        out.append(time.perf_counter() - t0)
    return out


def plain(steps: int) -> dict:
    torch = _torch()
    net = network(torch, "all")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    data = list(batches(torch, steps))

    def step(i):
        x, y = data[i]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return {"s_per_step": statistics.median(timed(steps, step)[2:])}


def _worker(rank: int, variant: str, steps: int, M: int, port: int, queue) -> None:
    torch = _torch()
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    loss_fn = torch.nn.functional.cross_entropy
    if variant == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(network(torch, "all"))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        data = list(batches(torch, steps, slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)))

        def step(i):
            x, y = data[i]
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
    else:
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
        )

        stage_mod = network(torch, "first" if rank == 0 else "second")
        stage = PipelineStage(stage_mod, rank, 2, torch.device("cpu"))
        sched = (ScheduleGPipe if variant == "gpipe" else Schedule1F1B)(stage, n_microbatches=M, loss_fn=loss_fn)
        opt = torch.optim.Adam(stage_mod.parameters(), lr=1e-2)
        data = list(batches(torch, steps))

        def step(i):
            x, y = data[i]
            opt.zero_grad()
            if rank == 0:
                sched.step(x)
            else:
                sched.step(target=y)
            opt.step()

    dist.barrier()
    times = timed(steps, step)
    dist.barrier()
    queue.put((rank, times))
    dist.destroy_process_group()


def distributed(variant: str, steps: int, M: int) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, variant, steps, M, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=1800) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    slowest = [max(a, b) for a, b in zip(got[0], got[1])]
    return {"s_per_step": statistics.median(slowest[2:])}


def main(argv) -> None:
    variant, steps = argv[0], int(argv[1])
    M = int(argv[2]) if len(argv) > 2 else 1
    out = plain(steps) if variant == "plain" else distributed(variant, steps, M)
    print(json.dumps({"variant": variant, "micro_batches": M, **out}))


if __name__ == "__main__":
    main(sys.argv[1:])
