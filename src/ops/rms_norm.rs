//! RMSNorm, and the residual that feeds it: y = RMSNorm(alpha * x + f), fused in one pass.

#[cfg(feature = "cuda")]
use super::custom::{CudaInput, CudaOutput};
use super::custom::{Fused, FusedOp2, FusedOp3, Input, Output};
use super::kernels::Kernels;
use super::real::{dot, sum_in_order, unfilled, vectorized, Real, ROW_CHUNK};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

/// RMSNorm over the last dim: y = x / sqrt(mean(x^2) + eps) * gamma. x: (N, C), gamma: (C).
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => x.contiguous()?.apply_op2(gamma, Fused(RmsNorm { eps })),
        Kernels::Composite => composite::rms_norm(x, gamma, eps),
    }
}

/// Residual followed by RMSNorm: y = RMSNorm(alpha * x + f) (Post-LN with alpha = 1, Keel with
/// alpha = L). x, f: (N, C), gamma: (C).
pub fn residual_rms_norm(x: &Tensor, f: &Tensor, gamma: &Tensor, alpha: f64, eps: f64, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => x.contiguous()?.apply_op3(&f.contiguous()?, gamma, Fused(ResidualRmsNorm { alpha, eps })),
        Kernels::Composite => composite::rms_norm(&residual(x, f, alpha)?, gamma, eps),
    }
}

/// alpha * x + f, skipping the multiply when alpha is 1.
pub fn residual(x: &Tensor, f: &Tensor, alpha: f64) -> Result<Tensor> {
    if alpha == 1.0 {
        x + f
    } else {
        x.affine(alpha, 0.0)? + f
    }
}

/// The composite twin: stock Candle ops, differentiable end to end.
pub mod composite {
    use candle_core::{Result, Tensor, D};

    pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let r = (ms + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&r)?.broadcast_mul(gamma)
    }
}

fn rms_fwd_kernel<T: Real>(h: &[T], gamma: &[T], c: usize, eps: f64) -> Vec<T> {
    let mut y = unfilled(h.len());
    let eps = T::from_f64(eps);
    let inv_c = T::from_f64(1.0 / c as f64);
    y.par_chunks_mut(c * ROW_CHUNK).zip(h.par_chunks(c * ROW_CHUNK)).for_each(|(ys, hs)| {
        vectorized(
            #[inline(always)]
            || {
                for (yr, hr) in ys.chunks_exact_mut(c).zip(hs.chunks_exact(c)) {
                    let ms = dot(hr, hr) * inv_c;
                    let r = (ms + eps).sqrt().recip();
                    for ((yv, &hv), &g) in yr.iter_mut().zip(hr).zip(gamma) {
                        *yv = hv * r * g;
                    }
                }
            },
        )
    });
    y
}

/// Backward of y = h * r * gamma with h = alpha * x + f (or h = x without f),
/// r = 1/sqrt(mean(h^2) + eps): with g = dy * gamma and xhat = h * r,
/// dh = r * (g - xhat * mean(g * xhat)), dx = alpha dh, df = dh, dgamma = sum_rows(dy * xhat).
/// Returns rows [dx (N, C) ; df (N, C) if f is given ; dgamma (1, C)].
fn rms_bwd_kernel<T: Real>(x: &[T], f: Option<&[T]>, alpha: f64, gamma: &[T], dy: &[T], c: usize, eps: f64) -> Vec<T> {
    let n = x.len() / c;
    let blocks = if f.is_some() { 2 } else { 1 };
    let mut out = unfilled((blocks * n + 1) * c);
    let eps = T::from_f64(eps);
    let alpha = T::from_f64(alpha);
    let inv_c = T::from_f64(1.0 / c as f64);
    let (grads, _) = out.split_at_mut(blocks * n * c);
    let (dx, df) = grads.split_at_mut(n * c);
    let rows = ROW_CHUNK * c;
    let df_chunks: Vec<Option<&mut [T]>> = match f {
        Some(_) => df.chunks_mut(rows).map(Some).collect(),
        None => (0..n.div_ceil(ROW_CHUNK)).map(|_| None).collect(),
    };
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(rows)
        .zip(df_chunks)
        .enumerate()
        .map(|(chunk, (dxs, mut dfs))| {
            let base = chunk * rows;
            let mut dg = vec![T::zero(); c];
            let mut h = vec![T::zero(); c];
            let mut g = vec![T::zero(); c];
            vectorized(
                #[inline(always)]
                || {
                    for (row, dxr) in dxs.chunks_exact_mut(c).enumerate() {
                        let off = base + row * c;
                        let xr = &x[off..off + c];
                        match f {
                            Some(f) => {
                                for ((hv, &xv), &fv) in h.iter_mut().zip(xr).zip(&f[off..off + c]) {
                                    *hv = alpha * xv + fv;
                                }
                            }
                            None => h.copy_from_slice(xr),
                        }
                        let ms = dot(&h, &h) * inv_c;
                        let r = (ms + eps).sqrt().recip();
                        let (dyr, dg, g, h, gamma, dxr) =
                            (&dy[off..off + c], &mut dg[..c], &mut g[..c], &h[..c], &gamma[..c], &mut dxr[..c]);
                        for i in 0..c {
                            dg[i] += dyr[i] * h[i] * r;
                            g[i] = dyr[i] * gamma[i];
                        }
                        let m = dot(g, h) * r * inv_c;
                        for i in 0..c {
                            dxr[i] = r * (g[i] - h[i] * r * m);
                        }
                        if let Some(dfs) = dfs.as_deref_mut() {
                            let dfr = &mut dfs[row * c..(row + 1) * c];
                            dfr.copy_from_slice(dxr);
                            if alpha != T::one() {
                                for v in dxr.iter_mut() {
                                    *v *= alpha;
                                }
                            }
                        }
                    }
                },
            );
            dg
        })
        .collect();
    sum_in_order(&mut out[blocks * n * c..], partials);
    out
}

/// y = x r gamma, r = 1 / sqrt(mean(x^2) + eps) per row: x (N, C), gamma (C) -> y (N, C).
struct RmsNorm {
    eps: f64,
}

impl FusedOp2 for RmsNorm {
    const NAME: &'static str = "keel-rms-norm";
    fn cpu<T: Real>(&self, x: Input, gamma: Input) -> Result<Output<T>> {
        let c = gamma.shape().elem_count();
        Ok((rms_fwd_kernel(x.slice()?, gamma.slice()?, c, self.eps), x.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, x: CudaInput, gamma: CudaInput) -> Result<CudaOutput> {
        cuda::fwd(Self::NAME, x, None, gamma, 1.0, self.eps)
    }
    fn bwd(&self, x: &Tensor, gamma: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c) = x.dims2()?;
        let packed = x.apply_op3_no_bwd(gamma, dy, &Fused(RmsNormBwd { eps: self.eps }))?;
        Ok((Some(packed.narrow(0, 0, n)?), Some(packed.narrow(0, n, 1)?.reshape(c)?)))
    }
}

/// RMSNorm's backward: x (N, C), gamma (C), dy (N, C) -> [dx (N, C) ; dgamma (1, C)].
struct RmsNormBwd {
    eps: f64,
}

impl FusedOp3 for RmsNormBwd {
    const NAME: &'static str = "keel-rms-norm-bwd";
    fn cpu<T: Real>(&self, x: Input, gamma: Input, dy: Input) -> Result<Output<T>> {
        let (n, c) = x.shape().dims2()?;
        let packed = rms_bwd_kernel(x.slice()?, None, 1.0, gamma.slice()?, dy.slice()?, c, self.eps);
        Ok((packed, Shape::from((n + 1, c))))
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, x: CudaInput, gamma: CudaInput, dy: CudaInput) -> Result<CudaOutput> {
        cuda::bwd(Self::NAME, x, None, gamma, dy, 1.0, self.eps)
    }
}

/// y = RMSNorm(alpha x + f) with gain gamma: x, f (N, C), gamma (C) -> y (N, C).
struct ResidualRmsNorm {
    alpha: f64,
    eps: f64,
}

fn residual_kernel<T: Real>(x: &[T], f: &[T], alpha: f64) -> Vec<T> {
    let a = T::from_f64(alpha);
    x.iter().zip(f).map(|(&x, &f)| a * x + f).collect()
}

impl FusedOp3 for ResidualRmsNorm {
    const NAME: &'static str = "keel-residual-rms-norm";
    fn cpu<T: Real>(&self, x: Input, f: Input, gamma: Input) -> Result<Output<T>> {
        let c = gamma.shape().elem_count();
        let h = residual_kernel(x.slice()?, f.slice()?, self.alpha);
        Ok((rms_fwd_kernel(&h, gamma.slice()?, c, self.eps), x.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, x: CudaInput, f: CudaInput, gamma: CudaInput) -> Result<CudaOutput> {
        cuda::fwd(Self::NAME, x, Some(f), gamma, self.alpha, self.eps)
    }
    fn bwd(
        &self,
        x: &Tensor,
        f: &Tensor,
        gamma: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = x.dims2()?;
        let op = ResidualRmsNormBwd { alpha: self.alpha, eps: self.eps, gamma: gamma.clone() };
        let packed = x.apply_op3_no_bwd(f, dy, &Fused(op))?;
        let dx = packed.narrow(0, 0, n)?;
        let df = packed.narrow(0, n, n)?;
        let dgamma = packed.narrow(0, 2 * n, 1)?.reshape(c)?;
        Ok((Some(dx), Some(df), Some(dgamma)))
    }
}

/// The op that holds the fused residual-norm backward: inputs (x, f, dy), gamma alongside (a
/// CustomOp takes three tensors at most): x, f, dy (N, C) -> [dx (N, C) ; df (N, C) ; dgamma (1, C)].
struct ResidualRmsNormBwd {
    alpha: f64,
    eps: f64,
    gamma: Tensor,
}

impl FusedOp3 for ResidualRmsNormBwd {
    const NAME: &'static str = "keel-residual-rms-norm-bwd";
    fn cpu<T: Real>(&self, x: Input, f: Input, dy: Input) -> Result<Output<T>> {
        let (n, c) = x.shape().dims2()?;
        Input::with_held(&self.gamma, "gamma", Self::NAME, |gamma| {
            let packed =
                rms_bwd_kernel(x.slice()?, Some(f.slice()?), self.alpha, gamma.slice()?, dy.slice()?, c, self.eps);
            Ok((packed, Shape::from((2 * n + 1, c))))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, x: CudaInput, f: CudaInput, dy: CudaInput) -> Result<CudaOutput> {
        CudaInput::with_held(&self.gamma, "gamma", Self::NAME, |gamma| {
            cuda::bwd(Self::NAME, x, Some(f), gamma, dy, self.alpha, self.eps)
        })
    }
}

/// The launches of `src/ops/cuda/rms_norm.cu` (its header comment describes the kernels).
#[cfg(feature = "cuda")]
mod cuda {
    use super::super::cuda_kernels::runtime::{self, RowNorm};
    use super::super::cuda_kernels::Module;
    use super::super::custom::{CudaInput, CudaOutput};
    use candle_core::{Result, Shape};

    /// (N, C) of x, after checking that f, gamma and dy agree with it in shape, dtype and device.
    fn dims(op: &str, x: &CudaInput, others: &[Option<&CudaInput>], gamma: &CudaInput) -> Result<(usize, usize)> {
        let (n, c) = x.shape().dims2()?;
        if gamma.shape().elem_count() != c {
            candle_core::bail!("{op}: gamma has shape {:?}, expected ({c})", gamma.shape())
        }
        for t in others.iter().flatten().copied().chain([gamma]) {
            if t.dtype() != x.dtype() {
                candle_core::bail!("{op}: inputs of dtypes {:?} and {:?}", x.dtype(), t.dtype())
            }
            if t.device().id() != x.device().id() {
                candle_core::bail!("{op}: inputs on different CUDA devices")
            }
        }
        for t in others.iter().flatten() {
            if t.shape() != x.shape() {
                candle_core::bail!("{op}: shapes {:?} and {:?} differ", x.shape(), t.shape())
            }
        }
        if n > i32::MAX as usize || c == 0 || c > i32::MAX as usize {
            candle_core::bail!("{op}: shape ({n}, {c}) out of the kernels' range")
        }
        Ok((n, c))
    }

    /// y = RMSNorm(alpha x + f) (or RMSNorm(x) without f): x, f (N, C), gamma (C) -> y (N, C).
    pub(super) fn fwd(
        op: &str,
        x: CudaInput,
        f: Option<CudaInput>,
        gamma: CudaInput,
        alpha: f64,
        eps: f64,
    ) -> Result<CudaOutput> {
        let (n, c) = dims(op, &x, &[f.as_ref()], &gamma)?;
        let (dev, dt) = (x.device(), x.dtype());
        let sfx = runtime::dtype_suffix(dt, op)?;
        let xa = runtime::address(x.storage, x.layout, op)?;
        let fa = CudaInput::address_or_null(&f, op)?;
        let ga = runtime::address(gamma.storage, gamma.layout, op)?;
        let (y, ya) = runtime::alloc(dev, dt, n * c)?;
        RowNorm { dev, module: Module::RmsNorm, sfx, n, c, alpha, eps }.fwd(&[xa, fa, ga, ya])?;
        Ok((y, x.shape().clone()))
    }

    /// The backward of [`fwd`]: x, f, dy (N, C), gamma (C) -> rows [dx ; df (with f) ; dgamma],
    /// the packed layout of the CPU's rms_bwd_kernel.
    pub(super) fn bwd(
        op: &str,
        x: CudaInput,
        f: Option<CudaInput>,
        gamma: CudaInput,
        dy: CudaInput,
        alpha: f64,
        eps: f64,
    ) -> Result<CudaOutput> {
        let (n, c) = dims(op, &x, &[f.as_ref(), Some(&dy)], &gamma)?;
        let (dev, dt) = (x.device(), x.dtype());
        let sfx = runtime::dtype_suffix(dt, op)?;
        let grads = if f.is_some() { 2 } else { 1 };
        let xa = runtime::address(x.storage, x.layout, op)?;
        let fa = CudaInput::address_or_null(&f, op)?;
        let ga = runtime::address(gamma.storage, gamma.layout, op)?;
        let dya = runtime::address(dy.storage, dy.layout, op)?;
        let (out, dxa) = runtime::alloc(dev, dt, (grads * n + 1) * c)?;
        let dfa = if f.is_some() { runtime::address_at(&out, n * c)? } else { 0 };
        let dga = runtime::address_at(&out, grads * n * c)?;
        let norm = RowNorm { dev, module: Module::RmsNorm, sfx, n, c, alpha, eps };
        norm.bwd(op, [xa, fa, ga, dya, dxa, dfa], 1, "dgamma", dga)?;
        Ok((out, Shape::from((grads * n + 1, c))))
    }
}
