//! Fine-tuning from a run (`train.init_from`, `--init-from`): a new run starts from a finished
//! run's weights or a checkpoint's, records the source and the sha256 of the file read in
//! config.toml's [meta], refuses (exit 2, nothing written) an architecture or tokenizer that
//! differs and a source that is missing, unfinished or damaged, and resumes byte for byte from its
//! own checkpoints without reading the source again.

use candle_core::Device;
use keel::config::Config;
use keel::data::{Corpus, Sampler};
use keel::model::Model;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tiny model (15k parameters) that trains 20 steps in a fraction of a second.
const TINY: [&str; 18] = [
    "--set",
    "model.depth=4",
    "--set",
    "model.d_model=16",
    "--set",
    "model.n_heads=2",
    "--set",
    "train.seq_len=16",
    "--set",
    "train.batch_size=4",
    "--set",
    "data.synthetic_bytes=20000",
    "--set",
    "train.eval_batches=2",
    "--set",
    "train.checkpoint_every=10",
    "--set",
    "train.warmup_steps=5",
];

fn keel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.env_remove("KEEL_FAULT_ABORT_IN_CHECKPOINT").env_remove("KEEL_FAULT_PAUSE_IN_CHECKPOINT");
    c
}

/// `keel train --quiet --out OUT` on the tiny model, with `extra` flags.
fn train(out: &Path, extra: &[&str]) -> Command {
    let mut c = keel();
    c.args(["train", "--quiet", "--out"]).arg(out).args(TINY).args(extra);
    c
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "exit {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// A finished source run of `steps` steps (checkpoints every 10).
fn source(out: &Path, steps: usize, extra: &[&str]) -> PathBuf {
    let steps = format!("train.steps={steps}");
    let mut args = vec!["--set", steps.as_str()];
    args.extend(extra);
    run_ok(train(out, &args));
    out.to_path_buf()
}

/// Exit status 2, with every needle in stderr, and `out` left unmade.
fn refused(c: Command, out: &Path, needles: &[&str]) -> String {
    let o = refused_anywhere(c, needles);
    assert!(!out.exists(), "a refused fine-tune left {} behind", out.display());
    o
}

fn refused_anywhere(mut c: Command, needles: &[&str]) -> String {
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in:\n{stderr}");
    }
    stderr
}

fn sha256(path: &Path) -> String {
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn meta(run: &Path) -> toml::Table {
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    text.parse::<toml::Table>().unwrap()["meta"].as_table().unwrap().clone()
}

fn init_from_key(run: &Path) -> Option<String> {
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let t = text.parse::<toml::Table>().unwrap();
    t["train"].get("init_from").and_then(|v| v.as_str()).map(String::from)
}

/// metrics.csv without the wall-clock columns.
fn metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect()
}

/// The loss of step 1 in a run's metrics.csv: computed on the run's first batch with the weights
/// before any update.
fn first_loss(run: &Path) -> f64 {
    metrics(run)[1].split(',').nth(3).unwrap().parse().unwrap()
}

/// The loss that the weights in `weights` give on the first training batch of `run` (its data,
/// seed and batch shape), computed here through the library: what `first_loss` of a run that
/// starts from those weights must be.
fn loss_on_first_batch(weights: &Path, run: &Path) -> f64 {
    let config = Config::load(Some(&run.join("config.toml")), &[]).unwrap();
    let t = &config.train;
    let corpus = Corpus::load(&config.data, t.seq_len).unwrap();
    let resolved = config.resolve(corpus.vocab_size).unwrap();
    let model = Model::new(&resolved, &Device::Cpu).unwrap();
    let tensors = candle_core::safetensors::load(weights, &Device::Cpu).unwrap();
    model.load_weights(&tensors).unwrap().unwrap();
    let (x, y) =
        Sampler::new(t.seed, "train-batches", t.batch_size, t.seq_len).next(&corpus.train, &Device::Cpu).unwrap();
    keel::optim::scalar(&model.loss(&x, &y).unwrap()).unwrap()
}

#[test]
fn a_fine_tune_starts_from_the_source_weights_and_records_them() {
    let tmp = tempfile::tempdir().unwrap();
    let a = source(&tmp.path().join("a"), 20, &[]);
    // Other data, seed, schedule and init_std (not an architecture key); the source given as a
    // relative path, recorded as an absolute one.
    let own = [
        "--set",
        "train.steps=10",
        "--set",
        "train.seed=7",
        "--set",
        "data.synthetic_seed=99",
        "--set",
        "train.lr=1e-3",
        "--set",
        "model.init_std=0.05",
    ];
    let b = tmp.path().join("b");
    let mut c = train(&b, &own);
    c.current_dir(tmp.path()).args(["--init-from", "a"]);
    run_ok(c);
    // The first step's loss is the source's weights' loss on the fine-tune's first batch, exactly.
    let expected = loss_on_first_batch(&a.join("model.safetensors"), &b);
    assert_eq!(first_loss(&b), expected);
    // The same run from random weights starts elsewhere (the check above can fail).
    let scratch = tmp.path().join("scratch");
    run_ok(train(&scratch, &own));
    assert_ne!(first_loss(&scratch), expected);
    // [meta] records the source and the sha256 of the file read; [train] keeps the key.
    let m = meta(&b);
    assert_eq!(m["init_from"].as_str().unwrap(), a.join("model.safetensors").display().to_string());
    assert_eq!(m["init_from_run"].as_str().unwrap(), a.display().to_string());
    assert_eq!(m["init_from_step"].as_integer().unwrap(), 20);
    assert_eq!(m["init_from_sha256"].as_str().unwrap(), sha256(&a.join("model.safetensors")));
    assert_eq!(init_from_key(&b).unwrap(), a.display().to_string());
    assert_eq!(meta(&scratch).get("init_from_sha256"), None);
    // The run's config.toml repeats it.
    let again = tmp.path().join("again");
    let mut c = keel();
    c.args(["train", "--quiet", "--config"]).arg(b.join("config.toml")).arg("--out").arg(&again);
    run_ok(c);
    assert_eq!(metrics(&again), metrics(&b));
    assert_eq!(
        std::fs::read(again.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
}

#[test]
fn a_checkpoint_is_a_source_as_run_at_step_or_as_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let a = source(&tmp.path().join("a"), 20, &[]);
    let ckpt = a.join("checkpoints/step_0000010");
    let at_step = tmp.path().join("at");
    run_ok(train(&at_step, &["--set", "train.steps=5", "--init-from", &format!("{}@10", a.display())]));
    let folder = tmp.path().join("folder");
    run_ok(train(&folder, &["--set", "train.steps=5", "--set", &format!("train.init_from={}", ckpt.display())]));
    let expected = loss_on_first_batch(&ckpt.join("model.safetensors"), &at_step);
    assert_ne!(
        expected,
        loss_on_first_batch(&a.join("model.safetensors"), &at_step),
        "step 10 is not the final weights"
    );
    for run in [&at_step, &folder] {
        assert_eq!(first_loss(run), expected);
        let m = meta(run);
        assert_eq!(m["init_from"].as_str().unwrap(), ckpt.join("model.safetensors").display().to_string());
        assert_eq!(m["init_from_step"].as_integer().unwrap(), 10);
        assert_eq!(m["init_from_sha256"].as_str().unwrap(), sha256(&ckpt.join("model.safetensors")));
    }
    assert_eq!(init_from_key(&at_step).unwrap(), format!("{}@10", a.display()));
    assert_eq!(metrics(&at_step), metrics(&folder));
}

#[test]
fn an_architecture_mismatch_names_every_key_with_both_values_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let a = source(&tmp.path().join("a"), 10, &[]);
    let from = format!("train.init_from={}", a.display());
    let out = tmp.path().join("ft");
    // Two keys that change shapes.
    let e = refused(
        train(&out, &["--set", &from, "--set", "model.depth=6", "--set", "model.d_model=32"]),
        &out,
        &[
            "architecture differs from this run's on 2 keys",
            "model.depth: 4 (source) vs 6 (this run)",
            "model.d_model: 16 (source) vs 32 (this run)",
            "--set model.depth=4 --set model.d_model=16",
            "remove train.init_from",
        ],
    );
    // Depth changes Keel's alpha = L too, but depth is the key to fix.
    assert!(!e.contains("model.alpha"), "{e}");
    // Keys that change only the function the same tensors compute.
    refused(
        train(
            &out,
            &[
                "--set",
                &from,
                "--set",
                "model.rope_theta=500",
                "--set",
                "model.norm_eps=1e-6",
                "--set",
                "model.keel_first_layer=v1",
                "--set",
                "model.alpha=2",
            ],
        ),
        &out,
        &[
            "on 4 keys",
            "model.rope_theta: 10000.0 (source) vs 500.0 (this run)",
            "model.norm_eps",
            "model.keel_first_layer: \"v2\" (source) vs \"v1\" (this run)",
            "model.alpha: \"L\" = 4 (source) vs 2.0 (this run)",
            "--set model.alpha=L",
            "--set model.keel_first_layer=v2",
        ],
    );
    // Another placement: its own default final norm follows it, and is not named; derived keys
    // given explicitly are.
    let e = refused(
        train(&out, &["--set", &from, "--set", "model.placement=pre_ln"]),
        &out,
        &["on 1 key:", "model.placement: \"keel\" (source) vs \"pre_ln\" (this run)", "--set model.placement=keel"],
    );
    assert!(!e.contains("final_norm"), "{e}");
    refused(
        train(
            &out,
            &[
                "--set",
                &from,
                "--set",
                "model.d_ff=40",
                "--set",
                "model.n_kv_heads=1",
                "--set",
                "model.final_norm=true",
            ],
        ),
        &out,
        &[
            "on 3 keys",
            "model.d_ff: 48 (source) vs 40 (this run)",
            "model.n_kv_heads: 2 (source) vs 1 (this run)",
            "model.final_norm: false (source) vs true (this run)",
        ],
    );
    // Alpha spelled as the number it is at this depth is the same model.
    run_ok(train(&out, &["--set", &from, "--set", "train.steps=2", "--set", "model.alpha=4"]));
}

/// Text of `paragraphs` blank-line separated paragraphs drawn from `words`.
fn text(words: &[&str], paragraphs: usize, seed: usize) -> String {
    let mut s = String::new();
    for p in 0..paragraphs {
        for i in 0..40 {
            s.push_str(words[(p * 7 + i * 3 + seed) % words.len()]);
            s.push(if i % 9 == 8 { '\n' } else { ' ' });
        }
        s.push_str("\n\n");
    }
    s
}

fn prepare(input: &Path, tokenizer: &str, out: &Path) {
    let mut c = keel();
    c.args(["data", "prepare", "--quiet", "--input"]).arg(input).args(["--tokenizer", tokenizer, "--out"]).arg(out);
    run_ok(c);
}

fn vocab_of(data: &Path) -> u64 {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("meta.json")).unwrap()).unwrap();
    meta["vocab_size"].as_u64().unwrap()
}

#[test]
fn a_tokenizer_other_than_the_data_s_is_refused_and_the_fix_works() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let one = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "omicron", "sigma"];
    let two = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "silver", "golden", "brown"];
    std::fs::write(d.join("one.txt"), text(&one, 80, 0)).unwrap();
    std::fs::write(d.join("two.txt"), text(&two, 80, 1)).unwrap();
    prepare(&d.join("one.txt"), "bpe:300", &d.join("p1"));
    prepare(&d.join("two.txt"), "bpe:300", &d.join("p2"));
    // The same vocabulary size: only the tokenizer check can refuse.
    assert_eq!(vocab_of(&d.join("p1")), vocab_of(&d.join("p2")));
    let on = |p: &str| format!("data.path={}", d.join(p).display());
    let a = source(&d.join("a"), 10, &["--set", &on("p1")]);
    let out = d.join("ft");
    let from = format!("train.init_from={}", a.display());
    let e = refused(
        train(&out, &["--set", &from, "--set", &on("p2")]),
        &out,
        &[
            "the source run's tokenizer",
            "p2/tokenizer.json",
            &format!("--tokenizer {}", a.join("tokenizer.json").display()),
        ],
    );
    assert!(!e.contains("architecture"), "{e}");
    // The fix: the other text prepared with the source's tokenizer.
    prepare(&d.join("two.txt"), &a.join("tokenizer.json").display().to_string(), &d.join("p3"));
    run_ok(train(&out, &["--set", &from, "--set", &on("p3"), "--set", "train.steps=3"]));
    // A byte-level source and BPE data: both problems listed at once.
    let bytes = source(&d.join("bytes"), 10, &[]);
    let out = d.join("ft2");
    let from = format!("train.init_from={}", bytes.display());
    refused(
        train(&out, &["--set", &from, "--set", &on("p2")]),
        &out,
        &["model.vocab_size: 256 (source) vs 300 (this run)", "the source run's tokenizer", "256 tokens", "300 tokens"],
    );
    // Text read as bytes is the byte-level source's tokenizer, and so is a folder prepared with it.
    prepare(&d.join("two.txt"), &bytes.join("tokenizer.json").display().to_string(), &d.join("p4"));
    run_ok(train(&out, &["--set", &from, "--set", &on("p4"), "--set", "train.steps=3"]));
    let out = d.join("ft3");
    let text_source = format!("data.source={}", d.join("two.txt").display());
    run_ok(train(&out, &["--set", &from, "--set", &text_source, "--set", "train.steps=3"]));
}

/// Polls `done` every few milliseconds for up to a minute; returns whether it came true.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == ".keel.lock" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    *bytes.last_mut().unwrap() ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn missing_unfinished_and_damaged_sources_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let a = source(&d.join("a"), 20, &[]);
    let out = d.join("ft");
    let from = |p: &Path| format!("train.init_from={}", p.display());
    // A path that does not exist; a folder that is not a run; a file.
    refused(train(&out, &["--set", &from(&d.join("nope"))]), &out, &["nope does not exist", "RUN@STEP"]);
    std::fs::create_dir(d.join("empty")).unwrap();
    refused(train(&out, &["--set", &from(&d.join("empty"))]), &out, &["is not a keel run directory"]);
    refused(
        train(&out, &["--set", &from(&a.join("model.safetensors"))]),
        &out,
        &["is a file", "give its run's folder"],
    );
    // A checkpoint that does not exist names those that do.
    refused(
        train(&out, &["--init-from", &format!("{}@7", a.display())]),
        &out,
        &["has no checkpoint of step 7", &format!("{}@20", a.display()), &format!("{}@10", a.display())],
    );
    // A run stopped before it finished (aborted while writing its final checkpoint); its
    // checkpoint is a source.
    let stopped = d.join("stopped");
    let o = train(&stopped, &["--set", "train.steps=20"]).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "20").output().unwrap();
    assert!(!o.status.success());
    refused(
        train(&out, &["--set", &from(&stopped)]),
        &out,
        &[
            "has not finished",
            &format!("keel train --resume {}", stopped.display()),
            &format!("{}@10", stopped.display()),
        ],
    );
    run_ok(train(&out, &["--init-from", &format!("{}@10", stopped.display()), "--set", "train.steps=2"]));
    std::fs::remove_dir_all(&out).unwrap();
    // A run still training (held in its checkpoint write of step 10).
    let busy = d.join("busy");
    let mut child = train(&busy, &["--set", "train.steps=20"])
        .env("KEEL_FAULT_PAUSE_IN_CHECKPOINT", "10")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(|| busy.join("checkpoints/.step_0000010.tmp/model.safetensors").exists()));
    refused(train(&out, &["--set", &from(&busy)]), &out, &["is still training", "PID"]);
    child.kill().unwrap();
    child.wait().unwrap();
    // A diverged run has no final weights.
    let diverged = d.join("diverged");
    run_ok(train(&diverged, &["--set", "train.steps=20", "--set", "train.lr=1e30", "--set", "train.warmup_steps=0"]));
    assert!(!diverged.join("model.safetensors").exists());
    refused(train(&out, &["--set", &from(&diverged)]), &out, &["diverged at step"]);
    // Damaged final weights fail summary.json's checksum; a damaged checkpoint its SHA256SUMS.
    let damaged = d.join("damaged");
    copy_dir(&a, &damaged);
    flip_last_byte(&damaged.join("model.safetensors"));
    flip_last_byte(&damaged.join("checkpoints/step_0000010/model.safetensors"));
    refused(train(&out, &["--set", &from(&damaged)]), &out, &["model.safetensors fails the checksum recorded"]);
    refused(
        train(&out, &["--init-from", &format!("{}@10", damaged.display())]),
        &out,
        &["step_0000010 cannot be used: model.safetensors fails its checksum"],
    );
    // Weights of another model in a run without summary.json (as an older keel left it): the
    // tensors do not fit.
    let wide = source(&d.join("wide"), 2, &["--set", "model.d_model=32"]);
    let foreign = d.join("foreign");
    copy_dir(&a, &foreign);
    std::fs::remove_file(foreign.join("summary.json")).unwrap();
    std::fs::copy(wide.join("model.safetensors"), foreign.join("model.safetensors")).unwrap();
    refused(train(&out, &["--set", &from(&foreign)]), &out, &["does not fit this run's model", "has shape [256, 32]"]);
    // None of this touched the source.
    assert_eq!(std::fs::read_to_string(a.join("DONE")).unwrap(), "finished\n");
}

#[test]
fn an_interrupted_fine_tune_resumes_byte_exact_without_reading_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let a = source(&d.join("a"), 20, &[]);
    let ft = [
        "--set",
        "train.steps=30",
        "--set",
        "train.eval_every=5",
        "--set",
        "train.grad_norm_every=4",
        "--set",
        "train.seed=3",
        "--init-from",
    ];
    let fine_tune = |out: &Path| {
        let mut c = train(out, &ft);
        c.arg(&a);
        c
    };
    let straight = d.join("straight");
    run_ok(fine_tune(&straight));
    // Aborted in the checkpoint of step 20 (the one of step 10 is there), and in the one of
    // step 10 (no checkpoint at all).
    let killed = d.join("killed");
    assert!(!fine_tune(&killed).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "20").output().unwrap().status.success());
    assert!(killed.join("checkpoints/step_0000010").exists());
    let early = d.join("early");
    assert!(!fine_tune(&early).env("KEEL_FAULT_ABORT_IN_CHECKPOINT", "10").output().unwrap().status.success());
    // The source goes away.
    let moved = d.join("a-moved");
    std::fs::rename(&a, &moved).unwrap();
    let resume = |run: &Path, extra: &[&str]| {
        let mut c = keel();
        c.args(["train", "--quiet", "--resume"]).arg(run).args(extra);
        c
    };
    // Another source is another experiment.
    refused_anywhere(
        resume(&killed, &["--set", &format!("train.init_from={}", moved.display())]),
        &["train.init_from", "cannot change on resume"],
    );
    // From its own checkpoint: the same run, byte for byte.
    let o = run_ok(resume(&killed, &[]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("step_0000010"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(metrics(&killed), metrics(&straight));
    assert_eq!(metrics(&killed).len(), 31);
    for f in ["eval.csv", "grad_norms.csv", "model.safetensors"] {
        assert!(std::fs::read(killed.join(f)).unwrap() == std::fs::read(straight.join(f)).unwrap(), "{f} differs");
    }
    assert_eq!(meta(&killed)["init_from_sha256"], meta(&straight)["init_from_sha256"]);
    // Without a checkpoint it starts over from the source's weights, which must be where they were.
    let before = std::fs::read_to_string(early.join("metrics.csv")).unwrap();
    refused_anywhere(
        resume(&early, &[]),
        &["no usable checkpoint, so it starts over from step 0", &a.join("model.safetensors").display().to_string()],
    );
    assert_eq!(std::fs::read_to_string(early.join("metrics.csv")).unwrap(), before, "a refused resume changed the run");
    std::fs::rename(&moved, &a).unwrap();
    run_ok(resume(&early, &[]));
    assert_eq!(metrics(&early), metrics(&straight));
    assert!(
        std::fs::read(early.join("model.safetensors")).unwrap()
            == std::fs::read(straight.join("model.safetensors")).unwrap()
    );
}
