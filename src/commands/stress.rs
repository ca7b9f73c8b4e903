//! `keel stress`: the maximum tolerable learning rate per placement and depth (Table 1).
//!
//! Each run ramps the LR linearly from 0 to `--peak-lr` over `--warmup-steps` steps (a constant
//! schedule after a warmup as long as the run) and stops at the first divergence its detector
//! finds (`[divergence] stop = true`, thresholds from the flags). The same detector, run over the
//! loss curve (`metrics.csv`), gives the divergence step; the maximum tolerable LR is the LR one
//! step before it. A run that never diverges is reported as tolerating at least the peak.

use crate::cli::StressArgs;
use crate::config::{Placement, Schedule};
use crate::data::Corpus;
use crate::divergence::{detect, DivergenceConfig};
use crate::grid::{self, Job, Status};
use crate::InputError;
use anyhow::{Context, Result};
use std::path::Path;

#[derive(Debug, Clone, serde::Serialize)]
pub struct StressRow {
    pub placement: String,
    pub depth: usize,
    /// LR one step before divergence, or the peak when the run survived.
    pub max_lr: f64,
    pub survived: bool,
    pub diverged_at_step: Option<usize>,
    pub reason: Option<String>,
    pub steps: usize,
    pub final_loss: f64,
    /// Lowest loss of the run: tells a run that learned and then broke from one that never learned.
    pub best_loss: f64,
}

pub fn analyze(placement: &str, depth: usize, dir: &Path, t: &DivergenceConfig) -> Result<StressRow> {
    let curve =
        crate::metrics::read_curve(dir).with_context(|| format!("reading {}", dir.join("metrics.csv").display()))?;
    let losses: Vec<(usize, f64)> = curve.iter().map(|&(s, _, l)| (s, l)).collect();
    let last = curve.last().copied().unwrap_or((0, f64::NAN, f64::NAN));
    let (max_lr, survived, at, reason) = match detect(&losses, t) {
        Some((step, reason)) => {
            let before = curve.iter().rev().find(|&&(s, _, _)| s < step).map(|&(_, lr, _)| lr).unwrap_or(0.0);
            (before, false, Some(step), Some(reason.as_str().to_string()))
        }
        None => (last.1, true, None, None),
    };
    Ok(StressRow {
        placement: placement.into(),
        depth,
        max_lr,
        survived,
        diverged_at_step: at,
        reason,
        steps: curve.len(),
        final_loss: last.2,
        best_loss: curve.iter().map(|c| c.2).filter(|l| l.is_finite()).fold(f64::INFINITY, f64::min),
    })
}

/// Table 1's shape: a row per depth, a column per placement, the maximum tolerable LR.
pub fn markdown_table(rows: &[StressRow], placements: &[Placement], depths: &[usize]) -> String {
    let mut s = format!(
        "| depth (sub-layers) | {} |\n|---|{}\n",
        placements.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" | "),
        "---|".repeat(placements.len())
    );
    for &d in depths {
        let cells: Vec<String> = placements
            .iter()
            .map(|p| match rows.iter().find(|r| r.depth == d && r.placement == p.as_str()) {
                Some(r) if r.survived => format!(">= {:.2e}", r.max_lr),
                Some(r) => format!("{:.2e}", r.max_lr),
                None => "-".into(),
            })
            .collect();
        s.push_str(&format!("| {d} | {} |\n", cells.join(" | ")));
    }
    s
}

pub fn run(args: &StressArgs) -> Result<i32> {
    let base = super::load_config(&args.config)?;
    let placements = args.placements.iter().map(|p| Placement::parse(p)).collect::<Result<Vec<_>, _>>()?;
    if !(args.peak_lr > 0.0 && args.peak_lr.is_finite()) {
        return Err(InputError(format!("--peak-lr {} must be > 0", args.peak_lr)).into());
    }
    if args.warmup_steps < 2 {
        return Err(InputError("--warmup-steps must be at least 2".into()).into());
    }
    let thresholds = DivergenceConfig {
        stop: true,
        spike_factor: args.spike_factor,
        recover_window: args.recover_window,
        recover_factor: args.recover_factor,
        ema: 0.9,
        stall_tolerance: args.stall_tolerance,
        stall_window: args.stall_window,
        min_improvement: args.min_improvement,
    };
    let corpus = Corpus::load(&base.data, base.train.seq_len)?;
    let mut jobs = Vec::new();
    for &depth in &args.depths {
        for &placement in &placements {
            let mut c = base.clone();
            c.model.depth = depth;
            c.model.placement = placement;
            c.train.lr = args.peak_lr;
            c.train.min_lr = 0.0;
            c.train.schedule = Schedule::Constant;
            c.train.warmup_steps = args.warmup_steps;
            c.train.steps = args.warmup_steps;
            c.train.eval_every = 0;
            c.train.checkpoint_every = c.train.checkpoint_every.min(args.warmup_steps);
            c.divergence = thresholds;
            let name = format!("{}-d{depth}", placement.as_str());
            c.run.name = name.clone();
            let resolved = c.resolve(corpus.vocab_size)?;
            jobs.push(Job { dir: args.out.join(&name), name, config: resolved });
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| InputError(format!("cannot create {}: {e}", args.out.display())))?;
    crate::metrics::write_atomic(
        &args.out.join("thresholds.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "peak_lr": args.peak_lr, "warmup_steps": args.warmup_steps, "detector": thresholds,
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
    let statuses = grid::run(&jobs, args.jobs, &[], &args.out, &|job, status| match status {
        Status::Skipped => println!("  {:<24} already finished", job.name),
        Status::Finished => println!("  {:<24} done", job.name),
        Status::Failed(why) => println!("  {:<24} FAILED: {why}", job.name),
    })?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for (job, status) in jobs.iter().zip(&statuses) {
        if let Status::Failed(_) = status {
            failed += 1;
            continue;
        }
        let m = job.config.model();
        rows.push(analyze(m.placement.as_str(), m.depth, &job.dir, &thresholds)?);
    }
    let mut csv = String::from("placement,depth,max_lr,survived,diverged_at_step,reason,steps,final_loss,best_loss\n");
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{:e},{},{},{},{},{},{}\n",
            r.placement,
            r.depth,
            r.max_lr,
            r.survived,
            r.diverged_at_step.map(|s| s.to_string()).unwrap_or_default(),
            r.reason.clone().unwrap_or_default(),
            r.steps,
            r.final_loss,
            r.best_loss
        ));
    }
    crate::metrics::write_atomic(&args.out.join("stress.csv"), csv.as_bytes())?;
    let table = markdown_table(&rows, &placements, &args.depths);
    crate::metrics::write_atomic(&args.out.join("table1.md"), table.as_bytes())?;
    println!("\nmaximum tolerable learning rate (>= : never diverged up to the peak)\n{table}\nfiles: {0}/stress.csv, {0}/table1.md, loss curves in {0}/<run>/metrics.csv", args.out.display());
    Ok(if failed > 0 { 1 } else { 0 })
}
