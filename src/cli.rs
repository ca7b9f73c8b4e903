//! Command-line definitions (clap). Each subcommand's logic lives in `commands/`.
//!
//! Each subcommand's long help (`keel COMMAND --help`) ends with examples; `tests/docs.rs` checks
//! that every example command also appears in README.md or docs/, so the two say the same.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("KEEL_GIT_REV"), ")"),
    about = "Experiment runner for very deep Transformers (Keel: Post-LN is back, arXiv 2601.19895)",
    after_help = "`keel COMMAND --help` gives each command's flags and examples; README.md and docs/ in the repository give the rest."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const TRAIN_HELP: &str = "Train one experiment described by a TOML config.

The config has the sections [model], [train], [data], [run] and [divergence]; every key is optional
and --set section.key=value overrides any of them. The run directory gets the resolved config.toml,
metrics.csv, eval.csv, grad_norms.csv, checkpoints and TensorBoard event files, and at the end
model.safetensors and summary.json. SIGINT or SIGTERM writes a checkpoint and exits with status
130; --resume continues from the newest valid checkpoint, byte for byte.

Examples:
  keel train --config configs/quickstart.toml --out runs/quick
  keel train --resume runs/quick
  keel train --config configs/quickstart.toml --set model.placement=pre_ln --set train.lr=1e-3

Docs: docs/configuration.md (every key), docs/running.md (checkpoints, resuming, fine-tuning).";

const BENCH_HELP: &str = "Measure training speed (tokens/s, ms per phase) on a fixed config.

Times forward + backward + clipping + AdamW steps, by default on the reference config R (d_model
128, 4 heads, depth 32, seq 128, batch 8, byte vocabulary), and prints the CPU and SIMD levels;
--matmul times the matrix products instead, --decode text generation with and without the KV cache.

Examples:
  keel bench --placements keel,pre_ln --steps 10 --warmup 2
  keel bench --decode 256 --set model.depth=64 --set train.seq_len=512 --rounds 3

Docs: docs/speed.md.";

const DATA_HELP: &str = "Prepare corpora: tokenize once into memory-mapped shards.

Examples:
  keel data prepare --input data/raw/kjv.txt --tokenizer bpe:8192 --out data/bible-bpe8k

Docs: docs/data.md.";

const PREPARE_HELP: &str = "Tokenize text/JSONL inputs into train/val token shards with a tokenizer.json and meta.json.

Each document goes whole to the training or the validation split (--val-fraction, seeded by
--seed). The output folder holds train_*.bin and val_*.bin shards, the tokenizer.json used and
meta.json (inputs with their sha256, token and document counts, vocabulary); train on it with
--set data.path=FOLDER.

Examples:
  keel data prepare --input data/raw/kjv.txt --tokenizer bpe:8192 --out data/bible-bpe8k
  keel data prepare --input data/raw/shakespeare --tokenizer data/raw/gpt2 --out data/shakespeare-gpt2

Docs: docs/data.md.";

const PROBE_HELP: &str = "Per-sub-layer gradient norms at initialization, beside the paper's prediction.

Runs forward and backward on one fixed batch for each placement x depth (or, with --run, a trained
run's weights) and writes per sub-layer the input and parameter gradient norms, the ratio to the
top sub-layer's input gradient, and three residual-path predictions of that ratio.

Examples:
  keel probe --placements post_ln,pre_ln,keel --depths 8,32,128,512 --out runs/probe.csv
  keel probe --run runs/fig1c/d64-keel --step 0 --out runs/probe-init.csv

Docs: docs/stress-and-probe.md.";

const STRESS_HELP: &str = "Maximum tolerable learning rate per placement and depth (the paper's Table 1).

Trains every placement x depth with the learning rate rising linearly from 0 to --peak-lr over
--warmup-steps, stops each run at its first divergence, and writes stress.csv and table1.md.
Running the same command again skips finished runs and resumes interrupted ones.

Examples:
  keel stress --depths 64,512 --peak-lr 5e-2 --warmup-steps 400 --jobs 2 --out runs/stress

Docs: docs/stress-and-probe.md, docs/results.md.";

const SWEEP_HELP: &str = "Grids of runs: depth x placement x learning rate x seed x any config key.

Each grid point is an ordinary run directory under --out, named after its values; summary.csv holds
one row per run. Running the same command again skips finished runs and resumes stopped ones;
Ctrl-C stops the grid with a checkpoint in every running run.

Examples:
  keel sweep --depths 64..1024 --placements pre_ln,keel --jobs 2 --out runs/sw --dry-run
  keel sweep --depths 64..1024 --placements pre_ln,keel --jobs 2 --out runs/sw

Docs: docs/sweeps.md.";

const PLOT_HELP: &str = "Figures (PNG and SVG) from run, sweep and stress folders and probe CSVs.

Run directories give loss curves and gradient norms against depth; a sweep folder a summary.csv
column against depth (or --against another column); a stress folder the maximum learning rates;
a probe CSV the gradient ratios with their predictions. Works while a sweep is still running.

Examples:
  keel plot runs/quick --out figures
  keel plot runs/fig1c --column final_val_loss --out figures
  keel plot runs/alpha --against alpha --out figures

Docs: docs/plotting.md.";

const EVAL_HELP: &str = "Score a run (or a Hugging Face Llama model) on benchmarks: MMLU, perplexity, multiple choice,
BIG-bench, the synthetic tasks, and the layer-removal study.

Prompts, truncation, scoring and metrics follow lm-evaluation-harness; results go to
RUN/eval/NAME/ (results.json and a per-item CSV).

Examples:
  keel eval --bench ppl --run runs/quick
  keel eval --bench mmlu --run runs/bible --data data/mmlu --shots 0
  keel eval --bench layer-removal --run runs/fig1c/d64-keel --limit 64

Docs: docs/evaluation.md.";

const GENERATE_HELP: &str = "Sample text from a run (or a Hugging Face Llama model), decoding with a KV cache.

Prints the prompt, then the text as it comes; the same seed, prompt and settings give the same
samples. --temperature 0 is greedy.

Examples:
  keel generate --run runs/bible --prompt \"And God said\" --max-new-tokens 200 --temperature 0.8 --top-k 50 --num-samples 2

Docs: docs/generate.md.";

const EXPORT_HELP: &str = "Export a run for Hugging Face: a Llama folder for Pre-LN/RMSNorm/SwiGLU runs,
KeelForCausalLM (transformers remote code) for every other placement.

Examples:
  keel export --run runs/quick --hf runs/quick-hf

Docs: docs/export.md.";

const RUNS_HELP: &str = "One table of every run under the given folders: status (done, diverged, running,
stopped, failed), shape, steps, losses, speed.

Examples:
  keel runs
  keel runs runs/sw --sort final_val
  keel runs runs/sw --json

Docs: docs/running.md (Watching runs).";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train one experiment described by a TOML config.
    #[command(long_about = TRAIN_HELP)]
    Train(TrainArgs),
    /// Measure training speed (tokens/s, ms per phase) on a fixed config.
    #[command(long_about = BENCH_HELP)]
    Bench(BenchArgs),
    /// Prepare corpora: tokenize once into memory-mapped shards.
    #[command(subcommand, long_about = DATA_HELP)]
    Data(DataCommand),
    /// Per-sub-layer gradient norms at initialization, beside the paper's prediction.
    #[command(long_about = PROBE_HELP)]
    Probe(ProbeArgs),
    /// Maximum tolerable learning rate per placement and depth (the paper's Table 1).
    #[command(long_about = STRESS_HELP)]
    Stress(StressArgs),
    /// Grids of runs: depth x placement x learning rate x seed x any config key.
    #[command(long_about = SWEEP_HELP)]
    Sweep(SweepArgs),
    /// Figures (PNG and SVG) from run, sweep and stress folders and probe CSVs.
    #[command(long_about = PLOT_HELP)]
    Plot(PlotArgs),
    /// Score a run (or a Hugging Face Llama model) on benchmarks: MMLU, perplexity, multiple choice,
    /// BIG-bench, the synthetic tasks, and the layer-removal study.
    #[command(long_about = EVAL_HELP)]
    Eval(EvalArgs),
    /// Sample text from a run (or a Hugging Face Llama model), decoding with a KV cache.
    #[command(long_about = GENERATE_HELP)]
    Generate(GenerateArgs),
    /// Export a run for Hugging Face: a Llama folder for Pre-LN/RMSNorm/SwiGLU runs,
    /// KeelForCausalLM (transformers remote code) for every other placement.
    #[command(long_about = EXPORT_HELP)]
    Export(ExportArgs),
    /// One table of every run under the given folders: status (done, diverged, running,
    /// stopped, failed), shape, steps, losses, speed.
    #[command(visible_alias = "ls", long_about = RUNS_HELP)]
    Runs(RunsArgs),
}

/// `--shots-from` values.
pub use crate::eval::mmlu::ShotSource;
/// `--bench` and `--eval` values: the benchmarks of `eval::registry::ALL`.
pub use crate::eval::registry::Bench;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Which benchmark.
    #[arg(long)]
    pub bench: Bench,
    /// The run directory to score (its config.toml and model.safetensors).
    #[arg(long, conflicts_with = "hf_model", required_unless_present = "hf_model")]
    pub run: Option<PathBuf>,
    /// Score a Llama-family model instead: a folder with config.json, *.safetensors and
    /// tokenizer.json, or ORG/NAME from the Hugging Face hub cache.
    #[arg(long, value_name = "DIR_OR_ORG/NAME")]
    pub hf_model: Option<String>,
    /// Benchmark data: the task's folder as the hub stores it (or hf:ORG/NAME where supported), a
    /// split file (parquet, JSONL, JSON), MMLU's or CMMLU's CSV folder, a BIG-bench task folder, a
    /// group's folder of member folders, a prepared data folder or text file (ppl, layer-removal;
    /// default: the run's own validation data).
    #[arg(long)]
    pub data: Option<String>,
    /// Few-shot exemplars per question (default: the task's lm-evaluation-harness default, 0 for
    /// MMLU, mc-jsonl and bigbench).
    #[arg(long)]
    pub shots: Option<usize>,
    /// Where MMLU exemplars come from when a subject has no dev split.
    #[arg(long, value_enum, default_value = "dev")]
    pub shots_from: ShotSource,
    /// MMLU prompts longer than the context: truncate-left (lm-evaluation-harness's rule: cut
    /// tokens from the left) or drop-shots (drop whole exemplars from the front first).
    #[arg(long, value_enum, default_value = "truncate-left")]
    pub overflow: crate::eval::bench::Overflow,
    /// Subjects or subtasks to score, comma-separated (MMLU, MMLU-Pro, CMMLU, BBH; default: all).
    #[arg(long, value_delimiter = ',', visible_alias = "subtasks")]
    pub subjects: Vec<String>,
    /// Generative tasks: most new tokens per answer (default: the task's, 256 for GSM8K). The
    /// prompt keeps the last (context - N) tokens, as lm-evaluation-harness does.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_gen_toks: Option<usize>,
    /// Score at most N questions per subject/task (or N windows for ppl).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
    /// Perplexity windows advance by this many tokens (default: half the context).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub stride: Option<usize>,
    /// Results folder (default: RUN/eval/BENCH..., or runs/hf/NAME/eval/... for --hf-model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Overwrite an existing results folder.
    #[arg(long)]
    pub force: bool,
    /// No progress bar or table.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The run directory to sample from (its config.toml, model.safetensors and tokenizer.json).
    #[arg(long, conflicts_with = "hf_model", required_unless_present = "hf_model")]
    pub run: Option<PathBuf>,
    /// Sample from a Llama-family model instead: a folder with config.json, *.safetensors and
    /// tokenizer.json (e.g. from `keel export`), or ORG/NAME from the Hugging Face hub cache.
    #[arg(long, value_name = "DIR_OR_ORG/NAME")]
    pub hf_model: Option<String>,
    /// The prompt (default: read from standard input; an empty prompt starts from the
    /// end-of-text token, or a newline for tokenizers without one).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Tokens to generate per sample.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy (argmax).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample among the K most likely tokens only.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Nucleus sampling: among the most likely tokens whose probability adds up to P, in (0, 1].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// Seed of the sampler: the same seed, prompt and settings give the same samples.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Stop a sample at this string (cut before it). Repeatable.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Keep going past the end-of-text token.
    #[arg(long)]
    pub ignore_eot: bool,
    /// Samples to draw, one after another from the same sampler.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub num_samples: usize,
    /// Re-run the whole sequence for every token instead of using the KV cache (slow; the
    /// reference the cache is checked against).
    #[arg(long)]
    pub no_cache: bool,
    /// Print one JSON object (prompt tokens, each sample's tokens and text, speed) instead of
    /// streaming text.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No speed line on standard error.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run directory to export.
    #[arg(long)]
    pub run: PathBuf,
    /// Output folder for the Hugging Face layout (must not exist or be empty).
    #[arg(long)]
    pub hf: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directories (loss curves, gradient norms), sweep folders (summary.csv), stress folders
    /// (stress.csv) or probe CSV files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "figures")]
    pub out: PathBuf,
    /// Log-scale steps on the loss figure.
    #[arg(long)]
    pub log_x: bool,
    /// summary.csv column to plot against depth (or --against).
    #[arg(long, default_value = "final_val_loss")]
    pub column: String,
    /// summary.csv column on the x axis: depth, or e.g. alpha for an alpha ablation (one line per
    /// placement and depth).
    #[arg(long, default_value = "depth")]
    pub against: String,
    /// Steps of grad_norms.csv to draw (default: the first and the last).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<usize>,
    /// Smooth training-loss curves with TensorBoard's debiased EMA of weight W in [0, 1)
    /// (TensorBoard's default is 0.6), the raw curve drawn faint behind; 0 draws them raw.
    #[arg(long, value_name = "W", default_value_t = 0.0)]
    pub smooth: f64,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Depths in sub-layers: A..B doubles from A to B, or a comma list.
    #[arg(long, default_value = crate::sweep::DEFAULT_DEPTHS)]
    pub depths: String,
    /// Placements, comma-separated (default: the config's).
    #[arg(long, value_delimiter = ',')]
    pub placements: Vec<String>,
    /// Peak learning rates, comma-separated (default: the config's).
    #[arg(long, value_delimiter = ',')]
    pub lrs: Vec<f64>,
    /// Seeds, comma-separated (default: the config's).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Any other axis: --grid section.key=v1,v2 (repeatable).
    #[arg(long, value_name = "SECTION.KEY=V1,V2")]
    pub grid: Vec<String>,
    /// Runs at once (with --devices: one per device instead).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), conflicts_with = "devices")]
    pub jobs: usize,
    /// One run per device at a time, e.g. --devices 0,1,2,3 (CUDA ordinals) or cpu,cuda:1.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Sweep folder: one run directory per grid point, plus summary.csv.
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
    /// List the runs with their parameter counts and tokens, and a time estimate; train nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write a job script instead of running: `slurm` (a job array over runs.txt).
    #[arg(long, value_name = "TARGET")]
    pub emit: Option<String>,
    /// With --emit slurm: processes per run (data-parallel over MPI; each run is `srun -n N keel
    /// train`, which needs keel built with --features mpi). train.batch_size must divide by N.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), requires = "emit")]
    pub ntasks_per_run: usize,
    /// Rebuild summary.csv from the run directories in --out.
    #[arg(long)]
    pub collect: bool,
    /// Score each finished run with `keel eval` (comma-separated benchmarks, e.g. synthetic, ppl,
    /// mmlu, gsm8k, hellaswag; see `keel eval --help`); summary.csv gains one column per score.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub eval: Vec<Bench>,
    /// --data for the evaluations that need it: PATH for every one, or BENCH=PATH for one
    /// (repeatable, e.g. --eval-data gsm8k=data/gsm8k --eval-data mmlu=data/mmlu).
    #[arg(long, value_name = "[BENCH=]PATH")]
    pub eval_data: Vec<String>,
    /// --shots for the evaluations (default: each task's own).
    #[arg(long)]
    pub eval_shots: Option<usize>,
    /// --max-gen-toks for the generative evaluations (default: each task's own).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub eval_max_gen_toks: Option<usize>,
    /// --limit for the evaluations.
    #[arg(long)]
    pub eval_limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct StressArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Placements, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = crate::placement::all_names_csv())]
    pub placements: Vec<String>,
    /// Depths in sub-layers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,512")]
    pub depths: Vec<usize>,
    /// The learning rate reached at the end of the linear ramp from 0.
    #[arg(long, default_value_t = 5e-2)]
    pub peak_lr: f64,
    /// Steps of the ramp (each run trains this many steps).
    #[arg(long, default_value_t = 500)]
    pub warmup_steps: usize,
    /// Runs at once.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub jobs: usize,
    /// Output folder (re-running skips finished runs and resumes started ones).
    #[arg(long, default_value = "runs/stress")]
    pub out: PathBuf,
    /// Divergence: a spike is a loss above this factor x the best loss so far...
    #[arg(long, default_value_t = 1.5)]
    pub spike_factor: f64,
    /// ...that does not come back below `recover-factor` x best within this many steps.
    #[arg(long, default_value_t = 50)]
    pub recover_window: usize,
    #[arg(long, default_value_t = 1.2)]
    pub recover_factor: f64,
    /// Stagnation/degradation: the EMA-smoothed loss stays this fraction above its best...
    #[arg(long, default_value_t = 0.1)]
    pub stall_tolerance: f64,
    /// ...for this many steps; or the best smoothed loss improves by less than
    /// `min-improvement` (a fraction) over this many steps.
    #[arg(long, default_value_t = 100)]
    pub stall_window: usize,
    #[arg(long, default_value_t = 0.01)]
    pub min_improvement: f64,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Placements, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "post_ln,pre_ln,keel")]
    pub placements: Vec<String>,
    /// Depths in sub-layers, comma-separated (each even).
    #[arg(long, value_delimiter = ',', default_value = "8,32,128,512")]
    pub depths: Vec<usize>,
    /// Output CSV (must not exist).
    #[arg(long, default_value = "runs/probe.csv")]
    pub out: PathBuf,
    /// Probe a trained run instead of fresh models: its config and final weights (or --step's).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["placements", "depths"])]
    pub run: Option<PathBuf>,
    /// With --run: the weights of this step's checkpoint (0: the run's initialization).
    #[arg(long, requires = "run")]
    pub step: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Tokenize text/JSONL inputs into train/val token shards with a tokenizer.json and meta.json.
    #[command(long_about = PREPARE_HELP)]
    Prepare(PrepareArgs),
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Inputs: text files, folders (recursive), glob patterns, JSONL files (field `text`), or
    /// hf-dataset:ORG/NAME:FILE. Repeatable.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// byte | bpe:N | path to tokenizer.json | folder with encoder.json + vocab.bpe | hf:ORG/NAME
    #[arg(long, short)]
    pub tokenizer: String,
    /// Output folder (must not exist or be empty), e.g. data/NAME.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Fraction of documents held out for validation (0 to 1).
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Seed of the document split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Drop lines that are not UTF-8 (counted in meta.json) instead of failing.
    #[arg(long)]
    pub skip_invalid_utf8: bool,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: u64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Experiment config (TOML with `[model]`, `[train]`, `[data]`, `[run]` and `[divergence]` sections).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override a config value: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Device: cpu, cuda, cuda:N, metal or auto (overrides run.device).
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Run directory (default: run.out_dir/run.name).
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its newest valid checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Fine-tune: start from a finished run's weights (RUN) or a checkpoint's (RUN@STEP); the
    /// same as --set train.init_from=RUN.
    #[arg(long, value_name = "RUN", conflicts_with = "resume")]
    pub init_from: Option<String>,
    /// With --resume: accept changes to keys that are safe to change (train.steps, log_every,
    /// checkpoint_every, keep_checkpoints, run.device).
    // Not `requires = "resume"`: clap drops that requirement whenever `--out`, which conflicts
    // with `--resume`, is present; `commands::train` checks both flags itself.
    #[arg(long)]
    pub force: bool,
    /// With --resume: continue although the data differs from what the run was started on (its
    /// identity is recorded in config.toml's `[meta]`); the new data's identity is recorded.
    #[arg(long)]
    pub accept_data_change: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Placements to measure, comma-separated (overrides model.placement).
    #[arg(long, value_delimiter = ',')]
    pub placements: Vec<String>,
    /// Also append the results to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Time f32 matrix products at the model's shapes (forward and backward) and 1024^3 instead
    /// of training steps; scripts/matmul_torch.py times the same list with PyTorch.
    #[arg(long, conflicts_with_all = ["placements", "csv"])]
    pub matmul: bool,
    /// Time text generation instead: N new tokens (greedy, batch 1, a 16-token prompt) with the
    /// KV cache and by re-running the full forward per token, in alternating rounds.
    #[arg(long, value_name = "N", conflicts_with_all = ["matmul", "csv"])]
    pub decode: Option<usize>,
    /// Rounds of each decoding mode (with --decode).
    #[arg(long, default_value_t = 3, requires = "decode")]
    pub rounds: usize,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Run directories, or folders holding runs at any depth (a sweep's or stress grid's --out,
    /// runs/).
    #[arg(default_value = "runs")]
    pub dirs: Vec<PathBuf>,
    /// Sort by this column, ascending (numbers numerically, missing values last; default: the
    /// folders' order).
    #[arg(long, value_name = "COLUMN")]
    pub sort: Option<crate::runs::Column>,
    /// Print CSV (a header and one line per run) instead of the table.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Print a JSON array, one object per run, instead of the table.
    #[arg(long)]
    pub json: bool,
}
