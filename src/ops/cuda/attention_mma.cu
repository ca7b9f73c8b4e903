// FlashAttention-2 forward and backward for bf16 on tensor cores: causal attention with grouped KV
// heads (GQA), mma.sync.m16n8k16 (bf16 inputs, f32 accumulation) and ldmatrix through inline PTX,
// cp.async staging. sm_80 and newer: on older architectures every kernel body is empty (the
// module still compiles; attention_mma.rs never launches them there). RoPE is already applied to
// q and k (the SIMT pack kernel of attention.cu); the caller (attention_mma.rs) owns the shapes.
//
// Shapes (row-major, contiguous; b batch, h query head, kv head hk = h / (H / Hkv)):
//   q (B, H, T, D) bf16, k and v (B, Hkv, T, D) bf16,
//   o and dout (B, T, H, D) = (B*T, H*D) bf16, lse and delta (B, H, T) f32,
//   dq (B, H, T, D) f32, dk and dv (B, Hkv, T, D) f32.
// Math (S = scale * q k^T over the causal keys j <= i; natural logs):
//   forward   lse_i = log sum_j exp(S_ij),  P = exp(S - lse),  O = P V
//   backward  delta_i = sum_d dO_id O_id (the caller),  dP = dO V^T,  dS = P * (dP - delta),
//             dQ = scale dS K,  dK = scale dS^T Q (summed over the group's query heads),  dV = P^T dO.
// Exponentials are taken in base 2 with scale * log2(e) folded in (exp2f, not the fast intrinsic);
// lse is stored in natural log.
//
// Kernels (every one: 128 threads = 4 warps, dynamic shared memory of the size below;
// LD = D + 8 is the shared row pitch in bf16 elements: the 16-byte pad puts the 8 rows of every
// ldmatrix 8x8 matrix in distinct banks; D in {32, 64, 128}, the _d<D> in each name):
//
//   keel_attention_mma_fwd_d<D>_bf16(q, k, v, o, lse, T, H, Hkv, scale)
//     grid (ceil(T/64), H, B): one block per 64 query rows (16 per warp) of one head, heaviest
//     (last) query tile first. Key/value tiles of 64 rows. Q fragments live in registers.
//     shared (64 + 2*64) * LD * 2 bytes: sQ | sK | sV  (D=32: 15360, 64: 27648, 128: 52224)
//
//   keel_attention_mma_bwd_dq_d<D>_bf16(q, k, v, dout, lse, delta, dq, T, H, Hkv, scale)
//     grid (ceil(T/64), H, B): one block per 64 query rows (16 per warp), over key tiles of BN
//     rows (BN = 64 for D <= 64, 32 for D = 128), double-buffered. Q and dO fragments in registers.
//     shared (2*64 + 4*BN) * LD * 2 bytes: sQ | sdO | 2 x (sK | sV)
//     (D=32: 30720, 64: 55296, 128: 69632)
//
//   keel_attention_mma_bwd_dkdv_d<D>_bf16(q, k, v, dout, lse, delta, dk, dv, T, H, Hkv, scale)
//     grid (ceil(T/64), Hkv, B): one block per 64 keys (16 per warp) of one kv head; it walks the
//     group's query heads and, per head, the query tiles of BM rows (BM = 64 for D <= 64, 32 for
//     D = 128) from the diagonal to the end, double-buffered. Key tile 0 (most work) first.
//     shared (2*64 + 4*BM) * LD * 2 + 4*BM*4 bytes: sK | sV | 2 x (sQ | sdO) | 2 x (lse | delta)
//     (D=32: 31744, 64: 56320, 128: 70144)
//
// Tiles entirely above the diagonal are never loaded or multiplied; tiles crossing it (and rows
// past T) are masked. Rows past T are zero-filled in shared memory (cp.async with src-size 0), so
// no uninitialized value reaches an mma, and nothing past T is stored. Deterministic: every output
// element is accumulated by one thread in a fixed order, no atomics.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define ATTN_MMA_ON 1
#else
#define ATTN_MMA_ON 0
#endif

#define ATTN_MMA_THREADS 128
#define ATTN_MMA_LOG2E 1.4426950408889634f
#define ATTN_MMA_LN2 0.6931471805599453f

extern __shared__ __align__(16) unsigned char attn_mma_smem_buf[];

// Tile sizes per head dimension: query rows of the dQ kernel's key tiles (BN_DQ) and of the
// dK/dV kernel's query tiles (BM_KV). Smaller tiles at D = 128 keep the accumulators in registers.
template <int D> struct AttnMmaCfg { static constexpr int BN_DQ = 64, BM_KV = 64; };
template <> struct AttnMmaCfg<128> { static constexpr int BN_DQ = 32, BM_KV = 32; };

// ---------------------------------------------------------------------------------------------
// PTX wrappers and fragment index math (PTX ISA, "Warp-level matrix fragment mma.m16n8k16" with
// .bf16 and "ldmatrix"). Notation: lane l of the warp, g = l / 4 (groupID), t = l % 4
// (threadID_in_group). A .b32 register holding two bf16 keeps the lower-indexed element in its
// low 16 bits.
// ---------------------------------------------------------------------------------------------

// The shared-state-space address of a pointer into shared memory (what ldmatrix/cp.async take).
__device__ __forceinline__ unsigned attn_mma_smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, asynchronously; src_bytes = 0 reads nothing and writes 16 zero bytes.
__device__ __forceinline__ void attn_mma_cp16(unsigned dst, const void* src, bool valid) {
#if ATTN_MMA_ON
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
#endif
}

// 4 bytes global -> shared, asynchronously, zero-filled when !valid.
__device__ __forceinline__ void attn_mma_cp4(unsigned dst, const void* src, bool valid) {
#if ATTN_MMA_ON
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
#endif
}

__device__ __forceinline__ void attn_mma_commit() {
#if ATTN_MMA_ON
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of this thread's committed cp.async groups are still in flight.
template <int N> __device__ __forceinline__ void attn_mma_wait() {
#if ATTN_MMA_ON
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ldmatrix.x4: four 8x8 b16 matrices; lanes 8m .. 8m+7 give the addresses of rows 0..7 of
// matrix m (16 contiguous bytes each), and register r[m] of lane l receives matrix m's elements
//   plain:  (row g, cols 2t, 2t+1)
//   .trans: (rows 2t, 2t+1, col g)   (the matrix read column-major)
__device__ __forceinline__ void attn_mma_ldsm(unsigned (&r)[4], unsigned addr) {
#if ATTN_MMA_ON
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#endif
}

__device__ __forceinline__ void attn_mma_ldsm_t(unsigned (&r)[4], unsigned addr) {
#if ATTN_MMA_ON
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#endif
}

// c += a b for one m16n8k16 tile, bf16 inputs, f32 accumulators. Fragments (PTX ISA):
//   A 16x16 row-major: a[0] = (row g, cols 2t, 2t+1), a[1] = (row g+8, cols 2t, 2t+1),
//                      a[2] = (row g, cols 2t+8, 2t+9), a[3] = (row g+8, cols 2t+8, 2t+9);
//   B 16x8 ("col"):    b0 = (rows 2t, 2t+1, col g), b1 = (rows 2t+8, 2t+9, col g);
//   C 16x8 f32:        c[0], c[1] = (row g, cols 2t, 2t+1), c[2], c[3] = (row g+8, cols 2t, 2t+1).
__device__ __forceinline__ void attn_mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if ATTN_MMA_ON
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Row (within the 16x8 tile) of accumulator c[i] of this lane: g for c[0], c[1]; g + 8 for c[2], c[3].
__device__ __forceinline__ int attn_mma_c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
// Column (within the 16x8 tile) of accumulator c[i]: 2t for c[0], c[2]; 2t + 1 for c[1], c[3].
__device__ __forceinline__ int attn_mma_c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// Row and column (within a 16x16 block of a row-major shared matrix) of the 8-element row whose
// address lane l gives to ldmatrix.x4 so that matrices 0..3 are the quadrants
// (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15).
// Used two ways:
//  - plain, on a [m][k] matrix: r[0..3] = a[0..3], the A fragment of the 16x16 block (lane l gets
//    (row g, cols 2t..) of each quadrant, which is a[0..3]'s place in the block);
//  - .trans, on a [k][n] matrix (k rows): r[0], r[1] = b0, b1 of the n-tile of cols 0-7 and
//    r[2], r[3] = b0, b1 of the n-tile of cols 8-15 (lane l gets (k rows 2t, 2t+1, n col g) of
//    each quadrant; quadrants 0, 1 cover k 0-7 and 8-15 of n-tile 0, quadrants 2, 3 of n-tile 1).
__device__ __forceinline__ int attn_mma_ldsm_row_a(int l) { return (l & 7) + 8 * ((l >> 3) & 1); }
__device__ __forceinline__ int attn_mma_ldsm_col_a(int l) { return 8 * (l >> 4); }

// The same for B fragments from an [n][k] matrix (n rows, k contiguous: K for S = Q K^T) read
// plain: matrices 0..3 are (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15),
// and lane l gets (n row g, k cols 2t, 2t+1) of each, i.e. B(k = 2t, 2t+1; n = g): r[0], r[1] =
// b0, b1 of the n-tile of rows 0-7 and r[2], r[3] = b0, b1 of the n-tile of rows 8-15.
__device__ __forceinline__ int attn_mma_ldsm_row_bn(int l) { return (l & 7) + 8 * (l >> 4); }
__device__ __forceinline__ int attn_mma_ldsm_col_bn(int l) { return 8 * ((l >> 3) & 1); }

// Two f32 as one .b32 of bf16 (round to nearest even): lo in the low half. cvt packs its first
// source into the upper half.
__device__ __forceinline__ unsigned attn_mma_pack(float lo, float hi) {
    unsigned r = 0;
#if ATTN_MMA_ON
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

// The A fragment (16 rows x 16 columns) of columns 16kc .. 16kc+15 of a 16 x N f32 tile held as
// C fragments, from its n-tiles c0 = 2kc and c1 = 2kc+1: a[0] = (row g, cols 2t, 2t+1) is c0[0..1],
// a[1] = (row g+8, ..) is c0[2..3], a[2] = (row g, cols 8+2t, ..) is c1[0..1], a[3] is c1[2..3].
__device__ __forceinline__ void attn_mma_c_to_a(unsigned (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = attn_mma_pack(c0[0], c0[1]);
    a[1] = attn_mma_pack(c0[2], c0[3]);
    a[2] = attn_mma_pack(c1[0], c1[1]);
    a[3] = attn_mma_pack(c1[2], c1[3]);
}

// Copies rows row0 .. row0+ROWS-1 of a (T, D) bf16 matrix whose rows are `stride` elements apart
// into shared memory at `dst` (pitch LD = D + 8), 16 bytes per cp.async; rows at or past T are
// zero-filled (their source address is clamped to row 0 and nothing is read).
template <int ROWS, int D>
__device__ __forceinline__ void attn_mma_load_rows(unsigned dst, const bf16_t* src, idx_t stride, int row0, int T,
                                                   int tid) {
    constexpr int CHUNKS = D / 8, LD = D + 8, TOTAL = ROWS * CHUNKS;
    static_assert(TOTAL % ATTN_MMA_THREADS == 0, "tile copy must divide among the threads");
#pragma unroll
    for (int i = 0; i < TOTAL / ATTN_MMA_THREADS; ++i) {
        int c = tid + i * ATTN_MMA_THREADS;
        int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        bool valid = row0 + r < T;
        const bf16_t* s = src + (valid ? (idx_t)(row0 + r) * stride : 0) + col;
        attn_mma_cp16(dst + (unsigned)((r * LD + col) * 2), s, valid);
    }
}

// Copies src[row0 .. row0+ROWS-1] (f32) into shared memory, zero past T.
template <int ROWS>
__device__ __forceinline__ void attn_mma_load_vec(unsigned dst, const float* src, int row0, int T, int tid) {
    static_assert(ROWS <= ATTN_MMA_THREADS, "one element per thread");
    if (tid < ROWS) {
        bool valid = row0 + tid < T;
        attn_mma_cp4(dst + 4 * tid, src + (valid ? row0 + tid : 0), valid);
    }
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void attn_mma_fwd(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                             const bf16_t* __restrict__ v, bf16_t* __restrict__ o,
                                             float* __restrict__ lse, int T, int H, int Hkv, float scale) {
#if ATTN_MMA_ON
    constexpr int BM = 64, BN = 64, LD = D + 8, KC = D / 16, NT = BN / 8, DT = D / 8;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nqt = (T + BM - 1) / BM;
    const int qt = nqt - 1 - (int)blockIdx.x;  // the longest causal prefixes start first
    const int h = blockIdx.y, b = blockIdx.z, hk = h / (H / Hkv);
    const int q0 = qt * BM;
    const bf16_t* qh = q + ((idx_t)b * H + h) * T * D;
    const bf16_t* kh = k + ((idx_t)b * Hkv + hk) * T * D;
    const bf16_t* vh = v + ((idx_t)b * Hkv + hk) * T * D;
    const unsigned sQ = attn_mma_smem_addr(attn_mma_smem_buf);
    const unsigned sK = sQ + BM * LD * 2, sV = sK + BN * LD * 2;
    // Key tiles 0 .. n_kt-1 hold every key j <= the tile's last (valid) row; none lies wholly above
    // the diagonal.
    const int n_kt = (min(q0 + BM, T) - 1) / BN + 1;

    // cp.async groups, in commit order: {Q, K_0}, {V_0}, then per key tile j: {K_j+1}, {V_j+1}.
    // Waiting until one group is left in flight therefore always completes the K (or V) tile
    // about to be read while the other one is still loading.
    attn_mma_load_rows<BM, D>(sQ, qh, D, q0, T, tid);
    attn_mma_load_rows<BN, D>(sK, kh, D, 0, T, tid);
    attn_mma_commit();
    attn_mma_load_rows<BN, D>(sV, vh, D, 0, T, tid);
    attn_mma_commit();
    attn_mma_wait<1>();
    __syncthreads();

    // This warp's 16 query rows as A fragments, one per 16 columns of D.
    unsigned qf[KC][4];
    {
        const unsigned a = sQ + ((warp * 16 + attn_mma_ldsm_row_a(lane)) * LD + attn_mma_ldsm_col_a(lane)) * 2;
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) attn_mma_ldsm(qf[kc], a + kc * 32);
    }
    const unsigned k_lane = sK + (attn_mma_ldsm_row_bn(lane) * LD + attn_mma_ldsm_col_bn(lane)) * 2;
    const unsigned v_lane = sV + (attn_mma_ldsm_row_a(lane) * LD + attn_mma_ldsm_col_a(lane)) * 2;
    const float sl2 = scale * ATTN_MMA_LOG2E;
    // Query row of this lane's accumulators c[0], c[1] (c[2], c[3]: + 8).
    const int row = q0 + warp * 16 + attn_mma_c_row(lane, 0);

    float oacc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) oacc[dt][0] = oacc[dt][1] = oacc[dt][2] = oacc[dt][3] = 0.f;
    // Running max (log2 units) and this lane's share of the running sum, for rows g and g + 8.
    float m_run[2] = {KEEL_NEG_INF, KEEL_NEG_INF}, l_run[2] = {0.f, 0.f};

    for (int j = 0; j < n_kt; ++j) {
        attn_mma_wait<1>();  // K_j
        __syncthreads();
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
        // S = Q K_j^T: K rows are the n dimension, D the k dimension.
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned bk[4];
                attn_mma_ldsm(bk, k_lane + (np * 16 * LD + kc * 16) * 2);
                attn_mma_16816(s[2 * np], qf[kc], bk[0], bk[1]);
                attn_mma_16816(s[2 * np + 1], qf[kc], bk[2], bk[3]);
            }
        }
        __syncthreads();  // every warp is done with sK
        if (j + 1 < n_kt) attn_mma_load_rows<BN, D>(sK, kh, D, (j + 1) * BN, T, tid);
        attn_mma_commit();

        // Scores in log2 units; keys after the query row masked (only tiles crossing the diagonal
        // for this warp's rows need it). Keys past T only occur there.
        const bool mask = j * BN + BN - 1 > q0 + warp * 16;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float x = s[nt][i] * sl2;
                if (mask && j * BN + nt * 8 + attn_mma_c_col(lane, i) > row + 8 * (i >> 1)) x = KEEL_NEG_INF;
                s[nt][i] = x;
            }
        }
        // Online softmax per row r (elements 2r, 2r+1 of every n-tile). The four lanes of a quad
        // hold one row, so the max is reduced over the quad; the sum stays per lane until the end
        // (every lane rescales its share by the same factor). Key 0 is in tile 0 for every row,
        // so m_new is finite from the first tile on and no -inf - -inf arises.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = KEEL_NEG_INF;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m_run[r], mx);
            const float alpha = exp2f(m_run[r] - m_new);
            m_run[r] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                s[nt][2 * r] = exp2f(s[nt][2 * r] - m_new);
                s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - m_new);
                sum += s[nt][2 * r] + s[nt][2 * r + 1];
            }
            l_run[r] = l_run[r] * alpha + sum;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                oacc[dt][2 * r] *= alpha;
                oacc[dt][2 * r + 1] *= alpha;
            }
        }

        attn_mma_wait<1>();  // V_j
        __syncthreads();
        // O += P V_j: P (16 x BN) as A fragments, V rows are the k dimension (ldmatrix.trans).
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) {
            unsigned pa[4];
            attn_mma_c_to_a(pa, s[2 * kc], s[2 * kc + 1]);
#pragma unroll
            for (int dp = 0; dp < DT / 2; ++dp) {
                unsigned bv[4];
                attn_mma_ldsm_t(bv, v_lane + (kc * 16 * LD + dp * 16) * 2);
                attn_mma_16816(oacc[2 * dp], pa, bv[0], bv[1]);
                attn_mma_16816(oacc[2 * dp + 1], pa, bv[2], bv[3]);
            }
        }
        __syncthreads();  // every warp is done with sV
        if (j + 1 < n_kt) attn_mma_load_rows<BN, D>(sV, vh, D, (j + 1) * BN, T, tid);
        attn_mma_commit();
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = l_run[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int i = row + 8 * r;
        if (i < T) {
            const float inv = 1.f / l;
            bf16_t* orow = o + (((idx_t)b * T + i) * H + h) * D + attn_mma_c_col(lane, 0);
#pragma unroll
            for (int dt = 0; dt < DT; ++dt)
                *reinterpret_cast<unsigned*>(orow + dt * 8) =
                    attn_mma_pack(oacc[dt][2 * r] * inv, oacc[dt][2 * r + 1] * inv);
            if ((lane & 3) == 0) lse[((idx_t)b * H + h) * T + i] = (m_run[r] + log2f(l)) * ATTN_MMA_LN2;
        }
    }
#endif
}

// ---------------------------------------------------------------------------------------------
// Backward: dQ over key tiles
// ---------------------------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void attn_mma_bwd_dq(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                                const bf16_t* __restrict__ v, const bf16_t* __restrict__ dout,
                                                const float* __restrict__ lse, const float* __restrict__ delta,
                                                float* __restrict__ dq, int T, int H, int Hkv, float scale) {
#if ATTN_MMA_ON
    constexpr int BM = 64, BN = AttnMmaCfg<D>::BN_DQ, LD = D + 8, KC = D / 16, NT = BN / 8, DT = D / 8;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nqt = (T + BM - 1) / BM;
    const int qt = nqt - 1 - (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, hk = h / (H / Hkv);
    const int q0 = qt * BM;
    const bf16_t* qh = q + ((idx_t)b * H + h) * T * D;
    const bf16_t* doh = dout + (idx_t)b * T * H * D + (idx_t)h * D;  // rows H*D apart
    const bf16_t* kh = k + ((idx_t)b * Hkv + hk) * T * D;
    const bf16_t* vh = v + ((idx_t)b * Hkv + hk) * T * D;
    const unsigned sQ = attn_mma_smem_addr(attn_mma_smem_buf);
    const unsigned sO = sQ + BM * LD * 2;
    const unsigned sKV = sO + BM * LD * 2;  // buffer i: sK at sKV + i * KV_BYTES, sV BN * LD * 2 later
    constexpr unsigned KV_BYTES = 2 * BN * LD * 2;
    const int n_kt = (min(q0 + BM, T) - 1) / BN + 1;

    attn_mma_load_rows<BM, D>(sQ, qh, D, q0, T, tid);
    attn_mma_load_rows<BM, D>(sO, doh, (idx_t)H * D, q0, T, tid);
    attn_mma_load_rows<BN, D>(sKV, kh, D, 0, T, tid);
    attn_mma_load_rows<BN, D>(sKV + BN * LD * 2, vh, D, 0, T, tid);
    attn_mma_commit();
    attn_mma_wait<0>();
    __syncthreads();

    unsigned qf[KC][4], of[KC][4];
    {
        const unsigned a = (warp * 16 + attn_mma_ldsm_row_a(lane)) * LD * 2 + attn_mma_ldsm_col_a(lane) * 2;
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
            attn_mma_ldsm(qf[kc], sQ + a + kc * 32);
            attn_mma_ldsm(of[kc], sO + a + kc * 32);
        }
    }
    const int row = q0 + warp * 16 + attn_mma_c_row(lane, 0);
    const float sl2 = scale * ATTN_MMA_LOG2E;
    // lse (in log2 units) and delta of rows `row` and `row + 8`; rows past T get 0 (never stored).
    float lse2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = row + 8 * r;
        const idx_t at = ((idx_t)b * H + h) * T + i;
        lse2[r] = i < T ? lse[at] * ATTN_MMA_LOG2E : 0.f;
        dl[r] = i < T ? delta[at] : 0.f;
    }
    const unsigned bn_lane = (attn_mma_ldsm_row_bn(lane) * LD + attn_mma_ldsm_col_bn(lane)) * 2;
    const unsigned a_lane = (attn_mma_ldsm_row_a(lane) * LD + attn_mma_ldsm_col_a(lane)) * 2;

    float acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;

    for (int j = 0; j < n_kt; ++j) {
        // Buffer (j+1)&1 was last read in iteration j-1, which ended with a barrier.
        if (j + 1 < n_kt) {
            const unsigned nb = sKV + ((j + 1) & 1) * KV_BYTES;
            attn_mma_load_rows<BN, D>(nb, kh, D, (j + 1) * BN, T, tid);
            attn_mma_load_rows<BN, D>(nb + BN * LD * 2, vh, D, (j + 1) * BN, T, tid);
        }
        attn_mma_commit();
        attn_mma_wait<1>();  // tile j
        __syncthreads();
        const unsigned sK = sKV + (j & 1) * KV_BYTES, sV = sK + BN * LD * 2;
        // A key tile wholly after this warp's last row contributes nothing (warp-uniform skip).
        if (j * BN <= q0 + warp * 16 + 15) {
            float s[NT][4], dp[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) s[nt][i] = dp[nt][i] = 0.f;
            // S = Q K^T and dP = dO V^T: K and V rows are the n dimension.
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    unsigned bk[4], bv[4];
                    attn_mma_ldsm(bk, sK + bn_lane + (np * 16 * LD + kc * 16) * 2);
                    attn_mma_16816(s[2 * np], qf[kc], bk[0], bk[1]);
                    attn_mma_16816(s[2 * np + 1], qf[kc], bk[2], bk[3]);
                    attn_mma_ldsm(bv, sV + bn_lane + (np * 16 * LD + kc * 16) * 2);
                    attn_mma_16816(dp[2 * np], of[kc], bv[0], bv[1]);
                    attn_mma_16816(dp[2 * np + 1], of[kc], bv[2], bv[3]);
                }
            }
            // P = exp(S - lse) (0 above the diagonal), dS = P (dP - delta), kept in s.
            const bool mask = j * BN + BN - 1 > q0 + warp * 16;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int r = i >> 1;
                    float p = exp2f(s[nt][i] * sl2 - lse2[r]);
                    if (mask && j * BN + nt * 8 + attn_mma_c_col(lane, i) > row + 8 * r) p = 0.f;
                    s[nt][i] = p * (dp[nt][i] - dl[r]);
                }
            }
            // dQ += dS K: dS (16 x BN) as A fragments, K rows are the k dimension (ldmatrix.trans).
#pragma unroll
            for (int kc = 0; kc < BN / 16; ++kc) {
                unsigned da[4];
                attn_mma_c_to_a(da, s[2 * kc], s[2 * kc + 1]);
#pragma unroll
                for (int dp2 = 0; dp2 < DT / 2; ++dp2) {
                    unsigned bk[4];
                    attn_mma_ldsm_t(bk, sK + a_lane + (kc * 16 * LD + dp2 * 16) * 2);
                    attn_mma_16816(acc[2 * dp2], da, bk[0], bk[1]);
                    attn_mma_16816(acc[2 * dp2 + 1], da, bk[2], bk[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with buffer j&1
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = row + 8 * r;
        if (i < T) {
            float* drow = dq + (((idx_t)b * H + h) * T + i) * D + attn_mma_c_col(lane, 0);
#pragma unroll
            for (int dt = 0; dt < DT; ++dt)
                *reinterpret_cast<float2*>(drow + dt * 8) = make_float2(acc[dt][2 * r] * scale, acc[dt][2 * r + 1] * scale);
        }
    }
#endif
}

// ---------------------------------------------------------------------------------------------
// Backward: dK, dV over query tiles of every query head of the group
// ---------------------------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void attn_mma_bwd_dkdv(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                                  const bf16_t* __restrict__ v, const bf16_t* __restrict__ dout,
                                                  const float* __restrict__ lse, const float* __restrict__ delta,
                                                  float* __restrict__ dk, float* __restrict__ dv, int T, int H,
                                                  int Hkv, float scale) {
#if ATTN_MMA_ON
    constexpr int BN = 64, BM = AttnMmaCfg<D>::BM_KV, LD = D + 8, KC = D / 16, NT = BM / 8, DT = D / 8;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kt = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
    const int rep = H / Hkv;
    const int k0 = kt * BN;
    const bf16_t* kh = k + ((idx_t)b * Hkv + hk) * T * D;
    const bf16_t* vh = v + ((idx_t)b * Hkv + hk) * T * D;
    const unsigned sK = attn_mma_smem_addr(attn_mma_smem_buf);
    const unsigned sV = sK + BN * LD * 2;
    const unsigned sQO = sV + BN * LD * 2;  // buffer i: sQ at sQO + i * QO_BYTES, sdO BM * LD * 2 later
    constexpr unsigned QO_BYTES = 2 * BM * LD * 2;
    const unsigned sLD = sQO + 2 * QO_BYTES;  // buffer i: lse at sLD + i * 2 * BM * 4, delta BM * 4 later
    const float* fLD = reinterpret_cast<const float*>(attn_mma_smem_buf + (sLD - sK));

    // Work items: (query head r of the group, query tile qt) for qt from the first tile holding a
    // query >= k0 (earlier queries see none of these keys) to the last.
    const int qt_first = k0 / BM, nqt = (T + BM - 1) / BM;
    const int per_head = nqt - qt_first, n_items = rep * per_head;
    auto load_item = [&](int it, int buf) {
        const int hq = hk * rep + it / per_head, q0 = (qt_first + it % per_head) * BM;
        const unsigned dst = sQO + buf * QO_BYTES;
        attn_mma_load_rows<BM, D>(dst, q + ((idx_t)b * H + hq) * T * D, D, q0, T, tid);
        attn_mma_load_rows<BM, D>(dst + BM * LD * 2, dout + (idx_t)b * T * H * D + (idx_t)hq * D, (idx_t)H * D, q0,
                                  T, tid);
        const idx_t at = ((idx_t)b * H + hq) * T;
        attn_mma_load_vec<BM>(sLD + buf * 2 * BM * 4, lse + at, q0, T, tid);
        attn_mma_load_vec<BM>(sLD + buf * 2 * BM * 4 + BM * 4, delta + at, q0, T, tid);
    };

    attn_mma_load_rows<BN, D>(sK, kh, D, k0, T, tid);
    attn_mma_load_rows<BN, D>(sV, vh, D, k0, T, tid);
    load_item(0, 0);
    attn_mma_commit();

    // This warp's 16 keys as A fragments come from sK / sV by ldmatrix at each use (registers go
    // to the dK, dV accumulators).
    const unsigned ka_lane = sK + ((warp * 16 + attn_mma_ldsm_row_a(lane)) * LD + attn_mma_ldsm_col_a(lane)) * 2;
    const unsigned va_lane = sV + ((warp * 16 + attn_mma_ldsm_row_a(lane)) * LD + attn_mma_ldsm_col_a(lane)) * 2;
    const unsigned bn_lane = (attn_mma_ldsm_row_bn(lane) * LD + attn_mma_ldsm_col_bn(lane)) * 2;
    const unsigned a_lane = (attn_mma_ldsm_row_a(lane) * LD + attn_mma_ldsm_col_a(lane)) * 2;
    // Key of this lane's accumulators c[0], c[1] (c[2], c[3]: + 8); the n dimension is queries.
    const int key = k0 + warp * 16 + attn_mma_c_row(lane, 0);
    const float sl2 = scale * ATTN_MMA_LOG2E;

    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int i = 0; i < 4; ++i) dka[dt][i] = dva[dt][i] = 0.f;

    for (int it = 0; it < n_items; ++it) {
        const int buf = it & 1;
        // Buffer (it+1)&1 was last read in iteration it-1, which ended with a barrier.
        if (it + 1 < n_items) load_item(it + 1, buf ^ 1);
        attn_mma_commit();
        attn_mma_wait<1>();  // item it (and, at it = 0, K and V)
        __syncthreads();
        const int q0 = (qt_first + it % per_head) * BM;
        // A query tile wholly before this warp's first key contributes nothing (warp-uniform).
        if (q0 + BM - 1 >= k0 + warp * 16) {
            const unsigned sQ = sQO + buf * QO_BYTES, sO = sQ + BM * LD * 2;
            const float* sL = fLD + buf * 2 * BM;
            const float* sDl = sL + BM;
            float st[NT][4], dpt[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) st[nt][i] = dpt[nt][i] = 0.f;
            // S^T = K Q^T and dP^T = V dO^T (16 keys x BM queries): Q and dO rows are the n dimension.
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                unsigned ka[4], va[4];
                attn_mma_ldsm(ka, ka_lane + kc * 32);
                attn_mma_ldsm(va, va_lane + kc * 32);
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    unsigned bq[4], bo[4];
                    attn_mma_ldsm(bq, sQ + bn_lane + (np * 16 * LD + kc * 16) * 2);
                    attn_mma_16816(st[2 * np], ka, bq[0], bq[1]);
                    attn_mma_16816(st[2 * np + 1], ka, bq[2], bq[3]);
                    attn_mma_ldsm(bo, sO + bn_lane + (np * 16 * LD + kc * 16) * 2);
                    attn_mma_16816(dpt[2 * np], va, bo[0], bo[1]);
                    attn_mma_16816(dpt[2 * np + 1], va, bo[2], bo[3]);
                }
            }
            // P^T = exp(S^T - lse[query]), 0 where query < key or query >= T; dS^T = P^T (dP^T - delta[query]).
            const bool mask = q0 < k0 + warp * 16 + 15 || q0 + BM > T;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int qc = nt * 8 + attn_mma_c_col(lane, 0);  // query columns qc, qc + 1 of the tile
                const float2 l2 = *reinterpret_cast<const float2*>(sL + qc);
                const float2 d2 = *reinterpret_cast<const float2*>(sDl + qc);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int query = q0 + qc + (i & 1);
                    const float li = (i & 1) ? l2.y : l2.x, di = (i & 1) ? d2.y : d2.x;
                    float p = exp2f(st[nt][i] * sl2 - li * ATTN_MMA_LOG2E);
                    if (mask && (query < key + 8 * (i >> 1) || query >= T)) p = 0.f;
                    st[nt][i] = p;
                    dpt[nt][i] = p * (dpt[nt][i] - di);
                }
            }
            // dV += P^T dO and dK += dS^T Q: queries are the k dimension (ldmatrix.trans on rows).
#pragma unroll
            for (int kc = 0; kc < BM / 16; ++kc) {
                unsigned pa[4], da[4];
                attn_mma_c_to_a(pa, st[2 * kc], st[2 * kc + 1]);
                attn_mma_c_to_a(da, dpt[2 * kc], dpt[2 * kc + 1]);
#pragma unroll
                for (int dp2 = 0; dp2 < DT / 2; ++dp2) {
                    unsigned bo[4], bq[4];
                    attn_mma_ldsm_t(bo, sO + a_lane + (kc * 16 * LD + dp2 * 16) * 2);
                    attn_mma_16816(dva[2 * dp2], pa, bo[0], bo[1]);
                    attn_mma_16816(dva[2 * dp2 + 1], pa, bo[2], bo[3]);
                    attn_mma_ldsm_t(bq, sQ + a_lane + (kc * 16 * LD + dp2 * 16) * 2);
                    attn_mma_16816(dka[2 * dp2], da, bq[0], bq[1]);
                    attn_mma_16816(dka[2 * dp2 + 1], da, bq[2], bq[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with buffer it&1
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = key + 8 * r;
        if (j < T) {
            const idx_t at = (((idx_t)b * Hkv + hk) * T + j) * D + attn_mma_c_col(lane, 0);
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                *reinterpret_cast<float2*>(dk + at + dt * 8) =
                    make_float2(dka[dt][2 * r] * scale, dka[dt][2 * r + 1] * scale);
                *reinterpret_cast<float2*>(dv + at + dt * 8) = make_float2(dva[dt][2 * r], dva[dt][2 * r + 1]);
            }
        }
    }
#endif
}

// ---------------------------------------------------------------------------------------------
// Entry points, one set per head dimension (launch configurations at the top of the file).
// ---------------------------------------------------------------------------------------------

#define ATTN_MMA_EXPORT(DD)                                                                                     \
    extern "C" __global__ void __launch_bounds__(ATTN_MMA_THREADS, 1) keel_attention_mma_fwd_d##DD##_bf16(        \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse, int T, int H, int Hkv,      \
        float scale) {                                                                                          \
        attn_mma_fwd<DD>(q, k, v, o, lse, T, H, Hkv, scale);                                                    \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATTN_MMA_THREADS, 1) keel_attention_mma_bwd_dq_d##DD##_bf16(     \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,               \
        const float* delta, float* dq, int T, int H, int Hkv, float scale) {                                    \
        attn_mma_bwd_dq<DD>(q, k, v, dout, lse, delta, dq, T, H, Hkv, scale);                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATTN_MMA_THREADS, 1) keel_attention_mma_bwd_dkdv_d##DD##_bf16(   \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,               \
        const float* delta, float* dk, float* dv, int T, int H, int Hkv, float scale) {                         \
        attn_mma_bwd_dkdv<DD>(q, k, v, dout, lse, delta, dk, dv, T, H, Hkv, scale);                             \
    }

ATTN_MMA_EXPORT(32)
ATTN_MMA_EXPORT(64)
ATTN_MMA_EXPORT(128)
