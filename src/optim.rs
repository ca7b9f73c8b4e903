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
//! Candle ops with f32 moments.

use crate::config::{Schedule, TrainConfig};
use crate::model::Param;
use candle_core::{backend::BackendStorage, CpuStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor};
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
        _ => ts.iter().map(sum_squares).collect(),
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
                    let z = p.var.zeros_like()?.to_dtype(DType::F32)?;
                    Moments::Device { m: z.clone(), v: z }
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay, step: 0, moments })
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
                    *m = m_t.to_device(p.var.device())?.to_dtype(DType::F32)?;
                    *v = v_t.to_device(p.var.device())?.to_dtype(DType::F32)?;
                }
            }
        }
        self.step = step;
        Ok(())
    }

    /// One update. `grads[i]` belongs to `params[i]`; every gradient is multiplied by
    /// `grad_scale` first (the clipping factor).
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        for ((p, g), mom) in params.iter().zip(grads).zip(self.moments.iter_mut()) {
            let wd = if p.decay { self.weight_decay } else { 0.0 };
            let g = g.contiguous()?;
            let hyper = Hyper { lr, wd, beta1: self.beta1, beta2: self.beta2, eps: self.eps, bc1, bc2, grad_scale };
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
    use rayon::prelude::*;
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
