//! `keel runs`: a folder holding one run of each status (done, diverged, running, stopped after a
//! `kill -9`, failed before its first checkpoint, unreadable), listed as a table, CSV and JSON,
//! sorted; bad folders refused with exit status 2.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tiny model that trains thousands of steps a second.
const TINY: [&str; 16] = [
    "--set",
    "model.depth=2",
    "--set",
    "model.d_model=16",
    "--set",
    "model.n_heads=2",
    "--set",
    "train.seq_len=16",
    "--set",
    "train.batch_size=2",
    "--set",
    "data.synthetic_bytes=20000",
    "--set",
    "train.eval_every=4",
    "--set",
    "train.warmup_steps=2",
];

fn keel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.env_remove("KEEL_FAULT_ABORT_IN_CHECKPOINT").env_remove("KEEL_FAULT_PAUSE_IN_CHECKPOINT");
    c
}

fn train(out: &Path, sets: &[&str]) -> Command {
    let mut c = keel();
    c.args(["train", "--quiet", "--out"]).arg(out).args(TINY);
    for s in sets {
        c.args(["--set", s]);
    }
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "exit {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

fn runs(args: &[&str]) -> Output {
    keel().arg("runs").args(args).output().unwrap()
}

/// `keel runs --json DIR` as objects by run name.
fn json(dir: &Path) -> Vec<Value> {
    let out = ok({
        let mut c = keel();
        c.args(["runs", "--json"]).arg(dir);
        c
    });
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn by_run<'a>(rows: &'a [Value], run: &str) -> &'a Value {
    rows.iter().find(|r| r["run"] == run).unwrap_or_else(|| panic!("no row {run} in {rows:?}"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Steps of the complete rows of metrics.csv (a torn last line left out).
fn metric_steps(dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap_or_default();
    text.split_inclusive('\n')
        .skip(1)
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect()
}

/// The newest `step_*` checkpoint folder's step.
fn newest_checkpoint(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step_")?.parse().ok())
        .max()
}

/// A child process killed (SIGKILL) when the test ends, failed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn one_run_of_each_status() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid");
    let live = grid.join("live");
    // Started first, so that the others are made while it trains.
    let mut child = Killed(
        train(&live, &["train.steps=10000000", "train.checkpoint_every=20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    ok(train(&grid.join("done"), &["train.steps=8"]));
    ok(train(&grid.join("diverged"), &["train.steps=20", "train.lr=1e30"]));
    // Killed (abort) while writing its first checkpoint: no checkpoint to resume from.
    let out = train(&grid.join("failed"), &["train.steps=8", "train.checkpoint_every=4"])
        .env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "4")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A torn last line, as a kill halfway through a write leaves it (its fields would parse).
    let mut m = std::fs::read_to_string(grid.join("failed/metrics.csv")).unwrap();
    m.push_str("5,160,1e-3,5.1,0.3,100.0,0.");
    std::fs::write(grid.join("failed/metrics.csv"), m).unwrap();
    std::fs::create_dir_all(grid.join("broken")).unwrap();
    std::fs::write(grid.join("broken/config.toml"), "[model\ndepth = ").unwrap();
    // Finished, but its summary.json is damaged: whether it diverged cannot be told.
    std::fs::create_dir_all(grid.join("hurt")).unwrap();
    for f in ["config.toml", "metrics.csv", "DONE"] {
        std::fs::copy(grid.join("done").join(f), grid.join("hurt").join(f)).unwrap();
    }
    std::fs::write(grid.join("hurt/summary.json"), "{\"run_name\": ").unwrap();
    // Neither a run's own sub-folders nor hidden folders are searched.
    for d in ["done/eval/x", ".hidden/y"] {
        std::fs::create_dir_all(grid.join(d)).unwrap();
        std::fs::copy(grid.join("done/config.toml"), grid.join(d).join("config.toml")).unwrap();
    }

    wait_until("the live run has a checkpoint", || newest_checkpoint(&live).is_some());
    let rows = json(&grid);
    let names: Vec<&str> = rows.iter().map(|r| r["run"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken", "diverged", "done", "failed", "hurt", "live"]);

    let live_row = by_run(&rows, "live");
    assert_eq!(live_row["status"], "running", "{live_row}");
    assert_eq!(live_row["pid"], child.0.id(), "{live_row}");
    assert!(live_row["steps_done"].as_u64().unwrap() >= 20, "{live_row}");
    assert_eq!(live_row["steps_planned"], 10000000);
    assert!(live_row["tokens_per_s"].as_f64().unwrap() > 0.0, "{live_row}");

    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let rows = json(&grid);
    let stopped = by_run(&rows, "live");
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert_eq!(stopped["pid"], Value::Null);
    assert_eq!(stopped["checkpoint_step"], newest_checkpoint(&live).unwrap(), "{stopped}");
    assert_eq!(stopped["steps_done"], *metric_steps(&live).last().unwrap(), "{stopped}");
    assert!(stopped["steps_done"].as_u64() >= stopped["checkpoint_step"].as_u64());
    assert!(stopped["wall_time_s"].as_f64().unwrap() > 0.0);

    let done = by_run(&rows, "done");
    assert_eq!(done["status"], "done");
    assert_eq!(
        (done["placement"].as_str(), done["depth"].as_u64(), done["d_model"].as_u64()),
        (Some("keel"), Some(2), Some(16))
    );
    assert_eq!((done["steps_done"].as_u64(), done["steps_planned"].as_u64()), (Some(8), Some(8)));
    assert_eq!(done["lr"], 3e-3);
    let summary: Value = serde_json::from_slice(&std::fs::read(grid.join("done/summary.json")).unwrap()).unwrap();
    assert_eq!(done["tokens_per_s"], summary["tokens_per_s"]);
    assert_eq!(done["wall_time_s"], summary["wall_time_s"]);
    assert_eq!(done["final_val_loss"], summary["final_val_loss"]);
    let best = done["best_val_loss"].as_f64().unwrap();
    assert!(best <= done["final_val_loss"].as_f64().unwrap());
    let last_loss: f64 = std::fs::read_to_string(grid.join("done/metrics.csv"))
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .split(',')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(done["train_loss"], last_loss);
    assert_eq!(done["problems"], Value::Null);

    let diverged = by_run(&rows, "diverged");
    let summary: Value = serde_json::from_slice(&std::fs::read(grid.join("diverged/summary.json")).unwrap()).unwrap();
    assert_eq!(diverged["status"], "diverged", "{diverged}");
    assert!(diverged["diverged_at_step"].as_u64().is_some());
    assert_eq!(diverged["diverged_at_step"], summary["diverged_at_step"]);
    assert_eq!(diverged["divergence_reason"], "non_finite");

    let failed = by_run(&rows, "failed");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["steps_done"], 4, "the torn line is not a row: {failed}");
    assert_eq!(failed["checkpoint_step"], Value::Null);

    let broken = by_run(&rows, "broken");
    assert_eq!(broken["status"], "unreadable");
    assert!(broken["problems"].as_str().unwrap().contains("config.toml is not valid TOML"), "{broken}");
    let hurt = by_run(&rows, "hurt");
    assert_eq!(hurt["status"], "unreadable");
    assert!(hurt["problems"].as_str().unwrap().contains("summary.json does not parse"), "{hurt}");
    assert_eq!(hurt["steps_done"], 8, "what can be read is still shown: {hurt}");

    // The human table: a header, one line per run, the count by status.
    let out = ok({
        let mut c = keel();
        c.arg("ls").arg(&grid);
        c
    });
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("run ") && lines[0].contains("status") && lines[0].ends_with("wall"), "{text}");
    assert_eq!(lines.len(), 8, "{text}");
    assert!(lines.iter().any(|l| l.starts_with("diverged ") && l.contains("diverged (step ")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("live ") && l.contains("stopped (ckpt ")), "{text}");
    assert_eq!(lines[7], "6 runs: 1 done, 1 stopped, 1 diverged, 1 failed, 2 unreadable");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: broken: ") && stderr.contains("config.toml is not valid TOML"), "{stderr}");

    // --sort: numbers ascending, missing values last; text columns by name.
    for (column, field) in [("train_loss", "train_loss"), ("steps", "steps_done"), ("best_val_loss", "best_val_loss")] {
        let out = ok({
            let mut c = keel();
            c.args(["runs", "--json", "--sort", column]).arg(&grid);
            c
        });
        let rows: Vec<Value> = serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone();
        let values: Vec<Option<f64>> = rows.iter().map(|r| r[field].as_f64()).collect();
        let known = values.iter().take_while(|v| v.is_some()).count();
        assert!(values[known..].iter().all(|v| v.is_none()), "{column}: missing values last: {values:?}");
        assert!(known >= 3, "{column}: {values:?}");
        assert!(values[..known].windows(2).all(|w| w[0] <= w[1]), "{column}: ascending: {values:?}");
    }
    let out = ok({
        let mut c = keel();
        c.args(["runs", "--csv", "--sort", "status"]).arg(&grid);
        c
    });
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "run,path,status,pid,diverged_at_step,divergence_reason,checkpoint_step,placement,depth,d_model,lr,steps_done,steps_planned,train_loss,best_val_loss,final_val_loss,tokens_per_s,wall_time_s,problems"
    );
    let statuses: Vec<&str> = lines[1..].iter().map(|l| l.split(',').nth(2).unwrap()).collect();
    assert_eq!(statuses, ["stopped", "failed", "diverged", "done", "unreadable", "unreadable"]);
    let out = runs(&["--sort", "colour", grid.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("final_val"), "names the columns");

    // A failed run has no checkpoint: `--resume` starts it over from step 0, in its own folder.
    let out = ok({
        let mut c = keel();
        c.args(["train", "--quiet", "--resume"]).arg(grid.join("failed"));
        c
    });
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting it over from step 0"));
    assert_eq!(by_run(&json(&grid), "failed")["status"], "done");

    // A run given itself is shown by its own path.
    let rows = json(&grid.join("done"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["run"], grid.join("done").to_str().unwrap());
}

#[test]
fn folders_without_runs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let missing: PathBuf = tmp.path().join("nope");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    let file = tmp.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    for (dir, says) in [(&missing, "does not exist"), (&empty, "no keel run under"), (&file, "not a folder")] {
        let out = runs(&[dir.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says) && stderr.contains(&*dir.display().to_string()), "{stderr}");
        assert!(stderr.contains("pass run directories"), "names the fix: {stderr}");
        assert!(out.stdout.is_empty());
    }
}
