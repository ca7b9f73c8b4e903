//! The linear layer, y = x w, straight onto gemm (the composite twin is Candle's `matmul`).

use super::custom::{Fused, FusedOp2, Input, Output};
use super::kernels::Kernels;
use super::real::Real;
use candle_core::{DType, Result, Shape, Tensor};

/// y = x w for x: (N, K), w: (K, M) (weights stored (in, out)). Off the CPU the product is
/// Candle's matmul (cuBLAS on CUDA) under either kernel choice.
pub fn linear(x: &Tensor, w: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused if x.device().is_cpu() => x.contiguous()?.apply_op2(&w.contiguous()?, Fused(Linear)),
        _ => x.matmul(w),
    }
}

/// `x w` computed in `compute` when given (mixed precision: both operands cast, the product cast
/// back to x's dtype, so gradients reach the full-precision weight through the casts).
pub fn linear_in(x: &Tensor, w: &Tensor, k: Kernels, compute: Option<DType>) -> Result<Tensor> {
    match compute {
        Some(dt) if dt != x.dtype() => x.to_dtype(dt)?.matmul(&w.to_dtype(dt)?)?.to_dtype(x.dtype()),
        _ => linear(x, w, k),
    }
}

/// Candle's matmul zero-fills every output before gemm overwrites it and routes the backward
/// through transposed views; this op calls gemm directly, forward and backward.
/// y = x w: x (N, K), w (K, M) -> y (N, M).
struct Linear;

/// dst (m x n, row-major, fully overwritten) = lhs @ rhs with the given strides, multithreaded.
#[allow(clippy::too_many_arguments)]
fn gemm_new<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[T],
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: &[T],
    rhs_rs: isize,
    rhs_cs: isize,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(m * n);
    let threads = rayon::current_num_threads();
    let par =
        if threads > 1 && m * n * k > 32 * 1024 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    unsafe {
        if k == 0 {
            out.as_mut_ptr().write_bytes(0, m * n);
        } else {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                lhs_cs,
                lhs_rs,
                rhs.as_ptr(),
                rhs_cs,
                rhs_rs,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                par,
            );
        }
        // gemm wrote all m * n elements (or they were zeroed above).
        out.set_len(m * n);
    }
    out
}

impl FusedOp2 for Linear {
    const NAME: &'static str = "keel-linear";
    fn cpu<T: Real>(&self, x: Input, w: Input) -> Result<Output<T>> {
        let (n, k) = x.shape().dims2()?;
        let (k2, m) = w.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("keel linear: shapes {:?} and {:?} do not multiply", x.shape(), w.shape());
        }
        let (ki, mi) = (k as isize, m as isize);
        Ok((gemm_new(n, m, k, x.slice()?, ki, 1, w.slice()?, mi, 1), Shape::from((n, m))))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = dy.apply_op2_no_bwd(w, &Fused(LinearGradInput))?;
        let dw = x.apply_op2_no_bwd(dy, &Fused(LinearGradWeight))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// dx = dy w^T: (N, M) x (K, M)^T -> (N, K).
struct LinearGradInput;

impl FusedOp2 for LinearGradInput {
    const NAME: &'static str = "keel-linear-grad-input";
    fn cpu<T: Real>(&self, dy: Input, w: Input) -> Result<Output<T>> {
        let (n, m) = dy.shape().dims2()?;
        let (k, _) = w.shape().dims2()?;
        let mi = m as isize;
        Ok((gemm_new(n, k, m, dy.slice()?, mi, 1, w.slice()?, 1, mi), Shape::from((n, k))))
    }
}

/// dw = x^T dy: (N, K)^T x (N, M) -> (K, M).
struct LinearGradWeight;

impl FusedOp2 for LinearGradWeight {
    const NAME: &'static str = "keel-linear-grad-weight";
    fn cpu<T: Real>(&self, x: Input, dy: Input) -> Result<Output<T>> {
        let (n, k) = x.shape().dims2()?;
        let (_, m) = dy.shape().dims2()?;
        let (ki, mi) = (k as isize, m as isize);
        Ok((gemm_new(k, m, n, x.slice()?, 1, ki, dy.slice()?, mi, 1), Shape::from((k, m))))
    }
}
