//! `keel train`: resolve the config, prepare the run directory, train, summarize.

use crate::cli::TrainArgs;
use crate::config::Resolved;
use crate::data::Corpus;
use crate::train::{train, ProgressMode};
use crate::InputError;
use anyhow::{Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// The run directory must be new or empty: keel never overwrites results.
pub fn prepare_run_dir(dir: &Path) -> Result<(), InputError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| InputError(format!("cannot read run directory {}: {e}", dir.display())))?;
        if entries.next().is_some() {
            return Err(InputError(format!(
                "run directory {} already holds files; keel does not overwrite results\n  choose another --out or run.name, or remove the directory",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        InputError(format!(
            "cannot create run directory {}: {e}\n  choose a writable --out or run.out_dir",
            dir.display()
        ))
    })?;
    Ok(())
}

pub fn provenance(resolved: &Resolved, device: &candle_core::Device, corpus: &Corpus) -> toml::Table {
    let mut meta = toml::Table::new();
    meta.insert("keel_version".into(), env!("CARGO_PKG_VERSION").into());
    meta.insert("git_revision".into(), env!("KEEL_GIT_REV").into());
    meta.insert("device".into(), crate::device::name(device).into());
    meta.insert("dtype".into(), format!("{:?}", resolved.train().precision).to_lowercase().into());
    meta.insert("seed".into(), (resolved.train().seed as i64).into());
    meta.insert("alpha".into(), resolved.alpha.into());
    meta.insert("data".into(), corpus.description.clone().into());
    meta
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let config = super::load_config(&args.config)?;
    let seq_len = config.train.seq_len.max(1);
    // Validate what needs no data first, so a bad config fails before a large file is read.
    config.resolve(crate::data::BYTE_VOCAB)?;
    let device = crate::device::parse(&config.run.device)?;
    let corpus = Corpus::load(&config.data, seq_len)?;
    let resolved = config.resolve(corpus.vocab_size)?;
    let out: PathBuf = args.out.clone().unwrap_or_else(|| Path::new(&config.run.out_dir).join(&config.run.name));
    prepare_run_dir(&out)?;
    crate::metrics::write_atomic(
        &out.join("config.toml"),
        resolved.to_toml(provenance(&resolved, &device, &corpus)).as_bytes(),
    )
    .with_context(|| format!("writing {}", out.join("config.toml").display()))?;
    let progress = if args.quiet {
        ProgressMode::Quiet
    } else if std::io::stderr().is_terminal() {
        ProgressMode::Bar
    } else {
        ProgressMode::Lines
    };
    let s = train(&resolved, &corpus, &device, &out, progress)?;
    if !args.quiet {
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
    Ok(())
}
