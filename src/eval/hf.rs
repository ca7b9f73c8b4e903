//! Llama-family models loaded with candle-transformers (`keel eval --hf-model SPEC`).
//!
//! SPEC is a local folder (`config.json`, `tokenizer.json`, and `model.safetensors` or shards listed
//! in `model.safetensors.index.json`), such as one written by `keel export`, or `ORG/NAME` read
//! through the Hugging Face hub cache. Weights load memory-mapped as f32.
//!
//! candle-transformers' `Llama::forward` returns only the last position's logits, so a request is
//! scored with a KV cache: one forward pass over the context predicts the first continuation
//! token, then each continuation token is fed alone to predict the next. Consecutive requests that
//! share their context (a multiple-choice question's answers) reuse the context's pass, and a
//! context that extends the previous one only feeds its new tokens.

use super::{log_softmax_at, LanguageModel, Request, Scored};
use crate::data::hub::{fetch, RepoKind};
use crate::data::tokenizer::KeelTokenizer;
use crate::InputError;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig, LlamaEosToks};
use std::path::{Path, PathBuf};

/// The files of a model, wherever they came from.
struct ModelFiles {
    config: PathBuf,
    tokenizer: PathBuf,
    weights: Vec<PathBuf>,
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

fn usage(spec: &str, why: &str) -> anyhow::Error {
    InputError(format!(
        "--hf-model {spec}: {why}\n  pass a folder holding config.json, tokenizer.json and model.safetensors (e.g. one written by `keel export`), or a hub model as ORG/NAME"
    ))
    .into()
}

/// Shard file names listed in a `model.safetensors.index.json`, in order, without repeats.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text = crate::files::read_to_string(index)
        .map_err(|e| InputError(format!("cannot read {}: {e}\n  restore the file", index.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        InputError(format!("{} is not valid JSON: {e}\n  restore the file from the model's source", index.display()))
    })?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
        InputError(format!("{} has no weight_map\n  restore the file from the model's source", index.display()))
    })?;
    let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(InputError(format!("{} lists no shards\n  restore the file", index.display())).into());
    }
    Ok(names)
}

fn local_files(spec: &str, dir: &Path) -> Result<ModelFiles> {
    let need = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(usage(spec, &format!("the folder has no {name}")))
        }
    };
    let config = need("config.json")?;
    let tokenizer = need("tokenizer.json")?;
    let weights = if dir.join(SINGLE).is_file() {
        vec![dir.join(SINGLE)]
    } else if dir.join(INDEX).is_file() {
        let mut w = Vec::new();
        for s in shards(&dir.join(INDEX))? {
            w.push(need(&s)?);
        }
        w
    } else {
        return Err(usage(spec, &format!("the folder has neither {SINGLE} nor {INDEX}")));
    };
    Ok(ModelFiles { config, tokenizer, weights })
}

fn hub_files(repo: &str) -> Result<ModelFiles> {
    let get = |file: &str| fetch(repo, RepoKind::Model, file).with_context(|| format!("hub model {repo}: {file}"));
    let config = get("config.json")?;
    let tokenizer = get("tokenizer.json")?;
    // A cached single file needs no network; only when it is missing try the sharded layout.
    let weights = match fetch(repo, RepoKind::Model, SINGLE) {
        Ok(p) => vec![p],
        Err(single_err) => match fetch(repo, RepoKind::Model, INDEX) {
            Ok(index) => {
                let mut w = Vec::new();
                for s in shards(&index)? {
                    w.push(get(&s)?);
                }
                w
            }
            Err(_) => return Err(anyhow::Error::new(single_err).context(format!("hub model {repo}: {SINGLE}"))),
        },
    };
    Ok(ModelFiles { config, tokenizer, weights })
}

/// Where `spec` points: an existing folder, or a hub name ORG/NAME.
fn resolve(spec: &str) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return local_files(spec, path);
    }
    if path.exists() {
        return Err(usage(spec, "this is a file, not a model folder"));
    }
    let parts: Vec<&str> = spec.split('/').collect();
    let hub_name = parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    if !hub_name {
        return Err(usage(spec, "no such folder, and not a hub name ORG/NAME"));
    }
    hub_files(spec)
}

/// The expected shape of every tensor `Llama::load` reads (it panics on a missing one).
fn expected_tensors(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let d = h / c.num_attention_heads;
    let (q, kv) = (d * c.num_attention_heads, d * c.num_key_value_heads);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".into(), vec![h])];
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, h]));
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
        ]);
    }
    out
}

/// Reads and checks `config.json` as a Llama config.
fn read_config(spec: &str, path: &Path) -> Result<Config> {
    let text = crate::files::read_to_string(path)
        .map_err(|e| InputError(format!("cannot read {}: {e}\n  restore the model's config.json", path.display())))?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        InputError(format!("{} is not valid JSON: {e}\n  restore the model's config.json", path.display()))
    })?;
    if let Some(t) = raw.get("model_type").and_then(|t| t.as_str()) {
        if t == "keel" {
            // `keel export` of a run that is not a Llama (KeelForCausalLM, transformers remote code).
            let source = raw.pointer("/keel/source_run").and_then(|s| s.as_str()).unwrap_or("RUN");
            return Err(InputError(format!(
                "--hf-model {spec}: a KeelForCausalLM export (transformers remote code), which candle's Llama cannot run\n  score its source run with `keel eval --run {source}`, or the folder with lm-evaluation-harness (trust_remote_code=True)"
            ))
            .into());
        }
        if t != "llama" {
            return Err(usage(
                spec,
                &format!("model_type is {t:?}; only Llama-family models (model_type \"llama\") load"),
            ));
        }
    }
    let cfg: LlamaConfig = serde_json::from_value(raw.clone()).map_err(|e| {
        InputError(format!(
            "{} is not a Llama config: {e}\n  only Llama-family models (LlamaForCausalLM) load",
            path.display()
        ))
    })?;
    let c = cfg.into_config(false);
    if c.num_attention_heads == 0
        || c.num_key_value_heads == 0
        || !c.hidden_size.is_multiple_of(c.num_attention_heads)
        || !c.num_attention_heads.is_multiple_of(c.num_key_value_heads)
    {
        return Err(usage(spec, "config.json's head counts do not divide hidden_size / each other"));
    }
    if let Some(d) = raw.get("head_dim").and_then(|d| d.as_u64()) {
        if d as usize != c.hidden_size / c.num_attention_heads {
            return Err(usage(
                spec,
                &format!(
                    "head_dim {d} differs from hidden_size / num_attention_heads = {}, which candle-transformers' Llama assumes",
                    c.hidden_size / c.num_attention_heads
                ),
            ));
        }
    }
    Ok(c)
}

/// A Llama-family model scored with candle-transformers.
pub struct HfLlama {
    name: String,
    model: Llama,
    config: Config,
    tokenizer: KeelTokenizer,
    device: Device,
    n_params: usize,
    /// The last scored context, its last-position logits and its KV cache.
    last: Option<(Vec<u32>, Vec<f32>, Cache)>,
    /// `keel generate`: the cache and the next position.
    decoding: Option<(Cache, usize)>,
}

/// Loads `spec` (a local folder, or ORG/NAME from the hub cache) as a scorer.
pub fn load(spec: &str, device: &Device) -> Result<Box<dyn LanguageModel>> {
    Ok(Box::new(HfLlama::load(spec, device)?))
}

impl HfLlama {
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let files = resolve(spec)?;
        let config = read_config(spec, &files.config)?;
        for w in &files.weights {
            crate::files::check_regular(w)?;
        }
        // SAFETY: the files are memory-mapped read-only; keel does not modify them while loaded.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files.weights) }.map_err(|e| {
            InputError(format!(
                "--hf-model {spec}: cannot read the weights as safetensors: {e}\n  restore the model's .safetensors files"
            ))
        })?;
        let mut n_params = 0;
        for (name, shape) in expected_tensors(&config) {
            let view = st.get(&name).map_err(|_| {
                InputError(format!(
                    "--hf-model {spec}: the weights lack {name}, which config.json's Llama needs\n  restore the model's .safetensors files or its config.json"
                ))
            })?;
            if view.shape() != shape.as_slice() {
                return Err(InputError(format!(
                    "--hf-model {spec}: {name} has shape {:?}, config.json needs {shape:?}\n  the weights and config.json belong to different models",
                    view.shape()
                ))
                .into());
            }
            n_params += shape.iter().product::<usize>();
        }
        drop(st);
        // SAFETY: as above.
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files.weights, DType::F32, device) }?;
        let model = Llama::load(vb, &config).context("loading the Llama weights")?;
        let tok_spec = if Path::new(spec).is_dir() { spec.to_string() } else { format!("hf:{spec}") };
        let tokenizer = load_tokenizer(&files.tokenizer, &tok_spec, &config)?;
        let name = if Path::new(spec).is_dir() { format!("Llama folder {spec}") } else { format!("hub model {spec}") };
        Ok(HfLlama { name, model, config, tokenizer, device: device.clone(), n_params, last: None, decoding: None })
    }

    /// Last-position logits of `tokens` fed at positions `pos..`.
    fn forward(&self, tokens: &[u32], pos: usize, cache: &mut Cache) -> Result<Vec<f32>> {
        let x = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&x, pos, cache)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1()?)
    }

    /// Logits after `ctx` and the cache holding it, reusing the previous request's work when `ctx`
    /// equals or extends its context.
    fn context(&mut self, ctx: &[u32]) -> Result<(Vec<f32>, Cache)> {
        let (logits, cache) = match self.last.take() {
            Some((prev, logits, cache)) if prev == ctx => (logits, cache),
            Some((prev, _, mut cache)) if ctx.len() > prev.len() && ctx.starts_with(&prev) => {
                let logits = self.forward(&ctx[prev.len()..], prev.len(), &mut cache)?;
                (logits, cache)
            }
            _ => {
                let mut cache = Cache::new(true, DType::F32, &self.config, &self.device)?;
                let logits = self.forward(ctx, 0, &mut cache)?;
                (logits, cache)
            }
        };
        self.last = Some((ctx.to_vec(), logits.clone(), cache.clone()));
        Ok((logits, cache))
    }

    fn score_one(&mut self, r: &Request) -> Result<Scored> {
        let (mut logits, mut cache) = self.context(&r.tokens[..r.cont_start])?;
        let n = r.tokens.len() - r.cont_start;
        let mut s = Scored { logprob: 0.0, greedy: true, n_tokens: n };
        for (j, &t) in r.tokens[r.cont_start..].iter().enumerate() {
            anyhow::ensure!((t as usize) < logits.len(), "token id {t} is outside the model's vocabulary");
            let (lp, greedy) = log_softmax_at(&logits, t as usize);
            s.logprob += lp;
            s.greedy &= greedy;
            if j + 1 < n {
                logits = self.forward(&[t], r.cont_start + j, &mut cache)?;
            }
        }
        Ok(s)
    }
}

/// The model's tokenizer; its end-of-text token is the model's eos (config.json), else one of the
/// usual names. A byte-level tokenizer identical to keel's `byte` gets the byte fast path.
fn load_tokenizer(path: &Path, spec: &str, config: &Config) -> Result<KeelTokenizer> {
    let mut tok = KeelTokenizer::from_prepared(path, spec)?;
    if tok.vocab_size() == 256 && tok.inner.get_added_tokens_decoder().is_empty() {
        let byte = KeelTokenizer::byte();
        if tok.inner.to_string(false).ok() == byte.inner.to_string(false).ok() {
            return Ok(byte);
        }
    }
    let eos = match &config.eos_token_id {
        Some(LlamaEosToks::Single(id)) => Some(*id),
        Some(LlamaEosToks::Multiple(ids)) => ids.first().copied(),
        None => None,
    };
    if let Some(id) = eos.filter(|&id| (id as usize) < tok.vocab_size()) {
        tok.eot = Some(id);
    }
    Ok(tok)
}

impl LanguageModel for HfLlama {
    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "{} (Llama via candle-transformers, {} layers, hidden {}, {} params)",
            self.name, c.num_hidden_layers, c.hidden_size, self.n_params
        )
    }

    fn max_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn tokenizer(&self) -> &KeelTokenizer {
        &self.tokenizer
    }

    fn score(&mut self, requests: &[Request], done: &mut dyn FnMut(usize)) -> Result<Vec<Scored>> {
        super::check_fits(requests, self.max_len())?;
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            out.push(self.score_one(r).context("scoring a request")?);
            done(1);
        }
        Ok(out)
    }

    fn greedy(
        &mut self,
        prompts: &[Vec<u32>],
        max_new: usize,
        done: &mut dyn FnMut(usize, &[u32]) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            out.push(crate::decode::greedy_one(self, p, max_new, |new| done(i, new))?);
        }
        Ok(out)
    }
}

impl crate::decode::Decoder for HfLlama {
    fn describe(&self) -> String {
        format!("{} (KV cache)", LanguageModel::describe(self))
    }

    fn context_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn tokenizer(&self) -> &KeelTokenizer {
        &self.tokenizer
    }

    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = Cache::new(true, DType::F32, &self.config, &self.device)?;
        let logits = self.forward(tokens, 0, &mut cache)?;
        self.decoding = Some((cache, tokens.len()));
        Ok(logits)
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let (mut cache, pos) = self.decoding.take().context("internal: a step before the prefill")?;
        let logits = self.forward(&[token], pos, &mut cache)?;
        self.decoding = Some((cache, pos + 1));
        Ok(logits)
    }
}
