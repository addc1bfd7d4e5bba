"""The chain solves behind :class:`gpubraid.torch.LayerParallel`, on one rank's layers.

:class:`Solves` holds, for one array backend (NumPy or CuPy, float32 or float64), the
:class:`~gpubraid.network.torch_step.TorchStep` of the block and the forward and adjoint chain
solvers (MGRIT, or the layer-serial chain) of the training method and of evaluation, and runs

    forward     u_a..u_b from u_0 (given on the first rank): rows (b − a + 1, B, *S)
    backward    λ_a..λ_b from λ_N (given on the last rank), then h (∂f/∂θ)ᵀ λ of every layer
                in one batched ``param_grad`` call
    pipeline    u_N only, propagated layer by layer in sample chunks pipelined across the ranks

exactly as :class:`gpubraid.objective.layer_parallel.LayerParallel` does for a gpubraid network
(solver point k of the adjoint is λ_{N−k}, linearised at the forward states).  Tensors and arrays
share memory: ``Tensor.numpy()`` / ``torch.from_numpy`` on the CPU, DLPack with CuPy on a GPU.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from ..network.sweep import forward_through
from ..network.torch_step import TorchStep, to_tensor
from ..objective.inference import chunk_size, stream
from ..objective.layer_parallel import chain_solver
from ..runtime.backend import Backend, resolve_backend
from ..runtime.comm import Comm
from ..runtime.resources import micro_batch_count

DTYPES = {"torch.float64": "float64", "torch.float32": "float32"}


def backend_of(t) -> Backend:
    """The gpubraid backend of a tensor: NumPy on the CPU, CuPy on its CUDA device."""
    dtype = DTYPES.get(str(t.dtype))
    if dtype is None:
        raise UserError(f"LayerParallel computes in float32 or float64; got {t.dtype} "
                        "(call .float() or .double() on the module and its input)")
    if t.device.type == "cpu":
        return resolve_backend("numpy", dtype)
    if t.device.type == "cuda":
        return resolve_backend("cupy", dtype, t.device.index or 0)
    raise UserError(f"LayerParallel runs on the CPU or a CUDA device; got {t.device}")


def as_array(t, be: Backend):
    """The array of a tensor, sharing its memory (contiguous)."""
    t = t.detach().contiguous()
    return be.xp.from_dlpack(t) if be.is_gpu else t.numpy()


def as_tensor(a, be: Backend):
    """The tensor of an array, sharing its memory (a copy where torch cannot: :func:`to_tensor`)."""
    import torch

    return to_tensor(torch, a, be.is_gpu)


class Solves:
    """Forward and adjoint solves of this rank's layers [a, b) of N on one backend.

    Args:
        factory: the block (a ``torch.nn.Module`` class or a no-argument factory of one layer's f).
        comm: the layer communicator (its ``backend`` is set to ``be``).
        bounds: (P + 1,) layer block boundaries.
        h: (N,) step sizes (host floats).
        settings: :class:`gpubraid.torch.settings.Settings`.
        be: the backend of the parameters.
    """

    def __init__(self, factory, comm: Comm, bounds, h, settings, be: Backend):
        self.be, self.xp, self.comm = be, be.xp, comm
        comm.backend = be
        self.step = TorchStep(factory, (1,), be)   # the state shape is set per solve
        self.rank, self.P = comm.rank, comm.size
        self.a, self.b = int(bounds[self.rank]), int(bounds[self.rank + 1])
        self.is_first, self.is_last = self.rank == 0, self.rank == self.P - 1
        self.h = be.asarray(h[self.a:self.b])
        N = len(h)
        order, rev = list(range(self.P)), list(range(self.P - 1, -1, -1))
        rev_bounds = N - np.asarray(bounds)[::-1]

        # One-level solves stream micro-batches through the ranks (clamped to the batch per solve).
        M = micro_batch_count(settings.method.pipeline.micro_batches, self.P, 2 ** 62)

        def pair(fwd, bwd):
            return (chain_solver(comm, order, bounds, h, fwd, be, M),
                    chain_solver(comm, rev, rev_bounds, np.asarray(h)[::-1].copy(), bwd, be, M))

        m = settings.method
        self.train = pair(m.forward, m.adjoint)
        ev = settings.evaluation_options
        self.eval = pair(ev, ev)
        self.U = self.Lam = None          # warm-start rows of the last training solves
        self.fwd_tol = self.bwd_tol = None

    def _shape(self, shape):
        self.step.state_shape = tuple(shape[1:])

    def forward(self, solvers, params, u0, shape, warm: bool):
        """States u_a..u_b, (b − a + 1, B, *S), and the SolveStats of the forward solve."""
        self._shape(shape)
        start = self.U.copy() if warm and self.U is not None and self.U.shape[1:] == shape else None
        U, stats = solvers[0].solve(self.step.forward, params, u0, shape, warm=start, tol=self.fwd_tol)
        if solvers is self.train:
            self.U = U
        return U, stats

    def backward(self, solvers, params, U, lamN, shape, fstats, warm: bool):
        """(λ_a (first rank; None elsewhere), parameter gradients (L, *P_i) per group, SolveStats)."""
        self._shape(shape)
        xp, step = self.xp, self.step
        data = tuple(xp.ascontiguousarray(p[::-1]) for p in params) + (xp.ascontiguousarray(U[:-1][::-1]),)

        def psi(w, d, h):
            return step.adjoint(d[-1], w, d[:-1], h)

        bwd = solvers[1]
        start = self.Lam.copy() if warm and self.Lam is not None and self.Lam.shape[1:] == shape else None
        levels = fstats.levels if (bwd.opts.stability > 0 or bwd.opts.conv_bound > 0) else None
        Lam_s, bstats = bwd.solve(psi, data, lamN, shape, warm=start, levels=levels, tol=self.bwd_tol,
                                  max_iter=None, sample_data=(len(params),))
        if solvers is self.train:
            self.Lam = Lam_s
        Lam = Lam_s[::-1]
        grads = step.param_grad(U[:-1], Lam[1:], params, self.h)
        return (Lam[0] if self.is_first else None), grads, bstats

    def pipeline(self, params, u0, shape):
        """u_N on the last rank (None elsewhere): the layers applied one by one to sample chunks,
        chunk k + 1 entering rank r while rank r + 1 works on chunk k (as gpubraid's scoring)."""
        self._shape(shape)
        B, be = shape[0], self.be
        chunk = chunk_size(B, math.prod(shape[1:]) * np.dtype(be.dtype).itemsize, self.P)
        out = self.xp.empty(shape, dtype=be.dtype) if self.is_last else None
        for lo, hi, u in stream(self.comm, B, chunk, shape[1:], be, lambda lo, hi: u0[lo:hi],
                                lambda u: forward_through(self.step, self.xp, u, params, self.h)):
            out[lo:hi] = u
        return out
