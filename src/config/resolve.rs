//! One validation pass: ranges and cross-field rules checked, derived values filled, giving a
//! [`Resolved`] experiment; and what a run's config may change on resume.

// `!(x > 0.0)` is deliberate below: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::schema::{err, Alpha, Config, ConfigError, FfnKind, ModelConfig, Placement, TrainConfig};
use crate::placement::mix_ln_post_blocks;

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
        // A value written as 0x10 gets the one message that says so, not a range besides.
        let radix = |key: &str| self.radix_floats.iter().any(|(k, _, _)| k == key);
        for (key, value, range) in self.floats() {
            bad(!radix(key) && !range.holds(value), range.refusal(key, value));
        }
        for (key, literal, radix) in &self.radix_floats {
            let read = parse_radix(literal).map(|v| v.to_string()).unwrap_or_else(|| "an integer".into());
            bad(
                true,
                format!("{key} = {literal} is an integer in {radix}, which TOML reads as {read}: write the number in decimal ({read}.0, if that is what you meant)"),
            );
        }
        let alpha = m.alpha.at_depth(m.depth);
        match m.alpha {
            Alpha::Value(v) => bad(
                !radix("model.alpha") && !ALPHA_NUMBER.holds(v),
                format!(
                    "model.alpha = {} must be {ALPHA_NUMBER}: use \"L\" (the paper's choice), a multiple such as \"4L\" or \"sqrtL\", or a number in that range (above 1e6, alpha * x drowns the branch in f32 rounding)",
                    number(v)
                ),
            ),
            _ => bad(
                !(alpha > 0.0 && alpha.is_finite()),
                format!(
                    "model.alpha = {} gives {alpha}, which is not positive: use \"L\" (the paper's choice), a positive multiple such as \"4L\" or \"sqrtL\", or a number > 0", m.alpha
                ),
            ),
        }
        if m.placement == Placement::MixLn
            && m.depth >= 2
            && m.depth.is_multiple_of(2)
            && (0.0..=1.0).contains(&m.mix_ln_fraction)
            && mix_ln_post_blocks(m.mix_ln_fraction, m.depth / 2) == 0
        {
            bad(true, all_pre_ln_mix_ln(m.mix_ln_fraction, m.depth));
        }
        let vocab_size = m.vocab_size.unwrap_or(data_vocab);
        bad(vocab_size < data_vocab, format!("model.vocab_size = {vocab_size} is smaller than the data's vocabulary ({data_vocab}); remove the key to use the data's"));
        bad(t.steps == 0, "train.steps must be at least 1".into());
        bad(t.batch_size == 0, "train.batch_size must be at least 1".into());
        bad(t.seq_len < 2, "train.seq_len must be at least 2".into());
        bad(
            t.min_lr > t.lr && t.min_lr.is_finite(),
            format!("train.min_lr = {} must be <= train.lr ({})", number(t.min_lr), number(t.lr)),
        );
        bad(t.grad_accum == 0, "train.grad_accum must be at least 1".into());
        bad(t.log_every == 0, "train.log_every must be at least 1".into());
        bad(t.eval_batches == 0, "train.eval_batches must be at least 1".into());
        bad(t.keep_checkpoints == 0, "train.keep_checkpoints must be at least 1".into());
        bad(
            t.init_from.as_deref().is_some_and(|s| s.trim().is_empty()),
            "train.init_from is empty: give a finished run's directory (RUN), one of its checkpoints (RUN@STEP or RUN/checkpoints/step_NNNNNNN), or remove the key to start from random weights".into(),
        );
        let dv = &self.divergence;
        bad(
            dv.stall_window == 0 || dv.recover_window == 0,
            "divergence.stall_window and divergence.recover_window must be at least 1".into(),
        );
        let d = &self.data;
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

/// The values a float key accepts: finite, and between two bounds, each included or not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Range {
    lo: f64,
    lo_included: bool,
    hi: f64,
    hi_included: bool,
}

impl Range {
    const fn closed(lo: f64, hi: f64) -> Range {
        Range { lo, lo_included: true, hi, hi_included: true }
    }
    const fn left_open(lo: f64, hi: f64) -> Range {
        Range { lo, lo_included: false, hi, hi_included: true }
    }
    const fn right_open(lo: f64, hi: f64) -> Range {
        Range { lo, lo_included: true, hi, hi_included: false }
    }
    const fn open(lo: f64, hi: f64) -> Range {
        Range { lo, lo_included: false, hi, hi_included: false }
    }

    /// False for NaN and the infinities too.
    pub(crate) fn holds(self, v: f64) -> bool {
        v.is_finite()
            && (if self.lo_included { v >= self.lo } else { v > self.lo })
            && (if self.hi_included { v <= self.hi } else { v < self.hi })
    }

    fn refusal(self, key: &str, v: f64) -> String {
        if v.is_finite() {
            format!("{key} = {} must be {self}", number(v))
        } else {
            format!("{key} = {} is not a finite number: it must be {self}", number(v))
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lo, hi) = (if self.lo_included { ">=" } else { ">" }, if self.hi_included { "<=" } else { "<" });
        write!(f, "{lo} {} and {hi} {}", number(self.lo), number(self.hi))
    }
}

/// `1e30` and `1e-8` rather than 31 digits, and the rest as Rust prints them (`0.25`, `NaN`, `inf`).
fn number(v: f64) -> String {
    if v.is_finite() && v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// The value of an integer literal in another radix (`0x10` is 16).
fn parse_radix(literal: &str) -> Option<i64> {
    let t = literal.replace('_', "");
    let (digits, radix) = match t.get(..2)? {
        "0x" => (&t[2..], 16),
        "0o" => (&t[2..], 8),
        "0b" => (&t[2..], 2),
        _ => return None,
    };
    i64::from_str_radix(digits, radix).ok()
}

/// A number for `model.alpha`: above about 1e6, alpha * x leaves nothing of the branch F(x) in
/// f32's 24-bit mantissa.
pub(crate) const ALPHA_NUMBER: Range = Range::left_open(0.0, 1e6);

/// The ranges of the float keys (but `model.alpha`, [`ALPHA_NUMBER`] when a number; and
/// `train.min_lr` must not exceed `train.lr` either). Finite and bounded, because TOML happily
/// reads `inf` and `1e308`, and such a value trains nothing or overflows the f32 the devices
/// compute in. The lower bounds of the two epsilons keep them nonzero in f32 (an all-zero row
/// divides by them); the learning rate goes up to 1e30 for tests that make a run diverge at once.
pub(crate) const FLOAT_RANGES: [(&str, Range); 17] = [
    ("model.norm_eps", Range::closed(1e-30, 1.0)),
    ("model.rope_theta", Range::closed(1.0, 1e9)),
    ("model.init_std", Range::left_open(0.0, 1.0)),
    ("model.mix_ln_fraction", Range::closed(0.0, 1.0)),
    ("train.lr", Range::left_open(0.0, 1e30)),
    ("train.min_lr", Range::closed(0.0, 1e30)),
    ("train.weight_decay", Range::closed(0.0, 1.0)),
    ("train.beta1", Range::right_open(0.0, 1.0)),
    ("train.beta2", Range::right_open(0.0, 1.0)),
    ("train.eps", Range::closed(1e-30, 1.0)),
    ("train.grad_clip", Range::closed(0.0, 1e6)),
    ("data.val_fraction", Range::open(0.0, 1.0)),
    ("divergence.spike_factor", Range::left_open(1.0, 100.0)),
    ("divergence.recover_factor", Range::closed(1.0, 100.0)),
    ("divergence.ema", Range::right_open(0.0, 1.0)),
    ("divergence.stall_tolerance", Range::left_open(0.0, 100.0)),
    ("divergence.min_improvement", Range::right_open(0.0, 1.0)),
];

impl Config {
    /// Each key of [`FLOAT_RANGES`] with its value and range.
    fn floats(&self) -> Vec<(&'static str, f64, Range)> {
        let (m, t, d, dv) = (&self.model, &self.train, &self.data, &self.divergence);
        let values = [
            m.norm_eps,
            m.rope_theta,
            m.init_std,
            m.mix_ln_fraction,
            t.lr,
            t.min_lr,
            t.weight_decay,
            t.beta1,
            t.beta2,
            t.eps,
            t.grad_clip,
            d.val_fraction,
            dv.spike_factor,
            dv.recover_factor,
            dv.ema,
            dv.stall_tolerance,
            dv.min_improvement,
        ];
        FLOAT_RANGES.iter().zip(values).map(|(&(key, range), v)| (key, v, range)).collect()
    }
}

/// Mix-LN whose Post-LN share rounds down to no block is Pre-LN under another name: the message
/// names the smallest fraction and depth that give one Post-LN block.
fn all_pre_ln_mix_ln(fraction: f64, depth: usize) -> String {
    let blocks = depth / 2;
    let mut fixes = Vec::new();
    // In thousandths, rounded up, then checked with the placement's own rounding.
    let mut thousandths = (1000.0 / blocks as f64).ceil() as usize;
    while thousandths <= 1000 && mix_ln_post_blocks(thousandths as f64 / 1000.0, blocks) == 0 {
        thousandths += 1;
    }
    if thousandths <= 1000 {
        fixes.push(format!("model.mix_ln_fraction >= {}", number(thousandths as f64 / 1000.0)));
    }
    // Past keel's depth limit, no depth is a fix.
    let enough = (1.0 / fraction).ceil().max(1.0);
    if fraction > 0.0 && 2.0 * enough <= crate::grid::MAX_DEPTH as f64 {
        let mut b = enough as usize;
        while mix_ln_post_blocks(fraction, b) == 0 {
            b += 1;
        }
        fixes.push(format!("model.depth >= {}", 2 * b));
    }
    fixes.push("model.placement = \"pre_ln\"".into());
    format!(
        "model.placement = \"mix_ln\" with model.mix_ln_fraction = {} of {blocks} block{} (model.depth = {depth}) rounds down to no Post-LN block: that is Pre-LN exactly; use {}",
        number(fraction),
        if blocks == 1 { "" } else { "s" },
        fixes.join(", or ")
    )
}

/// Keys that `keel train --resume --force` accepts changing: they do not alter anything computed
/// up to the checkpoint (total steps changes the schedule from there on, as the user asked). The
/// data's paths say where the data lives, not what it is: its identity (see
/// `data::identity`) is checked on its own, so a moved folder resumes and other data does not.
pub const SAFE_TO_CHANGE_ON_RESUME: [&str; 11] = [
    "train.steps",
    "train.recompute",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "run.name",
    "run.out_dir",
    "run.device",
    "run.tensorboard",
    "data.path",
    "data.source",
];

/// The key of fine-tuning's source (see `train::init_from`).
pub const INIT_FROM: &str = "train.init_from";

/// [`SAFE_TO_CHANGE_ON_RESUME`] before the data's paths joined it: the fingerprint of checkpoints
/// written by earlier keels (see [`Resolved::legacy_fingerprint`]).
const LEGACY_SAFE: [&str; 9] = [
    "train.steps",
    "train.recompute",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "run.name",
    "run.out_dir",
    "run.device",
    // Newer than both fingerprints: left out of them, so that they stay as they were.
    "run.tensorboard",
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
            // Unset, train.init_from leaves the fingerprint as keels before the key computed it,
            // so their checkpoints still resume.
            let unset_new_key = k == INIT_FROM && v == "null";
            if !left_out.contains(&k.as_str()) && !unset_new_key {
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
