"""Run under mpiexec: Comm's reductions, gathers and scatters on values every rank can predict;
rank 0 prints JSON."""
import json

import numpy as np
from mpi4py import MPI

from gpubraid.runtime.abort import abort_all
from gpubraid.runtime.comm import Comm


class Device:
    """Stands for a device array (not a NumPy array): what Comm stages through host memory."""

    def __init__(self, a):
        self.a = np.array(a)
        self.shape, self.dtype, self.nbytes = self.a.shape, self.a.dtype, self.a.nbytes

    def __getitem__(self, idx):
        return self.a[idx]

    def __setitem__(self, idx, value):
        self.a[idx] = value.a if isinstance(value, Device) else value


class DeviceBackend:
    """The backend calls Comm makes for a device array without a CUDA-aware MPI, counted."""

    def __init__(self):
        self.calls = []

    def synchronize(self):
        self.calls.append("synchronize")

    def to_host(self, a):
        self.calls.append("to_host")
        return a.a.copy()

    def copy_from_host(self, dst, host):
        self.calls.append("copy_from_host")
        dst.a[...] = host


def main():
    comm = Comm.world()
    r, P = comm.rank, comm.size
    mine = [0.1 * (r + 1), 1.0 / 3.0 + r, -float(r)]        # values whose sums depend on the order
    every = [[0.1 * (q + 1), 1.0 / 3.0 + q, -float(q)] for q in range(P)]
    before = comm.stats.collectives
    sums = comm.allreduce_sums(mine)
    gathered = comm.allgather(mine)
    ordered_float = comm.sum_in_rank_order(0.1 * (r + 1))
    ordered_array = comm.sum_in_rank_order(np.array(mine))
    biggest = comm.allreduce_max(float(r))
    # rank q holds (q + 1) % 3 rows (some none), placed in reverse rank order
    counts = [(q + 1) % 3 for q in range(P)]
    offsets = [sum(counts[q + 1:]) for q in range(P)]
    rows_of = [np.arange(counts[q] * 6, dtype=np.float64).reshape(counts[q], 2, 3) + 100 * q for q in range(P)]
    full = np.full((sum(counts), 2, 3), np.nan) if r == 0 else None
    comm.gather_rows(rows_of[r], full, (counts, offsets), 0)
    back = np.full_like(rows_of[r], np.nan)
    comm.scatter_rows(None if full is None else 2 * full, back, (counts, offsets), 0)
    collectives = comm.stats.collectives - before
    # the same through "device" arrays, staged (the MPI is not CUDA-aware)
    dev = Comm(comm.comm, False, DeviceBackend())
    dfull = Device(np.full((sum(counts), 2, 3), np.nan)) if r == 0 else None
    dev.gather_rows(Device(rows_of[r]), dfull, (counts, offsets), 0)
    dback = Device(np.full_like(rows_of[r], np.nan))
    dev.scatter_rows(None if dfull is None else Device(2 * dfull.a), dback, (counts, offsets), 0)
    staged = (P == 1 or (r != 0 or np.array_equal(dfull.a, full)) and np.array_equal(dback.a, back)
              and "to_host" in dev.backend.calls and "copy_from_host" in dev.backend.calls)
    out = {
        "sums_close": bool(np.allclose(sums, np.sum(every, axis=0), rtol=1e-15, atol=1e-15)),
        "gathered_in_rank_order": gathered.tolist() == every,
        "float_in_rank_order": ordered_float == sum(row[0] for row in every),
        "array_in_rank_order": ordered_array.tolist() == [sum(row[i] for row in every) for i in range(3)],
        "max": biggest == P - 1,
        "gathered_rows": full is not None and all(
            np.array_equal(full[offsets[q]:offsets[q] + counts[q]], rows_of[q]) for q in range(P)),
        "scattered_rows": bool(comm.allreduce_sum(float(not np.array_equal(back, 2 * rows_of[r])))) is False,
        "collectives": collectives,
        "staged_rows": bool(comm.allreduce_sum(float(not staged))) is False,
    }
    if r == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        abort_all(MPI.COMM_WORLD, exc, 1)
