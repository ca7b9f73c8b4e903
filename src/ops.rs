//! The model's differentiable building blocks, each in two implementations:
//!
//! - `composite`: plain Candle ops that all have a backward (no `candle_nn::ops::rms_norm`,
//!   `softmax_last_dim`, fast `rope`, `sdpa`: those are forward-only and silently cut the graph,
//!   see shared/candle-notes.md). Used on CUDA/Metal and as the reference in tests.
//! - fused CPU kernels (CustomOps with hand-written backward, f32 and f64), used on CPU because
//!   Candle's composite ops pay an allocation and a pass over memory per elementary op.
//!
//! Every fused op is tested against its composite twin, forward and backward.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result,
    Shape, Tensor, WithDType, D,
};
use rayon::prelude::*;
use std::sync::Arc;

/// Which implementation the model's ops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Fused,
    Composite,
}

impl Kernels {
    /// Fused kernels exist for CPU tensors in f32/f64.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            Kernels::Fused
        } else {
            Kernels::Composite
        }
    }
}

/// Floating-point types the fused kernels run in.
pub trait Real: WithDType + num_traits::Float + Send + Sync + std::iter::Sum {}
impl Real for f32 {}
impl Real for f64 {}

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("keel fused op: input must be contiguous"),
    }
}

/// Rows per parallel task: fixed (not tied to the thread count) so reductions are deterministic.
const ROW_CHUNK: usize = 32;

// ---------------------------------------------------------------------------------------------
// RoPE tables
// ---------------------------------------------------------------------------------------------

/// Rotary position embedding, non-interleaved ("rotate half", as Llama): for a head vector x of
/// size D, with x1 = x[..D/2], x2 = x[D/2..] and angle t * theta^(-2i/D),
/// rope(x) = [x1 cos - x2 sin, x2 cos + x1 sin].
#[derive(Debug, Clone)]
pub struct Rope {
    pub seq_len: usize,
    pub head_dim: usize,
    /// (T, D/2) row-major.
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
}

impl Rope {
    pub fn new(seq_len: usize, head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for t in 0..seq_len {
            for i in 0..half {
                let freq = theta.powf(-(2.0 * i as f64) / head_dim as f64);
                let a = t as f64 * freq;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Rope {
            seq_len,
            head_dim,
            cos,
            sin,
        }
    }

    /// The tables as (T, D/2) tensors, for the composite path.
    pub fn tensors(
        &self,
        t: usize,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let cos = Tensor::from_slice(&self.cos[..t * half], (t, half), &candle_core::Device::Cpu)?;
        let sin = Tensor::from_slice(&self.sin[..t * half], (t, half), &candle_core::Device::Cpu)?;
        Ok((
            cos.to_dtype(dtype)?.to_device(device)?,
            sin.to_dtype(dtype)?.to_device(device)?,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// RMSNorm over the last dim: y = x / sqrt(mean(x^2) + eps) * gamma. x: (N, C), gamma: (C).
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => x.contiguous()?.apply_op2(gamma, RmsNorm { eps }),
        Kernels::Composite => composite::rms_norm(x, gamma, eps),
    }
}

/// Residual followed by RMSNorm: y = RMSNorm(alpha * x + f) (Post-LN with alpha = 1, Keel with
/// alpha = L). x, f: (N, C), gamma: (C).
pub fn residual_rms_norm(
    x: &Tensor,
    f: &Tensor,
    gamma: &Tensor,
    alpha: f64,
    eps: f64,
    k: Kernels,
) -> Result<Tensor> {
    match k {
        Kernels::Fused => {
            x.contiguous()?
                .apply_op3(&f.contiguous()?, gamma, ResidualRmsNorm { alpha, eps })
        }
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

/// silu(a) * b where h = [a | b] along the last dim: (N, 2F) -> (N, F).
pub fn swiglu(h: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => h.contiguous()?.apply_op1(SwiGlu),
        Kernels::Composite => composite::swiglu(h),
    }
}

/// Shapes for [`causal_attention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn qkv_width(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }
}

/// Causal multi-head attention with RoPE and grouped KV heads.
/// qkv: (B*T, (H + 2 Hkv) D), laid out [q heads | k heads | v heads] per row.
/// Returns (B*T, H D): softmax(rope(q) rope(k)^T / sqrt(D) + causal mask) v, heads concatenated.
pub fn causal_attention(
    qkv: &Tensor,
    s: AttnShape,
    rope: &Arc<Rope>,
    k: Kernels,
) -> Result<Tensor> {
    match k {
        Kernels::Fused => qkv.contiguous()?.apply_op1(Attention {
            s,
            rope: rope.clone(),
        }),
        Kernels::Composite => composite::causal_attention(qkv, s, rope),
    }
}

// ---------------------------------------------------------------------------------------------
// Composite reference implementations (differentiable with stock Candle ops)
// ---------------------------------------------------------------------------------------------

pub mod composite {
    use super::*;

    pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let r = (ms + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&r)?.broadcast_mul(gamma)
    }

    /// LayerNorm with gain and bias: (x - mean) / sqrt(var + eps) * gamma + beta.
    pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let r = (var + eps)?.sqrt()?.recip()?;
        xc.broadcast_mul(&r)?
            .broadcast_mul(gamma)?
            .broadcast_add(beta)
    }

    pub fn swiglu(h: &Tensor) -> Result<Tensor> {
        let f = h.dim(D::Minus1)? / 2;
        let a = h.narrow(D::Minus1, 0, f)?;
        let b = h.narrow(D::Minus1, f, f)?;
        candle_nn::ops::silu(&a)? * b
    }

    /// x: (B, H, T, D) -> rope(x).
    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        Tensor::cat(&[a, b], D::Minus1)
    }

    pub fn causal_attention(qkv: &Tensor, s: AttnShape, rope_table: &Rope) -> Result<Tensor> {
        let AttnShape {
            batch: b,
            seq: t,
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: d,
        } = s;
        let (cos, sin) = rope_table.tensors(t, qkv.dtype(), qkv.device())?;
        let qkv = qkv.reshape((b, t, h + 2 * hkv, d))?;
        let heads = |start: usize, n: usize| -> Result<Tensor> {
            qkv.narrow(2, start, n)?.transpose(1, 2)?.contiguous()
        };
        let q = rope(&heads(0, h)?, &cos, &sin)?;
        let k = rope(&heads(h, hkv)?, &cos, &sin)?;
        let v = heads(h + hkv, hkv)?;
        let rep = h / hkv;
        let expand = |x: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(x);
            }
            x.unsqueeze(2)?
                .broadcast_as((b, hkv, rep, t, d))?
                .contiguous()?
                .reshape((b, h, t, d))
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), qkv.device())?.to_dtype(qkv.dtype())?;
        let p = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
        let o = p.matmul(&v)?; // (B, H, T, D)
        o.transpose(1, 2)?.contiguous()?.reshape((b * t, h * d))
    }
}

// ---------------------------------------------------------------------------------------------
// Fused RMSNorm
// ---------------------------------------------------------------------------------------------

fn rms_fwd_kernel<T: Real>(h: &[T], gamma: &[T], c: usize, eps: f64) -> Vec<T> {
    let mut y = vec![T::zero(); h.len()];
    let eps = T::from_f64(eps);
    let inv_c = T::from_f64(1.0 / c as f64);
    y.par_chunks_mut(c * ROW_CHUNK)
        .zip(h.par_chunks(c * ROW_CHUNK))
        .for_each(|(ys, hs)| {
            for (yr, hr) in ys.chunks_mut(c).zip(hs.chunks(c)) {
                let ms = hr.iter().map(|&v| v * v).sum::<T>() * inv_c;
                let r = (ms + eps).sqrt().recip();
                for ((yv, &hv), &g) in yr.iter_mut().zip(hr).zip(gamma) {
                    *yv = hv * r * g;
                }
            }
        });
    y
}

/// Backward of y = h * r * gamma, r = 1/sqrt(mean(h^2) + eps):
/// dh = r * (g - xhat * mean(g * xhat)) with g = dy * gamma, xhat = h * r;
/// dgamma = sum_rows(dy * xhat). Returns rows [dh (N, C) ; dgamma (1, C)].
fn rms_bwd_kernel<T: Real>(h: &[T], gamma: &[T], dy: &[T], c: usize, eps: f64) -> Vec<T> {
    let n = h.len() / c;
    let mut out = vec![T::zero(); (n + 1) * c];
    let eps = T::from_f64(eps);
    let inv_c = T::from_f64(1.0 / c as f64);
    let (dh, _) = out.split_at_mut(n * c);
    let partials: Vec<Vec<T>> = dh
        .par_chunks_mut(c * ROW_CHUNK)
        .zip(h.par_chunks(c * ROW_CHUNK))
        .zip(dy.par_chunks(c * ROW_CHUNK))
        .map(|((dhs, hs), dys)| {
            let mut dg = vec![T::zero(); c];
            for ((dhr, hr), dyr) in dhs.chunks_mut(c).zip(hs.chunks(c)).zip(dys.chunks(c)) {
                let ms = hr.iter().map(|&v| v * v).sum::<T>() * inv_c;
                let r = (ms + eps).sqrt().recip();
                let mut dot = T::zero();
                for i in 0..c {
                    let xhat = hr[i] * r;
                    dg[i] += dyr[i] * xhat;
                    dot += dyr[i] * gamma[i] * xhat;
                }
                let m = dot * inv_c;
                for i in 0..c {
                    dhr[i] = r * (dyr[i] * gamma[i] - hr[i] * r * m);
                }
            }
            dg
        })
        .collect();
    let dgamma = &mut out[n * c..];
    for p in partials {
        for (a, b) in dgamma.iter_mut().zip(p) {
            *a += b;
        }
    }
    out
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "keel-rms-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = l2.shape().elem_count();
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(rms_fwd_kernel(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                c,
                self.eps,
            )),
            DType::F64 => f64::to_cpu_storage_owned(rms_fwd_kernel(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                c,
                self.eps,
            )),
            dt => candle_core::bail!("keel rms_norm: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma) = rms_bwd(x, gamma, dy, self.eps)?;
        Ok((Some(dx), Some(dgamma)))
    }
}

fn rms_bwd(h: &Tensor, gamma: &Tensor, dy: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (n, c) = h.dims2()?;
    let packed = h.apply_op3_no_bwd(gamma, &dy.contiguous()?, &RmsNormBwd { eps })?;
    Ok((packed.narrow(0, 0, n)?, packed.narrow(0, n, 1)?.reshape(c)?))
}

struct RmsNormBwd {
    eps: f64,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "keel-rms-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(rms_bwd_kernel(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
                c,
                self.eps,
            )),
            DType::F64 => f64::to_cpu_storage_owned(rms_bwd_kernel(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
                c,
                self.eps,
            )),
            dt => candle_core::bail!("keel rms_norm bwd: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from((n + 1, c))))
    }
}

struct ResidualRmsNorm {
    alpha: f64,
    eps: f64,
}

fn residual_kernel<T: Real>(x: &[T], f: &[T], alpha: f64) -> Vec<T> {
    let a = T::from_f64(alpha);
    x.iter().zip(f).map(|(&x, &f)| a * x + f).collect()
}

impl CustomOp3 for ResidualRmsNorm {
    fn name(&self) -> &'static str {
        "keel-residual-rms-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = l3.shape().elem_count();
        fn run<T: Real>(x: &[T], f: &[T], g: &[T], c: usize, alpha: f64, eps: f64) -> Vec<T> {
            rms_fwd_kernel(&residual_kernel(x, f, alpha), g, c, eps)
        }
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(run::<f32>(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
                c,
                self.alpha,
                self.eps,
            )),
            DType::F64 => f64::to_cpu_storage_owned(run::<f64>(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
                c,
                self.alpha,
                self.eps,
            )),
            dt => candle_core::bail!("keel residual_rms_norm: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        f: &Tensor,
        gamma: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = residual(x, f, self.alpha)?;
        let (dh, dgamma) = rms_bwd(&h, gamma, dy, self.eps)?;
        let dx = if self.alpha == 1.0 {
            dh.clone()
        } else {
            dh.affine(self.alpha, 0.0)?
        };
        Ok((Some(dx), Some(dh), Some(dgamma)))
    }
}

// ---------------------------------------------------------------------------------------------
// Fused SwiGLU
// ---------------------------------------------------------------------------------------------

struct SwiGlu;

fn sigmoid<T: Real>(a: T) -> T {
    T::one() / (T::one() + (-a).exp())
}

fn swiglu_fwd_kernel<T: Real>(h: &[T], f: usize) -> Vec<T> {
    let n = h.len() / (2 * f);
    let mut y = vec![T::zero(); n * f];
    y.par_chunks_mut(f * ROW_CHUNK)
        .zip(h.par_chunks(2 * f * ROW_CHUNK))
        .for_each(|(ys, hs)| {
            for (yr, hr) in ys.chunks_mut(f).zip(hs.chunks(2 * f)) {
                let (a, b) = hr.split_at(f);
                for i in 0..f {
                    yr[i] = a[i] * sigmoid(a[i]) * b[i];
                }
            }
        });
    y
}

/// d/da silu(a) b = b s (1 + a (1 - s)), d/db = silu(a); s = sigmoid(a).
fn swiglu_bwd_kernel<T: Real>(h: &[T], dy: &[T], f: usize) -> Vec<T> {
    let mut dh = vec![T::zero(); h.len()];
    dh.par_chunks_mut(2 * f * ROW_CHUNK)
        .zip(h.par_chunks(2 * f * ROW_CHUNK))
        .zip(dy.par_chunks(f * ROW_CHUNK))
        .for_each(|((dhs, hs), dys)| {
            for ((dhr, hr), dyr) in dhs
                .chunks_mut(2 * f)
                .zip(hs.chunks(2 * f))
                .zip(dys.chunks(f))
            {
                let (a, b) = hr.split_at(f);
                let (da, db) = dhr.split_at_mut(f);
                for i in 0..f {
                    let s = sigmoid(a[i]);
                    da[i] = dyr[i] * b[i] * s * (T::one() + a[i] * (T::one() - s));
                    db[i] = dyr[i] * a[i] * s;
                }
            }
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
        let out = match s.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(swiglu_fwd_kernel(contiguous::<f32>(s, l)?, f)),
            DType::F64 => f64::to_cpu_storage_owned(swiglu_fwd_kernel(contiguous::<f64>(s, l)?, f)),
            dt => candle_core::bail!("keel swiglu: unsupported dtype {dt:?}"),
        };
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
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let f = l1.shape().dims2()?.1 / 2;
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(swiglu_bwd_kernel(
                contiguous::<f32>(s1, l1)?,
                contiguous(s2, l2)?,
                f,
            )),
            DType::F64 => f64::to_cpu_storage_owned(swiglu_bwd_kernel(
                contiguous::<f64>(s1, l1)?,
                contiguous(s2, l2)?,
                f,
            )),
            dt => candle_core::bail!("keel swiglu bwd: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Fused causal attention with RoPE and GQA
// ---------------------------------------------------------------------------------------------

struct Attention {
    s: AttnShape,
    rope: Arc<Rope>,
}

/// A raw pointer that may cross rayon tasks; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// dst (m x n, row stride dst_rs) = [dst +] lhs (m x k) @ rhs (k x n), all strides in elements.
#[allow(clippy::too_many_arguments)]
unsafe fn mm<T: 'static + Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const T,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        T::one(),
        T::one(),
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Gathers head columns [col, col + D) of rows b*T..(b+1)*T from a (B*T, W) matrix into (T, D),
/// rotating by RoPE when `rope` is given.
fn gather_head<T: Real>(
    src: &[T],
    w: usize,
    b: usize,
    t: usize,
    col: usize,
    d: usize,
    rope: Option<&Rope>,
) -> Vec<T> {
    let half = d / 2;
    let mut out = vec![T::zero(); t * d];
    for i in 0..t {
        let row = &src[(b * t + i) * w + col..(b * t + i) * w + col + d];
        let o = &mut out[i * d..(i + 1) * d];
        match rope {
            None => o.copy_from_slice(row),
            Some(r) => {
                for j in 0..half {
                    let c = T::from_f64(r.cos[i * half + j]);
                    let s = T::from_f64(r.sin[i * half + j]);
                    let (x1, x2) = (row[j], row[j + half]);
                    o[j] = x1 * c - x2 * s;
                    o[j + half] = x2 * c + x1 * s;
                }
            }
        }
    }
    out
}

/// Writes (T, D) into head columns of a (B*T, W) matrix, applying the transpose of RoPE's
/// rotation (the backward of `gather_head`) when `rope` is given.
unsafe fn scatter_head<T: Real>(
    dst: SendPtr<T>,
    w: usize,
    b: usize,
    t: usize,
    col: usize,
    d: usize,
    src: &[T],
    rope: Option<&Rope>,
) {
    let half = d / 2;
    for i in 0..t {
        let o = std::slice::from_raw_parts_mut(dst.0.add((b * t + i) * w + col), d);
        let g = &src[i * d..(i + 1) * d];
        match rope {
            None => o.copy_from_slice(g),
            Some(r) => {
                for j in 0..half {
                    let c = T::from_f64(r.cos[i * half + j]);
                    let s = T::from_f64(r.sin[i * half + j]);
                    let (g1, g2) = (g[j], g[j + half]);
                    o[j] = g1 * c + g2 * s;
                    o[j + half] = g2 * c - g1 * s;
                }
            }
        }
    }
}

/// Row-wise causal softmax of scaled scores, in place: row i keeps columns 0..=i.
fn causal_softmax<T: Real>(p: &mut [T], t: usize, scale: T) {
    for i in 0..t {
        let row = &mut p[i * t..(i + 1) * t];
        let mut mx = T::neg_infinity();
        for v in &row[..=i] {
            mx = num_traits::Float::max(mx, *v * scale);
        }
        let mut sum = T::zero();
        for v in &mut row[..=i] {
            *v = (*v * scale - mx).exp();
            sum += *v;
        }
        let inv = sum.recip();
        for v in &mut row[..=i] {
            *v *= inv;
        }
        for v in &mut row[i + 1..] {
            *v = T::zero();
        }
    }
}

/// P = causal_softmax(q k^T * scale) for one head: q, k (T, D) -> (T, T).
fn probs<T: Real>(q: &[T], k: &[T], t: usize, d: usize, scale: T) -> Vec<T> {
    let mut p = vec![T::zero(); t * t];
    unsafe {
        mm(
            t,
            t,
            d,
            p.as_mut_ptr(),
            t,
            false,
            q.as_ptr(),
            d as isize,
            1,
            k.as_ptr(),
            1,
            d as isize,
        );
    }
    causal_softmax(&mut p, t, scale);
    p
}

fn attn_fwd_kernel<T: Real>(qkv: &[T], s: AttnShape, rope: &Rope) -> Vec<T> {
    let AttnShape {
        batch,
        seq: t,
        n_heads: h,
        n_kv_heads: hkv,
        head_dim: d,
    } = s;
    let w = s.qkv_width();
    let ow = h * d;
    let rep = h / hkv;
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    let mut out = vec![T::zero(); batch * t * ow];
    let optr = SendPtr(out.as_mut_ptr());
    (0..batch * h).into_par_iter().for_each(|task| {
        let optr = optr;
        let (b, head) = (task / h, task % h);
        let g = head / rep;
        let q = gather_head(qkv, w, b, t, head * d, d, Some(rope));
        let k = gather_head(qkv, w, b, t, (h + g) * d, d, Some(rope));
        let p = probs(&q, &k, t, d, scale);
        let v = unsafe { qkv.as_ptr().add(b * t * w + (h + hkv + g) * d) };
        unsafe {
            let dst = optr.0.add(b * t * ow + head * d);
            mm(
                t,
                d,
                t,
                dst,
                ow,
                false,
                p.as_ptr(),
                t as isize,
                1,
                v,
                w as isize,
                1,
            );
        }
    });
    out
}

fn attn_bwd_kernel<T: Real>(qkv: &[T], dout: &[T], s: AttnShape, rope: &Rope) -> Vec<T> {
    let AttnShape {
        batch,
        seq: t,
        n_heads: h,
        n_kv_heads: hkv,
        head_dim: d,
    } = s;
    let w = s.qkv_width();
    let ow = h * d;
    let rep = h / hkv;
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    let mut dqkv = vec![T::zero(); qkv.len()];
    let gptr = SendPtr(dqkv.as_mut_ptr());
    // One task per (batch, kv head): it owns dK and dV of that kv head and dQ of its query heads.
    (0..batch * hkv).into_par_iter().for_each(|task| {
        let gptr = gptr;
        let (b, g) = (task / hkv, task % hkv);
        let k = gather_head(qkv, w, b, t, (h + g) * d, d, Some(rope));
        let v = gather_head(qkv, w, b, t, (h + hkv + g) * d, d, None);
        let mut dk = vec![T::zero(); t * d];
        let mut dv = vec![T::zero(); t * d];
        let mut dp = vec![T::zero(); t * t];
        let mut dq = vec![T::zero(); t * d];
        for head in g * rep..(g + 1) * rep {
            let q = gather_head(qkv, w, b, t, head * d, d, Some(rope));
            let mut p = probs(&q, &k, t, d, scale);
            let dout_h = unsafe { dout.as_ptr().add(b * t * ow + head * d) };
            unsafe {
                // dV += P^T dO
                mm(
                    t,
                    d,
                    t,
                    dv.as_mut_ptr(),
                    d,
                    true,
                    p.as_ptr(),
                    1,
                    t as isize,
                    dout_h,
                    ow as isize,
                    1,
                );
                // dP = dO V^T
                mm(
                    t,
                    t,
                    d,
                    dp.as_mut_ptr(),
                    t,
                    false,
                    dout_h,
                    ow as isize,
                    1,
                    v.as_ptr(),
                    1,
                    d as isize,
                );
            }
            // dS = P * (dP - rowsum(P * dP)) * scale, written over P.
            for i in 0..t {
                let pr = &mut p[i * t..(i + 1) * t];
                let dpr = &dp[i * t..(i + 1) * t];
                let dot: T = pr[..=i].iter().zip(&dpr[..=i]).map(|(&a, &b)| a * b).sum();
                for j in 0..=i {
                    pr[j] = pr[j] * (dpr[j] - dot) * scale;
                }
            }
            unsafe {
                // dQ = dS K ; dK += dS^T Q
                mm(
                    t,
                    d,
                    t,
                    dq.as_mut_ptr(),
                    d,
                    false,
                    p.as_ptr(),
                    t as isize,
                    1,
                    k.as_ptr(),
                    d as isize,
                    1,
                );
                mm(
                    t,
                    d,
                    t,
                    dk.as_mut_ptr(),
                    d,
                    true,
                    p.as_ptr(),
                    1,
                    t as isize,
                    q.as_ptr(),
                    d as isize,
                    1,
                );
                scatter_head(gptr, w, b, t, head * d, d, &dq, Some(rope));
            }
        }
        unsafe {
            scatter_head(gptr, w, b, t, (h + g) * d, d, &dk, Some(rope));
            scatter_head(gptr, w, b, t, (h + hkv + g) * d, d, &dv, None);
        }
    });
    dqkv
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "keel-causal-attention"
    }
    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = self.s;
        if l.shape().dims2()? != (s.batch * s.seq, s.qkv_width()) || self.rope.seq_len < s.seq {
            candle_core::bail!(
                "keel attention: qkv shape {:?} does not match {:?}",
                l.shape(),
                s
            );
        }
        let out = match st.dtype() {
            DType::F32 => {
                f32::to_cpu_storage_owned(attn_fwd_kernel(contiguous::<f32>(st, l)?, s, &self.rope))
            }
            DType::F64 => {
                f64::to_cpu_storage_owned(attn_fwd_kernel(contiguous::<f64>(st, l)?, s, &self.rope))
            }
            dt => candle_core::bail!("keel attention: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from((s.batch * s.seq, s.n_heads * s.head_dim))))
    }
    fn bwd(&self, qkv: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<Option<Tensor>> {
        let op = AttentionBwd {
            s: self.s,
            rope: self.rope.clone(),
        };
        Ok(Some(qkv.apply_op2_no_bwd(&dout.contiguous()?, &op)?))
    }
}

struct AttentionBwd {
    s: AttnShape,
    rope: Arc<Rope>,
}

impl CustomOp2 for AttentionBwd {
    fn name(&self) -> &'static str {
        "keel-causal-attention-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(attn_bwd_kernel(
                contiguous::<f32>(s1, l1)?,
                contiguous(s2, l2)?,
                self.s,
                &self.rope,
            )),
            DType::F64 => f64::to_cpu_storage_owned(attn_bwd_kernel(
                contiguous::<f64>(s1, l1)?,
                contiguous(s2, l2)?,
                self.s,
                &self.rope,
            )),
            dt => candle_core::bail!("keel attention bwd: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}
