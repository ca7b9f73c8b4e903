//! The benchmark interface: what a benchmark is called, what it reads, and what one run of it
//! hands back to `keel eval`.
//!
//! A benchmark is a [`Benchmark`]. Its `run` checks its inputs, opens the results folder
//! ([`Session::start`]), scores the model and returns an [`Outcome`]: the `results.json` value,
//! the per-item CSV, the figure to draw and the summary to print. The caller writes the files, all
//! in one place (`Report::write` in `registry.rs`). The benchmarks are listed once, in `ALL` in
//! `registry.rs`, which `keel eval` and `keel sweep --eval` both ask.

use super::{results_dir, KeelLm, LanguageModel};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;

/// One benchmark of `keel eval --bench NAME`.
pub trait Benchmark: Sync {
    /// The `--bench` value.
    fn name(&self) -> &'static str;
    /// Its line in `--help` (without a final period, as clap prints doc comments).
    fn about(&self) -> &'static str;
    /// What it reads from `--data`.
    fn data(&self) -> Data;
    /// `--shots` applies to it (and `keel sweep --eval-shots` passes shots on).
    fn takes_shots(&self) -> bool {
        false
    }
    /// A study rather than a score: `keel sweep --eval` refuses it.
    fn study(&self) -> bool {
        false
    }
    /// The top-level numbers of its `results.json` that `keel sweep` reports in summary.csv, as
    /// columns `FOLDER_metric`.
    fn metrics(&self) -> &'static [&'static str] {
        &[]
    }
    /// The results folder's name under `RUN/eval/` (also the progress bar's label).
    fn folder(&self, _settings: &Settings) -> String {
        self.name().to_string()
    }
    /// Reads and checks the inputs, calls [`Session::start`] once they are valid, scores.
    fn run(&self, session: &mut Session) -> Result<Outcome>;
}

/// What a benchmark reads from `--data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// `--data` is required; the text says what to pass (shown when it is missing).
    Required(&'static str),
    /// `--data` is optional (without it: the run's own validation data); the text says what to pass.
    Optional(&'static str),
    /// No data: the benchmark generates its items.
    None,
}

/// Where few-shot exemplars come from when a subject has no dev split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShotSource {
    /// Exemplars from the dev split, in file order (lm-evaluation-harness's default).
    Dev,
    /// Exemplars from the head of the test split, which are then excluded from scoring.
    Test,
    /// No exemplars when there is no dev split.
    None,
}

/// What MMLU does with a few-shot prompt that does not fit the model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Overflow {
    /// Keep every shot and cut tokens from the left of context + answer, scoring the answer's
    /// tokens at the end (lm-evaluation-harness's rule).
    TruncateLeft,
    /// Drop whole exemplars from the front until the prompt fits, then cut from the left.
    DropShots,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::TruncateLeft => "truncate-left",
            Overflow::DropShots => "drop-shots",
        }
    }
}

/// The `keel eval` flags a benchmark may read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--data` (checked to be present for [`Data::Required`] benchmarks before `run`).
    pub data: Option<String>,
    /// `--shots`: few-shot exemplars per question (`None`: the task's lm-evaluation-harness default,
    /// see [`Settings::shots_or`]).
    pub shots: Option<usize>,
    /// `--shots-from`.
    pub shots_from: ShotSource,
    /// `--overflow` (MMLU).
    pub overflow: Overflow,
    /// `--subjects` (MMLU).
    pub subjects: Vec<String>,
    /// `--limit`: items per subject or task (windows for perplexity).
    pub limit: Option<usize>,
    /// `--stride` (perplexity windows).
    pub stride: Option<usize>,
    /// `--max-gen-toks`: the generation budget of generative tasks (`None`: the task's default).
    pub max_gen_toks: Option<usize>,
}

impl Settings {
    /// `--shots`, else the task's default (`num_fewshot` of its lm-evaluation-harness YAML).
    pub fn shots_or(&self, default: usize) -> usize {
        self.shots.unwrap_or(default)
    }
}

/// The model being scored: a keel run, or a Llama-family model.
pub enum Scorer {
    Keel(Box<KeelLm>),
    Hf(Box<dyn LanguageModel>),
}

impl Scorer {
    pub fn lm(&mut self) -> &mut dyn LanguageModel {
        match self {
            Scorer::Keel(k) => k.as_mut(),
            Scorer::Hf(h) => h.as_mut(),
        }
    }

    /// The residual placement, for results files.
    pub fn placement(&self) -> Option<String> {
        match self {
            Scorer::Keel(k) => Some(k.run.resolved.model().placement.as_str().to_string()),
            Scorer::Hf(_) => Some("llama (pre_ln)".to_string()),
        }
    }
}

/// One benchmark run: the model, the flags, progress reporting and the results folder.
pub struct Session<'a> {
    pub scorer: &'a mut Scorer,
    pub settings: &'a Settings,
    /// `progress(done, total)`, in whatever units the benchmark counts.
    pub progress: &'a mut dyn FnMut(usize, usize),
    out: Option<PathBuf>,
    dir: Option<PathBuf>,
    default_dir: PathBuf,
    force: bool,
}

impl<'a> Session<'a> {
    /// A session writing to `dir` (`--out`), else `default_dir`; an existing folder with results
    /// needs `force`.
    pub fn new(
        scorer: &'a mut Scorer,
        settings: &'a Settings,
        progress: &'a mut dyn FnMut(usize, usize),
        dir: Option<PathBuf>,
        default_dir: PathBuf,
        force: bool,
    ) -> Self {
        Session { scorer, settings, progress, out: None, dir, default_dir, force }
    }

    /// `--data`, which [`Data::Required`] benchmarks are guaranteed to have.
    pub fn data(&self) -> &str {
        self.settings.data.as_deref().unwrap_or_default()
    }

    /// The inputs are valid: creates the results folder, refusing to overwrite results (unless
    /// `--force`). Benchmarks call it once, before scoring; later calls do nothing.
    pub fn start(&mut self) -> Result<()> {
        if self.out.is_none() {
            self.out = Some(results_dir(self.dir.as_deref(), self.default_dir.clone(), self.force)?);
        }
        Ok(())
    }

    /// The results folder, created now if [`Session::start`] has not been called.
    pub fn dir(&mut self) -> Result<PathBuf> {
        self.start()?;
        Ok(self.out.clone().expect("started"))
    }

    /// The results folder, created by [`Session::start`] if the benchmark did not call it.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.start()?;
        Ok(self.out.take().expect("started"))
    }
}

/// A figure drawn from a results folder once its files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// `layer_removal.png` and `.svg` from `layer_removal.csv`.
    LayerRemoval,
}

/// What one run of a benchmark produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `results.json`, as written (pretty-printed JSON).
    pub results: String,
    /// The per-item CSV: its file name and contents (a header, then one row per item).
    pub rows: Option<(&'static str, Vec<u8>)>,
    /// A figure to draw from the results folder after the files are written.
    pub figure: Option<Figure>,
    /// What `keel eval` prints before `results in DIR`: a table, a line ending in `; `, or both.
    pub summary: String,
}

impl Outcome {
    /// `results` becomes `results.json`.
    pub fn new(results: &impl Serialize, summary: String) -> Result<Self> {
        Ok(Outcome { results: serde_json::to_string_pretty(results)?, rows: None, figure: None, summary })
    }

    /// Adds the per-item CSV `file`: a header from `T`'s fields, then `rows`.
    pub fn rows<T: Serialize>(mut self, file: &'static str, rows: &[T]) -> Result<Self> {
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in rows {
            w.serialize(r)?;
        }
        self.rows = Some((file, w.into_inner()?));
        Ok(self)
    }

    /// Writes the per-item CSV, then `results.json`, into `dir`.
    pub fn write_to(&self, dir: &std::path::Path) -> Result<()> {
        let write = |file: &str, bytes: &[u8]| {
            let path = dir.join(file);
            crate::files::write_atomic(&path, bytes).with_context(|| format!("writing {}", path.display()))
        };
        if let Some((file, csv)) = &self.rows {
            write(file, csv)?;
        }
        write(crate::run_dir::RESULTS, self.results.as_bytes())
    }

    pub fn figure(mut self, figure: Figure) -> Self {
        self.figure = Some(figure);
        self
    }
}
