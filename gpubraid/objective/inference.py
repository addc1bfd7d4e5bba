"""Forward passes without MGRIT: scoring and prediction (docs/algorithm.md §2, §4.1).

Inference needs no adjoint and no iteration: the states are propagated layer by layer.  The
samples are cut into chunks and pipelined across the ranks that hold the layer blocks: rank r
receives chunk k's state u_a from rank r − 1, propagates it through its layers a..b−1, sends u_b to
rank r + 1 and takes chunk k + 1 while its neighbour works on chunk k.  With P ranks and K chunks
the pass takes (K + P − 1) chunk-block times instead of K·P.  On one process it is plain serial
propagation of one chunk at a time (the chunks bound the memory).

Rank 0 holds the inputs and the opening layer; the last rank holds the head (and the targets, when
scoring).
"""
from __future__ import annotations

import math

import numpy as np

from ..network.sweep import forward_through
from ..runtime import tags
from ..runtime.comm import Comm

#: Bytes of state per chunk and rank on one process (and the upper bound under MPI).
CHUNK_BYTES = 2**25


#: Under MPI, at least this many chunks per rank, so the pipeline fills.
CHUNKS_PER_RANK = 4


def chunk_size(n: int, sample_bytes: int, ranks: int) -> int:
    """Samples per chunk of a pass over ``n`` samples of ``sample_bytes`` each on ``ranks`` ranks."""
    by_memory = max(1, CHUNK_BYTES // sample_bytes)
    if ranks == 1:
        return int(min(n, by_memory))
    return int(max(1, min(by_memory, math.ceil(n / (CHUNKS_PER_RANK * ranks)))))


def stream(comm: Comm, n: int, chunk: int, state_shape, be, enter, through):
    """Chunks [lo, hi) of ``n`` samples streamed through the ranks of ``comm`` in rank order.

    Rank 0 starts chunk k from ``enter(lo, hi)`` (B_k, *state_shape); every rank applies
    ``through(u)`` and sends the result on (non-blocking, at most two chunks in flight) while it
    takes the next chunk.  Yields ``(lo, hi, u)`` on the last rank, nothing elsewhere; iterate to
    the end (the last sends are completed after the loop).
    """
    first, last = comm.rank == 0, comm.rank == comm.size - 1
    pending = []
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        if first:
            u = enter(lo, hi)
        else:
            u = be.xp.empty((hi - lo, *state_shape), dtype=be.dtype)
            comm.recv_into(u, comm.rank - 1, tags.CHUNK_STATE)
        u = through(u)
        if last:
            yield lo, hi, u
            continue
        pending.append(comm.isend(u, comm.rank + 1, tags.CHUNK_STATE))
        if len(pending) > 2:
            Comm.waitall(pending[:1])
            pending = pending[1:]
    Comm.waitall(pending)


class Pipeline:
    """Layer-serial forward passes of a :class:`~gpubraid.network.network.Network` split over ``comm``.

    Args:
        model: the network.
        comm: the layer communicator.
        bounds: (P + 1,) layer block boundaries (as :func:`gpubraid.runtime.comm.split_layers`).
    """

    def __init__(self, model, comm: Comm, bounds):
        self.model, self.comm = model, comm
        self.rank, self.P = comm.rank, comm.size
        self.a, self.b = int(bounds[self.rank]), int(bounds[self.rank + 1])
        self.h = model.step_sizes(self.a, self.b)
        self.sample_bytes = model.state_size * np.dtype(model.be.dtype).itemsize

    def chunk_size(self, n: int) -> int:
        """Samples per chunk for a pass over ``n`` samples."""
        return chunk_size(n, self.sample_bytes, self.P)

    def _propagate(self, u, layers):
        """u_b from u_a through this rank's layers (:func:`~gpubraid.network.sweep.forward_through`)."""
        return forward_through(self.model.step, self.model.xp, u, layers, self.h)

    def run(self, P, x, n: int, y=None, outputs: bool = False):
        """One forward pass over ``n`` samples.

        Args:
            P: this rank's parameter views (``layout.views(theta)``).
            x: inputs (n, *in_shape) on rank 0 (ignored elsewhere).
            n: number of samples (every rank).
            y: targets on the last rank, when scoring (labels (n,) or values (n, n_out)).
            outputs: also return the head's outputs.

        Returns:
            ``(loss_sum, n_correct, out)`` on every rank: the loss summed over samples and the
            number classified correctly (both 0 without ``y``), and the outputs (n, n_out) as a
            host array on rank 0 when ``outputs`` (None otherwise).
        """
        model, comm = self.model, self.comm
        first, last = self.rank == 0, self.rank == self.P - 1
        layers = P.layers()
        loss_sum, correct, parts = 0.0, 0, []
        for lo, hi, u in stream(comm, n, self.chunk_size(n), model.state_shape, model.be,
                                lambda lo, hi: model.open_forward(x[lo:hi], P),
                                lambda u: self._propagate(u, layers)):
            if y is not None and last:
                loss, ok, _, _ = model.head.loss(u, y[lo:hi], P.head(), want_grad=False)
                loss_sum += loss * (hi - lo)
                correct += ok
            if outputs:
                parts.append(model.be.to_host(model.head.predict(u, P.head())))
        loss_sum, correct = comm.allreduce_sums((loss_sum, correct) if last else (0.0, 0.0))
        correct = int(round(correct))
        out = None
        if outputs:
            out = np.concatenate(parts) if last else None
            if self.P > 1 and last:
                comm.send_obj(out, 0, tags.CHUNK_OUTPUTS)
            elif self.P > 1 and first:
                out = comm.recv_obj(self.P - 1, tags.CHUNK_OUTPUTS)
            if not first:
                out = None
        return loss_sum, correct, out
