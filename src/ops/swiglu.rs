//! SwiGLU: silu of the first half of the last dim times its second half.

#[cfg(feature = "cuda")]
use super::custom::{CudaInput, CudaOutput};
use super::custom::{Fused, FusedOp1, FusedOp2, Input, Output};
use super::kernels::Kernels;
use super::real::{unfilled, vectorized, Real, ROW_CHUNK};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

/// silu(a) * b where h = [a | b] along the last dim: (N, 2F) -> (N, F).
pub fn swiglu(h: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => h.contiguous()?.apply_op1(Fused(SwiGlu)),
        Kernels::Composite => composite::swiglu(h),
    }
}

/// The composite twin: stock Candle ops, differentiable end to end.
pub mod composite {
    use candle_core::{Result, Tensor, D};

    pub fn swiglu(h: &Tensor) -> Result<Tensor> {
        let f = h.dim(D::Minus1)? / 2;
        let a = h.narrow(D::Minus1, 0, f)?;
        let b = h.narrow(D::Minus1, f, f)?;
        candle_nn::ops::silu(&a)? * b
    }
}

/// y = silu(a) * b for h = [a | b]: h (N, 2F) -> y (N, F).
struct SwiGlu;

impl FusedOp1 for SwiGlu {
    const NAME: &'static str = "keel-swiglu";
    fn cpu<T: Real>(&self, h: Input) -> Result<Output<T>> {
        let (n, f2) = h.shape().dims2()?;
        let f = f2 / 2;
        Ok((swiglu_fwd_kernel(h.slice()?, f), Shape::from((n, f))))
    }
    /// `keel_swiglu_fwd_<dtype>` of src/ops/cuda/swiglu.cu.
    #[cfg(feature = "cuda")]
    fn cuda(&self, h: CudaInput) -> Result<CudaOutput> {
        use super::cuda_kernels::runtime::{self as rt, Arg};
        let (n, f) = cuda::halves(h.shape(), Self::NAME)?;
        let sfx = rt::dtype_suffix(h.dtype(), Self::NAME)?;
        let hp = rt::address(h.storage, h.layout, Self::NAME)?;
        let (y, yp) = rt::alloc(h.device(), h.dtype(), n * f)?;
        cuda::launch(h.device(), &format!("keel_swiglu_fwd_{sfx}"), n, f, &[Arg::Ptr(hp), Arg::Ptr(yp)])?;
        Ok((y, Shape::from((n, f))))
    }
    fn bwd(&self, h: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2_no_bwd(dy, &Fused(SwiGluBwd))?))
    }
}

/// dh = [da | db] from h (N, 2F) and dy (N, F) -> dh (N, 2F).
struct SwiGluBwd;

impl FusedOp2 for SwiGluBwd {
    const NAME: &'static str = "keel-swiglu-bwd";
    fn cpu<T: Real>(&self, h: Input, dy: Input) -> Result<Output<T>> {
        let f = h.shape().dims2()?.1 / 2;
        Ok((swiglu_bwd_kernel(h.slice()?, dy.slice()?, f), h.shape().clone()))
    }
    /// `keel_swiglu_bwd_<dtype>` of src/ops/cuda/swiglu.cu: the same packed [da | db] rows.
    #[cfg(feature = "cuda")]
    fn cuda(&self, h: CudaInput, dy: CudaInput) -> Result<CudaOutput> {
        use super::cuda_kernels::runtime::{self as rt, Arg};
        let (n, f) = cuda::halves(h.shape(), Self::NAME)?;
        if dy.shape().dims() != [n, f] || dy.dtype() != h.dtype() {
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
        let hp = rt::address(h.storage, h.layout, Self::NAME)?;
        let dyp = rt::address(dy.storage, dy.layout, Self::NAME)?;
        let (dh, dhp) = rt::alloc(h.device(), h.dtype(), 2 * n * f)?;
        cuda::launch(
            h.device(),
            &format!("keel_swiglu_bwd_{sfx}"),
            n,
            f,
            &[Arg::Ptr(hp), Arg::Ptr(dyp), Arg::Ptr(dhp)],
        )?;
        Ok((dh, h.shape().clone()))
    }
}

/// The launch side of src/ops/cuda/swiglu.cu, shared by the forward and the backward.
#[cfg(feature = "cuda")]
mod cuda {
    use super::super::cuda_kernels::runtime::{self as rt, Arg};
    use super::super::cuda_kernels::Module;
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::{Result, Shape};

    /// (N, F) of h (N, 2F), both within the kernels' int arguments.
    pub(super) fn halves(shape: &Shape, op: &str) -> Result<(usize, usize)> {
        let (n, f2) = shape.dims2()?;
        if f2 % 2 != 0 {
            candle_core::bail!("{op}: the last dim ({f2}) must be even: h = [a | b]");
        }
        if n > i32::MAX as usize || f2 > i32::MAX as usize {
            candle_core::bail!("{op}: shape {shape:?} is too large for the CUDA kernel's int arguments");
        }
        Ok((n, f2 / 2))
    }

    /// Launches `name` over the N x F output columns, with `ptrs` then (n, f) as arguments (the
    /// grid of [`rt::launch_elementwise`]).
    pub(super) fn launch(dev: &CudaDevice, name: &str, n: usize, f: usize, ptrs: &[Arg]) -> Result<()> {
        let mut args = ptrs.to_vec();
        args.extend([Arg::I32(n as i32), Arg::I32(f as i32)]);
        rt::launch_elementwise(dev, Module::SwiGlu, name, n * f, &args)
    }
}

#[inline(always)]
fn sigmoid<T: Real>(a: T) -> T {
    T::one() / (T::one() + (-a).fast_exp())
}

fn swiglu_fwd_kernel<T: Real>(h: &[T], f: usize) -> Vec<T> {
    let n = h.len() / (2 * f);
    let mut y = unfilled(n * f);
    y.par_chunks_mut(f * ROW_CHUNK).zip(h.par_chunks(2 * f * ROW_CHUNK)).for_each(|(ys, hs)| {
        vectorized(
            #[inline(always)]
            || {
                for (yr, hr) in ys.chunks_exact_mut(f).zip(hs.chunks_exact(2 * f)) {
                    let (a, b) = hr.split_at(f);
                    let (a, b, yr) = (&a[..f], &b[..f], &mut yr[..f]);
                    for i in 0..f {
                        yr[i] = a[i] * sigmoid(a[i]) * b[i];
                    }
                }
            },
        )
    });
    y
}

/// d/da silu(a) b = b s (1 + a (1 - s)), d/db = silu(a); s = sigmoid(a).
fn swiglu_bwd_kernel<T: Real>(h: &[T], dy: &[T], f: usize) -> Vec<T> {
    let mut dh = unfilled(h.len());
    dh.par_chunks_mut(2 * f * ROW_CHUNK)
        .zip(h.par_chunks(2 * f * ROW_CHUNK))
        .zip(dy.par_chunks(f * ROW_CHUNK))
        .for_each(|((dhs, hs), dys)| {
            vectorized(
                #[inline(always)]
                || {
                    for ((dhr, hr), dyr) in
                        dhs.chunks_exact_mut(2 * f).zip(hs.chunks_exact(2 * f)).zip(dys.chunks_exact(f))
                    {
                        let (a, b) = hr.split_at(f);
                        let (da, db) = dhr.split_at_mut(f);
                        // Equal lengths up front, so the loop has no bounds checks and vectorizes.
                        let (a, b, da, db, dyr) = (&a[..f], &b[..f], &mut da[..f], &mut db[..f], &dyr[..f]);
                        for i in 0..f {
                            let s = sigmoid(a[i]);
                            da[i] = dyr[i] * b[i] * s * (T::one() + a[i] * (T::one() - s));
                            db[i] = dyr[i] * a[i] * s;
                        }
                    }
                },
            )
        });
    dh
}
