//! The `keel` binary as a user meets it: bad configs, flags and paths give a one-screen message
//! naming the problem and the fix, exit status 2, no panic, and nothing already written is lost.

use std::path::Path;
use std::process::{Command, Output};

fn keel(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).args(args).current_dir(cwd).env("RUST_BACKTRACE", "1").output().unwrap()
}

/// Runs keel, expects exit status 2 and every `needles` in stderr, and no panic or backtrace.
fn expect_input_error(args: &[&str], cwd: &Path, needles: &[&str]) {
    let out = keel(args, cwd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: exit {:?}, stderr:\n{err}", out.status.code());
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
    }
    assert!(!err.contains("panicked") && !err.contains("stack backtrace"), "{args:?} panicked:\n{err}");
    assert!(err.lines().count() <= 25, "{args:?}: message longer than a screen:\n{err}");
}

const TINY: [&str; 14] = [
    "--set",
    "model.depth=2",
    "--set",
    "model.d_model=16",
    "--set",
    "model.n_heads=2",
    "--set",
    "train.steps=3",
    "--set",
    "train.seq_len=8",
    "--set",
    "data.synthetic_bytes=20000",
    "--set",
    "train.eval_every=2",
];

fn with_tiny<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend_from_slice(&TINY);
    v
}

#[test]
fn bad_configs_and_flags_exit_2_with_a_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("malformed.toml"), "[model\ndepth = 4\n").unwrap();
    std::fs::write(d.join("unknown.toml"), "[model]\ndepht = 4\n").unwrap();
    std::fs::write(d.join("section.toml"), "[trian]\nsteps = 4\n").unwrap();
    std::fs::write(d.join("type.toml"), "[model]\ndepth = \"deep\"\n").unwrap();
    std::fs::write(d.join("placement.toml"), "[model]\nplacement = \"preln\"\n").unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["train", "--config", "missing.toml"], &["cannot read config file", "missing.toml"]),
        (&["train", "--config", "malformed.toml"], &["not valid TOML", "line 1"]),
        (&["train", "--config", "unknown.toml"], &["model.depht", "did you mean `model.depth`"]),
        (&["train", "--config", "section.toml"], &["[trian]", "did you mean [train]"]),
        (&["train", "--config", "type.toml"], &["model.depth", "expected usize"]),
        (&["train", "--config", "placement.toml"], &["preln", "pre_ln"]),
        (&["train", "--set", "model.depth=0"], &["model.depth"]),
        (&["train", "--set", "model.depth=7"], &["odd", "6 or 8"]),
        (&["train", "--set", "train.lr=0"], &["train.lr", "> 0"]),
        (&["train", "--set", "train.lr=-1e-3"], &["train.lr"]),
        (&["train", "--set", "model.n_heads=3"], &["n_heads", "divide"]),
        (&["train", "--set", "model.n_kv_heads=3"], &["n_kv_heads"]),
        (&["train", "--set", "train.lrate=1"], &["did you mean `train.lr`"]),
        (&["train", "--set", "lr=1"], &["section"]),
        (&["train", "--set", "train.lr"], &["="]),
        (&["train", "--set", "train.kernels=cuda"], &["train.kernels", "fused", "composite"]),
        (&["train", "--bogus"], &["--bogus"]),
        (&["trian"], &["trian"]),
        (&["train", "--device", "cuda"], &["CUDA", "--device cpu"]),
        (&["train", "--device", "tpu"], &["unknown device"]),
        (&["train", "--set", "data.source=no/such/file.txt"], &["cannot read data file", "no/such/file.txt"]),
        (&["bench", "--steps", "0"], &["--steps"]),
        (&["bench", "--placements", "postln", "--steps", "1"], &["postln", "post_ln"]),
    ];
    for (args, needles) in cases {
        expect_input_error(args, d, needles);
    }
}

#[test]
fn a_run_writes_documented_files_and_never_overwrites_results() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = keel(&with_tiny(&["train", "--out", "runs/tiny"]), d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = d.join("runs/tiny");
    let header = |f: &str| std::fs::read_to_string(run.join(f)).unwrap().lines().next().unwrap().to_string();
    assert_eq!(header("metrics.csv"), "step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s");
    assert_eq!(header("eval.csv"), "step,val_loss,val_ppl");
    assert_eq!(header("grad_norms.csv"), "step,layer,kind,grad_norm");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for key in [
        "keel_version",
        "git_revision",
        "device = \"cpu\"",
        "dtype = \"f32\"",
        "seed = 0",
        "depth = 2",
        "kernels = \"fused\"",
    ] {
        assert!(config.contains(key), "config.toml lacks {key}:\n{config}");
    }
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    for key in [
        "final_train_loss",
        "final_val_loss",
        "diverged",
        "diverged_at_step",
        "tokens_per_s",
        "wall_time_s",
        "n_params",
    ] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    // The resolved config reproduces the run.
    let again = keel(&["train", "--config", "runs/tiny/config.toml", "--out", "runs/again", "--quiet"], d);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let losses = |dir: &str| -> Vec<String> {
        std::fs::read_to_string(d.join(dir).join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(losses("runs/tiny"), losses("runs/again"));
    // A second run into the same directory is refused and leaves the first run's files intact.
    let before = std::fs::read(run.join("metrics.csv")).unwrap();
    expect_input_error(&with_tiny(&["train", "--out", "runs/tiny"]), d, &["already holds files", "--out"]);
    assert_eq!(std::fs::read(run.join("metrics.csv")).unwrap(), before);
    // An output folder that cannot be created.
    std::fs::write(d.join("afile"), "x").unwrap();
    expect_input_error(&with_tiny(&["train", "--out", "afile/run"]), d, &["cannot create run directory"]);
}

#[test]
fn divergence_exits_0_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out =
        keel(&with_tiny(&["train", "--out", "div", "--set", "train.lr=1e30", "--set", "train.steps=30"]), tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DIVERGED at step"));
}

#[test]
fn text_file_data_and_bench_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), "the quick brown fox jumps over the lazy dog. ".repeat(200)).unwrap();
    let out = keel(&with_tiny(&["train", "--out", "t", "--quiet", "--set", "data.source=corpus.txt"]), d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(d.join("t/config.toml")).unwrap();
    assert!(config.contains("corpus.txt"));
    std::fs::write(d.join("latin1.txt"), b"caf\xe9 ".repeat(200)).unwrap();
    expect_input_error(&with_tiny(&["train", "--set", "data.source=latin1.txt"]), d, &["not UTF-8", "offset 3"]);
    let out = keel(
        &[
            "bench",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--set",
            "model.depth=2",
            "--set",
            "model.d_model=32",
            "--set",
            "train.seq_len=16",
            "--placements",
            "keel,pre_ln",
            "--csv",
            "bench.csv",
        ],
        d,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = std::fs::read_to_string(d.join("bench.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert_eq!(csv.lines().next().unwrap(), keel::bench::BENCH_CSV_HEADER);
    for row in csv.lines().skip(1) {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), keel::bench::BENCH_CSV_HEADER.split(',').count(), "{row}");
        assert_eq!(cells[0], "cpu");
        assert_eq!(cells[1], "f32");
        let num = |i: usize| cells[i].parse::<f64>().unwrap();
        // model GFLOP/s = GFLOP per step / seconds per step; the fraction of peak follows from it.
        assert!((num(15) - num(17) / (num(10) / 1e3)).abs() <= 0.06 * num(15) + 0.1, "{row}");
        assert!((num(19) - num(15) / num(18)).abs() < 0.01, "{row}");
        assert!(num(16) > 10.0, "peak RSS recorded: {row}");
        // The CPU and the SIMD levels that ran.
        assert!(!cells[20].is_empty(), "{row}");
        assert!(["avx512", "avx2+fma", "baseline", "aarch64"].contains(&cells[21]), "{row}");
        assert!(["avx512", "avx2", "baseline"].contains(&cells[22]), "{row}");
        assert_eq!(cells[23], "saved_probs", "{row}");
        assert_eq!(cells[24], "1", "one process: {row}");
    }
    // The fused kernels' level follows KEEL_SIMD; a bad value is refused.
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.args(["bench", "--steps", "1", "--warmup", "0", "--set", "model.depth=2", "--set", "model.d_model=32"])
        .args(["--set", "train.seq_len=16", "--csv", "capped.csv"])
        .current_dir(d)
        .env("KEEL_SIMD", "baseline");
    assert!(c.output().unwrap().status.success());
    let capped = std::fs::read_to_string(d.join("capped.csv")).unwrap();
    assert!(capped.lines().nth(1).unwrap().contains(",baseline,saved_probs,1,"), "{capped}");
    // The tiled attention is recorded; a CSV with another header is refused and left as it was.
    let tiny_bench = ["bench", "--steps", "1", "--warmup", "0", "--set", "model.depth=2", "--set", "model.d_model=32"];
    let tiled = [&tiny_bench[..], &["--set", "train.attention=tiled", "--csv", "capped.csv"]].concat();
    let out = keel(&tiled, d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let capped = std::fs::read_to_string(d.join("capped.csv")).unwrap();
    assert!(capped.lines().nth(2).unwrap().contains(",tiled,1,"), "{capped}");
    let old = "device,precision,tokens_per_s\ncpu,f32,123\n";
    std::fs::write(d.join("old.csv"), old).unwrap();
    let into_old = [&tiny_bench[..], &["--csv", "old.csv"]].concat();
    expect_input_error(&into_old, d, &["old.csv", "header", "new file"]);
    assert_eq!(std::fs::read_to_string(d.join("old.csv")).unwrap(), old);
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.args(["bench", "--steps", "1"]).env("KEEL_SIMD", "avx3");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEEL_SIMD=avx3 is not a SIMD level"));
    // --matmul: every product shape of the model, forward and backward, and 1024^3.
    let out = keel(&["bench", "--matmul"], d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<f64> =
        text.lines().skip(2).map(|l| l.split_whitespace().last().unwrap().parse::<f64>().unwrap()).collect();
    assert_eq!(rates.len(), keel::bench::model_matmul_shapes().len(), "{text}");
    assert!(rates.iter().all(|&g| g > 0.1), "{text}");
    assert!(text.contains("(128, 1024, 384)") && text.contains("(1024, 1024, 1024)"), "{text}");
}

/// Unmounts the tmpfs of a test when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, options: &str) -> Mount {
    std::fs::create_dir_all(at).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(at)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test simulates a full and a read-only disk with a tmpfs, which needs root (CI and sessions run as root)"
    );
    Mount(at.to_path_buf())
}

#[test]
fn full_and_read_only_disks_exit_2_and_keep_finished_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Full: room for a few checkpoints (~360 KB each), not for 200.
    let full = d.join("full");
    let _m = mount_tmpfs(&full, "size=2m");
    let args = [
        "--set",
        "model.depth=2",
        "--set",
        "model.d_model=32",
        "--set",
        "train.steps=400",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.keep_checkpoints=400",
        "--set",
        "data.synthetic_bytes=20000",
    ];
    let mut all = vec!["train", "--quiet", "--out", "full/run"];
    all.extend_from_slice(&args);
    expect_input_error(&all, d, &["No space left on device", "the disk is full", "--resume"]);
    let ckpt = full.join("run/checkpoints/step_0000002");
    assert!(ckpt.join("state.json").exists(), "the checkpoints written before the disk filled are intact");
    // Read-only: refused up front.
    let ro = d.join("ro");
    let _r = mount_tmpfs(&ro, "size=64k,ro");
    expect_input_error(
        &with_tiny(&["train", "--out", "ro/run"]),
        d,
        &["cannot create run directory", "Read-only file system"],
    );
}

#[test]
fn flags_that_would_have_no_effect_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = keel(&with_tiny(&["train", "--quiet", "--out", "run"]), d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stress_tiny = ["--depths", "2", "--placements", "keel", "--warmup-steps", "2", "--out", "st"];
    let cases: &[(&[&str], &[&str])] = &[
        (&["train", "--force"], &["--resume"]),
        (&["sweep", "--jobs", "0", "--depths", "2", "--dry-run"], &["--jobs", "0 is not in 1.."]),
        (&["sweep", "--jobs", "2", "--devices", "cpu,cpu", "--depths", "2", "--dry-run"], &["--jobs", "--devices"]),
        (&["stress", "--jobs", "0"], &["--jobs", "0 is not in 1.."]),
        (
            &["eval", "--bench", "ppl", "--run", "run", "--stride", "0", "--limit", "2"],
            &["--stride", "0 is not in 1.."],
        ),
        (&["eval", "--bench", "ppl", "--run", "run", "--batch-size", "0", "--limit", "2"], &["--batch-size"]),
        (
            &["train", "--out", "nl", "--set", "train.lr=1e-3\n[model]\ndepth=2"],
            &["line break", "one section.key=value per --set"],
        ),
    ];
    for (args, needles) in cases {
        let mut args = args.to_vec();
        match args[0] {
            "stress" => args.extend_from_slice(&stress_tiny),
            "eval" => {}
            _ => args.extend_from_slice(&TINY),
        }
        expect_input_error(&args, d, needles);
    }
    assert!(!d.join("nl").exists() && !d.join("st").exists(), "nothing was started");
    assert!(!d.join("run/eval").exists(), "no evaluation was written");
}

/// `[meta]` is what keel records about a run, not a setting: a `--set` into it is refused (a
/// run's config.toml, `[meta]` included, still loads); `--force` and `--accept-data-change` only
/// mean something with `--resume`, whatever else is on the line.
#[test]
fn meta_sets_and_resume_flags_without_resume_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("x.toml"), "[train]\nsteps = 3\n[meta]\nseed = 5\nbogus = 1\n").unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["train", "--out", "m1", "--set", "meta.seed=5"], &["meta.seed", "[meta]", "train.seed"]),
        (&["train", "--out", "m2", "--set", "meta.bogus=1"], &["meta.bogus", "[meta]"]),
        (&["train", "--config", "x.toml", "--force", "--out", "f1"], &["--force", "--resume"]),
        (&["train", "--out", "f2", "--force"], &["--force", "--resume"]),
        (&["train", "--force", "--config", "x.toml", "--quiet", "--out", "f3"], &["--force", "--resume"]),
        (
            &["train", "--config", "x.toml", "--accept-data-change", "--out", "f4"],
            &["--accept-data-change", "--resume"],
        ),
        (&["train", "--accept-data-change", "--force"], &["--resume"]),
        (&["train", "--accept-data-change"], &["--accept-data-change", "--resume"]),
    ];
    for (args, needles) in cases {
        expect_input_error(&with_tiny(args), d, needles);
    }
    for dir in ["m1", "m2", "f1", "f2", "f3", "f4", "runs"] {
        assert!(!d.join(dir).exists(), "{dir}: nothing was started");
    }
    // A config file's [meta] (a run's config.toml passed back) is accepted and ignored.
    let out = keel(&with_tiny(&["train", "--config", "x.toml", "--quiet", "--out", "ok"]), d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Float keys take finite numbers in a documented range, written as decimals.
#[test]
fn non_finite_out_of_range_and_hex_floats_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("hex.toml"), "[train]\nlr = 0x10\n").unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["train", "--out", "a", "--set", "model.norm_eps=inf"], &["model.norm_eps = inf", "finite"]),
        (&["train", "--out", "b", "--set", "model.norm_eps=1e308"], &["model.norm_eps = 1e308", "<= 1"]),
        (&["train", "--out", "c", "--set", "train.lr=nan"], &["train.lr = NaN"]),
        (&["train", "--out", "d", "--config", "hex.toml"], &["train.lr = 0x10", "hexadecimal", "16"]),
        (&["train", "--out", "e", "--set", "train.lr=0x10"], &["train.lr = 0x10", "decimal"]),
    ];
    for (args, needles) in cases {
        expect_input_error(&with_tiny(args), d, needles);
    }
    for dir in ["a", "b", "c", "d", "e"] {
        assert!(!d.join(dir).exists(), "{dir}: nothing was started");
    }
}

/// Mix-LN whose Post-LN fraction rounds down to no block is Pre-LN under another name.
#[test]
fn mix_ln_without_a_post_ln_block_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // TINY first, so that the case's own model.depth wins.
    let mut args = vec!["train"];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(&["--out", "m", "--set", "model.placement=mix_ln", "--set", "model.depth=4"]);
    expect_input_error(&args, d, &["mix_ln_fraction = 0.25 of 2 blocks", "Post-LN", ">= 0.5", ">= 8", "pre_ln"]);
    assert!(!d.join("m").exists(), "nothing was started");
}

/// Started by a launcher as one rank of several, a build without MPI says so instead of training
/// the whole experiment once per rank.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_a_multi_rank_launch() {
    let tmp = tempfile::tempdir().unwrap();
    for (size, rank) in [("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID")] {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(with_tiny(&["train", "--out", "t"]))
            .current_dir(tmp.path())
            .env(size, "2")
            .env(rank, "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("rank 1 of 2") && err.contains("--features mpi"), "{err}");
        assert!(!tmp.path().join("t").exists());
    }
}
