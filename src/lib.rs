//! keel: an experiment runner for very deep Transformers, reproducing
//! "Post-LayerNorm Is Back: Stable, ExpressivE, and Deep" (Chen & Wei, arXiv 2601.19895).
//!
//! This page is the module map for contributors. Users start at `README.md` and `docs/` in the
//! repository; `docs/architecture.md` has this map with the conventions the code keeps.
//!
//! # From the command line to the library
//!
//! [`cli`] declares the flags (clap); [`commands`] holds one thin adapter per subcommand (flags
//! to one library call to a printout, returning an [`ExitStatus`]). Nothing outside `main.rs` and
//! [`commands`] imports [`cli`] or [`commands`], and there are no import cycles between files.
//! Errors from bad input are [`InputError`], [`config::ConfigError`] or [`data::DataError`]
//! ([`is_input_error`]): exit status 2, one screen.
//!
//! # Modules
//!
//! | concept | module |
//! |---|---|
//! | the experiment: config sections, loading and `--set`, validation into [`config::Resolved`] | [`config`] |
//! | norm placements: each sub-layer's residual form, init scale, final-norm default, probe prediction, Llama compatibility; a new placement starts here | [`placement`] |
//! | the decoder-only model `(B, T, C)`, built from what the placement says | [`model`] |
//! | fused CPU and CUDA kernels, each beside its composite twin; the CUDA sources in `src/ops/cuda/` | [`ops`] |
//! | AdamW, the learning-rate schedule, gradient norms; per-block activation recomputation | [`optim`], [`recompute`] |
//! | the training loop, starting and resuming a run, fine-tuning from a run's weights | [`train`] |
//! | divergence as the paper's Table 1 defines it | [`divergence`] |
//! | training data: the synthetic corpus, text files, prepared shards, tokenizers, `keel data prepare` | [`data`] |
//! | a run directory's layout and lock, `summary.json`, loading a finished run | [`run_dir`] |
//! | checkpoints that resume bit for bit; the training CSVs; TensorBoard event files | [`checkpoint`], [`metrics`], [`tensorboard`] |
//! | atomic writes, checksums, new-or-empty output folders | [`files`] |
//! | SIGINT / SIGTERM handling; fault injection points for tests | [`signals`], [`fault`] |
//! | keel's own seeded random number generator | [`rng`] |
//! | `--device` to a Candle device | [`device`] |
//! | data parallelism: ranks, the MPI and NCCL engines, collectives | [`dist`] |
//! | grids of runs and their `keel` child processes; sweeps, the stress test, the probe | [`grid`], [`child`], [`sweep`], [`stress`], [`probe`] |
//! | a run's memory estimate, and the check that refuses what cannot fit | [`memory`] |
//! | `keel runs`: finding runs, their status, the table | [`runs`] |
//! | benchmarks (one file each, listed once in [`eval::registry`]); a new benchmark starts here | [`eval`] |
//! | sampling text with a KV cache | [`decode`] |
//! | throughput measurement; figures; Hugging Face export | [`bench`](mod@bench), [`plot`], [`export`] |

pub mod bench;
pub mod checkpoint;
pub mod child;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod decode;
pub mod device;
pub mod dist;
pub mod divergence;
pub mod eval;
pub mod export;
pub mod fault;
pub mod files;
pub mod grid;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod placement;
pub mod plot;
pub mod probe;
pub mod recompute;
pub mod rng;
pub mod run_dir;
pub mod runs;
pub mod signals;
pub mod stress;
pub mod sweep;
pub mod tensorboard;
pub mod train;

/// Exit status of a run stopped by SIGINT or SIGTERM after writing a checkpoint (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// How a command that did not fail ended. Bad input and runtime failures are errors instead
/// (exit status 2 and 1, see `main`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exit status 0; a diverged run is a result and ends here too.
    Success,
    /// Some runs of a grid (sweep, stress) failed; the others' results were written. Exit status 1.
    RunsFailed,
    /// Stopped by SIGINT or SIGTERM after writing a checkpoint. Exit status 130.
    Interrupted,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::RunsFailed => 1,
            ExitStatus::Interrupted => EXIT_INTERRUPTED,
        }
    }
}

/// A problem with what the user gave keel (flags, files, folders). Exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// True when `err` comes from bad user input (exit status 2) rather than a runtime failure. A
/// full disk counts as input: the output folder the user chose has no room.
pub fn is_input_error(err: &anyhow::Error) -> bool {
    is_disk_full(err)
        || err.chain().any(|c| {
            c.is::<InputError>()
                || c.is::<config::ConfigError>()
                || c.is::<placement::UnknownPlacement>()
                || c.is::<data::DataError>()
                || files::is_not_regular(c)
        })
}

/// True when some cause of `err` is "no space left on device".
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28))
            || c.to_string().contains("os error 28")
    })
}

/// keel's version and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KEEL_GIT_REV"), ")");
