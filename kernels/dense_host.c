// The dense residual step u_{i+1} = u_i + h_i σ(K_i u_i + b_i) on the CPU: layer-serial sweeps and
// batches of independent layers.
//
// One call runs a whole block of n layers for one batch of B samples of C features, so the cost per
// layer is arithmetic only: NumPy pays some 40 µs of calls per layer forward and backward, which
// dominates small batches and the micro-batches of the pipeline.  Compiled on first use by the
// system C compiler and called through ctypes (gpubraid/runtime/host.py).
//
// Arrays are addressed by a layer stride (in elements); within a layer the B rows of C numbers are
// contiguous (row stride C), and so are K_i (C × C, row-major: K_i[o][j]) and b_i (C).  Each layer
// reads its input and writes its output through its own pointer, so one function serves the sweep
// through a chain (output i is input i + 1) and a batch of independent layers (MGRIT's relaxation):
//
//   gb_dense_forward_<t>   V_i = U_i + h_i σ(K_i U_i + b_i) (+ G_i), i = 0..n−1 in order; D_i = σ'(z_i)
//                          or NULL; G NULL or a right-hand side (MGRIT's relaxation: may be V)
//   gb_dense_backward_<t>  for i = n−1..0, a = σ'(z_i) ⊙ Lin_i (σ'(z_i) from D, or recomputed):
//                          Lout_i = Lin_i + h_i K_iᵀ a (+ G_i) (unless Lout is NULL), and
//                          gK_i += h_i Σ_rows a U_iᵀ, gb_i += h_i Σ_rows a (unless gK is NULL)
//   gb_dense_chain_forward_<t>, gb_dense_chain_adjoint_<t>
//                          MGRIT's coarsest solve: the step (or its adjoint, in the adjoint solve's
//                          order) chained from a start row, a right-hand side added at each step
//   gb_softmax_xent_<t>    the classifier head's softmax cross-entropy, its λ_N and its gradient
//                          (head_host.h)
//   gb_open_forward_<t>, gb_open_grad_<t>
//                          the dense opening layer σ(K x + b) and its gradient (opening_host.h)
//
// Lout_i may be Lin_i itself: with Lin = Lout and both strides 0, one B × C array carries λ_n down
// to λ_0 in place, and the adjoints in between are never written to memory (the chunk's rows are
// read into a before any is written).
//
// <t> is f64 or f32.  Activations take the codes of gpubraid.network.activations.CODES; tanh is
// 2 / (1 + exp(−2z)) − 1, the NumPy path's formula, with an exp written out so that it vectorises
// (libm's does not): 2^k exp(r), r = x − k ln 2, |r| ≤ ln 2 / 2, exp(r) by its Taylor polynomial
// (degree 13 for double, 7 for float: truncation below half an ulp), the argument clamped to where
// 2^k stays a normal number, which only moves tanh's ±1 saturation by nothing representable.
#include <math.h>
#include <stdint.h>
#include <string.h>

#define ACT_TANH 0
#define ACT_RELU 1
#define ACT_SMOOTHRELU 2
#define SMOOTH_EPS 0.1

// The calling convention's version: gpubraid/runtime/host.py refuses a library of another one.
#define GB_HOST_ABI 6

// -DGB_HOST_F64_ONLY or -DGB_HOST_F32_ONLY compiles one element type (gb_host_abi goes with double):
// gpubraid/runtime/host_build.py compiles the two at once and links them into one library.
#ifndef GB_HOST_F32_ONLY
int gb_host_abi(void) { return GB_HOST_ABI; }
#endif

#define MAX_C 64  // the widest layer run here (checked by the caller, and here); wider ones are
                  // BLAS-bound, where NumPy's matrix products do better

#define INLINE __attribute__((always_inline))
#define CHUNK 256  // numbers per chunk of rows (elementwise loops): CHUNK / C ≥ 4 rows
#define HEAD_ROWS 64  // rows per block of the classifier head (kernels/head_host.h)
_Static_assert(CHUNK >= 4 * MAX_C, "a chunk holds at least four rows of the widest layer");

#ifndef GB_HOST_F32_ONLY
static inline double gb_exp_f64(double x) {
    const double shift = 0x1.8p52, log2e = 0x1.71547652b82fep0;
    const double ln2_hi = 0x1.62e42fefa3800p-1, ln2_lo = 0x1.ef35793c76730p-45;
    x = x < -708.0 ? -708.0 : (x > 708.0 ? 708.0 : x);  // NaN passes through
    const double t = x * log2e + shift, k = t - shift;  // k = round(x / ln 2)
    const double r = (x - k * ln2_hi) - k * ln2_lo;
    double p = 1.0 / 6227020800.0;  // 1/13!
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits, sbits;
    memcpy(&bits, &t, 8);
    memcpy(&sbits, &shift, 8);
    const int64_t scale_bits = (bits - sbits + 1023) << 52;  // 2^k
    double scale;
    memcpy(&scale, &scale_bits, 8);
    return p * scale;
}
#endif

#ifndef GB_HOST_F64_ONLY
static inline float gb_exp_f32(float x) {
    const float shift = 0x1.8p23f, log2e = 0x1.715476p0f;
    const float ln2_hi = 0x1.62e4p-1f, ln2_lo = 0x1.7f7d1cp-20f;
    x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
    const float t = x * log2e + shift, k = t - shift;
    const float r = (x - k * ln2_hi) - k * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits, sbits;
    memcpy(&bits, &t, 4);
    memcpy(&sbits, &shift, 4);
    const int32_t scale_bits = (bits - sbits + 127) << 23;
    float scale;
    memcpy(&scale, &scale_bits, 4);
    return p * scale;
}
#endif

// The body of an entry point: the caller's CALL(CC) with C at one of the compile-time widths listed
// (the inner loops unrolled and vectorised for it), any other C ≤ MAX_C in the generic loops; 0: done.
#define AT(W)       \
    case W:         \
        CALL(W);    \
        break;
#define WIDTHS(...)              \
    switch (C) {                 \
        __VA_ARGS__              \
        default: CALL(C); break; \
    }                            \
    return 0;
#define DISPATCH()                    \
    if (C < 1 || C > MAX_C) return 1; \
    WIDTHS(AT(4) AT(8) AT(16) AT(32) AT(64))

// Rows of a cache line or more (C ≥ 8 doubles, C ≥ 16 floats) run on 512-bit vectors where the CPU has
// them (GCC's target attribute; its default preference on such CPUs is 256 bits), narrower rows on
// 256-bit ones, which they ran faster on.  The same bits: every number's arithmetic is the same, only
// how many go in one instruction.  With the sums of pre and grad_rows kept in registers, a forward and a
// backward sweep together took 11–21 / 16–30 / 29–32 / 42–45 % less time per layer and sample at C = 8 /
// 16 / 32 / 64 doubles, 3–8 / 29–32 / 29 % at C = 16 / 32 / 64 floats, and the narrower rows within 5 %
// but for C = 4 doubles with relu, 10 % slower (python -m bench.kernel_revisions; Intel Xeon with
// AVX-512, 2026-12-05).  Each compile-time width is compiled once, on the vectors its rows fill: 13.5 s
// for the library on that machine, 7.3 s as gpubraid/runtime/host_build.py builds it (the two element
// types at once).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WIDE_VECTORS __attribute__((target("prefer-vector-width=512"), noinline))
#else
#define WIDE_VECTORS __attribute__((noinline))
#endif
// WIDE and NARROW (set with T below): the compile-time widths whose rows fill 64 bytes or more, and
// those whose rows do not.
#define BY_ROW_WIDTH(FN, PARAMS, ARGS)                                                             \
    static WIDE_VECTORS int NAME(FN##_wide) PARAMS { WIDTHS(WIDE) }                                  \
    static __attribute__((noinline)) int NAME(FN##_narrow) PARAMS { WIDTHS(NARROW) }                 \
    int NAME(FN) PARAMS {                                                                          \
        if (C < 1 || C > MAX_C) return 1;                                                          \
        return C * (int64_t)sizeof(T) >= 64 ? NAME(FN##_wide) ARGS : NAME(FN##_narrow) ARGS;       \
    }

#ifndef GB_HOST_F32_ONLY
#define T double
#define NAME(x) x##_f64
#define EXP gb_exp_f64
#define WIDE AT(8) AT(16) AT(32) AT(64)
#define NARROW AT(4)
#include "dense_host.h"
#include "head_host.h"
#include "opening_host.h"
#undef T
#undef NAME
#undef EXP
#undef WIDE
#undef NARROW
#endif

#ifndef GB_HOST_F64_ONLY
#define T float
#define NAME(x) x##_f32
#define EXP gb_exp_f32
#define WIDE AT(16) AT(32) AT(64)
#define NARROW AT(4) AT(8)
#include "dense_host.h"
#include "head_host.h"
#include "opening_host.h"
#undef T
#undef NAME
#undef EXP
#undef WIDE
#undef NARROW
#endif
