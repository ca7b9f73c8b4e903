//! One validation pass: ranges and cross-field rules checked, derived values filled, giving a
//! [`Resolved`] experiment; and what a run's config may change on resume.

// `!(x > 0.0)` is deliberate below: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::schema::{err, Config, ConfigError, FfnKind, ModelConfig, TrainConfig};

impl Config {
    /// Validates every field once and fills derived values.
    pub fn resolve(&self, data_vocab: usize) -> Result<Resolved, ConfigError> {
        let m = &self.model;
        let t = &self.train;
        let mut problems = Vec::new();
        let mut bad = |cond: bool, msg: String| {
            if cond {
                problems.push(msg)
            }
        };
        bad(m.depth == 0, "model.depth must be at least 2 (it counts sub-layers: attention and FFN each count)".into());
        bad(
            m.depth % 2 == 1,
            format!(
                "model.depth = {} is odd: depth counts sub-layers and a block has two (attention + FFN); use {} or {}",
                m.depth,
                m.depth - 1,
                m.depth + 1
            ),
        );
        bad(m.d_model == 0, "model.d_model must be positive".into());
        bad(m.n_heads == 0, "model.n_heads must be positive".into());
        let n_kv_heads = m.n_kv_heads.unwrap_or(m.n_heads);
        if m.n_heads > 0 && m.d_model > 0 {
            bad(
                !m.d_model.is_multiple_of(m.n_heads),
                format!(
                    "model.n_heads = {} does not divide model.d_model = {}: pick a head count that divides it",
                    m.n_heads, m.d_model
                ),
            );
            let hd = m.d_model / m.n_heads.max(1);
            bad(hd % 2 == 1, format!("head size d_model / n_heads = {hd} is odd; RoPE needs an even head size"));
            bad(
                n_kv_heads == 0 || !m.n_heads.is_multiple_of(n_kv_heads),
                format!(
                    "model.n_kv_heads = {n_kv_heads} must divide model.n_heads = {} (grouped-query attention)",
                    m.n_heads
                ),
            );
        }
        let d_ff = m.d_ff.unwrap_or(match m.ffn {
            FfnKind::Swiglu => 3 * m.d_model,
            FfnKind::Gelu => 4 * m.d_model,
        });
        bad(d_ff == 0, "model.d_ff must be positive".into());
        bad(!(m.norm_eps > 0.0), "model.norm_eps must be > 0".into());
        bad(!(m.rope_theta > 0.0), "model.rope_theta must be > 0".into());
        bad(!(m.init_std > 0.0 && m.init_std.is_finite()), "model.init_std must be > 0".into());
        let alpha = m.alpha.at_depth(m.depth);
        bad(
            !(alpha > 0.0 && alpha.is_finite()),
            format!(
                "model.alpha = {} gives {alpha}, which is not positive: use \"L\" (the paper's choice), a positive multiple such as \"4L\" or \"sqrtL\", or a number > 0", m.alpha
            ),
        );
        bad(
            !(0.0..=1.0).contains(&m.mix_ln_fraction),
            format!("model.mix_ln_fraction = {} must lie in [0, 1]", m.mix_ln_fraction),
        );
        let vocab_size = m.vocab_size.unwrap_or(data_vocab);
        bad(vocab_size < data_vocab, format!("model.vocab_size = {vocab_size} is smaller than the data's vocabulary ({data_vocab}); remove the key to use the data's"));
        bad(t.steps == 0, "train.steps must be at least 1".into());
        bad(t.batch_size == 0, "train.batch_size must be at least 1".into());
        bad(t.seq_len < 2, "train.seq_len must be at least 2".into());
        bad(!(t.lr > 0.0 && t.lr.is_finite()), format!("train.lr = {} must be > 0", t.lr));
        bad(
            !(t.min_lr >= 0.0 && t.min_lr <= t.lr),
            format!("train.min_lr = {} must lie in [0, train.lr = {}]", t.min_lr, t.lr),
        );
        bad(!(0.0..1.0).contains(&t.beta1), format!("train.beta1 = {} must lie in [0, 1)", t.beta1));
        bad(!(0.0..1.0).contains(&t.beta2), format!("train.beta2 = {} must lie in [0, 1)", t.beta2));
        bad(!(t.eps > 0.0), "train.eps must be > 0".into());
        bad(!(t.weight_decay >= 0.0), "train.weight_decay must be >= 0".into());
        bad(!(t.grad_clip >= 0.0), "train.grad_clip must be >= 0 (0 disables clipping)".into());
        bad(t.grad_accum == 0, "train.grad_accum must be at least 1".into());
        bad(t.log_every == 0, "train.log_every must be at least 1".into());
        bad(t.eval_batches == 0, "train.eval_batches must be at least 1".into());
        bad(t.keep_checkpoints == 0, "train.keep_checkpoints must be at least 1".into());
        let dv = &self.divergence;
        bad(
            !(dv.spike_factor > 1.0 && dv.recover_factor >= 1.0),
            "divergence.spike_factor must be > 1 and divergence.recover_factor >= 1".into(),
        );
        bad(!(0.0..1.0).contains(&dv.ema), "divergence.ema must lie in [0, 1)".into());
        bad(
            !(dv.stall_tolerance > 0.0 && dv.min_improvement >= 0.0 && dv.min_improvement < 1.0),
            "divergence.stall_tolerance must be > 0 and divergence.min_improvement in [0, 1)".into(),
        );
        bad(
            dv.stall_window == 0 || dv.recover_window == 0,
            "divergence.stall_window and divergence.recover_window must be at least 1".into(),
        );
        let d = &self.data;
        bad(
            !(d.val_fraction > 0.0 && d.val_fraction < 1.0),
            format!("data.val_fraction = {} must lie in (0, 1)", d.val_fraction),
        );
        bad(d.source.is_empty(), "data.source is empty: use \"synthetic\" or a path to a text file".into());
        bad(d.path.is_some() && d.source != "synthetic", format!("both data.path ({:?}) and data.source ({:?}) are set: keep one (data.path for prepared shards, data.source for synthetic or a text file)", d.path.as_deref().unwrap_or(""), d.source));
        bad(
            d.tokenizer.is_some() && d.path.is_none(),
            "data.tokenizer checks prepared data: set data.path too, or remove data.tokenizer".into(),
        );
        bad(d.synthetic_bytes < 10_000, "data.synthetic_bytes must be at least 10000".into());
        bad(
            self.run.name.is_empty() || self.run.name.contains(['/', '\\']),
            format!("run.name = {:?} must be a non-empty name without slashes (use --out for a path)", self.run.name),
        );
        if !problems.is_empty() {
            return err(format!(
                "invalid config ({} problem{}):\n  - {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("\n  - ")
            ));
        }
        let mut resolved = self.clone();
        resolved.model.n_kv_heads = Some(n_kv_heads);
        resolved.model.d_ff = Some(d_ff);
        resolved.model.vocab_size = Some(vocab_size);
        resolved.model.final_norm = Some(m.final_norm.unwrap_or(m.placement.default_final_norm()));
        resolved.meta = None;
        Ok(Resolved { config: resolved, alpha })
    }
}

/// Keys that `keel train --resume --force` accepts changing: they do not alter anything computed
/// up to the checkpoint (total steps changes the schedule from there on, as the user asked). The
/// data's paths say where the data lives, not what it is: its identity (see
/// `data::identity`) is checked on its own, so a moved folder resumes and other data does not.
pub const SAFE_TO_CHANGE_ON_RESUME: [&str; 10] = [
    "train.steps",
    "train.recompute",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "run.name",
    "run.out_dir",
    "run.device",
    "data.path",
    "data.source",
];

/// [`SAFE_TO_CHANGE_ON_RESUME`] before the data's paths joined it: the fingerprint of checkpoints
/// written by earlier keels (see [`Resolved::legacy_fingerprint`]).
const LEGACY_SAFE: [&str; 8] = [
    "train.steps",
    "train.recompute",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "run.name",
    "run.out_dir",
    "run.device",
];

impl Config {
    /// Every key as `section.key` with its value (JSON text), meta left out.
    pub fn flatten(&self) -> std::collections::BTreeMap<String, String> {
        let mut c = self.clone();
        c.meta = None;
        let value = serde_json::to_value(&c).expect("config serializes");
        let mut out = std::collections::BTreeMap::new();
        for (section, body) in value.as_object().expect("object") {
            for (key, v) in body.as_object().into_iter().flatten() {
                out.insert(format!("{section}.{key}"), v.to_string());
            }
        }
        out
    }

    /// Keys whose values differ: (key, self's value, other's value).
    pub fn diff(&self, other: &Config) -> Vec<(String, String, String)> {
        let (a, b) = (self.flatten(), other.flatten());
        a.iter()
            .filter_map(|(k, va)| {
                let vb = b.get(k).cloned().unwrap_or_else(|| "null".into());
                (*va != vb).then(|| (k.clone(), va.clone(), vb))
            })
            .collect()
    }
}

/// A validated experiment: every `Option` in `config.model` is filled.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub config: Config,
    /// Keel's residual scale as a number.
    pub alpha: f64,
}

impl Resolved {
    pub fn model(&self) -> &ModelConfig {
        &self.config.model
    }
    pub fn train(&self) -> &TrainConfig {
        &self.config.train
    }
    pub fn n_kv_heads(&self) -> usize {
        self.config.model.n_kv_heads.expect("resolved")
    }
    pub fn d_ff(&self) -> usize {
        self.config.model.d_ff.expect("resolved")
    }
    pub fn vocab_size(&self) -> usize {
        self.config.model.vocab_size.expect("resolved")
    }
    pub fn final_norm(&self) -> bool {
        self.config.model.final_norm.expect("resolved")
    }
    pub fn head_dim(&self) -> usize {
        self.config.model.d_model / self.config.model.n_heads
    }
    pub fn blocks(&self) -> usize {
        self.config.model.depth / 2
    }

    /// What the placement's per-sub-layer choices depend on.
    pub fn stack(&self) -> crate::placement::Stack {
        let m = &self.config.model;
        crate::placement::Stack {
            depth: m.depth,
            alpha: self.alpha,
            keel_first_layer: m.keel_first_layer,
            mix_ln_fraction: m.mix_ln_fraction,
            hybrid_norm_star: m.hybrid_norm_star,
        }
    }

    /// sha256 over every key that determines the computation (all but
    /// [`SAFE_TO_CHANGE_ON_RESUME`]): checkpoints carry it, so one from another experiment is
    /// recognised.
    pub fn fingerprint(&self) -> String {
        self.fingerprint_without(&SAFE_TO_CHANGE_ON_RESUME)
    }

    /// The fingerprint as keels before the data's paths became safe to change computed it (with
    /// the paths as `config.toml` spells them), which their checkpoints carry.
    pub fn legacy_fingerprint(&self) -> String {
        self.fingerprint_without(&LEGACY_SAFE)
    }

    fn fingerprint_without(&self, left_out: &[&str]) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (k, v) in self.config.flatten() {
            if !left_out.contains(&k.as_str()) {
                h.update(format!("{k}={v}\n").as_bytes());
            }
        }
        format!("{:x}", h.finalize())
    }

    /// The resolved config as TOML, with a `[meta]` provenance table.
    pub fn to_toml(&self, meta: toml::Table) -> String {
        let mut c = self.config.clone();
        c.meta = Some(meta);
        toml::to_string_pretty(&c).expect("config serializes")
    }
}
