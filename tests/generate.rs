//! `keel generate` and incremental decoding: the KV cache against the full forward pass for every
//! placement, greedy and seeded sampling, and the command's refusals of bad inputs.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{resolve_with, to_vec};
use keel::data::tokenizer::KeelTokenizer;
use keel::decode::{self, Cached, Decoder, Request, SamplingOptions, Uncached};
use keel::model::{KvCache, Model};
use keel::placement::Placement;
use keel::rng::Rng;
use std::path::Path;
use std::process::Command;

/// A tiny model of `placement` with weights large enough that the logits differ clearly between
/// tokens (init_std 0.1: logits up to about 2), a byte vocabulary, and a context of `ctx`
/// positions. (At init_std 0.3 the softmaxes are so sharp that f32 rounding alone, the same
/// products summed in another order, moves Post-LN's logits by 3e-5.)
fn model(placement: &str, precision: &str, ctx: usize, extra: &[&str]) -> Model {
    let base = [
        "model.depth=8",
        "model.d_model=32",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "model.init_std=0.1",
        "train.batch_size=2",
    ];
    let seq = format!("train.seq_len={ctx}");
    let placement = format!("model.placement={placement}");
    let precision = format!("train.precision={precision}");
    let mut sets = vec![seq.as_str(), placement.as_str(), precision.as_str()];
    sets.extend_from_slice(extra);
    let r = resolve_with(&base, &sets, 256);
    Model::new(&r, &Device::Cpu).unwrap()
}

fn random_tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(256) as u32).collect()
}

/// Largest |a - b| over the logits of every position: the full forward over the whole sequence
/// against the cache fed the first `prefill` tokens at once, then one token at a time.
fn cache_vs_full(m: &Model, tokens: &[u32], prefill: usize) -> f64 {
    let all = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let full = m.forward(&all).unwrap();
    let mut cache = KvCache::new();
    let mut rows = vec![m.forward_cached(&all.narrow(1, 0, prefill).unwrap(), &mut cache).unwrap()];
    for t in prefill..tokens.len() {
        rows.push(m.forward_cached(&all.narrow(1, t, 1).unwrap(), &mut cache).unwrap());
    }
    assert_eq!(cache.len(), tokens.len());
    let cached = Tensor::cat(&rows, 0).unwrap();
    to_vec(&full).iter().zip(to_vec(&cached)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// The cache equality table: every placement, f64 and f32, prefill of 1 and of 5 tokens.
#[test]
fn cached_logits_equal_the_full_forward_for_every_placement() {
    let tokens = random_tokens(7, 16);
    let mut table = Vec::new();
    for p in Placement::ALL {
        for (precision, tol) in [("f64", 1e-10), ("f32", 1e-5)] {
            let m = model(p.as_str(), precision, 16, &[]);
            for prefill in [1, 5] {
                let d = cache_vs_full(&m, &tokens, prefill);
                table.push(format!("{:<12} {precision} prefill {prefill}: max |diff| {d:.2e}", p.as_str()));
                assert!(d <= tol, "{} {precision} prefill {prefill}: max |diff| {d:e} > {tol:e}", p.as_str());
            }
        }
    }
    println!("{}", table.join("\n"));
}

/// The options that change the sub-layers' insides: LayerNorm, GELU, no final norm, tied
/// embeddings, the composite kernels, Keel's v1 first block, multi-query attention.
#[test]
fn cached_logits_equal_the_full_forward_for_model_options() {
    let tokens = random_tokens(8, 12);
    for extra in [
        &["model.norm=layer_norm"][..],
        &["model.ffn=gelu"],
        &["model.final_norm=false"],
        &["model.tie_embeddings=true"],
        &["train.kernels=composite"],
        &["model.keel_first_layer=v1"],
        &["model.n_kv_heads=1"],
    ] {
        for (precision, tol) in [("f64", 1e-10), ("f32", 1e-5)] {
            let m = model("keel", precision, 12, extra);
            let d = cache_vs_full(&m, &tokens, 3);
            assert!(d <= tol, "{extra:?} {precision}: max |diff| {d:e} > {tol:e}");
        }
    }
}

/// A batch of two sequences through the cache equals the full forward of the batch.
#[test]
fn a_batch_decodes_through_the_cache_as_the_full_forward() {
    let m = model("keel", "f64", 10, &[]);
    let toks = Tensor::from_vec([random_tokens(1, 10), random_tokens(2, 10)].concat(), (2, 10), &Device::Cpu).unwrap();
    let full = m.forward(&toks).unwrap().reshape((2, 10, 256)).unwrap();
    let mut cache = KvCache::new();
    let first = m.forward_cached(&toks.narrow(1, 0, 4).unwrap(), &mut cache).unwrap().reshape((2, 4, 256)).unwrap();
    let mut parts = vec![first];
    for t in 4..10 {
        parts.push(m.forward_cached(&toks.narrow(1, t, 1).unwrap(), &mut cache).unwrap().reshape((2, 1, 256)).unwrap());
    }
    let cached = Tensor::cat(&parts, 1).unwrap();
    let d = to_vec(&full).iter().zip(to_vec(&cached)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(d < 1e-10, "batch: max |diff| {d:e}");
}

/// A left-padded batch (rows of 5, 2 and 9 tokens padded to 9, then 3 more tokens each) gives
/// every row the logits it gets alone, at every real position: RoPE counts from each row's first
/// token and padding is never attended to. Fused and composite kernels, f64 and f32.
#[test]
fn a_left_padded_batch_gives_each_row_its_own_logits() {
    let lens = [5usize, 2, 9];
    let width = 9;
    for kernels in ["train.kernels=fused", "train.kernels=composite"] {
        for (precision, tol) in [("f64", 1e-10), ("f32", 1e-5)] {
            let m = model("keel", precision, 16, &[kernels]);
            let rows: Vec<Vec<u32>> =
                lens.iter().enumerate().map(|(i, &n)| random_tokens(30 + i as u64, n + 3)).collect();
            let pads: Vec<usize> = lens.iter().map(|&n| width - n).collect();
            let grid: Vec<u32> = rows
                .iter()
                .zip(&pads)
                .flat_map(|(r, &p)| std::iter::repeat_n(255, p).chain(r[..r.len() - 3].iter().copied()))
                .collect();
            let mut cache = KvCache::left_padded(pads.clone());
            let mut got = vec![m
                .forward_cached(&Tensor::from_vec(grid, (3, width), &Device::Cpu).unwrap(), &mut cache)
                .unwrap()
                .reshape((3, width, 256))
                .unwrap()];
            for step in 0..3 {
                let next: Vec<u32> = rows.iter().map(|r| r[r.len() - 3 + step]).collect();
                let x = Tensor::from_vec(next, (3, 1), &Device::Cpu).unwrap();
                got.push(m.forward_cached(&x, &mut cache).unwrap().reshape((3, 1, 256)).unwrap());
            }
            let got = Tensor::cat(&got, 1).unwrap();
            for (b, row) in rows.iter().enumerate() {
                let alone =
                    m.forward(&Tensor::new(row.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
                let padded = got.get(b).unwrap().narrow(0, pads[b], row.len()).unwrap();
                let d = to_vec(&alone).iter().zip(to_vec(&padded)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(d <= tol, "{kernels} {precision} row {b}: max |diff| {d:e} > {tol:e}");
            }
        }
    }
}

/// Greedy decoding of a batch returns, for every row, the tokens that row gets decoded alone by
/// the batch decoder and by `keel generate`'s decoder; a row that is done stops growing.
#[test]
fn a_greedy_batch_decodes_each_prompt_as_alone() {
    let tok = KeelTokenizer::byte();
    for kernels in ["train.kernels=fused", "train.kernels=composite"] {
        let m = model("keel", "f64", 32, &[kernels]);
        let prompts: Vec<Vec<u32>> =
            [6usize, 1, 11, 3].iter().enumerate().map(|(i, &n)| random_tokens(40 + i as u64, n)).collect();
        let batch = decode::greedy_batch(&m, 256, &prompts, 12, |i, t| i == 3 && t.len() == 4).unwrap();
        assert_eq!(batch.iter().map(Vec::len).collect::<Vec<_>>(), [12, 12, 12, 4], "{kernels}");
        for (i, p) in prompts.iter().enumerate() {
            let alone = decode::greedy_batch(&m, 256, std::slice::from_ref(p), 12, |_, _| false).unwrap();
            let generated = run(
                &mut Cached::new(&m, &tok, "m".into()),
                &Request { stop_at_eot: false, ..request(p.clone(), 12, greedy()) },
            );
            assert_eq!(batch[i], alone[0][..batch[i].len()], "{kernels} row {i}");
            assert_eq!(alone[0], generated[0].tokens, "{kernels} row {i}");
        }
        let distinct: std::collections::BTreeSet<_> = batch.iter().flatten().collect();
        assert!(distinct.len() > 5, "the model should not emit one token only: {batch:?}");
    }
    // A prompt and budget past the context are refused, not decoded wrongly.
    let m = model("keel", "f64", 8, &[]);
    assert!(decode::greedy_batch(&m, 256, &[random_tokens(1, 6)], 3, |_, _| false).is_err());
}

/// Asking the cache for a position past the context is an error, not a wrong answer.
#[test]
fn the_cache_refuses_positions_past_the_context() {
    let m = model("keel", "f64", 4, &[]);
    let mut cache = KvCache::new();
    let x = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
    m.forward_cached(&x, &mut cache).unwrap();
    let more = Tensor::new(&[[5u32]], &Device::Cpu).unwrap();
    assert!(m.forward_cached(&more, &mut cache).is_err());
}

fn request(prompt: Vec<u32>, n: usize, sampling: SamplingOptions) -> Request {
    Request { prompt, max_new_tokens: n, sampling, stop: vec![], stop_at_eot: true, num_samples: 1 }
}

fn greedy() -> SamplingOptions {
    SamplingOptions { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
}

fn run(decoder: &mut dyn Decoder, req: &Request) -> Vec<decode::Sample> {
    decode::generate(decoder, req, |_| {}, &mut std::io::sink()).unwrap()
}

/// Greedy decoding gives the same tokens with and without the cache, for every placement, also
/// past the context (the window slides: 40 tokens from a context of 12).
#[test]
fn greedy_tokens_are_the_same_with_and_without_the_cache() {
    let tok = KeelTokenizer::byte();
    for p in Placement::ALL {
        let m = model(p.as_str(), "f32", 12, &[]);
        let req = request(random_tokens(3, 5), 40, greedy());
        let with = run(&mut Cached::new(&m, &tok, "m".into()), &req);
        let without = run(&mut Uncached::new(&m, &tok, "m".into()), &req);
        assert_eq!(with[0].tokens.len(), 40);
        assert_eq!(with[0].tokens, without[0].tokens, "{}", p.as_str());
        assert!(with[0].slides > 0, "the context should have slid");
        // The model does not emit one token only (else the comparison proves little).
        let distinct: std::collections::BTreeSet<_> = with[0].tokens.iter().collect();
        assert!(distinct.len() > 3, "{}: {:?}", p.as_str(), with[0].tokens);
    }
}

/// Greedy picks the argmax of the full forward's last row at every step.
#[test]
fn greedy_follows_the_argmax_of_the_full_forward() {
    let tok = KeelTokenizer::byte();
    let m = model("post_ln", "f64", 32, &[]);
    let prompt = random_tokens(4, 4);
    let out = run(&mut Cached::new(&m, &tok, "m".into()), &request(prompt.clone(), 10, greedy()));
    let mut seq = prompt;
    for &t in &out[0].tokens {
        let x = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = m.forward(&x).unwrap();
        let last = logits.get(seq.len() - 1).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        let argmax = (0..last.len()).fold(0, |best, i| if last[i] > last[best] { i } else { best });
        assert_eq!(t as usize, argmax);
        seq.push(t);
    }
}

/// The same seed gives the same samples, with or without the cache; another seed other samples;
/// several samples from one sampler differ from each other.
#[test]
fn seeded_sampling_is_reproducible() {
    let tok = KeelTokenizer::byte();
    let m = model("keel", "f32", 64, &[]);
    let sampling = SamplingOptions { temperature: 1.0, top_k: Some(50), top_p: Some(0.95), seed: 42 };
    let mut req = request(random_tokens(5, 3), 30, sampling.clone());
    req.num_samples = 2;
    let a = run(&mut Cached::new(&m, &tok, "m".into()), &req);
    let b = run(&mut Cached::new(&m, &tok, "m".into()), &req);
    let c = run(&mut Uncached::new(&m, &tok, "m".into()), &req);
    assert_eq!(a[0].tokens, b[0].tokens);
    assert_eq!(a[1].tokens, b[1].tokens);
    assert_eq!(a[0].tokens, c[0].tokens);
    assert_ne!(a[0].tokens, a[1].tokens);
    req.sampling.seed = 43;
    let d = run(&mut Cached::new(&m, &tok, "m".into()), &req);
    assert_ne!(a[0].tokens, d[0].tokens);
}

/// Top-k 1 is greedy whatever the temperature.
#[test]
fn top_k_one_is_greedy() {
    let tok = KeelTokenizer::byte();
    let m = model("pre_ln", "f32", 32, &[]);
    let prompt = random_tokens(6, 4);
    let g = run(&mut Cached::new(&m, &tok, "m".into()), &request(prompt.clone(), 12, greedy()));
    let k1 = SamplingOptions { temperature: 2.0, top_k: Some(1), top_p: None, seed: 9 };
    let s = run(&mut Cached::new(&m, &tok, "m".into()), &request(prompt, 12, k1));
    assert_eq!(g[0].tokens, s[0].tokens);
}

/// A stop string cuts the text before it and ends the sample; the streamed text equals the
/// sample's text.
#[test]
fn a_stop_string_ends_the_sample_before_it() {
    let tok = KeelTokenizer::byte();
    let m = model("keel", "f32", 64, &[]);
    let prompt = random_tokens(10, 3);
    let mut req = request(prompt, 30, greedy());
    let full = run(&mut Cached::new(&m, &tok, "m".into()), &req).remove(0);
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 12, "{:?}", full.text);
    let stop: String = chars[8..10].iter().collect();
    let expect = &full.text[..full.text.find(&stop).unwrap()];
    req.stop = vec![stop.clone()];
    let mut streamed = Vec::new();
    let cut = decode::generate(&mut Cached::new(&m, &tok, "m".into()), &req, |_| {}, &mut streamed).unwrap().remove(0);
    assert_eq!(cut.text, expect);
    assert_eq!(String::from_utf8(streamed).unwrap(), expect);
    assert_eq!(cut.finish, decode::Finish::Stop);
    assert!(cut.tokens.len() < full.tokens.len());
}

// ---------------------------------------------------------------- the command

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

/// Trains a tiny run on the built-in data (a few seconds).
fn trained_run(dir: &Path) {
    let out = keel()
        .args(["train", "--quiet", "--out"])
        .arg(dir)
        .args([
            "--set",
            "model.depth=4",
            "--set",
            "model.d_model=32",
            "--set",
            "model.n_heads=2",
            "--set",
            "train.seq_len=32",
            "--set",
            "train.steps=20",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.eval_every=0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_command_samples_and_refuses_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    trained_run(&dir);
    let gen = |extra: &[&str]| keel().arg("generate").arg("--run").arg(&dir).args(extra).output().unwrap();

    // Greedy, with and without the cache: the same tokens; JSON names them.
    let a = json(&gen(&["--prompt", "ab", "--temperature", "0", "--max-new-tokens", "40", "--json"]));
    let b = json(&gen(&["--prompt", "ab", "--temperature", "0", "--max-new-tokens", "40", "--json", "--no-cache"]));
    assert_eq!(a["samples"][0]["tokens"], b["samples"][0]["tokens"]);
    assert_eq!(a["prompt_tokens"], serde_json::json!([97, 98]));
    assert_eq!(a["samples"][0]["tokens"].as_array().unwrap().len(), 40);

    // Seeded samples are reproducible; streamed text starts with the prompt; speed on stderr.
    let s1 = gen(&["--prompt", "ab", "--seed", "5", "--top-k", "20", "--num-samples", "2", "--max-new-tokens", "20"]);
    let s2 = gen(&["--prompt", "ab", "--seed", "5", "--top-k", "20", "--num-samples", "2", "--max-new-tokens", "20"]);
    assert!(s1.status.success(), "{}", String::from_utf8_lossy(&s1.stderr));
    assert_eq!(s1.stdout, s2.stdout);
    let text = String::from_utf8_lossy(&s1.stdout);
    assert!(text.starts_with("ab"), "{text}");
    assert!(text.contains("\n---------------\nab"), "{text}");
    assert!(String::from_utf8_lossy(&s1.stderr).contains("tokens/s"));

    // The prompt from standard input.
    let mut child = keel()
        .args(["generate", "--temperature", "0", "--max-new-tokens", "40", "--json", "--run"])
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"ab").unwrap();
    }
    let piped = json(&child.wait_with_output().unwrap());
    assert_eq!(piped["samples"][0]["tokens"], a["samples"][0]["tokens"]);

    // Bad inputs: exit 2 with the fix.
    let long = "x".repeat(33);
    for (args, says) in [
        (vec!["--prompt", long.as_str()], "longer than the model's context"),
        (vec!["--prompt", "a", "--top-p", "0"], "--top-p"),
        (vec!["--prompt", "a", "--top-p", "1.5"], "--top-p"),
        (vec!["--prompt", "a", "--temperature", "-1"], "--temperature"),
        (vec!["--prompt", "a", "--top-k", "0"], "--top-k"),
    ] {
        let out = gen(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // A run that has not finished: no weights yet.
    let unfinished = tmp.path().join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::copy(dir.join("config.toml"), unfinished.join("config.toml")).unwrap();
    let out = keel().args(["generate", "--prompt", "a", "--run"]).arg(&unfinished).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not finished"), "{err}");
}

/// A Pre-LN run exported as a Llama folder samples the same greedy tokens through
/// candle-transformers' Llama (`--hf-model`) as the run itself.
#[test]
fn a_llama_export_generates_as_its_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = keel()
        .args(["train", "--quiet", "--out"])
        .arg(&dir)
        .args(["--set", "model.placement=pre_ln", "--set", "model.depth=4", "--set", "model.d_model=32"])
        .args(["--set", "model.n_heads=2", "--set", "train.seq_len=32", "--set", "train.steps=20"])
        .args(["--set", "train.batch_size=4", "--set", "train.eval_every=0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hf = tmp.path().join("hf");
    let out = keel().args(["export", "--run"]).arg(&dir).arg("--hf").arg(&hf).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let greedy = ["generate", "--prompt", "ab", "--temperature", "0", "--max-new-tokens", "40", "--json"];
    let from_run = json(&keel().args(greedy).arg("--run").arg(&dir).output().unwrap());
    let from_hf = json(&keel().args(greedy).arg("--hf-model").arg(&hf).output().unwrap());
    assert_eq!(from_run["samples"][0]["tokens"], from_hf["samples"][0]["tokens"]);
    assert_eq!(from_hf["samples"][0]["tokens"].as_array().unwrap().len(), 40);
}
