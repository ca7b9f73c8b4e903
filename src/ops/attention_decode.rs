//! Incremental-decoding attention: the new positions' queries against every cached key, with the
//! new keys and values appended to a per-layer cache.
//!
//! On the CPU (f32, f64, `train.kernels = "fused"`) one pass does it all: RoPE on the new q and
//! k, the append into the layer's own (B, Hkv, capacity, D) buffers, scores, softmax and the
//! weighted sum of values. The composite twin (`attention::composite::attention_at`, candle-nn's
//! cache) runs elsewhere; it is about thirty Candle ops per layer and token, each an allocation
//! and a dispatch, which at one token is most of the time a cached step takes.

use super::attention::{rotate, AttnShape};
use super::custom::{Fused, FusedOp1, Input, Output};
use super::kernels::Kernels;
use super::real::{sum, unfilled, vectorized, Real};
use super::rope::Rope;
use candle_core::{DType, Result, Shape, Tensor};
use rayon::prelude::*;
use std::any::Any;
use std::sync::{Arc, Mutex};

/// One attention sub-layer's keys (after RoPE) and values for the positions decoded so far.
/// Created empty; the first call of [`attention_at`] picks the fused buffers or candle-nn's cache
/// by where it runs, and sizes them for `capacity` positions.
#[derive(Debug)]
pub struct AttentionCache {
    capacity: usize,
    len: usize,
    /// Per batch row, how many positions at its start are padding (empty: none in any row).
    left_padding: Vec<usize>,
    store: Store,
}

#[derive(Debug)]
enum Store {
    Empty,
    Fused(Arc<Mutex<FusedKv>>),
    Composite(candle_nn::kv_cache::KvCache),
}

/// The fused kernel's buffers, each (B, Hkv, capacity, D) row-major in the model's float type
/// (a `Vec<f32>` or `Vec<f64>`, allocated by the first call, when the type is known).
struct FusedKv {
    batch: usize,
    n_kv_heads: usize,
    head_dim: usize,
    keys: Option<Box<dyn Any + Send>>,
    values: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for FusedKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FusedKv(batch {}, kv heads {}, head dim {})", self.batch, self.n_kv_heads, self.head_dim)
    }
}

impl AttentionCache {
    /// An empty cache for up to `capacity` positions.
    pub fn new(capacity: usize) -> Self {
        Self::left_padded(capacity, Vec::new())
    }

    /// An empty cache for a left-padded batch, as lm-evaluation-harness batches generation: row b's
    /// first `left_padding[b]` positions are padding. Its tokens then count positions from its
    /// first real one (RoPE angle 0 there) and never attend to the padding, so each row computes
    /// what it would alone. A padding position attends to itself only (its output is never read).
    pub fn left_padded(capacity: usize, left_padding: Vec<usize>) -> Self {
        AttentionCache { capacity, len: 0, left_padding, store: Store::Empty }
    }

    /// Row b's padding, 0 without any.
    fn pad(&self, b: usize) -> usize {
        self.left_padding.get(b).copied().unwrap_or(0)
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Causal attention of the `s.seq` new positions `start..start + T` against the `start` earlier
/// positions held in `cache` and themselves; their keys (after RoPE) and values are appended to
/// `cache`. qkv: (B*T, (H + 2 Hkv) D) of the new positions, laid out as for
/// [`super::causal_attention`]; returns (B*T, H D), equal to those rows of a full causal pass.
/// Not differentiable (decoding needs no gradient).
pub fn attention_at(
    qkv: &Tensor,
    s: AttnShape,
    rope: &Arc<Rope>,
    start: usize,
    cache: &mut AttentionCache,
    k: Kernels,
) -> Result<Tensor> {
    if cache.len != start {
        candle_core::bail!("attention at position {start} given {} cached positions", cache.len);
    }
    if start + s.seq > cache.capacity.min(rope.seq_len) {
        candle_core::bail!(
            "attention at positions {start}..{} beyond the cache's {} positions",
            start + s.seq,
            cache.capacity.min(rope.seq_len)
        );
    }
    if !cache.left_padding.is_empty() && cache.left_padding.len() != s.batch {
        candle_core::bail!("a cache padded for {} rows given a batch of {}", cache.left_padding.len(), s.batch);
    }
    if matches!(cache.store, Store::Empty) {
        let fused = k == Kernels::Fused && qkv.device().is_cpu() && matches!(qkv.dtype(), DType::F32 | DType::F64);
        cache.store = if fused {
            Store::Fused(Arc::new(Mutex::new(FusedKv {
                batch: s.batch,
                n_kv_heads: s.n_kv_heads,
                head_dim: s.head_dim,
                keys: None,
                values: None,
            })))
        } else {
            Store::Composite(candle_nn::kv_cache::KvCache::new(2, cache.capacity))
        };
    }
    let pads = (0..s.batch).map(|b| cache.pad(b)).collect();
    let out = match &mut cache.store {
        Store::Fused(kv) => {
            let op = DecodeAttention { s, rope: rope.clone(), start, capacity: cache.capacity, pads, kv: kv.clone() };
            qkv.contiguous()?.apply_op1_no_bwd(&Fused(op))?
        }
        Store::Composite(c) => super::attention::composite::attention_at(qkv, s, rope, start, c, &cache.left_padding)?,
        Store::Empty => unreachable!("the store was chosen above"),
    };
    cache.len += s.seq;
    Ok(out)
}

/// qkv (B*T, (H + 2 Hkv) D) of positions `start..start + T` -> (B*T, H D), appending to `kv`.
struct DecodeAttention {
    s: AttnShape,
    rope: Arc<Rope>,
    start: usize,
    capacity: usize,
    /// Left padding per batch row.
    pads: Vec<usize>,
    kv: Arc<Mutex<FusedKv>>,
}

/// Below this many multiply-adds a call runs on the calling thread: one decoded token's attention
/// is a few microseconds of work, less than waking rayon's pool.
const PARALLEL_WORK: usize = 1 << 18;

impl FusedOp1 for DecodeAttention {
    const NAME: &'static str = "keel-decode-attention";
    fn cpu<T: Real>(&self, qkv: Input) -> Result<Output<T>> {
        let s = self.s;
        if qkv.shape().dims2()? != (s.batch * s.seq, s.qkv_width()) {
            candle_core::bail!("keel decode attention: qkv shape {:?} does not match {:?}", qkv.shape(), s);
        }
        let mut guard = self.kv.lock().expect("decode attention's cache");
        let kv = &mut *guard;
        if (kv.batch, kv.n_kv_heads, kv.head_dim) != (s.batch, s.n_kv_heads, s.head_dim) {
            candle_core::bail!("keel decode attention: a cache made for {kv:?} given {s:?}");
        }
        let n = s.batch * s.n_kv_heads * self.capacity.next_multiple_of(BLOCK) * s.head_dim;
        let keys = kv.keys.get_or_insert_with(|| Box::new(vec![T::zero(); n]));
        let keys = buffer::<T>(keys)?;
        let values = kv.values.get_or_insert_with(|| Box::new(vec![T::zero(); n]));
        let values = buffer::<T>(values)?;
        let layout =
            CacheLayout { s, start: self.start, capacity: self.capacity.next_multiple_of(BLOCK), pads: &self.pads };
        vectorized(
            #[inline(always)]
            || append(qkv.slice()?, layout, &self.rope, keys, values),
        )?;
        let out = attend(qkv.slice()?, layout, &self.rope, keys, values);
        Ok((out, Shape::from((s.batch * s.seq, s.n_heads * s.head_dim))))
    }
}

/// The cache's buffer as the op's float type: an error, not a panic, if one cache is fed two.
fn buffer<T: Real>(b: &mut Box<dyn Any + Send>) -> Result<&mut [T]> {
    match b.downcast_mut::<Vec<T>>() {
        Some(v) => Ok(v),
        None => candle_core::bail!("keel decode attention: the cache holds another dtype than {:?}", T::DTYPE),
    }
}

/// Keys are kept in blocks of [`BLOCK`] positions, each block transposed: (B, Hkv, capacity /
/// BLOCK, D, BLOCK), so one query's scores for a block are D multiply-adds of a BLOCK-wide vector
/// (no horizontal sum per key, as a (capacity, D) layout would need for a short head vector).
/// Values stay (B, Hkv, capacity, D): a score times a value row. Either way the positions filled
/// so far are one contiguous prefix per head, which is what the memory system streams best.
#[derive(Clone, Copy)]
struct CacheLayout<'a> {
    s: AttnShape,
    start: usize,
    capacity: usize,
    pads: &'a [usize],
}

/// Positions per key block: one AVX-512 vector of f32.
const BLOCK: usize = 16;

impl CacheLayout<'_> {
    /// Where (b, g)'s keys and values start (both buffers have the same size).
    #[inline(always)]
    fn head(&self, b: usize, g: usize) -> usize {
        (b * self.s.n_kv_heads + g) * self.s.head_dim * self.capacity
    }

    /// Cache position p of batch row b: its RoPE position (counted from the row's first real
    /// token) and the cache positions it attends to, `lo..=p`.
    #[inline(always)]
    fn position(&self, b: usize, p: usize) -> (usize, usize) {
        let pad = self.pads[b];
        if p >= pad {
            (p - pad, pad)
        } else {
            (0, p)
        }
    }
}

/// Writes the new positions' rope(k) and v into the cache.
#[inline(always)]
fn append<T: Real>(qkv: &[T], l: CacheLayout<'_>, rope: &Rope, keys: &mut [T], values: &mut [T]) -> Result<()> {
    let AttnShape { batch, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d } = l.s;
    let (w, half) = (l.s.qkv_width(), d / 2);
    let (cos, sin) = T::rope_tables(rope);
    let mut k = vec![T::zero(); d];
    for b in 0..batch {
        for i in 0..t {
            let (row, p) = (&qkv[(b * t + i) * w..(b * t + i + 1) * w], l.start + i);
            let (angle, _) = l.position(b, p);
            let (cos, sin) = (&cos[angle * half..(angle + 1) * half], &sin[angle * half..(angle + 1) * half]);
            for g in 0..hkv {
                rotate(&mut k, &row[(h + g) * d..(h + g + 1) * d], cos, sin, false);
                let block = l.head(b, g) + (p / BLOCK) * d * BLOCK + p % BLOCK;
                for (c, &kc) in k.iter().enumerate() {
                    keys[block + c * BLOCK] = kc;
                }
                let at = l.head(b, g) + p * d;
                values[at..at + d].copy_from_slice(&row[(h + hkv + g) * d..(h + hkv + g + 1) * d]);
            }
        }
    }
    Ok(())
}

/// Every new row's heads: softmax(rope(q) K^T / sqrt(D)) V over the positions up to its own.
/// One task per (row, head), run in parallel only when there is enough work (a prompt, a batch):
/// a single decoded token's heads finish sooner on the calling thread.
fn attend<T: Real>(qkv: &[T], l: CacheLayout<'_>, rope: &Rope, keys: &[T], values: &[T]) -> Vec<T> {
    let AttnShape { batch, seq: t, n_heads: h, head_dim: d, .. } = l.s;
    let mut out = unfilled::<T>(batch * t * h * d);
    let task = |(task, o): (usize, &mut [T])| {
        let (r, head) = (task / h, task % h);
        vectorized(
            #[inline(always)]
            || attend_head(qkv, l, rope, keys, values, (r / t, r % t, head), o),
        )
    };
    if batch * t * h * (l.start + t) * d < PARALLEL_WORK {
        out.chunks_exact_mut(d).enumerate().for_each(task);
    } else {
        out.par_chunks_exact_mut(d).enumerate().for_each(task);
    }
    out
}

/// Query head `head` of new position i of batch row b against its kv head's cache -> out (D).
#[inline(always)]
fn attend_head<T: Real>(
    qkv: &[T],
    l: CacheLayout<'_>,
    rope: &Rope,
    keys: &[T],
    values: &[T],
    (b, i, head): (usize, usize, usize),
    out: &mut [T],
) {
    let AttnShape { seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d, .. } = l.s;
    let (w, half, p) = (l.s.qkv_width(), d / 2, l.start + i);
    let (angle, lo) = l.position(b, p);
    let (cos, sin) = T::rope_tables(rope);
    let (cos, sin) = (&cos[angle * half..(angle + 1) * half], &sin[angle * half..(angle + 1) * half]);
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    let row = &qkv[(b * t + i) * w..(b * t + i + 1) * w];
    let base = l.head(b, head / (h / hkv));
    let mut q = vec![T::zero(); d];
    rotate(&mut q, &row[head * d..(head + 1) * d], cos, sin, false);
    // Scores of the whole key blocks covering lo..=p, then the slice lo..=p of them: a row's sums
    // run over the same keys in the same order whatever its padding.
    let first = lo / BLOCK;
    let mut blocks = vec![T::zero(); (p + 1).next_multiple_of(BLOCK) - first * BLOCK];
    for (blk, sc) in blocks.chunks_exact_mut(BLOCK).enumerate() {
        let blk = first + blk;
        let kb = &keys[base + blk * d * BLOCK..base + (blk + 1) * d * BLOCK];
        let mut acc = [T::zero(); BLOCK];
        for (&qc, kc) in q.iter().zip(kb.chunks_exact(BLOCK)) {
            for l in 0..BLOCK {
                acc[l] += qc * kc[l];
            }
        }
        sc.copy_from_slice(&acc);
    }
    let scores = &mut blocks[lo - first * BLOCK..p + 1 - first * BLOCK];
    let mut mx = T::neg_infinity();
    for sc in scores.iter_mut() {
        *sc *= scale;
        mx = num_traits::Float::max(mx, *sc);
    }
    T::exp_shifted(scores, mx);
    let inv = sum(scores).recip();
    out.fill(T::zero());
    for (&pj, v) in scores.iter().zip(values[base + lo * d..base + (p + 1) * d].chunks_exact(d)) {
        for (o, &vc) in out.iter_mut().zip(v) {
            *o += pj * vc;
        }
    }
    for o in out.iter_mut() {
        *o *= inv;
    }
}
