//! Perplexity and bits per byte with fixed, documented windowing.
//!
//! With context `T` (the model's) and stride `S` (default `T/2`), every token after the first is
//! scored exactly once. Window `k` ends at token `e_k = min(T + k*S, N - 1)`, takes the `T` tokens
//! before it as input, and scores the targets after the previous window's end, so every scored
//! token after the first window sees at least `T - S` tokens of context. Two runs that share a
//! tokenizer and context length score the same tokens in the same windows, so their numbers compare.
//!
//! `ppl = exp(nll / tokens)`; `bits_per_byte = nll / ln 2 / bytes`, where `bytes` counts the UTF-8
//! bytes of the scored tokens' text (all tokens but the first), which makes runs with different
//! tokenizers comparable too.

use super::bench::{Benchmark, Data, Outcome, Scorer, Session};
use super::{LanguageModel, Request};
use crate::data::tokenizer::KeelTokenizer;
use crate::data::Corpus;
use crate::InputError;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;

/// The windows over `n` tokens: `(start, end, first_scored)` with inputs `tokens[start..end]` and
/// targets `tokens[first_scored..=end]`.
pub fn windows(n: usize, context: usize, stride: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    if n < 2 || context == 0 {
        return out;
    }
    let stride = stride.clamp(1, context);
    let mut prev_end = 0;
    let mut end = context.min(n - 1);
    loop {
        let start = end.saturating_sub(context);
        out.push((start, end, prev_end + 1));
        if end == n - 1 {
            return out;
        }
        prev_end = end;
        end = (end + stride).min(n - 1);
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Perplexity {
    pub tokens_scored: usize,
    pub bytes_scored: usize,
    pub windows: usize,
    pub context: usize,
    pub stride: usize,
    /// Total negative log-likelihood in nats.
    pub nll: f64,
    pub nll_per_token: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
}

/// UTF-8 bytes of the text of `tokens[1..]`.
pub fn scored_bytes(tok: &KeelTokenizer, tokens: &[u32]) -> Result<usize> {
    if tokens.len() < 2 {
        return Ok(0);
    }
    let all = tok.decode(tokens)?.len();
    let first = tok.decode(&tokens[..1])?.len();
    Ok(all.saturating_sub(first))
}

/// Scores `tokens` with `lm`; `limit` caps the number of windows (the bytes then count only the
/// scored prefix).
pub fn perplexity(
    lm: &mut dyn LanguageModel,
    tokens: &[u32],
    stride: Option<usize>,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    let context = lm.max_len();
    let stride = stride.unwrap_or((context / 2).max(1)).clamp(1, context);
    let mut w = windows(tokens.len(), context, stride);
    w.truncate(limit.unwrap_or(usize::MAX));
    let reqs: Vec<Request> = w
        .iter()
        .map(|&(start, end, first)| Request { tokens: tokens[start..=end].to_vec(), cont_start: first - start })
        .collect();
    anyhow::ensure!(limit != Some(0), crate::InputError("--limit 0 scores no window; give at least 1".into()));
    anyhow::ensure!(
        !reqs.is_empty(),
        crate::InputError(format!("the text has {} tokens; perplexity needs at least 2", tokens.len()))
    );
    let total = reqs.len();
    let scores = super::score_all(lm, &reqs, progress)?;
    let nll: f64 = -scores.iter().map(|s| s.logprob).sum::<f64>();
    let n: usize = scores.iter().map(|s| s.n_tokens).sum();
    let scored_end = w.last().map(|w| w.1).unwrap_or(0);
    let bytes = scored_bytes(lm.tokenizer(), &tokens[..=scored_end])?;
    Ok(Perplexity {
        tokens_scored: n,
        bytes_scored: bytes,
        windows: total,
        context,
        stride,
        nll,
        nll_per_token: nll / n as f64,
        perplexity: (nll / n as f64).exp(),
        bits_per_byte: nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
    })
}

/// How the windows are laid out, for results files.
pub const WINDOWING: &str = "windows of the model's context T ending at T + k*stride; each token after the first scored once, with >= T - stride tokens of context after the first window";

/// What `--data` takes for perplexity (and the layer-removal study).
pub const DATA_HINT: &str = "pass --data with a prepared data folder or a text file";

/// Tokens for perplexity: a prepared folder's validation split, a text file, or (no `--data`) the
/// run's own validation data. Returns the tokens and a description of where they came from.
pub fn tokens(scorer: &mut Scorer, data: Option<&str>, hint: &str) -> Result<(Vec<u32>, String)> {
    match (data, scorer) {
        (Some(d), scorer) => {
            let path = PathBuf::from(d);
            if path.join("meta.json").exists() {
                let prepared = crate::data::prepare::open_prepared(&path)?;
                let spec = &scorer.lm().tokenizer().spec;
                if &prepared.meta.tokenizer != spec {
                    return Err(InputError(format!(
                        "{d} was prepared with tokenizer {} but the model uses {spec}\n  pass a text file as --data so keel tokenizes it with the model's tokenizer",
                        prepared.meta.tokenizer
                    ))
                    .into());
                }
                let tokens = prepared.val.iter().flat_map(|s| s.to_vec()).collect();
                Ok((tokens, format!("{d} (validation split)")))
            } else if path.exists() && !path.is_dir() {
                let bytes = crate::files::read(&path).map_err(|e| InputError(format!("cannot read {d}: {e}")))?;
                let text = String::from_utf8(bytes).map_err(|e| {
                    InputError(format!(
                        "{d} is not UTF-8 (byte {})\n  convert it to UTF-8 first",
                        e.utf8_error().valid_up_to()
                    ))
                })?;
                Ok((scorer.lm().tokenizer().encode(&text)?, d.to_string()))
            } else {
                Err(InputError(format!("--data {d}: no such file or prepared folder\n  {hint}")).into())
            }
        }
        (None, Scorer::Keel(k)) => {
            let cfg = k.run.resolved.config.data.clone();
            let corpus = Corpus::load(&cfg, k.run.resolved.train().seq_len)
                .context("loading the run's own validation data (pass --data to score other text)")?;
            Ok((corpus.val.to_vec(), format!("the run's validation data: {}", corpus.description)))
        }
        (None, Scorer::Hf(_)) => Err(InputError(format!("--hf-model needs --data here\n  {hint}")).into()),
    }
}

/// `results.json` of `--bench ppl`.
#[derive(Serialize)]
struct Results<'a> {
    bench: &'static str,
    model: String,
    placement: Option<String>,
    data: String,
    windowing: &'static str,
    #[serde(flatten)]
    ppl: &'a Perplexity,
    keel_version: &'static str,
}

/// `--bench ppl`.
pub struct Ppl;

impl Benchmark for Ppl {
    fn name(&self) -> &'static str {
        "ppl"
    }

    fn about(&self) -> &'static str {
        "Perplexity and bits per byte on a prepared folder's val split or a text file"
    }

    fn data(&self) -> Data {
        Data::Optional(DATA_HINT)
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["perplexity", "bits_per_byte"]
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        let placement = s.scorer.placement();
        let (tokens, data) = tokens(s.scorer, s.settings.data.as_deref(), DATA_HINT)?;
        s.start()?;
        let p = perplexity(s.scorer.lm(), &tokens, s.settings.stride, s.settings.limit, s.progress)?;
        let results = Results {
            bench: "ppl",
            model: s.scorer.lm().describe(),
            placement,
            data,
            windowing: WINDOWING,
            ppl: &p,
            keel_version: crate::VERSION,
        };
        let summary = format!(
            "perplexity {:.4} (nll {:.4}/token), {:.4} bits/byte over {} tokens in {} windows (context {}, stride {}); ",
            p.perplexity, p.nll_per_token, p.bits_per_byte, p.tokens_scored, p.windows, p.context, p.stride
        );
        Outcome::new(&results, summary)
    }
}
