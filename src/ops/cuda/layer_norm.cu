// layer_norm kernels: see prelude.cuh for the conventions.
//
// LayerNorm over rows of C, with gain and bias and the biased variance (as PyTorch):
//   y = (h - mean) r gamma + beta, r = 1 / sqrt(mean((h - mean)^2) + eps),
// where h = x (plain) or h = alpha x + f (the fused residual LayerNorm(alpha x + f)).
// x, f, y, dy: (N, C); gamma, beta: (C). The CPU twins are ln_fwd_kernel / ln_bwd_kernel in
// src/ops/layer_norm.rs; the arithmetic below follows them operation for operation.
//
// Work split (the host picks it from C, see `plan` in layer_norm.rs):
// - warp mode (C <= 512): a block of 256 threads holds 8 row groups of one warp each; a warp
//   normalizes one row at a time and reduces with shuffles only;
// - block mode (C > 512): the whole block (64..512 threads) normalizes one row at a time and
//   reduces through shared memory.
// A row group walks rows blockIdx.x * groups + group, stepping by gridDim.x * groups. The row is
// re-read for each pass rather than held in registers: a row of C <= 4096 f32 is 16 KiB, still in
// L1/L2 when the next pass comes back for it. Mean and variance are two-pass (the variance sums
// squares of h - mean, no running formula) and in f32.
//
// Columns are read 4 at a time (float4 / 4 x bf16 in 8 bytes) when C % 4 == 0 and every pointer
// is aligned for it, else one at a time: the kernels test this themselves.
//
// Backward (recomputes mean and r from x and f; nothing is saved by the forward): with
// g = dy gamma and xhat = (h - mean) r,
//   dh = r (g - mean(g) - xhat mean(g xhat)), dx = alpha dh, df = dh,
//   dgamma = sum over rows of dy xhat, dbeta = sum over rows of dy.
// dgamma and dbeta are reduced deterministically: each row group accumulates its own copy in
// shared memory (no two threads touch the same slot), the block adds its groups in group order
// into its row [dgamma ; dbeta] of an f32 scratch (blocks, 2C), and keel_layer_norm_dparams_*
// sums that scratch in block order.

// Block size cap, and at least 2 blocks per SM: ptxas then has 64 registers a thread, enough
// for the 4-wide loads in flight without spills (left to itself it chose 40 and spilled).
#define LN_MAX_THREADS 512

// 4 consecutive elements from / to p[i..i+4): i is a multiple of 4 and p is aligned (checked by
// ln_vec_ok), so one 16-byte (f32) or 8-byte (bf16) access.
__device__ __forceinline__ void ln_load4(const float* p, idx_t i, float v[4]) {
    float4 t = *reinterpret_cast<const float4*>(p + i);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void ln_load4(const bf16_t* p, idx_t i, float v[4]) {
    uint2 t = *reinterpret_cast<const uint2*>(p + i);
    // Little-endian: the element with the lower index is in the low half.
    v[0] = bf16_to_f32((bf16_t)(t.x & 0xffffu)); v[1] = bf16_to_f32((bf16_t)(t.x >> 16));
    v[2] = bf16_to_f32((bf16_t)(t.y & 0xffffu)); v[3] = bf16_to_f32((bf16_t)(t.y >> 16));
}
__device__ __forceinline__ void ln_store4(float* p, idx_t i, const float v[4]) {
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void ln_store4(bf16_t* p, idx_t i, const float v[4]) {
    uint2 t;
    t.x = (unsigned int)f32_to_bf16(v[0]) | ((unsigned int)f32_to_bf16(v[1]) << 16);
    t.y = (unsigned int)f32_to_bf16(v[2]) | ((unsigned int)f32_to_bf16(v[3]) << 16);
    *reinterpret_cast<uint2*>(p + i) = t;
}

// V elements (V = 1 or 4) at p[i..i+V).
template <int V, typename T>
__device__ __forceinline__ void ln_ld(const T* p, idx_t i, float (&v)[V]) {
    if constexpr (V == 4) ln_load4(p, i, v);
    else v[0] = load(p, i);
}
template <int V, typename T>
__device__ __forceinline__ void ln_st(T* p, idx_t i, const float (&v)[V]) {
    if constexpr (V == 4) ln_store4(p, i, v);
    else store(p, i, v[0]);
}

// h = alpha x + f (RES) or x, V elements at i.
template <int V, bool RES, typename T>
__device__ __forceinline__ void ln_h(const T* x, const T* f, float alpha, idx_t i, float (&h)[V]) {
    ln_ld<V>(x, i, h);
    if constexpr (RES) {
        float fv[V];
        ln_ld<V>(f, i, fv);
#pragma unroll
        for (int k = 0; k < V; k++) h[k] = alpha * h[k] + fv[k];
    }
}

// acc[i..i+V) += v: one 16-byte shared access for V = 4 (acc 16-byte aligned: C % 4 == 0 and the
// dynamic shared memory is aligned), so the lanes of a warp do not conflict on banks.
template <int V>
__device__ __forceinline__ void ln_acc_add(float* acc, int i, const float (&v)[V]) {
    if constexpr (V == 4) {
        float4* a = reinterpret_cast<float4*>(acc + i);
        float4 t = *a;
        t.x += v[0]; t.y += v[1]; t.z += v[2]; t.w += v[3];
        *a = t;
    } else {
        acc[i] += v[0];
    }
}

__device__ __forceinline__ bool ln_aligned(const void* p, unsigned bytes) {
    return (reinterpret_cast<unsigned long long>(p) & (bytes - 1)) == 0;
}

// Whether the 4-wide path may be taken: rows start at multiples of 4 and every pointer (null ones
// included: they are not read) is aligned to 4 elements.
template <typename T>
__device__ __forceinline__ bool ln_vec_ok(int C, const void* a, const void* b, const void* c, const void* d,
                                           const void* e) {
    unsigned bytes = 4 * sizeof(T);
    return C % 4 == 0 && ln_aligned(a, bytes) && ln_aligned(b, bytes) && ln_aligned(c, bytes) &&
           ln_aligned(d, bytes) && ln_aligned(e, bytes);
}

// Sums K values over a row group: a warp (WARP) or the whole block. Every thread of the group gets
// the sums. `scratch` holds 32 K floats of shared memory; the leading sync keeps this call's
// writes from overtaking the previous call's reads.
template <bool WARP, int K>
__device__ __forceinline__ void ln_group_sum(float (&v)[K], float* scratch) {
#pragma unroll
    for (int k = 0; k < K; k++) v[k] = warp_sum(v[k]);
    if constexpr (!WARP) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
        __syncthreads();
        if (lane == 0) {
#pragma unroll
            for (int k = 0; k < K; k++) scratch[k * 32 + warp] = v[k];
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < K; k++) v[k] = warp_sum(lane < warps ? scratch[k * 32 + lane] : 0.f);
    }
}

// The row group of this thread: its index in the block, how many the block has, this thread's
// index in it and the group's size.
template <bool WARP>
struct LnGroup {
    int group, groups, tid, size;
    __device__ __forceinline__ LnGroup() {
        if constexpr (WARP) {
            group = threadIdx.x >> 5; groups = blockDim.x >> 5; tid = threadIdx.x & 31; size = 32;
        } else {
            group = 0; groups = 1; tid = threadIdx.x; size = blockDim.x;
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Forward: y = (h - mean) r gamma + beta.

template <typename T, int V, bool WARP, bool RES>
__device__ __forceinline__ void ln_fwd_rows(const T* __restrict__ x, const T* __restrict__ f,
                                            const T* __restrict__ gamma, const T* __restrict__ beta,
                                            T* __restrict__ y, int N, int C, float alpha, float eps) {
    __shared__ float scratch[32];
    const LnGroup<WARP> g;
    const float inv_c = __frcp_rn((float)C);
    const int cols = C / V;
    for (idx_t row = (idx_t)blockIdx.x * g.groups + g.group; row < N; row += (idx_t)gridDim.x * g.groups) {
        const idx_t off = row * C;
        float s[1] = {0.f};
        for (int j = g.tid; j < cols; j += g.size) {
            float h[V];
            ln_h<V, RES>(x, f, alpha, off + (idx_t)j * V, h);
#pragma unroll
            for (int k = 0; k < V; k++) s[0] += h[k];
        }
        ln_group_sum<WARP>(s, scratch);
        const float mean = s[0] * inv_c;
        float ss[1] = {0.f};
        for (int j = g.tid; j < cols; j += g.size) {
            float h[V];
            ln_h<V, RES>(x, f, alpha, off + (idx_t)j * V, h);
#pragma unroll
            for (int k = 0; k < V; k++) {
                const float d = h[k] - mean;
                ss[0] += d * d;
            }
        }
        ln_group_sum<WARP>(ss, scratch);
        const float r = __frcp_rn(__fsqrt_rn(ss[0] * inv_c + eps));
        for (int j = g.tid; j < cols; j += g.size) {
            float h[V], gm[V], bt[V], out[V];
            ln_h<V, RES>(x, f, alpha, off + (idx_t)j * V, h);
            ln_ld<V>(gamma, (idx_t)j * V, gm);
            ln_ld<V>(beta, (idx_t)j * V, bt);
#pragma unroll
            for (int k = 0; k < V; k++) out[k] = (h[k] - mean) * r * gm[k] + bt[k];
            ln_st<V>(y, off + (idx_t)j * V, out);
        }
    }
}

template <typename T, bool RES>
__device__ __forceinline__ void ln_fwd(const T* x, const T* f, const T* gamma, const T* beta, T* y, int N, int C,
                                       float alpha, float eps, int warp_mode) {
    const bool vec = ln_vec_ok<T>(C, x, f, gamma, beta, y);
    if (warp_mode) {
        if (vec) ln_fwd_rows<T, 4, true, RES>(x, f, gamma, beta, y, N, C, alpha, eps);
        else ln_fwd_rows<T, 1, true, RES>(x, f, gamma, beta, y, N, C, alpha, eps);
    } else {
        if (vec) ln_fwd_rows<T, 4, false, RES>(x, f, gamma, beta, y, N, C, alpha, eps);
        else ln_fwd_rows<T, 1, false, RES>(x, f, gamma, beta, y, N, C, alpha, eps);
    }
}

// x, f: (N, C) (f null: plain LayerNorm, alpha unused), gamma, beta: (C) -> y: (N, C).
// Launch: grid ceil(N / groups) (or fewer: rows are strided), block 256 (warp_mode = 1, 8 groups)
// or 64..512 threads, a multiple of 32 (warp_mode = 0); no dynamic shared memory.
template <typename T>
__device__ __forceinline__ void layer_norm_fwd_impl(const T* x, const T* f, const T* gamma, const T* beta, T* y,
                                                    int N, int C, float alpha, float eps, int warp_mode) {
    if (f) ln_fwd<T, true>(x, f, gamma, beta, y, N, C, alpha, eps, warp_mode);
    else ln_fwd<T, false>(x, f, gamma, beta, y, N, C, alpha, eps, warp_mode);
}

extern "C" __global__ void __launch_bounds__(LN_MAX_THREADS, 2)
    keel_layer_norm_fwd_f32(const float* x, const float* f, const float* gamma, const float* beta, float* y, int N,
                            int C, float alpha, float eps, int warp_mode) {
    layer_norm_fwd_impl<float>(x, f, gamma, beta, y, N, C, alpha, eps, warp_mode);
}
extern "C" __global__ void __launch_bounds__(LN_MAX_THREADS, 2)
    keel_layer_norm_fwd_bf16(const bf16_t* x, const bf16_t* f, const bf16_t* gamma, const bf16_t* beta, bf16_t* y,
                             int N, int C, float alpha, float eps, int warp_mode) {
    layer_norm_fwd_impl<bf16_t>(x, f, gamma, beta, y, N, C, alpha, eps, warp_mode);
}

// ---------------------------------------------------------------------------------------------
// Backward: dx (and df) per row, [dgamma ; dbeta] partials per block.

// Each row group's [dgamma ; dbeta] accumulator: groups x 2C floats of dynamic shared memory.
extern __shared__ __align__(16) float ln_acc[];

template <typename T, int V, bool WARP, bool RES>
__device__ __forceinline__ void ln_bwd_rows(const T* __restrict__ x, const T* __restrict__ f,
                                            const T* __restrict__ gamma, const T* __restrict__ dy,
                                            T* __restrict__ dx, T* __restrict__ df, float* __restrict__ partial,
                                            int N, int C, float alpha, float eps) {
    __shared__ float scratch[96];
    const LnGroup<WARP> g;
    const float inv_c = __frcp_rn((float)C);
    const int cols = C / V;
    float* acc_g = ln_acc + (idx_t)g.group * 2 * C;
    float* acc_b = acc_g + C;
    // Each thread owns the accumulator slots of the columns it visits, so no sync is needed until
    // the groups are combined.
    for (int j = g.tid; j < cols; j += g.size) {
#pragma unroll
        for (int k = 0; k < V; k++) acc_g[j * V + k] = acc_b[j * V + k] = 0.f;
    }
    for (idx_t row = (idx_t)blockIdx.x * g.groups + g.group; row < N; row += (idx_t)gridDim.x * g.groups) {
        const idx_t off = row * C;
        float s[1] = {0.f};
        for (int j = g.tid; j < cols; j += g.size) {
            float h[V];
            ln_h<V, RES>(x, f, alpha, off + (idx_t)j * V, h);
#pragma unroll
            for (int k = 0; k < V; k++) s[0] += h[k];
        }
        ln_group_sum<WARP>(s, scratch);
        const float mean = s[0] * inv_c;
        // t[0] = sum (h - mean)^2, t[1] = sum g, t[2] = sum g (h - mean): one pass.
        float t[3] = {0.f, 0.f, 0.f};
        for (int j = g.tid; j < cols; j += g.size) {
            const idx_t i = off + (idx_t)j * V;
            float h[V], d[V], gm[V];
            ln_h<V, RES>(x, f, alpha, i, h);
            ln_ld<V>(dy, i, d);
            ln_ld<V>(gamma, (idx_t)j * V, gm);
#pragma unroll
            for (int k = 0; k < V; k++) {
                const float c = h[k] - mean, gk = d[k] * gm[k];
                t[0] += c * c;
                t[1] += gk;
                t[2] += gk * c;
            }
        }
        ln_group_sum<WARP>(t, scratch);
        const float r = __frcp_rn(__fsqrt_rn(t[0] * inv_c + eps));
        const float mean_g = t[1] * inv_c;
        const float mean_gx = t[2] * r * inv_c;  // mean(g xhat)
        // Unrolled by 2, not more: deeper unrolling of this loop runs out of the 64 registers.
#pragma unroll 2
        for (int j = g.tid; j < cols; j += g.size) {
            const idx_t i = off + (idx_t)j * V;
            float h[V], d[V], gm[V], dh[V], dg[V];
            ln_h<V, RES>(x, f, alpha, i, h);
            ln_ld<V>(dy, i, d);
            ln_ld<V>(gamma, (idx_t)j * V, gm);
#pragma unroll
            for (int k = 0; k < V; k++) {
                const float xh = (h[k] - mean) * r, gk = d[k] * gm[k];
                dg[k] = d[k] * xh;
                dh[k] = r * (gk - mean_g - xh * mean_gx);
            }
            ln_acc_add<V>(acc_g, j * V, dg);
            ln_acc_add<V>(acc_b, j * V, d);
            if constexpr (RES) {
                ln_st<V>(df, i, dh);
#pragma unroll
                for (int k = 0; k < V; k++) dh[k] *= alpha;
            }
            ln_st<V>(dx, i, dh);
        }
    }
    // The block's partial: its groups' accumulators added in group order.
    __syncthreads();
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
        float t = 0.f;
        for (int q = 0; q < g.groups; q++) t += ln_acc[(idx_t)q * 2 * C + c];
        partial[(idx_t)blockIdx.x * 2 * C + c] = t;
    }
}

template <typename T, bool RES>
__device__ __forceinline__ void ln_bwd(const T* x, const T* f, const T* gamma, const T* dy, T* dx, T* df,
                                       float* partial, int N, int C, float alpha, float eps, int warp_mode) {
    const bool vec = ln_vec_ok<T>(C, x, f, gamma, dy, dx) && ln_vec_ok<T>(C, df, nullptr, nullptr, nullptr, nullptr);
    if (warp_mode) {
        if (vec) ln_bwd_rows<T, 4, true, RES>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps);
        else ln_bwd_rows<T, 1, true, RES>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps);
    } else {
        if (vec) ln_bwd_rows<T, 4, false, RES>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps);
        else ln_bwd_rows<T, 1, false, RES>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps);
    }
}

// x, f (null: plain LayerNorm; then df is null too and alpha unused), dy: (N, C), gamma: (C) ->
// dx (N, C), df (N, C), partial: f32 (gridDim.x, 2C) = per block [dgamma ; dbeta], every element
// written. Launch: as the forward (grid may be smaller than ceil(N / groups): rows are strided),
// with groups * 2C * 4 bytes of dynamic shared memory (groups = 8 in warp mode, 1 in block mode).
template <typename T>
__device__ __forceinline__ void layer_norm_bwd_impl(const T* x, const T* f, const T* gamma, const T* dy, T* dx,
                                                    T* df, float* partial, int N, int C, float alpha, float eps,
                                                    int warp_mode) {
    if (f) ln_bwd<T, true>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps, warp_mode);
    else ln_bwd<T, false>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps, warp_mode);
}

extern "C" __global__ void __launch_bounds__(LN_MAX_THREADS, 2)
    keel_layer_norm_bwd_f32(const float* x, const float* f, const float* gamma, const float* dy, float* dx,
                            float* df, float* partial, int N, int C, float alpha, float eps, int warp_mode) {
    layer_norm_bwd_impl<float>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps, warp_mode);
}
extern "C" __global__ void __launch_bounds__(LN_MAX_THREADS, 2)
    keel_layer_norm_bwd_bf16(const bf16_t* x, const bf16_t* f, const bf16_t* gamma, const bf16_t* dy, bf16_t* dx,
                             bf16_t* df, float* partial, int N, int C, float alpha, float eps, int warp_mode) {
    layer_norm_bwd_impl<bf16_t>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps, warp_mode);
}

// ---------------------------------------------------------------------------------------------
// [dgamma ; dbeta] = the partials summed over blocks: partial f32 (P, W) -> out (W) in the
// storage type, W = 2C (out is the two last packed rows). Block (32 columns x 32 slices) = 1024
// threads, grid ceil(W / 32). Slice s adds the partials of rows [s P / 32, (s + 1) P / 32) in
// order, then the 32 slice sums are added in slice order: a fixed order, so the result does not
// depend on timing.

template <typename T>
__device__ __forceinline__ void layer_norm_dparams_impl(const float* __restrict__ partial, T* __restrict__ out,
                                                        int P, int W) {
    __shared__ float sums[32][33];
    const int lane = threadIdx.x & 31, slice = threadIdx.x >> 5;
    const int c = blockIdx.x * 32 + lane;
    const int p0 = (int)((long long)P * slice / 32), p1 = (int)((long long)P * (slice + 1) / 32);
    float t = 0.f;
    if (c < W) {
        for (int p = p0; p < p1; p++) t += partial[(idx_t)p * W + c];
    }
    sums[slice][lane] = t;
    __syncthreads();
    if (slice == 0 && c < W) {
        float s = 0.f;
#pragma unroll 8
        for (int q = 0; q < 32; q++) s += sums[q][lane];
        store(out, c, s);
    }
}

extern "C" __global__ void __launch_bounds__(1024)
    keel_layer_norm_dparams_f32(const float* partial, float* out, int P, int W) {
    layer_norm_dparams_impl<float>(partial, out, P, W);
}
extern "C" __global__ void __launch_bounds__(1024)
    keel_layer_norm_dparams_bf16(const float* partial, bf16_t* out, int P, int W) {
    layer_norm_dparams_impl<bf16_t>(partial, out, P, W);
}
