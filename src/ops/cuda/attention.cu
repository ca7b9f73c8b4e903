// attention kernels: see prelude.cuh for the conventions.
//
// Causal multi-head attention with RoPE ("rotate half") and grouped KV heads (GQA), the
// FlashAttention-2 algorithm on plain CUDA cores (SIMT). The CPU twin is `mod tiled` in
// src/ops/attention.rs; the tensor-core bf16 versions of the two core kernels live in
// attention_mma.cu and take the same layouts.
//
// Shapes: B batch, H query heads, Hkv kv heads (query head h uses kv head h / (H / Hkv)), T
// sequence, D head dim (even, at most 128), W = (H + 2 Hkv) D, scale = 1 / sqrt(D).
//
//   pack      qkv (B*T, W) [q heads | k heads | v heads] -> q (B, H, T, D) = rope(q),
//             k (B, Hkv, T, D) = rope(k), v (B, Hkv, T, D)        (storage dtype)
//   fwd       S = q k^T * scale + causal mask, O = softmax(S) v -> o (B, T, H, D) = (B*T, H D),
//             lse (B, H, T) f32 = ln sum_j exp(S_ij)
//   bwd_pre   delta (B, H, T) f32 = rowsum(dO * O)
//   bwd_dkdv  P = exp(S - lse), dS = P (dP - delta) * scale with dP = dO v^T:
//             dv = sum over the group's heads of P^T dO, dk = sum of dS^T q  (B, Hkv, T, D) f32
//   bwd_dq    dq = dS k  (B, H, T, D) f32
//   unpack    dq, dk (through RoPE's transpose), dv -> dqkv (B*T, W)  (storage dtype)
//
// Thread layout of the three core kernels: a group of G consecutive lanes owns one query row
// (forward, dq) or one key row (dk/dv). Its head vector is split into float4 chunks, chunk
// n of lane `sub` covering dims 4 (sub + G n) .. +3, so the G lanes of a group read one 16-byte
// run each of a shared-memory row (and every group of a warp the same row: a broadcast). A dot
// product is G partial sums, completed by log2(G) xor-shuffles. The head dim is padded in shared
// memory (and in registers) with zeros to DP = 4 G NCH, so any even D <= 128 works with vector
// loads; NCH is chosen per launch from D (the entry points dispatch).
//
// Every kernel keeps all lanes in the loops (rows past T are masked, not skipped), because the
// shuffles and __syncthreads need the whole block.

#define KEEL_ATTN_DMAX 128
// Forward: 256 threads, key tiles of 32; 4 lanes per query row (64 rows per block) for D <= 64,
// 8 lanes (32 rows per block) above, where 4 lanes would need 32 + 32 registers per lane for the
// row's q and output plus the 32 scores of a tile, more than the 128 that two blocks per SM allow.
#define KEEL_ATTN_FWD_THREADS 256
#define KEEL_ATTN_FWD_BC 32
// Backward: 32 rows (keys for dk/dv, queries for dq) per block, 8 lanes per row, tiles of 32.
#define KEEL_ATTN_BWD_THREADS 256
#define KEEL_ATTN_BWD_G 8
#define KEEL_ATTN_BWD_TILE 32
// Pack, unpack and bwd_pre: 256 threads per block.
#define KEEL_ATTN_EW_THREADS 256

// Like the prelude's KEEL_EXPORT_BOTH, with __launch_bounds__(threads, min_blocks).
#define KEEL_ATTN_EXPORT(name, threads, min_blocks, PARAMS_F32, PARAMS_BF16, ARGS)           \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                       \
        keel_##name##_f32 PARAMS_F32 { name##_impl<float> ARGS; }                           \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                       \
        keel_##name##_bf16 PARAMS_BF16 { name##_impl<bf16_t> ARGS; }

// The four elements j0 .. j0+3 of a head vector at p (zeros at and past D; D is even, so a chunk
// is full, half full or empty).
template <typename T>
__device__ __forceinline__ float4 attn_load4(const T* p, int j0, int D) {
    float4 r = make_float4(0.f, 0.f, 0.f, 0.f);
    if (j0 < D) { r.x = load(p, j0); r.y = load(p, j0 + 1); }
    if (j0 + 2 < D) { r.z = load(p, j0 + 2); r.w = load(p, j0 + 3); }
    return r;
}

template <typename T>
__device__ __forceinline__ void attn_store4(T* p, int j0, int D, float4 v) {
    if (j0 < D) { store(p, j0, v.x); store(p, j0 + 1, v.y); }
    if (j0 + 2 < D) { store(p, j0 + 2, v.z); store(p, j0 + 3, v.w); }
}

__device__ __forceinline__ float attn_dot4(float4 a, float4 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

__device__ __forceinline__ void attn_axpy4(float4& acc, float a, float4 x) {
    acc.x += a * x.x; acc.y += a * x.y; acc.z += a * x.z; acc.w += a * x.w;
}

// Sum over the G lanes of a group (G a power of two dividing 32); every lane gets it.
template <int G>
__device__ __forceinline__ float attn_group_sum(float v) {
#pragma unroll
    for (int o = 1; o < G; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Rows [r0, r0 + ROWS) of a (T, D) head at `src` (rows `stride` elements apart) into a (ROWS, DP)
// f32 shared tile, zeros past T and past D (the masked rows and padded dims must read as 0:
// 0 * garbage could be NaN).
template <typename T, int ROWS, int DP, int THREADS>
__device__ __forceinline__ void attn_stage(float* dst, const T* src, idx_t stride, int r0, int Tn, int D) {
    for (int i = threadIdx.x; i < ROWS * DP; i += THREADS) {
        int r = i / DP, j = i % DP;
        dst[i] = (r0 + r < Tn && j < D) ? load(src, (idx_t)(r0 + r) * stride + j) : 0.f;
    }
}

// ---------------------------------------------------------------------------------------------
// pack: qkv (B*T, W) -> q, k rotated by RoPE, v copied, each (B, heads, T, D). One thread per
// rotation pair (j, j + D/2) of one head of one row. cos, sin: (>= T, D/2) f32.
// RoPE: [x1 cos - x2 sin, x2 cos + x1 sin], each product rounded before the sum as in the f32
// CPU twin (no FMA contraction), so f32 results are bit-identical to it.
template <typename T>
__device__ void attn_pack_impl(const T* qkv, const float* cos_t, const float* sin_t, T* q, T* k, T* v, int B,
                               int H, int Hkv, int Tn, int D) {
    const int half = D / 2, heads = H + 2 * Hkv;
    const idx_t W = (idx_t)heads * D;
    const idx_t n = (idx_t)B * Tn * heads * half;
    for (idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        const int j = (int)(i % half);
        const idx_t rest = i / half;
        const int slot = (int)(rest % heads);
        const idx_t row = rest / heads;  // b * T + t
        const int t = (int)(row % Tn);
        const idx_t b = row / Tn;
        const T* src = qkv + row * W + (idx_t)slot * D;
        const float x1 = load(src, j), x2 = load(src, j + half);
        if (slot < H + Hkv) {
            const bool is_q = slot < H;
            T* dst = (is_q ? q : k) + ((b * (is_q ? H : Hkv) + (is_q ? slot : slot - H)) * Tn + t) * D;
            const float c = cos_t[(idx_t)t * half + j], s = sin_t[(idx_t)t * half + j];
            store(dst, j, __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
            store(dst, j + half, __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
        } else {
            T* dst = v + ((b * Hkv + (slot - H - Hkv)) * Tn + t) * D;
            store(dst, j, x1);
            store(dst, j + half, x2);
        }
    }
}

KEEL_ATTN_EXPORT(attn_pack, KEEL_ATTN_EW_THREADS, 1,
    (const float* qkv, const float* cos_t, const float* sin_t, float* q, float* k, float* v, int B, int H, int Hkv, int Tn, int D),
    (const bf16_t* qkv, const float* cos_t, const float* sin_t, bf16_t* q, bf16_t* k, bf16_t* v, int B, int H, int Hkv, int Tn, int D),
    (qkv, cos_t, sin_t, q, k, v, B, H, Hkv, Tn, D))

// ---------------------------------------------------------------------------------------------
// unpack: dq (B, H, T, D), dk, dv (B, Hkv, T, D) f32 -> dqkv (B*T, W), dq and dk through the
// transpose of RoPE's rotation: [x1 cos + x2 sin, x2 cos - x1 sin].
template <typename T>
__device__ void attn_unpack_impl(const float* dq, const float* dk, const float* dv, const float* cos_t,
                                 const float* sin_t, T* dqkv, int B, int H, int Hkv, int Tn, int D) {
    const int half = D / 2, heads = H + 2 * Hkv;
    const idx_t W = (idx_t)heads * D;
    const idx_t n = (idx_t)B * Tn * heads * half;
    for (idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        const int j = (int)(i % half);
        const idx_t rest = i / half;
        const int slot = (int)(rest % heads);
        const idx_t row = rest / heads;
        const int t = (int)(row % Tn);
        const idx_t b = row / Tn;
        T* dst = dqkv + row * W + (idx_t)slot * D;
        if (slot < H + Hkv) {
            const bool is_q = slot < H;
            const float* src = (is_q ? dq : dk) + ((b * (is_q ? H : Hkv) + (is_q ? slot : slot - H)) * Tn + t) * D;
            const float x1 = src[j], x2 = src[j + half];
            const float c = cos_t[(idx_t)t * half + j], s = sin_t[(idx_t)t * half + j];
            store(dst, j, __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
            store(dst, j + half, __fsub_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
        } else {
            const float* src = dv + ((b * Hkv + (slot - H - Hkv)) * Tn + t) * D;
            store(dst, j, src[j]);
            store(dst, j + half, src[j + half]);
        }
    }
}

KEEL_ATTN_EXPORT(attn_unpack, KEEL_ATTN_EW_THREADS, 1,
    (const float* dq, const float* dk, const float* dv, const float* cos_t, const float* sin_t, float* dqkv, int B, int H, int Hkv, int Tn, int D),
    (const float* dq, const float* dk, const float* dv, const float* cos_t, const float* sin_t, bf16_t* dqkv, int B, int H, int Hkv, int Tn, int D),
    (dq, dk, dv, cos_t, sin_t, dqkv, B, H, Hkv, Tn, D))

// ---------------------------------------------------------------------------------------------
// fwd: one block per (query tile of BR rows, head h, batch b); grid (ceil(T / BR), H, B) with
// BR = 64 for D <= 64 and 32 above, 256 threads, no dynamic shared memory; the
// tile index reversed so the longest tiles (most key tiles) start first. Key tiles of BC rows
// up to the diagonal (none above it is loaded) are staged in shared memory; each query row keeps
// a running max m, running sum l and unnormalized output acc (online softmax):
//   m' = max(m, max_j S_ij), acc = acc e^(m - m') + sum_j e^(S_ij - m') v_j, l likewise;
// at the end O = acc / l, lse = m + ln l.
template <typename T, int G, int NCH>
__device__ __forceinline__ void flash_fwd_body(const T* q, const T* k, const T* v, T* o, float* lse, int H, int Hkv,
                                               int Tn, int D, float scale, float* Ks, float* Vs) {
    constexpr int THREADS = KEEL_ATTN_FWD_THREADS, BC = KEEL_ATTN_FWD_BC;
    constexpr int BR = THREADS / G, DP = 4 * G * NCH;
    const int sub = threadIdx.x % G, r = threadIdx.x / G;
    const int nq = (Tn + BR - 1) / BR;
    const int r0 = (nq - 1 - (int)blockIdx.x) * BR;
    const int h = blockIdx.y, b = blockIdx.z, g = h / (H / Hkv);
    const int row = r0 + r;
    const bool valid = row < Tn;
    const int mrow = valid ? row : Tn - 1;  // padding rows see keys as the last row does: no NaN
    const T* kh = k + ((idx_t)b * Hkv + g) * Tn * D;
    const T* vh = v + ((idx_t)b * Hkv + g) * Tn * D;

    float4 qr[NCH], acc[NCH];
    {
        const T* qrow = q + (((idx_t)b * H + h) * Tn + mrow) * D;
#pragma unroll
        for (int n = 0; n < NCH; n++) {
            qr[n] = attn_load4(qrow, 4 * (sub + G * n), D);
            acc[n] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    float m = KEEL_NEG_INF, l = 0.f;
    const int last = min(r0 + BR, Tn) - 1;  // the tile's last real row: keys past it are masked for all
    for (int c0 = 0; c0 <= last; c0 += BC) {
        __syncthreads();  // the previous tile is consumed
        attn_stage<T, BC, DP, THREADS>(Ks, kh, D, c0, Tn, D);
        attn_stage<T, BC, DP, THREADS>(Vs, vh, D, c0, Tn, D);
        __syncthreads();
        // Scaled scores of this row against the tile's keys; -inf where masked. Every tile holds
        // a live key for every row (key c0 <= r0 <= row), so m' is finite from the first tile on.
        float s[BC];
        float mt = m;
#pragma unroll
        for (int c = 0; c < BC; c++) {
            const float4* kr = reinterpret_cast<const float4*>(Ks + c * DP);
            float part = 0.f;
#pragma unroll
            for (int n = 0; n < NCH; n++) part += attn_dot4(qr[n], kr[sub + G * n]);
            part = attn_group_sum<G>(part);
            s[c] = (c0 + c <= mrow) ? part * scale : KEEL_NEG_INF;
            mt = fmaxf(mt, s[c]);
        }
        const float corr = expf(m - mt);  // 0 on the first tile (m = -inf), where l and acc are 0
#pragma unroll
        for (int n = 0; n < NCH; n++) {
            acc[n].x *= corr; acc[n].y *= corr; acc[n].z *= corr; acc[n].w *= corr;
        }
        float psum = 0.f;
#pragma unroll
        for (int c = 0; c < BC; c++) {
            const float p = expf(s[c] - mt);
            psum += p;
            const float4* vr = reinterpret_cast<const float4*>(Vs + c * DP);
#pragma unroll
            for (int n = 0; n < NCH; n++) attn_axpy4(acc[n], p, vr[sub + G * n]);
        }
        l = l * corr + psum;
        m = mt;
    }
    if (valid) {
        const float inv = 1.f / l;
        T* orow = o + (((idx_t)b * Tn + row) * H + h) * D;
#pragma unroll
        for (int n = 0; n < NCH; n++) {
            float4 a = acc[n];
            a.x *= inv; a.y *= inv; a.z *= inv; a.w *= inv;
            attn_store4(orow, 4 * (sub + G * n), D, a);
        }
        if (sub == 0) lse[((idx_t)b * H + h) * Tn + row] = m + logf(l);
    }
}

template <typename T>
__device__ void flash_fwd_simt_impl(const T* q, const T* k, const T* v, T* o, float* lse, int B, int H, int Hkv,
                                    int Tn, int D, float scale) {
    __shared__ float4 ks[KEEL_ATTN_FWD_BC * KEEL_ATTN_DMAX / 4];
    __shared__ float4 vs[KEEL_ATTN_FWD_BC * KEEL_ATTN_DMAX / 4];
    float* Ks = reinterpret_cast<float*>(ks);
    float* Vs = reinterpret_cast<float*>(vs);
    // Query rows per block: 64 for D <= 64, 32 above (the launch's grid follows: see the header).
    if (D <= 32) flash_fwd_body<T, 4, 2>(q, k, v, o, lse, H, Hkv, Tn, D, scale, Ks, Vs);
    else if (D <= 64) flash_fwd_body<T, 4, 4>(q, k, v, o, lse, H, Hkv, Tn, D, scale, Ks, Vs);
    else flash_fwd_body<T, 8, 4>(q, k, v, o, lse, H, Hkv, Tn, D, scale, Ks, Vs);
}

KEEL_ATTN_EXPORT(flash_fwd_simt, KEEL_ATTN_FWD_THREADS, 2,
    (const float* q, const float* k, const float* v, float* o, float* lse, int B, int H, int Hkv, int Tn, int D, float scale),
    (const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse, int B, int H, int Hkv, int Tn, int D, float scale),
    (q, k, v, o, lse, B, H, Hkv, Tn, D, scale))

// ---------------------------------------------------------------------------------------------
// bwd_pre: delta[b, h, t] = sum_j dO[b, t, h, j] O[b, t, h, j], one warp per (b, t, h) row of o
// and dout (B, T, H, D); grid ceil(B T H / 8) blocks of 256.
template <typename T>
__device__ void flash_bwd_pre_impl(const T* o, const T* dout, float* delta, int B, int H, int Tn, int D) {
    const idx_t rows = (idx_t)B * Tn * H;
    const idx_t R = (idx_t)blockIdx.x * (KEEL_ATTN_EW_THREADS / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (R >= rows) return;  // whole warps leave together
    const T* orow = o + R * D;
    const T* drow = dout + R * D;
    float acc = 0.f;
    for (int j = lane; j < D; j += 32) acc += load(orow, j) * load(drow, j);
    acc = warp_sum(acc);
    if (lane == 0) {
        const int h = (int)(R % H);
        const idx_t bt = R / H;
        const int t = (int)(bt % Tn);
        const idx_t b = bt / Tn;
        delta[(b * H + h) * Tn + t] = acc;
    }
}

KEEL_ATTN_EXPORT(flash_bwd_pre, KEEL_ATTN_EW_THREADS, 1,
    (const float* o, const float* dout, float* delta, int B, int H, int Tn, int D),
    (const bf16_t* o, const bf16_t* dout, float* delta, int B, int H, int Tn, int D),
    (o, dout, delta, B, H, Tn, D))

// ---------------------------------------------------------------------------------------------
// bwd_dkdv: one block per (key tile of 32, kv head g, batch b); grid (ceil(T / 32), Hkv, B).
// The block's key rows keep k, v and the accumulators dk, dv in registers and sweep every query
// head of the group and every query tile at or below the diagonal (query rows r >= the tile's
// first key), one query row at a time:
//   s = q_r . k_c * scale, p = exp(s - lse_r) (0 where c > r), dp = dO_r . v_c,
//   ds = p (dp - delta_r) scale, dv_c += p dO_r, dk_c += ds q_r.
// No atomics: each block owns its keys' rows of dk and dv, summed in a fixed order.
template <typename T, int NCH>
__device__ __forceinline__ void flash_bwd_dkdv_body(const T* q, const T* k, const T* v, const T* dout,
                                                    const float* lse, const float* delta, float* dk, float* dv,
                                                    int H, int Hkv, int Tn, int D, float scale, float* Qs, float* dOs,
                                                    float* Ls, float* Ds) {
    constexpr int G = KEEL_ATTN_BWD_G, THREADS = KEEL_ATTN_BWD_THREADS, TILE = KEEL_ATTN_BWD_TILE;
    constexpr int DP = 4 * G * NCH;
    static_assert(THREADS / G == TILE, "one key row per lane group");
    const int sub = threadIdx.x % G, c = threadIdx.x / G;
    const int c0 = blockIdx.x * TILE, g = blockIdx.y, b = blockIdx.z;
    const int key = c0 + c;
    const bool kvalid = key < Tn;
    const int rep = H / Hkv;

    float4 kr[NCH], vr[NCH], dkr[NCH], dvr[NCH];
    {
        const idx_t off = (((idx_t)b * Hkv + g) * Tn + (kvalid ? key : Tn - 1)) * D;
#pragma unroll
        for (int n = 0; n < NCH; n++) {
            const int j0 = 4 * (sub + G * n);
            kr[n] = attn_load4(k + off, j0, D);
            vr[n] = attn_load4(v + off, j0, D);
            dkr[n] = make_float4(0.f, 0.f, 0.f, 0.f);
            dvr[n] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    for (int hh = 0; hh < rep; hh++) {
        const int h = g * rep + hh;
        const T* qh = q + ((idx_t)b * H + h) * Tn * D;
        const T* doh = dout + (idx_t)b * Tn * H * D + (idx_t)h * D;  // rows H D apart
        const float* lh = lse + ((idx_t)b * H + h) * Tn;
        const float* dh = delta + ((idx_t)b * H + h) * Tn;
        // Tiles are aligned (same size for keys and queries), so the first query tile is the
        // diagonal one, starting at c0.
        for (int r0 = c0; r0 < Tn; r0 += TILE) {
            __syncthreads();
            attn_stage<T, TILE, DP, THREADS>(Qs, qh, D, r0, Tn, D);
            attn_stage<T, TILE, DP, THREADS>(dOs, doh, (idx_t)H * D, r0, Tn, D);
            if (threadIdx.x < TILE) {
                const int rr = r0 + threadIdx.x;
                Ls[threadIdx.x] = rr < Tn ? lh[rr] : 0.f;
                Ds[threadIdx.x] = rr < Tn ? dh[rr] : 0.f;
            }
            __syncthreads();
#pragma unroll 2
            for (int r = 0; r < TILE; r++) {
                const float4* qrow = reinterpret_cast<const float4*>(Qs + r * DP);
                const float4* drow = reinterpret_cast<const float4*>(dOs + r * DP);
                float s = 0.f, dp = 0.f;
#pragma unroll
                for (int n = 0; n < NCH; n++) {
                    s += attn_dot4(kr[n], qrow[sub + G * n]);
                    dp += attn_dot4(vr[n], drow[sub + G * n]);
                }
                s = attn_group_sum<G>(s);
                dp = attn_group_sum<G>(dp);
                const int qrow_abs = r0 + r;
                const bool live = key <= qrow_abs && qrow_abs < Tn;
                const float p = live ? expf(s * scale - Ls[r]) : 0.f;
                const float ds = p * (dp - Ds[r]) * scale;
#pragma unroll
                for (int n = 0; n < NCH; n++) {
                    attn_axpy4(dvr[n], p, drow[sub + G * n]);
                    attn_axpy4(dkr[n], ds, qrow[sub + G * n]);
                }
            }
        }
    }
    if (kvalid) {
        const idx_t off = (((idx_t)b * Hkv + g) * Tn + key) * D;
#pragma unroll
        for (int n = 0; n < NCH; n++) {
            const int j0 = 4 * (sub + G * n);
            attn_store4(dk + off, j0, D, dkr[n]);
            attn_store4(dv + off, j0, D, dvr[n]);
        }
    }
}

template <typename T>
__device__ void flash_bwd_dkdv_impl(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                    const float* delta, float* dk, float* dv, int B, int H, int Hkv, int Tn, int D,
                                    float scale) {
    __shared__ float4 qs[KEEL_ATTN_BWD_TILE * KEEL_ATTN_DMAX / 4];
    __shared__ float4 dos[KEEL_ATTN_BWD_TILE * KEEL_ATTN_DMAX / 4];
    __shared__ float ls[KEEL_ATTN_BWD_TILE], ds[KEEL_ATTN_BWD_TILE];
    float* Qs = reinterpret_cast<float*>(qs);
    float* dOs = reinterpret_cast<float*>(dos);
    if (D <= 32) flash_bwd_dkdv_body<T, 1>(q, k, v, dout, lse, delta, dk, dv, H, Hkv, Tn, D, scale, Qs, dOs, ls, ds);
    else if (D <= 64) flash_bwd_dkdv_body<T, 2>(q, k, v, dout, lse, delta, dk, dv, H, Hkv, Tn, D, scale, Qs, dOs, ls, ds);
    else flash_bwd_dkdv_body<T, 4>(q, k, v, dout, lse, delta, dk, dv, H, Hkv, Tn, D, scale, Qs, dOs, ls, ds);
}

KEEL_ATTN_EXPORT(flash_bwd_dkdv, KEEL_ATTN_BWD_THREADS, 2,
    (const float* q, const float* k, const float* v, const float* dout, const float* lse, const float* delta, float* dk, float* dv, int B, int H, int Hkv, int Tn, int D, float scale),
    (const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* delta, float* dk, float* dv, int B, int H, int Hkv, int Tn, int D, float scale),
    (q, k, v, dout, lse, delta, dk, dv, B, H, Hkv, Tn, D, scale))

// ---------------------------------------------------------------------------------------------
// bwd_dq: one block per (query tile of 32, head h, batch b); grid (ceil(T / 32), H, B), tiles
// reversed (longest first). Each query row keeps q, dO and the accumulator dq in registers and
// sweeps the key tiles up to the diagonal: dq_r = sum_c ds_rc k_c with ds as in bwd_dkdv.
template <typename T, int NCH>
__device__ __forceinline__ void flash_bwd_dq_body(const T* q, const T* k, const T* v, const T* dout,
                                                  const float* lse, const float* delta, float* dq, int H, int Hkv,
                                                  int Tn, int D, float scale, float* Ks, float* Vs) {
    constexpr int G = KEEL_ATTN_BWD_G, THREADS = KEEL_ATTN_BWD_THREADS, TILE = KEEL_ATTN_BWD_TILE;
    constexpr int DP = 4 * G * NCH;
    static_assert(THREADS / G == TILE, "one query row per lane group");
    const int sub = threadIdx.x % G, r = threadIdx.x / G;
    const int nq = (Tn + TILE - 1) / TILE;
    const int r0 = (nq - 1 - (int)blockIdx.x) * TILE;
    const int h = blockIdx.y, b = blockIdx.z, g = h / (H / Hkv);
    const int row = r0 + r;
    const bool valid = row < Tn;
    const T* kh = k + ((idx_t)b * Hkv + g) * Tn * D;
    const T* vh = v + ((idx_t)b * Hkv + g) * Tn * D;

    float4 qr[NCH], dor[NCH], dqr[NCH];
    float L = 0.f, Dl = 0.f;
    {
        const int rr = valid ? row : Tn - 1;
        const T* qrow = q + (((idx_t)b * H + h) * Tn + rr) * D;
        const T* drow = dout + (((idx_t)b * Tn + rr) * H + h) * D;
#pragma unroll
        for (int n = 0; n < NCH; n++) {
            const int j0 = 4 * (sub + G * n);
            qr[n] = attn_load4(qrow, j0, D);
            dor[n] = attn_load4(drow, j0, D);
            dqr[n] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
        L = lse[((idx_t)b * H + h) * Tn + rr];
        Dl = delta[((idx_t)b * H + h) * Tn + rr];
    }
    const int last = min(r0 + TILE, Tn) - 1;
    for (int c0 = 0; c0 <= last; c0 += TILE) {
        __syncthreads();
        attn_stage<T, TILE, DP, THREADS>(Ks, kh, D, c0, Tn, D);
        attn_stage<T, TILE, DP, THREADS>(Vs, vh, D, c0, Tn, D);
        __syncthreads();
#pragma unroll 2
        for (int c = 0; c < TILE; c++) {
            const float4* krow = reinterpret_cast<const float4*>(Ks + c * DP);
            const float4* vrow = reinterpret_cast<const float4*>(Vs + c * DP);
            float s = 0.f, dp = 0.f;
#pragma unroll
            for (int n = 0; n < NCH; n++) {
                s += attn_dot4(qr[n], krow[sub + G * n]);
                dp += attn_dot4(dor[n], vrow[sub + G * n]);
            }
            s = attn_group_sum<G>(s);
            dp = attn_group_sum<G>(dp);
            const bool live = valid && c0 + c <= row;
            const float p = live ? expf(s * scale - L) : 0.f;
            const float ds = p * (dp - Dl) * scale;
#pragma unroll
            for (int n = 0; n < NCH; n++) attn_axpy4(dqr[n], ds, krow[sub + G * n]);
        }
    }
    if (valid) {
        float* out = dq + (((idx_t)b * H + h) * Tn + row) * D;
#pragma unroll
        for (int n = 0; n < NCH; n++) attn_store4(out, 4 * (sub + G * n), D, dqr[n]);
    }
}

template <typename T>
__device__ void flash_bwd_dq_impl(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                  const float* delta, float* dq, int B, int H, int Hkv, int Tn, int D, float scale) {
    __shared__ float4 ks[KEEL_ATTN_BWD_TILE * KEEL_ATTN_DMAX / 4];
    __shared__ float4 vs[KEEL_ATTN_BWD_TILE * KEEL_ATTN_DMAX / 4];
    float* Ks = reinterpret_cast<float*>(ks);
    float* Vs = reinterpret_cast<float*>(vs);
    if (D <= 32) flash_bwd_dq_body<T, 1>(q, k, v, dout, lse, delta, dq, H, Hkv, Tn, D, scale, Ks, Vs);
    else if (D <= 64) flash_bwd_dq_body<T, 2>(q, k, v, dout, lse, delta, dq, H, Hkv, Tn, D, scale, Ks, Vs);
    else flash_bwd_dq_body<T, 4>(q, k, v, dout, lse, delta, dq, H, Hkv, Tn, D, scale, Ks, Vs);
}

KEEL_ATTN_EXPORT(flash_bwd_dq, KEEL_ATTN_BWD_THREADS, 2,
    (const float* q, const float* k, const float* v, const float* dout, const float* lse, const float* delta, float* dq, int B, int H, int Hkv, int Tn, int D, float scale),
    (const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* delta, float* dq, int B, int H, int Hkv, int Tn, int D, float scale),
    (q, k, v, dout, lse, delta, dq, B, H, Hkv, Tn, D, scale))
