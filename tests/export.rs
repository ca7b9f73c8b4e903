//! `keel export` and the Hugging Face Llama scorer: a Pre-LN RMSNorm SwiGLU run exported as a
//! Llama folder computes the same logits in candle-transformers' own `Llama` as in keel, scores
//! requests like `KeelLm` (from a folder, shards or the hub cache), and every other placement is
//! written in keel's own format. Tiny models only.

mod common;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
use common::{randn, resolve_with};
use keel::config::Resolved;
use keel::eval::{self, KeelLm, LanguageModel, Request, Scored};
use keel::export::{export_dir, Format};
use keel::model::Model;
use keel::rng::Rng;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// A tiny experiment: d_model 32, 4 heads, 2 KV heads, 2 blocks, seq 16, vocab 256, f32, with
/// weights large enough (init_std 0.3) that the logits are far from uniform.
fn resolved(sets: &[&str]) -> Resolved {
    let base = [
        "model.placement=pre_ln",
        "model.depth=4",
        "model.d_model=32",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "model.d_ff=48",
        "model.init_std=0.3",
        "model.vocab_size=256",
        "train.seq_len=16",
        "train.precision=f32",
    ];
    resolve_with(&base, sets, 256)
}

/// Writes a run directory (config.toml + model.safetensors) for `r`, with norm gains and biases
/// randomized too, so a misplaced norm shows in the logits.
fn make_run(dir: &Path, r: &Resolved, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let model = Model::new(r, &Device::Cpu).unwrap();
    for (i, p) in model.params.iter().enumerate() {
        if p.var.dims().len() == 1 {
            let noise = (randn(seed * 1000 + i as u64, p.var.dims(), p.var.dtype()) * 0.3).unwrap();
            let t = if p.name.ends_with(".weight") { (noise + 1.0).unwrap() } else { noise };
            p.var.set(&t).unwrap();
        }
    }
    let tensors: HashMap<String, Tensor> =
        model.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.toml"), r.to_toml(toml::Table::new())).unwrap();
}

fn random_tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(256) as u32).collect()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Keel's logits at the last position of `tokens`.
fn keel_last_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let x = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&x).unwrap();
    logits.get(tokens.len() - 1).unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Exports a pre_ln run and checks candle-transformers' own Llama against keel's forward pass.
fn check_llama_export(sets: &[&str], tied: bool, kv_heads: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let (run_dir, out) = (tmp.path().join("run"), tmp.path().join("hf"));
    let r = resolved(sets);
    make_run(&run_dir, &r, 7);
    let done = export_dir(&run_dir, &out).unwrap();
    assert_eq!(done.format, Format::Llama, "{sets:?}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "tokenizer_config.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("model.safetensors")).unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "the weights are readable by others: {mode:o}");
    }
    // A byte tokenizer has no end-of-text token: the newline byte stands in, never added.
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(tc["eos_token"], "\u{10a}");
    assert_eq!((tc["add_bos_token"].clone(), tc["add_eos_token"].clone()), (false.into(), false.into()));

    let json = read_json(&out.join("config.json"));
    assert_eq!(json["model_type"], "llama");
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    assert_eq!(json["num_hidden_layers"], 2);
    assert_eq!(json["num_attention_heads"], 4);
    assert_eq!(json["num_key_value_heads"], kv_heads);
    assert_eq!(json["hidden_size"], 32);
    assert_eq!(json["intermediate_size"], 48);
    assert_eq!(json["max_position_embeddings"], 16);
    assert_eq!(json["vocab_size"], 256);
    assert_eq!(json["tie_word_embeddings"], tied);
    assert_eq!(json["hidden_act"], "silu");
    assert_eq!(json["torch_dtype"], "float32");

    let weights = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(weights.contains_key("lm_head.weight"), !tied);
    assert!(weights.keys().all(|k| k.starts_with("model.") || k == "lm_head.weight"), "{:?}", weights.keys());
    assert_eq!(weights["model.layers.1.self_attn.q_proj.weight"].dims(), &[32, 32]);
    assert_eq!(weights["model.layers.1.self_attn.k_proj.weight"].dims(), &[8 * kv_heads, 32]);
    assert_eq!(weights["model.layers.0.mlp.down_proj.weight"].dims(), &[32, 48]);
    assert_eq!(weights.len(), 2 + 9 * 2 + usize::from(!tied));

    // candle-transformers' own loader, as a user would call it.
    let cfg: LlamaConfig = serde_json::from_value(json).unwrap();
    let cfg = cfg.into_config(false);
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[out.join("model.safetensors")], DType::F32, &Device::Cpu)
    }
    .unwrap();
    let llama = Llama::load(vb, &cfg).unwrap();
    let run = eval::load_run(&run_dir, &Device::Cpu).unwrap();
    for (seed, len) in [(1, 1), (2, 2), (3, 7), (4, 16)] {
        let tokens = random_tokens(seed, len);
        let want = keel_last_logits(&run.model, &tokens);
        let mut cache = Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
        let x = Tensor::new(tokens.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let got: Vec<f32> = llama.forward(&x, 0, &mut cache).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let spread = want.iter().cloned().fold(f32::MIN, f32::max) - want.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 1.0, "logits too flat to test anything (spread {spread})");
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{sets:?} length {len}: candle Llama vs keel max |diff| {d}");
    }
}

#[test]
fn pre_ln_export_matches_candle_llama_untied() {
    check_llama_export(&[], false, 2);
}

#[test]
fn pre_ln_export_matches_candle_llama_tied() {
    check_llama_export(&["model.tie_embeddings=true", "model.n_kv_heads=1", "model.rope_theta=500"], true, 1);
}

/// Requests with multi-token continuations, repeated contexts (as multiple choice), a context
/// extending the previous one, and continuations keel decodes greedily.
fn requests(model: &Model) -> Vec<Request> {
    let mut out = Vec::new();
    let ctx = random_tokens(10, 6);
    for (i, n) in [1, 3, 2, 1].into_iter().enumerate() {
        out.push(Request { tokens: [ctx.clone(), random_tokens(20 + i as u64, n)].concat(), cont_start: 6 });
    }
    // Extends the previous context.
    let longer = [ctx.clone(), random_tokens(30, 3)].concat();
    out.push(Request { tokens: [longer.clone(), random_tokens(31, 2)].concat(), cont_start: longer.len() });
    // A shorter context after a longer one, and a one-token context.
    out.push(Request { tokens: random_tokens(40, 5), cont_start: 2 });
    out.push(Request { tokens: random_tokens(41, 3), cont_start: 1 });
    // Greedy continuations (by keel), the longest filling the whole context of 16.
    for (seed, ctx_len, n) in [(50u64, 4usize, 3usize), (51, 9, 8), (52, 1, 1)] {
        let mut tokens = random_tokens(seed, ctx_len);
        for _ in 0..n {
            let logits = keel_last_logits(model, &tokens);
            let arg = logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
            tokens.push(arg as u32);
        }
        out.push(Request { tokens, cont_start: ctx_len });
    }
    out
}

fn score(lm: &mut dyn LanguageModel, reqs: &[Request]) -> Vec<Scored> {
    let mut done = 0;
    let s = lm.score(reqs, &mut |n| done += n).unwrap();
    assert_eq!(done, reqs.len());
    s
}

fn assert_same_scores(a: &[Scored], b: &[Scored], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x.logprob - y.logprob).abs() < 1e-4, "{what} request {i}: logprob {} vs {}", x.logprob, y.logprob);
        assert_eq!(x.greedy, y.greedy, "{what} request {i}: greedy");
        assert_eq!(x.n_tokens, y.n_tokens, "{what} request {i}: n_tokens");
    }
}

#[test]
fn hf_scorer_agrees_with_keel_lm_from_folder_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let (run_dir, out) = (tmp.path().join("run"), tmp.path().join("hf"));
    make_run(&run_dir, &resolved(&[]), 11);
    export_dir(&run_dir, &out).unwrap();

    let mut keel_lm = KeelLm::new(eval::load_run(&run_dir, &Device::Cpu).unwrap(), 3);
    let reqs = requests(&keel_lm.run.model);
    let want = score(&mut keel_lm, &reqs);
    assert!(want.iter().any(|s| s.greedy) && want.iter().any(|s| !s.greedy), "{want:?}");
    assert!(want.iter().all(|s| s.logprob.is_finite() && s.logprob < 0.0));

    let spec = out.display().to_string();
    let mut hf = eval::hf::load(&spec, &Device::Cpu).unwrap();
    assert_eq!(hf.max_len(), 16);
    let n_params = keel_lm.run.model.n_params();
    let describe = hf.describe();
    assert!(describe.contains(&spec) && describe.contains(&n_params.to_string()), "{describe}");
    assert_eq!(hf.tokenizer().encode("keel?").unwrap(), b"keel?".iter().map(|&b| b as u32).collect::<Vec<_>>());
    assert_eq!(hf.tokenizer().eot, None, "a byte-level run has no end-of-text token");
    let got = score(hf.as_mut(), &reqs);
    assert_same_scores(&got, &want, "folder");
    // Scoring again (a warm context cache) and one at a time gives the same answers.
    assert_same_scores(&score(hf.as_mut(), &reqs), &want, "again");
    for (r, w) in reqs.iter().zip(&want) {
        assert_same_scores(&score(hf.as_mut(), std::slice::from_ref(r)), std::slice::from_ref(w), "single");
    }

    // The same model split into two shards with an index.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    let weights = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut map = serde_json::Map::new();
    let mut parts: [HashMap<String, Tensor>; 2] = Default::default();
    for (i, name) in names.iter().enumerate() {
        let shard = i % 2;
        parts[shard].insert(name.to_string(), weights[*name].clone());
        map.insert(name.to_string(), format!("model-0000{}-of-00002.safetensors", shard + 1).into());
    }
    for (i, part) in parts.iter().enumerate() {
        candle_core::safetensors::save(part, sharded.join(format!("model-0000{}-of-00002.safetensors", i + 1)))
            .unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(out.join(f), sharded.join(f)).unwrap();
    }
    let mut hf = eval::hf::load(&sharded.display().to_string(), &Device::Cpu).unwrap();
    assert_same_scores(&score(hf.as_mut(), &reqs), &want, "sharded");
    assert!(hf.describe().contains(&n_params.to_string()));

    // Missing pieces are input errors that say what to pass.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let err = eval::hf::load(&sharded.display().to_string(), &Device::Cpu).err().unwrap();
    assert!(keel::is_input_error(&err) && err.to_string().contains("model-00002-of-00002"), "{err}");
    let err = eval::hf::load(&tmp.path().join("nowhere").display().to_string(), &Device::Cpu).err().unwrap();
    assert!(keel::is_input_error(&err) && err.to_string().contains("ORG/NAME"), "{err}");
}

#[test]
fn hf_scorer_uses_the_models_end_of_text_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (run_dir, out) = (tmp.path().join("run"), tmp.path().join("hf"));
    // A run on prepared data (whose folder is gone) with its own tokenizer.json: bytes plus an
    // added `</s>` (id 256).
    let mut r = resolved(&["model.vocab_size=257"]);
    r.config.data.path = Some(tmp.path().join("gone").display().to_string());
    make_run(&run_dir, &r, 12);
    let mut tok = keel::data::tokenizer::KeelTokenizer::byte();
    let _ = tok.inner.add_special_tokens([tokenizers::AddedToken::from("</s>", true)]);
    std::fs::write(run_dir.join("tokenizer.json"), tok.inner.to_string(false).unwrap()).unwrap();
    let done = export_dir(&run_dir, &out).unwrap();
    assert_eq!(done.format, Format::Llama);
    let json = read_json(&out.join("config.json"));
    assert_eq!(json["eos_token_id"], 256);
    assert_eq!(json["bos_token_id"], 256);
    assert_eq!(read_json(&out.join("generation_config.json"))["eos_token_id"], 256);
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!((tc["bos_token"].as_str(), tc["eos_token"].as_str()), (Some("</s>"), Some("</s>")));
    let hf = eval::hf::load(&out.display().to_string(), &Device::Cpu).unwrap();
    assert_eq!(hf.tokenizer().eot, Some(256));
    assert_eq!(hf.tokenizer().encode("a</s>").unwrap(), vec![b'a' as u32, 256]);
}

#[test]
fn non_llama_runs_export_keel_format() {
    let cases: [(&[&str], &str); 6] = [
        (&["model.placement=keel"], "Keel's residual x' = LN(alpha*x + F(LN(x)))"),
        (&["model.placement=post_ln"], "Post-LN"),
        (&["model.placement=deepnorm"], "a*x + F(x)"),
        (&["model.placement=hybrid_norm"], "HybridNorm"),
        (&["model.norm=layer_norm"], "LayerNorm"),
        (&["model.ffn=gelu", "model.d_ff=64"], "GELU"),
    ];
    for (sets, reason) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (run_dir, out) = (tmp.path().join("run"), tmp.path().join("hf"));
        make_run(&run_dir, &resolved(sets), 13);
        let done = export_dir(&run_dir, &out).unwrap();
        match &done.format {
            Format::Keel { reason: why } => assert!(why.contains(reason), "{sets:?}: {why}"),
            Format::Llama => panic!("{sets:?} exported as Llama"),
        }
        for f in ["model.safetensors", "config.toml", "tokenizer.json", "README.md"] {
            assert!(out.join(f).is_file(), "{sets:?}: {f} missing");
        }
        assert!(!out.join("config.json").exists(), "{sets:?}: a keel-format export has no config.json");
        let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(readme.contains("keel format") && readme.contains(reason), "{readme}");
        let saved = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let orig = candle_core::safetensors::load(run_dir.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(saved.len(), orig.len());
        for (name, t) in &orig {
            let s = &saved[name];
            assert_eq!(common::to_vec(s), common::to_vec(t), "{sets:?}: {name}");
        }
        // The export is itself a loadable run with the same outputs.
        let a = eval::load_run(&run_dir, &Device::Cpu).unwrap();
        let b = eval::load_run(&out, &Device::Cpu).unwrap();
        let tokens = random_tokens(5, 9);
        assert_eq!(keel_last_logits(&a.model, &tokens), keel_last_logits(&b.model, &tokens));
    }
}

#[test]
fn hf_scorer_loads_org_name_from_the_hub_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (run_dir, out) = (tmp.path().join("run"), tmp.path().join("hf"));
    make_run(&run_dir, &resolved(&[]), 14);
    export_dir(&run_dir, &out).unwrap();
    let home = tmp.path().join("hf_home");
    let repo = home.join("hub").join("models--keel-test--tiny");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), rev).unwrap();
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(out.join(f), snap.join(f)).unwrap();
    }
    // HF_HOME is process-wide: the loading happens in a child test process.
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hub_cache_child", "--nocapture", "--test-threads=1"])
        .env("HF_HOME", &home)
        .env("KEEL_TEST_HUB_CHILD", &out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed") && stdout.contains("hub child ok"), "child did not run:\n{stdout}");
}

/// Runs only as the child of `hf_scorer_loads_org_name_from_the_hub_cache`, with HF_HOME set.
#[test]
fn hub_cache_child() {
    let Some(folder) = std::env::var_os("KEEL_TEST_HUB_CHILD") else { return };
    let mut hub = eval::hf::load("keel-test/tiny", &Device::Cpu).unwrap();
    assert!(hub.describe().contains("keel-test/tiny"), "{}", hub.describe());
    let mut local = eval::hf::load(&folder.to_string_lossy(), &Device::Cpu).unwrap();
    let reqs = vec![
        Request { tokens: random_tokens(60, 8), cont_start: 5 },
        Request { tokens: random_tokens(61, 12), cont_start: 3 },
    ];
    assert_same_scores(&score(hub.as_mut(), &reqs), &score(local.as_mut(), &reqs), "hub");
    println!("hub child ok");
}

fn keel_bin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).args(args).output().unwrap()
}

#[test]
fn binary_export_exit_codes_and_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = |name: &str| d.join(name).display().to_string();

    let out = keel_bin(&["export", "--run", &p("missing"), "--hf", &p("out1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not exist") && err.contains("--run"), "{err}");
    assert!(!d.join("out1").exists(), "nothing is created for a missing run");

    make_run(&d.join("run"), &resolved(&["model.placement=keel"]), 15);
    std::fs::create_dir_all(d.join("full")).unwrap();
    std::fs::write(d.join("full").join("keep.txt"), "mine").unwrap();
    let out = keel_bin(&["export", "--run", &p("run"), "--hf", &p("full")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("already holds files") && err.contains("--hf"), "{err}");
    assert_eq!(std::fs::read_dir(d.join("full")).unwrap().count(), 1, "the folder is untouched");

    // An OUT that cannot be created (its parent is a file), and an OUT that is a file.
    std::fs::write(d.join("afile"), "x").unwrap();
    for (out_path, needle) in [(p("afile/sub"), "cannot create export folder"), (p("afile"), "is a file")] {
        let out = keel_bin(&["export", "--run", &p("run"), "--hf", &out_path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle) && err.contains("--hf"), "{err}");
    }

    std::fs::create_dir_all(d.join("notrun")).unwrap();
    let out = keel_bin(&["export", "--run", &p("notrun"), "--hf", &p("out2")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("config.toml") && err.contains("--run"), "{err}");

    // A keel run exports in keel's format, saying why in one line.
    let out = keel_bin(&["export", "--run", &p("run"), "--hf", &p("out3")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("not a Llama model: Keel's residual x' = LN(alpha*x + F(LN(x)))"), "{stdout}");
    assert!(d.join("out3").join("README.md").is_file());

    // A pre_ln run exports as Llama.
    make_run(&d.join("pre"), &resolved(&[]), 16);
    let out = keel_bin(&["export", "--run", &p("pre"), "--hf", &p("out4")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("LlamaForCausalLM"), "{stdout}");
    assert_eq!(read_json(&d.join("out4").join("config.json"))["model_type"], "llama");
}

/// Not a check: the keel side of `scripts/hf_export_check.py`, which runs
/// `KEEL_DUMP_REQUEST=req.json KEEL_DUMP_OUT=out.json cargo test --release --test export
/// dump_keel_logits -- --ignored --exact`. The request is `{"run": DIR, "sequences": [[ids]],
/// "greedy": [{"tokens": [ids], "n": N}]}`; the answer `{"logits": [[[f32; V]; T]], "greedy":
/// [[ids]]}`: keel's logits at every position of each sequence (one forward pass each), and N
/// greedy tokens after each prompt, each from a full forward pass over the sequence so far.
#[test]
#[ignore]
fn dump_keel_logits() {
    let (Some(req), Some(out)) = (std::env::var_os("KEEL_DUMP_REQUEST"), std::env::var_os("KEEL_DUMP_OUT")) else {
        return;
    };
    let req = read_json(Path::new(&req));
    let run = eval::load_run(Path::new(req["run"].as_str().unwrap()), &Device::Cpu).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let all_logits = |tokens: &[u32]| -> Vec<Vec<f32>> {
        let x = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        run.model.forward(&x).unwrap().to_dtype(DType::F32).unwrap().to_vec2().unwrap()
    };
    let logits: Vec<Vec<Vec<f32>>> = req["sequences"].as_array().unwrap().iter().map(|s| all_logits(&ids(s))).collect();
    let greedy: Vec<Vec<u32>> = req["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let mut tokens = ids(&g["tokens"]);
            let start = tokens.len();
            for _ in 0..g["n"].as_u64().unwrap() {
                let last = keel_last_logits(&run.model, &tokens);
                let arg = last.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
                tokens.push(arg as u32);
            }
            tokens[start..].to_vec()
        })
        .collect();
    let answer = serde_json::json!({ "logits": logits, "greedy": greedy });
    std::fs::write(out, answer.to_string()).unwrap();
}
