//! The config's typed sections, as the user writes them: every key, its type and its default.

use serde::{Deserialize, Serialize};

/// A problem with the user's config or flags. Always exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

pub use crate::placement::{KeelFirstLayer, Placement};

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

/// Keel's residual scale: a number, or a multiple of the depth L (the number of sub-layers):
/// `"L"` (the paper's choice), `"4L"`, `"0.5L"`, `"sqrtL"`, `"2sqrtL"`. Written back to
/// config.toml in the same spelling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    Value(f64),
    /// k * L
    TimesL(f64),
    /// k * sqrt(L)
    TimesSqrtL(f64),
}

impl Alpha {
    /// The paper's alpha = L.
    pub const L: Alpha = Alpha::TimesL(1.0);

    /// Its value for a model of `depth` sub-layers.
    pub fn at_depth(self, depth: usize) -> f64 {
        match self {
            Alpha::Value(v) => v,
            Alpha::TimesL(k) => k * depth as f64,
            Alpha::TimesSqrtL(k) => k * (depth as f64).sqrt(),
        }
    }

    /// `"L"`, `"4L"`, `"sqrtL"`, `"0.5sqrtL"`; `None` for anything else.
    fn parse(text: &str) -> Option<Alpha> {
        let t = text.trim();
        let (k, of): (&str, fn(f64) -> Alpha) = if let Some(k) = t.strip_suffix("sqrtL") {
            (k, Alpha::TimesSqrtL)
        } else {
            (t.strip_suffix('L')?, Alpha::TimesL)
        };
        let k = k.trim().trim_end_matches('*').trim();
        let k = if k.is_empty() { 1.0 } else { k.parse::<f64>().ok()? };
        Some(of(k))
    }
}

impl std::fmt::Display for Alpha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let times = |k: f64| if k == 1.0 { String::new() } else { k.to_string() };
        match *self {
            Alpha::Value(v) => write!(f, "{v}"),
            Alpha::TimesL(k) => write!(f, "{}L", times(k)),
            Alpha::TimesSqrtL(k) => write!(f, "{}sqrtL", times(k)),
        }
    }
}

impl Serialize for Alpha {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Alpha::Value(v) => s.serialize_f64(v),
            _ => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(v) => Ok(Alpha::Value(v)),
            Raw::Text(t) => Alpha::parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "model.alpha = {t:?}: use \"L\" (the paper's choice), a multiple such as \"4L\" or \"sqrtL\", or a number"
                ))
            }),
        }
    }
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
            alpha: Alpha::L,
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
    /// `"saved_probs"` or `"tiled"`: how the CPU attention keeps what its backward needs, the
    /// (B, H, T, T) probabilities or, flash-style, one log-sum-exp per row (memory linear in T;
    /// the same function, rounded differently). On CUDA the flash-style kernels run either way.
    pub attention: crate::ops::AttentionKernel,
    /// `"fused"` (keel's kernels: CPU, and CUDA from src/ops/cuda/) or `"composite"` (Candle's
    /// stock ops everywhere): the switch that isolates a wrong kernel and times both.
    pub kernels: crate::ops::KernelChoice,
    /// Fine-tuning: start from the weights of a finished run (`RUN`, its `model.safetensors`) or
    /// of one of its checkpoints (`RUN@STEP`, or the folder `RUN/checkpoints/step_NNNNNNN`); only
    /// the weights: the optimizer, schedule, data and seed are this run's own. Unset: random init.
    pub init_from: Option<String>,
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
            attention: crate::ops::AttentionKernel::SavedProbs,
            kernels: crate::ops::KernelChoice::Fused,
            init_from: None,
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
    /// TensorBoard event files in the run directory beside the CSVs (`crate::tensorboard`).
    pub tensorboard: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig { name: "run".into(), out_dir: "runs".into(), device: "cpu".into(), tensorboard: true }
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
    /// Provenance written by keel into a run's `config.toml`; ignored on input, so that a run's
    /// config.toml can be passed back to `--config`, and never a `--set` target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<toml::Table>,
    /// Float keys written as integers in another radix, `(key, literal, radix)`: found while the
    /// text is at hand (parsing keeps only the value), refused by [`Config::resolve`].
    #[serde(skip)]
    pub(crate) radix_floats: Vec<(String, String, String)>,
}
