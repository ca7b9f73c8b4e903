//! Activation recomputation per block (`train.recompute = "blocks"`).
//!
//! The forward pass runs block by block without keeping the graph: only each block's input x_b,
//! (B*T, C), is stored. The backward pass then walks the blocks from the top: it rebuilds block b's
//! graph from a fresh variable holding x_b, back-propagates the surrogate `sum(y_b * g_b)` (whose
//! gradient with respect to y_b is exactly g_b = dL/dy_b), and reads off the block's parameter
//! gradients and dL/dx_b for the block below. Memory falls from every sub-layer's intermediates
//! (about 12 MB per block at d_model 128, B*T = 1024) to one block's plus one (B*T, C) tensor per
//! block, for one extra forward pass. The gradients are the same ops on the same values, so they
//! equal those of the ordinary backward pass.

use crate::model::{Group, Model};
use anyhow::{anyhow, Result};
use candle_core::{Tensor, Var};

/// Mean next-token loss (unscaled), `scale` x its gradient for each of `model.params` in order,
/// and the time the first (graph-free) forward pass took.
pub fn loss_and_grads(
    model: &Model,
    tokens: &Tensor,
    targets: &Tensor,
    scale: f64,
) -> Result<(f64, Vec<Tensor>, std::time::Duration)> {
    let start = std::time::Instant::now();
    let (batch, seq) = tokens.dims2()?;
    let k = model.kernels;
    let flat = tokens.flatten_all()?;
    let blocks: Vec<&[crate::model::SubLayer]> = model.sublayers.chunks(2).collect();

    // Forward, keeping only block inputs: detaching each block's output drops its graph.
    let mut x = model.tok_emb.embedding(&flat)?.detach();
    let mut inputs = Vec::with_capacity(blocks.len());
    for block in &blocks {
        inputs.push(x.clone());
        for sl in block.iter() {
            x = sl.forward(&x, batch, seq, &model.rope, k)?;
        }
        x = x.detach();
    }

    // Head: final norm, logits and loss, from a variable holding the top of the stack.
    let mut grads: Vec<Option<Tensor>> = vec![None; model.params.len()];
    let top = Var::from_tensor(&x)?;
    let h = match &model.final_norm {
        Some(n) => n.forward(top.as_tensor(), k)?,
        None => top.as_tensor().clone(),
    };
    let loss = crate::ops::cross_entropy(&model.logits(&h)?, &targets.flatten_all()?, k)?;
    let loss_value = crate::optim::scalar(&loss)?;
    let forward_time = start.elapsed();
    let scaled = if scale != 1.0 { (loss * scale)? } else { loss };
    let store = scaled.backward()?;
    let head = |g: &Group| matches!(g, Group::FinalNorm | Group::Head | Group::Embedding);
    collect(model, &store, &mut grads, head)?;
    let mut g =
        store.get(top.as_tensor()).ok_or_else(|| anyhow!("the loss does not depend on the last block"))?.detach();
    drop(store);

    // Blocks from the top: rebuild, back-propagate sum(y * g), pass dL/dx down.
    for (b, block) in blocks.iter().enumerate().rev() {
        let input = Var::from_tensor(&inputs.pop().expect("one input per block"))?;
        let mut y = input.as_tensor().clone();
        for sl in block.iter() {
            y = sl.forward(&y, batch, seq, &model.rope, k)?;
        }
        let store = (y * &g)?.sum_all()?.backward()?;
        let first = 2 * b;
        collect(model, &store, &mut grads, |grp| matches!(grp, Group::SubLayer(i) if *i == first || *i == first + 1))?;
        g = store
            .get(input.as_tensor())
            .ok_or_else(|| anyhow!("block {b}'s output does not depend on its input"))?
            .detach();
    }

    // The embedding lookup's backward, as Candle's own: rows of dL/dx_0 index-added onto the
    // gradient accumulated so far (the head's, when tied), in the same order.
    let emb = model.params.iter().position(|p| p.var.as_tensor().id() == model.tok_emb.id());
    let emb = emb.ok_or_else(|| anyhow!("the embedding is not a parameter"))?;
    let acc = match grads[emb].take() {
        Some(a) => a,
        None => model.tok_emb.zeros_like()?,
    };
    grads[emb] = Some(acc.index_add(&flat, &g, 0)?);

    let grads = model
        .params
        .iter()
        .zip(grads)
        .map(|(p, g)| g.ok_or_else(|| anyhow!("parameter {} received no gradient", p.name)))
        .collect::<Result<Vec<_>>>()?;
    Ok((loss_value, grads, forward_time))
}

/// Adds the gradients in `store` of the parameters whose group `wanted` accepts.
fn collect(
    model: &Model,
    store: &candle_core::backprop::GradStore,
    grads: &mut [Option<Tensor>],
    wanted: impl Fn(&Group) -> bool,
) -> Result<()> {
    for (p, acc) in model.params.iter().zip(grads.iter_mut()) {
        if !wanted(&p.group) {
            continue;
        }
        if let Some(g) = store.get(p.var.as_tensor()) {
            // Detached, so no gradient keeps its block's recomputed graph alive.
            let g = g.detach();
            *acc = Some(match acc.take() {
                None => g,
                Some(a) => (a + g)?,
            });
        }
    }
    Ok(())
}
