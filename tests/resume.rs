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
    assert_same_events(reference, run);
}

/// `(tag, step) -> value` over a run's TensorBoard event files, in the order TensorBoard reads
/// them, asserting that no step of a tag is there twice.
fn events(dir: &Path) -> std::collections::BTreeMap<(String, i64), f32> {
    let mut out = std::collections::BTreeMap::new();
    for file in keel::tensorboard::event_files(dir).unwrap() {
        for e in keel::tensorboard::read_events(&file).unwrap() {
            for (tag, v) in e.scalars() {
                let old = out.insert((tag.to_string(), e.step), v);
                assert!(old.is_none(), "{}: {tag} at step {} is there twice", dir.display(), e.step);
            }
        }
    }
    out
}

/// The union of the event files holds every step exactly once, with the uninterrupted run's values
/// (but for the wall-clock tokens/s) and `metrics.csv`'s losses.
fn assert_same_events(reference: &Path, run: &Path) {
    let clockless = |d: &Path| {
        let mut m = events(d);
        m.retain(|(tag, _), _| tag != "train/tokens_per_s");
        m
    };
    let (a, b) = (clockless(reference), clockless(run));
    assert_eq!(a.keys().filter(|(t, _)| t == "train/loss").count(), 60);
    assert_eq!(a, b, "the event files differ from the uninterrupted run's");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (step, loss): (i64, f64) = (f[0].parse().unwrap(), f[3].parse().unwrap());
        assert_eq!(b[&("train/loss".to_string(), step)], loss as f32, "step {step}");
    }
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

/// A grid's run (KEEL_GRID_CHILD, set by `keel sweep` and `keel stress`) counts repeated signals
/// as one stop: Linux sends the parent-death SIGTERM once per exiting thread of a killed sweep.
#[test]
fn a_grid_run_checkpoints_through_repeated_signals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("grid-child");
    let child = start_run(&dir, &["--set", "train.checkpoint_every=0"])
        .env("KEEL_GRID_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(|| metric_rows(&dir) >= 3);
    for _ in 0..3 {
        unsafe { libc_kill(child.id() as i32, 15) };
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("second signal"), "{stderr}");
    let stopped = metric_rows(&dir);
    assert!(dir.join(format!("checkpoints/step_{stopped:07}/state.json")).exists(), "{stderr}");
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
    expect_exit_2(resume(&dir, &[]), &["step_0000013", "trained with another config"]);
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

// ---- Nothing lost, ever (issue 14): each test below failed before its fix. ----

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A run killed by an abort inside the checkpoint write of `step` (its previous checkpoints
/// complete, its CSVs one step past the last).
fn aborted_at(dir: &Path, step: usize, extra: &[&str]) {
    let step = step.to_string();
    let out = start_run(dir, extra).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", &step).output().unwrap();
    assert!(!out.status.success(), "the run should have been aborted at step {step}");
}

#[test]
fn two_trains_into_one_out_dir_exactly_one_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    for round in 0..6 {
        let dir = tmp.path().join(format!("race{round}"));
        let a = start_run(&dir, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let b = start_run(&dir, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let codes = [a.status.code(), b.status.code()];
        assert!(codes.contains(&Some(0)) && codes.contains(&Some(2)), "round {round}: exits {codes:?}");
        let loser = if a.status.code() == Some(2) { &a } else { &b };
        let err = stderr_of(loser);
        assert!(err.contains("in use by another keel process (PID") || err.contains("already holds files"), "{err}");
        assert_same_results(&reference, &dir);
    }
    // Two resumes of one run at once: one resumes, the other is refused.
    let dir = tmp.path().join("resumes");
    aborted_at(&dir, 21, &[]);
    for _ in 0..3 {
        let a = resume(&dir, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let b = resume(&dir, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert!(a.status.code().is_some_and(|c| c == 0 || c == 2), "{}", stderr_of(&a));
        assert!(b.status.code().is_some_and(|c| c == 0 || c == 2), "{}", stderr_of(&b));
        assert!(a.status.code() == Some(0) || b.status.code() == Some(0));
    }
    assert_same_results(&reference, &dir);
}

#[test]
fn a_held_run_directory_names_the_pid_holding_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("held");
    let mut holder = start_run(&dir, &[]).env("KEEL_FAULT_PAUSE_IN_CHECKPOINT", "7").spawn().unwrap();
    assert!(wait_until(|| dir.join("checkpoints/.step_0000007.tmp/model.safetensors").exists()));
    let pid = holder.id().to_string();
    expect_exit_2(resume(&dir, &[]), &["in use by another keel process", &format!("PID {pid}")]);
    expect_exit_2(start_run(&dir, &[]), &[&format!("PID {pid}")]);
    // The lock dies with its holder, kill -9 included.
    holder.kill().unwrap();
    holder.wait().unwrap();
    run_ok(resume(&dir, &[]));
}

#[test]
fn an_edited_state_json_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    let dir = tmp.path().join("edited");
    aborted_at(&dir, 35, &[]);
    let state = dir.join("checkpoints/step_0000028/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"step\": 28", "\"step\": 100000")).unwrap();
    let out = run_ok(resume(&dir, &[]));
    let err = stderr_of(&out);
    assert!(err.contains("step_0000028 is unusable") && err.contains("state.json fails its checksum"), "{err}");
    assert!(err.contains("step_0000021"), "{err}");
    assert_same_results(&reference, &dir);
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(summary.contains("\"steps_completed\": 60"), "{summary}");
}

#[test]
fn damaged_csvs_stop_a_resume_and_are_left_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("csv");
    aborted_at(&dir, 35, &[]);
    let metrics = dir.join("metrics.csv");
    let good = std::fs::read_to_string(&metrics).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines[9] = "garbage,line";
    let bad = lines.join("\n") + "\n";
    std::fs::write(&metrics, &bad).unwrap();
    expect_exit_2(resume(&dir, &[]), &["metrics.csv line 10", "garbage,line", "Restore the file"]);
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), bad, "resume must not change a damaged file");
    // A deleted row in the middle, and a deleted grad_norms.csv.
    let mut lines: Vec<&str> = good.lines().collect();
    lines.remove(5);
    std::fs::write(&metrics, lines.join("\n") + "\n").unwrap();
    expect_exit_2(resume(&dir, &[]), &["metrics.csv line 6", "step 6", "step 5"]);
    std::fs::write(&metrics, &good).unwrap();
    let grad_norms = dir.join("grad_norms.csv");
    let norms = std::fs::read(&grad_norms).unwrap();
    std::fs::remove_file(&grad_norms).unwrap();
    expect_exit_2(resume(&dir, &[]), &["grad_norms.csv line 2", "rows of step 1 are missing"]);
    assert!(!grad_norms.exists());
    // Restored, the run resumes and finishes like an uninterrupted one.
    std::fs::write(&grad_norms, norms).unwrap();
    let reference = straight(tmp.path());
    run_ok(resume(&dir, &[]));
    assert_same_results(&reference, &dir);
}

#[test]
fn a_resume_on_other_data_is_refused_unless_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("corpus.txt");
    let sentence = |i: usize| format!("sentence number {i} of a small corpus for keel.\n");
    std::fs::write(&text, (0..800).map(sentence).collect::<String>()).unwrap();
    let source = format!("data.source={}", text.display());
    let dir = tmp.path().join("data");
    aborted_at(&dir, 14, &["--set", &source]);
    std::fs::write(&text, (0..800).map(|i| sentence(i + 1)).collect::<String>()).unwrap();
    expect_exit_2(resume(&dir, &[]), &["the data differs", "sha256", "--accept-data-change"]);
    let out = run_ok(resume(&dir, &["--accept-data-change"]));
    assert!(dir.join("DONE").exists(), "{}", stderr_of(&out));
    assert!(std::fs::read_to_string(dir.join("config.toml")).unwrap().contains("data_identity"));

    // A prepared folder prepared again from other text.
    let prepared = tmp.path().join("prepared");
    let prepare = |text: &str| {
        let _ = std::fs::remove_dir_all(&prepared);
        let input = tmp.path().join("docs.txt");
        std::fs::write(&input, text).unwrap();
        let mut c = keel();
        c.args(["data", "prepare", "-q", "--tokenizer", "byte", "--val-fraction", "0.2", "--input"])
            .arg(&input)
            .arg("--out")
            .arg(&prepared);
        run_ok(c);
    };
    let docs = |shift: usize| (0..200).map(|i| sentence(i + shift) + "\n").collect::<String>();
    prepare(&docs(0));
    let path = format!("data.path={}", prepared.display());
    let dir = tmp.path().join("on-prepared");
    aborted_at(&dir, 14, &["--set", &path]);
    // The same inputs prepared again are the same data.
    prepare(&docs(0));
    let mut c = resume(&dir, &[]);
    c.env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "21");
    let out = c.output().unwrap();
    assert!(!stderr_of(&out).contains("the data differs"), "{}", stderr_of(&out));
    prepare(&docs(7));
    expect_exit_2(resume(&dir, &[]), &["the data differs", "prepared meta sha256"]);
}

#[test]
fn steps_below_the_checkpoint_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cut");
    aborted_at(&dir, 56, &[]);
    expect_exit_2(
        resume(&dir, &["--set", "train.steps=30", "--force"]),
        &["train.steps = 30 is below the step of the run's checkpoint (49)"],
    );
    assert!(!dir.join("DONE").exists());
    assert!(std::fs::read_to_string(dir.join("config.toml")).unwrap().contains("steps = 60"));
}

#[test]
fn a_folder_of_temporary_files_only_counts_as_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tmp-only");
    std::fs::create_dir_all(&dir).unwrap();
    // What a kill -9 or a full disk during the first config write leaves.
    std::fs::write(dir.join(".config.toml.4242.0.tmp"), "[model]\ndep").unwrap();
    expect_exit_2(resume(&dir, &[]), &["only keel's temporary files", "--out"]);
    run_ok(start_run(&dir, &[]));
    assert!(dir.join("DONE").exists());
    assert!(!dir.join(".config.toml.4242.0.tmp").exists());
    // A folder with anything else still is not.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    expect_exit_2(start_run(&other, &[]), &["already holds files"]);
}

#[test]
fn resume_restores_a_missing_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tok");
    aborted_at(&dir, 14, &[]);
    let tokenizer = std::fs::read(dir.join("tokenizer.json")).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    run_ok(resume(&dir, &[]));
    assert_eq!(std::fs::read(dir.join("tokenizer.json")).unwrap(), tokenizer);
}

#[test]
fn damaged_final_weights_are_refused_by_eval_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = straight(tmp.path());
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let sha = keel::files::sha256_file(&dir.join("model.safetensors")).unwrap();
    assert!(summary.contains(&format!("\"weights_sha256\": \"{sha}\"")), "{summary}");
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();
    let mut eval = keel();
    eval.args(["eval", "--quiet", "--bench", "ppl", "--run"]).arg(&dir);
    expect_exit_2(eval, &["model.safetensors fails the checksum recorded in", "summary.json"]);
    let mut export = keel();
    export.args(["export", "--run"]).arg(&dir).arg("--hf").arg(tmp.path().join("hf"));
    expect_exit_2(export, &["fails the checksum"]);
    assert!(!tmp.path().join("hf").join("model.safetensors").exists());
}

#[test]
fn sigterm_during_start_up_exits_130_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("startup");
    // A large synthetic corpus keeps the run in start-up for a few seconds.
    let child = start_run(&dir, &["--set", "data.synthetic_bytes=400000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc_kill(child.id() as i32, 15) };
    let out = child.wait_with_output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("during start-up") && err.contains("run the same command again"), "{err}");
    assert_eq!(metric_rows(&dir), 0);
}

#[test]
fn pruning_touches_only_keels_own_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("prune");
    aborted_at(&dir, 35, &[]);
    let foreign = dir.join("checkpoints/step_0000098");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "not keel's").unwrap();
    let out = run_ok(resume(&dir, &[]));
    assert!(stderr_of(&out).contains("step_0000098 is unusable"), "{}", stderr_of(&out));
    assert!(foreign.join("notes.txt").exists(), "pruning deleted a folder keel did not write");
    for kept in ["step_0000056", "step_0000060"] {
        assert!(dir.join("checkpoints").join(kept).join("SHA256SUMS").exists(), "{kept} was pruned");
    }
}

/// A small deterministic generator for the kill times.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn sigkill_at_random_moments_resumes_or_restarts_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = straight(tmp.path());
    let started = Instant::now();
    run_ok(start_run(&tmp.path().join("timing"), &[]));
    // Kill anywhere from process start (start-up, the first config write) to the end of the run.
    let span = started.elapsed().as_millis().max(50) as u64;
    let mut rng = 0x5eed_u64;
    let (mut resumed, mut restarted) = (0, 0);
    for round in 0..12 {
        let dir = tmp.path().join(format!("random{round}"));
        let mut kills = Vec::new();
        let mut fresh = true;
        // Up to three kills per round, the later ones during resumes.
        for attempt in 0..3 {
            // Half the rounds start with a kill in the first 8 ms (process start-up and the first
            // writes), and a quarter of the other kills fall there too.
            let r = next_random(&mut rng);
            let early = (attempt == 0 && round % 2 == 0) || r.is_multiple_of(4);
            let delay_us = if early { (r / 4) % 8_000 } else { r % (span * 1000) };
            let mut c =
                if fresh || !dir.join("config.toml").exists() { start_run(&dir, &[]) } else { resume(&dir, &[]) };
            fresh = false;
            let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
            std::thread::sleep(Duration::from_micros(delay_us));
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            kills.push(delay_us / 1000);
            if out.status.success() {
                break;
            }
            assert!(out.status.code().is_none(), "round {round}: exit {:?} {}", out.status, stderr_of(&out));
            if !dir.join("config.toml").exists() {
                // Killed before the config was written: the next try restarts into the same --out.
                restarted += 1;
            }
        }
        if dir.join("config.toml").exists() {
            resumed += 1;
            run_ok(resume(&dir, &[]));
        } else {
            run_ok(start_run(&dir, &[]));
        }
        assert_same_results(&reference, &dir);
        eprintln!("round {round}: killed at {kills:?} ms");
    }
    eprintln!("{resumed} rounds resumed; {restarted} kills came before the config was written (then restarted into the same --out); kill times over {span} ms");
}
