//! `keel bench`: training throughput (forward + backward + AdamW) on a fixed config.
//!
//! Defaults are the reference config R of the speed issues: d_model 128, 4 heads, depth 32
//! sub-layers, seq 128, batch 8, byte vocabulary (256), SwiGLU, RMSNorm, f32.

use crate::cli::BenchArgs;
use crate::config::{Config, Placement};
use crate::data::Corpus;
use crate::train::Trainer;
use crate::InputError;
use anyhow::Result;
use std::io::Write;
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

pub struct BenchResult {
    pub placement: Placement,
    pub n_params: usize,
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    pub data_ms: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
}

impl BenchResult {
    /// placement, params, tokens/s, ms/step, data, forward, backward, optimizer ms.
    pub fn columns(&self) -> [String; 8] {
        [
            self.placement.to_string(),
            self.n_params.to_string(),
            format!("{:.0}", self.tokens_per_s),
            format!("{:.1}", self.ms_per_step),
            format!("{:.2}", self.data_ms),
            format!("{:.1}", self.forward_ms),
            format!("{:.1}", self.backward_ms),
            format!("{:.1}", self.optimizer_ms),
        ]
    }
}

pub fn bench_one(config: &Config, steps: usize, warmup: usize) -> Result<BenchResult> {
    let device = crate::device::parse(&config.run.device)?;
    let corpus = Corpus::load(&config.data, config.train.seq_len)?;
    let resolved = config.resolve(corpus.vocab_size)?;
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
        tokens_per_s: tokens / secs,
        ms_per_step: secs * 1e3 / steps as f64,
        data_ms: per(trainer.times.data),
        forward_ms: per(trainer.times.forward),
        backward_ms: per(trainer.times.backward),
        optimizer_ms: per(trainer.times.optimizer),
    })
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.steps == 0 {
        return Err(InputError("--steps must be at least 1".into()).into());
    }
    let mut sets = reference_overrides();
    sets.extend(args.config.set.iter().cloned());
    let mut config = Config::load(args.config.config.as_deref(), &sets)?;
    if let Some(d) = &args.config.device {
        config.run.device = d.clone();
    }
    let placements: Vec<String> =
        if args.placements.is_empty() { vec![config.model.placement.to_string()] } else { args.placements.clone() };
    println!(
        "keel bench: d_model {} heads {} depth {} seq {} batch {}, {} timed steps after {} warm-up (threads: {})",
        config.model.d_model,
        config.model.n_heads,
        config.model.depth,
        config.train.seq_len,
        config.train.batch_size,
        args.steps,
        args.warmup,
        rayon::current_num_threads()
    );
    println!(
        "{:<10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "placement", "params", "tokens/s", "ms/step", "data ms", "fwd ms", "bwd ms", "opt ms"
    );
    let mut rows = Vec::new();
    for p in &placements {
        let mut c = config.clone();
        c.model.placement = Placement::parse(p)?;
        let r = bench_one(&c, args.steps, args.warmup)?;
        let [placement, params, tps, ms, data, fwd, bwd, opt] = r.columns();
        println!("{placement:<10} {params:>10} {tps:>9} {ms:>8} {data:>8} {fwd:>8} {bwd:>8} {opt:>8}");
        rows.push(r);
    }
    if let Some(path) = &args.csv {
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| InputError(format!("cannot open {} for writing: {e}", path.display())))?;
        if new {
            writeln!(f, "d_model,depth,seq_len,batch_size,placement,n_params,tokens_per_s,ms_per_step,data_ms,forward_ms,backward_ms,optimizer_ms")?;
        }
        let m = &config.model;
        for r in rows {
            writeln!(
                f,
                "{},{},{},{},{}",
                m.d_model,
                m.depth,
                config.train.seq_len,
                config.train.batch_size,
                r.columns().join(",")
            )?;
        }
    }
    Ok(())
}
