//! The model's differentiable building blocks, each in two implementations:
//!
//! - `composite`: plain Candle ops that all have a backward (no `candle_nn::ops::rms_norm`,
//!   `softmax_last_dim`, fast `rope`, `sdpa`: those are forward-only and silently cut the graph,
//!   Candle issues 2168, 2977, 3011, 3569). Used on Metal, with `train.kernels = "composite"`,
//!   and as the reference in tests.
//! - fused kernels (CustomOps with hand-written backward): on the CPU (f32, f64), because
//!   Candle's composite ops pay an allocation and a pass over memory per elementary op; on CUDA
//!   (f32, bf16) from the sources in `cuda/`, loaded by `cuda_kernels`.
//!
//! Every fused op is tested against its composite twin, forward and backward.
//!
//! One file per op holds its public entry point, its composite twin, its fused CPU kernels and
//! the CustomOps that carry them. The op files share four small files and nothing else:
//! `kernels` (the [`Kernels`] switch), `real` (the float types, vectorizable math and the SIMD
//! level switch), `custom` (the CustomOp plumbing), `cuda_kernels` (the CUDA sources' loading and
//! launches) and `rope` (the RoPE tables); those never use an op file, and no op file uses this one.
//! `attention_mma` holds the tensor-core attention kernels' launches, which only `attention` calls;
//! `attention_decode` is incremental decoding's attention against a KV cache, whose composite twin
//! shares `attention`'s projections and so lives there.

mod attention;
mod attention_decode;
mod attention_mma;
mod cross_entropy;
pub mod cuda_kernels;
mod custom;
mod gelu;
mod kernels;
mod layer_norm;
mod linear;
mod real;
mod rms_norm;
mod rope;
mod swiglu;

pub use attention::{causal_attention, AttentionKernel, AttnShape};
pub use attention_decode::{attention_at, AttentionCache};
pub use cross_entropy::cross_entropy;
pub use gelu::gelu;
pub use kernels::{KernelChoice, Kernels};
pub use layer_norm::{layer_norm, residual_layer_norm};
pub use linear::{linear, linear_in};
pub(crate) use real::vectorized;
pub use real::{
    dot, exp_f32, matmul_simd, normal_cdf_f32, set_kernel_simd_limit, set_matmul_simd_limit, set_simd, set_simd_limit,
    simd_level, simd_limit_from_env, sum, Real, SimdLevel, SIMD_ENV,
};
pub use rms_norm::{residual, residual_rms_norm, rms_norm};
pub use rope::Rope;
pub use swiglu::swiglu;

/// Composite reference implementations (differentiable with stock Candle ops). Each lives in its
/// op's file, beside the fused kernel it is the reference for.
pub mod composite {
    pub use super::attention::composite::{attention_at, causal_attention};
    pub use super::layer_norm::composite::layer_norm;
    pub use super::rms_norm::composite::rms_norm;
    pub use super::swiglu::composite::swiglu;
}
