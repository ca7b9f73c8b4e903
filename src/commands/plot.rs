//! `keel plot`: figures for the given folders and CSVs, written to `--out`.

use crate::cli::PlotArgs;
use crate::plot::{self, Options};
use crate::{ExitStatus, InputError};
use anyhow::Result;

pub fn run(args: &PlotArgs) -> Result<ExitStatus> {
    std::fs::create_dir_all(&args.out).map_err(|e| InputError(format!("cannot create {}: {e}", args.out.display())))?;
    let opts = Options { log_x: args.log_x, column: args.column.clone(), steps: args.steps.clone() };
    for f in &plot::figures(&args.paths, &opts)? {
        for written in plot::write(f, &args.out)? {
            println!("{}", written.display());
        }
    }
    Ok(ExitStatus::Success)
}
