//! Gradient propagation through depth at initialization, measured beside the paper's prediction.
//!
//! For a model at init and one fixed batch, per sub-layer l (0 = bottom): the norm of
//! dL/dx_l (x_l = the sub-layer's input on the residual stream) and of dL/dθ_l (its parameters).
//! The prediction follows the residual path only (the paper's Sec. 3.2-3.3): each sub-layer
//! multiplies the gradient by
//! - Post-LN: 1/sqrt(2), so the bottom sees (1/2)^(L/2) of the top;
//! - Keel and DeepNorm: a / sqrt(a^2 + 1) (a = alpha = L, or (2N)^(1/4)), so Keel's product
//!   (1 + 1/L^2)^(-L/2) stays near 1;
//! - Pre-LN (and Mix-LN's Pre-LN blocks): 1, the identity shortcut.
//!
//! HybridNorm gets no prediction (its normalized shortcut has no closed form here).
//!
//! That prediction assumes each branch is as large as its input (true at init only in Post-LN's
//! and Keel's equations' premise, not in a trained model). The second prediction uses the
//! measured ratio r_l = ||F(x_l)|| / ||a x_l|| instead: 1 / sqrt(1 + r_l^2) per normalized
//! sub-layer ([`crate::placement::ResidualForm::residual_path_factor_measured`]), so theory and
//! measurement can be compared on a trained run too (`keel probe --run DIR [--step N]`). The third
//! drops the assumption that F is orthogonal to x: 1 / s_l per normalized sub-layer, with the
//! measured s_l = ||a x_l + F(x_l)|| / ||a x_l||. All three follow the shortcut alone; the
//! gradient that flows through the branches' own Jacobians is in the measurement only.

use crate::config::{Config, Placement, Resolved};
use crate::data::{Corpus, Sampler};
use crate::model::{Group, Model};
use crate::optim::sum_squares;
use anyhow::{anyhow, Result};
use candle_core::Device;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeRow {
    pub placement: String,
    pub depth: usize,
    pub layer: usize,
    pub kind: &'static str,
    /// ||dL/dx_l||, x_l the sub-layer's input.
    pub input_grad_norm: f64,
    /// ||dL/dθ_l|| over the sub-layer's parameters.
    pub param_grad_norm: f64,
    /// input_grad_norm / that of the top sub-layer.
    pub input_grad_ratio: f64,
    /// The paper's residual-path prediction of that ratio.
    pub predicted_ratio: Option<f64>,
    /// ||F(x_l)|| / ||a x_l||: this sub-layer's branch against its shortcut, measured on the batch.
    pub branch_ratio: Option<f64>,
    /// The residual-path prediction from the measured branch ratios: the product of
    /// 1 / sqrt(1 + r_k^2) over the normalized sub-layers k = l..L-2 (1 for identity shortcuts).
    pub predicted_from_branches: Option<f64>,
    /// ||a x_l + F(x_l)|| / ||a x_l||, measured on the batch.
    pub sum_ratio: Option<f64>,
    /// The residual-path prediction from the measured sums, orthogonality not assumed: the product
    /// of 1 / s_k over the normalized sub-layers k = l..L-2.
    pub predicted_from_sums: Option<f64>,
}

/// Runs the probe for one resolved experiment at initialization.
pub fn probe(resolved: &Resolved, corpus: &Corpus, device: &Device) -> Result<Vec<ProbeRow>> {
    probe_model(&Model::new(resolved, device)?, resolved, corpus, device)
}

/// The probe of `model` (at init, or a trained run's weights): forward and backward on a fixed
/// validation batch, and the branch ratios on the same batch.
pub fn probe_model(model: &Model, resolved: &Resolved, corpus: &Corpus, device: &Device) -> Result<Vec<ProbeRow>> {
    let t = resolved.train();
    let mut sampler = Sampler::new(0, "probe-batch", t.batch_size, t.seq_len);
    let (x, y) = sampler.next(&corpus.val, device)?;
    let (h, inputs) = model.hidden_traced(&x, true)?;
    let loss = crate::ops::cross_entropy(&model.logits(&h)?, &y.flatten_all()?, model.kernels)?;
    let grads = loss.backward()?;
    let depth = model.sublayers.len();
    let mut params = vec![0.0; depth];
    for p in &model.params {
        if let Group::SubLayer(i) = p.group {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                params[i] += sum_squares(g)?;
            }
        }
    }
    let input_norms: Vec<f64> = inputs
        .iter()
        .enumerate()
        .map(|(l, x)| {
            let g =
                grads.get(x.as_tensor()).ok_or_else(|| anyhow!("no gradient reached the input of sub-layer {l}"))?;
            Ok(sum_squares(g)?.sqrt())
        })
        .collect::<Result<_>>()?;
    let top = input_norms[depth - 1];
    let placement = resolved.model().placement;
    let measures = model.branch_ratios(&x)?;
    // Products from x_l up to x_{L-1} of a per-sub-layer factor; `None` below any sub-layer without one.
    let product_above = |factor: &dyn Fn(usize) -> Option<f64>| {
        let mut out = vec![Some(1.0); depth];
        for l in (0..depth.saturating_sub(1)).rev() {
            let has_prediction = placement.predicted_gradient_factor(model.sublayers[l].residual.form()).is_some();
            out[l] = match (out[l + 1], factor(l)) {
                (Some(p), Some(f)) if has_prediction => Some(p * f),
                _ => None,
            };
        }
        out
    };
    let form = |l: usize| model.sublayers[l].residual.form();
    let predicted = product_above(&|l| placement.predicted_gradient_factor(form(l)));
    let from_branches =
        product_above(&|l| measures[l].and_then(|m| form(l).residual_path_factor_measured(m.branch_ratio)));
    let from_sums = product_above(&|l| measures[l].and_then(|m| form(l).residual_path_factor_from_sum(m.sum_ratio)));
    Ok((0..depth)
        .map(|l| ProbeRow {
            placement: placement.to_string(),
            depth,
            layer: l,
            kind: model.sublayers[l].kind.as_str(),
            input_grad_norm: input_norms[l],
            param_grad_norm: params[l].sqrt(),
            input_grad_ratio: input_norms[l] / top,
            predicted_ratio: predicted[l],
            branch_ratio: measures[l].map(|m| m.branch_ratio),
            predicted_from_branches: from_branches[l],
            sum_ratio: measures[l].map(|m| m.sum_ratio),
            predicted_from_sums: from_sums[l],
        })
        .collect())
}

/// The header of `keel probe`'s CSV; [`csv_row`] writes its rows.
pub const CSV_HEADER: &str = "placement,depth,layer,kind,input_grad_norm,param_grad_norm,input_grad_ratio,predicted_ratio,branch_ratio,predicted_from_branches,sum_ratio,predicted_from_sums";

pub fn csv_row(r: &ProbeRow) -> String {
    let opt = |v: Option<f64>| v.map(|p| p.to_string()).unwrap_or_default();
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{}",
        r.placement,
        r.depth,
        r.layer,
        r.kind,
        r.input_grad_norm,
        r.param_grad_norm,
        r.input_grad_ratio,
        opt(r.predicted_ratio),
        opt(r.branch_ratio),
        opt(r.predicted_from_branches),
        opt(r.sum_ratio),
        opt(r.predicted_from_sums)
    )
}

/// The probe at every (depth, placement) of `base`, depth-major; `each` sees each point's rows as
/// they are measured.
pub fn probe_grid(
    base: &Config,
    depths: &[usize],
    placements: &[Placement],
    corpus: &Corpus,
    device: &Device,
    each: &mut dyn FnMut(&[ProbeRow]),
) -> Result<Vec<ProbeRow>> {
    let mut all = Vec::new();
    for (_, _, c) in crate::grid::depth_by_placement(base, depths, placements) {
        let rows = probe(&c.resolve(corpus.vocab_size)?, corpus, device)?;
        each(&rows);
        all.extend(rows);
    }
    Ok(all)
}
