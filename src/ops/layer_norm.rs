//! LayerNorm with gain and bias.

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

/// Backward of y = xhat * gamma + beta, xhat = (x - mean) r, r = 1/sqrt(var + eps): with
/// g = dy * gamma, dx = r (g - mean(g) - xhat mean(g * xhat)), dgamma = sum_rows(dy * xhat),
/// dbeta = sum_rows(dy). Returns rows [dx (N, C) ; dgamma (1, C) ; dbeta (1, C)].
fn ln_bwd_kernel<T: Real>(x: &[T], gamma: &[T], dy: &[T], c: usize, eps: f64) -> Vec<T> {
    let n = x.len() / c;
    let mut out = unfilled((n + 2) * c);
    let eps = T::from_f64(eps);
    let inv_c = T::from_f64(1.0 / c as f64);
    let (dx, sums) = out.split_at_mut(n * c);
    let rows = ROW_CHUNK * c;
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(rows)
        .enumerate()
        .map(|(chunk, dxs)| {
            let base = chunk * rows;
            let mut acc = vec![T::zero(); 2 * c];
            let mut xh = vec![T::zero(); c];
            let mut g = vec![T::zero(); c];
            vectorized(
                #[inline(always)]
                || {
                    let (dgamma, dbeta) = acc.split_at_mut(c);
                    for (row, dxr) in dxs.chunks_exact_mut(c).enumerate() {
                        let off = base + row * c;
                        let (xr, dyr, gamma, xh, g, dxr, dgamma, dbeta) = (
                            &x[off..off + c],
                            &dy[off..off + c],
                            &gamma[..c],
                            &mut xh[..c],
                            &mut g[..c],
                            &mut dxr[..c],
                            &mut dgamma[..c],
                            &mut dbeta[..c],
                        );
                        let mean = sum(xr) * inv_c;
                        for i in 0..c {
                            xh[i] = xr[i] - mean;
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
        Ok((ln_bwd_kernel(x.slice()?, gamma.slice()?, dy.slice()?, c, self.eps), Shape::from((n + 2, c))))
    }
}
