// The body of the classifier head's kernel for one floating-point type, included by dense_host.c once
// per type with T, NAME(x) and EXP as for dense_host.h.
//
// Softmax cross-entropy for B samples of D features and K classes (row-major U (B × D), W (K × D),
// c (K), integer labels y (B)), the formulas of gpubraid.network.heads.Classifier in one call instead
// of some twenty NumPy calls (which, run between two layer sweeps, find the caches cold and cost
// ~150 µs for a micro-batch of 625 samples of width 8):
//
//   z_i = W u_i + c,  m_i = max_k z_ik,  s_i = Σ_k exp(z_ik − m_i)
//   *loss = Σ_i (log s_i − (z_{i,y_i} − m_i))   (in double; the caller divides by B)
//   *correct = #{i : argmax_k z_ik = y_i}       (the first maximum, as NumPy's argmax)
//
// and, when lam is not NULL, with p_i = (exp(z_i − m_i) / s_i − e_{y_i}) / B:
//
//   lam_i = Wᵀ p_i  (B × D),   gW = Σ_i p_i u_iᵀ  (K × D),   gc = Σ_i p_i  (K)   (written)
//
// Rows go HEAD_ROWS at a time: their exps in one vectorised loop, log s_i as the log of the block's
// product (s_i ∈ [1, K], K ≤ 64: a product of 64 stays below 2^384), and the block's gradient sums
// in T, added in double.  Returns 0; 1 (nothing written) when D or K exceeds MAX_C or a label lies
// outside 0..K−1.

static inline INLINE void NAME(xent_rows)(int64_t R, int64_t D, int64_t K, const T *restrict u,
                                          const int64_t *restrict y, const T *restrict W, const T *restrict c,
                                          T inv, double *total, int64_t *hits, T *restrict lam, double *restrict SW,
                                          double *restrict Sc) {
    T Z[HEAD_ROWS * MAX_C], E[HEAD_ROWS * MAX_C], S[HEAD_ROWS], G[MAX_C * MAX_C], Gc[MAX_C];
    for (int64_t r = 0; r < R; ++r) {
        const T *restrict ur = u + r * D;
        T *restrict z = Z + r * K;
        for (int64_t k = 0; k < K; ++k) {
            const T *restrict wk = W + k * D;
            T a = 0;
            for (int64_t j = 0; j < D; ++j) a += wk[j] * ur[j];
            z[k] = a + c[k];
        }
        T m = z[0];
        for (int64_t k = 1; k < K; ++k) m = z[k] > m ? z[k] : m;
        int64_t arg = -1;
        for (int64_t k = 0; k < K; ++k) {
            z[k] -= m;
            if (arg < 0 && z[k] == 0) arg = k;
        }
        *hits += arg == y[r];
    }
    for (int64_t q = 0; q < R * K; ++q) E[q] = EXP(Z[q]);
    double prod = 1, zy = 0;
    for (int64_t r = 0; r < R; ++r) {
        T s = 0;
        for (int64_t k = 0; k < K; ++k) s += E[r * K + k];
        S[r] = s;
        prod *= (double)s;
        zy += (double)Z[r * K + y[r]];
    }
    *total += log(prod) - zy;
    if (!lam) return;
    for (int64_t q = 0; q < K * D; ++q) G[q] = 0;
    for (int64_t k = 0; k < K; ++k) Gc[k] = 0;
    for (int64_t r = 0; r < R; ++r) {
        const T *restrict ur = u + r * D;
        T *restrict l = lam + r * D;
        for (int64_t j = 0; j < D; ++j) l[j] = 0;
        for (int64_t k = 0; k < K; ++k) {
            const T p = (E[r * K + k] / S[r] - (k == y[r] ? (T)1 : (T)0)) * inv;
            const T *restrict wk = W + k * D;
            T *restrict gk = G + k * D;
            for (int64_t j = 0; j < D; ++j) {
                l[j] += p * wk[j];
                gk[j] += p * ur[j];
            }
            Gc[k] += p;
        }
    }
    for (int64_t q = 0; q < K * D; ++q) SW[q] += (double)G[q];
    for (int64_t k = 0; k < K; ++k) Sc[k] += (double)Gc[k];
}

int NAME(gb_softmax_xent)(int64_t B, int64_t D, int64_t K, const T *restrict U, const int64_t *restrict y,
                          const T *restrict W, const T *restrict c, double *loss, int64_t *correct,
                          T *restrict lam, T *restrict gW, T *restrict gc) {
    if (D < 1 || D > MAX_C || K < 1 || K > MAX_C) return 1;
    for (int64_t i = 0; i < B; ++i)
        if (y[i] < 0 || y[i] >= K) return 1;
    double SW[MAX_C * MAX_C], Sc[MAX_C], total = 0;
    int64_t hits = 0;
    for (int64_t q = 0; q < K * D; ++q) SW[q] = 0;
    for (int64_t k = 0; k < K; ++k) Sc[k] = 0;
    const T inv = (T)1 / (T)B;
    for (int64_t r0 = 0; r0 < B; r0 += HEAD_ROWS) {
        const int64_t R = B - r0 < HEAD_ROWS ? B - r0 : HEAD_ROWS;
        T *l = lam ? lam + r0 * D : NULL;
#define CALL(DD) NAME(xent_rows)(R, DD, K, U + r0 * D, y + r0, W, c, inv, &total, &hits, l, SW, Sc)
        switch (D) {
            case 4: CALL(4); break;
            case 8: CALL(8); break;
            case 16: CALL(16); break;
            case 32: CALL(32); break;
            default: CALL(D); break;
        }
#undef CALL
    }
    *loss = total;
    *correct = hits;
    if (lam) {
        for (int64_t q = 0; q < K * D; ++q) gW[q] = (T)SW[q];
        for (int64_t k = 0; k < K; ++k) gc[k] = (T)Sc[k];
    }
    return 0;
}
