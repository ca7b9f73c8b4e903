//! Grids of experiments: building them (depth x placement, or any axes of config keys) and running
//! them. Each point is an ordinary run directory trained by a `keel train` subprocess, so a grid
//! survives interruption (finished runs, with `DONE`, are skipped; started ones resume from their
//! checkpoint) and a diverged run is just a result. `keel sweep`, `keel stress` and `keel probe`
//! build their grids here; sweep and stress run them here.

use crate::config::{Config, Placement, Resolved};
use crate::run_dir::RunDir;
use crate::InputError;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `base` at every (depth, placement), depth-major: `(depth, placement, config)`.
pub fn depth_by_placement(
    base: &Config,
    depths: &[usize],
    placements: &[Placement],
) -> Vec<(usize, Placement, Config)> {
    let mut out = Vec::with_capacity(depths.len() * placements.len());
    for &depth in depths {
        for &placement in placements {
            let mut c = base.clone();
            c.model.depth = depth;
            c.model.placement = placement;
            out.push((depth, placement, c));
        }
    }
    out
}

/// The deepest `--depths` accepts, in sub-layers (2^20: a 28-billion-parameter model at
/// d_model 64, far past any machine keel runs on; the paper's deepest has 1,024).
pub const MAX_DEPTH: usize = 1 << 20;

/// `A..B` doubles from A to B (64..1024: 64, 128, 256, 512, 1024); a comma list is taken as given.
pub fn parse_depths(spec: &str) -> Result<Vec<usize>, InputError> {
    let bad = |why: &str| InputError(format!("--depths `{spec}`: {why}; write e.g. 64..1024 (doubling) or 64,128,512"));
    let num = |x: &str| {
        let x = x.trim();
        x.parse::<usize>().map_err(|_| match !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit()) {
            true => bad(&format!("{x} is deeper than keel's limit of {MAX_DEPTH} sub-layers")),
            false => bad("not a number"),
        })
    };
    let depths: Vec<usize> = if let Some((a, b)) = spec.split_once("..") {
        let (a, b) = (num(a)?, num(b)?);
        if a == 0 || a > b {
            return Err(bad("the range must go from a positive depth up to a larger one"));
        }
        if b > MAX_DEPTH {
            return Err(bad(&format!("{b} is deeper than keel's limit of {MAX_DEPTH} sub-layers")));
        }
        // Checked: doubling past usize::MAX ends the range (at most 64 depths).
        std::iter::successors(Some(a), |&d| d.checked_mul(2)).take_while(|&d| d <= b).collect()
    } else {
        spec.split(',').map(num).collect::<Result<_, _>>()?
    };
    if let Some(d) = depths.iter().find(|&&d| d > MAX_DEPTH) {
        return Err(bad(&format!("{d} is deeper than keel's limit of {MAX_DEPTH} sub-layers")));
    }
    if let Some(d) = depths.iter().find(|&&d| d < 2 || d % 2 == 1) {
        return Err(bad(&format!("{d} is not an even number of sub-layers (>= 2)")));
    }
    Ok(depths)
}

/// One axis of a grid: a config key and its values (as `--set` text).
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

/// Every combination of the axes' values (the first axis outermost), as `--set` overrides plus a
/// run name made of the values (`d8-keel-lr0.001`).
pub fn expand(axes: &[Axis]) -> Vec<(Vec<String>, String)> {
    let mut out = vec![(Vec::new(), String::new())];
    for axis in axes {
        let short = axis.key.rsplit('.').next().unwrap_or(&axis.key).to_string();
        let label = match short.as_str() {
            "depth" => "d".to_string(),
            "placement" => String::new(),
            "lr" => "lr".into(),
            "seed" => "s".into(),
            other => other.to_string(),
        };
        out = out
            .into_iter()
            .flat_map(|(sets, name)| {
                let label = label.clone();
                axis.values.iter().map(move |v| {
                    let mut sets = sets.clone();
                    sets.push(format!("{}={v}", axis.key));
                    let part: String = format!("{label}{v}")
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' })
                        .collect();
                    let name = if name.is_empty() { part } else { format!("{name}-{part}") };
                    (sets, name)
                })
            })
            .collect();
    }
    out
}

/// One run of a grid: its name, folder and resolved config.
pub struct Job {
    pub name: String,
    pub dir: PathBuf,
    pub config: Resolved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Already finished before this invocation.
    Skipped,
    Finished,
    /// Stopped by a signal to the grid, with a checkpoint (or before its first step): the grid's
    /// next start resumes it.
    Stopped,
    /// Not started: the grid was stopping.
    NotStarted,
    /// `keel train` failed or was interrupted; the message says how.
    Failed(String),
}

/// What a stopped grid says on its way out: how far it got and the command that continues it,
/// which is the one it was started with (finished runs are skipped, stopped ones resume).
pub fn stopped_message(statuses: &[Status]) -> String {
    let count = |f: fn(&Status) -> bool| statuses.iter().filter(|s| f(s)).count();
    let failed = match count(|s| matches!(s, Status::Failed(_))) {
        0 => String::new(),
        n => format!(", {n} failed"),
    };
    let command: Vec<String> = std::env::args_os().map(|a| shell_word(&a.to_string_lossy())).collect();
    format!(
        "stopped by a signal: {} run(s) finished, {} stopped with a checkpoint, {} not started{failed}\n  continue with: {}\n  (finished runs are skipped, stopped ones resume from their checkpoints)",
        count(|s| matches!(s, Status::Skipped | Status::Finished)),
        count(|s| *s == Status::Stopped),
        count(|s| *s == Status::NotStarted),
        command.join(" ")
    )
}

/// `w` as one word of a POSIX shell command line.
fn shell_word(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

fn run_one(job: &Job, configs: &Path, threads: Option<usize>, device: Option<&str>) -> Result<Status> {
    let run = RunDir::at(&job.dir);
    if run.is_done() {
        return Ok(Status::Skipped);
    }
    let mut cmd = crate::child::keel().context("locating the keel executable")?;
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    if run.is_started() {
        cmd.args(["train", "--quiet", "--resume"]).arg(&job.dir);
    } else {
        let file = configs.join(format!("{}.toml", job.name));
        crate::files::write_atomic(&file, job.config.to_toml(toml::Table::new()).as_bytes())?;
        cmd.args(["train", "--quiet", "--config"]).arg(&file).arg("--out").arg(&job.dir);
    }
    if let Some(d) = device {
        cmd.args(["--device", d]);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let Some(out) = crate::child::run(&mut cmd).context("starting keel train")? else {
        return Ok(Status::NotStarted);
    };
    Ok(match out.status.code() {
        Some(0) => Status::Finished,
        // Stopped with a checkpoint, or ended by the stop's SIGTERM before it could take it.
        Some(crate::EXIT_INTERRUPTED) | None if crate::child::stopping() => Status::Stopped,
        Some(code) => {
            let err = String::from_utf8_lossy(&out.stderr);
            Status::Failed(format!("exit {code}: {}", err.lines().last().unwrap_or("")))
        }
        None => Status::Failed(format!(
            "{}; `keel sweep` with the same flags resumes it from its last checkpoint",
            killed_by(&out.status)
        )),
    })
}

/// "killed by signal 9 (SIGKILL)" for a child that a signal ended.
fn killed_by(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                6 => " (SIGABRT)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            return format!("killed by signal {sig}{name}");
        }
    }
    format!("ended without an exit code ({status})")
}

/// Runs `jobs` with up to `parallel` at once; `report` sees each as it ends. With `devices`, one
/// run per device at a time (`parallel` is then the number of devices). Once a signal stops the
/// grid (`signals::install_grid`), no job starts and the running ones are waited for: the jobs
/// left are `NotStarted`.
pub fn run(
    jobs: &[Job],
    parallel: usize,
    devices: &[String],
    out: &Path,
    report: &(dyn Fn(&Job, &Status) + Sync),
) -> Result<Vec<Status>> {
    let parallel = if devices.is_empty() { parallel } else { devices.len() };
    let configs = out.join(".configs");
    std::fs::create_dir_all(&configs).with_context(|| format!("creating {}", configs.display()))?;
    // Share the cores between the runs unless the user chose a thread count.
    let parallel = parallel.max(1).min(jobs.len().max(1));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = std::env::var_os("RAYON_NUM_THREADS").is_none().then(|| (cores / parallel).max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Status>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|s| {
        for worker in 0..parallel {
            let device = devices.get(worker).map(String::as_str);
            let (next, results, configs) = (&next, &results, &configs);
            s.spawn(move || loop {
                if crate::child::stopping() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let status =
                    run_one(job, configs, threads, device).unwrap_or_else(|e| Status::Failed(format!("{e:#}")));
                if status != Status::NotStarted {
                    report(job, &status);
                }
                results.lock().expect("results")[i] = Some(status);
            });
        }
    });
    Ok(results.into_inner().expect("results").into_iter().map(|s| s.unwrap_or(Status::NotStarted)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_ranges() {
        assert_eq!(parse_depths("64..1024").unwrap(), [64, 128, 256, 512, 1024]);
        assert_eq!(parse_depths("64..1000").unwrap(), [64, 128, 256, 512]);
        assert_eq!(parse_depths("8, 12,32").unwrap(), [8, 12, 32]);
        for bad in ["1024..64", "0..8", "a..8", "7", "64..", "8,x", ""] {
            assert!(parse_depths(bad).is_err(), "{bad}");
        }
        assert!(parse_depths("1024..64").unwrap_err().0.contains("64..1024"));
        // Absurd ends are refused at once (the doubling is checked as well).
        for huge in ["64..10000000000000000000", "2..18446744073709551615", "64,2097152", "2..99999999999999999999999"]
        {
            assert!(parse_depths(huge).unwrap_err().0.contains("limit of 1048576"), "{huge}");
        }
        assert_eq!(parse_depths("2..1048576").unwrap().len(), 20);
    }

    #[test]
    fn grid_expansion_and_names() {
        let axes = vec![
            Axis { key: "model.depth".into(), values: vec!["8".into(), "16".into()] },
            Axis { key: "model.placement".into(), values: vec!["keel".into(), "pre_ln".into()] },
            Axis { key: "train.lr".into(), values: vec!["0.001".into()] },
            Axis { key: "model.norm".into(), values: vec!["rms_norm".into()] },
        ];
        let runs = expand(&axes);
        assert_eq!(runs.len(), 4);
        assert_eq!(runs[0].1, "d8-keel-lr0.001-normrms_norm");
        assert_eq!(runs[3].1, "d16-pre_ln-lr0.001-normrms_norm");
        assert_eq!(runs[1].0, ["model.depth=8", "model.placement=pre_ln", "train.lr=0.001", "model.norm=rms_norm"]);
    }

    #[test]
    fn a_stopped_grid_names_its_command_as_a_shell_reads_it() {
        assert_eq!(shell_word("--depths"), "--depths");
        assert_eq!(shell_word("train.lr=1e-3"), "train.lr=1e-3");
        assert_eq!(shell_word("runs/my sweep"), "'runs/my sweep'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn depth_by_placement_is_depth_major() {
        let grid = depth_by_placement(&Config::default(), &[8, 16], Placement::ALL);
        assert_eq!(grid.len(), 2 * Placement::ALL.len());
        for (i, (depth, placement, c)) in grid.iter().enumerate() {
            assert_eq!(*depth, [8, 16][i / Placement::ALL.len()]);
            assert_eq!(*placement, Placement::ALL[i % Placement::ALL.len()]);
            assert_eq!((c.model.depth, c.model.placement), (*depth, *placement));
        }
    }
}
