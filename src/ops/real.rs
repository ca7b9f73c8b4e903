//! What the fused CPU kernels are written in: the [`Real`] float types, vectorizable exp, normal
//! CDF and reductions, the AVX2 switch, and the allocation and chunking rules every kernel shares.
//! Nothing here knows about a particular op.

use super::rope::Rope;
use candle_core::WithDType;

/// Floating-point types the fused kernels run in.
pub trait Real: WithDType + num_traits::Float + Send + Sync + std::iter::Sum {
    /// exp, vectorizable in f32 (see [`exp_f32`]).
    fn fast_exp(self) -> Self;

    /// RoPE's (cos, sin) tables in this type, (T, D/2) row-major.
    fn rope_tables(rope: &Rope) -> (&[Self], &[Self]);

    /// The standard normal CDF, Phi(x) = (1 + erf(x / sqrt 2)) / 2.
    fn normal_cdf(self) -> Self;

    /// `xs[i] <- exp(xs[i] - shift)`.
    #[inline(always)]
    fn exp_shifted(xs: &mut [Self], shift: Self) {
        for x in xs {
            *x = (*x - shift).fast_exp();
        }
    }
}

impl Real for f32 {
    #[inline(always)]
    fn fast_exp(self) -> f32 {
        exp_f32(self)
    }
    fn rope_tables(rope: &Rope) -> (&[f32], &[f32]) {
        (&rope.cos_f32, &rope.sin_f32)
    }
    #[inline(always)]
    fn normal_cdf(self) -> f32 {
        normal_cdf_f32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn fast_exp(self) -> f64 {
        self.exp()
    }
    fn rope_tables(rope: &Rope) -> (&[f64], &[f64]) {
        (&rope.cos, &rope.sin)
    }
    #[inline(always)]
    fn normal_cdf(self) -> f64 {
        // erfc rather than 1 + erf, which would cancel in the lower tail.
        0.5 * candle_core::cpu::erf::erfc_f64(-self * std::f64::consts::FRAC_1_SQRT_2)
    }
}

/// Sum of `a[i] * b[i]` with eight independent accumulators, so the loop vectorizes (a single
/// running float sum cannot be reordered by the compiler). The order is fixed: deterministic.
#[inline(always)]
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let tail = a.remainder().iter().zip(b.remainder()).fold(T::zero(), |t, (&x, &y)| t + x * y);
    let mut acc = [T::zero(); 8];
    // chunks_exact, not indexing: with indices the bounds checks kept some inlined copies scalar.
    for (x, y) in a.zip(b) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Sum of elements, vectorizable (see [`dot`]).
#[inline(always)]
pub fn sum<T: Real>(a: &[T]) -> T {
    let chunks = a.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(T::zero(), |t, &v| t + v);
    let mut acc = [T::zero(); 8];
    for x in chunks {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// exp for f32 as straight-line arithmetic that the compiler vectorizes (libm's expf is a call per
/// element): Cephes' expf polynomial on x - n ln2, with n rounded through the 1.5 * 2^23 trick so
/// no SSE4.1 rounding instruction is needed. Relative error below 2e-7 over the clamp range;
/// results below e^-87.3 flush to ~1e-38 instead of 0, which a softmax cannot tell apart.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.3, 88.7);
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let r2 = r * r;
    let p = (((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5e-1)
        * r2
        + r
        + 1.0;
    // 2^n from the bits: `shifted` = 1.5 * 2^23 + n lies in a binade whose last place is 1, so its
    // bits exceed MAGIC's by n. (A float-to-int cast would be saturating and keep the loop scalar.)
    let n_int = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    p * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// Phi(x) for f32 as straight-line arithmetic that vectorizes (Candle's erf is a scalar call per
/// element): Numerical Recipes' Chebyshev fit erfc(u) = t exp(-u^2 + P(t)), t = 1 / (1 + u/2),
/// u >= 0, whose relative error is below 1.2e-7 everywhere, so the lower tail (erfc of |x|) stays
/// accurate too; Phi is within 3e-7 absolute after f32 rounding (tested).
#[inline(always)]
pub fn normal_cdf_f32(x: f32) -> f32 {
    let u = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * u);
    let p = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    let half_erfc = 0.5 * t * exp_f32(p - u * u);
    if x >= 0.0 {
        1.0 - half_erfc
    } else {
        half_erfc
    }
}

/// Rows per parallel task: fixed (not tied to the thread count) so reductions are deterministic.
pub(super) const ROW_CHUNK: usize = 32;

/// A vector of `n` elements that the caller overwrites entirely before reading any: zero-filling
/// the outputs first was a pass over memory per op (3% of a training step at R). Candle's CPU
/// backend allocates its conv outputs the same way.
#[allow(clippy::uninit_vec)]
pub(super) fn unfilled<T: Real>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32/f64 have no invalid bit patterns, and every caller writes all n elements before
    // the vector is read or returned.
    unsafe { v.set_len(n) };
    v
}

/// The instruction sets the fused kernels' loops can be compiled for, widest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// x86-64's baseline SSE2 (and every other architecture: the loops as compiled).
    Baseline,
    Avx2,
    /// AVX-512 F, BW, DQ and VL.
    Avx512,
}

impl SimdLevel {
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    pub fn parse(s: &str) -> Option<SimdLevel> {
        SimdLevel::ALL.into_iter().find(|l| l.name() == s.trim().to_ascii_lowercase())
    }

    /// The widest level this CPU has.
    pub fn detected() -> SimdLevel {
        static DETECTED: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(SimdLevel::detect)
    }

    fn detect() -> SimdLevel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return SimdLevel::Avx512;
            }
            if has!("avx2") {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Baseline
    }
}

/// The widest level the kernels may use (`KEEL_SIMD`, or tests); 255: not set, no limit.
static SIMD_LIMIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Caps the SIMD level of the fused kernels and of gemm's f32 matrix products (process-wide;
/// `KEEL_SIMD`). The kernels' results do not depend on it (a test asserts bit equality at every
/// level); gemm's AVX-512 kernels sum in another order than its AVX2 ones, so capping at `Avx2`
/// on an AVX-512 machine reproduces an AVX2 machine's run bit for bit.
pub fn set_simd_limit(limit: SimdLevel) {
    set_kernel_simd_limit(limit);
    set_matmul_simd_limit(limit);
}

/// Caps the fused kernels' level only (tests compare their paths while the products stay put).
pub fn set_kernel_simd_limit(limit: SimdLevel) {
    SIMD_LIMIT.store(limit as u8, std::sync::atomic::Ordering::Relaxed);
}

/// Caps gemm's f32 products only, from the next product on.
pub fn set_matmul_simd_limit(limit: SimdLevel) {
    // The patched gemm-f32 (vendor/gemm-f32) numbers its levels as SimdLevel does.
    gemm_f32::gemm::set_x86_level_limit(limit as u8);
}

/// The level gemm's f32 matrix products run at: `avx512`, `avx2+fma` or `baseline`.
pub fn matmul_simd() -> &'static str {
    if !cfg!(target_arch = "x86_64") {
        return std::env::consts::ARCH;
    }
    match gemm_f32::gemm::x86_level() {
        gemm_f32::gemm::AVX512F => "avx512",
        gemm_f32::gemm::FMA => "avx2+fma",
        _ => "baseline",
    }
}

/// The level the fused kernels run at: the CPU's widest, capped by [`set_simd_limit`].
pub fn simd_level() -> SimdLevel {
    let detected = SimdLevel::detected();
    match SIMD_LIMIT.load(std::sync::atomic::Ordering::Relaxed) {
        u8::MAX => detected,
        limit => detected.min(SimdLevel::ALL[(limit as usize).min(2)]),
    }
}

/// The environment variable that caps the SIMD level of the matrix products and fused kernels.
pub const SIMD_ENV: &str = "KEEL_SIMD";

/// Applies `KEEL_SIMD` (baseline, avx2 or avx512), if set; an unknown value is an error message.
pub fn simd_limit_from_env() -> Result<(), String> {
    let Some(v) = std::env::var_os(SIMD_ENV) else { return Ok(()) };
    let v = v.to_string_lossy();
    match SimdLevel::parse(&v) {
        Some(level) => {
            set_simd_limit(level);
            Ok(())
        }
        None => Err(format!(
            "{SIMD_ENV}={v} is not a SIMD level\n  use one of baseline, avx2, avx512 (the widest the matrix products and kernels may use), or unset it"
        )),
    }
}

/// Switches the fused kernels' SIMD paths on (the CPU's widest) or off (baseline).
#[doc(hidden)]
pub fn set_simd(enabled: bool) {
    set_kernel_simd_limit(if enabled { SimdLevel::Avx512 } else { SimdLevel::Baseline });
}

/// Runs `f` compiled for the widest SIMD level the CPU has (keel is built for baseline x86-64,
/// whose SSE2 vectors are a quarter as wide as AVX-512's). Only the width changes: no FMA
/// contraction (Rust never contracts), no reordering, so the results are bit-identical to the
/// fallback's. `f` must be a loop whose helpers inline into it.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match simd_level() {
            // SAFETY: the CPU supports the level, checked by `simd_level`.
            SimdLevel::Avx512 => return unsafe { avx512(f) },
            SimdLevel::Avx2 => return unsafe { avx2(f) },
            SimdLevel::Baseline => {}
        }
    }
    f()
}

/// dst = the sum of the per-chunk partial sums, added in chunk order so the result does not depend
/// on how rayon scheduled the chunks.
pub(super) fn sum_in_order<T: Real>(dst: &mut [T], partials: Vec<Vec<T>>) {
    dst.fill(T::zero());
    for p in partials {
        for (a, b) in dst.iter_mut().zip(p) {
            *a += b;
        }
    }
}
