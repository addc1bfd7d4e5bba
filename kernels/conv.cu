// Fused 3×3 convolutional residual steps, batched over layer intervals and samples.
//
// Layouts (all C-contiguous, T = float or double):
//   states u, lam, a, out   (L, B, C, H, W)
//   weights K               (L, C, C, 3, 3)   K[l, o, i, dy, dx]
//   biases b                (L, C)
//   step sizes h            (L,)
// Convolution convention (ConvStep in gpubraid/steps.py, PyTorch's conv2d), zero padding 1:
//   conv(u, K)_o(y, x) = Σ_i Σ_{dy,dx} K[o, i, dy, dx] u_i(y + dy − 1, x + dx − 1).
//
// Kernels (launch geometry: gpubraid/cuda.py, conv_launch and conv_grad_launch):
//   conv3x3_kernel<T, GB_CONV_FORWARD>    out = u + h·σ(conv(u, K) + b)
//   conv3x3_kernel<T, GB_CONV_ACT_GRAD>   a   = σ'(conv(u, K) + b) ⊙ lam
//   conv3x3_kernel<T, GB_CONV_TRANSPOSE>  out = lam + h·convᵀ(a, K)
//   conv_param_grad_kernel<T>             dK = h·Σ a ⊗ shifted u,  db = h·Σ a   (deterministic)
// The state adjoint lam + h·Kᵀ(σ'(z) ⊙ lam) is ACT_GRAD followed by TRANSPOSE.  The
// pre-activation z = conv(u, K) + b is not stored by the forward step: the adjoint recomputes it,
// which costs one convolution but saves a state-sized buffer per step and a write plus a read of it.
#pragma once

#include "activations.cuh"

#define GB_CONV_FORWARD 0
#define GB_CONV_ACT_GRAD 1
#define GB_CONV_TRANSPOSE 2

// Tiling of conv3x3_kernel: a block is GB_CONV_TILE_W × GB_CONV_TILE_H threads, one output pixel
// each, computing GB_CONV_OCB output channels; input channels are staged GB_CONV_ICB at a time.
#define GB_CONV_TILE_W 16
#define GB_CONV_TILE_H 8
#define GB_CONV_OCB 8
#define GB_CONV_ICB 8
// Minimum resident blocks per SM asked of ptxas for conv3x3_kernel: caps it at ~170 registers,
// enough for the 8 accumulators and the staged weights of one input channel without spills in
// double precision (left to itself ptxas settles at 96-128 registers and spills; see REGISTERS.md).
#define GB_CONV_MIN_BLOCKS 3
// Threads per block of conv_param_grad_kernel (a power of two: tree reduction).
#define GB_CONV_GRAD_THREADS 128

/// One fused 3×3 convolution with an epilogue chosen by MODE.
///
/// x: the convolved state (u for FORWARD and ACT_GRAD, a for TRANSPOSE), (L, B, C, H, W).
/// K: (L, C, C, 3, 3); TRANSPOSE applies the adjoint: channels swapped and taps flipped.
/// b: (L, C) (unused by TRANSPOSE).  h: (L,) (unused by ACT_GRAD).
/// r: the epilogue's other state (u for FORWARD, lam otherwise).  out: (L, B, C, H, W).
/// Grid: x = ceil(W / TILE_W)·ceil(H / TILE_H)·L·B, y = ceil(C / OCB); block (TILE_W, TILE_H).
/// Shared memory: ICB input planes of the tile with a one-pixel halo, and the OCB × ICB × 9
/// weights of the current channel chunk.
template <typename T, int MODE>
__global__ void __launch_bounds__(GB_CONV_TILE_W * GB_CONV_TILE_H, GB_CONV_MIN_BLOCKS)
conv3x3_kernel(const T* __restrict__ x, const T* __restrict__ K, const T* __restrict__ b,
               const T* __restrict__ h, const T* __restrict__ r, T* __restrict__ out,
               int L, int B, int C, int H, int W, int act) {
    constexpr int TW = GB_CONV_TILE_W, TH = GB_CONV_TILE_H;
    constexpr int OCB = GB_CONV_OCB, ICB = GB_CONV_ICB;
    constexpr int NT = TW * TH;
    constexpr int SW = TW + 2, SH = TH + 2;
    __shared__ T s_in[ICB][SH][SW];
    __shared__ T s_w[OCB][ICB][9];

    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * TW + tx;
    const int ntx = (W + TW - 1) / TW;
    const int ntiles = ntx * ((H + TH - 1) / TH);
    // 32-bit index arithmetic for the divisions (64-bit division is a called subroutine in PTX);
    // the launchers check that every per-interval count fits.
    const int tile = (int)(blockIdx.x % (unsigned)ntiles);
    const long long lb = blockIdx.x / (unsigned)ntiles;  // l·B + n
    const int l = (int)(blockIdx.x / (unsigned)ntiles) / B;
    const int x0 = (tile % ntx) * TW, y0 = (tile / ntx) * TH;
    const int o0 = blockIdx.y * OCB;
    const long long plane = (long long)H * W;
    const T* xs = x + lb * C * plane;
    const T* Kl = K + (long long)l * C * C * 9;

    T acc[OCB];
#pragma unroll
    for (int oc = 0; oc < OCB; ++oc) acc[oc] = T(0);

    for (int i0 = 0; i0 < C; i0 += ICB) {
        // Stage the input tile (zero outside the image: same padding) and the weights.
        for (int e = tid; e < ICB * SH * SW; e += NT) {
            const int ci = e / (SH * SW), rem = e % (SH * SW);
            const int sy = rem / SW, sx = rem % SW;
            const int gy = y0 + sy - 1, gx = x0 + sx - 1, c = i0 + ci;
            T v = T(0);
            if (c < C && gy >= 0 && gy < H && gx >= 0 && gx < W) v = xs[c * plane + (long long)gy * W + gx];
            s_in[ci][sy][sx] = v;
        }
        for (int e = tid; e < OCB * ICB * 9; e += NT) {
            const int oc = e / (ICB * 9), rem = e % (ICB * 9);
            const int ci = rem / 9, tap = rem % 9;
            const int o = o0 + oc, c = i0 + ci;
            T w = T(0);
            if (o < C && c < C) {
                // Adjoint of a zero-padded correlation: the correlation with the kernel transposed
                // in channels and flipped in space.
                w = MODE == GB_CONV_TRANSPOSE ? Kl[((long long)c * C + o) * 9 + (8 - tap)]
                                              : Kl[((long long)o * C + c) * 9 + tap];
            }
            s_w[oc][ci][tap] = w;
        }
        __syncthreads();
        // Not unrolled over channels: unrolling would hoist all ICB·OCB·9 weight loads and spill.
#pragma unroll 1
        for (int ci = 0; ci < ICB; ++ci) {
#pragma unroll
            for (int dy = 0; dy < 3; ++dy) {
#pragma unroll
                for (int dx = 0; dx < 3; ++dx) {
                    const T v = s_in[ci][ty + dy][tx + dx];
#pragma unroll
                    for (int oc = 0; oc < OCB; ++oc) acc[oc] += s_w[oc][ci][dy * 3 + dx] * v;
                }
            }
        }
        __syncthreads();  // the next chunk overwrites the tiles
    }

    const int px = x0 + tx, py = y0 + ty;
    if (px >= W || py >= H) return;
    const T hl = h[l];
    const long long base = lb * C * plane + (long long)py * W + px;
#pragma unroll
    for (int oc = 0; oc < OCB; ++oc) {
        const int o = o0 + oc;
        if (o < C) {
            const long long idx = base + o * plane;
            if (MODE == GB_CONV_FORWARD) {
                out[idx] = r[idx] + hl * gb_sigma<T>(act, acc[oc] + b[(long long)l * C + o]);
            } else if (MODE == GB_CONV_ACT_GRAD) {
                out[idx] = gb_dsigma<T>(act, acc[oc] + b[(long long)l * C + o]) * r[idx];
            } else {
                out[idx] = r[idx] + hl * acc[oc];
            }
        }
    }
}

/// Parameter gradients of the conv step, one block per (l, o, i).
///
/// a: σ'(z) ⊙ lam, (L, B, C, H, W).  u: (L, B, C, H, W).  h: (L,).
/// dK: (L, C, C, 3, 3), dK[l, o, i, dy, dx] = h[l]·Σ_{n,y,x} a[l,n,o,y,x]·u[l,n,i,y+dy−1,x+dx−1].
/// db: (L, C), db[l, o] = h[l]·Σ_{n,y,x} a[l,n,o,y,x], written by the blocks with i = 0.
/// Grid: x = L·C·C; block GB_CONV_GRAD_THREADS.  Each thread sums a fixed strided subset of the
/// (n, pixel) pairs, then a fixed-order tree in shared memory combines the partial sums: no
/// atomics, so the result is bitwise reproducible.
template <typename T>
__global__ void __launch_bounds__(GB_CONV_GRAD_THREADS)
conv_param_grad_kernel(const T* __restrict__ a, const T* __restrict__ u, const T* __restrict__ h,
                       T* __restrict__ dK, T* __restrict__ db, int L, int B, int C, int H, int W) {
    constexpr int NT = GB_CONV_GRAD_THREADS;
    __shared__ T s_red[10][NT];

    const int tid = threadIdx.x;
    const long long blk = blockIdx.x;  // (l·C + o)·C + i
    const int i = (int)(blockIdx.x % (unsigned)C);
    const int o = (int)((blockIdx.x / (unsigned)C) % (unsigned)C);
    const int l = (int)(blockIdx.x / ((unsigned)C * (unsigned)C));
    // 32-bit pixel indices (64-bit division is a called subroutine in PTX); the launchers check
    // that B·H·W fits.
    const int plane = H * W;
    const int npix = B * plane;

    T acc[10];
#pragma unroll
    for (int k = 0; k < 10; ++k) acc[k] = T(0);
    for (int e = tid; e < npix; e += NT) {
        const int n = e / plane, p = e % plane;
        const int y = p / W, xq = p % W;
        const long long sample = ((long long)l * B + n) * C;
        const T av = a[(sample + o) * plane + p];
        const T* ui = u + (sample + i) * plane;
        acc[9] += av;
#pragma unroll
        for (int dy = 0; dy < 3; ++dy) {
            const int yy = y + dy - 1;
#pragma unroll
            for (int dx = 0; dx < 3; ++dx) {
                const int xx = xq + dx - 1;
                if (yy >= 0 && yy < H && xx >= 0 && xx < W) acc[dy * 3 + dx] += av * ui[(long long)yy * W + xx];
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 10; ++k) s_red[k][tid] = acc[k];
    __syncthreads();
    for (int s = NT / 2; s > 0; s >>= 1) {
        if (tid < s) {
#pragma unroll
            for (int k = 0; k < 10; ++k) s_red[k][tid] += s_red[k][tid + s];
        }
        __syncthreads();
    }
    const T hl = h[l];
    if (tid < 9) dK[blk * 9 + tid] = hl * s_red[tid][0];
    if (tid == 9 && i == 0) db[(long long)l * C + o] = hl * s_red[9][0];
}
