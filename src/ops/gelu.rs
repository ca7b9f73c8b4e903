//! GELU with the exact normal CDF (the composite twin is Candle's `gelu_erf`).

#[cfg(feature = "cuda")]
use super::custom::{CudaInput, CudaOutput};
use super::custom::{Fused, FusedOp1, FusedOp2, Input, Output};
use super::kernels::Kernels;
use super::real::{unfilled, vectorized, Real};
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// GELU with the exact normal CDF: x Phi(x) (PyTorch's default `approximate='none'`). Any shape.
pub fn gelu(h: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => h.contiguous()?.apply_op1(Fused(Gelu)),
        Kernels::Composite => h.gelu_erf(),
    }
}

/// Elements per parallel task of the elementwise kernels.
const ELEM_CHUNK: usize = 1 << 14;

/// y = h Phi(h) elementwise: h (any shape) -> y (same shape).
struct Gelu;

impl FusedOp1 for Gelu {
    const NAME: &'static str = "keel-gelu";
    fn cpu<T: Real>(&self, h: Input) -> Result<Output<T>> {
        Ok((gelu_fwd_kernel(h.slice()?), h.shape().clone()))
    }
    /// `keel_gelu_fwd_<dtype>` of src/ops/cuda/gelu.cu.
    #[cfg(feature = "cuda")]
    fn cuda(&self, h: CudaInput) -> Result<CudaOutput> {
        use super::cuda_kernels::runtime::{self as rt, Arg};
        let sfx = rt::dtype_suffix(h.dtype(), Self::NAME)?;
        let n = h.shape().elem_count();
        let hp = rt::address(h.storage, h.layout, Self::NAME)?;
        let (y, yp) = rt::alloc(h.device(), h.dtype(), n)?;
        cuda::launch(h.device(), &format!("keel_gelu_fwd_{sfx}"), n, &[Arg::Ptr(hp), Arg::Ptr(yp)])?;
        Ok((y, h.shape().clone()))
    }
    fn bwd(&self, h: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2_no_bwd(dy, &Fused(GeluBwd))?))
    }
}

/// dh = dy GELU'(h): h and dy of one shape -> dh (same shape).
struct GeluBwd;

impl FusedOp2 for GeluBwd {
    const NAME: &'static str = "keel-gelu-bwd";
    fn cpu<T: Real>(&self, h: Input, dy: Input) -> Result<Output<T>> {
        Ok((gelu_bwd_kernel(h.slice()?, dy.slice()?), h.shape().clone()))
    }
    /// `keel_gelu_bwd_<dtype>` of src/ops/cuda/gelu.cu.
    #[cfg(feature = "cuda")]
    fn cuda(&self, h: CudaInput, dy: CudaInput) -> Result<CudaOutput> {
        use super::cuda_kernels::runtime::{self as rt, Arg};
        if dy.shape() != h.shape() || dy.dtype() != h.dtype() {
            candle_core::bail!(
                "{}: dy {:?} {:?} does not match h {:?} {:?}",
                Self::NAME,
                dy.shape(),
                dy.dtype(),
                h.shape(),
                h.dtype()
            );
        }
        let sfx = rt::dtype_suffix(h.dtype(), Self::NAME)?;
        let n = h.shape().elem_count();
        let hp = rt::address(h.storage, h.layout, Self::NAME)?;
        let dyp = rt::address(dy.storage, dy.layout, Self::NAME)?;
        let (dh, dhp) = rt::alloc(h.device(), h.dtype(), n)?;
        cuda::launch(h.device(), &format!("keel_gelu_bwd_{sfx}"), n, &[Arg::Ptr(hp), Arg::Ptr(dyp), Arg::Ptr(dhp)])?;
        Ok((dh, h.shape().clone()))
    }
}

/// The launch side of src/ops/cuda/gelu.cu, shared by the forward and the backward.
#[cfg(feature = "cuda")]
mod cuda {
    use super::super::cuda_kernels::runtime::{self as rt, Arg};
    use super::super::cuda_kernels::Module;
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::Result;

    /// Launches `name` over `n` elements, with `ptrs` then n (i64) as arguments (the grid of
    /// [`rt::launch_elementwise`]).
    pub(super) fn launch(dev: &CudaDevice, name: &str, n: usize, ptrs: &[Arg]) -> Result<()> {
        let mut args = ptrs.to_vec();
        args.push(Arg::I64(n as i64));
        rt::launch_elementwise(dev, Module::Gelu, name, n, &args)
    }
}

fn gelu_fwd_kernel<T: Real>(h: &[T]) -> Vec<T> {
    let mut y = unfilled(h.len());
    y.par_chunks_mut(ELEM_CHUNK).zip(h.par_chunks(ELEM_CHUNK)).for_each(|(ys, hs)| {
        vectorized(
            #[inline(always)]
            || {
                let hs = &hs[..ys.len()];
                for i in 0..ys.len() {
                    ys[i] = hs[i] * hs[i].normal_cdf();
                }
            },
        )
    });
    y
}

/// d/dx x Phi(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
fn gelu_bwd_kernel<T: Real>(h: &[T], dy: &[T]) -> Vec<T> {
    let inv_sqrt_2pi = T::from_f64(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    let half = T::from_f64(0.5);
    let mut dh = unfilled(h.len());
    dh.par_chunks_mut(ELEM_CHUNK).zip(h.par_chunks(ELEM_CHUNK)).zip(dy.par_chunks(ELEM_CHUNK)).for_each(
        |((dhs, hs), dys)| {
            vectorized(
                #[inline(always)]
                || {
                    let (hs, dys) = (&hs[..dhs.len()], &dys[..dhs.len()]);
                    for i in 0..dhs.len() {
                        let x = hs[i];
                        let pdf = (-(x * x) * half).fast_exp() * inv_sqrt_2pi;
                        dhs[i] = dys[i] * (x.normal_cdf() + x * pdf);
                    }
                },
            )
        },
    );
    dh
}
