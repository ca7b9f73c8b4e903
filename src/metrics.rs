//! A run directory's machine-readable training logs: append-only CSVs with stable headers (the
//! file names and the rest of the layout are [`crate::run_dir`]'s).
//!
//! Formats (documented in README.md):
//! - `metrics.csv`: step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s (one row per step;
//!   grad_norm is the global norm before clipping)
//! - `eval.csv`: step,val_loss,val_ppl
//! - `grad_norms.csv`: step,layer,kind,grad_norm (long format; layer is the sub-layer index,
//!   0 = bottom, empty for the embedding, final norm and head rows)

use crate::run_dir::RunDir;
use std::fs::File;
use std::path::Path;

pub const METRICS_HEADER: [&str; 7] = ["step", "tokens", "lr", "loss", "grad_norm", "tokens_per_s", "elapsed_s"];
pub const EVAL_HEADER: [&str; 3] = ["step", "val_loss", "val_ppl"];
pub const GRAD_NORMS_HEADER: [&str; 4] = ["step", "layer", "kind", "grad_norm"];

use crate::files::write_atomic;

pub struct RunWriters {
    metrics: csv::Writer<File>,
    eval: csv::Writer<File>,
    grad_norms: csv::Writer<File>,
}

fn open(path: &Path, header: &[&str]) -> std::io::Result<csv::Writer<File>> {
    let mut w = csv::Writer::from_writer(File::create(path)?);
    w.write_record(header)?;
    w.flush()?;
    Ok(w)
}

/// A row of `grad_norms.csv`.
pub struct GradNormRow {
    pub layer: Option<usize>,
    pub kind: &'static str,
    pub grad_norm: f64,
}

/// Cuts a CSV back to its header and the rows of steps <= `max_step`, dropping a torn last line
/// (one without its newline), then reopens it for appending.
fn reopen(path: &Path, header: &[&str], max_step: usize) -> std::io::Result<csv::Writer<File>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut kept = format!("{}\n", header.join(","));
    for line in text.split_inclusive('\n').skip(1) {
        let step = line.split(',').next().and_then(|s| s.parse::<usize>().ok());
        match step {
            Some(s) if s <= max_step && line.ends_with('\n') => kept.push_str(line),
            _ => break,
        }
    }
    write_atomic(path, kept.as_bytes())?;
    let file = std::fs::OpenOptions::new().append(true).open(path)?;
    Ok(csv::WriterBuilder::new().has_headers(false).from_writer(file))
}

impl RunWriters {
    pub fn create(dir: &RunDir) -> std::io::Result<Self> {
        Ok(RunWriters {
            metrics: open(&dir.metrics(), &METRICS_HEADER)?,
            eval: open(&dir.eval_csv(), &EVAL_HEADER)?,
            grad_norms: open(&dir.grad_norms(), &GRAD_NORMS_HEADER)?,
        })
    }

    /// Continues a run's CSVs after step `step` (rows written after it are dropped).
    pub fn resume(dir: &RunDir, step: usize) -> std::io::Result<Self> {
        Ok(RunWriters {
            metrics: reopen(&dir.metrics(), &METRICS_HEADER, step)?,
            eval: reopen(&dir.eval_csv(), &EVAL_HEADER, step)?,
            grad_norms: reopen(&dir.grad_norms(), &GRAD_NORMS_HEADER, step)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn metrics(
        &mut self,
        step: usize,
        tokens: usize,
        lr: f64,
        loss: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        elapsed_s: f64,
    ) -> std::io::Result<()> {
        self.metrics.write_record([
            step.to_string(),
            tokens.to_string(),
            format!("{lr:e}"),
            loss.to_string(),
            grad_norm.to_string(),
            format!("{tokens_per_s:.1}"),
            format!("{elapsed_s:.3}"),
        ])?;
        self.metrics.flush()
    }

    pub fn eval(&mut self, step: usize, val_loss: f64) -> std::io::Result<()> {
        self.eval.write_record([step.to_string(), val_loss.to_string(), val_loss.exp().to_string()])?;
        self.eval.flush()
    }

    pub fn grad_norms(&mut self, step: usize, rows: &[GradNormRow]) -> std::io::Result<()> {
        for r in rows {
            let layer = r.layer.map(|l| l.to_string()).unwrap_or_default();
            self.grad_norms.write_record([step.to_string(), layer, r.kind.to_string(), r.grad_norm.to_string()])?;
        }
        self.grad_norms.flush()
    }
}

/// (step, lr, loss) of a run's metrics.csv so far; a step with a non-finite gradient norm (where
/// training stops) counts as a non-finite loss. Empty when there is no file.
pub fn read_curve(dir: &RunDir) -> std::io::Result<Vec<(usize, f64, f64)>> {
    let path = dir.metrics();
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut rd = csv::Reader::from_path(&path).map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    for rec in rd.records() {
        let rec = rec.map_err(std::io::Error::other)?;
        let num = |i: usize| rec.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
        let loss = if num(4).is_finite() { num(3) } else { f64::NAN };
        out.push((num(0) as usize, num(2), loss));
    }
    Ok(out)
}

/// This process's peak resident set size in MB (VmHWM), where /proc is available.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
