"""``gpubraid.torch.LayerParallel``: layer-parallel residual layers as a ``torch.nn.Module``.

Every rank of the layer communicator builds the same module and calls it, and ``backward`` on its
result, collectively (the PyTorch + XBraid convention):

    first rank   its input is u_0 (B, *S): the output of the opening layers (ordinary torch layers
                 there; autograd carries λ_0 = ∂loss/∂u_0 back into them)
    last rank    its output is u_N (B, *S): the input of the head and the loss (ordinary torch there;
                 autograd hands λ_N = ∂loss/∂u_N to the adjoint solve)
    other ranks  input ignored (None); output a zero 0-d placeholder on which ``backward()`` takes
                 this rank into the adjoint solve

With one process the first rank is the last: the module is then u_0 -> u_N.  The forward pass is
gpubraid's forward solve over this rank's layers, the backward pass (a ``torch.autograd.Function``)
its adjoint solve, which writes the layers' gradients into the module's own parameters: one stacked
``nn.Parameter`` (b − a, *shape) per named parameter of the block (names with ``.`` as ``_``), this
rank's layers [a, b) only.  ``state_dict()`` holds them in the serial layout (N, *shape) on every
rank (gathered; :mod:`gpubraid.torch.state`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError, check_positive_float, check_positive_int
from ..network.torch_step import TorchStep
from ..runtime.backend import resolve_backend
from ..runtime.comm import Comm, detect_cuda_aware, split_layers
from . import state
from .settings import make_settings
from .solves import Solves, as_array, as_tensor, backend_of


def as_comm(comm) -> Comm:
    """A gpubraid Comm from None (one process), an mpi4py communicator or a Comm."""
    if comm is None:
        return Comm.single()
    if isinstance(comm, Comm):
        return comm
    if not hasattr(comm, "Get_rank"):
        raise UserError(f"comm must be None, an mpi4py communicator or a gpubraid Comm; got {type(comm).__name__}")
    return Comm(comm, detect_cuda_aware()[0])


class _Chain(torch.autograd.Function):
    """u_0 (first rank) and the stacked parameters -> u_N (last rank) or a placeholder."""

    @staticmethod
    def forward(ctx, lp, x, *params):
        out, saved = lp._solve_forward(x, params, keep=True)
        ctx.lp, ctx.saved = lp, saved
        ctx.save_for_backward(*params)   # autograd then refuses parameters changed in place since
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        lam0, grads = ctx.lp._solve_backward(ctx.saved, grad_out, ctx.saved_tensors)
        ctx.saved = None
        return (None, lam0, *grads)


class LayerParallel(torch.nn.Module):
    """N residual layers u_{n+1} = u_n + h f(u_n; θ_n), h = T/N, solved layer-parallel.

    Args:
        block: a ``torch.nn.Module`` class, or a no-argument factory, of one layer's f: (B, *S) -> (B, *S).
        layers: N, the number of residual layers (at least the number of ranks).
        final_time: T > 0.
        comm: None (one process), or the mpi4py communicator (or gpubraid Comm) of the ranks that
            share the layers, e.g. ``MPI.COMM_WORLD`` under ``mpiexec``.
        method: ``oneshot``, ``exact`` or ``serial`` (any method of ``gpubraid train --method``).
        full_batch: every forward sees the same samples; the method's warm-start policy then starts
            each step's solves from the previous step's states and adjoints (one-shot).
        evaluation: forward passes in ``eval()`` mode: ``pipeline`` (layer-serial, sample chunks
            pipelined across the ranks) or ``converged`` (MGRIT to ``tol``).
        solver_options: the MGRIT settings of ``gpubraid train`` (cfactor, nrelax, max_levels,
            min_coarse, stability, conv_bound, nested, minibatch_warm, adaptive, fwd_iters,
            bwd_iters, tol, max_iter) and ``seed``, ``init_scale`` of the initial parameters.

    Layer n starts from the block's own initialisation under a generator seeded by (seed, 1, n),
    as ``gpubraid train --layer`` does: the same numbers on any number of ranks.  The parameters
    are created in torch's default dtype; ``.double()``, ``.float()`` and ``.to(device)`` work as
    for any module (the solves follow the parameters' dtype and device).
    """

    def __init__(self, block, layers: int, final_time: float, comm=None, method: str = "oneshot", *,
                 full_batch: bool = False, evaluation: str = "pipeline", **solver_options):
        super().__init__()
        if isinstance(block, torch.nn.Module) or not callable(block):
            raise UserError("block must be a torch.nn.Module class or a no-argument factory of one layer "
                            f"(not a module instance); got {block!r}")
        self.comm = as_comm(comm)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.settings = make_settings(method, solver_options, full_batch, evaluation, self.size)
        self.layers = check_positive_int("layers", layers)
        self.final_time = check_positive_float("final_time", final_time)
        self.bounds = split_layers(self.layers, self.size)
        self.a, self.b = int(self.bounds[self.rank]), int(self.bounds[self.rank + 1])
        self.is_first, self.is_last = self.rank == 0, self.rank == self.size - 1
        self.h = np.full(self.layers, self.final_time / self.layers)
        self.block = block
        template = TorchStep(block, (1,), resolve_backend("numpy", "float64"))
        self.group_names, self.group_shapes = template.param_names, template.param_shapes
        cfg = self.settings.cfg
        draws = [template.init_layer(np.random.default_rng([cfg.seed, 1, n]), cfg.init_scale)
                 for n in range(self.a, self.b)]
        for j, name in enumerate(self.group_names):
            if hasattr(self, name):
                raise UserError(f"the block's parameter {name!r} clashes with a LayerParallel attribute; rename it")
            value = torch.as_tensor(np.stack([d[j] for d in draws]), dtype=torch.get_default_dtype())
            self.register_parameter(name, torch.nn.Parameter(value))
        self._solves = None
        self._checked = None     # the sample shape the block was seen to take (first rank)
        self.last_stats = None   # (forward, adjoint) SolveStats of the last solves
        state.install(self)

    # -- settings -----------------------------------------------------------------------------------
    def set_method(self, method: str, *, full_batch: bool | None = None, evaluation: str | None = None,
                   **solver_options) -> None:
        """Switch method and solver settings (parameters and warm-start states are kept)."""
        s = self.settings
        self.settings = make_settings(method, solver_options, s.full_batch if full_batch is None else full_batch,
                                      s.evaluation if evaluation is None else evaluation, self.size)
        warm = (self._solves.U, self._solves.Lam) if self._solves is not None else (None, None)
        self._solves = None
        self._solver_for(self.stacked()[0])
        self._solves.U, self._solves.Lam = warm

    @property
    def method(self) -> str:
        return self.settings.cfg.method

    def stacked(self) -> tuple:
        """This rank's stacked parameters, one (b − a, *shape) tensor per group of the block."""
        return tuple(getattr(self, n) for n in self.group_names)

    def on_first(self, module: torch.nn.Module) -> torch.nn.Module:
        """Mark ``module`` (build it on every rank) as living on the first rank: its state dict
        entries come from there on every rank.  Returns ``module``."""
        return state.owned_by(self, module, 0)

    def on_last(self, module: torch.nn.Module) -> torch.nn.Module:
        """Mark ``module`` as living on the last rank (see :meth:`on_first`).  Returns ``module``."""
        return state.owned_by(self, module, self.size - 1)

    def extra_repr(self) -> str:
        return (f"layers={self.layers} (this rank: {self.a}..{self.b - 1}), final_time={self.final_time}, "
                f"method={self.method}, ranks={self.size}")

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x=None):
        """u_0 (B, *S) on the first rank (ignored elsewhere) -> u_N (B, *S) on the last rank, a
        zero 0-d placeholder elsewhere (call ``backward()`` on it, collectively)."""
        params = self.stacked()
        wants_grad = torch.is_grad_enabled() and (
            any(p.requires_grad for p in params) or (isinstance(x, torch.Tensor) and x.requires_grad))
        if wants_grad:
            return _Chain.apply(self, x if self.is_first else None, *params)
        with torch.no_grad():
            out, _ = self._solve_forward(x, params, keep=False)
        return out

    def _solver_for(self, p) -> Solves:
        be = backend_of(p)
        s = self._solves
        if s is None or s.be != be:
            self._solves = Solves(self.block, self.comm, self.bounds, self.h, self.settings, be)
        return self._solves

    def _shape(self, x, be):
        """(B, *S) of the input, from the first rank to all (an error there stops every rank)."""
        msg = shape = None
        if self.is_first:
            if not isinstance(x, torch.Tensor) or x.ndim < 2:
                msg = f"the first rank's input must be a tensor (B, *S); got {type(x).__name__}" + (
                    f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else "")
            elif backend_of(x) != be:
                msg = f"input must have the parameters' dtype and device ({be.dtype_name}, {be.name}); " \
                      f"got {x.dtype} on {x.device}"
            else:
                shape = tuple(int(s) for s in x.shape)
                msg = self._block_takes(x[:1]) if shape[1:] != self._checked else None
        shape, msg = self.comm.bcast_obj((shape, msg), 0)
        if msg is not None:
            raise UserError(msg)
        return shape

    def _block_takes(self, u) -> str | None:
        """None when a fresh block (eval mode, no gradient, torch's random state left as it was) maps
        the one sample ``u`` (1, *S) to the same shape; else the one-line reason.  Remembered per
        sample shape."""
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                f = self.block().to(dtype=u.dtype, device=u.device).eval()(u)
        except Exception as exc:  # the block's own error for these states, whatever its type
            return f"the block cannot take states of shape {tuple(u.shape[1:])}: {str(exc).splitlines()[0]}"
        if not isinstance(f, torch.Tensor) or tuple(f.shape) != tuple(u.shape):
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            return f"the block must map states (B, *S) to the same shape; got {got} from {tuple(u.shape)}"
        self._checked = tuple(u.shape[1:])
        return None

    def _solve_forward(self, x, params, keep: bool):
        """(output tensor, what backward needs) of one forward solve; ``keep``: autograd will
        call backward."""
        solves = self._solver_for(params[0])
        be = solves.be
        shape = self._shape(x, be)
        u0 = as_array(x, be) if self.is_first else None
        P = tuple(as_array(p, be) for p in params)
        training = self.training
        solvers = solves.train if training else solves.eval
        warm = training and self.settings.method.warm(self.settings.full_batch)
        if not training and not keep and self.settings.evaluation == "pipeline":
            U, fstats = None, None
            uN = solves.pipeline(P, u0, shape)
        else:
            U, fstats = solves.forward(solvers, P, u0, shape, warm)
            uN = U[-1] if self.is_last else None
        self.last_stats = (fstats, None)
        ref = params[0]
        out = as_tensor(uN, be) if self.is_last else torch.zeros((), dtype=ref.dtype, device=ref.device)
        saved = (solvers, P, U, shape, fstats, warm) if keep else None
        return out, saved

    def _solve_backward(self, saved, grad_out, params):
        """(∂loss/∂u_0 on the first rank (None elsewhere), gradients of the stacked parameters)."""
        solvers, P, U, shape, fstats, warm = saved
        solves = self._solves
        be = solves.be
        lamN = as_array(grad_out, be) if self.is_last else None
        if self.is_last and tuple(lamN.shape) != shape:
            raise UserError(f"the output's gradient must have its shape {shape}; got {tuple(lamN.shape)}")
        lam0, grads, bstats = solves.backward(solvers, P, U, lamN, shape, fstats, warm)
        self.last_stats = (fstats, bstats)
        g = tuple(as_tensor(d, be) for d in grads)
        tol = self.settings.method.tolerance(self._grad_norm(g)) if self.settings.cfg.adaptive > 0 else None
        if solvers is solves.train:
            solves.fwd_tol = solves.bwd_tol = tol
        return (as_tensor(lam0, be) if lam0 is not None else None), g

    def _grad_norm(self, grads) -> float:
        """‖∇θ‖ of the layers on all ranks (the adaptive one-shot tolerance scales with it)."""
        return self.comm.allreduce_sum(sum(float((g.double() ** 2).sum()) for g in grads)) ** 0.5
