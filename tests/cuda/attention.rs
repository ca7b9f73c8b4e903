//! CUDA kernels of the attention family against their CPU twins (see tests/cuda.rs).
//!
//! `causal_attention` with `Kernels::Fused` on the GPU (the flash kernels of
//! src/ops/cuda/attention.cu, or the tensor-core ones of attention_mma.cu where they support the
//! case: bf16; `KEEL_ATTENTION_MMA=0` forces the SIMT kernels) against the fused CPU op (the tiled
//! flash twin) on the same values, forward and backward, f32 and bf16. bf16 runs on bf16 inputs
//! against the CPU's f32 op on the same bf16-rounded values.

use super::{gpu, max_rel};
use candle_core::{DType, Device, Tensor, Var};
use keel::ops::{causal_attention, AttentionKernel, AttnShape, Kernels, Rope};
use keel::rng::Rng;
use std::sync::Arc;

/// N(0, 1) values of `shape`, f32 on the CPU, from `seed`.
fn randn(seed: u64, shape: (usize, usize)) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// (out, dqkv) of attention on `device` in `dtype`, with loss sum(out * up), returned as f32 on
/// the CPU. `kernel` is the CPU kernel (the GPU always runs the flash kernels).
fn run(
    qkv: &Tensor,
    up: &Tensor,
    s: AttnShape,
    rope: &Arc<Rope>,
    device: &Device,
    dtype: DType,
    kernel: AttentionKernel,
) -> (Tensor, Tensor) {
    let qkv = Var::from_tensor(&qkv.to_dtype(dtype).unwrap().to_device(device).unwrap()).unwrap();
    let up = up.to_dtype(dtype).unwrap().to_device(device).unwrap();
    let out = causal_attention(qkv.as_tensor(), s, rope, Kernels::Fused, kernel).unwrap();
    let grads = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
    let dqkv = grads.get(qkv.as_tensor()).expect("a gradient for qkv");
    let host = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    (host(&out), host(dqkv))
}

/// (B, T, H, Hkv, D): every T and D of the brief, B and the head layouts (MHA 4/4, GQA 8/2)
/// alternating across them, plus odd head dims (16, 48, 2) and one row.
fn cases() -> Vec<(usize, usize, usize, usize, usize)> {
    let mut out = Vec::new();
    for (ti, &t) in [1usize, 17, 128, 200, 1024].iter().enumerate() {
        for (di, &d) in [32usize, 64, 128].iter().enumerate() {
            let (h, hkv) = if (ti + di) % 2 == 0 { (4, 4) } else { (8, 2) };
            let b = 1 + (ti + di / 2) % 2;
            out.push((b, t, h, hkv, d));
        }
    }
    out.extend([(2, 33, 8, 2, 16), (1, 65, 4, 4, 48), (2, 5, 4, 2, 2), (3, 1, 2, 1, 64)]);
    out
}

fn check(dtype: DType, fwd_tol: f64, bwd_tol: f64) {
    let cuda = gpu();
    for (i, (b, t, h, hkv, d)) in cases().into_iter().enumerate() {
        let s = AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d };
        // A longer table than T, as in training (the model's table covers train.seq_len).
        let rope = Arc::new(Rope::new(t + 3, d, 10000.0));
        let seed = 1000 + i as u64;
        // Rounded to the storage dtype first, so both devices see the same values.
        let round = |x: Tensor| x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
        let qkv = round(randn(seed, (b * t, (h + 2 * hkv) * d)));
        let up = round(randn(seed + 500, (b * t, h * d)));
        let (out_c, dqkv_c) = run(&qkv, &up, s, &rope, &Device::Cpu, DType::F32, AttentionKernel::Tiled);
        // SavedProbs on the GPU: the CPU kernel choice must not matter there.
        let (out_g, dqkv_g) = run(&qkv, &up, s, &rope, &cuda, dtype, AttentionKernel::SavedProbs);
        let fwd = max_rel(&out_g, &out_c);
        let bwd = max_rel(&dqkv_g, &dqkv_c);
        assert!(fwd < fwd_tol, "{dtype:?} {s:?}: forward differs by {fwd}");
        assert!(bwd < bwd_tol, "{dtype:?} {s:?}: backward differs by {bwd}");
    }
}

#[test]
fn flash_attention_f32_matches_cpu() {
    check(DType::F32, 2e-5, 1e-4);
}

#[test]
fn flash_attention_bf16_matches_cpu() {
    // bf16 storage of q, k (after RoPE), v, the output and dqkv: a few 2^-9 relative roundings.
    check(DType::BF16, 3e-2, 6e-2);
}

/// A second backward through the same forward reuses the kept log-sum-exps (the CUDA forward
/// keeps them for any later backward, as the tiled CPU kernel does).
#[test]
fn flash_attention_backward_twice() {
    let cuda = gpu();
    let s = AttnShape { batch: 2, seq: 40, n_heads: 4, n_kv_heads: 2, head_dim: 32 };
    let rope = Arc::new(Rope::new(40, 32, 10000.0));
    let qkv = Var::from_tensor(&randn(7, (80, 8 * 32)).to_device(&cuda).unwrap()).unwrap();
    let out = causal_attention(qkv.as_tensor(), s, &rope, Kernels::Fused, AttentionKernel::Tiled).unwrap();
    let up = randn(8, (80, 4 * 32)).to_device(&cuda).unwrap();
    let loss = (&out * &up).unwrap().sum_all().unwrap();
    let a = loss.backward().unwrap().get(qkv.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
    let b = loss.backward().unwrap().get(qkv.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
    assert_eq!(max_rel(&a, &b), 0.0, "the backward is deterministic and repeatable");
}
