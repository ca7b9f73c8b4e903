//! Command-line definitions (clap). Each subcommand's logic lives in `commands/`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "keel", version = crate::VERSION, about = "Experiment runner for very deep Transformers (Keel: Post-LN is back, arXiv 2601.19895)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train one experiment described by a TOML config.
    Train(TrainArgs),
    /// Measure training speed (tokens/s, ms per phase) on a fixed config.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Experiment config (TOML with [model], [train], [data], [run] sections).
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
    #[arg(long)]
    pub out: Option<PathBuf>,
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
}
