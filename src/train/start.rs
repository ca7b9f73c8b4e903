//! Where a training run starts: a new run directory laid out and its config written, or an
//! existing one resumed from its newest checkpoint that passes its checksums.

use super::init_from::{self, InitWeights};
use crate::checkpoint::{self, Unusable};
use crate::config::{Config, Resolved, SAFE_TO_CHANGE_ON_RESUME};
use crate::data::Corpus;
use crate::run_dir::{RunDir, RunLock};
use crate::InputError;
use anyhow::{Context, Result};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a training call starts.
pub enum Start {
    /// A new run directory.
    Fresh,
    /// An existing run without a usable checkpoint: its CSVs are cut back to the header.
    Over,
    /// Continue from a checkpoint; CSV rows after its step are dropped.
    Checkpoint(Box<checkpoint::Loaded>),
    /// From step 0 with another run's weights (`train.init_from`): a new run, or (`over`) one
    /// without a usable checkpoint, whose CSVs are cut back to the header.
    Init { weights: Box<InitWeights>, over: bool },
}

/// A run ready to train: everything `train::train` takes.
pub struct Launch {
    pub resolved: Resolved,
    pub corpus: Corpus,
    pub device: Device,
    pub run: RunDir,
    pub start: Start,
    /// This process owns the run directory while this lives.
    pub lock: RunLock,
}

/// What `--resume` may accept.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResumeOptions {
    /// `--force`: changes of keys that are safe to change.
    pub force: bool,
    /// `--accept-data-change`: data other than the run was started on.
    pub accept_data_change: bool,
}

/// The `[meta]` key holding the data's identity (see [`crate::data::identity`]).
const DATA_IDENTITY: &str = "data_identity";

/// What `--resume` found.
pub enum Resumed {
    Ready(Box<Launch>),
    /// The run holds `DONE`: nothing to do.
    AlreadyFinished,
}

/// The `[meta]` table of a run's `config.toml`: where and with what it was computed.
pub fn provenance(resolved: &Resolved, device: &Device, corpus: &Corpus, data_identity: &str) -> toml::Table {
    let mut meta = toml::Table::new();
    meta.insert("keel_version".into(), env!("CARGO_PKG_VERSION").into());
    meta.insert("git_revision".into(), env!("KEEL_GIT_REV").into());
    meta.insert("device".into(), crate::device::name(device).into());
    meta.insert("dtype".into(), format!("{:?}", resolved.train().precision).to_lowercase().into());
    meta.insert("seed".into(), (resolved.train().seed as i64).into());
    meta.insert("alpha".into(), resolved.alpha.into());
    meta.insert("data".into(), corpus.description.clone().into());
    meta.insert(DATA_IDENTITY.into(), data_identity.into());
    meta
}

/// The run keeps its own `tokenizer.json`, so `keel eval` and `keel export` need nothing else.
fn save_tokenizer(config: &Config, run: &RunDir) -> Result<()> {
    let path = run.tokenizer();
    match &config.data.path {
        Some(dir) => {
            let bytes = crate::files::read(&Path::new(dir).join(crate::run_dir::TOKENIZER))
                .with_context(|| format!("reading {dir}/tokenizer.json"))?;
            crate::files::write_atomic(&path, &bytes)?;
        }
        None => crate::data::tokenizer::KeelTokenizer::byte().save(&path)?,
    }
    Ok(())
}

/// A new run of `config` in `out` (default `run.out_dir/run.name`), which must be new or empty.
pub fn fresh(config: &Config, out: Option<PathBuf>) -> Result<Launch> {
    let mut config = config.clone();
    crate::data::absolute_paths(&mut config.data);
    let seq_len = config.train.seq_len.max(1);
    // Validate what needs no data first, so a bad config (or an absurd size) fails before a large
    // file is read; the memory check runs again with the data's vocabulary.
    let without_data = config.resolve(crate::data::BYTE_VOCAB)?;
    // A fine-tune's source is found (and its config read) before the data is: its weights are
    // read once the new run is resolved, and everything is checked before the run directory is
    // made.
    config.train.init_from = config.train.init_from.as_deref().map(init_from::absolute);
    let config = &config;
    let source = config.train.init_from.as_deref().map(init_from::locate).transpose()?;
    let device = crate::device::parse(&config.run.device)?;
    crate::memory::check(&without_data, &device)?;
    let corpus = Corpus::load(&config.data, seq_len)?;
    let resolved = config.resolve(corpus.vocab_size)?;
    crate::memory::check(&resolved, &device)?;
    crate::dist::check_batch(resolved.train().batch_size)?;
    let init = source.map(|s| init_from::load(&s, &resolved, config)).transpose()?;
    let identity = corpus.identity.clone();
    let out = out.unwrap_or_else(|| Path::new(&config.run.out_dir).join(&config.run.name));
    let (run, lock) = RunDir::create(out)?;
    crate::signals::set_run_dir(run.path());
    // The config first: with it the folder is a started run, which `--resume` completes (it
    // writes a tokenizer.json that a stop right after the config left missing).
    let mut meta = provenance(&resolved, &device, &corpus, &identity);
    if let Some(w) = &init {
        init_from::record(w, &mut meta);
    }
    run.write_config(&resolved, meta).with_context(|| format!("writing {}", run.config().display()))?;
    save_tokenizer(config, &run)?;
    let start = match init {
        Some(w) => Start::Init { weights: Box::new(w), over: false },
        None => Start::Fresh,
    };
    Ok(Launch { resolved, corpus, device, run, start, lock })
}

/// The config `--resume DIR` asks for: the run's own `config.toml` (or `config_file`) with
/// `overrides` (`--set`) and `device` (`--device`) applied.
pub fn requested_config(
    dir: &Path,
    config_file: Option<&Path>,
    overrides: &[String],
    device: Option<&str>,
) -> Result<Config> {
    let base = config_file.map(Path::to_path_buf).unwrap_or_else(|| RunDir::at(dir).config());
    let mut requested = Config::load(Some(&base), overrides)?;
    if let Some(d) = device {
        requested.run.device = d.to_string();
    }
    crate::data::absolute_paths(&mut requested.data);
    requested.train.init_from = requested.train.init_from.as_deref().map(init_from::absolute);
    Ok(requested)
}

/// A run that reached its last step cannot be extended: its learning rate has decayed to
/// `train.min_lr`, and training on would jump back up the old schedule.
fn finished_cannot_change(dir: &Path, step: usize, diff: &[(String, String, String)]) -> InputError {
    let lines: Vec<String> = diff.iter().map(|(k, a, b)| format!("  {k}: {a} -> {b}")).collect();
    InputError(format!(
        "{} finished at step {step}: a finished run is not resumed with other settings\n{}\n  its learning-rate schedule ended at train.min_lr, so training on would jump back up the old schedule; keel does not extend finished runs\n  train a new run with the new settings instead, e.g. keel train --config {} --set train.steps=N --out NEW_RUN_DIR (nothing in {} was changed)",
        dir.display(),
        lines.join("\n"),
        RunDir::at(dir).config().display(),
        dir.display()
    ))
}

/// `config.toml` (with `--set`) does not give the config a checkpoint was trained with: names the
/// keys that differ. Nothing is removed or advised to be removed: the checkpoint and the rows are
/// the run's results.
fn other_config(path: &Path, dir: &Path, recorded: &BTreeMap<String, String>, now: &Resolved) -> InputError {
    let now = now.config.flatten();
    let lines: Vec<String> = recorded
        .iter()
        .filter(|(k, _)| !SAFE_TO_CHANGE_ON_RESUME.contains(&k.as_str()))
        .filter_map(|(k, then)| {
            let is = now.get(k).cloned().unwrap_or_else(|| "(absent)".into());
            (&is != then).then(|| format!("  {k}: {then} (checkpoint) -> {is} (now)"))
        })
        .collect();
    let named = if recorded.is_empty() {
        "  the checkpoint was written by an older keel, which did not record its config, so the keys cannot be named"
            .to_string()
    } else {
        lines.join("\n")
    };
    InputError(format!(
        "checkpoint {} was trained with another config than {} (with any --set) now gives:\n{named}\n  config.toml was edited after the run started, or the checkpoint was copied from another run; keel changed nothing\n  put the checkpoint's values back into config.toml and resume again; a key that is safe to change on resume ({}) is changed with --set KEY=VALUE --force instead; other values need a new run",
        path.display(),
        RunDir::at(dir).config().display(),
        SAFE_TO_CHANGE_ON_RESUME.join(", ")
    ))
}

/// Puts back a finished run's deleted `model.safetensors` from its final checkpoint, when that
/// checkpoint's weights are the ones `summary.json` records.
fn restore_weights(run: &RunDir, summary: &crate::run_dir::Summary) -> Result<()> {
    let dir = run.path().display();
    let step = summary.steps_completed;
    let source = checkpoint::verified_weights(run, step).map_err(|why| {
        InputError(format!(
            "{dir} finished, but its {} is gone, and its final checkpoint (step {step}) cannot restore it: {why}\n  restore model.safetensors from a copy, or train the run again",
            crate::run_dir::WEIGHTS
        ))
    })?;
    let tmp = run.path().join(".model.safetensors.tmp");
    std::fs::copy(&source, &tmp).with_context(|| format!("copying {} to {}", source.display(), tmp.display()))?;
    let sha = crate::files::sha256_file(&tmp)?;
    if summary.weights_sha256.as_ref().is_some_and(|want| *want != sha) {
        let _ = std::fs::remove_file(&tmp);
        return Err(InputError(format!(
            "{dir} finished, but its {} is gone, and the weights of its final checkpoint (step {step}) are not the ones summary.json records\n  restore model.safetensors from a copy, or train the run again",
            crate::run_dir::WEIGHTS
        ))
        .into());
    }
    std::fs::rename(&tmp, run.weights())?;
    crate::files::fsync_dir(run.path());
    eprintln!(
        "{dir}: restored {} from checkpoint step {step} (sha256 {sha}, as summary.json records)",
        crate::run_dir::WEIGHTS
    );
    Ok(())
}

/// `keel train --resume DIR`: the run's own config, with `overrides` (`--set`, on `config_file`
/// when given) and `device` checked against it; changes of keys that are safe to change need
/// `force`. Continues from the newest checkpoint that passes its checksums.
pub fn resume(
    dir: &Path,
    config_file: Option<&Path>,
    overrides: &[String],
    device: Option<&str>,
    how: ResumeOptions,
) -> Result<Resumed> {
    let run = RunDir::at(dir);
    if !run.is_started() {
        let only_scratch = crate::files::real_entries(dir).is_ok_and(|e| e.is_empty());
        if only_scratch {
            return Err(InputError(format!(
                "{} holds no config.toml, only keel's temporary files from a start that was stopped before it wrote one: nothing was trained\n  start the run again into the same folder: keel train --config CONFIG --out {}",
                dir.display(),
                dir.display()
            ))
            .into());
        }
        return Err(InputError(format!("{} is not a keel run directory (it has no config.toml)\n  pass the folder a `keel train` run wrote, e.g. runs/NAME", dir.display())).into());
    }
    let lock = run.lock()?;
    crate::signals::set_run_dir(run.path());
    run.check_layout()?;
    let saved_raw = run.read_config()?;
    let requested = requested_config(dir, config_file, overrides, device)?;
    let mut saved = saved_raw.clone();
    crate::data::absolute_paths(&mut saved.data);
    // A run that finished (DONE, or its summary.json: DONE is written right after it) takes no
    // new settings; its deleted final weights are restored from the final checkpoint.
    let summary = run.checked_summary()?;
    if run.is_done() || summary.is_some() {
        // Where it would run is no new work; every other key would be.
        let diff: Vec<_> = saved.diff(&requested).into_iter().filter(|(k, _, _)| !k.starts_with("run.")).collect();
        if !diff.is_empty() {
            let step = summary.as_ref().map(|s| s.steps_completed).unwrap_or(saved.train.steps);
            return Err(finished_cannot_change(dir, step, &diff).into());
        }
        if let Some(s) = summary.as_ref().filter(|s| !s.diverged && !run.has_weights()) {
            restore_weights(&run, s)?;
        }
        if !run.is_done() {
            run.mark_done()?;
        }
        return Ok(Resumed::AlreadyFinished);
    }
    let saved_identity =
        saved.meta.as_ref().and_then(|m| m.get(DATA_IDENTITY)).and_then(|v| v.as_str()).map(String::from);
    let device = crate::device::parse(&requested.run.device)?;
    // Before the data is read: an absurd --set must not allocate it.
    crate::memory::check(&requested.resolve(crate::data::BYTE_VOCAB)?, &device)?;
    let corpus = Corpus::load_accepting(&requested.data, requested.train.seq_len.max(1), how.accept_data_change)?;
    let legacy = saved_raw.resolve(corpus.vocab_size)?.legacy_fingerprint();
    let saved = saved.resolve(corpus.vocab_size)?;
    let resolved = requested.resolve(corpus.vocab_size)?;
    crate::memory::check(&resolved, &device)?;
    crate::dist::check_batch(resolved.train().batch_size)?;
    let identity = corpus.identity.clone();
    let data_changed = !corpus.changed_shards.is_empty()
        || saved_identity.as_deref().is_some_and(|s| !crate::data::identity::same(s, &identity));
    if data_changed && !how.accept_data_change {
        return Err(InputError(format!(
            "the data differs from what {} was started on:\n  then: {}\n  now:  {identity}\n  resume it on its own data; or, knowingly, add --accept-data-change to continue on the new data (recorded in config.toml)",
            dir.display(),
            saved_identity.unwrap_or_default()
        ))
        .into());
    }
    if !corpus.changed_shards.is_empty() {
        eprintln!(
            "warning: continuing on shards that differ from their meta.json (--accept-data-change): {}",
            corpus.changed_shards.join("; ")
        );
    }
    let diff = saved.config.diff(&resolved.config);
    if !diff.is_empty() {
        let forbidden: Vec<&String> =
            diff.iter().map(|(k, _, _)| k).filter(|k| !SAFE_TO_CHANGE_ON_RESUME.contains(&k.as_str())).collect();
        if !forbidden.is_empty() || !how.force {
            let same_data = !data_changed;
            let lines: Vec<String> = diff
                .iter()
                .map(|(k, a, b)| {
                    format!(
                        "  {k}: {a} -> {b}{}",
                        if k.starts_with("data.") && SAFE_TO_CHANGE_ON_RESUME.contains(&k.as_str()) {
                            if same_data {
                                "  (the same data, found elsewhere: safe to change with --force)"
                            } else {
                                "  (other data: needs --accept-data-change and --force)"
                            }
                        } else if SAFE_TO_CHANGE_ON_RESUME.contains(&k.as_str()) {
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
    }
    run.check_writable()?;
    let fingerprint = resolved.fingerprint();
    let mut start = Start::Over;
    for (_, path) in checkpoint::list(&run) {
        match checkpoint::load(&path, &[&fingerprint, &legacy]) {
            Ok(loaded) => {
                start = Start::Checkpoint(Box::new(loaded));
                break;
            }
            Err(Unusable::Corrupt(why)) => {
                eprintln!("warning: checkpoint {} is unusable ({why}); trying an older one", path.display())
            }
            Err(Unusable::OtherConfig { config, .. }) => {
                return Err(other_config(&path, dir, &config, &resolved).into())
            }
        }
    }
    // A fine-tune without a usable checkpoint starts over from the weights it started from: the
    // same file, with the sha256 its [meta] records (with a checkpoint, the source is not read).
    if matches!(start, Start::Over) && resolved.train().init_from.is_some() {
        let weights = init_from::reload(&saved_raw).map_err(|why| {
            InputError(format!(
                "{} has no usable checkpoint, so it starts over from step 0, from the weights it was started from (train.init_from = {:?}), which cannot be read again: {why}\n  put the source's weights back where they were, or start a new run",
                dir.display(),
                resolved.train().init_from.as_deref().unwrap_or_default()
            ))
        })?;
        start = Start::Init { weights: Box::new(weights), over: true };
    }
    let from = match &start {
        Start::Checkpoint(c) => c.state.step,
        _ => 0,
    };
    // DONE and summary.json removed by hand: the final checkpoint still says the run finished.
    if from > 0 && from == saved.train().steps && resolved.train().steps > from {
        return Err(finished_cannot_change(dir, from, &diff).into());
    }
    let steps = resolved.train().steps;
    if steps < from {
        return Err(InputError(format!(
            "train.steps = {steps} is below the step of the run's checkpoint ({from}): a run cannot be cut back\n  resume with train.steps >= {from}, or start a new run for {steps} steps"
        ))
        .into());
    }
    // Every check passed: only now is anything in the run directory changed.
    crate::metrics::verify_for_resume(&run, from, crate::metrics::Layout::of(&resolved))?;
    if !diff.is_empty() || data_changed {
        let mut meta = provenance(&resolved, &device, &corpus, &identity);
        init_from::carry(saved_raw.meta.as_ref(), &mut meta);
        run.write_config(&resolved, meta)?;
    }
    if !run.tokenizer().exists() {
        save_tokenizer(&requested, &run)?;
    }
    for (k, a, b) in &diff {
        let note =
            if k.starts_with("data.") && !data_changed { " (the same data, found at the new place)" } else { "" };
        eprintln!("{}: continuing with {k}: {a} -> {b}{note}", dir.display());
    }
    match &start {
        Start::Checkpoint(c) => {
            eprintln!("resuming {} from {} (step {})", dir.display(), c.path.display(), c.state.step)
        }
        Start::Init { weights, .. } => eprintln!(
            "no usable checkpoint in {}: starting it over from step 0, from {} (train.init_from)",
            dir.display(),
            weights.file.display()
        ),
        _ => eprintln!("no usable checkpoint in {}: starting it over from step 0", dir.display()),
    }
    Ok(Resumed::Ready(Box::new(Launch { resolved, corpus, device, run, start, lock })))
}

/// Where rank 0 of a data-parallel job starts, told to the other ranks (one broadcast line).
pub fn describe(launch: &Launch) -> String {
    let (kind, checkpoint) = match &launch.start {
        Start::Fresh => ("fresh", String::new()),
        Start::Over => ("over", String::new()),
        Start::Checkpoint(c) => ("checkpoint", c.path.display().to_string()),
        Start::Init { weights, over } => (if *over { "init_over" } else { "init" }, weights.file.display().to_string()),
    };
    format!("{kind}\n{}\n{checkpoint}", launch.run.path().display())
}

/// A rank other than 0 of a data-parallel job: the run rank 0 prepared (its `config.toml`, its
/// data, its checkpoint), read without taking the lock or writing anything.
pub struct Follower {
    pub resolved: Resolved,
    pub corpus: Corpus,
    pub device: Device,
    pub run: RunDir,
    pub start: Start,
}

/// Follows rank 0's [`describe`] line.
pub fn follow(line: &str) -> Result<Follower> {
    let mut parts = line.splitn(3, '\n');
    let (kind, dir, ckpt) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let run = RunDir::at(dir);
    let config = run.read_config()?;
    let device = crate::device::parse(&config.run.device)?;
    let corpus = Corpus::load(&config.data, config.train.seq_len.max(1))?;
    let resolved = config.resolve(corpus.vocab_size)?;
    let start = match kind {
        "fresh" => Start::Fresh,
        "over" => Start::Over,
        "checkpoint" => {
            match checkpoint::load(Path::new(ckpt), &[&resolved.fingerprint(), &resolved.legacy_fingerprint()]) {
                Ok(loaded) => Start::Checkpoint(Box::new(loaded)),
                Err(Unusable::Corrupt(why)) => anyhow::bail!("checkpoint {ckpt} is unusable on this rank: {why}"),
                Err(Unusable::OtherConfig { found, .. }) => {
                    anyhow::bail!("checkpoint {ckpt} has config fingerprint {found} on this rank")
                }
            }
        }
        "init" | "init_over" => {
            // The file rank 0 read, checked against the sha256 it recorded.
            let weights =
                init_from::reload(&config).map_err(|why| anyhow::anyhow!("train.init_from on this rank: {why}"))?;
            Start::Init { weights: Box::new(weights), over: kind == "init_over" }
        }
        other => anyhow::bail!("rank 0 sent an unknown start {other:?}"),
    };
    Ok(Follower { resolved, corpus, device, run, start })
}
