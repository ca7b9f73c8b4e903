//! AdamW with decoupled weight decay, the learning-rate schedule, and gradient norms.
//!
//! keel owns its AdamW (candle-nn's decays every Var and hides its moments). The update follows
//! PyTorch's `torch.optim.AdamW`:
//!
//! ```text
//! p <- p * (1 - lr * wd)               (2-D weights only)
//! m <- b1 m + (1 - b1) g
//! v <- b2 v + (1 - b2) g^2
//! p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! ```
//!
//! On CPU the moments live in host memory in the parameter's dtype (as PyTorch keeps them) and the
//! update is one fused, parallel, in-place pass per parameter; elsewhere it is composed from
//! Candle ops with f32 moments. On CUDA with keel's fused kernels (`train.kernels = "fused"`,
//! f32 or bf16 parameters), [`AdamW::clip_and_step`] instead runs three multi-tensor kernels
//! (src/ops/cuda/adamw.cu): the gradients' per-tensor sums of squares, the global norm with the
//! clip coefficient, and the update of every parameter in place, with no host synchronization
//! until the per-tensor sums are read back at the end.

use crate::config::{Schedule, TrainConfig};
use crate::model::Param;
use candle_core::{backend::BackendStorage, CpuStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Learning rate after `step` optimizer steps have been started (1-based): linear warmup from 0 to
/// `lr` over `warmup_steps`, then the schedule down to `min_lr` at `steps`.
pub fn lr_at(t: &TrainConfig, step: usize) -> f64 {
    if t.warmup_steps > 0 && step <= t.warmup_steps {
        return t.lr * step as f64 / t.warmup_steps as f64;
    }
    let span = t.steps.saturating_sub(t.warmup_steps).max(1) as f64;
    let progress = ((step - t.warmup_steps.min(step)) as f64 / span).clamp(0.0, 1.0);
    match t.schedule {
        Schedule::Constant => t.lr,
        Schedule::Linear => t.lr + (t.min_lr - t.lr) * progress,
        Schedule::Cosine => t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// A one-element tensor's value as f64 (a loss, a norm).
pub fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Sum of squares of a tensor's elements, accumulated in f64.
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    if let Storage::Cpu(cpu) = &*storage {
        let (a, b) = layout.contiguous_offsets().expect("contiguous");
        return Ok(match cpu.dtype() {
            DType::F32 => cpu.as_slice::<f32>()?[a..b].iter().map(|&x| (x as f64) * (x as f64)).sum(),
            DType::F64 => cpu.as_slice::<f64>()?[a..b].iter().map(|&x| x * x).sum(),
            _ => t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?,
        });
    }
    drop(storage);
    t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

/// [`sum_squares`] of every tensor. Off the CPU the sums stay on the device until one transfer
/// at the end: one synchronization per step instead of one per parameter.
pub fn sum_squares_all(ts: &[Tensor]) -> Result<Vec<f64>> {
    match ts.first() {
        Some(t) if !t.device().is_cpu() => sum_squares_on_device(ts),
        // One task per parameter: each sum keeps its sequential order, so the values do not depend
        // on the thread count (the f64 sum is latency-bound, about 2% of a step at R on one thread).
        _ => ts.par_iter().map(sum_squares).collect(),
    }
}

/// The off-CPU path of [`sum_squares_all`], in stock Candle ops (so it runs, and is tested, on the
/// CPU too).
fn sum_squares_on_device(ts: &[Tensor]) -> Result<Vec<f64>> {
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let sums = ts.iter().map(|t| t.to_dtype(DType::F64)?.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
    Tensor::stack(&sums, 0)?.to_vec1::<f64>()
}

/// What [`AdamW::clip_and_step`] saw of the gradients.
#[derive(Debug, Clone)]
pub struct GradStats {
    /// Sum of squared gradient elements per parameter (in `params` order), accumulated in f64.
    pub param_sq: Vec<f64>,
    /// Global gradient norm before clipping: `sqrt(sum(param_sq))`, summed on the host in order.
    pub grad_norm: f64,
    /// False when the gradient norm was not finite; no update was applied then.
    pub finite: bool,
}

impl GradStats {
    /// The gradients' sums of squares and norm, without an update ([`sum_squares_all`]).
    pub fn measure(grads: &[Tensor]) -> Result<GradStats> {
        let param_sq = sum_squares_all(grads)?;
        let grad_norm = param_sq.iter().sum::<f64>().sqrt();
        Ok(GradStats { param_sq, grad_norm, finite: grad_norm.is_finite() })
    }
}

/// The clipping factor as PyTorch's `clip_grad_norm_` applies it above the threshold:
/// `max_norm / (norm + 1e-6)` when `0 < max_norm < norm`, else 1 (`max_norm = 0`: no clipping).
pub fn clip_scale(max_norm: f64, grad_norm: f64) -> f64 {
    if max_norm > 0.0 && grad_norm > max_norm {
        max_norm / (grad_norm + 1e-6)
    } else {
        1.0
    }
}

enum Moments {
    HostF32 { m: Vec<f32>, v: Vec<f32> },
    HostF64 { m: Vec<f64>, v: Vec<f64> },
    Device { m: Tensor, v: Tensor },
}

pub struct AdamW {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
    moments: Vec<Moments>,
    /// keel's multi-tensor CUDA kernels, when the parameters live on a CUDA device and
    /// `train.kernels` resolves to the fused kernels there (see [`AdamW::fused_on_device`]).
    #[cfg(feature = "cuda")]
    cuda: Option<cuda_fused::FusedAdamW>,
}

impl AdamW {
    pub fn new(params: &[Param], t: &TrainConfig) -> Result<Self> {
        let moments = params
            .iter()
            .map(|p| {
                let n = p.var.elem_count();
                Ok(if p.var.device().is_cpu() && p.var.dtype() == DType::F32 {
                    Moments::HostF32 { m: vec![0.0; n], v: vec![0.0; n] }
                } else if p.var.device().is_cpu() && p.var.dtype() == DType::F64 {
                    Moments::HostF64 { m: vec![0.0; n], v: vec![0.0; n] }
                } else {
                    // Two storages: the CUDA kernels update both moments in place.
                    let zeros = || Tensor::zeros(p.var.shape(), DType::F32, p.var.device());
                    Moments::Device { m: zeros()?, v: zeros()? }
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
            step: 0,
            moments,
            #[cfg(feature = "cuda")]
            cuda: cuda_fused::FusedAdamW::for_params(params, t.kernels)?,
        })
    }

    /// True when [`AdamW::clip_and_step`] runs keel's multi-tensor CUDA kernels (parameters on a
    /// CUDA device, f32 or bf16, `train.kernels = "fused"`); `"composite"` keeps the composed
    /// per-parameter update, to compare the two.
    pub fn fused_on_device(&self) -> bool {
        #[cfg(feature = "cuda")]
        if self.cuda.is_some() {
            return true;
        }
        false
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The moments as named tensors (`{param}.m`, `{param}.v`), for checkpoints.
    pub fn state_tensors(&self, params: &[Param]) -> Result<Vec<(String, Tensor)>> {
        let cpu = candle_core::Device::Cpu;
        let mut out = Vec::with_capacity(2 * params.len());
        for (p, mom) in params.iter().zip(&self.moments) {
            let shape = p.var.shape();
            let (m, v) = match mom {
                Moments::HostF32 { m, v } => (Tensor::from_slice(m, shape, &cpu)?, Tensor::from_slice(v, shape, &cpu)?),
                Moments::HostF64 { m, v } => (Tensor::from_slice(m, shape, &cpu)?, Tensor::from_slice(v, shape, &cpu)?),
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("{}.m", p.name), m));
            out.push((format!("{}.v", p.name), v));
        }
        Ok(out)
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(
        &mut self,
        params: &[Param],
        tensors: &std::collections::HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        for (p, mom) in params.iter().zip(self.moments.iter_mut()) {
            let get = |suffix: &str| -> Result<Tensor> {
                let name = format!("{}.{suffix}", p.name);
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {name}")))?;
                if t.shape() != p.var.shape() {
                    candle_core::bail!(
                        "optimizer state {name} has shape {:?}, the parameter {:?}",
                        t.shape(),
                        p.var.shape()
                    );
                }
                Ok(t.clone())
            };
            let (m_t, v_t) = (get("m")?, get("v")?);
            match mom {
                Moments::HostF32 { m, v } => {
                    *m = m_t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                    *v = v_t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                }
                Moments::HostF64 { m, v } => {
                    *m = m_t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
                    *v = v_t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
                }
                Moments::Device { m, v } => {
                    // Copies of their own: the CUDA kernels update the moments in place, which must
                    // not reach the caller's tensors.
                    let own = |t: Tensor| -> Result<Tensor> {
                        let t = t.to_device(p.var.device())?.to_dtype(DType::F32)?;
                        if t.is_contiguous() {
                            t.copy()
                        } else {
                            t.contiguous()
                        }
                    };
                    *m = own(m_t)?;
                    *v = own(v_t)?;
                }
            }
        }
        self.step = step;
        Ok(())
    }

    /// Clips the gradients to the global norm `max_norm` (0: no clipping; see [`clip_scale`]) and
    /// takes one update, skipping it when the norm is not finite. On CUDA with the fused kernels
    /// all of it stays on the device (one synchronization, to read the per-parameter sums back);
    /// elsewhere it is [`sum_squares_all`], [`clip_scale`] and [`AdamW::step`].
    pub fn clip_and_step(&mut self, params: &[Param], grads: &[Tensor], lr: f64, max_norm: f64) -> Result<GradStats> {
        #[cfg(feature = "cuda")]
        if self.cuda.is_some() {
            let step = self.step + 1;
            // The kernels apply each tensor's decay flag and compute the clip scale themselves.
            let hyper = self.hyper(step, lr, 1.0);
            let k = self.cuda.as_mut().expect("checked");
            let (param_sq, skipped) = k.clip_and_step(params, grads, &self.moments, hyper, max_norm)?;
            if !skipped {
                self.step = step;
            }
            let grad_norm = param_sq.iter().sum::<f64>().sqrt();
            return Ok(GradStats { param_sq, grad_norm, finite: !skipped });
        }
        let stats = GradStats::measure(grads)?;
        if stats.finite {
            self.step(params, grads, lr, clip_scale(max_norm, stats.grad_norm))?;
        }
        Ok(stats)
    }

    /// The update's scalars at optimizer step `step` (1-based), with the configured weight decay
    /// (a parameter that is not decayed sets `wd` to 0).
    fn hyper(&self, step: u64, lr: f64, grad_scale: f64) -> Hyper {
        let (beta1, beta2) = (self.beta1, self.beta2);
        let (bc1, bc2) = (1.0 - beta1.powi(step as i32), 1.0 - beta2.powi(step as i32));
        Hyper { lr, wd: self.weight_decay, beta1, beta2, eps: self.eps, bc1, bc2, grad_scale }
    }

    /// One update. `grads[i]` belongs to `params[i]`; every gradient is multiplied by
    /// `grad_scale` first (the clipping factor).
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let decayed = self.hyper(self.step, lr, grad_scale);
        let Hyper { bc1, bc2, .. } = decayed;
        for ((p, g), mom) in params.iter().zip(grads).zip(self.moments.iter_mut()) {
            let wd = if p.decay { self.weight_decay } else { 0.0 };
            let g = g.contiguous()?;
            let hyper = Hyper { wd, ..decayed };
            match mom {
                Moments::HostF32 { m, v } => {
                    let op = HostAdamW { moments: Mutex::new(HostMoments::F32(m, v)), hyper };
                    p.var.as_tensor().inplace_op2(&g, &op)?;
                }
                Moments::HostF64 { m, v } => {
                    let op = HostAdamW { moments: Mutex::new(HostMoments::F64(m, v)), hyper };
                    p.var.as_tensor().inplace_op2(&g, &op)?;
                }
                Moments::Device { m, v } => {
                    // Detached throughout: moments live across steps and must not hold any graph.
                    let g32 = (g.detach().to_dtype(DType::F32)? * grad_scale)?;
                    *m = ((&*m * self.beta1)? + (&g32 * (1.0 - self.beta1))?)?.detach();
                    *v = ((&*v * self.beta2)? + (g32.sqr()? * (1.0 - self.beta2))?)?.detach();
                    let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + self.eps)?)?;
                    let p32 = p.var.as_tensor().detach().to_dtype(DType::F32)?;
                    let new = ((p32 * (1.0 - lr * wd))? - (update * lr)?)?;
                    p.var.set(&new.to_dtype(p.var.dtype())?)?;
                }
            }
        }
        Ok(())
    }
}

/// The CUDA side of [`AdamW::clip_and_step`]: keel's multi-tensor kernels of
/// src/ops/cuda/adamw.cu, launched over all parameters at once.
#[cfg(feature = "cuda")]
mod cuda_fused {
    use super::{Hyper, Moments};
    use crate::model::Param;
    use crate::ops::cuda_kernels::runtime::{self, grid, Arg};
    use crate::ops::cuda_kernels::Module;
    use crate::ops::{KernelChoice, Kernels};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, PinnedHostSlice};
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::{DType, Device, Result, Storage, Tensor};
    use std::sync::Arc;

    /// Elements per chunk, the unit of work of one block (a multiple of 4; see adamw.cu). Fixed,
    /// so the sums do not depend on the GPU.
    pub const CHUNK: usize = 16384;
    /// `ADAMW_THREADS` and `ADAMW_CLIP_THREADS` of adamw.cu.
    const THREADS: u32 = 256;
    const CLIP_THREADS: u32 = 512;
    /// The kernels loop over chunks, so any grid covers them; this only bounds the launch.
    const MAX_BLOCKS: usize = 65535;
    /// Words of the tensor table per tensor (params, grads, ms, vs, lens, decays, chunk_start),
    /// plus one for the final chunk_start.
    const TABLE_COLUMNS: usize = 7;

    fn err(e: impl std::fmt::Display) -> candle_core::Error {
        candle_core::Error::Cuda(format!("keel adamw: {e}").into())
    }

    /// The device address of a contiguous CUDA tensor's first element.
    fn address(t: &Tensor, what: &str) -> Result<u64> {
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cuda(c) => runtime::address(c, l, what),
            _ => candle_core::bail!("keel adamw: {what} is not on a CUDA device"),
        }
    }

    /// `slot` holding at least `n` elements (its contents are not kept when it grows).
    fn grown<'a, T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
        slot: &'a mut Option<CudaSlice<T>>,
        stream: &Arc<CudaStream>,
        n: usize,
    ) -> Result<&'a mut CudaSlice<T>> {
        if slot.as_ref().is_none_or(|s| s.len() < n) {
            // SAFETY: every reader of these buffers reads only what the step writes first.
            *slot = Some(unsafe { stream.alloc::<T>(n.max(1)) }.map_err(err)?);
        }
        Ok(slot.as_mut().expect("just filled"))
    }

    fn ptr<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
        let (p, _record) = s.device_ptr(stream);
        p
    }

    /// The device state of the fused step: the tensor table (a pinned host copy and its device
    /// twin), the per-chunk partial sums and the per-tensor sums with the clip results. Grown on
    /// demand, reused every step.
    pub struct FusedAdamW {
        dev: CudaDevice,
        /// `f32` or `bf16`: the parameters' and gradients' storage type.
        suffix: &'static str,
        dtype: DType,
        host_table: Option<PinnedHostSlice<i64>>,
        table: Option<CudaSlice<i64>>,
        partials: Option<CudaSlice<f64>>,
        /// (n + 3) f64: per-tensor sums, norm, clip coefficient, skip flag.
        out: Option<CudaSlice<f64>>,
    }

    impl FusedAdamW {
        /// The fused state when every parameter is on one CUDA device in one dtype that
        /// `kernels` resolves to keel's fused kernels for (f32, bf16); `None` otherwise.
        pub fn for_params(params: &[Param], kernels: KernelChoice) -> Result<Option<FusedAdamW>> {
            let Some(first) = params.first() else { return Ok(None) };
            let (device, dtype) = (first.var.device(), first.var.dtype());
            let Device::Cuda(dev) = device else { return Ok(None) };
            if Kernels::resolve(kernels, device, dtype) != Kernels::Fused
                || !matches!(dtype, DType::F32 | DType::BF16)
                || params.iter().any(|p| p.var.dtype() != dtype || !p.var.device().same_device(device))
            {
                return Ok(None);
            }
            let suffix = runtime::dtype_suffix(dtype, "keel adamw")?;
            Ok(Some(FusedAdamW {
                dev: dev.clone(),
                suffix,
                dtype,
                host_table: None,
                table: None,
                partials: None,
                out: None,
            }))
        }

        /// Per-parameter sums of squares of `grads`, global norm, clip coefficient and, unless
        /// the norm is not finite, the AdamW update of `params` and `moments` in place: three
        /// launches, then one copy of the sums to the host. `hyper` gives the step's learning
        /// rate, weight decay, betas, eps and bias corrections (its grad_scale is unused).
        /// Returns the sums and whether the update was skipped.
        pub fn clip_and_step(
            &mut self,
            params: &[Param],
            grads: &[Tensor],
            moments: &[Moments],
            hyper: Hyper,
            max_norm: f64,
        ) -> Result<(Vec<f64>, bool)> {
            let n = params.len();
            if grads.len() != n || moments.len() != n {
                candle_core::bail!("keel adamw: {n} parameters, {} gradients, {} moments", grads.len(), moments.len());
            }
            if n == 0 {
                return Ok((Vec::new(), false));
            }
            let stream = self.dev.cuda_stream();
            // The table, written straight into pinned memory so that its upload is asynchronous.
            // Contiguous copies of the gradients (if any had to be made) live until the end.
            let words = TABLE_COLUMNS * n + 1;
            if self.host_table.as_ref().is_none_or(|h| h.len() < words) {
                // SAFETY: zero-filled below before any read.
                let mut h = unsafe { stream.context().alloc_pinned::<i64>(words) }.map_err(err)?;
                // SAFETY: `h` holds `words` i64s; nothing else uses it yet.
                unsafe { std::ptr::write_bytes(h.as_mut_ptr().map_err(err)?, 0, words) };
                self.host_table = Some(h);
                // The device twin must be as long as the pinned slice it is copied from.
                self.table = None;
            }
            let host = self.host_table.as_mut().expect("just filled");
            let cap = host.len();
            // Waits for the previous step's upload from this buffer (long done: its step read
            // the sums back).
            let table = host.as_mut_slice().map_err(err)?;
            let mut keep = Vec::with_capacity(n);
            let mut chunks = 0usize;
            table[6 * n] = 0;
            for (t, ((p, g), mom)) in params.iter().zip(grads).zip(moments).enumerate() {
                let Moments::Device { m, v } = mom else {
                    candle_core::bail!("keel adamw: parameter {} has host moments on a CUDA device", p.name)
                };
                let len = p.var.elem_count();
                if g.dtype() != self.dtype || p.var.dtype() != self.dtype {
                    candle_core::bail!(
                        "keel adamw: parameter {} is {:?} and its gradient {:?}; the fused step needs both {:?}",
                        p.name,
                        p.var.dtype(),
                        g.dtype(),
                        self.dtype
                    );
                }
                if g.elem_count() != len || m.elem_count() != len || v.elem_count() != len {
                    candle_core::bail!("keel adamw: gradient or moments of {} do not match its shape", p.name);
                }
                if m.dtype() != DType::F32 || v.dtype() != DType::F32 {
                    candle_core::bail!("keel adamw: the moments of {} are not f32", p.name);
                }
                let g = g.contiguous()?;
                let (pa, ga) = (address(p.var.as_tensor(), "parameter")?, address(&g, "gradient")?);
                let (ma, va) = (address(m, "first moment")?, address(v, "second moment")?);
                if ma == va && len > 0 {
                    candle_core::bail!("keel adamw: the two moments of {} share their storage", p.name);
                }
                table[t] = pa as i64;
                table[n + t] = ga as i64;
                table[2 * n + t] = ma as i64;
                table[3 * n + t] = va as i64;
                table[4 * n + t] = len as i64;
                table[5 * n + t] = p.decay as i64;
                chunks += len.div_ceil(CHUNK);
                table[6 * n + t + 1] = chunks as i64;
                keep.push(g);
            }
            let dev_table = grown(&mut self.table, &stream, cap)?;
            stream.memcpy_htod(&*host, dev_table).map_err(err)?;
            let launched = self.launch(&stream, n, chunks, max_norm, hyper);
            if launched.is_err() {
                // The pinned table must not be rewritten while its upload may still be pending.
                let _ = stream.synchronize();
            }
            let out_slice = launched?;
            // The step's one synchronization: the host needs the sums for its norms and CSVs.
            let back = stream.clone_dtoh(&out_slice.slice(0..n + 3)).map_err(err)?;
            drop(keep);
            let skipped = back[n + 2] != 0.0;
            Ok((back[..n].to_vec(), skipped))
        }

        /// The three launches over the uploaded table; returns the (n + 3) output buffer.
        fn launch(
            &mut self,
            stream: &Arc<CudaStream>,
            n: usize,
            chunks: usize,
            max_norm: f64,
            hyper: Hyper,
        ) -> Result<&CudaSlice<f64>> {
            let i32_arg = |x: usize, what: &str| -> Result<Arg> {
                i32::try_from(x).map(Arg::I32).map_err(|_| err(format!("{what} {x} does not fit the kernels' int")))
            };
            let base = ptr(self.table.as_ref().expect("uploaded"), stream);
            let col = |k: usize| Arg::Ptr(base + (k * n * std::mem::size_of::<i64>()) as u64);
            let (params_a, grads_a, ms_a, vs_a, lens_a, decays_a, starts_a) =
                (col(0), col(1), col(2), col(3), col(4), col(5), col(6));
            let partials = ptr(grown(&mut self.partials, stream, chunks)?, stream);
            let out = ptr(grown(&mut self.out, stream, n + 3)?, stream);
            let (n_arg, chunk_arg) = (i32_arg(n, "tensor count")?, i32_arg(CHUNK, "chunk")?);
            let blocks = chunks.clamp(1, MAX_BLOCKS) as u32;
            let sfx = self.suffix;
            runtime::launch(
                &self.dev,
                Module::AdamW,
                &format!("keel_adamw_sumsq_{sfx}"),
                grid((blocks, 1, 1), THREADS, 0),
                &[grads_a, lens_a, starts_a, n_arg, chunk_arg, Arg::Ptr(partials)],
            )?;
            runtime::launch(
                &self.dev,
                Module::AdamW,
                "keel_adamw_clip_f64",
                grid((1, 1, 1), CLIP_THREADS, 0),
                &[Arg::Ptr(partials), starts_a, n_arg, Arg::I64(max_norm.to_bits() as i64), Arg::Ptr(out)],
            )?;
            // The scalars rounded to f32 exactly as the CPU's `adamw_update` rounds them.
            let h = hyper;
            runtime::launch(
                &self.dev,
                Module::AdamW,
                &format!("keel_adamw_update_{sfx}"),
                grid((blocks, 1, 1), THREADS, 0),
                &[
                    params_a,
                    grads_a,
                    ms_a,
                    vs_a,
                    lens_a,
                    decays_a,
                    starts_a,
                    n_arg,
                    chunk_arg,
                    Arg::Ptr(out + (n * std::mem::size_of::<f64>()) as u64),
                    Arg::F32(h.beta1 as f32),
                    Arg::F32(h.beta2 as f32),
                    Arg::F32(h.eps as f32),
                    Arg::F32((h.lr / h.bc1) as f32),
                    Arg::F32((1.0 / h.bc2) as f32),
                    Arg::F32((1.0 - h.lr * h.wd) as f32),
                ],
            )?;
            Ok(self.out.as_ref().expect("grown"))
        }
    }
}

#[derive(Clone, Copy)]
struct Hyper {
    lr: f64,
    wd: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bc1: f64,
    bc2: f64,
    grad_scale: f64,
}

enum HostMoments<'a> {
    F32(&'a mut Vec<f32>, &'a mut Vec<f32>),
    F64(&'a mut Vec<f64>, &'a mut Vec<f64>),
}

struct HostAdamW<'a> {
    moments: Mutex<HostMoments<'a>>,
    hyper: Hyper,
}

/// Elements per parallel task: fixed, so the update does not depend on the thread count.
const ADAMW_CHUNK: usize = 1 << 14;

fn adamw_update<T: crate::ops::Real>(h: Hyper, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    let c = |x: f64| T::from_f64(x);
    let (b1, b2, one) = (c(h.beta1), c(h.beta2), T::one());
    let (decay, step, inv_bc2, eps, gs) =
        (c(1.0 - h.lr * h.wd), c(h.lr / h.bc1), c(1.0 / h.bc2), c(h.eps), c(h.grad_scale));
    p.par_chunks_mut(ADAMW_CHUNK)
        .zip(g.par_chunks(ADAMW_CHUNK))
        .zip(m.par_chunks_mut(ADAMW_CHUNK))
        .zip(v.par_chunks_mut(ADAMW_CHUNK))
        .for_each(|(((p, g), m), v)| {
            crate::ops::vectorized(
                #[inline(always)]
                || {
                    let n = p.len();
                    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
                    for i in 0..n {
                        let gi = g[i] * gs;
                        let mi = b1 * m[i] + (one - b1) * gi;
                        let vi = b2 * v[i] + (one - b2) * gi * gi;
                        m[i] = mi;
                        v[i] = vi;
                        p[i] = p[i] * decay - step * mi / ((vi * inv_bc2).sqrt() + eps);
                    }
                },
            )
        });
}

impl InplaceOp2 for HostAdamW<'_> {
    fn name(&self) -> &'static str {
        "keel-adamw"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (a, b) = l1.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("param not contiguous".into()))?;
        let (ga, gb) = l2.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("grad not contiguous".into()))?;
        let mut moments = self.moments.lock().expect("moments");
        match (s1, s2, &mut *moments) {
            (CpuStorage::F32(p), CpuStorage::F32(g), HostMoments::F32(m, v)) => {
                adamw_update(self.hyper, &mut p[a..b], &g[ga..gb], m, v)
            }
            (CpuStorage::F64(p), CpuStorage::F64(g), HostMoments::F64(m, v)) => {
                adamw_update(self.hyper, &mut p[a..b], &g[ga..gb], m, v)
            }
            _ => candle_core::bail!("keel adamw: parameter, gradient and moments must share a dtype (f32 or f64)"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Group;
    use candle_core::{Device, Var};

    #[test]
    fn device_sums_of_squares_match_the_host_ones() {
        let ts: Vec<Tensor> = [(3usize, 5usize), (1, 1), (64, 7)]
            .iter()
            .enumerate()
            .map(|(i, &(r, c))| {
                let data: Vec<f32> = (0..r * c).map(|j| ((i * 31 + j * 7) % 13) as f32 * 0.37 - 2.0).collect();
                Tensor::from_vec(data, (r, c), &Device::Cpu).unwrap()
            })
            .collect();
        let host: Vec<f64> = ts.iter().map(|t| sum_squares(t).unwrap()).collect();
        let device = sum_squares_on_device(&ts).unwrap();
        assert_eq!(host.len(), device.len());
        for (h, d) in host.iter().zip(&device) {
            assert!((h - d).abs() <= 1e-12 * h.max(1.0), "{h} vs {d}");
        }
        assert!(sum_squares_on_device(&[]).unwrap().is_empty());
    }

    #[test]
    fn schedule_shapes() {
        let mut t = TrainConfig { steps: 100, warmup_steps: 10, lr: 1.0, min_lr: 0.1, ..Default::default() };
        assert!((lr_at(&t, 5) - 0.5).abs() < 1e-12);
        assert!((lr_at(&t, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(&t, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(&t, 55) - 0.55).abs() < 1e-12); // cosine midpoint
        t.schedule = Schedule::Linear;
        assert!((lr_at(&t, 55) - 0.55).abs() < 1e-12);
        assert!((lr_at(&t, 32) - (1.0 - 0.9 * 22.0 / 90.0)).abs() < 1e-12);
        t.schedule = Schedule::Constant;
        assert_eq!(lr_at(&t, 90), 1.0);
    }

    /// The update loop runs compiled for AVX2 or AVX-512 where the CPU has it: bit-identical to
    /// the baseline.
    #[test]
    fn adamw_simd_is_bit_identical() {
        let h =
            Hyper { lr: 3e-3, wd: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, bc1: 0.19, bc2: 0.0975, grad_scale: 0.7 };
        let n = 3 * ADAMW_CHUNK + 37;
        let wave = |k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
        use crate::ops::SimdLevel;
        let run = |level: SimdLevel| {
            crate::ops::set_kernel_simd_limit(level);
            let (mut p, g, mut m, mut v) =
                (wave(0.37), wave(1.3), wave(0.11), wave(0.07).iter().map(|x| x * x).collect::<Vec<f32>>());
            adamw_update(h, &mut p, &g, &mut m, &mut v);
            crate::ops::set_simd(true);
            (p, m, v)
        };
        let a = run(SimdLevel::Baseline);
        // Every level this CPU has (AVX2, AVX-512) against the baseline.
        for level in SimdLevel::ALL.into_iter().filter(|&l| l <= SimdLevel::detected()).skip(1) {
            let b = run(level);
            assert!(a.0.iter().zip(&b.0).all(|(x, y)| x.to_bits() == y.to_bits()), "{level:?}");
            assert!(a.1.iter().zip(&b.1).all(|(x, y)| x.to_bits() == y.to_bits()), "{level:?}");
            assert!(a.2.iter().zip(&b.2).all(|(x, y)| x.to_bits() == y.to_bits()), "{level:?}");
        }
    }

    #[test]
    fn clip_scale_follows_clip_grad_norm() {
        assert_eq!(clip_scale(0.0, 1e9), 1.0);
        assert_eq!(clip_scale(1.0, 0.5), 1.0);
        assert_eq!(clip_scale(1.0, 1.0), 1.0);
        assert_eq!(clip_scale(1.0, 4.0), 1.0 / (4.0 + 1e-6));
        assert_eq!(clip_scale(1.0, f64::NAN), 1.0);
    }

    /// Off the fused CUDA path `clip_and_step` is the trainer's sequence (sums, clip, step), bit
    /// for bit; a non-finite gradient changes nothing and is not counted as a step.
    #[test]
    fn clip_and_step_on_cpu_is_sums_clip_step() {
        let dev = Device::Cpu;
        let make = || {
            [(3usize, 5usize), (1, 1), (64, 7)]
                .iter()
                .enumerate()
                .map(|(i, &(r, c))| {
                    let data: Vec<f32> = (0..r * c).map(|j| ((i * 17 + j * 5) % 11) as f32 * 0.1 - 0.5).collect();
                    let var = Var::from_vec(data, (r, c), &dev).unwrap();
                    Param { name: format!("p{i}"), var, decay: r > 1, group: Group::Head }
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (make(), make());
        let t = TrainConfig { weight_decay: 0.1, ..Default::default() };
        let (mut oa, mut ob) = (AdamW::new(&a, &t).unwrap(), AdamW::new(&b, &t).unwrap());
        assert!(!oa.fused_on_device());
        let grads = |k: f32| -> Vec<Tensor> {
            a.iter().map(|p| (p.var.as_tensor().sin().unwrap() * k as f64).unwrap()).collect()
        };
        for (k, max_norm) in [(1.0f32, 0.0), (3.0, 1.0), (0.01, 1.0)] {
            let g = grads(k);
            let s = oa.clip_and_step(&a, &g, 1e-2, max_norm).unwrap();
            let sq = sum_squares_all(&g).unwrap();
            let norm = sq.iter().sum::<f64>().sqrt();
            ob.step(&b, &g, 1e-2, clip_scale(max_norm, norm)).unwrap();
            assert!(s.finite);
            assert_eq!(s.param_sq, sq);
            assert_eq!(s.grad_norm.to_bits(), norm.to_bits());
            for (p, q) in a.iter().zip(&b) {
                let (x, y) = (p.var.as_tensor().flatten_all().unwrap(), q.var.as_tensor().flatten_all().unwrap());
                let (x, y) = (x.to_vec1::<f32>().unwrap(), y.to_vec1::<f32>().unwrap());
                assert!(x.iter().zip(&y).all(|(u, v)| u.to_bits() == v.to_bits()), "{}", p.name);
            }
        }
        let before: Vec<Vec<f32>> =
            a.iter().map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        let mut g = grads(1.0);
        g[1] = Tensor::new(&[[f32::NAN]], &dev).unwrap();
        let s = oa.clip_and_step(&a, &g, 1e-2, 1.0).unwrap();
        assert!(!s.finite && s.param_sq[1].is_nan());
        assert_eq!(oa.steps_taken(), 3);
        for (p, old) in a.iter().zip(&before) {
            assert_eq!(&p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), old);
        }
    }

    /// Two AdamW steps against values worked out by hand from the update equations.
    #[test]
    fn adamw_matches_closed_form() {
        let dev = Device::Cpu;
        let var = Var::from_vec(vec![1.0f32, -2.0], (1, 2), &dev).unwrap();
        let params = vec![Param { name: "w".into(), var: var.clone(), decay: true, group: Group::Head }];
        let t = TrainConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(&params, &t).unwrap();
        let g = Tensor::new(&[[0.5f32, -1.0]], &dev).unwrap();
        opt.step(&params, std::slice::from_ref(&g), 0.1, 1.0).unwrap();
        // Step 1: m_hat = g, v_hat = g^2 -> update = sign(g) (eps negligible).
        let p1 = [1.0 * (1.0 - 0.01) - 0.1, -2.0 * (1.0 - 0.01) + 0.1];
        let got = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(p1) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Step 2 with the same gradient scaled by 0.5 via grad_scale: m = 0.9*0.1g... computed directly.
        opt.step(&params, &[g], 0.1, 0.5).unwrap();
        let got = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, g0) in [0.5f64, -1.0].iter().enumerate() {
            let (b1, b2) = (0.9f64, 0.99f64);
            let m = b1 * (1.0 - b1) * g0 + (1.0 - b1) * 0.5 * g0;
            let v = b2 * (1.0 - b2) * g0 * g0 + (1.0 - b2) * 0.25 * g0 * g0;
            let upd = (m / (1.0 - b1 * b1)) / ((v / (1.0 - b2 * b2)).sqrt() + 1e-8);
            let want = p1[i] * (1.0 - 0.01) - 0.1 * upd;
            assert!((got[i] as f64 - want).abs() < 1e-5, "{} vs {want}", got[i]);
        }
    }
}
