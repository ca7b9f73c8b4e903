//! `keel runs`: one row per run directory found under some folders, with its status (done,
//! diverged, running, stopped, failed) and where it stands.
//!
//! Reading is cheap enough for a folder of many long runs: `config.toml`, `summary.json` and
//! `eval.csv` are small, and of `metrics.csv` only the last [`TAIL_BYTES`] are read (a torn last
//! line, from a run being written or killed, is ignored). Nothing is written or locked for longer
//! than the lock probe of [`RunDir::holding`].

use crate::metrics::{EVAL_HEADER, METRICS_HEADER};
use crate::run_dir::{Holder, RunDir, Summary};
use crate::InputError;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How much of the end of `metrics.csv` is read: about a hundred rows.
pub const TAIL_BYTES: u64 = 8 * 1024;
/// Rows of `metrics.csv` (at most) behind a running run's tokens/s.
const RECENT_ROWS: usize = 50;

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// `DONE`, not diverged.
    Done,
    /// `DONE`, and `summary.json` says it diverged (at this step).
    Diverged { at: Option<usize> },
    /// A live keel process holds the run's lock.
    Running(Holder),
    /// Not done, no process: `keel train --resume` continues from this checkpoint step.
    Stopped { checkpoint: usize },
    /// Not done, no process, no checkpoint: `keel train --resume` starts it over from step 0.
    Failed,
    /// The run's state cannot be told: its config or a finished run's summary is damaged.
    Unreadable,
}

impl Status {
    /// Where the run in `dir` stands, from what the caller has read: whether its config reads,
    /// and its summary when it exists and parses. The one place that tells a run's status:
    /// `keel runs` and `keel plot` ask it.
    pub fn from_parts(dir: &RunDir, config_reads: bool, summary: Option<&Summary>) -> Status {
        let done = dir.is_done();
        if let Some(holder) = dir.holding() {
            Status::Running(holder)
        } else if !config_reads || (done && summary.is_none() && dir.summary().exists()) {
            Status::Unreadable
        } else if done {
            match summary {
                Some(s) if s.diverged => Status::Diverged { at: s.diverged_at_step },
                _ => Status::Done,
            }
        } else {
            match crate::checkpoint::list(dir).first() {
                Some((step, _)) => Status::Stopped { checkpoint: *step },
                None => Status::Failed,
            }
        }
    }

    /// The run has ended for good: finished or diverged.
    pub fn is_finished(&self) -> bool {
        matches!(self, Status::Done | Status::Diverged { .. })
    }

    /// The status's one-word name, as `--csv` and `--json` write it.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Diverged { .. } => "diverged",
            Status::Running(_) => "running",
            Status::Stopped { .. } => "stopped",
            Status::Failed => "failed",
            Status::Unreadable => "unreadable",
        }
    }

    /// The order `--sort status` puts runs in: live first, finished last.
    fn rank(&self) -> usize {
        match self {
            Status::Running(_) => 0,
            Status::Stopped { .. } => 1,
            Status::Failed => 2,
            Status::Diverged { .. } => 3,
            Status::Done => 4,
            Status::Unreadable => 5,
        }
    }

    /// The order of the closing count line.
    const COUNT_ORDER: [&'static str; 6] = ["done", "running", "stopped", "diverged", "failed", "unreadable"];
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Diverged { at: Some(at) } => write!(f, "diverged (step {at})"),
            Status::Running(holder) => write!(f, "running ({holder})"),
            Status::Stopped { checkpoint } => write!(f, "stopped (ckpt {checkpoint})"),
            other => f.write_str(other.name()),
        }
    }
}

/// One run's row of the table. A value that cannot be had (no eval yet, a damaged file) is `None`;
/// a non-finite loss stays NaN or infinite.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// The run as shown: its path relative to the folder it was found under (or that folder).
    pub run: String,
    /// The run directory's path, as reachable from the working directory.
    pub path: PathBuf,
    pub status: Status,
    pub placement: Option<String>,
    pub depth: Option<usize>,
    pub d_model: Option<usize>,
    /// `train.lr`, the peak learning rate.
    pub lr: Option<f64>,
    pub steps_done: Option<usize>,
    pub steps_planned: Option<usize>,
    /// Training loss of the last row of `metrics.csv`.
    pub train_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub wall_time_s: Option<f64>,
    /// Why a diverged run was stopped (`summary.json`'s non_finite, unrecovered_spike or
    /// stagnation).
    pub divergence_reason: Option<String>,
    /// What could not be read, for the reader (the reason of `Unreadable` first).
    pub problems: Vec<String>,
}

/// A column of the table, by the name `--sort` takes (the machine output's field names are
/// accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Column {
    Run,
    Status,
    Placement,
    Depth,
    #[value(name = "d_model", alias = "width")]
    DModel,
    Lr,
    #[value(name = "steps", alias = "steps_done")]
    Steps,
    #[value(name = "steps_planned")]
    StepsPlanned,
    #[value(name = "train_loss")]
    TrainLoss,
    #[value(name = "best_val", alias = "best_val_loss")]
    BestVal,
    #[value(name = "final_val", alias = "final_val_loss")]
    FinalVal,
    #[value(name = "tok/s", alias = "tokens_per_s")]
    TokensPerS,
    #[value(name = "wall", alias = "wall_time_s")]
    Wall,
}

/// A sort key: text, or a number (finite ones first, then NaN and infinities, then missing).
#[derive(Debug, PartialEq, PartialOrd)]
enum Key<'a> {
    Text(&'a str),
    Number(u8, f64),
}

impl RunRow {
    fn key(&self, column: Column) -> Key<'_> {
        let num = |v: Option<f64>| match v {
            Some(x) if x.is_finite() => Key::Number(0, x),
            Some(_) => Key::Number(1, 0.0),
            None => Key::Number(2, 0.0),
        };
        let int = |v: Option<usize>| num(v.map(|x| x as f64));
        match column {
            Column::Run => Key::Text(&self.run),
            Column::Status => Key::Number(0, self.status.rank() as f64),
            Column::Placement => match &self.placement {
                Some(p) => Key::Text(p),
                None => Key::Text("\u{10FFFF}"),
            },
            Column::Depth => int(self.depth),
            Column::DModel => int(self.d_model),
            Column::Lr => num(self.lr),
            Column::Steps => int(self.steps_done),
            Column::StepsPlanned => int(self.steps_planned),
            Column::TrainLoss => num(self.train_loss),
            Column::BestVal => num(self.best_val_loss),
            Column::FinalVal => num(self.final_val_loss),
            Column::TokensPerS => num(self.tokens_per_s),
            Column::Wall => num(self.wall_time_s),
        }
    }
}

/// Sorts rows by `column`, ascending; ties (and the rows of `--sort run` with equal names) keep
/// their order.
pub fn sort(rows: &mut [RunRow], column: Column) {
    rows.sort_by(|a, b| match (a.key(column), b.key(column)) {
        (Key::Text(x), Key::Text(y)) if column == Column::Run => natural_cmp(x, y),
        (x, y) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    });
}

/// Compares names with their digit runs as numbers, so that `d64` comes before `d128`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                let db = b.find(|c: char| !c.is_ascii_digit()).unwrap_or(b.len());
                let (na, nb) = (a[..da].trim_start_matches('0'), b[..db].trim_start_matches('0'));
                let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb)).then_with(|| da.cmp(&db));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

/// The runs under `dirs`, in the order of `dirs` and then of their paths (digit runs compared as
/// numbers), each found once. A folder that holds `config.toml` is a run, and its own sub-folders
/// (checkpoints, eval results) are not searched; hidden folders are skipped. Folders that cannot
/// be read are skipped with a warning on standard error; a `dir` that does not exist, is not a
/// folder, or holds no run is bad input.
pub fn discover(dirs: &[PathBuf]) -> Result<Vec<(String, RunDir)>, InputError> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for dir in dirs {
        let meta = std::fs::metadata(dir).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound { "does not exist".to_string() } else { e.to_string() };
            InputError(format!(
                "{} {why}\n  pass run directories or folders that hold runs (a `keel train --out`, a `keel sweep --out`, runs/)",
                dir.display()
            ))
        })?;
        if !meta.is_dir() {
            return Err(InputError(format!(
                "{} is {}, not a folder\n  pass run directories or folders that hold runs (a `keel train --out`, a `keel sweep --out`, runs/)",
                dir.display(),
                crate::files::kind_of(&meta)
            )));
        }
        let mut runs = Vec::new();
        let mut unreadable = Vec::new();
        walk(dir, &mut runs, &mut unreadable, &mut HashSet::new());
        for (path, why) in &unreadable {
            eprintln!("warning: skipped {}: cannot read it ({why})", path.display());
        }
        if runs.is_empty() {
            let skipped = match unreadable.len() {
                0 => String::new(),
                n => format!(" ({n} folder{} could not be read, see above)", if n == 1 { "" } else { "s" }),
            };
            return Err(InputError(format!(
                "no keel run under {}{skipped}: no folder in it holds the config.toml that `keel train` writes first\n  pass run directories or folders that hold runs (a `keel train --out`, a `keel sweep --out`, runs/)",
                dir.display()
            )));
        }
        for path in runs {
            let shown = if dirs.len() > 1 {
                path.display().to_string()
            } else {
                match path.strip_prefix(dir) {
                    Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
                    _ => dir.display().to_string(),
                }
            };
            let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if seen.insert(canonical) {
                found.push((shown, RunDir::at(path)));
            }
        }
    }
    Ok(found)
}

/// Depth-first search for runs under `dir`; `visited` (canonical paths) ends symbolic-link loops.
fn walk(dir: &Path, runs: &mut Vec<PathBuf>, unreadable: &mut Vec<(PathBuf, String)>, visited: &mut HashSet<PathBuf>) {
    if let Ok(canonical) = std::fs::canonicalize(dir) {
        if !visited.insert(canonical) {
            return;
        }
    }
    if RunDir::at(dir).is_started() {
        runs.push(dir.to_path_buf());
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            unreadable.push((dir.to_path_buf(), e.to_string()));
            return;
        }
    };
    let mut subdirs: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            (!name.starts_with('.') && path.is_dir()).then_some((name, path))
        })
        .collect();
    subdirs.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    for (_, sub) in subdirs {
        walk(&sub, runs, unreadable, visited);
    }
}

/// The last rows of `metrics.csv`.
#[derive(Debug, Default)]
struct Tail {
    /// (step, tokens_per_s, elapsed_s, loss) of the complete rows read, oldest first.
    rows: Vec<(usize, f64, f64, f64)>,
}

/// Reads the end of `metrics.csv` only: the complete rows of its last [`TAIL_BYTES`]. `Ok(None)`
/// when the file does not exist; a header that is not keel's, or an unreadable file, is an
/// `Err` naming the problem.
fn metrics_tail(run: &RunDir) -> Result<Option<Tail>, String> {
    let path = run.metrics();
    let mut file = match crate::files::open_regular(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", crate::run_dir::METRICS)),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.take(TAIL_BYTES).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", crate::run_dir::METRICS))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    // A torn last line (written right now, or cut by a kill) has no newline yet.
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop();
    }
    if start > 0 {
        // The first line read (most likely) began before the tail.
        if !lines.is_empty() {
            lines.remove(0);
        }
    } else if let Some(header) = lines.first() {
        if header.trim_end() != METRICS_HEADER.join(",") {
            return Err(format!(
                "{} does not start with keel's header ({})",
                crate::run_dir::METRICS,
                METRICS_HEADER.join(",")
            ));
        }
        lines.remove(0);
    }
    let col = |name: &str| METRICS_HEADER.iter().position(|h| *h == name).expect("a metrics.csv column");
    let (step, loss, tps, elapsed) = (col("step"), col("loss"), col("tokens_per_s"), col("elapsed_s"));
    let rows = lines
        .iter()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim_end().split(',').collect();
            if fields.len() != METRICS_HEADER.len() {
                return None;
            }
            let f = |i: usize| fields[i].parse::<f64>().ok();
            Some((fields[step].parse::<usize>().ok()?, f(tps)?, f(elapsed)?, f(loss)?))
        })
        .collect();
    Ok(Some(Tail { rows }))
}

/// (best, last) validation loss of `eval.csv`; `Ok((None, None))` without one.
fn val_losses(run: &RunDir) -> Result<(Option<f64>, Option<f64>), String> {
    let bytes = match crate::files::read(&run.eval_csv()) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(format!("{}: {e}", crate::run_dir::EVAL)),
    };
    let text = String::from_utf8_lossy(&bytes);
    let val = EVAL_HEADER.iter().position(|h| *h == "val_loss").expect("an eval.csv column");
    let (mut best, mut last) = (None::<f64>, None);
    // Only complete lines; the header and a torn last line do not parse.
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let fields: Vec<&str> = line.trim_end().split(',').collect();
        let Some(v) = (fields.len() == EVAL_HEADER.len()).then(|| fields[val].parse::<f64>().ok()).flatten() else {
            continue;
        };
        last = Some(v);
        if v.is_finite() && best.is_none_or(|b| v < b) {
            best = Some(v);
        }
    }
    Ok((best, last))
}

/// `summary.json`: `Ok(None)` when there is none.
fn summary(run: &RunDir) -> Result<Option<Summary>, String> {
    let bytes = match crate::files::read(&run.summary()) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", crate::run_dir::SUMMARY)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{} does not parse: {e}", crate::run_dir::SUMMARY))
}

/// Reads one run's row. Never fails: what cannot be read is left out and named in `problems`
/// (and makes the run `Unreadable` when it hides the run's state).
pub fn row(run: String, dir: &RunDir) -> RunRow {
    let mut problems = Vec::new();
    let mut r = RunRow {
        run,
        path: dir.path().to_path_buf(),
        status: Status::Failed,
        placement: None,
        depth: None,
        d_model: None,
        lr: None,
        steps_done: None,
        steps_planned: None,
        train_loss: None,
        best_val_loss: None,
        final_val_loss: None,
        tokens_per_s: None,
        wall_time_s: None,
        divergence_reason: None,
        problems: Vec::new(),
    };
    // The loader's first line names the file and the problem; the rest advises on configs given
    // to `keel train`, not on a run's own.
    let config = dir.read_config().map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string());
    match &config {
        Ok(c) => {
            r.placement = Some(c.model.placement.to_string());
            r.depth = Some(c.model.depth);
            r.d_model = Some(c.model.d_model);
            r.lr = Some(c.train.lr);
            r.steps_planned = Some(c.train.steps);
        }
        Err(why) => problems.push(why.clone()),
    }
    let summary = summary(dir).unwrap_or_else(|why| {
        problems.push(why);
        None
    });
    let tail = metrics_tail(dir).unwrap_or_else(|why| {
        problems.push(why);
        None
    });
    match val_losses(dir) {
        Ok((best, last)) => (r.best_val_loss, r.final_val_loss) = (best, last),
        Err(why) => problems.push(why),
    }
    let done = dir.is_done();
    r.status = Status::from_parts(dir, config.is_ok(), summary.as_ref());
    if done && summary.is_none() && !dir.summary().exists() {
        problems.push(format!("finished, but has no {}", crate::run_dir::SUMMARY));
    }
    let rows = tail.map(|t| t.rows).unwrap_or_default();
    if let Some(&(step, _, elapsed, loss)) = rows.last() {
        r.steps_done = Some(step);
        r.train_loss = Some(loss);
        r.wall_time_s = Some(elapsed);
        // tokens/s as summary.json computes it: tokens over training time, so the harmonic mean
        // of the per-step rates (every step has the same tokens).
        let recent = &rows[rows.len().saturating_sub(RECENT_ROWS)..];
        let inverse: f64 = recent.iter().map(|r| 1.0 / r.1).sum();
        r.tokens_per_s = (inverse > 0.0 && inverse.is_finite()).then(|| recent.len() as f64 / inverse);
    }
    // A finished run's own record is the final word on its totals.
    if let (Some(s), Status::Done | Status::Diverged { .. }) = (&summary, &r.status) {
        r.steps_done = Some(s.steps_completed);
        r.tokens_per_s = Some(s.tokens_per_s);
        r.wall_time_s = Some(s.wall_time_s);
        r.final_val_loss = r.final_val_loss.or(s.final_val_loss);
        r.divergence_reason = s.divergence_reason.clone().filter(|_| s.diverged);
    }
    if let Some(s) = &summary {
        r.placement = r.placement.take().or_else(|| Some(s.placement.clone()));
        r.depth = r.depth.or(Some(s.depth));
        r.d_model = r.d_model.or(Some(s.d_model));
        r.steps_planned = r.steps_planned.or(Some(s.steps_planned));
    }
    r.problems = problems;
    r
}

/// The rows of `runs`, in their order.
pub fn rows(runs: Vec<(String, RunDir)>) -> Vec<RunRow> {
    runs.into_iter().map(|(name, dir)| row(name, &dir)).collect()
}

/// A row as `--csv` and `--json` write it: every value typed, missing ones empty or null.
#[derive(Debug, serde::Serialize)]
struct Record<'a> {
    run: &'a str,
    path: String,
    status: &'static str,
    pid: Option<u32>,
    diverged_at_step: Option<usize>,
    divergence_reason: Option<&'a str>,
    checkpoint_step: Option<usize>,
    placement: Option<&'a str>,
    depth: Option<usize>,
    d_model: Option<usize>,
    lr: Option<f64>,
    steps_done: Option<usize>,
    steps_planned: Option<usize>,
    train_loss: Option<f64>,
    best_val_loss: Option<f64>,
    final_val_loss: Option<f64>,
    tokens_per_s: Option<f64>,
    wall_time_s: Option<f64>,
    problems: Option<String>,
}

impl<'a> Record<'a> {
    fn of(r: &'a RunRow) -> Self {
        Record {
            run: &r.run,
            path: r.path.display().to_string(),
            status: r.status.name(),
            pid: match r.status {
                Status::Running(Holder(pid)) => pid,
                _ => None,
            },
            diverged_at_step: match r.status {
                Status::Diverged { at } => at,
                _ => None,
            },
            divergence_reason: r.divergence_reason.as_deref(),
            checkpoint_step: match r.status {
                Status::Stopped { checkpoint } => Some(checkpoint),
                _ => None,
            },
            placement: r.placement.as_deref(),
            depth: r.depth,
            d_model: r.d_model,
            lr: r.lr,
            steps_done: r.steps_done,
            steps_planned: r.steps_planned,
            train_loss: r.train_loss,
            best_val_loss: r.best_val_loss,
            final_val_loss: r.final_val_loss,
            tokens_per_s: r.tokens_per_s,
            wall_time_s: r.wall_time_s,
            problems: (!r.problems.is_empty()).then(|| r.problems.join("; ")),
        }
    }
}

/// `--json`: an array of objects, one per row (non-finite numbers are null).
pub fn to_json(rows: &[RunRow]) -> String {
    let records: Vec<Record> = rows.iter().map(Record::of).collect();
    serde_json::to_string_pretty(&records).expect("rows serialize")
}

/// `--csv`: a header line and one line per row (missing values empty).
pub fn to_csv(rows: &[RunRow]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(Record::of(r)).expect("rows serialize");
    }
    if rows.is_empty() {
        // serialize writes the header with the first row only.
        return String::new();
    }
    String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8")
}

/// A duration as people read it: 42.3s, 12m05s, 3h02m.
fn duration(s: f64) -> String {
    if !s.is_finite() {
        return "-".into();
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let secs = s.round() as u64;
    if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// The human table: a header, aligned rows (numbers right-aligned), and the count by status.
pub fn table(rows: &[RunRow]) -> String {
    let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    let n = |v: Option<usize>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    let header = [
        "run",
        "status",
        "placement",
        "depth",
        "d_model",
        "lr",
        "steps",
        "train_loss",
        "best_val",
        "final_val",
        "tok/s",
        "wall",
    ];
    // Which columns are text (left-aligned).
    let text = [true, true, true, false, false, false, false, false, false, false, false, false];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.run.clone(),
                r.status.to_string(),
                r.placement.clone().unwrap_or_else(|| "-".into()),
                n(r.depth),
                n(r.d_model),
                r.lr.map(|x| format!("{x:.1e}")).unwrap_or_else(|| "-".into()),
                format!("{}/{}", n(r.steps_done), n(r.steps_planned)),
                f(r.train_loss, 4),
                f(r.best_val_loss, 4),
                f(r.final_val_loss, 4),
                f(r.tokens_per_s, 0),
                r.wall_time_s.map(duration).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|c| c[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| if text[i] { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(&header.map(String::from)) + "\n";
    for c in &cells {
        out += &line(c);
        out.push('\n');
    }
    out += &count_line(rows);
    out.push('\n');
    out
}

/// "12 runs: 8 done, 2 running, 1 stopped, 1 diverged".
pub fn count_line(rows: &[RunRow]) -> String {
    let counts: Vec<String> = Status::COUNT_ORDER
        .iter()
        .filter_map(|name| {
            let k = rows.iter().filter(|r| r.status.name() == *name).count();
            (k > 0).then(|| format!("{k} {name}"))
        })
        .collect();
    let s = if rows.len() == 1 { "" } else { "s" };
    format!("{} run{s}: {}", rows.len(), counts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_with_their_numbers() {
        let mut v = vec!["d128-keel", "d64-pre_ln", "d1024-keel", "d64-keel", "a", "d064"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a", "d64-keel", "d64-pre_ln", "d064", "d128-keel", "d1024-keel"]);
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(duration(42.34), "42.3s");
        assert_eq!(duration(725.0), "12m05s");
        assert_eq!(duration(3.0 * 3600.0 + 125.0), "3h02m");
    }

    #[test]
    fn a_torn_line_and_a_cut_first_line_are_not_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::at(tmp.path());
        let mut text = METRICS_HEADER.join(",") + "\n";
        let rows = (TAIL_BYTES as usize / 40) * 2;
        for s in 1..=rows {
            text += &format!("{s},{},1e-3,{}.5,0.3,100.0,{s}.000\n", s * 64, s % 7);
        }
        text += "99999,64,1e-3,0.5,0.3,100.0,1"; // torn: no newline yet
        std::fs::write(run.metrics(), &text).unwrap();
        let tail = metrics_tail(&run).unwrap().unwrap();
        assert_eq!(tail.rows.last().unwrap().0, rows);
        let first = tail.rows[0].0;
        assert!(first > 1, "only the tail is read");
        assert_eq!(tail.rows.iter().map(|r| r.0).collect::<Vec<_>>(), (first..=rows).collect::<Vec<_>>());
        std::fs::write(run.metrics(), "step,loss\n1,2\n").unwrap();
        assert!(metrics_tail(&run).unwrap_err().contains("header"));
    }
}
