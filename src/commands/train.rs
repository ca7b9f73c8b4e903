//! `keel train`: start or resume a run, train it, print the closing line.

use crate::cli::TrainArgs;
use crate::train::start::{self, Launch, Resumed};
use crate::train::{train, Outcome, ProgressMode};
use crate::{ExitStatus, InputError};
use anyhow::Result;
use std::io::IsTerminal;
use std::path::Path;

fn progress_mode(quiet: bool) -> ProgressMode {
    if quiet {
        ProgressMode::Quiet
    } else if std::io::stderr().is_terminal() {
        ProgressMode::Bar
    } else {
        ProgressMode::Lines
    }
}

/// Prints the closing line and returns the exit status.
fn report(o: &Outcome, out: &Path, quiet: bool) -> ExitStatus {
    let s = &o.summary;
    if !quiet && !o.interrupted {
        let val = s.final_val_loss.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let status = match s.diverged_at_step {
            Some(k) => format!("DIVERGED at step {k}"),
            None => "finished".into(),
        };
        println!(
            "{status}: {} steps, loss {:.4} -> {:.4}, val {val}, {:.0} tok/s, {:.1}s; outputs in {}",
            s.steps_completed,
            s.initial_loss.unwrap_or(f64::NAN),
            s.final_train_loss.unwrap_or(f64::NAN),
            s.tokens_per_s,
            s.wall_time_s,
            out.display()
        );
    }
    if o.interrupted {
        ExitStatus::Interrupted
    } else {
        ExitStatus::Success
    }
}

pub fn run(args: &TrainArgs) -> Result<ExitStatus> {
    resume_flags_need_resume(args)?;
    // First, so that a signal during start-up (a large file being read) exits 130 with a message.
    let stop = crate::signals::install();
    let world = crate::dist::world();
    if world.size() > 1 {
        // Before rank 0 writes anything: the same binary, data and device everywhere.
        preflight(args)?;
        if !world.is_root() {
            return follow(stop);
        }
    }
    let launch = match &args.resume {
        None => start::fresh(&named_by_out(new_run_config(args)?, args), args.out.clone())?,
        Some(dir) => {
            let c = &args.config;
            let how = start::ResumeOptions { force: args.force, accept_data_change: args.accept_data_change };
            match start::resume(dir, c.config.as_deref(), &c.set, c.device.as_deref(), how)? {
                Resumed::Ready(launch) => *launch,
                Resumed::AlreadyFinished => {
                    if world.size() > 1 {
                        world.broadcast(FINISHED.as_bytes().to_vec());
                    }
                    println!(
                        "{} already finished (it holds {}); nothing to resume",
                        dir.display(),
                        crate::run_dir::DONE
                    );
                    return Ok(ExitStatus::Success);
                }
            }
        }
    };
    if world.size() > 1 {
        world.broadcast(start::describe(&launch).into_bytes());
        world.agree("experiment (config fingerprint)", &launch.resolved.fingerprint())?;
        if !args.quiet {
            let rows = launch.resolved.train().batch_size / world.size();
            println!("data-parallel: {} ranks, {rows} rows of each global batch per rank", world.size());
        }
    }
    // `_lock` keeps the run directory this process's until the end.
    let Launch { resolved, corpus, device, run, start, lock: _lock } = launch;
    let outcome = train(&resolved, &corpus, &device, run.path(), progress_mode(args.quiet), start, stop)?;
    Ok(report(&outcome, run.path(), args.quiet))
}

/// A new run's config: `--config`, `--set`, `--device`, and `--init-from` (which is
/// `--set train.init_from=RUN`, without TOML's reading of the value).
fn new_run_config(args: &TrainArgs) -> Result<crate::config::Config> {
    let mut config = super::load_config(&args.config)?;
    if let Some(source) = &args.init_from {
        config.train.init_from = Some(source.clone());
    }
    Ok(config)
}

/// `--out` replaces the run's whole path, so the run is called by its folder's name (in
/// config.toml, summary.json and the progress lines) unless `--set run.name=...` names it.
fn named_by_out(mut config: crate::config::Config, args: &TrainArgs) -> crate::config::Config {
    let Some(out) = &args.out else { return config };
    let named = args.config.set.iter().any(|s| s.split('=').next().map(str::trim) == Some("run.name"));
    if !named {
        if let Some(name) = out.file_name() {
            config.run.name = name.to_string_lossy().into_owned();
        }
        let parent = out.parent().map(|p| p.display().to_string()).filter(|p| !p.is_empty());
        config.run.out_dir = parent.unwrap_or_else(|| ".".into());
    }
    config
}

/// `--force` and `--accept-data-change` without `--resume`: refused, because a fresh run would
/// otherwise start as if they were understood (clap's `requires` misses `--out` combinations).
fn resume_flags_need_resume(args: &TrainArgs) -> Result<()> {
    if args.resume.is_some() {
        return Ok(());
    }
    let given: Vec<&str> = [(args.force, "--force"), (args.accept_data_change, "--accept-data-change")]
        .into_iter()
        .filter_map(|(on, flag)| on.then_some(flag))
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    let (verb, them) = if given.len() == 1 { ("applies", "it") } else { ("apply", "them") };
    Err(InputError(format!(
        "{} only {verb} with --resume RUN_DIR (to let a resumed run accept changed settings or data); a new run takes neither: remove {them}, or continue a run with `keel train --resume RUN_DIR {}`",
        given.join(" and "),
        given.join(" ")
    ))
    .into())
}

/// Every rank of a job must run the same binary on the same data and kind of device: `Err` (exit
/// status 2, on every rank) naming what differs, checked before anything is written.
fn preflight(args: &TrainArgs) -> Result<()> {
    let world = crate::dist::world();
    let c = &args.config;
    let config = match &args.resume {
        None => new_run_config(args)?,
        Some(dir) => start::requested_config(dir, c.config.as_deref(), &c.set, c.device.as_deref())?,
    };
    world.agree("keel binary", &format!("keel {} ({})", env!("CARGO_PKG_VERSION"), env!("KEEL_GIT_REV")))?;
    // Each rank's own config (file and --set), as it would train it; rank 0's is the one trained.
    let flat: Vec<String> = config.flatten().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    world.agree("config", &format!("sha256 {}", crate::files::sha256_hex(flat.join("\n").as_bytes())))?;
    world.agree("data", &crate::data::identity_of(&config.data)?)?;
    world.agree("device", &config.run.device)?;
    Ok(())
}

/// What rank 0 tells the others when `--resume` finds the run already finished.
const FINISHED: &str = "finished";

/// A rank other than 0: trains rank 0's run in lockstep, writing nothing.
fn follow(stop: &std::sync::atomic::AtomicBool) -> Result<ExitStatus> {
    let world = crate::dist::world();
    let line = String::from_utf8_lossy(&world.broadcast(Vec::new())).into_owned();
    if line == FINISHED {
        return Ok(ExitStatus::Success);
    }
    let f = start::follow(&line)?;
    world.agree("experiment (config fingerprint)", &f.resolved.fingerprint())?;
    let outcome = train(&f.resolved, &f.corpus, &f.device, f.run.path(), ProgressMode::Quiet, f.start, stop)?;
    Ok(if outcome.interrupted { ExitStatus::Interrupted } else { ExitStatus::Success })
}
