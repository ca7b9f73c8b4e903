//! `keel probe`: gradient propagation at initialization for placements x depths, as a table and a
//! per-sub-layer CSV.

use crate::cli::ProbeArgs;
use crate::config::Placement;
use crate::data::Corpus;
use crate::probe::{self, ProbeRow};
use crate::{ExitStatus, InputError};
use anyhow::Result;
use std::io::Write;
use std::path::Path;

pub fn run(args: &ProbeArgs) -> Result<ExitStatus> {
    if args.out.exists() {
        return Err(InputError(format!(
            "{} exists; keel does not overwrite results: choose another --out",
            args.out.display()
        ))
        .into());
    }
    if let Some(dir) = &args.run {
        return trained(dir, args.step, &args.out);
    }
    let base = super::load_config(&args.config)?;
    let placements = args.placements.iter().map(|p| Placement::parse(p)).collect::<Result<Vec<_>, _>>()?;
    if let Some(d) = args.depths.iter().find(|&&d| d < 2 || d % 2 == 1) {
        return Err(InputError(format!("--depths: {d} is not an even number of sub-layers of at least 2")).into());
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
    write_csv(&rows, &args.out)
}

fn write_csv(rows: &[ProbeRow], out: &Path) -> Result<ExitStatus> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| InputError(format!("cannot create {}: {e}", parent.display())))?;
    }
    let mut csv = format!("{}\n", probe::CSV_HEADER);
    for r in rows {
        csv.push_str(&probe::csv_row(r));
        csv.push('\n');
    }
    let mut f = std::fs::File::create(out).map_err(|e| InputError(format!("cannot write {}: {e}", out.display())))?;
    f.write_all(csv.as_bytes())?;
    println!("per-sub-layer rows in {}", out.display());
    Ok(ExitStatus::Success)
}

/// `keel probe --run DIR [--step N]`: the probe of a trained run's weights (its final ones, a
/// checkpoint's, or with step 0 its initialization), on its own data.
fn trained(dir: &Path, step: Option<usize>, out: &Path) -> Result<ExitStatus> {
    let device = candle_core::Device::Cpu;
    let (resolved, model, what, corpus) = match step {
        None => {
            let run = crate::run_dir::load_run(dir, &device)?;
            let corpus = Corpus::load(&run.resolved.config.data, run.resolved.train().seq_len)?;
            (run.resolved, run.model, "final weights".to_string(), corpus)
        }
        Some(n) => {
            let rd = crate::run_dir::RunDir::at(dir);
            if !rd.config().exists() {
                return Err(
                    InputError(format!("{} has no config.toml: not a keel run directory", dir.display())).into()
                );
            }
            let config = rd.read_config()?;
            let corpus = Corpus::load(&config.data, config.train.seq_len)?;
            let resolved = config.resolve(corpus.vocab_size)?;
            let model = crate::model::Model::new(&resolved, &device)?;
            if n > 0 {
                let steps: Vec<(usize, std::path::PathBuf)> = crate::checkpoint::list(&rd);
                let Some((_, path)) = steps.iter().find(|(s, _)| *s == n) else {
                    let have: Vec<String> = steps.iter().map(|(s, _)| s.to_string()).collect();
                    return Err(InputError(format!(
                        "{} has no checkpoint of step {n} (it has: {})\n  choose one of those, 0 for the initialization, or leave --step out for the final weights",
                        dir.display(),
                        if have.is_empty() { "none".to_string() } else { have.join(", ") }
                    ))
                    .into());
                };
                let loaded = crate::checkpoint::load(path, &[&resolved.fingerprint(), &resolved.legacy_fingerprint()])
                    .map_err(|e| InputError(format!("checkpoint {}: {e:?}", path.display())))?;
                if let Err(why) = model.load_weights(&loaded.model)? {
                    return Err(InputError(format!("checkpoint {}: {why}", path.display())).into());
                }
            }
            (resolved, model, if n == 0 { "initialization".to_string() } else { format!("step {n}") }, corpus)
        }
    };
    let rows = probe::probe_model(&model, &resolved, &corpus, &device)?;
    let depth = rows.len();
    let at = |l: usize| &rows[l.min(depth - 1)];
    let show = |v: Option<f64>| v.map(|p| format!("{p:.3e}")).unwrap_or_else(|| "-".into());
    println!(
        "{} ({}, {} sub-layers, {what}): x2/top {:.3e}; residual-path prediction {} at init's premise, {} from the measured branch ratios, {} from the measured sums",
        dir.display(),
        rows[0].placement,
        depth,
        at(2).input_grad_ratio,
        show(at(2).predicted_ratio),
        show(at(2).predicted_from_branches),
        show(at(2).predicted_from_sums)
    );
    write_csv(&rows, out)
}
