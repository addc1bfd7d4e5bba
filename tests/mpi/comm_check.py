"""Run under mpiexec: Comm's reductions, gathers and scatters on values every rank can predict;
rank 0 prints JSON."""
import json

import numpy as np
from mpi4py import MPI

from gpubraid.runtime.abort import abort_all
from gpubraid.runtime.comm import Comm


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
    }
    if r == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        abort_all(MPI.COMM_WORLD, exc, 1)
