// swiglu kernels: see prelude.cuh for the conventions.
//
// SwiGLU and its backward, the CUDA twins of `SwiGlu` / `SwiGluBwd` in src/ops/swiglu.rs:
//
//   h = [a | b] (N, 2F), a = h[:, :F], b = h[:, F:]
//   forward:  y = silu(a) * b = a s b,                            y (N, F),  s = sigmoid(a)
//   backward: da = dy b s (1 + a (1 - s)),  db = dy a s,           dh = [da | db] (N, 2F)
//
// Elementwise over the N x F output columns, grid-stride (any grid covers all of it). When
// F % 4 == 0 and every pointer is aligned to four elements, a thread handles four consecutive
// columns with one vector load or store per operand (16 bytes in f32, 8 in bf16); otherwise
// one column at a time.

#define SWIGLU_THREADS 256

// Same operation order as the CPU twin: (a s) b.
__device__ __forceinline__ float swiglu_y(float a, float b) { return a * sigmoidf_(a) * b; }

__device__ __forceinline__ void swiglu_dh(float a, float b, float dy, float& da, float& db) {
    float s = sigmoidf_(a);
    da = dy * b * s * (1.f + a * (1.f - s));
    db = dy * a * s;
}

// h (n, 2f) -> y (n, f).
template <typename T>
__device__ __forceinline__ void swiglu_fwd_impl(const T* __restrict__ h, T* __restrict__ y, int n, int f) {
    const idx_t start = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    const idx_t stride = (idx_t)gridDim.x * blockDim.x;
    if (f % 4 == 0 && aligned4(h) && aligned4(y)) {
        const int fv = f / 4;
        const idx_t units = (idx_t)n * fv;
        for (idx_t u = start; u < units; u += stride) {
            const idx_t row = u / fv;
            const int c = (int)(u - row * fv) * 4;
            const idx_t ha = row * 2 * f + c;
            const float4 a = load4(h, ha), b = load4(h, ha + f);
            store4(y, row * f + c,
                          make_float4(swiglu_y(a.x, b.x), swiglu_y(a.y, b.y), swiglu_y(a.z, b.z), swiglu_y(a.w, b.w)));
        }
    } else {
        const idx_t total = (idx_t)n * f;
        for (idx_t e = start; e < total; e += stride) {
            const idx_t row = e / f;
            const idx_t ha = e + row * f;  // row * 2f + column
            store(y, e, swiglu_y(load(h, ha), load(h, ha + f)));
        }
    }
}

// h (n, 2f), dy (n, f) -> dh (n, 2f) = [da | db].
template <typename T>
__device__ __forceinline__ void swiglu_bwd_impl(const T* __restrict__ h, const T* __restrict__ dy,
                                                T* __restrict__ dh, int n, int f) {
    const idx_t start = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    const idx_t stride = (idx_t)gridDim.x * blockDim.x;
    if (f % 4 == 0 && aligned4(h) && aligned4(dy) && aligned4(dh)) {
        const int fv = f / 4;
        const idx_t units = (idx_t)n * fv;
        for (idx_t u = start; u < units; u += stride) {
            const idx_t row = u / fv;
            const int c = (int)(u - row * fv) * 4;
            const idx_t ha = row * 2 * f + c;
            const float4 a = load4(h, ha), b = load4(h, ha + f), g = load4(dy, row * f + c);
            float4 da, db;
            swiglu_dh(a.x, b.x, g.x, da.x, db.x);
            swiglu_dh(a.y, b.y, g.y, da.y, db.y);
            swiglu_dh(a.z, b.z, g.z, da.z, db.z);
            swiglu_dh(a.w, b.w, g.w, da.w, db.w);
            store4(dh, ha, da);
            store4(dh, ha + f, db);
        }
    } else {
        const idx_t total = (idx_t)n * f;
        for (idx_t e = start; e < total; e += stride) {
            const idx_t row = e / f;
            const idx_t ha = e + row * f;
            float da, db;
            swiglu_dh(load(h, ha), load(h, ha + f), load(dy, e), da, db);
            store(dh, ha, da);
            store(dh, ha + f, db);
        }
    }
}

// Launch: block SWIGLU_THREADS, any grid (keel: ceil(n f / (4 * 256)) blocks, at most 8192).
extern "C" __global__ void __launch_bounds__(SWIGLU_THREADS)
    keel_swiglu_fwd_f32(const float* h, float* y, int n, int f) { swiglu_fwd_impl<float>(h, y, n, f); }
extern "C" __global__ void __launch_bounds__(SWIGLU_THREADS)
    keel_swiglu_fwd_bf16(const bf16_t* h, bf16_t* y, int n, int f) { swiglu_fwd_impl<bf16_t>(h, y, n, f); }
extern "C" __global__ void __launch_bounds__(SWIGLU_THREADS)
    keel_swiglu_bwd_f32(const float* h, const float* dy, float* dh, int n, int f) {
    swiglu_bwd_impl<float>(h, dy, dh, n, f);
}
extern "C" __global__ void __launch_bounds__(SWIGLU_THREADS)
    keel_swiglu_bwd_bf16(const bf16_t* h, const bf16_t* dy, bf16_t* dh, int n, int f) {
    swiglu_bwd_impl<bf16_t>(h, dy, dh, n, f);
}
