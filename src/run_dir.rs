//! The layout of a run directory, and the one place that knows it.
//!
//! ```text
//! RUN/
//!   config.toml              resolved config + [meta] provenance, written before training
//!   tokenizer.json           the tokenizer the run trains with
//!   metrics.csv eval.csv grad_norms.csv   append-only CSVs (see `metrics`)
//!   checkpoints/step_NNNNNNN/             see `checkpoint`
//!   model.safetensors        final weights (absent after a divergence)
//!   summary.json             the run's summary
//!   DONE                     written last: the run finished (or diverged)
//!   eval/NAME/results.json   `keel eval` results, one folder per benchmark
//!   .keel.lock               held (an OS file lock) by the one process training the run
//! ```
//!
//! Training, resume, eval, export, sweep and plot all find these files through [`RunDir`];
//! [`load_run`] loads a finished one (config, weights, tokenizer) for eval and export.

use crate::config::{Config, ConfigError, Placement, Resolved};
use crate::data::tokenizer::KeelTokenizer;
use crate::files::write_atomic;
use crate::model::Model;
use crate::InputError;
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "config.toml";
pub const TOKENIZER: &str = "tokenizer.json";
pub const METRICS: &str = "metrics.csv";
pub const EVAL: &str = "eval.csv";
pub const GRAD_NORMS: &str = "grad_norms.csv";
pub const CHECKPOINTS: &str = "checkpoints";
pub const WEIGHTS: &str = "model.safetensors";
pub const SUMMARY: &str = "summary.json";
/// Marker written (atomically) once a run has finished, diverged runs included.
pub const DONE: &str = "DONE";
/// The folder of `keel eval` results, one sub-folder per benchmark.
pub const EVAL_RESULTS: &str = "eval";
/// Each benchmark's results file inside its folder.
pub const RESULTS: &str = "results.json";
/// The lock file (see [`crate::files::LOCK`]).
pub use crate::files::LOCK;

/// Ownership of a run directory by this process, for as long as the value lives.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// A run directory (which need not exist yet): its files' paths and the operations on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// Creates a new run directory and takes its lock: `root` must not exist or be empty (but for
    /// keel's scratch files), and must be writable.
    pub fn create(root: impl Into<PathBuf>) -> Result<(Self, RunLock), InputError> {
        let dir = RunDir::at(root);
        crate::files::create_output_dir(&dir.root)?;
        let lock = dir.lock()?;
        // Checked under the lock, so that of two processes started together exactly one sees
        // the folder empty.
        crate::files::check_empty(&dir.root, Some(CONFIG))?;
        dir.check_writable()?;
        Ok((dir, lock))
    }

    /// Takes the run directory's lock, or fails (bad input) naming the process that holds it.
    pub fn lock(&self) -> Result<RunLock, InputError> {
        use std::io::{Seek, Write};
        let path = self.root.join(LOCK);
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(
                |e| {
                    InputError(format!(
                "cannot create {}: {e}\n  choose a writable --out or run.out_dir (or fix the folder's permissions)",
                path.display()
            ))
                },
            )?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let who = holder_of(&mut file);
                return Err(InputError(format!(
                    "run directory {} is in use by another keel process ({who})\n  a run directory belongs to one process at a time: wait for it to end (or stop it); a new run can go to another --out",
                    self.root.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(InputError(format!(
                    "cannot lock {}: {e}\n  keel needs a file system with file locks for its run directories; choose another --out",
                    path.display()
                )))
            }
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(|e| InputError(format!("cannot write {}: {e}\n  choose a writable --out", path.display())))?;
        Ok(RunLock { _file: file })
    }

    /// The keel process training this run right now ("PID 4242"), if one is: probed with the lock
    /// itself, so a lock file left by a process that has ended names nobody. Takes nothing.
    pub fn holder(&self) -> Option<String> {
        self.holding().map(|h| h.to_string())
    }

    /// [`RunDir::holder`] as a value: the process's PID when it wrote one.
    pub fn holding(&self) -> Option<Holder> {
        let mut file = std::fs::File::open(self.root.join(LOCK)).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(std::fs::TryLockError::WouldBlock) => Some(holder_of(&mut file)),
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join(TOKENIZER)
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS)
    }
    pub fn eval_csv(&self) -> PathBuf {
        self.root.join(EVAL)
    }
    pub fn grad_norms(&self) -> PathBuf {
        self.root.join(GRAD_NORMS)
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }
    pub fn weights(&self) -> PathBuf {
        self.root.join(WEIGHTS)
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join(SUMMARY)
    }
    pub fn done(&self) -> PathBuf {
        self.root.join(DONE)
    }
    /// `eval/`, holding one folder per benchmark.
    pub fn eval_results(&self) -> PathBuf {
        self.root.join(EVAL_RESULTS)
    }
    /// `eval/NAME/`, where `keel eval` writes a benchmark's results by default.
    pub fn results_for(&self, bench: &str) -> PathBuf {
        self.eval_results().join(bench)
    }

    /// The run has its config: `keel train` started it.
    pub fn is_started(&self) -> bool {
        self.config().exists()
    }
    /// The run finished (or diverged): `DONE` exists.
    pub fn is_done(&self) -> bool {
        self.done().exists()
    }
    /// Final weights exist (a finished run that did not diverge).
    pub fn has_weights(&self) -> bool {
        self.weights().exists()
    }

    /// Fails early, as bad input, when nothing can be written into the run directory.
    pub fn check_writable(&self) -> Result<(), InputError> {
        crate::files::check_writable(&self.root)
    }

    /// Writes `config.toml`: the resolved config with its `[meta]` provenance.
    pub fn write_config(&self, resolved: &Resolved, meta: toml::Table) -> std::io::Result<()> {
        write_atomic(&self.config(), resolved.to_toml(meta).as_bytes())
    }

    /// The run's `config.toml` as written (not yet resolved).
    pub fn read_config(&self) -> Result<Config, ConfigError> {
        Config::load(Some(&self.config()), &[])
    }

    /// The run's placement, when its config reads.
    pub fn placement(&self) -> Option<Placement> {
        self.read_config().ok().map(|c| c.model.placement)
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        write_atomic(&self.summary(), serde_json::to_string_pretty(summary)?.as_bytes())?;
        Ok(())
    }

    /// `summary.json`, when it exists and parses (for figures, which do without it).
    pub fn read_summary(&self) -> Option<Summary> {
        crate::files::read(&self.summary()).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// `summary.json` for checking a finished run: `None` when there is none (a run or a
    /// keel-format export of an older keel), an error when one exists but is damaged, since the checksums it
    /// holds are what vouches for the run's files.
    pub fn checked_summary(&self) -> Result<Option<Summary>, InputError> {
        let path = self.summary();
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        let damaged = |why: String| {
            InputError(format!(
                "{} is damaged ({why}), and it holds the checksums that vouch for the run's config.toml and {WEIGHTS}\n  restore it from a copy, or re-train the run (keel never scores files it cannot verify)",
                path.display()
            ))
        };
        let bytes = crate::files::read(&path).map_err(|e| damaged(e.to_string()))?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| damaged(format!("it does not parse: {e}")))
    }

    /// Writes the final weights through a temporary name and a rename; returns their sha256
    /// (recorded in `summary.json`, checked by [`load_run`]).
    pub fn save_weights(&self, tensors: &HashMap<String, Tensor>) -> Result<String> {
        let tmp = self.root.join(".model.safetensors.tmp");
        candle_core::safetensors::save(tensors, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        let sha = crate::files::sha256_file(&tmp)?;
        std::fs::rename(&tmp, self.weights())?;
        Ok(sha)
    }

    /// Checks `model.safetensors` and `config.toml` against the sha256s in `summary.json`.
    pub fn verify_finished(&self) -> Result<(), InputError> {
        let Some(summary) = self.checked_summary()? else {
            eprintln!(
                "warning: {} has no {SUMMARY} (a run or a keel-format export of an older keel); its {WEIGHTS} and {CONFIG} are not verified",
                self.root.display()
            );
            return Ok(());
        };
        let check = |path: PathBuf, want: Option<String>, advice: &str| -> Result<(), InputError> {
            let Some(want) = want else {
                eprintln!(
                    "warning: {} records no checksum of {} (written by an older keel); it is not verified",
                    self.summary().display(),
                    path.display()
                );
                return Ok(());
            };
            let got = crate::files::sha256_file(&path)
                .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
            if got != want {
                return Err(InputError(format!(
                    "{} fails the checksum recorded in {} (sha256 {got}, expected {want}): {advice}",
                    path.display(),
                    self.summary().display()
                )));
            }
            Ok(())
        };
        check(
            self.config(),
            summary.config_sha256,
            "the file was edited after the run finished, so it may describe another model than the weights\n  restore the config.toml the run finished with (checkpoints/step_*/state.json lists its values); to try other settings, train a new run",
        )?;
        check(
            self.weights(),
            summary.weights_sha256,
            "the file is damaged or was replaced\n  restore the run's own model.safetensors from a copy; `keel train --resume` rewrites it from the final checkpoint when that is still there",
        )
    }

    /// Fails, as bad input, when a path of the run's layout holds the wrong kind of thing (a file
    /// where `checkpoints/` belongs, a folder or a FIFO where a CSV belongs): checked before a
    /// resume changes any file, so that a damaged layout costs nothing.
    pub fn check_layout(&self) -> Result<(), InputError> {
        let files = [CONFIG, TOKENIZER, METRICS, EVAL, GRAD_NORMS, WEIGHTS, SUMMARY, DONE];
        for (name, want_dir) in files.iter().map(|f| (*f, false)).chain([(CHECKPOINTS, true)]) {
            let path = self.root.join(name);
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let what = if want_dir { "a folder" } else { "a regular file" };
            let found = crate::files::kind_of(&meta);
            if found != what {
                return Err(InputError(format!(
                    "{} is {found}, where keel keeps {what}: the run directory's layout was changed\n  move it out of the way (keel changed nothing in {}), restore the original if you have it, then run the command again",
                    path.display(),
                    self.root.display()
                )));
            }
        }
        Ok(())
    }

    /// Writes `DONE`: last, once everything else of a finished run is in place.
    pub fn mark_done(&self) -> std::io::Result<()> {
        write_atomic(&self.done(), b"finished\n")
    }
}

/// The process holding a run directory's lock: its PID, or `None` when it has not written one
/// (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder(pub Option<u32>);

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "PID {pid}"),
            None => f.write_str("another process"),
        }
    }
}

/// Who holds a lock file's lock, from the PID its holder writes into it right after locking
/// (given a moment to do so).
fn holder_of(file: &mut std::fs::File) -> Holder {
    use std::io::{Read, Seek};
    let mut holder = String::new();
    for _ in 0..20 {
        holder.clear();
        let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
        if holder.trim().parse::<u32>().is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Holder(holder.trim().parse::<u32>().ok())
}

/// `summary.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    pub run_name: String,
    pub placement: String,
    pub depth: usize,
    pub d_model: usize,
    pub n_params: usize,
    pub steps_planned: usize,
    pub steps_completed: usize,
    pub tokens: usize,
    pub initial_loss: Option<f64>,
    /// Mean training loss over the last `log_every` completed steps.
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub final_val_ppl: Option<f64>,
    pub diverged: bool,
    pub diverged_at_step: Option<usize>,
    /// non_finite, unrecovered_spike or stagnation.
    #[serde(default)]
    pub divergence_reason: Option<String>,
    pub tokens_per_s: f64,
    pub wall_time_s: f64,
    pub device: String,
    /// Peak resident memory of the process (Linux; absent elsewhere).
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
    /// sha256 of the final `model.safetensors` (absent after a divergence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    /// sha256 of `config.toml` as the run finished with it: `keel eval` and `keel export` refuse a
    /// config edited since, which would describe another model than the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
}

/// A trained keel run: its resolved config, model and tokenizer.
pub struct LoadedRun {
    pub dir: PathBuf,
    pub resolved: Resolved,
    pub model: Model,
    pub tokenizer: KeelTokenizer,
}

/// The tokenizer a run was trained with: the run's own `tokenizer.json` (written by `keel train`),
/// else the prepared data folder's, else bytes.
pub fn run_tokenizer(dir: &Path, config: &Config) -> Result<KeelTokenizer> {
    let spec = match &config.data.path {
        Some(p) => crate::data::prepare::read_meta(Path::new(p)).map(|m| m.tokenizer).ok(),
        None => Some("byte".to_string()),
    };
    let own = RunDir::at(dir).tokenizer();
    if own.exists() {
        let spec = spec.unwrap_or_else(|| own.display().to_string());
        return Ok(KeelTokenizer::from_prepared(&own, &spec)?);
    }
    match (&config.data.path, spec) {
        (None, _) => Ok(KeelTokenizer::byte()),
        (Some(p), Some(spec)) => Ok(KeelTokenizer::from_prepared(&Path::new(p).join(TOKENIZER), &spec)?),
        (Some(p), None) => Err(InputError(format!(
            "run {} has no tokenizer.json and its data folder {p} is gone\n  copy the data folder's tokenizer.json into the run directory",
            dir.display()
        ))
        .into()),
    }
}

/// Why a run has no `model.safetensors`, and what to do: wait for a run in training, resume a
/// stopped one, restore the file of a finished one; a diverged run has none to give.
pub(crate) fn missing_weights(run: &RunDir) -> String {
    let dir = run.path().display();
    if let Some(who) = run.holder() {
        return format!(
            "run {dir} is still training (keel process {who} holds it): it has no {WEIGHTS} until it finishes\n  wait for that process to end, then run this command again"
        );
    }
    let summary = run.read_summary();
    if let Some(at) = summary.as_ref().and_then(|s| s.diverged_at_step) {
        return format!(
            "run {dir} diverged at step {at}, so it has no final weights ({WEIGHTS})\n  score a run that finished, or look at its curves with `keel plot {dir}`"
        );
    }
    if run.is_done() || summary.is_some() {
        return format!(
            "run {dir} finished, but its {WEIGHTS} is gone\n  `keel train --resume {dir}` restores it from the run's final checkpoint"
        );
    }
    format!("run {dir} has no {WEIGHTS}: it has not finished\n  finish it with `keel train --resume {dir}`, then run this command again")
}

/// Loads `dir/config.toml` and `dir/model.safetensors` onto `device`.
pub fn load_run(dir: &Path, device: &Device) -> Result<LoadedRun> {
    let run = RunDir::at(dir);
    let (config_path, weights_path) = (run.config(), run.weights());
    if !config_path.exists() {
        return Err(InputError(format!(
            "{} has no config.toml: not a keel run directory\n  pass --run with a folder written by `keel train`",
            dir.display()
        ))
        .into());
    }
    if !weights_path.exists() {
        return Err(InputError(missing_weights(&run)).into());
    }
    run.verify_finished()?;
    let config = run.read_config()?;
    crate::files::check_regular(&weights_path).map_err(|e| InputError(e.to_string()))?;
    let weights = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
        InputError(format!(
            "{} cannot be read as safetensors: {e}\n  the file is damaged; re-run training or restore it",
            weights_path.display()
        ))
    })?;
    let vocab = match (config.model.vocab_size, weights.get("tok_emb")) {
        (Some(v), _) => v,
        (None, Some(t)) => t.dim(0)?,
        (None, None) => crate::data::BYTE_VOCAB,
    };
    let resolved = config.resolve(vocab)?;
    let model = Model::new(&resolved, device)?;
    if let Err(why) = model.load_weights(&weights)? {
        return Err(InputError(format!(
            "{}: {why}: it does not belong to this run's config.toml\n  restore the run's own model.safetensors",
            weights_path.display()
        ))
        .into());
    }
    let tokenizer = run_tokenizer(dir, &config)?;
    if tokenizer.vocab_size() > resolved.vocab_size() {
        return Err(InputError(format!(
            "the run's tokenizer has {} tokens but its model only {}\n  the run directory's tokenizer.json belongs to another run",
            tokenizer.vocab_size(),
            resolved.vocab_size()
        ))
        .into());
    }
    Ok(LoadedRun { dir: dir.to_path_buf(), resolved, model, tokenizer })
}
