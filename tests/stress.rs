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
