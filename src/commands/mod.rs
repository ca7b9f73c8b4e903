//! One module per subcommand.

pub mod bench;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod plot;
pub mod probe;
pub mod runs;
pub mod stress;
pub mod sweep;
pub mod train;

use crate::cli::ConfigArgs;
use crate::config::Config;
use anyhow::Result;

/// Loads the config named by the flags and applies `--device`.
pub fn load_config(args: &ConfigArgs) -> Result<Config> {
    let mut config = Config::load(args.config.as_deref(), &args.set)?;
    if let Some(d) = &args.device {
        config.run.device = d.clone();
    }
    Ok(config)
}
