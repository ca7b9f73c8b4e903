//! Training throughput (forward + backward + AdamW) on a fixed config, as `keel bench` reports it:
//! tokens/s, ms per phase, model FLOP/s against a measured matmul peak, and peak memory.
//!
//! Defaults are the reference config R of the speed issues: d_model 128, 4 heads, depth 32
//! sub-layers, seq 128, batch 8, byte vocabulary (256), SwiGLU, RMSNorm, f32.

use crate::config::{Config, Placement};
use crate::data::Corpus;
use crate::train::Trainer;
use crate::InputError;
use anyhow::Result;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// The reference config R, before the user's config and `--set` overrides.
pub fn reference_overrides() -> Vec<String> {
    [
        "model.d_model=128",
        "model.n_heads=4",
        "model.depth=32",
        "train.seq_len=128",
        "train.batch_size=8",
        "data.synthetic_bytes=200000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub const BENCH_CSV_HEADER: &str = "device,precision,d_model,depth,seq_len,batch_size,recompute,placement,n_params,tokens_per_s,ms_per_step,data_ms,forward_ms,backward_ms,optimizer_ms,model_gflops_per_s,peak_rss_mb,gflops_per_step,matmul_peak_gflops_per_s,fraction_of_peak,cpu,matmul_simd,kernel_simd,attention,ranks,reduce_ms,kernels";

pub struct BenchResult {
    pub placement: Placement,
    pub n_params: usize,
    /// Training FLOPs per step: 6 x matmul parameters x tokens + attention (PaLM's count).
    pub flops_per_step: f64,
    /// Peak resident memory of this measurement (Linux; the high-water mark is reset first).
    pub peak_rss_mb: Option<f64>,
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    pub data_ms: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    /// Averaging gradients across the ranks of a data-parallel job (0 with one process).
    pub reduce_ms: f64,
    /// Processes of the job (`mpirun -np N keel bench`); tokens/s are the whole job's.
    pub ranks: usize,
}

impl BenchResult {
    pub fn gflops_per_s(&self) -> f64 {
        self.flops_per_step / (self.ms_per_step * 1e-3) / 1e9
    }

    /// placement, params, tokens/s, ms/step, data, forward, backward, optimizer ms, model GFLOP/s,
    /// peak RSS MB.
    pub fn columns(&self) -> [String; 10] {
        self.columns_with(1)
    }

    /// The same with `digits` decimals for times and GFLOP/s (the CSV keeps 4: tiny models step in
    /// about a millisecond, where one decimal would be a 5% rounding).
    pub fn columns_with(&self, digits: usize) -> [String; 10] {
        [
            self.placement.to_string(),
            self.n_params.to_string(),
            format!("{:.0}", self.tokens_per_s),
            format!("{:.digits$}", self.ms_per_step),
            format!("{:.*}", digits.max(2), self.data_ms),
            format!("{:.digits$}", self.forward_ms),
            format!("{:.digits$}", self.backward_ms),
            format!("{:.digits$}", self.optimizer_ms),
            format!("{:.digits$}", self.gflops_per_s()),
            self.peak_rss_mb.map(|m| format!("{m:.0}")).unwrap_or_default(),
        ]
    }
}

/// Training FLOPs of one step: 6 x (matmul parameters) x tokens for the weights, plus 12 x T x C
/// per token per attention sub-layer for the scores and the weighted sum (causal masking not
/// discounted, as in PaLM's model-FLOPs count).
pub fn flops_per_step(model: &crate::model::Model, tokens: f64, seq_len: usize) -> f64 {
    let matmul: usize = model
        .params
        .iter()
        .filter(|p| p.var.rank() == 2 && p.name != "tok_emb")
        .map(|p| p.var.elem_count())
        .sum::<usize>()
        + if model.head.is_none() { model.tok_emb.elem_count() } else { 0 };
    let attn_layers = model.sublayers.iter().filter(|s| s.kind == crate::model::SubLayerKind::Attn).count();
    let width = model.tok_emb.dim(1).unwrap_or(0);
    tokens * (6.0 * matmul as f64 + 12.0 * attn_layers as f64 * seq_len as f64 * width as f64)
}

/// Forgets the process's peak RSS so the next reading covers what follows (Linux 4.0+).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The CPU this runs on, as `/proc/cpuinfo` names it (commas dropped, for the CSV).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().replace(',', " "))
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The best f32 matmul throughput, GFLOP/s, of keel's linear layer on `n x n x n` products.
pub fn matmul_peak(device: &candle_core::Device, n: usize) -> Result<f64> {
    matmul_gflops(device, (n, n, n), 6)
}

/// The best of `rounds` f32 products (n, k) x (k, m) through keel's linear layer, in GFLOP/s.
pub fn matmul_gflops(device: &candle_core::Device, (n, k, m): (usize, usize, usize), rounds: usize) -> Result<f64> {
    let a = candle_core::Tensor::randn(0f32, 1.0, (n, k), device)?;
    let b = candle_core::Tensor::randn(0f32, 1.0, (k, m), device)?;
    let kernels = crate::ops::Kernels::for_device(device);
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let start = Instant::now();
        let c = crate::ops::linear(&a, &b, kernels)?;
        c.sum_all()?.to_scalar::<f32>()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * k * m) as f64 / best / 1e9)
}

/// The matrix products of a training step at R's shapes (B*T = 1024 rows, d_model 128): for each
/// linear layer in -> out, its forward x w (1024, in) x (in, out), its input gradient
/// dy w^T (1024, out) x (out, in) and its weight gradient x^T dy (in, 1024) x (1024, out); then
/// 1024^3. `scripts/matmul_torch.py` times the same list with PyTorch.
pub fn model_matmul_shapes() -> Vec<(&'static str, (usize, usize, usize))> {
    let rows = 1024;
    let mut shapes = Vec::new();
    for (name, i, o) in [
        ("qkv 128->384", 128, 384),
        ("ffn in 128->768", 128, 768),
        ("ffn out 384->128", 384, 128),
        ("head 128->256", 128, 256),
    ] {
        shapes.push((name, (rows, i, o)));
        shapes.push((name, (rows, o, i)));
        shapes.push((name, (i, rows, o)));
    }
    shapes.push(("square", (1024, 1024, 1024)));
    shapes
}

pub fn bench_one(config: &Config, steps: usize, warmup: usize) -> Result<BenchResult> {
    reset_peak_rss();
    let device = crate::device::parse(&config.run.device)?;
    let corpus = Corpus::load(&config.data, config.train.seq_len)?;
    let resolved = config.resolve(corpus.vocab_size)?;
    crate::dist::check_batch(resolved.train().batch_size)?;
    let mut trainer = Trainer::new(&resolved, &device)?;
    for _ in 0..warmup {
        trainer.step(&corpus, 1e-3)?;
    }
    trainer.times = Default::default();
    let start = Instant::now();
    for _ in 0..steps {
        trainer.step(&corpus, 1e-3)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let t = resolved.train();
    let tokens = (steps * t.batch_size * t.seq_len * t.grad_accum) as f64;
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e3 / steps as f64;
    Ok(BenchResult {
        placement: resolved.model().placement,
        n_params: trainer.model.n_params(),
        flops_per_step: flops_per_step(&trainer.model, tokens / steps as f64, t.seq_len),
        peak_rss_mb: crate::metrics::peak_rss_mb(),
        tokens_per_s: tokens / secs,
        ms_per_step: secs * 1e3 / steps as f64,
        data_ms: per(trainer.times.data),
        forward_ms: per(trainer.times.forward),
        backward_ms: per(trainer.times.backward),
        optimizer_ms: per(trainer.times.optimizer),
        reduce_ms: per(trainer.times.reduce),
        ranks: crate::dist::world().size(),
    })
}

/// `Err` unless `path` is absent or a CSV that `keel bench` can append to (its header is
/// [`BENCH_CSV_HEADER`]): asked before any benchmark runs and again before appending.
pub fn check_csv(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // Rows under another header would be misread by every tool that reads the file.
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError(format!("cannot read {} to append to it: {e}", path.display())))?;
    let header = text.lines().next().unwrap_or("");
    if header != BENCH_CSV_HEADER {
        return Err(InputError(format!(
            "{} does not start with keel bench's header (it has other columns, perhaps from an older keel)\n  found:    {header}\n  expected: {BENCH_CSV_HEADER}\n  fix: give --csv a new file (the existing one is left as it is)",
            path.display()
        ))
        .into());
    }
    Ok(())
}

/// Appends one `BENCH_CSV_HEADER` row per result to `path` (writing the header into a new file).
pub fn append_csv(path: &Path, config: &Config, device_name: &str, peak: f64, rows: &[BenchResult]) -> Result<()> {
    check_csv(path)?;
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| InputError(format!("cannot open {} for writing: {e}", path.display())))?;
    if new {
        writeln!(f, "{BENCH_CSV_HEADER}")?;
    }
    let m = &config.model;
    for r in rows {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},{},{:.1},{:.4},{},{},{},{},{},{:.4},{}",
            device_name,
            format!("{:?}", config.train.precision).to_lowercase(),
            m.d_model,
            m.depth,
            config.train.seq_len,
            config.train.batch_size,
            format!("{:?}", config.train.recompute).to_lowercase(),
            r.columns_with(4).join(","),
            r.flops_per_step / 1e9,
            peak,
            r.gflops_per_s() / peak,
            cpu_name(),
            crate::ops::matmul_simd(),
            crate::ops::simd_level().name(),
            config.train.attention.name(),
            r.ranks,
            r.reduce_ms,
            config.train.kernels.name()
        )?;
    }
    Ok(())
}

/// The prompt length `keel bench --decode` uses.
pub const DECODE_PROMPT: usize = 16;

/// One round of [`decode_speed`].
#[derive(Debug, Clone, Copy)]
pub struct DecodeSpeed {
    pub cached_tokens_per_s: f64,
    pub uncached_tokens_per_s: f64,
}

/// Greedy generation of `new_tokens` from a freshly initialized model of `config` (batch 1, a
/// [`DECODE_PROMPT`]-token prompt), once with the KV cache and once re-running the full forward per
/// token; the two must produce the same tokens.
pub fn decode_speed(config: &Config, device: &candle_core::Device, new_tokens: usize) -> Result<DecodeSpeed> {
    use crate::decode::{generate, Cached, Request, SamplingOptions, Uncached};
    let r = config.resolve(crate::data::BYTE_VOCAB)?;
    let model = crate::model::Model::new(&r, device)?;
    let tok = crate::data::tokenizer::KeelTokenizer::byte();
    let mut rng = crate::rng::Rng::new(r.train().seed);
    let prompt: Vec<u32> = (0..DECODE_PROMPT.min(r.train().seq_len)).map(|_| rng.below(256) as u32).collect();
    let req = Request {
        prompt,
        max_new_tokens: new_tokens,
        sampling: SamplingOptions { temperature: 0.0, top_k: None, top_p: None, seed: 0 },
        stop: vec![],
        stop_at_eot: false,
        num_samples: 1,
    };
    let cached = generate(&mut Cached::new(&model, &tok, String::new()), &req, |_| {}, &mut std::io::sink())?;
    let uncached = generate(&mut Uncached::new(&model, &tok, String::new()), &req, |_| {}, &mut std::io::sink())?;
    anyhow::ensure!(cached[0].tokens == uncached[0].tokens, "cached and uncached greedy decoding disagree");
    Ok(DecodeSpeed { cached_tokens_per_s: cached[0].tokens_per_s(), uncached_tokens_per_s: uncached[0].tokens_per_s() })
}
