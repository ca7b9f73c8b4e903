// adamw kernels: see prelude.cuh for the conventions.
//
// Multi-tensor AdamW with global gradient-norm clipping, kept on the device (as PyTorch's fused
// AdamW + clip_grad_norm_, apex's multi_tensor_l2norm, llm.c's global_norm). The host launches
// three kernels back to back and synchronizes once, afterwards, to read the per-tensor sums:
//
//   1. keel_adamw_sumsq_<dt>   s_c = sum_{i in chunk c} g_i^2        (f64, one partial per chunk)
//   2. keel_adamw_clip_f64     S_t = sum_{c of tensor t} s_c,  norm = sqrt(sum_t S_t),
//                              coef = max_norm / (norm + 1e-6) if 0 < max_norm < norm else 1,
//                              skip = !isfinite(norm)
//   3. keel_adamw_update_<dt>  unless skip, for every element of every tensor (src/optim.rs,
//                              `adamw_update`, PyTorch's torch.optim.AdamW order):
//                                g <- g * coef
//                                m <- b1 m + (1 - b1) g
//                                v <- b2 v + (1 - b2) g g
//                                p <- p * decay - step_size * m / (sqrt(v * inv_bc2) + eps)
//                              with decay = 1 - lr wd (1 for tensors without weight decay),
//                              step_size = lr / (1 - b1^t), inv_bc2 = 1 / (1 - b2^t).
//
// The tensor table (device memory, built by the host every step because Candle allocates fresh
// gradients) is a structure of arrays over n tensors:
//   params[t], grads[t], ms[t], vs[t]  device addresses (u64) of parameter t, its gradient (both in
//                                      the storage type <dt>) and its f32 moments, contiguous;
//   lens[t]                            elements of tensor t;
//   decays[t]                          1 when tensor t takes weight decay, else 0;
//   chunk_start[t]                     (n + 1 entries) first chunk of tensor t: chunk_start[0] = 0,
//                                      chunk_start[t+1] = chunk_start[t] + ceil(lens[t] / chunk).
// Chunk c of tensor t covers its elements [(c - chunk_start[t]) chunk, min(.. + chunk, lens[t])).
// Kernels 1 and 3 loop over chunks (grid-stride, one chunk per block at a time), so the grid size
// changes nothing in the results; `chunk` must be a multiple of 4 (it keeps every chunk's first
// element aligned for the 4-wide loads).
//
// Determinism: every sum is formed in a fixed order for a fixed launch configuration (per-thread
// strided sums, a fixed shuffle tree per block, partials summed per tensor in chunk order by one
// warp); no atomics. Sums of squares are f64 (each square of an f32 or bf16 value is exact in
// f64), as the CPU's `sum_squares`. The update is rounded step by step as the CPU twin's (__*_rn
// intrinsics: no fused multiply-adds), so for the same coefficient it gives the CPU's f32 bits.

#define ADAMW_THREADS 256
#define ADAMW_CLIP_THREADS 512

// The tensor that owns chunk c: the last t < n with chunk_start[t] <= c (empty tensors own no
// chunk, so taking the last such t skips them). Every thread of a block searches the same table
// entries, which the L1 cache broadcasts.
__device__ __forceinline__ int adamw_owner(const idx_t* chunk_start, int n, idx_t c) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (chunk_start[mid] <= c) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// ---------------------------------------------------------------------------------------------
// 1. Per-chunk sums of squares of the gradients.
//    grid: (min(total chunks, any cap), 1, 1), block: ADAMW_THREADS, no dynamic shared memory.
//    partials: (chunk_start[n]) f64, slot c written by the block that takes chunk c.
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void adamw_sumsq_impl(const unsigned long long* __restrict__ grads,
                                                 const idx_t* __restrict__ lens,
                                                 const idx_t* __restrict__ chunk_start, int n, int chunk,
                                                 double* __restrict__ partials) {
    __shared__ double scratch[32];
    const idx_t total = chunk_start[n];
    for (idx_t c = blockIdx.x; c < total; c += gridDim.x) {
        const int t = adamw_owner(chunk_start, n, c);
        const T* g = reinterpret_cast<const T*>(grads[t]);
        const idx_t lo = (c - chunk_start[t]) * (idx_t)chunk;
        const idx_t hi = min(lo + (idx_t)chunk, lens[t]);
        double acc = 0.0;
        idx_t scalar_from = lo;
        if (aligned4(g)) {
            const idx_t n4 = (hi - lo) >> 2;
#pragma unroll 4
            for (idx_t k = threadIdx.x; k < n4; k += blockDim.x) {
                float x[4];
                ld<4>(g, lo + 4 * k, x);
#pragma unroll
                for (int j = 0; j < 4; ++j) acc += (double)x[j] * (double)x[j];
            }
            scalar_from = lo + 4 * n4;
        }
        for (idx_t i = scalar_from + threadIdx.x; i < hi; i += blockDim.x) {
            const double x = (double)load(g, i);
            acc += x * x;
        }
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) partials[c] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    keel_adamw_sumsq_f32(const unsigned long long* grads, const idx_t* lens, const idx_t* chunk_start, int n,
                         int chunk, double* partials) {
    adamw_sumsq_impl<float>(grads, lens, chunk_start, n, chunk, partials);
}
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    keel_adamw_sumsq_bf16(const unsigned long long* grads, const idx_t* lens, const idx_t* chunk_start, int n,
                          int chunk, double* partials) {
    adamw_sumsq_impl<bf16_t>(grads, lens, chunk_start, n, chunk, partials);
}

// ---------------------------------------------------------------------------------------------
// 2. Per-tensor sums, global norm, clip coefficient and skip flag. One block.
//    grid: (1, 1, 1), block: ADAMW_CLIP_THREADS, no dynamic shared memory.
//    out: (n + 3) f64: out[t] = S_t, out[n] = norm, out[n+1] = coef, out[n+2] = skip (1 or 0).
//    max_norm_bits: the f64 clip threshold's bit pattern (0: no clipping); it travels as a 64-bit
//    integer because keel's launcher passes no f64 argument.
//    The suffix names the f64 sums it reads: the kernel does not depend on the gradients' type.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(ADAMW_CLIP_THREADS)
    keel_adamw_clip_f64(const double* __restrict__ partials, const idx_t* __restrict__ chunk_start, int n,
                        long long max_norm_bits, double* __restrict__ out) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    // One warp per tensor: lanes take its chunks strided by 32, then a fixed shuffle tree.
    double mine = 0.0;  // lane 0: the sums of this warp's tensors, in tensor order
    for (int t = warp; t < n; t += warps) {
        double s = 0.0;
        for (idx_t c = chunk_start[t] + lane; c < chunk_start[t + 1]; c += 32) s += partials[c];
        s = warp_sum(s);
        if (lane == 0) {
            out[t] = s;
            mine += s;
        }
    }
    const double total = block_sum(lane == 0 ? mine : 0.0, scratch);
    if (threadIdx.x == 0) {
        const double max_norm = __longlong_as_double(max_norm_bits);
        const double norm = sqrt(total);
        // keel's trainer (and PyTorch's clip_grad_norm_ above the threshold); a NaN norm compares
        // false, and the skip flag stops the update anyway.
        const double coef = (max_norm > 0.0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1.0;
        out[n] = norm;
        out[n + 1] = coef;
        out[n + 2] = isfinite(norm) ? 0.0 : 1.0;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The AdamW update of every tensor, in place.
//    grid: (min(total chunks, any cap), 1, 1), block: ADAMW_THREADS, no dynamic shared memory.
//    clip: out + n of kernel 2 ({norm, coef, skip}); scalars as the CPU twin rounds them to f32.
// ---------------------------------------------------------------------------------------------

// One element, rounded exactly as `adamw_update` in src/optim.rs (Rust contracts nothing into
// FMAs; neither may this). omb1 = 1 - b1 and omb2 = 1 - b2, computed in f32 as the CPU does.
__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v, float gs, float b1, float b2,
                                              float omb1, float omb2, float decay, float step_size,
                                              float inv_bc2, float eps) {
    const float gi = __fmul_rn(g, gs);
    const float mi = __fadd_rn(__fmul_rn(b1, m), __fmul_rn(omb1, gi));
    const float vi = __fadd_rn(__fmul_rn(b2, v), __fmul_rn(__fmul_rn(omb2, gi), gi));
    m = mi;
    v = vi;
    const float denom = __fadd_rn(__fsqrt_rn(__fmul_rn(vi, inv_bc2)), eps);
    p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(step_size, mi), denom));
}

template <typename T>
__device__ __forceinline__ void adamw_update_impl(const unsigned long long* __restrict__ params,
                                                  const unsigned long long* __restrict__ grads,
                                                  const unsigned long long* __restrict__ ms,
                                                  const unsigned long long* __restrict__ vs,
                                                  const idx_t* __restrict__ lens, const idx_t* __restrict__ decays,
                                                  const idx_t* __restrict__ chunk_start, int n, int chunk,
                                                  const double* __restrict__ clip, float b1, float b2, float eps,
                                                  float step_size, float inv_bc2, float decay) {
    if (clip[2] != 0.0) return;  // non-finite gradient norm: no update (as the CPU path)
    const float gs = (float)clip[1];
    const float omb1 = 1.f - b1, omb2 = 1.f - b2;
    const idx_t total = chunk_start[n];
    for (idx_t c = blockIdx.x; c < total; c += gridDim.x) {
        const int t = adamw_owner(chunk_start, n, c);
        T* p = reinterpret_cast<T*>(params[t]);
        const T* g = reinterpret_cast<const T*>(grads[t]);
        float* m = reinterpret_cast<float*>(ms[t]);
        float* v = reinterpret_cast<float*>(vs[t]);
        const float dk = decays[t] ? decay : 1.f;
        const idx_t lo = (c - chunk_start[t]) * (idx_t)chunk;
        const idx_t hi = min(lo + (idx_t)chunk, lens[t]);
        idx_t scalar_from = lo;
        if (aligned4(p) && aligned4(g) && aligned4(m) && aligned4(v)) {
            const idx_t n4 = (hi - lo) >> 2;
            for (idx_t k = threadIdx.x; k < n4; k += blockDim.x) {
                const idx_t i = lo + 4 * k;
                float pp[4], gg[4], mm[4], vv[4];
                ld<4>(p, i, pp);
                ld<4>(g, i, gg);
                ld<4>(m, i, mm);
                ld<4>(v, i, vv);
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    adamw_element(pp[j], gg[j], mm[j], vv[j], gs, b1, b2, omb1, omb2, dk, step_size, inv_bc2, eps);
                st<4>(p, i, pp);
                st<4>(m, i, mm);
                st<4>(v, i, vv);
            }
            scalar_from = lo + 4 * n4;
        }
        for (idx_t i = scalar_from + threadIdx.x; i < hi; i += blockDim.x) {
            float pi = load(p, i), mi = m[i], vi = v[i];
            adamw_element(pi, load(g, i), mi, vi, gs, b1, b2, omb1, omb2, dk, step_size, inv_bc2, eps);
            store(p, i, pi);
            m[i] = mi;
            v[i] = vi;
        }
    }
}

#define ADAMW_UPDATE_PARAMS                                                                            \
    (const unsigned long long* params, const unsigned long long* grads, const unsigned long long* ms,   \
     const unsigned long long* vs, const idx_t* lens, const idx_t* decays, const idx_t* chunk_start,    \
     int n, int chunk, const double* clip, float b1, float b2, float eps, float step_size, float inv_bc2, \
     float decay)
#define ADAMW_UPDATE_ARGS \
    (params, grads, ms, vs, lens, decays, chunk_start, n, chunk, clip, b1, b2, eps, step_size, inv_bc2, decay)

extern "C" __global__ void __launch_bounds__(ADAMW_THREADS) keel_adamw_update_f32 ADAMW_UPDATE_PARAMS {
    adamw_update_impl<float> ADAMW_UPDATE_ARGS;
}
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS) keel_adamw_update_bf16 ADAMW_UPDATE_PARAMS {
    adamw_update_impl<bf16_t> ADAMW_UPDATE_ARGS;
}
