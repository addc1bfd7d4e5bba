// Elementwise parts of the dense residual step; the matrix products go through cuBLAS
// (cupy.matmul) in gpubraid/cuda.py.
//
// Layouts (C-contiguous, T = float or double): z, u, lam, out (L, B, C); b (L, C); h (L,).
//   dense_act_kernel<T, GB_DENSE_FORWARD>   out = u + h·σ(z + b)     (z = u Kᵀ)
//   dense_act_kernel<T, GB_DENSE_ACT_GRAD>  out = σ'(z + b) ⊙ lam
//   dense_bias_grad_kernel<T>               db = h·Σ_n a              (deterministic)
#pragma once

#include "activations.cuh"

#define GB_DENSE_FORWARD 0
#define GB_DENSE_ACT_GRAD 1
// Threads per block of the dense kernels.
#define GB_DENSE_THREADS 256

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
