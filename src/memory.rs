//! The memory a training run needs, estimated from its resolved config alone (no tensor is
//! built), and the check that refuses a run that cannot fit before anything is allocated or
//! written.
//!
//! With P parameters, e bytes per element (4 for f32 and for bf16's f32 master weights, 8 for
//! f64), one micro-batch of N = B*T rows, C = d_model, V the vocabulary, H heads of size D:
//!
//! ```text
//! parameters   P e
//! gradients    P e        (2 P e with train.grad_accum > 1: the running sum and the micro-batch's)
//! AdamW m, v   2 P e      (bf16 adds 2 P: the weights' bf16 copies for the products)
//! activations  what the backward pass keeps, e bytes each:
//!   attention sub-layer  N (C (norms + 2) + W_qkv (1 + 2 qkv_norm) + H D) + B H T^2 (probabilities;
//!                        B H T log-sum-exps with train.attention = "tiled")
//!   FFN sub-layer        N (C (norms + 2) + W_in + d_ff)
//!   head                 N C (embedding) + N C (final norm) + 2 N V (logits, softmax)
//!   train.recompute = "blocks": one (N, C) input per block + one block's intermediates + head
//!   (the validation pass keeps one sub-layer's at a time, never more than a step)
//! ```
//!
//! It is an estimate (allocator slack, transient copies and the data are not counted); it is
//! meant to tell a run that fits from one that cannot, not to predict peak RSS to the megabyte.
//! All arithmetic is in f64, so absurd configs give huge numbers, never an overflow.

use crate::config::{FfnKind, NormKind, Precision, Recompute, Resolved};
use crate::ops::AttentionKernel;
use crate::placement::ResidualForm;
use crate::InputError;
use candle_core::Device;

/// Sub-layers whose forms are read one by one; beyond this the last pair's forms repeat (exact
/// for every placement: above the first block a form depends only on the sub-layer's parity, and
/// Mix-LN's Post and Pre halves have one norm each). Keeps absurd depths O(1).
const EXACT_SUBLAYERS: usize = 1 << 16;

/// No single accelerator holds more than this (the rule for CUDA and Metal, whose free memory
/// keel does not query).
pub const ACCELERATOR_LIMIT: f64 = (1u64 << 40) as f64;

/// A run's estimated memory, in bytes (parameters: a count).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub params: f64,
    pub param_bytes: f64,
    pub grad_bytes: f64,
    pub optimizer_bytes: f64,
    pub activation_bytes: f64,
}

impl Estimate {
    pub fn total(&self) -> f64 {
        self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.activation_bytes
    }
}

/// Norms on a sub-layer's residual path.
fn norms(form: ResidualForm) -> f64 {
    match form {
        ResidualForm::Pre | ResidualForm::Post { .. } | ResidualForm::NormedShortcut => 1.0,
        ResidualForm::Keel { .. } => 2.0,
        ResidualForm::Plain => 0.0,
    }
}

/// Residual-path norms over all attention and all FFN sub-layers, and the most in one block's.
struct NormCount {
    attn: f64,
    ffn: f64,
    block_max: f64,
}

fn norm_count(r: &Resolved) -> NormCount {
    let (placement, stack) = (r.model().placement, r.stack());
    let depth = r.model().depth;
    let exact = depth.min(EXACT_SUBLAYERS);
    let mut n = NormCount { attn: 0.0, ffn: 0.0, block_max: 0.0 };
    let mut pair = (0.0, 0.0);
    for b in 0..exact / 2 {
        pair = (norms(placement.residual_form(2 * b, &stack)), norms(placement.residual_form(2 * b + 1, &stack)));
        n.attn += pair.0;
        n.ffn += pair.1;
        n.block_max = n.block_max.max(pair.0 + pair.1);
    }
    let rest = ((depth - exact) / 2) as f64;
    n.attn += rest * pair.0;
    n.ffn += rest * pair.1;
    n
}

/// The model's dimensions as f64.
struct Dims {
    c: f64,
    h: f64,
    hkv: f64,
    d: f64,
    d_ff: f64,
    w_in: f64,
    v: f64,
    blocks: f64,
    /// Parameters of one norm over C.
    norm: f64,
}

fn dims(r: &Resolved) -> Dims {
    let m = r.model();
    let per_channel = match m.norm {
        NormKind::RmsNorm => 1.0,
        NormKind::LayerNorm => 2.0,
    };
    let d_ff = r.d_ff() as f64;
    Dims {
        c: m.d_model as f64,
        h: m.n_heads as f64,
        hkv: r.n_kv_heads() as f64,
        d: r.head_dim() as f64,
        d_ff,
        w_in: match m.ffn {
            FfnKind::Swiglu => 2.0 * d_ff,
            FfnKind::Gelu => d_ff,
        },
        v: r.vocab_size() as f64,
        blocks: r.blocks() as f64,
        norm: per_channel * m.d_model as f64,
    }
}

/// The parameter count `Model::new` would give, computed without building it.
pub fn n_params(r: &Resolved) -> f64 {
    let m = r.model();
    let z = dims(r);
    let per_channel = z.norm / z.c;
    let qkv_norms = if m.placement.normalizes_qkv() { per_channel * (z.h + 2.0 * z.hkv) * z.d } else { 0.0 };
    let attn = z.c * (z.h + 2.0 * z.hkv) * z.d + z.h * z.d * z.c + qkv_norms;
    let ffn = z.c * z.w_in + z.d_ff * z.c;
    let n = norm_count(r);
    let head = if m.tie_embeddings { 0.0 } else { z.c * z.v };
    let final_norm = if r.final_norm() { z.norm } else { 0.0 };
    z.v * z.c + z.blocks * (attn + ffn) + (n.attn + n.ffn) * z.norm + final_norm + head
}

/// The estimate for one training step of `r`.
pub fn estimate(r: &Resolved) -> Estimate {
    let (m, t) = (r.model(), r.train());
    let z = dims(r);
    let e = match t.precision {
        Precision::F32 | Precision::Bf16 => 4.0,
        Precision::F64 => 8.0,
    };
    let p = n_params(r);
    let (b, tl) = (t.batch_size as f64, t.seq_len as f64);
    let rows = b * tl;
    let qkv_w = (z.h + 2.0 * z.hkv) * z.d;
    let qkv_norm = if m.placement.normalizes_qkv() { 1.0 } else { 0.0 };
    // Per sub-layer, without its residual-path norms (added from the count).
    let kept_per_row = match t.attention {
        AttentionKernel::SavedProbs => tl,
        AttentionKernel::Tiled => 1.0,
    };
    let attn = rows * (2.0 * z.c + qkv_w * (1.0 + 2.0 * qkv_norm) + z.h * z.d) + b * z.h * tl * kept_per_row;
    let ffn = rows * (2.0 * z.c + z.w_in + z.d_ff);
    let head = rows * z.c * (1.0 + if r.final_norm() { 1.0 } else { 0.0 }) + 2.0 * rows * z.v;
    let n = norm_count(r);
    let every_sublayer = z.blocks * (attn + ffn) + (n.attn + n.ffn) * rows * z.c + head;
    let step = match t.recompute {
        Recompute::None => every_sublayer,
        Recompute::Blocks => z.blocks * rows * z.c + attn + ffn + n.block_max * rows * z.c + head,
    };
    // The validation pass (`Model::loss_without_graph`) keeps one sub-layer's intermediates and
    // the logits at a time, never more than a training step's.
    let elements = step;
    let accum = if t.grad_accum > 1 { 2.0 } else { 1.0 };
    let bf16_copies = if t.precision == Precision::Bf16 { 2.0 * p } else { 0.0 };
    Estimate {
        params: p,
        param_bytes: p * e,
        grad_bytes: accum * p * e,
        optimizer_bytes: 2.0 * p * e + bf16_copies,
        activation_bytes: elements * e,
    }
}

/// Where a run's tensors live, and how much room that has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Room {
    /// Host memory (CPU training): `/proc/meminfo`'s MemAvailable and MemTotal, in bytes.
    Host { available: f64, total: f64 },
    /// CUDA or Metal: refused only above [`ACCELERATOR_LIMIT`].
    Accelerator,
    /// Host memory that could not be read (not Linux): refused only above the accelerator rule.
    Unknown,
}

impl Room {
    pub fn of(device: &Device) -> Room {
        if device.is_cpu() {
            host()
        } else {
            Room::Accelerator
        }
    }

    /// The room of a `--device` spec, without opening the device.
    pub fn of_spec(spec: &str) -> Room {
        let spec = spec.trim().to_ascii_lowercase();
        let cpu = spec == "cpu" || (spec == "auto" && !cfg!(feature = "cuda") && !cfg!(feature = "metal"));
        if cpu {
            host()
        } else {
            Room::Accelerator
        }
    }

    /// Bytes a run may need here.
    pub fn limit(&self) -> f64 {
        match self {
            Room::Host { available, .. } => *available,
            Room::Accelerator | Room::Unknown => ACCELERATOR_LIMIT,
        }
    }

    fn describe(&self) -> String {
        match self {
            Room::Host { available, total } => {
                format!("the {} available on this machine ({} in all)", bytes(*available), bytes(*total))
            }
            Room::Accelerator => format!("{} (keel's limit for one GPU)", bytes(ACCELERATOR_LIMIT)),
            Room::Unknown => {
                format!("{} (keel's limit where it cannot read the free memory)", bytes(ACCELERATOR_LIMIT))
            }
        }
    }
}

fn host() -> Room {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else { return Room::Unknown };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb * 1024.0)
    };
    match (field("MemAvailable"), field("MemTotal")) {
        (Some(available), Some(total)) => Room::Host { available, total },
        (None, Some(total)) => Room::Host { available: total, total },
        _ => Room::Unknown,
    }
}

/// Bytes for people: `512 B`, `3.1 GiB`, `2.4 PiB`, and powers of ten beyond EiB.
pub fn bytes(x: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = x;
    for (i, unit) in UNITS.iter().enumerate() {
        if v < 1024.0 || i == UNITS.len() - 1 {
            if v >= 1024.0 {
                return format!("{x:.1e} B");
            }
            return if i == 0 { format!("{v:.0} {unit}") } else { format!("{v:.1} {unit}") };
        }
        v /= 1024.0;
    }
    unreachable!("the last unit returns")
}

/// A count for people: exact up to 10^15, else in powers of ten.
pub fn count(x: f64) -> String {
    if x < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.2e}")
    }
}

/// `Err` with the estimate broken down and the fixes when `r` needs more than `room`.
pub fn check_in(r: &Resolved, room: &Room) -> Result<Estimate, InputError> {
    let e = estimate(r);
    if e.total() <= room.limit() {
        return Ok(e);
    }
    let (m, t) = (r.model(), r.train());
    let mut fixes = Vec::new();
    let mut recomputed = r.clone();
    recomputed.config.train.recompute = Recompute::Blocks;
    if t.recompute == Recompute::None && estimate(&recomputed).total() <= room.limit() {
        fixes.push(
            "--set train.recompute=blocks (keeps one (B*T, C) tensor per block for the backward pass)".to_string(),
        );
    }
    let mut tiled = r.clone();
    tiled.config.train.attention = AttentionKernel::Tiled;
    if t.attention == AttentionKernel::SavedProbs && estimate(&tiled).total() <= room.limit() {
        fixes.push(
            "--set train.attention=tiled (flash-style attention: no (B, H, T, T) probabilities kept on the CPU)"
                .to_string(),
        );
    }
    fixes.push(format!(
        "a smaller train.batch_size (now {}) or train.seq_len (now {}); train.grad_accum keeps the tokens per step",
        t.batch_size, t.seq_len
    ));
    fixes.push(format!("a smaller model.depth (now {}) or model.d_model (now {})", m.depth, m.d_model));
    if matches!(room, Room::Host { .. }) && e.total() <= ACCELERATOR_LIMIT {
        fixes.push("a device with more memory (--device cuda)".into());
    }
    Err(InputError(format!(
        "this run needs about {} of memory, more than {}\n  estimate (docs/speed.md, Memory: the estimate): {} parameters\n    parameters   {:>12}\n    gradients    {:>12}\n    AdamW m, v   {:>12}\n    activations  {:>12}  (batch {} x {} tokens; train.recompute = \"{})\n  fixes:\n    - {}",
        bytes(e.total()),
        room.describe(),
        count(e.params),
        bytes(e.param_bytes),
        bytes(e.grad_bytes),
        bytes(e.optimizer_bytes),
        bytes(e.activation_bytes),
        t.batch_size,
        t.seq_len,
        match t.recompute {
            Recompute::None => "none\"",
            Recompute::Blocks => "blocks\"",
        },
        fixes.join("\n    - ")
    )))
}

/// Refuses (exit status 2) a run of `r` on `device` that cannot fit; see the module docs.
pub fn check(r: &Resolved, device: &Device) -> Result<(), InputError> {
    check_in(r, &Room::of(device)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_well() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
        assert!(bytes(1e30).ends_with("e30 B"), "{}", bytes(1e30));
        assert_eq!(count(123.0), "123");
        assert_eq!(count(2.5e20), "2.50e20");
    }

    #[test]
    fn recompute_keeps_less() {
        let mut c = crate::config::Config::default();
        c.model.depth = 64;
        let none = estimate(&c.resolve(256).unwrap());
        c.train.recompute = Recompute::Blocks;
        let blocks = estimate(&c.resolve(256).unwrap());
        assert!(blocks.activation_bytes * 4.0 < none.activation_bytes, "{blocks:?} {none:?}");
        assert_eq!(blocks.param_bytes, none.param_bytes);
        // Where only recomputation fits, the refusal says so.
        let between = (blocks.total() + none.total()) / 2.0;
        let room = Room::Host { available: between, total: between };
        c.train.recompute = Recompute::None;
        let err = check_in(&c.resolve(256).unwrap(), &room).unwrap_err().0;
        assert!(err.contains("--set train.recompute=blocks"), "{err}");
        assert!(none.activation_bytes > 10.0 * none.param_bytes, "{none:?}");
    }

    #[test]
    fn tiled_attention_keeps_no_probabilities() {
        let mut c = crate::config::Config::default();
        c.train.seq_len = 2048;
        c.train.batch_size = 2;
        let saved = estimate(&c.resolve(256).unwrap());
        c.train.attention = AttentionKernel::Tiled;
        let tiled = estimate(&c.resolve(256).unwrap());
        // Probabilities are B H T^2 elements per attention sub-layer; tiled keeps B H T.
        let m = &c.model;
        let (b, h, t) = (2.0, m.n_heads as f64, 2048.0);
        let probs = (m.depth / 2) as f64 * b * h * (t * t - t) * 4.0;
        assert!((saved.activation_bytes - tiled.activation_bytes - probs).abs() < 1.0, "{saved:?} {tiled:?}");
        // Where only the tiled kernel fits, the refusal says so.
        let between = (saved.total() + tiled.total()) / 2.0;
        let room = Room::Host { available: between, total: between };
        c.train.attention = AttentionKernel::SavedProbs;
        let err = check_in(&c.resolve(256).unwrap(), &room).unwrap_err().0;
        assert!(err.contains("--set train.attention=tiled"), "{err}");
    }

    #[test]
    fn absurd_configs_are_refused_with_the_breakdown() {
        let mut c = crate::config::Config::default();
        c.model.depth = 256;
        let room = Room::Host { available: 1e8, total: 2e8 };
        let err = check_in(&c.resolve(256).unwrap(), &room).unwrap_err().0;
        for needle in ["activations", "AdamW", "train.batch_size", "model.depth", "--device cuda", "95.4 MiB available"]
        {
            assert!(err.contains(needle), "{err}");
        }
        // No device helps an absurd run.
        c.model.depth = usize::MAX - 1;
        c.model.d_model = 1 << 40;
        let err = check_in(&c.resolve(256).unwrap(), &room).unwrap_err().0;
        assert!(err.contains("e45 B") && !err.contains("--device cuda"), "{err}");
        assert!(check_in(&crate::config::Config::default().resolve(256).unwrap(), &room).is_ok());
    }
}
