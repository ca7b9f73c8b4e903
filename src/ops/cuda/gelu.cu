// gelu kernels: see prelude.cuh for the conventions.
//
// GELU with the exact normal CDF and its backward, the CUDA twins of `Gelu` / `GeluBwd` in
// src/ops/gelu.rs. Elementwise over n elements of any shape:
//
//   forward:  y  = x Phi(x),                 Phi(x) = erfc(-x / sqrt 2) / 2
//   backward: dx = dy (Phi(x) + x phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//
// Phi through erfc rather than 1 + erf: no cancellation in the lower tail (x << 0), where
// x Phi(x) is tiny but not zero. Grid-stride (any grid covers all of it). When every pointer is
// aligned to four elements, the first 4 floor(n / 4) elements move as four-element vectors
// (16 bytes in f32, 8 in bf16) and the rest one at a time; otherwise all one at a time.

#define GELU_THREADS 256

__device__ __forceinline__ float gelu_cdf(float x) { return 0.5f * erfcf(-x * 0.7071067811865475f); }

__device__ __forceinline__ float gelu_y(float x) { return x * gelu_cdf(x); }

__device__ __forceinline__ float gelu_dx(float x, float dy) {
    const float pdf = expf(-(x * x) * 0.5f) * 0.3989422804014327f;
    return dy * (gelu_cdf(x) + x * pdf);
}

// x (n) -> y (n).
template <typename T>
__device__ __forceinline__ void gelu_fwd_impl(const T* __restrict__ x, T* __restrict__ y, idx_t n) {
    const idx_t start = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    const idx_t stride = (idx_t)gridDim.x * blockDim.x;
    const idx_t nv = (aligned4(x) && aligned4(y)) ? n / 4 : 0;
    for (idx_t u = start; u < nv; u += stride) {
        const float4 v = load4(x, 4 * u);
        store4(y, 4 * u, make_float4(gelu_y(v.x), gelu_y(v.y), gelu_y(v.z), gelu_y(v.w)));
    }
    for (idx_t i = 4 * nv + start; i < n; i += stride) store(y, i, gelu_y(load(x, i)));
}

// x (n), dy (n) -> dx (n).
template <typename T>
__device__ __forceinline__ void gelu_bwd_impl(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                                              idx_t n) {
    const idx_t start = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    const idx_t stride = (idx_t)gridDim.x * blockDim.x;
    const idx_t nv = (aligned4(x) && aligned4(dy) && aligned4(dx)) ? n / 4 : 0;
    for (idx_t u = start; u < nv; u += stride) {
        const float4 v = load4(x, 4 * u), g = load4(dy, 4 * u);
        store4(dx, 4 * u,
                    make_float4(gelu_dx(v.x, g.x), gelu_dx(v.y, g.y), gelu_dx(v.z, g.z), gelu_dx(v.w, g.w)));
    }
    for (idx_t i = 4 * nv + start; i < n; i += stride) store(dx, i, gelu_dx(load(x, i), load(dy, i)));
}

// Launch: block GELU_THREADS, any grid (keel: ceil(n / (4 * 256)) blocks, at most 8192).
extern "C" __global__ void __launch_bounds__(GELU_THREADS)
    keel_gelu_fwd_f32(const float* x, float* y, idx_t n) { gelu_fwd_impl<float>(x, y, n); }
extern "C" __global__ void __launch_bounds__(GELU_THREADS)
    keel_gelu_fwd_bf16(const bf16_t* x, bf16_t* y, idx_t n) { gelu_fwd_impl<bf16_t>(x, y, n); }
extern "C" __global__ void __launch_bounds__(GELU_THREADS)
    keel_gelu_bwd_f32(const float* x, const float* dy, float* dx, idx_t n) { gelu_bwd_impl<float>(x, dy, dx, n); }
extern "C" __global__ void __launch_bounds__(GELU_THREADS)
    keel_gelu_bwd_bf16(const bf16_t* x, const bf16_t* dy, bf16_t* dx, idx_t n) { gelu_bwd_impl<bf16_t>(x, dy, dx, n); }
