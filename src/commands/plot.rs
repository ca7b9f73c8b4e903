//! `keel plot`: figures for the given folders and CSVs, written to `--out`.

use crate::cli::PlotArgs;
use crate::plot::{self, Options};
use crate::{ExitStatus, InputError};
use anyhow::Result;

pub fn run(args: &PlotArgs) -> Result<ExitStatus> {
    crate::signals::install_for(
        "plot",
        "each figure is written whole, so those already listed are complete and the rest are absent; run the same command again for all of them",
    );
    let opts = Options {
        log_x: args.log_x,
        column: args.column.clone(),
        against: args.against.clone(),
        steps: args.steps.clone(),
    };
    // Every input is read (and a damaged one refused) before the output folder is made.
    let figures = plot::figures(&args.paths, &opts)?;
    std::fs::create_dir_all(&args.out).map_err(|e| InputError(format!("cannot create {}: {e}", args.out.display())))?;
    for f in &figures {
        for written in plot::write(f, &args.out)? {
            println!("{}", written.display());
        }
        crate::signals::pause_point("plot-between-figures");
    }
    Ok(ExitStatus::Success)
}
