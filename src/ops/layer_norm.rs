//! LayerNorm with gain and bias, and the residual that feeds it: y = LayerNorm(alpha * x + f),
//! fused in one pass.

#[cfg(feature = "cuda")]
use super::custom::{CudaInput, CudaOutput};
use super::custom::{Fused, FusedOp3, Input, Output};
use super::kernels::Kernels;
use super::real::{dot, sum, sum_in_order, unfilled, vectorized, Real, ROW_CHUNK};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

/// LayerNorm over the last dim: y = (x - mean) / sqrt(var + eps) * gamma + beta (biased variance,
/// as PyTorch). x: (N, C), gamma, beta: (C).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => x.contiguous()?.apply_op3(gamma, beta, Fused(LayerNorm { eps })),
        Kernels::Composite => composite::layer_norm(x, gamma, beta, eps),
    }
}

/// Residual followed by LayerNorm: y = LayerNorm(alpha * x + f) (Post-LN with alpha = 1, Keel
/// with alpha = L). x, f: (N, C), gamma, beta: (C).
pub fn residual_layer_norm(
    x: &Tensor,
    f: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    alpha: f64,
    eps: f64,
    k: Kernels,
) -> Result<Tensor> {
    match k {
        Kernels::Fused => {
            // A CustomOp takes three tensors: gain and bias travel as one (2, C) [gamma ; beta],
            // whose gradient Candle splits back onto both.
            let gb = Tensor::stack(&[gamma, beta], 0)?;
            x.contiguous()?.apply_op3(&f.contiguous()?, &gb, Fused(ResidualLayerNorm { alpha, eps }))
        }
        Kernels::Composite => {
            let h = if alpha == 1.0 { (x + f)? } else { (x.affine(alpha, 0.0)? + f)? };
            composite::layer_norm(&h, gamma, beta, eps)
        }
    }
}

/// The composite twin: stock Candle ops, differentiable end to end.
pub mod composite {
    use candle_core::{Result, Tensor, D};

    /// LayerNorm with gain and bias: (x - mean) / sqrt(var + eps) * gamma + beta.
    pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let r = (var + eps)?.sqrt()?.recip()?;
        xc.broadcast_mul(&r)?.broadcast_mul(gamma)?.broadcast_add(beta)
    }
}

fn ln_fwd_kernel<T: Real>(x: &[T], gamma: &[T], beta: &[T], c: usize, eps: f64) -> Vec<T> {
    let mut y = unfilled(x.len());
    let eps = T::from_f64(eps);
    let inv_c = T::from_f64(1.0 / c as f64);
    y.par_chunks_mut(c * ROW_CHUNK).zip(x.par_chunks(c * ROW_CHUNK)).for_each(|(ys, xs)| {
        vectorized(
            #[inline(always)]
            || {
                for (yr, xr) in ys.chunks_exact_mut(c).zip(xs.chunks_exact(c)) {
                    let (yr, xr, gamma, beta) = (&mut yr[..c], &xr[..c], &gamma[..c], &beta[..c]);
                    let mean = sum(xr) * inv_c;
                    // The centred row goes into y first, then is scaled in place.
                    for i in 0..c {
                        yr[i] = xr[i] - mean;
                    }
                    let r = (dot(yr, yr) * inv_c + eps).sqrt().recip();
                    for i in 0..c {
                        yr[i] = yr[i] * r * gamma[i] + beta[i];
                    }
                }
            },
        )
    });
    y
}

/// Backward of y = xhat * gamma + beta, xhat = (h - mean) r, r = 1/sqrt(var + eps), with
/// h = alpha * x + f (or h = x without f): with g = dy * gamma,
/// dh = r (g - mean(g) - xhat mean(g * xhat)), dx = alpha dh, df = dh, dgamma = sum_rows(dy * xhat),
/// dbeta = sum_rows(dy). Returns rows [dx (N, C) ; df (N, C) if f is given ; dgamma (1, C) ;
/// dbeta (1, C)].
fn ln_bwd_kernel<T: Real>(x: &[T], f: Option<&[T]>, alpha: f64, gamma: &[T], dy: &[T], c: usize, eps: f64) -> Vec<T> {
    let n = x.len() / c;
    let blocks = if f.is_some() { 2 } else { 1 };
    let mut out = unfilled((blocks * n + 2) * c);
    let eps = T::from_f64(eps);
    let alpha = T::from_f64(alpha);
    let inv_c = T::from_f64(1.0 / c as f64);
    let (grads, sums) = out.split_at_mut(blocks * n * c);
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
            let mut acc = vec![T::zero(); 2 * c];
            let mut h = vec![T::zero(); c];
            let mut xh = vec![T::zero(); c];
            let mut g = vec![T::zero(); c];
            vectorized(
                #[inline(always)]
                || {
                    let (dgamma, dbeta) = acc.split_at_mut(c);
                    for (row, dxr) in dxs.chunks_exact_mut(c).enumerate() {
                        let off = base + row * c;
                        let hr: &[T] = match f {
                            Some(f) => {
                                for ((hv, &xv), &fv) in h.iter_mut().zip(&x[off..off + c]).zip(&f[off..off + c]) {
                                    *hv = alpha * xv + fv;
                                }
                                &h[..]
                            }
                            None => &x[off..off + c],
                        };
                        let (hr, dyr, gamma, xh, g, dxr, dgamma, dbeta) = (
                            &hr[..c],
                            &dy[off..off + c],
                            &gamma[..c],
                            &mut xh[..c],
                            &mut g[..c],
                            &mut dxr[..c],
                            &mut dgamma[..c],
                            &mut dbeta[..c],
                        );
                        let mean = sum(hr) * inv_c;
                        for i in 0..c {
                            xh[i] = hr[i] - mean;
                        }
                        let r = (dot(xh, xh) * inv_c + eps).sqrt().recip();
                        for i in 0..c {
                            xh[i] *= r;
                            g[i] = dyr[i] * gamma[i];
                            dgamma[i] += dyr[i] * xh[i];
                            dbeta[i] += dyr[i];
                        }
                        let mean_g = sum(g) * inv_c;
                        let mean_gx = dot(g, xh) * inv_c;
                        for i in 0..c {
                            dxr[i] = r * (g[i] - mean_g - xh[i] * mean_gx);
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
            acc
        })
        .collect();
    sum_in_order(sums, partials);
    out
}

/// y = (x - mean) r gamma + beta, r = 1 / sqrt(var + eps) per row: x (N, C), gamma, beta (C) ->
/// y (N, C).
struct LayerNorm {
    eps: f64,
}

impl FusedOp3 for LayerNorm {
    const NAME: &'static str = "keel-layer-norm";
    fn cpu<T: Real>(&self, x: Input, gamma: Input, beta: Input) -> Result<Output<T>> {
        let c = gamma.shape().elem_count();
        Ok((ln_fwd_kernel(x.slice()?, gamma.slice()?, beta.slice()?, c, self.eps), x.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, x: CudaInput, gamma: CudaInput, beta: CudaInput) -> Result<CudaOutput> {
        let (gamma, beta) = (cuda::Param { input: gamma, at: 0 }, cuda::Param { input: beta, at: 0 });
        cuda::fwd(Self::NAME, x, None, gamma, beta, 1.0, self.eps)
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = x.dims2()?;
        let packed = x.apply_op3_no_bwd(gamma, dy, &Fused(LayerNormBwd { eps: self.eps }))?;
        let dx = packed.narrow(0, 0, n)?;
        let dgamma = packed.narrow(0, n, 1)?.reshape(c)?;
        let dbeta = packed.narrow(0, n + 1, 1)?.reshape(c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// LayerNorm's backward: x (N, C), gamma (C), dy (N, C) -> [dx (N, C) ; dgamma (1, C) ; dbeta (1, C)].
struct LayerNormBwd {
    eps: f64,
}

impl FusedOp3 for LayerNormBwd {
    const NAME: &'static str = "keel-layer-norm-bwd";
    fn cpu<T: Real>(&self, x: Input, gamma: Input, dy: Input) -> Result<Output<T>> {
        let (n, c) = x.shape().dims2()?;
        let packed = ln_bwd_kernel(x.slice()?, None, 1.0, gamma.slice()?, dy.slice()?, c, self.eps);
        Ok((packed, Shape::from((n + 2, c))))
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, x: CudaInput, gamma: CudaInput, dy: CudaInput) -> Result<CudaOutput> {
        cuda::bwd(Self::NAME, x, None, cuda::Param { input: gamma, at: 0 }, dy, 1.0, self.eps)
    }
}

fn residual_kernel<T: Real>(x: &[T], f: &[T], alpha: f64) -> Vec<T> {
    let a = T::from_f64(alpha);
    x.iter().zip(f).map(|(&x, &f)| a * x + f).collect()
}

/// y = LayerNorm(alpha x + f) with gain and bias: x, f (N, C), gb (2, C) = [gamma ; beta] ->
/// y (N, C).
struct ResidualLayerNorm {
    alpha: f64,
    eps: f64,
}

impl FusedOp3 for ResidualLayerNorm {
    const NAME: &'static str = "keel-residual-layer-norm";
    fn cpu<T: Real>(&self, x: Input, f: Input, gb: Input) -> Result<Output<T>> {
        let (_, c) = gb.shape().dims2()?;
        let (gamma, beta) = gb.slice()?.split_at(c);
        let h = residual_kernel(x.slice()?, f.slice()?, self.alpha);
        Ok((ln_fwd_kernel(&h, gamma, beta, c, self.eps), x.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, x: CudaInput, f: CudaInput, gb: CudaInput) -> Result<CudaOutput> {
        let (_, c) = gb.shape().dims2()?;
        let (gamma, beta) = (cuda::Param { input: gb, at: 0 }, cuda::Param { input: gb, at: c });
        cuda::fwd(Self::NAME, x, Some(f), gamma, beta, self.alpha, self.eps)
    }
    fn bwd(
        &self,
        x: &Tensor,
        f: &Tensor,
        gb: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, _) = x.dims2()?;
        let op = ResidualLayerNormBwd { alpha: self.alpha, eps: self.eps, gamma: gb.get(0)? };
        let packed = x.apply_op3_no_bwd(f, dy, &Fused(op))?;
        let dx = packed.narrow(0, 0, n)?;
        let df = packed.narrow(0, n, n)?;
        // [dgamma ; dbeta]: the gradient of gb, (2, C).
        let dgb = packed.narrow(0, 2 * n, 2)?;
        Ok((Some(dx), Some(df), Some(dgb)))
    }
}

/// The fused residual LayerNorm's backward: inputs (x, f, dy), gamma alongside (a CustomOp takes
/// three tensors at most): x, f, dy (N, C) -> [dx (N, C) ; df (N, C) ; dgamma (1, C) ; dbeta (1, C)].
struct ResidualLayerNormBwd {
    alpha: f64,
    eps: f64,
    /// (C)
    gamma: Tensor,
}

impl FusedOp3 for ResidualLayerNormBwd {
    const NAME: &'static str = "keel-residual-layer-norm-bwd";
    fn cpu<T: Real>(&self, x: Input, f: Input, dy: Input) -> Result<Output<T>> {
        let (n, c) = x.shape().dims2()?;
        Input::with_held(&self.gamma, "gamma", Self::NAME, |gamma| {
            let packed =
                ln_bwd_kernel(x.slice()?, Some(f.slice()?), self.alpha, gamma.slice()?, dy.slice()?, c, self.eps);
            Ok((packed, Shape::from((2 * n + 2, c))))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, x: CudaInput, f: CudaInput, dy: CudaInput) -> Result<CudaOutput> {
        CudaInput::with_held(&self.gamma, "gamma", Self::NAME, |input| {
            cuda::bwd(Self::NAME, x, Some(f), cuda::Param { input, at: 0 }, dy, self.alpha, self.eps)
        })
    }
}

/// The launches of `src/ops/cuda/layer_norm.cu` (its header comment describes the kernels).
#[cfg(feature = "cuda")]
mod cuda {
    use super::super::cuda_kernels::runtime::{self, RowNorm};
    use super::super::cuda_kernels::Module;
    use super::super::custom::{CudaInput, CudaOutput};
    use candle_core::{Result, Shape};

    /// A gain or bias vector: the C elements from element `at` of a contiguous input (gamma and
    /// beta may be two (C) tensors, or the rows of one packed (2, C) [gamma ; beta]).
    pub(super) struct Param<'a> {
        pub input: CudaInput<'a>,
        pub at: usize,
    }

    impl Param<'_> {
        fn address(&self, op: &str, x: &CudaInput, c: usize) -> Result<u64> {
            let Some((a, b)) = self.input.layout.contiguous_offsets() else {
                candle_core::bail!("{op}: gamma and beta must be contiguous")
            };
            if self.at + c > b - a {
                candle_core::bail!("{op}: gamma/beta of shape {:?} have fewer than {c} elements", self.input.shape())
            }
            if self.input.dtype() != x.dtype() || self.input.device().id() != x.device().id() {
                candle_core::bail!("{op}: gamma/beta must have the dtype and device of x")
            }
            runtime::address_at(self.input.storage, a + self.at)
        }
    }

    /// (N, C) of x, after checking that f and dy agree with it in shape, dtype and device.
    fn dims(op: &str, x: &CudaInput, others: &[Option<&CudaInput>]) -> Result<(usize, usize)> {
        let (n, c) = x.shape().dims2()?;
        for t in others.iter().flatten() {
            if t.shape() != x.shape() || t.dtype() != x.dtype() || t.device().id() != x.device().id() {
                candle_core::bail!("{op}: inputs must share shape, dtype and device")
            }
        }
        if n > i32::MAX as usize || c == 0 || 2 * c > i32::MAX as usize {
            candle_core::bail!("{op}: shape ({n}, {c}) out of the kernels' range")
        }
        Ok((n, c))
    }

    /// y = LayerNorm(alpha x + f) (or LayerNorm(x) without f): x, f (N, C), gamma, beta (C) ->
    /// y (N, C).
    pub(super) fn fwd(
        op: &str,
        x: CudaInput,
        f: Option<CudaInput>,
        gamma: Param,
        beta: Param,
        alpha: f64,
        eps: f64,
    ) -> Result<CudaOutput> {
        let (n, c) = dims(op, &x, &[f.as_ref()])?;
        let (dev, dt) = (x.device(), x.dtype());
        let sfx = runtime::dtype_suffix(dt, op)?;
        let xa = runtime::address(x.storage, x.layout, op)?;
        let fa = CudaInput::address_or_null(&f, op)?;
        let ga = gamma.address(op, &x, c)?;
        let ba = beta.address(op, &x, c)?;
        let (y, ya) = runtime::alloc(dev, dt, n * c)?;
        RowNorm { dev, module: Module::LayerNorm, sfx, n, c, alpha, eps }.fwd(&[xa, fa, ga, ba, ya])?;
        Ok((y, x.shape().clone()))
    }

    /// The backward of [`fwd`]: x, f, dy (N, C), gamma (C) -> rows [dx ; df (with f) ; dgamma ;
    /// dbeta], the packed layout of the CPU's ln_bwd_kernel.
    pub(super) fn bwd(
        op: &str,
        x: CudaInput,
        f: Option<CudaInput>,
        gamma: Param,
        dy: CudaInput,
        alpha: f64,
        eps: f64,
    ) -> Result<CudaOutput> {
        let (n, c) = dims(op, &x, &[f.as_ref(), Some(&dy)])?;
        let (dev, dt) = (x.device(), x.dtype());
        let sfx = runtime::dtype_suffix(dt, op)?;
        let grads = if f.is_some() { 2 } else { 1 };
        let xa = runtime::address(x.storage, x.layout, op)?;
        let fa = CudaInput::address_or_null(&f, op)?;
        let ga = gamma.address(op, &x, c)?;
        let dya = runtime::address(dy.storage, dy.layout, op)?;
        let (out, dxa) = runtime::alloc(dev, dt, (grads * n + 2) * c)?;
        let dfa = if f.is_some() { runtime::address_at(&out, n * c)? } else { 0 };
        let dpa = runtime::address_at(&out, grads * n * c)?;

        let norm = RowNorm { dev, module: Module::LayerNorm, sfx, n, c, alpha, eps };
        norm.bwd(op, [xa, fa, ga, dya, dxa, dfa], 2, "dparams", dpa)?;
        Ok((out, Shape::from((grads * n + 2, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{DType, Device, Var};

    fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let v: Vec<f64> = (0..shape.iter().product::<usize>()).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// The fused residual LayerNorm against LayerNorm(alpha x + f) composed of the plain fused
    /// LayerNorm and Candle's affine and add: values and all four gradients, in f64.
    #[test]
    fn residual_layer_norm_matches_layer_norm_of_residual() {
        let mut rng = Rng::new(7);
        for (n, c) in [(1, 1), (5, 7), (33, 64)] {
            for alpha in [1.0, 3.5] {
                let vars: Vec<Var> = [[n, c].as_slice(), &[n, c], &[c], &[c]]
                    .iter()
                    .map(|s| Var::from_tensor(&randn(&mut rng, s)).unwrap())
                    .collect();
                let w = randn(&mut rng, &[n, c]);
                let (x, f, gamma, beta) =
                    (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), vars[3].as_tensor());
                let fused = residual_layer_norm(x, f, gamma, beta, alpha, 1e-5, Kernels::Fused).unwrap();
                let h = (x.affine(alpha, 0.0).unwrap() + f).unwrap();
                let reference = layer_norm(&h, gamma, beta, 1e-5, Kernels::Fused).unwrap();
                assert_eq!(fused.dtype(), DType::F64);
                let d = max_abs_diff(&fused, &reference);
                assert!(d < 1e-12, "{n}x{c} alpha {alpha}: forward differs by {d}");
                let gf = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let gr = (&reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, v) in ["x", "f", "gamma", "beta"].iter().zip(&vars) {
                    let (a, b) = (gf.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap());
                    let d = max_abs_diff(a, b);
                    assert!(d < 1e-10 * alpha, "{n}x{c} alpha {alpha}: d{name} differs by {d}");
                }
                // The composite path of the same entry point agrees too.
                let comp = residual_layer_norm(x, f, gamma, beta, alpha, 1e-5, Kernels::Composite).unwrap();
                let d = max_abs_diff(&fused, &comp);
                assert!(d < 1e-12, "{n}x{c} alpha {alpha}: composite differs by {d}");
            }
        }
    }
}
