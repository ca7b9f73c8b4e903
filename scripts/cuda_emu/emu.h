// keel's CUDA emulator: runs the real kernel source of src/ops/cuda/*.cu on the CPU, so that the
// kernels' numerics can be checked without a GPU (scripts/cuda_emu/README.md).
//
// Model: a block's threads are cooperative fibers (ucontext) on one OS thread; blocks of a launch
// run one after another. A fiber runs until it reaches a barrier (__syncthreads, or a warp
// shuffle / vote / __syncwarp, which synchronize the lanes of its warp). The scheduler runs one
// warp at a time as far as it can go (to its next __syncthreads), warps in ascending order
// (EMU_SCHED=rev: descending, rand: a seeded random order of warps and lanes), so a missing
// __syncthreads shows up as a wrong result, deterministically.
// A block in which no fiber can run (a barrier some threads never reach, a shuffle over a lane that
// has exited) is reported as a deadlock and the program stops.
//
// Shared memory: static `__shared__` variables become function statics (scripts/cuda_emu/prep.py
// adds a call that fills them with NaN bytes at the first touch in each block), and
// `extern __shared__ T name[];` becomes a pointer to emu::dyn_smem, filled with NaN bytes before
// every block. Global memory is host memory: the harnesses fill outputs with NaN before a launch.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Keywords and types.

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// __restrict__ is a GCC keyword already.

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

inline dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) double2 { double x, y; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline int2 make_int2(int a, int b) { return {a, b}; }
inline int4 make_int4(int a, int b, int c, int d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline double2 make_double2(double a, double b) { return {a, b}; }

// ---------------------------------------------------------------------------------------------
// Math: the device library's functions are the host's (glibc's f32 functions are at least as
// accurate as CUDA's), and no multiply-add is contracted (g++ -std=c++20 does not contract; the
// GPU build does, with --fmad=true: tolerances must allow for it).

using std::isfinite;
using std::isinf;
using std::isnan;
using std::max;
using std::min;
inline long long min(long long a, int b) { return a < b ? a : b; }
inline long long min(int a, long long b) { return a < b ? a : b; }
inline long long max(long long a, int b) { return a > b ? a : b; }
inline long long max(int a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, int b) { return a < (unsigned)b ? a : (unsigned)b; }
inline unsigned min(int a, unsigned b) { return (unsigned)a < b ? (unsigned)a : b; }

template <class To, class From>
inline To emu_bits(From f) {
    static_assert(sizeof(To) == sizeof(From));
    To t;
    std::memcpy(&t, &f, sizeof t);
    return t;
}
inline float __int_as_float(int i) { return emu_bits<float>(i); }
inline float __uint_as_float(unsigned i) { return emu_bits<float>(i); }
inline int __float_as_int(float f) { return emu_bits<int>(f); }
inline unsigned __float_as_uint(float f) { return emu_bits<unsigned>(f); }
inline double __longlong_as_double(long long i) { return emu_bits<double>(i); }
inline long long __double_as_longlong(double d) { return emu_bits<long long>(d); }
inline unsigned long long __double_as_ulonglong(double d) { return emu_bits<unsigned long long>(d); }

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frsqrt_rn(float a) { return (float)(1.0 / std::sqrt((double)a)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float rsqrtf(float a) { return (float)(1.0 / std::sqrt((double)a)); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---------------------------------------------------------------------------------------------
// The scheduler.

namespace emu {

[[noreturn]] inline void die(const char* what) {
    std::fprintf(stderr, "emu: %s\n", what);
    std::fflush(stdout);
    std::exit(3);
}

struct Barrier {
    int expected = 0, arrived = 0;
    unsigned gen = 0;
};

struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    dim3 tid;
    bool done = false;
    const unsigned* wait = nullptr;  // blocked while *wait == wait_val
    unsigned wait_val = 0;
};

constexpr size_t kStack = 256 * 1024;
constexpr size_t kDynSmem = 228 * 1024;  // the most a block can have (sm_90: 227 KiB)
alignas(128) inline unsigned char dyn_smem[kDynSmem];

struct State {
    ucontext_t main_ctx;
    std::vector<Fiber> fibers;
    int cur = -1;
    int nthreads = 0;
    Barrier block_bar;
    std::vector<Barrier> warp_bar;
    std::vector<std::vector<unsigned long long>> shfl_buf;  // [warp][parity * 32 + lane]
    std::vector<unsigned> shfl_parity;                       // per lane
    std::function<void()> body;
    unsigned epoch = 0;  // blocks run so far (static shared memory is poisoned once per epoch)
    const char* kernel = "";
    int sched = -1;  // 0 fwd, 1 rev, 2 rand
    std::mt19937 rng{12345};
};
inline State S;

inline int sched_mode() {
    if (S.sched < 0) {
        const char* e = std::getenv("EMU_SCHED");
        S.sched = !e || !std::strcmp(e, "fwd") ? 0 : !std::strcmp(e, "rev") ? 1 : !std::strcmp(e, "rand") ? 2 : -2;
        if (S.sched == -2) die("EMU_SCHED must be fwd, rev or rand");
    }
    return S.sched;
}

inline int linear_tid() { return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }

inline void yield_blocked(const unsigned* gen) {
    Fiber& f = S.fibers[S.cur];
    f.wait = gen;
    f.wait_val = *gen;
    swapcontext(&f.ctx, &S.main_ctx);
}

inline void arrive(Barrier& b) {
    if (++b.arrived >= b.expected) {
        b.arrived = 0;
        b.gen++;
        return;
    }
    yield_blocked(&b.gen);
}

inline void fiber_main() {
    S.body();
    Fiber& f = S.fibers[S.cur];
    f.done = true;
    // An exited thread no longer holds up __syncthreads (what GPUs do in practice); it still
    // counts for its warp's shuffles, so a shuffle over an exited lane deadlocks and is reported.
    S.block_bar.expected--;
    if (S.block_bar.arrived > 0 && S.block_bar.arrived >= S.block_bar.expected) {
        S.block_bar.arrived = 0;
        S.block_bar.gen++;
    }
    swapcontext(&f.ctx, &S.main_ctx);
    die("a finished fiber was resumed");
}

inline void run_block(unsigned nthreads, dim3 block) {
    S.nthreads = (int)nthreads;
    if (S.fibers.size() < nthreads) S.fibers.resize(nthreads);
    const int warps = (int)(nthreads + 31) / 32;
    S.block_bar = Barrier{(int)nthreads, 0, 0};
    S.warp_bar.assign(warps, Barrier{});
    for (int w = 0; w < warps; w++) S.warp_bar[w].expected = std::min(32, (int)nthreads - 32 * w);
    S.shfl_buf.assign(warps, std::vector<unsigned long long>(64, 0));
    S.shfl_parity.assign(nthreads, 0);
    for (unsigned t = 0; t < nthreads; t++) {
        Fiber& f = S.fibers[t];
        if (!f.stack) f.stack = static_cast<char*>(std::malloc(kStack));
        if (!f.stack) die("out of memory for fiber stacks");
        f.tid = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
        f.done = false;
        f.wait = nullptr;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    // Warps one at a time: a warp's lanes run (in lane order) until none of them can go on, i.e.
    // until the warp is at __syncthreads or done; then the next warp. Each warp thus runs as far
    // ahead of the others as the barriers allow, which turns a missing __syncthreads into a wrong
    // result (fwd: warps in ascending order, rev: descending, rand: a random order per sweep).
    std::vector<int> worder(warps);
    for (int w = 0; w < warps; w++) worder[w] = sched_mode() == 1 ? warps - 1 - w : w;
    std::vector<int> lanes(32);
    int live = (int)nthreads;
    while (live > 0) {
        if (sched_mode() == 2) std::shuffle(worder.begin(), worder.end(), S.rng);
        bool progress = false;
        for (int w : worder) {
            const int n = S.warp_bar[w].expected;
            for (int l = 0; l < n; l++) lanes[l] = 32 * w + l;
            if (sched_mode() == 2) std::shuffle(lanes.begin(), lanes.begin() + n, S.rng);
            for (bool ran = true; ran;) {
                ran = false;
                for (int i = 0; i < n; i++) {
                    const int t = lanes[i];
                    Fiber& f = S.fibers[t];
                    if (f.done) continue;
                    if (f.wait && *f.wait == f.wait_val) continue;
                    f.wait = nullptr;
                    S.cur = t;
                    threadIdx = f.tid;
                    swapcontext(&S.main_ctx, &f.ctx);
                    ran = progress = true;
                    if (f.done) live--;
                }
            }
        }
        if (!progress) {
            char msg[256];
            int at_block = 0;
            for (unsigned t = 0; t < nthreads; t++)
                if (!S.fibers[t].done && S.fibers[t].wait == &S.block_bar.gen) at_block++;
            std::snprintf(msg, sizeof msg,
                          "deadlock in %s, block (%u, %u, %u): %d threads live, %d of them at __syncthreads, the "
                          "rest at a warp barrier (shuffle over an exited or diverged lane?)",
                          S.kernel, blockIdx.x, blockIdx.y, blockIdx.z, live, at_block);
            die(msg);
        }
    }
    S.cur = -1;
}

// Max threads of each kernel's __launch_bounds__, registered by the generated module files.
struct Bound {
    const char* name;
    int max_threads;
};
inline std::vector<Bound>& bounds() {
    static std::vector<Bound> b;
    return b;
}
struct BoundsReg {
    BoundsReg(std::initializer_list<Bound> l) { bounds().insert(bounds().end(), l.begin(), l.end()); }
};

// Fills a static __shared__ variable with NaN bytes at its first touch in each block.
struct SharedSeen {
    const void* p;
    unsigned epoch;
};
inline void shared_touch(void* p, size_t bytes) {
    static std::vector<SharedSeen> seen;
    for (auto& s : seen)
        if (s.p == p) {
            if (s.epoch != S.epoch) {
                s.epoch = S.epoch;
                std::memset(p, 0xff, bytes);
            }
            return;
        }
    seen.push_back({p, S.epoch});
    std::memset(p, 0xff, bytes);
}

template <class F>
struct Kernel {
    const char* name;
    F* fn;
};

template <class T, class A, class B>
auto pick(const char* fname, A* f32, const char* bname, B* bf16) {
    if constexpr (std::is_same_v<T, float>) return Kernel<A>{fname, f32};
    else return Kernel<B>{bname, bf16};
}

inline long long launches = 0;

// Runs kernel k over grid x block threads with dyn_smem bytes of dynamic shared memory, checking
// the launch as the driver would (block size against the hardware limit and the kernel's
// __launch_bounds__, grid limits, dynamic shared memory).
template <class F, class... Args>
void launch(const Kernel<F>& k, dim3 grid, dim3 block, size_t dyn, Args... args) {
    char msg[256];
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    int bound = 1024;
    for (auto& b : bounds())
        if (!std::strcmp(b.name, k.name)) bound = b.max_threads;
    if (threads == 0 || threads > 1024 || (int)threads > bound || block.z > 64) {
        std::snprintf(msg, sizeof msg, "launch of %s: block (%u, %u, %u) exceeds the limit (%d threads)", k.name,
                      block.x, block.y, block.z, bound);
        die(msg);
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        std::snprintf(msg, sizeof msg, "launch of %s: bad grid (%u, %u, %u)", k.name, grid.x, grid.y, grid.z);
        die(msg);
    }
    if (dyn > 227 * 1024) {
        std::snprintf(msg, sizeof msg, "launch of %s: %zu bytes of dynamic shared memory", k.name, dyn);
        die(msg);
    }
    launches++;
    S.kernel = k.name;
    S.body = [&] { k.fn(args...); };
    blockDim = block;
    gridDim = grid;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = dim3(x, y, z);
                S.epoch++;
                std::memset(dyn_smem, 0xff, std::min(kDynSmem, dyn + 256));
                run_block((unsigned)threads, block);
            }
    S.body = nullptr;
}

// ---- warp-level primitives (full warps only: mask must name every lane the warp has) ----

inline void check_mask(unsigned mask, int warp) {
    const int lanes = S.warp_bar[warp].expected;
    const unsigned full = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    if (mask != full) {
        char msg[160];
        std::snprintf(msg, sizeof msg, "%s: warp primitive with mask %08x, warp has lanes %08x (partial masks are not emulated)",
                      S.kernel, mask, full);
        die(msg);
    }
}

// Every lane publishes v, then reads lane src(lane)'s value (its own if src is out of range).
template <class T, class Src>
inline T exchange(unsigned mask, T v, Src src) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
    const int t = linear_tid(), w = t / 32, lane = t % 32;
    check_mask(mask, w);
    const unsigned par = S.shfl_parity[t];
    S.shfl_parity[t] ^= 1u;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    auto& buf = S.shfl_buf[w];
    buf[par * 32 + lane] = bits;
    arrive(S.warp_bar[w]);
    const int s = src(lane);
    if (s < 0 || s >= S.warp_bar[w].expected) return v;
    T r;
    std::memcpy(&r, &buf[par * 32 + s], sizeof(T));
    return r;
}

}  // namespace emu

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return emu::exchange(mask, v, [&](int lane) { return (lane & ~(width - 1)) + (src & (width - 1)); });
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu::exchange(mask, v, [&](int lane) {
        int s = lane ^ lane_mask;
        return (s & ~(width - 1)) == (lane & ~(width - 1)) ? s : lane;
    });
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu::exchange(mask, v, [&](int lane) {
        int s = lane + (int)delta;
        return (s & ~(width - 1)) == (lane & ~(width - 1)) ? s : lane;
    });
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu::exchange(mask, v, [&](int lane) {
        int s = lane - (int)delta;
        return s >= (lane & ~(width - 1)) ? s : lane;
    });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    unsigned r = 0;
    for (int o = 0; o < 32; o++) {
        const unsigned bit = __shfl_sync(mask, (unsigned)(pred != 0), o);
        if (o < emu::S.warp_bar[emu::linear_tid() / 32].expected) r |= bit << o;
    }
    return r;
}
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    const int w = emu::linear_tid() / 32;
    emu::check_mask(mask, w);
    emu::arrive(emu::S.warp_bar[w]);
}
inline void __syncthreads() { emu::arrive(emu::S.block_bar); }

// Atomics: fibers are never preempted, so a plain read-modify-write is atomic.
template <class T>
inline T atomicAdd(T* p, T v) {
    T o = *p;
    *p = o + v;
    return o;
}
template <class T>
inline T atomicMax(T* p, T v) {
    T o = *p;
    *p = o > v ? o : v;
    return o;
}
template <class T>
inline T atomicExch(T* p, T v) {
    T o = *p;
    *p = v;
    return o;
}

// ---------------------------------------------------------------------------------------------
// Harness helpers: bf16 by hand (independent of the kernels' prelude), data, checks, reporting.

namespace emu {

inline uint16_t bf16_bits(float f) {  // round to nearest even, NaN stays NaN
    uint32_t u = emu_bits<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
inline float bf16_val(uint16_t h) { return emu_bits<float>((uint32_t)h << 16); }
inline float round_bf16(float f) { return bf16_val(bf16_bits(f)); }

// Storage type helpers: T is uint16_t (bf16) or an arithmetic type (float, double, ...).
template <class T>
inline T to_storage(double x) {
    if constexpr (std::is_same_v<T, uint16_t>) return bf16_bits((float)x);
    else return (T)x;
}
template <class T>
inline double from_storage(T x) {
    if constexpr (std::is_same_v<T, uint16_t>) return (double)bf16_val(x);
    else return (double)x;
}
template <class T>
constexpr const char* dtype_name() {
    return std::is_same_v<T, float> ? "f32" : "bf16";
}
// x rounded as storage type T stores it.
template <class T>
inline double st(double x) {
    return from_storage<T>(to_storage<T>(x));
}

// One unit in the last place of x as type T stores it.
template <class T>
inline double ulp(double x) {
    int e;
    std::frexp(std::max(std::fabs(x), 1.2e-38), &e);  // |x| = m 2^e, m in [0.5, 1)
    return std::ldexp(1.0, e - (std::is_same_v<T, float> ? 24 : 8));
}

// A device buffer: n elements plus slack, starting `offset` elements past a 256-byte boundary
// (offset 1 makes every 4-element vector access misaligned), filled with NaN.
template <class T>
struct Buf {
    std::vector<unsigned char> raw;
    T* p = nullptr;
    size_t n = 0;
    Buf() = default;
    Buf(size_t n_, int offset = 0) { alloc(n_, offset); }
    void alloc(size_t n_, int offset = 0) {
        n = n_;
        raw.assign((n + offset + 64) * sizeof(T) + 512, 0xff);
        uintptr_t a = (reinterpret_cast<uintptr_t>(raw.data()) + 255) & ~(uintptr_t)255;
        p = reinterpret_cast<T*>(a) + offset;
    }
    T& operator[](size_t i) { return p[i]; }
    const T& operator[](size_t i) const { return p[i]; }
    T* data() { return p; }
    void fill_nan() { std::memset(p, 0xff, n * sizeof(T)); }
    double get(size_t i) const { return from_storage<T>(p[i]); }
    void set(size_t i, double x) { p[i] = to_storage<T>(x); }
};

inline std::mt19937& rng() {
    static std::mt19937 r(20240611);
    return r;
}
// Normal(0, sigma) + mu, exactly representable in T.
template <class T>
inline void randn(Buf<T>& b, double sigma = 1.0, double mu = 0.0) {
    std::normal_distribution<double> nd(mu, sigma);
    for (size_t i = 0; i < b.n; i++) b.set(i, nd(rng()));
}

inline int passed = 0, failed = 0;

struct Tol {
    // |got - want| <= atol * scale + rtol * |want|, scale = max(max |want|, floor): floor is the
    // magnitude of the terms an output is formed from when the output itself may be ~0.
    double rtol, atol, floor = 1e-30;
};
template <class T>
inline Tol tol_for(double f32_tol = 2e-5, double bf16_tol = 1.2e-2, double floor = 1e-30) {
    return std::is_same_v<T, float> ? Tol{f32_tol, f32_tol, floor} : Tol{bf16_tol, bf16_tol, floor};
}

// Compares got(i) with want[i] for i < n: |got - want| <= bound(i); prints one line. NaN anywhere
// (in got or want) fails unless both are NaN; infinities must match exactly.
template <class G, class Bd>
inline bool check_bound(const std::string& name, size_t n, G got, const std::vector<double>& want, Bd bound) {
    double worst = 0;
    size_t wi = 0;
    bool bad = false;
    for (size_t i = 0; i < n; i++) {
        const double g = got(i), w = want[i];
        double e;
        if (std::isnan(w) || std::isnan(g)) e = (std::isnan(w) && std::isnan(g)) ? 0 : INFINITY;
        else if (g == w) e = 0;
        else if (std::isinf(w) || std::isinf(g)) e = INFINITY;
        else e = std::fabs(g - w) / bound(i);
        if (e > worst || (!bad && !(e <= 1))) {
            worst = e;
            wi = i;
        }
        if (!(e <= 1)) bad = true;
    }
    const double gw = n ? got(wi) : 0, ww = n ? want[wi] : 0;
    if (!bad) {
        passed++;
        std::printf("ok   %-64s err %.2f of tol (n %zu)\n", name.c_str(), worst, n);
    } else {
        failed++;
        std::printf("FAIL %-64s err %.3g of tol at [%zu]: got %.9g want %.9g (n %zu, bound %.3g)\n", name.c_str(),
                    worst, wi, gw, ww, n, bound(wi));
    }
    std::fflush(stdout);
    return !bad;
}
template <class G>
inline bool check(const std::string& name, size_t n, G got, const std::vector<double>& want, Tol tol) {
    double scale = 0;
    for (size_t i = 0; i < n; i++)
        if (std::isfinite(want[i])) scale = std::max(scale, std::fabs(want[i]));
    scale = std::max(scale, tol.floor);
    return check_bound(name, n, got, want, [&](size_t i) { return tol.atol * scale + tol.rtol * std::fabs(want[i]); });
}
template <class T>
inline bool check(const std::string& name, const Buf<T>& got, const std::vector<double>& want, Tol tol) {
    return check(name, want.size(), [&](size_t i) { return got.get(i); }, want, tol);
}
inline void check_true(const std::string& name, bool ok, const std::string& detail = "") {
    if (ok) passed++;
    else failed++;
    std::printf("%s %-64s %s\n", ok ? "ok  " : "FAIL", name.c_str(), detail.c_str());
    std::fflush(stdout);
}

inline int finish() {
    std::printf("emu-summary %d %d\n", passed, failed);
    return failed ? 1 : 0;
}

inline std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
inline std::string fmt(const char* f, ...) {
    char b[512];
    va_list a;
    va_start(a, f);
    std::vsnprintf(b, sizeof b, f, a);
    va_end(a);
    return b;
}

}  // namespace emu

// K(T, ns, keel_x): the kernel keel_x_f32 or keel_x_bf16 of module namespace ns, by storage type T.
#define EMU_K(T, ns, base) emu::pick<T>(#base "_f32", &ns::base##_f32, #base "_bf16", &ns::base##_bf16)
#define EMU_K1(ns, name) (emu::Kernel<decltype(ns::name)>{#name, &ns::name})
