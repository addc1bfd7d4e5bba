"""A residual step from a PyTorch module: u_{n+1} = u_n + h_n f(u_n; θ_n), f given as ``torch.nn.Module``.

Needs the optional extra ``torch`` (``pip install 'gpubraid[torch]'``); torch is imported only when
a :class:`TorchStep` is built, so the rest of gpubraid works without it.

One module describes one layer's f: it maps a batch of states (B, *S) to (B, *S).  The L layers'
parameters are stacked, (L, *shape) per named parameter of the module, and the step's parameter
groups are the module's named parameters (names with ``.`` replaced by ``_``).  All L layers run as
one call: ``torch.func.functional_call`` + ``torch.func.vmap`` over layers for the forward step,
``torch.func.vjp`` (also under ``vmap``) for the adjoint and the parameter gradients.  Arrays cross
without copies: ``torch.from_numpy`` / ``Tensor.numpy`` on the CPU, DLPack with CuPy on a GPU.
Buffers of the module (if any) are constants shared by all layers.

The built-in :class:`~gpubraid.network.steps.DenseStep` and :class:`~gpubraid.network.steps.ConvStep` (fused CUDA
kernels on a GPU) stay the fast path; this bridge is for arbitrary layers.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..runtime.backend import Backend
from .steps import check_arrays


def _torch():
    try:
        import torch
        import torch.func  # noqa: F401
    except ImportError:
        raise UserError("TorchStep needs PyTorch: pip install 'gpubraid[torch]'") from None
    return torch


def to_tensor(torch, a, on_gpu: bool):
    """A tensor on the memory of ``a`` (a CuPy array when ``on_gpu``, else NumPy), or on a copy
    where torch cannot view it: negative strides (the adjoint's layers in solver order are a
    reversed view; torch has no negative strides, and its DLPack import aborts the process on them)
    or a read-only NumPy array.  ``ascontiguousarray`` would keep a negative stride on an axis of
    length 1: a copy does not."""
    if not on_gpu:
        a = np.asarray(a)
    if any(s < 0 for s in a.strides) or not (on_gpu or a.flags.writeable):
        a = a.copy()
    return torch.from_dlpack(a) if on_gpu else torch.from_numpy(a)


class TorchStep:
    """Residual step whose f(u; θ) is a PyTorch module (see the module docstring).

    Args:
        factory: callable with no arguments returning a fresh ``torch.nn.Module`` for one layer;
            called once for the template and, under a seeded generator, once per layer by
            :meth:`init_layer` (so a layer's initial parameters do not depend on the rank).
        state_shape: per-sample state shape S; the module maps (B, *S) -> (B, *S).
        backend: gpubraid backend; the module runs in its dtype (float64/float32) on its device.
        name: a name for :meth:`describe` (default: the module's class name).
        kwargs: JSON-able keyword arguments the factory is called with (``factory(**kwargs)``);
            recorded by :meth:`describe` together with the factory's import path, so that
            :func:`gpubraid.network.spec.network_from_spec` can rebuild the step.

    Shapes: u, lam (L, B, *S); params tuple of (L, *shape_i) in ``param_names`` order; h (L,).
    """

    def __init__(self, factory, state_shape, backend: Backend, name: str | None = None,
                 kwargs: dict | None = None):
        torch = self.torch = _torch()
        self.kwargs = dict(kwargs or {})
        self._factory = factory
        self.factory = (lambda: factory(**self.kwargs)) if self.kwargs else factory
        self.be, self.xp = backend, backend.xp
        self.state_shape = tuple(int(s) for s in state_shape)
        self.tdtype = {"float64": torch.float64, "float32": torch.float32}[np.dtype(backend.dtype).name]
        self.device = torch.device("cuda", self.xp.cuda.Device().id) if backend.is_gpu else torch.device("cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = self.factory()
        if not isinstance(module, torch.nn.Module):
            raise UserError(f"the TorchStep factory must return a torch.nn.Module; got {type(module).__name__}")
        self.module = module.to(device=self.device, dtype=self.tdtype)
        named = list(self.module.named_parameters())
        if not named:
            raise UserError("the module has no parameters")
        self._tnames = tuple(n for n, _ in named)
        self.param_names = tuple(n.replace(".", "_") for n in self._tnames)
        self.param_shapes = tuple(tuple(p.shape) for _, p in named)
        self.name = name or type(module).__name__
        from torch.func import functional_call, vjp, vmap

        def f(p, u):
            return functional_call(self.module, p, (u,))

        def vjp_u(p, u, lam):
            return vjp(lambda uu: f(p, uu), u)[1](lam)[0]

        def vjp_p(p, u, lam):
            return vjp(lambda pp: f(pp, u), p)[1](lam)[0]

        self._f = vmap(f)
        self._vjp_u = vmap(vjp_u)
        self._vjp_p = vmap(vjp_p)

    # -- zero-copy conversion ---------------------------------------------------------------------
    def _t(self, a):
        return to_tensor(self.torch, a, self.be.is_gpu)

    def _a(self, t):
        if self.be.is_gpu:
            return self.xp.from_dlpack(t.detach())
        return t.detach().numpy()

    def _params(self, params):
        if len(params) != len(self._tnames):
            raise UserError(f"TorchStep takes {len(self._tnames)} parameter groups {self.param_names}; "
                            f"got {len(params)}")
        return {n: self._t(p) for n, p in zip(self._tnames, params)}

    def _check(self, u, params, h):
        check_arrays(self, u, params, h)

    def _hb(self, h, ndim):
        return self._t(h).reshape((-1,) + (1,) * (ndim - 1))

    # -- the step protocol ------------------------------------------------------------------------
    def forward(self, u, params, h):
        """u + h f(u; θ) for every layer: (L, B, *S)."""
        self._check(u, params, h)
        U = self._t(u)
        with self.torch.no_grad():
            out = U + self._hb(h, u.ndim) * self._f(self._params(params), U)
        return self._a(out)

    def adjoint(self, u, lam, params, h):
        """lam + h (∂f/∂u)ᵀ lam at u for every layer: (L, B, *S)."""
        self._check(u, params, h)
        if tuple(lam.shape) != tuple(u.shape):
            raise UserError(f"adjoint must have the state's shape {tuple(u.shape)}; got {tuple(lam.shape)}")
        LAM = self._t(lam)
        out = LAM + self._hb(h, lam.ndim) * self._vjp_u(self._params(params), self._t(u), LAM)
        return self._a(out)

    def param_grad(self, u, lam, params, h):
        """h (∂f/∂θ)ᵀ lam summed over the batch: tuple of (L, *shape_i)."""
        self._check(u, params, h)
        g = self._vjp_p(self._params(params), self._t(u), self._t(lam))
        H = self._t(h)
        return tuple(self._a(H.reshape((-1,) + (1,) * (g[n].ndim - 1)) * g[n]) for n in self._tnames)

    # -- initialisation and description -----------------------------------------------------------
    def init_layer(self, rng: np.random.Generator, scale: float = 1.0):
        """One layer's initial parameters (float64 host arrays): the factory's own initialisation,
        run under a torch generator seeded from ``rng`` (the layer's stream), times ``scale``."""
        torch = self.torch
        seed = int(rng.integers(0, 2 ** 63 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = self.factory()
        named = dict(m.named_parameters())
        return tuple(named[n].detach().to("cpu", torch.float64).numpy() * scale for n in self._tnames)

    def describe(self) -> dict:
        """JSON-able: ``factory`` is the import path ``module:qualname`` of the factory (None for a
        lambda or a local function, which cannot be rebuilt from the description)."""
        from .imports import import_path

        return {"name": "torch", "module": self.name, "factory": import_path(self._factory),
                "kwargs": self.kwargs, "state_shape": list(self.state_shape),
                "param_names": list(self.param_names)}
