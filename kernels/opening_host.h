// The body of the dense opening layer's kernels for one floating-point type, included by dense_host.c
// once per type with T, NAME(x) and EXP as for dense_host.h (after it: NAME(act) is its activation).
//
// u_0 = σ(K x + b) for B samples of d inputs and C channels (row-major x (B × d), K (C × d), b (C)),
// the formulas of gpubraid.network.openings.DenseOpening in one call each instead of a NumPy matrix
// product, the activation's elementwise passes and two reductions (5000 samples, 2 -> 8 channels:
// some 250 µs forward and 570 µs for the gradient; on rank 0 of a pipeline both lie where the other
// ranks wait):
//
//   gb_open_forward_<t>  U = σ(x Kᵀ + b)                                     (B × C, written)
//   gb_open_grad_<t>     a = σ'(x Kᵀ + b) ⊙ Λ (Λ = ∂ℓ/∂u_0, B × C):
//                        gK = Σ_rows a xᵀ (C × d),  gb = Σ_rows a (C)          (written)
//
// Rows go CHUNK / C at a time (the activation's loop vectorises over the chunk); the gradient's sums
// are kept per chunk in T and added in double; the usual widths are compiled as constants (DISPATCH).
// Returns 0; 1 (nothing written) when C or d is not in 1..MAX_C (wider inputs are matrix products,
// where NumPy's BLAS does better).

static inline INLINE void NAME(open_pre)(int64_t rows, int64_t d, int64_t C, const T *restrict Kt,
                                         const T *restrict b, const T *restrict x, T *restrict Z) {
    for (int64_t r = 0; r < rows; ++r) {
        T *restrict z = Z + r * C;
        const T *restrict xr = x + r * d;
        for (int64_t o = 0; o < C; ++o) z[o] = b[o];
        for (int64_t j = 0; j < d; ++j) {
            const T *restrict kj = Kt + j * C;
            const T a = xr[j];
            for (int64_t o = 0; o < C; ++o) z[o] += kj[o] * a;
        }
    }
}

static inline INLINE void NAME(open_transpose)(int64_t d, int64_t C, const T *restrict K, T *restrict Kt) {
    for (int64_t o = 0; o < C; ++o)
        for (int64_t j = 0; j < d; ++j) Kt[j * C + o] = K[o * d + j];
}

static inline INLINE void NAME(open_forward)(int64_t B, int64_t d, int64_t C, int act, const T *restrict x,
                                             const T *restrict K, const T *restrict b, T *restrict U) {
    T Kt[MAX_C * MAX_C], D[CHUNK];
    NAME(open_transpose)(d, C, K, Kt);
    const int64_t rows = CHUNK / C;
    for (int64_t r0 = 0; r0 < B; r0 += rows) {
        const int64_t R = B - r0 < rows ? B - r0 : rows;
        NAME(open_pre)(R, d, C, Kt, b, x + r0 * d, U + r0 * C);
        NAME(act)(act, R * C, U + r0 * C, D);
    }
}

int NAME(gb_open_forward)(int64_t B, int64_t d, int64_t C, int act, const T *restrict x, const T *restrict K,
                          const T *restrict b, T *restrict U) {
    if (d < 1 || d > MAX_C) return 1;
#define CALL(CC) NAME(open_forward)(B, d, CC, act, x, K, b, U)
    DISPATCH()
#undef CALL
}

static inline INLINE void NAME(open_grad)(int64_t B, int64_t d, int64_t C, int act, const T *restrict x,
                                          const T *restrict lam, const T *restrict K, const T *restrict b,
                                          T *restrict gK, T *restrict gb) {
    T Kt[MAX_C * MAX_C], Z[CHUNK], D[CHUNK], A[CHUNK], G[MAX_C * MAX_C], Gb[MAX_C];
    double SK[MAX_C * MAX_C], Sb[MAX_C];  // SK[j C + o] = gK[o][j]: the inner loops run over channels
    NAME(open_transpose)(d, C, K, Kt);
    for (int64_t q = 0; q < C * d; ++q) SK[q] = 0;
    for (int64_t o = 0; o < C; ++o) Sb[o] = 0;
    const int64_t rows = CHUNK / C;
    for (int64_t r0 = 0; r0 < B; r0 += rows) {
        const int64_t R = B - r0 < rows ? B - r0 : rows;
        NAME(open_pre)(R, d, C, Kt, b, x + r0 * d, Z);
        NAME(act)(act, R * C, Z, D);
        const T *restrict l = lam + r0 * C;
        for (int64_t q = 0; q < R * C; ++q) A[q] = D[q] * l[q];
        for (int64_t q = 0; q < C * d; ++q) G[q] = 0;
        for (int64_t o = 0; o < C; ++o) Gb[o] = 0;
        for (int64_t r = 0; r < R; ++r) {
            const T *restrict xr = x + (r0 + r) * d;
            const T *restrict ar = A + r * C;
            for (int64_t j = 0; j < d; ++j) {
                const T xj = xr[j];
                T *restrict gj = G + j * C;
                for (int64_t o = 0; o < C; ++o) gj[o] += ar[o] * xj;
            }
            for (int64_t o = 0; o < C; ++o) Gb[o] += ar[o];
        }
        for (int64_t q = 0; q < C * d; ++q) SK[q] += (double)G[q];
        for (int64_t o = 0; o < C; ++o) Sb[o] += (double)Gb[o];
    }
    for (int64_t o = 0; o < C; ++o)
        for (int64_t j = 0; j < d; ++j) gK[o * d + j] = (T)SK[j * C + o];
    for (int64_t o = 0; o < C; ++o) gb[o] = (T)Sb[o];
}

int NAME(gb_open_grad)(int64_t B, int64_t d, int64_t C, int act, const T *restrict x, const T *restrict lam,
                       const T *restrict K, const T *restrict b, T *restrict gK, T *restrict gb) {
    if (d < 1 || d > MAX_C) return 1;
#define CALL(CC) NAME(open_grad)(B, d, CC, act, x, lam, K, b, gK, gb)
    DISPATCH()
#undef CALL
}
