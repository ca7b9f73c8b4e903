//! GPU checks, built only with `--features cuda` (`scripts/gpu_first_contact.sh` runs them on a
//! machine with an NVIDIA GPU): a few training steps on CUDA follow the CPU run within tolerance,
//! the composite ops keel uses off-CPU give the fused CPU ops' values and gradients, and every
//! CUDA kernel of `src/ops/cuda/` matches its CPU twin forward and backward (one file per op
//! family under `tests/cuda/`).
#![cfg(feature = "cuda")]

#[path = "cuda/adamw.rs"]
mod adamw;
#[path = "cuda/attention.rs"]
mod attention;
#[path = "cuda/attention_mma.rs"]
mod attention_mma;
#[path = "cuda/norms.rs"]
mod norms;
#[path = "cuda/pointwise.rs"]
mod pointwise;

use candle_core::{Device, Tensor};
use keel::config::Config;
use keel::data::Corpus;
use keel::train::Trainer;

pub fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU (they are built only with --features cuda)")
}

/// max |a - b| / (1 + |b|) over all elements, in f64.
pub fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f64> = a.to_dtype(candle_core::DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f64> = b.to_dtype(candle_core::DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f64::max)
}

#[test]
fn training_steps_on_cuda_follow_cpu() {
    let cuda = gpu();
    // Every placement on the fused CUDA kernels (the default), then the other paths through the
    // kernels: LayerNorm and GELU, recompute, bf16 mixed precision, the composite ops, and the
    // CPU's tiled attention against the GPU's flash kernels.
    let mut cases: Vec<(&str, Option<&str>)> =
        ["keel", "pre_ln", "post_ln", "deepnorm", "mix_ln", "hybrid_norm"].iter().map(|p| (*p, None)).collect();
    cases.extend([
        ("keel", Some("model.norm=layer_norm")),
        ("post_ln", Some("model.ffn=gelu")),
        ("keel", Some("train.recompute=blocks")),
        ("keel", Some("train.precision=bf16")),
        ("pre_ln", Some("train.precision=bf16")),
        ("keel", Some("train.kernels=composite")),
        ("keel", Some("train.attention=tiled")),
    ]);
    for (placement, extra) in cases {
        // bf16 products on the GPU against f32 on the CPU: a looser tolerance.
        let (loss_tol, grad_tol, param_tol) =
            if extra == Some("train.precision=bf16") { (2e-2, 5e-2, 5e-2) } else { (1e-4, 1e-3, 1e-2) };
        let mut sets: Vec<String> = [
            "model.depth=8",
            "model.d_model=64",
            "model.n_heads=4",
            "model.n_kv_heads=2",
            "train.seq_len=64",
            "train.batch_size=4",
            "data.synthetic_bytes=100000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sets.push(format!("model.placement={placement}"));
        sets.extend(extra.map(String::from));
        let config = Config::load(None, &sets).unwrap();
        let corpus = Corpus::load(&config.data, config.train.seq_len).unwrap();
        let r = config.resolve(corpus.vocab_size).unwrap();
        // The CPU reference is always f32.
        let mut r_cpu = r.clone();
        r_cpu.config.train.precision = keel::config::Precision::F32;
        r_cpu.config.train.kernels = keel::ops::KernelChoice::Fused;
        let mut cpu = Trainer::new(&r_cpu, &Device::Cpu).unwrap();
        let mut gpu = Trainer::new(&r, &cuda).unwrap();
        for step in 1..=5 {
            let lr = 2e-3;
            let a = cpu.step(&corpus, lr).unwrap();
            let b = gpu.step(&corpus, lr).unwrap();
            let rel = (a.loss - b.loss).abs() / a.loss;
            assert!(rel < loss_tol, "{placement} {extra:?} step {step}: loss cpu {} cuda {}", a.loss, b.loss);
            let g = (a.grad_norm - b.grad_norm).abs() / a.grad_norm;
            assert!(g < grad_tol, "{placement} step {step}: grad norm cpu {} cuda {}", a.grad_norm, b.grad_norm);
        }
        for (p, q) in cpu.model.params.iter().zip(&gpu.model.params) {
            let d = max_rel(p.var.as_tensor(), &q.var.as_tensor().to_device(&Device::Cpu).unwrap());
            assert!(d < param_tol, "{placement} {extra:?}: parameter {} differs by {d}", p.name);
        }
    }
}

#[test]
fn composite_ops_on_cuda_match_fused_cpu_ops() {
    let cuda = gpu();
    let r = keel::config::Config::load(
        None,
        &[
            "model.depth=4",
            "model.d_model=48",
            "model.n_heads=3",
            "train.seq_len=24",
            "train.batch_size=3",
            "train.kernels=composite",
        ]
        .map(String::from),
    )
    .unwrap()
    .resolve(256)
    .unwrap();
    let mut r_cpu = r.clone();
    r_cpu.config.train.kernels = keel::ops::KernelChoice::Fused;
    let cpu_model = keel::model::Model::new(&r_cpu, &Device::Cpu).unwrap();
    let gpu_model = keel::model::Model::new(&r, &cuda).unwrap();
    let ids: Vec<u32> = (0..72u32).map(|i| (i * 89 + 7) % 256).collect();
    let targets: Vec<u32> = (0..72u32).map(|i| (i * 31 + 3) % 256).collect();
    let (x, y) = (
        Tensor::from_vec(ids, (3, 24), &Device::Cpu).unwrap(),
        Tensor::from_vec(targets, (3, 24), &Device::Cpu).unwrap(),
    );
    let lc = cpu_model.loss(&x, &y).unwrap();
    let lg = gpu_model.loss(&x.to_device(&cuda).unwrap(), &y.to_device(&cuda).unwrap()).unwrap();
    assert!(max_rel(&lc, &lg.to_device(&Device::Cpu).unwrap()) < 1e-5);
    let (gc, gg) = (lc.backward().unwrap(), lg.backward().unwrap());
    for (p, q) in cpu_model.params.iter().zip(&gpu_model.params) {
        let a = gc.get(p.var.as_tensor()).unwrap();
        let b = gg.get(q.var.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
        assert!(max_rel(a, &b) < 1e-4, "gradient of {}", p.name);
    }
}

/// keel's own run-time compile path (NVRTC through cudarc, as `train.kernels = "fused"` uses on a
/// GPU) turns every module into a cubin for sm_80 and sm_90. Needs libnvrtc but no GPU: the test
/// binary starts on a machine without one against the stub driver (scripts/gpu_prepare.sh runs
/// it there).
#[test]
fn nvrtc_compiles_every_module_without_a_gpu() {
    use keel::ops::cuda_kernels::{runtime::compile_cubin, Module, Source};
    for m in Module::ALL {
        let source = Source::load(m, None).unwrap();
        for arch in ["sm_80", "sm_90"] {
            let cubin = compile_cubin(&source, arch).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "{} for {arch} is not a cubin", m.name());
        }
    }
}
