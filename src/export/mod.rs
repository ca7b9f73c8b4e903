//! `keel export`: a run's weights for other tools.
//!
//! A run whose every sub-layer is Pre-LN (x + F(N(x))) with RMSNorm, a SwiGLU FFN and a final
//! norm computes exactly what Hugging Face's `LlamaForCausalLM` computes, so it is written as a
//! Llama folder (`config.json`, `model.safetensors` under Llama's tensor names,
//! `generation_config.json`, `tokenizer.json`) that transformers, candle-transformers, llama.cpp's
//! converter and `keel eval --hf-model` load as they are. The mapping:
//!
//! ```text
//! tok_emb (V, C)                        -> model.embed_tokens.weight (V, C)
//! blocks.i.attn.norm.weight             -> model.layers.i.input_layernorm.weight
//! blocks.i.attn.wqkv (C, (H+2Hkv)D)     -> self_attn.{q,k,v}_proj.weight, columns [q | k | v], transposed
//! blocks.i.attn.wo (H D, C)             -> self_attn.o_proj.weight (C, H D)
//! blocks.i.ffn.norm.weight              -> model.layers.i.post_attention_layernorm.weight
//! blocks.i.ffn.w_in (C, 2F)             -> mlp.{gate,up}_proj.weight, columns [gate | up], transposed
//! blocks.i.ffn.w_out (F, C)             -> mlp.down_proj.weight (C, F)
//! final_norm.weight                     -> model.norm.weight
//! lm_head (C, V)                        -> lm_head.weight (V, C), absent when tied
//! ```
//!
//! keel stores weights (in, out) and applies `x W`; PyTorch stores (out, in) and applies `x W^T`,
//! hence the transposes. keel's RoPE is already Llama's: it rotates the pairs `(x[j], x[j + D/2])`
//! of each head ("rotate half", non-interleaved) by t * theta^(-2j/D), exactly as transformers'
//! `rotate_half`, so q and k need no row permutation (Meta's original checkpoints, which rotate
//! interleaved pairs `(x[2j], x[2j + 1])`, do need one). `tests/export.rs` checks this: logits from
//! candle-transformers' Llama equal keel's for sequences of 1 to 16 tokens, and an interleaving permutation
//! breaks them. Grouped KV heads match too: query head h reads KV head h / (H / Hkv) in both.
//!
//! Every other run (Keel, Post-LN, DeepNorm, Mix-LN, HybridNorm, and Pre-LN runs with LayerNorm,
//! GELU or no final norm) has no Llama equivalent; it is written as a transformers model with
//! remote code ([`hf`]): `config.json` (`model_type` "keel", `auto_map`), keel's own
//! `configuration_keel.py` and `modeling_keel.py`, `model.safetensors` under the names that code
//! declares, and the tokenizer files. transformers loads it with `trust_remote_code=True`.

pub mod hf;

use crate::config::{FfnKind, NormKind, Resolved};
use crate::model::{Branch, Model, Residual};
use crate::run_dir::{self, LoadedRun};
use crate::InputError;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The format an export was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face `LlamaForCausalLM`.
    Llama,
    /// `KeelForCausalLM`, transformers with remote code ([`hf`]); `reason` says why the run is not
    /// a Llama.
    Keel { reason: String },
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub format: Format,
    pub out: PathBuf,
    /// Files written into `out`, in order.
    pub files: Vec<String>,
    pub n_params: usize,
}

/// Ok when `model` computes exactly a Llama; otherwise the reason it cannot be one.
pub fn llama_compatible(r: &Resolved, model: &Model) -> Result<(), String> {
    let m = r.model();
    for sl in &model.sublayers {
        if let Some(why) = m.placement.llama_mismatch(sl.residual.form(), r.alpha) {
            return Err(why);
        }
        if let Branch::Attn(a) = &sl.branch {
            if a.qkv_norm.is_some() {
                return Err(format!("{}: Llama has no Q, K, V normalization", m.placement));
            }
        }
    }
    if m.norm != NormKind::RmsNorm {
        return Err("LayerNorm (mean-centred, with a bias) is not Llama's RMSNorm".into());
    }
    if m.ffn != FfnKind::Swiglu {
        return Err("a GELU FFN W_out(gelu(x W_in)) is not Llama's SwiGLU MLP".into());
    }
    if model.final_norm.is_none() {
        return Err("the run has no final norm, and Llama always normalizes before its head".into());
    }
    if !m.d_model.is_multiple_of(m.n_heads) {
        return Err(format!("d_model {} is not a multiple of n_heads {}", m.d_model, m.n_heads));
    }
    Ok(())
}

/// keel's (in, out) weight as PyTorch's (out, in), in f32.
pub(super) fn torch(w: &Tensor) -> candle_core::Result<Tensor> {
    w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.t()?.contiguous()
}

pub(super) fn f32_cpu(w: &Tensor) -> candle_core::Result<Tensor> {
    w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.contiguous()
}

/// An attention branch's projections as PyTorch (out, in) weights `{p}.self_attn.{q,k,v,o}_proj.weight`
/// (Llama's names, which the Keel export shares).
pub(super) fn insert_attention_projections(
    out: &mut HashMap<String, Tensor>,
    p: &str,
    a: &crate::model::Attention,
) -> Result<()> {
    let (q, kv) = (a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim);
    anyhow::ensure!(a.wqkv.dim(1)? == q + 2 * kv, "internal: wqkv width");
    // Columns [q | k | v]; within each, head-major (head h at h*D..(h+1)*D), as Llama.
    out.insert(format!("{p}.self_attn.q_proj.weight"), torch(&a.wqkv.narrow(1, 0, q)?)?);
    out.insert(format!("{p}.self_attn.k_proj.weight"), torch(&a.wqkv.narrow(1, q, kv)?)?);
    out.insert(format!("{p}.self_attn.v_proj.weight"), torch(&a.wqkv.narrow(1, q + kv, kv)?)?);
    out.insert(format!("{p}.self_attn.o_proj.weight"), torch(&a.wo)?);
    Ok(())
}

/// An FFN branch as `{p}.mlp.{gate,up,down}_proj.weight` (SwiGLU) or `{p}.mlp.{up,down}_proj.weight`
/// (GELU), PyTorch (out, in).
pub(super) fn insert_mlp(out: &mut HashMap<String, Tensor>, p: &str, f: &crate::model::Ffn) -> Result<()> {
    let d_ff = f.w_out.dim(0)?;
    match f.kind {
        // ops::swiglu: silu(h[.., ..F]) * h[.., F..], so columns are [gate | up].
        FfnKind::Swiglu => {
            anyhow::ensure!(f.w_in.dim(1)? == 2 * d_ff, "internal: w_in width");
            out.insert(format!("{p}.mlp.gate_proj.weight"), torch(&f.w_in.narrow(1, 0, d_ff)?)?);
            out.insert(format!("{p}.mlp.up_proj.weight"), torch(&f.w_in.narrow(1, d_ff, d_ff)?)?);
        }
        FfnKind::Gelu => {
            anyhow::ensure!(f.w_in.dim(1)? == d_ff, "internal: w_in width");
            out.insert(format!("{p}.mlp.up_proj.weight"), torch(&f.w_in)?);
        }
    }
    out.insert(format!("{p}.mlp.down_proj.weight"), torch(&f.w_out)?);
    Ok(())
}

/// The model's tensors under Llama's names, f32, (out, in). The model must pass
/// [`llama_compatible`].
pub fn llama_tensors(model: &Model) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    out.insert("model.embed_tokens.weight".to_string(), f32_cpu(&model.tok_emb)?);
    for sl in &model.sublayers {
        let p = format!("model.layers.{}", sl.index / 2);
        let Residual::Pre { norm } = &sl.residual else {
            anyhow::bail!("internal: sub-layer {} is not Pre-LN", sl.index);
        };
        match &sl.branch {
            Branch::Attn(a) => {
                out.insert(format!("{p}.input_layernorm.weight"), f32_cpu(&norm.gamma)?);
                insert_attention_projections(&mut out, &p, a)?;
            }
            Branch::Ffn(f) => {
                out.insert(format!("{p}.post_attention_layernorm.weight"), f32_cpu(&norm.gamma)?);
                anyhow::ensure!(f.kind == FfnKind::Swiglu, "internal: a Llama MLP is SwiGLU");
                insert_mlp(&mut out, &p, f)?;
            }
        }
    }
    let norm = model.final_norm.as_ref().context("internal: no final norm")?;
    out.insert("model.norm.weight".to_string(), f32_cpu(&norm.gamma)?);
    if let Some(head) = &model.head {
        out.insert("lm_head.weight".to_string(), torch(head)?);
    }
    Ok(out)
}

/// Hugging Face `config.json` for a Llama-compatible run; `eos` is the tokenizer's end-of-text id.
pub fn llama_config(r: &Resolved, eos: Option<u32>) -> serde_json::Value {
    let m = r.model();
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": m.d_model,
        "intermediate_size": r.d_ff(),
        "num_hidden_layers": r.blocks(),
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": r.n_kv_heads(),
        "head_dim": r.head_dim(),
        "hidden_act": "silu",
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "rope_scaling": null,
        "max_position_embeddings": r.train().seq_len,
        "vocab_size": r.vocab_size(),
        "tie_word_embeddings": m.tie_embeddings,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": m.init_std,
        "pretraining_tp": 1,
        "use_cache": true,
        "torch_dtype": "float32",
        "bos_token_id": eos,
        "eos_token_id": eos,
    })
}

/// Checks that `out` can receive an export: absent, or an empty folder. Creates it.
pub fn prepare_out(out: &Path) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(InputError(format!(
                "export folder {} is a file\n  pass --hf with a new or empty folder",
                out.display()
            ))
            .into());
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| {
            InputError(format!("cannot read export folder {}: {e}\n  pass --hf with a readable folder", out.display()))
        })?;
        if entries.next().is_some() {
            return Err(InputError(format!(
                "export folder {} already holds files; keel export never overwrites\n  pass --hf with a new or empty folder, or empty this one",
                out.display()
            ))
            .into());
        }
    }
    std::fs::create_dir_all(out).map_err(|e| {
        InputError(format!("cannot create export folder {}: {e}\n  pass --hf with a writable location", out.display()))
    })?;
    Ok(())
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    InputError(format!(
        "cannot write {}: {e}\n  pass --hf with a writable folder that has room for the weights",
        path.display()
    ))
    .into()
}

/// Writes `bytes` to `out/name` atomically.
fn write_file(out: &Path, name: &str, bytes: &[u8], files: &mut Vec<String>) -> Result<()> {
    let path = out.join(name);
    crate::files::write_atomic(&path, bytes).map_err(|e| write_err(&path, e))?;
    files.push(name.to_string());
    Ok(())
}

/// Saves `tensors` as `out/name` through a temporary name and a rename.
fn write_safetensors(out: &Path, name: &str, tensors: &HashMap<String, Tensor>, files: &mut Vec<String>) -> Result<()> {
    let path = out.join(name);
    let tmp = out.join(format!(".{name}.{}.tmp", std::process::id()));
    if let Err(e) = candle_core::safetensors::save(tensors, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(&path, e));
    }
    // safetensors creates its file owner-only; an export is meant to be shared.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(|e| write_err(&path, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| write_err(&path, e))?;
    files.push(name.to_string());
    Ok(())
}

/// `tokenizer_config.json`: without it transformers guesses a tokenizer class (Llama's adds a BOS
/// outside the vocabulary) and lm-evaluation-harness finds no prefix token. The end-of-text token
/// serves as BOS and EOS and is never added automatically; a tokenizer without one (bytes) gets
/// the newline, which is what `keel eval` puts before an empty context too.
fn tokenizer_config(run: &LoadedRun) -> serde_json::Value {
    let tok = &run.tokenizer;
    let special = match tok.eot {
        Some(id) => tok.inner.id_to_token(id),
        None => tok.encode("\n").ok().and_then(|ids| ids.first().and_then(|&id| tok.inner.id_to_token(id))),
    };
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": special,
        "eos_token": special,
        "add_bos_token": false,
        "add_eos_token": false,
        "model_max_length": run.resolved.train().seq_len,
    })
}

fn llama_readme(run: &LoadedRun) -> String {
    let m = run.resolved.model();
    format!(
        "# keel export: Llama\n\n\
         Exported by keel {} from run `{}`: a Pre-LN, RMSNorm, SwiGLU decoder (d_model {}, {} blocks, {} heads, \
         {} KV heads, {} params) in Hugging Face's `LlamaForCausalLM` layout. `config.json`, \
         `model.safetensors` (f32) and `tokenizer.json` load with transformers or candle-transformers as they \
         are.\n\nkeel's RoPE rotates the halves of each head (`rotate_half`), as Llama does, so no weight was \
         permuted; keel's (in, out) weights were transposed to (out, in), its fused `wqkv` split into q, k and v, \
         and its SwiGLU `w_in` ([gate | up]) into gate_proj and up_proj.\n\nThe model was trained with \
         sequences of {} tokens (`max_position_embeddings`).\n",
        crate::VERSION,
        run.dir.display(),
        m.d_model,
        run.resolved.blocks(),
        m.n_heads,
        run.resolved.n_kv_heads(),
        run.model.n_params(),
        run.resolved.train().seq_len,
    )
}

/// Exports `run` into `out` (absent or empty): Llama when [`llama_compatible`], else
/// `KeelForCausalLM` with remote code.
pub fn export(run: &LoadedRun, out: &Path) -> Result<Exported> {
    prepare_out(out)?;
    let mut files = Vec::new();
    let eos = run.tokenizer.eot;
    let source = run.dir.display().to_string();
    let (format, tensors, config) = match llama_compatible(&run.resolved, &run.model) {
        Ok(()) => (Format::Llama, llama_tensors(&run.model)?, llama_config(&run.resolved, eos)),
        Err(reason) => {
            let config = hf::config(&run.resolved, &run.model, eos, &source);
            (Format::Keel { reason }, hf::tensors(&run.model)?, config)
        }
    };
    write_safetensors(out, "model.safetensors", &tensors, &mut files)?;
    crate::fault::pause_point("export-after-weights");
    write_file(out, "config.json", serde_json::to_string_pretty(&config)?.as_bytes(), &mut files)?;
    if let Format::Keel { .. } = &format {
        write_file(out, "configuration_keel.py", hf::CONFIGURATION_PY.as_bytes(), &mut files)?;
        write_file(out, "modeling_keel.py", hf::MODELING_PY.as_bytes(), &mut files)?;
    }
    let generation = serde_json::json!({ "bos_token_id": eos, "eos_token_id": eos, "do_sample": false });
    write_file(out, "generation_config.json", serde_json::to_string_pretty(&generation)?.as_bytes(), &mut files)?;
    // Llama's folder names its tokenizer as keel's run directory does.
    let tok_path = out.join(run_dir::TOKENIZER);
    run.tokenizer.save(&tok_path).map_err(|e| write_err(&tok_path, e))?;
    files.push(run_dir::TOKENIZER.to_string());
    let tc = serde_json::to_string_pretty(&tokenizer_config(run))?;
    write_file(out, "tokenizer_config.json", tc.as_bytes(), &mut files)?;
    let readme = match &format {
        Format::Llama => llama_readme(run),
        Format::Keel { reason } => hf::readme(&run.resolved, &run.model, &source, reason),
    };
    write_file(out, "README.md", readme.as_bytes(), &mut files)?;
    Ok(Exported { format, out: out.to_path_buf(), files, n_params: run.model.n_params() })
}

/// `keel export --run RUN --hf OUT`, from paths: checks the inputs, loads the run on the CPU and
/// exports it.
pub fn export_dir(run_dir: &Path, out: &Path) -> Result<Exported> {
    if !run_dir.is_dir() {
        return Err(InputError(format!(
            "run directory {} does not exist\n  pass --run with a folder written by `keel train`",
            run_dir.display()
        ))
        .into());
    }
    // Refuse a non-empty OUT before the (possibly slow) load.
    if out.exists() && (!out.is_dir() || std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true)) {
        prepare_out(out)?;
    }
    let run = crate::run_dir::load_run(run_dir, &Device::Cpu)?;
    // A stop halfway leaves no partial export: the folder is as it was (absent, or empty).
    let existed = out.exists();
    let shown = out.to_path_buf();
    crate::signals::on_stop(move || {
        let removed = if existed {
            std::fs::read_dir(&shown)
                .map(|rd| rd.flatten().all(|e| std::fs::remove_file(e.path()).is_ok()))
                .unwrap_or(true)
        } else {
            !shown.exists() || std::fs::remove_dir_all(&shown).is_ok()
        };
        if removed {
            format!("the partial export in {} was removed; run the same command again", shown.display())
        } else {
            format!(
                "{} holds a partial export that keel could not remove: empty it, then run the same command again",
                shown.display()
            )
        }
    });
    export(&run, out)
}
