//! `keel bench`: throughput of the training step per placement, as a table (and a CSV).

use crate::bench::{self, BenchResult};
use crate::cli::BenchArgs;
use crate::config::{Config, Placement};
use crate::{ExitStatus, InputError};
use anyhow::Result;

pub fn run(args: &BenchArgs) -> Result<ExitStatus> {
    if args.steps == 0 {
        return Err(InputError("--steps must be at least 1".into()).into());
    }
    let mut sets = bench::reference_overrides();
    sets.extend(args.config.set.iter().cloned());
    let mut config = Config::load(args.config.config.as_deref(), &sets)?;
    if let Some(d) = &args.config.device {
        config.run.device = d.clone();
    }
    let placements: Vec<String> =
        if args.placements.is_empty() { vec![config.model.placement.to_string()] } else { args.placements.clone() };
    let device = crate::device::parse(&config.run.device)?;
    if args.matmul {
        return matmul_table(&device);
    }
    if let Some(new_tokens) = args.decode {
        return decode_table(&config, &placements, &device, new_tokens, args.rounds);
    }
    if let Some(path) = &args.csv {
        bench::check_csv(path)?;
    }
    let peak = bench::matmul_peak(&device, 1024)?;
    // Under mpirun every rank measures in lockstep; rank 0 alone reports.
    let world = crate::dist::world();
    let root = world.is_root();
    macro_rules! say {
        ($($t:tt)*) => {
            if root {
                println!($($t)*);
            }
        };
    }
    say!(
        "keel bench: d_model {} heads {} depth {} seq {} batch {}, {:?}, recompute {:?}, attention {}, kernels {}, {} timed steps after {} warm-up (threads: {}); f32 matmul peak {peak:.1} GFLOP/s (1024^3)",
        config.model.d_model,
        config.model.n_heads,
        config.model.depth,
        config.train.seq_len,
        config.train.batch_size,
        config.train.precision,
        config.train.recompute,
        config.train.attention.name(),
        config.train.kernels.name(),
        args.steps,
        args.warmup,
        rayon::current_num_threads()
    );
    say!(
        "cpu: {}; SIMD: matmul {}, fused kernels {} ({} caps them: baseline, avx2, avx512)",
        bench::cpu_name(),
        crate::ops::matmul_simd(),
        crate::ops::simd_level().name(),
        crate::ops::SIMD_ENV
    );
    if world.size() > 1 {
        say!("data-parallel: {} ranks; tokens/s are the whole job's, reduce ms the gradient all-reduce", world.size());
    }
    say!(
        "{:<10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9} {:>9}",
        "placement",
        "params",
        "tokens/s",
        "ms/step",
        "data ms",
        "fwd ms",
        "bwd ms",
        "opt ms",
        "GFLOP/s",
        "of peak",
        "peak MB",
        "reduce ms"
    );
    let mut rows: Vec<BenchResult> = Vec::new();
    for p in &placements {
        let mut c = config.clone();
        c.model.placement = Placement::parse(p)?;
        let r = bench::bench_one(&c, args.steps, args.warmup)?;
        let [placement, params, tps, ms, data, fwd, bwd, opt, gflops, rss] = r.columns();
        let frac = format!("{:.0}%", 100.0 * r.gflops_per_s() / peak);
        let reduce = format!("{:.1}", r.reduce_ms);
        say!("{placement:<10} {params:>10} {tps:>9} {ms:>8} {data:>8} {fwd:>8} {bwd:>8} {opt:>8} {gflops:>9} {frac:>7} {rss:>9} {reduce:>9}");
        rows.push(r);
    }
    if let Some(path) = args.csv.as_ref().filter(|_| root) {
        bench::append_csv(path, &config, &crate::device::name(&device), peak, &rows)?;
    }
    Ok(ExitStatus::Success)
}

/// `keel bench --decode N`: generation speed with and without the KV cache, every round shown.
fn decode_table(
    config: &Config,
    placements: &[String],
    device: &candle_core::Device,
    new_tokens: usize,
    rounds: usize,
) -> Result<ExitStatus> {
    if new_tokens == 0 || rounds == 0 {
        return Err(InputError("--decode and --rounds must be at least 1".into()).into());
    }
    println!(
        "keel bench --decode {new_tokens}: d_model {} heads {} depth {} context {}, {:?}, greedy, batch 1, prompt {} tokens, {rounds} rounds (threads: {}); cpu: {}",
        config.model.d_model,
        config.model.n_heads,
        config.model.depth,
        config.train.seq_len,
        config.train.precision,
        bench::DECODE_PROMPT,
        rayon::current_num_threads(),
        bench::cpu_name(),
    );
    println!("{:<10} {:>6} {:>14} {:>14} {:>8}", "placement", "round", "cache tok/s", "no-cache tok/s", "speed-up");
    for p in placements {
        let mut c = config.clone();
        c.model.placement = Placement::parse(p)?;
        for round in 1..=rounds {
            let r = bench::decode_speed(&c, device, new_tokens)?;
            println!(
                "{p:<10} {round:>6} {:>14.1} {:>14.1} {:>7.1}x",
                r.cached_tokens_per_s,
                r.uncached_tokens_per_s,
                r.cached_tokens_per_s / r.uncached_tokens_per_s
            );
        }
    }
    Ok(ExitStatus::Success)
}

/// `keel bench --matmul`: GFLOP/s per product shape, best of 20.
fn matmul_table(device: &candle_core::Device) -> Result<ExitStatus> {
    println!(
        "keel bench --matmul: f32, threads {}; cpu: {}; SIMD: matmul {}",
        rayon::current_num_threads(),
        bench::cpu_name(),
        crate::ops::matmul_simd()
    );
    println!("{:<18} {:>18} {:>9}", "layer", "(n, k, m)", "GFLOP/s");
    for (name, (n, k, m)) in bench::model_matmul_shapes() {
        let g = bench::matmul_gflops(device, (n, k, m), 20)?;
        println!("{name:<18} {:>18} {g:>9.1}", format!("({n}, {k}, {m})"));
    }
    Ok(ExitStatus::Success)
}
