//! Checkpoints resume bit-for-bit: runs killed (SIGKILL, an abort halfway through a checkpoint
//! write, SIGTERM) and resumed end with the same CSVs (all but the wall-clock columns) and the same
//! final weights, byte for byte, as an uninterrupted run; damaged checkpoints are skipped, foreign
//! ones and changed configs refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SETS: [&str; 24] = [
    "--set",
    "model.depth=6",
    "--set",
    "model.d_model=48",
    "--set",
    "train.steps=60",
    "--set",
    "train.seq_len=48",
    "--set",
    "train.checkpoint_every=7",
    "--set",
    "train.eval_every=10",
    "--set",
    "train.grad_norm_every=4",
    "--set",
    "data.synthetic_bytes=60000",
    "--set",
    "train.keep_checkpoints=2",
    "--set",
    "train.warmup_steps=10",
    "--set",
    "train.batch_size=6",
    "--set",
    "train.log_every=5",
];

fn keel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.env_remove("KEEL_FAULT_ABORT_IN_CHECKPOINT").env_remove("KEEL_FAULT_PAUSE_IN_CHECKPOINT");
    c
}

fn start_run(out: &Path, extra: &[&str]) -> Command {
    let mut c = keel();
    c.args(["train", "--quiet", "--out"]).arg(out).args(SETS).args(extra);
    c
}

fn resume(dir: &Path, extra: &[&str]) -> Command {
    let mut c = keel();
    c.args(["train", "--quiet", "--resume"]).arg(dir).args(extra);
    c
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "exit {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// The uninterrupted reference run.
fn straight(dir: &Path) -> PathBuf {
    let p = dir.join("straight");
    run_ok(start_run(&p, &[]));
    p
}

/// Every output that must match an uninterrupted run.
fn assert_same_results(reference: &Path, run: &Path) {
    let without_clock = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect()
    };
    let a = without_clock(reference);
    assert_eq!(a.len(), 61);
    assert_eq!(a, without_clock(run), "metrics.csv differs");
    for f in ["eval.csv", "grad_norms.csv", "model.safetensors"] {
        assert!(
            std::fs::read(reference.join(f)).unwrap() == std::fs::read(run.join(f)).unwrap(),
            "{f} differs from the uninterrupted run"
        );
    }
    assert!(run.join("DONE").exists());
}

/// Polls `done` every millisecond for up to a minute; returns whether it came true.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    done()
}

fn metric_rows(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.csv")).map(|t| t.lines().count().saturating_sub(1)).unwrap_or(0)
}

/// Waits until the run has written at least `rows` metric rows (or ended), then SIGKILLs it.
fn kill_at(mut child: Child, dir: &Path, rows: usize) -> bool {
    let mut exited = false;
    wait_until(|| {
        exited = exited || child.try_wait().unwrap().is_some();
        exited || metric_rows(dir) >= rows
    });
    if exited {
        return false;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

#[test]
fn sigkill_at_several_points_then_resume_matches_a_straight_run() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    let dir = tmp.path().join("killed");
    let mut killed = 0;
    let first = start_run(&dir, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    killed += kill_at(first, &dir, 9) as usize;
    for rows in [24, 45] {
        let child = resume(&dir, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        killed += kill_at(child, &dir, rows) as usize;
    }
    assert!(killed >= 2, "the runs finished before they could be killed ({killed} kills)");
    run_ok(resume(&dir, &[]));
    assert_same_results(&reference, &dir);
}

#[test]
fn sigkill_during_a_checkpoint_write_then_resume_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    let dir = tmp.path().join("paused");
    let mut child = start_run(&dir, &[]).env("KEEL_FAULT_PAUSE_IN_CHECKPOINT", "42").spawn().unwrap();
    let half_written = dir.join("checkpoints/.step_0000042.tmp/model.safetensors");
    assert!(wait_until(|| half_written.exists()), "the run never reached the checkpoint write of step 42");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dir.join("checkpoints/step_0000042").exists());
    run_ok(resume(&dir, &[]));
    assert_same_results(&reference, &dir);
}

#[test]
fn abort_during_a_checkpoint_write_then_resume_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    let dir = tmp.path().join("aborted");
    let out = start_run(&dir, &[]).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "28").output().unwrap();
    assert!(!out.status.success());
    assert!(dir.join("checkpoints/.step_0000028.tmp").exists(), "the abort should hit the checkpoint write");
    assert!(!dir.join("checkpoints/step_0000028").exists());
    assert_eq!(metric_rows(&dir), 28);
    let out = run_ok(resume(&dir, &[]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("step_0000021"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_results(&reference, &dir);
    // Only the newest checkpoints and the final one are kept.
    let kept: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut kept = kept;
    kept.sort();
    assert_eq!(kept, ["step_0000056", "step_0000060"]);
}

#[test]
fn sigterm_checkpoints_and_exits_130_then_resume_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    let dir = tmp.path().join("term");
    let child = start_run(&dir, &["--set", "train.checkpoint_every=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(|| metric_rows(&dir) >= 12);
    unsafe { libc_kill(child.id() as i32, 15) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let stopped = metric_rows(&dir);
    assert!(stopped < 60, "stopped after step {stopped}");
    assert!(
        dir.join(format!("checkpoints/step_{stopped:07}/state.json")).exists(),
        "a checkpoint at the stopping step"
    );
    assert!(!dir.join("DONE").exists());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("--resume") || stderr.contains("--resume"),
        "says how to resume"
    );
    // checkpoint_every was changed for this run only; resume with its own config.
    run_ok(resume(&dir, &[]));
    let metrics = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&reference), metrics(&dir));
    assert_eq!(
        std::fs::read(reference.join("model.safetensors")).unwrap(),
        std::fs::read(dir.join("model.safetensors")).unwrap()
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("twice");
    // Both signals arrive while the run sits in the checkpoint write of step 7 (a fault-injection
    // pause): the first asks for a clean stop, the second must not wait for it.
    let child = start_run(&dir, &[])
        .env("KEEL_FAULT_PAUSE_IN_CHECKPOINT", "7")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let half_written = dir.join("checkpoints/.step_0000007.tmp/model.safetensors");
    assert!(wait_until(|| half_written.exists()), "the run never reached the checkpoint write of step 7");
    let started = Instant::now();
    unsafe { libc_kill(child.id() as i32, 15) };
    std::thread::sleep(Duration::from_millis(100));
    unsafe { libc_kill(child.id() as i32, 15) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("finishing the current step") && stderr.contains("second signal: stopping now"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "the second signal did not stop the run at once");
    assert!(!dir.join("checkpoints/step_0000007").exists());
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn a_damaged_checkpoint_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    let dir = tmp.path().join("damaged");
    let _ = start_run(&dir, &[]).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "35").output().unwrap();
    // Newest complete checkpoint: 28. Damage it.
    let model = dir.join("checkpoints/step_0000028/model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&model, &bytes).unwrap();
    let out = run_ok(resume(&dir, &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step_0000028 is unusable") && stderr.contains("checksum"), "{stderr}");
    assert!(stderr.contains("step_0000021"), "{stderr}");
    assert_same_results(&reference, &dir);
}

fn expect_exit_2(mut c: Command, needles: &[&str]) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

#[test]
fn changed_configs_and_foreign_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = d.join("run");
    let _ = start_run(&dir, &[]).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "14").output().unwrap();
    expect_exit_2(resume(&dir, &["--set", "model.depth=4"]), &["model.depth: 6 -> 4", "cannot change on resume"]);
    expect_exit_2(resume(&dir, &["--set", "train.lr=1e-2"]), &["train.lr"]);
    expect_exit_2(resume(&dir, &["--set", "train.steps=70"]), &["train.steps: 60 -> 70", "--force"]);
    expect_exit_2(resume(&d.join("nope"), &[]), &["not a keel run directory"]);
    // A checkpoint copied in from another experiment (another seed).
    let other = d.join("other");
    let _ = start_run(&other, &["--set", "train.seed=5"]).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "14").output().unwrap();
    let foreign = dir.join("checkpoints/step_0000013");
    copy_dir(&other.join("checkpoints/step_0000007"), &foreign);
    expect_exit_2(resume(&dir, &[]), &["step_0000013", "different experiment"]);
    std::fs::remove_dir_all(&foreign).unwrap();
    // A safe change with --force continues, and is recorded in config.toml.
    let out = run_ok(resume(&dir, &["--set", "train.steps=62", "--force"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("step 7"));
    assert!(std::fs::read_to_string(dir.join("config.toml")).unwrap().contains("steps = 62"));
    assert_eq!(metric_rows(&dir), 62);
    // Resuming a finished run does nothing.
    let out = run_ok(resume(&dir, &[]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already finished"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_torn_last_csv_line_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    let dir = tmp.path().join("torn");
    let _ = start_run(&dir, &[]).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "49").output().unwrap();
    for f in ["metrics.csv", "grad_norms.csv"] {
        let mut t = std::fs::read_to_string(dir.join(f)).unwrap();
        t.push_str("50,12");
        std::fs::write(dir.join(f), t).unwrap();
    }
    run_ok(resume(&dir, &[]));
    assert_same_results(&reference, &dir);
}
