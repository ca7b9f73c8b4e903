//! `keel sweep` end to end on tiny models: grid expansion and run names, summary.csv after a
//! diverged run, skipping finished runs, resuming an interrupted one, the Slurm emission, and
//! `--collect`; a killed sweep taking its runs with it, and a sweep surviving a rebuild of keel.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TINY: [&str; 12] = [
    "--set",
    "model.d_model=16",
    "--set",
    "model.n_heads=2",
    "--set",
    "train.seq_len=16",
    "--set",
    "train.steps=12",
    "--set",
    "data.synthetic_bytes=20000",
    "--set",
    "train.eval_every=6",
];

fn sweep(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).arg("sweep").args(TINY).args(extra).current_dir(dir).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_sweep_runs_its_grid_records_divergence_and_skips_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let args = ["--depths", "2..4", "--placements", "pre_ln,keel", "--lrs", "3e-3,1e30", "--jobs", "2", "--out", "sw"];
    let dry = ok(&sweep(d, &[&args[..], &["--dry-run"]].concat()));
    assert!(dry.contains("8 runs") && dry.contains("d2-pre_ln-lr3e-3") && !d.join("sw").exists(), "{dry}");
    assert!(dry.contains("d4-keel-lr1e30"));
    ok(&sweep(d, &args));
    let csv = std::fs::read_to_string(d.join("sw/summary.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(csv.lines().next().unwrap(), keel::sweep::SUMMARY_HEADER);
    assert_eq!(rows.len(), 8, "{csv}");
    let at = |name: &str| keel::sweep::SUMMARY_HEADER.split(',').position(|c| c == name).unwrap();
    for r in &rows {
        let diverged = !r[at("diverged_at_step")].is_empty();
        assert_eq!(diverged, r[0].contains("lr1e30"), "only the 1e30 runs diverge: {r:?}");
        assert_eq!(r[2], if r[0].starts_with("d2") { "2" } else { "4" });
        // Keel's alpha = L at the run's depth; nothing for Pre-LN, which has none.
        assert_eq!(r[at("alpha")], if r[1] == "keel" { r[2] } else { "" }, "{r:?}");
        if !diverged {
            assert!(r[at("final_val_loss")].parse::<f64>().unwrap() > 0.0, "val loss recorded: {r:?}");
        }
    }
    // Interrupt one run (drop its DONE marker and final rows) and re-run: the rest are skipped.
    let run = d.join("sw/d4-keel-lr3e-3");
    std::fs::remove_file(run.join("DONE")).unwrap();
    let out = ok(&sweep(d, &args));
    assert_eq!(out.matches("already finished").count(), 7, "{out}");
    assert!(out.contains("d4-keel-lr3e-3") && run.join("DONE").exists());
    // The same results, but for the wall-clock columns (tokens_per_s, wall_time_s) of that run.
    let without_clock = |t: &str| t.lines().map(|l| l.rsplitn(4, ',').nth(3).unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(without_clock(&std::fs::read_to_string(d.join("sw/summary.csv")).unwrap()), without_clock(&csv));
    let csv = std::fs::read_to_string(d.join("sw/summary.csv")).unwrap();
    // --collect rebuilds the same summary from the run directories.
    std::fs::remove_file(d.join("sw/summary.csv")).unwrap();
    ok(&sweep(d, &["--out", "sw", "--collect"]));
    assert_eq!(std::fs::read_to_string(d.join("sw/summary.csv")).unwrap(), csv);
}

#[test]
fn slurm_emission_and_bad_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(&sweep(d, &["--depths", "2,4,8", "--grid", "model.norm=rms_norm,layer_norm", "--out", "sl", "--emit", "slurm"]));
    let script = std::fs::read_to_string(d.join("sl/sweep.slurm")).unwrap();
    assert!(
        script.contains("#SBATCH --array=0-5") && script.contains("runs.txt") && script.contains("SLURM_ARRAY_TASK_ID"),
        "{script}"
    );
    let runs = std::fs::read_to_string(d.join("sl/runs.txt")).unwrap();
    assert_eq!(runs.lines().count(), 6);
    assert!(runs.lines().all(|l| l.starts_with("keel train --quiet --config ") && l.contains(" --out sl/d")), "{runs}");
    assert!(runs.contains("d8-normlayer_norm"));
    assert!(!d.join("sl/d2-normrms_norm").exists(), "emission trains nothing");
    // Data-parallel runs: each is `srun -n N keel train` in an allocation of N tasks.
    ok(&sweep(
        d,
        &["--depths", "2,4", "--set", "train.batch_size=4", "--out", "mp", "--emit", "slurm", "--ntasks-per-run", "2"],
    ));
    let script = std::fs::read_to_string(d.join("mp/sweep.slurm")).unwrap();
    assert!(script.contains("#SBATCH --ntasks=2") && script.contains("#SBATCH --array=0-1"), "{script}");
    let runs = std::fs::read_to_string(d.join("mp/runs.txt")).unwrap();
    assert!(runs.lines().count() == 2 && runs.lines().all(|l| l.starts_with("srun -n 2 keel train --quiet")), "{runs}");
    let o = sweep(
        d,
        &["--depths", "2", "--set", "train.batch_size=3", "--out", "odd", "--emit", "slurm", "--ntasks-per-run", "2"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not split across --ntasks-per-run 2"));
    assert!(!d.join("odd").exists(), "a refused emission wrote its folder");
    for (bad, needle) in [("1024..64", "64..1024"), ("7", "even"), ("8,x", "not a number")] {
        let o = sweep(d, &["--depths", bad, "--out", "x"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = sweep(d, &["--depths", "2", "--grid", "model.dpth=2,4", "--out", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("model.depth"));
}

#[test]
fn one_run_per_device() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = ok(&sweep(d, &["--depths", "2,4", "--seeds", "0,1", "--devices", "cpu,cpu", "--out", "dev"]));
    assert_eq!(out.matches(" done").count(), 4, "{out}");
    assert_eq!(std::fs::read_to_string(d.join("dev/summary.csv")).unwrap().lines().count(), 5);
    let o = sweep(d, &["--depths", "2", "--devices", "tpu", "--out", "bad"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAILED") || !o.status.success());
}

#[test]
fn eval_scores_become_summary_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = ok(&sweep(d, &["--depths", "2,4", "--eval", "synthetic,ppl", "--eval-limit", "12", "--out", "ev"]));
    assert!(!out.contains("FAILED"), "{out}");
    let csv = std::fs::read_to_string(d.join("ev/summary.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let extra = &header[keel::sweep::SUMMARY_HEADER.split(',').count()..];
    assert_eq!(extra, ["ppl_bits_per_byte", "ppl_perplexity", "synthetic_accuracy"], "{csv}");
    for row in csv.lines().skip(1) {
        let cells: Vec<&str> = row.split(',').collect();
        let ppl: f64 = cells[header.len() - 2].parse().unwrap();
        let acc: f64 = cells[header.len() - 1].parse().unwrap();
        assert!(ppl > 1.0 && ppl < 300.0 && (0.0..=1.0).contains(&acc), "{row}");
        let run = d.join("ev").join(cells[0]);
        let synth: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("eval/synthetic/results.json")).unwrap()).unwrap();
        assert_eq!(synth["examples"], 12);
    }
    // Re-running skips both the training and the finished evaluations.
    let again = ok(&sweep(d, &["--depths", "2,4", "--eval", "synthetic,ppl", "--eval-limit", "12", "--out", "ev"]));
    assert_eq!(again.matches("already finished").count(), 2, "{again}");
    assert!(!again.contains("FAILED"), "{again}");
    let o = sweep(d, &["--depths", "2", "--eval", "mmlu", "--out", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--eval-data"));
}

/// Processes whose command line mentions `needle` (a sweep's folder).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&needle))
        })
        .collect()
}

fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg(target_os = "linux")]
fn killing_a_sweep_ends_its_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("killed");
    // A run long enough to be caught in flight (minutes, unless it is stopped).
    let mut sweep = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("sweep")
        .args(TINY)
        .args(["--set", "train.steps=1000000", "--set", "train.checkpoint_every=0", "--depths", "2", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A step done: training has begun (a signal during start-up exits at once, without a checkpoint).
    let rows = || std::fs::read_to_string(out.join("d2/metrics.csv")).map(|t| t.lines().count()).unwrap_or(0);
    wait_for("the run's first step", Duration::from_secs(60), || rows() >= 2);
    assert!(!processes_mentioning(&out).is_empty());
    sweep.kill().unwrap(); // SIGKILL: the sweep gets no chance to clean up
    sweep.wait().unwrap();
    let start = Instant::now();
    loop {
        let left = processes_mentioning(&out);
        if left.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            for pid in &left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            panic!("keel train {left:?} outlived its killed sweep");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The run stopped cleanly (SIGTERM: checkpoint, exit 130) and resumes from its checkpoint.
    assert!(std::fs::read_dir(out.join("d2/checkpoints")).unwrap().count() > 0, "no checkpoint was written");
}

#[test]
fn a_sweep_keeps_the_binary_it_started_with() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("bin")).unwrap();
    let exe = d.join("bin/keel");
    std::fs::copy(env!("CARGO_BIN_EXE_keel"), &exe).unwrap();
    let args =
        ["--depths", "2,4,6", "--set", "train.steps=1500", "--eval", "synthetic", "--eval-limit", "4", "--out", "sw"];
    let mut cmd = Command::new(&exe);
    cmd.arg("sweep").args(TINY).args(args).current_dir(d).stdout(Stdio::piped()).stderr(Stdio::piped());
    // A freshly written executable can be briefly busy while another test thread forks.
    let mut tries = 0;
    let sweep = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 50 => tries += 1,
            other => break other.unwrap(),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    wait_for("the first run", Duration::from_secs(120), || d.join("sw/d2/DONE").exists());
    // "Rebuild" keel while runs remain (each takes about a second): the file the sweep started
    // from is removed and replaced.
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = sweep.wait_with_output().unwrap();
    let stdout = ok(&out);
    assert!(!stdout.contains("FAILED"), "{stdout}");
    for run in ["d2", "d4", "d6"] {
        assert!(d.join("sw").join(run).join("DONE").exists(), "{run}: {stdout}");
        assert!(d.join("sw").join(run).join("eval/synthetic/results.json").exists(), "{run}: {stdout}");
    }
}

/// summary.csv lists the runs in grid order: depth as a number, then placement in
/// `Placement::ALL`'s order; not the names' string order (d16 before d4).
#[test]
fn summary_rows_are_in_grid_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(&sweep(d, &["--depths", "4,16,8", "--placements", "keel,pre_ln", "--set", "train.steps=2", "--out", "go"]));
    let csv = std::fs::read_to_string(d.join("go/summary.csv")).unwrap();
    let rows: Vec<(usize, usize)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let r: Vec<&str> = l.split(',').collect();
            let p = keel::config::Placement::parse(r[1]).unwrap();
            (r[2].parse().unwrap(), keel::config::Placement::ALL.iter().position(|&q| q == p).unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 6, "{csv}");
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(rows, sorted, "{csv}");
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [4, 4, 8, 8, 16, 16], "{csv}");
    // A grid over alpha is ordered by its value, not by the names' strings (alpha1, alpha4L, alphaL).
    ok(&sweep(
        d,
        &[
            "--depths",
            "4",
            "--placements",
            "keel",
            "--grid",
            "model.alpha=L,4L,1,sqrtL",
            "--set",
            "train.steps=2",
            "--out",
            "al",
        ],
    ));
    let csv = std::fs::read_to_string(d.join("al/summary.csv")).unwrap();
    let alpha = keel::sweep::SUMMARY_HEADER.split(',').position(|c| c == "alpha").unwrap();
    let alphas: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').nth(alpha).unwrap()).collect();
    assert_eq!(alphas, ["1", "2", "4", "16"], "{csv}");
}

/// A refused sweep: exit status 2, nothing written, and the message on stderr.
fn refused(d: &Path, extra: &[&str]) -> String {
    let o = sweep(d, &[extra, &["--out", "refused"]].concat());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}{}", String::from_utf8_lossy(&o.stdout));
    assert!(!d.join("refused").exists(), "{extra:?}: a refused sweep wrote its folder");
    err
}

/// Two grid points with equal values (compared as values: 0.001 is 1e-3) would be one run trained
/// twice into one folder, or one config under two names.
#[test]
fn duplicate_grid_values_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (args, key, fix) in [
        (&["--depths", "2", "--lrs", "1e-3,1e-3"][..], "train.lr", "--lrs 1e-3"),
        (&["--depths", "2", "--lrs", "0.001,1e-3,2e-3"], "train.lr", "--lrs 1e-3,2e-3"),
        (&["--depths", "4,2,4"], "model.depth", "--depths 4,2"),
        (&["--depths", "2", "--placements", "keel,pre_ln,keel"], "model.placement", "--placements keel,pre_ln"),
        (&["--depths", "2", "--seeds", "0,0"], "train.seed", "--seeds 0"),
        (&["--depths", "2", "--grid", "train.lr=0.001,1e-3"], "train.lr", "--grid train.lr=0.001"),
        (&["--depths", "2", "--grid", "model.norm=rms_norm, rms_norm"], "model.norm", "--grid model.norm=rms_norm"),
    ] {
        let err = refused(d, args);
        assert!(err.contains(key) && err.contains("twice") && err.contains(fix), "{args:?}: {err}");
    }
    // Distinct values are fine, however they are written.
    let dry = ok(&sweep(d, &["--depths", "2", "--grid", "train.lr=0.001,2e-3", "--out", "x", "--dry-run"]));
    assert!(dry.contains("2 runs"), "{dry}");
}

/// One key given values by two flags: keel used to train one of them silently (and name the run
/// after the other); now it refuses, naming the key, both flags and the one flag to write instead.
#[test]
fn a_key_given_two_sources_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (args, key, sources, fix) in [
        (
            &["--depths", "2", "--lrs", "2e-3", "--grid", "train.lr=1e-3"][..],
            "train.lr",
            ["--lrs 2e-3", "--grid train.lr=1e-3"],
            "--lrs 2e-3,1e-3",
        ),
        (
            &["--depths", "4", "--grid", "model.depth=6"],
            "model.depth",
            ["--depths 4", "--grid model.depth=6"],
            "--depths 4,6",
        ),
        (&["--grid", "model.depth=6"], "model.depth", ["--depths 64..1024", "--grid model.depth=6"], "--depths 6"),
        (
            &["--depths", "2", "--seeds", "1", "--grid", "train.seed=0,2"],
            "train.seed",
            ["--seeds 1", "--grid train.seed=0,2"],
            "--seeds 1,0,2",
        ),
        (
            &["--depths", "2", "--placements", "keel", "--grid", "model.placement=pre_ln"],
            "model.placement",
            ["--placements keel", "--grid model.placement=pre_ln"],
            "--placements keel,pre_ln",
        ),
        (
            &["--depths", "2", "--grid", "model.norm=rms_norm", "--grid", "model.norm=layer_norm"],
            "model.norm",
            ["--grid model.norm=rms_norm", "--grid model.norm=layer_norm"],
            "--grid model.norm=rms_norm,layer_norm",
        ),
        (
            &["--depths", "2", "--lrs", "1e-3", "--set", "train.lr=2e-3"],
            "train.lr",
            ["--lrs 1e-3", "--set train.lr=2e-3"],
            "--lrs 1e-3,2e-3",
        ),
        (&["--set", "model.depth=4"], "model.depth", ["--depths 64..1024", "--set model.depth=4"], "--depths 4"),
        (
            &["--depths", "2", "--grid", "model.norm=rms_norm,layer_norm", "--set", "model.norm=rms_norm"],
            "model.norm",
            ["--grid model.norm=rms_norm,layer_norm", "--set model.norm=rms_norm"],
            "--grid model.norm=rms_norm,layer_norm",
        ),
        (
            &["--depths", "2", "--grid", "run.device=cpu", "--device", "cpu"],
            "run.device",
            ["--grid run.device=cpu", "--device cpu"],
            "once",
        ),
        (&["--depths", "2", "--set", "run.name=mine"], "run.name", ["--set run.name=mine", "grid point"], "once"),
    ] {
        let err = refused(d, args);
        assert!(err.contains(key) && sources.iter().all(|s| err.contains(s)) && err.contains(fix), "{args:?}: {err}");
    }
    // A key the sweep does not otherwise vary may be an axis of --grid alone, or fixed by --set.
    let dry = ok(&sweep(
        d,
        &["--depths", "2", "--grid", "train.lr=1e-3,2e-3", "--set", "model.norm=rms_norm", "--out", "x", "--dry-run"],
    ));
    assert!(dry.contains("2 runs") && dry.contains("d2-lr1e-3"), "{dry}");
}

/// Ctrl-C (SIGINT to the sweep alone, as `kill -INT` sends it) stops the sweep only once its runs
/// have written a checkpoint and exited: run folders are free the moment it returns, it exits 130
/// and names the command that continues.
#[test]
#[cfg(target_os = "linux")]
fn an_interrupted_sweep_waits_for_its_runs_and_says_how_to_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("int");
    // Runs long enough to be caught mid-training; their only checkpoint is the one a stop writes.
    let extra = ["--set", "train.steps=100000", "--set", "train.checkpoint_every=0", "--depths", "2,4", "--jobs", "2"];
    let mut args: Vec<String> = TINY.iter().chain(&extra).map(|s| s.to_string()).collect();
    args.extend(["--out".to_string(), out.to_string_lossy().into_owned()]);
    let sweep = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("sweep")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rows =
        |run: &str| std::fs::read_to_string(out.join(run).join("metrics.csv")).map(|t| t.lines().count()).unwrap_or(0);
    wait_for("both runs' first steps", Duration::from_secs(60), || rows("d2") >= 2 && rows("d4") >= 2);
    let signal = Command::new("kill").args(["-INT", &sweep.id().to_string()]).status().unwrap();
    assert!(signal.success());
    let start = Instant::now();
    let o = sweep.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // At once: no run of the sweep is still alive, and every run folder can be locked.
    let alive = processes_mentioning(&out);
    for pid in &alive {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(alive.is_empty(), "keel train {alive:?} outlived its interrupted sweep\n{stdout}\n{stderr}");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(130), "{stdout}\n{stderr}");
    for run in ["d2", "d4"] {
        let lock = std::fs::File::open(out.join(run).join(".keel.lock")).unwrap();
        assert!(lock.try_lock().is_ok(), "{run} is still locked");
        drop(lock);
        assert!(std::fs::read_dir(out.join(run).join("checkpoints")).unwrap().count() > 0, "{run}: no checkpoint");
    }
    assert!(stderr.contains("continue with") && stderr.contains(&format!("sweep {}", args.join(" "))), "{stderr}");
}
