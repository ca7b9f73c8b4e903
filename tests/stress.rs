//! `keel stress` end to end on tiny models: every run becomes a row of stress.csv and a cell of
//! the Table-1-shaped Markdown, divergence is found on the loss curves, and a second invocation
//! skips the finished runs.

use std::path::Path;
use std::process::Command;

fn stress(dir: &Path, peak: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "stress",
            "--placements",
            "post_ln,deepnorm,keel",
            "--depths",
            "4,8",
            "--warmup-steps",
            "40",
            "--jobs",
            "2",
        ])
        .args(["--peak-lr", peak, "--out", "st", "--recover-window", "10", "--stall-window", "20"])
        .args([
            "--set",
            "model.d_model=16",
            "--set",
            "model.n_heads=2",
            "--set",
            "train.seq_len=16",
            "--set",
            "train.batch_size=2",
        ])
        .args(["--set", "data.synthetic_bytes=20000", "--set", "train.grad_clip=0"])
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn stress_writes_table_one_and_skips_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A peak of 1e4 without clipping: every run blows up within the ramp.
    let out = stress(d, "1e4");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = std::fs::read_to_string(d.join("st/stress.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{csv}");
    for row in &rows {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f[3], "false", "every run diverges: {row}");
        let step: usize = f[4].parse().unwrap();
        let max_lr: f64 = f[2].parse().unwrap();
        // The LR one step before divergence on a linear ramp 0 -> 1e4 over 40 steps.
        assert!((max_lr - 1e4 * (step - 1) as f64 / 40.0).abs() < 1e-6 * 1e4, "{row}");
    }
    let table = std::fs::read_to_string(d.join("st/table1.md")).unwrap();
    assert!(table.starts_with("| depth (sub-layers) | post_ln | deepnorm | keel |"), "{table}");
    assert_eq!(table.lines().count(), 4);
    assert!(d.join("st/keel-d8/metrics.csv").exists() && d.join("st/thresholds.json").exists());
    // Again: nothing is retrained, the results are the same.
    let before = std::fs::metadata(d.join("st/keel-d8/metrics.csv")).unwrap().modified().unwrap();
    let again = stress(d, "1e4");
    assert!(
        String::from_utf8_lossy(&again.stdout).matches("already finished").count() == 6,
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(std::fs::read_to_string(d.join("st/stress.csv")).unwrap(), csv);
    assert_eq!(std::fs::metadata(d.join("st/keel-d8/metrics.csv")).unwrap().modified().unwrap(), before);
}

/// Ctrl-C on `keel stress` (SIGINT to it alone, as `kill -INT` sends it) starts no further run and
/// returns only once the running ones have checkpointed and exited: exit status 130, no table
/// from a partial grid, and the command that continues.
#[test]
#[cfg(target_os = "linux")]
fn an_interrupted_stress_waits_for_its_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let stress = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stress", "--placements", "keel,pre_ln", "--depths", "2,4", "--jobs", "2", "--out", "st"])
        // A ramp far too long to end, and no stall to stop it: the runs train until stopped.
        .args(["--warmup-steps", "1000000", "--peak-lr", "1e-3", "--stall-window", "10000000"])
        .args(["--set", "model.d_model=16", "--set", "model.n_heads=2", "--set", "train.seq_len=16"])
        .args(["--set", "data.synthetic_bytes=20000", "--set", "train.checkpoint_every=0"])
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rows = |run: &str| {
        std::fs::read_to_string(d.join("st").join(run).join("metrics.csv")).map(|t| t.lines().count()).unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while rows("keel-d2") < 2 || rows("pre_ln-d2") < 2 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the runs never took a step");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-INT", &stress.id().to_string()]).status().unwrap().success());
    let o = stress.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{}\n{stderr}", String::from_utf8_lossy(&o.stdout));
    for run in ["keel-d2", "pre_ln-d2"] {
        let lock = std::fs::File::open(d.join("st").join(run).join(".keel.lock")).unwrap();
        assert!(lock.try_lock().is_ok(), "{run} is still held by its keel train");
        assert!(std::fs::read_dir(d.join("st").join(run).join("checkpoints")).unwrap().count() > 0, "{run}");
    }
    assert!(!d.join("st/keel-d4").exists() && !d.join("st/stress.csv").exists());
    assert!(stderr.contains("continue with: ") && stderr.contains("stress --placements keel,pre_ln"), "{stderr}");
}
