//! The layer-removal study (the paper's Figure 6): perplexity with each sub-layer's branch removed
//! in turn, against the full model. A removed sub-layer keeps its shortcut and any norm on it
//! ([`crate::model::SubLayer::forward_without_branch`]): Keel `N_out(alpha * x)`, Pre-LN `x`.

use super::bench::{Benchmark, Data, Figure, Outcome, Scorer, Session};
use super::ppl::{self, perplexity, Perplexity};
use super::{KeelLm, LanguageModel};
use crate::InputError;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Sub-layer index from 0 (bottom), or -1 for the full model.
    pub sublayer: i64,
    pub block: i64,
    pub kind: String,
    pub perplexity: f64,
    pub nll_per_token: f64,
    pub delta_perplexity: f64,
    pub delta_nll_per_token: f64,
}

/// Perplexity of the full model, then with each sub-layer removed. `progress(done, total)` counts
/// evaluations (1 + sub-layers).
pub fn study(
    lm: &mut KeelLm,
    tokens: &[u32],
    stride: Option<usize>,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Perplexity, Vec<Row>)> {
    let n = lm.run.model.sublayers.len();
    let total = n + 1;
    lm.removed = None;
    let full = perplexity(lm, tokens, stride, limit, &mut |_, _| {})?;
    progress(1, total);
    let mut rows = vec![Row {
        sublayer: -1,
        block: -1,
        kind: "none".into(),
        perplexity: full.perplexity,
        nll_per_token: full.nll_per_token,
        delta_perplexity: 0.0,
        delta_nll_per_token: 0.0,
    }];
    for l in 0..n {
        lm.removed = Some(l);
        let p = perplexity(lm, tokens, stride, limit, &mut |_, _| {})?;
        rows.push(Row {
            sublayer: l as i64,
            block: (l / 2) as i64,
            kind: lm.run.model.sublayers[l].kind.as_str().into(),
            perplexity: p.perplexity,
            nll_per_token: p.nll_per_token,
            delta_perplexity: p.perplexity - full.perplexity,
            delta_nll_per_token: p.nll_per_token - full.nll_per_token,
        });
        progress(l + 2, total);
    }
    lm.removed = None;
    Ok((full, rows))
}

/// `results.json` of `--bench layer-removal`.
#[derive(Serialize)]
struct Results<'a> {
    bench: &'static str,
    model: String,
    placement: Option<String>,
    data: String,
    removal: &'static str,
    windowing: &'static str,
    full: &'a Perplexity,
    keel_version: &'static str,
}

/// `--bench layer-removal`: a study, not a score.
pub struct LayerRemoval;

impl Benchmark for LayerRemoval {
    fn name(&self) -> &'static str {
        "layer-removal"
    }

    fn about(&self) -> &'static str {
        "Perplexity with each sub-layer removed in turn (the paper's Figure 6)"
    }

    fn data(&self) -> Data {
        Data::Optional(ppl::DATA_HINT)
    }

    fn study(&self) -> bool {
        true
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        let placement = s.scorer.placement();
        let (tokens, data) = ppl::tokens(s.scorer, s.settings.data.as_deref(), ppl::DATA_HINT)?;
        if !matches!(s.scorer, Scorer::Keel(_)) {
            return Err(InputError(
                "--bench layer-removal needs a keel run (--run): it removes keel sub-layers\n  score the Llama model's perplexity with --bench ppl instead".into(),
            )
            .into());
        }
        s.start()?;
        let Scorer::Keel(lm) = &mut *s.scorer else { unreachable!("checked above") };
        // Every sub-layer costs one perplexity pass: default to 16 windows unless --limit says.
        let limit = Some(s.settings.limit.unwrap_or(16));
        let (full, rows) = study(lm, &tokens, s.settings.stride, limit, s.progress)?;
        let results = Results {
            bench: "layer-removal",
            model: lm.describe(),
            placement,
            data,
            removal: "branch F dropped, shortcut and its norms kept: Keel N_out(alpha x), Post-LN N(alpha x), Pre-LN x",
            windowing: ppl::WINDOWING,
            full: &full,
            keel_version: crate::VERSION,
        };
        let worst = rows.iter().skip(1).max_by(|a, b| a.delta_perplexity.total_cmp(&b.delta_perplexity));
        let summary = format!(
            "full model perplexity {:.4}; {} sub-layers removed one at a time{}; ",
            full.perplexity,
            rows.len() - 1,
            worst
                .map(|w| format!(
                    ", largest increase +{:.4} at sub-layer {} ({})",
                    w.delta_perplexity, w.sublayer, w.kind
                ))
                .unwrap_or_default(),
        );
        Ok(Outcome::new(&results, summary)?.rows("layer_removal.csv", &rows)?.figure(Figure::LayerRemoval))
    }
}
