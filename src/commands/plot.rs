//! `keel plot`: figures for the given folders and CSVs, written to `--out`.

use crate::cli::PlotArgs;
use crate::plot::{self, Options};
use crate::ExitStatus;
use anyhow::Result;

pub fn run(args: &PlotArgs) -> Result<ExitStatus> {
    crate::signals::install_for(
        "plot",
        "nothing was written (the figures are written together, once all are drawn); run the same command again",
    );
    let opts = Options {
        log_x: args.log_x,
        column: args.column.clone(),
        against: args.against.clone(),
        steps: args.steps.clone(),
        smooth: args.smooth,
    };
    // Every input is read (and a damaged one refused), and every figure drawn, before the output
    // folder is made or anything written.
    let plot = plot::figures(&args.paths, &opts)?;
    crate::fault::pause_point("plot-before-write");
    for written in plot::write(&plot.figures, &args.out)? {
        println!("{}", written.display());
    }
    // Runs not finished (a sweep watched while it runs), steps asked for but missing.
    for note in &plot.notes {
        eprintln!("note: {note}");
    }
    Ok(ExitStatus::Success)
}
