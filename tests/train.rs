//! Training end to end: determinism, learning, gradient accumulation, divergence as a result.

mod common;
use candle_core::Device;
use keel::config::{Config, Resolved};
use keel::data::Corpus;
use keel::train::{train, ProgressMode, Start, Trainer};
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn resolve(sets: &[&str]) -> (Resolved, Corpus) {
    let mut all = vec![
        "model.depth=4",
        "model.d_model=32",
        "model.n_heads=2",
        "train.seq_len=32",
        "train.batch_size=4",
        "train.steps=12",
        "train.warmup_steps=3",
        "train.eval_every=4",
        "train.grad_norm_every=4",
        "train.eval_batches=2",
        "data.synthetic_bytes=50000",
    ];
    all.extend_from_slice(sets);
    let sets: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    let config = Config::load(None, &sets).unwrap();
    let corpus = Corpus::load(&config.data, config.train.seq_len).unwrap();
    (config.resolve(corpus.vocab_size).unwrap(), corpus)
}

fn run(sets: &[&str], dir: &Path) -> keel::run_dir::Summary {
    let (r, corpus) = resolve(sets);
    train(&r, &corpus, &Device::Cpu, dir, ProgressMode::Quiet, Start::Fresh, &AtomicBool::new(false)).unwrap().summary
}

/// metrics.csv without the wall-clock columns (tokens_per_s, elapsed_s).
fn metrics_without_clock(dir: &Path) -> Vec<Vec<String>> {
    let mut rd = csv::Reader::from_path(dir.join("metrics.csv")).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, keel::metrics::METRICS_HEADER);
    rd.records().map(|r| r.unwrap().iter().take(5).map(String::from).collect()).collect()
}

#[test]
fn same_seed_same_numbers_different_seed_different_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    for d in [&a, &b, &c] {
        std::fs::create_dir(d).unwrap();
    }
    for placement in ["keel", "pre_ln"] {
        let p = format!("model.placement={placement}");
        run(&[&p], &a);
        run(&[&p], &b);
        run(&[&p, "train.seed=1"], &c);
        let (ma, mb, mc) = (metrics_without_clock(&a), metrics_without_clock(&b), metrics_without_clock(&c));
        assert_eq!(ma.len(), 12);
        assert_eq!(ma, mb, "{placement}: same seed gave different metrics");
        for f in ["eval.csv", "grad_norms.csv"] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{placement}: {f} differs"
            );
        }
        assert_eq!(
            std::fs::read(a.join("model.safetensors")).unwrap(),
            std::fs::read(b.join("model.safetensors")).unwrap()
        );
        let losses = |m: &Vec<Vec<String>>| m.iter().map(|r| r[3].clone()).collect::<Vec<_>>();
        assert_ne!(losses(&ma), losses(&mc), "{placement}: a different seed gave the same losses");
    }
}

#[test]
fn quickstart_sized_model_learns_the_synthetic_tasks() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.toml")).unwrap();
    let mut config = Config::from_toml_str(&text).unwrap();
    // The quickstart's model and data, on a shorter budget.
    config.train.steps = 100;
    config.train.batch_size = 8;
    config.train.warmup_steps = 10;
    config.train.eval_every = 0;
    let corpus = Corpus::load(&config.data, config.train.seq_len).unwrap();
    let r = config.resolve(corpus.vocab_size).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = train(&r, &corpus, &Device::Cpu, tmp.path(), ProgressMode::Quiet, Start::Fresh, &AtomicBool::new(false))
        .unwrap()
        .summary;
    let (first, last) = (s.initial_loss.unwrap(), s.final_train_loss.unwrap());
    eprintln!("quickstart-sized loss {first:.3} -> {last:.3}, val {:?}", s.final_val_loss);
    assert!((first - 256f64.ln()).abs() < 0.1, "initial loss {first} should be near ln(256)");
    assert!(last < 0.6 * first, "loss only fell from {first} to {last}");
    assert!(s.final_val_loss.unwrap() < 0.6 * first);
}

/// grad_accum = 2 with batch B sees the same windows as one batch of 2B, so the first step's
/// loss and gradient norm agree (f64, up to summation order).
#[test]
fn gradient_accumulation_matches_a_larger_batch() {
    let common = ["train.precision=f64", "train.steps=1"];
    let (r1, corpus) = resolve(&[common[0], common[1], "train.batch_size=8"]);
    let (r2, _) = resolve(&[common[0], common[1], "train.batch_size=4", "train.grad_accum=2"]);
    let mut t1 = Trainer::new(&r1, &Device::Cpu).unwrap();
    let mut t2 = Trainer::new(&r2, &Device::Cpu).unwrap();
    let a = t1.step(&corpus, 1e-3).unwrap();
    let b = t2.step(&corpus, 1e-3).unwrap();
    assert!((a.loss - b.loss).abs() < 1e-12, "{} vs {}", a.loss, b.loss);
    assert!((a.grad_norm - b.grad_norm).abs() < 1e-10 * a.grad_norm, "{} vs {}", a.grad_norm, b.grad_norm);
    let (a, b) = (t1.step(&corpus, 1e-3).unwrap(), t2.step(&corpus, 1e-3).unwrap());
    assert!((a.loss - b.loss).abs() < 1e-10, "after one update: {} vs {}", a.loss, b.loss);
}

/// The grad_norm column is the norm before clipping: identical at step 1 with and without a clip
/// far below it, while the clipped run's later losses differ (the clip acted).
#[test]
fn grad_norm_column_is_the_norm_before_clipping() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    run(&["train.grad_clip=1e-3", "train.steps=4"], &a);
    run(&["train.grad_clip=0", "train.steps=4"], &b);
    let (ma, mb) = (metrics_without_clock(&a), metrics_without_clock(&b));
    let norm: f64 = ma[0][4].parse().unwrap();
    assert!(norm > 1e-2, "pre-clip norm {norm}");
    assert_eq!(ma[0][4], mb[0][4]);
    assert_ne!(ma[3][3], mb[3][3], "clipping had no effect on training");
}

#[test]
fn divergence_is_recorded_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let s = run(&["train.lr=1e30", "train.steps=20"], tmp.path());
    assert!(s.diverged);
    let at = s.diverged_at_step.unwrap();
    assert!(at < 20);
    assert_eq!(s.steps_completed, at - 1);
    let m = metrics_without_clock(tmp.path());
    assert_eq!(m.len(), at, "the diverging step is recorded");
    let last: Vec<f64> = m[at - 1][3..5].iter().map(|v| v.parse::<f64>().unwrap()).collect();
    assert!(last.iter().any(|v| !v.is_finite()));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["diverged"], true);
    assert_eq!(json["diverged_at_step"], at);
}

#[test]
fn grad_norm_rows_cover_every_sublayer_bottom_to_top() {
    let tmp = tempfile::tempdir().unwrap();
    run(&["model.placement=pre_ln", "train.steps=4"], tmp.path());
    let mut rd = csv::Reader::from_path(tmp.path().join("grad_norms.csv")).unwrap();
    assert_eq!(rd.headers().unwrap().iter().collect::<Vec<_>>(), keel::metrics::GRAD_NORMS_HEADER);
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    let step1: Vec<(String, String)> =
        rows.iter().filter(|r| &r[0] == "1").map(|r| (r[1].to_string(), r[2].to_string())).collect();
    let want: Vec<(String, String)> = std::iter::once(("".into(), "embedding".into()))
        .chain((0..4).map(|i| (i.to_string(), if i % 2 == 0 { "attn" } else { "ffn" }.to_string())))
        .chain([("".into(), "final_norm".into()), ("".into(), "head".into())])
        .collect();
    assert_eq!(step1, want);
    assert!(rows.iter().any(|r| &r[0] == "4"), "rows every grad_norm_every steps");
    assert!(rows.iter().all(|r| r[3].parse::<f64>().unwrap() > 0.0));
}

/// With `[divergence] stop = true` a run ends at the first detected divergence (here: it never
/// learns at a vanishing LR, so it stagnates from step 1), recorded with its reason.
#[test]
fn detected_divergence_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let s = run(
        &["train.lr=1e-12", "train.min_lr=0", "train.steps=60", "divergence.stop=true", "divergence.stall_window=10"],
        tmp.path(),
    );
    assert!(s.diverged);
    assert_eq!(s.diverged_at_step, Some(1));
    assert_eq!(s.divergence_reason.as_deref(), Some("stagnation"));
    assert_eq!(metrics_without_clock(tmp.path()).len(), 11, "stopped as soon as the stagnation was certain");
    let tmp2 = tempfile::tempdir().unwrap();
    let healthy = run(&["train.steps=30", "divergence.stop=true", "divergence.stall_window=1000"], tmp2.path());
    assert!(!healthy.diverged);
}

/// Recomputing each block in the backward pass changes memory, not numbers: the loss curve, the
/// gradient norms and the final weights equal those of the ordinary backward pass, bit for bit.
#[test]
fn block_recomputation_gives_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 4] = [
        &["model.placement=keel"],
        &["model.placement=pre_ln", "model.tie_embeddings=true"],
        &["model.placement=post_ln", "model.depth=6", "train.grad_accum=2"],
        &["model.placement=hybrid_norm", "model.norm=layer_norm", "model.ffn=gelu"],
    ];
    for (i, sets) in cases.iter().enumerate() {
        let (plain, re) = (tmp.path().join(format!("plain{i}")), tmp.path().join(format!("re{i}")));
        std::fs::create_dir(&plain).unwrap();
        std::fs::create_dir(&re).unwrap();
        run(sets, &plain);
        run(&[*sets, &["train.recompute=blocks"]].concat(), &re);
        let (a, b) = (metrics_without_clock(&plain), metrics_without_clock(&re));
        assert_eq!(a.len(), 12);
        assert_eq!(a, b, "{sets:?}: metrics differ with recomputation");
        for f in ["eval.csv", "grad_norms.csv", "model.safetensors"] {
            assert_eq!(std::fs::read(plain.join(f)).unwrap(), std::fs::read(re.join(f)).unwrap(), "{sets:?}: {f}");
        }
    }
}

/// Mixed precision (bf16 products, f32 everything else) tracks the f32 run, and keeps f32 master
/// weights; it runs on CPU too (slowly), so it is checked here and on GPUs by tests/cuda.rs.
#[test]
fn bf16_mixed_precision_tracks_f32() {
    let tmp = tempfile::tempdir().unwrap();
    for placement in ["keel", "pre_ln"] {
        let p = format!("model.placement={placement}");
        let (a, b) = (tmp.path().join(format!("f32-{placement}")), tmp.path().join(format!("bf16-{placement}")));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        run(&[&p], &a);
        let s = run(&[&p, "train.precision=bf16"], &b);
        assert!(!s.diverged);
        let (ma, mb) = (metrics_without_clock(&a), metrics_without_clock(&b));
        for (x, y) in ma.iter().zip(&mb) {
            let (lx, ly): (f64, f64) = (x[3].parse().unwrap(), y[3].parse().unwrap());
            assert!((lx - ly).abs() < 0.02 * lx, "{placement} step {}: f32 {lx} bf16 {ly}", x[0]);
        }
        assert_ne!(ma, mb, "bf16 products must change the numbers a little");
        let (r, _) = resolve(&[&p, "train.precision=bf16"]);
        let trainer = Trainer::new(&r, &Device::Cpu).unwrap();
        assert!(trainer.model.params.iter().all(|p| p.var.dtype() == candle_core::DType::F32));
    }
}

/// The flash-style tiled attention trains the same model as the kernel that keeps the
/// probabilities: losses within rounding (f64: 1e-9 relative, f32: 1e-3 over 12 steps, with
/// sequences of two tiles), and it is as reproducible (same bytes twice).
#[test]
fn tiled_attention_trains_like_saved_probabilities() {
    let tmp = tempfile::tempdir().unwrap();
    for (precision, tol) in [("f64", 1e-9), ("f32", 1e-3)] {
        let base = ["model.placement=keel", "train.seq_len=160"];
        let prec = format!("train.precision={precision}");
        let dirs: Vec<_> = ["saved", "tiled", "tiled-again"]
            .iter()
            .map(|n| {
                let d = tmp.path().join(format!("{n}-{precision}"));
                std::fs::create_dir(&d).unwrap();
                d
            })
            .collect();
        run(&[&base[..], &[&prec]].concat(), &dirs[0]);
        run(&[&base[..], &[&prec, "train.attention=tiled"]].concat(), &dirs[1]);
        run(&[&base[..], &[&prec, "train.attention=tiled"]].concat(), &dirs[2]);
        let (saved, tiled) = (metrics_without_clock(&dirs[0]), metrics_without_clock(&dirs[1]));
        assert_eq!(saved.len(), 12);
        for (x, y) in saved.iter().zip(&tiled) {
            let (lx, ly): (f64, f64) = (x[3].parse().unwrap(), y[3].parse().unwrap());
            assert!((lx - ly).abs() <= tol * lx, "{precision} step {}: saved {lx} tiled {ly}", x[0]);
        }
        assert_eq!(tiled, metrics_without_clock(&dirs[2]), "{precision}: tiled runs differ");
        assert_eq!(
            std::fs::read(dirs[1].join("model.safetensors")).unwrap(),
            std::fs::read(dirs[2].join("model.safetensors")).unwrap()
        );
    }
}

/// `train.kernels = "composite"` runs Candle's stock ops instead of keel's fused kernels (the switch
/// that isolates a wrong kernel on a GPU): the same function, so the same losses up to rounding
/// (tests/cli.rs checks that the choice is recorded in the run's config.toml).
#[test]
fn composite_kernels_train_like_the_fused_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (fused, composite) = (tmp.path().join("fused"), tmp.path().join("composite"));
    for d in [&fused, &composite] {
        std::fs::create_dir(d).unwrap();
    }
    let base = ["model.placement=keel", "train.precision=f64"];
    run(&base, &fused);
    run(&[&base[..], &["train.kernels=composite"]].concat(), &composite);
    let (a, b) = (metrics_without_clock(&fused), metrics_without_clock(&composite));
    assert_eq!(a.len(), 12);
    let mut differ = false;
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly): (f64, f64) = (x[3].parse().unwrap(), y[3].parse().unwrap());
        assert!((lx - ly).abs() <= 1e-9 * lx, "step {}: fused {lx} composite {ly}", x[0]);
        differ |= x[3] != y[3];
    }
    // Two implementations round differently: identical bytes would mean the switch did nothing.
    assert!(differ, "the composite run gave bit-identical losses: train.kernels had no effect");
}
