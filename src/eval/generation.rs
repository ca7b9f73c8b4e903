//! `generate_until` as lm-evaluation-harness's HFLM runs it (`lm_eval/models/huggingface.py`,
//! v0.4): greedy decoding of each context until one of the request's stop strings or its token
//! budget, the text cut before the first stop string.
//!
//! The rules reproduced:
//! - the context is encoded without special tokens and keeps its last `max_length - max_gen_toks`
//!   tokens (`tok_batch_encode(..., left_truncate_len=max_ctx_len)`); a budget that leaves no room
//!   for the context is refused, as HFLM's `assert max_ctx_len > 0` does;
//! - the tokenizer's end-of-text string joins the stop strings (`handle_stop_sequences`), and a row
//!   ends at the end-of-text token (the model's `eos_token_id`), which the text leaves out
//!   (`tok_decode(..., skip_special_tokens=True)`);
//! - the text is cut before the first occurrence of each stop string in turn
//!   (`postprocess_generated_text`), which is `generative::cut_at_stop`.
//!
//! Contexts are decoded in left-padded batches, longest first as the harness's `Collator` orders
//! them; each row gets the tokens it gets alone, so the results do not depend on the batch size.

use super::generative::{cut_at_stop, until_with_eos};
use super::LanguageModel;
use crate::InputError;
use anyhow::Result;

/// One `generate_until` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Until {
    pub context: String,
    /// The task's stop strings (the end-of-text string is added here).
    pub until: Vec<String>,
    /// At most this many new tokens.
    pub max_gen_toks: usize,
}

/// One request's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The generation cut before the first stop string.
    pub text: String,
    /// New tokens decoded (including the one that completed a stop string).
    pub tokens: usize,
    /// Context tokens cut from the left to leave room for the budget.
    pub truncated_tokens: usize,
}

/// Greedy decoding on a model, as lm-evaluation-harness's `generate_until` does it. `progress`
/// counts finished requests.
pub fn generate_until(
    lm: &mut dyn LanguageModel,
    requests: &[Until],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Generated>> {
    let max_length = lm.max_len();
    let tok = lm.tokenizer().clone();
    let eos = tok.eot.and_then(|id| tok.inner.id_to_token(id));
    let mut prompts = Vec::with_capacity(requests.len());
    let mut cut = Vec::with_capacity(requests.len());
    for r in requests {
        if r.max_gen_toks >= max_length {
            return Err(InputError(format!(
                "a generation budget of {} tokens leaves no room for the prompt in the model's context of {max_length} tokens (lm-evaluation-harness refuses it too)\n  pass --max-gen-toks below {max_length}, e.g. {}",
                r.max_gen_toks,
                max_length / 2
            ))
            .into());
        }
        let mut tokens = tok.encode(&r.context)?;
        if tokens.is_empty() {
            // An empty context starts from the end-of-text token, as the harness's
            // `tok_encode` of "" plus its prefix token would.
            tokens = vec![tok.eot.unwrap_or(0)];
        }
        let keep = max_length - r.max_gen_toks;
        let drop = tokens.len().saturating_sub(keep);
        tokens.drain(..drop);
        prompts.push(tokens);
        cut.push(drop);
    }
    let stops: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            let until: Vec<&str> = r.until.iter().map(String::as_str).collect();
            until_with_eos(&until, eos.as_deref())
        })
        .collect();
    // Longest first; requests with the same budget decode together.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| (requests[i].max_gen_toks, std::cmp::Reverse(prompts[i].len())));
    let mut out: Vec<Option<Generated>> = vec![None; requests.len()];
    let total = requests.len();
    let mut finished = 0;
    progress(0, total);
    let batch = lm.generation_batch().max(1);
    let mut start = 0;
    while start < order.len() {
        let budget = requests[order[start]].max_gen_toks;
        let same = order[start..].iter().take_while(|&&i| requests[i].max_gen_toks == budget).count();
        let chunk = &order[start..start + same.min(batch)];
        start += chunk.len();
        let batch_prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let eot = tok.eot;
        let decoded = lm.greedy(&batch_prompts, budget, &mut |row, new| {
            if eot.is_some() && new.last().copied() == eot {
                return true;
            }
            let text = tok.decode(new).unwrap_or_default();
            cut_at_stop(&text, &stops[chunk[row]]).len() < text.len()
        })?;
        for (&i, mut new) in chunk.iter().zip(decoded) {
            let tokens = new.len();
            if eot.is_some() && new.last().copied() == eot {
                new.pop();
            }
            let text = tok.decode(&new)?;
            let text = cut_at_stop(&text, &stops[i]).to_string();
            out[i] = Some(Generated { text, tokens, truncated_tokens: cut[i] });
        }
        finished += chunk.len();
        progress(finished, total);
    }
    Ok(out.into_iter().map(|g| g.expect("every request is decoded")).collect())
}
