//! `keel stress`: ramp the learning rate per placement and depth, report where each run broke.

use crate::cli::StressArgs;
use crate::config::Placement;
use crate::data::Corpus;
use crate::divergence::DivergenceConfig;
use crate::files::write_atomic;
use crate::grid::{self, Status};
use crate::stress::{self, Ramp};
use crate::{ExitStatus, InputError};
use anyhow::Result;

pub fn run(args: &StressArgs) -> Result<ExitStatus> {
    let base = super::load_config(&args.config)?;
    let placements = args.placements.iter().map(|p| Placement::parse(p)).collect::<Result<Vec<_>, _>>()?;
    if !(args.peak_lr > 0.0 && args.peak_lr.is_finite()) {
        return Err(InputError(format!("--peak-lr {} must be > 0", args.peak_lr)).into());
    }
    if args.warmup_steps < 2 {
        return Err(InputError("--warmup-steps must be at least 2".into()).into());
    }
    let detector = DivergenceConfig {
        stop: true,
        spike_factor: args.spike_factor,
        recover_window: args.recover_window,
        recover_factor: args.recover_factor,
        ema: 0.9,
        stall_tolerance: args.stall_tolerance,
        stall_window: args.stall_window,
        min_improvement: args.min_improvement,
    };
    let ramp = Ramp { peak_lr: args.peak_lr, warmup_steps: args.warmup_steps, detector };
    // Every run is checked (its memory too) before the data is made or anything is written.
    stress::jobs(&base, &args.depths, &placements, &ramp, crate::data::BYTE_VOCAB, &args.out)?;
    let corpus = Corpus::load(&base.data, base.train.seq_len)?;
    let jobs = stress::jobs(&base, &args.depths, &placements, &ramp, corpus.vocab_size, &args.out)?;
    std::fs::create_dir_all(&args.out).map_err(|e| InputError(format!("cannot create {}: {e}", args.out.display())))?;
    write_atomic(
        &args.out.join("thresholds.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "peak_lr": args.peak_lr, "warmup_steps": args.warmup_steps, "detector": detector,
        }))?
        .as_bytes(),
    )?;
    println!(
        "keel stress: {} runs ({} placements x {} depths), ramp 0 -> {:e} over {} steps, {} at once",
        jobs.len(),
        placements.len(),
        args.depths.len(),
        args.peak_lr,
        args.warmup_steps,
        args.jobs
    );
    crate::signals::install_grid();
    let statuses = grid::run(&jobs, args.jobs, &[], &args.out, &|job, status| match status {
        Status::Skipped => println!("  {:<24} already finished", job.name),
        Status::Finished => println!("  {:<24} done", job.name),
        Status::Stopped => println!("  {:<24} stopped (resumes from its checkpoint)", job.name),
        Status::NotStarted => {}
        Status::Failed(why) => println!("  {:<24} FAILED: {why}", job.name),
    })?;
    // The table needs every run: a stopped grid writes none, and says how to finish it.
    if crate::child::stopping() {
        eprintln!("keel stress {}", grid::stopped_message(&statuses));
        return Ok(ExitStatus::Interrupted);
    }
    let (rows, failed) = stress::analyze_all(&jobs, &statuses, &detector)?;
    write_atomic(&args.out.join("stress.csv"), stress::csv(&rows).as_bytes())?;
    let table = stress::markdown_table(&rows, &placements, &args.depths);
    write_atomic(&args.out.join("table1.md"), table.as_bytes())?;
    println!("\nmaximum tolerable learning rate (>= : never diverged up to the peak)\n{table}\nfiles: {0}/stress.csv, {0}/table1.md, loss curves in {0}/<run>/metrics.csv", args.out.display());
    Ok(if failed > 0 { ExitStatus::RunsFailed } else { ExitStatus::Success })
}
