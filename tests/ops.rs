//! Each fused CPU kernel against its composite (stock Candle) twin, forward and backward,
//! on several shapes including odd sizes, in f64 and f32.

mod common;
use candle_core::{DType, Tensor, Var};
use common::*;
use keel::ops::{self, composite, AttentionKernel, AttnShape, Kernels, Rope};
use std::sync::Arc;

/// Forward outputs and input gradients of `f` for a random upstream gradient.
fn run(inputs: &[Var], f: &dyn Fn(&[Tensor]) -> Tensor, seed: u64) -> (Tensor, Vec<Tensor>) {
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let w = randn(seed, out.dims(), out.dtype());
    let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = inputs.iter().map(|v| grads.get(v.as_tensor()).expect("gradient reaches every input").clone()).collect();
    (out, gs)
}

fn compare(
    name: &str,
    inputs: &[Var],
    fused: &dyn Fn(&[Tensor]) -> Tensor,
    reference: &dyn Fn(&[Tensor]) -> Tensor,
    tol: f64,
) {
    let (a, ga) = run(inputs, fused, 99);
    let (b, gb) = run(inputs, reference, 99);
    let d = max_rel_diff(&a, &b);
    assert!(d < tol, "{name} forward differs by {d}");
    for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
        let d = max_rel_diff(x, y);
        assert!(d < tol, "{name} gradient of input {i} differs by {d}");
    }
}

#[test]
fn rms_norm_matches_composite() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (n, c) in [(1, 1), (3, 7), (33, 16), (70, 65)] {
            let x = var(1, &[n, c], dtype);
            let g = var(2, &[c], dtype);
            compare(
                &format!("rms_norm {n}x{c} {dtype:?}"),
                &[x, g],
                &|t| ops::rms_norm(&t[0], &t[1], 1e-5, Kernels::Fused).unwrap(),
                &|t| composite::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
                tol,
            );
        }
    }
}

#[test]
fn layer_norm_matches_composite() {
    for (dtype, tol) in [(DType::F64, 1e-11), (DType::F32, 1e-4)] {
        for (n, c) in [(1, 2), (3, 7), (33, 16), (70, 65)] {
            let x = var(11, &[n, c], dtype);
            let g = var(12, &[c], dtype);
            let b = var(13, &[c], dtype);
            compare(
                &format!("layer_norm {n}x{c} {dtype:?}"),
                &[x, g, b],
                &|t| ops::layer_norm(&t[0], &t[1], &t[2], 1e-5, Kernels::Fused).unwrap(),
                &|t| composite::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
                tol,
            );
        }
    }
}

#[test]
fn residual_rms_norm_matches_composite() {
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
        for alpha in [1.0, 3.0, 2048.0] {
            for (n, c) in [(5, 3), (40, 24), (33, 37)] {
                let x = var(3, &[n, c], dtype);
                let f = var(4, &[n, c], dtype);
                let g = var(5, &[c], dtype);
                compare(
                    &format!("residual_rms_norm alpha {alpha} {n}x{c} {dtype:?}"),
                    &[x, f, g],
                    &|t| ops::residual_rms_norm(&t[0], &t[1], &t[2], alpha, 1e-5, Kernels::Fused).unwrap(),
                    &|t| ops::residual_rms_norm(&t[0], &t[1], &t[2], alpha, 1e-5, Kernels::Composite).unwrap(),
                    tol,
                );
            }
        }
    }
}

/// The fused kernels run their loops compiled for AVX2 when the CPU has it. Only the vector width
/// changes (no FMA contraction, fixed reduction order), so every output and gradient must be
/// bit-identical to the baseline x86-64 build's: runs stay reproducible across CPUs.
#[test]
fn simd_paths_are_bit_identical() {
    type Case = (&'static str, Vec<Var>, Box<dyn Fn(&[Tensor]) -> Tensor>);
    let s = AttnShape { batch: 2, seq: 37, n_heads: 4, n_kv_heads: 2, head_dim: 10 };
    let rope = Arc::new(Rope::new(40, 10, 10_000.0));
    for dtype in [DType::F32, DType::F64] {
        let targets =
            Tensor::from_vec((0..45u32).map(|i| (i * 7) % 11).collect(), 45, &candle_core::Device::Cpu).unwrap();
        let rope = rope.clone();
        // Two tiles and a partial third for the tiled attention.
        let s2 = AttnShape { batch: 1, seq: 150, n_heads: 2, n_kv_heads: 1, head_dim: 10 };
        let rope2 = Arc::new(Rope::new(150, 10, 10_000.0));
        let cases: Vec<Case> = vec![
            (
                "rms_norm",
                vec![var(1, &[45, 37], dtype), var(2, &[37], dtype)],
                Box::new(|t| ops::rms_norm(&t[0], &t[1], 1e-5, Kernels::Fused).unwrap()),
            ),
            (
                "residual_rms_norm",
                vec![var(3, &[45, 37], dtype), var(4, &[45, 37], dtype), var(5, &[37], dtype)],
                Box::new(|t| ops::residual_rms_norm(&t[0], &t[1], &t[2], 64.0, 1e-5, Kernels::Fused).unwrap()),
            ),
            ("swiglu", vec![var(6, &[45, 2 * 29], dtype)], Box::new(|t| ops::swiglu(&t[0], Kernels::Fused).unwrap())),
            ("gelu", vec![var(12, &[45, 37], dtype)], Box::new(|t| ops::gelu(&t[0], Kernels::Fused).unwrap())),
            (
                "layer_norm",
                vec![var(9, &[45, 37], dtype), var(10, &[37], dtype), var(11, &[37], dtype)],
                Box::new(|t| ops::layer_norm(&t[0], &t[1], &t[2], 1e-5, Kernels::Fused).unwrap()),
            ),
            (
                "attention",
                vec![var(7, &[s.batch * s.seq, (s.n_heads + 2 * s.n_kv_heads) * s.head_dim], dtype)],
                Box::new(move |t| {
                    ops::causal_attention(&t[0], s, &rope, Kernels::Fused, AttentionKernel::SavedProbs).unwrap()
                }),
            ),
            (
                "tiled attention",
                vec![var(7, &[s2.batch * s2.seq, (s2.n_heads + 2 * s2.n_kv_heads) * s2.head_dim], dtype)],
                Box::new(move |t| {
                    ops::causal_attention(&t[0], s2, &rope2, Kernels::Fused, AttentionKernel::Tiled).unwrap()
                }),
            ),
            (
                "cross_entropy",
                vec![var(8, &[45, 11], dtype)],
                Box::new(move |t| ops::cross_entropy(&t[0], &targets, Kernels::Fused).unwrap()),
            ),
        ];
        for (name, inputs, f) in cases {
            ops::set_kernel_simd_limit(ops::SimdLevel::Baseline);
            let (a, ga) = run(&inputs, &*f, 5);
            // Every level this CPU has (AVX2, AVX-512) against the baseline SSE2 path.
            for level in ops::SimdLevel::ALL.into_iter().filter(|&l| l <= ops::SimdLevel::detected()).skip(1) {
                ops::set_kernel_simd_limit(level);
                assert_eq!(ops::simd_level(), level);
                let (b, gb) = run(&inputs, &*f, 5);
                assert_eq!(to_vec(&a), to_vec(&b), "{name} {dtype:?} forward at {level:?}");
                for (x, y) in ga.iter().zip(&gb) {
                    assert_eq!(to_vec(x), to_vec(y), "{name} {dtype:?} gradient at {level:?}");
                }
            }
            ops::set_simd(true);
        }
    }
}

#[test]
fn swiglu_matches_composite() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (n, f) in [(1, 1), (7, 5), (65, 24)] {
            let h = var(6, &[n, 2 * f], dtype);
            compare(
                &format!("swiglu {n}x{f} {dtype:?}"),
                &[h],
                &|t| ops::swiglu(&t[0], Kernels::Fused).unwrap(),
                &|t| composite::swiglu(&t[0]).unwrap(),
                tol,
            );
        }
    }
}

#[test]
fn attention_matches_composite() {
    let cases = [
        // (batch, seq, heads, kv heads, head dim)
        (1, 1, 1, 1, 2),
        (2, 5, 2, 1, 4),
        (3, 7, 4, 2, 6),
        (2, 33, 3, 3, 8),
        (1, 16, 4, 1, 10),
        (1, 70, 2, 1, 4),
    ];
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
        for (batch, seq, n_heads, n_kv_heads, head_dim) in cases {
            let s = AttnShape { batch, seq, n_heads, n_kv_heads, head_dim };
            let rope = Arc::new(Rope::new(seq + 3, head_dim, 10_000.0));
            let qkv = var(7, &[batch * seq, (n_heads + 2 * n_kv_heads) * head_dim], dtype);
            compare(
                &format!("attention {s:?} {dtype:?}"),
                &[qkv],
                &|t| ops::causal_attention(&t[0], s, &rope, Kernels::Fused, AttentionKernel::SavedProbs).unwrap(),
                &|t| ops::causal_attention(&t[0], s, &rope, Kernels::Composite, AttentionKernel::SavedProbs).unwrap(),
                tol,
            );
        }
    }
}

/// The flash-style tiled attention against the kernel that keeps the (T, T) probabilities, and
/// against the composite twin, forward and backward: one tile, several tiles with a partial last
/// one (tiles are 128 rows), GQA, odd head sizes.
#[test]
fn tiled_attention_matches_saved_probabilities() {
    let cases = [
        // (batch, seq, heads, kv heads, head dim)
        (1, 1, 1, 1, 2),
        (2, 7, 4, 2, 6),
        (1, 128, 2, 1, 8),
        (2, 129, 3, 3, 10),
        (1, 130, 4, 1, 4),
        (1, 201, 2, 2, 16),
    ];
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
        for (batch, seq, n_heads, n_kv_heads, head_dim) in cases {
            let s = AttnShape { batch, seq, n_heads, n_kv_heads, head_dim };
            let rope = Arc::new(Rope::new(seq + 3, head_dim, 10_000.0));
            let qkv = var(11, &[batch * seq, (n_heads + 2 * n_kv_heads) * head_dim], dtype);
            let tiled =
                |t: &[Tensor]| ops::causal_attention(&t[0], s, &rope, Kernels::Fused, AttentionKernel::Tiled).unwrap();
            compare(
                &format!("tiled attention {s:?} {dtype:?} vs saved probabilities"),
                std::slice::from_ref(&qkv),
                &tiled,
                &|t| ops::causal_attention(&t[0], s, &rope, Kernels::Fused, AttentionKernel::SavedProbs).unwrap(),
                tol,
            );
            if seq <= 129 {
                compare(
                    &format!("tiled attention {s:?} {dtype:?} vs composite"),
                    &[qkv],
                    &tiled,
                    &|t| ops::causal_attention(&t[0], s, &rope, Kernels::Composite, AttentionKernel::Tiled).unwrap(),
                    tol,
                );
            }
        }
    }
}

/// Large scores (a row's max far above the rest) must not overflow the online softmax, and a
/// second backward through the same graph (the log-sum-exps are kept, not taken) gives the same
/// gradient.
#[test]
fn tiled_attention_is_stable_and_backward_repeats() {
    let s = AttnShape { batch: 1, seq: 150, n_heads: 2, n_kv_heads: 1, head_dim: 8 };
    let rope = Arc::new(Rope::new(150, 8, 10_000.0));
    for dtype in [DType::F32, DType::F64] {
        // Scores of order 30^2 * 8 / sqrt(8): exp would overflow f32 without the running max.
        let qkv = Var::from_tensor(&(randn(12, &[150, 32], dtype) * 30.0).unwrap()).unwrap();
        let run = |kernel| {
            let out = ops::causal_attention(qkv.as_tensor(), s, &rope, Kernels::Fused, kernel).unwrap();
            let loss = (&out * randn(13, out.dims(), dtype)).unwrap().sum_all().unwrap();
            let first = loss.backward().unwrap().get(qkv.as_tensor()).unwrap().clone();
            let second = loss.backward().unwrap().get(qkv.as_tensor()).unwrap().clone();
            (out, first, second)
        };
        let (out, first, second) = run(AttentionKernel::Tiled);
        let (want, want_grad, _) = run(AttentionKernel::SavedProbs);
        assert!(to_vec(&out).iter().chain(&to_vec(&first)).all(|x| x.is_finite()), "{dtype:?}: non-finite values");
        assert_eq!(to_vec(&first), to_vec(&second), "{dtype:?}: a second backward differs");
        let tol = if dtype == DType::F64 { 1e-9 } else { 2e-3 };
        let d = max_rel_diff(&out, &want);
        assert!(d < tol, "{dtype:?} forward differs by {d}");
        let d = max_rel_diff(&first, &want_grad);
        assert!(d < tol, "{dtype:?} gradient differs by {d}");
    }
}

/// The composite attention itself against a direct loop over the definition, so the pair above
/// is anchored to the equation and not only to each other.
#[test]
fn composite_attention_matches_definition() {
    let (b, t, h, hkv, d) = (2, 4, 2, 1, 4);
    let s = AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d };
    let rope = Rope::new(t, d, 10_000.0);
    let qkv = randn(8, &[b * t, (h + 2 * hkv) * d], DType::F64);
    let got = to_vec(&composite::causal_attention(&qkv, s, &rope).unwrap());
    let x = to_vec(&qkv);
    let w = (h + 2 * hkv) * d;
    let rot = |row: usize, col: usize, pos: usize| -> Vec<f64> {
        let v = &x[row * w + col..row * w + col + d];
        let half = d / 2;
        let mut o = vec![0.0; d];
        for i in 0..half {
            let a = pos as f64 * 10_000f64.powf(-(2.0 * i as f64) / d as f64);
            o[i] = v[i] * a.cos() - v[i + half] * a.sin();
            o[i + half] = v[i + half] * a.cos() + v[i] * a.sin();
        }
        o
    };
    for bi in 0..b {
        for head in 0..h {
            let g = head / (h / hkv);
            for i in 0..t {
                let q = rot(bi * t + i, head * d, i);
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        q.iter().zip(rot(bi * t + j, (h + g) * d, j)).map(|(a, b)| a * b).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
                for c in 0..d {
                    let want: f64 =
                        (0..=i).map(|j| (scores[j] - mx).exp() / z * x[(bi * t + j) * w + (h + hkv + g) * d + c]).sum();
                    let have = got[(bi * t + i) * h * d + head * d + c];
                    assert!((want - have).abs() < 1e-12, "b{bi} h{head} t{i} c{c}: {have} vs {want}");
                }
            }
        }
    }
}

/// The backward without the forward's saved probabilities (a second backward through the same
/// graph recomputes them) gives the same gradient.
#[test]
fn attention_backward_recomputes_probabilities_when_not_saved() {
    let s = AttnShape { batch: 2, seq: 40, n_heads: 4, n_kv_heads: 2, head_dim: 6 };
    let rope = Arc::new(Rope::new(40, 6, 10_000.0));
    let qkv = var(9, &[80, 48], DType::F64);
    let out = ops::causal_attention(qkv.as_tensor(), s, &rope, Kernels::Fused, AttentionKernel::SavedProbs).unwrap();
    let loss = (&out * randn(10, out.dims(), DType::F64)).unwrap().sum_all().unwrap();
    let first = loss.backward().unwrap();
    let second = loss.backward().unwrap();
    let d = max_rel_diff(first.get(qkv.as_tensor()).unwrap(), second.get(qkv.as_tensor()).unwrap());
    assert!(d < 1e-12, "saved vs recomputed probabilities: gradients differ by {d}");
}

/// The f32 normal CDF behind the fused GELU against Candle's f64 erf: absolute error below 3e-7
/// everywhere, and small relative error in the lower tail, where Phi itself is tiny.
#[test]
fn normal_cdf_f32_is_accurate() {
    let (mut worst_abs, mut worst_tail): (f64, f64) = (0.0, 0.0);
    let mut x = -12.0f32;
    while x < 12.0 {
        // erfc, not 1 + erf, which cancels catastrophically in the lower tail.
        let want = 0.5 * candle_core::cpu::erf::erfc_f64(-(x as f64) / 2f64.sqrt());
        let got = ops::normal_cdf_f32(x) as f64;
        worst_abs = worst_abs.max((got - want).abs());
        if (-8.0..-1.0).contains(&x) {
            worst_tail = worst_tail.max((got - want).abs() / want);
        }
        x += 0.0071;
    }
    assert!(worst_abs < 3e-7, "absolute error {worst_abs}");
    assert!(worst_tail < 1e-5, "relative error in the lower tail {worst_tail}");
    assert_eq!(ops::normal_cdf_f32(f32::INFINITY), 1.0);
    assert!(ops::normal_cdf_f32(-50.0) < 1e-30);
}

#[test]
fn gelu_matches_composite() {
    // Candle's own gelu_erf backward rounds 1/sqrt(2 pi) to 0.398942 (relative 7e-7), hence the
    // f64 tolerance; the f32 kernel's normal CDF is accurate to 3e-7 (test above).
    for (dtype, tol) in [(DType::F64, 2e-6), (DType::F32, 1e-5)] {
        for shape in [vec![1, 1], vec![7, 5], vec![65, 96], vec![3, 11, 13]] {
            let h = var(14, &shape, dtype);
            compare(
                &format!("gelu {shape:?} {dtype:?}"),
                &[h],
                &|t| ops::gelu(&t[0], Kernels::Fused).unwrap(),
                &|t| t[0].gelu_erf().unwrap(),
                tol,
            );
        }
    }
}

#[test]
fn fast_exp_is_accurate() {
    let mut worst: f64 = 0.0;
    let mut x = -87.0f32;
    while x < 88.0 {
        let want = (x as f64).exp();
        let got = ops::exp_f32(x) as f64;
        worst = worst.max((got - want).abs() / want);
        x += 0.0137;
    }
    assert!(worst < 3e-7, "relative error {worst}");
    assert_eq!(ops::exp_f32(0.0), 1.0);
    assert!(ops::exp_f32(-1e4) < 1e-37);
}

#[test]
fn linear_matches_matmul() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (n, k, m) in [(1, 1, 1), (5, 3, 7), (130, 64, 33), (1024, 16, 8)] {
            let x = var(11, &[n, k], dtype);
            let w = var(12, &[k, m], dtype);
            compare(
                &format!("linear {n}x{k}x{m} {dtype:?}"),
                &[x, w],
                &|t| ops::linear(&t[0], &t[1], Kernels::Fused).unwrap(),
                &|t| t[0].matmul(&t[1]).unwrap(),
                tol,
            );
        }
    }
}

#[test]
fn cross_entropy_matches_candle_nn() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (n, v) in [(1, 2), (7, 5), (100, 256)] {
            let z = var(13, &[n, v], dtype);
            let mut rng = keel::rng::Rng::new(14);
            let t: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
            let t = Tensor::from_vec(t, n, &candle_core::Device::Cpu).unwrap();
            let scaled = |l: Tensor| (l * 3.0).unwrap().reshape(1).unwrap();
            compare(
                &format!("cross_entropy {n}x{v} {dtype:?}"),
                &[z],
                &|x| scaled(ops::cross_entropy(&x[0], &t, Kernels::Fused).unwrap()),
                &|x| scaled(candle_nn::loss::cross_entropy(&x[0], &t).unwrap()),
                tol,
            );
        }
    }
    let z = randn(15, &[2, 3], DType::F32);
    let bad = Tensor::new(&[0u32, 3], &candle_core::Device::Cpu).unwrap();
    assert!(ops::cross_entropy(&z, &bad, Kernels::Fused).unwrap_err().to_string().contains("outside the vocabulary"));
}

/// gemm sums in another order at each SIMD level (AVX-512, AVX2+FMA, baseline), so f32 products
/// are not bit-identical across CPUs; whichever level this CPU uses, they must agree with f64
/// products of the same inputs within f32 rounding (2e-6 x sqrt(length of the sums), about 30
/// times f32's epsilon per sqrt-term), at the model's own shapes, forward and backward.
#[test]
fn f32_matrix_products_agree_with_f64_at_the_models_shapes() {
    for (n, k, m) in [(1024, 128, 384), (1024, 128, 768), (1024, 384, 128), (1024, 128, 256), (333, 77, 129)] {
        let x = var(21, &[n, k], DType::F32);
        let w = var(22, &[k, m], DType::F32);
        let (y, g) = run(&[x.clone(), w.clone()], &|t| ops::linear(&t[0], &t[1], Kernels::Fused).unwrap(), 23);
        let to64 = |v: &Var| Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let (y64, g64) = run(&[to64(&x), to64(&w)], &|t| ops::linear(&t[0], &t[1], Kernels::Fused).unwrap(), 23);
        let tol = |len: usize| 2e-6 * (len as f64).sqrt();
        let d = max_rel_diff(&y.to_dtype(DType::F64).unwrap(), &y64);
        assert!(d < tol(k), "{n}x{k}x{m} forward: {d} at matmul SIMD {}", keel::ops::matmul_simd());
        // dL/dx sums over m, dL/dw over n.
        for ((a, b), len) in g.iter().zip(&g64).zip([m, n]) {
            let d = max_rel_diff(&a.to_dtype(DType::F64).unwrap(), b);
            assert!(d < tol(len), "{n}x{k}x{m} backward: {d} (sums of {len})");
        }
    }
}

/// Incremental-decoding attention, fused (the CPU kernel with its own cache) and composite
/// (candle-nn's cache): fed a sequence in pieces (a prompt, single tokens, a longer piece), each
/// piece's rows equal those rows of one full causal pass. Grouped and multi-query heads, a batch
/// of two, a context that is not a multiple of the kernel's key block, f64 and f32.
#[test]
fn decode_attention_in_pieces_matches_the_full_pass() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (h, hkv, d) in [(4, 2, 8), (3, 1, 6), (2, 2, 16)] {
            let (b, t) = (2, 37);
            let full = AttnShape { batch: b, seq: t, n_heads: h, n_kv_heads: hkv, head_dim: d };
            let rope = Arc::new(Rope::new(t, d, 10_000.0));
            let w = (h + 2 * hkv) * d;
            let qkv = randn(21, &[b * t, w], dtype);
            let want = composite::causal_attention(&qkv, full, &rope).unwrap().reshape((b, t, h * d)).unwrap();
            for k in [Kernels::Fused, Kernels::Composite] {
                let mut cache = ops::AttentionCache::new(t);
                let mut start = 0;
                for piece in [5, 1, 1, 17, 1, 12] {
                    let s = AttnShape { seq: piece, ..full };
                    let rows = qkv.reshape((b, t, w)).unwrap().narrow(1, start, piece).unwrap();
                    let rows = rows.contiguous().unwrap().reshape((b * piece, w)).unwrap();
                    let got = ops::attention_at(&rows, s, &rope, start, &mut cache, k).unwrap();
                    let want = want.narrow(1, start, piece).unwrap().contiguous().unwrap();
                    let d = max_rel_diff(&got.reshape((b, piece, h * d)).unwrap(), &want);
                    assert!(d < tol, "{k:?} {dtype:?} heads {h}/{hkv}: positions {start}.. differ by {d}");
                    start += piece;
                    assert_eq!(cache.len(), start);
                }
                // Full: the next position has nowhere to go, and a wrong position is refused.
                let one = qkv.narrow(0, 0, b).unwrap();
                let s = AttnShape { seq: 1, ..full };
                assert!(ops::attention_at(&one, s, &rope, t, &mut cache, k).is_err());
                let mut fresh = ops::AttentionCache::new(t);
                assert!(ops::attention_at(&one, s, &rope, 3, &mut fresh, k).is_err());
            }
        }
    }
}
