//! SwiGLU: silu of the first half of the last dim times its second half.

use super::custom::{contiguous, with_float};
use super::kernels::Kernels;
use super::real::{unfilled, vectorized, Real, ROW_CHUNK};
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// silu(a) * b where h = [a | b] along the last dim: (N, 2F) -> (N, F).
pub fn swiglu(h: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => h.contiguous()?.apply_op1(SwiGlu),
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

struct SwiGlu;

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

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "keel-swiglu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, f2) = l.shape().dims2()?;
        let f = f2 / 2;
        let out = with_float!(s.dtype(), "keel swiglu", T => T::to_cpu_storage_owned(swiglu_fwd_kernel(contiguous::<T>(s, l)?, f)));
        Ok((out, Shape::from((n, f))))
    }
    fn bwd(&self, h: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2_no_bwd(&dy.contiguous()?, &SwiGluBwd)?))
    }
}

struct SwiGluBwd;

impl CustomOp2 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "keel-swiglu-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let f = l1.shape().dims2()?.1 / 2;
        let out = with_float!(s1.dtype(), "keel swiglu bwd", T => {
            T::to_cpu_storage_owned(swiglu_bwd_kernel(contiguous::<T>(s1, l1)?, contiguous(s2, l2)?, f))
        });
        Ok((out, l1.shape().clone()))
    }
}
