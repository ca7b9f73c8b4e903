// cross_entropy kernels: see prelude.cuh for the conventions.
//
// Mean softmax cross-entropy and its backward, the CUDA twins of `CrossEntropy` /
// `CrossEntropyBwd` in src/ops/cross_entropy.rs (the design of Liger-Kernel and llm.c):
//
//   z (N, V) logits (f32 or bf16), t (N) u32 targets
//   lse_i  = log sum_j exp(z_ij)
//   loss_i = lse_i - z_i[t_i]                        (NaN when t_i >= V: never read out of bounds)
//   loss   = (1/N) sum_i loss_i                      (scalar, the logits' dtype)
//   dz_ij  = (exp(z_ij - lse_i) - [j == t_i]) dloss / N
//
// keel_cross_entropy_fwd: one block per row, one pass over the row with an online max/sum
//   (each thread keeps its running max m and sum s of exp(z - m) over its strided columns; the
//   block then rescales to the common max). Writes stats = [loss_0 .. loss_{N-1} | lse_0 ..
//   lse_{N-1}] (2N f32); the lse stays for the backward instead of the (N, V) probabilities.
// keel_cross_entropy_mean: one block sums the N row losses in a fixed order (per-thread strided
//   partials, then the block tree): deterministic, no atomics.
// keel_cross_entropy_bwd: one block per row, dz written over z in place (z is read once, element
//   by element, before its slot is written by the same thread). dloss is read from device memory.
//
// Rows are read and written as four-element vectors where aligned: a row starts at any element
// (V is odd, e.g. 50257), so each row has a scalar head of 0..3 columns up to the first 16-byte
// (f32) or 8-byte (bf16) boundary, a vector body, and a scalar tail.

#define CE_ROW_THREADS_MAX 512
#define CE_MEAN_THREADS 512

// Columns before the row's first four-element-aligned column (at most min(3, v)).
template <typename T>
__device__ __forceinline__ int ce_head(const T* row, int v) {
    const unsigned int vb = 4 * sizeof(T);
    const int head = (int)(((vb - (unsigned int)((unsigned long long)row % vb)) % vb) / sizeof(T));
    return min(head, v);
}

// Calls f(j, z_j) once for every column j of the row that this thread owns.
template <typename T, typename F>
__device__ __forceinline__ void ce_row_read(const T* row, int v, F&& f) {
    const int head = ce_head(row, v);
    if ((int)threadIdx.x < head) f((int)threadIdx.x, load(row, threadIdx.x));
    const int nv = (v - head) / 4;
    for (int k = threadIdx.x; k < nv; k += blockDim.x) {
        const int j = head + 4 * k;
        const float4 q = load4(row, j);
        f(j, q.x);
        f(j + 1, q.y);
        f(j + 2, q.z);
        f(j + 3, q.w);
    }
    for (int j = head + 4 * nv + threadIdx.x; j < v; j += blockDim.x) f(j, load(row, j));
}

// row_j <- f(j, row_j) for every column j of the row that this thread owns.
template <typename T, typename F>
__device__ __forceinline__ void ce_row_map(T* row, int v, F&& f) {
    const int head = ce_head(row, v);
    if ((int)threadIdx.x < head) store(row, threadIdx.x, f((int)threadIdx.x, load(row, threadIdx.x)));
    const int nv = (v - head) / 4;
    for (int k = threadIdx.x; k < nv; k += blockDim.x) {
        const int j = head + 4 * k;
        const float4 q = load4(row, j);
        store4(row, j, make_float4(f(j, q.x), f(j + 1, q.y), f(j + 2, q.z), f(j + 3, q.w)));
    }
    for (int j = head + 4 * nv + threadIdx.x; j < v; j += blockDim.x) store(row, j, f(j, load(row, j)));
}

// z (n, v), targets (n) -> stats (2n) = [loss_i | lse_i]. Grid n, block a multiple of 32, <= 512.
template <typename T>
__device__ __forceinline__ void cross_entropy_fwd_impl(const T* __restrict__ z, const unsigned int* __restrict__ targets,
                                                       float* __restrict__ stats, int n, int v) {
    __shared__ float scratch[32];
    const int i = blockIdx.x;
    const T* row = z + (idx_t)i * v;
    // Online: s = sum exp(z_j - m) over the columns seen, m their max. x == m takes exp(0) = 1
    // without computing exp(-inf - -inf) = NaN for leading -inf logits (a later finite column
    // scales that 1 by exp(-inf) = 0); a NaN logit makes s NaN, as on the CPU.
    float m = KEEL_NEG_INF, s = 0.f;
    ce_row_read(row, v, [&](int, float x) {
        if (x > m) {
            s = s * expf(m - x) + 1.f;
            m = x;
        } else {
            s += (x == m) ? 1.f : expf(x - m);
        }
    });
    const float mx = block_max(m, scratch);
    const float total = block_sum(m == mx ? s : s * expf(m - mx), scratch);
    if (threadIdx.x == 0) {
        const float lse = mx + logf(total);
        const unsigned int t = targets[i];
        stats[i] = t < (unsigned int)v ? lse - load(row, (idx_t)t) : __int_as_float(0x7fc00000);
        stats[n + i] = lse;
    }
}

// stats (>= n) -> loss (1) = mean of stats[0..n). One block of CE_MEAN_THREADS.
template <typename T>
__device__ __forceinline__ void cross_entropy_mean_impl(const float* __restrict__ stats, T* __restrict__ loss, int n) {
    __shared__ float scratch[32];
    float acc = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += stats[i];
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) store(loss, 0, total / (float)n);
}

// z (n, v) in: logits, out: dz; targets (n); lse (n); dloss (1). Grid n, block as the forward's.
template <typename T>
__device__ __forceinline__ void cross_entropy_bwd_impl(T* z, const unsigned int* __restrict__ targets,
                                                       const float* __restrict__ lse, const T* __restrict__ dloss,
                                                       int n, int v) {
    const int i = blockIdx.x;
    T* row = z + (idx_t)i * v;
    const float scale = load(dloss, 0) / (float)n;
    const float l = lse[i];
    const unsigned int t = targets[i];
    // As the CPU: p scale, minus scale at the target (an out-of-range target matches no column).
    ce_row_map(row, v, [&](int j, float x) {
        const float g = expf(x - l) * scale;
        return (unsigned int)j == t ? g - scale : g;
    });
}

extern "C" __global__ void __launch_bounds__(CE_ROW_THREADS_MAX)
    keel_cross_entropy_fwd_f32(const float* z, const unsigned int* targets, float* stats, int n, int v) {
    cross_entropy_fwd_impl<float>(z, targets, stats, n, v);
}
extern "C" __global__ void __launch_bounds__(CE_ROW_THREADS_MAX)
    keel_cross_entropy_fwd_bf16(const bf16_t* z, const unsigned int* targets, float* stats, int n, int v) {
    cross_entropy_fwd_impl<bf16_t>(z, targets, stats, n, v);
}
extern "C" __global__ void __launch_bounds__(CE_MEAN_THREADS)
    keel_cross_entropy_mean_f32(const float* stats, float* loss, int n) {
    cross_entropy_mean_impl<float>(stats, loss, n);
}
extern "C" __global__ void __launch_bounds__(CE_MEAN_THREADS)
    keel_cross_entropy_mean_bf16(const float* stats, bf16_t* loss, int n) {
    cross_entropy_mean_impl<bf16_t>(stats, loss, n);
}
extern "C" __global__ void __launch_bounds__(CE_ROW_THREADS_MAX)
    keel_cross_entropy_bwd_f32(float* z, const unsigned int* targets, const float* lse, const float* dloss, int n,
                               int v) {
    cross_entropy_bwd_impl<float>(z, targets, lse, dloss, n, v);
}
extern "C" __global__ void __launch_bounds__(CE_ROW_THREADS_MAX)
    keel_cross_entropy_bwd_bf16(bf16_t* z, const unsigned int* targets, const float* lse, const bf16_t* dloss, int n,
                                int v) {
    cross_entropy_bwd_impl<bf16_t>(z, targets, lse, dloss, n, v);
}
