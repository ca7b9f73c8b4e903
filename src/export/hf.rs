//! Every run that is not a Llama, as a Hugging Face transformers model with remote code.
//!
//! The folder holds `config.json` (`model_type` "keel", `architectures` `KeelForCausalLM`,
//! `auto_map` for AutoConfig, AutoModel and AutoModelForCausalLM), keel's
//! [`CONFIGURATION_PY`] and [`MODELING_PY`] (the Python files in this folder of the repository,
//! copied byte for byte), `model.safetensors` (f32) under the names that code declares,
//! `generation_config.json`, `tokenizer.json`, `tokenizer_config.json` and a `README.md`.
//!
//! `config.json` carries every number the Python needs, including the residual form and alpha of
//! each sub-layer (from the model keel built, so the Python re-derives no placement rule). The
//! tensor names:
//!
//! ```text
//! tok_emb (V, C)                     -> model.embed_tokens.weight (V, C)
//! blocks.i.attn.wqkv (C, (H+2Hkv)D)  -> model.layers.i.self_attn.{q,k,v}_proj.weight, transposed
//! blocks.i.attn.wo (H D, C)          -> model.layers.i.self_attn.o_proj.weight (C, H D)
//! blocks.i.attn.{q,k,v}_norm         -> model.layers.i.self_attn.{q,k,v}_norm   (HybridNorm)
//! blocks.i.ffn.w_in (C, 2F) SwiGLU   -> model.layers.i.mlp.{gate,up}_proj.weight, transposed
//! blocks.i.ffn.w_in (C, F) GELU      -> model.layers.i.mlp.up_proj.weight (F, C)
//! blocks.i.ffn.w_out (F, C)          -> model.layers.i.mlp.down_proj.weight (C, F)
//! blocks.i.{attn,ffn}.norm           -> model.layers.i.{attn,ffn}_norm_in   (pre, normed_shortcut)
//!                                       model.layers.i.{attn,ffn}_norm_out  (post)
//! blocks.i.{attn,ffn}.norm_in/out    -> model.layers.i.{attn,ffn}_norm_in/out (keel)
//! final_norm                         -> model.norm
//! lm_head (C, V)                     -> lm_head.weight (V, C), absent when tied
//! ```
//!
//! Norms are `.weight`, plus `.bias` for LayerNorm.

use super::{f32_cpu, insert_attention_projections, insert_mlp, torch};
use crate::config::Resolved;
use crate::model::{Branch, Model, Norm, Residual, SubLayerKind};
use crate::placement::ResidualForm;
use anyhow::Result;
use candle_core::Tensor;
use std::collections::HashMap;

/// `configuration_keel.py`, as written into every remote-code export.
pub const CONFIGURATION_PY: &str = include_str!("configuration_keel.py");
/// `modeling_keel.py`, as written into every remote-code export.
pub const MODELING_PY: &str = include_str!("modeling_keel.py");

/// The name `config.json` gives a residual form, and its alpha (1 where the form has none).
pub fn form_name(form: ResidualForm) -> (&'static str, f64) {
    match form {
        ResidualForm::Pre => ("pre", 1.0),
        ResidualForm::Post { alpha } => ("post", alpha),
        ResidualForm::Keel { alpha } => ("keel", alpha),
        ResidualForm::Plain => ("plain", 1.0),
        ResidualForm::NormedShortcut => ("normed_shortcut", 1.0),
    }
}

fn insert_norm(out: &mut HashMap<String, Tensor>, name: &str, norm: &Norm) -> candle_core::Result<()> {
    out.insert(format!("{name}.weight"), f32_cpu(&norm.gamma)?);
    if let Some(beta) = &norm.beta {
        out.insert(format!("{name}.bias"), f32_cpu(beta)?);
    }
    Ok(())
}

/// The model's tensors under `modeling_keel.py`'s names, f32, linear weights (out, in).
pub fn tensors(model: &Model) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    out.insert("model.embed_tokens.weight".to_string(), f32_cpu(&model.tok_emb)?);
    for sl in &model.sublayers {
        let p = format!("model.layers.{}", sl.index / 2);
        let which = match sl.kind {
            SubLayerKind::Attn => "attn",
            SubLayerKind::Ffn => "ffn",
        };
        match &sl.residual {
            Residual::Pre { norm } | Residual::NormedShortcut { norm } => {
                insert_norm(&mut out, &format!("{p}.{which}_norm_in"), norm)?
            }
            Residual::Post { norm, .. } => insert_norm(&mut out, &format!("{p}.{which}_norm_out"), norm)?,
            Residual::Keel { norm_in, norm_out, .. } => {
                insert_norm(&mut out, &format!("{p}.{which}_norm_in"), norm_in)?;
                insert_norm(&mut out, &format!("{p}.{which}_norm_out"), norm_out)?;
            }
            Residual::Plain => {}
        }
        match &sl.branch {
            Branch::Attn(a) => {
                insert_attention_projections(&mut out, &p, a)?;
                if let Some([qn, kn, vn]) = &a.qkv_norm {
                    insert_norm(&mut out, &format!("{p}.self_attn.q_norm"), qn)?;
                    insert_norm(&mut out, &format!("{p}.self_attn.k_norm"), kn)?;
                    insert_norm(&mut out, &format!("{p}.self_attn.v_norm"), vn)?;
                }
            }
            Branch::Ffn(f) => insert_mlp(&mut out, &p, f)?,
        }
    }
    if let Some(norm) = &model.final_norm {
        insert_norm(&mut out, "model.norm", norm)?;
    }
    if let Some(head) = &model.head {
        out.insert("lm_head.weight".to_string(), torch(head)?);
    }
    Ok(out)
}

fn kind_name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// `config.json` for [`tensors`]: `eos` is the tokenizer's end-of-text id, `source` the run
/// directory as given.
pub fn config(r: &Resolved, model: &Model, eos: Option<u32>, source: &str) -> serde_json::Value {
    let m = r.model();
    let (forms, alphas): (Vec<&str>, Vec<f64>) = model.sublayers.iter().map(|sl| form_name(sl.residual.form())).unzip();
    let mut keel_config = r.config.clone();
    keel_config.meta = None;
    serde_json::json!({
        "architectures": ["KeelForCausalLM"],
        "model_type": "keel",
        "auto_map": {
            "AutoConfig": "configuration_keel.KeelConfig",
            "AutoModel": "modeling_keel.KeelModel",
            "AutoModelForCausalLM": "modeling_keel.KeelForCausalLM",
        },
        "vocab_size": r.vocab_size(),
        "hidden_size": m.d_model,
        "intermediate_size": r.d_ff(),
        "num_hidden_layers": r.blocks(),
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": r.n_kv_heads(),
        "head_dim": r.head_dim(),
        "norm_type": kind_name(m.norm),
        "norm_eps": m.norm_eps,
        "ffn_type": kind_name(m.ffn),
        "qkv_norm": model.sublayers.iter().any(|sl| matches!(&sl.branch, Branch::Attn(a) if a.qkv_norm.is_some())),
        "final_norm": model.final_norm.is_some(),
        "residual_forms": forms,
        "residual_alphas": alphas,
        "rope_theta": m.rope_theta,
        "max_position_embeddings": r.train().seq_len,
        "initializer_range": m.init_std,
        "tie_word_embeddings": m.tie_embeddings,
        "use_cache": true,
        "torch_dtype": "float32",
        "bos_token_id": eos,
        "eos_token_id": eos,
        "keel": {
            "version": crate::VERSION,
            "placement": m.placement.as_str(),
            "source_run": source,
            "config": keel_config,
        },
    })
}

/// The folder's README.md; `reason` says why the run is not a Llama.
pub fn readme(r: &Resolved, model: &Model, source: &str, reason: &str) -> String {
    let m = r.model();
    let (forms, _): (Vec<&str>, Vec<f64>) = model.sublayers.iter().map(|sl| form_name(sl.residual.form())).unzip();
    let mut distinct: Vec<&str> = Vec::new();
    for f in &forms {
        if !distinct.contains(f) {
            distinct.push(f);
        }
    }
    format!(
        "# keel export: KeelForCausalLM (transformers, remote code)\n\n\
         Exported by keel {} from run `{source}`: placement `{}`, norm `{}`, ffn `{}`, {} blocks ({} sub-layers), \
         d_model {}, {} heads, {} KV heads, {} params, trained with sequences of {} tokens.\n\n\
         This run is not a Llama model ({reason}), so it is written with its own modeling code:\n\n\
         ```python\n\
         from transformers import AutoModelForCausalLM, AutoTokenizer\n\
         model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)\n\
         tokenizer = AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)\n\
         ```\n\n\
         `AutoModel` gives the decoder without its head (what vLLM's Transformers backend loads), and \
         lm-evaluation-harness takes `--model hf --model_args pretrained=DIR,trust_remote_code=True`.\n\n\
         ## Files\n\n\
         - `config.json`: `model_type` \"keel\" with `auto_map`; every size, the norm (`norm_type`, `norm_eps`), \
         the FFN (`ffn_type`), `qkv_norm`, `final_norm`, and per sub-layer (2i: block i's attention, 2i + 1: its FFN) \
         `residual_forms` and `residual_alphas` (this model uses: {}); `keel` records keel's version, the placement, \
         the source run and its config.\n\
         - `configuration_keel.py`, `modeling_keel.py`: the model for transformers 4.5x and 5.x (the forms, norms, \
         RoPE and attention are described at the top of each file).\n\
         - `model.safetensors`: float32 weights; linear weights (out, in) as PyTorch stores them.\n\
         - `tokenizer.json`, `tokenizer_config.json`: the run's tokenizer; `generation_config.json`.\n\n\
         The logits equal keel's own forward pass on float32 runs (keel's bf16 mixed precision rounds its products; \
         this model computes them in float32).\n",
        crate::VERSION,
        m.placement.as_str(),
        kind_name(m.norm),
        kind_name(m.ffn),
        r.blocks(),
        m.depth,
        m.d_model,
        m.n_heads,
        r.n_kv_heads(),
        model.n_params(),
        r.train().seq_len,
        distinct.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_has_a_name_the_python_knows() {
        let forms = [
            ResidualForm::Pre,
            ResidualForm::Post { alpha: 2.0 },
            ResidualForm::Keel { alpha: 8.0 },
            ResidualForm::Plain,
            ResidualForm::NormedShortcut,
        ];
        let known = CONFIGURATION_PY
            .lines()
            .find(|l| l.starts_with("RESIDUAL_FORMS = "))
            .expect("configuration_keel.py lists RESIDUAL_FORMS");
        for f in forms {
            let (name, alpha) = form_name(f);
            assert!(known.contains(&format!("\"{name}\"")), "{name} is not in {known}");
            match f {
                ResidualForm::Post { alpha: a } | ResidualForm::Keel { alpha: a } => assert_eq!(alpha, a),
                _ => assert_eq!(alpha, 1.0),
            }
        }
    }

    #[test]
    fn the_python_declares_every_name_the_export_writes() {
        for name in [
            "embed_tokens",
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "q_norm",
            "gate_proj",
            "up_proj",
            "down_proj",
            "_norm_in",
            "_norm_out",
            "self.norm",
            "lm_head",
            "self_attn",
            "self.mlp",
            "self.layers",
            "self.model",
        ] {
            assert!(MODELING_PY.contains(name), "modeling_keel.py has no {name}");
        }
        assert!(MODELING_PY.contains("from .configuration_keel import KeelConfig"));
        assert!(CONFIGURATION_PY.contains("model_type = \"keel\""));
    }
}
