//! Mean softmax cross-entropy over next-token targets (the composite twin is Candle's).

use super::custom::{Fused, FusedOp2, Input, Output};
use super::kernels::Kernels;
use super::real::{sum, Real, ROW_CHUNK};
use candle_core::{DType, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Mean next-token cross-entropy: logits (N, V), targets (N) u32 -> scalar.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => {
            logits.contiguous()?.apply_op2(&targets.contiguous()?, Fused(CrossEntropy { saved: Default::default() }))
        }
        Kernels::Composite => candle_nn::loss::cross_entropy(logits, targets),
    }
}

/// loss = mean_i (logsumexp(z_i) - z_i[t_i]); d loss / d z_i = (softmax(z_i) - onehot(t_i)) / N.
/// z (N, V), targets (N) u32 -> loss ().
struct CrossEntropy {
    /// softmax(z), kept for the backward pass.
    saved: std::sync::Mutex<Option<Tensor>>,
}

fn cross_entropy_kernel<T: Real>(z: &[T], targets: &[u32], v: usize) -> Result<(T, Vec<T>)> {
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross_entropy: target {bad} is outside the vocabulary of {v}");
    }
    let n = targets.len();
    let mut probs: Vec<T> = z.to_vec();
    let partial: Vec<T> = probs
        .par_chunks_mut(v * ROW_CHUNK)
        .zip(targets.par_chunks(ROW_CHUNK))
        .map(|(ps, ts)| {
            let mut total = T::zero();
            for (row, &t) in ps.chunks_mut(v).zip(ts) {
                let mx = row.iter().copied().fold(T::neg_infinity(), num_traits::Float::max);
                let picked = row[t as usize];
                T::exp_shifted(row, mx);
                let z_sum = sum(row);
                total = total + z_sum.ln() + mx - picked;
                let inv = z_sum.recip();
                for p in row.iter_mut() {
                    *p *= inv;
                }
            }
            total
        })
        .collect();
    let loss = partial.into_iter().fold(T::zero(), |a, b| a + b) / T::from_f64(n as f64);
    Ok((loss, probs))
}

fn cross_entropy_bwd_kernel<T: Real>(probs: &[T], targets: &[u32], v: usize, scale: T) -> Vec<T> {
    let mut dz: Vec<T> = probs.iter().map(|&p| p * scale).collect();
    for (row, &t) in dz.chunks_mut(v).zip(targets) {
        row[t as usize] -= scale;
    }
    dz
}

impl FusedOp2 for CrossEntropy {
    const NAME: &'static str = "keel-cross-entropy";
    fn cpu<T: Real>(&self, z: Input, targets: Input) -> Result<Output<T>> {
        let (n, v) = z.shape().dims2()?;
        let targets: &[u32] = targets.slice()?;
        if targets.len() != n {
            candle_core::bail!("cross_entropy: {n} rows of logits but {} targets", targets.len());
        }
        let (loss, probs) = cross_entropy_kernel::<T>(z.slice()?, targets, v)?;
        *self.saved.lock().expect("softmax") = Some(Tensor::from_vec(probs, (n, v), &candle_core::Device::Cpu)?);
        Ok((vec![loss], Shape::from(())))
    }
    fn bwd(
        &self,
        z: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        dloss: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = z.dims2()?;
        let scale = dloss.to_dtype(DType::F64)?.to_scalar::<f64>()? / n as f64;
        let saved = self.saved.lock().expect("softmax").take();
        let probs = match saved {
            Some(p) => p,
            None => candle_nn::ops::softmax(&z.detach(), D::Minus1)?,
        };
        debug_assert_eq!(probs.dims2()?, (n, v));
        let dz = probs.apply_op2_no_bwd(targets, &Fused(CrossEntropyBwd { scale }))?;
        Ok((Some(dz), None))
    }
}

/// dz = (probs - onehot(targets)) * scale: probs (N, V), targets (N) u32 -> dz (N, V).
struct CrossEntropyBwd {
    scale: f64,
}

impl FusedOp2 for CrossEntropyBwd {
    const NAME: &'static str = "keel-cross-entropy-bwd";
    fn cpu<T: Real>(&self, probs: Input, targets: Input) -> Result<Output<T>> {
        let v = probs.shape().dims2()?.1;
        let dz = cross_entropy_bwd_kernel(probs.slice()?, targets.slice()?, v, T::from_f64(self.scale));
        Ok((dz, probs.shape().clone()))
    }
}
