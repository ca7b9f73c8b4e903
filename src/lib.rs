//! keel: an experiment runner for very deep Transformers, reproducing
//! "Post-LayerNorm Is Back: Stable, ExpressivE, and Deep" (Chen & Wei, arXiv 2601.19895).

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
