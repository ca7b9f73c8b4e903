//! `keel train`: resolve the config, prepare the run directory, train, summarize.

use crate::checkpoint::{self, Unusable};
use crate::cli::TrainArgs;
use crate::config::{Config, Resolved, SAFE_TO_CHANGE_ON_RESUME};
use crate::data::Corpus;
use crate::train::{train, Outcome, ProgressMode, Start, DONE};
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
    writable(dir)
}

/// Fails early, as bad input, when nothing can be written into `dir`.
fn writable(dir: &Path) -> Result<(), InputError> {
    let probe = dir.join(".keel-write-test");
    std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)).map_err(|e| {
        InputError(format!(
            "cannot write into {}: {e}\n  choose a writable --out or run.out_dir (or fix the folder's permissions)",
            dir.display()
        ))
    })
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

/// The run keeps its own `tokenizer.json`, so `keel eval` and `keel export` need nothing else.
fn save_tokenizer(config: &Config, out: &Path) -> Result<()> {
    let path = out.join("tokenizer.json");
    match &config.data.path {
        Some(dir) => {
            let bytes = std::fs::read(Path::new(dir).join("tokenizer.json"))
                .with_context(|| format!("reading {dir}/tokenizer.json"))?;
            crate::metrics::write_atomic(&path, &bytes)?;
        }
        None => crate::data::tokenizer::KeelTokenizer::byte().save(&path)?,
    }
    Ok(())
}

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
fn report(o: &Outcome, out: &Path, quiet: bool) -> i32 {
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
        crate::EXIT_INTERRUPTED
    } else {
        0
    }
}

pub fn run(args: &TrainArgs) -> Result<i32> {
    if let Some(dir) = &args.resume {
        return resume(args, dir);
    }
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
    save_tokenizer(&config, &out)?;
    let stop = crate::signals::install();
    let outcome = train(&resolved, &corpus, &device, &out, progress_mode(args.quiet), Start::Fresh, stop)?;
    Ok(report(&outcome, &out, args.quiet))
}

/// `keel train --resume DIR`: the run's own config (with overrides checked against it), from the
/// newest checkpoint that passes its checksums.
fn resume(args: &TrainArgs, dir: &Path) -> Result<i32> {
    let saved_path = dir.join("config.toml");
    if !saved_path.exists() {
        return Err(InputError(format!("{} is not a keel run directory (it has no config.toml)\n  pass the folder a `keel train` run wrote, e.g. runs/NAME", dir.display())).into());
    }
    if dir.join(DONE).exists() {
        println!("{} already finished (it holds {DONE}); nothing to resume", dir.display());
        return Ok(0);
    }
    let saved = Config::load(Some(&saved_path), &[])?;
    // Without --config the run's own config.toml is the base for --set and --device.
    let base = args.config.config.clone().unwrap_or_else(|| saved_path.clone());
    let mut requested = Config::load(Some(&base), &args.config.set)?;
    if let Some(d) = &args.config.device {
        requested.run.device = d.clone();
    }
    let device = crate::device::parse(&requested.run.device)?;
    let corpus = Corpus::load(&requested.data, requested.train.seq_len.max(1))?;
    let saved = saved.resolve(corpus.vocab_size)?;
    let resolved = requested.resolve(corpus.vocab_size)?;
    let diff = saved.config.diff(&resolved.config);
    if !diff.is_empty() {
        let forbidden: Vec<&String> =
            diff.iter().map(|(k, _, _)| k).filter(|k| !SAFE_TO_CHANGE_ON_RESUME.contains(&k.as_str())).collect();
        if !forbidden.is_empty() || !args.force {
            let lines: Vec<String> = diff
                .iter()
                .map(|(k, a, b)| {
                    format!(
                        "  {k}: {a} -> {b}{}",
                        if SAFE_TO_CHANGE_ON_RESUME.contains(&k.as_str()) {
                            "  (safe to change with --force)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            let hint = if forbidden.is_empty() {
                "add --force to continue with the new values".to_string()
            } else {
                format!(
                    "these keys change the experiment itself and cannot change on resume: {}; start a new run instead",
                    forbidden.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                )
            };
            return Err(InputError(format!(
                "the config differs from the one {} was started with:\n{}\n  {hint}",
                dir.display(),
                lines.join("\n")
            ))
            .into());
        }
        let meta = provenance(&resolved, &device, &corpus);
        crate::metrics::write_atomic(&saved_path, resolved.to_toml(meta).as_bytes())?;
    }
    writable(dir)?;
    let fingerprint = resolved.fingerprint();
    let mut start = Start::Over;
    for (_, path) in checkpoint::list(dir) {
        match checkpoint::load(&path, &fingerprint) {
            Ok(loaded) => {
                start = Start::Checkpoint(Box::new(loaded));
                break;
            }
            Err(Unusable::Corrupt(why)) => eprintln!("warning: checkpoint {} is unusable ({why}); trying an older one", path.display()),
            Err(Unusable::OtherConfig { found }) => {
                return Err(InputError(format!(
                    "checkpoint {} was written by a different experiment (config fingerprint {found}, this run's is {fingerprint})\n  resume it from its own run directory, or remove it",
                    path.display()
                ))
                .into())
            }
        }
    }
    match &start {
        Start::Checkpoint(c) => {
            eprintln!("resuming {} from {} (step {})", dir.display(), c.path.display(), c.state.step)
        }
        _ => eprintln!("no usable checkpoint in {}: starting it over from step 0", dir.display()),
    }
    let stop = crate::signals::install();
    let outcome = train(&resolved, &corpus, &device, dir, progress_mode(args.quiet), start, stop)?;
    Ok(report(&outcome, dir, args.quiet))
}
