//! TensorBoard event files: every number of a run's CSVs is in them (read back with keel's own
//! record parser, checked against TensorBoard's CRC vectors in `src/tensorboard.rs`), the config
//! key turns them off, and a damaged one stops a resume before anything changes. Kills and
//! resumes are in `tests/resume.rs` (the union of the files holds every step once).

use keel::metrics::tags;
use keel::tensorboard::{event_files, read_events, What};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut c = keel();
    c.args(["train", "--quiet", "--out"]).arg(out);
    for s in [
        "model.depth=6",
        "model.d_model=32",
        "model.n_heads=2",
        "train.steps=12",
        "train.seq_len=32",
        "train.batch_size=4",
        "train.eval_every=5",
        "train.grad_norm_every=4",
        "train.eval_batches=1",
        "data.synthetic_bytes=30000",
    ] {
        c.args(["--set", s]);
    }
    c.args(extra).output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "exit {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
}

#[test]
fn the_event_file_holds_every_number_of_the_csvs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    ok(train(&dir, &[]));
    let files = event_files(&dir).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("events.out.tfevents.") && name.ends_with(".keel"), "{name}");
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events[0].what, Some(What::FileVersion("brain.Event:2".into())));
    // (tag, step) -> value, each once.
    let mut scalars = BTreeMap::new();
    let mut histograms = BTreeMap::new();
    for e in &events {
        for (tag, v) in e.scalars() {
            assert!(scalars.insert((tag.to_string(), e.step as usize), v).is_none(), "{tag} {} twice", e.step);
        }
        for (tag, h) in e.histograms() {
            assert_eq!(tag, tags::GRAD_NORM_BY_DEPTH);
            histograms.insert(e.step as usize, h.clone());
        }
    }
    let get = |tag: &str, step: usize| *scalars.get(&(tag.to_string(), step)).unwrap_or_else(|| panic!("{tag} {step}"));
    let metrics = csv_rows(&dir.join("metrics.csv"));
    assert_eq!(metrics.len(), 12);
    for r in &metrics {
        let step: usize = r[0].parse().unwrap();
        let num = |i: usize| r[i].parse::<f64>().unwrap();
        assert_eq!(get(tags::LR, step), num(2) as f32);
        assert_eq!(get(tags::LOSS, step), num(3) as f32);
        assert_eq!(get(tags::GRAD_NORM, step), num(4) as f32);
        // The CSV rounds tokens/s to one decimal.
        assert!((get(tags::TOKENS_PER_S, step) as f64 - num(5)).abs() <= 0.05 + 1e-6 * num(5));
    }
    let eval = csv_rows(&dir.join("eval.csv"));
    assert_eq!(eval.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["5", "10", "12"]);
    for r in &eval {
        assert_eq!(get(tags::VAL_LOSS, r[0].parse().unwrap()), r[1].parse::<f64>().unwrap() as f32);
    }
    // grad_norms.csv: step, layer, kind, norm; sub-layer tags zero-padded to 4 digits.
    let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for r in csv_rows(&dir.join("grad_norms.csv")) {
        let (step, norm): (usize, f64) = (r[0].parse().unwrap(), r[3].parse().unwrap());
        let layer = r[1].parse::<usize>().ok();
        assert_eq!(get(&tags::grad_norm(layer, &r[2], 6), step), norm as f32, "{r:?}");
        if layer.is_some() {
            by_step.entry(step).or_default().push(norm);
        }
    }
    assert_eq!(by_step.keys().copied().collect::<Vec<_>>(), [1, 4, 8, 12]);
    assert!(scalars.contains_key(&("grad_norm/0000_attn".to_string(), 1)));
    assert!(scalars.contains_key(&("grad_norm/0005_ffn".to_string(), 12)));
    for (step, norms) in &by_step {
        let h = &histograms[step];
        assert_eq!(&h.bucket, norms, "step {step}");
        assert_eq!(h.bucket_limit, (1..=6).map(|i| i as f64).collect::<Vec<_>>());
        assert_eq!((h.min, h.max), (0.0, 6.0));
    }
    // Nothing but these: 4 train tags per step, val at 3 steps, grad norm blocks at 4 steps.
    let per_block = scalars.keys().filter(|(t, s)| t.starts_with("grad_norm/") && *s == 1).count();
    let csv_block = csv_rows(&dir.join("grad_norms.csv")).iter().filter(|r| r[0] == "1").count();
    assert_eq!(per_block, csv_block);
    assert!(per_block >= 6 + 2, "6 sub-layers, embedding, head (and a final norm where the placement has one)");
    assert_eq!(scalars.len(), 4 * 12 + 3 + 4 * per_block);
}

#[test]
fn run_tensorboard_false_writes_no_event_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    ok(train(&dir, &["--set", "run.tensorboard=false"]));
    assert!(event_files(&dir).unwrap().is_empty());
    assert!(dir.join("metrics.csv").exists());
}

/// A run as `kill -9` leaves it after step 12 with its last checkpoint at step 8: a finished run
/// with its final checkpoint and final files taken away.
fn stopped_after_checkpoint_8(dir: &Path) {
    ok(train(dir, &["--set", "train.checkpoint_every=4", "--set", "train.keep_checkpoints=5"]));
    for f in ["DONE", "summary.json", "model.safetensors"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    std::fs::remove_dir_all(dir.join("checkpoints/step_0000012")).unwrap();
}

fn resume(dir: &Path, extra: &[&str]) -> Output {
    let mut c = keel();
    c.args(["train", "--quiet", "--resume"]).arg(dir).args(extra).output().unwrap()
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() && !p.ends_with(".keel.lock") {
            out.insert(p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn a_damaged_event_file_stops_a_resume_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    stopped_after_checkpoint_8(&dir);
    let file = event_files(&dir).unwrap().remove(0);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let before = snapshot(&dir);
    let out = resume(&dir, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(file.file_name().unwrap().to_str().unwrap()) && err.contains("run.tensorboard=false"),
        "{err}"
    );
    assert!(snapshot(&dir) == before, "the resume changed files");
    // Turned off, the run goes on: the damaged file is left as it is, no new one is started.
    let out = ok(resume(&dir, &["--force", "--set", "run.tensorboard=false"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("left as it is"));
    assert_eq!(event_files(&dir).unwrap(), std::slice::from_ref(&file));
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    assert_eq!(csv_rows(&dir.join("metrics.csv")).len(), 12);
}

#[test]
fn a_resumed_run_goes_on_in_a_second_file_without_repeating_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    stopped_after_checkpoint_8(&dir);
    ok(resume(&dir, &[]));
    let files = event_files(&dir).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    let steps = |f: &Path| -> Vec<i64> {
        read_events(f)
            .unwrap()
            .iter()
            .filter(|e| e.scalars().iter().any(|(t, _)| *t == tags::LOSS))
            .map(|e| e.step)
            .collect()
    };
    assert_eq!(steps(&files[0]), (1..=8).collect::<Vec<_>>());
    assert_eq!(steps(&files[1]), (9..=12).collect::<Vec<_>>());
    let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_owned()).collect();
    assert!(names[0] < names[1]);
}
