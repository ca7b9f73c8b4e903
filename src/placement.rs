//! Norm placements: everything keel knows about where normalization sits relative to the residual.
//!
//! ```text
//! Pre-LN      x' = x + F(N(x))
//! Post-LN     x' = N(x + F(x))
//! Keel        x' = N_out(alpha * x + F(N_in(x))),   alpha = L (Chen & Wei 2026)
//! DeepNorm    x' = N(a * x + F(x)),                 a = (2N)^(1/4), N = blocks
//! Mix-LN      Post-LN in the first `mix_ln_fraction` of blocks, Pre-LN above
//! HybridNorm  attention x' = x + F(x) with Q, K, V normalized inside F; FFN x' = N(x) + F(N(x))
//! ```
//!
//! A placement decides, per sub-layer, its [`ResidualForm`]; and, for the whole model, the init
//! scale of the branch weights, whether attention normalizes Q, K and V, whether a final norm sits
//! before the head by default, the residual-path gradient prediction that `keel probe` prints,
//! which sub-layers have a Llama equivalent (`keel export`), its name and its plot colour. Each of
//! these is an exhaustive `match` below, so a new variant does not compile until every one of them
//! is decided; the variant list itself is written once, in the `placements!` invocation, which
//! also generates [`Placement::ALL`] and the names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An unknown placement name. Bad input (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("unknown placement `{given}`: use one of {}", Placement::names().join(", "))]
pub struct UnknownPlacement {
    pub given: String,
}

/// Declares the enum and its names from one list, in declaration order (the order serde lists
/// them in a "did you mean" message), plus `DECLARED`, which [`Placement::ALL`] must permute.
macro_rules! placements {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)+) => {
        /// Where normalization sits relative to the residual (see the module docs).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Placement {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)+
        }

        const DECLARED: &[Placement] = &[$(Placement::$variant,)+];

        impl Placement {
            /// The config and CLI name (`model.placement = "pre_ln"`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Placement::$variant => $name,)+
                }
            }
        }
    };
}

placements! {
    /// x + F(LN(x)), with a final norm before the head.
    PreLn = "pre_ln",
    /// LN(x + F(x)).
    PostLn = "post_ln",
    /// LN_out(alpha * x + F(LN_in(x))), alpha = L by default (Chen & Wei 2026).
    Keel = "keel",
    /// DeepNet: LN(a x + F(x)), a = (2N)^(1/4); FFN, value and output weights initialised
    /// scaled by (8N)^(-1/4) (N = blocks).
    Deepnorm = "deepnorm",
    /// Mix-LN: the first `mix_ln_fraction` of blocks Post-LN, the rest Pre-LN.
    MixLn = "mix_ln",
    /// HybridNorm: attention with Q, K, V each normalized after projection and no pre-norm,
    /// y = x + MHA(x); FFN z = N(y) + FFN(N(y)).
    HybridNorm = "hybrid_norm",
}

impl Placement {
    /// Every placement, in the order keel lists them (messages, `keel stress`'s default grid,
    /// tests): the paper's baselines first, Keel last.
    pub const ALL: &'static [Placement] = &[
        Placement::PostLn,
        Placement::Deepnorm,
        Placement::HybridNorm,
        Placement::MixLn,
        Placement::PreLn,
        Placement::Keel,
    ];
}

// A variant missing from `ALL` (or listed twice) fails the build here.
const _: () = {
    assert!(Placement::ALL.len() == DECLARED.len(), "Placement::ALL must list every variant once");
    let mut i = 0;
    while i < DECLARED.len() {
        let mut found = 0;
        let mut j = 0;
        while j < Placement::ALL.len() {
            if Placement::ALL[j] as u8 == DECLARED[i] as u8 {
                found += 1;
            }
            j += 1;
        }
        assert!(found == 1, "Placement::ALL must list every variant once");
        i += 1;
    }
};

/// Keel's first layer: the paper's two versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeelFirstLayer {
    /// Paper v2: the first attention is x + Attn(LN(x)) (no outer norm); the first FFN has alpha 1.
    V2,
    /// Paper v1: the whole first block is plain Pre-LN.
    V1,
}

/// How one sub-layer combines its shortcut x and its branch F.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResidualForm {
    /// x + F(N(x))
    Pre,
    /// N(alpha * x + F(x)); Post-LN has alpha = 1.
    Post { alpha: f64 },
    /// N_out(alpha * x + F(N_in(x)))
    Keel { alpha: f64 },
    /// x + F(x), no norm on the path (HybridNorm's attention normalizes inside F).
    Plain,
    /// N(x) + F(N(x)): the normalized input is also the shortcut (HybridNorm's FFN).
    NormedShortcut,
}

impl ResidualForm {
    /// The factor by which the residual path alone scales dL/dx through this sub-layer (the
    /// paper's Sec. 3.2-3.3, branch Jacobian ignored): 1 for an identity shortcut,
    /// a / sqrt(a^2 + 1) for a normalized a*x + F (a = 1: Post-LN's 1/sqrt 2), none for a
    /// normalized shortcut.
    pub fn residual_path_factor(self) -> Option<f64> {
        match self {
            ResidualForm::Pre | ResidualForm::Plain => Some(1.0),
            ResidualForm::Post { alpha } | ResidualForm::Keel { alpha } => Some(alpha / (alpha * alpha + 1.0).sqrt()),
            ResidualForm::NormedShortcut => None,
        }
    }

    /// The same factor from a measured branch-to-shortcut ratio r = ||F|| / ||a x|| at this
    /// sub-layer: 1 / sqrt(1 + r^2) for a normalized a*x + F (if F is orthogonal to x, the norm
    /// divides by ||a x + F|| = ||a x|| sqrt(1 + r^2)), 1 for an identity shortcut. At init,
    /// where ||F|| = ||x||, r = 1/a and this is [`Self::residual_path_factor`].
    pub fn residual_path_factor_measured(self, r: f64) -> Option<f64> {
        match self {
            ResidualForm::Pre | ResidualForm::Plain => Some(1.0),
            ResidualForm::Post { .. } | ResidualForm::Keel { .. } => Some(1.0 / (1.0 + r * r).sqrt()),
            ResidualForm::NormedShortcut => None,
        }
    }

    /// The same factor from the measured s = ||a x + F|| / ||a x|| (no orthogonality assumed): the
    /// norm divides the shortcut's a x by ||a x + F||, so 1 / s; 1 for an identity shortcut.
    pub fn residual_path_factor_from_sum(self, s: f64) -> Option<f64> {
        match self {
            ResidualForm::Pre | ResidualForm::Plain => Some(1.0),
            ResidualForm::Post { .. } | ResidualForm::Keel { .. } => Some(1.0 / s),
            ResidualForm::NormedShortcut => None,
        }
    }
}

/// The per-model values a placement's choices depend on (from the resolved config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stack {
    /// Sub-layers L; blocks = L / 2.
    pub depth: usize,
    /// Keel's residual scale, resolved to a number.
    pub alpha: f64,
    pub keel_first_layer: KeelFirstLayer,
    pub mix_ln_fraction: f64,
    pub hybrid_norm_star: bool,
}

impl Stack {
    pub fn blocks(&self) -> usize {
        self.depth / 2
    }
}

/// Mix-LN's Post-LN blocks (from the bottom): `fraction` of `blocks`, rounded down. Config
/// validation refuses a Mix-LN that this leaves with none.
pub fn mix_ln_post_blocks(fraction: f64, blocks: usize) -> usize {
    (fraction * blocks as f64).floor() as usize
}

/// DeepNet's residual scale for a decoder of `blocks` blocks: (2N)^(1/4).
pub fn deepnorm_alpha(blocks: usize) -> f64 {
    (2.0 * blocks as f64).powf(0.25)
}

/// DeepNet's init scale for FFN, value and output weights of a decoder: (8N)^(-1/4).
pub fn deepnorm_beta(blocks: usize) -> f64 {
    (8.0 * blocks as f64).powf(-0.25)
}

impl Placement {
    pub fn parse(s: &str) -> Result<Placement, UnknownPlacement> {
        let s = s.trim();
        Self::ALL.iter().copied().find(|p| p.as_str() == s).ok_or_else(|| UnknownPlacement { given: s.to_string() })
    }

    /// The names of [`Placement::ALL`], in order.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|p| p.as_str()).collect()
    }

    /// The residual form of sub-layer `index` (0 = bottom; 2i attention, 2i+1 FFN).
    pub fn residual_form(self, index: usize, s: &Stack) -> ResidualForm {
        match self {
            Placement::PreLn => ResidualForm::Pre,
            Placement::PostLn => ResidualForm::Post { alpha: 1.0 },
            Placement::Keel => match (s.keel_first_layer, index) {
                (KeelFirstLayer::V2, 0) => ResidualForm::Pre,
                (KeelFirstLayer::V2, 1) => ResidualForm::Keel { alpha: 1.0 },
                (KeelFirstLayer::V1, 0 | 1) => ResidualForm::Pre,
                _ => ResidualForm::Keel { alpha: s.alpha },
            },
            Placement::Deepnorm => ResidualForm::Post { alpha: deepnorm_alpha(s.blocks()) },
            Placement::MixLn => {
                if index / 2 < mix_ln_post_blocks(s.mix_ln_fraction, s.blocks()) {
                    ResidualForm::Post { alpha: 1.0 }
                } else {
                    ResidualForm::Pre
                }
            }
            Placement::HybridNorm => match index {
                0 if s.hybrid_norm_star => ResidualForm::Pre,
                i if i % 2 == 0 => ResidualForm::Plain,
                _ => ResidualForm::NormedShortcut,
            },
        }
    }

    /// The init std of the FFN weights, the value columns of `wqkv` and `wo` is `init_std` times
    /// this (DeepNet scales them down; every other placement keeps 1).
    pub fn branch_init_scale(self, s: &Stack) -> f64 {
        match self {
            Placement::Deepnorm => deepnorm_beta(s.blocks()),
            Placement::PreLn | Placement::PostLn | Placement::Keel | Placement::MixLn | Placement::HybridNorm => 1.0,
        }
    }

    /// Attention normalizes q, k and v (each over its full width) after projection.
    pub fn normalizes_qkv(self) -> bool {
        match self {
            Placement::HybridNorm => true,
            Placement::PreLn | Placement::PostLn | Placement::Keel | Placement::Deepnorm | Placement::MixLn => false,
        }
    }

    /// The default of `model.final_norm`: off where the last sub-layer's output is already
    /// normalized (Post-LN, DeepNorm, Keel).
    pub fn default_final_norm(self) -> bool {
        match self {
            Placement::PreLn | Placement::MixLn | Placement::HybridNorm => true,
            Placement::PostLn | Placement::Deepnorm | Placement::Keel => false,
        }
    }

    /// `keel probe`'s prediction of the gradient factor through a sub-layer of `form`, where the
    /// theory gives one ([`ResidualForm::residual_path_factor`]). HybridNorm gets none: its
    /// normalized shortcut has no closed form here.
    pub fn predicted_gradient_factor(self, form: ResidualForm) -> Option<f64> {
        match self {
            Placement::HybridNorm => None,
            Placement::PreLn | Placement::PostLn | Placement::Keel | Placement::Deepnorm | Placement::MixLn => {
                form.residual_path_factor()
            }
        }
    }

    /// Why a sub-layer of `form` has no equivalent in Hugging Face's Llama (whose every sub-layer
    /// is x + F(N(x))), or `None` when it has one. `alpha` is the model's resolved residual scale.
    pub fn llama_mismatch(self, form: ResidualForm, alpha: f64) -> Option<String> {
        let name = self.as_str();
        match form {
            ResidualForm::Pre => None,
            ResidualForm::Keel { .. } => {
                Some(format!("Keel's residual x' = LN(alpha*x + F(LN(x))) (alpha = {alpha}) has no Llama equivalent"))
            }
            ResidualForm::Post { alpha } => Some(if alpha == 1.0 {
                format!(
                    "{name}: the Post-LN residual x' = LN(x + F(x)) normalizes the residual stream, which Llama's x + F(LN(x)) never does"
                )
            } else {
                format!(
                    "{name}: the residual x' = LN(a*x + F(x)) (a = {alpha:.4}) normalizes the residual stream, which Llama's x + F(LN(x)) never does"
                )
            }),
            ResidualForm::Plain | ResidualForm::NormedShortcut => Some(format!(
                "{name}: HybridNorm's x + Attn(x) with normalized Q, K, V and N(x) + FFN(N(x)) have no Llama equivalent"
            )),
        }
    }

    /// The colour of this placement's line in every figure (RGB).
    pub fn color(self) -> (u8, u8, u8) {
        match self {
            Placement::PostLn => (214, 39, 40),
            Placement::Deepnorm => (255, 127, 14),
            Placement::HybridNorm => (148, 103, 189),
            Placement::MixLn => (140, 86, 75),
            Placement::PreLn => (31, 119, 180),
            Placement::Keel => (44, 160, 44),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every placement's name, comma-separated (`keel stress`'s default `--placements`).
pub fn all_names_csv() -> &'static str {
    static NAMES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| Placement::names().join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse_and_serde() {
        for &p in Placement::ALL {
            assert_eq!(Placement::parse(p.as_str()).unwrap(), p);
            let toml = toml::to_string(&std::collections::BTreeMap::from([("p", p)])).unwrap();
            assert_eq!(toml.trim(), format!("p = \"{p}\""));
        }
        let e = Placement::parse("preln").unwrap_err().to_string();
        assert!(e.contains("preln") && e.contains("pre_ln"), "{e}");
    }

    #[test]
    fn colours_are_distinct() {
        let mut seen: Vec<(u8, u8, u8)> = Placement::ALL.iter().map(|p| p.color()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), Placement::ALL.len());
    }
}
