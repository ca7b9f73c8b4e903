//! The one list of benchmarks, and how `keel eval` and `keel sweep --eval` use it.
//!
//! A new benchmark is a [`Benchmark`] in its own file under `src/eval/` plus one line in [`ALL`]:
//! `--bench` and `--eval` accept it, `--help` lists it, `keel eval` runs it and writes its files,
//! and `keel sweep` passes it `--eval-data`/`--eval-shots` and reports its [`Benchmark::metrics`].

use super::bench::{Benchmark, Data, Outcome, Scorer, Session, Settings};
use super::{
    arc, bbh, cmmlu, groups, gsm8k, hellaswag, layer_removal, mc, mmlu, mmlu_pro, piqa, ppl, synthetic, winogrande,
    KeelLm,
};
use crate::run_dir::{RunDir, RESULTS};
use crate::InputError;
use anyhow::Result;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Every benchmark, in the order `--help` lists them.
pub static ALL: &[Bench] = &[
    Bench(&mmlu::Mmlu),
    Bench(&mmlu_pro::MmluPro),
    Bench(&cmmlu::Cmmlu),
    Bench(&ppl::Ppl),
    Bench(&mc::McJsonl),
    Bench(&mc::Bigbench),
    Bench(&hellaswag::Hellaswag),
    Bench(&arc::ArcEasy),
    Bench(&arc::ArcChallenge),
    Bench(&piqa::Piqa),
    Bench(&winogrande::Winogrande),
    Bench(&gsm8k::Gsm8kBench(gsm8k::Variant::Gsm8k)),
    Bench(&gsm8k::Gsm8kBench(gsm8k::Variant::Gsm8kCot)),
    Bench(&bbh::BbhZeroshot),
    Bench(&bbh::BbhFewshot),
    Bench(&bbh::BbhCotFewshot),
    Bench(&groups::KNOWLEDGE),
    Bench(&groups::MATH_CODE),
    Bench(&groups::MULTILINGUAL),
    Bench(&synthetic::Synthetic),
    Bench(&layer_removal::LayerRemoval),
];

/// A benchmark of [`ALL`], as a `--bench` or `--eval` value.
#[derive(Clone, Copy)]
pub struct Bench(pub &'static dyn Benchmark);

impl std::ops::Deref for Bench {
    type Target = dyn Benchmark;

    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl std::fmt::Debug for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for Bench {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Bench {}

impl clap::ValueEnum for Bench {
    fn value_variants<'a>() -> &'a [Self] {
        ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.about()))
    }
}

/// The model `keel eval` scores.
#[derive(Debug, Clone)]
pub enum Model {
    /// A run directory written by `keel train`.
    Run(PathBuf),
    /// A Llama-family model: a folder, or ORG/NAME in the Hugging Face hub cache.
    Hf(String),
}

/// One `keel eval`: a benchmark, a model and the flags.
#[derive(Debug, Clone)]
pub struct Job {
    pub bench: Bench,
    pub model: Model,
    pub device: String,
    pub batch_size: usize,
    /// `--out` (default: `RUN/eval/FOLDER`, or `runs/hf/NAME/eval/FOLDER`).
    pub out: Option<PathBuf>,
    pub force: bool,
    pub settings: Settings,
}

/// A job with its model loaded.
pub struct Evaluation<'a> {
    job: &'a Job,
    scorer: Scorer,
}

/// A finished benchmark run: its results folder and what to write there.
pub struct Report {
    pub out: PathBuf,
    pub outcome: Outcome,
}

impl<'a> Evaluation<'a> {
    /// Loads the model onto the job's device.
    pub fn open(job: &'a Job) -> Result<Self> {
        let device = crate::device::parse(&job.device)?;
        let scorer = match &job.model {
            Model::Run(run) => {
                if !run.is_dir() {
                    return Err(InputError(format!(
                        "run directory {} does not exist\n  pass --run with a folder written by `keel train`",
                        run.display()
                    ))
                    .into());
                }
                Scorer::Keel(Box::new(KeelLm::new(super::load_run(run, &device)?, job.batch_size)))
            }
            Model::Hf(spec) => Scorer::Hf(super::hf::load(spec, &device)?),
        };
        Ok(Evaluation { job, scorer })
    }

    /// The results folder's name (and the progress bar's label).
    pub fn folder(&self) -> String {
        self.job.bench.folder(&self.job.settings)
    }

    /// Runs the benchmark; `progress(done, total)` reports its progress. Nothing is written yet
    /// except the (empty) results folder: see [`Report::write`].
    pub fn run(&mut self, progress: &mut dyn FnMut(usize, usize)) -> Result<Report> {
        let job = self.job;
        let bench = job.bench;
        if let (Data::Required(hint), None) = (bench.data(), &job.settings.data) {
            return Err(InputError(format!("--bench {} needs --data\n  {hint}", bench.name())).into());
        }
        let folder = self.folder();
        let default_dir = match &job.model {
            Model::Run(run) => RunDir::at(run).results_for(&folder),
            Model::Hf(spec) => {
                let name: String =
                    spec.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect();
                Path::new("runs")
                    .join("hf")
                    .join(name.trim_start_matches('_'))
                    .join(crate::run_dir::EVAL_RESULTS)
                    .join(folder)
            }
        };
        let mut session =
            Session::new(&mut self.scorer, &job.settings, progress, job.out.clone(), default_dir, job.force);
        let outcome = bench.run(&mut session)?;
        Ok(Report { out: session.finish()?, outcome })
    }
}

impl Report {
    /// Writes the per-item CSV, then `results.json`, into the results folder.
    pub fn write(&self) -> Result<()> {
        self.outcome.write_to(&self.out)
    }
}

/// The headline scores in a run's `keel eval` results (`RUN/eval/FOLDER/results.json`), as summary
/// columns `FOLDER_metric`: every benchmark's [`Benchmark::metrics`] found at the top level of each
/// results file (folder names carry shots and data, so they are not matched to benchmarks).
pub fn scores(run: &Path) -> BTreeMap<String, f64> {
    let mut metrics: Vec<&str> = Vec::new();
    for m in ALL.iter().flat_map(|b| b.metrics()) {
        if !metrics.contains(m) {
            metrics.push(m);
        }
    }
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(RunDir::at(run).eval_results()) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(text) = crate::files::read_to_string(&e.path().join(RESULTS)) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        for metric in &metrics {
            if let Some(x) = v.get(metric).and_then(|x| x.as_f64()) {
                out.insert(format!("{name}_{metric}"), x);
            }
        }
    }
    out
}

/// `keel sweep --eval-data`: one path for every benchmark that needs data, and/or `BENCH=PATH`
/// for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalData {
    pub all: Option<String>,
    pub per_bench: BTreeMap<String, String>,
}

impl EvalData {
    /// Reads the `--eval-data` values; `NAME=` with a benchmark's name sets that benchmark's data.
    pub fn parse(values: &[String]) -> Result<Self, InputError> {
        let mut data = EvalData::default();
        for v in values {
            match v.split_once('=') {
                Some((name, path)) if ALL.iter().any(|b| b.name() == name) => {
                    data.per_bench.insert(name.to_string(), path.to_string());
                }
                Some((name, _)) if !name.contains('/') && !Path::new(v).exists() => {
                    let names: Vec<&str> = ALL.iter().map(|b| b.name()).collect();
                    return Err(InputError(format!(
                        "--eval-data {v}: {name} is not a benchmark\n  pass PATH, or BENCH=PATH with BENCH one of {}",
                        names.join(", ")
                    )));
                }
                _ if data.all.is_some() => {
                    return Err(InputError(format!(
                        "--eval-data {v}: a second path for every benchmark\n  pass one PATH, and BENCH=PATH for the others"
                    )))
                }
                _ => data.all = Some(v.clone()),
            }
        }
        Ok(data)
    }

    /// The data `bench` gets.
    pub fn for_bench(&self, bench: &str) -> Option<&str> {
        self.per_bench.get(bench).or(self.all.as_ref()).map(String::as_str)
    }
}

/// `keel sweep --eval`'s checks: no studies, and `--eval-data` for the benchmarks that need data.
pub fn check_sweep(benches: &[Bench], data: &EvalData) -> Result<(), InputError> {
    if let Some(b) = benches.iter().find(|b| b.study()) {
        let name = b.name();
        return Err(InputError(format!(
            "--eval {name}: run it per run with `keel eval --bench {name} --run DIR` (it is a study, not a score)"
        )));
    }
    let lacking: Vec<&str> = benches
        .iter()
        .filter(|b| matches!(b.data(), Data::Required(_)) && data.for_bench(b.name()).is_none())
        .map(|b| b.name())
        .collect();
    if let Some((last, rest)) = lacking.split_last() {
        let (list, verb) = if rest.is_empty() {
            (last.to_string(), "needs")
        } else {
            (format!("{} and {last}", rest.join(", ")), "need")
        };
        return Err(InputError(format!(
            "--eval {list} {verb} --eval-data\n  pass --eval-data PATH for all of them, or --eval-data BENCH=PATH for each"
        )));
    }
    Ok(())
}

impl Bench {
    /// The `keel eval` arguments with which `keel sweep` scores the run in `run`: its data to
    /// benchmarks that need data, shots (from the test split where a subject has no dev split) to
    /// those that take shots, the generation budget, the limit.
    pub fn sweep_args(
        &self,
        run: &Path,
        data: &EvalData,
        shots: Option<usize>,
        max_gen_toks: Option<usize>,
        limit: Option<usize>,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["eval", "--quiet", "--bench", self.name(), "--run"].map(Into::into).into();
        args.push(run.into());
        if let (Some(d), Data::Required(_)) = (data.for_bench(self.name()), self.data()) {
            args.extend(["--data", d].map(Into::into));
        }
        if let (Some(shots), true) = (shots, self.takes_shots()) {
            args.extend(["--shots", &shots.to_string(), "--shots-from", "test"].map(Into::into));
        }
        if let Some(n) = max_gen_toks {
            args.extend(["--max-gen-toks", &n.to_string()].map(Into::into));
        }
        if let Some(l) = limit {
            args.extend(["--limit", &l.to_string()].map(Into::into));
        }
        args
    }
}
