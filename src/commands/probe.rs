//! `keel probe`: gradient propagation at initialization for placements x depths, as a table and a
//! per-sub-layer CSV.

use crate::cli::ProbeArgs;
use crate::config::Placement;
use crate::data::Corpus;
use crate::probe::{self, ProbeRow};
use crate::{ExitStatus, InputError};
use anyhow::Result;
use std::io::Write;

pub fn run(args: &ProbeArgs) -> Result<ExitStatus> {
    let base = super::load_config(&args.config)?;
    let placements = args.placements.iter().map(|p| Placement::parse(p)).collect::<Result<Vec<_>, _>>()?;
    if let Some(d) = args.depths.iter().find(|&&d| d < 2 || d % 2 == 1) {
        return Err(InputError(format!("--depths: {d} is not an even number of sub-layers of at least 2")).into());
    }
    if args.out.exists() {
        return Err(InputError(format!(
            "{} exists; keel does not overwrite results: choose another --out",
            args.out.display()
        ))
        .into());
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| InputError(format!("cannot create {}: {e}", parent.display())))?;
    }
    let device = crate::device::parse(&base.run.device)?;
    let corpus = Corpus::load(&base.data, base.train.seq_len)?;
    // Sub-layer 2 is the first above Keel's special first block; x_0 is the raw embedding.
    println!(
        "{:<12} {:>6} {:>12} {:>12} {:>14} {:>14}",
        "placement", "depth", "x0/top", "x2/top", "x0/top theory", "x2/top theory"
    );
    let print = |rows: &[ProbeRow]| {
        let depth = rows.len();
        let theory =
            |l: usize| rows[l.min(depth - 1)].predicted_ratio.map(|p| format!("{p:.3e}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:>6} {:>12.3e} {:>12.3e} {:>14} {:>14}",
            rows[0].placement,
            depth,
            rows[0].input_grad_ratio,
            rows[2.min(depth - 1)].input_grad_ratio,
            theory(0),
            theory(2)
        );
    };
    let rows = probe::probe_grid(&base, &args.depths, &placements, &corpus, &device, &mut |rows| print(rows))?;
    let mut csv = format!("{}\n", probe::CSV_HEADER);
    for r in &rows {
        csv.push_str(&probe::csv_row(r));
        csv.push('\n');
    }
    let mut f = std::fs::File::create(&args.out)
        .map_err(|e| InputError(format!("cannot write {}: {e}", args.out.display())))?;
    f.write_all(csv.as_bytes())?;
    println!("per-sub-layer rows in {}", args.out.display());
    Ok(ExitStatus::Success)
}
