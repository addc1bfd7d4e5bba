"""The CUDA kernels of kernels/*.cu, compiled for the CPU by g++ and run against the NumPy steps.

The shim (tests/kernels/emulation/cuda_shim.h) runs each block's threads as fibers with a real barrier,
so the shared-memory tiling and the block reductions are exercised as written; the planted-bug
tests compile edited copies of the sources and check that the comparisons then fail.
"""
from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from gpubraid.network.activations import ACTIVATIONS
from gpubraid.network.steps import ConvStep, DenseStep
from gpubraid.runtime import cuda, cuda_sweeps
from gpubraid.runtime.backend import Backend, resolve_backend

_spec = importlib.util.spec_from_file_location("gpubraid_emulation_harness",
                                               Path(__file__).parent / "emulation" / "harness.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

if harness.gxx() is None:
    pytest.skip("g++ not found: CUDA kernel emulation needs it", allow_module_level=True)

KERNEL_DIR = cuda.kernel_source_dir()
DTYPES = (np.float64, np.float32)
TOL = {np.float64: 1e-12, np.float32: 2e-5}
ACTS = tuple(ACTIVATIONS)

# (L, B, C, H, W): single pixel rows, partial tiles in x and y, exact tiles, channel counts below,
# at and above the 8-channel blocking (remainder groups).
CONV_SHAPES = [
    (3, 2, 1, 5, 7),
    (2, 3, 3, 9, 17),
    (2, 2, 4, 8, 16),
    (3, 2, 8, 11, 19),
]
CONV_EXTRA_SHAPES = [
    (1, 1, 10, 1, 33),
    (2, 1, 9, 20, 3),
]
DENSE_SHAPES = [(3, 5, 1), (2, 7, 3), (4, 67, 8), (2, 300, 4)]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    out = tmp_path_factory.mktemp("emu") / "kernels_emu.so"
    return harness.Emulator(harness.build(KERNEL_DIR, out))


def conv_problem(shape, dtype, seed=0):
    """Random states, adjoints and per-interval parameters (different K, b, h per interval)."""
    L, B, C, H, W = shape
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(shape).astype(dtype)
    lam = rng.standard_normal(shape).astype(dtype)
    K = (rng.standard_normal((L, C, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = (0.3 * rng.standard_normal((L, C))).astype(dtype)
    h = rng.uniform(0.1, 1.0, L).astype(dtype)
    return u, lam, K, b, h


def dense_problem(shape, dtype, seed=0):
    L, B, C = shape
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(shape).astype(dtype)
    lam = rng.standard_normal(shape).astype(dtype)
    K = (rng.standard_normal((L, C, C)) / np.sqrt(C)).astype(dtype)
    b = (0.3 * rng.standard_normal((L, C))).astype(dtype)
    h = rng.uniform(0.1, 1.0, L).astype(dtype)
    return u, lam, K, b, h


def rel_err(got, ref):
    scale = max(float(np.max(np.abs(ref))), np.finfo(ref.dtype).tiny)
    return float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) / scale


def assert_close(got, ref, dtype, what):
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    assert np.all(np.isfinite(got)), f"{what}: non-finite entries (unwritten output?)"
    err = rel_err(got, ref)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:.0e}"


def conv_results(emu, step, u, lam, K, b, h):
    """{name: (emulated, reference)} for every conv kernel."""
    code = step.activation.code
    gK, gb = emu.conv_param_grad(u, lam, K, b, h, code)
    rK, rb = step.param_grad(u, lam, (K, b), h)
    return {
        "forward": (emu.conv_forward(u, K, b, h, code), step.forward(u, (K, b), h)),
        "adjoint": (emu.conv_adjoint(u, lam, K, b, h, code), step.adjoint(u, lam, (K, b), h)),
        "dK": (gK, rK),
        "db": (gb, rb),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv_kernels_match_numpy(emu, shape, act, dtype):
    L, B, C, H, W = shape
    step = ConvStep(C, H, W, act, resolve_backend("numpy", np.dtype(dtype).name))
    for name, (got, ref) in conv_results(emu, step, *conv_problem(shape, dtype)).items():
        assert_close(got, ref, dtype, f"conv {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", CONV_EXTRA_SHAPES, ids=str)
def test_conv_kernels_odd_shapes(emu, shape, dtype):
    L, B, C, H, W = shape
    step = ConvStep(C, H, W, "smoothrelu", resolve_backend("numpy", np.dtype(dtype).name))
    for name, (got, ref) in conv_results(emu, step, *conv_problem(shape, dtype, seed=1)).items():
        assert_close(got, ref, dtype, f"conv {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=str)
def test_dense_kernels_match_numpy(emu, shape, act, dtype):
    L, B, C = shape
    step = DenseStep(C, act, resolve_backend("numpy", np.dtype(dtype).name))
    u, lam, K, b, h = dense_problem(shape, dtype)
    code = step.activation.code
    assert_close(emu.dense_forward(u, K, b, h, code), step.forward(u, (K, b), h), dtype, "dense forward")
    assert_close(emu.dense_adjoint(u, lam, K, b, h, code), step.adjoint(u, lam, (K, b), h), dtype,
                 "dense adjoint")
    for name, got, ref in zip(("dK", "db"), emu.dense_param_grad(u, lam, K, b, h, code),
                              step.param_grad(u, lam, (K, b), h)):
        assert_close(got, ref, dtype, f"dense {name}")


def test_dense_grid_stride_loop(emu):
    """dense_act_kernel is correct with fewer threads than elements (grid-stride loop)."""
    u, lam, K, b, h = dense_problem((3, 50, 7), np.float64)
    step = DenseStep(7, "tanh", resolve_backend("numpy", "float64"))
    z = np.ascontiguousarray(u @ K.transpose(0, 2, 1))
    out = np.full_like(u, np.nan)
    emu.lib.emu_dense_act_double_0(harness._geom((2, 1, 1), (64, 1, 1)),
                                   *map(harness._ptr, (z, b, h, u, out)),
                                   *map(harness.ctypes.c_int, (3, 50, 7, 0)))
    assert_close(out, step.forward(u, (K, b), h), np.float64, "dense forward, 2 blocks of 64")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_param_grad_deterministic(emu, dtype):
    """Two runs of the gradient kernels give bitwise equal results."""
    u, lam, K, b, h = conv_problem((2, 3, 4, 9, 17), dtype, seed=3)
    first = emu.conv_param_grad(u, lam, K, b, h, 2)
    second = emu.conv_param_grad(u, lam, K, b, h, 2)
    for x, y in zip(first, second):
        assert x.tobytes() == y.tobytes()
    ud, ld, Kd, bd, hd = dense_problem((2, 37, 5), dtype, seed=3)
    assert emu.dense_param_grad(ud, ld, Kd, bd, hd, 0)[1].tobytes() == \
        emu.dense_param_grad(ud, ld, Kd, bd, hd, 0)[1].tobytes()


def test_launch_geometry_matches_kernel_macros():
    """The launch constants of gpubraid.runtime.cuda equal the GB_* macros the kernels are compiled with."""
    src = "".join((KERNEL_DIR / f).read_text() for f in cuda.KERNEL_FILES)
    macros = dict(re.findall(r"#define (GB_\w+) (\d+)", src))
    assert int(macros["GB_CONV_TILE_W"]) == cuda.CONV_TILE_W
    assert int(macros["GB_CONV_TILE_H"]) == cuda.CONV_TILE_H
    assert int(macros["GB_CONV_OCB"]) == cuda.CONV_OCB
    assert int(macros["GB_CONV_GRAD_THREADS"]) == cuda.CONV_GRAD_THREADS
    assert int(macros["GB_DENSE_THREADS"]) == cuda.DENSE_THREADS
    assert int(macros["GB_SWEEP_THREADS"]) == cuda.SWEEP_THREADS
    assert int(macros["GB_SWEEP_MAX_C"]) == cuda.SWEEP_MAX_C
    assert int(macros["GB_CONV_FORWARD"]) == cuda.CONV_FORWARD
    assert int(macros["GB_CONV_ACT_GRAD"]) == cuda.CONV_ACT_GRAD
    assert int(macros["GB_CONV_TRANSPOSE"]) == cuda.CONV_TRANSPOSE
    assert int(macros["GB_DENSE_FORWARD"]) == cuda.DENSE_FORWARD
    assert int(macros["GB_DENSE_ACT_GRAD"]) == cuda.DENSE_ACT_GRAD


# -- planted bugs: the harness must see each of them -------------------------------------------------
# name: (file, original text, planted text, the comparisons that must fail)
PLANTED = {
    # No barriers at all: threads read the shared tiles before the others have filled them.
    "no_syncthreads": ("conv.cu", "__syncthreads();", ";", {"forward", "adjoint", "dK", "db"}),
    # Only the barrier that protects the tiles from the next channel chunk is missing.
    "no_sync_before_reload": ("conv.cu", "__syncthreads();  // the next chunk", ";  // the next chunk",
                              {"forward", "adjoint", "dK", "db"}),
    # Off-by-one in the halo: the input tile is shifted one pixel in x.
    "halo_off_by_one": ("conv.cu", "gx = x0 + sx - 1", "gx = x0 + sx", {"forward", "adjoint", "dK", "db"}),
    # The adjoint forgets to flip the kernel in space.
    "adjoint_no_flip": ("conv.cu", "(8 - tap)", "(tap)", {"adjoint"}),
    # The tree reduction starts at a quarter of the block and drops half of the partial sums.
    "reduction_half": ("conv.cu", "for (int s = NT / 2;", "for (int s = NT / 4;", {"dK", "db"}),
    # The activation derivative of smoothrelu uses 2ε = 0.4 instead of 0.2.
    "dsmoothrelu_slope": ("activations.cuh", "return (z + eps) / T(0.2);", "return (z + eps) / T(0.4);",
                          {"adjoint", "dK", "db"}),
}


@pytest.mark.parametrize("bug", PLANTED)
def test_planted_bug_is_caught(bug, tmp_path):
    """An edited copy of the kernels with one planted bug fails exactly the expected comparisons."""
    fname, old, new, must_fail = PLANTED[bug]
    planted = tmp_path / "kernels"
    shutil.copytree(KERNEL_DIR, planted, ignore=shutil.ignore_patterns("*.md", "__pycache__"))
    src = (planted / fname).read_text()
    assert old in src, f"planted bug {bug!r} no longer applies to {fname}"
    (planted / fname).write_text(src.replace(old, new))
    emu_bad = harness.Emulator(harness.build(planted, tmp_path / "bad.so"))

    # 10 channels: two output-channel groups and two input-channel chunks per block.
    shape, dtype = (2, 3, 10, 11, 19), np.float64
    L, B, C, H, W = shape
    step = ConvStep(C, H, W, "smoothrelu", resolve_backend("numpy", "float64"))
    failed = set()
    for name, (got, ref) in conv_results(emu_bad, step, *conv_problem(shape, dtype)).items():
        try:
            assert_close(got, ref, dtype, name)
        except AssertionError:
            failed.add(name)
    assert failed == must_fail, f"planted bug {bug!r}: failed {sorted(failed)}, expected {sorted(must_fail)}"


# -- the CuPy launchers of gpubraid.runtime.cuda, run on the emulator through a stand-in "cupy" ---------------
class _HostArray(np.ndarray):
    """A NumPy array that answers ``.device.id`` like a CuPy array on device 0."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)


def _host(a):
    return np.asarray(a).view(_HostArray)


class _FakeKernel:
    """Runs a RawModule function on the emulator; checks the argument C types like CuPy would need."""

    def __init__(self, lib, name):
        m = re.fullmatch(r"(\w+)_kernel<(float|double)(?:, (\d+))?>", name)
        assert m, name
        base, ctype, mode = m.groups()
        self.ctype = ctype
        self.fn = getattr(lib, f"emu_{base}_{ctype}" + (f"_{mode}" if mode is not None else ""))

    def __call__(self, grid, block, args):
        cargs = []
        for a in args:
            if a is None:  # CuPy passes None as a null pointer
                cargs.append(ctypes.c_void_p(None))
            elif isinstance(a, np.ndarray):  # CuPy passes a view's start, whatever its strides
                assert a.dtype == harness._CT_INV[self.ctype]
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            elif type(a) is np.int64:
                cargs.append(ctypes.c_longlong(int(a)))
            else:
                assert type(a) is np.int32, f"scalar {a!r} passed as {type(a).__name__}, not numpy.int32/int64"
                cargs.append(ctypes.c_int(int(a)))
        self.fn(harness._geom(grid, block), *cargs)


def _fake_cupy_module(lib):
    """A module standing in for cupy whose RawModule launches the kernels of the emulated ``lib``."""
    fake = types.ModuleType("cupy")
    fake.ndarray = _HostArray
    fake.empty = lambda shape, dtype=float: _host(np.empty(shape, dtype))
    fake.empty_like = lambda a: _host(np.empty_like(a))
    fake.asarray = lambda a, dtype=None, order=None: _host(np.asarray(a, dtype=dtype, order=order))
    fake.ascontiguousarray = lambda a: _host(np.ascontiguousarray(a))
    fake.matmul = lambda a, b: _host(np.matmul(a, b))
    fake.add = lambda a, b, out=None: _host(np.add(a, b)) if out is None else np.add(a, b, out=out)
    fake.may_share_memory = np.may_share_memory
    fake.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=0))

    class RawModule:
        def __init__(self, code, options, name_expressions):
            assert any(o.startswith("-I") for o in options)
            self.names = list(name_expressions)

        def get_function(self, name):
            assert name in self.names, name
            return _FakeKernel(lib, name)

    fake.RawModule = RawModule
    return fake


@pytest.fixture
def fake_cupy(emu, monkeypatch):
    """A module standing in for cupy whose RawModule launches the emulated kernels."""
    fake = _fake_cupy_module(emu.lib)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    cuda._module.cache_clear()
    yield fake
    cuda._module.cache_clear()


@pytest.fixture
def planted_cupy(tmp_path, monkeypatch):
    """``plant(old, new)``: a stand-in "cupy" whose kernels are dense.cu with ``old`` replaced by
    ``new`` (compiled for the emulator), put in place of cupy for the test."""

    def plant(old, new):
        planted = tmp_path / "kernels"
        shutil.copytree(KERNEL_DIR, planted, ignore=shutil.ignore_patterns("*.md", "__pycache__"))
        src = (planted / "dense.cu").read_text()
        assert old in src, "the planted bug no longer applies to dense.cu"
        (planted / "dense.cu").write_text(src.replace(old, new))
        fake = _fake_cupy_module(harness.Emulator(harness.build(planted, tmp_path / "bad.so")).lib)
        monkeypatch.setitem(sys.modules, "cupy", fake)
        cuda._module.cache_clear()
        return fake

    yield plant
    cuda._module.cache_clear()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_launchers_and_step_dispatch(fake_cupy, dtype):
    """ConvStep/DenseStep on a "cupy" backend go through gpubraid.runtime.cuda's launchers to the kernels."""
    gpu = Backend("cupy", fake_cupy, dtype, 0)
    cpu = resolve_backend("numpy", np.dtype(dtype).name)
    shape = (2, 3, 10, 11, 19)
    u, lam, K, b, h = conv_problem(shape, dtype, seed=5)
    # A strided state exercises the contiguous copy.
    u_strided = np.asfortranarray(u)
    dev = [_host(x) for x in (u_strided, lam, K, b, h)]
    for act in ACTS:
        g, c = ConvStep(10, 11, 19, act, gpu), ConvStep(10, 11, 19, act, cpu)
        assert_close(np.asarray(g.forward(dev[0], (dev[2], dev[3]), dev[4])), c.forward(u, (K, b), h), dtype,
                     "conv forward")
        assert_close(np.asarray(g.adjoint(dev[0], dev[1], (dev[2], dev[3]), dev[4])),
                     c.adjoint(u, lam, (K, b), h), dtype, "conv adjoint")
        for name, got, ref in zip(("dK", "db"), g.param_grad(dev[0], dev[1], (dev[2], dev[3]), dev[4]),
                                  c.param_grad(u, lam, (K, b), h)):
            assert_close(np.asarray(got), ref, dtype, f"conv {name}")

    u, lam, K, b, h = dense_problem((3, 37, 6), dtype, seed=5)
    dev = [_host(x) for x in (u, lam, K, b, h)]
    g, c = DenseStep(6, "tanh", gpu), DenseStep(6, "tanh", cpu)
    assert_close(np.asarray(g.forward(dev[0], (dev[2], dev[3]), dev[4])), c.forward(u, (K, b), h), dtype,
                 "dense forward")
    assert_close(np.asarray(g.adjoint(dev[0], dev[1], (dev[2], dev[3]), dev[4])), c.adjoint(u, lam, (K, b), h),
                 dtype, "dense adjoint")
    for name, got, ref in zip(("dK", "db"), g.param_grad(dev[0], dev[1], (dev[2], dev[3]), dev[4]),
                              c.param_grad(u, lam, (K, b), h)):
        assert_close(np.asarray(got), ref, dtype, f"dense {name}")


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_the_pair_writes_into_its_output_and_computes_a_once(fake_cupy, kind, monkeypatch):
    """On a "cupy" backend forward_keep and adjoint_grad (the per-layer sweeps, e.g. the conv step's)
    write into the caller's rows (no copy), compute σ'(z) ⊙ λ once for the adjoint and the gradient
    (conv: 3 launches, not 4), equal the NumPy step's forward, adjoint and param_grad, and stay right
    when ``out`` overlaps λ."""
    gpu, cpu = Backend("cupy", fake_cupy, np.float64, 0), resolve_backend("numpy", "float64")
    if kind == "conv":
        u, lam, K, b, h = conv_problem((2, 3, 5, 6, 7), np.float64, seed=8)
        g, c = ConvStep(5, 6, 7, "tanh", gpu), ConvStep(5, 6, 7, "tanh", cpu)
    else:
        u, lam, K, b, h = dense_problem((2, 9, 6), np.float64, seed=8)
        g, c = DenseStep(6, "tanh", gpu), DenseStep(6, "tanh", cpu)
    launches = []
    make = _FakeKernel.__call__
    monkeypatch.setattr(_FakeKernel, "__call__", lambda self, *a: launches.append(self.fn.__name__) or make(self, *a))
    params, dev = (_host(K), _host(b)), [_host(x) for x in (u, lam, h)]
    out = _host(np.full(u.shape, np.nan))
    assert g.forward_keep(dev[0], params, dev[2], out) is None
    assert_close(np.asarray(out), c.forward(u, (K, b), h), np.float64, f"{kind} forward_keep into out")
    launches.clear()
    address = out.ctypes.data
    grads = g.adjoint_grad(dev[0], dev[1], params, dev[2], None, out)
    assert out.ctypes.data == address
    assert_close(np.asarray(out), c.adjoint(u, lam, (K, b), h), np.float64, f"{kind} adjoint_grad into out")
    for got, ref in zip(grads, c.param_grad(u, lam, (K, b), h)):
        assert_close(np.asarray(got), ref, np.float64, f"{kind} adjoint_grad gradient")
    assert sum("act" in n or "conv3x3_double_1" in n for n in launches) == 1, launches
    if kind == "conv":
        assert len(launches) == 3, launches
    lam_dev = _host(lam.copy())
    g.adjoint_grad(dev[0], lam_dev, params, dev[2], None, lam_dev)  # out is λ itself
    assert_close(np.asarray(lam_dev), c.adjoint(u, lam, (K, b), h), np.float64, f"{kind} adjoint_grad in place")

def test_launchers_check_arguments(fake_cupy):
    from gpubraid.errors import UserError

    u, lam, K, b, h = conv_problem((1, 2, 3, 4, 5), np.float64)
    with pytest.raises(UserError, match="float32 or all float64"):
        cuda.conv_forward(_host(u), _host(K.astype(np.float32)), _host(b), _host(h), 0)
    with pytest.raises(UserError, match="shape"):
        cuda.conv_forward(_host(u), _host(K[:, :2]), _host(b), _host(h), 0)
    with pytest.raises(UserError, match="CuPy array"):
        cuda.conv_forward(u, _host(K), _host(b), _host(h), 0)


# -- the dense layer sweeps: one launch for a block of layers ------------------------------------------
# (n, B, C): one layer; several blocks of SWEEP_THREADS samples; every width the kernels are compiled
# for (cuda.SWEEP_WIDTHS: 4, 8, 16) and the run-time width below, between and above them.
SWEEP_SHAPES = [(1, 5, 1), (3, 7, 3), (2, 9, 4), (4, 300, 8), (3, 11, 16), (2, 6, 32), (2, 130, 33)]


def sweep_problem(shape, dtype, seed=0):
    n, B, C = shape
    rng = np.random.default_rng(seed)
    u0, lam_n = rng.standard_normal((B, C)).astype(dtype), rng.standard_normal((B, C)).astype(dtype)
    K = (rng.standard_normal((n, C, C)) / np.sqrt(C)).astype(dtype)
    b = (0.3 * rng.standard_normal((n, C))).astype(dtype)
    h = rng.uniform(0.1, 1.0, n).astype(dtype)
    return u0, lam_n, K, b, h


def sweep_reference(step, u0, lam_n, K, b, h):
    """States (n + 1, B, C), adjoints (n + 1, B, C) and layer gradients (n, C, C), (n, C) from one
    forward / adjoint / param_grad call per layer of the NumPy step."""
    n = len(h)
    one = lambda i: (K[i:i + 1], b[i:i + 1])  # noqa: E731
    us = [u0]
    for i in range(n):
        us.append(step.forward(us[i][None], one(i), h[i:i + 1])[0])
    lams, gK, gb = [lam_n], np.zeros_like(K), np.zeros_like(b)
    for i in reversed(range(n)):
        dK, db = step.param_grad(us[i][None], lams[0][None], one(i), h[i:i + 1])
        gK[i], gb[i] = dK[0], db[0]
        lams.insert(0, step.adjoint(us[i][None], lams[0][None], one(i), h[i:i + 1])[0])
    return np.stack(us), np.stack(lams), gK, gb


def sweep_results(step, u0, lam_n, K, b, h, keep):
    """{name: result} of DenseStep's forward_block, backward_block and backward_through on the
    "cupy" backend; the states live in a wider buffer (a sample block of a larger batch: layers
    (B + 3)·C elements apart)."""
    n, (B, C) = len(h), u0.shape
    params, hd = (_host(K), _host(b)), _host(h)
    buf = _host(np.full((n + 1, B + 3, C), np.nan, dtype=u0.dtype))
    U = buf[:, 1:B + 1]
    U[0] = u0
    kept = step.forward_block(U, params, hd, keep)
    assert kept is not NotImplemented and (kept is not None) == keep
    Lam = _host(np.full((n + 1, B, C), np.nan, dtype=u0.dtype))
    Lam[n] = lam_n
    grads = (_host(np.zeros_like(K)), _host(np.zeros_like(b)))
    assert step.backward_block(U, Lam, params, hd, grads, kept)
    lam, through = _host(lam_n.copy()), (_host(np.zeros_like(K)), _host(np.zeros_like(b)))
    assert step.backward_through(U, lam, params, hd, through, step.forward_block(U, params, hd, keep))
    return {"states": np.asarray(U), "adjoints": np.asarray(Lam), "dK": np.asarray(grads[0]),
            "db": np.asarray(grads[1]), "through λ_0": np.asarray(lam), "through dK": np.asarray(through[0]),
            "through db": np.asarray(through[1])}


def sweep_expected(reference):
    U, Lam, gK, gb = reference
    return {"states": U, "adjoints": Lam, "dK": gK, "db": gb, "through λ_0": Lam[0], "through dK": gK,
            "through db": gb}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SWEEP_SHAPES, ids=str)
def test_dense_layer_sweeps_match_the_per_layer_steps(fake_cupy, shape, act, dtype):
    """DenseStep's block sweeps on a "cupy" backend (one launch each way, through the launchers of
    gpubraid.runtime.cuda) give the per-layer NumPy steps' states, adjoints and gradients, with σ'
    kept by the forward sweep and recomputed."""
    n, B, C = shape
    gpu, cpu = Backend("cupy", fake_cupy, dtype, 0), resolve_backend("numpy", np.dtype(dtype).name)
    problem = sweep_problem(shape, dtype)
    want = sweep_expected(sweep_reference(DenseStep(C, act, cpu), *problem))
    for keep in (True, False):
        for name, got in sweep_results(DenseStep(C, act, gpu), *problem, keep).items():
            assert_close(got, want[name], dtype, f"sweep {name} ({'kept' if keep else 'recomputed'} σ')")


@pytest.mark.parametrize("C", [3, *cuda.SWEEP_WIDTHS, 33])
def test_sweeps_and_chains_launch_the_instance_compiled_for_their_width(fake_cupy, monkeypatch, C):
    """A width of SWEEP_WIDTHS runs the kernels compiled for it (state in registers), any other the
    run-time-width instance, CW = 0: the values are checked by the tests above for both kinds."""
    fetched = []
    get = fake_cupy.RawModule.get_function
    monkeypatch.setattr(fake_cupy.RawModule, "get_function", lambda self, name: fetched.append(name) or get(self, name))
    cuda._function.cache_clear()
    n, B = 2, 5
    step = DenseStep(C, "tanh", Backend("cupy", fake_cupy, np.float64, 0))
    u0, lam_n, K, b, h = sweep_problem((n, B, C), np.float64)
    params, hd = (_host(K), _host(b)), _host(h)
    U = _host(np.zeros((n + 1, B, C)))
    U[0] = u0
    kept = step.forward_block(U, params, hd, True)
    assert step.backward_through(U, _host(lam_n.copy()), params, hd, (_host(np.zeros_like(K)), _host(np.zeros_like(b))),
                                 kept)
    V = _host(np.zeros((n, B, C)))
    assert step.forward_chain(_host(u0.copy()), V, params, hd, None)
    assert step.adjoint_chain(_host(lam_n.copy()), V, U[:n], params, hd, None)
    cw = C if C in cuda.SWEEP_WIDTHS else 0
    want = {f"dense_{k}_kernel<double, {cw}>" for k in ("sweep_forward", "sweep_backward", "chain_forward",
                                                         "chain_adjoint")}
    assert want <= set(fetched), fetched
    assert all(f"<double, {cw}>" in name for name in fetched if "sweep" in name or "chain" in name), fetched


def test_dense_layer_sweeps_decline_what_the_kernels_do_not_take(fake_cupy):
    """Wider than SWEEP_MAX_C, or layers not evenly apart: the block form declines (nothing written)
    and the sweeps of gpubraid.network.sweep run the per-layer launchers instead, to the same values;
    the conv step has no block form."""
    from gpubraid.network.sweep import backward_sweep, forward_sweep

    gpu, cpu = Backend("cupy", fake_cupy, np.float64, 0), resolve_backend("numpy", "float64")
    C = cuda.SWEEP_MAX_C + 1
    u0, lam_n, K, b, h = sweep_problem((2, 3, C), np.float64)
    step = DenseStep(C, "tanh", gpu)
    U = _host(np.zeros((3, 3, C)))
    U[0] = u0
    params = (_host(K), _host(b))
    assert step.forward_block(U, params, _host(h), True) is NotImplemented and not U[1:].any()
    assert not step.backward_block(U, _host(np.zeros((3, 3, C))), params, _host(h), (_host(K * 0), _host(b * 0)),
                                   None)
    overlapping = np.lib.stride_tricks.as_strided(_host(np.zeros((3, 4))), shape=(3, 3, 4), strides=(0, 32, 8),
                                                  subok=True)  # every layer the same memory
    assert cuda_sweeps.layer_stride(overlapping, np.float64, 3, (3, 4)) is None
    assert DenseStep(4, "tanh", gpu).forward_block(overlapping, (_host(K[:, :4, :4]), _host(b[:, :4])), _host(h),
                                                   False) is NotImplemented
    want = sweep_reference(DenseStep(C, "tanh", cpu), u0, lam_n, K, b, h)
    kept = forward_sweep(step, U, params, _host(h), True)
    Lam, grads = _host(np.zeros((3, 3, C))), (_host(np.zeros_like(K)), _host(np.zeros_like(b)))
    Lam[2] = lam_n
    backward_sweep(step, U, Lam, params, _host(h), grads, kept)
    for got, ref, what in zip((U, Lam, *grads), want, ("states", "adjoints", "dK", "db")):
        assert_close(np.asarray(got), ref, np.float64, f"per-layer fallback {what}")
    assert not hasattr(ConvStep(2, 3, 3, "tanh", gpu), "forward_block")


def test_planted_bug_in_the_adjoint_sweep_is_caught(planted_cupy):
    """The adjoint sweep multiplying by K instead of Kᵀ fails the adjoints and gradients, not the states."""
    fake = planted_cupy("t += Ki[o * C + j] * a[o];", "t += Ki[j * C + o] * a[o];")
    shape, dtype = (3, 7, 3), np.float64
    problem = sweep_problem(shape, dtype, seed=2)
    want = sweep_expected(sweep_reference(DenseStep(3, "tanh", resolve_backend("numpy", "float64")), *problem))
    failed = set()
    for name, got in sweep_results(DenseStep(3, "tanh", Backend("cupy", fake, dtype, 0)), *problem, True).items():
        try:
            assert_close(got, want[name], dtype, name)
        except AssertionError:
            failed.add(name)
    assert failed == set(want) - {"states"}, sorted(failed)


def test_gpu_sweeps_benchmark_runs_on_the_emulated_kernels(fake_cupy, monkeypatch):
    """bench.gpu_sweeps' measurement, on the stand-in "cupy": the block and the per-layer sweeps agree
    and both are timed (so that its first run on a GPU does not fail on its own code)."""
    from bench import gpu_sweeps

    stream = types.SimpleNamespace(synchronize=lambda: None)
    monkeypatch.setattr(fake_cupy, "abs", lambda a: _host(np.abs(a)), raising=False)
    monkeypatch.setattr(fake_cupy, "full", lambda shape, v, dtype=None: _host(np.full(shape, v, dtype)), raising=False)
    monkeypatch.setattr(fake_cupy, "zeros_like", lambda a: _host(np.zeros_like(a)), raising=False)
    monkeypatch.setattr(fake_cupy.cuda, "get_current_stream", lambda: stream, raising=False)
    row = gpu_sweeps.measure(8, 40, 3, "float64", 1)
    assert row["rel_diff"] <= 1e-12 and row["block_ms"] > 0 and row["per_layer_ms"] > 0


def test_inference_sweep_on_a_gpu_takes_the_batch_in_one_launch(fake_cupy, monkeypatch):
    """forward_through on a "cupy" backend: one block call for a batch whose states exceed the
    CPU's cache budget (two calls on NumPy), and the per-layer NumPy values."""
    from gpubraid.network import sweep

    n, B, C = 64, 2100, 8  # (n + 1)·B·C float64 = 8.7 MB > THROUGH_BYTES
    assert (n + 1) * B * C * 8 > sweep.THROUGH_BYTES
    u0, _, K, b, h = sweep_problem((n, B, C), np.float64, seed=4)
    gpu, cpu = Backend("cupy", fake_cupy, np.float64, 0), resolve_backend("numpy", "float64")
    calls = []
    for be, xp, wrap in ((gpu, fake_cupy, _host), (cpu, np, np.asarray)):
        step = DenseStep(C, "tanh", be)
        block = step.forward_block
        monkeypatch.setattr(step, "forward_block", lambda *a, _b=block: calls.append(be.name) or _b(*a))
        got = sweep.forward_through(step, xp, wrap(u0), (wrap(K), wrap(b)), wrap(h))
        assert_close(np.asarray(got), sweep_reference(DenseStep(C, "tanh", cpu), u0, u0, K, b, h)[0][-1],
                     np.float64, f"forward_through on {be.name}")
    assert calls.count("cupy") == 1 and calls.count("numpy") == 2, calls


# -- the dense chains with a right-hand side: MGRIT's coarsest solve in one launch ----------------------
def chain_reference(step, start, U, K, b, h, G, adjoint: bool):
    """Rows (n, B, C) of the chain v_i = Φ_i(v_{i−1}) + G_i (adjoint: v_i = adjoint(U_i, v_{i−1}) + G_i),
    one NumPy step call per row, as the solver's row loop does it."""
    rows, prev = [], start
    for i in range(len(h)):
        one = (K[i:i + 1], b[i:i + 1])
        v = (step.adjoint(U[i:i + 1], prev[None], one, h[i:i + 1]) if adjoint
             else step.forward(prev[None], one, h[i:i + 1]))[0]
        prev = v + G[i] if G is not None else v
        rows.append(prev)
    return np.stack(rows)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SWEEP_SHAPES, ids=str)
def test_dense_chains_match_the_per_row_steps(fake_cupy, shape, act, dtype):
    """DenseStep's forward_chain / adjoint_chain on a "cupy" backend (one launch each, through
    gpubraid.runtime.cuda_sweeps) give the rows of one NumPy step call per row plus the right-hand
    side: without one, with one in its own array, with the rows themselves holding it (the coarsest
    solve's received rows, stepped in place), with rows and states that are sample blocks of a
    larger batch, and with the states a reversed view."""
    n, B, C = shape
    gpu, cpu = Backend("cupy", fake_cupy, dtype, 0), resolve_backend("numpy", np.dtype(dtype).name)
    g, c = DenseStep(C, act, gpu), DenseStep(C, act, cpu)
    rng = np.random.default_rng(7)
    start, _, K, b, h = sweep_problem(shape, dtype, seed=3)
    G = rng.standard_normal((n, B, C)).astype(dtype)
    Ubuf = rng.standard_normal((n, B + 2, C)).astype(dtype)
    U = Ubuf[::-1, 1:B + 1]  # reversed layers, a sample block: layers (B + 2)·C apart, negatively
    params, hd = (_host(K), _host(b)), _host(h)
    for adjoint in (False, True):
        what = "adjoint" if adjoint else "forward"
        for rhs in ("none", "separate", "in place"):
            buf = _host(np.full((n, B + 1, C), np.nan, dtype=dtype))
            V = buf[:, :B]
            Gd = None if rhs == "none" else _host(G.copy())
            if rhs == "in place":
                V[...] = G
                Gd = V
            args = (_host(start.copy()), V)
            done = (g.adjoint_chain(*args, _host(U), params, hd, Gd) if adjoint
                    else g.forward_chain(*args, params, hd, Gd))
            assert done, f"{what} chain declined"
            want = chain_reference(c, start, U, K, b, h, None if rhs == "none" else G, adjoint)
            assert_close(np.asarray(V), want, dtype, f"{what} chain, right-hand side {rhs}")
            assert np.isnan(np.asarray(buf)[:, B]).all(), f"{what} chain wrote outside its rows"


def test_dense_chains_decline_what_the_kernels_do_not_take(fake_cupy, monkeypatch):
    """Wider than SWEEP_MAX_C, a start row not contiguous, rows not evenly apart, NumPy without the
    compiled loops: the chains return False and write nothing (the solver then steps row by row)."""
    C = cuda.SWEEP_MAX_C + 1
    gpu = Backend("cupy", fake_cupy, np.float64, 0)
    start, _, K, b, h = sweep_problem((2, 3, C), np.float64)
    V = _host(np.zeros((2, 3, C)))
    assert not DenseStep(C, "tanh", gpu).forward_chain(_host(start), V, (_host(K), _host(b)), _host(h), None)
    assert not DenseStep(C, "tanh", gpu).adjoint_chain(_host(start), V, V, (_host(K), _host(b)), _host(h), V)
    assert not V.any()
    start, _, K, b, h = sweep_problem((2, 3, 4), np.float64)
    step, params, V = DenseStep(4, "tanh", gpu), (_host(K), _host(b)), _host(np.zeros((2, 3, 4)))
    assert not step.forward_chain(_host(np.zeros((4, 3)))[::1].T, V, params, _host(h), None)
    overlapping = np.lib.stride_tricks.as_strided(_host(np.zeros((3, 4))), shape=(2, 3, 4), strides=(0, 32, 8),
                                                  subok=True)
    assert not step.forward_chain(_host(start), overlapping, params, _host(h), None)
    assert not V.any()
    from gpubraid.runtime import host
    monkeypatch.setattr(host, "library", lambda: None)  # NumPy without the compiled loops
    V = np.zeros((2, 3, 4))
    assert not DenseStep(4, "tanh", resolve_backend("numpy", "float64")).forward_chain(start, V, (K, b), h, None)
    assert not V.any()


def test_planted_bug_in_the_adjoint_chain_is_caught(planted_cupy):
    """The adjoint chain adding its right-hand side twice fails the chains with one, not without."""
    fake = planted_cupy("row[j] = w[j] = g ? w[j] + g[j] : w[j];", "row[j] = w[j] = g ? w[j] + 2 * g[j] : w[j];")
    n, B, C = 3, 7, 3
    start, _, K, b, h = sweep_problem((n, B, C), np.float64, seed=5)
    U, G = (np.random.default_rng(s).standard_normal((n, B, C)) for s in (1, 2))
    step = DenseStep(C, "tanh", Backend("cupy", fake, np.float64, 0))
    ref = DenseStep(C, "tanh", resolve_backend("numpy", "float64"))
    for rhs in (None, G):
        W = _host(np.zeros((n, B, C)))
        assert step.adjoint_chain(_host(start), W, _host(U), (_host(K), _host(b)), _host(h),
                                  None if rhs is None else _host(rhs))
        err = rel_err(np.asarray(W), chain_reference(ref, start, U, K, b, h, rhs, True))
        assert (err > 1e-3) if rhs is not None else (err <= 1e-12), (rhs is None, err)
