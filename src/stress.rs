//! The maximum tolerable learning rate per placement and depth (the paper's Table 1), as
//! `keel stress` measures it.
//!
//! Each run ramps the LR linearly from 0 to `--peak-lr` over `--warmup-steps` steps (a constant
//! schedule after a warmup as long as the run) and stops at the first divergence its detector
//! finds (`[divergence] stop = true`, thresholds from the flags). The same detector, run over the
//! loss curve (`metrics.csv`), gives the divergence step; the maximum tolerable LR is the LR one
//! step before it. A run that never diverges is reported as tolerating at least the peak.

use crate::config::{Config, Placement, Schedule};
use crate::divergence::{detect, DivergenceConfig};
use crate::grid::{Job, Status};
use crate::run_dir::RunDir;
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
    let run = RunDir::at(dir);
    let curve = crate::metrics::read_curve(&run).with_context(|| format!("reading {}", run.metrics().display()))?;
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

/// The LR ramp every stress run trains on, and the detector that finds where it broke.
#[derive(Debug, Clone, Copy)]
pub struct Ramp {
    /// The LR reached at the end of the linear ramp from 0.
    pub peak_lr: f64,
    /// Steps of the ramp; each run trains this many.
    pub warmup_steps: usize,
    pub detector: DivergenceConfig,
}

impl Ramp {
    /// `base` turned into one stress run: a constant schedule after a warmup as long as the run,
    /// no periodic validation, stopping at the first divergence.
    pub fn apply(&self, base: &Config) -> Config {
        let mut c = base.clone();
        c.train.lr = self.peak_lr;
        c.train.min_lr = 0.0;
        c.train.schedule = Schedule::Constant;
        c.train.warmup_steps = self.warmup_steps;
        c.train.steps = self.warmup_steps;
        c.train.eval_every = 0;
        c.train.checkpoint_every = c.train.checkpoint_every.min(self.warmup_steps);
        c.divergence = self.detector;
        c
    }
}

/// One run per (depth, placement), depth-major, named `PLACEMENT-dDEPTH` inside `out`; a run that
/// cannot fit in memory on its device is refused (`memory::check_in`).
pub fn jobs(
    base: &Config,
    depths: &[usize],
    placements: &[Placement],
    ramp: &Ramp,
    vocab: usize,
    out: &Path,
) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for (depth, placement, c) in crate::grid::depth_by_placement(base, depths, placements) {
        let mut c = ramp.apply(&c);
        let name = format!("{}-d{depth}", placement.as_str());
        c.run.name = name.clone();
        let resolved = c.resolve(vocab)?;
        crate::memory::check_in(&resolved, &crate::memory::Room::of_spec(&c.run.device))
            .map_err(|e| crate::InputError(format!("run {name}: {}", e.0)))?;
        jobs.push(Job { dir: out.join(&name), name, config: resolved });
    }
    Ok(jobs)
}

/// The rows of the runs that did not fail, and how many failed.
pub fn analyze_all(jobs: &[Job], statuses: &[Status], detector: &DivergenceConfig) -> Result<(Vec<StressRow>, usize)> {
    let mut rows = Vec::new();
    let mut failed = 0;
    for (job, status) in jobs.iter().zip(statuses) {
        if let Status::Failed(_) = status {
            failed += 1;
            continue;
        }
        let m = job.config.model();
        rows.push(analyze(m.placement.as_str(), m.depth, &job.dir, detector)?);
    }
    Ok((rows, failed))
}

/// `stress.csv`.
pub fn csv(rows: &[StressRow]) -> String {
    let mut csv = String::from("placement,depth,max_lr,survived,diverged_at_step,reason,steps,final_loss,best_loss\n");
    for r in rows {
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
    csv
}
