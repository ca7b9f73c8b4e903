//! `keel runs` (`keel ls`): the table of every run under the given folders.

use crate::cli::RunsArgs;
use crate::ExitStatus;
use anyhow::Result;

pub fn run(args: &RunsArgs) -> Result<ExitStatus> {
    let mut rows = crate::runs::rows(crate::runs::discover(&args.dirs)?);
    if let Some(column) = args.sort {
        crate::runs::sort(&mut rows, column);
    }
    for r in &rows {
        for why in &r.problems {
            eprintln!("warning: {}: {why}", r.run);
        }
    }
    let out = if args.json {
        crate::runs::to_json(&rows) + "\n"
    } else if args.csv {
        crate::runs::to_csv(&rows)
    } else {
        crate::runs::table(&rows)
    };
    // A reader that stops early (`keel runs | head`) is not an error.
    use std::io::Write;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitStatus::Success),
    }
}
