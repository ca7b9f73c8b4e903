//! Data-parallel training under `mpirun -np 2` against one process (built only with
//! `--features mpi`; needs Open MPI's `mpirun`, as `.ci/run` installs). Each rank runs one thread.
//!
//! Tolerances, for 12 f32 steps of a tiny model: losses, gradient norms and validation losses
//! within 1e-5 relative, final weights within 1e-4 of (1 + |w|) (measured: 8e-7); the two halves of
//! each batch are summed in another order than one process sums the whole batch, so the runs
//! agree within rounding, not bit for bit. Two runs with the same number of ranks are identical.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Command, Output};

const TINY: [&str; 22] = [
    "--set",
    "model.depth=4",
    "--set",
    "model.d_model=32",
    "--set",
    "model.n_heads=2",
    "--set",
    "train.seq_len=32",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.steps=12",
    "--set",
    "train.warmup_steps=3",
    "--set",
    "train.eval_every=4",
    "--set",
    "train.grad_norm_every=4",
    "--set",
    "train.eval_batches=2",
    "--set",
    "data.synthetic_bytes=50000",
];

fn keel() -> &'static str {
    env!("CARGO_BIN_EXE_keel")
}

/// `mpirun -np N keel ARGS`, one thread per rank, as root where CI runs; `plm isolated` starts
/// the ranks on this machine without ssh (Open MPI's default launcher needs ssh or rsh installed,
/// even for local ranks).
fn mpirun(n: usize, args: &[&str]) -> Command {
    let mut c = launcher();
    c.args(["-np", &n.to_string(), keel()]).args(args).env("RAYON_NUM_THREADS", "1");
    c
}

/// `mpirun` with the options every test uses, before the (first) program.
fn launcher() -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--mca", "plm", "isolated", "--oversubscribe", "--allow-run-as-root", "-x", "RAYON_NUM_THREADS=1"]);
    c
}

/// Two ranks started as two programs (MPMD): rank 0 and rank 1 each with its own working
/// directory (None: this one) and arguments.
fn two_programs(first: (Option<&Path>, &[&str]), second: (Option<&Path>, &[&str])) -> Output {
    let mut c = launcher();
    for (i, (dir, args)) in [first, second].into_iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-np", "1"]);
        if let Some(d) = dir {
            c.arg("-wdir").arg(d);
        }
        c.arg(keel()).args(args);
    }
    c.output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", "--quiet", "--out", out];
    a.extend_from_slice(&TINY);
    // On a multi-GPU machine (scripts/gpu_scaling.sh): KEEL_MPI_TEST_DEVICE=cuda, one GPU per rank.
    if let Some(d) = device() {
        a.extend_from_slice(&["--device", d]);
    }
    a.extend_from_slice(extra);
    a
}

fn device() -> Option<&'static str> {
    static D: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    D.get_or_init(|| std::env::var("KEEL_MPI_TEST_DEVICE").ok()).as_deref()
}

fn one_process(dir: &Path, extra: &[&str]) {
    let out = dir.to_str().unwrap();
    ok(Command::new(keel()).args(train_args(out, extra)).env("RAYON_NUM_THREADS", "1").output().unwrap());
}

fn two_ranks(dir: &Path, extra: &[&str]) {
    ok(mpirun(2, &train_args(dir.to_str().unwrap(), extra)).output().unwrap());
}

/// Every numeric cell of a CSV except the wall-clock columns, by row.
fn numbers(path: &Path) -> Vec<Vec<f64>> {
    let mut rd = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    rd.records()
        .map(|r| {
            r.unwrap()
                .iter()
                .zip(&header)
                .filter(|(_, h)| !matches!(h.as_str(), "tokens_per_s" | "elapsed_s" | "kind"))
                .map(|(v, _)| if v.is_empty() { -1.0 } else { v.parse().unwrap() })
                .collect()
        })
        .collect()
}

fn assert_close(a: &Path, b: &Path, tol: f64) {
    let (x, y) = (numbers(a), numbers(b));
    assert_eq!(x.len(), y.len(), "{} and {} have different row counts", a.display(), b.display());
    for (rx, ry) in x.iter().zip(&y) {
        for (u, v) in rx.iter().zip(ry) {
            assert!((u - v).abs() <= tol * u.abs().max(1e-12), "{}: {u} vs {v} (row {rx:?})", a.display());
        }
    }
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut v: Vec<_> = t.into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_same_run(a: &Path, b: &Path, tol: f64, weight_tol: f64) {
    for f in ["metrics.csv", "eval.csv", "grad_norms.csv"] {
        assert_close(&a.join(f), &b.join(f), tol);
    }
    for ((name, x), (_, y)) in weights(a).iter().zip(&weights(b)) {
        let d = x.iter().zip(y).map(|(p, q)| (p - q).abs() / (1.0 + p.abs())).fold(0f32, f32::max);
        assert!((d as f64) <= weight_tol, "{name} differs by {d}");
    }
}

#[test]
fn two_ranks_train_what_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two, again) = (tmp.path().join("one"), tmp.path().join("two"), tmp.path().join("again"));
    for placement in ["model.placement=keel", "model.placement=pre_ln"] {
        for d in [&one, &two, &again] {
            let _ = std::fs::remove_dir_all(d);
        }
        one_process(&one, &["--set", placement]);
        two_ranks(&two, &["--set", placement]);
        two_ranks(&again, &["--set", placement]);
        assert_same_run(&one, &two, 1e-5, 1e-4);
        // Only rank 0 wrote: one run directory, complete, and the same bytes twice.
        assert!(two.join("DONE").exists() && two.join("summary.json").exists());
        for f in ["metrics.csv", "eval.csv", "grad_norms.csv", "model.safetensors"] {
            let (x, y) = (std::fs::read(two.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap());
            if f == "metrics.csv" {
                assert_eq!(numbers(&two.join(f)), numbers(&again.join(f)), "{placement}: {f}");
            } else {
                assert_eq!(x, y, "{placement}: {f} differs between two 2-rank runs");
            }
        }
    }
    // Gradient accumulation splits each micro-batch the same way.
    let (one, two) = (tmp.path().join("one-accum"), tmp.path().join("two-accum"));
    one_process(&one, &["--set", "train.grad_accum=2"]);
    two_ranks(&two, &["--set", "train.grad_accum=2"]);
    assert_same_run(&one, &two, 1e-5, 1e-4);
}

#[test]
fn a_batch_that_does_not_split_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("odd");
    let out = mpirun(2, &train_args(dir.to_str().unwrap(), &["--set", "train.batch_size=3"])).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("train.batch_size = 3 does not split across the job's 2 ranks"), "{err}");
    assert!(!dir.exists(), "a refused job wrote {}", dir.display());
}

/// The job killed with SIGKILL mid-run, then resumed under mpirun: the same files as a job that
/// was never interrupted; resumed by one process instead: the same within rounding.
#[test]
fn a_killed_job_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let every = ["--set", "train.checkpoint_every=2", "--set", "train.steps=200"];
    two_ranks(&whole, &every);
    for resume_ranks in [2, 1] {
        let dir = tmp.path().join(format!("killed-{resume_ranks}"));
        let mut job = mpirun(2, &train_args(dir.to_str().unwrap(), &every)).spawn().unwrap();
        // Wait for a checkpoint past the first, then kill every rank and the launcher.
        let start = std::time::Instant::now();
        loop {
            let n = std::fs::read_dir(dir.join("checkpoints")).map(|d| d.count()).unwrap_or(0);
            if n >= 2 || start.elapsed().as_secs() > 60 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("{} train --quiet --out {}", keel(), dir.display())])
            .status();
        let _ = job.kill();
        let _ = job.wait();
        assert!(!dir.join("DONE").exists(), "the job finished before it was killed: make it longer");
        let resume = ["train", "--quiet", "--resume", dir.to_str().unwrap()];
        if resume_ranks == 2 {
            ok(mpirun(2, &resume).output().unwrap());
            // A finished run: every rank has nothing to do, and says so without hanging.
            let again = ok(mpirun(2, &resume).output().unwrap());
            assert!(String::from_utf8_lossy(&again.stdout).contains("already finished"));
            for f in ["eval.csv", "grad_norms.csv", "model.safetensors"] {
                assert_eq!(std::fs::read(whole.join(f)).unwrap(), std::fs::read(dir.join(f)).unwrap(), "{f}");
            }
            assert_eq!(numbers(&whole.join("metrics.csv")), numbers(&dir.join("metrics.csv")));
        } else {
            ok(Command::new(keel()).args(resume).env("RAYON_NUM_THREADS", "1").output().unwrap());
            assert_same_run(&whole, &dir, 1e-5, 1e-4);
        }
    }
}

/// A rank that dies takes the job down with it: the launcher ends with an error, no hang.
#[test]
fn a_dead_rank_ends_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dead");
    let mut job = mpirun(2, &train_args(dir.to_str().unwrap(), &["--set", "train.steps=100000"])).spawn().unwrap();
    let start = std::time::Instant::now();
    while !dir.join("metrics.csv").exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Kill the newest keel process of this job: rank 1 or rank 0, either must end the job.
    let _ = Command::new("pkill")
        .args(["-9", "-n", "-f", &format!("{} train --quiet --out {}", keel(), dir.display())])
        .status();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed().as_secs() < 60, "the job hung after one rank died");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(!dir.join("DONE").exists());
}

/// Ranks that would train on different data (here: a relative `data.source` read from two
/// working directories) are refused on every rank, exit status 2, before rank 0 writes anything.
#[test]
fn ranks_with_different_data_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    std::fs::write(a.join("corpus.txt"), "the quick brown fox jumps over the lazy dog. ".repeat(300)).unwrap();
    std::fs::write(b.join("corpus.txt"), "pack my box with five dozen liquor jugs. ".repeat(300)).unwrap();
    let run = tmp.path().join("run");
    let args = train_args(run.to_str().unwrap(), &["--set", "data.source=corpus.txt"]);
    let out = two_programs((Some(&a), &args), (Some(&b), &args));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the ranks of this job differ in data: rank 1"), "{err}");
    assert!(!run.exists(), "rank 0 wrote {} before the ranks agreed", run.display());
}

/// A rank started with another config (here one more `--set`) is refused the same way.
#[test]
fn ranks_with_different_configs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let args = train_args(run.to_str().unwrap(), &[]);
    let other = train_args(run.to_str().unwrap(), &["--set", "train.lr=1e-2"]);
    let out = two_programs((None, &args), (None, &other));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the ranks of this job differ in config: rank 1"), "{err}");
    assert!(!run.exists());
}
