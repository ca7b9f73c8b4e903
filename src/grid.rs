//! Running a grid of experiments: each is an ordinary run directory trained by a `keel train`
//! subprocess, so a grid survives interruption (finished runs, with `DONE`, are skipped; started
//! ones resume from their checkpoint) and a diverged run is just a result. `keel stress` uses it.

use crate::config::Resolved;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
    /// `keel train` failed or was interrupted; the message says how.
    Failed(String),
}

fn run_one(job: &Job, configs: &Path, threads: Option<usize>, device: Option<&str>) -> Result<Status> {
    if job.dir.join(crate::train::DONE).exists() {
        return Ok(Status::Skipped);
    }
    let exe = std::env::current_exe().context("locating the keel executable")?;
    let mut cmd = Command::new(exe);
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    if job.dir.join("config.toml").exists() {
        cmd.args(["train", "--quiet", "--resume"]).arg(&job.dir);
    } else {
        let file = configs.join(format!("{}.toml", job.name));
        crate::metrics::write_atomic(&file, job.config.to_toml(toml::Table::new()).as_bytes())?;
        cmd.args(["train", "--quiet", "--config"]).arg(&file).arg("--out").arg(&job.dir);
    }
    if let Some(d) = device {
        cmd.args(["--device", d]);
    }
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().context("starting keel train")?;
    Ok(match out.status.code() {
        Some(0) => Status::Finished,
        code => {
            let err = String::from_utf8_lossy(&out.stderr);
            Status::Failed(format!("exit {code:?}: {}", err.lines().last().unwrap_or("")))
        }
    })
}

/// Runs `jobs` with up to `parallel` at once; `report` sees each as it ends. With `devices`, one
/// run per device at a time (`parallel` is then the number of devices).
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
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let status =
                    run_one(job, configs, threads, device).unwrap_or_else(|e| Status::Failed(format!("{e:#}")));
                report(job, &status);
                results.lock().expect("results")[i] = Some(status);
            });
        }
    });
    Ok(results.into_inner().expect("results").into_iter().map(|s| s.expect("every job ran")).collect())
}
