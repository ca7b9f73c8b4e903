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

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `scratch` is 32 floats of shared memory; the function syncs before returning, so the
// scratch may be reused by the next call.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
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

// exp and log accurate to a few ulp (not the fast-math intrinsics): the CPU twins are tested to
// 1e-5 and these kernels are held to the same.
__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// Instantiates `extern "C"` entry points for both storage types from a template kernel body:
// KEEL_EXPORT_2(name, params, args) defines keel_<name>_f32 and keel_<name>_bf16 calling
// name##_impl<float> / name##_impl<bf16_t>.
#define KEEL_EXPORT_BOTH(name, PARAMS_F32, PARAMS_BF16, ARGS)                               \
    extern "C" __global__ void keel_##name##_f32 PARAMS_F32 { name##_impl<float> ARGS; }     \
    extern "C" __global__ void keel_##name##_bf16 PARAMS_BF16 { name##_impl<bf16_t> ARGS; }
