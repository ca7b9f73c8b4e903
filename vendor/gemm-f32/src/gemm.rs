// keel's patch of gemm-f32 0.19.0 (see ../README.md): the upstream file is
//
//     pub mod f32 {
//         type T = f32;
//         gemm_common::gemm_def!(f32, 2);
//     }
//
// Upstream picks the x86 microkernels once, from the CPU alone. Here a process-wide limit caps
// the level, so that a result computed on an AVX2 machine can be reproduced bit for bit on an
// AVX-512 one (AVX-512 sums in another order). The kernels themselves are untouched.

/// x86 levels, as [`set_x86_level_limit`] and [`x86_level`] number them.
pub const SCALAR: u8 = 0;
/// AVX2 with FMA (upstream's `fma` module, pulp's V3).
pub const FMA: u8 = 1;
/// AVX-512F (upstream's `avx512f` module, pulp's V4; needs the `x86-v4` feature).
pub const AVX512F: u8 = 2;

static LIMIT: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(u8::MAX);

/// Caps the level f32 products use from the next call on (`u8::MAX`: no cap, upstream's choice).
pub fn set_x86_level_limit(limit: u8) {
    LIMIT.store(limit, core::sync::atomic::Ordering::Relaxed);
}

/// The level f32 products use now: the widest this build and CPU have, capped by the limit
/// (always [`SCALAR`] off x86).
pub fn x86_level() -> u8 {
    detected::widest().min(LIMIT.load(core::sync::atomic::Ordering::Relaxed))
}

mod detected {
    type T = f32;
    gemm_common::gemm_def!(f32, 2);

    pub(super) fn widest() -> u8 {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            #[cfg(feature = "x86-v4")]
            if gemm_common::feature_detected!("avx512f") {
                return super::AVX512F;
            }
            if gemm_common::feature_detected!("fma") {
                return super::FMA;
            }
        }
        super::SCALAR
    }

    pub(super) fn at_level(level: u8) -> GemmTy {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            #[cfg(feature = "x86-v4")]
            if level >= super::AVX512F {
                return avx512f::gemm_basic;
            }
            if level >= super::FMA {
                return fma::gemm_basic;
            }
            return scalar::gemm_basic;
        }
        #[allow(unreachable_code)]
        {
            let _ = level;
            get_gemm_fn()
        }
    }

    pub(super) type Gemm = GemmTy;
}

pub mod f32 {
    /// The f32 product function of the level [`super::x86_level`] names; the `gemm` crate calls
    /// this for every f32 product.
    #[inline]
    pub fn get_gemm_fn() -> super::detected::Gemm {
        super::detected::at_level(super::x86_level())
    }
}
