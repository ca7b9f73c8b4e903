//! A run directory's machine-readable outputs: append-only CSVs with stable headers, and
//! `summary.json` / `config.toml` written atomically (temporary name, flush, rename).
//!
//! Formats (documented in README.md):
//! - `metrics.csv`: step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s (one row per step;
//!   grad_norm is the global norm before clipping)
//! - `eval.csv`: step,val_loss,val_ppl
//! - `grad_norms.csv`: step,layer,kind,grad_norm (long format; layer is the sub-layer index,
//!   0 = bottom, empty for the embedding, final norm and head rows)

use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const METRICS_HEADER: [&str; 7] = ["step", "tokens", "lr", "loss", "grad_norm", "tokens_per_s", "elapsed_s"];
pub const EVAL_HEADER: [&str; 3] = ["step", "val_loss", "val_ppl"];
pub const GRAD_NORMS_HEADER: [&str; 4] = ["step", "layer", "kind", "grad_norm"];

/// Writes `contents` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file under the final name.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    // A temporary name per process and call, so concurrent writers of one file never collide.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = PathBuf::from(path);
    let name =
        format!(".{}.{}.{call}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("out"), std::process::id());
    tmp.set_file_name(name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

pub struct RunWriters {
    metrics: csv::Writer<File>,
    eval: csv::Writer<File>,
    grad_norms: csv::Writer<File>,
}

fn open(dir: &Path, name: &str, header: &[&str]) -> std::io::Result<csv::Writer<File>> {
    let mut w = csv::Writer::from_writer(File::create(dir.join(name))?);
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
fn reopen(dir: &Path, name: &str, header: &[&str], max_step: usize) -> std::io::Result<csv::Writer<File>> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
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
    write_atomic(&path, kept.as_bytes())?;
    let file = std::fs::OpenOptions::new().append(true).open(&path)?;
    Ok(csv::WriterBuilder::new().has_headers(false).from_writer(file))
}

impl RunWriters {
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        Ok(RunWriters {
            metrics: open(dir, "metrics.csv", &METRICS_HEADER)?,
            eval: open(dir, "eval.csv", &EVAL_HEADER)?,
            grad_norms: open(dir, "grad_norms.csv", &GRAD_NORMS_HEADER)?,
        })
    }

    /// Continues a run's CSVs after step `step` (rows written after it are dropped).
    pub fn resume(dir: &Path, step: usize) -> std::io::Result<Self> {
        Ok(RunWriters {
            metrics: reopen(dir, "metrics.csv", &METRICS_HEADER, step)?,
            eval: reopen(dir, "eval.csv", &EVAL_HEADER, step)?,
            grad_norms: reopen(dir, "grad_norms.csv", &GRAD_NORMS_HEADER, step)?,
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
pub fn read_curve(dir: &Path) -> std::io::Result<Vec<(usize, f64, f64)>> {
    let path = dir.join("metrics.csv");
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

/// `summary.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    pub run_name: String,
    pub placement: String,
    pub depth: usize,
    pub d_model: usize,
    pub n_params: usize,
    pub steps_planned: usize,
    pub steps_completed: usize,
    pub tokens: usize,
    pub initial_loss: Option<f64>,
    /// Mean training loss over the last `log_every` completed steps.
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub final_val_ppl: Option<f64>,
    pub diverged: bool,
    pub diverged_at_step: Option<usize>,
    /// non_finite, unrecovered_spike or stagnation.
    #[serde(default)]
    pub divergence_reason: Option<String>,
    pub tokens_per_s: f64,
    pub wall_time_s: f64,
    pub device: String,
    /// Peak resident memory of the process (Linux; absent elsewhere).
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
}

/// This process's peak resident set size in MB (VmHWM), where /proc is available.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
