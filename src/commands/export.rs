//! `keel export --run RUN --hf OUT`. STUB: being written.

use crate::cli::ExportArgs;
use anyhow::Result;

pub fn run(args: &ExportArgs) -> Result<()> {
    anyhow::bail!("export of {} not implemented yet", args.run.display())
}
