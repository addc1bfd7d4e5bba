"""Where a built-in residual step runs: mixins placed before :class:`~gpubraid.network.steps.ResidualStep`
in a step's bases, each taking the calls it can and passing the rest on (``super()``).

    CudaDispatch   on a GPU backend, the fused CUDA kernels of :mod:`gpubraid.runtime.cuda`
    CudaSweeps     on a GPU backend, the block sweeps and the chains with a right-hand side as one
                   launch each (the dense step)
    HostDispatch   on NumPy, the compiled C loops of :mod:`gpubraid.runtime.host` (the dense step;
                   its chains and its steps into given rows decline when the loops are not there)
"""
from __future__ import annotations

from ..runtime import cuda, cuda_sweeps, host


class CudaDispatch:
    """On a GPU backend, run forward/adjoint/param_grad as the fused kernels of :mod:`gpubraid.runtime.cuda`
    (``<_cuda_prefix>_forward`` etc.); on NumPy, the :class:`ResidualStep` formulas."""

    _cuda_prefix: str

    def forward(self, u, params, h):
        if self.be.is_gpu:
            return getattr(cuda, f"{self._cuda_prefix}_forward")(u, *params, h, self.activation.code)
        return super().forward(u, params, h)

    def adjoint(self, u, lam, params, h):
        if self.be.is_gpu:
            return getattr(cuda, f"{self._cuda_prefix}_adjoint")(u, lam, *params, h, self.activation.code)
        return super().adjoint(u, lam, params, h)

    def param_grad(self, u, lam, params, h):
        if self.be.is_gpu:
            return getattr(cuda, f"{self._cuda_prefix}_param_grad")(u, lam, *params, h, self.activation.code)
        return super().param_grad(u, lam, params, h)

    def forward_keep(self, u, params, h, out):
        if self.be.is_gpu:  # the fused kernels recompute z: nothing to keep
            v = getattr(cuda, f"{self._cuda_prefix}_forward")(u, *params, h, self.activation.code, out=out)
            if v is not out:  # (an output the kernel could not write into)
                out[...] = v
            return None
        return super().forward_keep(u, params, h, out)

    def adjoint_grad(self, u, lam, params, h, kept, out):
        if self.be.is_gpu:  # one σ'(z) ⊙ λ for the adjoint and the gradient, the adjoint written into out
            adj, *grads = getattr(cuda, f"{self._cuda_prefix}_adjoint_grad")(u, lam, *params, h, self.activation.code,
                                                                             out=out)
            if adj is not out:
                out[...] = adj
            return tuple(grads)
        return super().adjoint_grad(u, lam, params, h, kept, out)


class CudaSweeps:
    """On a GPU backend, the block sweeps (``forward_block``, ``backward_block``, ``backward_through``)
    and the chains with a right-hand side (``forward_chain``, ``adjoint_chain``: MGRIT's coarsest
    solve) as one launch each, ``<_cuda_prefix>_sweep_*`` / ``_chain_*`` of
    :mod:`gpubraid.runtime.cuda_sweeps` (the dense step); elsewhere the next class's."""

    _cuda_prefix: str

    def forward_block(self, U, params, h, keep):
        if self.be.is_gpu:
            return getattr(cuda_sweeps, f"{self._cuda_prefix}_sweep_forward")(U, *params, h, self.activation.code,
                                                                              keep)
        return super().forward_block(U, params, h, keep)

    def backward_block(self, U, Lam, params, h, grads, kept) -> bool:
        if self.be.is_gpu:
            return getattr(cuda_sweeps, f"{self._cuda_prefix}_sweep_backward")(U, Lam, *params, h,
                                                                               self.activation.code, kept, *grads)
        return super().backward_block(U, Lam, params, h, grads, kept)

    def backward_through(self, U, lam, params, h, grads, kept) -> bool:
        return self.backward_block(U, lam, params, h, grads, kept) if self.be.is_gpu else \
            super().backward_through(U, lam, params, h, grads, kept)

    def forward_chain(self, u0, V, params, h, G) -> bool:
        """V[i] = forward(V[i − 1]) + G[i], i = 0..n − 1, from V[−1] = u0 (B, *S); V (n, B, *S), G like
        V (may be V) or None; params and h per step (n, ...).  True when done, False (nothing done)
        when declined."""
        if self.be.is_gpu:
            return getattr(cuda_sweeps, f"{self._cuda_prefix}_chain_forward")(u0, V, *params, h,
                                                                              self.activation.code, G)
        return super().forward_chain(u0, V, params, h, G)

    def adjoint_chain(self, w0, W, U, params, h, G) -> bool:
        """W[i] = adjoint(U[i], W[i − 1]) + G[i], i = 0..n − 1, from W[−1] = w0, in the order given (the
        adjoint solve's: layers reversed by the caller); W, U (n, B, *S); G like W (may be W) or None.
        True when done, False (nothing done) when declined."""
        if self.be.is_gpu:
            return getattr(cuda_sweeps, f"{self._cuda_prefix}_chain_adjoint")(w0, W, U, *params, h,
                                                                              self.activation.code, G)
        return super().adjoint_chain(w0, W, U, params, h, G)


class HostDispatch:
    """On NumPy, run forward/adjoint/param_grad and the block sweeps as the compiled loops of
    :mod:`gpubraid.runtime.host` (``kernels/dense_host.c``) when they take the arrays; otherwise (a GPU
    backend, arrays they decline) the next class's (:class:`~gpubraid.network.steps.ResidualStep`)."""

    def _host(self, kernel, u, lam, params, h):
        """``kernel``'s result for these arrays (checked first), or NotImplemented (GPU, or declined)."""
        if self.be.is_gpu:
            return NotImplemented
        self.check(u, params, h)
        return kernel(u, *(() if lam is None else (lam,)), *params, h, self.activation.code)

    def forward(self, u, params, h):
        out = self._host(host.forward, u, None, params, h)
        return super().forward(u, params, h) if out is NotImplemented else out

    def adjoint(self, u, lam, params, h):
        out = self._host(host.adjoint, u, lam, params, h)
        return super().adjoint(u, lam, params, h) if out is NotImplemented else out

    def param_grad(self, u, lam, params, h):
        out = self._host(host.param_grad, u, lam, params, h)
        return super().param_grad(u, lam, params, h) if out is NotImplemented else out

    def forward_block(self, U, params, h, keep):
        if self.be.is_gpu:
            return NotImplemented
        return host.sweep_forward(U, *params, h, self.activation.code, keep)

    def backward_block(self, U, Lam, params, h, grads, kept) -> bool:
        return not self.be.is_gpu and host.sweep_backward(U, Lam, *params, h, self.activation.code, kept, *grads)

    def backward_through(self, U, lam, params, h, grads, kept) -> bool:
        return not self.be.is_gpu and host.sweep_backward_through(U, lam, *params, h, self.activation.code, kept,
                                                                  *grads)

    def forward_rhs(self, u, params, h, out, rhs) -> bool:
        return not self.be.is_gpu and host.forward_into(u, out, *params, h, self.activation.code, rhs)

    def adjoint_rhs(self, u, lam, params, h, out, rhs) -> bool:
        return not self.be.is_gpu and host.adjoint_into(u, lam, out, *params, h, self.activation.code, rhs)

    def forward_chain(self, u0, V, params, h, G) -> bool:
        return not self.be.is_gpu and host.chain_forward(u0, V, *params, h, self.activation.code, G)

    def adjoint_chain(self, w0, W, U, params, h, G) -> bool:
        return not self.be.is_gpu and host.chain_adjoint(w0, W, U, *params, h, self.activation.code, G)
