//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use keel::config::{Config, Resolved};
use keel::rng::Rng;

pub fn randn(seed: u64, shape: &[usize], dtype: DType) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

pub fn var(seed: u64, shape: &[usize], dtype: DType) -> Var {
    Var::from_tensor(&randn(seed, shape, dtype)).unwrap()
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Largest |a - b| / (1 + |b|).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    to_vec(a).iter().zip(to_vec(b)).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f64::max)
}

/// A tiny experiment (tens of thousands of parameters at most) with overrides.
pub fn tiny(sets: &[&str]) -> Resolved {
    let base = [
        "model.depth=4",
        "model.d_model=16",
        "model.n_heads=2",
        "model.n_kv_heads=1",
        "train.seq_len=8",
        "train.batch_size=2",
        "train.precision=f64",
    ];
    resolve_with(&base, sets, 16)
}

/// The default config with `base` then `sets` applied as `--set` overrides, resolved for a corpus
/// of `vocab` symbols.
pub fn resolve_with(base: &[&str], sets: &[&str], vocab: usize) -> Resolved {
    let overrides: Vec<String> = base.iter().chain(sets).map(|s| s.to_string()).collect();
    Config::load(None, &overrides).unwrap().resolve(vocab).unwrap()
}

pub fn tokens(seed: u64, b: usize, t: usize, vocab: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let x: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
    (Tensor::from_vec(x, (b, t), &Device::Cpu).unwrap(), Tensor::from_vec(y, (b, t), &Device::Cpu).unwrap())
}

/// A run directory holding an untrained tiny model (byte tokenizer, depth 4, d_model 16) with
/// `placement` and context `seq_len`: enough for `keel eval` and `keel generate`.
pub fn tiny_run(dir: &std::path::Path, placement: &str, seq_len: usize) -> std::path::PathBuf {
    let base = ["model.depth=4", "model.d_model=16", "model.n_heads=2", "model.n_kv_heads=1", "model.init_std=0.3"];
    let (placement, seq_len) = (format!("model.placement=\"{placement}\""), format!("train.seq_len={seq_len}"));
    let resolved = resolve_with(&base, &[&placement, &seq_len], 256);
    let model = keel::model::Model::new(&resolved, &Device::Cpu).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), resolved.to_toml(toml::Table::new())).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> =
        model.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

pub mod eval;
