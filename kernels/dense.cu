// The dense residual step on the GPU: the elementwise parts of one step over L layers at once (its
// matrix products go through cuBLAS, cupy.matmul, in gpubraid/runtime/cuda.py), and the layer
// sweeps and chains that carry each sample through many layers in one launch
// (gpubraid/runtime/cuda_sweeps.py).
//
// Layouts (C-contiguous, T = float or double): z, u, lam, out (L, B, C); b (L, C); h (L,).
//   dense_act_kernel<T, GB_DENSE_FORWARD>   out = u + h·σ(z + b)     (z = u Kᵀ)
//   dense_act_kernel<T, GB_DENSE_ACT_GRAD>  out = σ'(z + b) ⊙ lam
//   dense_bias_grad_kernel<T>               db = h·Σ_n a              (deterministic)
//   dense_sweep_forward_kernel<T, CW>       U_{i+1} = U_i + h_i·σ(K_i U_i + b_i), i = 0..n−1, one launch
//   dense_sweep_backward_kernel<T, CW>      λ_i = λ_{i+1} + h_i K_iᵀ a_i, a_i = σ'(z_i) ⊙ λ_{i+1}, i = n−1..0
//   dense_chain_forward_kernel<T, CW>       v_i = Φ_i(v_{i−1}) + g_i, i = 0..n−1, one launch (coarsest solve)
//   dense_chain_adjoint_kernel<T, CW>       w_i = w_{i−1} + h_i K_iᵀ(σ'(K_i U_i + b_i) ⊙ w_{i−1}) + g_i
#pragma once

#include "activations.cuh"

#define GB_DENSE_FORWARD 0
#define GB_DENSE_ACT_GRAD 1
// Threads per block of the dense kernels.
#define GB_DENSE_THREADS 256
// Threads per block of the layer sweeps (one thread per sample), and the widest state they take.
#define GB_SWEEP_THREADS 128
#define GB_SWEEP_MAX_C 64
// The sweeps and chains take the width twice: as the template argument CW for the widths of
// gpubraid.runtime.cuda.SWEEP_WIDTHS (then a sample's state lives in registers and the loops over it
// unroll), and CW = 0 with the run-time `width` for any other width up to GB_SWEEP_MAX_C (the state
// in local memory).  GB_SWEEP_WIDTH(CW) sizes a sample's state arrays.
#define GB_SWEEP_WIDTH(CW) ((CW) > 0 ? (CW) : GB_SWEEP_MAX_C)

/// f(k) for k = 0..C − 1 over a sample's features: unrolled when the width is the compile-time CW,
/// a plain loop (the compiler's own unrolling) for the run-time width (CW = 0).
template <int CW, typename F>
__device__ __forceinline__ void gb_for_width(int C, F&& f) {
    if constexpr (CW > 0) {
#pragma unroll
        for (int k = 0; k < CW; ++k) f(k);
    } else {
        for (int k = 0; k < C; ++k) f(k);
    }
}

/// Bias, activation and residual update, elementwise over (L, B, C).
///
/// z: u Kᵀ per layer.  r: u for FORWARD, lam for ACT_GRAD.  Grid-stride loop: any 1-D grid works;
/// gpubraid.cuda.dense_launch picks it.
template <typename T, int MODE>
__global__ void __launch_bounds__(GB_DENSE_THREADS)
dense_act_kernel(const T* __restrict__ z, const T* __restrict__ b, const T* __restrict__ h,
                 const T* __restrict__ r, T* __restrict__ out, int L, int B, int C, int act) {
    const long long n = (long long)L * B * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const int c = (int)(e % C);
        const int l = (int)(e / ((long long)B * C));
        const T zb = z[e] + b[(long long)l * C + c];
        if (MODE == GB_DENSE_FORWARD) {
            out[e] = r[e] + h[l] * gb_sigma<T>(act, zb);
        } else {
            out[e] = gb_dsigma<T>(act, zb) * r[e];
        }
    }
}

/// db[l, c] = h[l]·Σ_n a[l, n, c]; one block per layer, one thread per feature (strided), the
/// batch summed in a fixed sequential order: bitwise reproducible.  Grid: x = L.
template <typename T>
__global__ void __launch_bounds__(GB_DENSE_THREADS)
dense_bias_grad_kernel(const T* __restrict__ a, const T* __restrict__ h, T* __restrict__ db,
                       int L, int B, int C) {
    const int l = blockIdx.x;
    const T* al = a + (long long)l * B * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        T s = T(0);
        for (int n = 0; n < B; ++n) s += al[(long long)n * C + c];
        db[(long long)l * C + c] = h[l] * s;
    }
}

/// The layer-serial forward sweep over n layers in one launch: thread s carries sample s through
/// every layer in order, its state in registers (CW > 0) or a local array (CW = 0, C ≤ GB_SWEEP_MAX_C):
///     U[i + 1, s] = U[i, s] + h_i·σ(z),  z = K_i U[i, s] + b_i,   i = 0..n − 1,
/// and σ'(z) into D[i, s] when D is not null.  U (n + 1, B, C) with layers su elements apart, each
/// layer C-contiguous; D (n, B, C) contiguous; K (n, C, C), b (n, C), h (n,).  Grid: x·block ≥ B.
template <typename T, int CW>
__global__ void __launch_bounds__(GB_SWEEP_THREADS)
dense_sweep_forward_kernel(T* __restrict__ U, long long su, T* __restrict__ D, const T* __restrict__ K,
                           const T* __restrict__ b, const T* __restrict__ h, int n, int B, int width, int act) {
    const int C = CW > 0 ? CW : width;
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= B) return;
    T u[GB_SWEEP_WIDTH(CW)], v[GB_SWEEP_WIDTH(CW)];
    T* row = U + s * C;                                  // this sample's state, layer by layer
    T* d = D ? D + s * C : nullptr;
    const long long dstep = (long long)B * C;
    gb_for_width<CW>(C, [&](int j) { u[j] = row[j]; });
    for (int i = 0; i < n; ++i, K += C * C, b += C) {
        const T hi = h[i];
        gb_for_width<CW>(C, [&](int o) {
            T z = T(0);
            gb_for_width<CW>(C, [&](int j) { z += K[o * C + j] * u[j]; });
            const T zb = z + b[o];
            v[o] = u[o] + hi * gb_sigma<T>(act, zb);
            if (d) d[o] = gb_dsigma<T>(act, zb);
        });
        row += su;
        gb_for_width<CW>(C, [&](int o) { row[o] = u[o] = v[o]; });
        if (d) d += dstep;
    }
}

/// The layer-serial adjoint sweep over n layers in one launch: thread s carries λ of sample s from
/// λ_n down to λ_0 (C ≤ GB_SWEEP_MAX_C):
///     a_i = σ'(z_i) ⊙ λ_{i+1} into A[i, s],   λ_i = λ_{i+1} + h_i K_iᵀ a_i,   i = n − 1..0,
/// σ'(z_i) read from D[i, s] when D is not null, else recomputed from U[i, s].  A may be D (each
/// entry is read before it is written).  Lam (n + 1, B, C) with layers sl elements apart, λ_n given,
/// λ_{n−1..0} written; sl = 0: Lam is one (B, C) array holding λ_n, replaced by λ_0.  U as in the
/// forward sweep (layers su apart); A, D (n, B, C) contiguous.  The parameter gradients
/// h_i·a_iᵀ U_i and h_i·Σ_s a_i come from A afterwards (batched GEMM, dense_bias_grad_kernel).
template <typename T, int CW>
__global__ void __launch_bounds__(GB_SWEEP_THREADS)
dense_sweep_backward_kernel(const T* __restrict__ U, long long su, T* __restrict__ Lam, long long sl, const T* D,
                            T* A, const T* __restrict__ K, const T* __restrict__ b, const T* __restrict__ h, int n,
                            int B, int width, int act) {
    const int C = CW > 0 ? CW : width;
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= B) return;
    T lam[GB_SWEEP_WIDTH(CW)], a[GB_SWEEP_WIDTH(CW)];
    const long long dstep = (long long)B * C;
    T* lrow = Lam + (long long)n * sl + s * C;           // λ's row of this sample, layer by layer down
    gb_for_width<CW>(C, [&](int j) { lam[j] = lrow[j]; });
    for (int i = n - 1; i >= 0; --i) {
        const T* Ki = K + (long long)i * C * C;
        const T* bi = b + (long long)i * C;
        const T* ui = U + (long long)i * su + s * C;
        const long long at = i * dstep + s * C;
        gb_for_width<CW>(C, [&](int o) {
            T d;
            if (D) {
                d = D[at + o];
            } else {
                T z = T(0);
                gb_for_width<CW>(C, [&](int j) { z += Ki[o * C + j] * ui[j]; });
                d = gb_dsigma<T>(act, z + bi[o]);
            }
            a[o] = d * lam[o];
            A[at + o] = a[o];
        });
        const T hi = h[i];
        gb_for_width<CW>(C, [&](int j) {
            T t = T(0);
            gb_for_width<CW>(C, [&](int o) { t += Ki[o * C + j] * a[o]; });
            lam[j] += hi * t;
        });
        lrow -= sl;
        if (sl) gb_for_width<CW>(C, [&](int j) { lrow[j] = lam[j]; });
    }
    if (!sl) gb_for_width<CW>(C, [&](int j) { lrow[j] = lam[j]; });
}

/// A chain with a right-hand side in one launch: MGRIT's coarsest level, solved sequentially,
///     v_i = v_{i−1} + h_i·σ(K_i v_{i−1} + b_i) + G_i,   i = 0..n − 1,   v_{−1} = u0,
/// thread s carrying sample s (C ≤ GB_SWEEP_MAX_C).  u0 (B, C) contiguous; V (n, B, C) with layers
/// sv elements apart, each C-contiguous; G like V (sg apart) or null for no right-hand side; G may
/// be V itself (each entry is read before it is written); K (n, C, C), b (n, C), h (n,) contiguous.
template <typename T, int CW>
__global__ void __launch_bounds__(GB_SWEEP_THREADS)
dense_chain_forward_kernel(const T* __restrict__ u0, T* V, long long sv, const T* G, long long sg,
                           const T* __restrict__ K, const T* __restrict__ b, const T* __restrict__ h, int n, int B,
                           int width, int act) {
    const int C = CW > 0 ? CW : width;
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= B) return;
    T u[GB_SWEEP_WIDTH(CW)], v[GB_SWEEP_WIDTH(CW)];
    T* row = V + s * C;                                   // this sample's rows, step by step
    const T* g = G ? G + s * C : nullptr;
    gb_for_width<CW>(C, [&](int j) { u[j] = u0[s * C + j]; });
    for (int i = 0; i < n; ++i, K += C * C, b += C, row += sv) {
        const T hi = h[i];
        gb_for_width<CW>(C, [&](int o) {
            T z = T(0);
            gb_for_width<CW>(C, [&](int j) { z += K[o * C + j] * u[j]; });
            v[o] = u[o] + hi * gb_sigma<T>(act, z + b[o]);
        });
        gb_for_width<CW>(C, [&](int o) { row[o] = u[o] = g ? v[o] + g[o] : v[o]; });
        if (g) g += sg;
    }
}

/// The adjoint chain with a right-hand side in one launch, in the adjoint solve's order (the
/// caller passes the layers reversed):
///     w_i = w_{i−1} + h_i K_iᵀ (σ'(K_i U_i + b_i) ⊙ w_{i−1}) + G_i,   i = 0..n − 1,   w_{−1} = w0,
/// thread s carrying sample s (C ≤ GB_SWEEP_MAX_C).  w0 (B, C) contiguous; W (n, B, C) with layers
/// sw elements apart, G like it (sg apart) or null, G may be W; U (n, B, C) the states each step is
/// linearised at, layers su apart (negative for a reversed view); K, b, h contiguous as above.
template <typename T, int CW>
__global__ void __launch_bounds__(GB_SWEEP_THREADS)
dense_chain_adjoint_kernel(const T* __restrict__ w0, T* W, long long sw, const T* G, long long sg,
                           const T* __restrict__ U, long long su, const T* __restrict__ K, const T* __restrict__ b,
                           const T* __restrict__ h, int n, int B, int width, int act) {
    const int C = CW > 0 ? CW : width;
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= B) return;
    T w[GB_SWEEP_WIDTH(CW)], a[GB_SWEEP_WIDTH(CW)];
    T* row = W + s * C;                                   // this sample's rows, step by step
    const T* g = G ? G + s * C : nullptr;
    const T* ui = U + s * C;
    gb_for_width<CW>(C, [&](int j) { w[j] = w0[s * C + j]; });
    for (int i = 0; i < n; ++i, K += C * C, b += C, row += sw, ui += su) {
        gb_for_width<CW>(C, [&](int o) {
            T z = T(0);
            gb_for_width<CW>(C, [&](int j) { z += K[o * C + j] * ui[j]; });
            a[o] = gb_dsigma<T>(act, z + b[o]) * w[o];
        });
        const T hi = h[i];
        gb_for_width<CW>(C, [&](int j) {
            T t = T(0);
            // K_i read again (__ldg: not merged with the loads above, which would hold all C² entries
            // in registers between the loops: spills from CW = 16)
            gb_for_width<CW>(C, [&](int o) { t += __ldg(K + o * C + j) * a[o]; });
            w[j] += hi * t;
        });
        gb_for_width<CW>(C, [&](int j) { row[j] = w[j] = g ? w[j] + g[j] : w[j]; });
        if (g) g += sg;
    }
}
