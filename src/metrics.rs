//! A run directory's machine-readable training logs: append-only CSVs with stable headers (the
//! file names and the rest of the layout are [`crate::run_dir`]'s).
//!
//! Formats (documented in docs/outputs.md):
//! - `metrics.csv`: step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s (one row per step;
//!   grad_norm is the global norm before clipping)
//! - `eval.csv`: step,val_loss,val_ppl
//! - `grad_norms.csv`: step,layer,kind,grad_norm (long format; layer is the sub-layer index,
//!   0 = bottom, empty for the embedding, final norm and head rows)
//!
//! The same numbers go to TensorBoard event files beside them (unless `run.tensorboard = false`),
//! written and flushed with each CSV row, under the tags of [`tags`].

use crate::run_dir::RunDir;
use crate::InputError;
use std::fs::File;
use std::path::Path;

pub const METRICS_HEADER: [&str; 7] = ["step", "tokens", "lr", "loss", "grad_norm", "tokens_per_s", "elapsed_s"];
pub const EVAL_HEADER: [&str; 3] = ["step", "val_loss", "val_ppl"];
pub const GRAD_NORMS_HEADER: [&str; 4] = ["step", "layer", "kind", "grad_norm"];

use crate::files::write_atomic;
use crate::tensorboard::{self, Event, EventLog};

pub struct RunWriters {
    metrics: csv::Writer<File>,
    eval: csv::Writer<File>,
    grad_norms: csv::Writer<File>,
    events: Option<EventLog>,
}

/// The TensorBoard tags of a run's numbers (`torch.utils.tensorboard` style: the part before the
/// first `/` is the dashboard's section).
pub mod tags {
    pub const LOSS: &str = "train/loss";
    pub const LR: &str = "train/lr";
    pub const GRAD_NORM: &str = "train/grad_norm";
    pub const TOKENS_PER_S: &str = "train/tokens_per_s";
    pub const VAL_LOSS: &str = "val/loss";
    /// The prefix of the per-sub-layer gradient norms.
    pub const GRAD_NORMS: &str = "grad_norm";
    /// The histogram of the sub-layers' gradient norms over depth.
    pub const GRAD_NORM_BY_DEPTH: &str = "grad_norm_by_depth";

    /// `grad_norm/0007_attn` for sub-layer 7, `grad_norm/embedding` for the rows that are not a
    /// sub-layer. Zero-padded to 4 digits whatever the run's depth, so that the tags sort by depth
    /// and a sweep's runs of every depth up to 10,000 share the tag of each sub-layer (TensorBoard
    /// overlays runs by tag); deeper runs widen it to their own digits.
    pub fn grad_norm(layer: Option<usize>, kind: &str, depth: usize) -> String {
        match layer {
            Some(i) => {
                let width = depth.saturating_sub(1).to_string().len().max(4);
                format!("{GRAD_NORMS}/{i:0width$}_{kind}")
            }
            None => format!("{GRAD_NORMS}/{kind}"),
        }
    }
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

/// Which rows a run's CSVs hold up to a step: `metrics.csv` one per step from 1, `eval.csv` one
/// per `eval_every` steps (and possibly one at the checkpoint's own step, the final step of an
/// earlier `train.steps`), `grad_norms.csv` a block of `depth` sub-layer rows (plus embedding,
/// final norm, head) at step 1 and every `grad_norm_every` steps.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub depth: usize,
    pub eval_every: usize,
    pub grad_norm_every: usize,
}

impl Layout {
    pub fn of(resolved: &crate::config::Resolved) -> Self {
        let t = resolved.train();
        Layout { depth: resolved.model().depth, eval_every: t.eval_every, grad_norm_every: t.grad_norm_every }
    }
}

/// The three training logs of a run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Log {
    Metrics,
    Eval,
    GradNorms,
}

impl Log {
    const ALL: [Log; 3] = [Log::Metrics, Log::Eval, Log::GradNorms];

    fn header(self) -> &'static [&'static str] {
        match self {
            Log::Metrics => &METRICS_HEADER,
            Log::Eval => &EVAL_HEADER,
            Log::GradNorms => &GRAD_NORMS_HEADER,
        }
    }

    fn path(self, dir: &RunDir) -> std::path::PathBuf {
        match self {
            Log::Metrics => dir.metrics(),
            Log::Eval => dir.eval_csv(),
            Log::GradNorms => dir.grad_norms(),
        }
    }

    /// The steps whose rows must be there up to `max_step`, in order; `last` is the step of the
    /// file's last row at or below it (eval.csv may hold one at `max_step` itself, the final step
    /// of an earlier `train.steps`).
    fn required_steps(self, max_step: usize, layout: Layout, last: Option<usize>) -> Vec<usize> {
        match self {
            Log::Metrics => (1..=max_step).collect(),
            Log::Eval => {
                let every = layout.eval_every;
                let mut s: Vec<usize> =
                    if every == 0 { Vec::new() } else { (every..=max_step).step_by(every).collect() };
                if last == Some(max_step) && s.last() != Some(&max_step) {
                    s.push(max_step);
                }
                s
            }
            Log::GradNorms => {
                let every = layout.grad_norm_every;
                if every == 0 {
                    Vec::new()
                } else {
                    (1..=max_step).filter(|&s| s == 1 || s % every == 0).collect()
                }
            }
        }
    }
}

/// A CSV of a run that does not hold what its checkpoint needs: bad input (exit 2), naming the
/// file and line.
fn damaged(path: &Path, line: usize, why: String, step: usize) -> InputError {
    InputError(format!(
        "{} line {line}: {why}\n  a run's CSVs must hold every row up to its checkpoint (step {step}), and resume never cuts valid rows; nothing was changed.\n  Restore the file from a copy and resume again, or keep the run as it is and start a new one (`keel train --config {} --out NEW_DIR`)",
        path.display(),
        path.parent().map(|d| d.join(crate::run_dir::CONFIG).display().to_string()).unwrap_or_default()
    ))
}

/// A grad_norms.csv row's (layer, kind); `None` for the other logs.
type RowKey = Option<(Option<usize>, String)>;

/// One row's step and key, every field checked.
fn parse_row(line: &str, log: Log) -> Result<(usize, RowKey), String> {
    let header = log.header();
    let fields: Vec<&str> = line.trim_end_matches(['\n', '\r']).split(',').collect();
    let shown = || line.trim_end().chars().take(80).collect::<String>();
    if fields.len() != header.len() {
        return Err(format!(
            "`{}` has {} fields, rows of this file have {} ({})",
            shown(),
            fields.len(),
            header.len(),
            header.join(",")
        ));
    }
    let step = fields[0].parse::<usize>().map_err(|_| format!("`{}` does not start with a step number", shown()))?;
    let grad_norms = log == Log::GradNorms;
    for (i, f) in fields.iter().enumerate().skip(1) {
        let ok = match (grad_norms, i) {
            (true, 1) => f.is_empty() || f.parse::<usize>().is_ok(),
            (true, 2) => !f.is_empty(),
            _ => f.parse::<f64>().is_ok(),
        };
        if !ok {
            return Err(format!("`{}`: field {} (`{f}`) is not a valid {}", shown(), i + 1, header[i]));
        }
    }
    let key = grad_norms.then(|| (fields[1].parse::<usize>().ok(), fields[2].to_string()));
    Ok((step, key))
}

/// Checks that `log` in `dir` holds exactly the rows up to `max_step` that `layout` asks for,
/// each parseable, and returns the text to keep: the header and those rows. Rows after
/// `max_step` (written after the checkpoint) and a torn last line (one without its newline) are
/// dropped.
fn verified_prefix(dir: &RunDir, log: Log, max_step: usize, layout: Layout) -> Result<String, InputError> {
    let (path, header) = (log.path(dir), log.header().join(","));
    let mut kept = format!("{header}\n");
    if max_step == 0 {
        return Ok(kept);
    }
    let text = match crate::files::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(InputError(format!("cannot read {}: {e}", path.display()))),
    };
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop();
    }
    if lines.first().is_some_and(|l| l.trim_end() != header) {
        return Err(damaged(&path, 1, format!("the header is not `{header}`"), max_step));
    }
    // (line number, step, key, line) of each row up to max_step.
    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(1) {
        let (step, key) = parse_row(line, log).map_err(|why| damaged(&path, i + 1, why, max_step))?;
        if step > max_step {
            break;
        }
        rows.push((i + 1, step, key, *line));
    }
    let required = log.required_steps(max_step, layout, rows.last().map(|r| r.1));
    // A step's rows: one, or for grad_norms.csv a block, each like the first one's.
    let block = match log {
        Log::GradNorms => rows.iter().take_while(|r| r.1 == rows[0].1).count().max(1),
        Log::Metrics | Log::Eval => 1,
    };
    let signature: Vec<&RowKey> = rows.iter().take(block).map(|r| &r.2).collect();
    if log == Log::GradNorms && !rows.is_empty() {
        let layers: Vec<usize> = signature.iter().filter_map(|k| k.as_ref().and_then(|k| k.0)).collect();
        if layers != (0..layout.depth).collect::<Vec<_>>() {
            let why = format!("the block of step {} does not list sub-layers 0..{} once each", rows[0].1, layout.depth);
            return Err(damaged(&path, rows[0].0, why, max_step));
        }
    }
    for (k, want) in required.iter().enumerate() {
        for j in 0..block {
            let Some((line_no, step, key, _)) = rows.get(k * block + j) else {
                let after = rows.last().map(|r| format!(" after line {} (step {})", r.0, r.1)).unwrap_or_default();
                return Err(damaged(
                    &path,
                    rows.last().map(|r| r.0 + 1).unwrap_or(2),
                    format!("the file ends{after}, but the rows of step {want} are missing"),
                    max_step,
                ));
            };
            if step != want || Some(&key) != signature.get(j) {
                let what = if block > 1 { "grad-norm block" } else { "row" };
                let why = format!("holds a row of step {step} where the {what} of step {want} belongs");
                return Err(damaged(&path, *line_no, why, max_step));
            }
        }
    }
    if let Some((line_no, step, _, _)) = rows.get(required.len() * block) {
        return Err(damaged(&path, *line_no, format!("holds an unexpected row of step {step}"), max_step));
    }
    for (_, _, _, line) in &rows {
        kept.push_str(line);
    }
    Ok(kept)
}

/// Verifies, without changing anything, that the run's CSVs hold every row up to `step`; returns
/// what each keeps (in `Log::ALL` order).
pub fn verify_for_resume(dir: &RunDir, step: usize, layout: Layout) -> Result<[String; 3], InputError> {
    let [m, e, g] = Log::ALL;
    Ok([
        verified_prefix(dir, m, step, layout)?,
        verified_prefix(dir, e, step, layout)?,
        verified_prefix(dir, g, step, layout)?,
    ])
}

/// Replaces a log with its verified `kept` text and reopens it for appending.
fn reopen(path: &Path, kept: &str) -> std::io::Result<csv::Writer<File>> {
    write_atomic(path, kept.as_bytes())?;
    let file = std::fs::OpenOptions::new().append(true).open(path)?;
    Ok(csv::WriterBuilder::new().has_headers(false).from_writer(file))
}

impl RunWriters {
    /// Starts a run's CSVs, and its TensorBoard event file when `tensorboard` is set.
    pub fn create(dir: &RunDir, tensorboard: bool) -> std::io::Result<Self> {
        Ok(RunWriters {
            metrics: open(&dir.metrics(), &METRICS_HEADER)?,
            eval: open(&dir.eval_csv(), &EVAL_HEADER)?,
            grad_norms: open(&dir.grad_norms(), &GRAD_NORMS_HEADER)?,
            events: tensorboard.then(|| EventLog::create(dir.path())).transpose()?,
        })
    }

    /// Continues a run's CSVs after step `step`: all three must hold every row up to it (see
    /// [`verify_for_resume`]) and its event files must read back (see [`EventLog::verify`])
    /// before any is rewritten; rows and events written after it are dropped. The events go on in
    /// a new file (when `tensorboard` is set), so TensorBoard sees every step once.
    pub fn resume(dir: &RunDir, step: usize, layout: Layout, tensorboard: bool) -> anyhow::Result<Self> {
        let [m, e, g] = verify_for_resume(dir, step, layout)?;
        // Turned off, events are still cut back to the checkpoint (so that turning them on again
        // repeats no step), but a damaged file is only reported.
        let kept = match EventLog::verify(dir.path(), step) {
            Ok(kept) => kept,
            Err(e) if !tensorboard => {
                eprintln!(
                    "warning: {}\n  (run.tensorboard is false: the file is left as it is)",
                    e.0.lines().next().unwrap_or_default()
                );
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let (metrics, eval, grad_norms) =
            (reopen(&dir.metrics(), &m)?, reopen(&dir.eval_csv(), &e)?, reopen(&dir.grad_norms(), &g)?);
        let events = if tensorboard {
            Some(EventLog::resume(dir.path(), kept)?)
        } else {
            EventLog::cut(kept)?;
            None
        };
        Ok(RunWriters { metrics, eval, grad_norms, events })
    }

    /// Writes one summary event and flushes it, as each CSV row is.
    fn event(&mut self, step: usize, values: Vec<tensorboard::SummaryValue>) -> std::io::Result<()> {
        match self.events.as_mut() {
            Some(log) => {
                log.write(&Event::summary(step, values))?;
                log.flush()
            }
            None => Ok(()),
        }
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
        self.metrics.flush()?;
        use tensorboard::scalar;
        self.event(
            step,
            vec![
                scalar(tags::LOSS, loss),
                scalar(tags::LR, lr),
                scalar(tags::GRAD_NORM, grad_norm),
                scalar(tags::TOKENS_PER_S, tokens_per_s),
            ],
        )
    }

    pub fn eval(&mut self, step: usize, val_loss: f64) -> std::io::Result<()> {
        self.eval.write_record([step.to_string(), val_loss.to_string(), val_loss.exp().to_string()])?;
        self.eval.flush()?;
        self.event(step, vec![tensorboard::scalar(tags::VAL_LOSS, val_loss)])
    }

    pub fn grad_norms(&mut self, step: usize, rows: &[GradNormRow]) -> std::io::Result<()> {
        for r in rows {
            let layer = r.layer.map(|l| l.to_string()).unwrap_or_default();
            self.grad_norms.write_record([step.to_string(), layer, r.kind.to_string(), r.grad_norm.to_string()])?;
        }
        self.grad_norms.flush()?;
        if self.events.is_none() {
            return Ok(());
        }
        let sub_layers: Vec<f64> = rows.iter().filter(|r| r.layer.is_some()).map(|r| r.grad_norm).collect();
        let mut values: Vec<_> = rows
            .iter()
            .map(|r| tensorboard::scalar(tags::grad_norm(r.layer, r.kind, sub_layers.len()), r.grad_norm))
            .collect();
        values.extend(tensorboard::depth_histogram(tags::GRAD_NORM_BY_DEPTH, &sub_layers));
        self.event(step, values)
    }
}

/// (step, lr, loss) of a run's metrics.csv so far; a step with a non-finite gradient norm (where
/// training stops) counts as a non-finite loss. Empty when there is no file.
pub fn read_curve(dir: &RunDir) -> std::io::Result<Vec<(usize, f64, f64)>> {
    let path = dir.metrics();
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut rd = csv::Reader::from_reader(crate::files::open_regular(&path)?);
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
