// The body of kernels/dense_host.c for one floating-point type, included once per type with
//   T        the element type (double, float)
//   NAME(x)  x with the type's suffix (x_f64, x_f32)
//   EXP      an exp for T that the compiler can vectorise (gb_exp_f64, gb_exp_f32)
// defined by the includer (C has no templates).  Rows are handled CHUNK / C at a time, so the
// elementwise loops (activation, residual update) run over chunks of CHUNK numbers.

/* σ(z) into z and σ'(z) into d, for m numbers; one loop per activation so that each vectorises. */
static inline INLINE void NAME(act)(int act, int64_t m, T *restrict z, T *restrict d) {
    const T eps = (T)SMOOTH_EPS;
    if (act == ACT_TANH) {
        for (int64_t k = 0; k < m; ++k) {
            const T v = (T)2 / ((T)1 + EXP((T)-2 * z[k])) - (T)1;
            z[k] = v;
            d[k] = (T)1 - v * v;
        }
    } else if (act == ACT_RELU) {
        for (int64_t k = 0; k < m; ++k) {
            const T x = z[k];
            d[k] = x > 0 ? (T)1 : (T)0;
            z[k] = x > 0 ? x : (T)0;
        }
    } else if (act == ACT_SMOOTHRELU) {
        for (int64_t k = 0; k < m; ++k) {
            const T x = z[k], q = (x + eps) * (x + eps) / ((T)4 * eps), dq = (x + eps) / ((T)2 * eps);
            z[k] = x <= -eps ? (T)0 : (x >= eps ? x : q);
            d[k] = x <= -eps ? (T)0 : (x >= eps ? (T)1 : dq);
        }
    } else {
        for (int64_t k = 0; k < m; ++k) d[k] = 1;
    }
}

/* Z = U Kᵀ + b for R ≤ 8 rows of C (Kt = Kᵀ: the inner loop runs over contiguous outputs): R
   independent chains of C multiply-adds per output, so the adds' latency is hidden, summed in a local
   array that stays in registers where R and C are small constants. */
static inline INLINE void NAME(pre_rows)(int64_t R, int64_t C, const T *restrict Kt, const T *restrict b,
                                         const T *restrict u, T *restrict Z) {
    T acc[8][MAX_C];
    for (int64_t q = 0; q < R; ++q)
        for (int64_t o = 0; o < C; ++o) acc[q][o] = b[o];
    for (int64_t j = 0; j < C; ++j) {
        const T *restrict kj = Kt + j * C;
        for (int64_t q = 0; q < R; ++q) {
            const T a = u[q * C + j];
            for (int64_t o = 0; o < C; ++o) acc[q][o] += kj[o] * a;
        }
    }
    for (int64_t q = 0; q < R; ++q)
        for (int64_t o = 0; o < C; ++o) Z[q * C + o] = acc[q][o];
}

/* Z = U Kᵀ + b for `rows` rows of C: eight rows at a time where a row fills one 512-bit vector (64 bytes),
   else four (wider rows: more would not stay in registers; narrower: measured slower), then one. */
static inline INLINE void NAME(pre)(int64_t rows, int64_t C, const T *restrict Kt, const T *restrict b,
                                    const T *restrict u, T *restrict Z) {
    int64_t r = 0;
    for (; C * (int64_t)sizeof(T) == 64 && r + 8 <= rows; r += 8) NAME(pre_rows)(8, C, Kt, b, u + r * C, Z + r * C);
    for (; r + 4 <= rows; r += 4) NAME(pre_rows)(4, C, Kt, b, u + r * C, Z + r * C);
    for (; r < rows; ++r) NAME(pre_rows)(1, C, Kt, b, u + r * C, Z + r * C);
}

/* Lout = Lin + h A K (+ G when g is not NULL) for `rows` rows of C, four rows at a time as in pre.  Lout
   may be Lin, and g may be Lout (in place: each number is read before it is written, so lin, lout and g
   are not restrict).  Callers pass g = NULL as a constant where there is none: inlined, the branch
   folds away. */
static inline INLINE void NAME(adjoint)(int64_t rows, int64_t C, const T *restrict K, T h, const T *restrict A,
                                        const T *lin, T *lout, const T *g) {
    int64_t r = 0;
    T w0[MAX_C], w1[MAX_C], w2[MAX_C], w3[MAX_C];
    for (; r + 4 <= rows; r += 4) {
        const T *restrict a = A + r * C;
        for (int64_t j = 0; j < C; ++j) w0[j] = w1[j] = w2[j] = w3[j] = 0;
        for (int64_t o = 0; o < C; ++o) {
            const T a0 = a[o], a1 = a[C + o], a2 = a[2 * C + o], a3 = a[3 * C + o];
            const T *restrict ko = K + o * C;
            for (int64_t j = 0; j < C; ++j) {
                w0[j] += a0 * ko[j];
                w1[j] += a1 * ko[j];
                w2[j] += a2 * ko[j];
                w3[j] += a3 * ko[j];
            }
        }
        const T *l = lin + r * C;
        T *out = lout + r * C;
        if (g) {
            const T *gr = g + r * C;
            for (int64_t j = 0; j < C; ++j) {
                out[j] = l[j] + h * w0[j] + gr[j];
                out[C + j] = l[C + j] + h * w1[j] + gr[C + j];
                out[2 * C + j] = l[2 * C + j] + h * w2[j] + gr[2 * C + j];
                out[3 * C + j] = l[3 * C + j] + h * w3[j] + gr[3 * C + j];
            }
            continue;
        }
        for (int64_t j = 0; j < C; ++j) {
            out[j] = l[j] + h * w0[j];
            out[C + j] = l[C + j] + h * w1[j];
            out[2 * C + j] = l[2 * C + j] + h * w2[j];
            out[3 * C + j] = l[3 * C + j] + h * w3[j];
        }
    }
    for (; r < rows; ++r) {
        for (int64_t j = 0; j < C; ++j) w0[j] = 0;
        for (int64_t o = 0; o < C; ++o) {
            const T *restrict ko = K + o * C;
            for (int64_t j = 0; j < C; ++j) w0[j] += A[r * C + o] * ko[j];
        }
        for (int64_t j = 0; j < C; ++j)
            lout[r * C + j] = g ? lin[r * C + j] + h * w0[j] + g[r * C + j] : lin[r * C + j] + h * w0[j];
    }
}

/* SK += aᵀ u and Sb += Σ a over `rows` rows of C (A and u row-major): each output's sum over the rows in T,
   in row order, then added in double; as many outputs at a time as 1 kB of accumulators holds (16
   512-bit registers), so that they stay in registers where C is a small constant. */
static inline INLINE void NAME(grad_rows)(int64_t rows, int64_t C, const T *restrict A, const T *restrict u,
                                          double *restrict SK, double *restrict Sb) {
    enum { ACC = 1024 / sizeof(T) };
    const int64_t OB = C * C <= ACC ? C : (C < ACC ? ACC / C : 1);
    T acc[ACC], v[MAX_C];
    for (int64_t o0 = 0; o0 < C; o0 += OB) {
        const int64_t ob = C - o0 < OB ? C - o0 : OB;
        for (int64_t q = 0; q < ob; ++q) {
            for (int64_t j = 0; j < C; ++j) acc[q * C + j] = 0;
            v[q] = 0;
        }
        for (int64_t r = 0; r < rows; ++r) {
            const T *restrict ar = A + r * C + o0, *restrict ur = u + r * C;
            for (int64_t q = 0; q < ob; ++q) {
                const T a = ar[q];
                for (int64_t j = 0; j < C; ++j) acc[q * C + j] += a * ur[j];
                v[q] += a;
            }
        }
        for (int64_t q = 0; q < ob; ++q) {
            for (int64_t j = 0; j < C; ++j) SK[(o0 + q) * C + j] += (double)acc[q * C + j];
            Sb[o0 + q] += (double)v[q];
        }
    }
}

static inline void NAME(transpose)(int64_t C, const T *restrict K, T *restrict Kt) {
    for (int64_t o = 0; o < C; ++o)
        for (int64_t j = 0; j < C; ++j) Kt[j * C + o] = K[o * C + j];
}

/* V_i = U_i + h_i σ(K_i U_i + b_i) (+ G_i when G is not NULL; G may be V) for i = 0..n−1, in that order
   (a chain when V_i is U_{i+1}); σ'(z_i) into D_i when D is not NULL. */
static inline INLINE void NAME(forward)(int64_t n, int64_t B, int64_t C, int act, const T *U, int64_t su,
                                        T *V, int64_t sv, const T *K, int64_t sk, const T *b, int64_t sb,
                                        const T *h, T *D, int64_t sd, const T *G, int64_t sg) {
    T Kt[MAX_C * MAX_C], Z[CHUNK], dd[CHUNK];
    const int64_t R = CHUNK / C;
    for (int64_t i = 0; i < n; ++i) {
        NAME(transpose)(C, K + i * sk, Kt);
        const T hi = h[i];
        for (int64_t r0 = 0; r0 < B; r0 += R) {
            const int64_t rows = B - r0 < R ? B - r0 : R, m = rows * C;
            const T *restrict u = U + i * su + r0 * C;
            T *restrict v = V + i * sv + r0 * C;
            T *restrict d = D ? D + i * sd + r0 * C : dd;
            NAME(pre)(rows, C, Kt, b + i * sb, u, Z);
            NAME(act)(act, m, Z, d);
            if (G) {  // G_i may be V_i: through pointers that promise nothing
                const T *g = G + i * sg + r0 * C;
                T *w = V + i * sv + r0 * C;
                for (int64_t k = 0; k < m; ++k) w[k] = u[k] + hi * Z[k] + g[k];
                continue;
            }
            for (int64_t k = 0; k < m; ++k) v[k] = u[k] + hi * Z[k];
        }
    }
}

/* For i = n−1..0 (a chain when Lin_i is Lout_{i+1}, or one array in place when Lin = Lout with strides
   0), with a = σ'(z_i) ⊙ Lin_i:
     Lout_i = Lin_i + h_i K_iᵀ a (+ G_i when G is not NULL; G may be Lout)   (skipped when Lout is NULL)
     gK_i += h_i Σ_rows a U_iᵀ, gb_i += h_i Σ_rows a   (skipped when gK is NULL)
   σ'(z_i) from D_i, or recomputed from U_i when D is NULL.  Sums over the rows of a chunk in T,
   over the chunks in double. */
static inline INLINE void NAME(backward)(int64_t n, int64_t B, int64_t C, int act, const T *U, int64_t su,
                                         const T *Lin, int64_t sli, T *Lout, int64_t slo, const T *K, int64_t sk,
                                         const T *b, int64_t sb, const T *h, const T *D, int64_t sd, T *gK,
                                         int64_t sgk, T *gb, int64_t sgb, const T *G, int64_t sg) {
    T Kt[MAX_C * MAX_C], Z[CHUNK], dd[CHUNK], A[CHUNK];
    double SK[MAX_C * MAX_C], Sb[MAX_C];
    const int64_t R = CHUNK / C;
    for (int64_t i = n - 1; i >= 0; --i) {
        const T *restrict Ki = K + i * sk;
        const T hi = h[i];
        if (!D) NAME(transpose)(C, Ki, Kt);
        for (int64_t k = 0; k < C * C; ++k) SK[k] = 0;
        for (int64_t o = 0; o < C; ++o) Sb[o] = 0;
        for (int64_t r0 = 0; r0 < B; r0 += R) {
            const int64_t rows = B - r0 < R ? B - r0 : R, m = rows * C;
            const T *restrict u = U + i * su + r0 * C, *lin = Lin + i * sli + r0 * C;
            const T *restrict d = dd;
            if (D) {
                d = D + i * sd + r0 * C;
            } else {
                NAME(pre)(rows, C, Kt, b + i * sb, u, Z);
                NAME(act)(act, m, Z, dd);
            }
            for (int64_t k = 0; k < m; ++k) A[k] = d[k] * lin[k];
            if (Lout && G)
                NAME(adjoint)(rows, C, Ki, hi, A, lin, Lout + i * slo + r0 * C, G + i * sg + r0 * C);
            else if (Lout)
                NAME(adjoint)(rows, C, Ki, hi, A, lin, Lout + i * slo + r0 * C, NULL);
            if (!gK) continue;
            NAME(grad_rows)(rows, C, A, u, SK, Sb);
        }
        if (!gK) continue;
        T *gKi = gK + i * sgk, *gbi = gb + i * sgb;
        for (int64_t k = 0; k < C * C; ++k) gKi[k] += (T)(hi * SK[k]);
        for (int64_t o = 0; o < C; ++o) gbi[o] += (T)(hi * Sb[o]);
    }
}

/* The exported entry points: C dispatched to compile-time widths for the common sizes (the inner
   loops unrolled and vectorised there; BY_ROW_WIDTH, kernels/dense_host.c: on vectors as wide as a
   row fills); any other C ≤ MAX_C runs the generic loops.  0: done. */
#define CALL(CC) NAME(forward)(n, B, CC, act, U, su, V, sv, K, sk, b, sb, h, D, sd, G, sg)
BY_ROW_WIDTH(gb_dense_forward,
             (int64_t n, int64_t B, int64_t C, int act, const T *U, int64_t su, T *V, int64_t sv, const T *K,
              int64_t sk, const T *b, int64_t sb, const T *h, T *D, int64_t sd, const T *G, int64_t sg),
             (n, B, C, act, U, su, V, sv, K, sk, b, sb, h, D, sd, G, sg))
#undef CALL

#define CALL(CC) NAME(backward)(n, B, CC, act, U, su, Lin, sli, Lout, slo, K, sk, b, sb, h, D, sd, gK, sgk, gb, sgb, \
                               G, sg)
BY_ROW_WIDTH(gb_dense_backward,
             (int64_t n, int64_t B, int64_t C, int act, const T *U, int64_t su, const T *Lin, int64_t sli, T *Lout,
              int64_t slo, const T *K, int64_t sk, const T *b, int64_t sb, const T *h, const T *D, int64_t sd, T *gK,
              int64_t sgk, T *gb, int64_t sgb, const T *G, int64_t sg),
             (n, B, C, act, U, su, Lin, sli, Lout, slo, K, sk, b, sb, h, D, sd, gK, sgk, gb, sgb, G, sg))
#undef CALL

/* MGRIT's coarsest solve: a chain with a right-hand side, V_k = Φ_k(V_{k−1}) + G_k for k = 0..n−1 from
   V_{−1} = u0 (G NULL: none; G may be V), one step at a time. */
#define CALL(CC)                                                                                               \
    for (int64_t k = 0; k < n; ++k)                                                                            \
        NAME(forward)(1, B, CC, act, k ? V + (k - 1) * sv : u0, 0, V + k * sv, 0, K + k * sk, 0, b + k * sb, 0, \
                      h + k, NULL, 0, G ? G + k * sg : NULL, 0)
BY_ROW_WIDTH(gb_dense_chain_forward,
             (int64_t n, int64_t B, int64_t C, int act, const T *u0, T *V, int64_t sv, const T *G, int64_t sg,
              const T *K, int64_t sk, const T *b, int64_t sb, const T *h),
             (n, B, C, act, u0, V, sv, G, sg, K, sk, b, sb, h))
#undef CALL

/* Its adjoint in the adjoint solve's order (layers reversed by the caller): W_k = W_{k−1} + h_k K_kᵀ
   (σ'(K_k U_k + b_k) ⊙ W_{k−1}) + G_k for k = 0..n−1 from W_{−1} = w0 (G NULL: none; G may be W). */
#define CALL(CC)                                                                                                 \
    for (int64_t k = 0; k < n; ++k)                                                                              \
        NAME(backward)(1, B, CC, act, U + k * su, 0, k ? W + (k - 1) * sw : w0, 0, W + k * sw, 0, K + k * sk, 0, \
                       b + k * sb, 0, h + k, NULL, 0, NULL, 0, NULL, 0, G ? G + k * sg : NULL, 0)
BY_ROW_WIDTH(gb_dense_chain_adjoint,
             (int64_t n, int64_t B, int64_t C, int act, const T *w0, T *W, int64_t sw, const T *G, int64_t sg,
              const T *U, int64_t su, const T *K, int64_t sk, const T *b, int64_t sb, const T *h),
             (n, B, C, act, w0, W, sw, G, sg, U, su, K, sk, b, sb, h))
#undef CALL
