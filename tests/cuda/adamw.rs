//! CUDA kernels of the adamw family against their CPU twins (see tests/cuda.rs): the multi-tensor
//! fused step (`AdamW::clip_and_step` with src/ops/cuda/adamw.cu) against the CPU AdamW on the same
//! parameters and gradients, and `Trainer` steps with the fused step against the composed one.

use super::{gpu, max_rel};
use candle_core::{DType, Device, Tensor, Var};
use keel::config::{Config, TrainConfig};
use keel::data::Corpus;
use keel::model::{Group, Param};
use keel::ops::KernelChoice;
use keel::optim::{AdamW, GradStats};
use keel::rng::Rng;
use keel::train::Trainer;

fn randn(seed: u64, n: usize, scale: f64) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
}

/// Odd lengths around the kernels' 4-wide loads and 16384-element chunks, 24 tensors in all.
const LENS: [usize; 24] = [
    1,
    7,
    1000,
    65537,
    1 << 20,
    3,
    4,
    5,
    33,
    127,
    16383,
    16384,
    16385,
    32768 + 3,
    64 * 48,
    48,
    2,
    100_003,
    9,
    256,
    4099,
    1 << 14 << 2,
    17,
    77_777,
];

/// The parameters as f32 CPU values (optionally rounded to bf16), on `dev` in `dtype`. Every
/// other tensor takes weight decay.
fn params(dev: &Device, dtype: DType, round_bf16: bool) -> Vec<Param> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut t = randn(100 + i as u64, n, 1.0);
            if round_bf16 {
                t = t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
            }
            let t = t.to_dtype(dtype).unwrap().to_device(dev).unwrap();
            Param { name: format!("p{i}"), var: Var::from_tensor(&t).unwrap(), decay: i % 2 == 0, group: Group::Head }
        })
        .collect()
}

/// Step `step`'s gradients (scaled by `scale`), in `dtype` on `dev`.
fn grads(step: u64, scale: f64, dev: &Device, dtype: DType) -> Vec<Tensor> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| {
            let g = randn(1000 * step + i as u64, n, scale);
            // bf16 gradients: the CPU side gets the same rounded values.
            let g = g.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
            g.to_dtype(dtype).unwrap().to_device(dev).unwrap()
        })
        .collect()
}

fn config(kernels: KernelChoice) -> TrainConfig {
    TrainConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, kernels, ..Default::default() }
}

fn cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn same_stats(what: &str, a: &GradStats, b: &GradStats) {
    assert_eq!(a.finite, b.finite, "{what}: finite");
    assert_eq!(a.param_sq.len(), b.param_sq.len(), "{what}");
    if !a.finite {
        return;
    }
    assert!(rel(a.grad_norm, b.grad_norm) < 1e-12, "{what}: grad norm {} vs {}", a.grad_norm, b.grad_norm);
    for (i, (x, y)) in a.param_sq.iter().zip(&b.param_sq).enumerate() {
        assert!(rel(*x, *y) < 1e-10, "{what}: sum of squares of tensor {i}: {x} vs {y}");
    }
}

/// Parameters and both moments of `opt` against the CPU's.
fn same_state(what: &str, ps: &[Param], opt: &AdamW, ref_ps: &[Param], ref_opt: &AdamW, p_tol: f64, mv_tol: f64) {
    for (p, q) in ps.iter().zip(ref_ps) {
        let d = max_rel(&cpu(p.var.as_tensor()), q.var.as_tensor());
        assert!(d < p_tol, "{what}: parameter {} differs by {d}", p.name);
    }
    let (a, b) = (opt.state_tensors(ps).unwrap(), ref_opt.state_tensors(ref_ps).unwrap());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let d = max_rel(&cpu(x), &cpu(y));
        assert!(d < mv_tol, "{what}: moment {name} differs by {d}");
    }
}

/// Several steps of the fused CUDA step, and of the composed CUDA step, against the CPU AdamW:
/// without clipping, with a threshold that is not reached, with one that is, then a non-finite
/// gradient that every path must skip, then a step after the skip.
#[test]
fn fused_adamw_on_cuda_matches_cpu() {
    let dev = gpu();
    let (cpu_ps, fused_ps, comp_ps) =
        (params(&Device::Cpu, DType::F32, false), params(&dev, DType::F32, false), params(&dev, DType::F32, false));
    let mut cpu_opt = AdamW::new(&cpu_ps, &config(KernelChoice::Fused)).unwrap();
    let mut fused = AdamW::new(&fused_ps, &config(KernelChoice::Fused)).unwrap();
    let mut comp = AdamW::new(&comp_ps, &config(KernelChoice::Composite)).unwrap();
    assert!(!cpu_opt.fused_on_device());
    assert!(fused.fused_on_device(), "f32 parameters on CUDA with train.kernels=fused take the fused step");
    assert!(!comp.fused_on_device(), "train.kernels=composite keeps the composed step");
    // The gradient norm is about 0.03 * sqrt(1.5e6) ~ 37.
    let steps: [(f64, f64, &str); 5] = [
        (1e-2, 0.0, "no clipping"),
        (5e-3, 1e6, "threshold not reached"),
        (2e-2, 1.0, "clipped"),
        (1e-2, 10.0, "clipped"),
        (3e-3, 0.0, "no clipping"),
    ];
    for (k, &(lr, max_norm, what)) in steps.iter().enumerate() {
        let step = k as u64 + 1;
        let what = format!("step {step} ({what})");
        let a = cpu_opt.clip_and_step(&cpu_ps, &grads(step, 0.03, &Device::Cpu, DType::F32), lr, max_norm).unwrap();
        let b = fused.clip_and_step(&fused_ps, &grads(step, 0.03, &dev, DType::F32), lr, max_norm).unwrap();
        let c = comp.clip_and_step(&comp_ps, &grads(step, 0.03, &dev, DType::F32), lr, max_norm).unwrap();
        assert!(a.finite, "{what}");
        same_stats(&format!("fused {what}"), &b, &a);
        same_stats(&format!("composed {what}"), &c, &a);
        // The fused update rounds as the CPU one does: only the clip coefficient, from f64 sums
        // taken in another order, can differ (in its last bit).
        same_state(&format!("fused {what}"), &fused_ps, &fused, &cpu_ps, &cpu_opt, 1e-6, 1e-6);
        same_state(&format!("composed {what}"), &comp_ps, &comp, &cpu_ps, &cpu_opt, 1e-5, 1e-5);
        assert_eq!(fused.steps_taken(), step);
    }

    // A NaN in one gradient and an infinity in another: no update anywhere, the step not counted.
    let before: Vec<Tensor> = fused_ps.iter().map(|p| cpu(p.var.as_tensor())).collect();
    let moments_before = fused.state_tensors(&fused_ps).unwrap();
    let poison = |mut gs: Vec<Tensor>, dev: &Device| {
        for (i, bad) in [(3usize, f32::NAN), (10, f32::INFINITY)] {
            let mut v: Vec<f32> = gs[i].to_dtype(DType::F32).unwrap().to_vec1().unwrap();
            let mid = v.len() / 2;
            v[mid] = bad;
            gs[i] = Tensor::from_vec(v, LENS[i], dev).unwrap();
        }
        gs
    };
    let a = cpu_opt
        .clip_and_step(&cpu_ps, &poison(grads(9, 0.03, &Device::Cpu, DType::F32), &Device::Cpu), 1e-2, 1.0)
        .unwrap();
    let b = fused.clip_and_step(&fused_ps, &poison(grads(9, 0.03, &dev, DType::F32), &dev), 1e-2, 1.0).unwrap();
    assert!(!a.finite && !b.finite, "a non-finite gradient is reported (cpu {}, fused {})", a.finite, b.finite);
    assert!(b.param_sq[3].is_nan() && b.param_sq[10].is_infinite(), "{:?}", &b.param_sq[..12]);
    assert!(b.param_sq[0].is_finite() && !b.grad_norm.is_finite());
    assert_eq!(fused.steps_taken(), steps.len() as u64, "a skipped update is not a step");
    for (p, old) in fused_ps.iter().zip(&before) {
        let now = cpu(p.var.as_tensor());
        assert_eq!(max_rel(&now, old), 0.0, "skipped update changed {}", p.name);
    }
    for ((name, now), (_, old)) in fused.state_tensors(&fused_ps).unwrap().iter().zip(&moments_before) {
        assert_eq!(max_rel(&cpu(now), &cpu(old)), 0.0, "skipped update changed moment {name}");
    }

    // And training goes on from the same state.
    let a = cpu_opt.clip_and_step(&cpu_ps, &grads(10, 0.03, &Device::Cpu, DType::F32), 1e-2, 1.0).unwrap();
    let b = fused.clip_and_step(&fused_ps, &grads(10, 0.03, &dev, DType::F32), 1e-2, 1.0).unwrap();
    same_stats("after the skip", &b, &a);
    same_state("after the skip", &fused_ps, &fused, &cpu_ps, &cpu_opt, 1e-6, 1e-6);
}

/// bf16 parameters and gradients (f32 moments) against the CPU's f32 step on the same rounded
/// values: the moments do not depend on the parameters and match to f32 rounding; the
/// parameters to bf16 rounding.
#[test]
fn fused_adamw_on_cuda_bf16_params() {
    let dev = gpu();
    let (cpu_ps, gpu_ps) = (params(&Device::Cpu, DType::F32, true), params(&dev, DType::BF16, true));
    let mut cpu_opt = AdamW::new(&cpu_ps, &config(KernelChoice::Fused)).unwrap();
    let mut opt = AdamW::new(&gpu_ps, &config(KernelChoice::Fused)).unwrap();
    assert!(opt.fused_on_device(), "bf16 parameters on CUDA take the fused step");
    for (step, max_norm) in [(1u64, 0.0), (2, 1.0), (3, 1e6)] {
        let a = cpu_opt.clip_and_step(&cpu_ps, &grads(step, 0.03, &Device::Cpu, DType::F32), 1e-2, max_norm).unwrap();
        let b = opt.clip_and_step(&gpu_ps, &grads(step, 0.03, &dev, DType::BF16), 1e-2, max_norm).unwrap();
        same_stats(&format!("bf16 step {step}"), &b, &a);
        // bf16 keeps 8 bits: each step's result is rounded to 2^-9 relative.
        same_state(&format!("bf16 step {step}"), &gpu_ps, &opt, &cpu_ps, &cpu_opt, 1e-2, 1e-6);
    }
}

fn trainer_config(extra: &[&str]) -> (keel::config::Resolved, Corpus) {
    let mut sets: Vec<String> = [
        "model.depth=6",
        "model.d_model=64",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "train.seq_len=64",
        "train.batch_size=4",
        "train.grad_clip=0.05",
        "data.synthetic_bytes=100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::load(None, &sets).unwrap();
    let corpus = Corpus::load(&config.data, config.train.seq_len).unwrap();
    let r = config.resolve(corpus.vocab_size).unwrap();
    (r, corpus)
}

/// `Trainer` steps on CUDA: the fused step against the composed one with the same (fused) ops,
/// which isolates the optimizer, and train.kernels=fused against train.kernels=composite.
#[test]
fn trainer_fused_adamw_matches_composed() {
    let dev = gpu();
    let (fused_r, corpus) = trainer_config(&[]);
    let (comp_r, _) = trainer_config(&["train.kernels=composite"]);
    let mut fused = Trainer::new(&fused_r, &dev).unwrap();
    let mut same_ops = Trainer::new(&fused_r, &dev).unwrap();
    same_ops.opt = AdamW::new(&same_ops.model.params, &config_of(&fused_r, KernelChoice::Composite)).unwrap();
    let mut comp = Trainer::new(&comp_r, &dev).unwrap();
    assert!(fused.opt.fused_on_device());
    assert!(!same_ops.opt.fused_on_device() && !comp.opt.fused_on_device());
    let mut clipped = 0;
    for step in 1..=6 {
        let lr = 2e-3;
        let a = fused.step(&corpus, lr).unwrap();
        let b = same_ops.step(&corpus, lr).unwrap();
        let c = comp.step(&corpus, lr).unwrap();
        assert!(a.finite && b.finite && c.finite, "step {step}");
        clipped += (a.grad_norm > 0.05) as usize;
        assert!(rel(a.loss, b.loss) < 1e-6, "step {step}: loss fused step {} composed step {}", a.loss, b.loss);
        assert!(rel(a.grad_norm, b.grad_norm) < 1e-5, "step {step}: grad norm {} vs {}", a.grad_norm, b.grad_norm);
        for (i, (x, y)) in a.param_sq.iter().zip(&b.param_sq).enumerate() {
            assert!(rel(*x, *y) < 1e-4, "step {step}: sum of squares of parameter {i}: {x} vs {y}");
        }
        assert!(rel(a.loss, c.loss) < 1e-5, "step {step}: loss kernels=fused {} kernels=composite {}", a.loss, c.loss);
    }
    assert!(clipped > 0, "the test should clip at least once (train.grad_clip=0.05)");
    assert_eq!(fused.opt.steps_taken(), 6);
    for (p, q) in fused.model.params.iter().zip(&same_ops.model.params) {
        let d = max_rel(&cpu(p.var.as_tensor()), &cpu(q.var.as_tensor()));
        assert!(d < 1e-5, "parameter {} differs by {d} between the fused and the composed step", p.name);
    }
}

fn config_of(r: &keel::config::Resolved, kernels: KernelChoice) -> TrainConfig {
    TrainConfig { kernels, ..r.train().clone() }
}
