"""CUDA launchers for the fused residual-step kernels in ``kernels/*.cu``.

The kernels are compiled at run time by NVRTC through :class:`cupy.RawModule`, one module per
dtype (float32, float64), cached.  CuPy is imported lazily: this module imports without it, so the
pure helpers (:func:`kernel_source_dir`, the launch-geometry functions, :data:`NAME_EXPRESSIONS`)
serve the CPU emulation tests and the nvcc compile check as well.

Shapes (T = float32 or float64, one dtype for all arrays of a call):

    conv   u, lam (L, B, C, H, W)   K (L, C, C, 3, 3)   b (L, C)   h (L,)
    dense  u, lam (L, B, C)         K (L, C, C)         b (L, C)   h (L,)

``act`` is the activation's integer code (:data:`gpubraid.network.activations.CODES`).  The
launchers that take many layers in one launch (the dense step's layer sweeps and chains) are in
:mod:`gpubraid.runtime.cuda_sweeps`.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import UserError

# Launch geometry; must equal the GB_* macros of kernels/conv.cu and kernels/dense.cu (checked by
# tests/kernels/test_nvcc.py).
CONV_TILE_W = 16
CONV_TILE_H = 8
CONV_OCB = 8
CONV_GRAD_THREADS = 128
DENSE_THREADS = 256
DENSE_MAX_BLOCKS = 65535
SWEEP_THREADS = 128
SWEEP_MAX_C = 64
# Widths the layer sweeps and chains are compiled for (template argument CW: the state in registers,
# the loops unrolled), each in a module of its own, compiled when first used; any other width up to
# SWEEP_MAX_C runs the CW = 0 instances of the main module.  (Width 32 unrolled took ptxas about a
# minute for the four kernels in float64.)
SWEEP_WIDTHS = (4, 8, 16)
CONV_FORWARD, CONV_ACT_GRAD, CONV_TRANSPOSE = 0, 1, 2
DENSE_FORWARD, DENSE_ACT_GRAD = 0, 1
KERNEL_FILES = ("conv.cu", "dense.cu")
_INT32_LIMIT = 2**31
_CTYPES = {"float32": "float", "float64": "double"}
_DTYPE_NAMES = {np.dtype(name): name for name in _CTYPES}  # (NumPy's dtype.name is Python code: 2 µs a call)


def name_expressions(ctype: str, cw: int = 0) -> list[str]:
    """The template instances of module ``cw`` for C type ``ctype`` ("float" or "double"): for
    cw = 0 the main module (every kernel, the sweeps and chains at run-time width), for a width of
    :data:`SWEEP_WIDTHS` the sweeps and chains compiled for it."""
    sweeps = [f"dense_{kind}_kernel<{ctype}, {cw}>"
              for kind in ("sweep_forward", "sweep_backward", "chain_forward", "chain_adjoint")]
    if cw:
        return sweeps
    return [
        *(f"conv3x3_kernel<{ctype}, {m}>" for m in (CONV_FORWARD, CONV_ACT_GRAD, CONV_TRANSPOSE)),
        f"conv_param_grad_kernel<{ctype}>",
        *(f"dense_act_kernel<{ctype}, {m}>" for m in (DENSE_FORWARD, DENSE_ACT_GRAD)),
        f"dense_bias_grad_kernel<{ctype}>",
        *sweeps,
    ]


# Every instance of every module, per dtype (what the nvcc check compiles).
NAME_EXPRESSIONS = {dt: [n for cw in (0, *SWEEP_WIDTHS) for n in name_expressions(ct, cw)]
                    for dt, ct in _CTYPES.items()}


def kernel_source_dir() -> Path:
    """The directory holding the ``*.cu``/``*.cuh`` sources.

    The installed package data ``gpubraid._kernels`` when present, else ``<repo>/kernels`` of a
    source checkout (this file is ``<repo>/gpubraid/runtime/cuda.py``).
    """
    try:
        pkg = resources.files("gpubraid._kernels")
        path = Path(str(pkg))
        if (path / KERNEL_FILES[0]).is_file():
            return path
    except (ModuleNotFoundError, TypeError, NotImplementedError):
        pass
    path = Path(__file__).resolve().parents[2] / "kernels"
    if (path / KERNEL_FILES[0]).is_file():
        return path
    raise FileNotFoundError("gpubraid CUDA kernel sources not found (neither package gpubraid._kernels "
                            f"nor {path})")


def module_source() -> str:
    """One translation unit including every kernel file (compiled with -I kernel_source_dir())."""
    return "".join(f'#include "{f}"\n' for f in KERNEL_FILES)


# -- launch geometry (pure functions: shared with the CPU emulation tests) ---------------------------
def conv_launch(L: int, B: int, C: int, H: int, W: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) of conv3x3_kernel for states (L, B, C, H, W)."""
    tiles = -(-W // CONV_TILE_W) * -(-H // CONV_TILE_H)
    return (tiles * L * B, -(-C // CONV_OCB), 1), (CONV_TILE_W, CONV_TILE_H, 1)


def conv_grad_launch(L: int, C: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) of conv_param_grad_kernel: one block per (l, o, i)."""
    return (L * C * C, 1, 1), (CONV_GRAD_THREADS, 1, 1)


def dense_launch(n: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) of dense_act_kernel for n = L·B·C elements (grid-stride loop)."""
    return (max(1, min(-(-n // DENSE_THREADS), DENSE_MAX_BLOCKS)), 1, 1), (DENSE_THREADS, 1, 1)


def dense_bias_grad_launch(L: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) of dense_bias_grad_kernel: one block per layer."""
    return (L, 1, 1), (DENSE_THREADS, 1, 1)


def sweep_width(C: int) -> int:
    """The template argument CW of the sweep and chain kernels for width C: C itself when they are
    compiled for it (:data:`SWEEP_WIDTHS`), else 0 (the run-time width)."""
    return C if C in SWEEP_WIDTHS else 0


def dense_sweep_launch(B: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) of the dense layer sweeps: one thread per sample."""
    return (max(1, -(-B // SWEEP_THREADS)), 1, 1), (SWEEP_THREADS, 1, 1)


# -- module cache ------------------------------------------------------------------------------------
def _cupy():
    import cupy

    return cupy


def _nvtx(name: str):
    import nvtx

    return nvtx.annotate(f"kernel:{name}", domain="gpubraid")


@functools.lru_cache(maxsize=None)
def _module(dtype_name: str, device: int, cw: int = 0):
    """The compiled RawModule ``cw`` (:func:`name_expressions`) for ``dtype_name`` on ``device``
    (cached per device: a module's functions are loaded on the device current when first used)."""
    cp = _cupy()
    return cp.RawModule(code=module_source(),
                        options=("-std=c++17", f"-I{kernel_source_dir()}"),
                        name_expressions=name_expressions(_CTYPES[dtype_name], cw))


@functools.lru_cache(maxsize=None)
def _function(module, name: str):
    """``module.get_function(name)``, looked up once (CuPy makes a new function object per call)."""
    return module.get_function(name)


def _kernel(name: str, dtype, cw: int = 0):
    """The kernel ``name`` ("..._kernel<{T}>") of module ``cw`` for ``dtype`` (float32 or float64)
    on the current device."""
    dt = _DTYPE_NAMES[np.dtype(dtype)]
    return _function(_module(dt, _cupy().cuda.Device().id, cw), name.format(T=_CTYPES[dt]))


# -- argument checking -------------------------------------------------------------------------------
def _prepare(arrays: dict, shapes: dict):
    """Check dtype, device and shape; return C-contiguous versions in the same order."""
    cp = _cupy()
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) != 1 or np.dtype(next(iter(dtypes))) not in _DTYPE_NAMES:
        raise UserError("CUDA kernels need all arrays float32 or all float64; got "
                        + ", ".join(f"{k}: {a.dtype}" for k, a in arrays.items()))
    dev = cp.cuda.Device().id
    out = []
    for k, a in arrays.items():
        if not isinstance(a, cp.ndarray):
            raise UserError(f"{k} must be a CuPy array; got {type(a).__name__}")
        if a.device.id != dev:
            raise UserError(f"{k} lives on device {a.device.id}, the current device is {dev}")
        if tuple(a.shape) != tuple(shapes[k]):
            raise UserError(f"{k} must have shape {tuple(shapes[k])}; got {tuple(a.shape)}")
        out.append(cp.ascontiguousarray(a))
    return out


def _conv_args(u, K, b, h, lam=None):
    if u.ndim != 5:
        raise UserError(f"conv states must have shape (L, B, C, H, W); got {tuple(u.shape)}")
    L, B, C, H, W = (int(s) for s in u.shape)
    if B * H * W >= _INT32_LIMIT or conv_launch(L, B, C, H, W)[0][0] >= _INT32_LIMIT or L * C * C >= _INT32_LIMIT:
        raise UserError(f"conv states {tuple(u.shape)} too large for the kernels' 32-bit indexing")
    arrays = {"u": u, "K": K, "b": b, "h": h}
    shapes = {"u": (L, B, C, H, W), "K": (L, C, C, 3, 3), "b": (L, C), "h": (L,)}
    if lam is not None:
        arrays["lam"], shapes["lam"] = lam, (L, B, C, H, W)
    return (L, B, C, H, W), _prepare(arrays, shapes)


def _i32(*v):
    return tuple(np.int32(x) for x in v)


def _output(out, like, *inputs):
    """``out`` when a kernel may write its result there (a C-contiguous CuPy array of ``like``'s shape
    and dtype on its device, apart from every input), else a new array like ``like``."""
    cp = _cupy()
    if (isinstance(out, cp.ndarray) and out.shape == like.shape and out.dtype == like.dtype
            and out.flags.c_contiguous and out.device.id == like.device.id
            and not any(cp.may_share_memory(out, x) for x in inputs)):
        return out
    return cp.empty_like(like)


# -- conv ---------------------------------------------------------------------------------------------
def conv_forward(u, K, b, h, act: int, out=None):
    """u + h·σ(conv3x3(u, K) + b) for states u (L, B, C, H, W); into ``out`` when the kernel can write
    there (:func:`_output`), else a new array; returns it."""
    (L, B, C, H, W), (u, K, b, h) = _conv_args(u, K, b, h)
    out = _output(out, u, u, K, b, h)
    grid, block = conv_launch(L, B, C, H, W)
    with _nvtx("conv_forward"):
        _kernel("conv3x3_kernel<{T}, 0>", u.dtype)(grid, block, (u, K, b, h, u, out, *_i32(L, B, C, H, W, act)))
    return out


def _conv_act_grad(u, lam, K, b, h, act, dims):
    L, B, C, H, W = dims
    a = _cupy().empty_like(lam)
    grid, block = conv_launch(L, B, C, H, W)
    _kernel("conv3x3_kernel<{T}, 1>", u.dtype)(grid, block, (u, K, b, h, lam, a, *_i32(L, B, C, H, W, act)))
    return a


def _conv_transpose(a, lam, K, b, h, act, dims, out):
    """lam + h·convᵀ(a, K) into ``out``."""
    grid, block = conv_launch(*dims)
    _kernel("conv3x3_kernel<{T}, 2>", a.dtype)(grid, block, (a, K, b, h, lam, out, *_i32(*dims, act)))
    return out


def _conv_grads(a, u, K, b, h, dims):
    """(dK, db) from a = σ'(z) ⊙ lam: fixed-order block reductions, no atomics (deterministic)."""
    L, B, C, H, W = dims
    dK, db = _cupy().empty_like(K), _cupy().empty_like(b)
    grid, block = conv_grad_launch(L, C)
    _kernel("conv_param_grad_kernel<{T}>", a.dtype)(grid, block, (a, u, h, dK, db, *_i32(L, B, C, H, W)))
    return dK, db


def conv_adjoint(u, lam, K, b, h, act: int):
    """lam + h·Kᵀ(σ'(z) ⊙ lam), z = conv3x3(u, K) + b recomputed (not stored by the forward step).

    Two launches: a = σ'(z) ⊙ lam into a scratch buffer, then lam + h·convᵀ(a, K).
    Shapes: u, lam (L, B, C, H, W); returns (L, B, C, H, W).
    """
    dims, (u, K, b, h, lam) = _conv_args(u, K, b, h, lam)
    with _nvtx("conv_adjoint"):
        a = _conv_act_grad(u, lam, K, b, h, act, dims)
        return _conv_transpose(a, lam, K, b, h, act, dims, _cupy().empty_like(lam))


def conv_param_grad(u, lam, K, b, h, act: int):
    """(dK (L, C, C, 3, 3), db (L, C)): h·Σ_{n,pixels} a ⊗ shifted u and h·Σ a, a = σ'(z) ⊙ lam."""
    dims, (u, K, b, h, lam) = _conv_args(u, K, b, h, lam)
    with _nvtx("conv_param_grad"):
        return _conv_grads(_conv_act_grad(u, lam, K, b, h, act, dims), u, K, b, h, dims)


def conv_adjoint_grad(u, lam, K, b, h, act: int, out=None):
    """(conv_adjoint, *conv_param_grad) from one a = σ'(z) ⊙ lam: three launches where the two
    calls take four; the adjoint into ``out`` when the kernel can write there (:func:`_output`)."""
    dims, (u, K, b, h, lam) = _conv_args(u, K, b, h, lam)
    with _nvtx("conv_adjoint_grad"):
        a = _conv_act_grad(u, lam, K, b, h, act, dims)
        adj = _conv_transpose(a, lam, K, b, h, act, dims, _output(out, lam, u, lam, K, b, h, a))
        return (adj, *_conv_grads(a, u, K, b, h, dims))


# -- dense --------------------------------------------------------------------------------------------
def _dense_args(u, K, b, h, lam=None):
    if u.ndim != 3:
        raise UserError(f"dense states must have shape (L, B, C); got {tuple(u.shape)}")
    L, B, C = (int(s) for s in u.shape)
    arrays = {"u": u, "K": K, "b": b, "h": h}
    shapes = {"u": (L, B, C), "K": (L, C, C), "b": (L, C), "h": (L,)}
    if lam is not None:
        arrays["lam"], shapes["lam"] = lam, (L, B, C)
    return (L, B, C), _prepare(arrays, shapes)


def _dense_act(mode, z, b, h, r, act, dims, out=None):
    L, B, C = dims
    out = _cupy().empty_like(r) if out is None else out
    grid, block = dense_launch(L * B * C)
    _kernel(f"dense_act_kernel<{{T}}, {mode}>", r.dtype)(grid, block, (z, b, h, r, out, *_i32(L, B, C, act)))
    return out


def dense_forward(u, K, b, h, act: int, out=None):
    """u + h·σ(u Kᵀ + b) for states u (L, B, C), K (L, C, C); batched GEMM plus a fused epilogue; into
    ``out`` when the epilogue can write there (:func:`_output`), else a new array; returns it."""
    dims, (u, K, b, h) = _dense_args(u, K, b, h)
    cp = _cupy()
    with _nvtx("dense_forward"):
        z = cp.matmul(u, K.transpose(0, 2, 1))
        return _dense_act(DENSE_FORWARD, z, b, h, u, act, dims, _output(out, u, u, K, b, h, z))


def _dense_act_grad(u, lam, K, b, h, act, dims):
    """a = σ'(u Kᵀ + b) ⊙ lam: one batched GEMM and the epilogue."""
    return _dense_act(DENSE_ACT_GRAD, _cupy().matmul(u, K.transpose(0, 2, 1)), b, h, lam, act, dims)


def _dense_transpose(a, lam, K, h, out=None):
    """lam + h·a K, into ``out`` when given."""
    cp = _cupy()
    return cp.add(lam, h[:, None, None] * cp.matmul(a, K), out=out)


def dense_adjoint(u, lam, K, b, h, act: int):
    """lam + h·(σ'(u Kᵀ + b) ⊙ lam) K for states (L, B, C)."""
    dims, (u, K, b, h, lam) = _dense_args(u, K, b, h, lam)
    with _nvtx("dense_adjoint"):
        return _dense_transpose(_dense_act_grad(u, lam, K, b, h, act, dims), lam, K, h)


def dense_param_grad(u, lam, K, b, h, act: int):
    """(dK (L, C, C), db (L, C)) = (h·aᵀ u, h·Σ_n a) with a = σ'(u Kᵀ + b) ⊙ lam."""
    dims, (u, K, b, h, lam) = _dense_args(u, K, b, h, lam)
    with _nvtx("dense_param_grad"):
        return _dense_grads(_dense_act_grad(u, lam, K, b, h, act, dims), u, h)


def dense_adjoint_grad(u, lam, K, b, h, act: int, out=None):
    """(dense_adjoint, *dense_param_grad) from one a = σ'(u Kᵀ + b) ⊙ lam: one GEMM and one epilogue
    fewer than the two calls; the adjoint into ``out`` when it can go there (:func:`_output`)."""
    dims, (u, K, b, h, lam) = _dense_args(u, K, b, h, lam)
    with _nvtx("dense_adjoint_grad"):
        a = _dense_act_grad(u, lam, K, b, h, act, dims)
        adj = _dense_transpose(a, lam, K, h, _output(out, lam, u, lam, K, b, h, a))
        return (adj, *_dense_grads(a, u, h))


def _dense_grads(a, u, h):
    """(dK (L, C, C), db (L, C)) = (h·aᵀ u, h·Σ_n a) from a = σ'(z) ⊙ λ (L, B, C) and the states u
    (L, B, C); the bias sums by dense_bias_grad_kernel (fixed order: deterministic)."""
    L, B, C = (int(s) for s in a.shape)
    dK = h[:, None, None] * _cupy().matmul(a.transpose(0, 2, 1), u)
    db = _cupy().empty((L, C), dtype=a.dtype)
    grid, block = dense_bias_grad_launch(L)
    _kernel("dense_bias_grad_kernel<{T}>", a.dtype)(grid, block, (a, h, db, *_i32(L, B, C)))
    return dK, db
