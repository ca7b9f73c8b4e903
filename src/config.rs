//! Experiment configuration: typed TOML sections with defaults, `--set` overrides, and one
//! validation pass that turns the raw config into a [`Resolved`] experiment.
//!
//! Flow (ripgrep-style: raw -> resolved, once):
//! 1. the TOML file is parsed into a table (syntax errors name the line);
//! 2. `--set section.key=value` overrides are applied to that table;
//! 3. every key is checked against the known keys (derived from the structs themselves), and an
//!    unknown one is reported with the closest valid key;
//! 4. the table is deserialized into [`Config`] (type errors name the key);
//! 5. [`Config::resolve`] checks ranges and cross-field rules and fills derived values.

// `!(x > 0.0)` is deliberate below: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// A problem with the user's config or flags. Always exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Where normalization sits relative to the residual. Adding a placement means adding a variant
/// here and one arm in `model::Residual::for_sublayer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// x + F(LN(x)), with a final norm before the head.
    PreLn,
    /// LN(x + F(x)).
    PostLn,
    /// LN_out(alpha * x + F(LN_in(x))), alpha = L by default (Chen & Wei 2026).
    Keel,
    /// DeepNet: LN(a x + F(x)), a = (2N)^(1/4); FFN, value and output weights initialised
    /// scaled by (8N)^(-1/4) (N = blocks).
    Deepnorm,
    /// Mix-LN: the first `mix_ln_fraction` of blocks Post-LN, the rest Pre-LN.
    MixLn,
    /// HybridNorm: attention with Q, K, V each normalized after projection and no pre-norm,
    /// y = x + MHA(x); FFN z = N(y) + FFN(N(y)).
    HybridNorm,
}

impl Placement {
    pub const ALL: [Placement; 6] = [
        Placement::PostLn,
        Placement::Deepnorm,
        Placement::HybridNorm,
        Placement::MixLn,
        Placement::PreLn,
        Placement::Keel,
    ];

    pub fn parse(s: &str) -> Result<Placement, ConfigError> {
        let s = s.trim();
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|p| p.as_str()).collect();
            ConfigError(format!("unknown placement `{s}`: use one of {}", names.join(", ")))
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Placement::PreLn => "pre_ln",
            Placement::PostLn => "post_ln",
            Placement::Keel => "keel",
            Placement::Deepnorm => "deepnorm",
            Placement::MixLn => "mix_ln",
            Placement::HybridNorm => "hybrid_norm",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// x / rms(x) * gamma, no bias.
    RmsNorm,
    /// (x - mean) / std * gamma + beta.
    LayerNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    /// W_out(silu(x W_gate) * (x W_up)), d_ff = 3 d_model by default.
    Swiglu,
    /// W_out(gelu(x W_in)), d_ff = 4 d_model by default.
    Gelu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeelFirstLayer {
    /// Paper v2: the first attention is x + Attn(LN(x)) (no outer norm); the first FFN has alpha 1.
    V2,
    /// Paper v1: the whole first block is plain Pre-LN.
    V1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warmup, then cosine decay to `min_lr`.
    Cosine,
    /// Linear warmup, then linear decay to `min_lr`.
    Linear,
    /// Linear warmup, then constant `lr`.
    Constant,
}

/// Activation memory: keep every intermediate for the backward pass, or keep only each block's
/// input and recompute the block during the backward pass (one extra forward, same gradients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recompute {
    None,
    Blocks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    /// For gradient checks; slow.
    F64,
    /// Mixed precision for GPUs: matrix products in bf16; f32 master weights, AdamW moments,
    /// norms and residual stream (Keel's alpha * x needs f32, see the notes on Candle).
    Bf16,
}

/// Keel's residual scale: `"L"` (the number of sub-layers, the paper's choice), `"sqrtL"`, or a
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Alpha {
    Value(f64),
    Mode(AlphaMode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlphaMode {
    L,
    #[serde(rename = "sqrtL")]
    SqrtL,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Number of sub-layers L (attention and FFN each count); blocks = L / 2.
    pub depth: usize,
    pub d_model: usize,
    pub n_heads: usize,
    /// Defaults to n_heads (no grouping).
    pub n_kv_heads: Option<usize>,
    /// Defaults to 3 d_model (SwiGLU) or 4 d_model (GELU).
    pub d_ff: Option<usize>,
    pub placement: Placement,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub ffn: FfnKind,
    pub alpha: Alpha,
    pub keel_first_layer: KeelFirstLayer,
    /// Defaults to true for pre_ln, mix_ln and hybrid_norm, false for placements that already end
    /// in a norm (post_ln, deepnorm, keel).
    pub final_norm: Option<bool>,
    /// Mix-LN: fraction of blocks (from the bottom) that are Post-LN.
    pub mix_ln_fraction: f64,
    /// HybridNorm*: the first block's attention is Pre-Norm.
    pub hybrid_norm_star: bool,
    pub tie_embeddings: bool,
    pub rope_theta: f64,
    pub init_std: f64,
    /// Defaults to the data's vocabulary (256 for bytes and the synthetic corpus).
    pub vocab_size: Option<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            depth: 8,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: None,
            d_ff: None,
            placement: Placement::Keel,
            norm: NormKind::RmsNorm,
            norm_eps: 1e-5,
            ffn: FfnKind::Swiglu,
            alpha: Alpha::Mode(AlphaMode::L),
            keel_first_layer: KeelFirstLayer::V2,
            final_norm: None,
            mix_ln_fraction: 0.25,
            hybrid_norm_star: false,
            tie_embeddings: false,
            rope_theta: 10_000.0,
            init_std: 0.02,
            vocab_size: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub grad_clip: f64,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub seed: u64,
    pub log_every: usize,
    /// Validation every N steps (and at the end); 0 evaluates only at the end.
    pub eval_every: usize,
    /// Batches per validation pass.
    pub eval_batches: usize,
    /// Per-sub-layer gradient norms every N steps (and at step 1); 0 disables them.
    pub grad_norm_every: usize,
    /// Checkpoint every N steps (and always at the end); 0 checkpoints only at the end.
    pub checkpoint_every: usize,
    /// Periodic checkpoints kept (the final one is kept as well).
    pub keep_checkpoints: usize,
    pub precision: Precision,
    /// `"none"` or `"blocks"`: recompute each block in the backward pass instead of storing its
    /// activations (for very deep models; identical results, about 15% slower at the reference config).
    pub recompute: Recompute,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 200,
            batch_size: 8,
            seq_len: 64,
            lr: 3e-3,
            min_lr: 1e-7,
            warmup_steps: 20,
            schedule: Schedule::Cosine,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            grad_accum: 1,
            seed: 0,
            log_every: 10,
            eval_every: 50,
            eval_batches: 8,
            grad_norm_every: 50,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            precision: Precision::F32,
            recompute: Recompute::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `"synthetic"` (built-in tasks, no files needed) or a path to a UTF-8 text file.
    pub source: String,
    /// A folder made by `keel data prepare` (used instead of `source` when set).
    pub path: Option<String>,
    /// When set, the tokenizer spec the prepared data must have been made with.
    pub tokenizer: Option<String>,
    /// Fraction of a text file held out for validation (its tail).
    pub val_fraction: f64,
    /// Seed of the synthetic corpus itself (independent of the training seed).
    pub synthetic_seed: u64,
    /// Size of the generated synthetic training text.
    pub synthetic_bytes: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: "synthetic".into(),
            path: None,
            tokenizer: None,
            val_fraction: 0.1,
            synthetic_seed: 1234,
            synthetic_bytes: 2_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub name: String,
    /// Parent folder of run directories (`--out` overrides the whole path).
    pub out_dir: String,
    /// `cpu`, `cuda`, `cuda:N`, `metal` or `auto` (`--device` overrides).
    pub device: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig { name: "run".into(), out_dir: "runs".into(), device: "cpu".into() }
    }
}

pub use crate::divergence::DivergenceConfig;

/// The experiment as written by the user (after overrides), before validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub run: RunConfig,
    pub divergence: DivergenceConfig,
    /// Provenance written by keel into a run's `config.toml`; ignored on input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<toml::Table>,
}

/// Known `(section, keys)`, derived from the structs so they can never drift from them.
pub fn known_keys() -> Vec<(String, Vec<String>)> {
    let value = serde_json::to_value(Config::default()).expect("config serializes");
    let mut out = Vec::new();
    for (section, body) in value.as_object().expect("object") {
        if let Some(fields) = body.as_object() {
            out.push((section.clone(), fields.keys().cloned().collect()));
        }
    }
    out
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .min()
        .filter(|(d, c)| *d <= c.len().max(name.len()) / 2 + 1)
        .map(|(_, c)| c)
}

fn check_known_keys(table: &toml::Table) -> Result<(), ConfigError> {
    let known = known_keys();
    let sections: Vec<&str> = known.iter().map(|(s, _)| s.as_str()).collect();
    for (section, body) in table {
        if section == "meta" {
            continue;
        }
        let Some((_, keys)) = known.iter().find(|(s, _)| s == section) else {
            let hint = match closest(section, sections.iter().copied()) {
                Some(c) => format!("did you mean [{c}]?"),
                None => format!("valid sections: {}", sections.join(", ")),
            };
            return err(format!("unknown config section [{section}]: {hint}"));
        };
        let Some(body) = body.as_table() else {
            return err(format!("`{section}` must be a section ([{section}] with keys under it), not a value"));
        };
        for key in body.keys() {
            if !keys.iter().any(|k| k == key) {
                let hint = match closest(key, keys.iter().map(|s| s.as_str())) {
                    Some(c) => format!("did you mean `{section}.{c}`?"),
                    None => format!("valid keys in [{section}]: {}", keys.join(", ")),
                };
                return err(format!("unknown config key `{section}.{key}`: {hint}"));
            }
        }
    }
    Ok(())
}

/// Parses a `--set` value as a TOML value; anything that is not valid TOML is taken as a string,
/// so `--set model.placement=keel` works without quotes.
fn parse_override_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// Applies `section.key=value` overrides to a raw table.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<(), ConfigError> {
    for item in overrides {
        let Some((path, raw)) = item.split_once('=') else {
            return err(format!("--set `{item}` has no `=`: write it as section.key=value, e.g. --set train.lr=1e-3"));
        };
        let path = path.trim();
        let Some((section, key)) = path.split_once('.') else {
            return err(format!("--set `{item}`: the key must name its section, e.g. train.lr or model.depth"));
        };
        if section.is_empty() || key.is_empty() || key.contains('.') {
            return err(format!("--set `{item}`: expected exactly section.key, e.g. model.depth=64"));
        }
        let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return err(format!("--set `{item}`: `{section}` is not a section"));
        };
        section_table.insert(key.to_string(), parse_override_value(raw.trim()));
    }
    Ok(())
}

/// Deserializes a table into a config; type errors name the key.
fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
    check_known_keys(&table)?;
    Config::deserialize(toml::Value::Table(table)).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.trim();
        ConfigError(format!(
            "config value has the wrong type or is not allowed: {msg}\n  fix the value in the file or with --set section.key=value"
        ))
    })
}

impl Config {
    /// Reads `path` (or the defaults when `None`) and applies overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        match path {
            None => Self::parse("", "defaults", overrides),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError(format!(
                        "cannot read config file {}: {e}\n  check the path (configs/ holds the shipped examples)",
                        p.display()
                    ))
                })?;
                Self::parse(&text, &p.display().to_string(), overrides)
            }
        }
    }

    /// TOML text plus `--set` overrides; `origin` names the text in messages.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut table = Self::parse_table(text, origin)?;
        apply_overrides(&mut table, overrides)?;
        from_table(table)
    }

    pub fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
        text.parse::<toml::Table>().map_err(|e| ConfigError(format!("{origin} is not valid TOML: {e}")))
    }

    /// Parses TOML text (no overrides); for tests and tools.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        from_table(Self::parse_table(text, "config")?)
    }

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
        let alpha = match m.alpha {
            Alpha::Mode(AlphaMode::L) => m.depth as f64,
            Alpha::Mode(AlphaMode::SqrtL) => (m.depth as f64).sqrt(),
            Alpha::Value(v) => v,
        };
        bad(
            !(alpha > 0.0 && alpha.is_finite()),
            format!(
                "model.alpha = {alpha} must be positive: use \"L\" (the paper's choice), \"sqrtL\" or a number > 0"
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
        let ends_in_norm = matches!(m.placement, Placement::PostLn | Placement::Deepnorm | Placement::Keel);
        resolved.model.final_norm = Some(m.final_norm.unwrap_or(!ends_in_norm));
        resolved.meta = None;
        Ok(Resolved { config: resolved, alpha })
    }
}

/// Keys that `keel train --resume --force` accepts changing: they do not alter anything computed
/// up to the checkpoint (total steps changes the schedule from there on, as the user asked).
pub const SAFE_TO_CHANGE_ON_RESUME: [&str; 8] = [
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

    /// sha256 over every key that determines the computation (all but
    /// [`SAFE_TO_CHANGE_ON_RESUME`]): checkpoints carry it, so one from another experiment is
    /// recognised.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (k, v) in self.config.flatten() {
            if !SAFE_TO_CHANGE_ON_RESUME.contains(&k.as_str()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let mut t = Config::parse_table(text, "test")?;
        apply_overrides(&mut t, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        from_table(t)
    }

    #[test]
    fn defaults_resolve() {
        let r = Config::default().resolve(256).unwrap();
        assert_eq!(r.alpha, 8.0);
        assert_eq!(r.d_ff(), 192);
        assert_eq!(r.n_kv_heads(), 4);
        assert!(!r.final_norm());
    }

    #[test]
    fn unknown_key_names_closest() {
        let e = load("[model]\ndepht = 4\n", &[]).unwrap_err().0;
        assert!(e.contains("model.depht") && e.contains("model.depth"), "{e}");
        let e = load("[modle]\ndepth = 4\n", &[]).unwrap_err().0;
        assert!(e.contains("[model]"), "{e}");
        let e = load("", &["train.lrr=1"]).unwrap_err().0;
        assert!(e.contains("train.lr`?"), "{e}");
    }

    #[test]
    fn overrides_are_typed() {
        let c = load("", &["model.depth=64", "model.placement=pre_ln", "train.lr=1e-3", "model.alpha=2.5"]).unwrap();
        assert_eq!(c.model.depth, 64);
        assert_eq!(c.model.placement, Placement::PreLn);
        assert_eq!(c.train.lr, 1e-3);
        assert_eq!(c.model.alpha, Alpha::Value(2.5));
        let e = load("", &["model.depth=abc"]).unwrap_err().0;
        assert!(e.contains("model.depth") || e.contains("depth"), "{e}");
        let e = load("", &["model.placement=preln"]).unwrap_err().0;
        assert!(e.contains("pre_ln"), "{e}");
        assert!(load("", &["model.depth"]).is_err());
        assert!(load("", &["depth=3"]).is_err());
    }

    #[test]
    fn alpha_modes() {
        let c = load("[model]\nalpha = \"sqrtL\"\ndepth = 16\n", &[]).unwrap();
        assert_eq!(c.resolve(256).unwrap().alpha, 4.0);
        assert!(load("[model]\nalpha = \"M\"\n", &[]).is_err());
    }

    #[test]
    fn validation_lists_problems_with_fixes() {
        let mut c = Config::default();
        c.model.depth = 7;
        c.model.n_heads = 3;
        c.train.lr = -1.0;
        let e = c.resolve(256).unwrap_err().0;
        assert!(e.contains("odd") && e.contains("6 or 8"), "{e}");
        assert!(e.contains("divide"), "{e}");
        assert!(e.contains("train.lr"), "{e}");
        let mut c = Config::default();
        c.model.n_kv_heads = Some(3);
        assert!(c.resolve(256).unwrap_err().0.contains("n_kv_heads"));
    }

    #[test]
    fn resolved_round_trips_through_toml() {
        let r = Config::default().resolve(256).unwrap();
        let mut meta = toml::Table::new();
        meta.insert("keel_version".into(), "0".into());
        let text = r.to_toml(meta);
        let back = Config::from_toml_str(&text).unwrap().resolve(256).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn known_keys_cover_issue_names() {
        let keys = known_keys();
        let has = |s: &str, k: &str| keys.iter().any(|(a, ks)| a == s && ks.iter().any(|x| x == k));
        for k in [
            "depth",
            "d_model",
            "n_heads",
            "n_kv_heads",
            "d_ff",
            "placement",
            "norm",
            "ffn",
            "alpha",
            "keel_first_layer",
            "tie_embeddings",
            "rope_theta",
            "init_std",
        ] {
            assert!(has("model", k), "{k}");
        }
        for k in [
            "steps",
            "batch_size",
            "seq_len",
            "lr",
            "min_lr",
            "warmup_steps",
            "schedule",
            "weight_decay",
            "beta1",
            "beta2",
            "grad_clip",
            "grad_accum",
            "seed",
            "log_every",
            "eval_every",
            "grad_norm_every",
        ] {
            assert!(has("train", k), "{k}");
        }
        assert!(has("data", "source") && has("run", "name"));
    }
}
