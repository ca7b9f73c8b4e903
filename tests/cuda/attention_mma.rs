//! The tensor-core (mma.sync) flash attention kernels against the CPU (see tests/cuda.rs).
//!
//! keel's `causal_attention` on bf16 CUDA inputs runs `src/ops/cuda/attention_mma.cu` for its core
//! steps wherever `attention_mma::supports` holds: compute capability 8.0 or newer, head dim 32,
//! 64 or 128, and `KEEL_ATTENTION_MMA` not `0` (these tests leave it alone: it is process-wide).
//! The reference is the fused CPU op in f32 on the same bf16-rounded inputs; the tolerances fit
//! bf16 (8-bit mantissa: P and dS are rounded to bf16 before their products, outputs are bf16).

use candle_core::{DType, Device, Tensor, Var};
use keel::ops::{causal_attention, AttentionKernel, AttnShape, Kernels, Rope};
use std::sync::Arc;

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    let mut rng = keel::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// y = attention(qkv) on `dev` in `dtype`, and d(sum(y * w))/d qkv, both as f32 on the CPU.
fn run(dev: &Device, dtype: DType, qkv: &Tensor, w: &Tensor, s: AttnShape, rope: &Arc<Rope>) -> (Tensor, Tensor) {
    let x = Var::from_tensor(&qkv.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap();
    let y = causal_attention(x.as_tensor(), s, rope, Kernels::Fused, AttentionKernel::Tiled).unwrap();
    let loss = (y.to_dtype(DType::F32).unwrap() * w.to_device(dev).unwrap()).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap().get(x.as_tensor()).expect("qkv has a gradient").clone();
    let cpu = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    (cpu(&y), cpu(&g))
}

fn shape(batch: usize, seq: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttnShape {
    AttnShape { batch, seq, n_heads, n_kv_heads, head_dim }
}

/// Sequences that are not a multiple of the 64-row tiles (and one row), GQA groups of 1 to 4,
/// every head dim the kernels are built for.
fn cases() -> Vec<AttnShape> {
    vec![
        shape(2, 77, 4, 2, 64),
        shape(1, 200, 4, 4, 128),
        shape(2, 130, 8, 2, 32),
        shape(1, 1, 2, 1, 64),
        shape(1, 64, 2, 2, 128),
        shape(1, 300, 4, 1, 64),
    ]
}

#[test]
fn mma_attention_bf16_matches_cpu_forward_and_backward() {
    let gpu = super::gpu();
    for (n, s) in cases().into_iter().enumerate() {
        let seed = 100 + 10 * n as u64;
        let width = (s.n_heads + 2 * s.n_kv_heads) * s.head_dim;
        let rows = s.batch * s.seq;
        // The CPU sees exactly the bf16 values the GPU gets.
        let qkv = randn(seed, &[rows, width]).to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let w = randn(seed + 1, &[rows, s.n_heads * s.head_dim]);
        let rope = Arc::new(Rope::new(s.seq + 3, s.head_dim, 10_000.0));
        let (y_cpu, g_cpu) = run(&Device::Cpu, DType::F32, &qkv, &w, s, &rope);
        let (y_gpu, g_gpu) = run(&gpu, DType::BF16, &qkv, &w, s, &rope);
        let dy = super::max_rel(&y_gpu, &y_cpu);
        assert!(dy < 2e-2, "{s:?}: forward differs from the CPU by {dy}");
        let dg = super::max_rel(&g_gpu, &g_cpu);
        assert!(dg < 5e-2, "{s:?}: d qkv differs from the CPU by {dg}");
    }
}

/// No atomics anywhere: the same backward twice gives the same bits.
#[test]
fn mma_attention_backward_is_deterministic() {
    let gpu = super::gpu();
    let s = shape(2, 150, 4, 2, 64);
    let width = (s.n_heads + 2 * s.n_kv_heads) * s.head_dim;
    let qkv = randn(7, &[s.batch * s.seq, width]);
    let w = randn(8, &[s.batch * s.seq, s.n_heads * s.head_dim]);
    let rope = Arc::new(Rope::new(s.seq, s.head_dim, 10_000.0));
    let (y1, g1) = run(&gpu, DType::BF16, &qkv, &w, s, &rope);
    let (y2, g2) = run(&gpu, DType::BF16, &qkv, &w, s, &rope);
    assert_eq!(super::max_rel(&y1, &y2), 0.0);
    assert_eq!(super::max_rel(&g1, &g2), 0.0);
}
