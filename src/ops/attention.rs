//! Causal multi-head attention with RoPE and grouped KV heads (GQA).

#[cfg(feature = "cuda")]
use super::custom::{CudaInput, CudaOutput};
use super::custom::{Fused, FusedOp1, FusedOp2, FusedOp3, Input, Output};
use super::kernels::Kernels;
use super::real::{dot, sum, unfilled, vectorized, Real};
use super::rope::Rope;
use candle_core::{CpuStorage, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

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
    pub(super) fn qkv_width(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }
}

/// What the fused CPU attention keeps for its backward pass (`train.attention`). Both compute the
/// same function; they differ in memory and in rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    /// Scores are computed per head as one (T, T) matrix, and the probabilities (B, H, T, T) are
    /// kept for the backward pass: fastest at short sequences.
    #[default]
    SavedProbs,
    /// Flash-style: (TILE, TILE) tiles of queries against keys with an online softmax, keeping only
    /// each row's log-sum-exp (B, H, T); the backward recomputes the probabilities tile by tile.
    /// No (T, T) tensor in either pass, so memory grows with T, not T².
    Tiled,
}

impl AttentionKernel {
    /// The config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::SavedProbs => "saved_probs",
            AttentionKernel::Tiled => "tiled",
        }
    }
}

/// Causal multi-head attention with RoPE and grouped KV heads.
/// qkv: (B*T, (H + 2 Hkv) D), laid out [q heads | k heads | v heads] per row.
/// Returns (B*T, H D): softmax(rope(q) rope(k)^T / sqrt(D) + causal mask) v, heads concatenated.
/// `kernel` chooses the fused CPU kernel; the composite twin (other devices) ignores it.
pub fn causal_attention(
    qkv: &Tensor,
    s: AttnShape,
    rope: &Arc<Rope>,
    k: Kernels,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    match k {
        Kernels::Fused => {
            qkv.contiguous()?.apply_op1(Fused(Attention { s, rope: rope.clone(), kernel, saved: Default::default() }))
        }
        Kernels::Composite => composite::causal_attention(qkv, s, rope),
    }
}

/// The composite twin: stock Candle ops, differentiable end to end.
pub mod composite {
    use super::{AttnShape, Rope};
    use candle_core::{Result, Tensor, D};

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
        let (cos, sin) = rope_table.tensors_at(0, s.seq, qkv.dtype(), qkv.device())?;
        let (q, k, v) = project(qkv, s, &cos, &sin)?;
        attend(&q, &k, &v, s, 0, &[])
    }

    /// Causal attention of `s.seq` new positions `start..start + T` against the `start` earlier
    /// positions held in `cache` and themselves, as incremental decoding runs it; the new keys
    /// and values are appended to `cache` (keys after RoPE, both (B, Hkv, S, D) along dim 2).
    /// `left_padding` (empty, or one count per batch row) as for
    /// [`crate::ops::AttentionCache::left_padded`]. qkv: (B*T, (H + 2 Hkv) D) of the new
    /// positions; returns (B*T, H D).
    pub fn attention_at(
        qkv: &Tensor,
        s: AttnShape,
        rope_table: &Rope,
        start: usize,
        cache: &mut candle_nn::kv_cache::KvCache,
        left_padding: &[usize],
    ) -> Result<Tensor> {
        if cache.current_seq_len() != start {
            candle_core::bail!("attention at position {start} given {} cached positions", cache.current_seq_len());
        }
        let (cos, sin) = if left_padding.iter().all(|&p| p == 0) {
            rope_table.tensors_at(start, s.seq, qkv.dtype(), qkv.device())?
        } else {
            // Row b's angles count from its first real token: (B, 1, T, D/2) gathered per row.
            let positions: Vec<u32> = (0..s.batch)
                .flat_map(|b| (start..start + s.seq).map(move |p| p.saturating_sub(left_padding[b]) as u32))
                .collect();
            let idx = Tensor::from_vec(positions, s.batch * s.seq, qkv.device())?;
            let (cos, sin) = rope_table.tensors_at(0, rope_table.seq_len, qkv.dtype(), qkv.device())?;
            let per_row = |t: &Tensor| t.index_select(&idx, 0)?.reshape((s.batch, 1, s.seq, s.head_dim / 2));
            (per_row(&cos)?, per_row(&sin)?)
        };
        let (q, k, v) = project(qkv, s, &cos, &sin)?;
        let (k, v) = cache.append(&k, &v)?;
        attend(&q, &k, &v, s, start, left_padding)
    }

    /// qkv (B*T, (H + 2 Hkv) D) -> rope(q) (B, H, T, D), rope(k) and v (B, Hkv, T, D), with the
    /// RoPE angles' cos and sin given as (T, D/2), or (B, 1, T, D/2) per batch row.
    fn project(qkv: &Tensor, s: AttnShape, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
        let qkv = qkv.reshape((b, t, h + 2 * hkv, d))?;
        let heads =
            |first: usize, n: usize| -> Result<Tensor> { qkv.narrow(2, first, n)?.transpose(1, 2)?.contiguous() };
        let q = rope(&heads(0, h)?, cos, sin)?;
        let k = rope(&heads(h, hkv)?, cos, sin)?;
        Ok((q, k, heads(h + hkv, hkv)?))
    }

    /// softmax(q k^T / sqrt(D) + causal mask) v for queries q (B, H, T, D) at positions
    /// `start..start + T` and keys and values k, v (B, Hkv, start + T, D) -> (B*T, H D). Query
    /// head h reads KV head h / (H / Hkv): the H/Hkv query heads of a group are stacked as rows
    /// against their shared keys, so nothing is copied per query head.
    fn attend(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        s: AttnShape,
        start: usize,
        left_padding: &[usize],
    ) -> Result<Tensor> {
        let AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
        let (rep, total) = (h / hkv, start + t);
        let q = q.reshape((b, hkv, rep * t, d))?;
        let mut scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?; // (B, Hkv, rep T, S)
        if left_padding.iter().any(|&p| p > 0) {
            // Row b's position p sees keys pad_b..=p; a padding position sees itself only.
            let mask: Vec<f32> = (0..b)
                .flat_map(|bi| {
                    let pad = left_padding[bi];
                    (0..rep * t).flat_map(move |row| {
                        let p = start + row % t;
                        let lo = if p >= pad { pad } else { p };
                        (0..total).map(move |j| if j < lo || j > p { f32::NEG_INFINITY } else { 0.0 })
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (b, 1, rep * t, total), q.device())?.to_dtype(q.dtype())?;
            scores = scores.broadcast_add(&mask)?;
        } else if t > 1 {
            // Query row r * T + i (position start + i) sees keys 0..=start + i.
            let mask: Vec<f32> = (0..rep * t)
                .flat_map(|row| {
                    let i = row % t;
                    (0..total).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (rep * t, total), q.device())?.to_dtype(q.dtype())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let o = p.matmul(v)?.reshape((b, h, t, d))?;
        o.transpose(1, 2)?.contiguous()?.reshape((b * t, h * d))
    }
}

/// qkv (B*T, (H + 2 Hkv) D) -> out (B*T, H D); see [`causal_attention`]. On the CPU `kernel`
/// chooses the kernel; on CUDA the flash kernels always run (`train.attention` is a CPU choice).
struct Attention {
    s: AttnShape,
    rope: Arc<Rope>,
    kernel: AttentionKernel,
    /// What the forward kept for the backward pass: the probabilities (taken by the backward, so
    /// they are freed with it) or the log-sum-exps (small; kept for any later backward).
    saved: std::sync::Mutex<Option<Saved>>,
}

/// What an attention forward keeps for its backward, on the device it ran on: on the CPU the
/// probabilities or the log-sum-exps (by `kernel`), on CUDA the log-sum-exps (B, H, T) f32.
#[derive(Clone)]
enum Saved {
    Cpu(CpuStorage),
    #[cfg(feature = "cuda")]
    Cuda(Arc<candle_core::CudaStorage>),
}

impl Saved {
    /// The CPU state, or an error naming `op` when the forward ran on CUDA.
    fn cpu(&self, op: &str) -> Result<&CpuStorage> {
        #[cfg(not(feature = "cuda"))]
        let _ = op;
        match self {
            Saved::Cpu(s) => Ok(s),
            #[cfg(feature = "cuda")]
            Saved::Cuda(_) => candle_core::bail!("{op}: the forward ran on CUDA, the backward on the CPU"),
        }
    }
}

/// A raw pointer that may cross rayon tasks; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// A strided read-only matrix view for gemm: element (i, j) is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View<T> {
    ptr: *const T,
    rs: isize,
    cs: isize,
}

/// A row-major matrix whose rows are `stride` elements apart.
fn rows<T>(ptr: *const T, stride: usize) -> View<T> {
    View { ptr, rs: stride as isize, cs: 1 }
}

/// The transpose of a row-major matrix whose rows are `stride` elements apart.
fn transposed<T>(ptr: *const T, stride: usize) -> View<T> {
    View { ptr, rs: 1, cs: stride as isize }
}

/// dst (m x n, rows `dst_rs` apart) = [dst +] lhs (m x k) @ rhs (k x n), single-threaded (the
/// callers already run one task per head).
#[allow(clippy::too_many_arguments)]
unsafe fn mm<T: 'static + Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: View<T>,
    rhs: View<T>,
) {
    let one = T::one();
    let par = gemm::Parallelism::None;
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        one,
        one,
        false,
        false,
        false,
        par,
    )
}

/// RoPE on one head vector: out = R x, or R^T x when `inverse` (the backward), with
/// R rotating the pairs (x[j], x[j + D/2]) by the angles whose cos and sin are given.
#[inline(always)]
pub(super) fn rotate<T: Real>(out: &mut [T], x: &[T], cos: &[T], sin: &[T], inverse: bool) {
    let half = cos.len();
    let (o1, o2) = out.split_at_mut(half);
    let (x1, x2) = x.split_at(half);
    let (o1, o2, x1, x2, sin) = (&mut o1[..half], &mut o2[..half], &x1[..half], &x2[..half], &sin[..half]);
    if inverse {
        for j in 0..half {
            o1[j] = x1[j] * cos[j] + x2[j] * sin[j];
            o2[j] = x2[j] * cos[j] - x1[j] * sin[j];
        }
    } else {
        for j in 0..half {
            o1[j] = x1[j] * cos[j] - x2[j] * sin[j];
            o2[j] = x2[j] * cos[j] + x1[j] * sin[j];
        }
    }
}

/// out = x rotated by position i's RoPE angles (their inverse when `inverse`), or x itself
/// without `rope`.
#[inline(always)]
fn rope_row<T: Real>(out: &mut [T], x: &[T], rope: Option<&Rope>, i: usize, inverse: bool) {
    match rope {
        None => out.copy_from_slice(x),
        Some(r) => {
            let half = x.len() / 2;
            let (cos, sin) = T::rope_tables(r);
            rotate(out, x, &cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half], inverse)
        }
    }
}

/// Gathers head columns [col, col + D) of rows b*T..(b+1)*T from a (B*T, W) matrix into (T, D),
/// rotating by RoPE when `rope` is given.
fn gather_head<T: Real>(src: &[T], w: usize, b: usize, t: usize, col: usize, d: usize, rope: Option<&Rope>) -> Vec<T> {
    let mut out = unfilled(t * d);
    vectorized(
        #[inline(always)]
        || {
            for (i, o) in out.chunks_exact_mut(d).enumerate() {
                rope_row(o, &src[(b * t + i) * w + col..(b * t + i) * w + col + d], rope, i, false);
            }
        },
    );
    out
}

/// Writes (T, D) into head columns of a (B*T, W) matrix, applying the transpose of RoPE's
/// rotation (the backward of `gather_head`) when `rope` is given.
#[allow(clippy::too_many_arguments)]
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
    vectorized(
        #[inline(always)]
        || {
            for (i, g) in src.chunks_exact(d).take(t).enumerate() {
                let o = std::slice::from_raw_parts_mut(dst.0.add((b * t + i) * w + col), d);
                rope_row(o, g, rope, i, true);
            }
        },
    )
}

/// Row-wise causal softmax of scaled scores, in place: row i keeps columns 0..=i.
fn causal_softmax<T: Real>(p: &mut [T], t: usize, scale: T) {
    vectorized(
        #[inline(always)]
        || {
            for i in 0..t {
                let row = &mut p[i * t..(i + 1) * t];
                let (live, masked) = row.split_at_mut(i + 1);
                let mut mx = T::neg_infinity();
                for v in live.iter_mut() {
                    *v *= scale;
                    mx = num_traits::Float::max(mx, *v);
                }
                T::exp_shifted(live, mx);
                let inv = sum(live).recip();
                for v in live.iter_mut() {
                    *v *= inv;
                }
                masked.fill(T::zero());
            }
        },
    )
}

/// Row blocks for skipping the masked upper triangle: a (T, T) causal product is computed block
/// row by block row, each only up to its diagonal (37.5% fewer flops at T = 128).
const CAUSAL_BLOCK: usize = 32;

fn causal_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t.div_ceil(CAUSAL_BLOCK)).map(move |r| (r * CAUSAL_BLOCK, CAUSAL_BLOCK.min(t - r * CAUSAL_BLOCK)))
}

/// P = causal_softmax(q k^T * scale) for one head: q, k (T, D) -> (T, T), written into `p`.
fn probs_into<T: Real>(p: &mut [T], q: &[T], k: &[T], t: usize, d: usize, scale: T) {
    for (r0, rn) in causal_blocks(t) {
        // S[r0..r0+rn, 0..r0+rn] = Q[r0..] K[0..r0+rn]^T
        unsafe {
            mm(
                rn,
                r0 + rn,
                d,
                p.as_mut_ptr().add(r0 * t),
                t,
                false,
                rows(q.as_ptr().add(r0 * d), d),
                transposed(k.as_ptr(), d),
            );
        }
    }
    causal_softmax(p, t, scale);
}

fn probs<T: Real>(q: &[T], k: &[T], t: usize, d: usize, scale: T) -> Vec<T> {
    let mut p = unfilled(t * t);
    probs_into(&mut p, q, k, t, d, scale);
    p
}

/// Forward: returns the output (B*T, H D) and the attention probabilities, one (T, T) block per
/// (batch, head), kept for the backward pass.
fn attn_fwd_kernel<T: Real>(qkv: &[T], s: AttnShape, rope: &Rope) -> (Vec<T>, Vec<T>) {
    let AttnShape { batch, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
    let w = s.qkv_width();
    let ow = h * d;
    let rep = h / hkv;
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    let mut out = unfilled::<T>(batch * t * ow);
    let mut probs_all = unfilled(batch * h * t * t);
    let optr = SendPtr(out.as_mut_ptr());
    probs_all.par_chunks_mut(t * t).enumerate().for_each(|(task, p)| {
        #[allow(clippy::redundant_locals)] // capture the Send wrapper, not its raw pointer field
        let optr = optr;
        let (b, head) = (task / h, task % h);
        let g = head / rep;
        let q = gather_head(qkv, w, b, t, head * d, d, Some(rope));
        let k = gather_head(qkv, w, b, t, (h + g) * d, d, Some(rope));
        probs_into(p, &q, &k, t, d, scale);
        let v = unsafe { qkv.as_ptr().add(b * t * w + (h + hkv + g) * d) };
        for (r0, rn) in causal_blocks(t) {
            // O[r0..r0+rn] = P[r0.., 0..r0+rn] V[0..r0+rn]
            unsafe {
                let dst = optr.0.add((b * t + r0) * ow + head * d);
                mm(rn, d, r0 + rn, dst, ow, false, rows(p.as_ptr().add(r0 * t), t), rows(v, w));
            }
        }
    });
    (out, probs_all)
}

/// The backward passes' common frame: one task per (batch, kv head), which owns dK and dV of that
/// kv head and dQ of its query heads. It gathers K (rotated) and V, calls `per_head(b, head, q, k,
/// v, dk, dv)` for each query head of the group (q rotated; dK and dV accumulate across the
/// group's heads; it returns dQ), and scatters dQ, dK and dV back through RoPE's transpose.
fn kv_group_backward<T: Real>(
    qkv: &[T],
    s: AttnShape,
    rope: &Rope,
    per_head: impl Fn(usize, usize, &[T], &[T], &[T], &mut [T], &mut [T]) -> Vec<T> + Sync,
) -> Vec<T> {
    let AttnShape { batch, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
    let w = s.qkv_width();
    let rep = h / hkv;
    let mut dqkv = unfilled(qkv.len());
    let gptr = SendPtr(dqkv.as_mut_ptr());
    (0..batch * hkv).into_par_iter().for_each(|task| {
        #[allow(clippy::redundant_locals)] // capture the Send wrapper, not its raw pointer field
        let gptr = gptr;
        let (b, g) = (task / hkv, task % hkv);
        let k = gather_head(qkv, w, b, t, (h + g) * d, d, Some(rope));
        let v = gather_head(qkv, w, b, t, (h + hkv + g) * d, d, None);
        let mut dk = vec![T::zero(); t * d];
        let mut dv = vec![T::zero(); t * d];
        for head in g * rep..(g + 1) * rep {
            let q = gather_head(qkv, w, b, t, head * d, d, Some(rope));
            let dq = per_head(b, head, &q, &k, &v, &mut dk, &mut dv);
            unsafe { scatter_head(gptr, w, b, t, head * d, d, &dq, Some(rope)) };
        }
        unsafe {
            scatter_head(gptr, w, b, t, (h + g) * d, d, &dk, Some(rope));
            scatter_head(gptr, w, b, t, (h + hkv + g) * d, d, &dv, None);
        }
    });
    dqkv
}

/// Backward. `saved` holds the forward's probabilities; without them they are recomputed.
fn attn_bwd_kernel<T: Real>(qkv: &[T], dout: &[T], s: AttnShape, rope: &Rope, saved: Option<&[T]>) -> Vec<T> {
    let AttnShape { seq: t, n_heads: h, head_dim: d, .. } = s;
    let ow = h * d;
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    kv_group_backward(qkv, s, rope, |b, head, q, k, v, dk, dv| {
        let mut ds = unfilled::<T>(t * t);
        let mut dq = unfilled::<T>(t * d);
        let recomputed;
        let p: &[T] = match saved {
            Some(all) => &all[(b * h + head) * t * t..(b * h + head + 1) * t * t],
            None => {
                recomputed = probs(q, k, t, d, scale);
                &recomputed
            }
        };
        let dout_h = unsafe { dout.as_ptr().add(b * t * ow + head * d) };
        for (r0, rn) in causal_blocks(t) {
            unsafe {
                // dV[r0..r0+rn] += P[r0.., r0..r0+rn]^T dO[r0..]   (rows i >= r0 only)
                let lhs = p.as_ptr().add(r0 * t + r0);
                mm(
                    rn,
                    d,
                    t - r0,
                    dv.as_mut_ptr().add(r0 * d),
                    d,
                    true,
                    transposed(lhs, t),
                    rows(dout_h.add(r0 * ow), ow),
                );
                // dP[r0..r0+rn, 0..r0+rn] = dO[r0..] V[0..r0+rn]^T
                mm(
                    rn,
                    r0 + rn,
                    d,
                    ds.as_mut_ptr().add(r0 * t),
                    t,
                    false,
                    rows(dout_h.add(r0 * ow), ow),
                    transposed(v.as_ptr(), d),
                );
            }
        }
        // dS = P * (dP - rowsum(P * dP)) * scale, written over dP.
        vectorized(
            #[inline(always)]
            || {
                for i in 0..t {
                    let pr = &p[i * t..(i + 1) * t];
                    let dsr = &mut ds[i * t..(i + 1) * t];
                    let dot = dot(&pr[..=i], &dsr[..=i]);
                    for (dv, &pv) in dsr[..=i].iter_mut().zip(&pr[..=i]) {
                        *dv = pv * (*dv - dot) * scale;
                    }
                    dsr[i + 1..].fill(T::zero());
                }
            },
        );
        for (r0, rn) in causal_blocks(t) {
            unsafe {
                // dQ[r0..r0+rn] = dS[r0.., 0..r0+rn] K[0..r0+rn]
                mm(
                    rn,
                    d,
                    r0 + rn,
                    dq.as_mut_ptr().add(r0 * d),
                    d,
                    false,
                    rows(ds.as_ptr().add(r0 * t), t),
                    rows(k.as_ptr(), d),
                );
                // dK[r0..r0+rn] += dS[r0.., r0..r0+rn]^T Q[r0..]
                let lhs = ds.as_ptr().add(r0 * t + r0);
                mm(
                    rn,
                    d,
                    t - r0,
                    dk.as_mut_ptr().add(r0 * d),
                    d,
                    true,
                    transposed(lhs, t),
                    rows(q.as_ptr().add(r0 * d), d),
                );
            }
        }
        dq
    })
}

impl FusedOp1 for Attention {
    const NAME: &'static str = "keel-causal-attention";
    fn cpu<T: Real>(&self, qkv: Input) -> Result<Output<T>> {
        let s = self.s;
        if qkv.shape().dims2()? != (s.batch * s.seq, s.qkv_width()) || self.rope.seq_len < s.seq {
            candle_core::bail!("keel attention: qkv shape {:?} does not match {:?}", qkv.shape(), s);
        }
        let (out, saved) = match self.kernel {
            AttentionKernel::SavedProbs => attn_fwd_kernel(qkv.slice()?, s, &self.rope),
            AttentionKernel::Tiled => tiled::forward(qkv.slice()?, s, &self.rope),
        };
        *self.saved.lock().expect("attention's saved state") = Some(Saved::Cpu(T::to_cpu_storage_owned(saved)));
        Ok((out, Shape::from((s.batch * s.seq, s.n_heads * s.head_dim))))
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self, qkv: CudaInput) -> Result<CudaOutput> {
        let (out, lse) = cuda::forward(self.s, &self.rope, qkv)?;
        *self.saved.lock().expect("attention's saved state") = Some(Saved::Cuda(Arc::new(lse)));
        Ok(out)
    }
    fn bwd(&self, qkv: &Tensor, out: &Tensor, dout: &Tensor) -> Result<Option<Tensor>> {
        let mut saved = self.saved.lock().expect("attention's saved state");
        // A CUDA forward kept log-sum-exps whatever `kernel` says: the flash backward follows.
        #[cfg(feature = "cuda")]
        if let Some(Saved::Cuda(lse)) = saved.as_ref() {
            let op = tiled::Backward { s: self.s, rope: self.rope.clone(), lse: Saved::Cuda(lse.clone()) };
            return Ok(Some(qkv.apply_op3_no_bwd(out, dout, &Fused(op))?));
        }
        match self.kernel {
            AttentionKernel::SavedProbs => {
                let probs = match saved.take() {
                    Some(Saved::Cpu(p)) => Some(p),
                    _ => None,
                };
                let op = AttentionBwd { s: self.s, rope: self.rope.clone(), saved: probs };
                Ok(Some(qkv.apply_op2_no_bwd(dout, &Fused(op))?))
            }
            AttentionKernel::Tiled => {
                let Some(lse) = saved.clone() else {
                    candle_core::bail!("keel attention: backward before forward");
                };
                let op = tiled::Backward { s: self.s, rope: self.rope.clone(), lse };
                Ok(Some(qkv.apply_op3_no_bwd(out, dout, &Fused(op))?))
            }
        }
    }
}

/// Attention's backward: qkv (B*T, (H + 2 Hkv) D), dout (B*T, H D) -> dqkv (B*T, (H + 2 Hkv) D).
struct AttentionBwd {
    s: AttnShape,
    rope: Arc<Rope>,
    saved: Option<CpuStorage>,
}

impl FusedOp2 for AttentionBwd {
    const NAME: &'static str = "keel-causal-attention-bwd";
    fn cpu<T: Real>(&self, qkv: Input, dout: Input) -> Result<Output<T>> {
        let saved = self.saved.as_ref().map(|p| p.as_slice::<T>()).transpose()?;
        Ok((attn_bwd_kernel(qkv.slice()?, dout.slice()?, self.s, &self.rope, saved), qkv.shape().clone()))
    }
}

/// The flash-style kernel ([`AttentionKernel::Tiled`]), FlashAttention-2's algorithm on the CPU:
/// per (batch, head), query tiles of `TILE` rows against key tiles of `TILE` columns up to the
/// diagonal, with a running max m, running sum l and unnormalized output per row; the forward
/// keeps LSE = m + ln l per row, and the backward recomputes each probability tile as
/// exp(S - LSE), with D_i = dO_i . O_i standing in for rowsum(P * dP).
mod tiled {
    use super::*;

    /// Query rows and key columns per tile. A (TILE, TILE) score tile and a (TILE, D) output
    /// accumulator per task are the only scratch besides the gathered heads.
    pub(super) const TILE: usize = 128;

    fn tiles(t: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..t.div_ceil(TILE)).map(move |r| (r * TILE, TILE.min(t - r * TILE)))
    }

    /// Key tiles a query tile starting at `r0` sees: those starting at or before it (tiles are
    /// aligned, so only the last of them, the diagonal tile, is partly masked).
    fn key_tiles(t: usize, r0: usize) -> impl Iterator<Item = (usize, usize)> {
        tiles(t).take_while(move |&(c0, _)| c0 <= r0)
    }

    /// Columns of key tile `c0` that query row `row` (absolute) sees: c0..=row.
    #[inline(always)]
    fn live(row: usize, c0: usize, cn: usize) -> usize {
        (row + 1 - c0).min(cn)
    }

    /// Returns the output (B*T, H D) and the log-sum-exp of each row's scaled scores, (B, H, T).
    pub(super) fn forward<T: Real>(qkv: &[T], s: AttnShape, rope: &Rope) -> (Vec<T>, Vec<T>) {
        let AttnShape { batch, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
        let w = s.qkv_width();
        let ow = h * d;
        let rep = h / hkv;
        let scale = T::from_f64(1.0 / (d as f64).sqrt());
        let mut out = unfilled::<T>(batch * t * ow);
        let mut lse_all = unfilled::<T>(batch * h * t);
        let optr = SendPtr(out.as_mut_ptr());
        lse_all.par_chunks_mut(t).enumerate().for_each(|(task, lse)| {
            #[allow(clippy::redundant_locals)] // capture the Send wrapper, not its raw pointer field
            let optr = optr;
            let (b, head) = (task / h, task % h);
            let g = head / rep;
            let q = gather_head(qkv, w, b, t, head * d, d, Some(rope));
            let k = gather_head(qkv, w, b, t, (h + g) * d, d, Some(rope));
            let v = unsafe { qkv.as_ptr().add(b * t * w + (h + hkv + g) * d) };
            let mut scores = unfilled::<T>(TILE * TILE);
            let mut acc = unfilled::<T>(TILE * d);
            let (mut m, mut l, mut corr) = ([T::zero(); TILE], [T::zero(); TILE], [T::zero(); TILE]);
            for (r0, rn) in tiles(t) {
                for (c0, cn) in key_tiles(t, r0) {
                    let first = c0 == 0;
                    // S = Q[r0..r0+rn] K[c0..c0+cn]^T, rows TILE apart.
                    unsafe {
                        mm(
                            rn,
                            cn,
                            d,
                            scores.as_mut_ptr(),
                            TILE,
                            false,
                            rows(q.as_ptr().add(r0 * d), d),
                            transposed(k.as_ptr().add(c0 * d), d),
                        );
                    }
                    // P = exp(S * scale - m_new) over the live columns, 0 over the masked ones.
                    vectorized(
                        #[inline(always)]
                        || {
                            for i in 0..rn {
                                let row = &mut scores[i * TILE..i * TILE + cn];
                                let (seen, masked) = row.split_at_mut(live(r0 + i, c0, cn));
                                let mut mx = if first { T::neg_infinity() } else { m[i] };
                                for x in seen.iter_mut() {
                                    *x *= scale;
                                    mx = num_traits::Float::max(mx, *x);
                                }
                                T::exp_shifted(seen, mx);
                                let row_sum = sum(seen);
                                masked.fill(T::zero());
                                if first {
                                    l[i] = row_sum;
                                } else {
                                    corr[i] = (m[i] - mx).fast_exp();
                                    l[i] = l[i] * corr[i] + row_sum;
                                }
                                m[i] = mx;
                            }
                        },
                    );
                    if !first {
                        for (i, a) in acc.chunks_exact_mut(d).take(rn).enumerate() {
                            a.iter_mut().for_each(|x| *x *= corr[i]);
                        }
                    }
                    // acc [*corr] += P V[c0..c0+cn]
                    unsafe {
                        mm(rn, d, cn, acc.as_mut_ptr(), d, !first, rows(scores.as_ptr(), TILE), rows(v.add(c0 * w), w));
                    }
                }
                // O = acc / l, LSE = m + ln l.
                for i in 0..rn {
                    let inv = l[i].recip();
                    let o = unsafe { std::slice::from_raw_parts_mut(optr.0.add((b * t + r0 + i) * ow + head * d), d) };
                    for (o, &a) in o.iter_mut().zip(&acc[i * d..(i + 1) * d]) {
                        *o = a * inv;
                    }
                    lse[r0 + i] = m[i] + l[i].ln();
                }
            }
        });
        (out, lse_all)
    }

    /// Backward of [`forward`]: qkv, out (B*T, H D) and dout -> dqkv, with the forward's LSE.
    fn backward<T: Real>(qkv: &[T], out: &[T], dout: &[T], lse_all: &[T], s: AttnShape, rope: &Rope) -> Vec<T> {
        let AttnShape { seq: t, n_heads: h, head_dim: d, .. } = s;
        let ow = h * d;
        let scale = T::from_f64(1.0 / (d as f64).sqrt());
        kv_group_backward(qkv, s, rope, |b, head, q, k, v, dk, dv| {
            let mut dq = unfilled::<T>(t * d);
            let mut delta = unfilled::<T>(t);
            let mut p = unfilled::<T>(TILE * TILE);
            let mut ds = unfilled::<T>(TILE * TILE);
            let lse = &lse_all[(b * h + head) * t..(b * h + head + 1) * t];
            let row = |i: usize| (b * t + i) * ow + head * d;
            vectorized(
                #[inline(always)]
                || {
                    for (i, di) in delta.iter_mut().enumerate() {
                        *di = dot(&dout[row(i)..row(i) + d], &out[row(i)..row(i) + d]);
                    }
                },
            );
            let dout_h = unsafe { dout.as_ptr().add(row(0)) };
            for (r0, rn) in tiles(t) {
                for (c0, cn) in key_tiles(t, r0) {
                    unsafe {
                        // S = Q_i K_j^T
                        mm(
                            rn,
                            cn,
                            d,
                            p.as_mut_ptr(),
                            TILE,
                            false,
                            rows(q.as_ptr().add(r0 * d), d),
                            transposed(k.as_ptr().add(c0 * d), d),
                        );
                        // dP = dO_i V_j^T
                        mm(
                            rn,
                            cn,
                            d,
                            ds.as_mut_ptr(),
                            TILE,
                            false,
                            rows(dout_h.add(r0 * ow), ow),
                            transposed(v.as_ptr().add(c0 * d), d),
                        );
                    }
                    // P = exp(S * scale - LSE) (0 where masked); dS = P (dP - D) * scale.
                    vectorized(
                        #[inline(always)]
                        || {
                            for i in 0..rn {
                                let n = live(r0 + i, c0, cn);
                                let (pr, dsr) = (&mut p[i * TILE..i * TILE + cn], &mut ds[i * TILE..i * TILE + cn]);
                                let (shift, di) = (lse[r0 + i], delta[r0 + i]);
                                for x in pr[..n].iter_mut() {
                                    *x = (*x * scale - shift).fast_exp();
                                }
                                pr[n..].fill(T::zero());
                                for (dv, &pv) in dsr.iter_mut().zip(pr.iter()) {
                                    *dv = pv * (*dv - di) * scale;
                                }
                            }
                        },
                    );
                    unsafe {
                        // dV_j += P^T dO_i
                        mm(
                            cn,
                            d,
                            rn,
                            dv.as_mut_ptr().add(c0 * d),
                            d,
                            true,
                            transposed(p.as_ptr(), TILE),
                            rows(dout_h.add(r0 * ow), ow),
                        );
                        // dQ_i (+)= dS K_j
                        mm(
                            rn,
                            d,
                            cn,
                            dq.as_mut_ptr().add(r0 * d),
                            d,
                            c0 > 0,
                            rows(ds.as_ptr(), TILE),
                            rows(k.as_ptr().add(c0 * d), d),
                        );
                        // dK_j += dS^T Q_i
                        mm(
                            cn,
                            d,
                            rn,
                            dk.as_mut_ptr().add(c0 * d),
                            d,
                            true,
                            transposed(ds.as_ptr(), TILE),
                            rows(q.as_ptr().add(r0 * d), d),
                        );
                    }
                }
            }
            dq
        })
    }

    /// qkv, out, dout -> dqkv; `lse` is the forward's (B, H, T) log-sum-exps, on the device the
    /// forward ran on (CUDA: the flash kernels of `src/ops/cuda/attention.cu`).
    pub(super) struct Backward {
        pub(super) s: AttnShape,
        pub(super) rope: Arc<Rope>,
        pub(super) lse: Saved,
    }

    impl FusedOp3 for Backward {
        const NAME: &'static str = "keel-tiled-attention-bwd";
        fn cpu<T: Real>(&self, qkv: Input, out: Input, dout: Input) -> Result<Output<T>> {
            let lse = self.lse.cpu(Self::NAME)?.as_slice::<T>()?;
            let dqkv = backward(qkv.slice()?, out.slice()?, dout.slice()?, lse, self.s, &self.rope);
            Ok((dqkv, qkv.shape().clone()))
        }
        #[cfg(feature = "cuda")]
        fn cuda(&self, qkv: CudaInput, out: CudaInput, dout: CudaInput) -> Result<CudaOutput> {
            let Saved::Cuda(lse) = &self.lse else {
                candle_core::bail!("{}: the forward ran on the CPU, the backward on CUDA", Self::NAME);
            };
            super::cuda::backward(self.s, &self.rope, lse, qkv, out, dout)
        }
    }
}

/// The CUDA side of [`Attention`] and [`tiled::Backward`]: FlashAttention-2 on keel's kernels of
/// `src/ops/cuda/attention.cu` (SIMT, f32 and bf16 storage), with the tensor-core bf16 kernels of
/// `attention_mma` taking the two core steps where they support the case.
///
/// Forward: pack (RoPE on q and k, heads to (B, heads, T, D)) -> flash forward -> out (B*T, H D)
/// and lse (B, H, T) f32, kept for the backward. Backward: pack again, delta = rowsum(dO * O),
/// dK/dV and dQ (f32, (B, heads, T, D)), unpack (RoPE's transpose) -> dqkv (B*T, W). No host
/// copies and no synchronization; the RoPE tables live on the device ([`Rope::cuda_tables`]).
#[cfg(feature = "cuda")]
mod cuda {
    use super::super::attention_mma as mma;
    use super::super::cuda_kernels::runtime::{self, grid, Arg};
    use super::super::cuda_kernels::Module;
    use super::{AttnShape, CudaInput, CudaOutput, Rope};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::{CudaStorage, DType, Result, Shape};

    const OP: &str = "keel attention (CUDA)";
    /// Threads of every attention kernel's block (pack, unpack, bwd_pre, fwd, dkdv, dq).
    const THREADS: u32 = 256;
    /// Query rows per forward block: 4 lanes per row up to D = 64, 8 above (attention.cu).
    fn fwd_rows(d: usize) -> usize {
        if d <= 64 {
            64
        } else {
            32
        }
    }
    /// Rows (keys or queries) per block of the two backward kernels.
    const BWD_TILE: usize = 32;
    /// Rows of `o` / `dout` per bwd_pre block: one warp each.
    const PRE_ROWS: usize = THREADS as usize / 32;

    fn check(s: AttnShape, rope: &Rope) -> Result<()> {
        let AttnShape { batch, seq, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
        if batch == 0 || seq == 0 || hkv == 0 || h % hkv != 0 {
            candle_core::bail!("{OP}: unsupported shape {s:?} (empty, or H not a multiple of Hkv)");
        }
        if d % 2 != 0 || d == 0 || d > 128 {
            candle_core::bail!("{OP}: head dim {d} must be even and at most 128 (train.kernels=composite runs others)");
        }
        if rope.head_dim != d || rope.seq_len < seq {
            candle_core::bail!("{OP}: RoPE tables ({} x {}) do not cover {s:?}", rope.seq_len, rope.head_dim);
        }
        if seq > i32::MAX as usize || h > 65535 || batch > 65535 {
            candle_core::bail!("{OP}: shape {s:?} exceeds the kernels' grid");
        }
        Ok(())
    }

    fn i32_of(v: usize) -> Arg {
        Arg::I32(v as i32)
    }

    fn scale(s: AttnShape) -> f32 {
        (1.0 / (s.head_dim as f64).sqrt()) as f32
    }

    /// Blocks for the grid-stride element-wise kernels (pack, unpack) over `n` items.
    fn ew_blocks(n: usize) -> u32 {
        n.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32
    }

    /// The device addresses of the RoPE tables (cos, sin).
    fn table_addresses(tables: &(CudaStorage, CudaStorage)) -> Result<(u64, u64)> {
        Ok((runtime::address_at(&tables.0, 0)?, runtime::address_at(&tables.1, 0)?))
    }

    /// Launches pack or unpack (`name`): one thread per rotation pair (j, j + D/2) of every head
    /// of every row, with `ptrs` then (B, H, Hkv, T, D) as arguments.
    fn rope_pass(dev: &CudaDevice, name: &str, s: AttnShape, ptrs: &[u64]) -> Result<()> {
        let AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
        let pairs = b * t * (h + 2 * hkv) * d / 2;
        let mut args: Vec<Arg> = ptrs.iter().map(|&p| Arg::Ptr(p)).collect();
        args.extend([i32_of(b), i32_of(h), i32_of(hkv), i32_of(t), i32_of(d)]);
        runtime::launch(dev, Module::Attention, name, grid((ew_blocks(pairs), 1, 1), THREADS, 0), &args)
    }

    /// The device buffers of one pass: q (B, H, T, D), k and v (B, Hkv, T, D) in the storage
    /// dtype, RoPE applied to q and k. Dropped after the pass's launches (stream-ordered frees).
    struct Packed {
        _bufs: [CudaStorage; 3],
        q: u64,
        k: u64,
        v: u64,
    }

    fn pack(
        dev: &CudaDevice,
        dtype: DType,
        qkv: u64,
        s: AttnShape,
        tables: &(CudaStorage, CudaStorage),
    ) -> Result<Packed> {
        let AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
        let sfx = runtime::dtype_suffix(dtype, OP)?;
        let (qs, q) = runtime::alloc(dev, dtype, b * h * t * d)?;
        let (ks, k) = runtime::alloc(dev, dtype, b * hkv * t * d)?;
        let (vs, v) = runtime::alloc(dev, dtype, b * hkv * t * d)?;
        let (cos, sin) = table_addresses(tables)?;
        rope_pass(dev, &format!("keel_attn_pack_{sfx}"), s, &[qkv, cos, sin, q, k, v])?;
        Ok(Packed { _bufs: [qs, ks, vs], q, k, v })
    }

    fn flash_shape(s: AttnShape) -> mma::FlashShape {
        mma::FlashShape { b: s.batch, h: s.n_heads, hkv: s.n_kv_heads, t: s.seq, d: s.head_dim, scale: scale(s) }
    }

    /// Forward: qkv (B*T, W) -> (out (B*T, H D) in qkv's dtype, lse (B, H, T) f32).
    pub(super) fn forward(s: AttnShape, rope: &Rope, qkv: CudaInput) -> Result<(CudaOutput, CudaStorage)> {
        check(s, rope)?;
        let AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
        if qkv.shape().dims2()? != (b * t, s.qkv_width()) {
            candle_core::bail!("{OP}: qkv shape {:?} does not match {s:?}", qkv.shape());
        }
        let (dev, dtype) = (qkv.device(), qkv.dtype());
        let sfx = runtime::dtype_suffix(dtype, OP)?;
        let tables = rope.cuda_tables(dev)?;
        let p = pack(dev, dtype, runtime::address(qkv.storage, qkv.layout, OP)?, s, &tables)?;
        let (out, o) = runtime::alloc(dev, dtype, b * t * h * d)?;
        let (lse_s, lse) = runtime::alloc(dev, DType::F32, b * h * t)?;
        if mma::supports(dev, dtype, d)? {
            mma::forward(dev, p.q, p.k, p.v, o, lse, &flash_shape(s))?;
        } else {
            let rows = fwd_rows(d);
            runtime::launch(
                dev,
                Module::Attention,
                &format!("keel_flash_fwd_simt_{sfx}"),
                grid((t.div_ceil(rows) as u32, h as u32, b as u32), THREADS, 0),
                &[
                    Arg::Ptr(p.q),
                    Arg::Ptr(p.k),
                    Arg::Ptr(p.v),
                    Arg::Ptr(o),
                    Arg::Ptr(lse),
                    i32_of(b),
                    i32_of(h),
                    i32_of(hkv),
                    i32_of(t),
                    i32_of(d),
                    Arg::F32(scale(s)),
                ],
            )?;
        }
        Ok(((out, Shape::from((b * t, h * d))), lse_s))
    }

    /// Backward: qkv (B*T, W), out and dout (B*T, H D), the forward's lse -> dqkv (B*T, W).
    pub(super) fn backward(
        s: AttnShape,
        rope: &Rope,
        lse: &CudaStorage,
        qkv: CudaInput,
        out: CudaInput,
        dout: CudaInput,
    ) -> Result<CudaOutput> {
        check(s, rope)?;
        let AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = s;
        let (dev, dtype) = (qkv.device(), qkv.dtype());
        if qkv.shape().dims2()? != (b * t, s.qkv_width())
            || out.shape().dims2()? != (b * t, h * d)
            || dout.shape().dims2()? != (b * t, h * d)
        {
            candle_core::bail!(
                "{OP}: backward shapes qkv {:?}, out {:?}, dout {:?} do not match {s:?}",
                qkv.shape(),
                out.shape(),
                dout.shape()
            );
        }
        if out.dtype() != dtype || dout.dtype() != dtype || lse.dtype() != DType::F32 {
            candle_core::bail!("{OP}: backward dtypes {dtype:?}, {:?}, {:?} differ", out.dtype(), dout.dtype());
        }
        let sfx = runtime::dtype_suffix(dtype, OP)?;
        let tables = rope.cuda_tables(dev)?;
        let p = pack(dev, dtype, runtime::address(qkv.storage, qkv.layout, OP)?, s, &tables)?;
        let (o, dout) =
            (runtime::address(out.storage, out.layout, OP)?, runtime::address(dout.storage, dout.layout, OP)?);
        let lse = runtime::address_at(lse, 0)?;
        let (_delta_s, delta) = runtime::alloc(dev, DType::F32, b * h * t)?;
        runtime::launch(
            dev,
            Module::Attention,
            &format!("keel_flash_bwd_pre_{sfx}"),
            grid(((b * t * h).div_ceil(PRE_ROWS) as u32, 1, 1), THREADS, 0),
            &[Arg::Ptr(o), Arg::Ptr(dout), Arg::Ptr(delta), i32_of(b), i32_of(h), i32_of(t), i32_of(d)],
        )?;
        let (_dq_s, dq) = runtime::alloc(dev, DType::F32, b * h * t * d)?;
        let (_dk_s, dk) = runtime::alloc(dev, DType::F32, b * hkv * t * d)?;
        let (_dv_s, dv) = runtime::alloc(dev, DType::F32, b * hkv * t * d)?;
        // The tensor-core kernels read dout 16 bytes at a time; an input view that starts off
        // such a boundary takes the SIMT kernels instead.
        if dout % 16 == 0 && mma::supports(dev, dtype, d)? {
            mma::backward(dev, p.q, p.k, p.v, dout, lse, delta, dq, dk, dv, &flash_shape(s))?;
        } else {
            let tiles = t.div_ceil(BWD_TILE) as u32;
            let common = |out: &[Arg]| -> Vec<Arg> {
                let mut a =
                    vec![Arg::Ptr(p.q), Arg::Ptr(p.k), Arg::Ptr(p.v), Arg::Ptr(dout), Arg::Ptr(lse), Arg::Ptr(delta)];
                a.extend_from_slice(out);
                a.extend([i32_of(b), i32_of(h), i32_of(hkv), i32_of(t), i32_of(d), Arg::F32(scale(s))]);
                a
            };
            runtime::launch(
                dev,
                Module::Attention,
                &format!("keel_flash_bwd_dkdv_{sfx}"),
                grid((tiles, hkv as u32, b as u32), THREADS, 0),
                &common(&[Arg::Ptr(dk), Arg::Ptr(dv)]),
            )?;
            runtime::launch(
                dev,
                Module::Attention,
                &format!("keel_flash_bwd_dq_{sfx}"),
                grid((tiles, h as u32, b as u32), THREADS, 0),
                &common(&[Arg::Ptr(dq)]),
            )?;
        }
        let w = s.qkv_width();
        let (dqkv, dqkv_a) = runtime::alloc(dev, dtype, b * t * w)?;
        let (cos, sin) = table_addresses(&tables)?;
        rope_pass(dev, &format!("keel_attn_unpack_{sfx}"), s, &[dq, dk, dv, cos, sin, dqkv_a])?;
        Ok((dqkv, Shape::from((b * t, w))))
    }
}
