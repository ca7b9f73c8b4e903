// keel's CUDA prelude: prepended to every kernel source in this folder before NVRTC compiles it
// (src/ops/cuda_kernels.rs, scripts/cuda_kernels_check.py and scripts/cuda_check/common.py all
// build a module as this file + "\n" + the kernel's file). No toolkit header is included, so
// NVRTC needs no include path: bf16 is stored as its 16 bits (`bf16_t`) and converted by hand.
//
// Conventions every kernel follows:
// - entry points are `extern "C" __global__`, named keel_<op>_<stage>_<dtype>, dtype f32 | bf16
//   (the storage type; arithmetic and accumulation are f32 in both);
// - tensors are contiguous and row-major; shapes come as int arguments, flat offsets are computed
//   in 64-bit (`idx_t`);
// - no kernel reads a host value that it could read from device memory instead when the host
//   would have to synchronize to know it (loss scale, clip coefficient).

typedef unsigned short bf16_t;
typedef long long idx_t;

#define KEEL_INF __int_as_float(0x7f800000)
#define KEEL_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_f32(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }

// Round to nearest even; NaN stays NaN (quiet).
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// Loads and stores in the storage type, arithmetic in f32.
__device__ __forceinline__ float load(const float* p, idx_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16_t* p, idx_t i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store(float* p, idx_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16_t* p, idx_t i, float v) { p[i] = f32_to_bf16(v); }

// 4 consecutive elements from / to p[i..i+4): p + i is aligned to 4 elements (checked by the
// caller: aligned4, vec_ok), so one 16-byte (f32) or 8-byte (bf16) access.
__device__ __forceinline__ float4 load4(const float* p, idx_t i) { return *reinterpret_cast<const float4*>(p + i); }
__device__ __forceinline__ float4 load4(const bf16_t* p, idx_t i) {
    uint2 t = *reinterpret_cast<const uint2*>(p + i);
    // Little-endian: the element with the lower index is in the low half.
    return make_float4(bf16_to_f32((bf16_t)(t.x & 0xffffu)), bf16_to_f32((bf16_t)(t.x >> 16)),
                       bf16_to_f32((bf16_t)(t.y & 0xffffu)), bf16_to_f32((bf16_t)(t.y >> 16)));
}
__device__ __forceinline__ void store4(float* p, idx_t i, float4 v) { *reinterpret_cast<float4*>(p + i) = v; }
__device__ __forceinline__ void store4(bf16_t* p, idx_t i, float4 v) {
    uint2 t;
    t.x = (unsigned int)f32_to_bf16(v.x) | ((unsigned int)f32_to_bf16(v.y) << 16);
    t.y = (unsigned int)f32_to_bf16(v.z) | ((unsigned int)f32_to_bf16(v.w) << 16);
    *reinterpret_cast<uint2*>(p + i) = t;
}

// V elements (V = 1 or 4) at p[i..i+V), as an array: one load / store, or one load4 / store4.
template <int V, typename T>
__device__ __forceinline__ void ld(const T* p, idx_t i, float (&v)[V]) {
    if constexpr (V == 4) {
        const float4 t = load4(p, i);
        v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
    } else {
        v[0] = load(p, i);
    }
}
template <int V, typename T>
__device__ __forceinline__ void st(T* p, idx_t i, const float (&v)[V]) {
    if constexpr (V == 4) store4(p, i, make_float4(v[0], v[1], v[2], v[3]));
    else store(p, i, v[0]);
}

// Whether p is a multiple of `bytes` (a power of two).
__device__ __forceinline__ bool is_aligned(const void* p, unsigned bytes) {
    return (reinterpret_cast<unsigned long long>(p) & (bytes - 1)) == 0;
}

// Whether 4 elements of T starting at p can move as one 16-byte (f32) or 8-byte (bf16) word.
template <typename T>
__device__ __forceinline__ bool aligned4(const T* p) { return is_aligned(p, 4 * sizeof(T)); }

// Sum over the warp (F = float or double); every lane gets the result.
template <typename F>
__device__ __forceinline__ F warp_sum(F v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024; F = float or double);
// every thread gets the result. `scratch` is 32 F of shared memory; the function syncs before
// returning, so the scratch may be reused by the next call.
template <typename F>
__device__ __forceinline__ F block_sum(F v, F* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : F(0);
    v = warp_sum(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : KEEL_NEG_INF;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// ---------------------------------------------------------------------------------------------
// Row machinery of the row-wise norms (rms_norm.cu, layer_norm.cu): a block splits into row
// groups, a warp each (WARP) or the whole block, and each group normalizes one row of C at a
// time, V = 4 (vectorized) or 1 columns per step.

// Whether the 4-wide path may be taken: rows start at multiples of 4 and every pointer (null ones
// included: they are not read) is aligned to 4 elements.
template <typename T>
__device__ __forceinline__ bool vec_ok(int C, const void* a, const void* b, const void* c, const void* d,
                                       const void* e) {
    unsigned bytes = 4 * sizeof(T);
    return C % 4 == 0 && is_aligned(a, bytes) && is_aligned(b, bytes) && is_aligned(c, bytes) &&
           is_aligned(d, bytes) && is_aligned(e, bytes);
}

// h = alpha x + f (RES) or x, V elements at i.
template <int V, bool RES, typename T>
__device__ __forceinline__ void ld_h(const T* x, const T* f, float alpha, idx_t i, float (&h)[V]) {
    ld<V>(x, i, h);
    if constexpr (RES) {
        float fv[V];
        ld<V>(f, i, fv);
#pragma unroll
        for (int k = 0; k < V; k++) h[k] = alpha * h[k] + fv[k];
    }
}

// acc[i..i+V) += v: one 16-byte shared access for V = 4 (acc 16-byte aligned: C % 4 == 0 and the
// dynamic shared memory is aligned), so the lanes of a warp do not conflict on banks.
template <int V>
__device__ __forceinline__ void acc_add(float* acc, int i, const float (&v)[V]) {
    if constexpr (V == 4) {
        float4* a = reinterpret_cast<float4*>(acc + i);
        float4 t = *a;
        t.x += v[0]; t.y += v[1]; t.z += v[2]; t.w += v[3];
        *a = t;
    } else {
        acc[i] += v[0];
    }
}

// Sums K values over a row group: a warp (WARP) or the whole block. Every thread of the group gets
// the sums. `scratch` holds 32 K floats of shared memory; the leading sync keeps this call's
// writes from overtaking the previous call's reads.
template <bool WARP, int K>
__device__ __forceinline__ void group_sum(float (&v)[K], float* scratch) {
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
struct RowGroup {
    int group, groups, tid, size;
    __device__ __forceinline__ RowGroup() {
        if constexpr (WARP) {
            group = threadIdx.x >> 5; groups = blockDim.x >> 5; tid = threadIdx.x & 31; size = 32;
        } else {
            group = 0; groups = 1; tid = threadIdx.x; size = blockDim.x;
        }
    }
};

// The block's row of partials: the `groups` accumulators of W floats each at acc (shared memory,
// group after group) added in group order into partial[blockIdx.x * W ..). Syncs first, so every
// group's last accumulation is in.
__device__ __forceinline__ void block_partial(const float* acc, int W, int groups, float* partial) {
    __syncthreads();
    for (int c = threadIdx.x; c < W; c += blockDim.x) {
        float t = 0.f;
        for (int q = 0; q < groups; q++) t += acc[(idx_t)q * W + c];
        partial[(idx_t)blockIdx.x * W + c] = t;
    }
}

// The partials summed over blocks: partial f32 (P, W) -> out (W) in the storage type. Block
// (32 columns x 32 slices) = 1024 threads, grid ceil(W / 32). Slice s adds the partials of rows
// [s P / 32, (s + 1) P / 32) in order, then the 32 slice sums are added in slice order: a fixed
// order, so the result does not depend on timing.
template <typename T>
__device__ __forceinline__ void sum_partials(const float* __restrict__ partial, T* __restrict__ out, int P, int W) {
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

// exp and log accurate to a few ulp (not the fast-math intrinsics): the CPU twins are tested to
// 1e-5 and these kernels are held to the same.
__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// Instantiates `extern "C"` entry points for both storage types from a template kernel body:
// KEEL_EXPORT_2(name, params, args) defines keel_<name>_f32 and keel_<name>_bf16 calling
// name##_impl<float> / name##_impl<bf16_t>.
#define KEEL_EXPORT_BOTH(name, PARAMS_F32, PARAMS_BF16, ARGS)                               \
    extern "C" __global__ void keel_##name##_f32 PARAMS_F32 { name##_impl<float> ARGS; }     \
    extern "C" __global__ void keel_##name##_bf16 PARAMS_BF16 { name##_impl<bf16_t> ARGS; }
