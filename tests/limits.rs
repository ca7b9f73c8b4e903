//! Absurd sizes: configs and grids that cannot fit in memory are refused at once (exit status 2,
//! the estimate broken down and the fixes), before anything is allocated or written; the analytic
//! parameter count agrees with the model's own.

mod common;

use keel::config::{Config, Placement};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn keel(args: &[&str], cwd: &Path) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keel")).args(args).current_dir(cwd).output().unwrap();
    (out, start.elapsed())
}

fn refused(args: &[&str], cwd: &Path, needles: &[&str]) -> String {
    let (out, took) = keel(args, cwd);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: exit {:?}\n{err}", out.status.code());
    assert!(took < Duration::from_secs(3), "{args:?} took {took:?}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
    }
    assert!(!err.contains("panicked") && err.lines().count() <= 25, "{args:?}:\n{err}");
    err
}

#[test]
fn configs_that_cannot_fit_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for set in [
        "model.depth=1000000000",
        "train.batch_size=100000000000",
        "model.d_model=1099511627776",
        "train.seq_len=1000000000",
        "model.depth=9223372036854775806",
    ] {
        refused(
            &["train", "--set", set, "--out", "run"],
            d,
            &["of memory", "parameters", "gradients", "AdamW", "activations", "train.batch_size", "model.depth"],
        );
        assert!(!d.join("run").exists(), "{set}: the run directory was created");
    }
    // A resumed run is checked too (here before the config diff is even looked at).
    let tiny = [
        "--set",
        "model.depth=2",
        "--set",
        "model.d_model=16",
        "--set",
        "train.steps=2",
        "--set",
        "data.synthetic_bytes=20000",
    ];
    let (out, _) = keel(&[&["train", "--quiet", "--out", "small"][..], &tiny].concat(), d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Made to look stopped before its end (a finished run takes no new settings at all).
    std::fs::remove_file(d.join("small/DONE")).unwrap();
    std::fs::remove_file(d.join("small/summary.json")).unwrap();
    refused(&["train", "--resume", "small", "--set", "train.batch_size=100000000000"], d, &["of memory"]);
}

#[test]
fn sweeps_that_cannot_fit_are_refused_and_dry_runs_show_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    refused(&["sweep", "--depths", "64..10000000000000000000", "--dry-run"], d, &["--depths", "limit of 1048576"]);
    refused(&["sweep", "--depths", "64..100000000000000000000000", "--dry-run"], d, &["limit of 1048576"]);
    // The dry run lists every run with its memory and marks the ones that cannot fit.
    let args = ["sweep", "--depths", "2,4", "--grid", "train.seq_len=16,1000000000", "--out", "sw"];
    let err =
        refused(&[&args[..], &["--dry-run"]].concat(), d, &["2 of 4 runs cannot fit", "TOO BIG", "train.seq_len"]);
    let (out, _) = keel(&[&args[..], &["--dry-run"]].concat(), d);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().contains("~memory"), "{table}");
    assert_eq!(table.matches("TOO BIG").count(), 2, "{table}\n{err}");
    assert!(
        table.lines().any(|l| l.starts_with("d2-seq_len16") && (l.contains("KiB") || l.contains("MiB"))),
        "{table}"
    );
    // Running it trains nothing: the whole grid is refused up front.
    refused(&args, d, &["run d2-seq_len1000000000", "of memory"]);
    assert!(!d.join("sw").exists());
    // keel stress likewise.
    refused(
        &["stress", "--depths", "2,1000000000", "--placements", "keel", "--out", "st"],
        d,
        &["run keel-d1000000000", "of memory"],
    );
    assert!(!d.join("st").exists());
}

#[test]
fn the_analytic_parameter_count_is_the_models() {
    let shapes: [&[&str]; 3] = [
        &[],
        &[
            "model.depth=6",
            "model.norm=layer_norm",
            "model.ffn=gelu",
            "model.tie_embeddings=true",
            "model.keel_first_layer=v1",
        ],
        &[
            "model.depth=8",
            "model.d_model=32",
            "model.n_heads=4",
            "model.n_kv_heads=2",
            "model.d_ff=40",
            "model.mix_ln_fraction=0.5",
            "model.hybrid_norm_star=true",
            "model.final_norm=true",
        ],
    ];
    for p in Placement::ALL {
        for sets in shapes {
            // Half the blocks Post-LN, so that Mix-LN has one at depth 4 and 6 too.
            let mut all = vec![format!("model.placement={}", p.as_str()), "model.mix_ln_fraction=0.5".to_string()];
            all.extend(sets.iter().map(|s| s.to_string()));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let r = common::tiny(&all);
            let built = keel::model::Model::new(&r, &candle_core::Device::Cpu).unwrap().n_params();
            assert_eq!(keel::memory::n_params(&r), built as f64, "{p:?} {sets:?}");
        }
    }
    // Very deep stacks are counted without a loop over every sub-layer, and agree with a short one.
    let per_block = |depth: usize| {
        let mut c = Config::default();
        c.model.depth = depth;
        let r = c.resolve(256).unwrap();
        let base = keel::memory::n_params(&r);
        c.model.depth = depth + 2;
        (keel::memory::n_params(&c.resolve(256).unwrap()) - base, r)
    };
    let (small, _) = per_block(64);
    let (huge, r) = per_block(1 << 40);
    assert_eq!(small, huge);
    let start = Instant::now();
    assert!(keel::memory::estimate(&r).total() > 1e15);
    assert!(start.elapsed() < Duration::from_millis(100));
}
