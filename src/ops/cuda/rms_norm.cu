// rms_norm kernels: see prelude.cuh for the conventions.
//
// RMSNorm over rows of C: y = h r gamma, r = 1 / sqrt(mean(h^2) + eps), where h = x (plain) or
// h = alpha x + f (the fused residual; Post-LN has alpha = 1, Keel and DeepNorm alpha != 1).
// x, f, y, dy: (N, C); gamma: (C). The CPU twins are rms_fwd_kernel / rms_bwd_kernel in
// src/ops/rms_norm.rs; the arithmetic below follows them operation for operation.
//
// Work split (the host picks it from C, see `RowNorm::plan` in src/ops/cuda_kernels.rs):
// - warp mode (C <= 512): a block of 256 threads holds 8 row groups of one warp each; a warp
//   normalizes one row at a time and reduces with shuffles only;
// - block mode (C > 512): the whole block (64..512 threads) normalizes one row at a time and
//   reduces through shared memory.
// A row group walks rows blockIdx.x * groups + group, stepping by gridDim.x * groups. The row is
// re-read for each pass rather than held in registers: a row of C <= 4096 f32 is 16 KiB, still in
// L1/L2 when the next pass comes back for it. Reductions are two-pass (sum of squares of h, not a
// running variance) and in f32.
//
// Columns are read 4 at a time (float4 / 4 x bf16 in 8 bytes) when C % 4 == 0 and every pointer
// is aligned for it, else one at a time: the kernels test this themselves. The row machinery
// (RowGroup, group_sum, ld_h, ld / st, acc_add, vec_ok, block_partial, sum_partials) is the
// prelude's, shared by both norms.
//
// Backward (recomputes r from x and f; nothing is saved by the forward):
//   g = dy gamma, xhat = h r, dh = r (g - xhat mean(g xhat)), dx = alpha dh, df = dh,
//   dgamma = sum over rows of dy xhat.
// dgamma is reduced deterministically: each row group accumulates its own copy in shared memory
// (no two threads touch the same slot), the block adds its groups in group order into its row of
// an f32 scratch (blocks, C), and keel_rms_norm_dgamma_* sums that scratch in block order.

// Block size cap, and at least 2 blocks per SM: ptxas then has 64 registers a thread, enough
// for the 4-wide loads in flight without spills (left to itself it chose 40 and spilled).
#define RMS_MAX_THREADS 512

// ---------------------------------------------------------------------------------------------
// Forward: y = h r gamma.

template <typename T, int V, bool WARP, bool RES>
__device__ __forceinline__ void rms_fwd_rows(const T* __restrict__ x, const T* __restrict__ f,
                                             const T* __restrict__ gamma, T* __restrict__ y, int N, int C,
                                             float alpha, float eps) {
    __shared__ float scratch[32];
    const RowGroup<WARP> g;
    const float inv_c = __frcp_rn((float)C);
    const int cols = C / V;
    for (idx_t row = (idx_t)blockIdx.x * g.groups + g.group; row < N; row += (idx_t)gridDim.x * g.groups) {
        const idx_t off = row * C;
        float ss[1] = {0.f};
        for (int j = g.tid; j < cols; j += g.size) {
            float h[V];
            ld_h<V, RES>(x, f, alpha, off + (idx_t)j * V, h);
#pragma unroll
            for (int k = 0; k < V; k++) ss[0] += h[k] * h[k];
        }
        group_sum<WARP>(ss, scratch);
        const float r = __frcp_rn(__fsqrt_rn(ss[0] * inv_c + eps));
        for (int j = g.tid; j < cols; j += g.size) {
            float h[V], gm[V], out[V];
            ld_h<V, RES>(x, f, alpha, off + (idx_t)j * V, h);
            ld<V>(gamma, (idx_t)j * V, gm);
#pragma unroll
            for (int k = 0; k < V; k++) out[k] = h[k] * r * gm[k];
            st<V>(y, off + (idx_t)j * V, out);
        }
    }
}

template <typename T, bool RES>
__device__ __forceinline__ void rms_fwd(const T* x, const T* f, const T* gamma, T* y, int N, int C, float alpha,
                                        float eps, int warp_mode) {
    const bool vec = vec_ok<T>(C, x, f, gamma, y, nullptr);
    if (warp_mode) {
        if (vec) rms_fwd_rows<T, 4, true, RES>(x, f, gamma, y, N, C, alpha, eps);
        else rms_fwd_rows<T, 1, true, RES>(x, f, gamma, y, N, C, alpha, eps);
    } else {
        if (vec) rms_fwd_rows<T, 4, false, RES>(x, f, gamma, y, N, C, alpha, eps);
        else rms_fwd_rows<T, 1, false, RES>(x, f, gamma, y, N, C, alpha, eps);
    }
}

// x, f: (N, C) (f null: plain RMSNorm, alpha unused), gamma: (C) -> y: (N, C).
// Launch: grid ceil(N / groups) (or fewer: rows are strided), block 256 (warp_mode = 1, 8 groups)
// or 64..512 threads, a multiple of 32 (warp_mode = 0); no dynamic shared memory.
template <typename T>
__device__ __forceinline__ void rms_norm_fwd_impl(const T* x, const T* f, const T* gamma, T* y, int N, int C,
                                                  float alpha, float eps, int warp_mode) {
    if (f) rms_fwd<T, true>(x, f, gamma, y, N, C, alpha, eps, warp_mode);
    else rms_fwd<T, false>(x, f, gamma, y, N, C, alpha, eps, warp_mode);
}

extern "C" __global__ void __launch_bounds__(RMS_MAX_THREADS, 2)
    keel_rms_norm_fwd_f32(const float* x, const float* f, const float* gamma, float* y, int N, int C, float alpha,
                          float eps, int warp_mode) {
    rms_norm_fwd_impl<float>(x, f, gamma, y, N, C, alpha, eps, warp_mode);
}
extern "C" __global__ void __launch_bounds__(RMS_MAX_THREADS, 2)
    keel_rms_norm_fwd_bf16(const bf16_t* x, const bf16_t* f, const bf16_t* gamma, bf16_t* y, int N, int C,
                           float alpha, float eps, int warp_mode) {
    rms_norm_fwd_impl<bf16_t>(x, f, gamma, y, N, C, alpha, eps, warp_mode);
}

// ---------------------------------------------------------------------------------------------
// Backward: dx (and df) per row, dgamma partials per block.

// Each row group's dgamma accumulator: groups x C floats of dynamic shared memory.
extern __shared__ __align__(16) float rms_acc[];

template <typename T, int V, bool WARP, bool RES>
__device__ __forceinline__ void rms_bwd_rows(const T* __restrict__ x, const T* __restrict__ f,
                                             const T* __restrict__ gamma, const T* __restrict__ dy,
                                             T* __restrict__ dx, T* __restrict__ df, float* __restrict__ partial,
                                             int N, int C, float alpha, float eps) {
    __shared__ float scratch[64];
    const RowGroup<WARP> g;
    const float inv_c = __frcp_rn((float)C);
    const int cols = C / V;
    float* acc = rms_acc + (idx_t)g.group * C;
    // Each thread owns the accumulator slots of the columns it visits, so no sync is needed until
    // the groups are combined.
    for (int j = g.tid; j < cols; j += g.size) {
#pragma unroll
        for (int k = 0; k < V; k++) acc[j * V + k] = 0.f;
    }
    for (idx_t row = (idx_t)blockIdx.x * g.groups + g.group; row < N; row += (idx_t)gridDim.x * g.groups) {
        const idx_t off = row * C;
        // s[0] = sum h^2, s[1] = sum g h (both of raw h: one pass).
        float s[2] = {0.f, 0.f};
        for (int j = g.tid; j < cols; j += g.size) {
            const idx_t i = off + (idx_t)j * V;
            float h[V], d[V], gm[V];
            ld_h<V, RES>(x, f, alpha, i, h);
            ld<V>(dy, i, d);
            ld<V>(gamma, (idx_t)j * V, gm);
#pragma unroll
            for (int k = 0; k < V; k++) {
                s[0] += h[k] * h[k];
                s[1] += d[k] * gm[k] * h[k];
            }
        }
        group_sum<WARP>(s, scratch);
        const float r = __frcp_rn(__fsqrt_rn(s[0] * inv_c + eps));
        const float m = s[1] * r * inv_c;  // mean(g xhat)
        // Unrolled by 2, not more: deeper unrolling of this loop runs out of the 64 registers.
#pragma unroll 2
        for (int j = g.tid; j < cols; j += g.size) {
            const idx_t i = off + (idx_t)j * V;
            float h[V], d[V], gm[V], dh[V], dg[V];
            ld_h<V, RES>(x, f, alpha, i, h);
            ld<V>(dy, i, d);
            ld<V>(gamma, (idx_t)j * V, gm);
#pragma unroll
            for (int k = 0; k < V; k++) {
                dg[k] = d[k] * h[k] * r;
                const float gk = d[k] * gm[k];
                dh[k] = r * (gk - h[k] * r * m);
            }
            acc_add<V>(acc, j * V, dg);
            if constexpr (RES) {
                st<V>(df, i, dh);
#pragma unroll
                for (int k = 0; k < V; k++) dh[k] *= alpha;
            }
            st<V>(dx, i, dh);
        }
    }
    // The block's partial: its groups' accumulators added in group order.
    block_partial(rms_acc, C, g.groups, partial);
}

template <typename T, bool RES>
__device__ __forceinline__ void rms_bwd(const T* x, const T* f, const T* gamma, const T* dy, T* dx, T* df,
                                        float* partial, int N, int C, float alpha, float eps, int warp_mode) {
    const bool vec = vec_ok<T>(C, x, f, gamma, dy, dx) && vec_ok<T>(C, df, nullptr, nullptr, nullptr, nullptr);
    if (warp_mode) {
        if (vec) rms_bwd_rows<T, 4, true, RES>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps);
        else rms_bwd_rows<T, 1, true, RES>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps);
    } else {
        if (vec) rms_bwd_rows<T, 4, false, RES>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps);
        else rms_bwd_rows<T, 1, false, RES>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps);
    }
}

// x, f (null: plain RMSNorm; then df is null too and alpha unused), dy: (N, C), gamma: (C) ->
// dx (N, C), df (N, C), partial: f32 (gridDim.x, C), every element written.
// Launch: as the forward (grid may be smaller than ceil(N / groups): rows are strided), with
// groups * C * 4 bytes of dynamic shared memory (groups = 8 in warp mode, 1 in block mode).
template <typename T>
__device__ __forceinline__ void rms_norm_bwd_impl(const T* x, const T* f, const T* gamma, const T* dy, T* dx, T* df,
                                                  float* partial, int N, int C, float alpha, float eps,
                                                  int warp_mode) {
    if (f) rms_bwd<T, true>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps, warp_mode);
    else rms_bwd<T, false>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps, warp_mode);
}

extern "C" __global__ void __launch_bounds__(RMS_MAX_THREADS, 2)
    keel_rms_norm_bwd_f32(const float* x, const float* f, const float* gamma, const float* dy, float* dx, float* df,
                          float* partial, int N, int C, float alpha, float eps, int warp_mode) {
    rms_norm_bwd_impl<float>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps, warp_mode);
}
extern "C" __global__ void __launch_bounds__(RMS_MAX_THREADS, 2)
    keel_rms_norm_bwd_bf16(const bf16_t* x, const bf16_t* f, const bf16_t* gamma, const bf16_t* dy, bf16_t* dx,
                           bf16_t* df, float* partial, int N, int C, float alpha, float eps, int warp_mode) {
    rms_norm_bwd_impl<bf16_t>(x, f, gamma, dy, dx, df, partial, N, C, alpha, eps, warp_mode);
}

// ---------------------------------------------------------------------------------------------
// dgamma = the partials summed over blocks (the prelude's sum_partials): partial f32 (P, C) ->
// out (C) in the storage type. Block (32 columns x 32 slices) = 1024 threads, grid ceil(C / 32).

extern "C" __global__ void __launch_bounds__(1024)
    keel_rms_norm_dgamma_f32(const float* partial, float* out, int P, int C) {
    sum_partials<float>(partial, out, P, C);
}
extern "C" __global__ void __launch_bounds__(1024)
    keel_rms_norm_dgamma_bf16(const float* partial, bf16_t* out, int P, int C) {
    sum_partials<bf16_t>(partial, out, P, C);
}
