//! `keel export` and the Hugging Face Llama scorer: a Pre-LN RMSNorm SwiGLU run exported as a
//! Llama folder computes the same logits in candle-transformers' own `Llama` as in keel, scores
//! requests like `KeelLm` (from a folder, shards or the hub cache), and every other run is written
//! as `KeelForCausalLM` with remote code (files, config, tensors; keel's logits against values
//! transformers computed from such exports). Tiny models only.

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

/// The non-Llama cases: their `--set`s, the reason `keel export` gives, the residual forms and
/// alphas `config.json` must list (depth 4: two blocks), and whether attention normalizes q, k, v.
struct Case {
    name: &'static str,
    sets: &'static [&'static str],
    reason: &'static str,
    forms: [(&'static str, f64); 4],
    qkv_norm: bool,
}

const SQRT2: f64 = std::f64::consts::SQRT_2;

const CASES: [Case; 8] = [
    Case {
        name: "keel",
        sets: &["model.placement=keel"],
        reason: "Keel's residual x' = LN(alpha*x + F(LN(x)))",
        // Paper v2: the first attention is Pre-LN, the first FFN alpha 1, then alpha = L = 4.
        forms: [("pre", 1.0), ("keel", 1.0), ("keel", 4.0), ("keel", 4.0)],
        qkv_norm: false,
    },
    Case {
        name: "keel_v1",
        sets: &["model.placement=keel", "model.keel_first_layer=v1", "model.alpha=3"],
        reason: "Keel's residual",
        forms: [("pre", 1.0), ("pre", 1.0), ("keel", 3.0), ("keel", 3.0)],
        qkv_norm: false,
    },
    Case {
        name: "post_ln",
        sets: &["model.placement=post_ln"],
        reason: "Post-LN",
        forms: [("post", 1.0), ("post", 1.0), ("post", 1.0), ("post", 1.0)],
        qkv_norm: false,
    },
    Case {
        name: "deepnorm",
        sets: &["model.placement=deepnorm"],
        reason: "a*x + F(x)",
        // (2 N)^(1/4) with N = 2 blocks.
        forms: [("post", SQRT2), ("post", SQRT2), ("post", SQRT2), ("post", SQRT2)],
        qkv_norm: false,
    },
    Case {
        name: "mix_ln",
        sets: &["model.placement=mix_ln", "model.mix_ln_fraction=0.5"],
        reason: "Post-LN",
        forms: [("post", 1.0), ("post", 1.0), ("pre", 1.0), ("pre", 1.0)],
        qkv_norm: false,
    },
    Case {
        name: "hybrid_norm",
        sets: &["model.placement=hybrid_norm"],
        reason: "HybridNorm",
        forms: [("plain", 1.0), ("normed_shortcut", 1.0), ("plain", 1.0), ("normed_shortcut", 1.0)],
        qkv_norm: true,
    },
    Case {
        name: "pre_ln_layer_norm_tied",
        sets: &["model.norm=layer_norm", "model.tie_embeddings=true"],
        reason: "LayerNorm",
        forms: [("pre", 1.0), ("pre", 1.0), ("pre", 1.0), ("pre", 1.0)],
        qkv_norm: false,
    },
    Case {
        name: "pre_ln_gelu_no_final_norm",
        sets: &["model.ffn=gelu", "model.d_ff=64", "model.final_norm=false"],
        reason: "GELU",
        forms: [("pre", 1.0), ("pre", 1.0), ("pre", 1.0), ("pre", 1.0)],
        qkv_norm: false,
    },
];

fn repo_file(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// The tensors `modeling_keel.py` declares for a config.json, with their shapes, worked out from
/// the config alone (not from keel's export code).
fn expected_tensors(cfg: &serde_json::Value) -> HashMap<String, Vec<usize>> {
    let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (c, f, v) = (n("hidden_size"), n("intermediate_size"), n("vocab_size"));
    let (h, hkv, d) = (n("num_attention_heads"), n("num_key_value_heads"), n("head_dim"));
    let ln = cfg["norm_type"] == "layer_norm";
    let mut out = HashMap::new();
    let norm = |out: &mut HashMap<String, Vec<usize>>, name: String, width: usize| {
        out.insert(format!("{name}.weight"), vec![width]);
        if ln {
            out.insert(format!("{name}.bias"), vec![width]);
        }
    };
    out.insert("model.embed_tokens.weight".into(), vec![v, c]);
    let forms = cfg["residual_forms"].as_array().unwrap();
    for i in 0..n("num_hidden_layers") {
        let p = format!("model.layers.{i}");
        for (j, which) in ["attn", "ffn"].into_iter().enumerate() {
            let form = forms[2 * i + j].as_str().unwrap();
            if ["pre", "keel", "normed_shortcut"].contains(&form) {
                norm(&mut out, format!("{p}.{which}_norm_in"), c);
            }
            if ["post", "keel"].contains(&form) {
                norm(&mut out, format!("{p}.{which}_norm_out"), c);
            }
        }
        out.insert(format!("{p}.self_attn.q_proj.weight"), vec![h * d, c]);
        out.insert(format!("{p}.self_attn.k_proj.weight"), vec![hkv * d, c]);
        out.insert(format!("{p}.self_attn.v_proj.weight"), vec![hkv * d, c]);
        out.insert(format!("{p}.self_attn.o_proj.weight"), vec![c, h * d]);
        if cfg["qkv_norm"] == true {
            norm(&mut out, format!("{p}.self_attn.q_norm"), h * d);
            norm(&mut out, format!("{p}.self_attn.k_norm"), hkv * d);
            norm(&mut out, format!("{p}.self_attn.v_norm"), hkv * d);
        }
        if cfg["ffn_type"] == "swiglu" {
            out.insert(format!("{p}.mlp.gate_proj.weight"), vec![f, c]);
        }
        out.insert(format!("{p}.mlp.up_proj.weight"), vec![f, c]);
        out.insert(format!("{p}.mlp.down_proj.weight"), vec![c, f]);
    }
    if cfg["final_norm"] == true {
        norm(&mut out, "model.norm".into(), c);
    }
    if cfg["tie_word_embeddings"] == false {
        out.insert("lm_head.weight".into(), vec![v, c]);
    }
    out
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Every non-Llama case: the folder's files, config.json's keys, the Python files as in the
/// repository, the tensors' names, shapes and values (keel's (in, out) weights transposed and
/// split), and the tokenizer files.
#[test]
fn non_llama_runs_export_keel_for_causal_lm() {
    for case in &CASES {
        let tmp = tempfile::tempdir().unwrap();
        let (run_dir, out) = (tmp.path().join("run"), tmp.path().join("hf"));
        let r = resolved(case.sets);
        make_run(&run_dir, &r, 13);
        let done = export_dir(&run_dir, &out).unwrap();
        let what = case.name;
        match &done.format {
            Format::Keel { reason: why } => assert!(why.contains(case.reason), "{what}: {why}"),
            Format::Llama => panic!("{what} exported as Llama"),
        }
        let mut files: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        assert_eq!(
            files,
            [
                "README.md",
                "config.json",
                "configuration_keel.py",
                "generation_config.json",
                "model.safetensors",
                "modeling_keel.py",
                "tokenizer.json",
                "tokenizer_config.json"
            ],
            "{what}"
        );
        assert_eq!(done.files.len(), files.len(), "{what}: {:?}", done.files);
        for py in ["configuration_keel.py", "modeling_keel.py"] {
            assert_eq!(std::fs::read(out.join(py)).unwrap(), repo_file(&format!("src/export/{py}")), "{what}: {py}");
        }

        let cfg = read_json(&out.join("config.json"));
        assert_eq!(cfg["model_type"], "keel", "{what}");
        assert_eq!(cfg["architectures"], serde_json::json!(["KeelForCausalLM"]), "{what}");
        assert_eq!(
            cfg["auto_map"],
            serde_json::json!({
                "AutoConfig": "configuration_keel.KeelConfig",
                "AutoModel": "modeling_keel.KeelModel",
                "AutoModelForCausalLM": "modeling_keel.KeelForCausalLM",
            }),
            "{what}"
        );
        let m = r.model();
        assert_eq!(cfg["vocab_size"], 256);
        assert_eq!(cfg["hidden_size"], 32);
        assert_eq!(cfg["num_hidden_layers"], 2);
        assert_eq!(cfg["num_attention_heads"], 4);
        assert_eq!(cfg["num_key_value_heads"], 2);
        assert_eq!(cfg["head_dim"], 8);
        assert_eq!(cfg["intermediate_size"], r.d_ff());
        assert_eq!(cfg["max_position_embeddings"], 16);
        assert_eq!(cfg["norm_eps"], m.norm_eps);
        assert_eq!(cfg["rope_theta"], m.rope_theta);
        assert_eq!(cfg["torch_dtype"], "float32");
        assert_eq!(cfg["use_cache"], true);
        assert_eq!(cfg["bos_token_id"], serde_json::Value::Null, "a byte tokenizer has no end-of-text token");
        assert_eq!(
            cfg["norm_type"],
            if case.sets.contains(&"model.norm=layer_norm") { "layer_norm" } else { "rms_norm" }
        );
        assert_eq!(cfg["ffn_type"], if case.sets.contains(&"model.ffn=gelu") { "gelu" } else { "swiglu" });
        assert_eq!(cfg["tie_word_embeddings"], case.sets.contains(&"model.tie_embeddings=true"), "{what}");
        assert_eq!(cfg["qkv_norm"], case.qkv_norm, "{what}");
        let final_norm =
            !matches!(case.name, "keel" | "keel_v1" | "post_ln" | "deepnorm" | "pre_ln_gelu_no_final_norm");
        assert_eq!(cfg["final_norm"], final_norm, "{what}");
        let forms: Vec<&str> = case.forms.iter().map(|f| f.0).collect();
        assert_eq!(cfg["residual_forms"], serde_json::json!(forms), "{what}");
        let alphas: Vec<f64> = cfg["residual_alphas"].as_array().unwrap().iter().map(|a| a.as_f64().unwrap()).collect();
        for (got, want) in alphas.iter().zip(case.forms.iter().map(|f| f.1)) {
            assert!((got - want).abs() < 1e-12, "{what}: alphas {alphas:?}");
        }
        let keel = &cfg["keel"];
        assert_eq!(keel["version"], keel::VERSION);
        assert_eq!(keel["placement"], m.placement.as_str());
        assert_eq!(keel["source_run"], run_dir.display().to_string());
        assert_eq!(keel["config"]["model"]["depth"], 4);

        // Tensors: exactly the names and shapes the Python declares, f32.
        let weights = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let want = expected_tensors(&cfg);
        let mut got_names: Vec<&String> = weights.keys().collect();
        let mut want_names: Vec<&String> = want.keys().collect();
        got_names.sort();
        want_names.sort();
        assert_eq!(got_names, want_names, "{what}");
        for (name, t) in &weights {
            assert_eq!(t.dims(), want[name].as_slice(), "{what}: {name}");
            assert_eq!(t.dtype(), DType::F32, "{what}: {name}");
        }
        // Values: keel's (in, out) weights transposed, wqkv split [q | k | v], w_in [gate | up].
        let run = candle_core::safetensors::load(run_dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let hf = |n: &str| values(&weights[n]);
        let keel_t = |n: &str, start: usize, len: usize| values(&run[n].narrow(1, start, len).unwrap().t().unwrap());
        assert_eq!(hf("model.embed_tokens.weight"), values(&run["tok_emb"]));
        assert_eq!(hf("model.layers.1.self_attn.q_proj.weight"), keel_t("blocks.1.attn.wqkv", 0, 32));
        assert_eq!(hf("model.layers.1.self_attn.k_proj.weight"), keel_t("blocks.1.attn.wqkv", 32, 16));
        assert_eq!(hf("model.layers.1.self_attn.v_proj.weight"), keel_t("blocks.1.attn.wqkv", 48, 16));
        assert_eq!(hf("model.layers.1.self_attn.o_proj.weight"), keel_t("blocks.1.attn.wo", 0, 32));
        let d_ff = r.d_ff();
        if cfg["ffn_type"] == "swiglu" {
            assert_eq!(hf("model.layers.0.mlp.gate_proj.weight"), keel_t("blocks.0.ffn.w_in", 0, d_ff));
            assert_eq!(hf("model.layers.0.mlp.up_proj.weight"), keel_t("blocks.0.ffn.w_in", d_ff, d_ff));
        } else {
            assert_eq!(hf("model.layers.0.mlp.up_proj.weight"), keel_t("blocks.0.ffn.w_in", 0, d_ff));
        }
        assert_eq!(hf("model.layers.0.mlp.down_proj.weight"), keel_t("blocks.0.ffn.w_out", 0, 32));
        if let Some(head) = run.get("lm_head") {
            assert_eq!(hf("lm_head.weight"), values(&head.t().unwrap()));
        }
        // Norms (randomized by make_run, so each is distinct): keel's name -> the Python's.
        for (i, which) in [(0, "attn"), (1, "ffn"), (2, "attn"), (3, "ffn")] {
            let (k, p) = (format!("blocks.{}.{which}", i / 2), format!("model.layers.{}.{which}", i / 2));
            let pairs: Vec<(String, String)> = match case.forms[i].0 {
                "pre" | "normed_shortcut" => vec![(format!("{k}.norm"), format!("{p}_norm_in"))],
                "post" => vec![(format!("{k}.norm"), format!("{p}_norm_out"))],
                "keel" => vec![
                    (format!("{k}.norm_in"), format!("{p}_norm_in")),
                    (format!("{k}.norm_out"), format!("{p}_norm_out")),
                ],
                _ => vec![],
            };
            for (kn, pn) in pairs {
                assert_eq!(hf(&format!("{pn}.weight")), values(&run[&format!("{kn}.weight")]), "{what}: {pn}");
                if let Some(b) = run.get(&format!("{kn}.bias")) {
                    assert_eq!(hf(&format!("{pn}.bias")), values(b), "{what}: {pn}");
                }
            }
        }
        if case.qkv_norm {
            for x in ["q", "k", "v"] {
                let kn = format!("blocks.0.attn.{x}_norm.weight");
                assert_eq!(hf(&format!("model.layers.0.self_attn.{x}_norm.weight")), values(&run[&kn]), "{what}");
            }
        }
        if final_norm {
            assert_eq!(hf("model.norm.weight"), values(&run["final_norm.weight"]), "{what}");
        }

        // Tokenizer files and generation config.
        let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        assert_eq!(tokenizer.encode("keel", false).unwrap().get_ids(), &[107, 101, 101, 108]);
        let tc = read_json(&out.join("tokenizer_config.json"));
        assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!(tc["eos_token"], "\u{10a}");
        assert_eq!(tc["model_max_length"], 16);
        assert_eq!(read_json(&out.join("generation_config.json"))["do_sample"], false);
        let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(readme.contains("KeelForCausalLM") && readme.contains("trust_remote_code=True"), "{readme}");
        assert!(readme.contains(case.reason), "{what}: {readme}");
        // `keel eval --hf-model` runs Llama folders only, and says where to score this one.
        let err = eval::hf::load(&out.display().to_string(), &Device::Cpu).err().unwrap();
        let msg = err.to_string();
        assert!(keel::is_input_error(&err), "{what}: {msg}");
        assert!(
            msg.contains("KeelForCausalLM") && msg.contains(&format!("keel eval --run {}", run_dir.display())),
            "{msg}"
        );
    }
}

/// transformers' logits for each case of [`CASES`]: `[position 0, position 11]`, each at the ids
/// of `exported_logits_equal_transformers`'s `IDS`. Printed by `scripts/hf_export_reference.py`.
#[rustfmt::skip]
#[allow(clippy::excessive_precision)]
const REFERENCE: [(&str, [[f32; 6]; 2]); 8] = [
    ("keel", [[-2.4714792, 0.35659081, -5.1100125, 1.2581934, -2.4259672, -0.23206708], [0.70420903, 0.91092229, 1.0692878, 0.44983983, 0.87844151, 0.8978141]]),
    ("keel_v1", [[-2.2547908, -0.92388779, -1.8856332, 0.17484675, -0.60214883, -0.40712258], [-1.864656, -0.93308556, 1.6224785, 0.40523908, 0.10220709, 2.1299627]]),
    ("post_ln", [[-0.68132651, 1.8618265, -1.0510426, 0.62142795, 0.9429363, 1.3187706], [-0.89604306, 2.4700153, -0.29416218, 1.2694745, 0.64455098, -0.020387851]]),
    ("deepnorm", [[-1.6189802, 0.13363552, 0.81871605, -0.21105605, -1.4980679, 0.12482905], [-3.6459677, 0.0047746687, -0.47713438, 0.8690573, -1.783493, 2.0138533]]),
    ("mix_ln", [[0.39127281, 3.0533397, -0.46707019, 0.18405518, -0.36207315, 1.9877566], [0.28322673, 2.8476353, 1.6115042, -0.22419348, -0.13169068, 1.9917734]]),
    ("hybrid_norm", [[-3.1442678, -1.7614199, 1.19484, 0.74855834, -0.065638423, -2.5493913], [-4.7585096, -0.67514664, 0.6396113, -1.1843115, 1.2404225, 0.92984056]]),
    ("pre_ln_layer_norm_tied", [[0.64300686, 2.2001529, -1.0182045, 0.47219634, 0.82697976, -1.7969521], [-0.77879441, -1.2089034, -0.99565428, 1.7861753, 2.9067619, -1.1850569]]),
    ("pre_ln_gelu_no_final_norm", [[5.833313, 8.286993, -13.108224, -6.94803, 2.0729959, 6.906004], [-6.3013706, 2.4640937, -2.4740338, -6.029983, 10.358102, 6.6759119]]),
];

/// The fixed tokens of the pasted reference logits.
fn reference_tokens() -> Vec<u32> {
    random_tokens(99, 12)
}

/// Writes the export of every case in [`CASES`] to `$KEEL_REFERENCE_OUT/NAME` (with the tokens in
/// `tokens.json`), for `scripts/hf_export_reference.py`; see [`exported_logits_equal_transformers`].
#[test]
#[ignore]
fn write_reference_exports() {
    let Some(dir) = std::env::var_os("KEEL_REFERENCE_OUT") else { return };
    let dir = Path::new(&dir);
    for case in &CASES {
        let run_dir = dir.join(format!("{}-run", case.name));
        let _ = std::fs::remove_dir_all(&run_dir);
        let _ = std::fs::remove_dir_all(dir.join(case.name));
        make_run(&run_dir, &resolved(case.sets), 21);
        export_dir(&run_dir, &dir.join(case.name)).unwrap();
    }
    std::fs::write(dir.join("tokens.json"), serde_json::json!(reference_tokens()).to_string()).unwrap();
}

/// keel's logits on the fixed tiny model of each case equal the logits transformers computed from
/// that case's export (values pasted below, at positions 0 and 11 of [`reference_tokens`], for
/// the token ids in `IDS`). The values came from these commands (transformers 5.25.0 and 4.57.6 print
/// the same digits; eager and sdpa attention agree):
///
/// ```text
/// KEEL_REFERENCE_OUT=/tmp/keel-ref cargo test --release --test export write_reference_exports -- --ignored --exact
/// python scripts/hf_export_reference.py /tmp/keel-ref
/// ```
#[test]
fn exported_logits_equal_transformers() {
    const IDS: [usize; 6] = [0, 7, 42, 97, 128, 255];
    for (case, (name, want)) in CASES.iter().zip(REFERENCE) {
        assert_eq!(case.name, name);
        let tmp = tempfile::tempdir().unwrap();
        make_run(tmp.path(), &resolved(case.sets), 21);
        let run = eval::load_run(tmp.path(), &Device::Cpu).unwrap();
        let x = Tensor::new(reference_tokens().as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<Vec<f32>> = run.model.forward(&x).unwrap().to_vec2().unwrap();
        let last = &logits[11];
        let spread = last.iter().cloned().fold(f32::MIN, f32::max) - last.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 1.0, "{name}: logits too flat to test anything (spread {spread})");
        for (row, (pos, wants)) in [(0, want[0]), (11, want[1])].into_iter().enumerate() {
            for (&id, w) in IDS.iter().zip(wants) {
                let got = logits[pos][id];
                assert!((got - w).abs() < 1e-4, "{name}: position {pos} id {id}: keel {got}, transformers {w} ({row})");
            }
        }
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

    // A run that has not finished (no model.safetensors yet): nothing is created.
    std::fs::create_dir_all(d.join("unfinished")).unwrap();
    std::fs::copy(d.join("run").join("config.toml"), d.join("unfinished").join("config.toml")).unwrap();
    let out = keel_bin(&["export", "--run", &p("unfinished"), "--hf", &p("out5")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has not finished") && err.contains("keel train --resume"), "{err}");
    assert!(!d.join("out5").exists(), "nothing is created for an unfinished run");

    // A keel run exports as KeelForCausalLM (remote code), saying why it is not a Llama.
    let out = keel_bin(&["export", "--run", &p("run"), "--hf", &p("out3")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("not a Llama model: Keel's residual x' = LN(alpha*x + F(LN(x)))"), "{stdout}");
    assert!(stdout.contains("as KeelForCausalLM") && stdout.contains("trust_remote_code=True"), "{stdout}");
    assert_eq!(read_json(&d.join("out3").join("config.json"))["model_type"], "keel");
    assert!(d.join("out3").join("modeling_keel.py").is_file());

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
