//! `keel sweep`: grids of experiments (depth x placement x learning rate x seed x any config key),
//! each an ordinary run directory, run through the grid runner (skips finished runs, resumes
//! interrupted ones, records divergence as a result), summarized in `summary.csv`.

use crate::cli::SweepArgs;
use crate::config::Config;
use crate::grid::{self, parse_depths, Axis, Job, Status};
use crate::metrics::{write_atomic, Summary};
use crate::{ExitStatus, InputError};
use anyhow::{Context, Result};
use std::path::Path;

pub const SUMMARY_HEADER: &str = "run,placement,depth,blocks,d_model,lr,seed,parameters,tokens,final_train_loss,final_val_loss,final_val_ppl,diverged_at_step,tokens_per_s,wall_time_s,peak_rss_mb";

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// A summary.csv row from a finished run directory (its config.toml and summary.json).
pub fn summary_row(dir: &Path) -> Result<Option<String>> {
    let (cfg, sum) = (dir.join("config.toml"), dir.join("summary.json"));
    if !cfg.exists() || !sum.exists() {
        return Ok(None);
    }
    let c = Config::load(Some(&cfg), &[])?;
    let s: Summary =
        serde_json::from_slice(&std::fs::read(&sum)?).with_context(|| format!("reading {}", sum.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    Ok(Some(format!(
        "{name},{},{},{},{},{:e},{},{},{},{},{},{},{},{},{},{}",
        s.placement,
        s.depth,
        s.depth / 2,
        s.d_model,
        c.train.lr,
        c.train.seed,
        s.n_params,
        s.tokens,
        opt(s.final_train_loss),
        opt(s.final_val_loss),
        opt(s.final_val_ppl),
        s.diverged_at_step.map(|k| k.to_string()).unwrap_or_default(),
        s.tokens_per_s,
        s.wall_time_s,
        opt(s.peak_rss_mb)
    )))
}

/// The headline scores of a run's `keel eval` results (`RUN/eval/NAME/results.json`), as summary
/// columns `NAME_metric`: accuracy for MMLU and the synthetic tasks, acc and acc_norm for multiple
/// choice, perplexity and bits per byte for ppl.
pub fn eval_scores(dir: &Path) -> std::collections::BTreeMap<String, f64> {
    crate::eval::registry::scores(dir)
}

/// Rebuilds `OUT/summary.csv` from the run directories under `out`, however they were produced.
/// Evaluation scores found in the runs add columns after the standard ones.
pub fn collect(out: &Path) -> Result<usize> {
    let mut dirs: Vec<_> = std::fs::read_dir(out)
        .map_err(|e| InputError(format!("cannot read {}: {e}", out.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut rows = Vec::new();
    let mut columns = std::collections::BTreeSet::new();
    for d in dirs {
        if let Some(row) = summary_row(&d)? {
            let scores = eval_scores(&d);
            columns.extend(scores.keys().cloned());
            rows.push((row, scores));
        }
    }
    let mut text = String::from(SUMMARY_HEADER);
    for c in &columns {
        text.push(',');
        text.push_str(c);
    }
    text.push('\n');
    for (row, scores) in &rows {
        text.push_str(row);
        for c in &columns {
            text.push(',');
            text.push_str(&scores.get(c).map(|x| x.to_string()).unwrap_or_default());
        }
        text.push('\n');
    }
    write_atomic(&out.join("summary.csv"), text.as_bytes())?;
    Ok(rows.len())
}

/// Runs `keel eval` for each requested benchmark on a finished run, unless its results exist.
fn evaluate_run(dir: &Path, args: &SweepArgs) -> Result<(), String> {
    if !dir.join("model.safetensors").exists() {
        return Ok(()); // diverged: nothing to score
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    for bench in &args.eval {
        let name = bench.name();
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(bench.sweep_args(dir, args.eval_data.as_deref(), args.eval_shots, args.eval_limit));
        let out = cmd.output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(2) && err.contains("already holds results") {
            continue;
        }
        if !out.status.success() {
            return Err(format!("keel eval --bench {name}: {}", err.lines().next().unwrap_or("")));
        }
    }
    Ok(())
}

/// A Slurm job-array script: task i runs line i of runs.txt.
pub fn slurm_script(n: usize, out: &Path) -> String {
    format!(
        "#!/bin/bash\n# keel sweep: one array task per run; each line of runs.txt is one `keel train` command.\n#SBATCH --job-name=keel-sweep\n#SBATCH --array=0-{}\n#SBATCH --output={}/slurm-%A_%a.out\nset -euo pipefail\ncmd=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {}/runs.txt)\neval \"$cmd\"\n# afterwards: keel sweep --collect --out {}\n",
        n.saturating_sub(1),
        out.display(),
        out.display(),
        out.display()
    )
}

pub fn run(args: &SweepArgs) -> Result<ExitStatus> {
    if args.collect {
        let n = collect(&args.out)?;
        println!("summary.csv rebuilt from {n} run(s) in {}", args.out.display());
        return Ok(ExitStatus::Success);
    }
    let mut axes = vec![Axis {
        key: "model.depth".into(),
        values: parse_depths(&args.depths)?.iter().map(|d| d.to_string()).collect(),
    }];
    if !args.placements.is_empty() {
        for p in &args.placements {
            crate::config::Placement::parse(p)?;
        }
        axes.push(Axis { key: "model.placement".into(), values: args.placements.clone() });
    }
    if !args.lrs.is_empty() {
        axes.push(Axis { key: "train.lr".into(), values: args.lrs.iter().map(|x| format!("{x:e}")).collect() });
    }
    if !args.seeds.is_empty() {
        axes.push(Axis { key: "train.seed".into(), values: args.seeds.iter().map(|x| x.to_string()).collect() });
    }
    for g in &args.grid {
        let Some((key, values)) = g.split_once('=') else {
            return Err(InputError(format!("--grid `{g}`: write it as section.key=v1,v2")).into());
        };
        axes.push(Axis { key: key.trim().into(), values: values.split(',').map(|v| v.trim().to_string()).collect() });
    }
    let mut jobs = Vec::new();
    // Each distinct [data] section is loaded once, for its vocabulary (a --grid may vary it).
    let mut vocab_by_data: Vec<(String, usize)> = Vec::new();
    for (sets, name) in grid::expand(&axes) {
        let mut all = args.config.set.clone();
        all.extend(sets);
        all.push(format!("run.name={name}"));
        let mut c = Config::load(args.config.config.as_deref(), &all)?;
        if let Some(d) = &args.config.device {
            c.run.device = d.clone();
        }
        let key = format!("{:?}", c.data);
        let vocab = match vocab_by_data.iter().find(|(k, _)| *k == key) {
            Some(&(_, v)) => v,
            None => {
                let v = crate::data::Corpus::load(&c.data, c.train.seq_len)?.vocab_size;
                vocab_by_data.push((key, v));
                v
            }
        };
        let resolved = c.resolve(vocab).with_context(|| format!("run {name}"))?;
        jobs.push(Job { dir: args.out.join(&name), name, config: resolved });
    }
    if args.dry_run {
        // Rough time: 6 x parameters x tokens at 50 GFLOP/s, about what keel sustains on 2 CPU
        // cores (README, Speed); attention and per-op overhead come on top for deep-narrow models.
        println!("{:<40} {:>12} {:>12} {:>10}", "run", "parameters", "tokens", "~minutes");
        let mut total = 0.0;
        for j in &jobs {
            let t = j.config.train();
            let params = crate::model::Model::new(&j.config, &candle_core::Device::Cpu)?.n_params();
            let tokens = t.steps * t.batch_size * t.seq_len * t.grad_accum;
            let minutes = 6.0 * params as f64 * tokens as f64 / 5e10 / 60.0;
            total += minutes;
            println!("{:<40} {:>12} {:>12} {:>10.1}", j.name, params, tokens, minutes);
        }
        println!(
            "{} runs, ~{total:.0} minutes in all at one run at a time; nothing was trained (--dry-run)",
            jobs.len()
        );
        return Ok(ExitStatus::Success);
    }
    std::fs::create_dir_all(&args.out).map_err(|e| InputError(format!("cannot create {}: {e}", args.out.display())))?;
    if args.emit.as_deref() == Some("slurm") {
        let configs = args.out.join(".configs");
        std::fs::create_dir_all(&configs)?;
        let mut lines = String::new();
        for j in &jobs {
            let file = configs.join(format!("{}.toml", j.name));
            write_atomic(&file, j.config.to_toml(toml::Table::new()).as_bytes())?;
            lines.push_str(&format!("keel train --quiet --config {} --out {}\n", file.display(), j.dir.display()));
        }
        write_atomic(&args.out.join("runs.txt"), lines.as_bytes())?;
        write_atomic(&args.out.join("sweep.slurm"), slurm_script(jobs.len(), &args.out).as_bytes())?;
        println!(
            "wrote {0}/sweep.slurm and {0}/runs.txt ({1} runs); submit with: sbatch {0}/sweep.slurm",
            args.out.display(),
            jobs.len()
        );
        return Ok(ExitStatus::Success);
    } else if let Some(other) = &args.emit {
        return Err(InputError(format!("--emit {other}: the only target is slurm")).into());
    }
    println!("keel sweep: {} runs, {} at once, in {}", jobs.len(), args.jobs, args.out.display());
    let out = args.out.clone();
    let devices: Vec<String> = args
        .devices
        .iter()
        .map(|d| if d.chars().all(|c| c.is_ascii_digit()) { format!("cuda:{d}") } else { d.clone() })
        .collect();
    crate::eval::registry::check_sweep(&args.eval, args.eval_data.is_some())?;
    let statuses = grid::run(&jobs, args.jobs, &devices, &args.out, &|job, status| {
        match status {
            Status::Skipped => println!("  {:<40} already finished", job.name),
            Status::Finished => println!("  {:<40} done", job.name),
            Status::Failed(why) => println!("  {:<40} FAILED: {why}", job.name),
        }
        if !args.eval.is_empty() && !matches!(status, Status::Failed(_)) {
            if let Err(why) = evaluate_run(&job.dir, args) {
                println!("  {:<40} evaluation FAILED: {why}", job.name);
            }
        }
        // Rewritten (atomically) as runs finish.
        if let Err(e) = collect(&out) {
            eprintln!("warning: could not update summary.csv: {e:#}");
        }
    })?;
    collect(&args.out)?;
    let failed = statuses.iter().filter(|s| matches!(s, Status::Failed(_))).count();
    println!(
        "summary: {}/summary.csv{}",
        args.out.display(),
        if failed > 0 { format!(" ({failed} run(s) failed)") } else { String::new() }
    );
    Ok(if failed > 0 { ExitStatus::RunsFailed } else { ExitStatus::Success })
}
