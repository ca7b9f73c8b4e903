//! The layer-removal study (the paper's Figure 6): perplexity with each sub-layer's branch removed
//! in turn, against the full model. A removed sub-layer keeps its shortcut and any norm on it
//! ([`crate::model::SubLayer::forward_without_branch`]): Keel `N_out(alpha * x)`, Pre-LN `x`.

use super::ppl::{perplexity, Perplexity};
use super::KeelLm;
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
