// extern "C" entry points for the emulated kernels, one per template instance, called through
// ctypes by tests/test_kernels_emulation.py.  Compiled with -include cuda_shim.h and
// -I <kernel dir>, so the kernel sources are the unmodified kernels/*.cu files (or, for the
// planted-bug tests, an edited copy of them).  `geom` is {grid.x, grid.y, grid.z, block.x,
// block.y, block.z} as computed by gpubraid.cuda's launch-geometry functions.
#include "conv.cu"
#include "dense.cu"

#define GB_GEOM dim3(geom[0], geom[1], geom[2]), dim3(geom[3], geom[4], geom[5])

#define GB_EMU_CONV(T, MODE)                                                                      \
    extern "C" void emu_conv3x3_##T##_##MODE(const unsigned* geom, const T* x, const T* K,         \
                                             const T* b, const T* h, const T* r, T* out, int L,    \
                                             int B, int C, int H, int W, int act) {                \
        emu::launch(GB_GEOM, [&] { conv3x3_kernel<T, MODE>(x, K, b, h, r, out, L, B, C, H, W, act); }); \
    }

#define GB_EMU_TYPE(T)                                                                            \
    GB_EMU_CONV(T, 0)                                                                             \
    GB_EMU_CONV(T, 1)                                                                             \
    GB_EMU_CONV(T, 2)                                                                             \
    extern "C" void emu_conv_param_grad_##T(const unsigned* geom, const T* a, const T* u,          \
                                            const T* h, T* dK, T* db, int L, int B, int C, int H,  \
                                            int W) {                                               \
        emu::launch(GB_GEOM, [&] { conv_param_grad_kernel<T>(a, u, h, dK, db, L, B, C, H, W); });  \
    }                                                                                             \
    extern "C" void emu_dense_act_##T##_0(const unsigned* geom, const T* z, const T* b,            \
                                          const T* h, const T* r, T* out, int L, int B, int C,     \
                                          int act) {                                               \
        emu::launch(GB_GEOM, [&] { dense_act_kernel<T, 0>(z, b, h, r, out, L, B, C, act); });     \
    }                                                                                             \
    extern "C" void emu_dense_act_##T##_1(const unsigned* geom, const T* z, const T* b,            \
                                          const T* h, const T* r, T* out, int L, int B, int C,     \
                                          int act) {                                               \
        emu::launch(GB_GEOM, [&] { dense_act_kernel<T, 1>(z, b, h, r, out, L, B, C, act); });     \
    }                                                                                             \
    extern "C" void emu_dense_bias_grad_##T(const unsigned* geom, const T* a, const T* h, T* db,   \
                                            int L, int B, int C) {                                 \
        emu::launch(GB_GEOM, [&] { dense_bias_grad_kernel<T>(a, h, db, L, B, C); });               \
    }

#define GB_EMU_SWEEPS(T, CW)                                                                      \
    extern "C" void emu_dense_sweep_forward_##T##_##CW(const unsigned* geom, T* U, long long su, T* D, \
                                                       const T* K, const T* b, const T* h, int n,  \
                                                       int B, int C, int act) {                    \
        emu::launch(GB_GEOM, [&] { dense_sweep_forward_kernel<T, CW>(U, su, D, K, b, h, n, B, C, act); }); \
    }                                                                                             \
    extern "C" void emu_dense_sweep_backward_##T##_##CW(const unsigned* geom, const T* U, long long su, \
                                                        T* Lam, long long sl, const T* D, T* A,    \
                                                        const T* K, const T* b, const T* h, int n, \
                                                        int B, int C, int act) {                   \
        emu::launch(GB_GEOM, [&] {                                                                \
            dense_sweep_backward_kernel<T, CW>(U, su, Lam, sl, D, A, K, b, h, n, B, C, act);       \
        });                                                                                       \
    }                                                                                             \
    extern "C" void emu_dense_chain_forward_##T##_##CW(const unsigned* geom, const T* u0, T* V,    \
                                                       long long sv, const T* G, long long sg,     \
                                                       const T* K, const T* b, const T* h, int n,  \
                                                       int B, int C, int act) {                    \
        emu::launch(GB_GEOM, [&] {                                                                \
            dense_chain_forward_kernel<T, CW>(u0, V, sv, G, sg, K, b, h, n, B, C, act);            \
        });                                                                                       \
    }                                                                                             \
    extern "C" void emu_dense_chain_adjoint_##T##_##CW(const unsigned* geom, const T* w0, T* W,    \
                                                       long long sw, const T* G, long long sg,     \
                                                       const T* U, long long su, const T* K,       \
                                                       const T* b, const T* h, int n, int B, int C, \
                                                       int act) {                                  \
        emu::launch(GB_GEOM, [&] {                                                                \
            dense_chain_adjoint_kernel<T, CW>(w0, W, sw, G, sg, U, su, K, b, h, n, B, C, act);     \
        });                                                                                       \
    }

// The sweeps' width instances: 0 (run-time width) and gpubraid.runtime.cuda.SWEEP_WIDTHS.
#define GB_EMU_SWEEP_WIDTHS(T) \
    GB_EMU_SWEEPS(T, 0)        \
    GB_EMU_SWEEPS(T, 4)        \
    GB_EMU_SWEEPS(T, 8)        \
    GB_EMU_SWEEPS(T, 16)

GB_EMU_TYPE(float)
GB_EMU_TYPE(double)
GB_EMU_SWEEP_WIDTHS(float)
GB_EMU_SWEEP_WIDTHS(double)
