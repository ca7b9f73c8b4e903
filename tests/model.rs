//! The model against its equations: sub-layers against a hand-written reference, full-model
//! gradients against finite differences, and gradient flow through every parameter.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use keel::model::{Branch, Model, Residual};
use keel::ops::Kernels;

fn set_param(model: &Model, name: &str, seed: u64, around_one: bool) {
    let p = model.params.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no param {name}"));
    let mut t = (randn(seed, p.var.dims(), p.var.dtype()) * 0.3).unwrap();
    if around_one {
        t = (t + 1.0).unwrap();
    }
    p.var.set(&t).unwrap();
}

/// Host-side RMSNorm of each row: x / sqrt(mean(x^2) + eps) * g.
fn rms_rows(x: &[f64], g: &[f64], c: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|r| {
            let inv = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / c as f64 + 1e-5).sqrt();
            r.iter().zip(g).map(move |(v, g)| v * inv * g).collect::<Vec<_>>()
        })
        .collect()
}

fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut o = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            o[i * m + j] = (0..k).map(|l| a[i * k + l] * b[l * m + j]).sum();
        }
    }
    o
}

/// F(x) of a SwiGLU FFN computed by hand: W_out(silu(x W_gate) * (x W_up)).
fn ffn_ref(x: &[f64], w_in: &[f64], w_out: &[f64], n: usize, c: usize, f: usize) -> Vec<f64> {
    let h = matmul(x, w_in, n, c, 2 * f);
    let mut a = vec![0.0; n * f];
    for i in 0..n {
        for j in 0..f {
            let g = h[i * 2 * f + j];
            a[i * f + j] = g / (1.0 + (-g).exp()) * h[i * 2 * f + f + j];
        }
    }
    matmul(&a, w_out, n, f, c)
}

/// Checks FFN sub-layer `index` of a `placement` model against the paper's equation written out
/// by hand; `form` names the expected residual form and alpha.
fn check_ffn_sublayer(placement: &str, index: usize, expect: &str, alpha: f64) {
    let r = tiny(&[&format!("model.placement={placement}")]);
    let model = Model::new(&r, &Device::Cpu).unwrap();
    for p in &model.params {
        set_param(&model, &p.name, keel::rng::hash_key(&p.name), p.name.ends_with("weight"));
    }
    let sl = &model.sublayers[index];
    let (n, c, f) = (6, r.model().d_model, r.d_ff());
    let x = randn(11, &[n, c], DType::F64);
    let got = to_vec(&sl.forward(&x, 2, 3, &model.rope, Kernels::Fused).unwrap());
    let Branch::Ffn(ffn) = &sl.branch else { panic!("sub-layer {index} is not an FFN") };
    let (w_in, w_out) = (to_vec(&ffn.w_in), to_vec(&ffn.w_out));
    let xs = to_vec(&x);
    let add = |a: &[f64], s: f64, b: &[f64]| a.iter().zip(b).map(|(a, b)| s * a + b).collect::<Vec<_>>();
    let want = match (&sl.residual, expect) {
        (Residual::Pre { norm }, "pre") => {
            add(&xs, 1.0, &ffn_ref(&rms_rows(&xs, &to_vec(&norm.gamma), c), &w_in, &w_out, n, c, f))
        }
        (Residual::Post { alpha: a, norm }, "post") => {
            assert_eq!(*a, alpha);
            rms_rows(&add(&xs, alpha, &ffn_ref(&xs, &w_in, &w_out, n, c, f)), &to_vec(&norm.gamma), c)
        }
        (Residual::Keel { alpha: a, norm_in, norm_out }, "keel") => {
            assert_eq!(*a, alpha);
            let branch = ffn_ref(&rms_rows(&xs, &to_vec(&norm_in.gamma), c), &w_in, &w_out, n, c, f);
            rms_rows(&add(&xs, alpha, &branch), &to_vec(&norm_out.gamma), c)
        }
        (other, _) => panic!("{placement} sub-layer {index}: expected {expect}, got {other:?}"),
    };
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-10 * (1.0 + w.abs()), "{placement} sub-layer {index} element {i}: {g} vs {w}");
    }
}

#[test]
fn sublayers_compute_their_equations() {
    // depth 4: sub-layers 0 attn, 1 ffn, 2 attn, 3 ffn; alpha = L = 4.
    check_ffn_sublayer("pre_ln", 3, "pre", 1.0);
    check_ffn_sublayer("post_ln", 3, "post", 1.0);
    check_ffn_sublayer("keel", 3, "keel", 4.0);
    // Keel v2's first FFN uses alpha = 1.
    check_ffn_sublayer("keel", 1, "keel", 1.0);
}

#[test]
fn keel_first_layer_variants_and_alpha() {
    let forms = |sets: &[&str]| -> Vec<String> {
        let m = Model::new(&tiny(sets), &Device::Cpu).unwrap();
        m.sublayers
            .iter()
            .map(|s| match &s.residual {
                Residual::Pre { .. } => "pre".to_string(),
                Residual::Post { alpha, .. } => format!("post{alpha}"),
                Residual::Keel { alpha, .. } => format!("keel{alpha}"),
            })
            .collect()
    };
    assert_eq!(forms(&["model.placement=keel"]), ["pre", "keel1", "keel4", "keel4"]);
    assert_eq!(forms(&["model.placement=keel", "model.keel_first_layer=v1"]), ["pre", "pre", "keel4", "keel4"]);
    assert_eq!(forms(&["model.placement=keel", "model.alpha=2.5"]), ["pre", "keel1", "keel2.5", "keel2.5"]);
    assert_eq!(forms(&["model.placement=post_ln"]), ["post1", "post1", "post1", "post1"]);
    let m = Model::new(&tiny(&["model.placement=pre_ln"]), &Device::Cpu).unwrap();
    assert!(m.final_norm.is_some());
    let m = Model::new(&tiny(&["model.placement=keel"]), &Device::Cpu).unwrap();
    assert!(m.final_norm.is_none());
}

/// Central finite differences on a few entries of every parameter, f64.
fn finite_difference_check(sets: &[&str], kernels: Kernels) {
    let r = tiny(sets);
    let mut model = Model::new(&r, &Device::Cpu).unwrap();
    model.kernels = kernels;
    // Move away from the symmetric init (gains 1) so every term is exercised.
    for p in &model.params {
        if p.name.ends_with("weight") || p.name.ends_with("bias") {
            set_param(&model, &p.name, keel::rng::hash_key(&p.name), p.name.ends_with("weight"));
        }
    }
    let (x, y) = tokens(3, 2, 8, r.vocab_size());
    let loss = |m: &Model| m.loss(&x, &y).unwrap().to_scalar::<f64>().unwrap();
    let grads = model.loss(&x, &y).unwrap().backward().unwrap();
    let mut rng = keel::rng::Rng::new(17);
    let eps = 1e-5;
    for p in &model.params {
        let g = to_vec(grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{} got no gradient", p.name)));
        let base = to_vec(p.var.as_tensor());
        for _ in 0..3 {
            let i = rng.below(base.len() as u64) as usize;
            let mut v = base.clone();
            v[i] = base[i] + eps;
            p.var.set(&Tensor::from_vec(v.clone(), p.var.dims(), &Device::Cpu).unwrap()).unwrap();
            let up = loss(&model);
            v[i] = base[i] - eps;
            p.var.set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap()).unwrap();
            let down = loss(&model);
            p.var.set(&Tensor::from_vec(base.clone(), p.var.dims(), &Device::Cpu).unwrap()).unwrap();
            let fd = (up - down) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 1e-7 + 1e-5 * g[i].abs(),
                "{sets:?} {kernels:?}: d loss / d {}[{i}] analytic {} vs finite difference {fd}",
                p.name,
                g[i]
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences_per_placement() {
    for placement in ["pre_ln", "post_ln", "keel"] {
        let sets = [format!("model.placement={placement}")];
        let sets: Vec<&str> = sets.iter().map(|s| s.as_str()).collect();
        finite_difference_check(&sets, Kernels::Fused);
        finite_difference_check(&sets, Kernels::Composite);
    }
}

#[test]
fn gradients_match_finite_differences_for_options() {
    finite_difference_check(
        &["model.placement=keel", "model.keel_first_layer=v1", "model.tie_embeddings=true"],
        Kernels::Fused,
    );
    finite_difference_check(&["model.placement=keel", "model.norm=layer_norm", "model.ffn=gelu"], Kernels::Fused);
    finite_difference_check(
        &["model.placement=pre_ln", "model.n_kv_heads=2", "model.final_norm=false"],
        Kernels::Fused,
    );
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let variants: &[&[&str]] = &[
        &["model.placement=pre_ln"],
        &["model.placement=post_ln"],
        &["model.placement=keel"],
        &["model.placement=keel", "model.keel_first_layer=v1"],
        &["model.placement=keel", "model.norm=layer_norm", "model.ffn=gelu", "model.tie_embeddings=true"],
        &["model.placement=pre_ln", "model.norm=layer_norm"],
    ];
    for sets in variants {
        let mut all = sets.to_vec();
        all.push("train.precision=f32");
        let r = tiny(&all);
        for kernels in [Kernels::Fused, Kernels::Composite] {
            let mut model = Model::new(&r, &Device::Cpu).unwrap();
            model.kernels = kernels;
            let (x, y) = tokens(5, 2, 8, r.vocab_size());
            let grads = model.loss(&x, &y).unwrap().backward().unwrap();
            for p in &model.params {
                let g = grads
                    .get(p.var.as_tensor())
                    .unwrap_or_else(|| panic!("{sets:?} {kernels:?}: {} got no gradient", p.name));
                let sq = keel::optim::sum_squares(g).unwrap();
                assert!(sq.is_finite() && sq > 0.0, "{sets:?} {kernels:?}: {} gradient norm^2 {sq}", p.name);
            }
        }
    }
}

/// Per-sub-layer gradient norms of an untrained deep model, bottom to top.
fn layer_grad_norms(placement: &str, depth: usize, init: &str) -> Vec<f64> {
    let r = tiny(&[
        &format!("model.placement={placement}"),
        &format!("model.depth={depth}"),
        "model.d_model=32",
        "model.n_kv_heads=2",
        "train.seq_len=16",
        "train.batch_size=4",
        "train.precision=f32",
        "model.ffn=gelu",
        init,
    ]);
    let model = Model::new(&r, &Device::Cpu).unwrap();
    let (x, _) = tokens(9, 4, 16, r.vocab_size());
    // Next-token targets from the same stream, so the loss is a real LM loss.
    let y = Tensor::cat(&[x.narrow(1, 1, 15).unwrap(), x.narrow(1, 0, 1).unwrap()], 1).unwrap();
    let grads = model.loss(&x, &y).unwrap().backward().unwrap();
    let mut norms = vec![0.0; depth];
    for p in &model.params {
        if let keel::model::Group::SubLayer(i) = p.group {
            norms[i] += keel::optim::sum_squares(grads.get(p.var.as_tensor()).unwrap()).unwrap();
        }
    }
    norms.into_iter().map(f64::sqrt).collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The paper's central claim at initialization: Post-LN's gradient vanishes towards the bottom,
/// Keel's does not. Compared: mean norm of the bottom quarter over the top quarter of sub-layers
/// (Keel's first two sub-layers, which have no alpha, are left out).
///
/// The paper's analysis follows the residual path and assumes a branch output comparable to the
/// shortcut. Measured here (depth 64, d_model 32), that regime needs care:
/// - with N(0, 0.02^2) weights the branches start ~30x smaller than the shortcut and Post-LN's
///   per-sub-layer norms are flat at step 0 (bottom/top ~0.99); the decay appears once training
///   grows the branches;
/// - with a Xavier-scale init and SwiGLU, Post-LN's norms *grow* towards the bottom (the gated
///   product's Jacobian is about twice its output scale, so the branch path amplifies);
/// - with a Xavier-scale init (std = 1/sqrt(d_model)) and a GELU FFN, whose Jacobian matches its
///   output scale, the residual-path decay shows: this is the regime the test uses.
#[test]
fn post_ln_gradients_vanish_and_keel_gradients_do_not() {
    let depth = 64;
    let q = depth / 4;
    let init = format!("model.init_std={}", 1.0 / 32f64.sqrt());
    let post = layer_grad_norms("post_ln", depth, &init);
    let keel = layer_grad_norms("keel", depth, &init);
    let post_ratio = mean(&post[..q]) / mean(&post[depth - q..]);
    let keel_ratio = mean(&keel[2..2 + q]) / mean(&keel[depth - q..]);
    eprintln!("bottom/top gradient-norm ratio at depth {depth}: post_ln {post_ratio:.3}, keel {keel_ratio:.3}");
    assert!(post_ratio < 0.4, "Post-LN bottom/top ratio {post_ratio} should be well below 1");
    assert!(keel_ratio > 0.6 && keel_ratio < 1.6, "Keel bottom/top ratio {keel_ratio} should be near 1");
    assert!(keel_ratio > 3.0 * post_ratio);
}
