"""Ping-pong between two MPI ranks through gpubraid's Comm: the network model of this machine.

    mpiexec -n 2 python -m bench.pingpong [--out DIR]

Measures, through the calls gpubraid's messages take (``Comm.isend`` / ``recv_into`` / ``waitall``):
the one-way time of messages of 8 B .. 32 MiB (half the median round trip; buffers out of cache, as
a training run's are; the median over ``--sweeps`` interleaved passes) and the cost of their send
calls; the cost of an 8-byte send call and the cost o of a receive whose message had already
arrived; latency α = one-way time of 8 B minus those two (a trace records the send call, the
replay adds o); bandwidth β (least-squares slope over the sizes from 32 KiB); the transfer table,
each size's one-way time less its send call and o (not decreasing with size: MPICH over shared
memory changes protocol with the size, and a large message's send call does part of the copy);
the time of a one-float allreduce; and the eager limit (the largest message whose send completes
before its receive is posted) and whether larger messages move while their sender computes
(asynchronous progress).  Writes ``pingpong.json``; its ``"network"`` entry is a
:class:`gpubraid.runtime.replay.NetworkModel` (``python -m bench.replay --network FILE``).
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from bench.common import document, parser, result_path, write_json
from gpubraid.runtime.comm import Comm

TAG = 7   # a tag of this benchmark's own communicator (a Dup of COMM_WORLD), not of gpubraid's


#: Round trips cycle through buffers of this many bytes in all, more than this machine's caches: a
#: training run's messages (states, adjoints, coarse rows) come from and go to memory, while one
#: buffer bounced back and forth stays in cache and moves 2-3x faster (2-8 MiB on this project's VM).
POOL_BYTES = 64 << 20


def round_trips(comm: Comm, nbytes: int, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` round trips of an ``nbytes`` message, each from the next buffer of a
    pool of :data:`POOL_BYTES`, and of rank 0's send calls in them (rank 0 measures)."""
    n = max(nbytes, 1)
    pool = [np.zeros(n, np.uint8) for _ in range(max(1, min(repeats, POOL_BYTES // n)))]
    samples, calls = [], []
    for i in range(repeats):
        a = pool[i % len(pool)]
        comm.barrier()
        t0 = time.perf_counter()
        if comm.rank == 0:
            pending = comm.isend(a, 1, TAG)
            calls.append(time.perf_counter() - t0)
            Comm.waitall([pending])
            comm.recv_into(a, 1, TAG)
        else:
            comm.recv_into(a, 0, TAG)
            Comm.waitall([comm.isend(a, 0, TAG)])
        samples.append(time.perf_counter() - t0)
    return samples, calls


def call_costs(comm: Comm, repeats: int) -> tuple[float, float]:
    """Median seconds of an 8-byte ``isend`` call (rank 1 sends ``repeats`` in a row) and of a
    receive whose message arrived before it was posted (rank 0 receives them after a barrier)."""
    a, sends, recvs, pending = np.zeros(8, np.uint8), [], [], []
    if comm.rank == 1:
        for _ in range(repeats):
            t0 = time.perf_counter()
            pending.append(comm.isend(a, 0, TAG))
            sends.append(time.perf_counter() - t0)
    comm.barrier()
    time.sleep(0.05)
    if comm.rank == 0:
        for _ in range(repeats):
            t0 = time.perf_counter()
            comm.recv_into(a, 1, TAG)
            recvs.append(time.perf_counter() - t0)
    Comm.waitall(pending)
    send = comm.bcast_obj(statistics.median(sends) if sends else None, 1)
    return send, statistics.median(recvs) if recvs else 0.0


def eager_limit(comm: Comm, sizes) -> int:
    """The largest of ``sizes`` whose send completes while the receiver has not posted yet."""
    limit = 0
    for n in sizes:
        a = np.zeros(n, np.uint8)
        done = False
        if comm.rank == 0:
            pending = comm.isend(a, 1, TAG)
            time.sleep(0.01)
            done = bool(pending.request.Test())
        comm.barrier()
        if comm.rank == 1:
            comm.recv_into(a, 0, TAG)
        else:
            Comm.waitall([pending])
        if comm.bcast_obj(done, 0):
            limit = n
    return limit


def async_progress(comm: Comm, nbytes: int = 1 << 22, busy_s: float = 0.05) -> bool:
    """Whether a rendezvous message moves while its sender computes: rank 0 sends ``nbytes`` and
    computes for ``busy_s`` outside MPI; rank 1's receive returns well before that only if so."""
    a = np.zeros(nbytes, np.uint8)
    comm.barrier()
    took = 0.0
    if comm.rank == 0:
        pending = comm.isend(a, 1, TAG)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < busy_s:
            pass
        Comm.waitall([pending])
    else:
        t0 = time.perf_counter()
        comm.recv_into(a, 0, TAG)
        took = time.perf_counter() - t0
    return comm.bcast_obj(took < busy_s / 2, 1)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--sweeps", type=int, default=3,
                   help="passes over the sizes, interleaved; each size's times are the median of the passes' medians "
                        "(one disturbed pass moved single sizes 2x on the shared VM)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.sweeps < 1:
        p.error("--repeats and --sweeps must be at least 1")
    world = Comm.world()
    if world.size != 2:
        print("bench.pingpong: run with mpiexec -n 2", file=sys.stderr)
        return 2
    comm = Comm(world.comm.Dup(), world.cuda_aware)
    repeats = 20 if args.quick else args.repeats
    sizes = [8 << (2 * k) for k in range(12)]            # 8 B .. 32 MiB
    passes = {n: ([], []) for n in sizes}
    for _ in range(1 if args.quick else args.sweeps):
        for n in sizes:
            round_trips(comm, n, 5)
            trips, calls = round_trips(comm, n, max(15, repeats >> (n >> 20).bit_length()))
            passes[n][0].append(statistics.median(trips) / 2)
            passes[n][1].append(statistics.median(calls) if calls else 0.0)
    one_way = {n: statistics.median(trips) for n, (trips, _) in passes.items()}
    send_calls = {n: statistics.median(calls) for n, (_, calls) in passes.items()}
    send_s, recv_s = call_costs(comm, repeats)
    allreduce = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_sum(1.0)
        allreduce.append(time.perf_counter() - t0)
    limit = eager_limit(comm, [1 << k for k in range(8, 24)])
    progress = async_progress(comm)
    if comm.rank != 0:
        return 0
    # β: least-squares slope of the one-way time over the sizes from 32 KiB (two points alone moved
    # it by 2x between runs on a shared machine)
    fit = [n for n in sizes if n >= 32 << 10]
    bandwidth = 1.0 / float(np.polyfit(fit, [one_way[n] for n in fit], 1)[0])
    # a traced run records the send call's cost; the receive costs o: the rest of the one-way time is α
    latency = max(one_way[8] - send_s - recv_s, 0.0)
    table, floor = [], latency
    for n in sizes:
        floor = max(floor, one_way[n] - send_calls[n] - recv_s)
        table.append([n, floor])
    network = {"name": "measured (mpiexec -n 2, this machine)", "latency_s": latency,
               "bandwidth_Bps": bandwidth, "overhead_s": recv_s, "eager_limit": limit, "async_progress": progress,
               "transfer_table": table}
    results = {"one_way_s": {str(n): t for n, t in one_way.items()},
               "send_call_by_size_s": {str(n): t for n, t in send_calls.items()}, "send_call_s": send_s,
               "arrived_receive_s": recv_s, "allreduce_float_s": statistics.median(allreduce), "network": network}
    path = result_path("pingpong", args.out)
    write_json(path, document("pingpong", {"repeats": repeats, "sizes": sizes}, results, network=network))
    print(f"one-way {one_way[8] * 1e6:.1f} us = send call {send_s * 1e6:.1f} us + latency {latency * 1e6:.1f} us "
          f"+ receive call {recv_s * 1e6:.1f} us;  bandwidth {bandwidth / 1e9:.2f} GB/s  "
          f"allreduce {results['allreduce_float_s'] * 1e6:.1f} us  "
          f"eager limit {limit} B  async progress {progress}  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
