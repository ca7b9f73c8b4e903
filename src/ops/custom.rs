//! What every fused op's `CustomOp` impl shares: float-dtype dispatch and contiguous inputs.

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// Runs `$body` with the type `$t` bound to the float type of `$dtype` (f32 or f64); any other
/// dtype is an error naming the op.
macro_rules! with_float {
    ($dtype:expr, $op:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            dt => candle_core::bail!("{}: unsupported dtype {dt:?} (keel's fused ops take f32 or f64)", $op),
        }
    };
}
pub(super) use with_float;

pub(super) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("keel fused op: input must be contiguous"),
    }
}
