// Minimal CUDA-on-CPU shim: lets g++ compile the unmodified kernels/*.cu files and run their
// kernels on the host, for tests/test_kernels_emulation.py.
//
// Execution model.  emu::launch runs the blocks of a grid one after another.  The threads of a
// block are user-space fibers (ucontext) on one OS thread: the scheduler resumes every runnable
// fiber in turn; a fiber runs until it calls __syncthreads() or returns.  When every fiber of the
// block waits at the barrier (or has exited, as on hardware) all of them are released.  The order
// alternates between ascending and descending thread index from one barrier phase to the next,
// so a kernel that reads shared memory before the barrier that publishes it sees stale data
// deterministically: a missing __syncthreads() gives wrong results, every run, not sometimes.
//
// __shared__ becomes `static`: storage shared by all fibers of the current block, and since
// blocks run one at a time there is no aliasing across blocks (nor, with static storage, any
// zero-initialisation a real GPU would not give either: values persist from the previous block).
// threadIdx/blockIdx/blockDim/gridDim are plain globals that the scheduler sets before resuming
// a fiber (one OS thread runs all fibers, so thread_local storage is not needed).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

enum class State { Runnable, AtBarrier, Done };

struct Fiber {
    ucontext_t ctx;
    State state;
    dim3 idx;
};

constexpr size_t kStackBytes = 64 * 1024;

inline ucontext_t scheduler_ctx;
inline std::vector<Fiber> fibers;
inline std::vector<char> stacks;
inline size_t current = 0;
inline const std::function<void()>* body = nullptr;

inline void fiber_main() {
    (*body)();
    fibers[current].state = State::Done;
    // Returning resumes scheduler_ctx through uc_link.
}

inline void barrier() {
    asm volatile("" ::: "memory");
    fibers[current].state = State::AtBarrier;
    swapcontext(&fibers[current].ctx, &scheduler_ctx);
    asm volatile("" ::: "memory");
}

inline void resume(size_t t) {
    current = t;
    threadIdx = fibers[t].idx;
    swapcontext(&scheduler_ctx, &fibers[t].ctx);
}

/// Run `kernel` (a callable invoking the kernel with its arguments) on grid × block.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    const size_t nt = (size_t)block.x * block.y * block.z;
    if (nt == 0 || nt > 1024) {
        fprintf(stderr, "emu::launch: invalid block size %zu\n", nt);
        abort();
    }
    gridDim = grid;
    blockDim = block;
    body = &kernel;
    fibers.assign(nt, Fiber{});
    stacks.assign(nt * kStackBytes, 0);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3(bx, by, bz);
                for (size_t t = 0; t < nt; ++t) {
                    Fiber& f = fibers[t];
                    f.state = State::Runnable;
                    f.idx = dim3(t % block.x, (t / block.x) % block.y, t / ((size_t)block.x * block.y));
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = stacks.data() + t * kStackBytes;
                    f.ctx.uc_stack.ss_size = kStackBytes;
                    f.ctx.uc_link = &scheduler_ctx;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                for (bool ascending = true;; ascending = !ascending) {
                    for (size_t k = 0; k < nt; ++k) {
                        const size_t t = ascending ? k : nt - 1 - k;
                        if (fibers[t].state == State::Runnable) resume(t);
                    }
                    bool waiting = false;
                    for (Fiber& f : fibers)
                        if (f.state == State::AtBarrier) {
                            f.state = State::Runnable;
                            waiting = true;
                        }
                    if (!waiting) break;
                }
            }
}

}  // namespace emu

inline void __syncthreads() { emu::barrier(); }

// The read-only data cache load: a plain load on the host.
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
