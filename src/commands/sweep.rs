//! `keel sweep`: a grid of runs trained (or listed, or emitted for Slurm), scored and summarized.

use crate::cli::SweepArgs;
use crate::grid::{self, Status};
use crate::memory;
use crate::sweep::{self, Axes, Evals};
use crate::{ExitStatus, InputError};
use anyhow::Result;

pub fn run(args: &SweepArgs) -> Result<ExitStatus> {
    if args.collect {
        crate::signals::install_for(
            "sweep --collect",
            "summary.csv is as it was (it is written whole, at the end); run the same command again",
        );
        let n = sweep::collect(&args.out)?;
        println!("summary.csv rebuilt from {n} run(s) in {}", args.out.display());
        return Ok(ExitStatus::Success);
    }
    let axes = Axes {
        depths: args.depths.clone(),
        placements: args.placements.clone(),
        lrs: args.lrs.clone(),
        seeds: args.seeds.clone(),
        grid: args.grid.clone(),
        sets: args.config.set.clone(),
        device: args.config.device.clone(),
        devices: args.devices.clone(),
    }
    .axes()?;
    let c = &args.config;
    let jobs = sweep::jobs(&axes, c.config.as_deref(), &c.set, c.device.as_deref(), &args.out)?;
    let devices = sweep::devices(&args.devices);
    if args.dry_run {
        println!("{:<40} {:>12} {:>12} {:>10} {:>12}", "run", "parameters", "tokens", "~minutes", "~memory");
        let (mut total, mut too_big) = (0.0, Vec::new());
        for j in &jobs {
            let e = sweep::estimate(j);
            total += e.minutes;
            let fits = sweep::check_memory(j, &devices);
            println!(
                "{:<40} {:>12} {:>12} {:>10.1} {:>12}{}",
                j.name,
                memory::count(e.params),
                memory::count(e.tokens),
                e.minutes,
                memory::bytes(e.memory.total()),
                if fits.is_ok() { "" } else { "  TOO BIG" }
            );
            too_big.extend(fits.err());
        }
        println!(
            "{} runs, ~{total:.0} minutes in all at one run at a time; nothing was trained (--dry-run)",
            jobs.len()
        );
        if let Some(first) = too_big.first() {
            return Err(InputError(format!(
                "{} of {} runs cannot fit in memory (marked TOO BIG); the first, {}",
                too_big.len(),
                jobs.len(),
                first.0
            ))
            .into());
        }
        return Ok(ExitStatus::Success);
    }
    // Refused before anything is written (a Slurm job's nodes are not this machine): no run of
    // the grid starts when one cannot fit.
    if args.emit.is_none() {
        for j in &jobs {
            sweep::check_memory(j, &devices)?;
        }
    }
    let across = format!("--ntasks-per-run {} processes", args.ntasks_per_run);
    for j in &jobs {
        crate::dist::check_batch_split(j.config.train().batch_size, args.ntasks_per_run, &across)
            .map_err(|e| InputError(format!("run {}: {}", j.name, e.0)))?;
    }
    std::fs::create_dir_all(&args.out).map_err(|e| InputError(format!("cannot create {}: {e}", args.out.display())))?;
    if args.emit.as_deref() == Some("slurm") {
        sweep::emit_slurm(&jobs, &args.out, args.ntasks_per_run)?;
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
    let data = crate::eval::registry::EvalData::parse(&args.eval_data)?;
    crate::eval::registry::check_sweep(&args.eval, &data)?;
    let evals = Evals {
        benches: args.eval.clone(),
        data,
        shots: args.eval_shots,
        max_gen_toks: args.eval_max_gen_toks,
        limit: args.eval_limit,
    };
    crate::signals::install_grid();
    let statuses = grid::run(&jobs, args.jobs, &devices, &args.out, &|job, status| {
        match status {
            Status::Skipped => println!("  {:<40} already finished", job.name),
            Status::Finished => println!("  {:<40} done", job.name),
            Status::Stopped => println!("  {:<40} stopped (resumes from its checkpoint)", job.name),
            Status::NotStarted => {}
            Status::Failed(why) => println!("  {:<40} FAILED: {why}", job.name),
        }
        if !evals.benches.is_empty() && matches!(status, Status::Skipped | Status::Finished) {
            if let Err(why) = sweep::evaluate_run(&job.dir, &evals) {
                println!("  {:<40} evaluation FAILED: {why}", job.name);
            }
        }
        // Rewritten (atomically) as runs finish.
        if let Err(e) = sweep::collect(&args.out) {
            eprintln!("warning: could not update summary.csv: {e:#}");
        }
    })?;
    sweep::collect(&args.out)?;
    let failed = statuses.iter().filter(|s| matches!(s, Status::Failed(_))).count();
    println!(
        "summary: {}/summary.csv{}",
        args.out.display(),
        if failed > 0 { format!(" ({failed} run(s) failed)") } else { String::new() }
    );
    if crate::child::stopping() {
        eprintln!("keel sweep {}", grid::stopped_message(&statuses));
        return Ok(ExitStatus::Interrupted);
    }
    Ok(if failed > 0 { ExitStatus::RunsFailed } else { ExitStatus::Success })
}
