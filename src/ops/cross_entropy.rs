//! Mean softmax cross-entropy over next-token targets (the composite twin is Candle's).

#[cfg(feature = "cuda")]
use super::custom::{CudaInput, CudaOutput};
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
/// z (N, V), targets (N) u32 -> loss () in z's dtype.
///
/// On the CPU a target outside [0, V) is an error. On CUDA the forward cannot report one without
/// a host synchronization, so that row's loss is NaN (and with it the mean); no logit outside the
/// row is read, and the backward leaves that row's gradient at softmax(z_i) dloss / N.
///
/// On CUDA the forward keeps the per-row log-sum-exp (N f32) instead of the (N, V) softmax, and
/// the backward consumes the logits: it writes dz over z in place and returns z's storage as the
/// gradient (as Liger-Kernel and llm.c do), so no (N, V) buffer is allocated for dz itself. That
/// is safe in keel because the logits are made inside `Model::loss` (and the recompute head) by
/// the head's matmul (and a dtype cast under mixed precision), and the cross-entropy is their
/// only reader: the matmul's backward needs its inputs x and W, the cast's only the gradient,
/// never their output. Candle's backprop then adds the returned dz into the logits' gradient
/// entry (a fresh buffer) right after this backward returns, and hands that entry on. It does
/// mean that a backward runs once per forward (a second one is an error) and that logits passed
/// in by a caller, e.g. a `Var`, hold dz afterwards.
struct CrossEntropy {
    /// What the forward keeps for the backward pass.
    saved: std::sync::Mutex<Option<Saved>>,
}

/// The cross-entropy forward's state for its backward.
enum Saved {
    /// CPU: softmax(z) (N, V).
    Probs(Tensor),
    /// CUDA: the per-row statistics [loss_i (N) | lse_i (N)], f32; the backward reads the lse.
    #[cfg(feature = "cuda")]
    RowStats(candle_core::CudaStorage),
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
        let probs = Tensor::from_vec(probs, (n, v), &candle_core::Device::Cpu)?;
        *self.saved.lock().expect("softmax") = Some(Saved::Probs(probs));
        Ok((vec![loss], Shape::from(())))
    }
    /// `keel_cross_entropy_fwd_<dtype>` (one block per row: per-row loss and lse) then
    /// `keel_cross_entropy_mean_<dtype>` (one block: the mean, in a fixed order) of
    /// src/ops/cuda/cross_entropy.cu. Keeps the row statistics for the backward.
    #[cfg(feature = "cuda")]
    fn cuda(&self, z: CudaInput, targets: CudaInput) -> Result<CudaOutput> {
        use super::cuda_kernels::runtime::{self as rt, Arg};
        use super::cuda_kernels::Module;
        let (n, v) = z.shape().dims2()?;
        cuda::check(n, v, targets.shape().elem_count(), targets.dtype())?;
        let sfx = rt::dtype_suffix(z.dtype(), Self::NAME)?;
        let dev = z.device();
        let zp = rt::address(z.storage, z.layout, Self::NAME)?;
        let tp = rt::address(targets.storage, targets.layout, Self::NAME)?;
        let (stats, sp) = rt::alloc(dev, DType::F32, 2 * n)?;
        let (loss, lp) = rt::alloc(dev, z.dtype(), 1)?;
        let (ni, vi) = (n as i32, v as i32);
        if n > 0 {
            rt::launch(
                dev,
                Module::CrossEntropy,
                &format!("keel_cross_entropy_fwd_{sfx}"),
                rt::grid((n as u32, 1, 1), cuda::row_threads(v), 0),
                &[Arg::Ptr(zp), Arg::Ptr(tp), Arg::Ptr(sp), Arg::I32(ni), Arg::I32(vi)],
            )?;
        }
        // With n = 0 the mean is 0 / 0 = NaN, as on the CPU.
        rt::launch(
            dev,
            Module::CrossEntropy,
            &format!("keel_cross_entropy_mean_{sfx}"),
            rt::grid((1, 1, 1), cuda::MEAN_THREADS, 0),
            &[Arg::Ptr(sp), Arg::Ptr(lp), Arg::I32(ni)],
        )?;
        *self.saved.lock().expect("row stats") = Some(Saved::RowStats(stats));
        Ok((loss, Shape::from(())))
    }
    fn bwd(
        &self,
        z: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        dloss: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = z.dims2()?;
        let saved = self.saved.lock().expect("softmax").take();
        let probs = match saved {
            #[cfg(feature = "cuda")]
            Some(Saved::RowStats(stats)) => return Ok((Some(cuda::backward(z, targets, dloss, stats)?), None)),
            Some(Saved::Probs(p)) => p,
            None if z.device().is_cuda() => candle_core::bail!(
                "cross_entropy: a second backward through one CUDA forward (the first wrote dz over the logits)"
            ),
            None => candle_nn::ops::softmax(&z.detach(), D::Minus1)?,
        };
        // A host read of the upstream gradient: the CPU path only (CUDA reads it in the kernel).
        let scale = dloss.to_dtype(DType::F64)?.to_scalar::<f64>()? / n as f64;
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

/// The CUDA side of the cross-entropy: launch configuration and the in-place backward.
#[cfg(feature = "cuda")]
mod cuda {
    use super::super::cuda_kernels::runtime::{self as rt, Arg};
    use super::super::cuda_kernels::Module;
    use candle_core::backend::BackendStorage;
    use candle_core::{CudaStorage, DType, InplaceOp3, Layout, Result, Tensor};

    /// Threads of the one-block mean kernel: CE_MEAN_THREADS of cross_entropy.cu (fixed, so the
    /// summation order, and with it the loss, does not depend on anything but N).
    pub(super) const MEAN_THREADS: u32 = 512;
    /// CE_ROW_THREADS_MAX of cross_entropy.cu.
    const ROW_THREADS_MAX: u32 = 512;

    /// Threads per row block of the forward and backward: about one four-column vector per
    /// thread for small V, at most 512 (the kernels loop over longer rows).
    pub(super) fn row_threads(v: usize) -> u32 {
        (v.div_ceil(4).next_multiple_of(32) as u64).clamp(32, ROW_THREADS_MAX as u64) as u32
    }

    /// Shapes and dtypes the kernels take: N targets of u32, N and V within int arguments.
    pub(super) fn check(n: usize, v: usize, targets: usize, dtype: DType) -> Result<()> {
        if targets != n {
            candle_core::bail!("cross_entropy: {n} rows of logits but {targets} targets");
        }
        if dtype != DType::U32 {
            candle_core::bail!("cross_entropy: targets must be u32, not {dtype:?}");
        }
        if n > i32::MAX as usize / 2 || v > i32::MAX as usize {
            candle_core::bail!("cross_entropy: ({n}, {v}) logits are too large for the CUDA kernels' int arguments");
        }
        Ok(())
    }

    /// dz = (softmax(z) - onehot(t)) dloss / N, written over z (see [`super::CrossEntropy`]):
    /// returns z's storage as the gradient, detached so that it does not carry z's graph.
    pub(super) fn backward(z: &Tensor, targets: &Tensor, dloss: &Tensor, stats: CudaStorage) -> Result<Tensor> {
        let (n, v) = z.dims2()?;
        // The loss has z's dtype, so dloss does too unless a caller seeded another; converting
        // is a device op, never a host read.
        let dloss = if dloss.dtype() == z.dtype() { dloss.clone() } else { dloss.to_dtype(z.dtype())? };
        z.inplace_op3(&targets.contiguous()?, &dloss.contiguous()?, &InplaceBwd { stats, n, v })?;
        Ok(z.detach())
    }

    /// `keel_cross_entropy_bwd_<dtype>` of cross_entropy.cu on (z, targets, dloss), z in place.
    struct InplaceBwd {
        /// [loss_i | lse_i], (2N) f32, from the forward.
        stats: CudaStorage,
        n: usize,
        v: usize,
    }

    impl InplaceOp3 for InplaceBwd {
        fn name(&self) -> &'static str {
            "keel-cross-entropy-bwd"
        }

        fn cpu_fwd(
            &self,
            _: &mut candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            candle_core::bail!("keel-cross-entropy-bwd: the in-place backward is CUDA only")
        }

        fn cuda_fwd(
            &self,
            z: &mut CudaStorage,
            zl: &Layout,
            targets: &CudaStorage,
            tl: &Layout,
            dloss: &CudaStorage,
            gl: &Layout,
        ) -> Result<()> {
            let name = self.name();
            let (n, v) = (self.n, self.v);
            if zl.shape().dims() != [n, v] || tl.shape().elem_count() != n || gl.shape().elem_count() != 1 {
                candle_core::bail!("{name}: logits {:?}, targets {:?}, dloss {:?}", zl.shape(), tl.shape(), gl.shape());
            }
            if n == 0 {
                return Ok(());
            }
            let sfx = rt::dtype_suffix(z.dtype(), name)?;
            let zp = rt::address(z, zl, name)?;
            let tp = rt::address(targets, tl, name)?;
            let gp = rt::address(dloss, gl, name)?;
            let lse = rt::address_at(&self.stats, n)?;
            rt::launch(
                &z.device,
                Module::CrossEntropy,
                &format!("keel_cross_entropy_bwd_{sfx}"),
                rt::grid((n as u32, 1, 1), row_threads(v), 0),
                &[Arg::Ptr(zp), Arg::Ptr(tp), Arg::Ptr(lse), Arg::Ptr(gp), Arg::I32(n as i32), Arg::I32(v as i32)],
            )
        }
    }
}
