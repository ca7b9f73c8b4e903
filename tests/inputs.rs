//! Every input keel reads is trusted only after it is checked, and every command stops cleanly:
//! swapped shards, hand-edited run files, a damaged layout, FIFOs, interrupted preparations,
//! moved data, deleted weights, a run directory made immutable mid-run, signals to commands other
//! than `train`. Each test fails on a keel without the check it names.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tiny run: a second or two on 2 cores.
const TINY: [&str; 20] = [
    "--set",
    "model.depth=2",
    "--set",
    "model.d_model=16",
    "--set",
    "model.n_heads=2",
    "--set",
    "train.steps=20",
    "--set",
    "train.seq_len=32",
    "--set",
    "train.batch_size=4",
    "--set",
    "data.synthetic_bytes=20000",
    "--set",
    "train.eval_every=10",
    "--set",
    "train.checkpoint_every=5",
    "--set",
    "train.keep_checkpoints=5",
];

fn keel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    for v in ["KEEL_FAULT_ABORT_IN_CHECKPOINT", "KEEL_FAULT_PAUSE_IN_CHECKPOINT", "KEEL_FAULT_PAUSE"] {
        c.env_remove(v);
    }
    c.env("RUST_BACKTRACE", "1");
    c
}

fn train(out: &Path, extra: &[&str]) -> Command {
    let mut c = keel();
    c.args(["train", "--quiet", "--out"]).arg(out).args(TINY).args(extra);
    c
}

fn resume(dir: &Path, extra: &[&str]) -> Command {
    let mut c = keel();
    c.args(["train", "--quiet", "--resume"]).arg(dir).args(extra);
    c
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "exit {:?}\n{}", out.status, stderr_of(&out));
    out
}

/// Exit status 2, every needle in stderr, no panic; returns stderr.
fn expect_exit_2(mut c: Command, needles: &[&str]) -> String {
    let out = c.output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "exit {:?}, stderr:\n{err}", out.status);
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A run stopped by an abort halfway through writing the checkpoint of `step` (like kill -9).
fn aborted_at(dir: &Path, step: usize, extra: &[&str]) {
    let out = train(dir, extra).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", step.to_string()).output().unwrap();
    assert!(!out.status.success(), "the run was meant to abort at step {step}");
    assert!(dir.join("config.toml").exists(), "{}", stderr_of(&out));
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for `child` at most `limit`; a child still running then is killed and the test fails.
fn finish_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!("{what}: still running after {limit:?} (it hangs); stderr:\n{}", stderr_of(&out));
}

fn prepare_cmd(input: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = keel();
    c.args(["data", "prepare", "-q", "--tokenizer", "byte", "--val-fraction", "0.2", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// A prepared folder of 200 short documents in shards of at most 3,000 tokens (several shards).
fn prepared(tmp: &Path, name: &str) -> PathBuf {
    let input = tmp.join(format!("{name}.txt"));
    let docs: String = (0..200).map(|i| format!("sentence number {i} of a small corpus for keel.\n\n")).collect();
    std::fs::write(&input, docs).unwrap();
    let out = tmp.join(name);
    run_ok(prepare_cmd(&input, &out, &["--shard-tokens", "3000"]));
    out
}

fn finished(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    run_ok(train(&dir, &[]));
    assert!(dir.join("DONE").exists());
    dir
}

fn eval_synthetic(run: &Path) -> Command {
    let mut c = keel();
    c.args(["eval", "--quiet", "--bench", "synthetic", "--limit", "8", "--run"]).arg(run);
    c
}

fn export(run: &Path, out: &Path) -> Command {
    let mut c = keel();
    c.args(["export", "--run"]).arg(run).arg("--hf").arg(out);
    c
}

// 1.
#[test]
fn swapped_shards_are_refused_unless_the_change_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path(), "p");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("meta.json")).unwrap()).unwrap();
    let sums = meta["train"]["shard_sha256"].as_array().expect("meta.json records shard checksums");
    assert!(sums.len() >= 2, "{meta}");
    let path = format!("data.path={}", data.display());
    let dir = tmp.path().join("run");
    aborted_at(&dir, 15, &["--set", &path]);
    let (a, b) = (data.join("train_000.bin"), data.join("train_001.bin"));
    std::fs::rename(&a, data.join("swap")).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(data.join("swap"), &b).unwrap();
    expect_exit_2(resume(&dir, &[]), &["train_000.bin", "meta.json", "--accept-data-change"]);
    // A new run on the folder is refused too: the folder contradicts its own meta.json.
    expect_exit_2(
        train(&tmp.path().join("fresh"), &["--set", &path]),
        &["does not match its meta.json", "train_001.bin"],
    );
    let out = run_ok(resume(&dir, &["--accept-data-change"]));
    assert!(dir.join("DONE").exists(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("differ from their meta.json"), "{}", stderr_of(&out));
}

// 2.
#[test]
fn an_edited_config_names_the_keys_and_advises_no_deletion() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    aborted_at(&dir, 15, &[]);
    let config = dir.join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let rows = std::fs::read(dir.join("metrics.csv")).unwrap();
    assert!(original.contains("lr = 0.003\n"), "{original}");
    std::fs::write(&config, original.replace("lr = 0.003\n", "lr = 0.001\n")).unwrap();
    let err = expect_exit_2(resume(&dir, &[]), &["train.lr: 0.003 (checkpoint) -> 0.001 (now)", "edited"]);
    assert!(!err.contains("remove"), "the advice must not delete results:\n{err}");
    std::fs::write(&config, "").unwrap();
    let err = expect_exit_2(resume(&dir, &[]), &["model.depth: 2 (checkpoint) -> 8 (now)"]);
    assert!(!err.contains("remove"), "{err}");
    assert_eq!(std::fs::read(dir.join("metrics.csv")).unwrap(), rows, "metrics.csv changed");
    std::fs::write(&config, original).unwrap();
    run_ok(resume(&dir, &[]));
    assert!(dir.join("DONE").exists());
}

// 3.
#[test]
fn a_file_where_checkpoints_belong_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    aborted_at(&dir, 15, &[]);
    let before: Vec<(String, Vec<u8>)> = ["metrics.csv", "eval.csv", "grad_norms.csv", "config.toml"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    std::fs::rename(dir.join("checkpoints"), tmp.path().join("moved")).unwrap();
    std::fs::write(dir.join("checkpoints"), b"not a folder").unwrap();
    expect_exit_2(resume(&dir, &[]), &["checkpoints is a regular file", "keel changed nothing"]);
    for (f, bytes) in &before {
        assert_eq!(&std::fs::read(dir.join(f)).unwrap(), bytes, "{f} was changed");
    }
}

// 4.
#[test]
fn eval_and_export_refuse_a_config_edited_after_the_run_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = finished(tmp.path(), "run");
    run_ok(eval_synthetic(&dir));
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("placement = \"keel\""), "{text}");
    std::fs::write(&config, text.replace("placement = \"keel\"", "placement = \"post_ln\"")).unwrap();
    let mut c = eval_synthetic(&dir);
    c.arg("--force");
    expect_exit_2(c, &["config.toml fails the checksum recorded in", "edited after the run finished"]);
    expect_exit_2(export(&dir, &tmp.path().join("hf")), &["config.toml fails the checksum"]);
}

// 5.
#[test]
fn a_damaged_summary_is_refused_and_a_missing_one_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = finished(tmp.path(), "run");
    let summary = dir.join("summary.json");
    let bytes = std::fs::read(&summary).unwrap();
    std::fs::write(&summary, &bytes[..bytes.len() / 2]).unwrap();
    expect_exit_2(eval_synthetic(&dir), &["summary.json is damaged", "does not parse"]);
    std::fs::remove_file(&summary).unwrap();
    std::fs::create_dir(&summary).unwrap();
    expect_exit_2(eval_synthetic(&dir), &["summary.json is damaged"]);
    std::fs::remove_dir(&summary).unwrap();
    // Absent: a run of an older keel, scored with a warning.
    let out = run_ok(eval_synthetic(&dir));
    assert!(stderr_of(&out).contains("not verified"), "{}", stderr_of(&out));
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success(), "mkfifo {}", path.display());
}

/// Runs `c` and expects exit 2 naming a FIFO within 30 s (a read of a FIFO would wait forever).
fn refuses_fifo(mut c: Command, what: &str) {
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = finish_within(child, Duration::from_secs(30), what);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{what}: exit {:?}\n{err}", out.status);
    assert!(err.contains("FIFO"), "{what}: {err}");
}

// 8.
#[test]
fn fifos_are_refused_instead_of_read() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let mut c = keel();
    c.args(["train", "--quiet", "--config"]).arg(&fifo);
    refuses_fifo(c, "--config");
    refuses_fifo(train(&d.join("a"), &["--set", &format!("data.source={}", fifo.display())]), "data.source");
    let data = prepared(d, "p");
    let shard = data.join("val_000.bin");
    mkfifo(&shard);
    refuses_fifo(train(&d.join("b"), &["--set", &format!("data.path={}", data.display())]), "a shard");

    let dir = finished(d, "run");
    let mut c = keel();
    c.args(["eval", "--bench", "mc-jsonl", "--data"]).arg(&fifo).arg("--run").arg(&dir);
    refuses_fifo(c, "eval --data");
    for f in ["metrics.csv", "config.toml"] {
        let path = dir.join(f);
        let kept = std::fs::read(&path).unwrap();
        mkfifo(&path);
        if f == "metrics.csv" {
            let mut c = keel();
            c.args(["plot", "--out"]).arg(d.join("fig")).arg(&dir);
            refuses_fifo(c, "plot's metrics.csv");
        } else {
            refuses_fifo(eval_synthetic(&dir), "eval with a FIFO config.toml");
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, kept).unwrap();
    }
    // The final weights, with no summary.json to check them first.
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    mkfifo(&dir.join("model.safetensors"));
    refuses_fifo(eval_synthetic(&dir), "eval's weights");

    // A checkpoint file and metrics.csv of a stopped run.
    let stopped = d.join("stopped");
    aborted_at(&stopped, 15, &[]);
    let metrics = stopped.join("metrics.csv");
    let kept = std::fs::read(&metrics).unwrap();
    mkfifo(&metrics);
    refuses_fifo(resume(&stopped, &[]), "resume's metrics.csv");
    std::fs::remove_file(&metrics).unwrap();
    std::fs::write(&metrics, kept).unwrap();
    mkfifo(&stopped.join("checkpoints/step_0000010/state.json"));
    let out = run_ok(resume(&stopped, &[]));
    assert!(stderr_of(&out).contains("FIFO"), "{}", stderr_of(&out));
}

/// Spawns `c` with `KEEL_FAULT_PAUSE=point` and returns once it says it is paused there, with a
/// thread that gathers the rest of its stderr.
fn spawn_paused(mut c: Command, point: &str) -> (Child, std::thread::JoinHandle<String>) {
    use std::io::BufRead;
    c.env("KEEL_FAULT_PAUSE", point).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("paused at") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    assert!(rx.recv_timeout(Duration::from_secs(60)).is_ok(), "{point}: never paused");
    (child, reader)
}

/// Waits for a signalled child: its exit status and its stderr.
fn ended(mut child: Child, reader: std::thread::JoinHandle<String>, what: &str) -> (Option<i32>, String) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("{what}: still running 20 s after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait().unwrap().code(), reader.join().unwrap())
}

fn shard_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("train_") || n.starts_with("val_"))
                .collect()
        })
        .unwrap_or_default()
}

// 9. and 14. (data prepare)
#[test]
fn an_interrupted_preparation_is_cleaned_up_or_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("docs.txt");
    let docs: String = (0..300).map(|i| format!("document {i} of an interrupted preparation.\n\n")).collect();
    std::fs::write(&input, docs).unwrap();
    let out = tmp.path().join("p");
    let paused = |out: &Path| {
        let (child, reader) = spawn_paused(prepare_cmd(&input, out, &["--shard-tokens", "2000"]), "prepare-batch");
        assert!(!shard_files(out).is_empty(), "no shard was written before the pause");
        (child, reader)
    };
    // SIGTERM: exit 130 with a message, and the partial shards are gone.
    let (child, reader) = paused(&out);
    signal(&child, "-TERM");
    let (code, err) = ended(child, reader, "prepare after SIGTERM");
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("stopped before it finished") && err.contains("were removed"), "{err}");
    assert!(shard_files(&out).is_empty(), "{:?}", shard_files(&out));
    // kill -9 leaves them; the same command then starts over.
    let (child, reader) = paused(&out);
    signal(&child, "-KILL");
    let _ = ended(child, reader, "prepare after SIGKILL");
    assert!(!shard_files(&out).is_empty());
    let o = run_ok(prepare_cmd(&input, &out, &["--shard-tokens", "2000"]));
    assert!(stderr_of(&o).contains("unfinished preparation"), "{}", stderr_of(&o));
    assert!(out.join("meta.json").exists());
    // A finished folder is still refused.
    expect_exit_2(prepare_cmd(&input, &out, &[]), &["already holds files"]);
}

// 10.
#[test]
fn a_moved_data_folder_resumes_when_its_data_is_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path(), "p");
    let dir = tmp.path().join("run");
    aborted_at(&dir, 15, &["--set", &format!("data.path={}", data.display())]);
    let moved = tmp.path().join("elsewhere");
    std::fs::rename(&data, &moved).unwrap();
    expect_exit_2(resume(&dir, &[]), &["does not exist", "data.path=NEW"]);
    let new_path = format!("data.path={}", moved.display());
    expect_exit_2(resume(&dir, &["--set", &new_path]), &["the same data, found elsewhere", "--force"]);
    let out = run_ok(resume(&dir, &["--set", &new_path, "--force"]));
    assert!(stderr_of(&out).contains("the same data"), "{}", stderr_of(&out));
    assert!(dir.join("DONE").exists());
    assert!(std::fs::read_to_string(dir.join("config.toml")).unwrap().contains(&moved.display().to_string()));
}

// 11.
#[test]
fn deleted_final_weights_are_restored_by_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = finished(tmp.path(), "run");
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    expect_exit_2(eval_synthetic(&dir), &["finished, but its model.safetensors is gone", "keel train --resume"]);
    let out = run_ok(resume(&dir, &[]));
    assert!(stderr_of(&out).contains("restored model.safetensors"), "{}", stderr_of(&out));
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), weights);
    run_ok(eval_synthetic(&dir));
}

fn chattr(flag: &str, path: &Path) {
    let ok = Command::new("chattr").arg(flag).arg(path).status().map(|s| s.success()).unwrap_or(false);
    assert!(
        ok,
        "chattr {flag} {} failed: this test needs root and a file system with file attributes (ext4)",
        path.display()
    );
}

// 12.
#[test]
fn a_run_directory_made_immutable_mid_run_stops_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut c = train(&dir, &["--set", "train.steps=100000", "--set", "train.checkpoint_every=50"]);
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let checkpoints = dir.join("checkpoints");
    assert!(wait_until(Duration::from_secs(60), || checkpoints.join("step_0000050").exists()));
    chattr("+i", &checkpoints);
    let out = finish_within(child, Duration::from_secs(60), "the run after chattr +i");
    chattr("-i", &checkpoints);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for n in ["checkpoints", "Operation not permitted", "chattr -R -i", "keel train --resume"] {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    for e in std::fs::read_dir(&checkpoints).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("step_") {
            assert!(e.path().join("SHA256SUMS").exists(), "{} was left half-pruned", e.path().display());
        }
    }
}

// 12. (pruning: a removal that fails leaves no emptied checkpoint)
#[test]
fn a_prune_that_is_refused_leaves_every_checkpoint_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = finished(tmp.path(), "run");
    let run = keel::run_dir::RunDir::at(&dir);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("checkpoints/step_0000020/state.json")).unwrap()).unwrap();
    let fingerprint = state["config_fingerprint"].as_str().unwrap().to_string();
    chattr("+i", &run.checkpoints());
    let pruned = keel::checkpoint::prune(&run, 1, None, &fingerprint);
    chattr("-i", &run.checkpoints());
    assert!(pruned.is_err());
    for step in [5, 10, 15, 20] {
        let ckpt = dir.join(format!("checkpoints/step_{step:07}"));
        for f in ["model.safetensors", "optimizer.safetensors", "state.json", "SHA256SUMS"] {
            assert!(ckpt.join(f).exists(), "{} lost {f}", ckpt.display());
        }
    }
}

// 13.
#[test]
fn eval_and_export_of_a_run_in_training_name_the_pid_and_say_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut c = train(&dir, &["--set", "train.steps=100000", "--set", "train.checkpoint_every=0"]);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(60), || std::fs::read_to_string(dir.join("metrics.csv"))
        .is_ok_and(|t| t.lines().count() > 2)));
    let pid = format!("PID {}", child.id());
    let e1 = std::panic::catch_unwind(|| expect_exit_2(eval_synthetic(&dir), &[&pid, "still training", "wait"]));
    let e2 = std::panic::catch_unwind(|| {
        expect_exit_2(export(&dir, &tmp.path().join("hf")), &[&pid, "still training", "wait"])
    });
    let _ = child.kill();
    let _ = child.wait();
    for e in [e1, e2] {
        let err = e.unwrap();
        assert!(!err.contains("--resume"), "the lock would refuse a resume:\n{err}");
    }
}

/// Starts `c` paused at `point`, waits for `ready`, sends SIGTERM, and expects exit 130 with a
/// message.
fn stopped_at(c: Command, point: &str) -> String {
    let (child, reader) = spawn_paused(c, point);
    signal(&child, "-TERM");
    let (code, err) = ended(child, reader, point);
    assert_eq!(code, Some(130), "{point}: exit {code:?}\n{err}");
    assert!(err.contains("stopped before it finished"), "{point}: {err}");
    err
}

// 14.
#[test]
fn eval_plot_export_and_collect_stop_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = finished(d, "run");
    // eval: paused after scoring, before writing.
    let results = d.join("ev");
    let mut c = eval_synthetic(&dir);
    c.arg("--out").arg(&results);
    let err = stopped_at(c, "eval-before-write");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!results.join("results.json").exists());
    let mut c = eval_synthetic(&dir);
    c.arg("--out").arg(&results);
    run_ok(c);
    // plot: paused with every figure drawn, before any is written.
    let figs = d.join("fig");
    let mut c = keel();
    c.args(["plot", "--out"]).arg(&figs).arg(&dir);
    let err = stopped_at(c, "plot-before-write");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!figs.join("loss.svg").exists(), "a figure was written");
    // export: paused after the weights; the partial export is removed.
    let hf = d.join("hf");
    let err = stopped_at(export(&dir, &hf), "export-after-weights");
    assert!(err.contains("was removed"), "{err}");
    assert!(!hf.exists(), "the partial export is still there");
    run_ok(export(&dir, &hf));
    // sweep --collect over the folder holding the run: summary.csv is written whole or not at all.
    let mut c = keel();
    c.args(["sweep", "--collect", "--out"]).arg(d);
    let err = stopped_at(c, "collect-before-write");
    assert!(err.contains("summary.csv is as it was"), "{err}");
    assert!(!d.join("summary.csv").exists());
    let mut c = keel();
    c.args(["sweep", "--collect", "--out"]).arg(d);
    run_ok(c);
    assert!(std::fs::read_to_string(d.join("summary.csv")).unwrap().lines().count() >= 2);
}

// 16.
#[test]
fn a_run_works_from_any_folder_and_says_so_when_its_data_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let input = d.join("docs.txt");
    let docs: String = (0..200).map(|i| format!("line {i} of a corpus prepared by relative path.\n\n")).collect();
    std::fs::write(&input, docs).unwrap();
    let mut c = prepare_cmd(Path::new("docs.txt"), Path::new("data/p"), &[]);
    c.current_dir(d);
    run_ok(c);
    let mut c = train(Path::new("runs/r"), &["--set", "data.path=data/p"]);
    c.current_dir(d);
    run_ok(c);
    let run = d.join("runs/r");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains(&format!("path = \"{}\"", d.join("data/p").display())), "{config}");
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let ppl = |cwd: &Path| {
        let mut c = keel();
        c.args(["eval", "--quiet", "--bench", "ppl", "--force", "--run"]).arg(&run).current_dir(cwd);
        c
    };
    run_ok(ppl(&elsewhere));
    std::fs::rename(d.join("data/p"), d.join("data/q")).unwrap();
    let err = expect_exit_2(ppl(&elsewhere), &["data/p (data.path) does not exist", "moved or deleted"]);
    assert!(!err.contains("data.source"), "{err}");
}

// 17.
#[test]
fn a_finished_run_is_not_extended() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = finished(tmp.path(), "run");
    let config = std::fs::read(dir.join("config.toml")).unwrap();
    expect_exit_2(resume(&dir, &["--set", "train.steps=40", "--force"]), &["finished at step 20", "new run"]);
    // DONE and summary.json deleted by hand: the final checkpoint still says it finished.
    std::fs::remove_file(dir.join("DONE")).unwrap();
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    expect_exit_2(resume(&dir, &["--set", "train.steps=40", "--force"]), &["finished at step 20"]);
    assert_eq!(std::fs::read(dir.join("config.toml")).unwrap(), config);
    assert_eq!(std::fs::read_to_string(dir.join("metrics.csv")).unwrap().lines().count(), 21);
}

// 21.
#[test]
fn a_deleted_shard_names_data_path_not_data_source() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path(), "p");
    std::fs::remove_file(data.join("train_001.bin")).unwrap();
    let err = expect_exit_2(
        train(&tmp.path().join("run"), &["--set", &format!("data.path={}", data.display())]),
        &["train_001.bin", "data.path", "prepare the data again"],
    );
    assert!(!err.contains("data.source"), "{err}");
}

// 22.
#[test]
fn out_names_the_run_unless_run_name_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
    };
    let dir = tmp.path().join("my-run");
    let mut c = train(&dir, &[]);
    c.args(["--config", "configs/quickstart.toml"]).current_dir(env!("CARGO_MANIFEST_DIR"));
    run_ok(c);
    assert_eq!(summary(&dir)["run_name"], "my-run");
    let named = tmp.path().join("other");
    run_ok(train(&named, &["--set", "run.name=chosen"]));
    assert_eq!(summary(&named)["run_name"], "chosen");
}
